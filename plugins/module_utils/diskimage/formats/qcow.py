# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU's original qcow format (version 1): read, write, compressed clusters, create.

There is no published specification; the layout is the one QEMU's
block/qcow.c reads and writes: a big-endian 48-byte header (magic
``QFI\\xfb``, version 1, backing file name offset and size, mtime, virtual
size, cluster bits, L2 bits, encryption method, L1 table offset), the backing
file name, the L1 table (64-bit big-endian L2 table offsets), L2 tables of
``1 << l2_bits`` 64-bit entries each and the data clusters.  An L2 entry 0 is
unallocated (the backing file, or zeroes); bit 63 marks a compressed cluster
whose raw deflate stream (window bits 12) of ``(entry >> (63 - cluster_bits))
& (cluster_size - 1)`` bytes starts at ``entry & ((1 << (63 - cluster_bits)) -
1)``.  qcow records no backing format (the backing file is probed; backing
layers are only read) and qemu-img has no checks for it.

Writes append clusters and L2 tables at the end of the file, rounded up to the
cluster size, data before the L2 entry that maps it and L2 tables before the
L1 entry; a partly written new cluster is completed from the backing file
(QEMU leaves such sectors zero), a partly rewritten compressed cluster is
decompressed into a new cluster.  AES-encrypted images are refused for data.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import bisect
import os
import struct
import sys
import zlib

from .._io import ImageFile
from ..errors import (CorruptImageError, FormatError, ImageError, InvalidOptionError, PolicyError,
                      UnsupportedFeature)
from .base import DATA, MAX_IO, UNALLOCATED, Extent
from .cluster_tables import ClusterTableDriver, progression_length

# qcow header (block/qcow.c QCowHeader), big-endian, 48 bytes: magic, version,
# backing file offset, backing file size, mtime, size, cluster bits, L2 bits,
# padding, crypt method, L1 table offset.
HEADER = struct.Struct(">4sIQIIQBBHIQ")
MAGIC = b"QFI\xfb"
VERSION = 1

CRYPT_NONE = 0
CRYPT_AES = 1

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 16
MIN_L2_BITS = 6
MAX_L2_BITS = 13
MAX_BACKING_NAME = 1023

OFLAG_COMPRESSED = 1 << 63

# Header-derived allocation cap (docs/security.md rule 5): the L1 table in memory.
MAX_L1_BYTES = 32 * 1024 * 1024
# L2 tables kept in memory.
L2_CACHE_ENTRIES = 64

# What qemu-img create writes: 4 KiB clusters and 512-entry L2 tables, or
# 512-byte clusters and 4096-entry L2 tables for images with a backing file.
CREATE_BITS = (12, 9)
CREATE_BITS_BACKING = (9, 12)

SECTOR_SIZE = 512
_BIG = sys.byteorder == "big"


def _be_array(raw):
    table = array.array("Q")
    table.frombytes(bytes(raw))
    if not _BIG:
        table.byteswap()
    return table


def _be_bytes(table):
    if _BIG:
        return table.tobytes()
    copy = array.array("Q", table)
    copy.byteswap()
    return copy.tobytes()


class Header:
    """The qcow header's fields."""

    def __init__(self, raw):
        (self.magic, self.version, self.backing_file_offset, self.backing_file_size, self.mtime, self.size,
         self.cluster_bits, self.l2_bits, self.padding, self.crypt_method,
         self.l1_table_offset) = HEADER.unpack_from(raw)


