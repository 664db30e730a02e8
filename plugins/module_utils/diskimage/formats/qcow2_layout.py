# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 on-disk structures, from QEMU docs/interop/qcow2.rst.

Shared by the qcow2 driver (formats/qcow2.py) and the checker
(formats/qcow2_check.py).  Pure parsing: no file access beyond the bytes given.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import struct
import sys

from ..errors import FormatError, UnsupportedFeature

_LITTLE_ENDIAN = sys.byteorder == "little"

# --- "Header" ------------------------------------------------------------------
QCOW2_MAGIC = b"QFI\xfb"
# magic, version, backing_file_offset, backing_file_size, cluster_bits, size,
# crypt_method, l1_size, l1_table_offset, refcount_table_offset,
# refcount_table_clusters, nb_snapshots, snapshots_offset
HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
HEADER_V2_LENGTH = 72
# incompatible_features, compatible_features, autoclear_features, refcount_order, header_length
HEADER_V3_EXTRA = struct.Struct(">QQQII")
HEADER_V3_LENGTH = 104          # without the compression_type byte
HEADER_V3_LENGTH_COMPRESSION = 112  # with compression_type and padding
COMPRESSION_TYPE_OFFSET = 104

# Header field offsets used for in-place updates.
OFF_BACKING_FILE_OFFSET = 8
OFF_SIZE = 24
OFF_L1_SIZE = 36
OFF_L1_TABLE_OFFSET = 40
OFF_REFCOUNT_TABLE_OFFSET = 48
OFF_REFCOUNT_TABLE_CLUSTERS = 56
OFF_NB_SNAPSHOTS = 60
OFF_SNAPSHOTS_OFFSET = 64
OFF_INCOMPATIBLE_FEATURES = 72
OFF_COMPATIBLE_FEATURES = 80
OFF_AUTOCLEAR_FEATURES = 88

# Incompatible feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                  | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
# Compatible feature bits.
COMPAT_LAZY_REFCOUNTS = 1 << 0
# Autoclear feature bits.
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

CRYPT_NONE = 0
CRYPT_AES = 1
CRYPT_LUKS = 2

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21

# --- "Header extensions" -----------------------------------------------------------
HEADER_EXTENSION = struct.Struct(">II")   # type, length; data padded to 8 bytes
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xe2792aca
EXT_FEATURE_NAME_TABLE = 0x6803f857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO_HEADER = 0x0537be77
EXT_DATA_FILE = 0x44415441
# Feature name table entry: type (0 incompat, 1 compat, 2 autoclear), bit, name[46]
FEATURE_NAME_ENTRY = struct.Struct(">BB46s")
# Bitmaps extension: nb_bitmaps, reserved32, bitmap_directory_size, bitmap_directory_offset
BITMAPS_EXTENSION = struct.Struct(">IIQQ")

# --- "Host cluster management" / "Cluster mapping" -----------------------------------
L1E_OFFSET_MASK = 0x00fffffffffffe00
L1E_RESERVED_MASK = 0x7f000000000001ff
L2E_OFFSET_MASK = 0x00fffffffffffe00
L2E_RESERVED_MASK = 0x3f000000000001fe
REFT_OFFSET_MASK = 0xfffffffffffffe00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
L1_ENTRY = struct.Struct(">Q")
L2_ENTRY = struct.Struct(">Q")
# Extended L2: standard entry followed by the subcluster bitmap
# (bits 0-31 allocated, bits 32-63 reads-as-zero).
L2_ENTRY_EXTENDED = struct.Struct(">QQ")
SUBCLUSTERS_PER_CLUSTER = 32

# --- "Snapshots" -----------------------------------------------------------------
# l1_table_offset, l1_size, id_str_size, name_size, date_sec, date_nsec,
# vm_clock_nsec, vm_state_size, extra_data_size
SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")
# extra data: vm_state_size_large, disk_size, icount (each present if extra_data_size allows)
SNAPSHOT_EXTRA = struct.Struct(">QQQ")
SNAPSHOT_EXTRA_MIN = 16     # QEMU writes at least vm_state_size_large and disk_size

# --- Allocation caps (docs/security.md rule 5) -----------------------------------------
MAX_L1_BYTES = 32 * 1024 * 1024
MAX_REFTABLE_BYTES = 8 * 1024 * 1024
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024
MAX_BACKING_FILE_NAME = 1023
MAX_HEADER_EXTENSION_BYTES = 64 * 1024


def align_up(value, alignment):
    return (value + alignment - 1) // alignment * alignment


def pad8(length):
    return align_up(length, 8)


