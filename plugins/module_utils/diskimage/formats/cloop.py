# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cloop (compressed loop) V2.0 images, read-only.

Layout (cloop ``compressed_loop.h``): a 128-byte shell-script preamble
starting ``#!/bin/sh`` / ``#V2.0 Format``, then big-endian ``block_size`` and
``n_blocks``, then ``n_blocks + 1`` big-endian 64-bit file offsets: block
``i`` is the zlib stream at [offsets[i], offsets[i+1]) and inflates to exactly
``block_size`` bytes.

Behaviour follows QEMU's block/cloop.c (probe score, header limits, virtual
size, no block status: everything is reported as data).  Each block is
inflated with the output bounded by ``block_size`` (docs/security.md rule 5).  cloop
images cannot be written or created (qemu-img cannot either).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import struct
import sys
import zlib

from ..errors import CorruptImageError, FormatError, UnsupportedFeature
from .base import ReadOnlyDriver

SECTOR_SIZE = 512

# --- compressed_loop.h: shell preamble, then the block header ---------------------------
MAGIC_V2 = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
PREAMBLE_SIZE = 128
BLOCK_HEADER = struct.Struct(">II")          # block_size, n_blocks
OFFSETS_START = PREAMBLE_SIZE + BLOCK_HEADER.size

# QEMU's limits: blocks of at most 64 MiB, compressed blocks at most twice that.
MAX_BLOCK_SIZE = 64 * 1024 * 1024
MAX_COMPRESSED_BLOCK = 2 * MAX_BLOCK_SIZE
# Cap on the offsets table held in memory (docs/security.md rule 5; QEMU allows 512 MiB).
MAX_OFFSETS_BYTES = 64 * 1024 * 1024
# Output of one inflate step of a block (the block's buffer is filled in steps of at most this).
INFLATE_STEP = 1 << 20


class CloopDriver(ReadOnlyDriver):
    format_name = "cloop"

    def __init__(self):
        super(CloopDriver, self).__init__()
        self.block_size = 0
        self.n_blocks = 0
        self.offsets = None

    @classmethod
    def probe(cls, header, filename):
        # QEMU scores the V2.0 shell preamble 2.
        return 2 if bytes(header[:len(MAGIC_V2)]) == MAGIC_V2 else 0

    def _open_structures(self, opener):
        path = self.path
        file_size = self._file.size()
        head = self._file.pread(0, OFFSETS_START)
        if len(head) < OFFSETS_START:
            raise FormatError("cloop header: file too short (%d bytes, expected at least %d)"
                              % (len(head), OFFSETS_START), path)
        if not head.startswith(MAGIC_V2[:len("#!/bin/sh\n#V2.0 Format\n")]):
            raise FormatError("Image not in cloop V2.0 format (preamble %r)" % head[:24], path)
        block_size, n_blocks = BLOCK_HEADER.unpack_from(head, PREAMBLE_SIZE)
        if block_size % SECTOR_SIZE:
            raise FormatError("block_size %d must be a multiple of 512" % block_size, path)
        if block_size == 0:
            raise FormatError("block_size cannot be zero", path)
        if block_size > MAX_BLOCK_SIZE:
            raise UnsupportedFeature("block_size %d must be %d MB or less" % (block_size, MAX_BLOCK_SIZE >> 20), path)
        offsets_bytes = (n_blocks + 1) * 8
        if offsets_bytes > MAX_OFFSETS_BYTES:
            raise UnsupportedFeature("image requires too many offsets (%d blocks: %d bytes of offsets, limit %d), "
                                     "try increasing block size" % (n_blocks, offsets_bytes, MAX_OFFSETS_BYTES), path)
        if OFFSETS_START + offsets_bytes > file_size:
            raise CorruptImageError("cloop offsets table (%d entries at %d) runs past the end of the file (%d bytes)"
                                    % (n_blocks + 1, OFFSETS_START, file_size), path)
        offsets = array.array("Q")
        offsets.frombytes(self._file.pread_exact(OFFSETS_START, offsets_bytes, "cloop offsets table"))
        if sys.byteorder != "big":
            offsets.byteswap()
        for index in range(1, n_blocks + 1):
            size = offsets[index] - offsets[index - 1]
            if size < 0:
                raise CorruptImageError("offsets not monotonically increasing at index %d, image file is corrupt"
                                        % index, path)
            if size > MAX_COMPRESSED_BLOCK:
                raise CorruptImageError("invalid compressed block size at index %d (%d bytes), image file is corrupt"
                                        % (index, size), path)
        if offsets[n_blocks] > file_size:
            raise CorruptImageError("cloop block %d ends at offset %d, past the end of the file (%d bytes)"
                                    % (n_blocks - 1, offsets[n_blocks], file_size), path)
        self.block_size = block_size
        self.n_blocks = n_blocks
        self.offsets = offsets
        self.virtual_size = n_blocks * block_size

    def _block(self, index):
        """Block ``index`` inflated, exactly ``block_size`` bytes (a bytearray).

        Inflated in 1 MiB steps into one buffer of the block's size: a block at QEMU's 64 MiB limit then
        needs 64 MiB, not the twice as much zlib's growing output buffer takes (and the block cached
        before is let go first)."""
        self._last_chunk = None
        start = self.offsets[index]
        count = self.offsets[index + 1] - start
        compressed = self._file.pread(start, count)
        if len(compressed) < count:
            raise CorruptImageError("cloop block %d at offset %d (%d bytes) lies past the end of the file"
                                    % (index, start, count), self.path)
        inflater = zlib.decompressobj()
        block = bytearray(self.block_size)
        filled = 0
        pending = compressed
        try:
            while filled < self.block_size and not inflater.eof:
                piece = inflater.decompress(pending, min(INFLATE_STEP, self.block_size - filled))
                pending = inflater.unconsumed_tail
                if not piece:
                    break
                block[filled:filled + len(piece)] = piece
                filled += len(piece)
            if not inflater.eof and filled == self.block_size:
                # At the limit: one more byte of output means the block inflates past the block size.
                if inflater.decompress(pending, 1):
                    raise CorruptImageError("cloop block %d at offset %d inflates past the block size of %d bytes"
                                            % (index, start, self.block_size), self.path)
        except zlib.error as exc:
            raise CorruptImageError("cloop block %d at offset %d: invalid zlib data (%s)" % (index, start, exc),
                                    self.path)
        if not inflater.eof:
            raise CorruptImageError("cloop block %d at offset %d: truncated zlib stream (%d of %d bytes)"
                                    % (index, start, filled, self.block_size), self.path)
        if filled != self.block_size:
            raise CorruptImageError("cloop block %d at offset %d inflates to %d bytes, expected %d"
                                    % (index, start, filled, self.block_size), self.path)
        return block

    def _piece(self, position, end):
        index = position // self.block_size
        within = position - index * self.block_size
        return bytes(memoryview(self._cached_chunk(index, self._block))[within:within + end - position])

    def read(self, offset, length):
        return self._read_pieces(offset, length, self._piece)
