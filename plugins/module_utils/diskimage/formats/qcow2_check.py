# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consistency check of a qcow2 image, with the semantics of ``qemu-img check``.

The check walks every metadata structure of the image (header, active and
snapshot L1/L2 tables, data clusters, snapshot table, refcount table and
blocks, crypto header, bitmap directory, tables and data), counts how many
references each host cluster receives, and compares these counts with the
refcounts stored in the image (any width, 1..64 bits), as QEMU's
block/qcow2-refcount.c does.  Only the qcow2 layout (formats/qcow2_layout.py)
and the image file's ``pread``/``size`` are used.

``check_image`` returns the dictionary printed by ``qemu-img check
--output=json`` without "filename" and "format" (the ops layer adds them):

  check-errors         always present: internal errors (I/O failures, refcounts
                       that cannot be read)
  image-end-offset     (highest cluster in use, by refcount or reference, + 1)
                       * cluster size
  total-clusters       virtual size in clusters
  allocated-clusters   guest clusters allocated in the active L1 (normal,
                       zero-with-offset and compressed)
  fragmented-clusters  allocated clusters not following the previous one in the
                       same L2 table (every compressed cluster counts)
  compressed-clusters  compressed guest clusters in the active L1
  leaks                clusters whose refcount is higher than their references
  corruptions          everything else found wrong: refcount lower than the
                       references, misaligned or out-of-file tables, reserved
                       bits, OFLAG_COPIED mismatches, ...
  leaks-fixed, corruptions-fixed   (repair only) what the repair fixed

Repair (``repair="leaks"`` or ``"all"``, the image file opened writable)
follows ``qemu-img check -r``: "leaks" lowers refcounts that are too high;
"all" also raises refcounts that are too low, fixes OFLAG_COPIED in the
active tables, turns misaligned preallocated clusters into zero clusters,
extends the file over a refcount block past its end, and rebuilds the
refcount table and blocks from the computed references when the refcount
structure itself is broken (refcount 0 on a used cluster, bad refcount table
entries, shared refcount blocks).  A rebuild writes the new blocks and table
in unreferenced clusters (QEMU's placement, but never over the old
structures), flushes, then points the header at them; the old structures are
then freed as leaks.  When something was fixed the image is checked again and
the result has that second check's counts plus the fixed counts, as qemu-img
prints them.  Every repair write is first checked against the metadata of
other kinds (header, L1/L2 tables, refcount table and blocks, snapshot table,
bitmap directory); a hit marks the image corrupt and stops the repair.  A rebuild needed in "leaks" mode raises CorruptImageError, as
qemu-img check -r leaks fails.  A repair without corruptions or check errors
left clears the dirty and corrupt bits.  ``repair_dirty`` is the repair QEMU
does when it opens a dirty (lazy refcounts) image for writing.

Known differences: snapshot table entries are not repaired; persistent
bitmaps are kept as they are (qemu-img check -r releases them on its
read-write open, reporting their clusters as fixed leaks, and stores them
again on close); a refcount block past the end of the file is not reached by
extending the file beyond MAX_CHECK_CLUSTERS clusters (a rebuild is done).

Where qemu-img refuses to open an image (e.g. an invalid bitmap table entry
makes QEMU fail to load the bitmap), the check still reports what it finds
(here: a corruption).  A snapshot table or bitmap directory that QEMU cannot
read makes the check fail with CorruptImageError, as qemu-img check fails.

As qemu-img does, the keys other than check-errors are omitted when zero.
One key qemu-img does not print is added:

  messages             list of human-readable findings, worded as qemu-img
                       prints them on stderr ("Leaked cluster 5 refcount=1
                       reference=0", "ERROR cluster 3 refcount=0 reference=1",
                       "ERROR OFLAG_COPIED data cluster: ...").  At most
                       MAX_MESSAGES are kept; the last one then says how many
                       more were found.

``compute_references`` returns the computed reference counts alone (what a
refcount rebuild stores).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import struct
import sys

from ..errors import CorruptImageError, ImageError, InvalidOptionError, UnsupportedOperation
from .qcow2_layout import (
    AUTOCLEAR_BITMAPS, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, L1E_OFFSET_MASK,
    L1E_RESERVED_MASK, L2_ENTRY, L2_ENTRY_EXTENDED, L2E_OFFSET_MASK, L2E_RESERVED_MASK,
    MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFTABLE_BYTES, MAX_SNAPSHOT_TABLE_BYTES, MIN_CLUSTER_BITS,
    OFF_INCOMPATIBLE_FEATURES,
    OFF_REFCOUNT_TABLE_OFFSET, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO, REFT_OFFSET_MASK,
    SNAPSHOT_EXTRA_MIN, SNAPSHOT_HEADER, align_up, pad8, parse_header,
)

# Refcount table entry bits 0-8 are reserved ("Host cluster management").
REFT_RESERVED_MASK = 0x1ff
# Subcluster allocation bitmap: bits 0-31 "allocated", bits 32-63 "reads as zero".
SUBCLUSTER_ALLOC_MASK = 0xffffffff
# Compressed data is addressed in 512-byte sectors ("Compressed Clusters Descriptor").
COMPRESSED_SECTOR_SIZE = 512
# Snapshot table entry: extra data beyond this is refused by QEMU without repair.
MAX_SNAPSHOT_EXTRA_DATA = 1024

# --- "Bitmaps extension" / "Bitmap directory" ----------------------------------------
# bitmap_table_offset, bitmap_table_size, flags, type, granularity_bits,
# name_size, extra_data_size
BITMAP_DIRECTORY_ENTRY = struct.Struct(">QIIBBHI")
BITMAP_TYPE_DIRTY_TRACKING = 1
BITMAP_RESERVED_FLAGS = 0xfffffffc      # bits 0 (in_use) and 1 (auto) are defined
BITMAP_MAX_TABLE_ENTRIES = 0x8000000
BITMAP_MAX_NAME_SIZE = 1023
BITMAP_MAX_DIRECTORY_BYTES = 64 * 1024 * 1024
# Bitmap table entry: bits 9-55 offset, bit 0 "all ones" when offset is 0.
BITMAP_TABLE_OFFSET_MASK = 0x00fffffffffffe00
BITMAP_TABLE_RESERVED_MASK = 0xff000000000001fe
BITMAP_TABLE_ALL_ONES = 1

# Caps (docs/security.md rule 5): the reference count array holds one
# counter per host cluster of the file.
MAX_CHECK_CLUSTERS = 1 << 26
MAX_MESSAGES = 10000
# Bitmap tables are read in slices of this many bytes.
_TABLE_SLICE = 4 * 1024 * 1024

_LITTLE_ENDIAN = sys.byteorder == "little"

_U32 = "I" if array.array("I").itemsize == 4 else "L"


def _be64_array(data):
    """Big-endian 64-bit table entries → array('Q') of ints (no per-entry loop)."""
    table = array.array("Q")
    table.frombytes(data)
    if _LITTLE_ENDIAN:
        table.byteswap()
    return table