def be_array(buf):
    """Big-endian 64-bit entries (L1, L2, refcount tables) -> array('Q') of native ints."""
    table = array.array("Q")
    table.frombytes(bytes(buf))
    if _LITTLE_ENDIAN:
        table.byteswap()
    return table


def be_bytes(values):
    """Inverse of be_array: 64-bit ints -> big-endian bytes."""
    out = array.array("Q", values)
    if _LITTLE_ENDIAN:
        out.byteswap()
    return out.tobytes()


class Header:
    """A parsed qcow2 header plus its extensions."""

    def __init__(self):
        self.version = 0
        self.backing_file_offset = 0
        self.backing_file_size = 0
        self.cluster_bits = 0
        self.size = 0
        self.crypt_method = 0
        self.l1_size = 0
        self.l1_table_offset = 0
        self.refcount_table_offset = 0
        self.refcount_table_clusters = 0
        self.nb_snapshots = 0
        self.snapshots_offset = 0
        self.incompatible_features = 0
        self.compatible_features = 0
        self.autoclear_features = 0
        self.refcount_order = 4
        self.header_length = HEADER_V2_LENGTH
        self.compression_type = COMPRESSION_ZLIB
        # extensions
        self.backing_format = None
        self.data_file = None
        self.feature_names = {}      # (type, bit) -> name
        self.bitmaps = None          # (nb_bitmaps, directory_size, directory_offset)
        self.crypto_header = None    # (offset, length)
        self.unknown_extensions = []  # (type, data)
        self.extensions_end = 0      # offset after the end-of-extensions marker
        self.backing_file = None     # str

    @property
    def cluster_size(self):
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self):
        return 1 << self.refcount_order

    @property
    def extended_l2(self):
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self):
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self):
        """Entries per L2 table (one cluster)."""
        return self.cluster_size // self.l2_entry_size

    @property
    def compat(self):
        return "0.10" if self.version == 2 else "1.1"

    @property
    def dirty(self):
        return bool(self.incompatible_features & INCOMPAT_DIRTY)

    @property
    def corrupt(self):
        return bool(self.incompatible_features & INCOMPAT_CORRUPT)

    @property
    def lazy_refcounts(self):
        return bool(self.compatible_features & COMPAT_LAZY_REFCOUNTS)

    def compressed_offset_bits(self):
        """Number of low bits holding the host offset in a compressed L2 entry."""
        return 62 - (self.cluster_bits - 8)

    def parse_extensions(self, buf, path=None):
        """Parse the header extensions that follow the header in ``buf``."""
        off = self.header_length if self.version == 3 else HEADER_V2_LENGTH
        limit = len(buf)
        if self.backing_file_offset and self.backing_file_offset > off:
            limit = min(limit, self.backing_file_offset)
        while True:
            if off + HEADER_EXTENSION.size > limit:
                # QEMU tolerates a missing end marker when the area is exhausted.
                break
            ext_type, ext_len = HEADER_EXTENSION.unpack_from(buf, off)
            off += HEADER_EXTENSION.size
            if ext_type == EXT_END:
                break
            if ext_len > MAX_HEADER_EXTENSION_BYTES or off + ext_len > limit:
                raise FormatError("qcow2 header extension 0x%08x: length %d runs past the header area (ends at %d)"
                                  % (ext_type, ext_len, limit), path)
            data = bytes(buf[off:off + ext_len])
            if ext_type == EXT_BACKING_FORMAT:
                self.backing_format = data.decode("utf-8", "surrogateescape")
            elif ext_type == EXT_DATA_FILE:
                self.data_file = data.decode("utf-8", "surrogateescape")
            elif ext_type == EXT_FEATURE_NAME_TABLE:
                for i in range(ext_len // FEATURE_NAME_ENTRY.size):
                    ftype, bit, name = FEATURE_NAME_ENTRY.unpack_from(data, i * FEATURE_NAME_ENTRY.size)
                    self.feature_names[(ftype, bit)] = name.rstrip(b"\0").decode("ascii", "replace")
            elif ext_type == EXT_BITMAPS:
                if ext_len < BITMAPS_EXTENSION.size:
                    raise FormatError("qcow2 bitmaps extension: expected %d bytes, found %d"
                                      % (BITMAPS_EXTENSION.size, ext_len), path)
                nb, _reserved, dsize, doff = BITMAPS_EXTENSION.unpack_from(data, 0)
                self.bitmaps = (nb, dsize, doff)
            elif ext_type == EXT_CRYPTO_HEADER:
                if ext_len >= 16:
                    self.crypto_header = struct.unpack_from(">QQ", data, 0)
            else:
                self.unknown_extensions.append((ext_type, data))
            off += pad8(ext_len)
        self.extensions_end = off


def unsupported_version_message(version):
    """QEMU's words for a qcow2 header of another version (qemu-img: "Unsupported qcow2 version N")."""
    return ("unsupported qcow2 version %d (versions 2 and 3 are supported, as by qemu-img); the file is a "
            "qcow2 image of a version this library cannot read, not a raw image" % version)


def parse_header(buf, path=None, file_size=None):
    """Parse the header and its extensions from ``buf`` (the first cluster of the
    file, or at least the header area).  Validates magic → version → sizes and
    offsets → unsupported features (STYLE.md habit 4)."""
    if len(buf) < HEADER_V2_LENGTH:
        raise FormatError("qcow2 header: expected at least %d bytes, found %d"
                          % (HEADER_V2_LENGTH, len(buf)), path)
    (magic, version, backing_file_offset, backing_file_size, cluster_bits, size,
     crypt_method, l1_size, l1_table_offset, refcount_table_offset,
     refcount_table_clusters, nb_snapshots, snapshots_offset) = HEADER_V2.unpack_from(buf, 0)
    if magic != QCOW2_MAGIC:
        raise FormatError("qcow2 header: magic expected %r, found %r" % (QCOW2_MAGIC, magic), path)
    if version not in (2, 3):
        raise UnsupportedFeature("qcow2 header: %s" % unsupported_version_message(version), path)
    h = Header()
    h.version = version
    h.backing_file_offset = backing_file_offset
    h.backing_file_size = backing_file_size
    h.cluster_bits = cluster_bits
    h.size = size
    h.crypt_method = crypt_method
    h.l1_size = l1_size
    h.l1_table_offset = l1_table_offset
    h.refcount_table_offset = refcount_table_offset
    h.refcount_table_clusters = refcount_table_clusters
    h.nb_snapshots = nb_snapshots
    h.snapshots_offset = snapshots_offset
    if version == 3:
        if len(buf) < HEADER_V3_LENGTH:
            raise FormatError("qcow2 v3 header: expected at least %d bytes, found %d"
                              % (HEADER_V3_LENGTH, len(buf)), path)
        (h.incompatible_features, h.compatible_features, h.autoclear_features,
         h.refcount_order, h.header_length) = HEADER_V3_EXTRA.unpack_from(buf, HEADER_V2_LENGTH)
        if h.header_length < HEADER_V3_LENGTH or h.header_length % 8 and h.header_length != HEADER_V3_LENGTH:
            raise FormatError("qcow2 header: header_length expected >= %d (multiple of 8), found %d"
                              % (HEADER_V3_LENGTH, h.header_length), path)
        if h.header_length > len(buf):
            raise FormatError("qcow2 header: header_length %d exceeds the first cluster" % h.header_length, path)
        if h.header_length > COMPRESSION_TYPE_OFFSET:
            h.compression_type = buf[COMPRESSION_TYPE_OFFSET]
    # sizes and offsets
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise FormatError("qcow2 header: cluster_bits expected %d..%d, found %d"
                          % (MIN_CLUSTER_BITS, MAX_CLUSTER_BITS, cluster_bits), path)
    if h.refcount_order > 6:
        raise FormatError("qcow2 header: refcount_order expected 0..6, found %d" % h.refcount_order, path)
    cs = h.cluster_size
    if h.header_length > cs:
        raise FormatError("qcow2 header: header_length %d larger than cluster size %d" % (h.header_length, cs), path)
    if l1_size * 8 > MAX_L1_BYTES:
        raise FormatError("qcow2 header: L1 table of %d entries exceeds the %d-byte cap" % (l1_size, MAX_L1_BYTES), path)
    if refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
        raise FormatError("qcow2 header: refcount table of %d clusters exceeds the %d-byte cap"
                          % (refcount_table_clusters, MAX_REFTABLE_BYTES), path)
    if nb_snapshots > MAX_SNAPSHOTS:
        raise FormatError("qcow2 header: nb_snapshots expected <= %d, found %d" % (MAX_SNAPSHOTS, nb_snapshots), path)
    for name, off in (("l1_table_offset", l1_table_offset),
                      ("refcount_table_offset", refcount_table_offset),
                      ("snapshots_offset", snapshots_offset)):
        if off % cs:
            if name == "snapshots_offset" and nb_snapshots == 0:
                continue
            raise FormatError("qcow2 header: %s 0x%x is not aligned to the cluster size %d" % (name, off, cs), path)
        if file_size is not None and off >= file_size and not (off == 0 and name != "refcount_table_offset"):
            if name == "snapshots_offset" and nb_snapshots == 0:
                continue
            if name == "l1_table_offset" and l1_size == 0:
                continue
            raise FormatError("qcow2 header: %s 0x%x is beyond the end of the file (%d bytes)"
                              % (name, off, file_size), path)
    if refcount_table_offset == 0 or refcount_table_clusters == 0:
        raise FormatError("qcow2 header: no refcount table (offset 0x%x, %d clusters)"
                          % (refcount_table_offset, refcount_table_clusters), path)
    # Minimum L1 size for the virtual size.
    l1_needed = -(-size // (cs * (cs // h.l2_entry_size))) if size else 0
    if l1_size < l1_needed:
        raise FormatError("qcow2 header: L1 table too small for the virtual size: expected >= %d entries, found %d"
                          % (l1_needed, l1_size), path)
    # unsupported features
    unknown = h.incompatible_features & ~INCOMPAT_KNOWN
    if unknown:
        raise UnsupportedFeature("qcow2 header: unknown incompatible feature bits 0x%x" % unknown, path)
    if h.compression_type not in COMPRESSION_NAMES:
        raise UnsupportedFeature("qcow2 header: unknown compression type %d" % h.compression_type, path)
    if h.compression_type != COMPRESSION_ZLIB and not h.incompatible_features & INCOMPAT_COMPRESSION:
        raise FormatError("qcow2 header: compression type %d without the compression incompatible bit"
                          % h.compression_type, path)
    h.parse_extensions(buf, path)
    if backing_file_offset:
        if backing_file_size > MAX_BACKING_FILE_NAME:
            raise FormatError("qcow2 header: backing file name length expected <= %d, found %d"
                              % (MAX_BACKING_FILE_NAME, backing_file_size), path)
        end = backing_file_offset + backing_file_size
        if end > len(buf) or end > cs:
            raise FormatError("qcow2 header: backing file name at 0x%x+%d lies outside the first cluster"
                              % (backing_file_offset, backing_file_size), path)
        h.backing_file = buf[backing_file_offset:end].decode("utf-8", "surrogateescape")
    return h


def parse_snapshot_table(buf, nb_snapshots, path=None):
    """Parse ``nb_snapshots`` entries from ``buf``; returns a list of dicts with
    keys id, name, l1_table_offset, l1_size, date_sec, date_nsec, vm_clock_nsec,
    vm_state_size, disk_size (None when not recorded), icount (None), extra_data_size,
    entry_offset, entry_length."""
    snaps = []
    off = 0
    for index in range(nb_snapshots):
        if off + SNAPSHOT_HEADER.size > len(buf):
            raise FormatError("qcow2 snapshot table: entry %d at +%d runs past the table (%d bytes)"
                              % (index, off, len(buf)), path)
        (l1_off, l1_size, id_len, name_len, date_sec, date_nsec, vm_clock,
         vm_state_size, extra_size) = SNAPSHOT_HEADER.unpack_from(buf, off)
        pos = off + SNAPSHOT_HEADER.size
        end = pos + extra_size + id_len + name_len
        if end > len(buf):
            raise FormatError("qcow2 snapshot table: entry %d (%d bytes) runs past the table (%d bytes)"
                              % (index, end - off, len(buf)), path)
        if l1_size * 8 > MAX_L1_BYTES:
            raise FormatError("qcow2 snapshot %d: L1 table of %d entries exceeds the cap" % (index, l1_size), path)
        extra = bytes(buf[pos:pos + extra_size]) + b"\0" * SNAPSHOT_EXTRA.size
        large, disk_size, icount = SNAPSHOT_EXTRA.unpack_from(extra, 0)
        if extra_size >= 8:
            vm_state_size = large
        snap = {
            "l1_table_offset": l1_off,
            "l1_size": l1_size,
            "date_sec": date_sec,
            "date_nsec": date_nsec,
            "vm_clock_nsec": vm_clock,
            "vm_state_size": vm_state_size,
            "disk_size": disk_size if extra_size >= 16 else None,
            "icount": icount if extra_size >= 24 else None,
            "extra_data_size": extra_size,
            "entry_offset": off,
        }
        pos += extra_size
        snap["id"] = bytes(buf[pos:pos + id_len]).decode("utf-8", "replace")
        pos += id_len
        snap["name"] = bytes(buf[pos:pos + name_len]).decode("utf-8", "replace")
        pos += name_len
        off = pad8(pos)
        snap["entry_length"] = off - snap["entry_offset"]
        snaps.append(snap)
    return snaps
