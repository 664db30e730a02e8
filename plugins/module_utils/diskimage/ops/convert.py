# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""convert(): ``qemu-img convert``.

The source chain is walked by block status: holes are never read nor
written, data is read in MAX_IO chunks, zero blocks found in it are skipped
(or written as zeroes when the output has a backing file), and the rest is
written in large runs.  Compressed qcow2 output compresses whole clusters in
a thread pool (zlib releases the GIL) with a bounded number in flight, and
writes them in guest order.  The output is built under a temporary name and
renamed into place when complete and flushed; with ``on_device`` it is
written in place onto an existing block device instead (ops/create.py).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import ImageError, InvalidOptionError
from ..formats.base import DATA, MAX_IO
from .create import (build_image, build_on_device, close_quietly, discard, open_backing, publish,
                     split_backing_options, sync_file, target_and_driver_class, temporary_path)
from .image import chain_block_status, open_driver, os_error, reads_zero, translate_os_errors
from .sizes import normalize_options, round_up, SECTOR_SIZE

# Smallest run of zeroes inside read data that is left as a hole (qemu-img -S default).
MIN_SPARSE = 4096
# Guest bytes whose block status is asked for at once (bounds the extent lists).
STATUS_WINDOW = 16 * MAX_IO
# Compressed clusters in flight per worker thread, and the bytes they may hold at most.
IN_FLIGHT_PER_WORKER = 4
IN_FLIGHT_BYTES = 8 * MAX_IO

_ZEROES = bytes(MAX_IO)


def is_zero(data):
    """Whether ``data`` (bytes, at most MAX_IO long) is all zero bytes."""
    return _ZEROES.startswith(data) if len(data) <= MAX_IO else data == bytes(len(data))