_ENTRIES_PER_SLICE = 4096
_ZERO_SLICE = bytes(8 * _ENTRIES_PER_SLICE)


def _nonzero_entries(data):
    """(index, value) of the non-zero big-endian 64-bit entries of a table,
    skipping all-zero stretches without looking at their entries."""
    step = len(_ZERO_SLICE)
    for start in range(0, len(data), step):
        piece = data[start:start + step]
        if piece == _ZERO_SLICE[:len(piece)]:
            continue
        first = start // 8
        for index, value in enumerate(_be64_array(piece)):
            if value:
                yield first + index, value


def _last_nonzero(counts):
    """Index of the last non-zero item of an array, or -1."""
    raw = counts.tobytes().rstrip(b"\0")
    return (len(raw) - 1) // counts.itemsize if raw else -1


# Refcount blocks narrower than a byte: entry i lives in byte i // per_byte at
# bit (i % per_byte) * width, least significant first ("Host cluster management").
# One translation table per position in the byte extracts that entry of every
# byte at once.
_SUBBYTE_TABLES = {}
for _width in (1, 2, 4):
    _mask = (1 << _width) - 1
    _SUBBYTE_TABLES[_width] = [bytes(((value >> (position * _width)) & _mask) for value in range(256))
                               for position in range(8 // _width)]
del _width, _mask


def _decode_refcount_block(block, refcount_bits):
    """One refcount block's bytes → array of its entries."""
    if refcount_bits == 8:
        return array.array("B", block)
    if refcount_bits < 8:
        tables = _SUBBYTE_TABLES[refcount_bits]
        per_byte = len(tables)
        entries = bytearray(len(block) * per_byte)
        for position, table in enumerate(tables):
            entries[position::per_byte] = block.translate(table)
        return array.array("B", bytes(entries))
    typecode = {16: "H", 32: _U32, 64: "Q"}[refcount_bits]
    entries = array.array(typecode)
    entries.frombytes(block)
    if _LITTLE_ENDIAN:
        entries.byteswap()
    return entries


class Findings:
    """Counters and messages of one check (BdrvCheckResult)."""

    def __init__(self):
        self.check_errors = 0
        self.corruptions = 0
        self.leaks = 0
        self.corruptions_fixed = 0
        self.leaks_fixed = 0
        self.total_clusters = 0
        self.allocated_clusters = 0
        self.fragmented_clusters = 0
        self.compressed_clusters = 0
        self.image_end_offset = 0
        self.messages = []
        self._unlisted = 0

    _COUNTERS = ("check_errors", "corruptions", "leaks", "corruptions_fixed", "leaks_fixed")

    def counters(self):
        """The error and repair counters, to be put back with restore()."""
        return dict((name, getattr(self, name)) for name in self._COUNTERS)

    def restore(self, counters):
        for name, value in counters.items():
            setattr(self, name, value)

    def say(self, message):
        if len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)
        else:
            self._unlisted += 1

    def corruption(self, message):
        self.corruptions += 1
        self.say(message)

    def check_error(self, message):
        self.check_errors += 1
        self.say(message)

    def as_dict(self):
        result = {"check-errors": self.check_errors}
        for key, value in (("image-end-offset", self.image_end_offset),
                           ("total-clusters", self.total_clusters),
                           ("allocated-clusters", self.allocated_clusters),
                           ("fragmented-clusters", self.fragmented_clusters),
                           ("compressed-clusters", self.compressed_clusters),
                           ("leaks", self.leaks),
                           ("corruptions", self.corruptions),
                           ("leaks-fixed", self.leaks_fixed),
                           ("corruptions-fixed", self.corruptions_fixed)):
            if value:
                result[key] = value
        messages = list(self.messages)
        if self._unlisted:
            messages.append("... and %d more findings not listed" % self._unlisted)
        result["messages"] = messages
        return result


class References:
    """Reference counts computed by walking the metadata: ``counts[i]`` is the
    number of references host cluster ``i`` receives (what a refcount rebuild
    would store).  ``nb_clusters`` may exceed the file's clusters by one when a
    structure ends in a partial last cluster.  ``rebuild_needed`` is set when
    the refcount structures themselves are damaged (QEMU's ``rebuild``)."""

    def __init__(self, counts, cluster_bits, refcount_bits, findings):
        self.counts = counts
        self.cluster_bits = cluster_bits
        self.refcount_bits = refcount_bits
        self.findings = findings
        self.rebuild_needed = False
        self.refcount_table = None      # array('Q') of the stored refcount table
        self.snapshots = []             # (id, name, l1_table_offset, l1_size)
        self.snapshots_size = 0

    @property
    def nb_clusters(self):
        return len(self.counts)


class _Walker:
    """Walks the metadata of one image and fills a References."""

    def __init__(self, image_file, header, path, fix=0, findings=None):
        self.image_file = image_file
        self.fix = fix
        self.header = header
        self.path = path if path is not None else getattr(image_file, "path", None)
        self.cluster_bits = header.cluster_bits
        self.cluster_size = header.cluster_size
        self.file_size = image_file.size()
        self.extended_l2 = header.extended_l2
        self.has_data_file = bool(header.incompatible_features & INCOMPAT_DATA_FILE)
        nb_clusters = -(-self.file_size // self.cluster_size)
        if nb_clusters > MAX_CHECK_CLUSTERS:
            raise UnsupportedOperation(
                "qcow2 check: the image file has %d clusters of %d bytes; the checker holds at most %d "
                "cluster reference counts in memory" % (nb_clusters, self.cluster_size, MAX_CHECK_CLUSTERS),
                self.path)
        refcount_bits = header.refcount_bits
        if refcount_bits <= 8:
            typecode = "B"
        elif refcount_bits == 16:
            typecode = "H"
        else:
            # Wider counters than 32 bits cannot be reached by any image the cap admits.
            typecode = _U32
        counts = array.array(typecode, bytes(nb_clusters * array.array(typecode).itemsize))
        self.refcount_max = min((1 << refcount_bits) - 1, (1 << (8 * counts.itemsize)) - 1)
        self.findings = findings if findings is not None else Findings()
        self._metadata = None
        self.zero_cluster = bytes(self.cluster_size)
        self.refs = References(counts, self.cluster_bits, refcount_bits, self.findings)
        # Compressed cluster descriptor: host offset in the low bits, then the
        # number of additional 512-byte sectors.
        self.csize_shift = 62 - (self.cluster_bits - 8)
        self.csize_mask = (1 << (self.cluster_bits - 8)) - 1
        self.coffset_mask = (1 << self.csize_shift) - 1

    # ------------------------------------------------------------------ I/O
    def read(self, offset, length, what):
        """Bytes at offset, zero-filled past the end of the file (as QEMU's block
        layer reads), or None after counting an I/O error."""
        try:
            data = self.image_file.pread(offset, length)
        except (OSError, OverflowError) as exc:
            self.findings.check_error("ERROR: I/O error reading %s at offset 0x%x: %s" % (what, offset, exc))
            return None
        if len(data) < length:
            data = bytes(data) + bytes(length - len(data))
        return data

    def write(self, offset, data, ignore=()):
        """Repairs only: write metadata in place, after checking that the
        clusters written hold no metadata other than the kinds in ``ignore``
        (docs/security.md rule 6)."""
        if self._metadata is None:
            self._metadata = _MetadataRanges(self)
        self._metadata.check(offset, len(data), ignore)
        self.image_file.pwrite(offset, data)

    def write_header(self, offset, data):
        self.image_file.pwrite(offset, data)

    # ------------------------------------------------------------ counting
    def inc(self, offset, size):
        """Count one reference to every cluster that [offset, offset+size) touches."""
        if size <= 0:
            return
        cluster_size = self.cluster_size
        # The last cluster may be partly beyond the end of the file; more is corrupt.
        if offset + size - self.file_size >= cluster_size:
            self.findings.corruption(
                "ERROR: counting reference for region exceeding the end of the file by one cluster "
                "or more: offset 0x%x size 0x%x" % (offset, size))
            return
        counts = self.refs.counts
        first = offset >> self.cluster_bits
        last = (offset + size - 1) >> self.cluster_bits
        if last >= len(counts):
            counts.extend(array.array(counts.typecode, bytes((last + 1 - len(counts)) * counts.itemsize)))
        refcount_max = self.refcount_max
        for cluster in range(first, last + 1):
            if counts[cluster] >= refcount_max:
                self.findings.corruption("ERROR: overflow cluster offset=0x%x" % (cluster << self.cluster_bits))
                continue
            counts[cluster] += 1

    # ------------------------------------------------------------ L1 / L2
    def walk_l1(self, l1_offset, l1_size, active):
        if not l1_size:
            return
        self.inc(l1_offset, l1_size * 8)
        data = self.read_table(l1_offset, l1_size * 8, "L1 table")
        if data is None:
            return
        cluster_size = self.cluster_size
        for _index, l1_entry in _nonzero_entries(data):
            if l1_entry & L1E_RESERVED_MASK:
                self.findings.corruption("ERROR found L1 entry with reserved bits set: %x" % l1_entry)
            l2_offset = l1_entry & L1E_OFFSET_MASK
            self.inc(l2_offset, cluster_size)
            if l2_offset & (cluster_size - 1):
                self.findings.corruption("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted"
                                         % l2_offset)
            self.walk_l2(l2_offset, active)

    def read_table(self, offset, length, what):
        """Like read(), but only the part inside the file is read: a table's
        entries past the end of the file are zero (unused) anyway."""
        # whole 16-byte units, so that extended L2 entries stay paired
        in_file = min(length, align_up(max(0, self.file_size - offset), 16))
        return self.read(offset, in_file, what)

    def read_l2(self, l2_offset):
        """(standard entries, subcluster bitmaps or None) of the L2 table at
        l2_offset; (None, None) when it cannot be read or holds only zeroes."""
        data = self.read_table(l2_offset, self.cluster_size, "L2 table")
        if data is None or data == self.zero_cluster[:len(data)]:
            return None, None
        table = _be64_array(data)
        if self.extended_l2:
            return table[0::2], table[1::2]
        return table, None

    def walk_l2(self, l2_offset, active):
        entries, bitmaps = self.read_l2(l2_offset)
        if entries is None:
            return
        findings = self.findings
        counts = self.refs.counts
        cluster_bits = self.cluster_bits
        cluster_size = self.cluster_size
        misaligned = cluster_size - 1
        file_size = self.file_size
        refcount_max = self.refcount_max
        extended = bitmaps is not None
        has_data_file = self.has_data_file
        # Entries without any of these bits are plain allocated data clusters
        # (or unallocated ones when the offset is 0): the fast path below.
        special = OFLAG_COMPRESSED | L2E_RESERVED_MASK | OFLAG_ZERO | (misaligned & L2E_OFFSET_MASK)
        plain_table = not extended and not has_data_file
        allocated = fragmented = compressed = 0
        next_contiguous = 0
        for index, l2_entry in enumerate(entries):
            if plain_table:
                if not l2_entry:
                    continue
                if not l2_entry & special:
                    offset = l2_entry & L2E_OFFSET_MASK
                    if not offset:
                        continue
                    if active:
                        allocated += 1
                        if next_contiguous and offset != next_contiguous:
                            fragmented += 1
                        next_contiguous = offset + cluster_size
                    cluster = offset >> cluster_bits
                    if offset < file_size and counts[cluster] < refcount_max:
                        counts[cluster] += 1
                    else:
                        self.inc(offset, cluster_size)      # reports and grows
                    continue
                bitmap = 0
            else:
                bitmap = bitmaps[index] if extended else 0
                if not l2_entry and not bitmap:
                    continue
            if l2_entry & OFLAG_COMPRESSED:
                if l2_entry & OFLAG_COPIED:
                    findings.corruption("ERROR: coffset=0x%x: copied flag must never be set for compressed clusters"
                                        % (l2_entry & self.coffset_mask))
                    l2_entry &= ~OFLAG_COPIED
                if has_data_file:
                    findings.corruption("ERROR compressed cluster %d with data file, entry=0x%x" % (index, l2_entry))
                    continue
                if bitmap:
                    findings.corruption("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, "
                                        "entry=0x%x" % (index, l2_entry))
                    continue
                coffset = l2_entry & self.coffset_mask
                sectors = ((l2_entry >> self.csize_shift) & self.csize_mask) + 1
                self.inc(coffset, sectors * COMPRESSED_SECTOR_SIZE - (coffset & (COMPRESSED_SECTOR_SIZE - 1)))
                if active:
                    allocated += 1
                    compressed += 1
                    # Compressed clusters are fragmented by nature (QEMU counts them so).
                    fragmented += 1
                continue
            if l2_entry & L2E_RESERVED_MASK:
                findings.corruption("ERROR found l2 entry with reserved bits set: %x" % l2_entry)
            offset = l2_entry & L2E_OFFSET_MASK
            if l2_entry & OFLAG_ZERO and not extended:
                if not offset:
                    continue            # zero cluster without preallocation
            elif not offset and not (has_data_file and l2_entry & OFLAG_COPIED):
                if bitmap & SUBCLUSTER_ALLOC_MASK:
                    findings.corruption("ERROR: Unallocated cluster has non-zero subcluster allocation map")
                continue
            # normal cluster, or zero cluster with a preallocated host cluster
            if (bitmap >> 32) & bitmap:
                findings.corruption("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap"
                                    % offset)
            if offset & misaligned:
                if extended:
                    contains_data = bitmap & SUBCLUSTER_ALLOC_MASK
                else:
                    contains_data = not l2_entry & OFLAG_ZERO
                if contains_data:
                    findings.corruption("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted."
                                        % offset)
                elif self.fix & FIX_ERRORS:
                    findings.corruptions += 1
                    findings.say("Repairing offset=%x: Preallocated cluster is not properly aligned; "
                                 "L2 entry corrupted." % offset)
                    self.zero_l2_entry(l2_offset, index, bitmap, active)
                    findings.corruptions -= 1
                    findings.corruptions_fixed += 1
                    continue            # the cluster is unused now
                else:
                    findings.corruption("ERROR offset=%x: Preallocated cluster is not properly aligned; "
                                        "L2 entry corrupted." % offset)
            if active:
                allocated += 1
                if next_contiguous and offset != next_contiguous:
                    fragmented += 1
                next_contiguous = offset + cluster_size
            if not has_data_file:
                self.inc(offset, cluster_size)
        findings.allocated_clusters += allocated
        findings.fragmented_clusters += fragmented
        findings.compressed_clusters += compressed

    def zero_l2_entry(self, l2_offset, index, bitmap, active):
        """Repair: a preallocated cluster at a misaligned offset becomes a zero
        cluster without host cluster (its allocated subclusters read as zero)."""
        ignore = (_ACTIVE_L2 if active else _INACTIVE_L2,)
        if self.extended_l2:
            bitmap = ((bitmap | bitmap << 32) & ~SUBCLUSTER_ALLOC_MASK) & 0xffffffffffffffff
            self.write(l2_offset + 16 * index, L2_ENTRY_EXTENDED.pack(0, bitmap), ignore)
        else:
            self.write(l2_offset + 8 * index, L2_ENTRY.pack(OFLAG_ZERO), ignore)

    # ------------------------------------------------------------ snapshots
    def read_snapshot_table(self):
        """Snapshot entries as (id, name, l1_table_offset, l1_size); sets snapshots_size.
        A table QEMU cannot read makes the check fail, as qemu-img check does."""
        header = self.header
        offset = header.snapshots_offset
        snapshots = []
        if not header.nb_snapshots:
            return snapshots
        position = offset
        for index in range(header.nb_snapshots):
            fixed = self.read(position, SNAPSHOT_HEADER.size, "snapshot table entry %d" % index)
            if fixed is None:
                raise CorruptImageError("qcow2 check: snapshot table entry %d at 0x%x cannot be read"
                                        % (index, position), self.path)
            (l1_offset, l1_size, id_size, name_size, _date_sec, _date_nsec, _vm_clock,
             _vm_state_size, extra_size) = SNAPSHOT_HEADER.unpack(fixed)
            if extra_size > MAX_SNAPSHOT_EXTRA_DATA:
                raise CorruptImageError("qcow2 check: snapshot table entry %d: extra data expected <= %d bytes, "
                                        "found %d (qemu-img check -r all drops it)"
                                        % (index, MAX_SNAPSHOT_EXTRA_DATA, extra_size), self.path)
            names_at = position + SNAPSHOT_HEADER.size + extra_size
            names = self.read(names_at, id_size + name_size, "snapshot table entry %d names" % index)
            if names is None:
                raise CorruptImageError("qcow2 check: snapshot table entry %d names at 0x%x cannot be read"
                                        % (index, names_at), self.path)
            position = offset + pad8(names_at + id_size + name_size - offset)
            if position - offset > MAX_SNAPSHOT_TABLE_BYTES:
                raise CorruptImageError("qcow2 check: snapshot table expected <= %d bytes, entry %d ends at +%d"
                                        % (MAX_SNAPSHOT_TABLE_BYTES, index, position - offset), self.path)
            if header.version >= 3 and extra_size < SNAPSHOT_EXTRA_MIN:
                # v3 entries must record vm_state_size_large and disk_size
                self.findings.corruption("ERROR snapshot table entry %d is incomplete" % index)
            snapshots.append((names[:id_size].decode("utf-8", "replace"),
                              names[id_size:].decode("utf-8", "replace"), l1_offset, l1_size))
        self.refs.snapshots = snapshots
        self.refs.snapshots_size = position - offset
        return snapshots

    def walk_snapshots(self, snapshots):
        findings = self.findings
        if self.has_data_file and snapshots:
            findings.corruption("ERROR %d snapshots in image with data file" % len(snapshots))
        for snapshot_id, name, l1_offset, l1_size in snapshots:
            if l1_offset & (self.cluster_size - 1):
                findings.corruption("ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; "
                                    "snapshot table entry corrupted" % (snapshot_id, name, l1_offset))
                continue
            if l1_size * 8 > MAX_L1_BYTES:
                findings.corruption("ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table "
                                    "entry corrupted" % (snapshot_id, name, l1_size))
                continue
            self.walk_l1(l1_offset, l1_size, False)
        self.inc(self.header.snapshots_offset, self.refs.snapshots_size)

    # ------------------------------------------------------------ bitmaps
    def walk_bitmaps(self):
        header = self.header
        # A bitmaps extension without the autoclear bit was invalidated by a
        # program without bitmap support: QEMU ignores it.
        if not header.bitmaps or not header.autoclear_features & AUTOCLEAR_BITMAPS:
            return
        nb_bitmaps, directory_size, directory_offset = header.bitmaps
        if not nb_bitmaps:
            return
        if directory_size > BITMAP_MAX_DIRECTORY_BYTES or directory_offset & (self.cluster_size - 1):
            raise CorruptImageError("qcow2 bitmaps extension: directory of %d bytes at 0x%x: expected at most %d "
                                    "bytes at a cluster boundary" % (directory_size, directory_offset,
                                                                     BITMAP_MAX_DIRECTORY_BYTES), self.path)
        self.inc(directory_offset, directory_size)
        directory = self.read(directory_offset, directory_size, "bitmap directory")
        if directory is None:
            return
        position = 0
        tables = []
        for index in range(nb_bitmaps):
            if position + BITMAP_DIRECTORY_ENTRY.size > directory_size:
                self.findings.corruption("ERROR bitmap directory entry %d runs past the directory (%d bytes)"
                                         % (index, directory_size))
                raise CorruptImageError("qcow2 bitmap directory: entry %d at +%d runs past the directory "
                                        "(%d bytes)" % (index, position, directory_size), self.path)
            (table_offset, table_size, flags, bitmap_type, _granularity_bits, name_size,
             extra_size) = BITMAP_DIRECTORY_ENTRY.unpack_from(directory, position)
            if (not table_size or not table_offset or table_offset & (self.cluster_size - 1)
                    or table_size > BITMAP_MAX_TABLE_ENTRIES or flags & BITMAP_RESERVED_FLAGS
                    or name_size > BITMAP_MAX_NAME_SIZE or bitmap_type != BITMAP_TYPE_DIRTY_TRACKING):
                raise CorruptImageError("qcow2 bitmap directory: entry %d is invalid (table 0x%x, %d entries, "
                                        "flags 0x%x, type %d, name %d bytes)"
                                        % (index, table_offset, table_size, flags, bitmap_type, name_size),
                                        self.path)
            tables.append((table_offset, table_size))
            position += pad8(BITMAP_DIRECTORY_ENTRY.size + extra_size + name_size)
        for table_offset, table_size in tables:
            self.inc(table_offset, table_size * 8)
            # Entries past the end of the file read as zeroes (unused): skip them.
            in_file = min(table_size * 8, max(0, self.file_size - table_offset))
            for start in range(0, in_file, _TABLE_SLICE):
                length = min(_TABLE_SLICE, in_file - start)
                data = self.read(table_offset + start, length, "bitmap table")
                if data is None:
                    return
                if data != bytes(length):
                    self.walk_bitmap_table(_be64_array(data[:length - length % 8]))

    def walk_bitmap_table(self, entries):
        cluster_size = self.cluster_size
        for entry in entries:
            if not entry:
                continue
            offset = entry & BITMAP_TABLE_OFFSET_MASK
            if entry & BITMAP_TABLE_RESERVED_MASK or (
                    offset and (entry & BITMAP_TABLE_ALL_ONES or offset & (cluster_size - 1))):
                self.findings.corruption("ERROR bitmap table entry 0x%x is invalid" % entry)
                continue
            if offset:
                self.inc(offset, cluster_size)

    # ------------------------------------------------------------ refcounts
    def read_refcount_table(self):
        header = self.header
        size = header.refcount_table_clusters * self.cluster_size
        data = self.read(header.refcount_table_offset, size, "refcount table")
        table = _be64_array(data if data is not None else bytes(size))
        self.refs.refcount_table = table
        return table

    def walk_refcount_blocks(self, refcount_table):
        findings = self.findings
        counts = self.refs.counts
        for index, entry in enumerate(refcount_table):
            if not entry:
                continue
            if entry & REFT_RESERVED_MASK:
                findings.corruption("ERROR refcount table entry %d has reserved bits set" % index)
                self.refs.rebuild_needed = True
                continue
            offset = entry & REFT_OFFSET_MASK
            if offset & (self.cluster_size - 1):
                findings.corruption("ERROR refcount block %d is not cluster aligned; refcount table entry "
                                    "corrupted" % index)
                self.refs.rebuild_needed = True
                continue
            cluster = offset >> self.cluster_bits
            if cluster >= len(counts):
                findings.corruptions += 1
                if self.fix & FIX_ERRORS:
                    findings.say("Repairing refcount block %d is outside image" % index)
                    if self.grow_file_for_refcount_block(offset):
                        findings.corruptions -= 1
                        findings.corruptions_fixed += 1
                        self.inc(offset, self.cluster_size)
                    else:
                        self.refs.rebuild_needed = True
                else:
                    findings.say("ERROR refcount block %d is outside image" % index)
                continue
            self.inc(offset, self.cluster_size)
            if counts[cluster] != 1:
                findings.corruption("ERROR refcount block %d refcount=%d" % (index, counts[cluster]))
                self.refs.rebuild_needed = True

    def grow_file_for_refcount_block(self, offset):
        """Extend the file to cover a refcount block lying past its end (the
        block then reads as zeroes), as qemu-img check -r all does."""
        new_size = offset + self.cluster_size
        if -(-new_size // self.cluster_size) > MAX_CHECK_CLUSTERS:
            self.findings.say("ERROR could not resize image: File too large")
            return False
        try:
            self.image_file.truncate(new_size)
            self.file_size = self.image_file.size()
        except (OSError, ImageError) as exc:
            self.findings.say("ERROR could not resize image: %s" % exc)
            return False
        counts = self.refs.counts
        missing = -(-self.file_size // self.cluster_size) - len(counts)
        if missing > 0:
            counts.extend(array.array(counts.typecode, bytes(missing * counts.itemsize)))
        return True

    def compute(self):
        header = self.header
        # QEMU reads (and checks) the snapshot table before counting references.
        snapshots = self.read_snapshot_table()
        self.read_refcount_table()
        self.inc(0, self.cluster_size)                                  # header
        self.walk_l1(header.l1_table_offset, header.l1_size, True)      # active L1
        self.walk_snapshots(snapshots)
        self.inc(header.refcount_table_offset, header.refcount_table_clusters * self.cluster_size)
        if header.crypto_header:
            self.inc(header.crypto_header[0], header.crypto_header[1])
        self.walk_bitmaps()
        self.walk_refcount_blocks(self.refs.refcount_table)
        return self.refs


# Metadata kinds of the overlap check, named as QEMU names them.
_HEADER = "qcow2_header"
_ACTIVE_L1 = "active L1 table"
_ACTIVE_L2 = "active L2 table"
_REFCOUNT_TABLE = "refcount table"
_REFCOUNT_BLOCK = "refcount block"
_SNAPSHOT_TABLE = "snapshot table"
_INACTIVE_L1 = "inactive L1 table"
_INACTIVE_L2 = "inactive L2 table"
_BITMAP_DIRECTORY = "bitmap directory"


class _MetadataRanges:
    """Where the image's metadata lies, so that a repair never writes over
    metadata of another kind (QEMU's overlap check; like QEMU's default
    "cached" mode, inactive L2 tables are not looked up)."""

    def __init__(self, walker):
        header = walker.header
        refs = walker.refs
        cluster_size = walker.cluster_size
        self.walker = walker
        self.cluster_size = cluster_size
        ranges = [(0, cluster_size, _HEADER),
                  (header.refcount_table_offset, header.refcount_table_clusters * cluster_size, _REFCOUNT_TABLE)]
        if header.l1_size:
            ranges.append((header.l1_table_offset, header.l1_size * 8, _ACTIVE_L1))
            l1_table = walker.read(header.l1_table_offset, header.l1_size * 8, "L1 table") or b""
            ranges.extend((entry & L1E_OFFSET_MASK, cluster_size, _ACTIVE_L2)
                          for _index, entry in _nonzero_entries(l1_table) if entry & L1E_OFFSET_MASK)
        if refs.snapshots_size:
            ranges.append((header.snapshots_offset, refs.snapshots_size, _SNAPSHOT_TABLE))
        ranges.extend((l1_offset, l1_size * 8, _INACTIVE_L1) for _id, _name, l1_offset, l1_size in refs.snapshots
                      if l1_size)
        if refs.refcount_table is not None:
            ranges.extend((entry & REFT_OFFSET_MASK, cluster_size, _REFCOUNT_BLOCK)
                          for entry in refs.refcount_table if entry & REFT_OFFSET_MASK)
        if header.bitmaps and header.autoclear_features & AUTOCLEAR_BITMAPS and header.bitmaps[1]:
            ranges.append((header.bitmaps[2], header.bitmaps[1], _BITMAP_DIRECTORY))
        self.ranges = ranges

    def check(self, offset, length, ignore):
        """Raise CorruptImageError (after marking the image corrupt) when the
        clusters of [offset, offset+length) hold metadata not of a kind in ``ignore``."""
        start = offset - offset % self.cluster_size
        end = align_up(offset + length, self.cluster_size)
        for range_start, range_length, kind in self.ranges:
            if kind in ignore or not range_length:
                continue
            if range_start < end and start < range_start + range_length:
                _mark_corrupt(self.walker)
                raise CorruptImageError("qcow2 repair: preventing a write of %d bytes at 0x%x over the %s at 0x%x; "
                                        "the image is now marked corrupt" % (length, offset, kind, range_start),
                                        self.walker.path)


def _mark_corrupt(walker):
    header = walker.header
    if header.version >= 3:
        walker.write_header(OFF_INCOMPATIBLE_FEATURES,
                            struct.pack(">Q", header.incompatible_features | INCOMPAT_CORRUPT))
        walker.image_file.flush()


class _StoredRefcounts:
    """Refcounts as stored in the image, one refcount block decoded at a time."""

    CACHE_BLOCKS = 32

    def __init__(self, walker):
        self.walker = walker
        self.refcount_table = walker.refs.refcount_table
        self.cluster_size = walker.cluster_size
        self.refcount_bits = walker.header.refcount_bits
        self.entries_per_block = walker.cluster_size * 8 // self.refcount_bits
        self._cache = {}

    def block(self, table_index):
        """Decoded entries of refcount block ``table_index``; None when the block
        is absent (all refcounts 0); False when its offset is unusable."""
        if table_index >= len(self.refcount_table):
            return None
        offset = self.refcount_table[table_index] & REFT_OFFSET_MASK
        if not offset:
            return None
        if offset & (self.cluster_size - 1):
            return False
        cached = self._cache.get(table_index)
        if cached is not None:
            return cached
        data = self.walker.read(offset, self.cluster_size, "refcount block %d" % table_index)
        if data is None:
            return False
        entries = _decode_refcount_block(data, self.refcount_bits)
        if len(self._cache) >= self.CACHE_BLOCKS:
            self._cache.clear()
        self._cache[table_index] = entries
        return entries

    def write_block(self, table_index, entries):
        """Write refcount block ``table_index`` (which exists) with new entries."""
        offset = self.refcount_table[table_index] & REFT_OFFSET_MASK
        self.walker.write(offset, _encode_refcount_block(entries, self.refcount_bits, self.cluster_size),
                          (_REFCOUNT_BLOCK,))
        self._cache[table_index] = entries

    def get(self, cluster):
        """Stored refcount of one cluster, or None when it cannot be read."""
        entries = self.block(cluster // self.entries_per_block)
        if entries is None:
            return 0
        if entries is False:
            return None
        return entries[cluster % self.entries_per_block]


def _encode_refcount_block(entries, refcount_bits, cluster_size):
    """Entries of one refcount block (any array, at most one block's worth) →
    the block's on-disk bytes, zero-padded to the cluster size."""
    per_block = cluster_size * 8 // refcount_bits
    if refcount_bits < 8:
        per_byte = 8 // refcount_bits
        values = bytes(entries) + bytes(per_block - len(entries))
        # the entries of one byte occupy disjoint bits: adding the shifted
        # streams as big integers ORs them byte by byte
        packed = 0
        for position in range(per_byte):
            packed += int.from_bytes(values[position::per_byte].translate(_SUBBYTE_SHIFTS[refcount_bits][position]),
                                     "big")
        return packed.to_bytes(cluster_size, "big")
    if refcount_bits == 8:
        return bytes(entries) + bytes(per_block - len(entries))
    typecode = {16: "H", 32: _U32, 64: "Q"}[refcount_bits]
    block = array.array(typecode, entries.tobytes() if entries.typecode == typecode else entries.tolist())
    block.extend(array.array(typecode, bytes((per_block - len(block)) * block.itemsize)))
    if _LITTLE_ENDIAN:
        block.byteswap()
    return block.tobytes()


# value → value shifted to its position inside the byte, for each sub-byte width
_SUBBYTE_SHIFTS = dict(
    (width, [bytes(((value << (position * width)) & 0xff) if value < (1 << width) else 0 for value in range(256))
             for position in range(8 // width)])
    for width in (1, 2, 4))


def _compare_refcounts(walker, stored, fix=0):
    """Compare computed references with stored refcounts, fixing what ``fix``
    allows (leaks: lower refcounts; errors: raise refcounts that are not 0).
    Returns (highest cluster in use by either, refcount structure rebuild needed)."""
    findings = walker.findings
    counts = walker.refs.counts
    nb_clusters = len(counts)
    per_block = stored.entries_per_block
    highest = 0
    rebuild = False
    for table_index in range(-(-nb_clusters // per_block)):
        first = table_index * per_block
        last = min(first + per_block, nb_clusters)
        computed = counts[first:last]
        entries = stored.block(table_index)
        if entries is False:
            for cluster in range(first, last):
                findings.check_error("Can't get refcount for cluster %d: Input/output error" % cluster)
            continue
        if entries is None:
            on_disk = array.array(computed.typecode, bytes(len(computed) * computed.itemsize))
        else:
            on_disk = entries[:last - first]
        top = max(_last_nonzero(computed), _last_nonzero(on_disk))
        if top >= 0:
            highest = first + top
        if on_disk == computed:
            continue
        repaired = None
        for position in range(last - first):
            refcount = on_disk[position]
            reference = computed[position]
            if refcount == reference:
                continue
            fixed = None
            if refcount == 0:
                rebuild = True
            elif refcount > reference and fix & FIX_LEAKS:
                fixed = "leaks_fixed"
            elif refcount < reference and fix & FIX_ERRORS:
                fixed = "corruptions_fixed"
            findings.say("%s cluster %d refcount=%d reference=%d"
                         % ("Repairing" if fixed else "ERROR" if refcount < reference else "Leaked",
                            first + position, refcount, reference))
            if fixed:
                if repaired is None:
                    repaired = array.array(entries.typecode, entries)
                repaired[position] = reference
                setattr(findings, fixed, getattr(findings, fixed) + 1)
            elif refcount < reference:
                findings.corruptions += 1
            else:
                findings.leaks += 1
        if repaired is not None:
            stored.write_block(table_index, repaired)
    return highest, rebuild


def _check_oflag_copied(walker, stored, fix=0):
    """OFLAG_COPIED must be set exactly on the active L1/L2 entries whose stored
    refcount is 1; repaired with FIX_ERRORS, or with FIX_LEAKS when the
    refcounts are otherwise right (then they can be trusted)."""
    header = walker.header
    findings = walker.findings
    if fix & FIX_ERRORS:
        repair = True
    elif fix & FIX_LEAKS:
        repair = not (findings.check_errors or findings.corruptions or findings.leaks)
    else:
        repair = False
    prefix = "Repairing" if repair else "ERROR"
    if not header.l1_size:
        return
    data = walker.read_table(header.l1_table_offset, header.l1_size * 8, "L1 table")
    if data is None:
        return
    cluster_bits = walker.cluster_bits
    extended = walker.extended_l2
    has_data_file = walker.has_data_file
    per_block = stored.entries_per_block
    for l1_index, l1_entry in _nonzero_entries(data):
        l2_offset = l1_entry & L1E_OFFSET_MASK
        if not l2_offset:
            continue
        refcount = stored.get(l2_offset >> cluster_bits)
        if refcount is None:
            continue
        if (refcount == 1) != bool(l1_entry & OFLAG_COPIED):
            findings.say("%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d"
                         % (prefix, l1_index, l1_entry, refcount))
            if repair:
                l1_entry = l1_entry | OFLAG_COPIED if refcount == 1 else l1_entry & ~OFLAG_COPIED
                walker.write(header.l1_table_offset + 8 * l1_index, struct.pack(">Q", l1_entry), (_ACTIVE_L1,))
                findings.corruptions_fixed += 1
            else:
                findings.corruptions += 1
        if repair:
            raw_table = walker.read_table(l2_offset, walker.cluster_size, "L2 table")
            if raw_table is None or raw_table == walker.zero_cluster[:len(raw_table)]:
                continue
            table = _be64_array(raw_table)
            entries = table[0::2] if extended else table
        else:
            entries, _bitmaps = walker.read_l2(l2_offset)
            if entries is None:
                continue
        block_index = -1
        block = None
        changed = 0
        for index, l2_entry in enumerate(entries):
            if not l2_entry or l2_entry & OFLAG_COMPRESSED:
                continue
            offset = l2_entry & L2E_OFFSET_MASK
            if l2_entry & OFLAG_ZERO and not extended:
                if not offset:
                    continue
            elif not offset and not (has_data_file and l2_entry & OFLAG_COPIED):
                continue
            if has_data_file:
                refcount = 1
            else:
                cluster = offset >> cluster_bits
                if cluster // per_block != block_index:
                    block_index = cluster // per_block
                    block = stored.block(block_index)
                if block is None:
                    refcount = 0
                elif block is False:
                    continue            # unreadable refcount: QEMU skips silently
                else:
                    refcount = block[cluster - block_index * per_block]
            if (refcount == 1) != bool(l2_entry & OFLAG_COPIED):
                findings.say("%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d" % (prefix, l2_entry, refcount))
                if repair:
                    table[index * 2 if extended else index] = (l2_entry | OFLAG_COPIED if refcount == 1
                                                               else l2_entry & ~OFLAG_COPIED)
                    changed += 1
                else:
                    findings.corruptions += 1
        if changed:
            if _LITTLE_ENDIAN:
                table.byteswap()
            walker.write(l2_offset, table.tobytes(), (_ACTIVE_L2,))
            findings.corruptions_fixed += changed


# --- repair ------------------------------------------------------------------------
FIX_LEAKS = 1
FIX_ERRORS = 2
REPAIR_MODES = {"leaks": FIX_LEAKS, "all": FIX_LEAKS | FIX_ERRORS}


def _alloc_clusters(counts, count, first_free, avoid):
    """First run of ``count`` clusters with no reference at or after cluster
    ``first_free[0]`` (the array grows past the end of the file when needed),
    none of them in ``avoid``; marks them used.  ``first_free[0]`` moves to
    the first free cluster seen."""
    itemsize = counts.itemsize
    raw = counts.tobytes()
    free_run = bytes(count * itemsize)
    position = first_free[0] * itemsize
    first_gap = raw.find(bytes(itemsize), position)
    while first_gap >= 0 and first_gap % itemsize:
        first_gap = raw.find(bytes(itemsize), first_gap + 1)
    if first_gap >= 0:
        first_free[0] = first_gap // itemsize
    while True:
        found = raw.find(free_run, position)
        if found < 0:
            break
        if found % itemsize:
            position = found + 1
            continue
        blocked = [cluster for cluster in avoid if found // itemsize <= cluster < found // itemsize + count]
        if not blocked:
            break
        position = (max(blocked) + 1) * itemsize
    if found >= 0:
        cluster = found // itemsize
    else:
        # a free run touching the end of the array is extended past it
        trailing = (len(raw) - len(raw.rstrip(b"\0"))) // itemsize
        after_avoided = [blocked + 1 for blocked in avoid if blocked < len(counts)]
        cluster = max([len(counts) - trailing, first_free[0]] + after_avoided)
    missing = cluster + count - len(counts)
    if missing > 0:
        counts.extend(array.array(counts.typecode, bytes(missing * itemsize)))
    for index in range(cluster, cluster + count):
        counts[index] = 1
    return cluster


def _write_refblocks(walker, reftable, first_cluster, end_cluster, avoid):
    """Write the refcount blocks covering the used clusters of [first_cluster,
    end_cluster) from the computed counts, allocating the missing ones among
    the free clusters.  Returns whether the refcount table had to grow."""
    counts = walker.refs.counts
    cluster_size = walker.cluster_size
    per_block = cluster_size * 8 // walker.refs.refcount_bits
    entries_per_table_cluster = cluster_size // 8
    first_free = [0]
    grown = False
    cluster = first_cluster
    while cluster < end_cluster:
        block_index = cluster // per_block
        block_start = block_index * per_block
        block_end = block_start + per_block
        if _last_nonzero(counts[cluster:min(end_cluster, block_end)]) < 0:
            cluster = block_end
            continue
        if block_index < len(reftable) and reftable[block_index]:
            block_offset = reftable[block_index]
        else:
            # never place a block inside a range whose block is already written
            first_free[0] = max(first_free[0], block_start)
            block_cluster = _alloc_clusters(counts, 1, first_free, avoid)
            block_offset = block_cluster * cluster_size
            end_cluster = max(end_cluster, block_cluster + 1)
            if block_index >= len(reftable):
                size = -(-(block_index + 1) // entries_per_table_cluster) * entries_per_table_cluster
                if size * 8 > MAX_REFTABLE_BYTES:
                    raise UnsupportedOperation("qcow2 repair: the rebuilt refcount table would need %d bytes, more "
                                               "than the %d-byte cap" % (size * 8, MAX_REFTABLE_BYTES), walker.path)
                reftable.extend([0] * (size - len(reftable)))
                grown = True
            reftable[block_index] = block_offset
        if block_offset < cluster_size:
            raise CorruptImageError("qcow2 repair: refusing to write a refcount block over the header", walker.path)
        walker.write(block_offset, _encode_refcount_block(counts[block_start:block_end], walker.refs.refcount_bits,
                                                          cluster_size))
        cluster = block_end
    return grown


def _rebuild_refcount_structure(walker):
    """Write a new refcount table and blocks built from the computed counts
    only (placed in clusters nothing references, as QEMU places them), flush,
    then point the header at them.  The old structures become leaks."""
    cluster_size = walker.cluster_size
    counts = walker.refs.counts
    # Unlike QEMU (whose overlap check then fails the repair), never write over
    # the clusters of the old table and blocks, even unreferenced ones: they
    # stay in use until the header points at the new structures.
    header = walker.header
    first_table_cluster = header.refcount_table_offset // cluster_size
    avoid = set(range(first_table_cluster, first_table_cluster + header.refcount_table_clusters))
    avoid.update((entry & REFT_OFFSET_MASK) // cluster_size for entry in walker.refs.refcount_table
                 if entry & REFT_OFFSET_MASK and (entry & REFT_OFFSET_MASK) // cluster_size < len(counts))
    reftable = []
    _write_refblocks(walker, reftable, 0, len(counts), avoid)
    while True:
        table_clusters = -(-len(reftable) * 8 // cluster_size)
        table_cluster = _alloc_clusters(counts, table_clusters, [0], avoid)
        # the table's own clusters need refcounts too, which may grow the table
        if not _write_refblocks(walker, reftable, table_cluster, table_cluster + table_clusters, avoid):
            break
    table = array.array("Q", reftable)
    if _LITTLE_ENDIAN:
        table.byteswap()
    table_offset = table_cluster * cluster_size
    walker.write(table_offset, table.tobytes())
    # new structures on stable storage before the header points at them
    walker.image_file.flush()
    walker.write_header(OFF_REFCOUNT_TABLE_OFFSET, struct.pack(">QI", table_offset, table_clusters))
    walker.image_file.flush()


def _read_header(image_file, path):
    """Parse the header again after a repair changed it."""
    first = image_file.pread(0, 4096)
    if len(first) >= 24:
        cluster_bits = struct.unpack_from(">I", first, 20)[0]
        if MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS and (1 << cluster_bits) > len(first):
            first = image_file.pread(0, 1 << cluster_bits)
    return parse_header(first, path, image_file.size())


def _check_pass(image_file, header, path, fix=0):
    """One run of the check, repairing what ``fix`` allows, as QEMU's
    qcow2_check_refcounts.  Returns the Findings."""
    walker = _Walker(image_file, header, path, fix)
    walker.compute()
    findings = walker.findings
    # QEMU keeps the virtual size in whole 512-byte sectors, rounded down
    findings.total_clusters = -(-(header.size // 512 * 512) // walker.cluster_size)
    rebuild = walker.refs.rebuild_needed
    before_compare = findings.counters()
    highest, needs_rebuild = _compare_refcounts(walker, _StoredRefcounts(walker))
    rebuild = rebuild or needs_rebuild
    if rebuild and fix & FIX_ERRORS:
        before_rebuild = findings.counters()
        findings.say("Rebuilding refcount structure")
        _rebuild_refcount_structure(walker)
        findings.corruptions = 0
        findings.leaks = 0
        # references again, now that the old refcount structures are unreferenced
        walker = _Walker(image_file, _read_header(image_file, path), path, findings=findings)
        walker.compute()
        rebuilt = findings.counters()
        findings.restore(dict.fromkeys(rebuilt, 0))
        # the old structures are leaks now; freeing them is not counted as a fix
        highest, still_broken = _compare_refcounts(walker, _StoredRefcounts(walker), FIX_LEAKS)
        if still_broken:
            findings.say("ERROR rebuilt refcount structure is still broken")
        fresh_leaks = findings.leaks
        findings.restore(rebuilt)
        if findings.corruptions < before_rebuild["corruptions"]:
            findings.corruptions_fixed += before_rebuild["corruptions"] - findings.corruptions
        if findings.leaks < before_rebuild["leaks"]:
            findings.leaks_fixed += before_rebuild["leaks"] - findings.leaks
        findings.leaks += fresh_leaks
    elif fix:
        if rebuild:
            findings.check_error("ERROR need to rebuild refcount structures")
            raise CorruptImageError("qcow2 check: the refcount structures need to be rebuilt (repair 'all'), "
                                    "found %d corruptions and %d check errors"
                                    % (findings.corruptions, findings.check_errors), walker.path)
        if findings.leaks or findings.corruptions:
            findings.restore(before_compare)
            highest, _rebuild = _compare_refcounts(walker, _StoredRefcounts(walker), fix)
    _check_oflag_copied(walker, _StoredRefcounts(walker), fix)
    findings.image_end_offset = (highest + 1) * walker.cluster_size
    if fix and not findings.check_errors and not findings.corruptions:
        _mark_clean(walker)
    return findings


def _mark_clean(walker):
    """Clear the dirty and corrupt bits once the refcounts are right."""
    header = _read_header(walker.image_file, walker.path)
    features = header.incompatible_features & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT)
    if features != header.incompatible_features:
        # refcount updates reach the disk before the header says they are valid
        walker.image_file.flush()
        walker.write_header(OFF_INCOMPATIBLE_FEATURES, struct.pack(">Q", features))
        walker.image_file.flush()


def _repair(image_file, header, path, fix):
    """qemu-img check -r: repair, then (when something was fixed) check again;
    the result has the counts of the second check and the fixed counts."""
    repaired = _check_pass(image_file, header, path, fix)
    image_file.flush()
    if not (repaired.leaks_fixed or repaired.corruptions_fixed):
        return repaired
    final = _check_pass(image_file, _read_header(image_file, path), path)
    final.leaks_fixed = repaired.leaks_fixed
    final.corruptions_fixed = repaired.corruptions_fixed
    final.messages[:0] = repaired.messages
    return final


def repair_dirty(image_file, header, path=None):
    """Repair an image whose dirty bit is set (lazy refcounts left stale by a
    crash), as QEMU does when it opens such an image for writing: full repair,
    then the dirty bit is cleared.  ``image_file`` must be writable.  Returns
    (the new Header, the check dictionary of the repair)."""
    findings = _repair(image_file, header, path, FIX_LEAKS | FIX_ERRORS)
    header = _read_header(image_file, path)
    if findings.check_errors or header.dirty:
        raise CorruptImageError("qcow2: could not repair the dirty image (%d check errors, %d corruptions left)"
                                % (findings.check_errors, findings.corruptions), path)
    return header, findings.as_dict()


def compute_references(image_file, header, path=None):
    """Walk the metadata and return the References (computed reference count of
    every host cluster, plus the findings of the walk).  Reused by a refcount
    rebuild."""
    return _Walker(image_file, header, path).compute()


def check_image(image_file, header, path=None, repair=None):
    """``qemu-img check`` of a qcow2 image: see the module docstring for the
    returned dictionary.  ``image_file`` offers ``pread(offset, length)`` and
    ``size()`` (and ``pwrite``, ``truncate``, ``flush`` when repairing:
    ``repair`` "leaks" or "all" as qemu-img check -r); ``header`` is the
    parsed qcow2_layout.Header."""
    if repair is not None and repair not in REPAIR_MODES:
        raise InvalidOptionError("qcow2 check: repair expected None, 'leaks' or 'all', found %r" % (repair,), path)
    if repair is None:
        return _check_pass(image_file, header, path).as_dict()
    if not getattr(image_file, "writable", False):
        raise InvalidOptionError("qcow2 check: repair %r needs the image opened for writing" % repair, path)
    return _repair(image_file, header, path, REPAIR_MODES[repair]).as_dict()
