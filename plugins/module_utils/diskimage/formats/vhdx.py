# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX images (Hyper-V): fixed, dynamic and differencing disks.

Layout from Microsoft's "VHDX Format Specification" v1.0: a 1 MiB header
section (file type identifier ``vhdxfile``, two headers with sequence numbers
and CRC-32C checksums, two copies of the region table), a metadata log, the
BAT region and the metadata region.  All integers are little-endian and GUIDs
use the Microsoft mixed-endian layout (``uuid.UUID(bytes_le=...)``).

Behaviour follows qemu-img 7.2 (block/vhdx.c, vhdx-log.c) where it decides
what a user sees: the active header (highest sequence number, identical
headers accepted), payload block states (absent states read as zeroes),
``cluster-size`` = block size, the creation layout and options, blocks
appended at the 1 MiB-aligned end of the file.  Beyond QEMU 7.2:

- differencing disks (``has_parent``): the parent is named by the
  ``relative_path`` entry of the parent locator, opened only through the
  caller's path policy, and its DataWriteGuid must equal ``parent_linkage``
  (or ``parent_linkage2``); PARTIALLY_PRESENT blocks take the sectors whose
  bit is set in the chunk's sector bitmap from this file, the others from the
  parent.
- a dirty log (non-zero log GUID with a valid active sequence) is replayed:
  into the file on a writable open (and the log GUID cleared, as QEMU does),
  into an in-memory overlay of the affected file ranges on a read-only open,
  so that reads are right without touching the file (QEMU refuses that open).
  The active sequence is found as the spec's section 2.3.3 says (the head
  entry's tail must be one of its entries, replay starts there); a log GUID
  without any valid sequence is ignored, as QEMU does.
- 4096-byte logical sectors (QEMU 7.2 refuses them); a damaged first region
  table falls back to the second copy (QEMU reads only the first).

Writes update a BAT entry in place after the block's data is written (one
8-byte entry in one sector), so the log stays empty and the image is
consistent at every step; qemu-img writes the same entry through a one-entry
log that it replays and clears at once, which ends in the same state.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import os
import random
import struct
import sys
import uuid

from .._io import ImageFile, pread_into
from ..policy import locator_file_name
from ..errors import (CorruptImageError, FormatError, ImageError, ImageNotFoundError, InvalidOptionError,
                      PolicyError, ReadOnlyImageError, UnsupportedFeature, UnsupportedOperation)
from .base import DATA, UNALLOCATED, ZERO, Driver, Extent

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# ------------------------------------------------------------------ CRC-32C
# Castagnoli polynomial, reflected.  Only ever run over small structures
# (headers, region tables, log entries), never over payload data.
CRC32C_POLY = 0x82F63B78


def _crc32c_table():
    table = []
    for index in range(256):
        crc = index
        for bit in range(8):
            crc = (crc >> 1) ^ CRC32C_POLY if crc & 1 else crc >> 1
            del bit
        table.append(crc)
    return tuple(table)


CRC32C_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    """CRC-32C of ``data`` (continuing ``crc``)."""
    table = CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def checksum_of(structure, checksum_offset=4):
    """CRC-32C of ``structure`` with its 4-byte checksum field counted as zero."""
    structure = bytes(structure)
    return crc32c(structure[:checksum_offset] + bytes(4) + structure[checksum_offset + 4:])


def with_checksum(structure, checksum_offset=4):
    structure = bytearray(structure)
    struct.pack_into("<I", structure, checksum_offset, checksum_of(structure, checksum_offset))
    return bytes(structure)


def _guid(raw):
    return uuid.UUID(bytes_le=bytes(raw))


# ------------------------------------------------------------ header section
# Spec 2.2: the header section is the first 1 MiB.
FILE_IDENTIFIER_SIGNATURE = b"vhdxfile"
FILE_IDENTIFIER_CREATOR_SIZE = 512
HEADER_SECTION_SIZE = 1 * MiB
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)

# Spec 2.2.2 Header, 4 KiB (the checksum covers all of it): signature "head",
# checksum, sequence number, FileWriteGuid, DataWriteGuid, LogGuid, log
# version, version, log length, log offset.
HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
HEADER_SIGNATURE = b"head"
HEADER_SIZE = 4 * KiB

# Spec 2.2.3 Region table, 64 KiB: signature "regi", checksum, entry count,
# reserved; entries of GUID, file offset, length, flags (bit 0 required).
REGION_TABLE_HEADER = struct.Struct("<4sIII")
REGION_TABLE_ENTRY = struct.Struct("<16sQII")
REGION_TABLE_SIGNATURE = b"regi"
REGION_TABLE_SIZE = 64 * KiB
REGION_TABLE_MAX_ENTRIES = 2047
REGION_REQUIRED = 0x1
BAT_REGION_GUID = uuid.UUID("2dc27766-f623-4200-9d64-115e9bfd4a08")
METADATA_REGION_GUID = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e")

# Spec 2.6 Metadata region: table header (signature "metadata", reserved,
# entry count, reserved) and 32-byte entries (item id, offset, length, flags).
METADATA_TABLE_HEADER = struct.Struct("<8sHH20x")
METADATA_TABLE_ENTRY = struct.Struct("<16sIII4x")
METADATA_SIGNATURE = b"metadata"
METADATA_TABLE_SIZE = 64 * KiB
METADATA_MAX_ENTRIES = 2047
METADATA_IS_USER = 0x1
METADATA_IS_VIRTUAL_DISK = 0x2
METADATA_IS_REQUIRED = 0x4
FILE_PARAMETERS_GUID = uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2fa54224-cd1b-4876-b211-5dbed83bf4b8")
PAGE83_GUID = uuid.UUID("beca12ab-b2e6-4523-93ef-c309e000c746")
LOGICAL_SECTOR_SIZE_GUID = uuid.UUID("8141bf1d-a96f-4709-ba47-f233a8faab5f")
PHYSICAL_SECTOR_SIZE_GUID = uuid.UUID("cda348c7-445d-4471-9cc9-e9885251c556")
PARENT_LOCATOR_GUID = uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c")
KNOWN_METADATA = (FILE_PARAMETERS_GUID, VIRTUAL_DISK_SIZE_GUID, PAGE83_GUID, LOGICAL_SECTOR_SIZE_GUID,
                  PHYSICAL_SECTOR_SIZE_GUID, PARENT_LOCATOR_GUID)
# File parameters (spec 2.6.2.1): block size, flags.
FILE_PARAMETERS = struct.Struct("<II")
LEAVE_BLOCKS_ALLOCATED = 0x1
HAS_PARENT = 0x2
# Parent locator (spec 2.6.2.6): locator type, reserved, key-value count; entries
# of key offset, value offset, key length, value length (offsets from the item).
PARENT_LOCATOR_HEADER = struct.Struct("<16sHH")
PARENT_LOCATOR_ENTRY = struct.Struct("<IIHH")
VHDX_PARENT_LOCATOR_TYPE = uuid.UUID("b04aefb7-d19e-4a81-b789-25b8e9445913")
MAX_PARENT_LOCATOR_SIZE = 256 * KiB

MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB
MAX_VIRTUAL_SIZE = 64 * TiB
SECTOR_SIZES = (512, 4096)
# Sectors one sector bitmap block (1 MiB) describes: 2^23.
SECTORS_PER_BITMAP = 1 << 23
SECTOR_BITMAP_SIZE = 1 * MiB

# Spec 2.5 BAT entries: state in bits 0-2, file offset in MiB in bits 20-63.
BAT_STATE_MASK = 0x7
BAT_OFFSET_MASK = 0xFFFFFFFFFFF00000
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_UNMAPPED_V095 = 5   # an earlier draft's value, read as unmapped (QEMU too)
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
SB_BLOCK_PRESENT = 6
ABSENT_STATES = (PAYLOAD_BLOCK_NOT_PRESENT, PAYLOAD_BLOCK_UNDEFINED, PAYLOAD_BLOCK_ZERO, PAYLOAD_BLOCK_UNMAPPED,
                 PAYLOAD_BLOCK_UNMAPPED_V095)
STATE_NAMES = {0: "NOT_PRESENT", 1: "UNDEFINED", 2: "ZERO", 3: "UNMAPPED", 4: "invalid (4)",
               5: "UNMAPPED (v0.95)", 6: "FULLY_PRESENT", 7: "PARTIALLY_PRESENT"}
# Header-derived allocation cap (docs/security.md rule 5): the BAT read into memory.
MAX_BAT_BYTES = 64 * MiB

# ---------------------------------------------------------------------- log
# Spec 2.3: 4 KiB log sectors; entry header (signature "loge", checksum,
# entry length, tail, sequence number, descriptor count, reserved, log GUID,
# flushed file offset, last file offset); 32-byte descriptors ("zero": zero
# length, file offset, sequence number; "desc": trailing bytes, leading
# bytes, file offset, sequence number); data sectors ("data", sequence high,
# 4084 bytes, sequence low).
LOG_SECTOR_SIZE = 4 * KiB
LOG_ENTRY_HEADER = struct.Struct("<4sIIIQII16sQQ")
LOG_ENTRY_SIGNATURE = b"loge"
LOG_DESCRIPTOR = struct.Struct("<4sIQQQ")
LOG_ZERO_SIGNATURE = b"zero"
LOG_DATA_DESCRIPTOR_SIGNATURE = b"desc"
LOG_DATA_SECTOR = struct.Struct("<4sI4084sI")
LOG_DATA_SIGNATURE = b"data"
# Largest log read into memory to find the active sequence (its entries' CRC-32C is computed in
# Python, about 20 s per 16 MiB at worst), and largest zero run one descriptor may describe.
MAX_LOG_BYTES = 16 * MiB
MAX_LOG_ZERO_LENGTH = 1 * GiB

# What qemu-img create writes (block/vhdx.c).
DEFAULT_LOG_SIZE = 1 * MiB
METADATA_REGION_SIZE = 1 * MiB
METADATA_ITEMS_OFFSET = 64 * KiB
DATA_GAP = 5 * MiB
CREATOR = "kvm.storage diskimage"
SUBFORMATS = ("dynamic", "fixed")

BITMAP_CACHE_ENTRIES = 64