def zero_runs(data, offset, granule):
    """Split ``data`` read at guest ``offset`` into (start, end, is_zero) runs of
    whole ``granule``-aligned blocks (indices into ``data``)."""
    length = len(data)
    if is_zero(data):
        return [(0, length, True)]
    zero_granule = _ZEROES[:granule]
    runs = []
    position = 0
    while position < length:
        end = min(length, (offset + position) // granule * granule + granule - offset)
        if end - position == granule:
            zero = data.startswith(zero_granule, position)
        else:
            zero = _ZEROES.startswith(data[position:end])
        if runs and runs[-1][2] == zero:
            runs[-1] = (runs[-1][0], end, zero)
        else:
            runs.append((position, end, zero))
        position = end
    return runs


def align_down(value, alignment):
    return value // alignment * alignment


def cluster_runs(runs, cluster_size, size):
    """Turn chain block status runs into cluster-aligned runs: a cluster that is
    not wholly of one kind becomes DATA (it is read and written whole, as
    compressed output needs)."""
    aligned = []

    def add(start, end, kind):
        if aligned and start < aligned[-1][1]:
            start = aligned[-1][1]
        if start >= end:
            return
        if aligned and aligned[-1][2] == kind and aligned[-1][1] == start:
            aligned[-1] = (aligned[-1][0], end, kind)
        else:
            aligned.append((start, end, kind))

    for run in runs:
        start, end = run.start, run.start + run.length
        if run.kind == DATA:
            add(align_down(start, cluster_size), min(round_up(end, cluster_size), size), DATA)
            continue
        inner_start = round_up(start, cluster_size)
        inner_end = end if end == size else align_down(end, cluster_size)
        if inner_start > start:
            add(align_down(start, cluster_size), min(inner_start, size), DATA)
        if inner_start < inner_end:
            add(inner_start, inner_end, run.kind)
        if inner_end < end:
            add(inner_end, min(round_up(end, cluster_size), size), DATA)
    return aligned


def _cluster_size(driver):
    """The target's cluster size (0 for formats without clusters), from the
    driver's info() as the interface defines it."""
    size = getattr(driver, "cluster_size", None)
    if not isinstance(size, int):
        size = driver.info().get("cluster-size", 0)
    return size or 0


class _Converter:
    """State of one conversion: the opened source chain and the new target."""

    def __init__(self, source, target, base, target_backing_size, has_zero_init, progress, digest=None):
        self.source = source
        self.target = target
        self.base = base
        self.size = source.virtual_size
        self.target_backing_size = target_backing_size
        self.has_zero_init = has_zero_init
        self.progress = progress
        self.bytes_read = 0
        self.bytes_written = 0
        self.bytes_zeroed = 0
        self.compressed_clusters = 0
        # Hash of the guest-visible content, fed in guest order (``digested`` bytes so far).
        self.digest = digest
        self.digested = 0
        cluster_size = _cluster_size(target)
        self.cluster_size = cluster_size
        self.granule = max(MIN_SPARSE, cluster_size)

    # ----------------------------------------------------------- block status
    def runs(self):
        """Chain block status of the source (above ``base``), window by window."""
        for window in range(0, self.size, STATUS_WINDOW):
            length = min(STATUS_WINDOW, self.size - window)
            yield from chain_block_status(self.source, window, length, self.base)

    def report(self, done):
        if self.progress is not None:
            self.progress(min(done, self.size), self.size)

    # ----------------------------------------------------------------- writes
    def zeroes(self, offset, length):
        """Make [offset, offset+length) of the target read as zeroes."""
        if self.has_zero_init:
            return
        # Past the target's backing file the new image reads zeroes already.
        end = min(offset + length, self.target_backing_size)
        if offset < end:
            self.target.write_zeroes(offset, end - offset, may_unmap=True)
            self.bytes_zeroed += end - offset
            if self.target.zeroes_written_as_data:
                self.bytes_written += end - offset

    def hash_content(self, offset, data=None, length=0):
        """Feed the digest ``data`` (or ``length`` zero bytes) found at guest ``offset``."""
        if self.digest is None:
            return
        if offset != self.digested:
            raise ImageError("internal error: content digest fed out of order (offset %d, expected %d)"
                             % (offset, self.digested), self.source.path)
        if data is not None:
            self.digest.update(data)
            self.digested += len(data)
            return
        end = offset + length
        while self.digested < end:
            count = min(MAX_IO, end - self.digested)
            self.digest.update(memoryview(_ZEROES)[:count])
            self.digested += count

    def data(self, offset, data):
        self.target.write(offset, data)
        self.bytes_written += len(data)

    def read(self, offset, length):
        data = self.source.read(offset, length)
        if len(data) != length:
            raise ImageError("short read at offset %d: expected %d bytes, got %d"
                             % (offset, length, len(data)), self.source.path)
        self.bytes_read += length
        self.hash_content(offset, data)
        return data

    # ------------------------------------------------------------ plain copy
    def copy(self):
        for run in self.runs():
            start, end = run.start, run.start + run.length
            if run.kind == DATA:
                self.copy_data(start, end)
            elif reads_zero(run.kind, self.base):
                self.hash_content(start, length=end - start)
                self.zeroes(start, end - start)
            # UNALLOCATED above the base: left unallocated, the backing shows through.
            self.report(end)
        self.report(self.size)

    def copy_data(self, start, end):
        position = start
        while position < end:
            chunk_end = min(end, align_down(position, MAX_IO) + MAX_IO)
            data = self.read(position, chunk_end - position)
            for first, last, zero in zero_runs(data, position, self.granule):
                if zero:
                    self.zeroes(position + first, last - first)
                elif first == 0 and last == len(data):
                    self.data(position, data)
                else:
                    self.data(position + first, data[first:last])
            position = chunk_end
            self.report(position)

    # ------------------------------------------------------- compressed copy
    def copy_compressed(self, workers):
        cluster = self.cluster_size
        if cluster <= 0 or cluster > MAX_IO:
            raise InvalidOptionError("compressed output needs a cluster size between 512 and %d, found %r"
                                     % (MAX_IO, cluster), self.target.path)
        chunk = align_down(MAX_IO, cluster)
        in_flight = collections.deque()
        limit = max(workers, min(workers * IN_FLIGHT_PER_WORKER, IN_FLIGHT_BYTES // cluster))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for window in range(0, self.size, STATUS_WINDOW):
                    length = min(STATUS_WINDOW, self.size - window)
                    runs = chain_block_status(self.source, window, length, self.base)
                    for start, end, kind in cluster_runs(runs, cluster, window + length):
                        if kind != DATA:
                            if reads_zero(kind, self.base):
                                self.hash_content(start, length=end - start)
                            if reads_zero(kind, self.base) and not self.has_zero_init:
                                self._drain(in_flight, 0)
                                self.zeroes(start, end - start)
                            self.report(end)
                            continue
                        for position in range(start, end, chunk):
                            data = self.read(position, min(chunk, end - position))
                            self._compress_chunk(pool, in_flight, limit, position, data)
                            self.report(position + len(data))
                self._drain(in_flight, 0)
            finally:
                for _offset, _cluster_data, future in in_flight:
                    future.cancel()
        self.report(self.size)

    def _compress_chunk(self, pool, in_flight, limit, position, data):
        cluster = self.cluster_size
        view = memoryview(data)
        for first in range(0, len(data), cluster):
            cluster_data = bytes(view[first:first + cluster])
            offset = position + first
            if is_zero(cluster_data):
                if not self.has_zero_init:
                    self._drain(in_flight, 0)
                    self.zeroes(offset, len(cluster_data))
                continue
            if len(cluster_data) < cluster:
                # The image's partial last cluster is written uncompressed.
                self._drain(in_flight, 0)
                self.data(offset, cluster_data)
                continue
            in_flight.append((offset, cluster_data, pool.submit(self.target.compress_cluster, cluster_data)))
            self._drain(in_flight, limit - 1)

    def _drain(self, in_flight, keep):
        """Write finished clusters in guest order until at most ``keep`` are in flight."""
        while len(in_flight) > keep:
            offset, cluster_data, future = in_flight.popleft()
            compressed = future.result()
            if compressed is None:
                self.data(offset, cluster_data)
            else:
                self.target.write_compressed(offset, compressed)
                self.bytes_written += len(cluster_data)
                self.compressed_clusters += 1


def _result(converter, size, started):
    result = {
        "bytes_read": converter.bytes_read,
        "bytes_written": converter.bytes_written,
        "bytes_zeroed": converter.bytes_zeroed,
        "compressed_clusters": converter.compressed_clusters,
        "virtual_size": size,
        "duration": time.monotonic() - started,
    }
    if converter.digest is not None:
        result["digest"] = converter.digest.hexdigest()
    return result


def _worker_count():
    return max(1, min(8, os.cpu_count() or 1))


@translate_os_errors("cannot convert image")
def convert(src, dst, out_fmt, src_fmt=None, options=None, compress=False, progress=None,
            allow_dirs=None, target_is_zero=False, force_share=False, target_exists=False,
            snapshot=None, src_member=None, key_secret=None, on_device=False, zero_tail=False, digest=None,
            trusted_files=None):
    """Convert the image ``src`` (with its backing chain) into a new image
    ``dst`` of format ``out_fmt`` (never overwriting ``dst``).

    ``options`` are qemu-img -o options of the output; ``backing_file`` and
    ``backing_fmt`` among them give the output a backing file (qemu-img
    convert -B -F): only what the source's top layer allocates is copied.
    ``compress`` writes compressed clusters (qcow2 only).
    ``progress(done_bytes, total_bytes)`` is called as the copy advances
    (at least once per MAX_IO chunk).
    ``target_exists`` (qemu-img convert -n): ``dst`` is an existing image of
    format ``out_fmt``, at least as large as the source, written in place
    (opened writable, locked; no -o options); ranges that read as zeroes in
    the source are written as zeroes unless ``target_is_zero``.
    ``snapshot`` (qemu-img convert -l snapshot.name=NAME): convert the
    source's internal snapshot NAME (name, else ID) instead of its current
    content.
    ``src_member`` (name or index) converts a disk inside the OVA or Vagrant
    box ``src``, read in place (``.ova``/``.box`` sources default to the first disk).
    ``key_secret`` is the passphrase of an encrypted (LUKS) source; a LUKS
    output takes its passphrase from the ``key-secret`` option.

    ``on_device``: ``dst`` is an existing block device (an LVM logical
    volume) and the output (raw or qcow2) is written onto it in place
    (create(on_device=True)); raw output makes every range that reads zero
    in the source read zero on the device (BLKZEROOUT, else zeroes written)
    unless ``target_is_zero`` says the device reads zero already, and with
    ``zero_tail`` also the device past the image's end.
    ``digest`` (a hashlib name such as "sha256"): the result's "digest" is
    the hex digest of the source's guest-visible content (what
    ``qemu-img convert -O raw SRC - | sha256sum`` prints); not with a backing
    file in the output.

    Returns {"bytes_read", "bytes_written", "bytes_zeroed",
    "compressed_clusters", "virtual_size", "duration"} (bytes of guest data;
    duration in seconds), plus "digest" when asked and, with ``on_device``,
    "zeroout" (True when the device zeroed ranges itself with BLKZEROOUT,
    False when zeroes were written, None when nothing was zeroed).
    """
    started = time.monotonic()
    if progress is not None and not callable(progress):
        raise InvalidOptionError("progress must be callable, found %r" % (progress,), dst)
    hasher = None
    if digest is not None:
        try:
            hasher = hashlib.new(digest)
        except (ValueError, TypeError):
            raise InvalidOptionError("unknown digest algorithm %r" % (digest,), dst)
    if zero_tail and not on_device:
        raise InvalidOptionError("zero_tail needs on_device (only a block device has a tail past the image)", dst)
    if on_device and target_exists:
        raise InvalidOptionError("on_device and target_exists cannot be used together", dst)
    if target_exists:
        return _convert_into_existing(src, dst, out_fmt, src_fmt, options, compress, progress, allow_dirs,
                                      target_is_zero, force_share, snapshot, started, src_member, key_secret,
                                      hasher, trusted_files)
    destination, cls = target_and_driver_class(dst, out_fmt, on_device)
    options = normalize_options(options)
    if "size" in options:
        raise InvalidOptionError("option size cannot be used with convert (the output has the "
                                 "source's size)", destination)
    backing_file, backing_fmt = split_backing_options(options, None, None, destination)
    if compress and not hasattr(cls, "compress_cluster"):
        raise InvalidOptionError("compressed output is not supported for format %s (qcow2 only)"
                                 % out_fmt, destination)
    if target_is_zero and backing_file is not None:
        raise InvalidOptionError("target_is_zero cannot be used with a backing file (zeroes must "
                                 "hide the backing file)", destination)
    if hasher is not None and backing_file is not None:
        raise InvalidOptionError("digest cannot be used with a backing file (only the top layer is read)",
                                 destination)

    source = target_backing = target = temporary = None
    try:
        source = _open_source(src, src_fmt, allow_dirs, force_share, snapshot, src_member, key_secret,
                              trusted_files)
        if backing_file is not None:
            target_backing = open_backing(destination, backing_file, backing_fmt, allow_dirs, trusted_files)
            options["backing_file"] = backing_file
            options["backing_fmt"] = backing_fmt
        size = round_up(source.virtual_size, SECTOR_SIZE)
        if on_device:
            if os.path.realpath(source.path) == os.path.realpath(destination):
                raise InvalidOptionError("the source and the target are the same device", destination)
            build_on_device(cls, out_fmt, destination, size, options, target_backing)
            target = open_driver(destination, fmt=out_fmt, readonly=False, allow_dirs=allow_dirs,
                                 trusted_files=trusted_files)
        else:
            temporary = temporary_path(destination)
            build_image(cls, temporary, size, options, target_backing, destination)
            target = open_driver(temporary, fmt=out_fmt, readonly=False, allow_dirs=allow_dirs,
                                 key_secret=options.get("key-secret"), trusted_files=trusted_files)
        if target_backing is not None:
            # Zeroes must be written so that the backing file does not show through.
            base, target_backing_size, has_zero_init = source.backing, target_backing.virtual_size, False
        else:
            # A new LUKS image does not read as zeroes (has_zero_init False).
            base, target_backing_size, has_zero_init = None, size, getattr(target, "has_zero_init", True)
        if on_device and out_fmt == "raw":
            # The device keeps its old content: zeroes are written unless it is known to read zero.
            has_zero_init = bool(target_is_zero)
        converter = _Converter(source, target, base, target_backing_size, has_zero_init, progress, hasher)
        # Formats that store every cluster compressed (streamOptimized VMDK) get the thread pool too.
        if compress or getattr(target, "compresses_every_cluster", False):
            converter.copy_compressed(_worker_count())
        else:
            converter.copy()
        if on_device and zero_tail and out_fmt == "raw" and not target_is_zero and target.virtual_size > source.virtual_size:
            # Past the image's end the device keeps old data a guest would see.
            target.write_zeroes(source.virtual_size, target.virtual_size - source.virtual_size, may_unmap=True)
            converter.bytes_zeroed += target.virtual_size - source.virtual_size
        target.flush()
        zeroout = target.device_zeroout()
        target, closing = None, target
        closing.close()
        if on_device:
            sync_file(destination)
        else:
            sync_file(temporary, cls)
            publish(temporary, destination)
            temporary = None
        result = _result(converter, size, started)
        if on_device:
            result["zeroout"] = zeroout
        return result
    except ImageError:
        raise
    except OSError as exc:
        raise os_error(exc, exc.filename or destination, "cannot convert image")
    finally:
        close_quietly(target)
        if temporary is not None:
            discard(temporary, cls)
        close_quietly(target_backing)
        close_quietly(source)


def _open_source(src, src_fmt, allow_dirs, force_share, snapshot, member=None, key_secret=None,
                 trusted_files=None):
    """The source chain, read-only; showing internal snapshot ``snapshot`` when given."""
    source = open_driver(src, fmt=src_fmt, readonly=True, allow_dirs=allow_dirs, force_share=force_share,
                         member=member, key_secret=key_secret, trusted_files=trusted_files)
    if snapshot is not None:
        try:
            source.select_snapshot(str(snapshot))
        except BaseException:
            close_quietly(source)
            raise
    return source


def _convert_into_existing(src, dst, out_fmt, src_fmt, options, compress, progress, allow_dirs,
                           target_is_zero, force_share, snapshot, started, src_member=None, key_secret=None,
                           hasher=None, trusted_files=None):
    """convert(target_exists=True): qemu-img convert -n."""
    target_path = os.path.abspath(os.fspath(dst))
    if not out_fmt or not isinstance(out_fmt, str):
        raise InvalidOptionError("the target format is required to write an image (never guessed)", target_path)
    if normalize_options(options):
        raise InvalidOptionError("options cannot be used with target_exists (the target image already exists)",
                                 target_path)
    source = target = None
    try:
        source = _open_source(src, src_fmt, allow_dirs, force_share, snapshot, src_member, key_secret,
                              trusted_files)
        if os.path.realpath(source.path) == os.path.realpath(target_path):
            raise InvalidOptionError("the source and the target are the same image", target_path)
        target = open_driver(target_path, fmt=out_fmt, readonly=False, allow_dirs=allow_dirs,
                             trusted_files=trusted_files)
        if compress and not hasattr(target, "compress_cluster"):
            raise InvalidOptionError("compressed output is not supported for format %s (qcow2 only)"
                                     % out_fmt, target_path)
        size = source.virtual_size
        if target.virtual_size < size:
            raise InvalidOptionError("the target (%d bytes) is smaller than the source (%d bytes)"
                                     % (target.virtual_size, size), target_path)
        # Zeroes are written everywhere the source reads zero (they must hide old
        # target content and the target's own backing file) unless target_is_zero.
        converter = _Converter(source, target, None, size, bool(target_is_zero), progress, hasher)
        if compress:
            converter.copy_compressed(_worker_count())
        else:
            converter.copy()
        target.flush()
        return _result(converter, size, started)
    except ImageError:
        raise
    except OSError as exc:
        raise os_error(exc, exc.filename or target_path, "cannot convert image")
    finally:
        close_quietly(target)
        close_quietly(source)
