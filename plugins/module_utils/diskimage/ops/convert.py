# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""convert(): ``qemu-img convert``.

The source chain is walked by block status: holes are never read nor
written, data is read in COPY_CHUNK chunks (whole target clusters, at most
MAX_IO), zero blocks found in it are skipped (or written as zeroes when the
output has a backing file), and the rest is written in runs as large as the
chunks.  Compressed qcow2 output compresses whole clusters in
a thread pool (zlib releases the GIL) with a bounded number in flight, and
writes them in guest order.  The output is built under a temporary name and
renamed into place when complete and flushed; with ``on_device`` it is
written in place onto an existing block device instead (ops/create.py).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import os
import time

from ..errors import ImageError, InvalidOptionError
from ..formats.base import DATA, MAX_IO
from .create import (build_image, build_on_device, close_quietly, discard, open_backing, publish,
                     split_backing_options, sync_file, target_and_driver_class, temporary_path)
from .image import chain_block_status, open_driver, os_error, reads_zero, status_windows, translate_os_errors
from .sizes import normalize_options, round_up, SECTOR_SIZE
from .transfer import ReadAhead, Writeback, is_zero, zero_bytes, zero_runs


# Smallest run of zeroes inside read data that is left as a hole (qemu-img -S default).
MIN_SPARSE = 4096
# Guest bytes whose block status is asked for at once (bounds the extent lists).
STATUS_WINDOW = 16 * MAX_IO
# Compressed clusters in flight per worker thread, and the bytes they may hold at most.
IN_FLIGHT_PER_WORKER = 4
IN_FLIGHT_BYTES = 8 * MAX_IO
# Bytes read and written at once by a plain copy, unless the target's clusters are larger (up to
# MAX_IO): small enough that the buffers in flight stay in the CPU caches between the read's copy
# and the write's (4 MiB chunks made the copy a third slower).
COPY_CHUNK = 1024 * 1024
# Read chunks the read-ahead thread may hold ready for the writer.
READ_AHEAD_DEPTH = 4


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
        # Whole clusters per chunk: a partial new cluster would be filled and then rewritten.
        self.chunk_size = min(MAX_IO, max(COPY_CHUNK, cluster_size))
        # The read-ahead thread's put() while copy() runs.
        self._put = None
        # Read buffers (chunk_size bytearrays) the writer has finished with: copy() reuses them, so a
        # copy does not fault fresh pages in for every chunk (at most READ_AHEAD_DEPTH + 2 exist).
        self._free_buffers = collections.deque()

    # ----------------------------------------------------------- block status
    def status_windows(self):
        """(start, end, runs): chain block status of the source (above ``base``), window by window."""
        return status_windows(0, self.size, STATUS_WINDOW,
                              lambda offset, length: chain_block_status(self.source, offset, length, self.base,
                                                                        hole_granule=self.granule))

    def runs(self):
        """Chain block status of the source (above ``base``), window by window."""
        for _start, _end, runs in self.status_windows():
            yield from runs

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
            self.digest.update(zero_bytes(count))
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
    def copy(self, writeback=None):
        """Copy the source: block status, reads, zero detection and the digest on
        a read-ahead thread (``_produce``), the writes here; ``writeback`` (a
        transfer.Writeback or None) hears how much has been written."""
        with ReadAhead(self._produce, READ_AHEAD_DEPTH) as items:
            for offset, length, data, runs, done in items:
                if data is not None:
                    self._write_chunk(offset, memoryview(data)[:length], runs)
                    self._free_buffers.append(data)
                    if writeback is not None:
                        writeback.advance(self.bytes_written)
                elif length:
                    self.zeroes(offset, length)
                self.report(done)
        self.report(self.size)

    def _produce(self, put):
        """The reading side of copy(): puts (offset, length, data or None, zero runs, done) items,
        data None for a range that reads as zeroes (length 0: progress only)."""
        self._put = put
        for run in self.runs():
            start, end = run.start, run.start + run.length
            if run.kind == DATA:
                self.copy_data(start, end)
            elif reads_zero(run.kind, self.base):
                self.hash_content(start, length=end - start)
                put((start, end - start, None, None, end))
                continue
            # UNALLOCATED above the base: left unallocated, the backing shows through.
            put((start, 0, None, None, end))

    def copy_data(self, start, end):
        """Read the data run [start, end) in chunks and hand them to the writer (read-ahead thread):
        each chunk is read into a buffer the writer gives back when it has written it."""
        position = start
        chunk = self.chunk_size
        while position < end:
            chunk_end = min(end, align_down(position, chunk) + chunk)
            length = chunk_end - position
            try:
                buffer = self._free_buffers.popleft()
            except IndexError:
                buffer = bytearray(chunk)
            view = memoryview(buffer)[:length]
            self.source.read_into(position, view)
            self.bytes_read += length
            self.hash_content(position, view)
            self._put((position, length, buffer, zero_runs(buffer, position, self.granule, length), chunk_end))
            position = chunk_end

    def _write_chunk(self, position, data, runs):
        view = None
        for first, last, zero in runs:
            if zero:
                self.zeroes(position + first, last - first)
            elif first == 0 and last == len(data):
                self.data(position, data)
            else:
                # A view, not a copy (drivers take any bytes-like object, as Driver._write_zero_bytes passes).
                view = memoryview(data) if view is None else view
                self.data(position + first, view[first:last])

    # ------------------------------------------------------- compressed copy
    def copy_compressed(self, workers):
        cluster = self.cluster_size
        if cluster <= 0 or cluster > MAX_IO:
            raise InvalidOptionError("compressed output needs a cluster size between 512 and %d, found %r"
                                     % (MAX_IO, cluster), self.target.path)
        # Imported here: only compressed output needs it, and it costs every other conversion's start.
        from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel
        chunk = align_down(MAX_IO, cluster)
        in_flight = collections.deque()
        limit = max(workers, min(workers * IN_FLIGHT_PER_WORKER, IN_FLIGHT_BYTES // cluster))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for _window, window_end, runs in self.status_windows():
                    for start, end, kind in cluster_runs(runs, cluster, window_end):
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


class ConvertOptions:
    """How convert() works: every setting besides the source, the target and
    the output format, with its default; validated when made (InvalidOptionError).

    ``src_fmt``         the source's format (None: probed)
    ``create_options``  qemu-img -o options of the output (dict or "k=v,..."); ``backing_file``
                        and ``backing_fmt`` among them give the output a backing file
                        (qemu-img convert -B -F): only what the source's top layer allocates is copied
    ``compress``        write compressed clusters (qcow2 only)
    ``progress``        ``progress(done_bytes, total_bytes)``, called as the copy advances
                        (at least once per MAX_IO chunk)
    ``allow_dirs``, ``trusted_files``   the path policy (diskimage.policy)
    ``force_share``     open the source like qemu-img -U
    ``target_exists``   (qemu-img convert -n) ``dst`` is an existing image of format ``out_fmt``,
                        at least as large as the source, written in place (opened writable,
                        locked; no create_options); ranges that read as zeroes in the source are
                        written as zeroes unless ``target_is_zero``
    ``target_is_zero``  the target reads zero already (nothing is written to make ranges read zero)
    ``snapshot``        (qemu-img convert -l snapshot.name=NAME) convert the source's internal
                        snapshot NAME (name, else ID) instead of its current content
    ``src_member``      (name or index) convert a disk inside the OVA or Vagrant box ``src``,
                        read in place (``.ova``/``.box`` sources default to the first disk)
    ``key_secret``      the passphrase of an encrypted (LUKS) source; a LUKS output takes its
                        passphrase from the ``key-secret`` creation option
    ``on_device``       ``dst`` is an existing block device (an LVM logical volume) and the output
                        (raw or qcow2) is written onto it in place (create(on_device=True)); raw
                        output makes every range that reads zero in the source read zero on the
                        device (BLKZEROOUT, else zeroes written) unless ``target_is_zero``
    ``zero_tail``       with ``on_device``: also make the device read zero past the image's end
    ``digest``          a hashlib name such as "sha256": the result's "digest" is the hex digest of
                        the source's guest-visible content (what ``qemu-img convert -O raw SRC - |
                        sha256sum`` prints); not with a backing file in the output
    """

    DEFAULTS = (
        ("src_fmt", None), ("create_options", None), ("compress", False), ("progress", None),
        ("allow_dirs", None), ("trusted_files", None), ("force_share", False), ("target_exists", False),
        ("target_is_zero", False), ("snapshot", None), ("src_member", None), ("key_secret", None),
        ("on_device", False), ("zero_tail", False), ("digest", None),
    )
    __slots__ = tuple(name for name, _default in DEFAULTS)

    def __init__(self, **settings):
        unknown = sorted(set(settings) - set(self.__slots__))
        if unknown:
            raise TypeError("unknown convert option(s): %s" % ", ".join(unknown))
        for name, default in self.DEFAULTS:
            setattr(self, name, settings.get(name, default))
        self._validate()

    @staticmethod
    def keyword_settings(keywords):
        """convert()'s keyword arguments as settings (``options`` is ``create_options``)."""
        settings = dict(keywords)
        if "options" in settings:
            if "create_options" in settings:
                raise TypeError("options and create_options name the same setting: give one")
            settings["create_options"] = settings.pop("options")
        return settings

    def replace(self, **settings):
        """A copy with ``settings`` changed."""
        merged = dict((name, getattr(self, name)) for name in self.__slots__)
        merged.update(settings)
        return type(self)(**merged)

    def __repr__(self):
        """The settings that differ from their defaults, passphrases left out."""
        changed = []
        for name, default in self.DEFAULTS:
            value = getattr(self, name)
            if value == default or name == "key_secret":
                continue
            if name == "create_options" and isinstance(value, dict):
                value = dict((key, "<hidden>" if "secret" in str(key) else option) for key, option in value.items())
            changed.append("%s=%r" % (name, value))
        return "ConvertOptions(%s)" % ", ".join(changed)

    def _validate(self):
        if self.progress is not None and not callable(self.progress):
            raise InvalidOptionError("progress must be callable, found %r" % (self.progress,))
        if self.digest is not None:
            self.hasher()
        if self.zero_tail and not self.on_device:
            raise InvalidOptionError("zero_tail needs on_device (only a block device has a tail past the image)")
        if self.on_device and self.target_exists:
            raise InvalidOptionError("on_device and target_exists cannot be used together")

    def hasher(self):
        """A new hashlib object for ``digest`` (None without one)."""
        if self.digest is None:
            return None
        import hashlib  # pylint: disable=import-outside-toplevel  # only asked-for digests pay its import
        try:
            return hashlib.new(self.digest)
        except (ValueError, TypeError):
            raise InvalidOptionError("unknown digest algorithm %r" % (self.digest,))


def _settings(dst, settings, keywords):
    """convert()'s ConvertOptions: ``settings``, with ``keywords`` (the
    keyword form of the same options) applied; errors name ``dst``."""
    try:
        if settings is None:
            return ConvertOptions(**ConvertOptions.keyword_settings(keywords))
        if not isinstance(settings, ConvertOptions):
            raise InvalidOptionError("the convert options must be a ConvertOptions object, found %r" % (settings,))
        if keywords:
            return settings.replace(**ConvertOptions.keyword_settings(keywords))
        return settings
    except InvalidOptionError as exc:
        if exc.path is not None:
            raise
        raise InvalidOptionError(str(exc), dst)


@translate_os_errors("cannot convert image")
def convert(src, dst, out_fmt, settings=None, **keywords):
    """Convert the image ``src`` (with its backing chain) into a new image
    ``dst`` of format ``out_fmt`` (never overwriting ``dst``), as
    ``settings`` (a ConvertOptions) says.  The options may also be given as
    keywords of the same names (``options`` for ``create_options``), alone or
    overriding ``settings``.

    Returns {"bytes_read", "bytes_written", "bytes_zeroed",
    "compressed_clusters", "virtual_size", "duration"} (bytes of guest data;
    duration in seconds), plus "digest" when asked and, with ``on_device``,
    "zeroout" (True when the device zeroed ranges itself with BLKZEROOUT,
    False when zeroes were written, None when nothing was zeroed).
    """
    started = time.monotonic()
    settings = _settings(dst, settings, keywords)
    hasher = _hasher(settings, dst)
    if settings.target_exists:
        return _convert_into_existing(src, dst, out_fmt, settings, started, hasher)
    on_device, target_is_zero = settings.on_device, settings.target_is_zero
    destination, cls = target_and_driver_class(dst, out_fmt, on_device)
    options = normalize_options(settings.create_options)
    if "size" in options:
        raise InvalidOptionError("option size cannot be used with convert (the output has the "
                                 "source's size)", destination)
    backing_file, backing_fmt = split_backing_options(options, None, None, destination)
    if settings.compress and not hasattr(cls, "compress_cluster"):
        raise InvalidOptionError("compressed output is not supported for format %s (qcow2 only)"
                                 % out_fmt, destination)
    if target_is_zero and backing_file is not None:
        raise InvalidOptionError("target_is_zero cannot be used with a backing file (zeroes must "
                                 "hide the backing file)", destination)
    if hasher is not None and backing_file is not None:
        raise InvalidOptionError("digest cannot be used with a backing file (only the top layer is read)",
                                 destination)

    source = target_backing = target = temporary = writeback = None
    try:
        source = _open_source(src, settings)
        if backing_file is not None:
            target_backing = open_backing(destination, backing_file, backing_fmt, settings.allow_dirs,
                                          settings.trusted_files)
            options["backing_file"] = backing_file
            options["backing_fmt"] = backing_fmt
        size = round_up(source.virtual_size, SECTOR_SIZE)
        if on_device:
            if os.path.realpath(source.path) == os.path.realpath(destination):
                raise InvalidOptionError("the source and the target are the same device", destination)
            build_on_device(cls, out_fmt, destination, size, options, target_backing)
            target = open_driver(destination, fmt=out_fmt, readonly=False, allow_dirs=settings.allow_dirs,
                                 trusted_files=settings.trusted_files)
        else:
            temporary = temporary_path(destination)
            build_image(cls, temporary, size, options, target_backing, destination)
            target = open_driver(temporary, fmt=out_fmt, readonly=False, allow_dirs=settings.allow_dirs,
                                 key_secret=options.get("key-secret"), trusted_files=settings.trusted_files)
        if target_backing is not None:
            # Zeroes must be written so that the backing file does not show through.
            base, target_backing_size, has_zero_init = source.backing, target_backing.virtual_size, False
        else:
            # A new LUKS image does not read as zeroes (has_zero_init False).
            base, target_backing_size, has_zero_init = None, size, getattr(target, "has_zero_init", True)
        if on_device and out_fmt == "raw":
            # The device keeps its old content: zeroes are written unless it is known to read zero.
            has_zero_init = bool(target_is_zero)
        converter = _Converter(source, target, base, target_backing_size, has_zero_init, settings.progress, hasher)
        # Formats that store every cluster compressed (streamOptimized VMDK) get the thread pool too.
        if settings.compress or getattr(target, "compresses_every_cluster", False):
            converter.copy_compressed(_worker_count())
        else:
            writeback = Writeback(destination if on_device else temporary)
            converter.copy(writeback)
        if (on_device and settings.zero_tail and out_fmt == "raw" and not target_is_zero
                and target.virtual_size > source.virtual_size):
            # Past the image's end the device keeps old data a guest would see.
            target.write_zeroes(source.virtual_size, target.virtual_size - source.virtual_size, may_unmap=True)
            converter.bytes_zeroed += target.virtual_size - source.virtual_size
        _close_writeback(writeback)
        writeback = None
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
        _close_writeback(writeback)
        close_quietly(target)
        if temporary is not None:
            discard(temporary, cls)
        close_quietly(target_backing)
        close_quietly(source)


def _hasher(settings, dst):
    try:
        return settings.hasher()
    except InvalidOptionError as exc:
        raise InvalidOptionError(str(exc), dst)


def _close_writeback(writeback):
    if writeback is not None:
        writeback.close()


def _open_source(src, settings):
    """The source chain, read-only; showing internal snapshot ``settings.snapshot`` when given."""
    source = open_driver(src, fmt=settings.src_fmt, readonly=True, allow_dirs=settings.allow_dirs,
                         force_share=settings.force_share, member=settings.src_member,
                         key_secret=settings.key_secret, trusted_files=settings.trusted_files)
    if settings.snapshot is not None:
        try:
            source.select_snapshot(str(settings.snapshot))
        except BaseException:
            close_quietly(source)
            raise
    return source


def _convert_into_existing(src, dst, out_fmt, settings, started, hasher):
    """convert(target_exists=True): qemu-img convert -n."""
    target_path = os.path.abspath(os.fspath(dst))
    if not out_fmt or not isinstance(out_fmt, str):
        raise InvalidOptionError("the target format is required to write an image (never guessed)", target_path)
    if normalize_options(settings.create_options):
        raise InvalidOptionError("options cannot be used with target_exists (the target image already exists)",
                                 target_path)
    source = target = writeback = None
    try:
        source = _open_source(src, settings)
        if os.path.realpath(source.path) == os.path.realpath(target_path):
            raise InvalidOptionError("the source and the target are the same image", target_path)
        target = open_driver(target_path, fmt=out_fmt, readonly=False, allow_dirs=settings.allow_dirs,
                             trusted_files=settings.trusted_files)
        if settings.compress and not hasattr(target, "compress_cluster"):
            raise InvalidOptionError("compressed output is not supported for format %s (qcow2 only)"
                                     % out_fmt, target_path)
        size = source.virtual_size
        if target.virtual_size < size:
            raise InvalidOptionError("the target (%d bytes) is smaller than the source (%d bytes)"
                                     % (target.virtual_size, size), target_path)
        # Zeroes are written everywhere the source reads zero (they must hide old
        # target content and the target's own backing file) unless target_is_zero.
        converter = _Converter(source, target, None, size, bool(settings.target_is_zero), settings.progress, hasher)
        if settings.compress:
            converter.copy_compressed(_worker_count())
        else:
            writeback = Writeback(target_path)
            converter.copy(writeback)
        _close_writeback(writeback)
        writeback = None
        target.flush()
        return _result(converter, size, started)
    except ImageError:
        raise
    except OSError as exc:
        raise os_error(exc, exc.filename or target_path, "cannot convert image")
    finally:
        _close_writeback(writeback)
        close_quietly(target)
        close_quietly(source)
