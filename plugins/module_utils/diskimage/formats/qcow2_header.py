# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qcow2 header cluster (QEMU docs/interop/qcow2.rst, "Header", "Header
extensions"): the header of a new image, the persistent bitmaps directory, the
LUKS header info, and rewriting or editing the header in place (backing file,
compat, refcount order).

``Qcow2HeaderMixin`` is the part of ``Qcow2Driver`` (formats/qcow2.py) that
does it; ops/rebase.py (set_backing) and amend (formats/qcow2_amend.py) edit
the header through it.  Parsing is qcow2_layout.parse_header.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import struct

from ..errors import CorruptImageError, FormatError, ImageError, InvalidOptionError
from . import qcow2_layout as L
from .qcow2_layout import be_array as _be_array

# Cap on the bitmap directory read (docs/security.md rule 5).
MAX_BITMAP_DIRECTORY_BYTES = 64 * 1024 * 1024

# "Bitmaps" section: bitmap directory entry: bitmap_table_offset, bitmap_table_size,
# flags, type, granularity_bits, name_size, extra_data_size
BITMAP_DIRECTORY_ENTRY = struct.Struct(">QIIBBHI")
BITMAP_FLAG_IN_USE = 1 << 0
BITMAP_FLAG_AUTO = 1 << 1
BITMAP_TABLE_OFFSET_MASK = 0x00fffffffffffe00
MAX_BITMAP_TABLE_ENTRIES = 0x8000000

# LUKS1 partition header inside the qcow2 "Full disk encryption header" (cryptsetup
# docs/on-disk-format.pdf): magic, version, cipher_name, cipher_mode, hash_spec,
# payload_offset, key_bytes, mk_digest, mk_digest_salt, mk_digest_iterations, uuid;
# then 8 key slots: active, iterations, salt, key_material_offset, stripes.
LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS_HEADER = struct.Struct(">6sH32s32s32sII20s32sI40s")
LUKS_KEY_SLOT = struct.Struct(">II32sII")
LUKS_SLOTS = 8
LUKS_SLOT_ACTIVE = 0x00AC71F3

# Feature name table QEMU writes (type, bit, name).
FEATURE_NAMES = (
    (0, 0, b"dirty bit"),
    (0, 1, b"corrupt bit"),
    (0, 2, b"external data file"),
    (0, 3, b"compression type"),
    (0, 4, b"extended L2 entries"),
    (1, 0, b"lazy refcounts"),
    (2, 0, b"bitmaps"),
    (2, 1, b"raw external data"),
)


