# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile QED images: qemu-iotests 116 (invalid cluster size, table size, header size, image size and
L1 offset, one field at a time), tables that overlap the header or each other or lie past the file, and
feature bits the driver does not know."""
from __future__ import annotations

import struct

from hardening.hostile import _util
from hardening.hostile._case import Case

FMT = "qed"
NAME = "disk.qed"
FIELDS = [
    ("cluster_size", 4, "<I"), ("table_size", 8, "<I"), ("header_size", 12, "<I"), ("features", 16, "<Q"),
    ("compat_features", 24, "<Q"), ("autoclear_features", 32, "<Q"), ("l1_table_offset", 40, "<Q"),
    ("image_size", 48, "<Q"), ("backing_filename_offset", 56, "<I"), ("backing_filename_size", 60, "<I"),
]
VALUES = ()


def _l1(data):
    return struct.unpack_from("<Q", data, 40)[0]


def _l2(data):
    return struct.unpack_from("<Q", data, _l1(data))[0]


def _edit(edits):
    return _util.edited(FMT, NAME, edits)


def _q(value):
    return struct.pack("<Q", value)


STRUCTURAL = [
    ("l1-on-header", lambda d: [(40, _q(0))]),
    ("l2-on-header", lambda d: [(_l1(d), _q(0))]),
    ("l2-on-l1", lambda d: [(_l1(d), _q(_l1(d)))]),
    ("l2-past-eof", lambda d: [(_l1(d), _q(1 << 40))]),
    ("l2-unaligned", lambda d: [(_l1(d), _q(_l2(d) + 512))]),
    ("l2-shared", lambda d: [(_l1(d) + 8, d[_l1(d):_l1(d) + 8])]),
    ("data-on-header", lambda d: [(_l2(d), _q(0x200))]),
    ("data-on-l1", lambda d: [(_l2(d), _q(_l1(d)))]),
    ("data-past-eof", lambda d: [(_l2(d), _q(1 << 44))]),
    ("data-unaligned", lambda d: [(_l2(d), _q(struct.unpack_from("<Q", d, _l2(d))[0] + 1))]),
    ("data-twice", lambda d: [(_l2(d) + 8, d[_l2(d):_l2(d) + 8])]),
    ("data-max-offset", lambda d: [(_l2(d), _q(0xffffffffffff0000))]),
    ("image-size-exabytes", lambda d: [(48, _q(1 << 62))]),
    ("image-size-past-tables", lambda d: [(48, _q(1 << 40))]),
    ("need-check-bit", lambda d: [(24, _q(1)), (32, _q(0)), (16, _q(2))]),
    ("unknown-feature-bit", lambda d: [(16, _q(1 << 40))]),
    ("backing-bit-without-name", lambda d: [(16, _q(1))]),
    ("backing-raw-bit-without-backing", lambda d: [(16, _q(4))]),
    ("l1-all-ones", lambda d: [(_l1(d), b"\xff" * 64)]),
]


def _cases():
    cases = _util.field_sweep(FMT, NAME, FIELDS, VALUES, source="iotests-116")
    for label, edits in STRUCTURAL:
        cases.append(Case(name="%s/%s" % (FMT, label), fmt=FMT, build=_edit(edits), source="iotests-116"))
    for length in (0, 64, 65536):
        cases.append(Case(name="%s/truncated-%d" % (FMT, length), fmt=FMT, build=_util.truncated(FMT, NAME, length),
                          source="iotests-116"))
    return cases


CASES = _cases()
