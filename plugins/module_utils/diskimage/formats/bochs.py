# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bochs "growing" redolog disk images, read-only.

Layout (Bochs ``iodev/hdimage/hdimage.h``, redolog header): a 512-byte
little-endian header (magic ``Bochs Virtual HD Image``, type ``Redolog``,
subtype ``Growing``, version, header size, then the redolog fields: catalog
entries, bitmap size, extent size, [timestamp in version 2], disk size), the
catalog (one 32-bit entry per extent) at ``header size``, then the extents.
Each allocated extent is a bitmap (one bit per sector) followed by the
extent's sectors; catalog entry 0xffffffff or a clear bitmap bit reads zeroes.

Behaviour follows QEMU's block/bochs.c (probe, header checks, virtual size,
no block status: everything is reported as data).  Bochs images cannot be
written or created (qemu-img cannot either).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import re
import struct
import sys

from ..errors import CorruptImageError, FormatError, UnsupportedFeature
from .base import MAX_IO, ReadOnlyDriver

SECTOR_SIZE = 512

# --- Redolog header (hdimage.h): magic, type, subtype, version, header size -------------
HEADER_SIZE = 512
COMMON_HEADER = struct.Struct("<32s16s16sII")
# version 2: catalog entries, bitmap bytes, extent bytes, timestamp, disk size
REDOLOG_V2 = struct.Struct("<IIIIQ")
# version 1: catalog entries, bitmap bytes, extent bytes, disk size
REDOLOG_V1 = struct.Struct("<IIIQ")
MAGIC = b"Bochs Virtual HD Image"
TYPE_REDOLOG = b"Redolog"
SUBTYPE_GROWING = b"Growing"
VERSION_2 = 0x00020000
VERSION_1 = 0x00010000

CATALOG_UNALLOCATED = 0xffffffff
# QEMU: extents from 512 bytes to 8 MiB.
MIN_EXTENT_SIZE = SECTOR_SIZE
MAX_EXTENT_SIZE = 0x800000
# Cap on the catalog held in memory (docs/security.md rule 5).
MAX_CATALOG_BYTES = 64 * 1024 * 1024

# One byte of a sector bitmap -> 8 bytes, 1 where the sector is present (least significant bit first).
_BITS_TO_BYTES = [bytes((value >> bit) & 1 for bit in range(8)) for value in range(256)]
_PRESENT_RUN = re.compile(b"\x01+")


def _cstring(field):
    """A fixed-size C string field up to its first NUL."""
    return field.split(b"\0", 1)[0]


