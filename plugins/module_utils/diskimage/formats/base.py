# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The driver interface every format implements (docs/architecture.md, "The driver interface").

A driver is one layer of an image: it maps guest (virtual) offsets to its own
file.  Backing chains are chains of drivers: ``read`` falls through to
``self.backing`` for ranges this layer does not allocate, and reads zeroes past
the backing's end.  ``block_status`` describes this layer only.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections

from .._io import ImageFile
from ..errors import CorruptImageError, FormatError, ImageError, UnsupportedOperation, ReadOnlyImageError

# Block status kinds of one layer.
DATA = "data"                # this layer holds the bytes (host offset known when meaningful)
ZERO = "zero"                # this layer says the range reads as zeroes (hole in raw, zero cluster)
UNALLOCATED = "unallocated"  # this layer says nothing: reads fall through to the backing (or zeroes)

# One run of block status: guest offset, length, kind (DATA/ZERO/UNALLOCATED),
# host offset in this layer's data file (or None).
Extent = collections.namedtuple("Extent", "start length kind offset")

# Largest single read/write the library issues (bounded memory whatever the image size).
MAX_IO = 4 * 1024 * 1024


class Driver:
    """One opened layer of an image.  Subclasses set ``format_name``.

    Attributes every driver provides after ``open``:
      path            absolute path of the image file
      readonly        bool
      virtual_size    int, bytes
      backing         Driver or None (opened backing layer, policy already applied)
      backing_filename        str or None, as recorded in the image
      backing_format          str or None, as recorded in the image
      data_file               str or None (qcow2 external data file name)
    """

    format_name = None
    # Whether create()/write() are implemented.
    can_create = False
    can_write = False
    # What _check_range raises for a request outside the image.
    range_error = ImageError
    # Whether write_zeroes() stores the zeroes as data, byte for byte (an encrypted payload):
    # conversions count them as written.
    zeroes_written_as_data = False

    def __init__(self):
        self.path = None
        self.readonly = True
        self.virtual_size = 0
        self.backing = None
        self.backing_filename = None
        self.backing_format = None
        self.data_file = None

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        """Score 0..100 for how surely ``header`` (first 4 KiB or less) is this format."""
        return 0

    @classmethod
    def unsupported_version(cls, header):
        """For a ``header`` this driver's probe() claimed: a sentence naming the version
        of the format this driver cannot open (probe.py refuses the file with it, as
        qemu-img does, never calling it raw), else None."""
        return None

    # --------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, path, readonly=True, opener=None, force_share=False):
        """Open ``path``.  ``opener(referrer_path, name, fmt)`` opens a file named
        inside the image (backing file, data file) under the caller's path policy
        and returns a Driver (or, for data files, raises PolicyError)."""
        raise UnsupportedOperation("opening %s images is not supported" % cls.format_name)

    @classmethod
    def create(cls, path, size, options=None, backing=None):
        """Create a new image at ``path`` (the caller passes a temporary name and
        renames it into place).  ``backing`` is an opened backing Driver or None;
        ``options`` is the qemu-img ``-o`` dictionary, already including
        ``backing_file``/``backing_fmt`` when the image gets a backing file."""
        raise UnsupportedOperation("creating %s images is not supported" % cls.format_name, path)

    @classmethod
    def created_files(cls, path):
        """The files an image just made by ``create(path, ...)`` consists of,
        ``path`` first: what ops/create.py syncs, and removes when the creation
        or conversion fails later.  Formats that write companion files beside
        the image (VMDK extents) list them too."""
        return [path]

    def close(self):
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -------------------------------------------------------------------- data
    def read(self, offset, length):
        """Guest-visible bytes [offset, offset+length), backing included."""
        raise NotImplementedError

    def write(self, offset, data):
        raise UnsupportedOperation("writing %s images is not supported" % self.format_name, self.path)

    def write_zeroes(self, offset, length, may_unmap=False):
        """Make [offset, offset+length) read as zeroes; ``may_unmap`` allows
        deallocation when the result still reads zero (no backing showing through)."""
        raise UnsupportedOperation("writing %s images is not supported" % self.format_name, self.path)

    def _write_zero_bytes(self, offset, length):
        """Write real zero bytes through ``write`` in MAX_IO pieces (formats or
        cases where a zero flag cannot express the range)."""
        zeroes = bytes(min(length, MAX_IO))
        end = offset + length
        while offset < end:
            count = min(end - offset, len(zeroes))
            self.write(offset, memoryview(zeroes)[:count])
            offset += count

    def block_status(self, offset, length):
        """List of Extent covering [offset, offset+length) exactly, for this layer only."""
        return [Extent(offset, length, DATA, None)]

    def resize(self, new_size, preallocation=None):
        """Change the virtual size.  Growing adds a range that reads as zeroes
        (``preallocation`` as the format's creation option allows); shrinking
        drops everything past ``new_size``.  ops/resize.py decides whether a
        shrink is allowed; drivers refuse sizes their format cannot represent."""
        raise UnsupportedOperation("resizing %s images is not supported" % self.format_name, self.path)

    # ------------------------------------------- in-place changes (rebase, commit, amend)
    def set_backing(self, backing_file, backing_fmt):
        """Record ``backing_file`` (None: no backing file) and its format in the
        image's metadata; guest data untouched (qemu-img rebase -u)."""
        raise UnsupportedOperation("%s images cannot have a backing file recorded" % self.format_name, self.path)

    def make_empty(self):
        """Deallocate everything this layer holds (reads fall through to the backing)."""
        raise UnsupportedOperation("emptying %s images is not supported" % self.format_name, self.path)

    def amend(self, options):
        """Change format options in place (qemu-img amend -o)."""
        raise UnsupportedOperation("amending %s images is not supported" % self.format_name, self.path)

    def select_snapshot(self, name, snapshot_size=False):
        """Read-only drivers: show internal snapshot ``name`` instead of the current disk
        (keeping the current virtual size unless ``snapshot_size``)."""
        raise UnsupportedOperation("%s images have no internal snapshots" % self.format_name, self.path)

    def flush(self):
        pass

    def host_files(self):
        """The files this layer writes (ImageFile objects: the image file, an external
        data file): what ops/resize.py puts back when a change fails half-way."""
        image_file = getattr(self, "_file", None)
        return [image_file] if image_file is not None else []

    def _check_writable(self):
        if self.readonly:
            raise ReadOnlyImageError("image is opened read-only", self.path)

    def _check_range(self, offset, length, what):
        """Refuse ``what`` on [offset, offset+length) unless it lies inside the virtual size."""
        if offset < 0 or length < 0:
            raise self.range_error("%s at offset %d, length %d: negative offset or length" % (what, offset, length),
                                   self.path)
        if offset + length > self.virtual_size:
            raise self.range_error("%s at offset %d, length %d goes beyond the end of the image (virtual size %d)"
                                   % (what, offset, length, self.virtual_size), self.path)

    def _close_file(self):
        """Close the driver's own ImageFile ``self._file``, once."""
        image_file, self._file = getattr(self, "_file", None), None
        if image_file is not None:
            image_file.close()

    # ----------------------------------------------------------------- queries
    def info(self):
        """Format-specific part of ``qemu-img info --output=json`` plus sizes:
        returns a dict with optional keys ``cluster-size``, ``dirty-flag``,
        ``format-specific`` ({"type": ..., "data": {...}}), ``snapshots``,
        ``encrypted``.  Generic keys (filename, format, virtual-size,
        actual-size, backing-filename...) are added by ops/info.py."""
        return {}

    def check(self, repair=None):
        """Result with the keys of ``qemu-img check --output=json``."""
        raise UnsupportedOperation("checking %s images is not supported" % self.format_name, self.path)

    def snapshots(self):
        """Internal snapshots as ``qemu-img info`` lists them (empty when none)."""
        return []

    def snapshot_create(self, name):
        """Create internal snapshot ``name`` of the current disk."""
        raise UnsupportedOperation("%s images have no internal snapshots" % self.format_name, self.path)

    def snapshot_apply(self, name):
        """Make internal snapshot ``name`` the current disk."""
        raise UnsupportedOperation("%s images have no internal snapshots" % self.format_name, self.path)

    def snapshot_delete(self, name):
        """Delete internal snapshot ``name``."""
        raise UnsupportedOperation("%s images have no internal snapshots" % self.format_name, self.path)


