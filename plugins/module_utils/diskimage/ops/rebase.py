# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rebase(): ``qemu-img rebase``.

Safe mode keeps the overlay's guest-visible content: wherever the overlay
does not allocate a range and the old backing chain's bytes differ from the
new one's, the old bytes are copied into the overlay first; only then is the
header switched to the new backing file (one header write).  Ranges the old
chain reads from the new backing file itself (rebasing onto an ancestor) or
reads as zeroes when flattening are not even read.  Unsafe mode
changes the header alone and never opens the old backing file (it may be
gone).  An empty backing name flattens: everything the old chain shows
through is copied, then the backing file is dropped.

The new backing format must be given (docs/security.md rule 2: never guessed on a write path;
qemu-img 7.2 also requires -F).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import time

from .._io import ImageFile
from ..errors import ImageError, InvalidOptionError, UnsupportedOperation
from ..formats import driver_class
from ..formats.base import Driver, MAX_IO, UNALLOCATED, ZERO
from ..policy import resolve_reference
from ..probe import probe_format
from .create import close_quietly, open_backing
from .image import chain_block_status, open_driver, os_error, reads_zero, translate_os_errors

# Guest bytes whose block status is asked for at once.
STATUS_WINDOW = 16 * MAX_IO
# Granularity of the old/new comparison when the overlay has no cluster size.
DEFAULT_GRANULE = 65536


class _TopLayerOpener:
    """Opener for header-only changes: the backing file is not opened (it may be
    missing); external data files still go through the path policy."""

    def __init__(self, allow_dirs, trusted_files=None):
        self._allow_dirs = list(allow_dirs) if allow_dirs else None
        self._trusted_files = trusted_files

    def __call__(self, referrer_path, name, fmt=None):
        return None

    def data_file(self, referrer_path, name, writable=None):
        resolved = resolve_reference(referrer_path, name, self._allow_dirs, kind="data file",
                                     trusted_files=self._trusted_files)
        return ImageFile(resolved, writable=bool(writable))


def open_top_layer(path, fmt, allow_dirs, trusted_files=None):
    """Open ``path`` writable without its backing chain."""
    path = os.path.abspath(os.fspath(path))
    cls = driver_class(fmt or probe_format(path), path)
    try:
        return cls.open(path, readonly=False, opener=_TopLayerOpener(allow_dirs, trusted_files))
    except ImageError:
        raise
    except OSError as exc:
        raise os_error(exc, exc.filename or path, "cannot open image")


def _check_backing_support(driver):
    if type(driver).set_backing is Driver.set_backing:
        raise UnsupportedOperation("%s images cannot have a backing file" % driver.format_name, driver.path)


def _granule(driver):
    size = getattr(driver, "cluster_size", None)
    if not isinstance(size, int):
        size = driver.info().get("cluster-size", 0)
    return size or DEFAULT_GRANULE


def _view(layer, offset, length):
    """Guest bytes of ``layer`` (None: no backing file) at [offset, offset+length),
    zeroes past its end."""
    if layer is None or offset >= layer.virtual_size:
        return bytes(length)
    inside = min(length, layer.virtual_size - offset)
    data = layer.read(offset, inside)
    return data if inside == length else data + bytes(length - inside)


def _write_preserved(overlay, offset, data):
    """Store ``data`` (the old guest view) in the overlay at ``offset``."""
    if data.count(0) == len(data):
        overlay.write_zeroes(offset, len(data), may_unmap=False)
    else:
        overlay.write(offset, data)


def _ancestor(overlay, new_backing):
    """The layer of the overlay's current chain that is the new backing file
    (same file, same format), or None.  Ranges the chain reads from it need no
    comparison (qemu-img rebase onto an ancestor copies only what lies between)."""
    if new_backing is None:
        return None
    target = os.path.realpath(new_backing.path)
    layer = overlay.backing
    while layer is not None:
        if os.path.realpath(layer.path) == target and layer.format_name == new_backing.format_name \
                and layer.virtual_size == new_backing.virtual_size:
            return layer
        layer = layer.backing
    return None


def _ranges_to_compare(overlay, ancestor, new_backing, start, end):
    """Parts of [start, end) (unallocated in the overlay) whose old view may
    differ from the new one: neither read from the common ancestor, nor zeroes
    on both sides when there is no new backing file."""
    old_chain = overlay.backing
    if old_chain is None:
        runs = [(start, end, ZERO)]
    else:
        runs = [(run.start, run.start + run.length, run.kind)
                for run in chain_block_status(old_chain, start, end - start, base=ancestor)]
        covered = min(end, max(start, old_chain.virtual_size))
        if covered < end:
            runs.append((covered, end, ZERO))   # past the old backing's end: zeroes
    for run_start, run_end, kind in runs:
        if ancestor is not None and kind == UNALLOCATED:
            continue
        if new_backing is None and reads_zero(kind, ancestor):
            continue
        yield run_start, run_end


