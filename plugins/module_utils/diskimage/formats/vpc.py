# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHD images (QEMU's "vpc" format): fixed, dynamic and differencing disks.

Layout from Microsoft's "Virtual Hard Disk Image Format Specification"
(version 1.0): a 512-byte *hard disk footer* ends every file (cookie
``conectix``); dynamic and differencing disks also keep a copy of it at offset
0, followed by a 1024-byte *dynamic disk header* (cookie ``cxsparse``), the
*block allocation table* (BAT, big-endian 32-bit sector numbers) and the
blocks, each a sector bitmap (one bit per sector, most significant bit first)
followed by the block's data.

Behaviour follows qemu-img 7.2 (block/vpc.c) where it decides what a user sees:
the virtual size (CHS geometry for most creators, the footer's current size for
Hyper-V, Disk2vhd, XenServer and ``qemu-img -o force_size=on`` images, and for
any image whose geometry is the maximum 65535/16/255), the creation layout
(footer copy, header, BAT padded with 0xff, 2 MiB blocks, all-ones sector
bitmap on allocation, footer moved to the new end), the footer checksum check
and ``cluster-size`` = block size for non-fixed disks.  Beyond QEMU 7.2, which
ignores sector bitmaps and parents: sectors whose bitmap bit is clear read as
zeroes in a dynamic disk and come from the parent in a differencing disk; the
parent is found through the W2ru then W2ku parent locators, opened only through
the caller's path policy, and its unique id must match the child's record.
Writes to a differencing disk allocate blocks with an empty bitmap and set the
bits of the sectors written (partial sectors completed from the current view).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import os
import struct
import sys
import time
import uuid

from .._io import ImageFile, pread_into
from ..policy import locator_file_name
from ..errors import (CorruptImageError, FormatError, ImageNotFoundError, InvalidOptionError,
                      PolicyError, ReadOnlyImageError, UnsupportedFeature, UnsupportedOperation)
from .base import DATA, MAX_IO, UNALLOCATED, ZERO, Driver, Extent, fill_zero, recurse_into_file

SECTOR_SIZE = 512

# Hard Disk Footer (spec section "Hard Disk Footer Format"), 512 bytes, big-endian:
# cookie, features, file format version, data offset, time stamp, creator
# application, creator version (major, minor), creator host OS, original size,
# current size, disk geometry (cylinders, heads, sectors per track), disk type,
# checksum, unique id, saved state, reserved.
FOOTER = struct.Struct(">8sIIQI4sHH4sQQHBBII16sB427x")
FOOTER_COOKIE = b"conectix"
FOOTER_CHECKSUM_OFFSET = 64
FOOTER_SIZE = FOOTER.size

# Dynamic Disk Header (spec section "Dynamic Disk Header Format"), 1024 bytes:
# cookie, data offset, table offset, header version, max table entries, block
# size, checksum, parent unique id, parent time stamp, reserved, parent unicode
# name (UTF-16BE), then 8 parent locator entries and 256 reserved bytes.
DYNAMIC_HEADER = struct.Struct(">8sQQIIII16sII512s192s256x")
DYNAMIC_HEADER_COOKIE = b"cxsparse"
DYNAMIC_HEADER_CHECKSUM_OFFSET = 36
DYNAMIC_HEADER_SIZE = DYNAMIC_HEADER.size
# Parent locator entry: platform code, platform data space, data length, reserved, data offset.
PARENT_LOCATOR = struct.Struct(">4sIIIQ")
PARENT_LOCATOR_COUNT = 8
# Platform codes whose data is a UTF-16LE Windows path: relative, then absolute (tried in that order).
LOCATOR_RELATIVE = b"W2ru"
LOCATOR_ABSOLUTE = b"W2ku"
# Longest parent locator path read (a Windows path; the spec stores it in a few sectors).
MAX_LOCATOR_LENGTH = 64 * 1024

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
DISK_TYPE_NAMES = {0: "none", 1: "reserved (deprecated)", 5: "reserved (deprecated)", 6: "reserved (deprecated)"}

BAT_UNUSED = 0xFFFFFFFF
# Header-derived allocation cap (docs/security.md rule 5): the BAT entries this library reads.
MAX_BAT_BYTES = 16 * 1024 * 1024

# VHD time stamps count seconds from 2000-01-01 00:00:00 UTC.
VHD_EPOCH = 946684800

