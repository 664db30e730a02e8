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

# Zero bytes shared by the data paths (never written: untouched pages cost no memory).
ZEROES = bytes(MAX_IO)
_ZERO_VIEW = memoryview(ZEROES)


def zero_bytes(length):
    """A bytes-like object of ``length`` zero bytes (a view on a shared buffer up to MAX_IO)."""
    return _ZERO_VIEW[:length] if length <= MAX_IO else bytes(length)


def fill_zero(view):
    """Set every byte of the writable memoryview ``view`` to zero (slice copies from the shared buffer)."""
    length = len(view)
    for position in range(0, length, MAX_IO):
        count = min(MAX_IO, length - position)
        view[position:position + count] = _ZERO_VIEW[:count]


# QEMU's block status flags (BDRV_BLOCK_* meanings) of ``Driver.map_runs``: the layer
# holds the bytes (DATA), they read as zeroes (ZERO), a host offset is known
# (OFFSET_VALID), this layer decides the content (ALLOCATED).  A run with neither DATA
# nor ZERO falls through to the backing file.
BLOCK_DATA = 1
BLOCK_ZERO = 2
BLOCK_OFFSET_VALID = 4
BLOCK_ALLOCATED = 8

# QEMU's block layer counts lengths in whole sectors of this size.
QEMU_SECTOR_SIZE = 512


class StatusRuns:
    """Block status runs (start, length, flags, host) with adjacent equal runs merged."""

    def __init__(self):
        self.runs = []

    def add(self, start, length, flags, host):
        if length <= 0:
            return
        runs = self.runs
        if runs:
            prev_start, prev_length, prev_flags, prev_host = runs[-1]
            if prev_flags == flags and prev_start + prev_length == start and (
                    (host is None and prev_host is None)
                    or (host is not None and prev_host is not None and prev_host + prev_length == host)):
                runs[-1] = (prev_start, prev_length + length, flags, prev_host)
                return
        runs.append((start, length, flags, host))


def block_status_runs(driver, offset, end):
    """QEMU block status flags of ``driver.block_status`` over [offset, end)
    (formats without a walk of their own)."""
    runs = StatusRuns()
    for extent in driver.block_status(offset, end - offset):
        if extent.kind == DATA:
            flags = BLOCK_DATA | BLOCK_ALLOCATED
        elif extent.kind == ZERO:
            flags = BLOCK_ZERO | BLOCK_ALLOCATED
        else:
            flags = 0
        if extent.offset is not None:
            flags |= BLOCK_OFFSET_VALID
        runs.add(extent.start, extent.length, flags, extent.offset)
    return runs.runs


