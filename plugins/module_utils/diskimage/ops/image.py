# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""open_image(): an opened image (with its backing chain) for callers that
read or write guest data, and the chain-wide block status every operation
walks (what QEMU calls block status "above" a base)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import functools
import os

from ..errors import ImageError, ImageNotFoundError, InvalidOptionError, NoSpaceError
from ..formats.base import DATA, ZERO, UNALLOCATED, Extent
from .. import chain
from .._io import no_space_reason


def os_error(exc, path, action):
    """An ImageError for an OSError met while ``action`` on ``path``."""
    if isinstance(exc, ImageError):
        return exc
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT:
        return ImageNotFoundError("%s: %s" % (action, reason), path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError("%s: %s" % (action, no_space_reason(exc.errno)), path)
    return ImageError("%s: %s" % (action, reason), path)


def _subject_path(args):
    """The path an operation works on: its first argument, or an Image's path."""
    if not args:
        return None
    subject = args[0]
    if isinstance(subject, (str, bytes, os.PathLike)):
        return os.fsdecode(subject)
    return getattr(subject, "path", None)


def translate_os_errors(action):
    """Decorator: OSError escaping ``function`` becomes an ImageError naming the
    file (the one in the error, else the function's first argument)."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except ImageError:
                raise
            except OSError as exc:
                raise os_error(exc, exc.filename or _subject_path(args), action)
        return wrapper
    return decorate


def open_driver(path, fmt=None, readonly=True, allow_dirs=None, force_share=False, member=None, key_secret=None,
                check_open=False, trusted_files=None):
    """chain.open_driver, with OSError turned into ImageError naming the file.
    ``member``: a disk inside an OVA or Vagrant box (name or index; ova.py).
    ``key_secret``: the passphrase of encrypted (LUKS) layers."""
    path = os.fspath(path)
    try:
        return chain.open_driver(path, fmt=fmt, readonly=readonly, allow_dirs=allow_dirs,
                                 force_share=force_share, member=member, key_secret=key_secret,
                                 check_open=check_open, trusted_files=trusted_files)
    except ImageError:
        raise
    except OSError as exc:
        raise os_error(exc, exc.filename or path, "cannot open image")


def _merge(extents):
    """Join adjacent extents of the same kind (host offsets are dropped)."""
    merged = []
    for extent in extents:
        if extent.length <= 0:
            continue
        if merged and merged[-1].kind == extent.kind and merged[-1].start + merged[-1].length == extent.start:
            last = merged[-1]
            merged[-1] = Extent(last.start, last.length + extent.length, last.kind, None)
        else:
            merged.append(Extent(extent.start, extent.length, extent.kind, None))
    return merged


def status_windows(start, end, window, status):
    """Walk [start, end) window by window: yields (window start, window end,
    ``status(offset, length)``), a list of runs, so that no list grows with the
    virtual size.  After a window that came back as one run without data (a
    hole, zeroes, unallocated: for ``status`` returning several lists, each of
    them) the next window is twice as large, after any other it is ``window``
    again: a huge empty disk costs a few dozen calls, not one per window."""
    size = window
    position = start
    while position < end:
        length = min(size, end - position)
        answer = status(position, length)
        yield position, position + length, answer
        position += length
        lists = answer if isinstance(answer, tuple) else (answer,)
        if all(len(runs) == 1 and runs[0].kind != DATA for runs in lists):
            size *= 2
        else:
            size = window


def chain_block_status(layer, offset, length, base=None, hole_granule=None):
    """Block status of the chain from ``layer`` down to (not including) ``base``.

    Kinds: DATA (some layer holds bytes), ZERO (reads as zeroes: some layer
    says so, or, when ``base`` is given, the range lies past the end of a
    backing file), UNALLOCATED (no layer above ``base`` allocates the range:
    it reads from ``base``, or as zeroes when ``base`` is None).  Adjacent
    runs of one kind are merged.

    With ``hole_granule`` (a conversion), DATA of a layer whose host offsets
    point into one file of its own (``host_file_of_offsets``) is ZERO where
    that file has a hole covering whole ``hole_granule``-aligned blocks: those
    bytes read as zeroes, and are then never read.
    """
    end = min(offset + length, layer.virtual_size)
    if offset >= end:
        return []
    # Past a backing file's end the guest reads zeroes; above a base that must be
    # said explicitly (the base may be longer), without one it is just unallocated.
    past_end_kind = UNALLOCATED if base is None else ZERO
    hole_file = layer.host_file_of_offsets() if hole_granule else None
    runs = []
    for extent in layer.block_status(offset, end - offset):
        if extent.kind != UNALLOCATED:
            if hole_file is not None and extent.kind == DATA and extent.offset is not None:
                runs.extend(split_file_holes(hole_file, extent, hole_granule))
            else:
                runs.append(extent)
            continue
        backing = layer.backing
        if backing is None:
            runs.append(Extent(extent.start, extent.length, past_end_kind, None))
            continue
        ext_end = extent.start + extent.length
        inside_end = max(extent.start, min(ext_end, backing.virtual_size))
        if extent.start < inside_end:
            if backing is base:
                runs.append(Extent(extent.start, inside_end - extent.start, UNALLOCATED, None))
            else:
                runs.extend(chain_block_status(backing, extent.start, inside_end - extent.start, base,
                                               hole_granule))
        if inside_end < ext_end:
            runs.append(Extent(inside_end, ext_end - inside_end, past_end_kind, None))
    return _merge(runs)


def split_file_holes(image_file, extent, granule):
    """The DATA ``extent`` (host offset ``extent.offset`` in ``image_file``) as
    DATA and ZERO extents: ZERO where the file has a hole (SEEK_HOLE) that covers
    whole ``granule``-aligned guest blocks; smaller holes stay DATA, and so do
    ranges past the file's end (the driver's read says what they are)."""
    delta = extent.offset - extent.start
    guest_end = extent.start + extent.length
    file_end = image_file.size()
    position = extent.start
    result = []
    for file_start, count, is_data in image_file.data_extents(extent.offset, extent.length):
        if is_data:
            continue
        hole_start = -(-(file_start - delta) // granule) * granule
        hole_end = min(guest_end, (min(file_start + count, file_end) - delta) // granule * granule)
        if hole_end <= hole_start:
            continue
        if hole_start > position:
            result.append(Extent(position, hole_start - position, DATA, position + delta))
        result.append(Extent(hole_start, hole_end - hole_start, ZERO, None))
        position = hole_end
    if position < guest_end:
        result.append(Extent(position, guest_end - position, DATA, position + delta))
    return result


def reads_zero(kind, base=None):
    """Whether a run of ``kind`` from chain_block_status reads as zeroes."""
    return kind == ZERO or (kind == UNALLOCATED and base is None)


class Image:
    """An opened image and its backing chain; see open_image()."""

    def __init__(self, driver):
        self._driver = driver
        self._path = driver.path

    @property
    def driver(self):
        """The top layer's Driver (its ``backing`` attribute leads down the chain)."""
        return self._open_driver()

    def _open_driver(self):
        if self._driver is None:
            raise ImageError("the image is closed", self._path)
        return self._driver

    @property
    def virtual_size(self):
        return self._open_driver().virtual_size

    @property
    def format(self):
        return self._open_driver().format_name

    @property
    def path(self):
        return self._path

    @property
    def readonly(self):
        return self._open_driver().readonly

    def _check_range(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self._open_driver().virtual_size:
            raise InvalidOptionError("range %d+%d is outside the image (virtual size %d)"
                                     % (offset, length, self._open_driver().virtual_size), self.path)

    @translate_os_errors("read failed")
    def read(self, offset, length):
        self._check_range(offset, length)
        return self._open_driver().read(offset, length)

    @translate_os_errors("write failed")
    def write(self, offset, data):
        self._check_range(offset, len(data))
        self._open_driver().write(offset, data)

    @translate_os_errors("write failed")
    def write_zeroes(self, offset, length, may_unmap=False):
        self._check_range(offset, length)
        self._open_driver().write_zeroes(offset, length, may_unmap=may_unmap)

    def block_status(self, offset=0, length=None):
        """Chain-wide block status (see chain_block_status)."""
        if length is None:
            length = self._open_driver().virtual_size - offset
        self._check_range(offset, length)
        return chain_block_status(self._driver, offset, length)

    @translate_os_errors("flush failed")
    def flush(self):
        self._open_driver().flush()

    def close(self):
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.close()

    @property
    def closed(self):
        return self._driver is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@translate_os_errors("cannot open image")
def open_image(path, fmt=None, readonly=True, allow_dirs=None, force_share=False, member=None, key_secret=None,
               trusted_files=None):
    """Open ``path`` (format probed when ``fmt`` is None; a probed raw image
    refuses writes to sector 0) with its backing chain, under the path policy.
    ``member`` selects a disk inside an OVA or Vagrant box (read-only).
    ``key_secret`` is the passphrase of an encrypted (LUKS) image."""
    return Image(open_driver(path, fmt=fmt, readonly=readonly, allow_dirs=allow_dirs,
                             force_share=force_share, member=member, key_secret=key_secret,
                             trusted_files=trusted_files))
