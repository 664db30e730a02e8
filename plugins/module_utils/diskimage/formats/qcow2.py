# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 driver: open, create, info, the L1/L2 tables and their cache, reads and
the write path.

Written from QEMU docs/interop/qcow2.rst; the on-disk structures live in
qcow2_layout.py.  Metadata is written through (no dirty cache): every update
is on disk when the call returns, in an order that leaves at worst leaked
clusters after a crash: refcount increments -> data -> L2 -> L1 -> header,
and refcount decrements only after the last reference is gone.

The driver is composed of one part per concern, each in its own file:
qcow2_refcount.py (refcount table and blocks, cluster allocation),
qcow2_compress.py (compressed clusters, the deflate/zstd codec),
qcow2_snapshot.py (internal snapshots), qcow2_amend.py (amend) and
qcow2_header.py (the header cluster: new headers, bitmaps and LUKS header
extensions, header edits); the consistency check and repair is qcow2_check.py,
the block status map and measure read is qcow2_map.py.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import collections
import os
import struct

from .._io import ImageFile, pread_into, pwrite_from
from ..errors import (CorruptImageError, FormatError, ImageError, InvalidOptionError,
                      PolicyError, UnsupportedFeature)
from .base import DATA, UNALLOCATED, ZERO, Driver, Extent, fill_zero
from . import qcow2_layout as L
from .qcow2_layout import be_array as _be_array, be_bytes as _be_bytes
from .qcow2_compress import Qcow2Codec, Qcow2CompressedMixin, _zstd_available
from .qcow2_refcount import Qcow2RefcountMixin
from .qcow2_snapshot import Qcow2SnapshotMixin
from .qcow2_amend import Qcow2AmendMixin
from .qcow2_header import Qcow2HeaderMixin, _build_new_header

# Internal mapping kind: a compressed cluster (block status reports it as DATA without offset).
_COMPRESSED = "compressed"

# L2 tables kept in memory (bytes); refcount blocks likewise.
L2_CACHE_BYTES = 4 * 1024 * 1024
REFBLOCK_CACHE_BYTES = 1024 * 1024

# Header fields rewritten together: size, crypt_method, l1_size, l1_table_offset.
HEADER_SIZE_TO_L1 = struct.Struct(">QIIQ")

CREATE_OPTIONS = ("cluster_size", "compat", "lazy_refcounts", "refcount_bits", "preallocation",
                  "backing_file", "backing_fmt", "extended_l2", "compression_type", "size",
                  "encryption", "encrypt.format", "data_file", "data_file_raw",
                  # file protocol options qemu-img also takes; hints only, ignored here
                  "nocow", "extent_size_hint")


