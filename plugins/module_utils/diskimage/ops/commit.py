# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""commit(): ``qemu-img commit``.

What the overlay's own layer holds (block status of the top layer only: data
copied, zero ranges written as zeroes) is written into its backing file,
opened writable with its recorded format (the chain opens backing layers
read-only, and those locks are dropped first).  The backing file is grown
when the overlay is larger, as QEMU does.  Then, by default, the overlay is
emptied (qemu-img commit without -d), once the backing file is flushed.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import time

from ..errors import InvalidOptionError
from ..formats.base import DATA, MAX_IO, ZERO
from .create import close_quietly
from .image import open_driver, translate_os_errors

# Guest bytes whose block status is asked for at once.
STATUS_WINDOW = 16 * MAX_IO


def _backing_format(top):
    """The format the backing file is opened with for writing: the recorded one;
    an unrecorded one only when probing found a non-raw format (a probed raw
    answer is never trusted on a write path)."""
    if top.backing_format:
        return top.backing_format
    if top.backing.probe_fallback:
        raise InvalidOptionError("the backing file %r has no recorded format and probes as raw; record its "
                                 "format first (rebase with unsafe=True and backing_fmt)"
                                 % (top.backing_filename,), top.path)
    return top.backing.format_name


def _copy_top_layer(top, base, progress):
    size = top.virtual_size
    written = 0
    for window in range(0, size, STATUS_WINDOW):
        for extent in top.block_status(window, min(STATUS_WINDOW, size - window)):
            start, end = extent.start, extent.start + extent.length
            if extent.kind == ZERO:
                base.write_zeroes(start, end - start, may_unmap=True)
                written += end - start
            elif extent.kind == DATA:
                position = start
                while position < end:
                    chunk_end = min(end, (position // MAX_IO + 1) * MAX_IO)
                    base.write(position, top.read(position, chunk_end - position))
                    written += chunk_end - position
                    position = chunk_end
                    if progress is not None:
                        progress(position, size)
            if progress is not None:
                progress(end, size)
    if progress is not None:
        progress(size, size)
    return written


@translate_os_errors("cannot commit image")
def commit(path, fmt=None, allow_dirs=None, empty=True, progress=None, trusted_files=None):
    """Write the data of ``path`` into its backing file, then (``empty=True``,
    qemu-img's default; ``empty=False`` is qemu-img commit -d) drop it from
    ``path``.  Returns {"bytes_written", "backing_file", "duration"}."""
    started = time.monotonic()
    if progress is not None and not callable(progress):
        raise InvalidOptionError("progress must be callable, found %r" % (progress,), path)
    top = open_driver(path, fmt=fmt, readonly=False, allow_dirs=allow_dirs, trusted_files=trusted_files)
    base = None
    try:
        if top.backing is None:
            raise InvalidOptionError("the image has no backing file to commit into", top.path)
        base_path = top.backing.path
        base_fmt = _backing_format(top)
        # The chain holds the backing read-only; that open would conflict with ours.
        old_backing, top.backing = top.backing, None
        old_backing.close()
        base = open_driver(base_path, fmt=base_fmt, readonly=False, allow_dirs=allow_dirs,
                           trusted_files=trusted_files)
        if base.virtual_size < top.virtual_size:
            base.resize(top.virtual_size)
        written = _copy_top_layer(top, base, progress)
        base.flush()
        if empty:
            top.make_empty()
            top.flush()
        return {"bytes_written": written, "backing_file": base_path, "duration": time.monotonic() - started}
    finally:
        close_quietly(base)
        close_quietly(top)
