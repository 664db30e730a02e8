# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data path of a copy (ops/convert.py): zero detection, a read-ahead
thread and early writeback.

- ``zero_runs`` splits read data into zero and non-zero runs of whole
  granules without a Python loop per granule: it looks only at the granules
  whose first and last bytes are zero (a strided slice finds them), compares
  those whole with a shared zero buffer, and extends a zero run by galloping.
- ``ReadAhead`` runs the reading side of a copy (block status, reads, zero
  detection, the content digest) on its own thread, at most ``depth`` items
  ahead of the writing side: os.pread, os.pwrite, hashlib and zlib release
  the GIL, so reading and writing overlap.  An error on either side stops
  both and is raised in the caller's thread.
- ``Writeback`` starts the write-out of what was written every few MiB
  (sync_file_range when libc offers it, else fdatasync, on its own thread)
  without waiting for it, and drops from the page cache the pages that
  earlier steps wrote out: the final flush before the output is renamed into
  place has little left to do, a large conversion does not flood the host's
  page cache, and the copy keeps writing into a small set of recycled (warm)
  pages instead of ever new ones.  It is an optimisation only: failures
  disable it quietly, durability comes from the final flush.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import threading

try:
    import queue
except ImportError:  # pragma: no cover - Python 2 name
    import Queue as queue  # noqa: N813

try:
    import ctypes
except ImportError:  # pragma: no cover - ctypes is missing only on exotic builds
    ctypes = None

from .._io import libc_library
from ..formats.base import MAX_IO, ZEROES, zero_bytes


def is_zero(data):
    """Whether ``data`` (bytes-like) is all zero bytes."""
    return ZEROES.startswith(data) if len(data) <= MAX_IO else data == bytes(len(data))


def _zero_at(data, start, end):
    """Whether data[start:end] is all zero bytes (no copy)."""
    if end - start <= MAX_IO:
        return data.startswith(zero_bytes(end - start), start)
    return all(data.startswith(zero_bytes(min(MAX_IO, end - position)), position)
               for position in range(start, end, MAX_IO))


def _zero_extent(data, start, stop, granule):
    """The end of the zero bytes from ``start`` on, in whole ``granule`` blocks
    (the last one may end at ``stop``, the end of the data), knowing that the
    first block is zero: galloping over the blocks, then bisection."""
    blocks = -(-(stop - start) // granule)

    def boundary(count):
        return min(stop, start + count * granule)

    good = 1
    step = 1
    while good < blocks:
        probe = min(blocks, good + step)
        if not _zero_at(data, boundary(good), boundary(probe)):
            # Zero up to boundary(good), not up to boundary(probe).
            high = probe
            while high - good > 1:
                middle = (good + high) // 2
                if _zero_at(data, boundary(good), boundary(middle)):
                    good = middle
                else:
                    high = middle
            break
        good = probe
        step *= 2
    return boundary(good)


def zero_runs(data, offset, granule, length=None):
    """Split ``data[:length]`` (bytes or bytearray; all of it by default) read
    at guest ``offset`` into (start, end, is_zero) runs of whole
    ``granule``-aligned blocks (indices into ``data``; the first and last
    blocks may be partial), adjacent runs of one kind merged."""
    length = len(data) if length is None else length
    if _zero_at(data, 0, length):
        return [(0, length, True)]
    head = min(length, (-offset) % granule)
    zero = []                  # (start, end) of zero blocks, in order, merged
    if head and _zero_at(data, 0, head):
        zero.append((0, head))
    if head < length:
        # Candidates: blocks whose first and last bytes are zero (the strided
        # slices hold one byte per block); each is compared whole.
        firsts = data[head:length:granule]
        lasts = data[head + granule - 1:length:granule]
        blocks = len(firsts)
        index = firsts.find(0)
        while 0 <= index < blocks:
            start = head + index * granule
            end = min(length, start + granule)
            if (index >= len(lasts) or lasts[index] == 0) and _zero_at(data, start, end):
                end = _zero_extent(data, start, length, granule) if end < length else end
                if zero and zero[-1][1] == start:
                    zero[-1] = (zero[-1][0], end)
                else:
                    zero.append((start, end))
                index = (end - head + granule - 1) // granule
            else:
                index += 1
            if index < blocks:
                index = firsts.find(0, index)
    runs = []
    position = 0
    for start, end in zero:
        if start > position:
            runs.append((position, start, False))
        runs.append((start, end, True))
        position = end
    if position < length:
        runs.append((position, length, False))
    return runs


class _Stopped(Exception):
    """The consumer went away: the producer thread ends."""


class _Failure:
    """An exception raised on the producer thread, to be raised again by the consumer."""

    def __init__(self, error):
        self.error = error


_END = object()


class ReadAhead:
    """Run ``produce(put)`` on a thread of its own; iterating over this object
    (inside ``with``) yields what it put, in order, with at most ``depth``
    items waiting (bounded memory).  An exception in ``produce`` is raised by
    the iteration; leaving the ``with`` block early stops the producer at its
    next ``put`` and waits for it."""

    def __init__(self, produce, depth):
        self._produce = produce
        self._queue = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvm-storage-read-ahead")
        self._thread.daemon = True

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)   # unblock a producer waiting to put
            except queue.Empty:
                pass
        self._thread.join()
        return False

    def put(self, item):
        """Producer side: hand over ``item``, waiting while ``depth`` items wait."""
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self):
        try:
            self._produce(self.put)
            self.put(_END)
        except _Stopped:
            pass
        except BaseException as exc:  # pylint: disable=broad-except
            try:
                self.put(_Failure(exc))
            except _Stopped:
                pass

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item


# sync_file_range(2) flags (linux/fs.h).
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4

_sync_file_range_function = None


def _sync_file_range():
    """libc sync_file_range() through ctypes, or None when unavailable."""
    global _sync_file_range_function
    if _sync_file_range_function is None:
        function = False
        if ctypes is not None:
            try:
                libc = libc_library()
                function = getattr(libc, "sync_file_range")
                function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                function.restype = ctypes.c_int
            except (OSError, AttributeError):
                function = False
        _sync_file_range_function = function
    return _sync_file_range_function or None


# Bytes written between two write-outs (small: the pages dropped are soon reused, still warm).
WRITEBACK_STEP = 8 * 1024 * 1024


class Writeback:
    """Early write-out of the file at ``path`` (a new image, or a device
    written in place) while it is being written: call ``advance(bytes_written)``
    as the copy goes; ``close()`` at the end (the caller still flushes)."""

    def __init__(self, path, step=None):
        self._step = step or WRITEBACK_STEP
        self._next = self._step
        self._fd = None
        self._pending = False
        self._closed = False
        self._condition = threading.Condition()
        self._thread = None
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except (OSError, TypeError, ValueError):
            return
        self._thread = threading.Thread(target=self._run, name="kvm-storage-writeback")
        self._thread.daemon = True
        self._thread.start()

    def advance(self, written):
        """The copy has written ``written`` bytes so far."""
        if self._thread is None or written < self._next:
            return
        self._next = written + self._step
        with self._condition:
            self._pending = True
            self._condition.notify()

    def _run(self):
        while True:
            with self._condition:
                while not self._pending and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                self._pending = False
            if not self._write_out():
                return

    def _write_out(self):
        """Start the write-out of the file's dirty pages (not waiting for it: the device stays busy
        while the copy goes on) and drop its clean ones, those an earlier step wrote out; False when
        that cannot be done here."""
        try:
            function = _sync_file_range()
            if function is None or function(self._fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
                os.fdatasync(self._fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, ValueError):
            return False
        return True

    def close(self):
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
