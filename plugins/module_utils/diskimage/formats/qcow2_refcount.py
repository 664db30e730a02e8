# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 refcounts (QEMU docs/interop/qcow2.rst, "Host cluster management"):
the refcount table and blocks, cluster allocation, and giving clusters back.

``Qcow2RefcountMixin`` is the part of ``Qcow2Driver`` (formats/qcow2.py) that
owns the refcount structures.  Refcounts are written through, increments
before the data that needs them and decrements after the last reference is
gone, so a crash leaves at worst leaked clusters.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import struct
import sys

from ..errors import CorruptImageError, ImageError
from . import qcow2_layout as L
from .qcow2_layout import be_array as _be_array, be_bytes as _be_bytes

_LITTLE_ENDIAN = sys.byteorder == "little"

# Header fields rewritten together: refcount_table_offset, refcount_table_clusters
HEADER_REFTABLE = struct.Struct(">QI")

# How far ahead of the allocator a growing image file is extended (``_grow_file``).
GROW_STEP = 32 << 20


class Qcow2RefcountMixin:
    """Refcount table and blocks, and the cluster allocator, of a Qcow2Driver.

    Driver state used (set at open or by ``_prepare_write``): ``_rc_bits``,
    ``_rc_max`` (refcount width and largest value), ``_rbe`` (entries per
    refcount block), ``_reftable`` (array of refcount block offsets),
    ``_refblock_cache``/``_refblock_cache_max`` (LRU of blocks as bytearrays),
    ``_refblock_set`` (offsets of the refcount blocks, for the overlap checks),
    ``_next_free`` (where the allocator looks first), ``_refcounted_end``
    (just past the last cluster in use when the image was opened for writing),
    ``_file_size`` (grown by ``_reserve``: the end in use), ``_file_end`` (how far
    ``_grow_file`` extended the file ahead of it, cut back by ``_trim_file_end``).
    """

    def _load_reftable(self):
        """Read the refcount table (before the first write): entries masked, the
        refcount blocks it names checked to lie inside the file."""
        h = self.header
        if h.refcount_table_offset + h.refcount_table_clusters * self._cs > self._file_size:
            raise CorruptImageError("qcow2 refcount table at 0x%x (%d clusters) runs past the end of the file"
                                    % (h.refcount_table_offset, h.refcount_table_clusters), self.path)
        raw = self._file.pread_exact(h.refcount_table_offset, h.refcount_table_clusters * self._cs,
                                     "qcow2 refcount table")
        self._reftable = _be_array(raw)
        for i, entry in enumerate(self._reftable):
            entry &= L.REFT_OFFSET_MASK
            self._reftable[i] = entry
            if entry:
                if entry % self._cs or entry + self._cs > self._file_size:
                    raise CorruptImageError("qcow2 refcount table entry %d: refcount block at 0x%x is misaligned "
                                            "or past the end of the file (%d bytes)"
                                            % (i, entry, self._file_size), self.path)
                self._refblock_set.add(entry)

    def _find_refcounted_end(self):
        """Offset just past the last cluster with a non-zero refcount."""
        for block_index in range(len(self._reftable) - 1, -1, -1):
            offset = self._reftable[block_index]
            if not offset:
                continue
            used = len(bytes(self._load_refblock(offset)).rstrip(b"\0"))
            if used:
                index = (used * 8 - 1) // self._rc_bits
                return (block_index * self._rbe + index + 1) << self._cb
        return 0

    def _rc_get(self, block, index):
        bits = self._rc_bits
        if bits >= 8:
            width = bits >> 3
            return int.from_bytes(block[index * width:(index + 1) * width], "big")
        bit = index * bits
        return (block[bit >> 3] >> (bit & 7)) & self._rc_max

    def _rc_set(self, block, index, value):
        bits = self._rc_bits
        if bits >= 8:
            width = bits >> 3
            block[index * width:(index + 1) * width] = value.to_bytes(width, "big")
            return
        bit = index * bits
        shift = bit & 7
        byte = block[bit >> 3] & ~(self._rc_max << shift) & 0xff
        block[bit >> 3] = byte | (value << shift)

    def _rc_byte_range(self, first, count):
        bits = self._rc_bits
        return (first * bits) >> 3, ((first + count) * bits + 7) >> 3

    def _load_refblock(self, offset):
        block = self._refblock_cache.get(offset)
        if block is not None:
            self._refblock_cache.move_to_end(offset)
            return block
        block = bytearray(self._file.pread_exact(offset, self._cs, "qcow2 refcount block"))
        self._refblock_cache[offset] = block
        while len(self._refblock_cache) > self._refblock_cache_max:
            self._refblock_cache.popitem(last=False)
        return block

    def _refcount(self, host):
        cluster = host >> self._cb
        block_index, index = divmod(cluster, self._rbe)
        if block_index >= len(self._reftable) or not self._reftable[block_index]:
            return 0
        return self._rc_get(self._load_refblock(self._reftable[block_index]), index)

    def _refblock(self, block_index):
        """(offset, block) of refcount block ``block_index``, allocating it (and
        growing the refcount table) when missing."""
        if block_index >= len(self._reftable):
            self._grow_reftable(block_index)
        offset = self._reftable[block_index]
        if offset:
            self._check_metadata_target(offset, "refblock")
            return offset, self._load_refblock(offset)
        new = self._next_free
        self._reserve(new, 1)
        block = bytearray(self._cs)
        own_index = new >> self._cb
        if own_index // self._rbe == block_index:
            self._rc_set(block, own_index % self._rbe, 1)
        else:
            self._refcount_update(new, 1, 1)
        self._file.pwrite(new, block)
        self._refblock_cache[new] = block
        self._refblock_set.add(new)
        self._reftable[block_index] = new
        self._file.pwrite(self.header.refcount_table_offset + block_index * 8, struct.pack(">Q", new))
        return new, block

    def _grow_reftable(self, block_index):
        """Move the refcount table to a bigger one at the end of the file."""
        h = self.header
        cs = self._cs
        old_offset = h.refcount_table_offset
        old_clusters = h.refcount_table_clusters
        entries = max(block_index + 1, len(self._reftable) * 2)
        while True:
            clusters = -(-entries * 8 // cs)
            table_offset = self._next_free
            # room for the table, the blocks covering it, and slack
            end = table_offset + (clusters + clusters * 8 + 4) * cs
            needed = (end >> self._cb) // self._rbe + 1
            if needed <= entries:
                break
            entries = needed
        if clusters * cs > L.MAX_REFTABLE_BYTES:
            raise ImageError("qcow2 refcount table would grow past the %d-byte cap" % L.MAX_REFTABLE_BYTES,
                             self.path)
        entries = clusters * cs // 8
        self._reserve(table_offset, clusters)
        new_table = array.array("Q", self._reftable)
        new_table.extend([0] * (entries - len(new_table)))
        self._file.pwrite(table_offset, _be_bytes(new_table))
        self._reftable = new_table
        h.refcount_table_offset = table_offset
        h.refcount_table_clusters = clusters
        # new refcount blocks are written into the new table, not yet in the header
        self._refcount_update(table_offset, clusters * cs, 1)
        self._file.flush()
        self._file.pwrite(L.OFF_REFCOUNT_TABLE_OFFSET, HEADER_REFTABLE.pack(table_offset, clusters))
        self._file.flush()
        self._refcount_update(old_offset, old_clusters * cs, -1)

    def _refcount_update(self, offset, length, delta):
        """Add ``delta`` to the refcount of every cluster touched by [offset, offset+length)."""
        if length <= 0:
            return
        cb = self._cb
        cluster = offset >> cb
        last = (offset + length - 1) >> cb
        while cluster <= last:
            block_index, index = divmod(cluster, self._rbe)
            if delta < 0 and (block_index >= len(self._reftable) or not self._reftable[block_index]):
                raise CorruptImageError("qcow2 refcount of cluster 0x%x would drop below zero (no refcount block)"
                                        % (cluster << cb), self.path)
            block_offset, block = self._refblock(block_index)
            count = min(last + 1 - cluster, self._rbe - index)
            lo, hi = self._rc_byte_range(index, count)
            if delta == 1 and self._rc_bits >= 8 and not any(block[lo:hi]):
                # fresh allocation (the common case): no per-cluster arithmetic
                width = self._rc_bits >> 3
                block[lo:hi] = (bytes(width - 1) + b"\x01") * count
                self._file.pwrite(block_offset + lo, bytes(block[lo:hi]))
                cluster += count
                continue
            for i in range(index, index + count):
                value = self._rc_get(block, i) + delta
                if value < 0 or value > self._rc_max:
                    raise CorruptImageError("qcow2 refcount of cluster 0x%x would become %d (refcount_bits %d)"
                                            % ((block_index * self._rbe + i) << cb, value, self._rc_bits),
                                            self.path)
                self._rc_set(block, i, value)
            self._file.pwrite(block_offset + lo, bytes(block[lo:hi]))
            cluster += count

    def _reserve(self, host, clusters):
        """Account clusters [host, +clusters) as in use by the allocator (file grown)."""
        end = host + clusters * self._cs
        if end > self._next_free:
            self._next_free = end
        if end > self._file_size:
            if self._file.is_block_device:
                if end > self._file.size():
                    raise ImageError("no space left on the block device for cluster 0x%x" % host, self.path)
            elif end > self._file_end:
                self._grow_file(end)
            self._file_size = end

    def _grow_file(self, end):
        """Make the file reach at least ``end``, ahead by a step (as QEMU's preallocate
        filter): one ftruncate per GROW_STEP bytes allocated, not one per allocation.
        ``_file_size`` stays the end in use; ``_trim_file_end`` (flush, check) cuts
        the file back to it, so the image ends where it did without the steps."""
        target = -(-(end + GROW_STEP) // GROW_STEP) * GROW_STEP
        self._file.truncate(target)
        self._file_end = target

    def _trim_file_end(self):
        """Cut the file back to the end in use after ``_grow_file`` ran ahead of it."""
        if self._file_end <= self._file_size or self._file is None or self._file.is_block_device:
            return
        # the file as it is (an undo may have put it back): only ever shortened here
        if self._file.size() > self._file_size:
            self._file.truncate(self._file_size)
        self._file_end = self._file_size

    def _alloc(self, clusters):
        """Allocate ``clusters`` contiguous free clusters; refcounts set first (leak on crash)."""
        start = self._next_free
        while start < self._refcounted_end:
            busy = None
            for c in range(clusters):
                if self._refcount(start + c * self._cs):
                    busy = c
            if busy is None:
                break
            start += (busy + 1) * self._cs
            self._next_free = start
        self._reserve(start, clusters)
        self._refcount_update(start, clusters * self._cs, 1)
        return start

    def _free_entry(self, entry):
        """Drop the reference an L2 entry held (after the entry is gone from disk)."""
        if self._data_file is not self._file:
            return
        if entry & L.OFLAG_COMPRESSED:
            coffset, sectors = self._compressed_location(entry)
            start = coffset & ~511
            self._refcount_update(start, sectors * 512, -1)
            return
        host = entry & L.L2E_OFFSET_MASK
        if host:
            self._refcount_update(host, 1, -1)

    def _drop_unused_refblocks(self):
        """Unhook the refcount blocks that count nothing but themselves (QEMU's
        qcow2_shrink_reftable); returns their offsets."""
        dropped = []
        for block_index in range(1, len(self._reftable)):
            offset = self._reftable[block_index]
            if not offset:
                continue
            block = self._load_refblock(offset)
            own_cluster = offset >> self._cb
            own = own_cluster // self._rbe == block_index
            if own:
                count = self._rc_get(block, own_cluster % self._rbe)
                self._rc_set(block, own_cluster % self._rbe, 0)
                unused = not any(block)
                self._rc_set(block, own_cluster % self._rbe, count)
            else:
                unused = not any(block)
            if not unused:
                continue
            self._file.pwrite(self.header.refcount_table_offset + block_index * 8, bytes(8))
            self._reftable[block_index] = 0
            self._refblock_set.discard(offset)
            self._refblock_cache.pop(offset, None)
            if not own:
                self._refcount_update(offset, 1, -1)
            dropped.append(offset)
        return dropped

    def _give_back(self, released):
        """After a shrink, as QEMU (discard, then truncate after the last used cluster):
        the clusters of ``released`` nothing references any more become holes, and the
        file ends after its last cluster in use."""
        if self._file.is_block_device:
            return
        cs = self._cs
        runs = []
        for host in sorted(set(host for host in released if host and not self._refcount(host))):
            if runs and runs[-1][1] == host:
                runs[-1][1] = host + cs
            else:
                runs.append([host, host + cs])
        end = L.align_up(self._find_refcounted_end(), cs)
        for start, stop in runs:
            if start < end:
                self._file.punch_hole(start, min(stop, end) - start)
        if end < self._file_size or end < self._file_end:
            self._file.truncate(end)
            self._file_size = end
            self._file_end = end
            self._next_free = end
            self._refcounted_end = min(self._refcounted_end, end)


_REFCOUNT_ARRAY_CODES = {8: "B", 16: "H", 32: "I", 64: "Q"}


def _decode_refblock(block, bits):
    """Refcount block bytes -> array of ints (``bits``-wide big-endian entries)."""
    if bits >= 8:
        code = _REFCOUNT_ARRAY_CODES[bits]
        if array.array(code).itemsize == bits // 8:
            values = array.array(code)
            values.frombytes(bytes(block))
            if _LITTLE_ENDIAN and bits > 8:
                values.byteswap()
            return array.array("Q", values)
        width = bits // 8
        return array.array("Q", (int.from_bytes(block[i:i + width], "big") for i in range(0, len(block), width)))
    mask = (1 << bits) - 1
    return array.array("Q", ((block[(i * bits) >> 3] >> ((i * bits) & 7)) & mask
                             for i in range(len(block) * 8 // bits)))


def _encode_refblock(values, bits, cluster_size):
    """Inverse of _decode_refblock, padded to a whole cluster."""
    if bits >= 8:
        code = _REFCOUNT_ARRAY_CODES[bits]
        if array.array(code).itemsize == bits // 8:
            packed = array.array(code, values)
            if _LITTLE_ENDIAN and bits > 8:
                packed.byteswap()
            raw = packed.tobytes()
        else:
            raw = b"".join(value.to_bytes(bits // 8, "big") for value in values)
    else:
        block = bytearray(cluster_size)
        for index, value in enumerate(values):
            if value:
                bit = index * bits
                block[bit >> 3] |= value << (bit & 7)
        raw = bytes(block)
    return raw + bytes(cluster_size - len(raw))