def _round_up(value, alignment):
    return -(-value // alignment) * alignment


def _bat_array(raw):
    table = array.array("Q")
    if table.itemsize != 8:
        table = array.array("L")
    table.frombytes(raw)
    if sys.byteorder != "little":
        table.byteswap()
    return table


def _bits_lsb_first(raw):
    """A sector bitmap (bit i of byte j = sector 8j+i) as a '0'/'1' string, one character per sector."""
    if not raw:
        return ""
    return format(int.from_bytes(raw, "little"), "0%db" % (len(raw) * 8))[::-1]


class Header:
    """One of the two VHDX headers."""

    def __init__(self, raw, offset):
        (self.signature, self.checksum, self.sequence_number, self.file_write_guid, self.data_write_guid,
         self.log_guid, self.log_version, self.version, self.log_length, self.log_offset) = HEADER.unpack_from(raw)
        self.offset = offset
        self.raw = bytes(raw[:HEADER_SIZE])
        self.valid = (self.signature == HEADER_SIGNATURE and self.version == 1
                      and checksum_of(self.raw) == self.checksum)

    def pack(self):
        body = bytearray(self.raw)
        HEADER.pack_into(body, 0, HEADER_SIGNATURE, 0, self.sequence_number, self.file_write_guid,
                         self.data_write_guid, self.log_guid, self.log_version, self.version, self.log_length,
                         self.log_offset)
        return with_checksum(body)


class _LogOverlay:
    """The file as the replayed log leaves it, kept in memory: whole 4 KiB
    sectors written by data descriptors, zeroed ranges, a possibly larger size."""

    def __init__(self, size):
        self.size = size
        self.sectors = {}
        self.zeroes = []

    def write_sector(self, offset, data):
        self.sectors[offset] = data

    def write_zeroes(self, offset, length):
        end = offset + length
        for key in [key for key in self.sectors if offset <= key < end]:
            del self.sectors[key]
        self.zeroes.append((offset, end))

    def apply(self, offset, buffer):
        """Patch ``buffer`` (file bytes read at ``offset``) with the replayed log."""
        end = offset + len(buffer)
        for start, stop in self.zeroes:
            low, high = max(start, offset), min(stop, end)
            if low < high:
                buffer[low - offset:high - offset] = bytes(high - low)
        if self.sectors:
            first = offset // LOG_SECTOR_SIZE * LOG_SECTOR_SIZE
            for sector in range(first, end, LOG_SECTOR_SIZE):
                data = self.sectors.get(sector)
                if data is None:
                    continue
                low, high = max(sector, offset), min(sector + LOG_SECTOR_SIZE, end)
                buffer[low - offset:high - offset] = data[low - sector:high - sector]


class VhdxDriver(Driver):
    format_name = "vhdx"
    can_create = True
    can_write = True

    def __init__(self):
        super(VhdxDriver, self).__init__()
        self._file = None
        self.headers = [None, None]
        self.current = 0
        self.overlay = None
        self.log_replayed = False
        self.bat_offset = 0
        self.bat_length = 0
        self.metadata_offset = 0
        self.metadata_length = 0
        self.block_size = 0
        self.file_flags = 0
        self.logical_sector_size = 512
        self.physical_sector_size = 512
        self.page83 = None
        self.chunk_ratio = 0
        self.bat = None
        self.bat_entries = 0
        self.has_parent = False
        self.parent_locator = None
        self._bitmaps = {}
        self._bad_blocks = {}
        self._headers_updated = False
        self._occupied = []

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        return 100 if header[:8] == FILE_IDENTIFIER_SIGNATURE else 0

    # --------------------------------------------------------------- lifecycle
    def close(self):
        self._close_file()
        super(VhdxDriver, self).close()

    def _file_size(self):
        size = self._file.size()
        if self.overlay is not None:
            size = max(size, self.overlay.size)
        return size

    def _pread(self, offset, length, what):
        """``length`` bytes of the file at ``offset`` as the (replayed) log leaves them;
        FormatError naming ``what`` when they lie past the end of the file."""
        if offset < 0 or offset + length > self._file_size():
            raise CorruptImageError("%s at offset %d (%d bytes) lies past the end of the file (%d bytes)"
                                    % (what, offset, length, self._file_size()), self.path)
        data = self._file.pread(offset, length)
        if self.overlay is None:
            if len(data) != length:
                raise CorruptImageError("%s at offset %d: short read of %d of %d bytes"
                                        % (what, offset, len(data), length), self.path)
            return data
        buffer = bytearray(data)
        if len(buffer) < length:
            buffer.extend(bytes(length - len(buffer)))
        self.overlay.apply(offset, buffer)
        return bytes(buffer)

    def _open_structures(self, opener):
        path = self.path
        file_size = self._file.size()
        if file_size < HEADER_SECTION_SIZE:
            signature = self._file.pread(0, 8)
            if signature != FILE_IDENTIFIER_SIGNATURE:
                raise FormatError("not a VHDX image: expected the file type identifier %r at offset 0, found %r"
                                  % (FILE_IDENTIFIER_SIGNATURE, signature), path)
            raise FormatError("VHDX header section: the file has %d bytes, fewer than the %d of the header section"
                              % (file_size, HEADER_SECTION_SIZE), path)
        signature = self._file.pread(0, 8)
        if signature != FILE_IDENTIFIER_SIGNATURE:
            raise FormatError("not a VHDX image: expected the file type identifier %r at offset 0, found %r"
                              % (FILE_IDENTIFIER_SIGNATURE, signature), path)
        self._open_headers()
        self._open_log()
        self._open_region_table()
        self._open_metadata()
        self._open_bat()
        if self.has_parent:
            self._open_parent(opener)

    # ------------------------------------------------------------ headers
    def _open_headers(self):
        path = self.path
        headers = [Header(self._file.pread_exact(offset, HEADER_SIZE, "VHDX header %d" % (index + 1)), offset)
                   for index, offset in enumerate(HEADER_OFFSETS)]
        valid = [header.valid for header in headers]
        if not any(valid):
            raise FormatError("no valid VHDX header: header 1 (offset %d) and header 2 (offset %d) both have a wrong "
                              "signature, version or CRC-32C checksum (recorded 0x%08x and 0x%08x, computed 0x%08x "
                              "and 0x%08x)" % (HEADER_OFFSETS[0], HEADER_OFFSETS[1], headers[0].checksum,
                                               headers[1].checksum, checksum_of(headers[0].raw),
                                               checksum_of(headers[1].raw)), path)
        if valid[0] and valid[1]:
            first, second = headers[0].sequence_number, headers[1].sequence_number
            if first == second and headers[0].raw[8:] != headers[1].raw[8:]:
                raise CorruptImageError("VHDX headers 1 and 2 have the same sequence number %d but differ" % first,
                                        path)
            self.current = 1 if second > first else 0
        else:
            self.current = 0 if valid[0] else 1
        self.headers = headers
        header = headers[self.current]
        if header.log_version != 0:
            raise UnsupportedFeature("VHDX header: log version %d is not supported (expected 0)" % header.log_version,
                                     path)

    @property
    def header(self):
        return self.headers[self.current]

    def _update_headers(self, new_data_write_guid=False, clear_log=False):
        """Write the non-current header with the next sequence number, twice
        (spec 2.2.2.1: both headers end up current), as qemu does."""
        for repeat in range(2):
            del repeat
            active = self.headers[self.current]
            target = 1 - self.current
            updated = Header(active.raw, HEADER_OFFSETS[target])
            updated.sequence_number = active.sequence_number + 1
            if not self._headers_updated:
                updated.file_write_guid = uuid.uuid4().bytes_le
            if new_data_write_guid:
                updated.data_write_guid = uuid.uuid4().bytes_le
            if clear_log:
                updated.log_guid = bytes(16)
            raw = updated.pack()
            self._file.pwrite(HEADER_OFFSETS[target], raw)
            self._file.flush()
            self.headers[target] = Header(raw, HEADER_OFFSETS[target])
            self.current = target
            self._headers_updated = True
            new_data_write_guid = False

    # ---------------------------------------------------------------- log
    def _open_log(self):
        path = self.path
        header = self.header
        file_size = self._file.size()
        if header.log_offset < HEADER_SECTION_SIZE or header.log_offset % MiB:
            raise CorruptImageError("VHDX header: log offset %d is not a multiple of 1 MiB past the header section"
                                    % header.log_offset, path)
        if header.log_guid == bytes(16) or header.log_length == 0:
            return
        if header.log_length % MiB:
            raise CorruptImageError("VHDX header: log length %d is not a multiple of 1 MiB" % header.log_length, path)
        if header.log_offset + header.log_length > file_size:
            raise CorruptImageError("VHDX log at offset %d (%d bytes) lies past the end of the file (%d bytes)"
                                    % (header.log_offset, header.log_length, file_size), path)
        if header.log_length > MAX_LOG_BYTES:
            raise UnsupportedFeature("VHDX log of %d bytes needs replaying, more than the %d bytes this library reads"
                                     % (header.log_length, MAX_LOG_BYTES), path)
        log = self._file.pread_exact(header.log_offset, header.log_length, "VHDX log")
        entries = self._active_sequence(log, header)
        if not entries:
            return
        if self.readonly:
            self.overlay = _LogOverlay(file_size)
            target = self.overlay
        else:
            target = self
        for entry in entries:
            self._replay_entry(entry, target)
        if self.readonly:
            return
        self._file.flush()
        self._update_headers(new_data_write_guid=True, clear_log=True)
        self.log_replayed = True

    def write_sector(self, offset, data):
        self._file.pwrite(offset, data)

    def _replay_entry(self, entry, target):
        path = self.path
        (flushed_file_offset, last_file_offset, operations) = entry
        file_size = self._file_size() if target is self else max(target.size, self._file.size())
        if flushed_file_offset > file_size:
            raise CorruptImageError("VHDX log entry: FlushedFileOffset %d is past the end of the file (%d bytes); the "
                                    "image is truncated" % (flushed_file_offset, file_size), path)
        limit = max(file_size, _round_up(last_file_offset, MiB))
        for offset, data, length in operations:
            if offset + length > limit:
                raise CorruptImageError("VHDX log descriptor: file offset %d (%d bytes) is past the end of the file "
                                        "(%d bytes) and its LastFileOffset (%d)"
                                        % (offset, length, file_size, last_file_offset), path)
            if data is None:
                if target is self:
                    self._file.write_zeroes(offset, length)
                else:
                    target.write_zeroes(offset, length)
            else:
                target.write_sector(offset, data)
        if file_size < last_file_offset:
            new_size = _round_up(last_file_offset, MiB)
            if target is self:
                if self._file.size() < new_size:
                    self._file.truncate(new_size)
            else:
                target.size = max(target.size, new_size)

    def _active_sequence(self, log, header):
        """Entries of the active log sequence (spec 2.3.3), each
        (flushed file offset, last file offset, [(file offset, sector bytes or None, length)])."""
        length = len(log)
        sectors = length // LOG_SECTOR_SIZE

        def read(position, count):
            start = position * LOG_SECTOR_SIZE
            end = start + count * LOG_SECTOR_SIZE
            if end <= length:
                return log[start:end]
            return log[start:] + log[:end - length]

        parsed = {}
        checksummed = [0]

        def entry_at(position, expected_sequence):
            if position not in parsed:
                parsed[position] = parse_entry(position)
            entry = parsed[position]
            if entry is None or (expected_sequence is not None and entry[3] != expected_sequence):
                return None
            return entry

        def parse_entry(position):
            """The valid entry at ``position``, or None.  The cheap checks come first (a header, descriptor
            or data sector has one role only), and the CRC-32C work is bounded by twice the log size."""
            raw = read(position, 1)
            (signature, checksum, entry_length, tail, sequence, descriptor_count, _reserved, log_guid,
             flushed_file_offset, last_file_offset) = LOG_ENTRY_HEADER.unpack_from(raw)
            if (signature != LOG_ENTRY_SIGNATURE or entry_length == 0 or entry_length % LOG_SECTOR_SIZE
                    or entry_length > length or sequence == 0 or log_guid != header.log_guid):
                return None
            entry_sectors = entry_length // LOG_SECTOR_SIZE
            descriptor_sectors = (descriptor_count + 2 + 127) // 128
            if descriptor_sectors > entry_sectors:
                return None
            raw = read(position, entry_sectors)
            operations = []
            data_index = descriptor_sectors
            for index in range(descriptor_count):
                (signature, trailing, leading, file_offset, descriptor_sequence) = LOG_DESCRIPTOR.unpack_from(
                    raw, LOG_ENTRY_HEADER.size + index * LOG_DESCRIPTOR.size)
                if descriptor_sequence != sequence or file_offset % LOG_SECTOR_SIZE:
                    return None
                if signature == LOG_ZERO_SIGNATURE:
                    # For a zero descriptor the second field is the zero length.
                    zero_length = leading
                    if zero_length % LOG_SECTOR_SIZE or zero_length > MAX_LOG_ZERO_LENGTH:
                        return None
                    operations.append((file_offset, None, zero_length))
                elif signature == LOG_DATA_DESCRIPTOR_SIGNATURE:
                    if data_index >= entry_sectors:
                        return None
                    (data_signature, high, body, low) = LOG_DATA_SECTOR.unpack_from(
                        raw, data_index * LOG_SECTOR_SIZE)
                    data_index += 1
                    if data_signature != LOG_DATA_SIGNATURE or (high << 32 | low) != sequence:
                        return None
                    operations.append((file_offset, struct.pack("<Q", leading) + body + struct.pack("<I", trailing),
                                       LOG_SECTOR_SIZE))
                else:
                    return None
            checksummed[0] += len(raw)
            if checksummed[0] > 2 * length:
                raise UnsupportedFeature("VHDX log: its candidate entries overlap too much to be checked (more than "
                                         "twice the %d-byte log to checksum)" % length, self.path)
            if checksum_of(raw) != checksum:
                return None
            return (position, entry_sectors, tail, sequence, (flushed_file_offset, last_file_offset, operations))

        best_key = None
        best_chain = []
        for start in range(sectors):
            first = entry_at(start, None)
            if first is None:
                continue
            chain = [first]
            used = first[1]
            position = (start + first[1]) % sectors
            while used < sectors:
                following = entry_at(position, chain[-1][3] + 1)
                if following is None or used + following[1] > sectors:
                    break
                chain.append(following)
                used += following[1]
                position = (position + following[1]) % sectors
            # Spec 2.3.3: a sequence is valid when its head entry's tail is one of its entries; it is
            # replayed from that tail entry.  The newest valid sequence (head sequence number) is active.
            tail = chain[-1][2]
            starts = [index for index, item in enumerate(chain) if item[0] * LOG_SECTOR_SIZE == tail]
            if not starts:
                continue
            chain = chain[starts[0]:]
            key = (chain[-1][3], len(chain))
            if best_key is None or key > best_key:
                best_key, best_chain = key, chain
        chain = best_chain
        return [item[4] for item in chain]

    # ------------------------------------------------------- region table
    def _open_region_table(self):
        path = self.path
        table = None
        problems = []
        for copy, offset in enumerate(REGION_TABLE_OFFSETS):
            raw = self._pread(offset, REGION_TABLE_SIZE, "VHDX region table %d" % (copy + 1))
            signature, checksum, count, _reserved = REGION_TABLE_HEADER.unpack_from(raw)
            if signature != REGION_TABLE_SIGNATURE:
                problems.append("copy %d at offset %d: signature %r, expected %r"
                                % (copy + 1, offset, signature, REGION_TABLE_SIGNATURE))
                continue
            computed = checksum_of(raw)
            if computed != checksum:
                problems.append("copy %d at offset %d: CRC-32C checksum 0x%08x, computed 0x%08x"
                                % (copy + 1, offset, checksum, computed))
                continue
            if count > REGION_TABLE_MAX_ENTRIES:
                problems.append("copy %d at offset %d: %d entries, at most %d allowed"
                                % (copy + 1, offset, count, REGION_TABLE_MAX_ENTRIES))
                continue
            table = (raw, count)
            break
        if table is None:
            raise FormatError("no valid VHDX region table: %s" % "; ".join(problems), path)
        raw, count = table
        file_size = self._file_size()
        regions = {}
        occupied = [(0, HEADER_SECTION_SIZE, "header section")]
        if self.header.log_length:
            occupied.append((self.header.log_offset, self.header.log_offset + self.header.log_length, "log"))
        for index in range(count):
            guid, offset, length, flags = REGION_TABLE_ENTRY.unpack_from(
                raw, REGION_TABLE_HEADER.size + index * REGION_TABLE_ENTRY.size)
            guid = _guid(guid)
            if guid not in (BAT_REGION_GUID, METADATA_REGION_GUID):
                if flags & REGION_REQUIRED:
                    raise UnsupportedFeature("VHDX region table: unknown required region %s" % guid, path)
                continue
            if guid in regions:
                raise CorruptImageError("VHDX region table: region %s appears twice" % guid, path)
            if offset % MiB or length % MiB or length == 0:
                raise CorruptImageError("VHDX region table: region %s at offset %d, length %d is not aligned to 1 MiB"
                                        % (guid, offset, length), path)
            if offset + length > file_size:
                raise CorruptImageError("VHDX region table: region %s at offset %d (%d bytes) lies past the end of the "
                                        "file (%d bytes)" % (guid, offset, length, file_size), path)
            for low, high, what in occupied:
                if offset < high and offset + length > low:
                    raise CorruptImageError("VHDX region table: region %s at [%d, %d) overlaps the %s at [%d, %d)"
                                            % (guid, offset, offset + length, what, low, high), path)
            occupied.append((offset, offset + length, "BAT" if guid == BAT_REGION_GUID else "metadata region"))
            regions[guid] = (offset, length)
        for guid, name in ((BAT_REGION_GUID, "BAT"), (METADATA_REGION_GUID, "metadata")):
            if guid not in regions:
                raise FormatError("VHDX region table: no %s region (%s)" % (name, guid), path)
        self.bat_offset, self.bat_length = regions[BAT_REGION_GUID]
        self.metadata_offset, self.metadata_length = regions[METADATA_REGION_GUID]
        self._occupied = occupied

    # ----------------------------------------------------------- metadata
    def _metadata_item(self, items, guid, name, size=None):
        offset, length = items[guid]
        if size is not None and length < size:
            raise CorruptImageError("VHDX metadata item %s (%s): %d bytes, expected %d" % (name, guid, length, size),
                                    self.path)
        return self._pread(self.metadata_offset + offset, length if size is None else size,
                           "VHDX metadata item %s" % name)

    def _open_metadata(self):
        path = self.path
        table = self._pread(self.metadata_offset, METADATA_TABLE_SIZE, "VHDX metadata table")
        signature, _reserved, count = METADATA_TABLE_HEADER.unpack_from(table)
        if signature != METADATA_SIGNATURE:
            raise FormatError("VHDX metadata table at offset %d: signature %r, expected %r"
                              % (self.metadata_offset, signature, METADATA_SIGNATURE), path)
        if count > METADATA_MAX_ENTRIES:
            raise CorruptImageError("VHDX metadata table: %d entries, at most %d allowed" % (count, METADATA_MAX_ENTRIES),
                                    path)
        items = {}
        for index in range(count):
            guid, offset, length, flags = METADATA_TABLE_ENTRY.unpack_from(
                table, METADATA_TABLE_HEADER.size + index * METADATA_TABLE_ENTRY.size)
            guid = _guid(guid)
            if guid not in KNOWN_METADATA:
                if flags & METADATA_IS_REQUIRED:
                    raise UnsupportedFeature("VHDX metadata table: unknown required metadata item %s" % guid, path)
                continue
            if guid in items:
                raise CorruptImageError("VHDX metadata table: item %s appears twice" % guid, path)
            if length and (offset < METADATA_TABLE_SIZE or offset + length > self.metadata_length):
                raise CorruptImageError("VHDX metadata item %s at offset %d (%d bytes) lies outside the metadata "
                                        "region (%d bytes, items from offset %d)"
                                        % (guid, offset, length, self.metadata_length, METADATA_TABLE_SIZE), path)
            items[guid] = (offset, length)
        for guid, name in ((FILE_PARAMETERS_GUID, "file parameters"), (VIRTUAL_DISK_SIZE_GUID, "virtual disk size"),
                           (PAGE83_GUID, "page 83 data"), (LOGICAL_SECTOR_SIZE_GUID, "logical sector size"),
                           (PHYSICAL_SECTOR_SIZE_GUID, "physical sector size")):
            if guid not in items:
                raise CorruptImageError("VHDX metadata: the required item %s (%s) is missing" % (name, guid), path)
        self.block_size, self.file_flags = FILE_PARAMETERS.unpack(
            self._metadata_item(items, FILE_PARAMETERS_GUID, "file parameters", 8))
        (virtual_size,) = struct.unpack("<Q", self._metadata_item(items, VIRTUAL_DISK_SIZE_GUID, "virtual disk size", 8))
        self.page83 = _guid(self._metadata_item(items, PAGE83_GUID, "page 83 data", 16))
        (self.logical_sector_size,) = struct.unpack(
            "<I", self._metadata_item(items, LOGICAL_SECTOR_SIZE_GUID, "logical sector size", 4))
        (self.physical_sector_size,) = struct.unpack(
            "<I", self._metadata_item(items, PHYSICAL_SECTOR_SIZE_GUID, "physical sector size", 4))
        block_size = self.block_size
        if block_size < MIN_BLOCK_SIZE or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise CorruptImageError("VHDX file parameters: block size %d is not a power of two between %d and %d"
                                    % (block_size, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE), path)
        if self.logical_sector_size not in SECTOR_SIZES:
            raise CorruptImageError("VHDX metadata: logical sector size %d, expected 512 or 4096"
                                    % self.logical_sector_size, path)
        if self.physical_sector_size not in SECTOR_SIZES:
            raise CorruptImageError("VHDX metadata: physical sector size %d, expected 512 or 4096"
                                    % self.physical_sector_size, path)
        if virtual_size > MAX_VIRTUAL_SIZE or virtual_size % self.logical_sector_size:
            raise CorruptImageError("VHDX metadata: virtual disk size %d is not a multiple of the logical sector size "
                                    "%d or is larger than 64 TiB" % (virtual_size, self.logical_sector_size), path)
        self.virtual_size = virtual_size
        self.chunk_ratio = SECTORS_PER_BITMAP * self.logical_sector_size // block_size
        self.has_parent = bool(self.file_flags & HAS_PARENT)
        if self.has_parent:
            if PARENT_LOCATOR_GUID not in items:
                raise CorruptImageError("VHDX file parameters: has_parent is set but there is no parent locator "
                                        "metadata item", path)
            offset, length = items[PARENT_LOCATOR_GUID]
            if length > MAX_PARENT_LOCATOR_SIZE:
                raise CorruptImageError("VHDX parent locator: %d bytes, more than the %d allowed"
                                        % (length, MAX_PARENT_LOCATOR_SIZE), path)
            self.parent_locator = self._parse_parent_locator(self._metadata_item(items, PARENT_LOCATOR_GUID,
                                                                                 "parent locator"))

    def _parse_parent_locator(self, raw):
        path = self.path
        if len(raw) < PARENT_LOCATOR_HEADER.size:
            raise CorruptImageError("VHDX parent locator: %d bytes, shorter than its header" % len(raw), path)
        locator_type, _reserved, count = PARENT_LOCATOR_HEADER.unpack_from(raw)
        if _guid(locator_type) != VHDX_PARENT_LOCATOR_TYPE:
            raise UnsupportedFeature("VHDX parent locator type %s is not supported (expected the VHDX parent type %s)"
                                     % (_guid(locator_type), VHDX_PARENT_LOCATOR_TYPE), path)
        if PARENT_LOCATOR_HEADER.size + count * PARENT_LOCATOR_ENTRY.size > len(raw):
            raise CorruptImageError("VHDX parent locator: %d key-value entries do not fit in its %d bytes"
                                    % (count, len(raw)), path)
        entries = {}
        for index in range(count):
            key_offset, value_offset, key_length, value_length = PARENT_LOCATOR_ENTRY.unpack_from(
                raw, PARENT_LOCATOR_HEADER.size + index * PARENT_LOCATOR_ENTRY.size)
            if key_offset + key_length > len(raw) or value_offset + value_length > len(raw):
                raise CorruptImageError("VHDX parent locator entry %d: key or value lies outside the %d-byte locator"
                                        % (index, len(raw)), path)
            key = raw[key_offset:key_offset + key_length].decode("utf-16-le", "replace")
            value = raw[value_offset:value_offset + value_length].decode("utf-16-le", "replace")
            entries[key] = value
        return entries

    # ---------------------------------------------------------------- BAT
    def _open_bat(self):
        path = self.path
        blocks = -(-self.virtual_size // self.block_size)
        chunk_ratio = self.chunk_ratio
        if self.has_parent:
            entries = -(-blocks // chunk_ratio) * (chunk_ratio + 1)
        else:
            entries = blocks + (blocks - 1) // chunk_ratio if blocks else 0
        if entries * 8 > self.bat_length:
            raise CorruptImageError("VHDX BAT region of %d bytes is too small for the %d entries a disk of %d bytes "
                                    "with %d-byte blocks needs" % (self.bat_length, entries, self.virtual_size,
                                                                   self.block_size), path)
        if entries * 8 > MAX_BAT_BYTES:
            raise UnsupportedFeature("VHDX BAT of %d bytes (%d entries) is larger than the %d bytes this library reads"
                                     % (entries * 8, entries, MAX_BAT_BYTES), path)
        self.bat_entries = entries
        self.bat = _bat_array(self._pread(self.bat_offset, entries * 8, "VHDX BAT"))
        file_size = self._file_size()
        block_size = self.block_size
        stride = chunk_ratio + 1
        bat = self.bat
        for index in [index for index, entry in enumerate(bat) if entry & BAT_STATE_MASK]:
            entry = bat[index]
            state = entry & BAT_STATE_MASK
            is_bitmap = index % stride == chunk_ratio
            where = "sector bitmap entry" if is_bitmap else "payload block entry"
            if is_bitmap:
                if state != SB_BLOCK_PRESENT:
                    raise CorruptImageError("VHDX BAT %s %d: state %d, expected 0 (not present) or 6 (present)"
                                            % (where, index, state), path)
                span = SECTOR_BITMAP_SIZE
            elif state in ABSENT_STATES:
                continue
            elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and not self.has_parent:
                raise CorruptImageError("VHDX BAT entry %d: state PARTIALLY_PRESENT in a disk without a parent"
                                        % index, path)
            elif state not in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT):
                raise CorruptImageError("VHDX BAT entry %d: invalid payload block state %d" % (index, state), path)
            else:
                # The last block may exist only in part (qemu-img creates fixed images so, and accepts them).
                block = index - index // stride
                span = min(block_size, self.virtual_size - block * block_size)
            offset = entry & BAT_OFFSET_MASK
            if offset < HEADER_SECTION_SIZE:
                raise CorruptImageError("VHDX BAT %s %d: file offset %d lies in the header section"
                                        % (where, index, offset), path)
            for low, high, what in self._occupied:
                if offset < high and offset + span > low:
                    raise CorruptImageError("VHDX BAT %s %d: block at [%d, %d) overlaps the %s at [%d, %d)"
                                            % (where, index, offset, offset + span, what, low, high), path)
            if offset + span > file_size:
                # As qemu-img check, counted by check(); reading the block fails.
                self._bad_blocks[index] = ("VHDX BAT %s %d: block at offset %d (%d bytes) ends past the end of the file "
                                           "(%d bytes); BAT entry state: %s"
                                           % (where, index, offset, span, file_size, STATE_NAMES[state]))

    # ------------------------------------------------------------- parent
    def _open_parent(self, opener):
        path = self.path
        locator = self.parent_locator
        linkages = [locator.get(key) for key in ("parent_linkage", "parent_linkage2")]
        linkages = [value for value in linkages if value and value.strip("{}") != str(uuid.UUID(int=0))]
        if not linkages:
            raise CorruptImageError("differencing VHDX: the parent locator has no parent_linkage entry", path)
        names = [(key, locator[key]) for key in ("relative_path",) if locator.get(key)]
        if not names:
            raise FormatError("differencing VHDX: the parent locator has no relative_path entry (entries: %s); "
                              "only relative_path is followed" % ", ".join(sorted(locator)), path)
        key, windows_path = names[0]
        name = locator_file_name(windows_path)
        if opener is None:
            raise PolicyError("differencing VHDX: parent %r (%s %r) cannot be opened: no opener (path policy) was "
                              "given" % (name, key, windows_path), path)
        try:
            parent = opener(path, name, "vhdx")
        except (PolicyError, ImageNotFoundError) as exc:
            raise type(exc)("differencing VHDX: failed to open the parent disk with locator %s = %r (%s); other "
                            "locator entries: %s" % (key, windows_path, exc,
                                                     ", ".join("%s = %r" % item for item in sorted(locator.items())
                                                               if item[0] != key)), path) from exc
        self.backing_filename = name
        self.backing_format = "vhdx"
        if parent is None:
            return
        self.backing = parent
        parent_guid = getattr(parent, "header", None)
        parent_guid = str(_guid(parent_guid.data_write_guid)) if parent_guid is not None else None
        wanted = [value.strip("{}").lower() for value in linkages]
        if parent_guid not in wanted:
            raise FormatError("differencing VHDX: parent %s (%s %r) has DataWriteGuid %s, the child's parent_linkage "
                              "expects %s" % (parent.path, key, windows_path, parent_guid or "(none: not a VHDX)",
                                              " or ".join(linkages)), path)
        if parent.logical_sector_size != self.logical_sector_size:
            raise FormatError("differencing VHDX: parent %s has %d-byte logical sectors, the child %d (they must be "
                              "the same)" % (parent.path, parent.logical_sector_size, self.logical_sector_size), path)

    # -------------------------------------------------------------------- data
    def _check_range(self, offset, length, what):
        if offset < 0 or length < 0:
            raise ImageError("%s at offset %d, length %d: negative offset or length" % (what, offset, length),
                             self.path)
        if offset + length > self.virtual_size:
            raise ImageError("%s at offset %d, length %d goes beyond the end of the image (virtual size %d)"
                             % (what, offset, length, self.virtual_size), self.path)

    def _bat_index(self, block):
        return block + block // self.chunk_ratio

    def _sector_bits(self, block):
        """Bits of the sector bitmap for payload block ``block`` ('1' = sector in this file)."""
        bits = self._bitmaps.get(block)
        if bits is None:
            chunk = block // self.chunk_ratio
            index = chunk * (self.chunk_ratio + 1) + self.chunk_ratio
            entry = self.bat[index]
            if index in self._bad_blocks:
                raise CorruptImageError(self._bad_blocks[index], self.path)
            sectors = self.block_size // self.logical_sector_size
            if entry & BAT_STATE_MASK != SB_BLOCK_PRESENT:
                raise CorruptImageError("VHDX BAT: payload block %d is PARTIALLY_PRESENT but the sector bitmap block of "
                                        "its chunk (BAT entry %d) is not present" % (block, index), self.path)
            start = (entry & BAT_OFFSET_MASK) + (block % self.chunk_ratio) * sectors // 8
            bits = _bits_lsb_first(self._pread(start, sectors // 8, "VHDX sector bitmap of block %d" % block))
            if len(self._bitmaps) >= BITMAP_CACHE_ENTRIES:
                self._bitmaps.clear()
            self._bitmaps[block] = bits
        return bits

    def _map(self, offset, length):
        """(guest offset, length, kind, host offset) runs of this layer."""
        runs = []
        end = offset + length
        block_size = self.block_size
        absent = UNALLOCATED if self.has_parent else ZERO
        sector_size = self.logical_sector_size
        while offset < end:
            block = offset // block_size
            block_start = block * block_size
            count = min(end, block_start + block_size) - offset
            index = self._bat_index(block)
            entry = self.bat[index]
            state = entry & BAT_STATE_MASK
            if state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT) and index in self._bad_blocks:
                raise CorruptImageError(self._bad_blocks[index], self.path)
            host = entry & BAT_OFFSET_MASK
            if state == PAYLOAD_BLOCK_FULLY_PRESENT:
                runs.append((offset, count, DATA, host + offset - block_start))
            elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                bits = self._sector_bits(block)
                first = (offset - block_start) // sector_size
                last = -(-(offset + count - block_start) // sector_size)
                sector = first
                while sector < last:
                    is_set = bits[sector] == "1"
                    stop = bits.find("0" if is_set else "1", sector, last)
                    if stop < 0:
                        stop = last
                    low = max(offset, block_start + sector * sector_size)
                    high = min(offset + count, block_start + stop * sector_size)
                    if is_set:
                        runs.append((low, high - low, DATA, host + low - block_start))
                    else:
                        runs.append((low, high - low, UNALLOCATED, None))
                    sector = stop
            elif state == PAYLOAD_BLOCK_NOT_PRESENT:
                runs.append((offset, count, absent, None))
            else:
                # ZERO, UNDEFINED and UNMAPPED read as zeroes, in a differencing disk too (spec 2.5.1.1).
                runs.append((offset, count, ZERO, None))
            offset += count
        return runs

    def read(self, offset, length):
        self._check_range(offset, length, "read")
        runs = self._map(offset, length)
        if len(runs) == 1 and runs[0][2] == DATA:
            # One run (the usual read inside a fully present block): one pread, no copy.
            return self._pread(runs[0][3], length, "VHDX payload block data")
        # Several runs: read into one buffer, returned as it is (copying megabytes in
        # Python costs more than the reads).
        out = bytearray(length)
        self._read_runs_into(memoryview(out), offset, runs, self._read_host, fresh=True)
        return out

    def read_into(self, offset, view):
        self._check_range(offset, len(view), "read")
        self._read_runs_into(view, offset, self._map(offset, len(view)), self._read_host)

    def _read_host(self, host, part, _kind, _guest):
        self._pread_into(host, part, "VHDX payload block data")

    def _pread_into(self, offset, view, what):
        """_pread(offset, len(view), what) into ``view``."""
        if self.overlay is not None:
            view[:] = self._pread(offset, len(view), what)
            return
        length = len(view)
        if offset < 0 or offset + length > self._file_size():
            raise CorruptImageError("%s at offset %d (%d bytes) lies past the end of the file (%d bytes)"
                                    % (what, offset, length, self._file_size()), self.path)
        count = pread_into(self._file, offset, view)
        if count != length:
            raise CorruptImageError("%s at offset %d: short read of %d of %d bytes"
                                    % (what, offset, count, length), self.path)

    def host_file_of_offsets(self):
        # a log replayed into memory (read-only open of a dirty image) changes what the file's ranges read
        return self._file if self.overlay is None else None

    def block_status(self, offset, length):
        if length <= 0:
            return []
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

    # ------------------------------------------------------------------ write
    def _check_write(self, offset, length, what):
        if self.readonly:
            raise ReadOnlyImageError("image is opened read-only", self.path)
        self._check_range(offset, length, what)
        if self.has_parent:
            raise UnsupportedOperation("writing differencing VHDX images is not supported (qemu-img cannot either)",
                                       self.path)

    def _first_write(self):
        if not self._headers_updated or self.header.log_guid != bytes(16):
            self._update_headers(new_data_write_guid=True, clear_log=True)

    def _allocate_block(self, block, index):
        """A new payload block at the 1 MiB-aligned end of the file (zero-filled by the extension)."""
        image_file = self._file
        start = _round_up(image_file.size(), MiB)
        for low, high, what in self._occupied:
            if start < high and start + self.block_size > low:
                raise CorruptImageError("VHDX: a new block at [%d, %d) would overlap the %s at [%d, %d)"
                                        % (start, start + self.block_size, what, low, high), self.path)
        image_file.truncate(start + self.block_size)
        return start

    def _set_bat_entry(self, index, entry):
        self._file.pwrite(self.bat_offset + index * 8, struct.pack("<Q", entry))
        self.bat[index] = entry

    def write(self, offset, data):
        length = len(data)
        self._check_write(offset, length, "write")
        if not length:
            return
        self._first_write()
        view = memoryview(data)
        end = offset + length
        block_size = self.block_size
        while offset < end:
            block = offset // block_size
            block_start = block * block_size
            count = min(end, block_start + block_size) - offset
            index = self._bat_index(block)
            entry = self.bat[index]
            pos = length - (end - offset)
            if entry & BAT_STATE_MASK == PAYLOAD_BLOCK_FULLY_PRESENT:
                if index in self._bad_blocks:
                    raise CorruptImageError(self._bad_blocks[index], self.path)
                self._file.pwrite((entry & BAT_OFFSET_MASK) + offset - block_start, view[pos:pos + count])
            else:
                host = self._allocate_block(block, index)
                self._file.pwrite(host + offset - block_start, view[pos:pos + count])
                # Data before the BAT entry that makes it visible.
                self._file.flush()
                self._set_bat_entry(index, host | PAYLOAD_BLOCK_FULLY_PRESENT)
            offset += count

    def write_zeroes(self, offset, length, may_unmap=False):
        self._check_write(offset, length, "write_zeroes")
        if not length:
            return
        # Blocks in the absent states already read as zeroes.
        runs = [run for run in self._map(offset, length) if run[2] == DATA]
        if not runs:
            return
        self._first_write()
        for guest, count, kind, host in runs:
            del guest, kind
            if may_unmap and not self._file.is_block_device:
                self._file.punch_hole(host, count)
            else:
                self._file.write_zeroes(host, count)

    def flush(self):
        if self._file is not None and not self.readonly:
            self._file.flush()

    # ----------------------------------------------------------------- queries
    def info(self):
        return {"cluster-size": self.block_size}

    def creation_options(self):
        # A fixed image leaves its blocks allocated.
        return {"subformat": "differencing" if self.has_parent
                else "fixed" if self.file_flags & LEAVE_BLOCKS_ALLOCATED else "dynamic"}

    def check(self, repair=None):
        """qemu-img check for vhdx: a log replayed on this (writable) open counts
        as a fixed corruption; payload blocks past the end of the file are
        corruptions.  A log left to replay (read-only open) is a corruption
        that ``repair="all"`` fixes."""
        result = {"check-errors": 0}
        corruptions = len(self._bad_blocks)
        if self.overlay is not None:
            corruptions += 1
        if self.log_replayed:
            result["corruptions-fixed"] = 1
        if corruptions:
            result["corruptions"] = corruptions
        return result

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        options = dict(options or {})
        option_size = options.pop("size", None)
        subformat = options.pop("subformat", None) or "dynamic"
        block_size = options.pop("block_size", 0)
        log_size = options.pop("log_size", None)
        block_state_zero = options.pop("block_state_zero", True)
        preallocation = options.pop("preallocation", None) or "off"
        options.pop("nocow", None)
        options.pop("extent_size_hint", None)
        if backing is not None or options.get("backing_file"):
            raise InvalidOptionError("vhdx images cannot have a backing file (qemu-img cannot create differencing "
                                     "VHDX images)", path)
        options.pop("backing_file", None)
        options.pop("backing_fmt", None)
        if options:
            raise InvalidOptionError("invalid option(s) for vhdx images: %s (supported: subformat, block_size, "
                                     "log_size, block_state_zero)" % ", ".join(sorted(options)), path)
        if subformat not in SUBFORMATS:
            raise InvalidOptionError("vhdx create: invalid subformat %r (expected one of: %s)"
                                     % (subformat, ", ".join(SUBFORMATS)), path)
        if preallocation != "off":
            raise InvalidOptionError("vhdx create: preallocation %r is not supported (expected off)" % (preallocation,),
                                     path)
        if block_state_zero in ("on", "off"):
            block_state_zero = block_state_zero == "on"
        if not isinstance(block_state_zero, bool):
            raise InvalidOptionError("vhdx create: block_state_zero must be on or off, found %r" % (block_state_zero,),
                                     path)
        if size is None:
            size = option_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)" % (size,), path)
        size = _round_up(size, 512)
        if size > MAX_VIRTUAL_SIZE:
            raise InvalidOptionError("vhdx create: image size %d is too large; the maximum is 64 TiB" % size, path)
        for name, value in (("block_size", block_size), ("log_size", log_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise InvalidOptionError("vhdx create: %s must be a number of bytes, found %r" % (name, value), path)
        if log_size is None:
            log_size = DEFAULT_LOG_SIZE
        log_size = _round_up(log_size, MiB)
        if log_size < MiB or log_size >= 4 * GiB:
            raise InvalidOptionError("vhdx create: log_size must be a multiple of 1 MiB between 1 MiB and 4 GiB, found "
                                     "%d" % log_size, path)
        if not block_size:
            if size > 32 * TiB:
                block_size = 64 * MiB
            elif size > 100 * GiB:
                block_size = 32 * MiB
            elif size > 1 * GiB:
                block_size = 16 * MiB
            else:
                block_size = 8 * MiB
        block_size = _round_up(block_size, MiB)
        if block_size & (block_size - 1) or block_size > MAX_BLOCK_SIZE:
            raise InvalidOptionError("vhdx create: block_size must be a power of two between 1 MiB and 256 MiB, found "
                                     "%d" % block_size, path)
        _create(path, size, subformat, block_size, log_size, block_state_zero)


def _create(path, size, subformat, block_size, log_size, block_state_zero):
    """Write a new image with qemu-img 7.2's layout: header section, log,
    BAT, metadata, then 5 MiB of room before the first payload block."""
    sector_size = 512
    chunk_ratio = SECTORS_PER_BITMAP * sector_size // block_size
    blocks = -(-size // block_size)
    entries = blocks + (blocks - 1) // chunk_ratio if blocks else 0
    log_offset = HEADER_SECTION_SIZE
    bat_offset = _round_up(log_offset + log_size, MiB)
    bat_length = _round_up(entries * 8, MiB)
    if entries * 8 > MAX_BAT_BYTES:
        raise InvalidOptionError("vhdx create: a BAT of %d entries is larger than the %d bytes this library writes"
                                 % (entries, MAX_BAT_BYTES), path)
    metadata_offset = _round_up(bat_offset + bat_length, MiB)
    data_offset = bat_offset + bat_length + DATA_GAP
    fixed = subformat == "fixed"

    file_identifier = FILE_IDENTIFIER_SIGNATURE + CREATOR.encode("utf-16-le")
    sequence = random.getrandbits(32)
    file_write_guid, data_write_guid = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
    headers = []
    for number in range(2):
        body = bytearray(HEADER_SIZE)
        HEADER.pack_into(body, 0, HEADER_SIGNATURE, 0, sequence + number, file_write_guid, data_write_guid,
                         bytes(16), 0, 1, log_size, log_offset)
        headers.append(with_checksum(body))
    region_table = bytearray(REGION_TABLE_SIZE)
    REGION_TABLE_HEADER.pack_into(region_table, 0, REGION_TABLE_SIGNATURE, 0, 2, 0)
    REGION_TABLE_ENTRY.pack_into(region_table, REGION_TABLE_HEADER.size, BAT_REGION_GUID.bytes_le, bat_offset,
                                 bat_length, REGION_REQUIRED)
    REGION_TABLE_ENTRY.pack_into(region_table, REGION_TABLE_HEADER.size + REGION_TABLE_ENTRY.size,
                                 METADATA_REGION_GUID.bytes_le, metadata_offset, METADATA_REGION_SIZE, REGION_REQUIRED)
    region_table = with_checksum(region_table)

    items = [
        (FILE_PARAMETERS_GUID, FILE_PARAMETERS.pack(block_size, LEAVE_BLOCKS_ALLOCATED if fixed else 0),
         METADATA_IS_REQUIRED),
        (VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", size), METADATA_IS_REQUIRED | METADATA_IS_VIRTUAL_DISK),
        (PAGE83_GUID, uuid.uuid4().bytes_le, METADATA_IS_REQUIRED | METADATA_IS_VIRTUAL_DISK),
        (LOGICAL_SECTOR_SIZE_GUID, struct.pack("<I", sector_size), METADATA_IS_REQUIRED | METADATA_IS_VIRTUAL_DISK),
        (PHYSICAL_SECTOR_SIZE_GUID, struct.pack("<I", sector_size), METADATA_IS_REQUIRED | METADATA_IS_VIRTUAL_DISK),
    ]
    metadata_table = bytearray(METADATA_TABLE_HEADER.pack(METADATA_SIGNATURE, 0, len(items)))
    item_bytes = b""
    for guid, value, flags in items:
        metadata_table += METADATA_TABLE_ENTRY.pack(guid.bytes_le, METADATA_ITEMS_OFFSET + len(item_bytes),
                                                    len(value), flags)
        item_bytes += value

    bat = None
    if fixed or block_state_zero:
        bat = array.array("Q") if array.array("Q").itemsize == 8 else array.array("L")
        bat.extend([0] * entries)
        for block in range(blocks):
            index = block + block // chunk_ratio
            if block_state_zero:
                bat[index] = PAYLOAD_BLOCK_ZERO
            else:
                bat[index] = _round_up(data_offset + block * block_size, MiB) | PAYLOAD_BLOCK_FULLY_PRESENT
        if sys.byteorder != "little":
            bat.byteswap()

    image_file = ImageFile(path, create=True)
    try:
        image_file.truncate(data_offset + size if fixed else data_offset)
        image_file.pwrite(0, file_identifier)
        for offset, header in zip(HEADER_OFFSETS, headers):
            image_file.pwrite(offset, header)
        for offset in REGION_TABLE_OFFSETS:
            image_file.pwrite(offset, region_table)
        if bat is not None:
            image_file.pwrite(bat_offset, bat.tobytes())
        image_file.pwrite(metadata_offset, bytes(metadata_table))
        image_file.pwrite(metadata_offset + METADATA_ITEMS_OFFSET, item_bytes)
        image_file.flush()
    except BaseException:
        image_file.close()
        os.unlink(image_file.path)
        raise
    image_file.close()