def recurse_into_file(image_file, runs):
    """QEMU's "recurse" into the file of a raw-like layer (static VDI, fixed VHD):
    DATA ranges with a host offset in ``image_file`` also read ZERO where the file
    has a hole; ZERO ranges with a host offset (holes the driver already found)
    are DATA and ZERO there."""
    result = StatusRuns()
    for start, length, flags, host in runs:
        if host is None or not flags & BLOCK_OFFSET_VALID or not flags & (BLOCK_DATA | BLOCK_ZERO):
            result.add(start, length, flags, host)
            continue
        if flags & BLOCK_ZERO:
            result.add(start, length, flags | BLOCK_DATA, host)
            continue
        for file_start, file_length, is_data in image_file.data_extents(host, length):
            guest = start + (file_start - host)
            result.add(guest, file_length, flags if is_data else flags | BLOCK_ZERO, file_start)
    return result.runs


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
    # Whether a new image reads as zeroes everywhere (a conversion then skips zero ranges).
    has_zero_init = True
    # Whether every written cluster is stored compressed (streamOptimized VMDK): conversions
    # use the compression thread pool.
    compresses_every_cluster = False
    # Whether probing answers this format when no other matches (raw): such an answer
    # is a guess, never trusted on a write path (docs/security.md rule 3).
    probe_fallback = False
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
        # The layer's own image file (an _io.ImageFile), the same name in every driver.
        self._file = None

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
        and returns a Driver (or, for data files, raises PolicyError).

        The template of every driver: open the file, then ``open_file``."""
        image_file = ImageFile(path, writable=not readonly, force_share=force_share)
        try:
            return cls.open_file(image_file, readonly, opener)
        except BaseException:
            image_file.close()
            raise

    @classmethod
    def open_file(cls, image_file, readonly=True, opener=None, **structure_options):
        """A driver on the opened ``image_file`` (an _io.ImageFile, or any object
        with its ``path``, ``size()``, ``pread()``, ``pread_exact()`` and ``close()``,
        e.g. a window on a member of an OVA), which the driver closes.  The format's
        ``_open_structures(opener, **structure_options)`` parses it; when that fails,
        ``_abandon_open()`` releases what was opened and the error propagates."""
        self = cls()
        self._file = image_file
        self.path = image_file.path
        self.readonly = bool(readonly)
        try:
            self._open_structures(opener, **structure_options)
        except BaseException:
            self._abandon_open()
            raise
        return self

    def _open_structures(self, opener):
        """Parse the format's structures from ``self._file`` (virtual size, tables,
        backing file through ``opener``)."""
        raise UnsupportedOperation("opening %s images is not supported" % self.format_name, self.path)

    def _abandon_open(self):
        """Release what a failed ``_open_structures`` left opened."""
        self.close()

    @classmethod
    def create(cls, path, size, options=None, backing=None):
        """Create a new image at ``path`` (the caller passes a temporary name and
        renames it into place).  ``backing`` is an opened backing Driver or None;
        ``options`` is the qemu-img ``-o`` dictionary, already including
        ``backing_file``/``backing_fmt`` when the image gets a backing file."""
        raise UnsupportedOperation("creating %s images is not supported" % cls.format_name, path)

    @classmethod
    def create_on_device(cls, device, size, options=None, backing=None):
        """Write a new image onto block ``device`` in place, as ``create`` (ops/create.py
        checked the device and that the format may live there); returns whether
        anything was written (the caller then syncs the device)."""
        created = cls.create(device, size, options=options, backing=backing)
        if created is not None and hasattr(created, "close"):
            created.close()
        return True

    @classmethod
    def size_on_device(cls, device):
        """The virtual size of an image created on block ``device`` when none is
        given: None (a size, or a backing file, is required)."""
        return None

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

    def read_into(self, offset, view):
        """Fill the writable memoryview ``view`` with the guest-visible bytes at
        ``offset`` (``read(offset, len(view))`` without a new buffer: a copy
        reuses its buffers instead of faulting in fresh pages for every read).
        Drivers whose data lies in host runs override it to read straight into
        ``view``; the default copies what ``read`` returns."""
        view[:] = self.read(offset, len(view))

    def _read_runs_into(self, view, offset, runs, read_host, fresh=False):
        """Fill ``view`` (the guest bytes from ``offset`` on) from this layer's
        ``runs`` (guest, count, kind, host): ``read_host(host, part, kind, guest)``
        fills the part of a DATA run (or of a kind only the driver knows), the
        backing file the part of an UNALLOCATED run, and zeroes the rest
        (``fresh``: ``view`` holds zeroes already)."""
        backing = self.backing
        for guest, count, kind, host in runs:
            pos = guest - offset
            part = view[pos:pos + count]
            if kind == UNALLOCATED and backing is not None and guest < backing.virtual_size:
                inside = min(count, backing.virtual_size - guest)
                backing.read_into(guest, part[:inside])
                if inside < count and not fresh:
                    fill_zero(part[inside:])
            elif kind in (UNALLOCATED, ZERO):
                if not fresh:
                    fill_zero(part)
            else:
                read_host(host, part, kind, guest)

    def write(self, offset, data):
        """Write ``data`` (any bytes-like object) at guest ``offset``; drivers keep
        no reference to ``data`` once this returns (copies reuse their buffers)."""
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
        return [self._file] if self._file is not None else []

    def host_file_of_offsets(self):
        """The ImageFile that the host offsets of this layer's block_status point
        into, each extent contiguous there, when that is so for every extent
        (then a conversion skips the holes of that file instead of reading them);
        None otherwise (the default: several files, compressed data, no offsets)."""
        return None

    def device_zeroout(self):
        """For a layer written straight to a block device: whether the device zeroed
        ranges itself (BLKZEROOUT), None when it was never asked or the layer is no
        such device image."""
        return None

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

    # ------------------------------------------------- map and measure (ops/map.py, ops/measure.py)
    def qemu_length(self):
        """The layer's length as QEMU's block layer sees it: whole 512-byte sectors
        (a format's header size rounded down; a raw file's partial last sector is
        rounded up by RawDriver)."""
        return self.virtual_size // QEMU_SECTOR_SIZE * QEMU_SECTOR_SIZE

    def map_runs(self, offset, end, l1_table=None, cache=None):
        """QEMU's block status of this layer over [offset, end) (inside ``qemu_length()``),
        as ``qemu-img map`` sees it: a list of runs (start, length, flags, host offset
        or None), flags of BLOCK_DATA, BLOCK_ZERO, BLOCK_OFFSET_VALID, BLOCK_ALLOCATED,
        adjacent equal runs merged.  Ranges no layer describes carry neither DATA nor
        ZERO (ops/map.py applies the backing file's rule to them).  ``l1_table``: an
        internal snapshot's L1 table read instead of the active one (``snapshot_l1_table``);
        ``cache``: a dict keeping per-layer facts between calls.  This default translates
        ``block_status``."""
        return block_status_runs(self, offset, end)

    def creation_options(self):
        """Creation options (``-o`` names) the image records that ``info()`` does not
        report, e.g. a VDI's ``static``, a VHD's ``subformat``; empty by default."""
        return {}

    def snapshot_table(self):
        """The internal snapshots whose L1 tables ``snapshot_l1_table`` reads, as dicts
        with at least ``id`` and ``name`` (strings); None for formats without them."""
        return None

    def snapshot_l1_table(self, snapshot):
        """The L1 table of ``snapshot`` (an entry of ``snapshot_table()``) as a list of
        entries, for ``map_runs(l1_table=...)``."""
        raise UnsupportedOperation("%s images have no internal snapshots" % self.format_name, self.path)

    def persistent_bitmaps_supported(self):
        """Whether this image can hold persistent dirty bitmaps (``bitmaps()``)."""
        return False

    def bitmaps(self):
        """Persistent dirty bitmaps: dicts with at least ``name`` and ``granularity``."""
        return []

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
        return super(ReadOnlyDriver, cls).open(path, readonly, opener, force_share)

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
