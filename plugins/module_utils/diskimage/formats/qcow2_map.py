# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2's block status as QEMU's qcow2 driver reports it (``Qcow2Driver.map_runs``),
and the L1 tables of internal snapshots (``Qcow2Driver.snapshot_l1_table``).

Normal (sub)clusters are DATA with the host offset; compressed ones DATA without
one; zero ones ZERO, with the host offset when a host cluster is still attached;
unallocated ones say nothing (but keep the host offset of an allocated extended-L2
cluster).  When the image looks preallocated with preallocation=metadata, DATA
ranges over holes of the data file also read ZERO (QEMU asks the file system,
"recurse").  Encrypted images report no host offsets.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array

from ..errors import CorruptImageError
from . import qcow2_layout as L
from .base import (
    BLOCK_ALLOCATED as ALLOCATED, BLOCK_DATA as DATA, BLOCK_OFFSET_VALID as OFFSET_VALID, BLOCK_ZERO as ZERO,
    QEMU_SECTOR_SIZE as SECTOR_SIZE, StatusRuns as _Runs,
)

# Refcount array type codes by entry width (only "is it zero" matters: no byte swap).
_REFCOUNT_ARRAY_TYPES = {8: "B", 16: "H", 32: "I" if array.array("I").itemsize == 4 else "L", 64: "Q"}


def map_runs(layer, offset, end, l1_table=None, cache=None):
    """QEMU block status runs of qcow2 ``layer`` over [offset, end) (see the
    module docstring); ``l1_table`` replaces the active L1 table (a snapshot's);
    ``cache`` (a dict) keeps whether the image looks metadata-preallocated."""
    if cache is None:
        cache = {}
    runs = _qcow2_runs(layer, offset, end, l1_table)
    if _metadata_preallocated(layer, cache):
        runs = _recurse_into_file(layer, runs)
    return runs


def snapshot_l1_table(layer, snap):
    """The L1 table of snapshot table entry ``snap`` of ``layer``, as a list of entries."""
    l1_bytes = snap["l1_size"] * 8
    if l1_bytes > L.MAX_L1_BYTES:
        raise CorruptImageError("qcow2 snapshot %r: L1 table of %d entries exceeds the cap"
                                % (snap["name"], snap["l1_size"]), layer.path)
    if snap["l1_size"] and (snap["l1_table_offset"] % layer.header.cluster_size
                            or snap["l1_table_offset"] + l1_bytes > layer._file.size()):
        raise CorruptImageError("qcow2 snapshot %r: L1 table at 0x%x (%d entries) lies outside the file"
                                % (snap["name"], snap["l1_table_offset"], snap["l1_size"]), layer.path)
    raw = layer._file.pread_exact(snap["l1_table_offset"], l1_bytes, "qcow2 snapshot L1 table")
    return [int.from_bytes(raw[i:i + 8], "big") for i in range(0, l1_bytes, 8)]


def _l2_table_offset(layer, l1_table, l1_index):
    if l1_table is None:
        return layer._l1_entry_l2_offset(l1_index)
    if l1_index >= len(l1_table):
        return 0
    l2_offset = l1_table[l1_index] & L.L1E_OFFSET_MASK
    if not l2_offset:
        return 0
    cluster_size = layer.header.cluster_size
    if l2_offset % cluster_size or l2_offset + cluster_size > layer._file.size():
        raise CorruptImageError("qcow2 snapshot L1 table entry %d: L2 table offset 0x%x is misaligned or past "
                                "the end of the file" % (l1_index, l2_offset), layer.path)
    return l2_offset


def _qcow2_runs(layer, offset, end, l1_table):
    """Walk the L1/L2 tables: flags per (sub)cluster as QEMU's qcow2 driver gives them."""
    header = layer.header
    cluster_bits = header.cluster_bits
    cluster_size = header.cluster_size
    l2_entries = header.l2_entries
    extended = header.extended_l2
    subcluster_size = cluster_size // L.SUBCLUSTERS_PER_CLUSTER if extended else cluster_size
    has_data_file = layer._data_file is not layer._file
    # QEMU never reports host offsets of encrypted images.
    offsets_known = not layer.encrypted
    runs = _Runs()
    add = runs.add
    pos = offset
    while pos < end:
        l1_index = (pos >> cluster_bits) // l2_entries
        table_end = min(end, ((l1_index + 1) * l2_entries) << cluster_bits)
        l2_offset = _l2_table_offset(layer, l1_table, l1_index)
        if not l2_offset:
            add(pos, table_end - pos, 0, None)
            pos = table_end
            continue
        table = layer._load_l2(l2_offset)
        first_cluster = l1_index * l2_entries
        while pos < table_end:
            cluster = pos >> cluster_bits
            cluster_start = cluster << cluster_bits
            cluster_end = min(cluster_start + cluster_size, table_end)
            index = cluster - first_cluster
            if extended:
                entry = table[2 * index]
                bitmap = table[2 * index + 1]
            else:
                entry = table[index]
                bitmap = 0
            if entry & L.OFLAG_COMPRESSED:
                add(pos, cluster_end - pos, DATA | ALLOCATED, None)
                pos = cluster_end
                continue
            host = entry & L.L2E_OFFSET_MASK
            allocated = bool(host) or (has_data_file and bool(entry & L.OFLAG_COPIED))
            if allocated and offsets_known:
                layer._check_host(host, pos, l2_offset, index, cluster_end - pos)
                offset_flag = OFFSET_VALID
            else:
                offset_flag = 0
            if not extended:
                if entry & L.OFLAG_ZERO:
                    flags = ZERO | ALLOCATED | (offset_flag if host else 0)
                    attached = bool(host)
                elif allocated:
                    flags = DATA | ALLOCATED | offset_flag
                    attached = True
                else:
                    flags = 0
                    attached = False
                add(pos, cluster_end - pos, flags,
                    host + (pos - cluster_start) if attached and flags & OFFSET_VALID else None)
                pos = cluster_end
                continue
            alloc_bits = bitmap & 0xffffffff
            zero_bits = bitmap >> 32
            if alloc_bits & zero_bits or (alloc_bits and not allocated):
                raise CorruptImageError("qcow2 L2 table at 0x%x entry %d (guest offset 0x%x): invalid subcluster "
                                        "bitmap 0x%016x" % (l2_offset, index, cluster_start, bitmap), layer.path)
            while pos < cluster_end:
                sub = (pos - cluster_start) // subcluster_size
                sub_end = min(cluster_start + (sub + 1) * subcluster_size, cluster_end)
                if zero_bits >> sub & 1:
                    flags = ZERO | ALLOCATED
                elif alloc_bits >> sub & 1:
                    flags = DATA | ALLOCATED
                else:
                    flags = 0
                if allocated:
                    flags |= offset_flag
                add(pos, sub_end - pos, flags, host + (pos - cluster_start) if flags & OFFSET_VALID else None)
                pos = sub_end
    return runs.runs


