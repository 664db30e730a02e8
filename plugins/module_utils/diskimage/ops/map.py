# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""map(): the allocation map of ``qemu-img map --output=json``, entry for entry.

QEMU describes each range of one layer with status flags (block status):
DATA (the layer holds bytes), ZERO (reads as zeroes), ALLOCATED (this layer
decides the content) and OFFSET_VALID (a host offset is known).  A range that
is neither DATA nor ZERO falls through to the backing file, and ``depth``
counts how far down the chain that went.  ``layer_status`` reproduces those
flags from our drivers, with QEMU's rules:

- raw: the file's holes are ZERO and its data DATA, both with the host offset
  (the guest offset) and ALLOCATED; the length is rounded up to 512 bytes.
- qcow2: normal (sub)clusters are DATA with the host offset; compressed ones
  DATA without one; zero ones ZERO, with the host offset when a host cluster
  is still attached; unallocated ones say nothing (but keep the host offset
  of an allocated extended-L2 cluster).  Unallocated ranges read ZERO when
  there is no backing file or they lie past its end.  When the image looks
  preallocated with preallocation=metadata, DATA ranges over holes of the
  file also read ZERO (QEMU asks the file system, "recurse").
- raw-like layers of other formats recurse the same way (DATA ranges over
  holes of the file are DATA and ZERO, with the host offset): a static VDI,
  a fixed VHD, and the flat extents of a VMDK (host offsets in the extent
  file).

``measure`` walks the same status down the whole chain.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array

from ..errors import CorruptImageError
from ..formats import qcow2_layout as L
from ..formats import vdi as vdi_format
from ..formats import vpc as vpc_format
from ..formats.base import DATA as KIND_DATA, ZERO as KIND_ZERO
from .image import open_driver, translate_os_errors

# Block status flags (QEMU's BDRV_BLOCK_* meanings).
DATA = 1
ZERO = 2
OFFSET_VALID = 4
ALLOCATED = 8

SECTOR_SIZE = 512

# Refcount array type codes by entry width (only "is it zero" matters: no byte swap).
_REFCOUNT_ARRAY_TYPES = {8: "B", 16: "H", 32: "I" if array.array("I").itemsize == 4 else "L", 64: "Q"}


