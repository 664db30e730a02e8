# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile qcow (version 1) images: qemu-iotests 092 (invalid cluster and L2 sizes, huge L1 tables, image
sizes that overflow, encryption), tables and clusters past the file or on the header, and compressed
clusters that inflate to more than a cluster (a decompression bomb) or less."""
from __future__ import annotations

import struct
import zlib

from hardening.hostile import _util
from hardening.hostile._case import Case

FMT = "qcow"
NAME = "disk.qcow"
FIELDS = [
    ("version", 4, ">I"), ("backing_file_offset", 8, ">Q"), ("backing_file_size", 16, ">I"), ("size", 24, ">Q"),
    ("cluster_bits", 32, ">B"), ("l2_bits", 33, ">B"), ("crypt_method", 36, ">I"), ("l1_table_offset", 40, ">Q"),
]
VALUES = (17,)
OFLAG_COMPRESSED = 1 << 63


def _l1(data):
    return struct.unpack_from(">Q", data, 40)[0]


def _l2(data):
    return struct.unpack_from(">Q", data, _l1(data))[0]


def _edit(edits):
    return _util.edited(FMT, NAME, edits)


def _q(value):
    return struct.pack(">Q", value)


def _compressed(inflated_size):
    def edits(data):
        engine = zlib.compressobj(9, zlib.DEFLATED, -12)
        bomb = engine.compress(bytes(inflated_size)) + engine.flush()
        host = len(data)
        cluster_bits = data[32]
        # qcow1: bit 63 compressed, the size in the bits above the offset (63 - cluster_bits)
        size = min(len(bomb), (1 << cluster_bits) - 1)     # the field holds at most a cluster's worth
        descriptor = OFLAG_COMPRESSED | (size << (63 - cluster_bits)) | host
        return [(host, bomb), (_l2(data), _q(descriptor))]
    return edits


STRUCTURAL = [
    ("l1-on-header", lambda d: [(40, _q(0))]),
    ("l1-past-eof", lambda d: [(40, _q(1 << 40))]),
    ("l2-on-header", lambda d: [(_l1(d), _q(0))]),
    ("l2-on-l1", lambda d: [(_l1(d), _q(_l1(d)))]),
    ("l2-past-eof", lambda d: [(_l1(d), _q(1 << 44))]),
    ("l2-unaligned", lambda d: [(_l1(d), _q(_l2(d) + 1))]),
    ("data-on-header", lambda d: [(_l2(d), _q(0x200))]),
    ("data-on-l2", lambda d: [(_l2(d), _q(_l2(d)))]),
    ("data-past-eof", lambda d: [(_l2(d), _q(1 << 50))]),
    ("data-twice", lambda d: [(_l2(d) + 8, d[_l2(d):_l2(d) + 8])]),
    ("compressed-bomb-4m", _compressed(4 << 20)),
    ("compressed-bomb-64m-cut", _compressed(64 << 20)),
    ("compressed-bomb-1m", _compressed(1 << 20)),
    ("compressed-short", _compressed(100)),
    ("compressed-garbage", lambda d: [(_l2(d), _q(OFLAG_COMPRESSED | (64 << (63 - d[32])) | 0))]),
    ("size-exabytes", lambda d: [(24, _q(1 << 62))]),
    ("size-overflow-l1", lambda d: [(24, _q(0xffffffffffffffff)), (32, b"\x09\x09")]),
    ("aes-encrypted", lambda d: [(36, b"\0\0\0\1")]),
]


def _cases():
    cases = _util.field_sweep(FMT, NAME, FIELDS, VALUES, source="iotests-092")
    for label, edits in STRUCTURAL:
        cases.append(Case(name="%s/%s" % (FMT, label), fmt=FMT, build=_edit(edits), source="iotests-092"))
    for length in (0, 20, 512):
        cases.append(Case(name="%s/truncated-%d" % (FMT, length), fmt=FMT, build=_util.truncated(FMT, NAME, length),
                          source="iotests-092"))
    return cases


CASES = _cases()
