# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""QED images (QEMU Enhanced Disk), read, write, create and check.

Layout from QEMU's docs/interop/qed_spec.txt: a little-endian header in the
first cluster(s) (magic ``QED\\0``, cluster size, table size in clusters,
header size in clusters, feature bits, L1 table offset, image size, backing
file name offset and size), then a two-level table: the L1 table and the L2
tables (``table_size`` clusters each) hold 64-bit little-endian file offsets.
An entry 0 is unallocated (the backing file shows through), an L2 entry 1 is
a zero cluster.

Behaviour follows qemu-img 7.2 (block/qed.c, block/qed-check.c): the header's
"needs check" bit is set before the first allocating write and cleared once
the image is flushed and closed cleanly; an image opened for writing with the
bit set is checked and its invalid table entries dropped before the first
write; the "backing format no probe" feature means a raw backing file; new
clusters are appended at the end of the file (its size rounded down to whole
clusters), data before the L2 table that maps it and the L1 entry last.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import bisect
import os
import struct
import sys

from .._io import ImageFile
from ..errors import (CorruptImageError, FormatError, ImageError, InvalidOptionError, PolicyError, UnsupportedFeature,
                      UnsupportedOperation)
from .base import DATA, UNALLOCATED, ZERO, Extent
from .cluster_tables import ClusterTableDriver, progression_length

# QED header (qed_spec.txt "Header"), little-endian, 64 bytes: magic, cluster
# size, table size (clusters), header size (clusters), features, compatible
# features, autoclear features, L1 table offset, image size, backing file name
# offset and size.
HEADER = struct.Struct("<4sIIIQQQQQII")
MAGIC = b"QED\x00"

FEATURE_BACKING_FILE = 0x1
FEATURE_NEED_CHECK = 0x2
FEATURE_BACKING_FORMAT_NO_PROBE = 0x4
KNOWN_FEATURES = FEATURE_BACKING_FILE | FEATURE_NEED_CHECK | FEATURE_BACKING_FORMAT_NO_PROBE

MIN_CLUSTER_SIZE = 4096
MAX_CLUSTER_SIZE = 64 * 1024 * 1024
MIN_TABLE_SIZE = 1
MAX_TABLE_SIZE = 16
DEFAULT_CLUSTER_SIZE = 64 * 1024
DEFAULT_TABLE_SIZE = 4

# L2 entry of a cluster that reads as zeroes.
ZERO_CLUSTER = 1

# Header-derived allocation cap (docs/security.md rule 5): one L1 or L2 table in memory.
MAX_TABLE_BYTES = 32 * 1024 * 1024
# Longest backing file name read (QEMU's limit for the name).
MAX_BACKING_NAME = 4096
# L2 tables kept in memory.
L2_CACHE_BYTES = 8 * 1024 * 1024

SECTOR_SIZE = 512
# Set bits of each byte value (counting the clusters marked in check's bitmap).
_POPCOUNT = bytes(bin(value).count("1") for value in range(256))
_LITTLE = sys.byteorder == "little"


def _le_array(raw):
    table = array.array("Q")
    table.frombytes(bytes(raw))
    if not _LITTLE:
        table.byteswap()
    return table


def _le_bytes(table):
    if _LITTLE:
        return table.tobytes()
    copy = array.array("Q", table)
    copy.byteswap()
    return copy.tobytes()


def _power_of_two(value):
    return value > 0 and value & (value - 1) == 0


def max_image_size(cluster_size, table_size):
    """Largest virtual size two table levels map."""
    entries = table_size * cluster_size // 8
    return entries * entries * cluster_size


class Header:
    """The QED header's fields."""

    def __init__(self, raw):
        (self.magic, self.cluster_size, self.table_size, self.header_size, self.features,
         self.compat_features, self.autoclear_features, self.l1_table_offset, self.image_size,
         self.backing_filename_offset, self.backing_filename_size) = HEADER.unpack_from(raw)

    def pack(self):
        return HEADER.pack(self.magic, self.cluster_size, self.table_size, self.header_size, self.features,
                           self.compat_features, self.autoclear_features, self.l1_table_offset, self.image_size,
                           self.backing_filename_offset, self.backing_filename_size)


def _int_option(name, value, path):
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptionError("qed create: %s must be an integer, found %r" % (name, value), path)
    return value