class QcowDriver(ClusterTableDriver):
    format_name = "qcow"
    format_label = "qcow image"
    can_create = True
    can_write = True

    def __init__(self):
        super(QcowDriver, self).__init__()
        self._file = None
        self.header = None
        self.cluster_size = 0
        self._cb = 0
        self._l2_entries = 0
        self._l1 = None
        self._l2_cache = {}
        self._file_end = 0
        self.encrypted = False
        self._decompressed = (None, None)
        self._l2_starts = None

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        if len(header) >= HEADER.size and header[:4] == MAGIC and struct.unpack_from(">I", header, 4)[0] == VERSION:
            return 100
        return 0

    # --------------------------------------------------------------- lifecycle
    def _open_structures(self, opener):
        path = self.path
        file_size = self._file.size()
        if file_size < HEADER.size:
            raise FormatError("qcow header: the file has %d bytes, fewer than the %d of a header"
                              % (file_size, HEADER.size), path)
        header = Header(self._file.pread_exact(0, HEADER.size, "qcow header"))
        if header.magic != MAGIC:
            raise FormatError("qcow header: expected magic %r, found %r" % (MAGIC, header.magic), path)
        if header.version != VERSION:
            raise UnsupportedFeature("qcow header: version %d is not supported (expected %d)"
                                     % (header.version, VERSION), path)
        if header.size <= 1:
            raise FormatError("qcow header: image size %d is too small (at least 2 bytes)" % header.size, path)
        if not MIN_CLUSTER_BITS <= header.cluster_bits <= MAX_CLUSTER_BITS:
            raise FormatError("qcow header: cluster bits %d outside [%d, %d] (clusters of 512 bytes to 64 KiB)"
                              % (header.cluster_bits, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS), path)
        if not MIN_L2_BITS <= header.l2_bits <= MAX_L2_BITS:
            raise FormatError("qcow header: L2 bits %d outside [%d, %d] (L2 tables of 512 bytes to 64 KiB)"
                              % (header.l2_bits, MIN_L2_BITS, MAX_L2_BITS), path)
        if header.crypt_method not in (CRYPT_NONE, CRYPT_AES):
            raise FormatError("qcow header: invalid encryption method %d (expected 0 or 1)"
                              % header.crypt_method, path)
        self.header = header
        self.encrypted = header.crypt_method == CRYPT_AES
        self._cb = header.cluster_bits
        self.cluster_size = 1 << header.cluster_bits
        self._l2_entries = 1 << header.l2_bits
        self.virtual_size = header.size // SECTOR_SIZE * SECTOR_SIZE
        shift = header.cluster_bits + header.l2_bits
        l1_entries = -(-header.size // (1 << shift))
        if l1_entries * 8 > MAX_L1_BYTES:
            raise UnsupportedFeature("qcow header: an L1 table of %d entries (image size %d) exceeds the %d bytes "
                                     "this library reads" % (l1_entries, header.size, MAX_L1_BYTES), path)
        if header.l1_table_offset + l1_entries * 8 > file_size:
            raise CorruptImageError("qcow L1 table at 0x%x (%d entries) runs past the end of the file (%d bytes)"
                                    % (header.l1_table_offset, l1_entries, file_size), path)
        self._l1 = _be_array(self._file.pread_exact(header.l1_table_offset, l1_entries * 8, "qcow L1 table"))
        self._file_end = file_size
        if header.backing_file_offset:
            size = header.backing_file_size
            if size > MAX_BACKING_NAME:
                raise FormatError("qcow header: backing file name of %d bytes is too long (at most %d)"
                                  % (size, MAX_BACKING_NAME), path)
            if header.backing_file_offset + size > file_size:
                raise CorruptImageError("qcow header: backing file name at %d (%d bytes) is past the end of the "
                                        "file (%d bytes)" % (header.backing_file_offset, size, file_size), path)
            raw = self._file.pread_exact(header.backing_file_offset, size, "qcow backing file name")
            name = bytes(raw).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if name:
                self.backing_filename = name
                if opener is None:
                    raise PolicyError("qcow backing file %r: no opener allowed to open it" % name, path)
                # qcow records no backing format: the backing layer is probed (read-only)
                self.backing = opener(path, name, None)

    def flush(self):
        if self._file is not None and not self.readonly:
            self._file.flush()

    # ---------------------------------------------------------------- tables
    @property
    def _l2_bytes(self):
        return self._l2_entries * 8

    def _fixed_metadata(self):
        header = self.header
        head_end = HEADER.size
        if header.backing_file_offset:
            head_end = max(head_end, header.backing_file_offset + header.backing_file_size)
        offset = header.l1_table_offset
        return ((0, head_end, "header"), (offset, offset + len(self._l1) * 8, "L1 table"))

    def _note_l2_table(self, offset):
        if self._l2_starts is not None:
            bisect.insort(self._l2_starts, offset)

    def _l2_offset(self, l1_index):
        l2_offset = self._l1[l1_index]
        if l2_offset and (l2_offset + self._l2_entries * 8 > self._file_end or l2_offset & OFLAG_COMPRESSED):
            raise CorruptImageError("qcow L1 table entry %d: L2 table offset 0x%x is past the end of the file "
                                    "(%d bytes)" % (l1_index, l2_offset, self._file_end), self.path)
        return l2_offset

    def _load_l2(self, l2_offset):
        table = self._l2_cache.get(l2_offset)
        if table is None:
            table = _be_array(self._file.pread_exact(l2_offset, self._l2_entries * 8, "qcow L2 table"))
            if len(self._l2_cache) >= L2_CACHE_ENTRIES:
                self._l2_cache.pop(next(iter(self._l2_cache)))
            self._l2_cache[l2_offset] = table
        return table

    def _compressed_location(self, entry):
        shift = 63 - self._cb
        return entry & ((1 << shift) - 1), (entry >> shift) & (self.cluster_size - 1)

    def _map(self, offset, length):
        """(guest, count, kind, host) runs: kind DATA (host offset), "compressed"
        (host = L2 entry) or UNALLOCATED."""
        cs = self.cluster_size
        span = self._l2_entries * cs
        end = offset + length
        runs = []
        pos = offset
        while pos < end:
            l1_index = pos // span
            table_end = min(end, (l1_index + 1) * span)
            l2_offset = self._l2_offset(l1_index)
            if not l2_offset:
                self._add_run(runs, pos, table_end - pos, UNALLOCATED, None)
                pos = table_end
                continue
            table = self._load_l2(l2_offset)
            base = l1_index * span
            stop = -(-(table_end - base) // cs)
            while pos < table_end:
                index = (pos - base) // cs
                entry = table[index]
                if entry & OFLAG_COMPRESSED:
                    cluster_end = min(table_end, base + (index + 1) * cs)
                    runs.append((pos, cluster_end - pos, "compressed", entry))
                    pos = cluster_end
                    continue
                count = progression_length(table, index, stop, cs if entry else 0)
                run_end = min(table_end, base + (index + count) * cs)
                if entry == 0:
                    self._add_run(runs, pos, run_end - pos, UNALLOCATED, None)
                else:
                    last = entry + (count - 1) * cs
                    if last + cs > self._file_end:
                        raise CorruptImageError("qcow L2 table at 0x%x, entry %d (guest offset 0x%x): cluster offset "
                                                "0x%x is past the end of the file (%d bytes)"
                                                % (l2_offset, index + count - 1, pos, last, self._file_end), self.path)
                    self._add_run(runs, pos, run_end - pos, DATA, entry + (pos - base) % cs)
                pos = run_end
        return runs

    def block_status(self, offset, length):
        self._check_range(offset, length)
        extents = []
        for guest, count, kind, host in self._map(offset, length):
            if kind == "compressed" or self.encrypted and kind == DATA:
                kind, host = DATA, None
            if extents:
                prev = extents[-1]
                if prev.kind == kind == DATA and prev.offset is None and host is None \
                        and prev.start + prev.length == guest:
                    extents[-1] = Extent(prev.start, prev.length + count, kind, None)
                    continue
            extents.append(Extent(guest, count, kind, host))
        return extents

    # ------------------------------------------------------------------ reads
    def _check_range(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise ImageError("request [%d, +%d) outside the virtual disk (%d bytes)"
                             % (offset, length, self.virtual_size), self.path)

    def _check_not_encrypted(self):
        if self.encrypted:
            raise UnsupportedFeature("qcow AES encryption is not supported", self.path)

    def read(self, offset, length):
        self._check_range(offset, length)
        self._check_not_encrypted()
        return bytes(self._read(offset, length))

    def _read(self, offset, length):
        runs = self._map(offset, length)
        if len(runs) == 1 and runs[0][2] == DATA:
            chunk = self._file.pread(runs[0][3], length)
            if len(chunk) == length:
                return chunk
        out = bytearray(length)
        view = memoryview(out)
        cs = self.cluster_size
        for guest, count, kind, host in runs:
            pos = guest - offset
            if kind == DATA:
                chunk = self._file.pread(host, count)
                view[pos:pos + len(chunk)] = chunk
            elif kind == "compressed":
                cluster = self._decompress(host, guest - guest % cs)
                start = guest % cs
                view[pos:pos + count] = cluster[start:start + count]
            else:
                view[pos:pos + count] = self._backing_bytes(guest, count)
        return out

    def _backing_bytes(self, offset, length):
        """What the backing file shows at [offset, offset+length): zeroes
        without one and past its end."""
        out = bytearray(length)
        if self.backing is not None and offset < self.backing.virtual_size:
            count = min(length, self.backing.virtual_size - offset)
            out[:count] = self.backing.read(offset, count)
        return out

    def _decompress(self, entry, guest_cluster):
        if self._decompressed[0] == entry:
            return self._decompressed[1]
        cs = self.cluster_size
        coffset, csize = self._compressed_location(entry)
        if coffset + csize > self._file_end:
            raise CorruptImageError("qcow compressed cluster at guest offset 0x%x: %d bytes at 0x%x run past the end "
                                    "of the file (%d bytes)" % (guest_cluster, csize, coffset, self._file_end),
                                    self.path)
        data = self._file.pread_exact(coffset, csize, "qcow compressed cluster")
        try:
            cluster = zlib.decompressobj(-12).decompress(data, cs)
        except zlib.error as exc:
            raise CorruptImageError("qcow compressed cluster at guest offset 0x%x (host 0x%x): deflate "
                                    "decompression failed: %s" % (guest_cluster, coffset, exc), self.path) from exc
        if len(cluster) != cs:
            raise CorruptImageError("qcow compressed cluster at guest offset 0x%x (host 0x%x): expected %d bytes "
                                    "after decompression, found %d" % (guest_cluster, coffset, cs, len(cluster)),
                                    self.path)
        self._decompressed = (entry, cluster)
        return cluster

    # ----------------------------------------------------------------- writes
    def _prepare_write(self):
        self._check_writable()
        self._check_not_encrypted()

    def _allocate(self, length):
        """File offset of ``length`` new bytes at the end of the file, cluster-aligned."""
        cs = self.cluster_size
        offset = -(-self._file_end // cs) * cs
        self._file_end = offset + length
        return offset

    def _write_in_table(self, offset, data):
        cs = self.cluster_size
        span = self._l2_entries * cs
        l1_index = offset // span
        base = l1_index * span
        end = offset + len(data)
        l2_offset = self._l2_offset(l1_index)
        table = self._load_l2(l2_offset) if l2_offset else None
        if table is None:
            # the new L2 table goes before the data clusters, as QEMU places it
            l2_offset = self._allocate(self._l2_bytes)
        first = (offset - base) // cs
        last = (end - 1 - base) // cs

        def plain(index):
            entry = table[index] if table is not None else 0
            return entry != 0 and not entry & OFLAG_COMPRESSED

        changed = []
        index = first
        while index <= last:
            in_place = plain(index)
            stop = index + 1
            while stop <= last and plain(stop) == in_place and (
                    not in_place or table[stop] == table[stop - 1] + cs):
                stop += 1
            run_start = max(offset, base + index * cs)
            run_end = min(end, base + stop * cs)
            piece = data[run_start - offset:run_end - offset]
            if in_place:
                for checked in range(index, stop):
                    if table[checked] + cs > self._file_end:
                        raise CorruptImageError("qcow L2 table at 0x%x, entry %d: cluster offset 0x%x is past the end "
                                                "of the file" % (l2_offset, checked, table[checked]),
                                                self.path)
                host = table[index] + run_start - (base + index * cs)
                self._check_no_overlap(host, len(piece), "data write")
                self._file.pwrite(host, piece)
            else:
                cluster_start = base + index * cs
                head = self._fill(cluster_start, run_start - cluster_start, table, index)
                tail = self._fill(run_end, cluster_start + (stop - index) * cs - run_end, table, stop - 1)
                host = self._allocate((stop - index) * cs)
                if head or tail:
                    piece = b"".join((bytes(head), bytes(piece), bytes(tail)))
                self._file.pwrite(host, piece)
                changed.append((index, stop, host))
            index = stop
        if changed:
            self._update_l2(l1_index, l2_offset, table, changed)

    def _fill(self, offset, length, table, index):
        """Bytes around a partial write in a newly allocated cluster: the old
        content of a compressed cluster, else the backing file's."""
        if length <= 0:
            return b""
        entry = table[index] if table is not None else 0
        if entry & OFLAG_COMPRESSED:
            cs = self.cluster_size
            cluster = self._decompress(entry, offset - offset % cs)
            return cluster[offset % cs:offset % cs + length]
        return self._backing_bytes(offset, length)

    def _update_l2(self, l1_index, l2_offset, table, changed):
        """Point entries [first, stop) of each ``changed`` run at consecutive
        clusters from its host offset; ``table`` None: a new L2 table at
        ``l2_offset`` (reserved before the data, as QEMU places it)."""
        cs = self.cluster_size
        new_table = table is None
        if new_table:
            table = array.array("Q", bytes(self._l2_entries * 8))
        for first, stop, host in changed:
            for index in range(first, stop):
                table[index] = host + (index - first) * cs
        if new_table:
            self._install_l2(l1_index, l2_offset, table)
        else:
            low = min(first for first, stop, host in changed)
            high = max(stop for first, stop, host in changed)
            self._check_no_overlap(l2_offset, self._l2_bytes, "L2 table", l2_tables=False)
            self._file.pwrite(l2_offset + low * 8, _be_bytes(table[low:high]))

    def _install_l2(self, l1_index, l2_offset, table):
        """Write a new L2 table, then the L1 entry pointing at it."""
        self._file.pwrite(l2_offset, _be_bytes(table))
        self._note_l2_table(l2_offset)
        if len(self._l2_cache) >= L2_CACHE_ENTRIES:
            self._l2_cache.pop(next(iter(self._l2_cache)))
        self._l2_cache[l2_offset] = table
        self._l1[l1_index] = l2_offset
        self._file.pwrite(self.header.l1_table_offset + l1_index * 8, _be_bytes(self._l1[l1_index:l1_index + 1]))

    def write_zeroes(self, offset, length, may_unmap=False):
        """qcow has no zero clusters: zeroes are written (clusters that are
        unallocated and read as zeroes anyway are left alone)."""
        self._check_range(offset, length)
        self._prepare_write()
        zeroes = bytes(min(length, MAX_IO))
        for run in self._map(offset, length):
            guest, count, kind = run[:3]
            if kind == UNALLOCATED and (self.backing is None or guest >= self.backing.virtual_size):
                continue
            run_end = guest + count
            while guest < run_end:
                chunk = min(run_end - guest, len(zeroes))
                self.write(guest, memoryview(zeroes)[:chunk])
                guest += chunk

    def make_empty(self):
        """Drop every cluster (qemu-img commit), as QEMU does: the L1 table is
        cleared, then the file cut right after it."""
        self._prepare_write()
        header = self.header
        self._l1 = array.array("Q", bytes(len(self._l1) * 8))
        self._l2_cache.clear()
        self._l2_starts = None
        self._decompressed = (None, None)
        self._file.pwrite(header.l1_table_offset, _be_bytes(self._l1))
        self._file.flush()
        end = header.l1_table_offset + len(self._l1) * 8
        self._file.truncate(end)
        self._file_end = end

    # ------------------------------------------------------- compressed writes
    def compress_cluster(self, data):
        """Raw deflate of one whole cluster, or None when it does not pay
        (pure: safe from worker threads)."""
        if len(data) != self.cluster_size:
            raise ImageError("compress_cluster: expected %d bytes, got %d" % (self.cluster_size, len(data)),
                             self.path)
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
        compressed = compressor.compress(data) + compressor.flush()
        if len(compressed) >= self.cluster_size:
            return None
        return compressed

    def write_compressed(self, offset, compressed):
        """Store ``compressed`` (from compress_cluster) as the cluster at guest ``offset``."""
        self._prepare_write()
        cs = self.cluster_size
        if offset % cs or offset < 0 or offset >= self.virtual_size:
            raise ImageError("write_compressed: guest offset %d is not a cluster start inside the disk" % offset,
                             self.path)
        if not compressed or len(compressed) >= cs:
            raise ImageError("write_compressed: compressed data of %d bytes for %d-byte clusters"
                             % (len(compressed or b""), cs), self.path)
        span = self._l2_entries * cs
        l1_index = offset // span
        index = (offset - l1_index * span) // cs
        l2_offset = self._l2_offset(l1_index)
        table = self._load_l2(l2_offset) if l2_offset else None
        if table is not None and table[index]:
            # already allocated: store the data plainly
            cluster = zlib.decompressobj(-12).decompress(bytes(compressed), cs)
            self.write(offset, cluster[:min(cs, self.virtual_size - offset)])
            return
        if table is None:
            l2_offset = self._allocate(self._l2_bytes)
        # compressed data goes at the end of the file, at the next sector boundary, as QEMU puts it
        host = -(-self._file_end // SECTOR_SIZE) * SECTOR_SIZE
        self._file.pwrite(host, compressed)
        self._file_end = host + len(compressed)
        entry = OFLAG_COMPRESSED | (len(compressed) << (63 - self._cb)) | host
        if table is None:
            table = array.array("Q", bytes(self._l2_entries * 8))
            table[index] = entry
            self._install_l2(l1_index, l2_offset, table)
            return
        self._check_no_overlap(l2_offset, self._l2_bytes, "L2 table", l2_tables=False)
        table[index] = entry
        self._file.pwrite(l2_offset + index * 8, _be_bytes(table[index:index + 1]))

    # ---------------------------------------------------------------- queries
    def info(self):
        result = {"cluster-size": self.cluster_size}
        if self.encrypted:
            result["encrypted"] = True
        return result

    # ----------------------------------------------------------------- create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        options = dict(options or {})
        backing_file = options.pop("backing_file", None)
        options.pop("backing_fmt", None)
        option_size = options.pop("size", None)
        encryption = options.pop("encryption", None)
        encrypt_format = options.pop("encrypt.format", None)
        if encryption not in (None, False, "off") or encrypt_format is not None or any(
                key.startswith("encrypt.") for key in options):
            raise UnsupportedFeature("qcow create: AES encryption is not supported (and deprecated in QEMU)", path)
        preallocation = options.pop("preallocation", None)
        if preallocation not in (None, "off"):
            raise InvalidOptionError("qcow create: preallocation %r is not supported (only off)" % (preallocation,),
                                     path)
        if options:
            raise InvalidOptionError("invalid option(s) for qcow images: %s (supported: backing_file, backing_fmt)"
                                     % ", ".join(sorted(options)), path)
        if size is None:
            size = option_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)" % (size,),
                                     path)
        size = -(-size // SECTOR_SIZE) * SECTOR_SIZE
        if size == 0:
            raise InvalidOptionError("qcow create: image size is too small, cannot be zero length", path)
        name = os.fsencode(backing_file) if backing_file else b""
        if len(name) > MAX_BACKING_NAME:
            raise InvalidOptionError("qcow create: backing file name of %d bytes is too long (at most %d)"
                                     % (len(name), MAX_BACKING_NAME), path)
        cluster_bits, l2_bits = CREATE_BITS_BACKING if name else CREATE_BITS
        l1_entries = -(-size // (1 << (cluster_bits + l2_bits)))
        if l1_entries * 8 > MAX_L1_BYTES:
            raise InvalidOptionError("qcow create: image size %d needs an L1 table larger than %d bytes"
                                     % (size, MAX_L1_BYTES), path)
        l1_offset = (HEADER.size + len(name) + 7) // 8 * 8
        header = HEADER.pack(MAGIC, VERSION, HEADER.size if name else 0, len(name), 0, size, cluster_bits,
                             l2_bits, 0, CRYPT_NONE, l1_offset)
        l1_bytes = -(-l1_entries * 8 // SECTOR_SIZE) * SECTOR_SIZE
        image_file = ImageFile(path, create=True)
        try:
            image_file.pwrite(0, header + name + bytes(l1_offset - HEADER.size - len(name) + l1_bytes))
            image_file.flush()
        except BaseException:
            image_file.close()
            os.unlink(image_file.path)
            raise
        image_file.close()
