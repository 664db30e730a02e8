# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apple disk images (UDIF ``.dmg``), read-only.

Layout (Apple UDIF, as QEMU's block/dmg.c reads it): a 512-byte big-endian
trailer with the magic ``koly`` near the end of the file gives the data fork,
the resource fork and the XML property list (offset and length each) and the
sector count.  The block tables are ``mish`` blocks: in the resource fork
(binary resources), or base64 ``Data`` items of the property list's
``resource-fork``/``blkx`` array.  A ``mish`` block holds a first sector and
a data offset, then 40-byte chunk entries (type, comment, sector, sector
count, offset, length).  Chunk types: zeroes (0), raw (1), ignore (2), zlib
(0x80000005), bzip2 (0x80000006); ADC (0x80000004) and LZFSE (0x80000007)
chunks are refused with an error naming the codec when read; comments
(0x7ffffffe) and the last entry (0xffffffff) are skipped.

Behaviour follows QEMU's block/dmg.c: probe by the ``.dmg`` file name (score
2), the trailer found in the last 515 bytes, its offsets checked against the
trailer position, chunk lengths up to 64 MiB and sector counts up to 64 MiB
worth, no block status (everything is data), sectors no chunk describes are
a read error.  The property list is parsed with plistlib, at most 16 MiB of
it (QEMU's bound); every decompression is bounded by the chunk's sector count.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import bisect
import plistlib
import struct
import zlib

try:
    import bz2      # an optional part of some minimal Python builds
except ImportError:  # pragma: no cover
    bz2 = None

from ..errors import CorruptImageError, FormatError, UnsupportedFeature
from .base import ReadOnlyDriver

SECTOR_SIZE = 512

# --- UDIF trailer ("koly", 512 bytes, big-endian) ---------------------------------------
KOLY_MAGIC = b"koly"
KOLY_SIZE = 512
KOLY_SEARCH = 515           # the trailer starts in the last 511 bytes of the second-last sector or the last 4
U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
KOLY_DATA_FORK_OFFSET = 0x18
KOLY_RSRC_FORK_OFFSET = 0x28
KOLY_RSRC_FORK_LENGTH = 0x30
KOLY_XML_OFFSET = 0xd8
KOLY_XML_LENGTH = 0xe0
KOLY_SECTOR_COUNT = 0x1ec

# --- mish block (BLKXTable): magic, version, first sector, sector count, data offset, ... -
MISH_MAGIC = 0x6d697368
MISH_FIRST_SECTOR = 8
MISH_DATA_OFFSET = 0x18
MISH_CHUNKS_START = 204
# --- chunk entry (BLKXChunkEntry): type, comment, sector, sector count, offset, length ---
CHUNK = struct.Struct(">IIQQQQ")
MISH_MIN_SIZE = MISH_CHUNKS_START + CHUNK.size     # 244, as QEMU

CHUNK_ZERO = 0x00000000
CHUNK_RAW = 0x00000001
CHUNK_IGNORE = 0x00000002
CHUNK_ADC = 0x80000004
CHUNK_ZLIB = 0x80000005
CHUNK_BZIP2 = 0x80000006
CHUNK_LZFSE = 0x80000007
CHUNK_COMMENT = 0x7ffffffe
CHUNK_LAST = 0xffffffff
ZERO_TYPES = (CHUNK_ZERO, CHUNK_IGNORE)
READABLE_TYPES = (CHUNK_ZERO, CHUNK_RAW, CHUNK_IGNORE, CHUNK_ZLIB, CHUNK_BZIP2)
UNSUPPORTED_CODECS = {CHUNK_ADC: "ADC (Apple Data Compression, UDCO)", CHUNK_LZFSE: "LZFSE (ULFO)"}

# QEMU's limits (DMG_LENGTHS_MAX, DMG_SECTORCOUNTS_MAX) and its property list bound.
MAX_CHUNK_LENGTH = 64 * 1024 * 1024
MAX_CHUNK_SECTORS = MAX_CHUNK_LENGTH // SECTOR_SIZE
MAX_PLIST_LENGTH = 16 * 1024 * 1024
MAX_RSRC_FORK_LENGTH = 16 * 1024 * 1024
# Cap on the chunk table (docs/security.md rule 5): more than any 16 MiB property list can describe.
MAX_CHUNKS = 1 << 20
# Output of one inflate step of a chunk (the chunk's buffer is filled in steps of at most this).
INFLATE_STEP = 1 << 20


def _other_format_claims(header, filename):
    """Whether a driver that probes by content claims ``header`` (QEMU lets its
    higher score win over dmg's file-name match; we must not report two formats)."""
    from . import claims  # pylint: disable=import-outside-toplevel  # the registry imports this module
    return bool(claims(header, filename, exclude=("raw", DmgDriver.format_name)))


class DmgDriver(ReadOnlyDriver):
    format_name = "dmg"

    def __init__(self):
        super(DmgDriver, self).__init__()
        self.koly_offset = None
        # Parallel lists, sorted by first sector: type, first sector, sector count, file offset, length.
        self._starts = []
        self._chunks = []

    @classmethod
    def probe(cls, header, filename):
        if not filename or len(filename) <= 4 or not str(filename).endswith(".dmg"):
            return 0
        return 0 if _other_format_claims(header, filename) else 2

    # ----------------------------------------------------------------- opening
    def _find_koly(self, file_size):
        if file_size < KOLY_SIZE:
            raise FormatError("dmg file must be at least 512 bytes long (%d bytes)" % file_size, self.path)
        start = file_size - 511 - KOLY_SIZE if file_size > 511 + KOLY_SIZE else 0
        tail = self._file.pread_exact(start, min(file_size, KOLY_SEARCH), "UDIF trailer")
        where = tail.find(KOLY_MAGIC)
        if where < 0:
            raise FormatError("Could not locate UDIF trailer ('koly') in dmg file", self.path)
        return start + where

    def _open_structures(self, opener):
        path = self.path
        file_size = self._file.size()
        koly = self._find_koly(file_size)
        self.koly_offset = koly
        trailer = self._file.pread(koly, KOLY_SIZE)
        if len(trailer) < KOLY_SECTOR_COUNT + 8:
            raise FormatError("UDIF trailer at offset %d is truncated (%d bytes)" % (koly, len(trailer)), path)
        data_fork = U64.unpack_from(trailer, KOLY_DATA_FORK_OFFSET)[0]
        rsrc_offset = U64.unpack_from(trailer, KOLY_RSRC_FORK_OFFSET)[0]
        rsrc_length = U64.unpack_from(trailer, KOLY_RSRC_FORK_LENGTH)[0]
        xml_offset = U64.unpack_from(trailer, KOLY_XML_OFFSET)[0]
        xml_length = U64.unpack_from(trailer, KOLY_XML_LENGTH)[0]
        sectors = U64.unpack_from(trailer, KOLY_SECTOR_COUNT)[0]
        if data_fork > koly:
            raise CorruptImageError("UDIF trailer: data fork offset %d lies past the trailer (%d)"
                                    % (data_fork, koly), path)
        if rsrc_offset >= koly or rsrc_length > koly - rsrc_offset:
            raise CorruptImageError("UDIF trailer: resource fork [%d, +%d) does not end before the trailer (%d)"
                                    % (rsrc_offset, rsrc_length, koly), path)
        if xml_offset >= koly or xml_length > koly - xml_offset:
            raise CorruptImageError("UDIF trailer: property list [%d, +%d) does not end before the trailer (%d)"
                                    % (xml_offset, xml_length, koly), path)
        if sectors > ((1 << 63) - 1) // SECTOR_SIZE:
            raise CorruptImageError("UDIF trailer: sector count %d is negative or too large" % sectors, path)
        self.virtual_size = sectors * SECTOR_SIZE
        if rsrc_length:
            mish_blocks = self._resource_fork_blocks(rsrc_offset, rsrc_length)
        elif xml_length:
            mish_blocks = self._plist_blocks(xml_offset, xml_length)
        else:
            raise FormatError("UDIF trailer names neither a resource fork nor a property list", path)
        chunks = []
        for block in mish_blocks:
            self._add_mish_block(chunks, block, data_fork, file_size)
        chunks.sort(key=lambda chunk: chunk[1])
        self._chunks = chunks
        self._starts = [chunk[1] for chunk in chunks]

    def _resource_fork_blocks(self, begin, length):
        path = self.path
        if length > MAX_RSRC_FORK_LENGTH:
            raise UnsupportedFeature("dmg resource fork of %d bytes exceeds the limit of %d bytes"
                                     % (length, MAX_RSRC_FORK_LENGTH), path)
        fork = self._file.pread_exact(begin, length, "dmg resource fork")
        data_offset = U32.unpack_from(fork, 0)[0] if length >= 4 else length + 1
        if data_offset > length:
            raise CorruptImageError("dmg resource fork: data offset %d past its length %d" % (data_offset, length), path)
        count = U32.unpack_from(fork, 8)[0] if length >= 12 else 0
        if count == 0 or data_offset + count > length:
            raise CorruptImageError("dmg resource fork: resource data of %d bytes at %d does not fit in %d bytes"
                                    % (count, data_offset, length), path)
        position = data_offset
        end = data_offset + count
        blocks = []
        while position < end:
            if end - position < 4:
                raise CorruptImageError("dmg resource fork: truncated resource at %d" % position, path)
            size = U32.unpack_from(fork, position)[0]
            if size == 0 or size > end - position:
                raise CorruptImageError("dmg resource fork: resource of %d bytes at %d runs past the resource data"
                                        % (size, position), path)
            position += 4
            blocks.append(fork[position:position + size])
            position += size
        return blocks

    def _plist_blocks(self, begin, length):
        path = self.path
        if length > MAX_PLIST_LENGTH:
            raise UnsupportedFeature("dmg property list of %d bytes exceeds the limit of %d bytes"
                                     % (length, MAX_PLIST_LENGTH), path)
        document = self._file.pread_exact(begin, length, "dmg property list")
        try:
            plist = plistlib.loads(document, fmt=plistlib.FMT_XML)
        except Exception as exc:  # plistlib raises ExpatError, ValueError, InvalidFileException...
            raise CorruptImageError("dmg property list at offset %d: not a valid property list (%s)"
                                    % (begin, exc), path)
        blocks = []
        resources = plist.get("resource-fork") if isinstance(plist, dict) else None
        entries = resources.get("blkx") if isinstance(resources, dict) else None
        if not isinstance(entries, list):
            raise CorruptImageError("dmg property list has no resource-fork/blkx array", path)
        for entry in entries:
            data = entry.get("Data") if isinstance(entry, dict) else None
            if isinstance(data, bytes):
                blocks.append(data)
        return blocks

    def _add_mish_block(self, chunks, block, data_fork, file_size):
        path = self.path
        if len(block) < MISH_MIN_SIZE or U32.unpack_from(block, 0)[0] != MISH_MAGIC:
            return          # not a block table (QEMU skips these too)
        first_sector = U64.unpack_from(block, MISH_FIRST_SECTOR)[0]
        data_offset = U64.unpack_from(block, MISH_DATA_OFFSET)[0] + data_fork
        for position in range(MISH_CHUNKS_START, len(block) - CHUNK.size + 1, CHUNK.size):
            kind, _comment, sector, count, offset, length = CHUNK.unpack_from(block, position)
            if kind in (CHUNK_COMMENT, CHUNK_LAST) or count == 0:
                continue
            if kind not in READABLE_TYPES and kind not in UNSUPPORTED_CODECS:
                # QEMU drops chunks of unknown types; reading their sectors then fails.
                continue
            if kind not in ZERO_TYPES and count > MAX_CHUNK_SECTORS:
                raise UnsupportedFeature("sector count %d for chunk %d is larger than max (%d)"
                                         % (count, len(chunks), MAX_CHUNK_SECTORS), path)
            if length > MAX_CHUNK_LENGTH:
                raise UnsupportedFeature("length %d for chunk %d is larger than max (%d)"
                                         % (length, len(chunks), MAX_CHUNK_LENGTH), path)
            offset += data_offset
            if kind not in ZERO_TYPES and offset + length > file_size:
                raise CorruptImageError("dmg chunk %d at offset %d (%d bytes) lies past the end of the file (%d bytes)"
                                        % (len(chunks), offset, length, file_size), path)
            if len(chunks) >= MAX_CHUNKS:
                raise UnsupportedFeature("dmg image has more than %d chunks" % MAX_CHUNKS, path)
            chunks.append((kind, sector + first_sector, count, offset, length))

    # -------------------------------------------------------------------- data
    def _chunk_for(self, sector):
        number = bisect.bisect_right(self._starts, sector) - 1
        if number >= 0:
            chunk = self._chunks[number]
            if chunk[1] + chunk[2] > sector:
                return number
        raise CorruptImageError("dmg sector %d is not described by any chunk of the block tables" % sector, self.path)

    def _decompress(self, number, kind, data, expected):
        """Chunk ``number`` inflated, exactly ``expected`` bytes (a bytearray).

        Inflated in 1 MiB steps into one buffer of the chunk's size: a chunk at the 64 MiB limit then
        needs 64 MiB, not the twice as much a growing output buffer takes (and the chunk cached before
        is let go first)."""
        self._last_chunk = None
        if kind == CHUNK_ZLIB:
            codec, engine, error = "zlib", zlib.decompressobj(), zlib.error
        elif bz2 is None:
            raise UnsupportedFeature("dmg chunk %d is bzip2-compressed, but this Python has no bz2 module"
                                     % number, self.path)
        else:
            codec, engine, error = "bzip2", bz2.BZ2Decompressor(), (OSError, ValueError, EOFError)
        output = bytearray(expected)
        filled = 0
        pending = data

        def more(limit):
            piece = engine.decompress(pending, limit)
            # zlib hands back what it did not read; bzip2 keeps it and wants b"" from then on
            return piece, (engine.unconsumed_tail if kind == CHUNK_ZLIB else b"")

        try:
            while filled < expected and not engine.eof:
                piece, pending = more(min(INFLATE_STEP, expected - filled))
                if not piece:
                    break
                output[filled:filled + len(piece)] = piece
                filled += len(piece)
            if not engine.eof and filled == expected:
                # At the limit: one more byte of output means the chunk inflates past its declared size.
                if more(1)[0]:
                    raise CorruptImageError("dmg chunk %d: %s data inflates past its declared size of %d bytes"
                                            % (number, codec, expected), self.path)
        except error as exc:
            raise CorruptImageError("dmg chunk %d: invalid %s data (%s)" % (number, codec, exc), self.path)
        if not engine.eof:
            raise CorruptImageError("dmg chunk %d: truncated %s stream (%d of %d bytes)"
                                    % (number, codec, filled, expected), self.path)
        if filled != expected:
            raise CorruptImageError("dmg chunk %d: %s data inflates to %d bytes, expected %d"
                                    % (number, codec, filled, expected), self.path)
        return output

    def _chunk_data(self, number):
        """The whole uncompressed content of non-zero chunk ``number``."""
        kind, _sector, count, offset, length = self._chunks[number]
        if kind in UNSUPPORTED_CODECS:
            raise UnsupportedFeature("dmg chunk %d uses %s compression, which is not supported (zlib, bzip2, raw "
                                     "and zero chunks are)" % (number, UNSUPPORTED_CODECS[kind]), self.path)
        data = self._file.pread(offset, length)
        if len(data) < length:
            raise CorruptImageError("dmg chunk %d at offset %d (%d bytes) lies past the end of the file"
                                    % (number, offset, length), self.path)
        expected = count * SECTOR_SIZE
        if kind == CHUNK_RAW:
            return data[:expected] + bytes(max(0, expected - len(data)))
        return self._decompress(number, kind, data, expected)

    def _piece(self, position, end):
        number = self._chunk_for(position // SECTOR_SIZE)
        kind, first, count, _offset, _length = self._chunks[number]
        piece = min(end, (first + count) * SECTOR_SIZE) - position
        if kind in ZERO_TYPES:
            return bytes(piece)
        within = position - first * SECTOR_SIZE
        return bytes(memoryview(self._cached_chunk(number, self._chunk_data))[within:within + piece])

    def read(self, offset, length):
        return self._read_pieces(offset, length, self._piece)