class Qcow2HeaderMixin:
    """The header cluster of a Qcow2Driver.

    Driver state used: ``header`` (qcow2_layout.Header, replaced by
    ``_install_header``), ``_header_cluster`` (its bytes), ``backing_filename``
    and ``backing_format``; bitmaps are dropped through the allocator
    (formats/qcow2_refcount.py).
    """

    # ------------------------------------------------- extensions: bitmaps, encryption
    def bitmaps(self):
        """Persistent dirty bitmaps (only when the bitmaps autoclear bit says they are
        consistent, as QEMU does): list of dicts name, granularity, flags,
        table_offset, table_size."""
        h = self.header
        if not h.bitmaps or not h.autoclear_features & L.AUTOCLEAR_BITMAPS:
            return []
        return self._read_bitmap_directory()

    def _read_bitmap_directory(self):
        h = self.header
        nb, dsize, doff = h.bitmaps
        if dsize > MAX_BITMAP_DIRECTORY_BYTES or doff + dsize > self._file_size or doff % self._cs:
            raise CorruptImageError("qcow2 bitmap directory at 0x%x (%d bytes) is misplaced or too large "
                                    "(file size %d)" % (doff, dsize, self._file_size), self.path)
        buf = self._file.pread_exact(doff, dsize, "qcow2 bitmap directory")
        result = []
        pos = 0
        for index in range(nb):
            if pos + BITMAP_DIRECTORY_ENTRY.size > len(buf):
                raise CorruptImageError("qcow2 bitmap directory: entry %d runs past the directory (%d bytes)"
                                        % (index, len(buf)), self.path)
            (table_offset, table_size, flags, _type, gran_bits, name_size,
             extra_size) = BITMAP_DIRECTORY_ENTRY.unpack_from(buf, pos)
            start = pos + BITMAP_DIRECTORY_ENTRY.size + extra_size
            if start + name_size > len(buf) or gran_bits > 63:
                raise CorruptImageError("qcow2 bitmap directory: entry %d is malformed" % index, self.path)
            name = bytes(buf[start:start + name_size]).decode("utf-8", "replace")
            names = []
            if flags & BITMAP_FLAG_IN_USE:
                names.append("in-use")
            if flags & BITMAP_FLAG_AUTO:
                names.append("auto")
            result.append({"name": name, "granularity": 1 << gran_bits, "flags": names,
                           "table_offset": table_offset, "table_size": table_size})
            pos = L.pad8(start + name_size)
        return result

    def _clear_autoclear(self):
        """Clear the autoclear bits we do not maintain before the first change
        (bitmaps: drop the extension and free its clusters, so check stays clean)."""
        h = self.header
        keep = h.autoclear_features & L.AUTOCLEAR_DATA_FILE_RAW
        if h.autoclear_features == keep:
            return
        bitmaps = []
        if h.bitmaps and h.autoclear_features & L.AUTOCLEAR_BITMAPS:
            bitmaps = self._read_bitmap_directory()
        h.autoclear_features = keep
        if h.bitmaps and bitmaps:
            self._rewrite_header(drop_types=(L.EXT_BITMAPS,))
            nb, dsize, doff = h.bitmaps
            h.bitmaps = None
            freed = []
            for bitmap in bitmaps:
                count = bitmap["table_size"]
                toff = bitmap["table_offset"]
                if count > MAX_BITMAP_TABLE_ENTRIES or toff % self._cs or toff + count * 8 > self._file_size:
                    raise CorruptImageError("qcow2 bitmap %r: table at 0x%x (%d entries) is misplaced"
                                            % (bitmap["name"], toff, count), self.path)
                if count:
                    entries = _be_array(self._file.pread_exact(toff, count * 8, "qcow2 bitmap table"))
                    freed.extend(e & BITMAP_TABLE_OFFSET_MASK for e in entries if e & BITMAP_TABLE_OFFSET_MASK)
                    freed.append((toff, count * 8))
            if dsize:
                freed.append((doff, dsize))
            for item in freed:
                if isinstance(item, tuple):
                    self._refcount_update(item[0], item[1], -1)
                else:
                    self._refcount_update(item, 1, -1)
        else:
            self._file.pwrite(L.OFF_AUTOCLEAR_FEATURES, struct.pack(">Q", h.autoclear_features))

    def _encrypt_info(self):
        """The "encrypt" part of qemu-img info (LUKS header fields, never secrets)."""
        h = self.header
        if h.crypt_method == L.CRYPT_AES:
            return {"format": "aes"}
        if h.crypt_method != L.CRYPT_LUKS:
            return {"format": "unknown"}
        if not h.crypto_header:
            raise FormatError("qcow2 LUKS image without a full disk encryption header extension", self.path)
        offset, length = h.crypto_header
        size = LUKS_HEADER.size + LUKS_SLOTS * LUKS_KEY_SLOT.size
        if length < size or offset + size > self._file_size:
            raise FormatError("qcow2 LUKS header at 0x%x (%d bytes) is too short or past the end of the file"
                              % (offset, length), self.path)
        raw = self._file.pread_exact(offset, size, "qcow2 LUKS header")
        (magic, _version, cipher_name, cipher_mode, hash_spec, payload_offset, key_bytes, _digest, _salt,
         mk_iterations, uuid) = LUKS_HEADER.unpack_from(raw, 0)
        if magic != LUKS_MAGIC:
            raise FormatError("qcow2 LUKS header: magic expected %r, found %r" % (LUKS_MAGIC, magic), self.path)

        def text(field):
            return field.split(b"\0", 1)[0].decode("ascii", "replace")
        mode, _sep, ivgen = text(cipher_mode).partition("-")
        ivgen_alg, _sep, ivgen_hash = ivgen.partition(":")
        key_bits = (key_bytes // 2 if mode == "xts" else key_bytes) * 8
        result = {
            "format": "luks",
            "cipher-alg": "%s-%d" % (text(cipher_name), key_bits),
            "cipher-mode": mode,
            "ivgen-alg": ivgen_alg,
            "hash-alg": text(hash_spec),
            "payload-offset": payload_offset * 512,
            "master-key-iters": mk_iterations,
            "uuid": text(uuid),
            "slots": [],
        }
        if ivgen_hash:
            result["ivgen-hash-alg"] = ivgen_hash
        for index in range(LUKS_SLOTS):
            active, iterations, _salt, key_offset, stripes = LUKS_KEY_SLOT.unpack_from(
                raw, LUKS_HEADER.size + index * LUKS_KEY_SLOT.size)
            slot = {"active": active == LUKS_SLOT_ACTIVE, "key-offset": key_offset * 512}
            if slot["active"]:
                slot["iters"] = iterations
                slot["stripes"] = stripes
            result["slots"].append(slot)
        return result

    # ------------------------------------------------------------ rewrites and edits
    def _rewrite_header(self, drop_types=()):
        """Rewrite the header cluster without the extensions in ``drop_types``."""
        h = self.header
        cs = self._cs
        raw = bytearray(self._file.pread_exact(0, cs, "qcow2 header"))
        start = h.header_length if h.version >= 3 else L.HEADER_V2_LENGTH
        exts = []
        off = start
        limit = h.backing_file_offset if h.backing_file_offset > start else cs
        while off + 8 <= limit:
            ext_type, ext_len = L.HEADER_EXTENSION.unpack_from(raw, off)
            if ext_type == L.EXT_END:
                break
            if ext_type not in drop_types:
                exts.append((ext_type, bytes(raw[off + 8:off + 8 + ext_len])))
            off += 8 + L.pad8(ext_len)
        backing = raw[h.backing_file_offset:h.backing_file_offset + h.backing_file_size] \
            if h.backing_file_offset else b""
        area = _serialize_extensions(exts)
        new = bytearray(raw[:start]) + area
        if backing:
            struct.pack_into(">QI", new, L.OFF_BACKING_FILE_OFFSET, len(new), len(backing))
            h.backing_file_offset = len(new)
            new += backing
        struct.pack_into(">Q", new, L.OFF_AUTOCLEAR_FEATURES, h.autoclear_features)
        if len(new) > cs:
            raise ImageError("qcow2 header: rewritten header (%d bytes) does not fit in a cluster" % len(new),
                             self.path)
        new += bytes(cs - len(new))
        self._file.pwrite(0, new)

    def _compose_header(self, version=None, backing=None, compatible=None, refcount_order=None,
                        reftable=None):
        """The whole header cluster with the given changes (None: keep).  ``backing``
        is (name or None, format or None); ``reftable`` is (offset, clusters)."""
        h = self.header
        cs = self._cs
        raw = bytes(self._file.pread_exact(0, cs, "qcow2 header"))
        version = h.version if version is None else version
        start = h.header_length if h.version >= 3 else L.HEADER_V2_LENGTH
        limit = h.backing_file_offset if h.backing_file_offset > start else cs
        exts = []
        off = start
        while off + 8 <= limit:
            ext_type, ext_len = L.HEADER_EXTENSION.unpack_from(raw, off)
            if ext_type == L.EXT_END or off + 8 + ext_len > limit:
                break
            exts.append((ext_type, raw[off + 8:off + 8 + ext_len]))
            off += 8 + L.pad8(ext_len)
        if backing is None:
            backing = (h.backing_file, h.backing_format)
        name, fmt = backing
        drop = [L.EXT_BACKING_FORMAT]
        if version < 3:
            drop += [L.EXT_FEATURE_NAME_TABLE, L.EXT_BITMAPS]
        exts = [item for item in exts if item[0] not in drop]
        if fmt:
            exts.insert(0, (L.EXT_BACKING_FORMAT, fmt.encode("utf-8")))
        fixed = bytearray(raw[:L.HEADER_V2_LENGTH])
        if version >= 3:
            if h.version >= 3:
                fixed += raw[L.HEADER_V2_LENGTH:start]
            else:
                fixed += L.HEADER_V3_EXTRA.pack(0, 0, 0, 4, L.HEADER_V3_LENGTH_COMPRESSION) + bytes(8)
                table = b"".join(L.FEATURE_NAME_ENTRY.pack(t, bit, label) for t, bit, label in FEATURE_NAMES)
                exts.append((L.EXT_FEATURE_NAME_TABLE, table))
            if compatible is not None:
                struct.pack_into(">Q", fixed, L.OFF_COMPATIBLE_FEATURES, compatible)
            if refcount_order is not None:
                struct.pack_into(">I", fixed, L.OFF_AUTOCLEAR_FEATURES + 8, refcount_order)
        struct.pack_into(">I", fixed, 4, version)
        if reftable is not None:
            struct.pack_into(">QI", fixed, L.OFF_REFCOUNT_TABLE_OFFSET, reftable[0], reftable[1])
        new = fixed + _serialize_extensions(exts)
        name_bytes = name.encode("utf-8", "surrogateescape") if name else b""
        struct.pack_into(">QI", new, L.OFF_BACKING_FILE_OFFSET, len(new) if name_bytes else 0, len(name_bytes))
        new += name_bytes
        if len(new) > cs:
            raise InvalidOptionError("qcow2 header: the new header (%d bytes, backing file name included) does "
                                     "not fit in one %d-byte cluster" % (len(new), cs), self.path)
        return bytes(new + bytes(cs - len(new)))

    def _install_header(self, new):
        """Write the header cluster ``new`` in one pwrite (crash-safe) and adopt it."""
        self._file.flush()
        self._file.pwrite(0, new)
        self._file.flush()
        h = L.parse_header(new, self.path, self._file_size)
        self.header = h
        self._header_cluster = new
        self.backing_filename = h.backing_file
        self.backing_format = h.backing_format

    def set_backing(self, backing_file, backing_fmt):
        """Record ``backing_file`` (None or "": no backing file) and its format in
        the header; nothing else changes (qemu-img rebase -u)."""
        self._check_writable()
        backing_file = backing_file or None
        backing_fmt = backing_fmt or None
        if backing_file is None and backing_fmt is not None:
            raise InvalidOptionError("qcow2: backing_fmt %r given without a backing file" % backing_fmt, self.path)
        if backing_file is not None:
            if backing_fmt is None:
                raise InvalidOptionError("qcow2: the backing file format is required (never guessed)", self.path)
            if len(backing_file.encode("utf-8", "surrogateescape")) > L.MAX_BACKING_FILE_NAME:
                raise InvalidOptionError("qcow2: backing file name longer than %d bytes"
                                         % L.MAX_BACKING_FILE_NAME, self.path)
            if self.header.autoclear_features & L.AUTOCLEAR_DATA_FILE_RAW:
                raise InvalidOptionError("qcow2: an image with a raw external data file cannot have a backing file",
                                         self.path)
        self._install_header(self._compose_header(backing=(backing_file, backing_fmt)))


def _serialize_extensions(exts):
    out = bytearray()
    for ext_type, data in exts:
        out += L.HEADER_EXTENSION.pack(ext_type, len(data))
        out += data
        out += bytes(L.pad8(len(data)) - len(data))
    out += L.HEADER_EXTENSION.pack(L.EXT_END, 0)
    return out


def _build_new_header(version, cluster_size, refcount_bits, lazy, extended_l2, compression_type,
                      backing_file, backing_fmt):
    """Header cluster contents of a new empty image (size 0, no L1 yet)."""
    cb = cluster_size.bit_length() - 1
    incompat = 0
    if extended_l2:
        incompat |= L.INCOMPAT_EXTL2
    if compression_type:
        incompat |= L.INCOMPAT_COMPRESSION
    out = bytearray(L.HEADER_V2.pack(L.QCOW2_MAGIC, version, 0, 0, cb, 0, 0, 0, 0, 0, 0, 0, 0))
    if version >= 3:
        out += L.HEADER_V3_EXTRA.pack(incompat, L.COMPAT_LAZY_REFCOUNTS if lazy else 0, 0,
                                      refcount_bits.bit_length() - 1, L.HEADER_V3_LENGTH_COMPRESSION)
        out += bytes([compression_type]) + bytes(7)
    exts = []
    if backing_fmt:
        exts.append((L.EXT_BACKING_FORMAT, backing_fmt.encode("utf-8")))
    name = backing_file.encode("utf-8", "surrogateescape") if backing_file else b""
    if version >= 3:
        table = b"".join(L.FEATURE_NAME_ENTRY.pack(t, bit, label) for t, bit, label in FEATURE_NAMES)
        with_table = exts + [(L.EXT_FEATURE_NAME_TABLE, table)]
        if len(out) + len(_serialize_extensions(with_table)) + len(name) <= cluster_size:
            exts = with_table
    out += _serialize_extensions(exts)
    if name:
        struct.pack_into(">QI", out, L.OFF_BACKING_FILE_OFFSET, len(out), len(name))
        out += name
    if len(out) > cluster_size:
        raise InvalidOptionError("qcow2 create: the header with the backing file name (%d bytes) does not fit "
                                 "in one %d-byte cluster" % (len(out), cluster_size))
    return bytes(out)
