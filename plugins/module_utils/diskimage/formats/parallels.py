# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallels expanding disk images (``.hds``), read-only.

Layout (QEMU docs/interop/parallels.txt): a 64-byte little-endian header,
the block allocation table (BAT, one 32-bit entry per cluster) right after
it, then the data clusters.  A BAT entry of 0 means the cluster is not
allocated (reads zeroes); otherwise it gives the cluster's position in the
file: in sectors for the old magic ``WithoutFreeSpace``, in clusters for
``WithouFreSpacExt``.  ``ext_off`` (sectors) points to the format extension
cluster (dirty bitmaps), which reading the guest data does not need.

Behaviour follows QEMU's block/parallels.c (probe score, header checks,
virtual size, block status, ``qemu-img check``).  Writing and creating are
not supported by this library (qemu-img can create parallels images; convert
to qcow2 to get a writable image).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import struct
import sys

from .._io import ImageFile
from ..errors import CorruptImageError, FormatError, UnsupportedFeature, UnsupportedOperation
from .base import DATA, UNALLOCATED, Driver, Extent

SECTOR_SIZE = 512

# --- ParallelsHeader (docs/interop/parallels.txt, "Header") ---------------------------
# magic, version, heads, cylinders, tracks (sectors per cluster), bat_entries,
# nb_sectors, inuse, data_off (sectors), flags, ext_off (sectors).
HEADER_STRUCT = struct.Struct("<16sIIIIIQIIIQ")
MAGIC_SECTORS = b"WithoutFreeSpace"     # BAT entries in sectors; virtual size limited to 32 bits of sectors
MAGIC_CLUSTERS = b"WithouFreSpacExt"    # BAT entries in clusters
HEADER_VERSION = 2
HEADER_INUSE_MAGIC = 0x746F6E59
# --- Format extension cluster (docs/interop/parallels.txt, "Format Extension") --------
EXTENSION_MAGIC = 0xAB234CEF23DCEA87
EXTENSION_MAGIC_STRUCT = struct.Struct("<Q")

# QEMU: tracks at most INT32_MAX / 513 sectors per cluster.
MAX_TRACKS = 0x7fffffff // 513
# Cap on the BAT held in memory (DESIGN.md rule 5): 16 M clusters (16 TiB at 1 MiB clusters).
MAX_BAT_BYTES = 64 * 1024 * 1024


def _le_table(raw):
    table = array.array("I")
    table.frombytes(bytes(raw))
    if sys.byteorder != "little":
        table.byteswap()
    return table


class ParallelsHeader:
    """The 64-byte header of a Parallels image."""

    def __init__(self, raw, path):
        if len(raw) < HEADER_STRUCT.size:
            raise FormatError("Parallels header: file too short (%d bytes, expected at least %d)"
                              % (len(raw), HEADER_STRUCT.size), path)
        (self.magic, self.version, self.heads, self.cylinders, self.tracks, self.bat_entries,
         self.nb_sectors, self.inuse, self.data_off, self.flags, self.ext_off) = HEADER_STRUCT.unpack_from(raw, 0)

    def validate(self, path, file_size):
        """Magic -> version -> sizes and offsets (QEMU's messages where it has one)."""
        if self.magic not in (MAGIC_SECTORS, MAGIC_CLUSTERS):
            raise FormatError("Image not in Parallels format (magic %r, expected %r or %r)"
                              % (self.magic, MAGIC_SECTORS, MAGIC_CLUSTERS), path)
        if self.version != HEADER_VERSION:
            raise UnsupportedFeature("Image not in Parallels format (version %d, expected %d)"
                                     % (self.version, HEADER_VERSION), path)
        if self.tracks == 0:
            raise FormatError("Invalid image: Zero sectors per track (Parallels header tracks = 0)", path)
        if self.tracks > MAX_TRACKS:
            raise UnsupportedFeature("Invalid image: Too big cluster (%d sectors per cluster, at most %d)"
                                     % (self.tracks, MAX_TRACKS), path)
        bat_bytes = 4 * self.bat_entries
        if bat_bytes > MAX_BAT_BYTES:
            raise UnsupportedFeature("Catalog too large: Parallels BAT of %d entries (%d bytes) exceeds the "
                                     "limit of %d bytes" % (self.bat_entries, bat_bytes, MAX_BAT_BYTES), path)
        if HEADER_STRUCT.size + bat_bytes > file_size:
            raise CorruptImageError("Parallels BAT (%d entries at offset %d) runs past the end of the file "
                                    "(%d bytes)" % (self.bat_entries, HEADER_STRUCT.size, file_size), path)
        if self.ext_off and self.ext_off * SECTOR_SIZE + EXTENSION_MAGIC_STRUCT.size > file_size:
            raise CorruptImageError("Parallels format extension at sector %d lies past the end of the file "
                                    "(%d bytes)" % (self.ext_off, file_size), path)

    @property
    def offset_multiplier(self):
        """Sectors per BAT unit."""
        return 1 if self.magic == MAGIC_SECTORS else self.tracks

    @property
    def virtual_size(self):
        sectors = self.nb_sectors
        if self.magic == MAGIC_SECTORS:
            sectors &= 0xffffffff     # the old format has a 32-bit sector count
        return sectors * SECTOR_SIZE

    @property
    def cluster_size(self):
        return self.tracks * SECTOR_SIZE


