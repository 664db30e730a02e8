# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test helper: edits single qcow2 metadata entries in place, to make the
leaks and corruptions the checker and the repair are tested on."""

import os
import struct

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_layout

MiB = 1024 * 1024


class Qcow2Editor:
    """Reads and rewrites single metadata entries of a qcow2 file in place."""

    def __init__(self, path):
        self.path = str(path)
        with open(self.path, "rb") as f:
            self.header = qcow2_layout.parse_header(f.read(2 * MiB), self.path, os.path.getsize(self.path))
        self.cluster_size = self.header.cluster_size
        self.refcount_bits = self.header.refcount_bits

    def _read_u64(self, offset):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return struct.unpack(">Q", f.read(8))[0]

    def _write(self, offset, data):
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def _write_u64(self, offset, value):
        self._write(offset, struct.pack(">Q", value))

    # refcount table / refcount blocks ("Host cluster management")
    def refcount_table_entry(self, index):
        return self._read_u64(self.header.refcount_table_offset + 8 * index)

    def set_refcount_table_entry(self, index, value):
        self._write_u64(self.header.refcount_table_offset + 8 * index, value)

    def _refcount_location(self, cluster):
        per_block = self.cluster_size * 8 // self.refcount_bits
        block = self.refcount_table_entry(cluster // per_block) & qcow2_layout.REFT_OFFSET_MASK
        assert block, "cluster %d has no refcount block" % cluster
        bit = (cluster % per_block) * self.refcount_bits
        return block + bit // 8, bit % 8

    def refcount(self, cluster):
        byte_offset, shift = self._refcount_location(cluster)
        width = max(self.refcount_bits // 8, 1)
        with open(self.path, "rb") as f:
            f.seek(byte_offset)
            value = int.from_bytes(f.read(width), "big")
        if self.refcount_bits < 8:
            value = (value >> shift) & ((1 << self.refcount_bits) - 1)
        return value

    def set_refcount(self, cluster, value):
        byte_offset, shift = self._refcount_location(cluster)
        if self.refcount_bits >= 8:
            self._write(byte_offset, value.to_bytes(self.refcount_bits // 8, "big"))
            return
        with open(self.path, "rb") as f:
            f.seek(byte_offset)
            old = f.read(1)[0]
        mask = ((1 << self.refcount_bits) - 1) << shift
        self._write(byte_offset, bytes([(old & ~mask) | (value << shift)]))

    # L1 / L2 tables ("Cluster mapping")
    def l1_index(self, guest_offset):
        return guest_offset // (self.cluster_size * self.header.l2_entries)

    def l1_entry(self, index):
        return self._read_u64(self.header.l1_table_offset + 8 * index)

    def set_l1_entry(self, index, value):
        self._write_u64(self.header.l1_table_offset + 8 * index, value)

    def l2_entry_offset(self, guest_offset):
        l2_table = self.l1_entry(self.l1_index(guest_offset)) & qcow2_layout.L1E_OFFSET_MASK
        assert l2_table, "guest offset %d has no L2 table" % guest_offset
        index = (guest_offset // self.cluster_size) % self.header.l2_entries
        return l2_table + index * self.header.l2_entry_size

    def l2_entry(self, guest_offset):
        return self._read_u64(self.l2_entry_offset(guest_offset))

    def set_l2_entry(self, guest_offset, value):
        self._write_u64(self.l2_entry_offset(guest_offset), value)

    # file end
    def append_cluster(self):
        """Grow the file by one cluster; returns its cluster index."""
        size = os.path.getsize(self.path)
        cluster = -(-size // self.cluster_size)
        with open(self.path, "r+b") as f:
            f.truncate((cluster + 1) * self.cluster_size)
        return cluster
