# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 internal snapshots (QEMU docs/interop/qcow2.rst, "Snapshots"): the
snapshot table, list/create/apply/delete (qemu-img snapshot) and selecting a
snapshot for reading (qemu-img convert -l).

``Qcow2SnapshotMixin`` is the part of ``Qcow2Driver`` (formats/qcow2.py) that
handles them, with the walks over the tables an L1 table reaches that
snapshots need (refcounts count paths from every L1 table, snapshots too).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import struct

from ..errors import CorruptImageError, FormatError, ImageError, UnsupportedFeature
from . import qcow2_layout as L
from .qcow2_layout import be_array as _be_array, be_bytes as _be_bytes


class Qcow2SnapshotMixin:
    """Internal snapshots of a Qcow2Driver.

    Driver state used: ``_snapshots`` (parsed snapshot table:
    qcow2_layout.parse_snapshot_table dicts), ``_snapshot_table_bytes`` (its
    length on disk), the active ``_l1`` and its L2 cache, and the allocator
    (formats/qcow2_refcount.py).
    """

    # ------------------------------------------------------------ snapshot table
    def _load_snapshots(self):
        h = self.header
        if not h.nb_snapshots:
            return
        available = self._file_size - h.snapshots_offset
        limit = min(L.MAX_SNAPSHOT_TABLE_BYTES, available)
        size = min(limit, max(4096, h.nb_snapshots * 64))
        while True:
            buf = self._file.pread(h.snapshots_offset, size)
            try:
                snaps = L.parse_snapshot_table(buf, h.nb_snapshots, self.path)
                break
            except FormatError:
                if size >= limit:
                    raise
                size = min(limit, size * 4)
        self._snapshots = snaps
        self._snapshot_table_bytes = snaps[-1]["entry_offset"] + snaps[-1]["entry_length"] if snaps else 0

    def _snapshot_entries_raw(self):
        """The current snapshot table entries, byte for byte (unknown extra data kept)."""
        if not self._snapshots:
            return []
        # QEMU does not pad the last entry to 8 bytes in the file: read up to that padding and add it.
        unpadded = self._snapshot_table_bytes - 7
        raw = self._file.pread(self.header.snapshots_offset, self._snapshot_table_bytes)
        if len(raw) < unpadded:
            raw = self._file.pread_exact(self.header.snapshots_offset, self._snapshot_table_bytes,
                                         "qcow2 snapshot table")
        raw = raw + bytes(self._snapshot_table_bytes - len(raw))
        return [raw[s["entry_offset"]:s["entry_offset"] + s["entry_length"]] for s in self._snapshots]

    def _write_snapshot_table(self, entries):
        """Write a new snapshot table, point the header at it, free the old one."""
        h = self.header
        blob = b"".join(entries)
        offset = 0
        if blob:
            offset = self._alloc(-(-len(blob) // self._cs))
            self._file.pwrite(offset, blob)
        old_offset, old_bytes = h.snapshots_offset, self._snapshot_table_bytes if h.nb_snapshots else 0
        self._file.flush()
        self._file.pwrite(L.OFF_NB_SNAPSHOTS, struct.pack(">IQ", len(entries), offset))
        self._file.flush()
        h.nb_snapshots = len(entries)
        h.snapshots_offset = offset
        self._snapshots = L.parse_snapshot_table(blob, len(entries), self.path) if entries else []
        self._snapshot_table_bytes = len(blob)
        if old_bytes:
            self._refcount_update(old_offset, old_bytes, -1)

    # ------------------------------------------------- the refcount window (docs/crash-safety.md)
    def _begin_refcount_window(self):
        """Set the dirty bit before a snapshot operation changes refcounts.

        Creating, applying and deleting a snapshot change refcounts and the COPIED
        flags of the active tables in separate writes; between them ``qemu-img check``
        finds OFLAG_COPIED errors (QEMU has the same window).  With the dirty bit set
        first and cleared last, an operation killed in between leaves an image that
        the next writable open repairs (qcow2.py: repair_dirty), as QEMU does.  Only
        version 3 images have the bit.  Returns whether it was set here."""
        h = self.header
        if h.version < 3 or h.dirty:
            return False
        self._file.flush()
        self._file.pwrite(L.OFF_INCOMPATIBLE_FEATURES, struct.pack(">Q", h.incompatible_features | L.INCOMPAT_DIRTY))
        self._file.flush()
        h.incompatible_features |= L.INCOMPAT_DIRTY
        return True

    def _end_refcount_window(self, started):
        """Clear the dirty bit set by _begin_refcount_window, once every write is on disk."""
        if not started:
            return
        h = self.header
        self._file.flush()
        self._file.pwrite(L.OFF_INCOMPATIBLE_FEATURES, struct.pack(">Q", h.incompatible_features & ~L.INCOMPAT_DIRTY))
        self._file.flush()
        h.incompatible_features &= ~L.INCOMPAT_DIRTY

    # ------------------------------------------------------- list, create, apply, delete
    def snapshots(self):
        result = []
        for snap in self._snapshots:
            item = {
                "id": snap["id"],
                "name": snap["name"],
                "vm-state-size": snap["vm_state_size"],
                "date-sec": snap["date_sec"],
                "date-nsec": snap["date_nsec"],
                "vm-clock-sec": snap["vm_clock_nsec"] // 1000000000,
                "vm-clock-nsec": snap["vm_clock_nsec"] % 1000000000,
            }
            if snap["icount"] is not None and snap["icount"] != 0xffffffffffffffff:
                item["icount"] = snap["icount"]
            result.append(item)
        return result

    def _find_snapshot(self, name):
        """First snapshot named ``name``, else the one with that ID (as qemu-img)."""
        for snap in self._snapshots:
            if snap["name"] == name:
                return snap
        for snap in self._snapshots:
            if snap["id"] == name:
                return snap
        raise ImageError("qcow2: no snapshot named or numbered %r" % (name,), self.path)

    def _check_snapshots_possible(self):
        self._prepare_write()
        if self._data_file is not self._file:
            raise UnsupportedFeature("qcow2 images with an external data file cannot have internal snapshots",
                                     self.path)

    def snapshot_create(self, name, date_sec=None, date_nsec=None):
        """Create internal snapshot ``name`` of the current disk (qemu-img snapshot -c)."""
        import time
        self._check_snapshots_possible()
        if len(self._snapshots) >= L.MAX_SNAPSHOTS:
            raise ImageError("qcow2: the image already has %d snapshots" % len(self._snapshots), self.path)
        name_bytes = name.encode("utf-8")
        if date_sec is None:
            now = time.time()
            date_sec, date_nsec = int(now), int(now % 1 * 1000000) * 1000
        ids = [int(s["id"]) for s in self._snapshots if s["id"].isdigit()]
        snap_id = str(max(ids) + 1 if ids else 1).encode()
        self._check_refcount_room(self._l1)
        window = self._begin_refcount_window()
        # the L1 copy, then one more reference for everything it reaches
        l1_bytes = len(self._l1) * 8
        l1_offset = 0
        if l1_bytes:
            l1_offset = self._alloc(-(-l1_bytes // self._cs))
            self._file.pwrite(l1_offset, _be_bytes([e & ~L.OFLAG_COPIED for e in self._l1]))
        self._tree_refcounts(self._l1, 1)
        self._fix_copied()
        entry = L.SNAPSHOT_HEADER.pack(l1_offset, len(self._l1), len(snap_id), len(name_bytes), date_sec,
                                       date_nsec or 0, 0, 0, L.SNAPSHOT_EXTRA.size)
        entry += L.SNAPSHOT_EXTRA.pack(0, self.virtual_size, 0) + snap_id + name_bytes
        entry += bytes(L.pad8(len(entry)) - len(entry))
        self._write_snapshot_table(self._snapshot_entries_raw() + [entry])
        self._end_refcount_window(window)

    def snapshot_apply(self, name):
        """Make snapshot ``name`` the current disk (qemu-img snapshot -a)."""
        self._check_snapshots_possible()
        snap = self._find_snapshot(name)
        snap_l1 = self._read_l1(snap["l1_table_offset"], snap["l1_size"], "snapshot L1 table")
        self._check_refcount_room(snap_l1)
        size = snap["disk_size"] if snap["disk_size"] is not None else self.virtual_size
        window = self._begin_refcount_window()
        self._tree_refcounts(snap_l1, 1)
        old_active = array.array("Q", self._l1)
        if len(snap_l1) > len(self._l1):
            self._grow_l1(max(size, self.virtual_size), l1_entries=len(snap_l1))
        new_active = array.array("Q", snap_l1)
        new_active.extend([0] * (len(self._l1) - len(snap_l1)))
        self._file.pwrite(self.header.l1_table_offset, _be_bytes(new_active))
        self._l1 = new_active
        if size != self.virtual_size:
            self._file.pwrite(L.OFF_SIZE, struct.pack(">Q", size))
            self.header.size = size
            self.virtual_size = size
        self._tree_refcounts(old_active, -1)
        self._l2_set = set(e & L.L1E_OFFSET_MASK for e in self._l1 if e & L.L1E_OFFSET_MASK)
        self._verified_targets = set()
        self._decompressed = (None, None)
        self._fix_copied()
        self._end_refcount_window(window)

    def snapshot_delete(self, name):
        """Delete snapshot ``name`` (qemu-img snapshot -d)."""
        self._check_snapshots_possible()
        snap = self._find_snapshot(name)
        snap_l1 = self._read_l1(snap["l1_table_offset"], snap["l1_size"], "snapshot L1 table")
        raw = self._snapshot_entries_raw()
        index = self._snapshots.index(snap)
        window = self._begin_refcount_window()
        self._write_snapshot_table(raw[:index] + raw[index + 1:])
        self._tree_refcounts(snap_l1, -1)
        if snap["l1_size"]:
            self._refcount_update(snap["l1_table_offset"], snap["l1_size"] * 8, -1)
        self._fix_copied()
        self._end_refcount_window(window)

    def select_snapshot(self, name, snapshot_size=False):
        """Show internal snapshot ``name`` (name, else ID) instead of the active
        layer: read-only drivers only.  As ``qemu-img convert -l`` does, the
        image keeps its CURRENT virtual size: past the snapshot's L1 table the
        disk is unallocated (zeroes, or the backing file), a longer L1 is cut.
        ``snapshot_size=True`` shows the snapshot's own disk size instead (the
        view ``qemu-img snapshot -a`` restores)."""
        if not self.readonly:
            raise ImageError("qcow2: a snapshot can only be selected on a read-only image", self.path)
        snap = self._find_snapshot(name)
        self._l1 = self._read_l1(snap["l1_table_offset"], snap["l1_size"], "snapshot L1 table")
        if snapshot_size and snap["disk_size"] is not None:
            self.virtual_size = snap["disk_size"]
        self._l2_cache.clear()
        self._decompressed = (None, None)

    # ---------------------------------------------- L1 table trees (also make_empty, amend)
    def _read_l1(self, offset, entries, what):
        if entries * 8 > L.MAX_L1_BYTES or offset % self._cs or offset + entries * 8 > self._file_size:
            raise CorruptImageError("qcow2 %s at 0x%x (%d entries) is misaligned, too large or past the end "
                                    "of the file" % (what, offset, entries), self.path)
        return _be_array(self._file.pread_exact(offset, entries * 8, "qcow2 " + what)) if entries else \
            array.array("Q")

    def _tree(self, l1_entries):
        """(l2_offset, table) of every L2 table an L1 table references."""
        for l1_index, entry in enumerate(l1_entries):
            l2_offset = entry & L.L1E_OFFSET_MASK
            if not l2_offset:
                continue
            if l2_offset % self._cs or l2_offset + self._cs > self._file_size:
                raise CorruptImageError("qcow2 L1 entry %d: L2 table at 0x%x is misaligned or past the end of the "
                                        "file" % (l1_index, l2_offset), self.path)
            yield l2_offset, self._load_l2(l2_offset)

    def _tree_clusters(self, l1_entries):
        """(offset, length) runs of every host cluster a tree of tables references:
        L2 tables, data clusters (one path each), compressed data."""
        step = 2 if self._ext else 1
        for l2_offset, table in self._tree(l1_entries):
            yield l2_offset, self._cs
            run_start = run_end = None
            for i in range(0, len(table), step):
                entry = table[i]
                if entry & L.OFLAG_COMPRESSED:
                    coffset, sectors = self._compressed_location(entry)
                    yield coffset & ~511, sectors * 512
                    continue
                host = entry & L.L2E_OFFSET_MASK
                if not host:
                    continue
                if host == run_end:
                    run_end += self._cs
                    continue
                if run_start is not None:
                    yield run_start, run_end - run_start
                run_start, run_end = host, host + self._cs
            if run_start is not None:
                yield run_start, run_end - run_start

    def _tree_refcounts(self, l1_entries, delta):
        for offset, length in self._tree_clusters(l1_entries):
            self._refcount_update(offset, length, delta)

    def _check_refcount_room(self, l1_entries):
        """Refuse up front (nothing written yet) when one more reference would overflow."""
        cb = self._cb
        for offset, length in self._tree_clusters(l1_entries):
            for cluster in range(offset >> cb, ((offset + length - 1) >> cb) + 1):
                if self._refcount(cluster << cb) >= self._rc_max:
                    raise ImageError("qcow2: cluster 0x%x already has the largest refcount refcount_bits=%d "
                                     "allows (%d); no more snapshots can share it"
                                     % (cluster << cb, self._rc_bits, self._rc_max), self.path)

    def _fix_copied(self):
        """Recompute the COPIED flags of the active L1 and L2 tables from the refcounts."""
        step = 2 if self._ext else 1
        new_l1 = array.array("Q", self._l1)
        for l1_index, entry in enumerate(self._l1):
            l2_offset = entry & L.L1E_OFFSET_MASK
            if not l2_offset:
                continue
            flag = L.OFLAG_COPIED if self._refcount(l2_offset) == 1 else 0
            new_l1[l1_index] = (entry & ~L.OFLAG_COPIED) | flag
            table = self._load_l2(l2_offset)
            changed = False
            for i in range(0, len(table), step):
                e = table[i]
                host = e & L.L2E_OFFSET_MASK
                if e & L.OFLAG_COMPRESSED or not host:
                    continue
                want = (e & ~L.OFLAG_COPIED) | (L.OFLAG_COPIED if self._refcount(host) == 1 else 0)
                if want != e:
                    table[i] = want
                    changed = True
            if changed:
                self._file.pwrite(l2_offset, _be_bytes(table))
                self._l2_cache[l2_offset] = table
        if new_l1 != self._l1:
            self._file.pwrite(self.header.l1_table_offset, _be_bytes(new_l1))
            self._l1 = new_l1