def _copy_differences(overlay, new_backing, progress):
    """Copy into the overlay every granule it does not allocate whose old view
    differs from the new backing's; returns the bytes written."""
    size = overlay.virtual_size
    granule = _granule(overlay)
    ancestor = _ancestor(overlay, new_backing)
    written = 0
    for window in range(0, size, STATUS_WINDOW):
        for extent in overlay.block_status(window, min(STATUS_WINDOW, size - window)):
            if extent.kind != UNALLOCATED:
                continue
            for start, end in _ranges_to_compare(overlay, ancestor, new_backing, extent.start,
                                                 extent.start + extent.length):
                written += _compare_and_copy(overlay, new_backing, start, end, granule, progress)
        if progress is not None:
            progress(min(size, window + STATUS_WINDOW), size)
    if progress is not None:
        progress(size, size)
    return written


def _compare_and_copy(overlay, new_backing, start, end, granule, progress):
    written = 0
    position = start
    while position < end:
        chunk_end = min(end, (position // MAX_IO + 1) * MAX_IO)
        length = chunk_end - position
        old = overlay.read(position, length)
        new = _view(new_backing, position, length)
        if old != new:
            written += _copy_differing_granules(overlay, position, old, new, granule)
        position = chunk_end
        if progress is not None:
            progress(position, overlay.virtual_size)
    return written


def _copy_differing_granules(overlay, offset, old, new, granule):
    old_view, new_view = memoryview(old), memoryview(new)
    length = len(old)
    written = 0
    run_start = None
    position = 0
    while position <= length:
        if position < length:
            end = min(length, (offset + position) // granule * granule + granule - offset)
            differs = old_view[position:end] != new_view[position:end]
        else:
            end, differs = length, False
        if differs and run_start is None:
            run_start = position
        elif not differs and run_start is not None:
            _write_preserved(overlay, offset + run_start, bytes(old_view[run_start:position]))
            written += position - run_start
            run_start = None
        if position == length:
            break
        position = end
    return written


def _check_backing_args(path, backing_file, backing_fmt):
    backing_file = backing_file or None
    backing_fmt = backing_fmt or None
    if backing_file is None:
        if backing_fmt is not None:
            raise InvalidOptionError("backing_fmt %r given without a backing file" % (backing_fmt,), path)
    elif backing_fmt is None:
        raise InvalidOptionError("backing_fmt is required with backing_file %r: the backing format is "
                                 "never guessed" % (backing_file,), path)
    return backing_file, backing_fmt


@translate_os_errors("cannot rebase image")
def rebase(path, backing_file, backing_fmt=None, unsafe=False, fmt=None, allow_dirs=None, progress=None,
           trusted_files=None):
    """Make ``backing_file`` (format ``backing_fmt``; "" or None: none) the
    backing file of ``path``, as ``qemu-img rebase [-u]`` does.  The new name
    is recorded as given and resolved relative to ``path`` through the path
    policy.  Returns {"bytes_written", "duration"}."""
    started = time.monotonic()
    path = os.path.abspath(os.fspath(path))
    backing_file, backing_fmt = _check_backing_args(path, backing_file, backing_fmt)
    if progress is not None and not callable(progress):
        raise InvalidOptionError("progress must be callable, found %r" % (progress,), path)
    if unsafe:
        driver = open_top_layer(path, fmt, allow_dirs, trusted_files)
        try:
            _check_backing_support(driver)
            driver.set_backing(backing_file, backing_fmt)
            driver.flush()
        finally:
            driver.close()
        return {"bytes_written": 0, "duration": time.monotonic() - started}
    overlay = open_driver(path, fmt=fmt, readonly=False, allow_dirs=allow_dirs, trusted_files=trusted_files)
    new_backing = None
    try:
        _check_backing_support(overlay)
        if backing_file is not None:
            new_backing = open_backing(overlay.path, backing_file, backing_fmt, allow_dirs, trusted_files)
            layer = new_backing
            while layer is not None:
                if os.path.realpath(layer.path) == os.path.realpath(overlay.path):
                    raise InvalidOptionError("the new backing chain %r leads back to the image itself"
                                             % (backing_file,), path)
                layer = layer.backing
        written = _copy_differences(overlay, new_backing, progress)
        overlay.flush()
        overlay.set_backing(backing_file, backing_fmt)
        overlay.flush()
        return {"bytes_written": written, "duration": time.monotonic() - started}
    finally:
        close_quietly(new_backing)
        close_quietly(overlay)