class BochsHeader:
    """The redolog header of a Bochs image."""

    def __init__(self, raw, path):
        if len(raw) < HEADER_SIZE:
            raise FormatError("Bochs header: file too short (%d bytes, expected at least %d)"
                              % (len(raw), HEADER_SIZE), path)
        self.magic, self.type, self.subtype, self.version, self.header_size = COMMON_HEADER.unpack_from(raw, 0)
        if self.version == VERSION_1:
            self.catalog, self.bitmap, self.extent, self.disk = REDOLOG_V1.unpack_from(raw, COMMON_HEADER.size)
        else:
            self.catalog, self.bitmap, self.extent, _timestamp, self.disk = \
                REDOLOG_V2.unpack_from(raw, COMMON_HEADER.size)

    def is_bochs(self):
        return (_cstring(self.magic) == MAGIC and _cstring(self.type) == TYPE_REDOLOG
                and _cstring(self.subtype) == SUBTYPE_GROWING and self.version in (VERSION_1, VERSION_2))

    def validate(self, path, file_size):
        if _cstring(self.magic) != MAGIC or _cstring(self.type) != TYPE_REDOLOG:
            raise FormatError("Image not in Bochs format (magic %r, type %r; expected %r, %r)"
                              % (_cstring(self.magic), _cstring(self.type), MAGIC, TYPE_REDOLOG), path)
        if _cstring(self.subtype) != SUBTYPE_GROWING:
            raise UnsupportedFeature("Bochs redolog subtype %r is not supported (only %r)"
                                     % (_cstring(self.subtype), SUBTYPE_GROWING), path)
        if self.version not in (VERSION_1, VERSION_2):
            raise UnsupportedFeature("Bochs redolog version 0x%x is not supported (0x%x or 0x%x)"
                                     % (self.version, VERSION_1, VERSION_2), path)
        if self.extent < MIN_EXTENT_SIZE:
            raise FormatError("Extent size must be at least 512 (Bochs header: %d)" % self.extent, path)
        if self.extent > MAX_EXTENT_SIZE:
            raise UnsupportedFeature("Extent size %d is too large (at most %d)" % (self.extent, MAX_EXTENT_SIZE),
                                     path)
        if self.extent % SECTOR_SIZE:
            raise UnsupportedFeature("Bochs extent size %d is not a multiple of %d" % (self.extent, SECTOR_SIZE),
                                     path)
        if self.bitmap == 0 or self.bitmap > MAX_EXTENT_SIZE:
            raise FormatError("Bochs header: bitmap size %d (expected 1 to %d bytes)"
                              % (self.bitmap, MAX_EXTENT_SIZE), path)
        if self.bitmap_blocks * SECTOR_SIZE * 8 < self.extent // SECTOR_SIZE:
            raise FormatError("Bochs header: bitmap of %d bytes cannot describe an extent of %d sectors"
                              % (self.bitmap, self.extent // SECTOR_SIZE), path)
        catalog_bytes = 4 * self.catalog
        if catalog_bytes > MAX_CATALOG_BYTES:
            raise UnsupportedFeature("Catalog size is too large: %d entries (%d bytes, limit %d)"
                                     % (self.catalog, catalog_bytes, MAX_CATALOG_BYTES), path)
        sectors_per_extent = self.extent // SECTOR_SIZE
        if self.catalog < -(-(self.disk // SECTOR_SIZE) // sectors_per_extent):
            raise FormatError("Catalog size is too small for this disk size (%d entries for %d bytes of %d-byte "
                              "extents)" % (self.catalog, self.disk, self.extent), path)
        if self.header_size + catalog_bytes > file_size:
            raise CorruptImageError("Bochs catalog (%d entries at offset %d) runs past the end of the file "
                                    "(%d bytes)" % (self.catalog, self.header_size, file_size), path)

    @property
    def bitmap_blocks(self):
        return -(-self.bitmap // SECTOR_SIZE)

    @property
    def extent_blocks(self):
        return -(-self.extent // SECTOR_SIZE)

    @property
    def virtual_size(self):
        return self.disk // SECTOR_SIZE * SECTOR_SIZE


class BochsDriver(ReadOnlyDriver):
    format_name = "bochs"

    def __init__(self):
        super(BochsDriver, self).__init__()
        self.header = None
        self.catalog = None
        self._data_offset = 0

    @classmethod
    def probe(cls, header, filename):
        # QEMU: a whole header with the magic, type Redolog, subtype Growing and a known version scores 100.
        if len(header) < HEADER_SIZE:
            return 0
        return 100 if BochsHeader(header, filename).is_bochs() else 0

    def _open_structures(self, opener):
        image_file = self._file
        h = BochsHeader(image_file.pread(0, HEADER_SIZE), self.path)
        h.validate(self.path, image_file.size())
        self.header = h
        self.virtual_size = h.virtual_size
        table = array.array("I")
        table.frombytes(image_file.pread_exact(h.header_size, 4 * h.catalog, "Bochs catalog"))
        if sys.byteorder != "little":
            table.byteswap()
        self.catalog = table
        self._data_offset = h.header_size + 4 * h.catalog

    def _pread(self, host, count, what):
        data = self._file.pread(host, count)
        if len(data) < count:
            raise CorruptImageError("Bochs %s at host offset %d (%d bytes) lies past the end of the file"
                                    % (what, host, count), self.path)
        return data

    def _read_extent(self, index, first_sector, sectors):
        """Sectors [first_sector, first_sector + sectors) of extent ``index``."""
        entry = self.catalog[index]
        if entry == CATALOG_UNALLOCATED:
            return bytes(sectors * SECTOR_SIZE)
        h = self.header
        bitmap_offset = self._data_offset + SECTOR_SIZE * entry * (h.extent_blocks + h.bitmap_blocks)
        block_offset = bitmap_offset + SECTOR_SIZE * h.bitmap_blocks
        first_byte = first_sector // 8
        last_byte = (first_sector + sectors - 1) // 8
        bitmap = self._pread(bitmap_offset + first_byte, last_byte - first_byte + 1, "sector bitmap")
        present = b"".join(_BITS_TO_BYTES[value] for value in bitmap)
        skip = first_sector - first_byte * 8
        present = present[skip:skip + sectors]
        result = bytearray(sectors * SECTOR_SIZE)
        for match in _PRESENT_RUN.finditer(present):
            start, end = match.span()
            result[start * SECTOR_SIZE:end * SECTOR_SIZE] = self._pread(
                block_offset + (first_sector + start) * SECTOR_SIZE, (end - start) * SECTOR_SIZE, "extent data")
        return bytes(result)

    def _piece(self, position, end):
        # Whole sectors around the request, within one extent.
        sector = position // SECTOR_SIZE
        last = (end - 1) // SECTOR_SIZE
        per_extent = self.header.extent // SECTOR_SIZE
        index = sector // per_extent
        within = sector - index * per_extent
        count = min(per_extent - within, last + 1 - sector, MAX_IO // SECTOR_SIZE)
        skip = position - sector * SECTOR_SIZE
        return self._read_extent(index, within, count)[skip:skip + end - position]

    def read(self, offset, length):
        return self._read_pieces(offset, length, self._piece)
