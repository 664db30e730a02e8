# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile qcow2 images: the classes of qemu-iotests 080 (invalid header values, one field at a time; huge
L1, refcount and snapshot tables; header extensions), 060 (metadata that overlaps other metadata: L1, L2
and refcount structures on the header or on each other; unaligned offsets; entries past the end of the
file) and allocation/decompression bombs (a virtual size of exabytes, a compressed cluster that inflates
far past a cluster)."""
from __future__ import annotations

import struct
import zlib

from hardening.hostile import _util
from hardening.hostile._case import Case

FMT = "qcow2"
NAME = "disk.qcow2"

# name, offset, struct format (QCowHeader, big-endian)
FIELDS = [
    ("version", 4, ">I"), ("backing_file_offset", 8, ">Q"), ("backing_file_size", 16, ">I"),
    ("cluster_bits", 20, ">I"), ("size", 24, ">Q"), ("crypt_method", 32, ">I"), ("l1_size", 36, ">I"),
    ("l1_table_offset", 40, ">Q"), ("refcount_table_offset", 48, ">Q"), ("refcount_table_clusters", 56, ">I"),
    ("nb_snapshots", 60, ">I"), ("snapshots_offset", 64, ">Q"), ("incompatible_features", 72, ">Q"),
    ("compatible_features", 80, ">Q"), ("autoclear_features", 88, ">Q"), ("refcount_order", 96, ">I"),
    ("header_length", 100, ">I"),
]
VALUES = ()


def _edit(edits):
    """A builder from ``edits``: a function of the pristine image's bytes giving [(offset, bytes)]."""
    return _util.edited(FMT, NAME, edits)


def _q(value):
    return struct.pack(">Q", value)


def _l1(data):
    return struct.unpack_from(">Q", data, 40)[0]


def _reft(data):
    return struct.unpack_from(">Q", data, 48)[0]


def _l2(data):
    return struct.unpack_from(">Q", data, _l1(data))[0] & 0x00fffffffffffe00


def _data_cluster(data):
    return struct.unpack_from(">Q", data, _l2(data))[0] & 0x00fffffffffffe00


def _compressed_descriptor(host_offset, sectors):
    # cluster_bits 16: 62 - (16 - 8) = 54 bits of offset, then the count of additional 512-byte sectors
    return (1 << 62) | ((sectors - 1) << 54) | host_offset


def _zlib_bomb(inflated_size):
    engine = zlib.compressobj(9, zlib.DEFLATED, -12)
    return engine.compress(bytes(inflated_size)) + engine.flush()


def _compressed_bomb(inflated_size):
    def edits(data):
        bomb = _zlib_bomb(inflated_size)
        host = len(data)
        sectors = (len(bomb) + 511) // 512 + 1
        return [(host, bomb), (_l2(data), _q(_compressed_descriptor(host, sectors)))]
    return edits


def _extension(kind, payload, declared=None):
    """A header extension table holding one extension (after the v3 header), then the end marker."""
    def edits(data):
        header_length = struct.unpack_from(">I", data, 100)[0]
        length = len(payload) if declared is None else declared
        blob = struct.pack(">II", kind, length) + payload
        blob += bytes(-len(blob) % 8) + bytes(8)
        return [(header_length, blob)]
    return edits