def qemu_length(layer):
    """The layer's length as QEMU's block layer sees it: whole 512-byte sectors
    (a raw file's partial last sector is rounded up, a format's header size
    rounded down)."""
    if layer.format_name == "raw":
        return -(-layer.virtual_size // SECTOR_SIZE) * SECTOR_SIZE
    return layer.virtual_size // SECTOR_SIZE * SECTOR_SIZE


class _Runs:
    """Status runs (start, length, flags, host) with adjacent equal runs merged."""

    def __init__(self):
        self.runs = []

    def add(self, start, length, flags, host):
        if length <= 0:
            return
        runs = self.runs
        if runs:
            prev_start, prev_length, prev_flags, prev_host = runs[-1]
            if prev_flags == flags and prev_start + prev_length == start and (
                    (host is None and prev_host is None)
                    or (host is not None and prev_host is not None and prev_host + prev_length == host)):
                runs[-1] = (prev_start, prev_length + length, flags, prev_host)
                return
        runs.append((start, length, flags, host))


def layer_status(layer, offset, end, l1_table=None, cache=None):
    """QEMU block status runs of one layer over [offset, end): a list of
    (start, length, flags, host offset or None).  ``l1_table`` replaces a
    qcow2 layer's active L1 table (a snapshot's); ``cache`` (a dict) keeps
    per-layer facts between calls."""
    # A snapshot's L1 table leaves the length alone (as QEMU's temporary snapshot load).
    end = min(end, qemu_length(layer))
    if offset >= end:
        return []
    if cache is None:
        cache = {}
    if layer.format_name == "raw" and getattr(layer, "image_file", None) is not None:
        runs = _Runs()
        for start, length, is_data in layer.image_file.data_extents(offset, end - offset):
            runs.add(start, length, (DATA if is_data else ZERO) | ALLOCATED | OFFSET_VALID, start)
        return runs.runs
    if layer.format_name == "qcow2" and getattr(layer, "header", None) is not None:
        runs = _qcow2_runs(layer, offset, end, l1_table)
        if _metadata_preallocated(layer, cache):
            runs = _recurse_into_file(layer, runs)
    elif layer.format_name == "vmdk" and hasattr(layer, "_pieces"):
        runs = _vmdk_runs(layer, offset, end)
    else:
        runs = _generic_runs(layer, offset, end)
        image_file = _raw_like_file(layer)
        if image_file is not None:
            runs = _recurse_into(image_file, runs)
    return _backing_zeroes(layer, runs)


def _raw_like_file(layer):
    """The file whose block status QEMU consults under the DATA ranges of a
    static VDI or a fixed VHD (None for other layers)."""
    if layer.format_name == "vdi" and getattr(getattr(layer, "header", None), "image_type", None) \
            == vdi_format.TYPE_STATIC:
        return getattr(layer, "_file", None)
    if layer.format_name == "vpc" and getattr(layer, "disk_type", None) == vpc_format.DISK_FIXED:
        return getattr(layer, "image_file", None)
    return None


def _recurse_into(image_file, runs):
    """DATA ranges with a host offset in ``image_file`` also read ZERO where
    the file has a hole; ZERO ranges with a host offset (holes the driver
    already found) are DATA and ZERO there, as QEMU reports them."""
    result = _Runs()
    for start, length, flags, host in runs:
        if host is None or not flags & OFFSET_VALID or not flags & (DATA | ZERO):
            result.add(start, length, flags, host)
            continue
        if flags & ZERO:
            result.add(start, length, flags | DATA, host)
            continue
        for file_start, file_length, is_data in image_file.data_extents(host, length):
            guest = start + (file_start - host)
            result.add(guest, file_length, flags if is_data else flags | ZERO, file_start)
    return result.runs


def _vmdk_runs(layer, offset, end):
    """VMDK: flat extents as their files' block status (DATA, and ZERO over
    holes, with the offset in the extent file; past a short extent file ZERO
    without one), other extents as the driver reports them."""
    runs = _Runs()
    for extent, start, rel, count in layer._pieces(offset, end - offset):
        if not getattr(extent, "flat", False):
            for run in _generic_runs(layer, start + rel, start + rel + count):
                runs.add(*run)
            continue
        inside = max(0, min(count, extent.image_file.size() - extent.base - rel))
        if inside:
            for file_start, file_length, is_data in extent.image_file.data_extents(extent.base + rel, inside):
                flags = DATA | ALLOCATED | OFFSET_VALID | (0 if is_data else ZERO)
                runs.add(start + file_start - extent.base, file_length, flags, file_start)
        if inside < count:
            runs.add(start + rel + inside, count - inside, ZERO | ALLOCATED, None)
    return runs.runs


def _generic_runs(layer, offset, end):
    """Flags from the Driver interface's block status (formats without a
    QEMU-specific walk here)."""
    runs = _Runs()
    for extent in layer.block_status(offset, end - offset):
        if extent.kind == KIND_DATA:
            flags = DATA | ALLOCATED
        elif extent.kind == KIND_ZERO:
            flags = ZERO | ALLOCATED
        else:
            flags = 0
        if extent.offset is not None:
            flags |= OFFSET_VALID
        runs.add(extent.start, extent.length, flags, extent.offset)
    return runs.runs


def _backing_zeroes(layer, runs):
    """Ranges no layer describes read as zeroes without a backing file, and
    past the backing file's end (QEMU's rule for formats with backing files)."""
    backing = layer.backing
    backing_end = qemu_length(backing) if backing is not None else 0
    result = _Runs()
    for start, length, flags, host in runs:
        if flags & (DATA | ZERO):
            result.add(start, length, flags, host)
            continue
        split = min(max(start, backing_end), start + length)
        if split > start:
            result.add(start, split - start, flags, host)
        if split < start + length:
            result.add(split, start + length - split, flags | ZERO,
                       None if host is None else host + (split - start))
    return result.runs


# ------------------------------------------------------------------- qcow2
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


# --------------------------------------------------------------------- map
def chain_status(layer, offset, end, depth=0, cache=None, out=None):
    """(start, length, depth, flags, host) over [offset, end) down the chain,
    as qemu-img map resolves it: the first layer whose status is DATA or ZERO
    decides; without one, the last layer's status stands."""
    if out is None:
        out = []
    if cache is None:
        cache = {}
    for start, length, flags, host in layer_status(layer, offset, end, cache=cache):
        if flags & (DATA | ZERO) or layer.backing is None:
            out.append((start, length, depth, flags, host))
        else:
            chain_status(layer.backing, start, start + length, depth + 1, cache, out)
    return out


def _entry(start, length, depth, flags, host):
    entry = {
        "start": start,
        "length": length,
        "depth": depth,
        "present": bool(flags & ALLOCATED),
        "zero": bool(flags & ZERO),
        "data": bool(flags & DATA),
    }
    if flags & OFFSET_VALID:
        entry["offset"] = host
    return entry


def _mergeable(current, following):
    for key in ("depth", "present", "zero", "data"):
        if current[key] != following[key]:
            return False
    if ("offset" in current) != ("offset" in following):
        return False
    if "offset" in current and current["offset"] + current["length"] != following["offset"]:
        return False
    return current["start"] + current["length"] == following["start"]


@translate_os_errors("map failed")
def map(path, fmt=None, allow_dirs=None, force_share=False, member=None,  # pylint: disable=redefined-builtin
        trusted_files=None):
    """The allocation map of ``path`` and its backing chain, as the list
    ``qemu-img map --output=json`` prints: dicts with start, length, depth,
    present, zero, data and (when the host offset is known) offset.
    ``member``: a disk inside an OVA or Vagrant box (offsets within the member)."""
    driver = open_driver(path, fmt=fmt, readonly=True, allow_dirs=allow_dirs, force_share=force_share,
                         member=member, trusted_files=trusted_files)
    try:
        entries = []
        for start, length, depth, flags, host in chain_status(driver, 0, qemu_length(driver)):
            entry = _entry(start, length, depth, flags, host)
            if entries and _mergeable(entries[-1], entry):
                entries[-1]["length"] += length
            else:
                entries.append(entry)
        return entries
    finally:
        driver.close()