# CHS geometry limits and QEMU's size limit (block/vpc.c: 2040 GiB).
CHS_MAX_CYLINDERS = 65535
CHS_MAX_HEADS = 16
CHS_MAX_SECTORS = 255
MAX_GEOMETRY_SECTORS = CHS_MAX_CYLINDERS * CHS_MAX_HEADS * CHS_MAX_SECTORS
MAX_SECTORS = 0xff000000

# Creator applications whose images QEMU sizes by the footer's current size
# rather than the CHS geometry (Hyper-V, QEMU with force_size, Disk2vhd,
# XenConverter, XenServer); every other creator is sized by its geometry.
CURRENT_SIZE_CREATORS = frozenset((b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\x00"))

# What qemu-img create writes.
CREATE_BLOCK_SIZE = 2 * 1024 * 1024
CREATE_BAT_OFFSET = 3 * SECTOR_SIZE
CREATE_FEATURES = 0x2                 # "reserved" bit, always set
CREATE_VERSION = 0x00010000
CREATE_CREATOR_VERSION = (5, 3)       # Virtual PC 2007, as QEMU records it
CREATE_CREATOR_OS = b"Wi2k"
SUBFORMATS = ("dynamic", "fixed")

# Sector bitmaps kept in memory (each at most block_size / 4096 bytes).
BITMAP_CACHE_ENTRIES = 64


def vhd_checksum(structure, checksum_offset):
    """One's complement of the byte sum, the checksum field counted as zero."""
    total = sum(structure) - sum(structure[checksum_offset:checksum_offset + 4])
    return ~total & 0xFFFFFFFF


def calculate_geometry(total_sectors):
    """(cylinders, heads, sectors per track) for ``total_sectors``: the
    algorithm of the spec's appendix, which may round the size down."""
    total_sectors = min(total_sectors, MAX_GEOMETRY_SECTORS)
    if total_sectors >= 65535 * 16 * 63:
        sectors_per_track = 255
        heads = 16
        cylinders_times_heads = total_sectors // sectors_per_track
    else:
        sectors_per_track = 17
        cylinders_times_heads = total_sectors // sectors_per_track
        heads = max(-(-cylinders_times_heads // 1024), 4)
        if cylinders_times_heads >= heads * 1024 or heads > 16:
            sectors_per_track = 31
            heads = 16
            cylinders_times_heads = total_sectors // sectors_per_track
        if cylinders_times_heads >= heads * 1024:
            sectors_per_track = 63
            heads = 16
            cylinders_times_heads = total_sectors // sectors_per_track
    return cylinders_times_heads // heads, heads, sectors_per_track


def rounded_size(size, force_size=False, path=None):
    """(virtual size, (cylinders, heads, sectors)) of a new image of ``size``
    bytes, as qemu-img create computes them: rounded up to the next size the
    CHS geometry represents, unless ``force_size`` keeps the size exactly
    (with the maximum geometry, which makes QEMU use the current size)."""
    size = -(-size // SECTOR_SIZE) * SECTOR_SIZE
    if force_size:
        geometry = (CHS_MAX_CYLINDERS, CHS_MAX_HEADS, CHS_MAX_SECTORS)
    else:
        wanted = min(MAX_GEOMETRY_SECTORS, size // SECTOR_SIZE)
        geometry = (0, 0, 0)
        extra = 0
        while wanted > geometry[0] * geometry[1] * geometry[2]:
            geometry = calculate_geometry(wanted + extra)
            extra += 1
    chs_sectors = geometry[0] * geometry[1] * geometry[2]
    if chs_sectors == MAX_GEOMETRY_SECTORS:
        total_sectors = size // SECTOR_SIZE
        if total_sectors > MAX_SECTORS:
            raise InvalidOptionError("vpc create: disk size %d is too large, the maximum is 2040 GiB (%d bytes)"
                                     % (size, MAX_SECTORS * SECTOR_SIZE), path)
    else:
        total_sectors = chs_sectors
    return total_sectors * SECTOR_SIZE, geometry


def _utf16_name(raw, encoding):
    text = raw.decode(encoding, "replace")
    end = text.find("\0")
    return text if end < 0 else text[:end]


class Footer:
    """The hard disk footer's fields."""

    def __init__(self, raw):
        (self.cookie, self.features, self.version, self.data_offset, self.timestamp,
         self.creator_app, self.creator_major, self.creator_minor, self.creator_os,
         self.original_size, self.current_size, self.cylinders, self.heads,
         self.sectors_per_track, self.disk_type, self.checksum, self.unique_id,
         self.saved_state) = FOOTER.unpack_from(raw)
        self.raw = bytes(raw[:FOOTER_SIZE])

    @property
    def chs_sectors(self):
        return self.cylinders * self.heads * self.sectors_per_track

    def virtual_sectors(self):
        """Sectors QEMU shows: CHS geometry, or the current size for the
        creators (and the maximum geometry) that mean it."""
        if self.creator_app in CURRENT_SIZE_CREATORS or self.chs_sectors == MAX_GEOMETRY_SECTORS:
            return self.current_size // SECTOR_SIZE
        return self.chs_sectors


class DynamicHeader:
    """The dynamic disk header's fields and its parent locators."""

    def __init__(self, raw):
        (self.cookie, self.data_offset, self.table_offset, self.version, self.max_table_entries,
         self.block_size, self.checksum, self.parent_unique_id, self.parent_timestamp,
         self.reserved, self.parent_unicode_name, locators) = DYNAMIC_HEADER.unpack_from(raw)
        self.locators = [PARENT_LOCATOR.unpack_from(locators, i * PARENT_LOCATOR.size)
                         for i in range(PARENT_LOCATOR_COUNT)]

    @property
    def parent_name(self):
        return _utf16_name(self.parent_unicode_name, "utf-16-be")


def _bitmap_bits(bitmap, sectors):
    """The sector bitmap as a string of '0'/'1', one character per sector."""
    if not sectors:
        return ""
    return format(int.from_bytes(bitmap, "big"), "0%db" % (len(bitmap) * 8))[:sectors]


def _bit_runs(bits, first, last):
    """(first sector, count, is_set) runs of ``bits`` over sectors [first, last)."""
    runs = []
    sector = first
    while sector < last:
        is_set = bits[sector] == "1"
        end = bits.find("0" if is_set else "1", sector, last)
        if end < 0:
            end = last
        runs.append((sector, end - sector, is_set))
        sector = end
    return runs


class VpcDriver(Driver):
    format_name = "vpc"
    can_create = True
    can_write = True

    def __init__(self):
        super(VpcDriver, self).__init__()
        self._file = None
        self.footer = None
        self.header = None
        self.disk_type = None
        self.block_size = 0
        self.bitmap_size = 0
        self.bat = None
        self.bat_offset = 0
        self.next_block_offset = 0
        self._bitmaps = {}

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        # Only dynamic/differencing disks start with the footer copy; fixed disks probe as raw (QEMU too).
        return 100 if header[:8] == FOOTER_COOKIE else 0

    # --------------------------------------------------------------- lifecycle
    def _open_structures(self, opener):
        path = self.path
        file_size = self._file.size()
        if file_size < FOOTER_SIZE:
            raise FormatError("VHD footer: the file has %d bytes, fewer than the %d of a footer"
                              % (file_size, FOOTER_SIZE), path)
        raw = self._file.pread_exact(0, FOOTER_SIZE, "VHD footer copy at offset 0")
        footer_offset = 0
        if raw[:8] != FOOTER_COOKIE:
            # A fixed disk has its footer only at the end of the file.
            footer_offset = file_size - FOOTER_SIZE
            raw = self._file.pread_exact(footer_offset, FOOTER_SIZE, "VHD footer at the end of the file")
            if raw[:8] != FOOTER_COOKIE:
                raise FormatError("not a VHD image: expected the footer cookie %r at offset 0 or at offset %d "
                                  "(end of file), found %r and %r"
                                  % (FOOTER_COOKIE, footer_offset, bytes(raw[:8]),
                                     bytes(self._file.pread(0, 8))), path)
        footer = Footer(raw)
        expected = vhd_checksum(footer.raw, FOOTER_CHECKSUM_OFFSET)
        if footer.checksum != expected and footer_offset == 0 and file_size >= 2 * FOOTER_SIZE:
            # The copy at offset 0 is damaged: the footer at the end is the original (spec: the copy is for
            # recovery), when it is intact.
            end_raw = self._file.pread_exact(file_size - FOOTER_SIZE, FOOTER_SIZE,
                                             "VHD footer at the end of the file")
            end_footer = Footer(end_raw)
            if end_footer.cookie == FOOTER_COOKIE and \
                    end_footer.checksum == vhd_checksum(end_footer.raw, FOOTER_CHECKSUM_OFFSET):
                footer, footer_offset = end_footer, file_size - FOOTER_SIZE
                expected = footer.checksum
        if footer.checksum != expected:
            raise FormatError("VHD footer at offset %d: incorrect checksum (recorded 0x%08x, computed 0x%08x)"
                              % (footer_offset, footer.checksum, expected), path)
        if footer.disk_type not in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING):
            raise UnsupportedFeature("VHD footer: disk type %d (%s) is not supported (expected 2 fixed, 3 dynamic "
                                     "or 4 differencing)"
                                     % (footer.disk_type, DISK_TYPE_NAMES.get(footer.disk_type, "unknown")), path)
        self.footer = footer
        self.disk_type = footer.disk_type
        sectors = footer.virtual_sectors()
        if sectors > MAX_SECTORS:
            raise UnsupportedFeature("VHD footer: disk size of %d sectors (geometry %d/%d/%d, current size %d) is "
                                     "larger than the 2040 GiB QEMU supports"
                                     % (sectors, footer.cylinders, footer.heads, footer.sectors_per_track,
                                        footer.current_size), path)
        self.virtual_size = sectors * SECTOR_SIZE
        if self.disk_type == DISK_FIXED:
            if not self.readonly and self.virtual_size > file_size - FOOTER_SIZE:
                raise CorruptImageError("fixed VHD: virtual size %d is larger than the %d bytes of data before the "
                                        "footer; refusing to write" % (self.virtual_size, file_size - FOOTER_SIZE),
                                        path)
            return
        self._open_dynamic(file_size, footer_offset)
        if self.disk_type == DISK_DIFFERENCING:
            self._open_parent(opener)

    def _open_dynamic(self, file_size, footer_offset):
        path = self.path
        footer = self.footer
        if footer.data_offset > file_size - DYNAMIC_HEADER_SIZE:
            raise CorruptImageError("VHD footer: dynamic disk header offset %d is past the end of the file "
                                    "(%d bytes)" % (footer.data_offset, file_size), path)
        raw = self._file.pread_exact(footer.data_offset, DYNAMIC_HEADER_SIZE, "VHD dynamic disk header")
        header = DynamicHeader(raw)
        if header.cookie != DYNAMIC_HEADER_COOKIE:
            raise FormatError("VHD dynamic disk header at offset %d: expected cookie %r, found %r"
                              % (footer.data_offset, DYNAMIC_HEADER_COOKIE, header.cookie), path)
        block_size = header.block_size
        if block_size < SECTOR_SIZE or block_size & (block_size - 1):
            raise FormatError("VHD dynamic disk header: invalid block size %d (expected a power of two of at "
                              "least 512)" % block_size, path)
        self.header = header
        self.block_size = block_size
        sectors_per_block = block_size // SECTOR_SIZE
        # One bit per sector, padded to a whole sector.
        self.bitmap_size = -(-(-(-sectors_per_block // 8)) // SECTOR_SIZE) * SECTOR_SIZE
        blocks_needed = -(-self.virtual_size // block_size)
        if header.max_table_entries < blocks_needed:
            raise CorruptImageError("VHD dynamic disk header: the BAT has %d entries, the disk size %d needs %d "
                                    "blocks of %d bytes" % (header.max_table_entries, self.virtual_size,
                                                            blocks_needed, block_size), path)
        bat_bytes = blocks_needed * 4
        if bat_bytes > MAX_BAT_BYTES:
            raise UnsupportedFeature("VHD block allocation table of %d bytes (%d blocks) is larger than the %d "
                                     "bytes this library reads" % (bat_bytes, blocks_needed, MAX_BAT_BYTES), path)
        self.bat_offset = header.table_offset
        if self.bat_offset + bat_bytes > file_size:
            raise CorruptImageError("VHD block allocation table at offset %d (%d bytes) goes past the end of the "
                                    "file (%d bytes)" % (self.bat_offset, bat_bytes, file_size), path)
        bat = array.array("I")
        if bat.itemsize != 4:
            bat = array.array("L")
        bat.frombytes(self._file.pread_exact(self.bat_offset, bat_bytes, "VHD block allocation table"))
        if sys.byteorder == "little":
            bat.byteswap()
        self.bat = bat
        span = self.bitmap_size + block_size
        allocated = sorted(entry for entry in bat if entry != BAT_UNUSED)
        metadata = [(footer.data_offset, footer.data_offset + DYNAMIC_HEADER_SIZE, "dynamic disk header"),
                    (self.bat_offset, self.bat_offset + bat_bytes, "block allocation table")]
        if footer_offset == 0:
            metadata.append((0, FOOTER_SIZE, "footer copy"))
        previous_end = 0
        for entry in allocated:
            start = entry * SECTOR_SIZE
            if start + span > file_size:
                raise CorruptImageError("VHD block allocation table: a block at offset %d (%d bytes with its "
                                        "bitmap) ends past the end of the file (%d bytes); the image is truncated"
                                        % (start, span, file_size), path)
            if start < previous_end:
                raise CorruptImageError("VHD block allocation table: the block at offset %d overlaps the block "
                                        "before it (ending at %d)" % (start, previous_end), path)
            previous_end = start + span
        for low, high, what in metadata:
            for entry in allocated:
                start = entry * SECTOR_SIZE
                if start < high and start + span > low:
                    raise CorruptImageError("VHD block allocation table: the block at offset %d overlaps the %s "
                                            "at [%d, %d)" % (start, what, low, high), path)
                if start >= high:
                    break
        # The declared table, but never past the file (a hostile entry count must not push new blocks far away).
        table_end = min(self.bat_offset + header.max_table_entries * 4,
                        max(file_size - FOOTER_SIZE, self.bat_offset + bat_bytes))
        free = -(-table_end // SECTOR_SIZE) * SECTOR_SIZE
        if allocated:
            free = max(free, allocated[-1] * SECTOR_SIZE + span)
        # New blocks replace the footer at the end of the file, never anything before it (blocks of
        # BAT entries past the virtual size, which are not read, may lie there).
        tail = file_size
        if footer_offset == file_size - FOOTER_SIZE or \
                self._file.pread(file_size - FOOTER_SIZE, 8) == FOOTER_COOKIE:
            tail = file_size - FOOTER_SIZE
        self.next_block_offset = max(free, -(-tail // SECTOR_SIZE) * SECTOR_SIZE)

    def _parent_locators(self):
        """[(platform code, Windows path)] of the W2ru then W2ku parent locators."""
        path = self.path
        file_size = self._file.size()
        found = {LOCATOR_RELATIVE: [], LOCATOR_ABSOLUTE: []}
        for index, (code, _space, length, _reserved, offset) in enumerate(self.header.locators):
            if code not in found or not length:
                continue
            if length > MAX_LOCATOR_LENGTH or offset + length > file_size:
                raise CorruptImageError("VHD parent locator %d (%s): data of %d bytes at offset %d is too long or "
                                        "past the end of the file (%d bytes)"
                                        % (index, code.decode("ascii"), length, offset, file_size), path)
            raw = self._file.pread_exact(offset, length, "VHD parent locator %d data" % index)
            name = _utf16_name(raw, "utf-16-le")
            if name:
                found[code].append((code.decode("ascii"), name))
        return found[LOCATOR_RELATIVE] + found[LOCATOR_ABSOLUTE]

    def _open_parent(self, opener):
        path = self.path
        locators = self._parent_locators()
        if not locators:
            raise FormatError("differencing VHD: no W2ru or W2ku parent locator names the parent (parent unicode "
                              "name %r)" % self.header.parent_name, path)
        failures = []
        for code, windows_path in locators:
            name = locator_file_name(windows_path)
            if opener is None:
                raise PolicyError("differencing VHD: parent %r (%s locator %r) cannot be opened: no opener (path "
                                  "policy) was given" % (name, code, windows_path), path)
            try:
                parent = opener(path, name, "vpc")
            except (PolicyError, ImageNotFoundError) as exc:
                failures.append((code, windows_path, exc))
                continue
            self.backing_filename = name
            self.backing_format = "vpc"
            if parent is None:
                return  # the caller names the parent without opening it (qemu-img info)
            self.backing = parent
            parent_id = getattr(getattr(parent, "footer", None), "unique_id", None)
            if parent_id != self.header.parent_unique_id:
                raise FormatError("differencing VHD: parent %s (%s locator %r) has unique id %s in its footer, the "
                                  "child's dynamic disk header expects %s"
                                  % (parent.path, code, windows_path,
                                     parent_id.hex() if parent_id is not None else "(none: not a VHD)",
                                     self.header.parent_unique_id.hex()), path)
            return
        details = "; ".join("%s locator %r: %s" % (code, windows_path, exc) for code, windows_path, exc in failures)
        error = PolicyError if all(isinstance(exc, PolicyError) for _c, _w, exc in failures) else ImageNotFoundError
        raise error("differencing VHD: the parent could not be opened under the path policy (relative names in "
                    "the image's directory, other names only inside allow_dirs): %s" % details, path)

    def close(self):
        self._close_file()
        super(VpcDriver, self).close()

    # -------------------------------------------------------------------- data
    def _bitmap_bits(self, index):
        """Sector bitmap of allocated block ``index`` as a '0'/'1' string (cached)."""
        bits = self._bitmaps.get(index)
        if bits is None:
            offset = self.bat[index] * SECTOR_SIZE
            bitmap = self._file.pread_exact(offset, self.bitmap_size,
                                            "VHD sector bitmap of block %d" % index)
            bits = _bitmap_bits(bitmap, self.block_size // SECTOR_SIZE)
            if len(self._bitmaps) >= BITMAP_CACHE_ENTRIES:
                self._bitmaps.clear()
            self._bitmaps[index] = bits
        return bits

    def _map(self, offset, length):
        """(guest offset, length, kind, host offset) runs of this layer over the range."""
        if self.disk_type == DISK_FIXED:
            return [(offset, length, DATA, offset)]
        absent = UNALLOCATED if self.disk_type == DISK_DIFFERENCING else ZERO
        runs = []
        end = offset + length
        block_size = self.block_size
        while offset < end:
            index = offset // block_size
            block_start = index * block_size
            count = min(end, block_start + block_size) - offset
            entry = self.bat[index]
            if entry == BAT_UNUSED:
                runs.append((offset, count, absent, None))
            else:
                data_offset = entry * SECTOR_SIZE + self.bitmap_size
                bits = self._bitmap_bits(index)
                first = (offset - block_start) // SECTOR_SIZE
                last = -(-(offset + count - block_start) // SECTOR_SIZE)
                for sector, sectors, is_set in _bit_runs(bits, first, last):
                    run_start = max(offset, block_start + sector * SECTOR_SIZE)
                    run_end = min(offset + count, block_start + (sector + sectors) * SECTOR_SIZE)
                    if is_set:
                        runs.append((run_start, run_end - run_start, DATA, data_offset + run_start - block_start))
                    else:
                        runs.append((run_start, run_end - run_start, absent, None))
            offset += count
        return runs

    def read(self, offset, length):
        self._check_range(offset, length, "read")
        if self.disk_type == DISK_FIXED:
            data = self._file.pread(offset, length)
            return data if len(data) == length else data + bytes(length - len(data))
        runs = self._map(offset, length)
        if len(runs) == 1 and runs[0][2] == DATA:
            # One contiguous run (the usual read inside a block): no extra copy.
            data = self._file.pread(runs[0][3], length)
            return data if len(data) == length else data + bytes(length - len(data))
        # Several runs (a read across blocks: each block's data follows its sector bitmap):
        # read into one buffer, returned as it is (copying megabytes in Python costs more than the reads).
        out = bytearray(length)
        self._read_runs_into(memoryview(out), offset, runs, self._read_host, fresh=True)
        return out

    def read_into(self, offset, view):
        length = len(view)
        self._check_range(offset, length, "read")
        if self.disk_type == DISK_FIXED:
            self._read_host(offset, view, DATA, offset)
            return
        self._read_runs_into(view, offset, self._map(offset, length), self._read_host)

    def _read_host(self, host, part, _kind, _guest):
        # short at the end of the file: the rest reads zero
        count = pread_into(self._file, host, part)
        if count < len(part):
            fill_zero(part[count:])

    def host_file_of_offsets(self):
        return self._file

    def block_status(self, offset, length):
        if length <= 0:
            return []
        if self.disk_type == DISK_FIXED:
            data_end = self._file.size() - FOOTER_SIZE
            extents = []
            covered = min(offset + length, max(data_end, offset))
            if covered > offset:
                for start, count, is_data in self._file.data_extents(offset, covered - offset):
                    extents.append(Extent(start, count, DATA if is_data else ZERO, start))
            if covered < offset + length:
                extents.append(Extent(covered, offset + length - covered, DATA, covered))
            return extents
        extents = []
        for guest, count, kind, host in self._map(offset, length):
            if extents:
                last = extents[-1]
                if last.kind == kind and (
                        (host is None and last.offset is None)
                        or (host is not None and last.offset is not None and last.offset + last.length == host)):
                    extents[-1] = Extent(last.start, last.length + count, kind, last.offset)
                    continue
            extents.append(Extent(guest, count, kind, host))
        return extents

    def _check_write(self, offset, length, what):
        if self.readonly:
            raise ReadOnlyImageError("image is opened read-only", self.path)
        self._check_range(offset, length, what)

    def _allocate_block(self, index):
        """Append block ``index`` (zero data; all-ones bitmap as QEMU writes, or an
        empty one in a differencing disk, whose unwritten sectors show the parent)
        where the footer was, write the footer after it, then the BAT entry.
        Returns the entry."""
        image_file = self._file
        start = self.next_block_offset
        file_size = image_file.size()
        full = self.disk_type != DISK_DIFFERENCING
        image_file.pwrite(start, (b"\xff" if full else b"\x00") * self.bitmap_size)
        data_start = start + self.bitmap_size
        if data_start < file_size:
            # Old footer or stray bytes would show through the new block's unwritten sectors.
            image_file.punch_hole(data_start, min(self.block_size, file_size - data_start))
        end = data_start + self.block_size
        image_file.pwrite(end, self.footer.raw)
        entry = start // SECTOR_SIZE
        image_file.pwrite(self.bat_offset + 4 * index, struct.pack(">I", entry))
        self.bat[index] = entry
        self.next_block_offset = end
        self._bitmaps[index] = ("1" if full else "0") * (self.block_size // SECTOR_SIZE)
        return entry

    def _write_differencing_block(self, index, offset, data):
        """Write ``data`` at guest ``offset`` inside block ``index`` of a differencing
        disk: whole sectors (partial ones completed from the current view, the
        parent's where the bit is clear), then their bitmap bits."""
        block_start = index * self.block_size
        first = (offset - block_start) // SECTOR_SIZE
        last = -(-(offset + len(data) - block_start) // SECTOR_SIZE)
        sectors_start = block_start + first * SECTOR_SIZE
        sectors_end = block_start + last * SECTOR_SIZE
        head = offset - sectors_start
        tail = sectors_end - (offset + len(data))
        if head or tail:
            buffer = bytearray(sectors_end - sectors_start)
            if head:
                buffer[:SECTOR_SIZE] = self.read(sectors_start, SECTOR_SIZE)
            if tail:
                buffer[-SECTOR_SIZE:] = self.read(sectors_end - SECTOR_SIZE, SECTOR_SIZE)
            buffer[head:head + len(data)] = data
            data = buffer
        entry = self.bat[index]
        if entry == BAT_UNUSED:
            entry = self._allocate_block(index)
        self._file.pwrite(entry * SECTOR_SIZE + self.bitmap_size + first * SECTOR_SIZE, data)
        bits = self._bitmap_bits(index)
        if "0" in bits[first:last]:
            bits = bits[:first] + "1" * (last - first) + bits[last:]
            padded = bits + "0" * (self.bitmap_size * 8 - len(bits))
            self._file.pwrite(entry * SECTOR_SIZE, int(padded, 2).to_bytes(self.bitmap_size, "big"))
            self._bitmaps[index] = bits

    def _make_bitmap_full(self, index, entry):
        """Before writing into an allocated block whose bitmap has clear bits,
        zero those sectors' data and set every bit (QEMU sets all bits)."""
        bits = self._bitmap_bits(index)
        if "0" not in bits:
            return
        data_offset = entry * SECTOR_SIZE + self.bitmap_size
        for sector, sectors, is_set in _bit_runs(bits, 0, len(bits)):
            if not is_set:
                self._file.punch_hole(data_offset + sector * SECTOR_SIZE, sectors * SECTOR_SIZE)
        self._file.pwrite(entry * SECTOR_SIZE, b"\xff" * self.bitmap_size)
        self._bitmaps[index] = "1" * len(bits)

    def write(self, offset, data):
        length = len(data)
        self._check_write(offset, length, "write")
        if not length:
            return
        if self.disk_type == DISK_FIXED:
            self._file.pwrite(offset, data)
            return
        view = memoryview(data)
        end = offset + length
        block_size = self.block_size
        while offset < end:
            index = offset // block_size
            block_start = index * block_size
            count = min(end, block_start + block_size) - offset
            pos = length - (end - offset)
            if self.disk_type == DISK_DIFFERENCING:
                self._write_differencing_block(index, offset, view[pos:pos + count])
                offset += count
                continue
            entry = self.bat[index]
            if entry == BAT_UNUSED:
                entry = self._allocate_block(index)
            else:
                self._make_bitmap_full(index, entry)
            self._file.pwrite(entry * SECTOR_SIZE + self.bitmap_size + offset - block_start,
                              view[pos:pos + count])
            offset += count

    def write_zeroes(self, offset, length, may_unmap=False):
        self._check_write(offset, length, "write_zeroes")
        if not length:
            return
        if self.disk_type == DISK_FIXED:
            if may_unmap and not self._file.is_block_device:
                self._file.punch_hole(offset, length)
            else:
                self._file.write_zeroes(offset, length)
            return
        if self.disk_type == DISK_DIFFERENCING:
            # The parent may show through anywhere: zeroes are written as data.
            end = offset + length
            while offset < end:
                count = min(end - offset, MAX_IO)
                self.write(offset, bytes(count))
                offset += count
            return
        # Unallocated blocks and clear-bit sectors already read as zeroes.
        for run in self._map(offset, length):
            count, kind, host = run[1:]
            if kind == DATA:
                if may_unmap and not self._file.is_block_device:
                    self._file.punch_hole(host, count)
                else:
                    self._file.write_zeroes(host, count)

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def creation_options(self):
        return {"subformat": {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic",
                              DISK_DIFFERENCING: "differencing"}.get(self.disk_type)}

    # ------------------------------------------------------------------- map
    def map_runs(self, offset, end, l1_table=None, cache=None):
        # A fixed disk is raw-like: QEMU recurses into the file under its DATA ranges.
        runs = super(VpcDriver, self).map_runs(offset, end, l1_table, cache)
        if self.disk_type == DISK_FIXED and self._file is not None:
            runs = recurse_into_file(self._file, runs)
        return runs

    # ----------------------------------------------------------------- queries
    def info(self):
        if self.disk_type == DISK_FIXED:
            return {}
        return {"cluster-size": self.block_size}

    def check(self, repair=None):
        raise UnsupportedOperation("vpc images cannot be checked (qemu-img: this image format does not support "
                                   "checks)", self.path)

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        options = dict(options or {})
        subformat = options.pop("subformat", None) or "dynamic"
        force_size = options.pop("force_size", False)
        option_size = options.pop("size", None)
        if backing is not None or options.get("backing_file"):
            raise InvalidOptionError("vpc images cannot have a backing file (qemu-img cannot create differencing "
                                     "VHDs)", path)
        options.pop("backing_file", None)
        options.pop("backing_fmt", None)
        if options:
            raise InvalidOptionError("invalid option(s) for vpc images: %s (supported: subformat, force_size)"
                                     % ", ".join(sorted(options)), path)
        if subformat not in SUBFORMATS:
            raise InvalidOptionError("vpc create: invalid subformat %r (expected one of: %s)"
                                     % (subformat, ", ".join(SUBFORMATS)), path)
        if force_size in ("on", "off"):
            force_size = force_size == "on"
        if not isinstance(force_size, bool):
            raise InvalidOptionError("vpc create: force_size must be on or off, found %r" % (force_size,), path)
        if size is None:
            size = option_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)" % (size,),
                                     path)
        total_size, (cylinders, heads, sectors_per_track) = rounded_size(size, force_size, path)
        disk_type = DISK_DYNAMIC if subformat == "dynamic" else DISK_FIXED
        footer = bytearray(FOOTER.pack(
            FOOTER_COOKIE, CREATE_FEATURES, CREATE_VERSION,
            SECTOR_SIZE if disk_type == DISK_DYNAMIC else 0xFFFFFFFFFFFFFFFF,
            (int(time.time()) - VHD_EPOCH) & 0xFFFFFFFF,
            b"qem2" if force_size else b"qemu", CREATE_CREATOR_VERSION[0], CREATE_CREATOR_VERSION[1],
            CREATE_CREATOR_OS, total_size, total_size, cylinders, heads, sectors_per_track,
            disk_type, 0, uuid.uuid4().bytes, 0))
        struct.pack_into(">I", footer, FOOTER_CHECKSUM_OFFSET, vhd_checksum(footer, FOOTER_CHECKSUM_OFFSET))
        footer = bytes(footer)

        image_file = ImageFile(path, create=True)
        try:
            if disk_type == DISK_FIXED:
                image_file.truncate(total_size + FOOTER_SIZE)
                image_file.pwrite(total_size, footer)
            else:
                entries = -(-total_size // CREATE_BLOCK_SIZE)
                bat_bytes = -(-entries * 4 // SECTOR_SIZE) * SECTOR_SIZE
                header = bytearray(DYNAMIC_HEADER.pack(
                    DYNAMIC_HEADER_COOKIE, 0xFFFFFFFFFFFFFFFF, CREATE_BAT_OFFSET, CREATE_VERSION, entries,
                    CREATE_BLOCK_SIZE, 0, bytes(16), 0, 0, bytes(512), bytes(192)))
                struct.pack_into(">I", header, DYNAMIC_HEADER_CHECKSUM_OFFSET,
                                 vhd_checksum(header, DYNAMIC_HEADER_CHECKSUM_OFFSET))
                image_file.pwrite(0, footer + bytes(header) + b"\xff" * bat_bytes + footer)
            image_file.flush()
        except BaseException:
            image_file.close()
            os.unlink(image_file.path)
            raise
        image_file.close()
