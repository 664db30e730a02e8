# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile VMDK images: qemu-iotests 059 (sparse-extent header fields, grain tables and directories out of
place or too large, descriptors), the OpenStack format inspector's descriptor rules (createType values
that mean devices, extent types other than the image's own, embedded descriptors that add extents), and
bombs (a grain-table count of billions, a compressed grain that inflates past its grain, thousands of
extent lines)."""
from __future__ import annotations

import struct
import zlib

from hardening.hostile import _util
from hardening.hostile._case import Case
from hardening.hostile.references import vmdk_descriptor

FMT = "vmdk"
NAME = "disk.vmdk"

# SparseExtentHeader (little-endian)
FIELDS = [
    ("version", 4, "<I"), ("flags", 8, "<I"), ("capacity", 12, "<Q"), ("grain_size", 20, "<Q"),
    ("descriptor_offset", 28, "<Q"), ("descriptor_size", 36, "<Q"), ("num_gtes_per_gt", 44, "<I"),
    ("rgd_offset", 48, "<Q"), ("gd_offset", 56, "<Q"), ("overhead", 64, "<Q"), ("compress", 77, "<H"),
]
VALUES = (3,)


def _gd(data):
    return struct.unpack_from("<Q", data, 56)[0] * 512


def _gt(data):
    return struct.unpack_from("<I", data, _gd(data))[0] * 512


def _edit(edits, base=None):
    return _util.edited(FMT, NAME, edits, base=base or None)


def _u32(value):
    return struct.pack("<I", value)


def _stream():
    return _util.pristine(FMT, options=(("subformat", "streamOptimized"),))


def _first_grain_marker(data):
    """Offset of the first grain marker of a streamOptimized image (after the header, descriptor, ...):
    the first sector holding a marker whose LBA is 0 and whose size is not 0."""
    overhead = struct.unpack_from("<Q", data, 64)[0] * 512
    for offset in range(overhead, len(data), 512):
        lba, size = struct.unpack_from("<QI", data, offset)
        if lba == 0 and 0 < size < 0x100000:
            return offset
    return overhead


def _grain_bomb(data):
    marker = _first_grain_marker(data)
    bomb = zlib.compress(bytes(64 << 20), 9)
    return [(marker, struct.pack("<QI", 0, len(bomb)) + bomb)]


STRUCTURAL = [
    ("gd-on-header", lambda d: [(56, struct.pack("<Q", 0))]),
    ("gd-past-eof", lambda d: [(56, struct.pack("<Q", 1 << 40))]),
    ("gt-entry-on-header", lambda d: [(_gd(d), _u32(0))]),
    ("gt-entry-past-eof", lambda d: [(_gd(d), _u32(0xfffffff0))]),
    ("gt-on-gd", lambda d: [(_gd(d), _u32(_gd(d) // 512))]),
    ("grain-on-header", lambda d: [(_gt(d), _u32(1))]),
    ("grain-on-gt", lambda d: [(_gt(d), _u32(_gt(d) // 512))]),
    ("grain-past-eof", lambda d: [(_gt(d), _u32(0xfffffff0))]),
    ("grain-twice", lambda d: [(_gt(d) + 4, d[_gt(d):_gt(d) + 4])]),
    ("grain-table-count-bomb", lambda d: [(12, struct.pack("<Q", 1 << 45)), (44, _u32(512))]),
    ("capacity-exabytes", lambda d: [(12, struct.pack("<Q", 1 << 53))]),
    ("descriptor-size-bomb", lambda d: [(36, struct.pack("<Q", 1 << 40))]),
    ("descriptor-past-eof", lambda d: [(28, struct.pack("<Q", 1 << 40))]),
    ("descriptor-adds-extent", lambda d: [(struct.unpack_from("<Q", d, 28)[0] * 512,
                                           vmdk_descriptor('RW 4096 SPARSE "disk.vmdk"\nRW 2048 FLAT "/etc/passwd" 0',
                                                           create_type="monolithicSparse") + b"\0")]),
    ("descriptor-extent-etc", lambda d: [(struct.unpack_from("<Q", d, 28)[0] * 512,
                                          vmdk_descriptor('RW 4096 FLAT "/etc/passwd" 0',
                                                          create_type="monolithicSparse") + b"\0")]),
    ("descriptor-garbage", lambda d: [(struct.unpack_from("<Q", d, 28)[0] * 512, b"\xff\xfe" * 256)]),
    ("newline-check-bytes", lambda d: [(73, b"\n\n\n\n")]),
    ("unclean-shutdown", lambda d: [(72, b"\x01")]),
    ("stream-grain-bomb", _grain_bomb),
    ("stream-marker-size-bomb", lambda d: [(_first_grain_marker(d), struct.pack("<QI", 0, 0xffffffff))]),
    ("stream-marker-lba-past-capacity", lambda d: [(_first_grain_marker(d), struct.pack("<Q", 1 << 40))]),
    ("stream-grain-garbage", lambda d: [(_first_grain_marker(d) + 12, b"\xde\xad" * 32)]),
]
STREAM = {"stream-grain-bomb", "stream-marker-size-bomb", "stream-marker-lba-past-capacity", "stream-grain-garbage"}


def _text(descriptor, flat=True):
    def build(directory):
        if flat:
            _util.write(directory / "disk-flat.raw", bytes(2 * _util.MIB))
        return _util.write(directory / NAME, descriptor)
    return build


DESCRIPTORS = [
    # createType values meaning devices (the format inspector refuses them)
    ("create-type-full-device", vmdk_descriptor('RW 4096 FLAT "/dev/sda" 0', create_type="fullDevice"), True),
    ("create-type-partitioned-device", vmdk_descriptor('RW 4096 FLAT "/dev/sda1" 0',
                                                       create_type="partitionedDevice"), True),
    ("create-type-vmfs-raw-device-map", vmdk_descriptor('RW 4096 VMFSRDM "/dev/sdb"', create_type="vmfsRawDeviceMap"),
     True),
    ("create-type-vmfs-passthrough", vmdk_descriptor('RW 4096 VMFSRAW "/dev/sdb"',
                                                     create_type="vmfsPassthroughRawDeviceMap"), True),
    ("create-type-unknown", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0', create_type="bogusType"), False),
    ("extent-type-zero", vmdk_descriptor('RW 4096 ZERO'), False),
    ("extent-sectors-bomb", vmdk_descriptor('RW 9223372036854775807 FLAT "disk-flat.raw" 0'), True),
    ("extent-sectors-petabytes", vmdk_descriptor('RW 1099511627776 FLAT "disk-flat.raw" 0'), False),
    ("extent-sectors-negative", vmdk_descriptor('RW -4096 FLAT "disk-flat.raw" 0'), False),
    ("extent-offset-bomb", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 18446744073709551615'), False),
    ("extent-offset-past-file", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 1000000'), False),
    ("extent-sum-overflow", vmdk_descriptor('\n'.join(['RW 4611686018427387904 FLAT "disk-flat.raw" 0'] * 4)), True),
    ("extent-count-bomb", vmdk_descriptor('\n'.join(['RW 1 FLAT "disk-flat.raw" %d' % i for i in range(20000)])),
     False),
    ("extent-unquoted-name", vmdk_descriptor('RW 4096 FLAT disk-flat.raw 0'), False),
    ("extent-access-noaccess", vmdk_descriptor('NOACCESS 4096 FLAT "disk-flat.raw" 0'), False),
    ("extent-sparse-is-flat-file", vmdk_descriptor('RW 4096 SPARSE "disk-flat.raw"'), False),
    ("extent-vmfssparse-is-flat-file", vmdk_descriptor('RW 4096 VMFSSPARSE "disk-flat.raw"'), False),
    ("extent-sesparse-is-flat-file", vmdk_descriptor('RW 4096 SESPARSE "disk-flat.raw"'), False),
    ("descriptor-crlf", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0').replace(b"\n", b"\r\n"), False),
    ("descriptor-nul-in-middle", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0').replace(b"#DDB", b"\0#DDB"), False),
    ("descriptor-huge-comment", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0', extra="#" + "x" * 3000000), False),
    ("descriptor-no-extents", vmdk_descriptor(''), False),
    ("descriptor-version-99", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0').replace(b"version=1", b"version=99"),
     False),
    ("descriptor-parent-cid-no-hint", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0', parent_cid="12345678"), False),
    ("descriptor-duplicate-keys", vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0',
                                                  extra='createType="fullDevice"\nparentFileNameHint="/etc/passwd"'),
     True),
]


def _cases():
    cases = _util.field_sweep(FMT, NAME, FIELDS, VALUES, source="iotests-059")
    for label, edits in STRUCTURAL:
        cases.append(Case(name="vmdk/%s" % label, fmt=FMT, build=_edit(edits, _stream if label in STREAM else None),
                          source="iotests-059"))
    for label, text, must_refuse in DESCRIPTORS:
        cases.append(Case(name="vmdk/%s" % label, fmt=FMT, build=_text(text), must_refuse=must_refuse,
                          refuse=r"(?i)device|refused|not supported|unsupported|createType|extent|parent|does not exist|add up to",
                          source="format-inspector"))
    for length in (0, 512, 65536):
        cases.append(Case(name="vmdk/truncated-%d" % length, fmt=FMT, build=_util.truncated(FMT, NAME, length),
                          source="iotests-059"))
    return cases


CASES = _cases()