class ReadOnlyDriver(Driver):
    """A format this library only reads, from one ImageFile of its own (``self._file``).

    Subclasses set ``read_only_reason`` and implement ``_open_structures``
    (parse the opened file) and ``read``; block status reports everything as
    data (as QEMU does for formats without block status) unless overridden.
    """

    range_error = FormatError
    # Why writes are refused, ending every refusal message.
    read_only_reason = "this format is read-only, as in qemu-img"

    def __init__(self):
        super(ReadOnlyDriver, self).__init__()
        self._file = None
        self._last_chunk = None      # (key, bytes) of the chunk read last

    @classmethod
    def refusal(cls, verb, path, purpose=""):
        """UnsupportedOperation for ``verb`` ("creating", "writing", "opening") images of this format."""
        return UnsupportedOperation("%s %s images%s is not supported: %s"
                                    % (verb, cls.format_name, purpose, cls.read_only_reason), path)

    # --------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, path, readonly=True, opener=None, force_share=False):
        if not readonly:
            raise cls.refusal("opening", path, " for writing")
        return cls.from_image_file(ImageFile(path, writable=False, force_share=force_share))

    @classmethod
    def from_image_file(cls, image_file):
        """A driver reading the opened ``image_file`` (closed with the driver)."""
        self = cls()
        self._file = image_file
        self.path = image_file.path
        try:
            self._open_structures()
        except BaseException:
            self.close()
            raise
        return self

    def _open_structures(self):
        raise NotImplementedError

    def close(self):
        self._close_file()
        self._last_chunk = None
        super(ReadOnlyDriver, self).close()

    @classmethod
    def create(cls, path, size, options=None, backing=None):
        raise cls.refusal("creating", path)

    def write(self, offset, data):
        raise self.refusal("writing", self.path)

    def write_zeroes(self, offset, length, may_unmap=False):
        raise self.refusal("writing", self.path)

    # -------------------------------------------------------------------- data
    def block_status(self, offset, length):
        # No block status in the format (QEMU has none): everything is data, with no host offset.
        if length <= 0:
            return []
        self._check_range(offset, length, "block status")
        return [Extent(offset, length, DATA, None)]

    def _cached_chunk(self, key, load):
        """``load(key)``, remembering the last chunk (sequential reads load each chunk once)."""
        if self._last_chunk is not None and self._last_chunk[0] == key:
            return self._last_chunk[1]
        data = load(key)
        self._last_chunk = (key, data)
        return data

    def _read_pieces(self, offset, length, piece):
        """Bytes [offset, offset+length) joined from ``piece(position, end)``,
        which returns the bytes from ``position`` on, at least one and at most
        up to ``end``."""
        self._check_range(offset, length, "read")
        parts = []
        position = offset
        end = offset + length
        while position < end:
            data = piece(position, end)
            if not data or len(data) > end - position:
                raise CorruptImageError("%s image: %d bytes for guest offset %d (expected 1 to %d)"
                                        % (self.format_name, len(data), position, end - position), self.path)
            parts.append(data)
            position += len(data)
        return b"".join(parts)

    # ----------------------------------------------------------------- queries
    def info(self):
        # qemu-img 7.2 reports no cluster size, dirty flag or format-specific data for these formats.
        return {"dirty-flag": None}
