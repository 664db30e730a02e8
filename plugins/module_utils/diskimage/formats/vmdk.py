# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMware VMDK images (VMware Virtual Disk Format 5.0; seSparse as QEMU reads it).

An image is a text *descriptor* (embedded in a hosted sparse extent, or a file
of its own) listing *extents*: FLAT/VMFS (raw bytes at an offset), SPARSE
(hosted sparse extent "KDMV": grain directory -> grain tables -> grains,
optionally deflate-compressed grains with markers: streamOptimized),
VMFSSPARSE (ESX "COWD") and SESPARSE (ESXi 6.5+ space-efficient sparse,
magic 0xcafebabe).  A descriptor with ``parentFileNameHint`` is a delta disk:
unallocated grains read from the parent, whose CID must equal ``parentCID``.

Files named in a descriptor (extents, parent) are opened only through the
opener (path policy).  Behaviour, limits and ``qemu-img info`` fields follow
QEMU 7.2 (block/vmdk.c); new streamOptimized images use VMware's stream layout
(grains, grain tables, grain directory, footer, end-of-stream marker, all
appended in guest order).

Writing: FLAT/VMFS and hosted sparse extents (new grains at the end of the
extent file, then the grain table entry and its redundant copy); streams in
VMware's layout only in guest order (a random write is UnsupportedOperation),
streams in qemu-img's layout (tables before the grains) only whole unallocated
grains, as QEMU.  seSparse, vmfsSparse and version-3 uncompressed extents are
read-only, as in QEMU.  Like QEMU, the first write after opening gives the
image a new random CID, which invalidates delta disks made on top of it.
Multi-file images (monolithicFlat, twoGbMaxExtent*) name their extent files
after the name ops/create.py publishes the descriptor under.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import os
import random
import re
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from .. import _deflate
from .._io import ImageFile
from ..errors import (CorruptImageError, FormatError, ImageError, InvalidOptionError,
                      ReadOnlyImageError, UnsupportedFeature, UnsupportedOperation)
from .base import (
    BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_OFFSET_VALID, BLOCK_ZERO, DATA, UNALLOCATED, ZERO, Driver, Extent,
    StatusRuns, block_status_runs,
)

SECTOR_SIZE = 512

# --- Hosted sparse extent header (VMDK 5.0 spec, "Hosted Sparse Extent Header"), little-endian,
# after the magic: version, flags, capacity, grainSize, descriptorOffset, descriptorSize,
# numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown, 4 newline check bytes,
# compressAlgorithm; padded to one sector.
SPARSE_MAGIC = b"KDMV"
# Bound on the descriptor of an image create() wrote (split descriptors list at most ~1000 extents/TiB).
MAX_CREATED_DESCRIPTOR = 4 << 20
SPARSE_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
FLAG_NL_DETECT = 1 << 0
FLAG_RGD = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESS = 1 << 16
FLAG_MARKER = 1 << 17
COMPRESSION_DEFLATE = 1
GD_AT_END = 0xffffffffffffffff
NEWLINE_CHECK = b"\n \r\n"
# Grain table entry of a zeroed grain (flag FLAG_ZERO_GRAIN).
GTE_ZEROED = 1

# --- streamOptimized markers (spec "Stream-Optimized Compressed Sparse Extents"):
# a grain marker is lba (sectors) + size of the compressed data; a metadata marker
# is numSectors, size 0, type, padded to one sector.
GRAIN_MARKER = struct.Struct("<QI")
MARKER = struct.Struct("<QII")
MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# --- ESX "COWD" sparse extent (vmfsSparse): after the magic, uint32 version, flags,
# numSectors, grainSize, gdOffset, numGDEntries, freeSector, cylinders, heads, sectors.
COWD_MAGIC = b"COWD"
COWD_HEADER = struct.Struct("<4s10I")
COWD_GTES_PER_GT = 4096

# --- seSparse (ESXi): const header of 26 uint64 + zero padding, volatile header of 4 uint64.
SESPARSE_CONST_MAGIC = 0xcafebabe
SESPARSE_VOLATILE_MAGIC = 0xcafecafe
SESPARSE_VERSION = 0x0000000200000001
SESPARSE_CONST_HEADER = struct.Struct("<26Q")
SESPARSE_VOLATILE_HEADER = struct.Struct("<4Q")
SESPARSE_GRAIN_SECTORS = 8
SESPARSE_GT_SECTORS = 64

# --- Text descriptor (spec "The Descriptor File").
DESCRIPTOR_SIGNATURE = b"# Disk DescriptorFile"
# QEMU reads at most this much descriptor text (and 20 sectors for CIDs).
MAX_DESCRIPTOR_SIZE = (1 << 20) - 1
EMBEDDED_DESCRIPTOR_SECTORS = 20
DESCRIPTOR_CREATE_TYPES = ("monolithicFlat", "vmfs", "vmfsSparse", "seSparse",
                           "twoGbMaxExtentSparse", "twoGbMaxExtentFlat")
EXTENT_LINE = re.compile(r'^(\S{1,10})\s+(-?\d+)\s+(\S{1,10})\s+"([^"\r\n]{1,511})"(?:\s+(-?\d+))?')
CID_UNSET = 0xffffffff

# --- Caps on header-derived allocations (docs/security.md rule 5).
# QEMU refuses grains over 0x200000 sectors; we bound them tighter because a
# compressed grain is read and inflated whole.
MAX_GRAIN_SECTORS = 0x20000          # 64 MiB
MAX_GTES_PER_GT = 512                # QEMU: "L2 table size too big"
MAX_GRAIN_DIRECTORY_BYTES = 64 << 20
MAX_EXTENTS = 4096
# QEMU keeps sizes in int64_t: a descriptor whose extents add up to more is refused (it would overflow
# every size computation downstream: ftruncate, the qcow2 L1 table, block status).
MAX_VIRTUAL_SIZE = (1 << 63) - 1
GT_CACHE_BYTES = 16 << 20
# Threads that inflate the compressed grains of one read (at most; never more than the CPUs).
_INFLATE_WORKERS = 4

# Sector numbers in grain tables are 32-bit.
MAX_EXTENT_SECTORS = 1 << 32

# Creation (qemu-img create -f vmdk).
SUBFORMATS = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
              "streamOptimized")
ADAPTER_TYPES = ("ide", "buslogic", "lsilogic", "legacyESX")
CREATE_OPTIONS = ("subformat", "adapter_type", "hwversion", "toolsversion", "compat6",
                  "zeroed_grain", "backing_file", "backing_fmt", "size")
SPLIT_EXTENT_SIZE = 0x80000000
DEFAULT_GRAIN_SECTORS = 128
DEFAULT_TOOLS_VERSION = "2147483647"
DEFAULT_HW_VERSION = "4"

# Run states inside one extent.
_DATA, _ZERO, _UNALLOC, _COMPRESSED = "data", "zero", "unallocated", "compressed"

_BIG_ENDIAN = sys.byteorder == "big"


def _le_array(typecode, raw):
    table = array.array(typecode)
    table.frombytes(raw)
    if _BIG_ENDIAN:
        table.byteswap()
    return table


def _le_bytes(table):
    if _BIG_ENDIAN:
        table = array.array(table.typecode, table)
        table.byteswap()
    return table.tobytes()