STRUCTURAL = [
    # iotests 060: metadata overlapping metadata
    ("l1-on-header", lambda d: [(40, _q(0))]),
    ("l1-on-refcount-table", lambda d: [(40, _q(_reft(d)))]),
    ("refcount-table-on-header", lambda d: [(48, _q(0))]),
    ("refcount-table-on-l1", lambda d: [(48, _q(_l1(d)))]),
    ("l2-on-header", lambda d: [(_l1(d), _q((1 << 63) | 0))]),
    ("l2-on-l1", lambda d: [(_l1(d), _q((1 << 63) | _l1(d)))]),
    ("l2-on-refcount-table", lambda d: [(_l1(d), _q((1 << 63) | _reft(d)))]),
    ("l2-shared-by-two-l1-entries", lambda d: [(_l1(d) + 8, d[_l1(d):_l1(d) + 8])]),
    ("data-cluster-on-header", lambda d: [(_l2(d), _q((1 << 63) | 0))]),
    ("data-cluster-on-l2", lambda d: [(_l2(d), _q((1 << 63) | _l2(d)))]),
    ("data-cluster-on-l1", lambda d: [(_l2(d), _q((1 << 63) | _l1(d)))]),
    ("data-cluster-twice", lambda d: [(_l2(d) + 8, d[_l2(d):_l2(d) + 8])]),
    ("refcount-block-on-header", lambda d: [(_reft(d), _q(0))]),
    ("refcount-block-on-l2", lambda d: [(_reft(d), _q(_l2(d)))]),
    ("refcount-block-unaligned", lambda d: [(_reft(d), _q(0x10200))]),
    ("refcount-block-past-eof", lambda d: [(_reft(d), _q(1 << 40))]),
    ("refcount-zero-for-used-cluster", lambda d: [(struct.unpack_from(">Q", d, _reft(d))[0], bytes(16))]),
    ("l1-entry-unaligned", lambda d: [(_l1(d), _q((1 << 63) | (_l2(d) + 0x200)))]),
    ("l1-entry-past-eof", lambda d: [(_l1(d), _q((1 << 63) | (1 << 45)))]),
    ("l1-entry-reserved-bits", lambda d: [(_l1(d), _q(d[_l1(d):_l1(d) + 8] and (0x7f << 56) | _l2(d)))]),
    ("l2-entry-unaligned", lambda d: [(_l2(d), _q((1 << 63) | (_data_cluster(d) + 0x200)))]),
    ("l2-entry-past-eof", lambda d: [(_l2(d), _q((1 << 63) | (1 << 50)))]),
    ("l2-entry-max-offset", lambda d: [(_l2(d), _q(0x00fffffffffffe00 | (1 << 63)))]),
    ("l2-entry-reserved-bits", lambda d: [(_l2(d), _q((1 << 63) | (1 << 56) | _data_cluster(d)))]),
    ("l2-zero-flag-with-offset", lambda d: [(_l2(d), _q((1 << 63) | _data_cluster(d) | 1))]),
    ("l2-all-ones", lambda d: [(_l2(d), b"\xff" * 4096)]),
    ("l1-all-ones", lambda d: [(_l1(d), b"\xff" * 8)]),
    ("compressed-past-eof", lambda d: [(_l2(d), _q(_compressed_descriptor(1 << 40, 4)))]),
    ("compressed-garbage", lambda d: [(_l2(d), _q(_compressed_descriptor(0, 2)))]),
    ("compressed-on-l1", lambda d: [(_l2(d), _q(_compressed_descriptor(_l1(d), 2)))]),
    ("compressed-max-sectors", lambda d: [(_l2(d), _q(_compressed_descriptor(_l1(d), 256)))]),
    ("compressed-bomb-1m", _compressed_bomb(1 << 20)),
    ("compressed-bomb-64m", _compressed_bomb(64 << 20)),
    ("compressed-short", _compressed_bomb(100)),
    # iotests 080: tables too large or past the end of the file
    ("l1-size-bomb", lambda d: [(36, struct.pack(">I", 0x0fffffff))]),
    ("l1-size-bomb-matching-size", lambda d: [(24, _q(1 << 60)), (36, struct.pack(">I", (1 << 60) >> 29))]),
    ("size-exabytes-no-l1", lambda d: [(24, _q(1 << 62)), (36, struct.pack(">I", 0))]),
    ("size-exabytes", lambda d: [(24, _q(1 << 62))]),
    ("size-too-big-for-l1", lambda d: [(24, _q(1 << 40))]),
    ("refcount-table-bomb", lambda d: [(56, struct.pack(">I", 0x00ffffff))]),
    ("snapshot-table-bomb", lambda d: [(60, struct.pack(">I", 65536)), (64, _q(0x10000))]),
    ("snapshot-table-past-eof", lambda d: [(60, struct.pack(">I", 1)), (64, _q(1 << 42))]),
    ("snapshot-on-header", lambda d: [(60, struct.pack(">I", 1)), (64, _q(0))]),
    ("snapshot-with-huge-l1", lambda d: [(60, struct.pack(">I", 1)), (64, _q(len(d))),
                                         (len(d), _q(len(d)) + struct.pack(">IHH", 0x7fffffff, 4, 4) + b"1234" + b"1234")]),
    ("snapshot-with-huge-extra", lambda d: [(60, struct.pack(">I", 1)), (64, _q(len(d))),
                                            (len(d), _q(_l1(d)) + struct.pack(">IHH", 1, 0, 0) + bytes(24)
                                             + struct.pack(">I", 0xffffffff))]),
    ("dirty-bit", lambda d: [(72, _q(1))]),
    ("corrupt-bit", lambda d: [(72, _q(2))]),
    ("unknown-incompatible-bit", lambda d: [(72, _q(1 << 40))]),
    ("compression-type-unknown", lambda d: [(72, _q(8)), (104, b"\x07")]),
    ("compression-type-without-bit", lambda d: [(104, b"\x01")]),
    ("extended-l2-bit", lambda d: [(72, _q(16))]),
    ("v2-with-v3-fields", lambda d: [(4, struct.pack(">I", 2))]),
    ("header-length-odd", lambda d: [(100, struct.pack(">I", 113))]),
    ("header-length-cluster", lambda d: [(100, struct.pack(">I", 65536))]),
    ("header-length-past-cluster", lambda d: [(100, struct.pack(">I", 65544))]),
    # header extensions
    ("extension-length-bomb", _extension(0x12345678, b"", declared=0xffffffff)),
    ("extension-length-past-cluster", _extension(0x12345678, b"", declared=70000)),
    ("backing-format-extension-json", _extension(0xe2792aca, b"json")),
    ("backing-format-extension-nul", _extension(0xe2792aca, b"raw\x00qcow2")),
    ("backing-format-extension-huge", _extension(0xe2792aca, b"a" * 4000)),
    ("feature-table-odd-length", _extension(0x6803f857, b"\x00" * 47)),
    ("feature-table-bomb", _extension(0x6803f857, b"", declared=0x7fffffff)),
    ("bitmaps-extension-bomb", _extension(0x23852875, struct.pack(">IIQQ", 0xffffffff, 0, 1 << 60, 0x10000))),
    ("bitmaps-extension-on-header", _extension(0x23852875, struct.pack(">IIQQ", 1, 0, 64, 0))),
    ("crypto-extension-without-encryption", _extension(0x0537be77, struct.pack(">QQ", 0x10000, 1 << 40))),
    ("data-file-extension-without-bit", _extension(0x44415441, b"/etc/passwd")),
    ("extension-unterminated", lambda d: [(struct.unpack_from(">I", d, 100)[0], b"\xab" * 4096)]),
]


def _cases():
    cases = _util.field_sweep(FMT, NAME, FIELDS, VALUES, source="iotests-080")
    for label, edits in STRUCTURAL:
        cases.append(Case(name="%s/%s" % (FMT, label), fmt=FMT, build=_edit(edits),
                          source="iotests-060" if "on-" in label or "twice" in label else "iotests-080"))
    for length in (0, 104, 4096):
        cases.append(Case(name="%s/truncated-%d" % (FMT, length), fmt=FMT,
                          build=_util.truncated(FMT, NAME, length), source="iotests-080"))
    # metadata stays readable (info, map, as qemu-img); the guest data is refused (compare, convert)
    cases.append(Case(name="qcow2/encrypted-aes", fmt=FMT, build=_util.patched(FMT, NAME, [(32, b"\0\0\0\1")]),
                      source="iotests-080"))
    return cases


CASES = _cases()
