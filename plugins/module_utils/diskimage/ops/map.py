# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""map(): the allocation map of ``qemu-img map --output=json``, entry for entry.

QEMU describes each range of one layer with status flags (block status):
DATA (the layer holds bytes), ZERO (reads as zeroes), ALLOCATED (this layer
decides the content) and OFFSET_VALID (a host offset is known).  A range that
is neither DATA nor ZERO falls through to the backing file, and ``depth``
counts how far down the chain that went.  ``layer_status`` reproduces those
flags from the drivers' ``map_runs`` (formats/), with QEMU's rules:

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

# The block status flags are imported from here too.
from ..formats.base import (
    BLOCK_ALLOCATED as ALLOCATED, BLOCK_DATA as DATA, BLOCK_OFFSET_VALID as OFFSET_VALID, BLOCK_ZERO as ZERO,
    StatusRuns as _Runs,
)
from .image import open_driver, translate_os_errors


def qemu_length(layer):
    """The layer's length as QEMU's block layer sees it: whole 512-byte sectors
    (a raw file's partial last sector is rounded up, a format's header size
    rounded down): ``Driver.qemu_length``."""
    return layer.qemu_length()


def layer_status(layer, offset, end, l1_table=None, cache=None):
    """QEMU block status runs of one layer over [offset, end): a list of
    (start, length, flags, host offset or None).  ``l1_table`` replaces a
    qcow2 layer's active L1 table (a snapshot's); ``cache`` (a dict) keeps
    per-layer facts between calls.  The layer's own runs come from
    ``Driver.map_runs``; the backing file's rule is applied here."""
    # A snapshot's L1 table leaves the length alone (as QEMU's temporary snapshot load).
    end = min(end, qemu_length(layer))
    if offset >= end:
        return []
    if cache is None:
        cache = {}
    return _backing_zeroes(layer, layer.map_runs(offset, end, l1_table=l1_table, cache=cache))


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