def _ceil_div(a, b):
    return -(-a // b)


def _round_up(value, alignment):
    return _ceil_div(value, alignment) * alignment


# ============================================================== descriptor
class Descriptor:
    """A parsed text descriptor: header keys, extent lines, disk database."""

    def __init__(self, text, path):
        self.text = text
        self.keys = {}
        self.extents = []     # (access, sectors, type, filename, offset or None)
        self.ddb = {}
        for line in text.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            match = EXTENT_LINE.match(stripped)
            if match:
                self._extent(match, stripped, path)
                continue
            if "=" in stripped:
                key, value = stripped.split("=", 1)
                key, value = key.strip(), value.strip()
                if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                    value = value[1:-1]
                if key.startswith("ddb."):
                    self.ddb.setdefault(key, value)
                else:
                    self.keys.setdefault(key, value)
        if len(self.extents) > MAX_EXTENTS:
            raise UnsupportedFeature("VMDK descriptor lists %d extents, more than the %d supported"
                                     % (len(self.extents), MAX_EXTENTS), path)

    def _extent(self, match, line, path):
        access, sectors, kind, filename, offset = match.groups()
        # QEMU opens RW extents only; RDONLY ones are read the same way here.
        if access not in ("RW", "RDONLY"):
            return
        sectors = int(sectors)
        if kind == "FLAT":
            if offset is None or int(offset) < 0:
                raise FormatError("invalid VMDK extent line (FLAT needs a non-negative offset): %s" % line, path)
            offset = int(offset)
        elif kind == "VMFS":
            if offset is not None:
                raise FormatError("invalid VMDK extent line (VMFS takes no offset): %s" % line, path)
            offset = 0
        elif offset is not None:
            raise FormatError("invalid VMDK extent line (%s takes no offset): %s" % (kind, line), path)
        if sectors <= 0 or kind not in ("FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"):
            return
        self.extents.append((access, sectors, kind, filename, offset))

    def cid(self, key, path):
        value = self.keys.get(key)
        if value is None:
            raise FormatError("VMDK descriptor has no %s" % key, path)
        match = re.match(r"[0-9a-fA-F]+", value)
        if not match or len(match.group(0)) > 8:
            raise FormatError("VMDK descriptor %s is not a 32-bit hexadecimal number: %r" % (key, value), path)
        return int(match.group(0), 16)


def _decode_descriptor(raw):
    raw = raw.split(b"\x00", 1)[0]
    return raw.decode("utf-8", "replace")


def probe_descriptor_text(header):
    """QEMU's descriptor probe: comment lines and lines of spaces, then version=1|2|3."""
    position = 0
    end = len(header)
    while position < end:
        char = header[position:position + 1]
        if char == b"#":
            newline = header.find(b"\n", position)
            if newline < 0:
                return False
            position = newline + 1
            continue
        if char == b" ":
            while position < end and header[position:position + 1] == b" ":
                position += 1
            if header[position:position + 1] == b"\r":
                position += 1
            if position >= end or header[position:position + 1] != b"\n":
                return False
            position += 1
            continue
        rest = header[position:position + 11]
        return any(rest.startswith(b"version=%d%s" % (v, nl)) for v in (1, 2, 3) for nl in (b"\n", b"\r\n"))
    return False


# ================================================================= extents
class _FlatExtent:
    """FLAT / VMFS extent: guest bytes at ``base`` in the extent file."""

    flat = True
    compressed = False
    cluster_size = None

    def __init__(self, image_file, sectors, base, kind):
        self.image_file = image_file
        self.sectors = sectors
        self.size = sectors * SECTOR_SIZE
        self.base = base
        self.kind = kind
        self.display_name = None

    def runs(self, offset, length):
        return [(offset, length, _DATA, self.base + offset)]

    def check(self):
        if self.image_file.size() <= self.base:
            return "flat extent data offset %d points after EOF" % self.base
        return None


class _SparseExtent:
    """Grain directory / grain table extent (KDMV, COWD or seSparse)."""

    flat = False

    def __init__(self, image_file, kind, path):
        self.image_file = image_file
        self.kind = kind
        self.path = path
        self.display_name = None
        self.gd_entries = 0
        self.sectors = 0
        self.size = 0
        self.grain_size = 0
        self.gtes_per_gt = 0
        self.gd = None
        self.rgd = None
        self.gd_offset = 0
        self.rgd_offset = 0
        self.compressed = False
        self.markers = False
        self.zero_grain = False
        self.sesparse = False
        self.sesparse_gt_base = 0
        self.sesparse_grain_base = 0
        self.version = 0
        self.header = None
        self.stream_at_end = False
        self._gt_cache = {}
        self._gt_cache_bytes = 0
        self.next_grain = 0
        self.file_size = image_file.size()

    @property
    def cluster_size(self):
        return self.grain_size

    @property
    def entry_size(self):
        return 8 if self.sesparse else 4

    # ---------------------------------------------------------- opening
    def _set_geometry(self, capacity, grain_sectors, gtes_per_gt, gd_entries):
        if grain_sectors <= 0 or gtes_per_gt <= 0:
            raise FormatError("VMDK extent: invalid grain size (%d sectors) or grain table size (%d entries)"
                              % (grain_sectors, gtes_per_gt), self.path)
        if grain_sectors > MAX_GRAIN_SECTORS:
            raise UnsupportedFeature("VMDK extent: grain size of %d sectors is larger than the %d supported "
                                     "(image may be corrupt)" % (grain_sectors, MAX_GRAIN_SECTORS), self.path)
        if gd_entries * self.entry_size > MAX_GRAIN_DIRECTORY_BYTES:
            raise UnsupportedFeature("VMDK extent: grain directory of %d entries is larger than the %d bytes "
                                     "supported" % (gd_entries, MAX_GRAIN_DIRECTORY_BYTES), self.path)
        self.sectors = capacity
        self.size = capacity * SECTOR_SIZE
        self.grain_size = grain_sectors * SECTOR_SIZE
        self.gtes_per_gt = gtes_per_gt
        self.gd_entries = gd_entries
        self.next_grain = _round_up(self.file_size, self.grain_size)

    def _read_directory(self, offset, what):
        length = self.gd_entries * self.entry_size
        if offset + length > self.file_size:
            raise CorruptImageError("VMDK %s at offset %d (%d entries, %d bytes) lies beyond the end of the "
                                    "extent file (size %d)" % (what, offset, self.gd_entries, length,
                                                               self.file_size), self.path)
        raw = self.image_file.pread_exact(offset, length, "VMDK " + what)
        return _le_array("Q" if self.sesparse else "I", raw)

    @classmethod
    def open_hosted(cls, image_file, kind, path, header_bytes, writable):
        extent = cls(image_file, kind, path)
        extent._parse_hosted(header_bytes, writable)
        return extent

    def _parse_hosted(self, header_bytes, writable):
        fields = SPARSE_HEADER.unpack_from(header_bytes)
        if fields[9] == GD_AT_END:
            # streamOptimized: the footer (one sector before the end-of-stream marker) has the real header.
            if self.file_size < 3 * SECTOR_SIZE + SECTOR_SIZE:
                raise FormatError("VMDK stream: file too short for footer and end-of-stream marker", self.path)
            tail = self.image_file.pread_exact(self.file_size - 3 * SECTOR_SIZE, 3 * SECTOR_SIZE, "VMDK footer")
            footer_marker = MARKER.unpack_from(tail, 0)
            eos = MARKER.unpack_from(tail, 2 * SECTOR_SIZE)
            if (tail[SECTOR_SIZE:SECTOR_SIZE + 4] != SPARSE_MAGIC or footer_marker[1] != 0
                    or footer_marker[2] != MARKER_FOOTER or eos != (0, 0, MARKER_EOS)):
                raise FormatError("VMDK stream: invalid footer (expected a footer marker, a KDMV header and "
                                  "an end-of-stream marker in the last three sectors)", self.path)
            fields = SPARSE_HEADER.unpack_from(tail, SECTOR_SIZE)
            self.stream_at_end = True
        (_magic, version, flags, capacity, grain_sectors, _desc_offset, _desc_size, gtes_per_gt,
         rgd_offset, gd_offset, overhead, _unclean, _check, compress_algorithm) = fields
        self.header = fields
        self.compressed = compress_algorithm == COMPRESSION_DEFLATE
        if version > 3:
            raise UnsupportedFeature("unsupported VMDK version %d (expected 1, 2 or 3)" % version, self.path)
        if version == 3 and writable and not self.compressed:
            raise UnsupportedOperation("VMDK version 3 must be read only (its changed block tracking "
                                       "would not be updated)", self.path)
        self.version = version
        if gtes_per_gt > MAX_GTES_PER_GT:
            raise FormatError("VMDK grain table size too big: %d entries (at most %d)"
                              % (gtes_per_gt, MAX_GTES_PER_GT), self.path)
        if gtes_per_gt * grain_sectors == 0:
            raise FormatError("VMDK grain table coverage is invalid (%d entries of %d sectors)"
                              % (gtes_per_gt, grain_sectors), self.path)
        if self.file_size < overhead * SECTOR_SIZE:
            raise FormatError("VMDK file truncated, expecting at least %d bytes (found %d)"
                              % (overhead * SECTOR_SIZE, self.file_size), self.path)
        gd_entries = _ceil_div(capacity, gtes_per_gt * grain_sectors)
        self._set_geometry(capacity, grain_sectors, gtes_per_gt, gd_entries)
        self.markers = bool(flags & FLAG_MARKER)
        self.zero_grain = bool(flags & FLAG_ZERO_GRAIN)
        self.gd_offset = gd_offset * SECTOR_SIZE
        self.gd = self._read_directory(self.gd_offset, "grain directory")
        if flags & FLAG_RGD and rgd_offset and not self.stream_at_end:
            self.rgd_offset = rgd_offset * SECTOR_SIZE
            self.rgd = self._read_directory(self.rgd_offset, "redundant grain directory")

    @classmethod
    def open_cowd(cls, image_file, path, header_bytes):
        extent = cls(image_file, "VMFSSPARSE", path)
        fields = COWD_HEADER.unpack_from(header_bytes)
        capacity, grain_sectors, gd_sector, gd_entries = fields[3], fields[4], fields[5], fields[6]
        extent._set_geometry(capacity, grain_sectors, COWD_GTES_PER_GT, gd_entries)
        if gd_entries < _ceil_div(capacity, COWD_GTES_PER_GT * grain_sectors):
            raise FormatError("VMDK COWD extent: %d grain directory entries cannot cover %d sectors"
                              % (gd_entries, capacity), path)
        extent.gd_offset = gd_sector * SECTOR_SIZE
        extent.gd = extent._read_directory(extent.gd_offset, "grain directory")
        return extent

    @classmethod
    def open_sesparse(cls, image_file, path):
        extent = cls(image_file, "SESPARSE", path)
        extent.sesparse = True
        raw = image_file.pread_exact(0, SECTOR_SIZE, "seSparse const header")
        header = SESPARSE_CONST_HEADER.unpack_from(raw)
        (magic, version, capacity, grain_size, gt_size, flags, r1, r2, r3, r4, volatile_offset, _vs,
         _jho, _jhs, _jo, _js, gd_offset, gd_size, gt_offset, _gts, _fbo, _fbs, _bmo, _bms,
         grains_offset, _grs) = header
        if magic != SESPARSE_CONST_MAGIC:
            raise FormatError("seSparse: bad const header magic 0x%016x (expected 0x%016x)"
                              % (magic, SESPARSE_CONST_MAGIC), path)
        if version != SESPARSE_VERSION:
            raise UnsupportedFeature("seSparse: unsupported version 0x%016x (expected 0x%016x)"
                                     % (version, SESPARSE_VERSION), path)
        if grain_size != SESPARSE_GRAIN_SECTORS:
            raise UnsupportedFeature("seSparse: unsupported grain size %d (expected 8)" % grain_size, path)
        if gt_size != SESPARSE_GT_SECTORS:
            raise UnsupportedFeature("seSparse: unsupported grain table size %d (expected 64)" % gt_size, path)
        if flags or r1 or r2 or r3 or r4 or raw[SESPARSE_CONST_HEADER.size:].strip(b"\x00"):
            raise UnsupportedFeature("seSparse: unsupported flags, reserved fields or padding", path)
        volatile = image_file.pread_exact(volatile_offset * SECTOR_SIZE, SECTOR_SIZE, "seSparse volatile header")
        vmagic, _free_gt, _txn, replay_journal = SESPARSE_VOLATILE_HEADER.unpack_from(volatile)
        if vmagic != SESPARSE_VOLATILE_MAGIC:
            raise FormatError("seSparse: bad volatile header magic 0x%016x (expected 0x%016x)"
                              % (vmagic, SESPARSE_VOLATILE_MAGIC), path)
        if replay_journal:
            raise UnsupportedFeature("seSparse: image is dirty, replaying its journal is not supported", path)
        if volatile[SESPARSE_VOLATILE_HEADER.size:].strip(b"\x00"):
            raise UnsupportedFeature("seSparse: non-zero volatile header padding", path)
        gd_entries = gd_size * SECTOR_SIZE // 8
        extent._set_geometry(capacity, grain_size, gt_size * SECTOR_SIZE // 8, gd_entries)
        if gd_entries < _ceil_div(capacity, extent.gtes_per_gt * grain_size):
            raise FormatError("seSparse: %d grain directory entries cannot cover %d sectors"
                              % (gd_entries, capacity), path)
        extent.sesparse_gt_base = gt_offset * SECTOR_SIZE
        extent.sesparse_grain_base = grains_offset * SECTOR_SIZE
        extent.gd_offset = gd_offset * SECTOR_SIZE
        extent.gd = extent._read_directory(extent.gd_offset, "grain directory")
        return extent

    # --------------------------------------------------------- tables
    def gt_offset(self, gd_index, directory=None):
        """Byte offset of grain table ``gd_index`` (0 when not allocated)."""
        entry = (self.gd if directory is None else directory)[gd_index]
        if not entry:
            return 0
        if self.sesparse:
            if entry & 0xffffffff00000000 != 0x1000000000000000:
                raise CorruptImageError("seSparse grain directory entry %d is invalid: 0x%016x"
                                        % (gd_index, entry), self.path)
            return self.sesparse_gt_base + (entry & 0xffffffff) * self.gtes_per_gt * 8
        return entry * SECTOR_SIZE

    def grain_table(self, gd_index):
        """Grain table ``gd_index`` as an array (None when not allocated)."""
        table = self._gt_cache.get(gd_index)
        if table is not None:
            return table
        offset = self.gt_offset(gd_index)
        if not offset:
            return None
        length = self.gtes_per_gt * self.entry_size
        if offset + length > self.file_size:
            raise CorruptImageError("VMDK grain table %d at offset %d (%d bytes) lies beyond the end of the "
                                    "extent file (size %d)" % (gd_index, offset, length, self.file_size), self.path)
        table = _le_array("Q" if self.sesparse else "I", self.image_file.pread_exact(offset, length, "grain table"))
        if self._gt_cache_bytes + length > GT_CACHE_BYTES:
            self._gt_cache.clear()
            self._gt_cache_bytes = 0
        self._gt_cache[gd_index] = table
        self._gt_cache_bytes += length
        return table

    def forget_tables(self):
        """Drop cached grain tables (they were rewritten elsewhere)."""
        self._gt_cache = {}
        self._gt_cache_bytes = 0

    def classify(self, entry, grain_index):
        """(state, host offset) of one grain table entry."""
        if self.sesparse:
            top = entry & 0xf000000000000000
            if top == 0:
                if entry:
                    raise CorruptImageError("seSparse grain table entry for grain %d is invalid: 0x%016x"
                                            % (grain_index, entry), self.path)
                return _UNALLOC, None
            if top in (0x1000000000000000, 0x2000000000000000):
                return _ZERO, None
            if top != 0x3000000000000000:
                raise CorruptImageError("seSparse grain table entry for grain %d is invalid: 0x%016x"
                                        % (grain_index, entry), self.path)
            cluster = ((entry & 0x0fff000000000000) >> 48) | ((entry & 0x0000ffffffffffff) << 12)
            return _DATA, self.sesparse_grain_base + cluster * self.grain_size
        if not entry:
            return _UNALLOC, None
        if entry == GTE_ZEROED and self.zero_grain:
            return _ZERO, None
        return (_COMPRESSED if self.compressed else _DATA), entry * SECTOR_SIZE

    def runs(self, offset, length):
        """(start, length, state, host offset) runs over [offset, offset+length) of this extent."""
        result = []
        grain_size = self.grain_size
        position = offset
        end = offset + length
        while position < end:
            grain_index = position // grain_size
            gd_index = grain_index // self.gtes_per_gt
            if gd_index >= self.gd_entries:
                raise CorruptImageError("VMDK grain %d lies outside the grain directory (%d entries)"
                                        % (grain_index, self.gd_entries), self.path)
            table = self.grain_table(gd_index)
            table_end = min(end, (gd_index + 1) * self.gtes_per_gt * grain_size)
            if table is None:
                self._add(result, position, table_end - position, _UNALLOC, None)
                position = table_end
                continue
            first = (position // grain_size) % self.gtes_per_gt
            last = ((table_end - 1) // grain_size) % self.gtes_per_gt
            if not any(table[first:last + 1]):
                # Nothing allocated in this stretch of the table (the common case of sparse images).
                self._add(result, position, table_end - position, _UNALLOC, None)
                position = table_end
                continue
            while position < table_end:
                grain_index = position // grain_size
                in_grain = position - grain_index * grain_size
                count = min(table_end, (grain_index + 1) * grain_size) - position
                state, host = self.classify(table[grain_index % self.gtes_per_gt], grain_index)
                if state == _DATA:
                    if host >= self.file_size:
                        raise CorruptImageError("VMDK grain %d at offset %d points after the end of the extent "
                                                "file (size %d)" % (grain_index, host, self.file_size), self.path)
                    host += in_grain
                self._add(result, position, count, state, host)
                position += count
        return result

    @staticmethod
    def _add(result, start, length, state, host):
        if result and state != _COMPRESSED:
            last = result[-1]
            if last[2] == state and last[0] + last[1] == start and (
                    host is None or last[3] + last[1] == host):
                result[-1] = (last[0], last[1] + length, state, last[3])
                return
        result.append((start, length, state, host))

    def read_compressed(self, host, grain_index):
        """The inflated grain stored at ``host`` (bounded by the grain size)."""
        grain_size = self.grain_size
        if self.markers:
            head = self.image_file.pread(host, GRAIN_MARKER.size)
            if len(head) < GRAIN_MARKER.size:
                raise CorruptImageError("VMDK compressed grain %d: marker at offset %d lies beyond the end of "
                                        "the file" % (grain_index, host), self.path)
            _lba, size = GRAIN_MARKER.unpack(head)
            start = host + GRAIN_MARKER.size
        else:
            size = 2 * grain_size
            start = host
        if not size or size > 2 * grain_size:
            raise CorruptImageError("VMDK compressed grain %d: compressed size %d is invalid (at most %d)"
                                    % (grain_index, size, 2 * grain_size), self.path)
        compressed = self.image_file.pread(start, size)
        if self.markers and len(compressed) != size:
            raise CorruptImageError("VMDK compressed grain %d at offset %d (%d bytes) lies beyond the end of "
                                    "the file" % (grain_index, start, size), self.path)
        inflater = _deflate.decompressobj(15)
        try:
            grain = inflater.decompress(compressed, grain_size)
        except _deflate.ERRORS as exc:
            raise CorruptImageError("VMDK compressed grain %d at offset %d cannot be inflated: %s"
                                    % (grain_index, host, exc), self.path) from exc
        if inflater.unconsumed_tail:
            raise CorruptImageError("VMDK compressed grain %d inflates to more than the grain size (%d bytes)"
                                    % (grain_index, grain_size), self.path)
        if len(grain) < grain_size:
            grain += bytes(grain_size - len(grain))
        return grain

    def check(self):
        """QEMU's vmdk check: every allocated grain must start inside the file."""
        for gd_index in range(self.gd_entries):
            table = self.grain_table(gd_index)
            if table is None:
                continue
            first = gd_index * self.gtes_per_gt
            for index, entry in enumerate(table):
                grain_index = first + index
                if grain_index * self.grain_size >= self.size:
                    break
                host = self.classify(entry, grain_index)[1]
                if host is not None and host >= self.file_size:
                    return "cluster offset for sector %d points after EOF" % (grain_index * self.grain_size // 512)
        return None

    # ------------------------------------------------------------- writes
    def allocate_table(self, gd_index):
        """A new, empty grain table ``gd_index`` (and its redundant copy) at the end
        of the extent file, entered in the grain directories; returns it."""
        if self.sesparse or self.kind == "VMFSSPARSE" or self.stream_at_end:
            raise UnsupportedOperation("VMDK grain table %d is not allocated; allocating one in a %s extent is "
                                       "not supported" % (gd_index, self.kind or "stream"), self.path)
        table_bytes = _round_up(self.gtes_per_gt * 4, SECTOR_SIZE)
        copies = 2 if self.rgd is not None else 1
        host = self.next_grain
        if (host + copies * table_bytes) // SECTOR_SIZE >= MAX_EXTENT_SECTORS:
            raise UnsupportedOperation("VMDK extent full: tables beyond 2 TiB of file cannot be addressed", self.path)
        # Empty tables first, then the directory entries that make them reachable.
        self.image_file.pwrite(host, bytes(copies * table_bytes))
        self.file_size = max(self.file_size, host + copies * table_bytes)
        self.next_grain = _round_up(host + copies * table_bytes, self.grain_size)
        self.gd[gd_index] = host // SECTOR_SIZE
        self.image_file.pwrite(self.gd_offset + 4 * gd_index, struct.pack("<I", self.gd[gd_index]))
        if self.rgd is not None:
            self.rgd[gd_index] = (host + table_bytes) // SECTOR_SIZE
            self.image_file.pwrite(self.rgd_offset + 4 * gd_index, struct.pack("<I", self.rgd[gd_index]))
        table = array.array("I", bytes(4 * self.gtes_per_gt))
        self._gt_cache[gd_index] = table
        self._gt_cache_bytes += 4 * self.gtes_per_gt
        return table

    def set_entries(self, gd_index, updates):
        """Write grain table entries {index in table: value} of table ``gd_index``
        (and of its redundant copy)."""
        table = self.grain_table(gd_index)
        for index, value in updates.items():
            table[index] = value
        low, high = min(updates), max(updates) + 1
        chunk = _le_bytes(table[low:high])
        self.image_file.pwrite(self.gt_offset(gd_index) + low * 4, chunk)
        if self.rgd is not None:
            redundant = self.gt_offset(gd_index, self.rgd)
            if redundant:
                if redundant + self.gtes_per_gt * 4 > self.file_size:
                    raise CorruptImageError("VMDK redundant grain table %d lies beyond the end of the file"
                                            % gd_index, self.path)
                self.image_file.pwrite(redundant + low * 4, chunk)


# ============================================================== the driver
class VmdkDriver(Driver):
    format_name = "vmdk"
    can_create = True
    can_write = True

    def __init__(self):
        super(VmdkDriver, self).__init__()
        self._file = None
        self.extents = []
        self.extent_starts = []
        self.create_type = None
        self.cid = CID_UNSET
        self.parent_cid = CID_UNSET
        self.descriptor = None
        self.descriptor_offset = 0        # where the descriptor text lives in image_file
        self.descriptor_room = None       # bytes available for it (None: a file of its own)
        self.cluster_size = 0
        self._cid_updated = False
        self._cid_checked = False
        self._opened_files = []
        self._grain_cache = (None, None)
        self._inflaters = None            # thread pool inflating compressed grains (created on first need)
        self._inflaters_lock = threading.Lock()
        self.stream = None

    # ------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        if header[:4] in (SPARSE_MAGIC, COWD_MAGIC):
            return 100
        if probe_descriptor_text(bytes(header)):
            return 100
        return 0

    # ---------------------------------------------------------- lifecycle
    # open() and open_file() are the base class's (a window on a VMDK inside an OVA
    # opens with open_file; the write methods of _io.ImageFile only when writable).
    def _open_structures(self, opener):
        image_file = self._file
        size = image_file.size()
        if size < 4:
            raise FormatError("file too small to be a VMDK image (%d bytes)" % size, self.path)
        head = image_file.pread(0, SECTOR_SIZE)
        if head[:4] == SPARSE_MAGIC:
            if len(head) < SPARSE_HEADER.size:
                raise FormatError("VMDK sparse header truncated (%d bytes)" % len(head), self.path)
            fields = SPARSE_HEADER.unpack_from(head)
            capacity, desc_offset, desc_size = fields[3], fields[5], fields[6]
            if capacity == 0 and desc_offset:
                # A sparse header only carrying a descriptor: the descriptor says everything.
                text = _decode_descriptor(image_file.pread(desc_offset * SECTOR_SIZE, MAX_DESCRIPTOR_SIZE))
                self._open_descriptor(text, opener)
                self.descriptor_offset = desc_offset * SECTOR_SIZE
                self.descriptor_room = desc_size * SECTOR_SIZE
            else:
                extent = _SparseExtent.open_hosted(image_file, None, self.path, head, not self.readonly)
                self._add_extent(extent)
                self.create_type = "streamOptimized" if extent.compressed else "monolithicSparse"
                self.descriptor_offset = SECTOR_SIZE
                self.descriptor_room = max(desc_size, 0) * SECTOR_SIZE if desc_offset == 1 else 0
                text = _decode_descriptor(image_file.pread(SECTOR_SIZE, EMBEDDED_DESCRIPTOR_SECTORS * SECTOR_SIZE))
                self.descriptor = Descriptor(text, self.path)
        elif head[:4] == COWD_MAGIC:
            raise FormatError("a vmfsSparse (COWD) extent has no descriptor: open the descriptor file "
                              "that names it", self.path)
        elif len(head) >= 8 and struct.unpack_from("<Q", head)[0] == SESPARSE_CONST_MAGIC:
            raise FormatError("a seSparse extent has no descriptor: open the descriptor file that names it",
                              self.path)
        else:
            text = _decode_descriptor(image_file.pread(0, MAX_DESCRIPTOR_SIZE))
            self._open_descriptor(text, opener)
        descriptor = self.descriptor
        self.cid = descriptor.cid("CID", self.path)
        self.parent_cid = descriptor.cid("parentCID", self.path)
        if not self.extents:
            raise FormatError("VMDK descriptor lists no usable extent", self.path)
        self._summarise()
        hint = descriptor.keys.get("parentFileNameHint")
        if hint:
            self.backing_filename = hint
            self.backing_format = "vmdk"
            if opener is not None:
                self.backing = opener(self.path, hint, "vmdk")
        if not self.readonly:
            self._prepare_writes()

    def _open_descriptor(self, text, opener):
        descriptor = Descriptor(text, self.path)
        self.descriptor = descriptor
        self.descriptor_offset = 0
        self.descriptor_room = None
        create_type = descriptor.keys.get("createType")
        if create_type is None:
            raise FormatError("invalid VMDK image descriptor (no createType)", self.path)
        if create_type not in DESCRIPTOR_CREATE_TYPES:
            raise UnsupportedFeature("unsupported VMDK image type %r in a descriptor file" % create_type, self.path)
        self.create_type = create_type
        if descriptor.extents and opener is None:
            raise UnsupportedOperation("VMDK extents named in a descriptor can only be opened through the "
                                       "path policy (no opener given)", self.path)
        for _access, sectors, kind, filename, offset in descriptor.extents:
            extent_file = opener.data_file(self.path, filename)
            self._opened_files.append(extent_file)
            display = filename if filename.startswith("/") else os.path.join(os.path.dirname(self.path), filename)
            if kind in ("FLAT", "VMFS"):
                extent = _FlatExtent(extent_file, sectors, offset * SECTOR_SIZE, kind)
            elif kind == "SESPARSE":
                if not self.readonly:
                    raise UnsupportedOperation("no write support for seSparse images", self.path)
                extent = _SparseExtent.open_sesparse(extent_file, display)
            else:
                head = extent_file.pread(0, SECTOR_SIZE)
                if head[:4] == SPARSE_MAGIC and len(head) >= SPARSE_HEADER.size:
                    extent = _SparseExtent.open_hosted(extent_file, kind, display, head, not self.readonly)
                elif head[:4] == COWD_MAGIC and len(head) >= COWD_HEADER.size:
                    if not self.readonly:
                        raise UnsupportedOperation("no write support for vmfsSparse (COWD) extents", self.path)
                    extent = _SparseExtent.open_cowd(extent_file, display, head)
                else:
                    raise FormatError("VMDK extent %r is not a sparse extent (no KDMV or COWD magic)"
                                      % filename, self.path)
                extent.kind = kind
            extent.display_name = display
            self._add_extent(extent)

    def _add_extent(self, extent):
        if extent.display_name is None:
            extent.display_name = self.path
        start = self.extent_starts[-1] + self.extents[-1].size if self.extents else 0
        self.extents.append(extent)
        self.extent_starts.append(start)

    def _summarise(self):
        last = self.extents[-1]
        self.virtual_size = self.extent_starts[-1] + last.size
        if self.virtual_size > MAX_VIRTUAL_SIZE:
            raise CorruptImageError("VMDK extents add up to %d bytes, more than the largest disk size (%d bytes)"
                                    % (self.virtual_size, MAX_VIRTUAL_SIZE), self.path)
        first = self.extents[0]
        same = all(e.flat == first.flat and e.compressed == first.compressed
                   and (e.flat or e.cluster_size == first.cluster_size) for e in self.extents)
        self.cluster_size = first.cluster_size if same and not first.flat else 0

    def close(self):
        stream, self.stream = self.stream, None
        try:
            if stream is not None and self._file is not None:
                # A stream is only readable once its tables, footer and end marker are written.
                stream.finish()
        finally:
            self._close_files()

    def _close_files(self):
        inflaters, self._inflaters = self._inflaters, None
        if inflaters is not None:
            inflaters.shutdown(wait=True)
        for extent_file in self._opened_files:
            try:
                extent_file.close()
            except Exception:  # pylint: disable=broad-except
                pass
        self._opened_files = []
        image_file, self._file = self._file, None
        if image_file is not None:
            image_file.close()
        super(VmdkDriver, self).close()

    # ------------------------------------------------------------- lookup
    def _pieces(self, offset, length):
        """(extent, start of extent, offset in extent, length) covering the range."""
        end = min(offset + length, self.virtual_size)
        pieces = []
        index = 0
        # Extents are few; a linear walk from the first relevant one is enough.
        while index < len(self.extents) and offset < end:
            start = self.extent_starts[index]
            extent = self.extents[index]
            if offset < start + extent.size:
                count = min(end, start + extent.size) - offset
                pieces.append((extent, start, offset - start, count))
                offset += count
            index += 1
        return pieces

    def _check_range(self, offset, length, what):
        if offset < 0 or length < 0:
            raise ImageError("%s at offset %d, length %d: negative offset or length" % (what, offset, length),
                             self.path)

    def _check_parent_cid(self):
        if self._cid_checked:
            return
        parent = self.backing
        parent_cid = getattr(parent, "cid", None) if getattr(parent, "format_name", None) == "vmdk" else None
        if parent_cid != self.parent_cid:
            raise CorruptImageError("VMDK parent CID mismatch: parentCID is %08x but the parent %s has CID %s "
                                    "(the parent was changed after this delta disk was made)"
                                    % (self.parent_cid, parent.path,
                                       "%08x" % parent_cid if parent_cid is not None else "none"), self.path)
        self._cid_checked = True

    def read_backing(self, offset, length):
        """Bytes of the parent (delta disks), once its CID was found to match parentCID."""
        self._check_parent_cid()
        return self.backing.read(offset, length)

    # --------------------------------------------------------------- read
    def read(self, offset, length):
        self._check_range(offset, length, "read")
        if self.stream is not None:
            self.stream.prepare_read()
        parts = []
        for extent, start, rel, count in self._pieces(offset, length):
            if extent.flat:
                data = extent.image_file.pread(extent.base + rel, count)
                if len(data) < count:
                    data += bytes(count - len(data))
                parts.append(data)
                continue
            runs = extent.runs(rel, count)
            inflated = self._inflate_grains(extent, runs)
            for run_start, run_length, state, host in runs:
                if state == _DATA:
                    data = extent.image_file.pread(host, run_length)
                    if len(data) < run_length:
                        data += bytes(run_length - len(data))
                    parts.append(data)
                elif state == _ZERO:
                    parts.append(bytes(run_length))
                elif state == _UNALLOC:
                    if self.backing is not None:
                        parts.append(self.read_backing(start + run_start, run_length))
                    else:
                        parts.append(bytes(run_length))
                else:
                    grain_index = run_start // extent.grain_size
                    key = (id(extent), host)
                    if host in inflated:
                        grain = inflated[host]
                        self._grain_cache = (key, grain)
                    elif self._grain_cache[0] == key:
                        grain = self._grain_cache[1]
                    else:
                        grain = extent.read_compressed(host, grain_index)
                        self._grain_cache = (key, grain)
                    in_grain = run_start - grain_index * extent.grain_size
                    parts.append(grain[in_grain:in_grain + run_length])
        data = b"".join(parts)
        if len(data) < length:
            data += bytes(length - len(data))
        if self.stream is not None:
            data = self.stream.overlay_pending(offset, data)
        return data

    def _inflate_grains(self, extent, runs):
        """The compressed grains of ``runs`` (all but the cached one), inflated together on a
        small thread pool (zlib releases the GIL while it inflates): {host offset: grain}.

        Empty for fewer than two grains or one CPU.  A grain that fails is left out (with
        those after it), so the read loop meets it in guest order and raises its error there."""
        cached = self._grain_cache[0]
        wanted = []
        seen = set()
        for run_start, _run_length, state, host in runs:
            if state == _COMPRESSED and host not in seen and cached != (id(extent), host):
                seen.add(host)
                wanted.append((host, run_start // extent.grain_size))
        workers = min(_INFLATE_WORKERS, os.cpu_count() or 1)
        if len(wanted) < 2 or workers < 2:
            return {}
        with self._inflaters_lock:
            if self._inflaters is None:
                self._inflaters = ThreadPoolExecutor(max_workers=workers)
            pool = self._inflaters
        futures = [pool.submit(extent.read_compressed, host, grain_index) for host, grain_index in wanted]
        inflated = {}
        for (host, _grain_index), future in zip(wanted, futures):
            try:
                inflated[host] = future.result()
            except ImageError:
                break
        return inflated

    def block_status(self, offset, length):
        if length <= 0:
            return []
        result = []
        covered = offset
        for extent, start, rel, count in self._pieces(offset, length):
            if extent.flat:
                inside = max(0, min(count, extent.image_file.size() - extent.base - rel))
                if inside < count:
                    tail = Extent(start + rel + inside, count - inside, ZERO, None)
                for data_start, data_length, is_data in (extent.image_file.data_extents(extent.base + rel, inside)
                                                         if inside else []):
                    guest = start + data_start - extent.base
                    kind = DATA if is_data else ZERO
                    host = data_start if is_data else None
                    result.append(Extent(guest, data_length, kind, host))
                if inside < count:
                    result.append(tail)
                covered = start + rel + count
                continue
            for run_start, run_length, state, host in extent.runs(rel, count):
                if state == _DATA:
                    kind = DATA
                elif state == _COMPRESSED:
                    kind, host = DATA, None
                elif state == _ZERO:
                    kind = ZERO
                else:
                    kind = UNALLOCATED
                if result and result[-1].kind == kind and result[-1].start + result[-1].length == start + run_start \
                        and (host is None and result[-1].offset is None
                             or host is not None and result[-1].offset is not None
                             and result[-1].offset + result[-1].length == host):
                    last = result[-1]
                    result[-1] = Extent(last.start, last.length + run_length, kind, last.offset)
                else:
                    result.append(Extent(start + run_start, run_length, kind, host))
            covered = start + rel + count
        if covered < offset + length:
            result.append(Extent(covered, offset + length - covered, ZERO, None))
        return result

    # -------------------------------------------------------------- write
    def _prepare_writes(self):
        for extent in self.extents:
            if extent.flat:
                continue
            if extent.compressed and extent.stream_at_end:
                if len(self.extents) != 1:
                    raise UnsupportedOperation("writing to a streamOptimized extent of a multi-extent image is "
                                               "not supported", self.path)
                self.stream = _StreamWriter(self, extent)

    def _check_write(self, offset, length, what):
        if self.readonly:
            raise ReadOnlyImageError("image is opened read-only", self.path)
        self._check_range(offset, length, what)
        if offset + length > self.virtual_size:
            raise ImageError("%s at offset %d, length %d goes beyond the end of the image (virtual size %d)"
                             % (what, offset, length, self.virtual_size), self.path)

    def _update_cid(self):
        """A new random CID on the first write after opening, as QEMU does."""
        if self._cid_updated:
            return
        self._cid_updated = True
        new_cid = random.getrandbits(32)
        text = self.descriptor.text
        updated, count = re.subn(r"(?m)^CID=[0-9a-fA-F]*", "CID=%x" % new_cid, text, count=1)
        if not count:
            return
        raw = updated.encode("utf-8")
        if self.descriptor_room is None:
            self._file.pwrite(0, raw)
            self._file.truncate(len(raw))
        else:
            old_length = len(text.encode("utf-8"))
            if len(raw) > self.descriptor_room:
                return
            self._file.pwrite(self.descriptor_offset, raw + bytes(max(0, old_length - len(raw))))
        self.descriptor = Descriptor(updated, self.path)
        self.cid = new_cid

    def write(self, offset, data):
        length = len(data)
        self._check_write(offset, length, "write")
        if not length:
            return
        self._update_cid()
        view = memoryview(data).cast("B")
        if self.stream is not None:
            self.stream.write(offset, view)
            return
        done = 0
        for extent, start, rel, count in self._pieces(offset, length):
            chunk = view[done:done + count]
            if extent.flat:
                extent.image_file.pwrite(extent.base + rel, chunk)
            else:
                self._write_sparse(extent, start, rel, chunk)
            done += count

    def _write_sparse(self, extent, start, rel, chunk):
        if extent.sesparse or extent.kind == "VMFSSPARSE":
            raise UnsupportedOperation("no write support for %s extents" % extent.kind, self.path)
        if extent.compressed:
            self._append_compressed(extent, rel, chunk)
            return
        grain_size = extent.grain_size
        writes = []          # (host offset, bytes) in order
        updates = {}         # gd_index -> {table index: sector}
        position = 0
        total = len(chunk)
        while position < total:
            guest_rel = rel + position
            grain_index = guest_rel // grain_size
            in_grain = guest_rel - grain_index * grain_size
            count = min(total - position, grain_size - in_grain)
            grain_end = min(grain_size, extent.size - grain_index * grain_size)
            gd_index, table_index = divmod(grain_index, extent.gtes_per_gt)
            table = extent.grain_table(gd_index)
            if table is None:
                table = extent.allocate_table(gd_index)
            entry = table[table_index]
            pending = updates.get(gd_index, {}).get(table_index)
            if pending is not None:
                entry = pending
            state, host = extent.classify(entry, grain_index)
            if pending is not None or state == _DATA:
                writes.append((host + in_grain, chunk[position:position + count]))
            else:
                if in_grain == 0 and count >= grain_end:
                    grain = bytes(chunk[position:position + count])
                    if count < grain_size:
                        grain += bytes(grain_size - count)
                else:
                    if state == _UNALLOC and self.backing is not None:
                        base = self.read_backing(start + grain_index * grain_size, grain_size)
                    else:
                        base = bytes(grain_size)
                    grain = base[:in_grain] + bytes(chunk[position:position + count]) + base[in_grain + count:]
                host = extent.next_grain
                if (host + grain_size) // SECTOR_SIZE >= MAX_EXTENT_SECTORS:
                    raise UnsupportedOperation("VMDK extent full: grains beyond 2 TiB of file cannot be addressed",
                                               self.path)
                extent.next_grain += grain_size
                writes.append((host, grain))
                updates.setdefault(gd_index, {})[table_index] = host // SECTOR_SIZE
            position += count
        # Data first (contiguous new grains in one write), then grain tables.
        self._write_runs(extent.image_file, writes)
        extent.file_size = max(extent.file_size, extent.next_grain)
        for gd_index, entries in sorted(updates.items()):
            extent.set_entries(gd_index, entries)

    def _append_compressed(self, extent, rel, chunk):
        """qemu-img's streamOptimized layout (tables preallocated before the grains):
        whole unallocated grains are compressed and appended, their table entries
        updated in place; allocated grains are never rewritten (as QEMU refuses)."""
        grain_size = extent.grain_size
        updates = {}
        position = 0
        total = len(chunk)
        while position < total:
            guest_rel = rel + position
            grain_index = guest_rel // grain_size
            in_grain = guest_rel - grain_index * grain_size
            grain_end = min(grain_size, extent.size - grain_index * grain_size)
            count = min(total - position, grain_size - in_grain)
            gd_index, table_index = divmod(grain_index, extent.gtes_per_gt)
            table = extent.grain_table(gd_index)
            if table is None:
                table = extent.allocate_table(gd_index)
            state = extent.classify(table[table_index], grain_index)[0]
            if state in (_DATA, _COMPRESSED) or table_index in updates.get(gd_index, {}):
                raise UnsupportedOperation("could not write to allocated grain %d of a streamOptimized image "
                                           "(compressed grains are never rewritten)" % grain_index, self.path)
            if in_grain or count < grain_end:
                raise UnsupportedOperation("streamOptimized images are written in whole grains (%d bytes); "
                                           "found a write of %d bytes at offset %d of grain %d"
                                           % (grain_size, count, in_grain, grain_index), self.path)
            grain = bytes(chunk[position:position + count])
            if self.backing is None and state == _UNALLOC and not grain.strip(b"\x00"):
                position += count
                continue
            compressed = _deflate.compress(grain, 15)
            record = GRAIN_MARKER.pack(grain_index * grain_size // SECTOR_SIZE, len(compressed)) + compressed
            host = extent.next_grain
            if (host + len(record)) // SECTOR_SIZE >= MAX_EXTENT_SECTORS:
                raise UnsupportedOperation("VMDK extent full: grains beyond 2 TiB of file cannot be addressed",
                                           self.path)
            extent.image_file.pwrite(host, _sector(record))
            extent.next_grain = _round_up(host + len(record), SECTOR_SIZE)
            extent.file_size = max(extent.file_size, extent.next_grain)
            updates.setdefault(gd_index, {})[table_index] = host // SECTOR_SIZE
            position += count
        for gd_index, entries in sorted(updates.items()):
            extent.set_entries(gd_index, entries)

    @staticmethod
    def _write_runs(image_file, writes):
        run_start, run_parts, run_end = None, [], None
        for host, payload in writes:
            if run_parts and host == run_end:
                run_parts.append(payload)
                run_end += len(payload)
                continue
            if run_parts:
                image_file.pwrite(run_start, b"".join(run_parts))
            run_start, run_parts, run_end = host, [payload], host + len(payload)
        if run_parts:
            image_file.pwrite(run_start, b"".join(run_parts))

    def write_zeroes(self, offset, length, may_unmap=False):
        self._check_write(offset, length, "write_zeroes")
        if not length:
            return
        self._update_cid()
        if self.stream is not None:
            self.stream.write_zeroes(offset, length)
            return
        for extent, start, rel, count in self._pieces(offset, length):
            if extent.flat:
                if may_unmap and not extent.image_file.is_block_device:
                    extent.image_file.punch_hole(extent.base + rel, count)
                else:
                    extent.image_file.write_zeroes(extent.base + rel, count)
                continue
            self._zero_sparse(extent, start, rel, count)

    def _zero_sparse(self, extent, start, rel, count):
        grain_size = extent.grain_size
        end = rel + count
        updates = {}
        position = rel
        while position < end:
            grain_index = position // grain_size
            in_grain = position - grain_index * grain_size
            piece = min(end - position, grain_size - in_grain)
            grain_end = min(grain_size, extent.size - grain_index * grain_size)
            gd_index, table_index = divmod(grain_index, extent.gtes_per_gt)
            table = extent.grain_table(gd_index)
            entry = table[table_index] if table is not None else 0
            state, host = extent.classify(entry, grain_index)
            whole = in_grain == 0 and piece >= grain_end
            if state == _ZERO or (state == _UNALLOC and self.backing is None):
                pass
            elif whole and extent.zero_grain and table is not None:
                updates.setdefault(gd_index, {})[table_index] = GTE_ZEROED
            elif state == _DATA:
                extent.image_file.write_zeroes(host + in_grain, piece)
            else:
                for sub in range(0, piece, 1 << 20):
                    size = min(1 << 20, piece - sub)
                    self._write_sparse(extent, start, position + sub, memoryview(bytes(size)))
            position += piece
        for gd_index, entries in sorted(updates.items()):
            extent.set_entries(gd_index, entries)

    def flush(self):
        if self.stream is not None and not self.readonly:
            self.stream.finish()
        if self._file is not None:
            self._file.flush()
        for extent_file in self._opened_files:
            extent_file.flush()

    # ---------------------------------------------------- compressed output
    @property
    def compresses_every_cluster(self):
        """Whether every grain is stored compressed (a writable stream): convert then
        compresses grains in its thread pool and appends them in guest order."""
        return self.stream is not None

    def compress_cluster(self, data):
        """Deflate one whole grain (pure, thread-safe); None when this image
        does not store compressed grains (it is then written as is)."""
        if self.stream is None:
            return None
        return _deflate.compress(data, 15)

    def write_compressed(self, offset, compressed):
        """Append a grain compressed by compress_cluster at guest ``offset``."""
        self._check_write(offset, min(self.cluster_size, max(0, self.virtual_size - offset)), "write_compressed")
        if self.stream is None:
            raise UnsupportedOperation("only streamOptimized VMDK images store compressed grains", self.path)
        self._update_cid()
        self.stream.write_compressed(offset, compressed)

    # ------------------------------------------------------------ map
    def map_runs(self, offset, end, l1_table=None, cache=None):
        """Flat extents as their files' block status (DATA, and ZERO over holes,
        with the offset in the extent file; past a short extent file ZERO without
        one), other extents as ``block_status`` reports them."""
        runs = StatusRuns()
        for extent, start, rel, count in self._pieces(offset, end - offset):
            if not extent.flat:
                for run in block_status_runs(self, start + rel, start + rel + count):
                    runs.add(*run)
                continue
            inside = max(0, min(count, extent.image_file.size() - extent.base - rel))
            if inside:
                for file_start, file_length, is_data in extent.image_file.data_extents(extent.base + rel, inside):
                    flags = BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET_VALID | (0 if is_data else BLOCK_ZERO)
                    runs.add(start + file_start - extent.base, file_length, flags, file_start)
            if inside < count:
                runs.add(start + rel + inside, count - inside, BLOCK_ZERO | BLOCK_ALLOCATED, None)
        return runs.runs

    # ------------------------------------------------------------ queries
    def info(self):
        extents = []
        for extent in self.extents:
            item = {
                "filename": extent.display_name,
                "format": extent.kind or "",
                "virtual-size": extent.size,
            }
            if not extent.flat:
                item["cluster-size"] = extent.cluster_size
            if extent.compressed:
                item["compressed"] = True
            extents.append(item)
        result = {
            "format-specific": {
                "type": "vmdk",
                "data": {
                    "cid": self.cid,
                    "parent-cid": self.parent_cid,
                    "create-type": self.create_type,
                    "extents": extents,
                },
            },
        }
        if self.cluster_size:
            result["cluster-size"] = self.cluster_size
        return result

    def check(self, repair=None):
        if repair:
            raise UnsupportedOperation("repairing VMDK images is not supported (qemu-img: not supported)",
                                       self.path)
        for extent in self.extents:
            problem = extent.check()
            if problem:
                raise CorruptImageError("check failed: %s" % problem, extent.display_name)
        return {"check-errors": 0}

    # ------------------------------------------------------------- create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        return _create(path, size, dict(options or {}), backing)

    @classmethod
    def created_files(cls, path):
        """``path`` and the extent files its descriptor lists, as create()
        made them: plain names in the same directory (split and flat
        subformats).  Only for an image create() just made: create opens its
        extents with O_EXCL, so they are this image's own."""
        files = [path]
        try:
            with ImageFile(path, lock=False) as image_file:
                raw = image_file.pread(0, MAX_CREATED_DESCRIPTOR)
        except OSError:
            return files
        if raw[:4] == SPARSE_MAGIC or len(raw) >= MAX_CREATED_DESCRIPTOR:
            return files            # monolithic sparse or stream: one file
        directory = os.path.dirname(path)
        try:
            extents = Descriptor(_decode_descriptor(raw), path).extents
        except ImageError:
            return files
        for extent in extents:
            name = extent[3]
            if name and name not in (".", "..") and os.path.basename(name) == name:
                extent_path = os.path.join(directory, name)
                if extent_path not in files:
                    files.append(extent_path)
        return files


# ======================================================== stream appender
class _StreamWriter:
    """Appends grains to a streamOptimized extent in guest order; grain tables,
    grain directory, footer and end-of-stream marker are (re)written after
    the last grain on flush."""

    def __init__(self, driver, extent):
        self.driver = driver
        self.extent = extent
        self.path = driver.path
        grain_size = extent.grain_size
        self.grain_count = _ceil_div(extent.size, grain_size)
        self.tables = {}
        last_grain = -1
        grains_end = extent.header[10] * SECTOR_SIZE
        metadata_start = extent.file_size - 3 * SECTOR_SIZE
        metadata_start = min(metadata_start, extent.gd_offset - SECTOR_SIZE)
        for gd_index in range(extent.gd_entries):
            table = extent.grain_table(gd_index)
            if table is None:
                continue
            self.tables[gd_index] = array.array("I", table)
            metadata_start = min(metadata_start, extent.gt_offset(gd_index) - SECTOR_SIZE)
            for index, entry in enumerate(table):
                if entry:
                    grain_index = gd_index * extent.gtes_per_gt + index
                    last_grain = max(last_grain, grain_index)
                    head = extent.image_file.pread(entry * SECTOR_SIZE, GRAIN_MARKER.size)
                    if len(head) < GRAIN_MARKER.size:
                        raise CorruptImageError("VMDK stream grain %d lies beyond the end of the file"
                                                % grain_index, self.path)
                    grains_end = max(grains_end, _round_up(entry * SECTOR_SIZE + GRAIN_MARKER.size
                                                           + GRAIN_MARKER.unpack(head)[1], SECTOR_SIZE))
        if grains_end > metadata_start:
            raise UnsupportedOperation("appending to this streamOptimized image is not supported: its grain "
                                       "tables are interleaved with its grains", self.path)
        self.append_at = grains_end
        self.metadata_at = metadata_start
        self.finished = True
        self.next_grain = last_grain + 1
        self.pending = None          # (grain index, bytearray)

    def _refuse(self, grain_index):
        raise UnsupportedOperation("streamOptimized VMDK images are written sequentially: grain %d comes before "
                                   "the next writable grain %d (random writes are not supported)"
                                   % (grain_index, self.next_grain), self.path)

    def _grain_length(self, grain_index):
        return min(self.extent.grain_size, self.extent.size - grain_index * self.extent.grain_size)

    def _reopen(self):
        if self.finished:
            # Drop the old metadata: grains are appended where it was.
            self.extent.image_file.truncate(self.append_at)
            self.extent.file_size = self.append_at
            self.finished = False

    def write(self, offset, view):
        grain_size = self.extent.grain_size
        position = 0
        total = len(view)
        while position < total:
            guest = offset + position
            grain_index = guest // grain_size
            in_grain = guest - grain_index * grain_size
            count = min(total - position, grain_size - in_grain)
            self._accept(grain_index)
            grain_length = self._grain_length(grain_index)
            if self.pending is None and in_grain == 0 and count >= grain_length:
                self._emit(grain_index, bytes(view[position:position + count]))
            else:
                buffer = self._pending_buffer(grain_index)
                buffer[in_grain:in_grain + count] = view[position:position + count]
            position += count

    def write_zeroes(self, offset, length):
        grain_size = self.extent.grain_size
        end = offset + length
        position = offset
        while position < end:
            grain_index = position // grain_size
            in_grain = position - grain_index * grain_size
            count = min(end - position, grain_size - in_grain)
            self._accept(grain_index)
            if self.pending is not None and self.pending[0] == grain_index:
                self.pending[1][in_grain:in_grain + count] = bytes(count)
            elif self.driver.backing is not None:
                buffer = self._pending_buffer(grain_index)
                buffer[in_grain:in_grain + count] = bytes(count)
            position += count

    def _accept(self, grain_index):
        pending_index = self.pending[0] if self.pending is not None else None
        if grain_index == pending_index:
            return
        if grain_index < self.next_grain:
            self._refuse(grain_index)
        self._reopen()
        if self.pending is not None:
            self._emit_pending()

    def _pending_buffer(self, grain_index):
        if self.pending is None or self.pending[0] != grain_index:
            length = self._grain_length(grain_index)
            if self.driver.backing is not None:
                base = bytearray(self.driver.read_backing(grain_index * self.extent.grain_size, length))
            else:
                base = bytearray(length)
            self.pending = (grain_index, base)
            self.next_grain = grain_index + 1
        return self.pending[1]

    def _emit_pending(self):
        grain_index, buffer = self.pending
        self.pending = None
        self._emit(grain_index, bytes(buffer))

    def _emit(self, grain_index, grain):
        if self.driver.backing is None and not grain.strip(b"\x00"):
            self.next_grain = max(self.next_grain, grain_index + 1)
            return
        self._append(grain_index, _deflate.compress(grain, 15))

    def write_compressed(self, offset, compressed):
        grain_index = offset // self.extent.grain_size
        self._accept(grain_index)
        if self.pending is not None and self.pending[0] == grain_index:
            self._refuse(grain_index)
        self._append(grain_index, compressed)

    def _append(self, grain_index, compressed):
        extent = self.extent
        self._reopen()
        lba = grain_index * extent.grain_size // SECTOR_SIZE
        record = GRAIN_MARKER.pack(lba, len(compressed)) + compressed
        padding = (-len(record)) % SECTOR_SIZE
        host = self.append_at
        if (host + len(record)) // SECTOR_SIZE >= MAX_EXTENT_SECTORS:
            raise UnsupportedOperation("VMDK stream full: grains beyond 2 TiB of file cannot be addressed", self.path)
        extent.image_file.pwrite(host, record + bytes(padding))
        self.append_at = host + len(record) + padding
        extent.file_size = max(extent.file_size, self.append_at)
        gd_index, table_index = divmod(grain_index, extent.gtes_per_gt)
        table = self.tables.get(gd_index)
        if table is None:
            table = self.tables[gd_index] = array.array("I", bytes(4 * extent.gtes_per_gt))
        table[table_index] = host // SECTOR_SIZE
        self.next_grain = max(self.next_grain, grain_index + 1)

    def prepare_read(self):
        """Make the grains appended so far readable (tables, footer written after
        them); the pending grain stays open for writes, see overlay_pending."""
        if not self.finished:
            self._write_metadata()

    def overlay_pending(self, offset, data):
        """``data`` read at ``offset`` with the pending grain's bytes (only in memory) laid over it."""
        if self.pending is None:
            return data
        grain_index, buffer = self.pending
        start = grain_index * self.extent.grain_size
        low, high = max(offset, start), min(offset + len(data), start + len(buffer))
        if low >= high:
            return data
        patched = bytearray(data)
        patched[low - offset:high - offset] = buffer[low - start:high - start]
        return bytes(patched)

    def finish(self):
        """Write pending grain, grain tables, grain directory, footer, end-of-stream marker."""
        if self.pending is not None:
            self._reopen()
            self._emit_pending()
        if not self.finished:
            self._write_metadata()

    def _write_metadata(self):
        extent = self.extent
        image_file = extent.image_file
        gt_sectors = _ceil_div(extent.gtes_per_gt * 4, SECTOR_SIZE)
        directory = array.array("I", bytes(4 * extent.gd_entries))
        position = self.append_at
        parts = []
        for gd_index in sorted(self.tables):
            table = self.tables[gd_index]
            if not any(table):
                continue
            parts.append(_marker(gt_sectors, MARKER_GT))
            directory[gd_index] = (position + SECTOR_SIZE) // SECTOR_SIZE
            raw = _le_bytes(table)
            parts.append(raw + bytes(gt_sectors * SECTOR_SIZE - len(raw)))
            position += SECTOR_SIZE + gt_sectors * SECTOR_SIZE
        gd_sectors = _ceil_div(extent.gd_entries * 4, SECTOR_SIZE)
        parts.append(_marker(gd_sectors, MARKER_GD))
        gd_offset = position + SECTOR_SIZE
        raw = _le_bytes(directory)
        parts.append(raw + bytes(gd_sectors * SECTOR_SIZE - len(raw)))
        fields = list(extent.header)
        fields[9] = gd_offset // SECTOR_SIZE
        parts.append(_marker(1, MARKER_FOOTER))
        parts.append(_sector(SPARSE_HEADER.pack(*fields)))
        parts.append(_marker(0, MARKER_EOS))
        metadata = b"".join(parts)
        image_file.pwrite(self.append_at, metadata)
        image_file.truncate(self.append_at + len(metadata))
        extent.file_size = self.append_at + len(metadata)
        extent.gd = directory
        extent.gd_offset = gd_offset
        extent.forget_tables()
        self.finished = True


def _marker(value, kind):
    return _sector(MARKER.pack(value, 0, kind))


def _sector(raw):
    return raw + bytes((-len(raw)) % SECTOR_SIZE)


# ================================================================ creation
def _option(options, name, default):
    value = options.pop(name, None)
    if value is None:
        return default
    return value


def _final_name(path):
    """The name ops/create.py will publish ``path`` (a ``.NAME.XXXXXX.tmp``
    temporary) under: extents are named after it, as qemu-img names them."""
    directory, base = os.path.split(path)
    match = re.match(r"^\.(.+)\.[0-9a-f]{6}\.tmp$", base)
    return directory, (match.group(1) if match else base)


def _create(path, size, options, backing):
    subformat = _option(options, "subformat", "monolithicSparse")
    adapter_type = _option(options, "adapter_type", "ide")
    hwversion = _option(options, "hwversion", None)
    toolsversion = _option(options, "toolsversion", None)
    compat6 = _option(options, "compat6", False)
    zeroed_grain = _option(options, "zeroed_grain", False)
    backing_file = options.pop("backing_file", None)
    backing_fmt = options.pop("backing_fmt", None)
    option_size = options.pop("size", None)
    if options:
        raise InvalidOptionError("invalid option(s) for vmdk images: %s (supported: %s)"
                                 % (", ".join(sorted(options)), ", ".join(CREATE_OPTIONS)), path)
    if size is None:
        size = option_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)" % (size,), path)
    size = _round_up(size, SECTOR_SIZE)
    if subformat not in SUBFORMATS:
        raise InvalidOptionError("invalid vmdk subformat %r (expected one of: %s)"
                                 % (subformat, ", ".join(SUBFORMATS)), path)
    if adapter_type not in ADAPTER_TYPES:
        raise InvalidOptionError("invalid vmdk adapter_type %r (expected one of: %s)"
                                 % (adapter_type, ", ".join(ADAPTER_TYPES)), path)
    for name, value in (("compat6", compat6), ("zeroed_grain", zeroed_grain)):
        if not isinstance(value, bool):
            raise InvalidOptionError("option %s must be on or off, found %r" % (name, value), path)
    if isinstance(hwversion, int) and not isinstance(hwversion, bool):
        hwversion = str(hwversion)
    if isinstance(toolsversion, int) and not isinstance(toolsversion, bool):
        toolsversion = str(toolsversion)
    for name, value in (("hwversion", hwversion), ("toolsversion", toolsversion)):
        if value is not None and (not isinstance(value, str) or not value or '"' in value or "\n" in value):
            raise InvalidOptionError("invalid vmdk %s %r" % (name, value), path)
    if hwversion == "undefined":
        hwversion = None
    if compat6:
        if hwversion:
            raise InvalidOptionError("compat6 cannot be enabled with hwversion set", path)
        hwversion = "6"
    hwversion = hwversion or DEFAULT_HW_VERSION
    toolsversion = toolsversion or DEFAULT_TOOLS_VERSION
    flat = subformat in ("monolithicFlat", "twoGbMaxExtentFlat")
    split = subformat in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat")
    stream = subformat == "streamOptimized"
    if backing_fmt is not None and backing_fmt != "vmdk":
        raise InvalidOptionError("backing_file must be a vmdk image (backing_fmt %r)" % backing_fmt, path)
    if flat and (backing_file or backing is not None):
        raise InvalidOptionError("flat VMDK images cannot have a backing file", path)
    if flat and zeroed_grain:
        raise InvalidOptionError("flat VMDK images cannot enable zeroed grains", path)
    parent_cid = CID_UNSET
    if backing_file or backing is not None:
        if backing is None or backing.format_name != "vmdk":
            raise InvalidOptionError("backing file must be a vmdk image", path)
        parent_cid = backing.cid
    if size // SECTOR_SIZE >= MAX_EXTENT_SECTORS * 512:
        raise InvalidOptionError("image size %d is too large for VMDK" % size, path)

    directory, final = _final_name(path)
    stem, dot, suffix = final.rpartition(".")
    prefix, postfix = (stem, dot + suffix) if dot else (final, "")
    created = []
    main_file = ImageFile(path, writable=True, create=True)
    try:
        extent_lines = []
        if not split and not flat:
            _init_sparse(main_file, size, stream, zeroed_grain)
            extent_lines.append('RW %d SPARSE "%s"\n' % (size // SECTOR_SIZE, final))
        else:
            extent_size = SPLIT_EXTENT_SIZE if split else max(size, 1)
            index = 1
            done = 0
            while done < size:
                current = min(size - done, extent_size)
                if split:
                    name = "%s-%s%03d%s" % (prefix, "f" if flat else "s", index, postfix)
                else:
                    name = "%s-flat%s" % (prefix, postfix)
                extent_path = os.path.join(directory, name)
                extent_file = ImageFile(extent_path, writable=True, create=True)
                created.append(extent_path)
                try:
                    if flat:
                        extent_file.truncate(current)
                    else:
                        _init_sparse(extent_file, current, False, zeroed_grain)
                    extent_file.flush()
                finally:
                    extent_file.close()
                if flat:
                    extent_lines.append('RW %d FLAT "%s" 0\n' % (current // SECTOR_SIZE, name))
                else:
                    extent_lines.append('RW %d SPARSE "%s"\n' % (current // SECTOR_SIZE, name))
                done += current
                index += 1
        heads = 16 if adapter_type == "ide" else 255
        parent_line = ('parentFileNameHint="%s"\n' % backing_file) if backing_file else "\n"
        descriptor = ("# Disk DescriptorFile\nversion=1\nCID=%x\nparentCID=%x\ncreateType=\"%s\"\n%s"
                      "# Extent description\n%s\n# The Disk Data Base\n#DDB\n\n"
                      "ddb.virtualHWVersion = \"%s\"\nddb.geometry.cylinders = \"%d\"\n"
                      "ddb.geometry.heads = \"%d\"\nddb.geometry.sectors = \"63\"\n"
                      "ddb.adapterType = \"%s\"\nddb.toolsVersion = \"%s\"\n"
                      % (random.getrandbits(32), parent_cid, subformat, parent_line, "".join(extent_lines),
                         hwversion, size // (63 * heads * SECTOR_SIZE), heads, adapter_type, toolsversion))
        raw = descriptor.encode("utf-8")
        if not split and not flat:
            if len(raw) > EMBEDDED_DESCRIPTOR_SECTORS * SECTOR_SIZE:
                raise InvalidOptionError("VMDK descriptor too long to embed (%d bytes)" % len(raw), path)
            main_file.pwrite(SECTOR_SIZE, raw)
        else:
            main_file.pwrite(0, raw)
            main_file.truncate(len(raw))
        main_file.flush()
    except BaseException:
        main_file.close()
        os.unlink(main_file.path)
        for extent_path in created:
            try:
                os.unlink(extent_path)
            except OSError:
                pass
        raise
    main_file.close()


def _init_sparse(image_file, size, stream, zeroed_grain):
    """A new hosted sparse extent of ``size`` bytes, laid out as qemu-img lays it
    out (descriptor room, redundant and primary grain directories and tables
    preallocated); streams get VMware's layout (grain directory at the end)."""
    capacity = size // SECTOR_SIZE
    grain_sectors = DEFAULT_GRAIN_SECTORS
    gtes = SECTOR_SIZE
    grains = _ceil_div(capacity, grain_sectors)
    gt_sectors = _ceil_div(gtes * 4, SECTOR_SIZE)
    gt_count = _ceil_div(grains, gtes)
    gd_sectors = _ceil_div(gt_count * 4, SECTOR_SIZE)
    desc_offset, desc_size = 1, EMBEDDED_DESCRIPTOR_SECTORS
    version = 3 if stream else (2 if zeroed_grain else 1)
    flags = FLAG_NL_DETECT | (FLAG_ZERO_GRAIN if zeroed_grain else 0)
    if stream:
        flags |= FLAG_COMPRESS | FLAG_MARKER
        overhead = _round_up(desc_offset + desc_size, grain_sectors)
        header = [SPARSE_MAGIC, version, flags, capacity, grain_sectors, desc_offset, desc_size, gtes,
                  0, GD_AT_END, overhead, 0, NEWLINE_CHECK, COMPRESSION_DEFLATE]
        image_file.pwrite(0, _sector(SPARSE_HEADER.pack(*header)))
        # An empty stream: no grain table, an all-zero grain directory, footer, end of stream.
        position = overhead * SECTOR_SIZE
        stream_gd_sectors = max(gd_sectors, 1)
        footer = list(header)
        footer[9] = overhead + 1
        metadata = (_marker(stream_gd_sectors, MARKER_GD) + bytes(stream_gd_sectors * SECTOR_SIZE)
                    + _marker(1, MARKER_FOOTER) + _sector(SPARSE_HEADER.pack(*footer)) + _marker(0, MARKER_EOS))
        image_file.pwrite(position, metadata)
        return
    flags |= FLAG_RGD
    rgd_offset = desc_offset + desc_size
    gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count
    overhead = _round_up(gd_offset + gd_sectors + gt_sectors * gt_count, grain_sectors)
    header = [SPARSE_MAGIC, version, flags, capacity, grain_sectors, desc_offset, desc_size, gtes,
              rgd_offset, gd_offset, overhead, 0, NEWLINE_CHECK, 0]
    image_file.pwrite(0, _sector(SPARSE_HEADER.pack(*header)))
    image_file.truncate(overhead * SECTOR_SIZE)
    for directory_sector in (rgd_offset, gd_offset):
        directory = array.array("I", range(directory_sector + gd_sectors,
                                           directory_sector + gd_sectors + gt_count * gt_sectors, gt_sectors))
        raw = _le_bytes(directory)
        image_file.pwrite(directory_sector * SECTOR_SIZE, raw + bytes(gd_sectors * SECTOR_SIZE - len(raw)))