class ParallelsDriver(Driver):
    format_name = "parallels"
    can_create = False
    can_write = False

    def __init__(self):
        super(ParallelsDriver, self).__init__()
        self._file = None
        self.header = None
        self.bat = None
        self._file_size = 0

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        # QEMU: a whole header with either magic and version 2 scores 100.
        if len(header) < HEADER_STRUCT.size:
            return 0
        if header[:16] in (MAGIC_SECTORS, MAGIC_CLUSTERS) and struct.unpack_from("<I", header, 16)[0] == HEADER_VERSION:
            return 100
        return 0

    # --------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, path, readonly=True, opener=None, force_share=False):
        if not readonly:
            raise UnsupportedOperation("parallels images can only be opened read-only by this library: no writes "
                                       "or repairs (convert to qcow2 for a writable copy)", path)
        image_file = ImageFile(path, writable=False, force_share=force_share)
        self = cls()
        self._file = image_file
        self.path = image_file.path
        self.readonly = True
        try:
            self._open_structures()
        except BaseException:
            self.close()
            raise
        return self

    def _open_structures(self):
        path = self.path
        self._file_size = self._file.size()
        h = ParallelsHeader(self._file.pread(0, HEADER_STRUCT.size), path)
        h.validate(path, self._file_size)
        self.header = h
        self.virtual_size = h.virtual_size
        self.bat = _le_table(self._file.pread_exact(HEADER_STRUCT.size, 4 * h.bat_entries, "Parallels BAT"))
        if h.ext_off:
            magic = EXTENSION_MAGIC_STRUCT.unpack(self._file.pread_exact(
                h.ext_off * SECTOR_SIZE, EXTENSION_MAGIC_STRUCT.size, "Parallels format extension"))[0]
            if magic != EXTENSION_MAGIC:
                raise FormatError("Wrong parallels Format Extension magic: 0x%x, expected: 0x%x"
                                  % (magic, EXTENSION_MAGIC), path)

    def close(self):
        image_file, self._file = self._file, None
        if image_file is not None:
            image_file.close()
        super(ParallelsDriver, self).close()

    @classmethod
    def create(cls, path, size, options=None, backing=None):
        raise UnsupportedOperation("creating parallels images is not supported: this library reads parallels "
                                   "images only (create qcow2 or raw instead)", path)

    def write(self, offset, data):
        raise UnsupportedOperation("writing parallels images is not supported: this library reads parallels "
                                   "images only (convert to qcow2 for a writable copy)", self.path)

    def write_zeroes(self, offset, length, may_unmap=False):
        self.write(offset, b"")

    # -------------------------------------------------------------------- data
    def _check_range(self, offset, length, what):
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise FormatError("%s at offset %d, length %d is outside the image (virtual size %d)"
                              % (what, offset, length, self.virtual_size), self.path)

    def _host_offset(self, index):
        """Host byte offset of cluster ``index``, or None when it is not allocated."""
        if index >= len(self.bat):
            return None
        entry = self.bat[index]
        if entry == 0:
            return None
        return entry * self.header.offset_multiplier * SECTOR_SIZE

    def _runs(self, offset, length):
        """(guest start, length, host offset or None), merging clusters contiguous in the file."""
        cs = self.header.cluster_size
        runs = []
        end = offset + length
        position = offset
        while position < end:
            index = position // cs
            within = position - index * cs
            count = min(cs - within, end - position)
            host = self._host_offset(index)
            if host is not None:
                host += within
            if runs:
                last_start, last_length, last_host = runs[-1]
                if (host is None and last_host is None) or \
                        (host is not None and last_host is not None and last_host + last_length == host):
                    runs[-1] = (last_start, last_length + count, last_host)
                    position += count
                    continue
            runs.append((position, count, host))
            position += count
        return runs

    def block_status(self, offset, length):
        if length <= 0:
            return []
        self._check_range(offset, length, "block status")
        return [Extent(start, count, UNALLOCATED if host is None else DATA, host)
                for start, count, host in self._runs(offset, length)]

    def read(self, offset, length):
        self._check_range(offset, length, "read")
        parts = []
        for start, count, host in self._runs(offset, length):
            if host is None:
                parts.append(bytes(count))
                continue
            data = self._file.pread(host, count)
            if len(data) < count:
                raise CorruptImageError("Parallels cluster for guest offset %d: data at host offset %d (%d bytes) "
                                        "lies past the end of the file (%d bytes)"
                                        % (start, host, count, self._file.size()), self.path)
            parts.append(data)
        return b"".join(parts)

    # ----------------------------------------------------------------- queries
    def info(self):
        # qemu-img 7.2 reports neither cluster-size nor format-specific data for parallels.
        return {"dirty-flag": None}

    def check(self, repair=None):
        """``qemu-img check`` for parallels (QEMU's parallels_co_check): an
        unclean header and clusters outside the file are corruptions, space
        after the last cluster is leaked; repairs are not supported here."""
        if repair:
            raise UnsupportedOperation("repairing parallels images is not supported (read-only driver)", self.path)
        h = self.header
        cluster_size = h.cluster_size
        size = self._file.size()
        corruptions = 0
        if h.inuse == HEADER_INUSE_MAGIC:
            corruptions += 1
        allocated = 0
        fragmented = 0
        high = 0
        previous = 0
        multiplier = h.offset_multiplier * SECTOR_SIZE
        for entry in self.bat:
            host = entry * multiplier
            if host == 0:
                previous = 0
                continue
            if host > size:
                corruptions += 1
            allocated += 1
            if host > high:
                high = host
            if previous and previous + cluster_size != host:
                fragmented += 1
            previous = host
        result = {"check-errors": 0, "image-end-offset": high + cluster_size, "total-clusters": len(self.bat)}
        if size > high + cluster_size:
            result["leaks"] = -(-(size - high - cluster_size) // cluster_size)
        if corruptions:
            result["corruptions"] = corruptions
        if allocated:
            result["allocated-clusters"] = allocated
        if fragmented:
            result["fragmented-clusters"] = fragmented
        return result