class QedDriver(ClusterTableDriver):
    format_name = "qed"
    format_label = "QED image"
    can_create = True
    can_write = True

    def __init__(self):
        super(QedDriver, self).__init__()
        self._file = None
        self.header = None
        self.cluster_size = 0
        self.table_size = 0
        self._table_bytes = 0
        self._l2_entries = 0
        self._l1 = None
        self._l2_cache = {}
        self._l2_cache_max = 4
        self._file_size = 0
        self._data_start = 0
        self._write_ready = False
        self._dirty_by_us = False
        self._l2_starts = None

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        return 100 if header[:4] == MAGIC else 0

    # --------------------------------------------------------------- lifecycle
    def _open_structures(self, opener):
        path = self.path
        real_size = self._file.size()
        if real_size < HEADER.size:
            raise FormatError("QED header: the file has %d bytes, fewer than the %d of a header"
                              % (real_size, HEADER.size), path)
        header = Header(self._file.pread_exact(0, HEADER.size, "QED header"))
        if header.magic != MAGIC:
            raise FormatError("QED header: expected magic %r, found %r" % (MAGIC, header.magic), path)
        cs = header.cluster_size
        if not _power_of_two(cs) or not MIN_CLUSTER_SIZE <= cs <= MAX_CLUSTER_SIZE:
            raise FormatError("QED header: cluster size %d is not a power of two in [%d, %d]"
                              % (cs, MIN_CLUSTER_SIZE, MAX_CLUSTER_SIZE), path)
        if not _power_of_two(header.table_size) or not MIN_TABLE_SIZE <= header.table_size <= MAX_TABLE_SIZE:
            raise FormatError("QED header: table size %d clusters is not a power of two in [%d, %d]"
                              % (header.table_size, MIN_TABLE_SIZE, MAX_TABLE_SIZE), path)
        if header.image_size % SECTOR_SIZE or header.image_size > max_image_size(cs, header.table_size):
            raise FormatError("QED header: image size %d is not a multiple of %d or larger than the %d bytes "
                              "the tables map" % (header.image_size, SECTOR_SIZE,
                                                  max_image_size(cs, header.table_size)), path)
        if header.header_size == 0 or header.header_size * cs > 0x7FFFFFFF:
            raise FormatError("QED header: header size of %d clusters is invalid" % header.header_size, path)
        if header.features & ~KNOWN_FEATURES:
            raise UnsupportedFeature("QED header: unknown feature bits 0x%x (known: 0x%x)"
                                     % (header.features & ~KNOWN_FEATURES, KNOWN_FEATURES), path)
        self.header = header
        self.cluster_size = cs
        self.table_size = header.table_size
        self._table_bytes = header.table_size * cs
        if self._table_bytes > MAX_TABLE_BYTES:
            raise UnsupportedFeature("QED header: tables of %d bytes (%d clusters of %d bytes) exceed the %d bytes "
                                     "this library reads" % (self._table_bytes, header.table_size, cs,
                                                             MAX_TABLE_BYTES), path)
        self._l2_entries = self._table_bytes // 8
        self._l2_cache_max = max(2, L2_CACHE_BYTES // self._table_bytes)
        self._file_size = real_size // cs * cs
        self._data_start = header.header_size * cs
        self.virtual_size = header.image_size
        if not self._table_offset_valid(header.l1_table_offset):
            raise CorruptImageError("QED header: L1 table offset 0x%x is misaligned, inside the header or past the "
                                    "end of the file (%d bytes)" % (header.l1_table_offset, real_size), path)
        self._l1 = _le_array(self._file.pread_exact(header.l1_table_offset, self._table_bytes, "QED L1 table"))
        if header.features & FEATURE_BACKING_FILE:
            name = self._read_backing_name(header)
            self.backing_filename = name
            if header.features & FEATURE_BACKING_FORMAT_NO_PROBE:
                self.backing_format = "raw"
            if opener is None:
                raise PolicyError("QED backing file %r: no opener allowed to open it" % name, path)
            self.backing = opener(path, name, self.backing_format)

    def _read_backing_name(self, header):
        start, size = header.backing_filename_offset, header.backing_filename_size
        if start + size > self._data_start or start < HEADER.size and size:
            raise FormatError("QED header: backing file name at offset %d (%d bytes) is not inside the %d-byte "
                              "header area" % (start, size, self._data_start), self.path)
        if size == 0 or size >= MAX_BACKING_NAME:
            raise FormatError("QED header: backing file name of %d bytes (expected 1 to %d)"
                              % (size, MAX_BACKING_NAME - 1), self.path)
        raw = self._file.pread_exact(start, size, "QED backing file name")
        return bytes(raw).decode("utf-8", "surrogateescape")

    def flush(self):
        if self._file is None or self.readonly:
            return
        self._file.flush()
        if self._dirty_by_us:
            # the data and tables are on disk: the image is consistent again
            self.header.features &= ~FEATURE_NEED_CHECK
            self._write_header()
            self._file.flush()
            self._dirty_by_us = False

    def _write_header(self):
        self._file.pwrite(0, self.header.pack())

    # ---------------------------------------------------------------- tables
    @property
    def _l2_bytes(self):
        return self._table_bytes

    def _fixed_metadata(self):
        offset = self.header.l1_table_offset
        return ((0, self._data_start, "header"), (offset, offset + self._table_bytes, "L1 table"))

    def _note_l2_table(self, offset):
        if self._l2_starts is not None:
            bisect.insort(self._l2_starts, offset)

    def _cluster_offset_valid(self, offset):
        return offset % self.cluster_size == 0 and self._data_start <= offset < self._file_size

    def _table_offset_valid(self, offset):
        return (self._cluster_offset_valid(offset)
                and self._cluster_offset_valid(offset + self._table_bytes - self.cluster_size))

    def _load_l2(self, l2_offset):
        table = self._l2_cache.get(l2_offset)
        if table is None:
            table = _le_array(self._file.pread_exact(l2_offset, self._table_bytes, "QED L2 table"))
            if len(self._l2_cache) >= self._l2_cache_max:
                self._l2_cache.pop(next(iter(self._l2_cache)))
            self._l2_cache[l2_offset] = table
        return table

    def _l2_offset(self, l1_index):
        """Offset of the L2 table of L1 entry ``l1_index`` (0 when unallocated)."""
        l2_offset = self._l1[l1_index]
        if l2_offset and not self._table_offset_valid(l2_offset):
            raise CorruptImageError("QED L1 table entry %d: L2 table offset 0x%x is misaligned or past the end of "
                                    "the file (%d bytes)" % (l1_index, l2_offset, self._file_size), self.path)
        return l2_offset

    def _map(self, offset, length):
        """(guest, count, kind, host) runs of this layer over [offset, offset+length)."""
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
                count = progression_length(table, index, stop, 0 if entry <= ZERO_CLUSTER else cs)
                run_end = min(table_end, base + (index + count) * cs)
                if entry == 0:
                    self._add_run(runs, pos, run_end - pos, UNALLOCATED, None)
                elif entry == ZERO_CLUSTER:
                    self._add_run(runs, pos, run_end - pos, ZERO, None)
                else:
                    last = entry + (count - 1) * cs
                    if not (self._cluster_offset_valid(entry) and self._cluster_offset_valid(last)):
                        bad = entry if not self._cluster_offset_valid(entry) else last
                        raise CorruptImageError("QED L2 table at 0x%x, entry %d (guest offset 0x%x): cluster offset "
                                                "0x%x is misaligned, inside the header or past the end of the file "
                                                "(%d bytes)" % (l2_offset, index, pos, bad, self._file_size),
                                                self.path)
                    self._add_run(runs, pos, run_end - pos, DATA, entry + (pos - base) % cs)
                pos = run_end
        return runs

    def block_status(self, offset, length):
        self._check_range(offset, length)
        return [Extent(*run) for run in self._map(offset, length)]

    # ------------------------------------------------------------------ reads
    def _check_range(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise ImageError("request [%d, +%d) outside the virtual disk (%d bytes)"
                             % (offset, length, self.virtual_size), self.path)

    def read(self, offset, length):
        self._check_range(offset, length)
        runs = self._map(offset, length)
        if len(runs) == 1 and runs[0][2] == DATA:
            chunk = self._file.pread(runs[0][3], length)
            if len(chunk) == length:
                return bytes(chunk)
        out = bytearray(length)
        view = memoryview(out)
        for guest, count, kind, host in runs:
            pos = guest - offset
            if kind == DATA:
                chunk = self._file.pread(host, count)
                view[pos:pos + len(chunk)] = chunk
            elif kind == UNALLOCATED:
                view[pos:pos + count] = self._backing_bytes(guest, count)
        return bytes(out)

    def _backing_bytes(self, offset, length):
        """What the backing file shows at [offset, offset+length): zeroes
        without one and past its end (also past this image's virtual size)."""
        out = bytearray(length)
        if self.backing is not None and offset < self.backing.virtual_size:
            count = min(length, self.backing.virtual_size - offset)
            out[:count] = self.backing.read(offset, count)
        return out

    # ----------------------------------------------------------------- writes
    def _prepare_write(self):
        self._check_writable()
        if self._write_ready:
            return
        header = self.header
        if header.features & FEATURE_NEED_CHECK:
            # not closed cleanly: drop invalid table entries before writing, as QEMU does on open
            self._check(fix=True)
        if header.autoclear_features:
            header.autoclear_features = 0
            self._write_header()
        self._write_ready = True

    def _mark_dirty(self):
        if not self.header.features & FEATURE_NEED_CHECK:
            self.header.features |= FEATURE_NEED_CHECK
            self._write_header()
            self._file.flush()
            self._dirty_by_us = True

    def _allocate(self, clusters):
        offset = self._file_size
        self._file_size += clusters * self.cluster_size
        return offset

    def _write_in_table(self, offset, data):
        cs = self.cluster_size
        span = self._l2_entries * cs
        l1_index = offset // span
        base = l1_index * span
        end = offset + len(data)
        l2_offset = self._l2_offset(l1_index)
        table = self._load_l2(l2_offset) if l2_offset else None
        first = (offset - base) // cs
        last = (end - 1 - base) // cs
        index = first
        changed = []
        while index <= last:
            entry = table[index] if table is not None else 0
            allocated = entry > ZERO_CLUSTER
            stop = index + 1
            while stop <= last and ((table[stop] if table is not None else 0) > ZERO_CLUSTER) == allocated and (
                    not allocated or table[stop] == table[stop - 1] + cs):
                stop += 1
            run_start = max(offset, base + index * cs)
            run_end = min(end, base + stop * cs)
            piece = data[run_start - offset:run_end - offset]
            if allocated:
                host = entry + run_start - (base + index * cs)
                for checked in range(index, stop):
                    if not self._cluster_offset_valid(table[checked]):
                        raise CorruptImageError("QED L2 table at 0x%x, entry %d: cluster offset 0x%x is misaligned, "
                                                "inside the header or past the end of the file"
                                                % (l2_offset, checked, table[checked]), self.path)
                self._check_no_overlap(host, len(piece), "data write")
                self._file.pwrite(host, piece)
            else:
                self._mark_dirty()
                clusters = stop - index
                cluster_start = base + index * cs
                head = self._fill(cluster_start, run_start - cluster_start, entry)
                tail_entry = table[stop - 1] if table is not None else 0
                tail = self._fill(run_end, cluster_start + clusters * cs - run_end, tail_entry)
                host = self._allocate(clusters)
                if head or tail:
                    piece = b"".join((bytes(head), bytes(piece), bytes(tail)))
                self._file.pwrite(host, piece)
                changed.append((index, stop, host))
            index = stop
        if changed:
            self._update_l2(l1_index, l2_offset, table, changed)

    def _fill(self, offset, length, entry):
        """Bytes around a partial write in a newly allocated cluster."""
        if length <= 0:
            return b""
        if entry == ZERO_CLUSTER:
            return bytes(length)
        return self._backing_bytes(offset, length)

    def _update_l2(self, l1_index, l2_offset, table, changed):
        """Point entries [first, stop) of each ``changed`` run at consecutive
        clusters from its host offset (ZERO_CLUSTER: all zero clusters)."""
        cs = self.cluster_size
        new_table = table is None
        if new_table:
            table = array.array("Q", bytes(self._table_bytes))
        for first, stop, host in changed:
            for index in range(first, stop):
                table[index] = ZERO_CLUSTER if host == ZERO_CLUSTER else host + (index - first) * cs
        if new_table:
            l2_offset = self._allocate(self.table_size)
            self._file.pwrite(l2_offset, _le_bytes(table))
            self._note_l2_table(l2_offset)
            self._l2_cache[l2_offset] = table
            if len(self._l2_cache) > self._l2_cache_max:
                self._l2_cache.pop(next(iter(self._l2_cache)))
            self._l1[l1_index] = l2_offset
            self._file.pwrite(self.header.l1_table_offset + l1_index * 8,
                              _le_bytes(self._l1[l1_index:l1_index + 1]))
        else:
            low = min(first for first, stop, host in changed)
            high = max(stop for first, stop, host in changed)
            self._check_no_overlap(l2_offset, self._table_bytes, "L2 table", l2_tables=False)
            self._file.pwrite(l2_offset + low * 8, _le_bytes(table[low:high]))

    def write_zeroes(self, offset, length, may_unmap=False):
        self._check_range(offset, length)
        self._prepare_write()
        cs = self.cluster_size
        end = offset + length
        first_whole = -(-offset // cs) * cs
        # the last partial cluster of an unaligned virtual size counts as whole
        last_whole = end if end == self.virtual_size else end // cs * cs
        if first_whole >= last_whole:
            self._write_zero_bytes(offset, length)
            return
        if offset < first_whole:
            self._write_zero_bytes(offset, first_whole - offset)
        if last_whole < end:
            self._write_zero_bytes(last_whole, end - last_whole)
        span = self._l2_entries * cs
        pos = first_whole
        while pos < last_whole:
            table_end = min(last_whole, (pos // span + 1) * span)
            self._zero_in_table(pos, table_end)
            pos = table_end

    def _zero_in_table(self, offset, end):
        """Whole clusters [offset, end) of one L2 table read as zeroes: zero
        clusters where nothing is allocated, zeroes written in place where
        clusters are (so none leaks), as QEMU does."""
        cs = self.cluster_size
        span = self._l2_entries * cs
        l1_index = offset // span
        base = l1_index * span
        l2_offset = self._l2_offset(l1_index)
        table = self._load_l2(l2_offset) if l2_offset else None
        first = (offset - base) // cs
        stop = -(-(end - base) // cs)
        changed = []
        index = first
        while index < stop:
            entry = table[index] if table is not None else 0
            if entry > ZERO_CLUSTER:
                cluster_start = base + index * cs
                self._write_zero_bytes(cluster_start, min(cs, self.virtual_size - cluster_start))
                index += 1
                continue
            run = index
            while run < stop and (table[run] if table is not None else 0) == 0:
                run += 1
            if run > index:
                changed.append((index, run, ZERO_CLUSTER))
                index = run
            else:
                index += 1
        if changed:
            self._mark_dirty()
            self._update_l2(l1_index, l2_offset, table, changed)

    # ------------------------------------------------------- in-place changes
    def set_backing(self, backing_file, backing_fmt):
        """Record ``backing_file`` (None or "": none) in the header area, as
        QEMU does: after the header, with the no-probe feature for raw."""
        self._check_writable()
        backing_file = backing_file or None
        backing_fmt = backing_fmt or None
        if backing_file is None and backing_fmt is not None:
            raise InvalidOptionError("qed: backing_fmt %r given without a backing file" % backing_fmt, self.path)
        name = b""
        if backing_file is not None:
            if backing_fmt is None:
                raise InvalidOptionError("qed: the backing file format is required (never guessed)", self.path)
            name = os.fsencode(backing_file)
            if len(name) >= MAX_BACKING_NAME or HEADER.size + len(name) > self._data_start:
                raise InvalidOptionError("qed: backing file name of %d bytes does not fit in the %d-byte header "
                                         "area" % (len(name), self._data_start), self.path)
        header = self.header
        header.features &= ~(FEATURE_BACKING_FILE | FEATURE_BACKING_FORMAT_NO_PROBE)
        if name:
            header.features |= FEATURE_BACKING_FILE
            if backing_fmt == "raw":
                header.features |= FEATURE_BACKING_FORMAT_NO_PROBE
        # QEMU points the name field after the header even when there is no name
        header.backing_filename_offset = HEADER.size
        header.backing_filename_size = len(name)
        self._file.pwrite(0, header.pack() + name)
        self._file.flush()
        self.backing_filename = backing_file
        self.backing_format = "raw" if name and backing_fmt == "raw" else None

    def make_empty(self):
        """Drop every cluster (qemu-img commit): the L1 table is cleared, then
        the file cut after it.  QEMU 7.2 leaves a committed QED image as it
        was; an emptied one reads the same, through its backing file."""
        self._prepare_write()
        header = self.header
        self._l1 = array.array("Q", bytes(self._table_bytes))
        self._l2_cache.clear()
        self._l2_starts = None
        self._file.pwrite(header.l1_table_offset, _le_bytes(self._l1))
        self._file.flush()
        end = header.l1_table_offset + self._table_bytes
        if end >= self._data_start:
            self._file.truncate(end)
            self._file_size = end

    def resize(self, new_size, preallocation=None):
        """Grow the image (QED cannot shrink); a range the backing file would
        show through is made to read as zeroes."""
        self._check_writable()
        if preallocation not in (None, "off"):
            raise InvalidOptionError("qed resize: preallocation %r is not supported (only off)" % (preallocation,),
                                     self.path)
        old_size = self.virtual_size
        if new_size < old_size:
            raise UnsupportedOperation("qed images cannot be shrunk (from %d to %d bytes)" % (old_size, new_size),
                                       self.path)
        limit = max_image_size(self.cluster_size, self.table_size)
        if new_size % SECTOR_SIZE or new_size > limit:
            raise InvalidOptionError("qed resize: the size must be a multiple of %d bytes and at most %d, found %d"
                                     % (SECTOR_SIZE, limit, new_size), self.path)
        self.header.image_size = new_size
        self._write_header()
        self._file.flush()
        self.virtual_size = new_size
        if self.backing is not None and self.backing.virtual_size > old_size:
            self.write_zeroes(old_size, min(new_size, self.backing.virtual_size) - old_size)

    # ---------------------------------------------------------------- queries
    def info(self):
        # qemu-img 7.2 reports "dirty-flag": false even with the needs-check bit set
        return {"cluster-size": self.cluster_size}

    def check(self, repair=None):
        if not repair:
            return self._check(fix=False)
        self._check_writable()
        result = self._check(fix=True)
        fixed = result.pop("corruptions-fixed", 0)
        if fixed:
            # as qemu-img check -r: report the state after the repair, and what was fixed
            result = self._check(fix=False)
            result["corruptions-fixed"] = fixed
        return result

    def _check(self, fix):
        """qemu-img check of a QED image: every table and data cluster offset
        valid and referenced once, unreferenced clusters counted as leaks;
        with ``fix`` invalid entries are dropped (counted as fixed)."""
        cs = self.cluster_size
        header = self.header
        nclusters = self._file_size // cs
        # one bit per cluster of the file: bounded by the file, 1/8 byte per cluster
        used = bytearray((nclusters + 7) // 8)
        counts = {"corruptions": 0, "leaks": 0, "check_errors": 0, "allocated": 0, "fragmented": 0, "fixed": 0}

        def mark(offset, count):
            duplicates = 0
            for cluster in range(offset // cs, offset // cs + count):
                bit = 1 << (cluster & 7)
                if used[cluster >> 3] & bit:
                    duplicates += 1
                used[cluster >> 3] |= bit
            counts["corruptions"] += duplicates
            return duplicates == 0

        mark(header.l1_table_offset, self.table_size)
        l1_fixed = False
        for l1_index, l2_offset in enumerate(self._l1):
            if not l2_offset:
                continue
            if not self._table_offset_valid(l2_offset):
                if fix:
                    self._l1[l1_index] = 0
                    l1_fixed = True
                    counts["fixed"] += 1
                else:
                    counts["corruptions"] += 1
                continue
            if not mark(l2_offset, self.table_size):
                continue
            table = self._load_l2(l2_offset)
            l2_fixed = False
            last = 0
            for index, entry in enumerate(table):
                if entry <= ZERO_CLUSTER:
                    continue
                counts["allocated"] += 1
                if last and last + cs != entry:
                    counts["fragmented"] += 1
                last = entry
                if not self._cluster_offset_valid(entry):
                    if fix:
                        table[index] = 0
                        l2_fixed = True
                        counts["fixed"] += 1
                    else:
                        counts["corruptions"] += 1
                    continue
                mark(entry, 1)
            if l2_fixed:
                self._check_no_overlap(l2_offset, self._table_bytes, "L2 table", l2_tables=False)
                self._file.pwrite(l2_offset, _le_bytes(table))
        if l1_fixed:
            self._file.pwrite(header.l1_table_offset, _le_bytes(self._l1))
        # only clusters past the header are ever marked (valid offsets start there)
        marked = sum(used.translate(_POPCOUNT))
        counts["leaks"] = max(0, nclusters - header.header_size) - marked
        if fix and not counts["corruptions"] and header.features & FEATURE_NEED_CHECK:
            self._file.flush()
            header.features &= ~FEATURE_NEED_CHECK
            self._write_header()
            self._file.flush()
            self._dirty_by_us = False
        result = {"check-errors": counts["check_errors"]}
        total = -(-header.image_size // cs)
        if total:
            result["total-clusters"] = total
        for key, name in (("corruptions", "corruptions"), ("leaks", "leaks"),
                          ("allocated", "allocated-clusters"), ("fragmented", "fragmented-clusters"),
                          ("fixed", "corruptions-fixed")):
            if counts[key]:
                result[name] = counts[key]
        return result

    # ----------------------------------------------------------------- create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        options = dict(options or {})
        cluster_size = _int_option("cluster_size", options.pop("cluster_size", DEFAULT_CLUSTER_SIZE), path)
        table_size = _int_option("table_size", options.pop("table_size", DEFAULT_TABLE_SIZE), path)
        backing_file = options.pop("backing_file", None)
        backing_fmt = options.pop("backing_fmt", None)
        option_size = options.pop("size", None)
        preallocation = options.pop("preallocation", None)
        if preallocation not in (None, "off"):
            raise InvalidOptionError("qed create: preallocation %r is not supported (only off)" % (preallocation,),
                                     path)
        if options:
            raise InvalidOptionError("invalid option(s) for qed images: %s (supported: cluster_size, table_size, "
                                     "backing_file, backing_fmt)" % ", ".join(sorted(options)), path)
        if not _power_of_two(cluster_size) or not MIN_CLUSTER_SIZE <= cluster_size <= MAX_CLUSTER_SIZE:
            raise InvalidOptionError("QED cluster size must be within range [%d, %d] and power of 2, found %d"
                                     % (MIN_CLUSTER_SIZE, MAX_CLUSTER_SIZE, cluster_size), path)
        if not _power_of_two(table_size) or not MIN_TABLE_SIZE <= table_size <= MAX_TABLE_SIZE:
            raise InvalidOptionError("QED table size must be within range [%d, %d] and power of 2, found %d"
                                     % (MIN_TABLE_SIZE, MAX_TABLE_SIZE, table_size), path)
        if table_size == 1:
            # QEMU accepts it at creation but cannot open the result ("QED table offset is invalid")
            raise InvalidOptionError("qed create: table_size 1 makes an image QEMU cannot open; use 2 or more", path)
        if size is None:
            size = option_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)" % (size,),
                                     path)
        size = -(-size // SECTOR_SIZE) * SECTOR_SIZE
        if size > max_image_size(cluster_size, table_size):
            raise InvalidOptionError("QED image size must be a non-zero multiple of cluster size and less than %d "
                                     "bytes, found %d" % (max_image_size(cluster_size, table_size), size), path)
        if table_size * cluster_size > MAX_TABLE_BYTES:
            raise InvalidOptionError("qed create: tables of %d bytes exceed the %d bytes this library handles"
                                     % (table_size * cluster_size, MAX_TABLE_BYTES), path)
        features = 0
        name = b""
        if backing_file:
            name = os.fsencode(backing_file)
            if len(name) >= MAX_BACKING_NAME or HEADER.size + len(name) > cluster_size:
                raise InvalidOptionError("qed create: backing file name of %d bytes is too long" % len(name), path)
            features |= FEATURE_BACKING_FILE
            if backing_fmt == "raw":
                features |= FEATURE_BACKING_FORMAT_NO_PROBE
        header = HEADER.pack(MAGIC, cluster_size, table_size, 1, features, 0, 0, cluster_size, size,
                             HEADER.size if name else 0, len(name))
        image_file = ImageFile(path, create=True)
        try:
            image_file.truncate(cluster_size * (1 + table_size))
            image_file.pwrite(0, header + name)
            image_file.flush()
        except BaseException:
            image_file.close()
            os.unlink(image_file.path)
            raise
        image_file.close()
