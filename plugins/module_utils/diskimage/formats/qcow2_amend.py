# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 options changed in place, as ``qemu-img amend -o`` does: compat
(0.10 <-> 1.1, zero clusters expanded on a downgrade), lazy_refcounts,
refcount_bits (refcount structures rewritten) and the backing file.

``Qcow2AmendMixin`` is the part of ``Qcow2Driver`` (formats/qcow2.py) that
does it, with the header edits (``_compose_header``, ``_install_header``,
``set_backing``: formats/qcow2_header.py) and refcounts (formats/qcow2_refcount.py).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array

from ..errors import ImageError, InvalidOptionError, UnsupportedFeature
from . import qcow2_layout as L
from .qcow2_layout import be_bytes as _be_bytes
from .qcow2_refcount import _decode_refblock, _encode_refblock


class Qcow2AmendMixin:
    """``amend`` of a Qcow2Driver (ops/amend.py)."""

    AMEND_OPTIONS = ("compat", "lazy_refcounts", "refcount_bits", "backing_file", "backing_fmt")

    def amend(self, options):
        """Change options in place as ``qemu-img amend -o`` does: compat (0.10 <->
        1.1), lazy_refcounts, refcount_bits, backing_file/backing_fmt (header only)."""
        from .qcow2 import CREATE_OPTIONS, _bool_option, _int_option  # (qcow2.py imports this module)
        self._check_writable()
        opts = dict(options or {})
        h = self.header
        for key in sorted(opts):
            if key not in self.AMEND_OPTIONS:
                if key in CREATE_OPTIONS:
                    raise InvalidOptionError("qcow2 amend: option %s cannot be changed (creation only)" % key,
                                             self.path)
                raise InvalidOptionError("qcow2 amend: unknown option %s (supported: %s)"
                                         % (key, ", ".join(self.AMEND_OPTIONS)), self.path)
        version = h.version
        if "compat" in opts:
            versions = {"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}
            if str(opts["compat"]) not in versions:
                raise InvalidOptionError("qcow2 amend: compat must be 0.10, v2, 1.1 or v3 (found %r)"
                                         % (opts["compat"],), self.path)
            version = versions[str(opts["compat"])]
        lazy = _bool_option("lazy_refcounts", opts["lazy_refcounts"], self.path) \
            if "lazy_refcounts" in opts else None
        bits = h.refcount_bits
        if "refcount_bits" in opts:
            bits = _int_option("refcount_bits", opts["refcount_bits"], self.path)
            if bits not in (1, 2, 4, 8, 16, 32, 64):
                raise InvalidOptionError("qcow2 amend: refcount_bits must be a power of two up to 64 (found %d)"
                                         % bits, self.path)
        if version < 3 and lazy:
            raise InvalidOptionError("qcow2 amend: lazy refcounts need compat 1.1 or above", self.path)
        if version < 3 and bits != 16:
            raise InvalidOptionError("qcow2 amend: refcount widths other than 16 bits need compat 1.1 or above "
                                     "(compat=0.10 requires refcount_bits=16)", self.path)
        if version < h.version and h.incompatible_features & ~L.INCOMPAT_DIRTY:
            raise UnsupportedFeature("qcow2 amend: cannot downgrade an image with incompatible features 0x%x "
                                     "(external data file, compression type or extended L2)"
                                     % (h.incompatible_features & ~L.INCOMPAT_DIRTY), self.path)
        if version < h.version and h.crypt_method == L.CRYPT_LUKS:
            raise UnsupportedFeature("qcow2 amend: cannot downgrade a LUKS-encrypted image", self.path)
        backing = None
        if "backing_file" in opts or "backing_fmt" in opts:
            name = opts.get("backing_file", h.backing_file) or None
            fmt = opts.get("backing_fmt", h.backing_format if "backing_file" not in opts else None) or None
            if name is None and fmt is not None:
                raise InvalidOptionError("qcow2 amend: backing_fmt given without a backing file", self.path)
            if name is not None and fmt is None:
                raise InvalidOptionError("qcow2 amend: backing_fmt is required with backing_file (never guessed)",
                                         self.path)
            backing = (name, fmt)
        if version > h.version:
            self._install_header(self._compose_header(version=version, compatible=0))
        if bits != h.refcount_bits:
            self._change_refcount_width(bits)
        if version < h.version:
            self._prepare_write()       # clears the autoclear bits (bitmaps freed)
            self._expand_zero_clusters()
            self._install_header(self._compose_header(version=version))
        if backing is not None:
            self.set_backing(backing[0], backing[1])
        if lazy is not None and self.header.version >= 3 and lazy != self.header.lazy_refcounts:
            compatible = self.header.compatible_features & ~L.COMPAT_LAZY_REFCOUNTS
            self._install_header(self._compose_header(
                compatible=compatible | (L.COMPAT_LAZY_REFCOUNTS if lazy else 0)))

    def _expand_zero_clusters(self):
        """Make every zero cluster (active layer and snapshots) an ordinary one, as
        compat 0.10 has no zero flag: unallocated when nothing shows through,
        else a cluster of zeroes (refcount = the references its L2 table has).
        Unlike qemu-img amend, a preallocated zero cluster whose host cluster is
        shared with another table (a snapshot) is never overwritten."""
        cs = self._cs
        zeroes = bytes(cs)
        seen = set()
        tables = [self._l1] + [self._read_l1(s["l1_table_offset"], s["l1_size"], "snapshot L1 table")
                               for s in self._snapshots]
        for l1_entries in tables:
            for l2_offset, table in self._tree(l1_entries):
                if l2_offset in seen:
                    continue
                seen.add(l2_offset)
                if not any(entry & L.OFLAG_ZERO and not entry & L.OFLAG_COMPRESSED for entry in table):
                    continue
                self._check_metadata_target(l2_offset, "l2")
                table = array.array("Q", table)
                l2_refs = self._refcount(l2_offset)
                own_data = self._data_file is self._file
                released = []
                for index, entry in enumerate(table):
                    if entry & L.OFLAG_COMPRESSED or not entry & L.OFLAG_ZERO:
                        continue
                    host = entry & L.L2E_OFFSET_MASK
                    if host and own_data and self._refcount(host) == l2_refs:
                        # preallocated and referenced through this table only: zero it in place
                        self._data_file.pwrite(host, zeroes)
                        table[index] = entry & ~L.OFLAG_ZERO
                        continue
                    if host and own_data:
                        # shared with another table (a snapshot): never written, only released
                        released.append(host)
                    if not self.backing_filename:
                        table[index] = 0
                    elif host and not own_data:
                        self._data_file.pwrite(host, zeroes)
                        table[index] = entry & ~L.OFLAG_ZERO
                    else:
                        host = self._alloc(1)
                        if l2_refs > 1:
                            self._refcount_update(host, cs, l2_refs - 1)
                        self._data_file.pwrite(host, zeroes)
                        table[index] = host | (L.OFLAG_COPIED if l2_refs == 1 else 0)
                self._file.flush()
                self._file.pwrite(l2_offset, _be_bytes(table))
                self._l2_cache[l2_offset] = table
                for host in released:
                    self._refcount_update(host, cs, -l2_refs)

    def _change_refcount_width(self, bits):
        """Rewrite the refcount table and blocks with ``bits``-wide entries: the new
        structures go past the end of the file, the header switches to them in
        one write, the old ones are then free clusters."""
        self._prepare_write()
        cs, cb = self._cs, self._cb
        total = -(-max(self._file_size, self._refcounted_end) // cs)
        counts = array.array("Q", bytes(8 * total))
        old_rbe = self._rbe
        for block_index, block_offset in enumerate(self._reftable):
            if not block_offset:
                continue
            first = block_index * old_rbe
            if first >= total:
                continue
            values = _decode_refblock(self._load_refblock(block_offset), self._rc_bits)
            count = min(old_rbe, total - first)
            counts[first:first + count] = array.array("Q", values[:count])
        h = self.header
        old = [(h.refcount_table_offset, h.refcount_table_clusters)] + [(o, 1) for o in self._reftable if o]
        for offset, clusters in old:
            for cluster in range(offset >> cb, (offset >> cb) + clusters):
                counts[cluster] -= 1
        new_max = (1 << bits) - 1
        for cluster, value in enumerate(counts if counts and max(counts) > new_max else ()):
            if value > new_max:
                raise InvalidOptionError("qcow2 amend: cannot decrease refcount entry width to %d bits: cluster "
                                         "at 0x%x has a refcount of %d" % (bits, cluster << cb, value), self.path)
        rbe = cs * 8 // bits
        start = L.align_up(max(self._file_size, self._next_free, self._refcounted_end), cs) >> cb
        table_clusters = blocks = 1
        while True:
            end = start + table_clusters + blocks
            need_blocks = -(-end // rbe)
            need_table = -(-need_blocks * 8 // cs)
            if need_blocks == blocks and need_table == table_clusters:
                break
            blocks, table_clusters = need_blocks, need_table
        if table_clusters * cs > L.MAX_REFTABLE_BYTES:
            raise ImageError("qcow2 amend: the refcount table would exceed the %d-byte cap"
                             % L.MAX_REFTABLE_BYTES, self.path)
        counts.extend([0] * max(0, end - len(counts)))
        for cluster in range(start, end):
            counts[cluster] = 1
        self._reserve(start << cb, end - start)
        blocks_start = start + table_clusters
        for block_index in range(blocks):
            block = _encode_refblock(counts[block_index * rbe:(block_index + 1) * rbe], bits, cs)
            self._file.pwrite((blocks_start + block_index) << cb, block)
        reftable = [(blocks_start + i) << cb for i in range(blocks)]
        reftable += [0] * (table_clusters * cs // 8 - blocks)
        self._file.pwrite(start << cb, _be_bytes(reftable))
        self._install_header(self._compose_header(refcount_order=bits.bit_length() - 1,
                                                  reftable=(start << cb, table_clusters)))
        self._rc_bits = bits
        self._rc_max = new_max
        self._rbe = rbe
        self._reftable = None
        self._refblock_cache.clear()
        self._refblock_set = set()
        self._verified_targets = set()
        self._write_ready = False