def _bool_option(name, value, path):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "true", "yes", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("off", "false", "no", "0"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidOptionError("option %s: expected on/off, found %r" % (name, value), path)


def _int_option(name, value, path):
    if isinstance(value, bool):
        raise InvalidOptionError("option %s: expected an integer, found %r" % (name, value), path)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        mult = 1
        suffixes = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        if text and text[-1].lower() in suffixes:
            mult = suffixes[text[-1].lower()]
            text = text[:-1]
        if text.isdigit():
            return int(text) * mult
    raise InvalidOptionError("option %s: expected an integer, found %r" % (name, value), path)


class Qcow2Driver(Qcow2AmendMixin, Qcow2SnapshotMixin, Qcow2RefcountMixin, Qcow2CompressedMixin,
                  Qcow2HeaderMixin, Driver):
    """One qcow2 layer.

    For ops and the checker (read-only use unless stated):
      header        qcow2_layout.Header parsed at open, kept up to date by writes
      _file         ImageFile of the qcow2 file
      _data_file    ImageFile holding guest data (``_file`` unless an external data file)
      encrypted     bool (reads and writes raise UnsupportedFeature)
      _l1           array('Q') of the active L1 entries; ``_load_l2(offset)`` -> array('Q')
      _snapshots    parsed snapshot table (qcow2_layout.parse_snapshot_table dicts)
      bitmaps()     persistent bitmaps (name, granularity, flags, table_offset, table_size)
      resize(), compress_cluster(), write_compressed() as in the Driver interface

    Its parts share this object's state (the mixins name what they use):
    Qcow2AmendMixin (qcow2_amend.py), Qcow2SnapshotMixin (qcow2_snapshot.py),
    Qcow2RefcountMixin (qcow2_refcount.py), Qcow2CompressedMixin with the
    Qcow2Codec in ``_codec`` (qcow2_compress.py), Qcow2HeaderMixin
    (qcow2_header.py).
    """

    format_name = "qcow2"
    can_create = True
    can_write = True

    def __init__(self):
        Driver.__init__(self)
        self.header = None
        self._file = None
        self._data_file = None
        self._owns_data_file = False
        self.encrypted = False
        self._file_size = 0
        self._file_end = 0
        self._l1 = None
        self._l2_cache = collections.OrderedDict()
        self._l2_cache_max = 1
        self._snapshots = []
        self._snapshot_table_bytes = 0
        self._decompressed = (None, None)
        self._codec = None
        # write state (loaded on the first write)
        self._write_ready = False
        self._reftable = None
        self._refblock_cache = collections.OrderedDict()
        self._refblock_cache_max = 1
        self._next_free = 0
        self._refcounted_end = 0
        self._compressed_end = 0
        self._l2_set = set()
        self._refblock_set = set()
        self._verified_targets = set()

    # ================================================================== opening
    @classmethod
    def probe(cls, header, filename):
        if len(header) >= 8 and header[:4] == L.QCOW2_MAGIC:
            version = struct.unpack(">I", header[4:8])[0]
            # any later version too, as QEMU's qcow2_probe: refused by name, never raw
            return 100 if version >= 2 else 0
        return 0

    @classmethod
    def unsupported_version(cls, header):
        version = struct.unpack(">I", header[4:8])[0]
        if version in (2, 3):
            return None
        return L.unsupported_version_message(version)

    # open() and open_file() are the base class's.
    def _open_structures(self, opener, backing=None, open_backing=True):
        path = self.path
        self._file_size = self._file.size()
        first = self._file.pread(0, 4096)
        if len(first) < L.HEADER_V2_LENGTH:
            raise FormatError("qcow2 header: file too short (%d bytes)" % len(first), path)
        cluster_bits = struct.unpack_from(">I", first, 20)[0]
        if L.MIN_CLUSTER_BITS <= cluster_bits <= L.MAX_CLUSTER_BITS and (1 << cluster_bits) > len(first):
            first = self._file.pread(0, 1 << cluster_bits)
        h = L.parse_header(first, path, self._file_size)
        self.header = h
        self._header_cluster = bytes(first[:h.cluster_size])
        # QEMU counts whole sectors: a header size that is not a multiple of 512 is rounded down
        self.virtual_size = h.size // 512 * 512
        self.backing_filename = h.backing_file
        self.backing_format = h.backing_format
        self.encrypted = h.crypt_method != L.CRYPT_NONE
        self._cs = h.cluster_size
        self._cb = h.cluster_bits
        self._l2e = h.l2_entries
        self._ext = h.extended_l2
        self._sc = self._cs // L.SUBCLUSTERS_PER_CLUSTER if self._ext else self._cs
        self._l2_cache_max = max(4, L2_CACHE_BYTES // self._cs)
        self._refblock_cache_max = max(4, REFBLOCK_CACHE_BYTES // self._cs)
        self._rc_bits = h.refcount_bits
        self._rc_max = (1 << self._rc_bits) - 1
        self._rbe = self._cs * 8 // self._rc_bits
        self._codec = Qcow2Codec(h.compression_type, self._cs, path)
        if h.corrupt and not self.readonly and not getattr(opener, "check_open", False):
            # (check with repair opens it writable, as qemu-img check -r does with BDRV_O_CHECK)
            raise CorruptImageError(
                "qcow2 header: the corrupt bit is set; the image can only be opened read-only "
                "(run check with repair to fix it)", path)
        if h.dirty and not self.readonly:
            # stale lazy refcounts: repaired on a writable open, as QEMU does
            from . import qcow2_check
            self.dirty_repair = qcow2_check.repair_dirty(self._file, h, path)[1]
            return self._open_structures(opener, backing, open_backing)
        if h.version == 2 and h.refcount_order != 4:
            raise FormatError("qcow2 v2 header: refcount order expected 4, found %d" % h.refcount_order, path)
        if self._ext and self._cb < 14:
            raise FormatError("qcow2 header: extended L2 entries need clusters of at least 16384 bytes, found %d"
                              % self._cs, path)
        if h.autoclear_features & L.AUTOCLEAR_DATA_FILE_RAW and not h.incompatible_features & L.INCOMPAT_DATA_FILE:
            raise FormatError("qcow2 header: raw external data bit set without an external data file", path)
        # L1 table
        l1_bytes = h.l1_size * 8
        if h.l1_size:
            if h.l1_table_offset + l1_bytes > self._file_size:
                raise CorruptImageError("qcow2 L1 table at 0x%x (%d entries) runs past the end of the file (%d bytes)"
                                        % (h.l1_table_offset, h.l1_size, self._file_size), path)
            self._l1 = _be_array(self._file.pread_exact(h.l1_table_offset, l1_bytes, "qcow2 L1 table"))
        else:
            self._l1 = array.array("Q")
        self._load_snapshots()
        # external data file
        self._data_file = self._file
        if h.incompatible_features & L.INCOMPAT_DATA_FILE:
            if not h.data_file:
                raise UnsupportedFeature("qcow2 image needs an external data file but its name is not recorded "
                                         "in the header", path)
            self.data_file = h.data_file
            if opener is None or not hasattr(opener, "data_file"):
                raise PolicyError("qcow2 external data file %r: no opener allowed to open it" % h.data_file, path)
            try:
                self._data_file = opener.data_file(path, h.data_file, writable=not self.readonly)
            except TypeError:
                self._data_file = opener.data_file(path, h.data_file)
            self._owns_data_file = True
            if h.backing_file and h.autoclear_features & L.AUTOCLEAR_DATA_FILE_RAW:
                raise FormatError("qcow2 header: a backing file cannot be used with a raw external data file", path)
        # backing file
        if backing is not None:
            self.backing = backing
        elif h.backing_file and open_backing:
            if opener is None:
                raise PolicyError("qcow2 backing file %r: no opener allowed to open it" % h.backing_file, path)
            self.backing = opener(path, h.backing_file, h.backing_format)

    # ================================================================ lifecycle
    def _close_files(self):
        if self._owns_data_file and self._data_file is not None:
            self._data_file.close()
        self._data_file = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self):
        try:
            if self._file is not None and not self.readonly:
                self.flush()
        finally:
            self._close_files()
            Driver.close(self)

    def _abandon_open(self):
        self._close_files()

    def flush(self):
        if self._file is None or self.readonly:
            return
        self._trim_file_end()
        if self._data_file is not None and self._data_file is not self._file:
            self._data_file.flush()
        self._file.flush()

    def host_files(self):
        files = [self._file] if self._file is not None else []
        if self._data_file is not None and self._data_file is not self._file:
            files.append(self._data_file)
        return files

    # ================================================================== queries
    def info(self):
        h = self.header
        data = {
            "compat": h.compat,
            "compression-type": L.COMPRESSION_NAMES.get(h.compression_type, str(h.compression_type)),
            "refcount-bits": h.refcount_bits,
        }
        if h.version >= 3:
            data["lazy-refcounts"] = h.lazy_refcounts
            data["corrupt"] = h.corrupt
            data["extended-l2"] = h.extended_l2
        if h.incompatible_features & L.INCOMPAT_DATA_FILE:
            if h.data_file is not None:
                data["data-file"] = h.data_file
            data["data-file-raw"] = bool(h.autoclear_features & L.AUTOCLEAR_DATA_FILE_RAW)
        if self.encrypted:
            data["encrypt"] = self._encrypt_info()
        bitmaps = self.bitmaps()
        if bitmaps:
            data["bitmaps"] = [{"name": b["name"], "granularity": b["granularity"], "flags": b["flags"]}
                               for b in bitmaps]
        result = {
            "cluster-size": self._cs,
            "dirty-flag": h.dirty,
            "format-specific": {"type": "qcow2", "data": data},
        }
        if self.encrypted:
            result["encrypted"] = True
        snaps = self.snapshots()
        if snaps:
            result["snapshots"] = snaps
        return result

    def check(self, repair=None):
        from . import qcow2_check
        if repair and getattr(self, "dirty_repair", None):
            return dict(self.dirty_repair)      # what the repair done on open found and fixed
        if not self.readonly:
            self._trim_file_end()
        return qcow2_check.check_image(self._file, self.header, self.path, repair=repair)

    # ================================================================= mapping
    def _l1_entry_l2_offset(self, l1_index):
        if l1_index >= len(self._l1):
            return 0
        entry = self._l1[l1_index]
        l2_offset = entry & L.L1E_OFFSET_MASK
        if not l2_offset:
            return 0
        if l2_offset % self._cs:
            raise CorruptImageError("qcow2 L1 table entry %d: L2 table offset 0x%x is not cluster aligned"
                                    % (l1_index, l2_offset), self.path)
        if l2_offset + self._cs > self._file_size:
            raise CorruptImageError("qcow2 L1 table entry %d (guest offset 0x%x): L2 table at 0x%x lies past "
                                    "the end of the file (%d bytes)"
                                    % (l1_index, l1_index * self._l2e * self._cs, l2_offset, self._file_size),
                                    self.path)
        return l2_offset

    def _load_l2(self, l2_offset):
        table = self._l2_cache.get(l2_offset)
        if table is not None:
            self._l2_cache.move_to_end(l2_offset)
            return table
        table = _be_array(self._file.pread_exact(l2_offset, self._cs, "qcow2 L2 table"))
        self._l2_cache[l2_offset] = table
        while len(self._l2_cache) > self._l2_cache_max:
            self._l2_cache.popitem(last=False)
        return table

    def _check_host(self, host, guest, l2_offset, index, length):
        """Validate a data cluster host offset from L2 entry ``index`` of the table at ``l2_offset``."""
        if host % self._cs:
            raise CorruptImageError("qcow2 L2 table at 0x%x entry %d (guest offset 0x%x): data cluster offset "
                                    "0x%x is not cluster aligned" % (l2_offset, index, guest, host), self.path)
        if self._data_file is not self._file:
            if host != guest - guest % self._cs:
                raise CorruptImageError("qcow2 L2 table at 0x%x entry %d (guest offset 0x%x): external data file "
                                        "offset 0x%x differs from the guest offset"
                                        % (l2_offset, index, guest, host), self.path)
        elif host >= self._file_size:
            raise CorruptImageError("qcow2 L2 table at 0x%x entry %d (guest offset 0x%x): data cluster at 0x%x "
                                    "lies past the end of the file (%d bytes)"
                                    % (l2_offset, index, guest, host, self._file_size), self.path)

    def _map(self, offset, length):
        """Runs (guest, length, kind, host) of this layer over [offset, offset+length):
        kind DATA (host offset), ZERO, UNALLOCATED, or _COMPRESSED (host = L2 entry,
        one run per cluster).  Adjacent runs are merged."""
        runs = []
        cs, cb, l2e = self._cs, self._cb, self._l2e
        ext = self._ext
        has_data_file = self._data_file is not self._file
        pos = offset
        end = offset + length

        def add(guest, count, kind, host):
            if runs:
                pg, pn, pk, ph = runs[-1]
                if pk == kind and pg + pn == guest and kind != _COMPRESSED and (
                        kind != DATA or ph + pn == host):
                    runs[-1] = (pg, pn + count, pk, ph)
                    return
            runs.append((guest, count, kind, host))

        while pos < end:
            cluster = pos >> cb
            l1_index = cluster // l2e
            table_end = min(end, ((l1_index + 1) * l2e) << cb)
            l2_offset = self._l1_entry_l2_offset(l1_index)
            if not l2_offset:
                add(pos, table_end - pos, UNALLOCATED, None)
                pos = table_end
                continue
            table = self._load_l2(l2_offset)
            base_cluster = l1_index * l2e
            while pos < table_end:
                cluster = pos >> cb
                cstart = cluster << cb
                cend = min(cstart + cs, table_end)
                index = cluster - base_cluster
                if ext:
                    entry = table[2 * index]
                    bitmap = table[2 * index + 1]
                else:
                    entry = table[index]
                    bitmap = 0
                if entry & L.OFLAG_COMPRESSED:
                    coffset = entry & ((1 << self.header.compressed_offset_bits()) - 1)
                    if coffset >= self._file_size or has_data_file:
                        raise CorruptImageError("qcow2 L2 table at 0x%x entry %d (guest offset 0x%x): compressed "
                                                "cluster at 0x%x lies past the end of the file (%d bytes)"
                                                % (l2_offset, index, cstart, coffset, self._file_size), self.path)
                    add(pos, cend - pos, _COMPRESSED, entry)
                    pos = cend
                    continue
                host = entry & L.L2E_OFFSET_MASK
                allocated = bool(host) or (has_data_file and entry & L.OFLAG_COPIED)
                if not ext:
                    if entry & L.OFLAG_ZERO:
                        add(pos, cend - pos, ZERO, None)
                    elif not allocated:
                        add(pos, cend - pos, UNALLOCATED, None)
                    else:
                        self._check_host(host, pos, l2_offset, index, cend - pos)
                        add(pos, cend - pos, DATA, host + (pos - cstart))
                    pos = cend
                    continue
                alloc_bits = bitmap & 0xffffffff
                zero_bits = bitmap >> 32
                if alloc_bits:
                    if not allocated:
                        raise CorruptImageError("qcow2 L2 table at 0x%x entry %d (guest offset 0x%x): subclusters "
                                                "allocated without a host cluster" % (l2_offset, index, cstart),
                                                self.path)
                    self._check_host(host, pos, l2_offset, index, cend - pos)
                if alloc_bits & zero_bits:
                    raise CorruptImageError("qcow2 L2 table at 0x%x entry %d (guest offset 0x%x): subcluster bitmap "
                                            "0x%016x marks subclusters both allocated and zero"
                                            % (l2_offset, index, cstart, bitmap), self.path)
                sc = self._sc
                while pos < cend:
                    sub = (pos - cstart) // sc
                    send = min(cstart + (sub + 1) * sc, cend)
                    if alloc_bits >> sub & 1:
                        add(pos, send - pos, DATA, host + (pos - cstart))
                    elif zero_bits >> sub & 1:
                        add(pos, send - pos, ZERO, None)
                    else:
                        add(pos, send - pos, UNALLOCATED, None)
                    pos = send
        return runs

    def block_status(self, offset, length):
        extents = []
        for guest, count, kind, host in self._map(offset, length):
            if kind == _COMPRESSED:
                kind, host = DATA, None
            if extents:
                prev = extents[-1]
                if prev.kind == kind and prev.start + prev.length == guest and (
                        kind != DATA or (prev.offset is None and host is None)
                        or (prev.offset is not None and host is not None and prev.offset + prev.length == host)):
                    extents[-1] = Extent(prev.start, prev.length + count, kind, prev.offset)
                    continue
            extents.append(Extent(guest, count, kind, host))
        return extents

    # ==================================================================== reads
    def _check_range(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise ImageError("request [%d, +%d) outside the virtual disk (%d bytes)"
                             % (offset, length, self.virtual_size), self.path)

    def read(self, offset, length):
        self._check_range(offset, length)
        runs = None
        if not self.encrypted:
            runs = self._map(offset, length)
            if len(runs) == 1 and runs[0][2] == DATA:
                # one contiguous host run (the common case for a copy): the bytes as read,
                # not copied into a buffer and copied again
                chunk = self._data_file.pread(runs[0][3], length)
                if len(chunk) == length:
                    return chunk if isinstance(chunk, bytes) else bytes(chunk)
        return bytes(self._read(offset, length, runs))

    def read_into(self, offset, view):
        self._check_range(offset, len(view))
        self._read(offset, len(view), None, view)

    def _read(self, offset, length, runs=None, view=None):
        """Guest view of this layer (backing included), also past the virtual
        size inside the last cluster (for copy-on-write); ``runs``: ``_map``'s
        answer for the range when the caller has it; ``view``: the buffer to
        fill (a new one is returned otherwise)."""
        if self.encrypted:
            raise UnsupportedFeature("qcow2 encryption (crypt_method %d) is not supported"
                                     % self.header.crypt_method, self.path)
        out = None
        if view is None:
            out = bytearray(length)
            view = memoryview(out)
        self._read_runs_into(view, offset, self._map(offset, length) if runs is None else runs, self._read_host,
                             fresh=out is not None)
        return out

    def _read_host(self, host, part, kind, guest):
        if kind == _COMPRESSED:
            cluster = self._decompress(host, guest >> self._cb << self._cb)
            start = guest & (self._cs - 1)
            part[:] = cluster[start:start + len(part)]
            return
        # straight into the buffer (short at the end of the file: the rest reads zero)
        count = pread_into(self._data_file, host, part)
        if count < len(part):
            fill_zero(part[count:])

    # ============================================================ write set-up
    def _prepare_write(self):
        self._check_writable()
        if self._write_ready:
            return
        if self.encrypted:
            raise UnsupportedFeature("qcow2 encryption (crypt_method %d) is not supported"
                                     % self.header.crypt_method, self.path)
        self._load_reftable()
        for i in range(len(self._l1)):
            l2_offset = self._l1[i] & L.L1E_OFFSET_MASK
            if l2_offset:
                self._l2_set.add(l2_offset)
        ranges = sorted((start, stop, name) for start, stop, name in self._metadata_ranges() if stop > start)
        for (start_a, stop_a, name_a), (start_b, stop_b, name_b) in zip(ranges, ranges[1:]):
            if start_b < stop_a:
                self._mark_corrupt()
                raise CorruptImageError("qcow2 metadata overlap: the %s (0x%x-0x%x) overlaps the %s (0x%x-0x%x); "
                                        "the image is now marked corrupt"
                                        % (name_a, start_a, stop_a, name_b, start_b, stop_b), self.path)
        self._refcounted_end = self._find_refcounted_end()
        if self._file.is_block_device:
            # the device size says nothing about use: allocate past the last refcounted cluster
            self._next_free = L.align_up(self._refcounted_end, self._cs)
        else:
            self._next_free = L.align_up(self._file_size, self._cs)
        self._file_end = self._file_size
        self._compressed_end = 0
        self._write_ready = True
        self._clear_autoclear()

    def _metadata_ranges(self):
        h = self.header
        cs = self._cs
        ranges = [(0, cs, "header"),
                  (h.l1_table_offset, h.l1_table_offset + len(self._l1) * 8, "active L1 table"),
                  (h.refcount_table_offset, h.refcount_table_offset + h.refcount_table_clusters * cs,
                   "refcount table")]
        if h.nb_snapshots:
            ranges.append((h.snapshots_offset, h.snapshots_offset + self._snapshot_table_bytes, "snapshot table"))
            for snap in self._snapshots:
                ranges.append((snap["l1_table_offset"], snap["l1_table_offset"] + snap["l1_size"] * 8,
                               "inactive L1 table of snapshot %s" % snap["id"]))
        if h.bitmaps and h.autoclear_features & L.AUTOCLEAR_BITMAPS:
            ranges.append((h.bitmaps[2], h.bitmaps[2] + h.bitmaps[1], "bitmap directory"))
        return ranges

    def _overlap_check(self, host, length, what, allowed=None):
        # ``allowed``: ("l2" or "refblock", offset) -- the structure being updated itself
        """Refuse a write of ``what`` to [host, host+length) that would hit metadata
        (docs/security.md rule 6): the image is marked corrupt and CorruptImageError raised."""
        end = host + length
        hit = None
        for start, stop, name in self._metadata_ranges():
            if start < end and host < stop and stop > start:
                hit = name
                break
        if hit is None:
            cluster = host - host % self._cs
            while cluster < end:
                if cluster in self._l2_set and allowed != ("l2", cluster):
                    hit = "active L2 table at 0x%x" % cluster
                    break
                if cluster in self._refblock_set and allowed != ("refblock", cluster):
                    hit = "refcount block at 0x%x" % cluster
                    break
                cluster += self._cs
        if hit is not None:
            self._mark_corrupt()
            raise CorruptImageError("qcow2 metadata overlap: writing %s at 0x%x (%d bytes) would overwrite the %s; "
                                    "the image is now marked corrupt" % (what, host, length, hit), self.path)

    def _check_metadata_target(self, offset, kind):
        """Before the first update of an existing L2 table (kind "l2") or refcount
        block ("refblock"): it must not share its cluster with other metadata."""
        if (kind, offset) in self._verified_targets:
            return
        what = "L2 table" if kind == "l2" else "refcount block"
        self._overlap_check(offset, self._cs, what, allowed=(kind, offset))
        self._verified_targets.add((kind, offset))

    def _mark_corrupt(self):
        h = self.header
        if h.version < 3:
            return
        h.incompatible_features |= L.INCOMPAT_CORRUPT
        self._file.pwrite(L.OFF_INCOMPATIBLE_FEATURES, struct.pack(">Q", h.incompatible_features))
        self._file.flush()

    # ============================================================== L1 / L2 writes
    def _l2_for_write(self, l1_index):
        """(l2_offset, table) of an L2 table owned by the active L1 only (COPIED)."""
        cs = self._cs
        entry = self._l1[l1_index]
        old = self._l1_entry_l2_offset(l1_index)
        if old and entry & L.OFLAG_COPIED:
            self._check_metadata_target(old, "l2")
            table = self._load_l2(old)
            return old, table
        if old:
            old_table = self._load_l2(old)
            table = array.array("Q", old_table)
            # Refcounts count paths from every L1 table: the active path moves from the
            # shared table to the copy, so data refcounts stay; COPIED follows them.
            step = 2 if self._ext else 1
            for i in range(0, len(table), step):
                e = table[i]
                host = e & L.L2E_OFFSET_MASK
                if e & L.OFLAG_COMPRESSED or not host or self._data_file is not self._file:
                    continue
                if self._refcount(host) == 1:
                    table[i] = e | L.OFLAG_COPIED
                else:
                    table[i] = e & ~L.OFLAG_COPIED
        else:
            table = array.array("Q", bytes(cs))
        new = self._alloc(1)
        self._file.pwrite(new, _be_bytes(table))
        self._l2_cache[new] = table
        self._l2_set.add(new)
        self._write_l1_entry(l1_index, new | L.OFLAG_COPIED)
        if old:
            self._l2_set.discard(old)
            self._l2_cache.pop(old, None)
            self._refcount_update(old, 1, -1)
        return new, table

    def _write_l1_entry(self, l1_index, value):
        h = self.header
        self._l1[l1_index] = value
        self._file.pwrite(h.l1_table_offset + l1_index * 8, struct.pack(">Q", value))

    def _write_l2_entries(self, l2_offset, table, first, last):
        """Write entries [first, last] (entry indices) of ``table`` to disk."""
        step = 2 if self._ext else 1
        lo, hi = first * step, (last + 1) * step
        self._file.pwrite(l2_offset + lo * 8, _be_bytes(table[lo:hi]))
        self._l2_cache[l2_offset] = table

    # ==================================================================== writes
    def write(self, offset, data):
        self._check_range(offset, len(data))
        self._prepare_write()
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        pos = offset
        end = offset + len(view)
        span = self._l2e << self._cb
        while pos < end:
            chunk_end = min(end, (pos // span + 1) * span)
            self._write_in_table(pos, view[pos - offset:chunk_end - offset])
            pos = chunk_end

    def _write_in_table(self, offset, data):
        cs, cb, sc = self._cs, self._cb, self._sc
        ext = self._ext
        has_data_file = self._data_file is not self._file
        end = offset + len(data)
        l1_index = (offset >> cb) // self._l2e
        base = l1_index * self._l2e
        # Plans: [cstart, write_lo, write_hi, host or None (allocate), new_entry, new_bitmap, old_entry_to_free]
        l2_offset = self._l1_entry_l2_offset(l1_index)
        table = self._load_l2(l2_offset) if l2_offset else None
        new_entries = self._new_cluster_entries(offset, end, table, base)
        if new_entries is not None:
            self._write_new_clusters(l1_index, new_entries[0], new_entries[1], data)
            return
        plans = []
        cstart = offset >> cb << cb
        while cstart < end:
            lo = max(offset, cstart)
            hi = min(end, cstart + cs)
            index = (cstart >> cb) - base
            if table is not None:
                entry = table[2 * index] if ext else table[index]
                bitmap = table[2 * index + 1] if ext else 0
            else:
                entry = bitmap = 0
            host = entry & L.L2E_OFFSET_MASK
            owned = (not entry & L.OFLAG_COMPRESSED) and bool(entry & L.OFLAG_COPIED) and (
                bool(host) or has_data_file) and l2_offset and self._l1[l1_index] & L.OFLAG_COPIED
            if has_data_file:
                # guest cluster N lives at data file offset N: no allocation, no COW of other clusters
                target = cstart
                if ext:
                    wlo, whi = lo // sc * sc, min(-(-hi // sc) * sc, cstart + cs)
                    touched = self._sub_mask(wlo - cstart, whi - cstart)
                    alloc_bits = (bitmap & 0xffffffff) | touched
                    zero_bits = (bitmap >> 32) & ~touched
                    new_bitmap = alloc_bits | zero_bits << 32
                else:
                    wlo, whi = (lo, hi) if (owned and not entry & L.OFLAG_ZERO) else (cstart, cstart + cs)
                    new_bitmap = 0
                plans.append([cstart, wlo, whi, target, target | L.OFLAG_COPIED, new_bitmap, None])
            elif ext and (owned or (not host and not entry & L.OFLAG_COMPRESSED)):
                wlo, whi = lo // sc * sc, min(-(-hi // sc) * sc, cstart + cs)
                touched = self._sub_mask(wlo - cstart, whi - cstart)
                alloc_bits = bitmap & 0xffffffff
                zero_bits = bitmap >> 32
                # subclusters already allocated and fully written need no COW; partial ones do
                plans.append([cstart, wlo, whi, host if owned else None, None,
                              (alloc_bits | touched) | ((zero_bits & ~touched) << 32), None])
            elif owned and not entry & L.OFLAG_ZERO:
                plans.append([cstart, lo, hi, host, entry, 0, None])
            elif owned:
                # preallocated zero cluster: reuse its host cluster, the rest reads zero
                plans.append([cstart, cstart, cstart + cs, host, host | L.OFLAG_COPIED, 0, None])
            else:
                new_bitmap = 0xffffffff if ext else 0
                plans.append([cstart, cstart, cstart + cs, None, None, new_bitmap,
                              entry if (host or entry & L.OFLAG_COMPRESSED) else None])
            cstart += cs
        # copy-on-write sources, read before anything changes
        buffers = []
        for plan in plans:
            cstart, wlo, whi = plan[0], plan[1], plan[2]
            lo, hi = max(offset, cstart), min(end, cstart + cs)
            if wlo == lo and whi == hi:
                buffers.append(data[lo - offset:hi - offset])
                continue
            piece = bytearray()
            if wlo < lo:
                piece += self._read(wlo, lo - wlo)
            piece += data[lo - offset:hi - offset]
            if hi < whi:
                piece += self._read(hi, whi - hi)
            buffers.append(piece)
        # allocate (refcounts first) and write data in contiguous host runs
        in_place = [plan[3] is not None for plan in plans]
        new_count = in_place.count(False)
        if new_count:
            l2_offset, table = self._l2_for_write(l1_index)
            host = self._alloc(new_count)
            for plan in plans:
                if plan[3] is None:
                    plan[3] = host
                    host += cs
        elif not l2_offset or not self._l1[l1_index] & L.OFLAG_COPIED:
            l2_offset, table = self._l2_for_write(l1_index)
        run_host = run_length = None
        run_parts = []
        for plan, buf, existing in zip(plans, buffers, in_place):
            where = plan[3] + (plan[1] - plan[0])
            if existing and not has_data_file:
                # a host offset read from an L2 table: it must not hit metadata
                self._overlap_check(where, plan[2] - plan[1], "guest data")
            if run_parts and where == run_host + run_length:
                run_parts.append(buf)
                run_length += len(buf)
                continue
            if run_parts:
                self._data_write(run_host, run_parts, run_length)
            run_host = where
            run_length = len(buf)
            run_parts = [buf]
        if run_parts:
            self._data_write(run_host, run_parts, run_length)
        # L2 entries
        first = last = None
        freed = []
        for plan in plans:
            index = (plan[0] >> cb) - base
            old_entry = table[2 * index] if ext else table[index]
            new_entry = plan[4] if plan[4] is not None else plan[3] | L.OFLAG_COPIED
            if ext:
                new_entry &= ~L.OFLAG_ZERO
                changed = table[2 * index] != new_entry or table[2 * index + 1] != plan[5]
                table[2 * index] = new_entry
                table[2 * index + 1] = plan[5]
            else:
                changed = old_entry != new_entry
                table[index] = new_entry
            if old_entry and plan[6] is not None:
                freed.append(plan[6])
            elif (old_entry & L.L2E_OFFSET_MASK and old_entry & L.L2E_OFFSET_MASK != new_entry & L.L2E_OFFSET_MASK
                  and not old_entry & L.OFLAG_COMPRESSED):
                freed.append(old_entry)
            if changed:
                first = index if first is None else first
                last = index
        if first is not None:
            self._write_l2_entries(l2_offset, table, first, last)
        for entry in freed:
            self._free_entry(entry)

    def _new_cluster_entries(self, offset, end, table, base):
        """(first, last): the entries of ``table`` (the L2 table of guest offset ``base`` on, None
        when there is none yet) that [offset, end) covers, when they are whole clusters that are
        all unallocated in an image without extended L2 entries or a data file; else None."""
        cs = self._cs
        if self._ext or self._data_file is not self._file or (offset | end) & (cs - 1):
            return None
        first = (offset >> self._cb) - base
        last = (end >> self._cb) - base
        if table is not None and any(table[first:last]):
            return None
        return first, last

    def _write_new_clusters(self, l1_index, first, last, data):
        """Entries [first, last) of L1 entry ``l1_index``'s table, all unallocated (no COW, nothing
        to free), written whole with ``data``: what _write_in_table's general path does for them
        (L2 table, refcounts, data, then the L2 entries), without planning cluster by cluster (the
        common write of a conversion: a new image filled in guest order)."""
        cs = self._cs
        l2_offset, table = self._l2_for_write(l1_index)
        host = self._alloc(last - first)
        self._data_write(host, [data], len(data))
        for index in range(first, last):
            table[index] = host | L.OFLAG_COPIED
            host += cs
        self._write_l2_entries(l2_offset, table, first, last - 1)

    def _sub_mask(self, lo, hi):
        """Bit mask of the subclusters covering [lo, hi) inside a cluster."""
        first = lo // self._sc
        last = -(-hi // self._sc)
        return ((1 << last) - 1) & ~((1 << first) - 1)

    def _data_write(self, host, parts, length):
        """Write the buffers ``parts`` (``length`` bytes in all) at ``host``, from the
        caller's buffers (os.pwritev: no joined copy)."""
        pwrite_from(self._data_file, host, parts)
        if self._data_file is self._file:
            end = host + length
            if end > self._file_size:
                self._file_size = end

    def write_zeroes(self, offset, length, may_unmap=False):
        self._check_range(offset, length)
        self._prepare_write()
        h = self.header
        cs, cb = self._cs, self._cb
        end = offset + length
        grain = self._sc if self._ext else cs
        raw_data_file = bool(h.autoclear_features & L.AUTOCLEAR_DATA_FILE_RAW)
        can_flag = h.version >= 3 and not raw_data_file
        if not can_flag and (self.backing is not None and offset < self.backing.virtual_size or raw_data_file):
            self._write_zero_bytes(offset, length)
            return
        head_end = min(end, L.align_up(offset, grain))
        # the last partial cluster of an unaligned virtual size counts as whole
        tail_start = end if end == self.virtual_size else max(head_end, end // grain * grain)
        if offset < head_end and offset % grain:
            self._write_zero_bytes(offset, head_end - offset)
        else:
            head_end = offset
        if tail_start < end and end % grain and end != self.virtual_size:
            self._write_zero_bytes(tail_start, end - tail_start)
        else:
            tail_start = end
        pos = head_end
        span = self._l2e << cb
        while pos < tail_start:
            chunk_end = min(tail_start, (pos // span + 1) * span)
            self._zero_in_table(pos, chunk_end, may_unmap, can_flag)
            pos = chunk_end

    def _zero_in_table(self, offset, end, may_unmap, can_flag):
        """Zero whole clusters (whole subclusters with extended L2) in one L2 table."""
        cs, cb = self._cs, self._cb
        ext = self._ext
        has_data_file = self._data_file is not self._file
        l1_index = (offset >> cb) // self._l2e
        base = l1_index * self._l2e
        l2_offset = self._l1_entry_l2_offset(l1_index)
        if not l2_offset and (not can_flag or self.backing is None or offset >= self.backing.virtual_size):
            return  # unallocated and nothing shows through: already reads zero
        # compressed clusters partly covered (extended L2) must be materialized first
        if ext and l2_offset:
            table = self._load_l2(l2_offset)
            for cstart in (offset >> cb << cb, (end - 1) >> cb << cb):
                lo, hi = max(offset, cstart), min(end, cstart + cs)
                index = (cstart >> cb) - base
                if (lo, hi) != (cstart, cstart + cs) and table[2 * index] & L.OFLAG_COMPRESSED:
                    self._write_zero_bytes(lo, hi - lo)
                    return self._zero_rest(offset, end, lo, hi, may_unmap, can_flag)
        l2_offset, table = self._l2_for_write(l1_index)
        freed = []
        first = last = None
        cstart = offset >> cb << cb
        while cstart < end:
            lo, hi = max(offset, cstart), min(end, cstart + cs)
            index = (cstart >> cb) - base
            entry = table[2 * index] if ext else table[index]
            host = entry & L.L2E_OFFSET_MASK
            owned = (not entry & L.OFLAG_COMPRESSED) and bool(entry & L.OFLAG_COPIED) and (
                bool(host) or has_data_file)
            whole = hi - lo >= cs or (lo == cstart and hi == self.virtual_size)
            if ext:
                bitmap = table[2 * index + 1]
                if whole:
                    touched = 0xffffffff
                else:
                    touched = self._sub_mask(lo - cstart, hi - cstart)
                alloc_bits = (bitmap & 0xffffffff) & ~touched
                zero_bits = ((bitmap >> 32) | touched) & 0xffffffff
                keep_host = owned and not (whole and may_unmap)
                new_entry = entry
                if whole and not keep_host:
                    new_entry = 0
                    if entry:
                        freed.append(entry)
                new_pair = (new_entry, alloc_bits | zero_bits << 32)
                if (table[2 * index], table[2 * index + 1]) != new_pair:
                    table[2 * index], table[2 * index + 1] = new_pair
                    first = index if first is None else first
                    last = index
            else:
                if can_flag:
                    if owned and not may_unmap:
                        new_entry = (entry & (L.L2E_OFFSET_MASK | L.OFLAG_COPIED)) | L.OFLAG_ZERO
                    else:
                        new_entry = L.OFLAG_ZERO
                        if host or entry & L.OFLAG_COMPRESSED:
                            freed.append(entry)
                else:
                    new_entry = 0
                    if host or entry & L.OFLAG_COMPRESSED:
                        freed.append(entry)
                if table[index] != new_entry:
                    table[index] = new_entry
                    first = index if first is None else first
                    last = index
            cstart += cs
        if first is not None:
            self._write_l2_entries(l2_offset, table, first, last)
        for entry in freed:
            self._free_entry(entry)
        return None

    def _zero_rest(self, offset, end, lo, hi, may_unmap, can_flag):
        """Zero [offset, end) minus [lo, hi), which was just written as zero bytes."""
        if offset < lo:
            self._zero_in_table(offset, lo, may_unmap, can_flag)
        if hi < end:
            self._zero_in_table(hi, end, may_unmap, can_flag)

    # ================================================================= create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        opts = dict(options or {})
        path = os.path.abspath(os.fspath(path))
        if any(k.startswith("encrypt.") for k in opts) or opts.get("encryption") not in (None, False, "off"):
            raise UnsupportedFeature("creating encrypted qcow2 images is not supported", path)
        unknown = sorted(k for k in opts if k not in CREATE_OPTIONS)
        if unknown:
            raise InvalidOptionError("qcow2 does not support the creation option(s) %s (supported: %s)"
                                     % (", ".join(unknown), ", ".join(CREATE_OPTIONS)), path)
        if opts.get("data_file") or opts.get("data_file_raw") not in (None, False, "off"):
            raise UnsupportedFeature("creating qcow2 images with an external data file is not supported", path)
        if size is None:
            size = opts.get("size")
        if size is None:
            if backing is None:
                raise InvalidOptionError("qcow2 create: an image size is required without a backing file", path)
            size = backing.virtual_size
        size = _int_option("size", size, path)
        if size < 0:
            raise InvalidOptionError("qcow2 create: the image size must not be negative (%d)" % size, path)
        if size % 512:
            raise InvalidOptionError("qcow2 create: the image size must be a multiple of 512 bytes (found %d)"
                                     % size, path)
        cluster_size = _int_option("cluster_size", opts.get("cluster_size", 65536), path)
        if cluster_size < 512 or cluster_size > 2 * 1024 * 1024 or cluster_size & (cluster_size - 1):
            raise InvalidOptionError("qcow2 create: cluster_size must be a power of two between 512 and 2M "
                                     "(found %d)" % cluster_size, path)
        compat = str(opts.get("compat", "1.1"))
        versions = {"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}
        if compat not in versions:
            raise InvalidOptionError("qcow2 create: compat must be 0.10, v2, 1.1 or v3 (found %r)" % compat, path)
        version = versions[compat]
        lazy = _bool_option("lazy_refcounts", opts.get("lazy_refcounts", False), path)
        extended_l2 = _bool_option("extended_l2", opts.get("extended_l2", False), path)
        refcount_bits = _int_option("refcount_bits", opts.get("refcount_bits", 16), path)
        if refcount_bits not in (1, 2, 4, 8, 16, 32, 64):
            raise InvalidOptionError("qcow2 create: refcount_bits must be a power of two up to 64 (found %d)"
                                     % refcount_bits, path)
        preallocation = str(opts.get("preallocation", "off"))
        if preallocation not in ("off", "metadata", "falloc", "full"):
            raise InvalidOptionError("qcow2 create: preallocation must be off, metadata, falloc or full "
                                     "(found %r)" % preallocation, path)
        compression = str(opts.get("compression_type", "zlib"))
        if compression not in ("zlib", "zstd"):
            raise InvalidOptionError("qcow2 create: compression_type must be zlib or zstd (found %r)"
                                     % compression, path)
        backing_file = opts.get("backing_file") or None
        backing_fmt = opts.get("backing_fmt") or None
        if version == 2:
            if lazy:
                raise InvalidOptionError("qcow2 create: lazy_refcounts needs compat 1.1 (v3)", path)
            if refcount_bits != 16:
                raise InvalidOptionError("qcow2 create: refcount_bits other than 16 needs compat 1.1 (v3)", path)
            if extended_l2:
                raise InvalidOptionError("qcow2 create: extended_l2 needs compat 1.1 (v3)", path)
            if compression != "zlib":
                raise InvalidOptionError("qcow2 create: compression_type %s needs compat 1.1 (v3)"
                                         % compression, path)
        if extended_l2 and cluster_size < 16384:
            raise InvalidOptionError("qcow2 create: extended_l2 needs cluster_size >= 16384 (found %d)"
                                     % cluster_size, path)
        if compression == "zstd" and not _zstd_available():
            raise UnsupportedFeature("qcow2 create: compression_type zstd needs the zstd or zstandard Python "
                                     "module", path)
        if backing_fmt and not backing_file:
            raise InvalidOptionError("qcow2 create: backing_fmt given without backing_file", path)
        if backing_file:
            if not backing_fmt and backing is not None:
                backing_fmt = backing.format_name
            if not backing_fmt:
                raise InvalidOptionError("qcow2 create: backing_fmt is required with backing_file", path)
            if len(backing_file.encode("utf-8", "surrogateescape")) > L.MAX_BACKING_FILE_NAME:
                raise InvalidOptionError("qcow2 create: backing file name longer than %d bytes"
                                         % L.MAX_BACKING_FILE_NAME, path)
            if preallocation != "off" and not extended_l2:
                raise InvalidOptionError("qcow2 create: a backing file and preallocation can only be used together "
                                         "with extended_l2", path)
        header = _build_new_header(version, cluster_size, refcount_bits, lazy, extended_l2,
                                   1 if compression == "zstd" else 0, backing_file, backing_fmt)
        exists = os.path.exists(path)
        image_file = ImageFile(path, writable=True, create=not exists)
        try:
            if exists and not image_file.is_block_device:
                image_file.truncate(0)
            # header, refcount table (1 cluster), refcount block (1 cluster) covering the first clusters
            image = bytearray(3 * cluster_size)
            image[:len(header)] = header
            struct.pack_into(">QI", image, L.OFF_REFCOUNT_TABLE_OFFSET, cluster_size, 1)
            struct.pack_into(">Q", image, cluster_size, 2 * cluster_size)
            block = memoryview(image)[2 * cluster_size:]
            for cluster in range(3):
                bit = cluster * refcount_bits
                if refcount_bits >= 8:
                    width = refcount_bits >> 3
                    block[cluster * width:(cluster + 1) * width] = (1).to_bytes(width, "big")
                else:
                    block[bit >> 3] |= 1 << (bit & 7)
            image_file.pwrite(0, image)
            # the new image's layer only: the caller owns ``backing``
            driver = cls.open_file(image_file, False, None, open_backing=False)
        except BaseException:
            image_file.close()
            raise
        try:
            driver._prepare_write()
            driver._grow_l1(size)
            if preallocation != "off":
                driver._preallocate(preallocation)
            driver._file.flush()
        finally:
            driver.close()
        return None

    def _grow_l1(self, size, l1_entries=0):
        """Set the virtual size to ``size`` (growing), with an L1 table big enough:
        a bigger table is written at the end of the file, then the header points
        to it, then the old one is freed."""
        cs = self._cs
        h = self.header
        l1_size = max(len(self._l1), l1_entries, -(-size // (cs * self._l2e)) if size else 0)
        if l1_size * 8 > L.MAX_L1_BYTES:
            raise InvalidOptionError("qcow2: size %d needs an L1 table larger than the %d-byte cap"
                                     % (size, L.MAX_L1_BYTES), self.path)
        old_offset, old_size = h.l1_table_offset, len(self._l1)
        old_clusters = -(-old_size * 8 // cs)
        offset = old_offset
        if l1_size > old_size:
            new_l1 = array.array("Q", self._l1)
            new_l1.extend([0] * (l1_size - old_size))
            clusters = -(-l1_size * 8 // cs)
            if clusters > old_clusters or not old_offset:
                offset = self._alloc(clusters)
                self._file.pwrite(offset, _be_bytes(new_l1) + bytes(clusters * cs - l1_size * 8))
            else:
                self._file.pwrite(old_offset + old_size * 8, bytes((l1_size - old_size) * 8))
            self._l1 = new_l1
        self._file.pwrite(L.OFF_SIZE, HEADER_SIZE_TO_L1.pack(size, h.crypt_method, l1_size, offset))
        h.size = size
        h.l1_size = l1_size
        h.l1_table_offset = offset
        self.virtual_size = size
        if offset != old_offset and old_clusters:
            self._refcount_update(old_offset, old_clusters * cs, -1)

    def _preallocate(self, mode, first_cluster=0):
        """Allocate host clusters for the unallocated guest clusters from
        ``first_cluster`` on (create and resize): L2 tables followed by their data
        (metadata), or all L2 tables then one contiguous data area (falloc/full)."""
        cs = self._cs
        h = self.header
        total = -(-self.virtual_size // cs)
        if first_cluster >= total:
            return
        first_table = first_cluster // self._l2e
        last_table = (total - 1) // self._l2e
        step = 2 if self._ext else 1
        # like QEMU: plain allocated entries over the fresh (sparse, zero) file area;
        # extended L2 keeps the subclusters unallocated (backing or zeroes show through)
        zero_flag = L.OFLAG_ZERO if (self._file.is_block_device and mode == "metadata"
                                     and h.version >= 3 and not self._ext) else 0
        # guest clusters still unallocated, per L2 table
        plan = []
        for l1_index in range(first_table, last_table + 1):
            start = max(first_cluster, l1_index * self._l2e) - l1_index * self._l2e
            stop = min(total, (l1_index + 1) * self._l2e) - l1_index * self._l2e
            l2_offset = self._l1_entry_l2_offset(l1_index)
            if l2_offset:
                table = self._load_l2(l2_offset)
                indices = [i for i in range(start, stop) if not table[step * i]]
            else:
                indices = list(range(start, stop))
            if indices:
                plan.append((l1_index, bool(l2_offset), indices))
        new_tables = {}
        data_base = None
        if mode in ("falloc", "full"):
            missing = [item[0] for item in plan if not item[1]]
            if missing:
                base = self._alloc(len(missing))
                new_tables = dict((index, base + n * cs) for n, index in enumerate(missing))
            data_base = self._alloc(sum(len(item[2]) for item in plan))
        for l1_index, existing, indices in plan:
            count = len(indices)
            if existing:
                l2_offset, table = self._l2_for_write(l1_index)
            else:
                table = array.array("Q", [0] * (cs // 8))
                l2_offset = new_tables[l1_index] if data_base is not None else self._alloc(1 + count)
            if data_base is not None:
                data = data_base
                data_base += count * cs
            elif existing:
                data = self._alloc(count)
            else:
                data = l2_offset + cs
            for n, i in enumerate(indices):
                table[step * i] = (data + n * cs) | L.OFLAG_COPIED | zero_flag
            if mode == "full" or (self._file.is_block_device and not zero_flag and not self._ext):
                # a device has no holes: what the entries expose must really be zero
                self._file.write_zeroes(data, count * cs)
            elif mode == "falloc":
                self._file.allocate(data, count * cs)
            if existing:
                self._write_l2_entries(l2_offset, table, indices[0], indices[-1])
            else:
                self._file.pwrite(l2_offset, _be_bytes(table))
                self._l2_set.add(l2_offset)
                self._l2_cache[l2_offset] = table
                self._write_l1_entry(l1_index, l2_offset | L.OFLAG_COPIED)

    # ================================================================= resize
    def resize(self, new_size, preallocation=None):
        """Grow (new range reads zeroes, even where a longer backing file lies
        beneath) or shrink (clusters past the end freed) the virtual disk."""
        self._prepare_write()
        h = self.header
        if isinstance(new_size, bool) or not isinstance(new_size, int) or new_size < 0:
            raise InvalidOptionError("qcow2 resize: invalid size %r" % (new_size,), self.path)
        if new_size % 512:
            raise InvalidOptionError("qcow2 resize: the image size must be a multiple of 512 bytes (found %d)"
                                     % new_size, self.path)
        mode = preallocation or "off"
        if mode not in ("off", "metadata", "falloc", "full"):
            raise InvalidOptionError("qcow2 resize: preallocation must be off, metadata, falloc or full "
                                     "(found %r)" % mode, self.path)
        old_size = self.virtual_size
        if new_size == old_size:
            return
        if new_size < old_size:
            if mode != "off":
                raise InvalidOptionError("qcow2 resize: preallocation applies only when growing", self.path)
            released = self._discard_beyond(new_size, old_size)
            self._file.pwrite(L.OFF_SIZE, struct.pack(">Q", new_size))
            h.size = new_size
            self.virtual_size = new_size
            released.extend(self._drop_unused_refblocks())
            self._give_back(released)
            return
        raw_data_file = self._data_file is not self._file and h.autoclear_features & L.AUTOCLEAR_DATA_FILE_RAW
        if mode == "off":
            self._grow_l1(new_size)
        else:
            # With preallocation the new size goes into the header last (QEMU's order): a
            # resize cut short leaves the old size, and running it again completes it
            # (docs/crash-safety.md).  Until then the new size is known in memory only.
            self._grow_l1(old_size, -(-new_size // (self._cs * self._l2e)))
            h.size = self.virtual_size = new_size
        if raw_data_file and self._data_file.size() < new_size:
            self._data_file.truncate(new_size)
        # stale bytes past the old end of its last cluster, or a longer backing file,
        # must not show through the new range
        zero_end = min(new_size, L.align_up(old_size, self._cs))
        if self.backing is not None:
            zero_end = max(zero_end, min(new_size, self.backing.virtual_size))
        if zero_end > old_size:
            self.write_zeroes(old_size, zero_end - old_size)
        if mode != "off":
            self._preallocate(mode, -(-old_size // self._cs))
            self._grow_l1(new_size)

    def _discard_beyond(self, new_size, old_size):
        """Drop every cluster wholly past ``new_size`` (shrink).  Returns the host
        offsets of the image file's clusters whose references were dropped."""
        released = []
        in_image_file = self._data_file is self._file
        cs = self._cs
        first = -(-new_size // cs)
        total = -(-old_size // cs)
        step = 2 if self._ext else 1
        for l1_index in range(first // self._l2e, min(len(self._l1), -(-total // self._l2e))):
            l2_offset = self._l1_entry_l2_offset(l1_index)
            if not l2_offset:
                continue
            start = max(first, l1_index * self._l2e) - l1_index * self._l2e
            if start == 0:
                # whole table past the end: unhook it, then drop the references this
                # path held (refcounts count paths from every L1 table, snapshots too)
                table = self._load_l2(l2_offset)
                self._write_l1_entry(l1_index, 0)
                self._l2_set.discard(l2_offset)
                self._l2_cache.pop(l2_offset, None)
                for i in range(0, len(table), step):
                    if table[i] & (L.L2E_OFFSET_MASK | L.OFLAG_COMPRESSED):
                        self._free_entry(table[i])
                        if in_image_file and not table[i] & L.OFLAG_COMPRESSED:
                            released.append(table[i] & L.L2E_OFFSET_MASK)
                self._refcount_update(l2_offset, 1, -1)
                released.append(l2_offset)
                continue
            l2_offset, table = self._l2_for_write(l1_index)
            freed = []
            for i in range(start, self._l2e):
                entry = table[step * i]
                if entry & (L.L2E_OFFSET_MASK | L.OFLAG_COMPRESSED):
                    freed.append(entry)
                table[step * i] = 0
                if self._ext:
                    table[step * i + 1] = 0
            self._write_l2_entries(l2_offset, table, start, self._l2e - 1)
            for entry in freed:
                self._free_entry(entry)
                if in_image_file and not entry & L.OFLAG_COMPRESSED:
                    released.append(entry & L.L2E_OFFSET_MASK)
        return released

    # ================================================================ emptying
    # (used by ops/commit.py)
    def make_empty(self):
        """Drop every cluster of the active layer (qemu-img commit empties the
        overlay): the L1 table is cleared first, then the references it held are
        dropped (a crash leaves leaks only); snapshots keep theirs."""
        self._prepare_write()
        old = array.array("Q", self._l1)
        if not any(entry & L.L1E_OFFSET_MASK for entry in old):
            return
        self._file.flush()
        self._file.pwrite(self.header.l1_table_offset, bytes(len(old) * 8))
        self._file.flush()
        self._l1 = array.array("Q", bytes(len(old) * 8))
        if self._data_file is self._file:
            self._tree_refcounts(old, -1)
        else:
            for l2_offset, _table in self._tree(old):
                self._refcount_update(l2_offset, 1, -1)
        self._l2_cache.clear()
        self._l2_set = set()
        self._verified_targets = set()
        self._decompressed = (None, None)

    # ------------------------------------- map and measure (the driver interface; formats/qcow2_map.py,
    # imported when first used: a task that only reads or writes an image does not load it)
    def map_runs(self, offset, end, l1_table=None, cache=None):
        from . import qcow2_map  # pylint: disable=import-outside-toplevel
        return qcow2_map.map_runs(self, offset, end, l1_table, cache)

    def snapshot_table(self):
        return self._snapshots

    def snapshot_l1_table(self, snapshot):
        from . import qcow2_map  # pylint: disable=import-outside-toplevel
        return qcow2_map.snapshot_l1_table(self, snapshot)

    def persistent_bitmaps_supported(self):
        return self.header.version >= 3
