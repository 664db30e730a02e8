# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile VHD (vpc) images: qemu-iotests 088 (invalid block sizes) and its kin (table sizes, table and
block offsets, footer and dynamic-header fields), built with the spec-only builder of the driver's own
tests (vhd_building), and differencing disks whose parent locators name host files (absolute and relative
Windows and Mac locators, UUID mismatches): the CVE class "differencing parents"."""
from __future__ import annotations

import os
import struct

from hardening.hostile import _util
from hardening.hostile._case import Case

FMT = "vpc"
NAME = "disk.vhd"
SIZE = 2 * _util.MIB
BLOCK = 512 * 1024
CHILD_ID = b"C" * 16
PARENT_ID = b"P" * 16


def _vhd():
    return _util.helper("vhd_building")


def _dynamic(locators=(), disk_type=None, parent_id=bytes(16), **extra):
    vhd = _vhd()
    bitmap = b"\xff" * 512
    blocks = {0: (bitmap, b"\x5a" * BLOCK), 3: (bitmap, b"\xa5" * BLOCK)}
    return vhd.sparse_image(SIZE, BLOCK, blocks, CHILD_ID, disk_type=disk_type or vhd.DYNAMIC,
                            parent_id=parent_id, locators=locators, **extra)


def _reseal(data):
    """Footer and dynamic-header checksums made right again after an edit (a checksum error would hide
    what the edit is about)."""
    vhd = _vhd()
    data = bytearray(data)
    for start in (0, len(data) - 512):
        struct.pack_into(">I", data, start + 64, vhd.checksum(data[start:start + 512], 64))
    struct.pack_into(">I", data, 512 + 36, vhd.checksum(data[512:1536], 36))
    return bytes(data)


def _edit(edits, reseal=True, base=_dynamic):
    def build(directory):
        data = base()
        for offset, value in edits(data):
            data = _util.poke(data, offset, value)
        return _util.write(directory / NAME, _reseal(data) if reseal else data)
    return build


def _footer_fields():
    # footer (at 0 and at the end; the copy at 0 is what the edits change, and the last one too)
    return [("data_offset", 16, ">Q"), ("current_size", 48, ">Q"), ("disk_type", 60, ">I"),
            ("original_size", 40, ">Q"), ("version", 12, ">I")]


def _both_footers(offset, value):
    return lambda d: [(offset, value), (len(d) - 512 + offset, value)]


HEADER = 512   # the dynamic disk header follows the footer copy
HEADER_FIELDS = [("table_offset", HEADER + 16, ">Q"), ("header_version", HEADER + 24, ">I"),
                 ("max_table_entries", HEADER + 28, ">I"), ("block_size", HEADER + 32, ">I")]
VALUES = (0, 0x200, 0xffffffffffffffff)


def _at(offset, value):
    return lambda data: [(offset, value)]


def _locator(code, name_of):
    return lambda directory: [(code, name_of(directory))]


def _truncated(length):
    return lambda directory: _util.write(directory / NAME, _dynamic()[:length])


def _sweep():
    cases = []
    for name, offset, code in _footer_fields() + HEADER_FIELDS:
        width = struct.calcsize(code)
        seen = set()
        for value in VALUES:
            value &= (1 << (8 * width)) - 1
            if value in seen:
                continue
            seen.add(value)
            edits = (_both_footers(offset, struct.pack(code, value)) if offset < 512
                     else _at(offset, struct.pack(code, value)))
            cases.append(Case(name="vpc/field-%s=%#x" % (name, value), fmt=FMT, build=_edit(edits),
                              source="iotests-088"))
    return cases


def _bat():
    return 3 * 512


STRUCTURAL = [
    ("bat-entry-past-eof", lambda d: [(_bat(), struct.pack(">I", 0x7ffffff0))]),
    ("bat-entry-on-footer", lambda d: [(_bat(), struct.pack(">I", 0))]),
    ("bat-entry-on-header", lambda d: [(_bat(), struct.pack(">I", 1))]),
    ("bat-entry-duplicate", lambda d: [(_bat() + 4, d[_bat():_bat() + 4])]),
    ("bat-entry-overflow", lambda d: [(_bat(), struct.pack(">I", 0xfffffffe))]),
    ("bat-on-footer", lambda d: [(HEADER + 16, struct.pack(">Q", 0))]),
    ("max-table-entries-bomb", lambda d: [(HEADER + 28, struct.pack(">I", 0x7fffffff)),
                                          (40, struct.pack(">Q", 1 << 50)), (48, struct.pack(">Q", 1 << 50)),
                                          (len(d) - 472, struct.pack(">Q", 1 << 50)),
                                          (len(d) - 464, struct.pack(">Q", 1 << 50))]),
    ("size-exabytes", _both_footers(48, struct.pack(">Q", 1 << 62))),
    ("geometry-zero", _both_footers(56, bytes(4))),
    ("cookie-missing-in-header", lambda d: [(HEADER, b"xxxxxxxx")]),
    ("bitmap-all-zero", lambda d: [(struct.unpack_from(">I", d, _bat())[0] * 512, bytes(512))]),
]


def _differencing(locators, parent_id=PARENT_ID):
    return lambda: _dynamic(locators=locators, disk_type=_vhd().DIFFERENCING, parent_id=parent_id)


def _parent_builder(locators, place=None, parent_uid=PARENT_ID):
    def build(directory):
        if place is not None:
            place(directory, parent_uid)
        return _util.write(directory / NAME, _differencing(locators(directory))())
    return build


def _parent_image(uid):
    vhd = _vhd()
    return vhd.sparse_image(SIZE, BLOCK, {}, uid)


def _beside(directory, uid):
    _util.write(directory / "parent.vhd", _parent_image(uid))


def _outside(directory, uid):
    target = _util.outside_file(directory).parent / "parent.vhd"
    _util.write(target, _parent_image(uid))
    return target


def _symlink_out(directory, uid):
    os.symlink(str(_outside(directory, uid)), str(directory / "parent.vhd"))


LOCATOR_NAMES = [
    ("etc-passwd", lambda d: "/etc/passwd", None, True),
    ("outside-absolute", lambda d: str(d.parent / _util.OUTSIDE / "parent.vhd"), _outside, True),
    ("outside-relative", lambda d: "../%s/parent.vhd" % _util.OUTSIDE, _outside, True),
    ("outside-windows-relative", lambda d: "..\\%s\\parent.vhd" % _util.OUTSIDE, _outside, True),
    ("windows-absolute", lambda d: "C:\\Windows\\System32\\config\\SAM", None, True),
    ("symlink-out", lambda d: "parent.vhd", _symlink_out, True),
    ("json-protocol", lambda d: 'json:{"file.filename":"/etc/passwd"}', None, True),
    ("nbd-protocol", lambda d: "nbd:localhost:10809", None, True),
    ("missing", lambda d: "missing.vhd", None, True),
    ("nul-byte", lambda d: "parent.vhd\x00/etc/passwd", None, True),    # read up to the NUL: missing
    ("mac-url", lambda d: "file:///etc/passwd", None, True),
]


def _locator_cases():
    cases = []
    for code in (b"W2ru", b"W2ku"):
        for label, name_of, place, must_refuse in LOCATOR_NAMES:
            kind = code.decode().strip().lower()
            cases.append(Case(name="vpc/parent-%s-%s" % (kind, label), fmt=FMT,
                              build=_parent_builder(_locator(code, name_of), place),
                              must_refuse=must_refuse,
                              refuse=r"is refused|does not exist|not found|protocol|no usable|locator|parent",
                              source="CVE-class differencing parent"))
    cases.append(Case(name="vpc/parent-mac-url", fmt=FMT, build=_parent_builder(lambda d: [(b"MacX", "file:///etc/passwd")]),
                      must_refuse=True, refuse=r"is refused|does not exist|not found|protocol|no usable|locator|parent",
                      source="CVE-class differencing parent"))
    cases.append(Case(name="vpc/parent-beside", fmt=FMT,
                      build=_parent_builder(lambda d: [(b"W2ru", "parent.vhd")], _beside),
                      source="CVE-class differencing parent"))
    cases.append(Case(name="vpc/parent-uuid-mismatch", fmt=FMT,
                      build=_parent_builder(lambda d: [(b"W2ru", "parent.vhd")],
                                            lambda d, uid: _beside(d, b"X" * 16)),
                      source="CVE-class differencing parent"))
    cases.append(Case(name="vpc/parent-is-self", fmt=FMT,
                      build=_parent_builder(lambda d: [(b"W2ru", NAME)], parent_uid=CHILD_ID),
                      must_refuse=True, refuse=r"loop|refused|longer than|parent|identif|UUID",
                      source="CVE-class chain loop"))
    cases.append(Case(name="vpc/parent-locator-bomb", fmt=FMT,
                      build=_edit(lambda d: [(HEADER + 576 + 4, struct.pack(">II", 0x7fffffff, 0x7fffffff))],
                                  base=_differencing([(b"W2ru", "parent.vhd")])),
                      source="iotests-088"))
    cases.append(Case(name="vpc/parent-locator-past-eof", fmt=FMT,
                      build=_edit(lambda d: [(HEADER + 576 + 16, struct.pack(">Q", 1 << 40))],
                                  base=_differencing([(b"W2ru", "parent.vhd")])),
                      source="iotests-088"))
    return cases


def _cases():
    cases = _sweep()
    for label, edits in STRUCTURAL:
        cases.append(Case(name="vpc/%s" % label, fmt=FMT, build=_edit(edits), source="iotests-088"))
    cases.append(Case(name="vpc/checksum-wrong", fmt=FMT, build=_edit(lambda d: [(64, b"\0\0\0\0")], reseal=False),
                      source="iotests-088"))
    cases.extend(_locator_cases())
    for length in (0, 511, 1024):
        cases.append(Case(name="vpc/truncated-%d" % length, fmt=FMT,
                          build=_truncated(length), source="iotests-088"))
    return cases


CASES = _cases()