def _recurse_into_file(layer, runs):
    """DATA ranges with a host offset also read ZERO where the data file has a
    hole (QEMU does this only for metadata-preallocated images)."""
    result = _Runs()
    data_file = layer._data_file
    for start, length, flags, host in runs:
        if not (flags & DATA and flags & OFFSET_VALID) or flags & ZERO:
            result.add(start, length, flags, host)
            continue
        for file_start, file_length, is_data in data_file.data_extents(host, length):
            guest = start + (file_start - host)
            result.add(guest, file_length, flags if is_data else flags | ZERO, file_start)
    return result.runs


def _count_nonzero_refcounts(block, entries, refcount_bits):
    """How many of the first ``entries`` refcounts of a refcount block are not zero."""
    if refcount_bits >= 8:
        values = array.array(_REFCOUNT_ARRAY_TYPES[refcount_bits])
        values.frombytes(bytes(block[:entries * refcount_bits // 8]))
        return entries - values.count(0)
    per_byte = 8 // refcount_bits
    mask = (1 << refcount_bits) - 1
    whole = entries // per_byte
    table = bytes(sum(1 for i in range(per_byte) if value >> (i * refcount_bits) & mask)
                  for value in range(256))
    count = sum(bytes(block[:whole]).translate(table))
    # Sub-byte refcounts fill each byte from its least significant bit.
    for index in range(whole * per_byte, entries):
        value = block[index // per_byte] >> ((index % per_byte) * refcount_bits) & mask
        count += bool(value)
    return count


def _metadata_preallocated(layer, cache):
    """QEMU's guess that a qcow2 image was made with preallocation=metadata:
    clearly more clusters are refcounted than the file system holds (at least
    10/9 of them, and two more; so also a small image whose last cluster was
    only partly written)."""
    key = ("metadata-preallocated", id(layer))
    if key in cache:
        return cache[key]
    header = layer.header
    image_file = layer._file
    cluster_size = header.cluster_size
    file_length = -(-image_file.size() // SECTOR_SIZE) * SECTOR_SIZE
    real_clusters = image_file.allocated_size() // cluster_size
    threshold = max(real_clusters * 10 // 9, real_clusters + 2)
    end_cluster = -(-file_length // cluster_size)
    refcount_bits = header.refcount_bits
    per_block = cluster_size * 8 // refcount_bits
    table_bytes = min(header.refcount_table_clusters * cluster_size, L.MAX_REFTABLE_BYTES)
    reftable = image_file.pread(header.refcount_table_offset, table_bytes)
    file_size = image_file.size()
    counted = 0
    block_index = 0
    # Refcount blocks seen before (a hostile table may name one block many times).
    counts_by_block = {}
    preallocated = False
    while block_index * per_block < end_cluster:
        if (block_index + 1) * 8 > len(reftable):
            break
        block_offset = int.from_bytes(reftable[block_index * 8:block_index * 8 + 8], "big") & L.REFT_OFFSET_MASK
        if block_offset:
            if block_offset % cluster_size or block_offset + cluster_size > file_size:
                # QEMU's guess fails on a damaged table, and then says "not preallocated".
                break
            entries = min(per_block, end_cluster - block_index * per_block)
            count = counts_by_block.get((block_offset, entries))
            if count is None:
                block = image_file.pread_exact(block_offset, cluster_size, "qcow2 refcount block")
                count = counts_by_block[(block_offset, entries)] = \
                    _count_nonzero_refcounts(block, entries, refcount_bits)
            counted += count
            if counted >= threshold:
                preallocated = True
                break
        block_index += 1
    cache[key] = preallocated
    return preallocated
