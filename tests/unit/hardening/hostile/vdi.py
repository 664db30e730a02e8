# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile VDI images: qemu-iotests 084's invalid header values (block size, disk size, block counts, the
block map), block maps that point twice at one block or past the file, and differencing images whose
parent is found by UUID (the CVE class "differencing parents found by UUID"): a parent outside the
directory, behind a symbolic link, a FIFO named like an image, two parents with the same UUID, loops."""
from __future__ import annotations

import os
import struct

from hardening.hostile import _util
from hardening.hostile._case import Case

FMT = "vdi"
NAME = "disk.vdi"
FIELDS = [
    ("signature", 64, "<I"), ("version", 68, "<I"), ("header_size", 72, "<I"), ("image_type", 76, "<I"),
    ("flags", 80, "<I"), ("offset_bmap", 340, "<I"), ("offset_data", 344, "<I"), ("sector_size", 360, "<I"),
    ("disk_size", 368, "<Q"), ("block_size", 376, "<I"), ("block_extra", 380, "<I"),
    ("blocks_in_image", 384, "<I"), ("blocks_allocated", 388, "<I"),
]
VALUES = ()
UUID_IMAGE, UUID_MODIFY, UUID_LINK = 392, 408, 424


def _bmap(data):
    return struct.unpack_from("<I", data, 340)[0]


def _edit(edits, filename=NAME):
    return _util.edited(FMT, filename, edits)


def _u32(value):
    return struct.pack("<I", value)


STRUCTURAL = [
    ("bmap-entry-past-eof", lambda d: [(_bmap(d), _u32(0x3ffffff0))]),
    ("bmap-entry-duplicate", lambda d: [(_bmap(d) + 4, d[_bmap(d):_bmap(d) + 4])]),
    ("bmap-entry-zero-block", lambda d: [(_bmap(d), _u32(0xfffffffe))]),
    ("bmap-entry-reserved", lambda d: [(_bmap(d), _u32(0xfffffff0))]),
    ("bmap-on-header", lambda d: [(340, _u32(0))]),
    ("data-on-header", lambda d: [(344, _u32(0))]),
    ("data-on-bmap", lambda d: [(344, _u32(_bmap(d)))]),
    ("bmap-all-ones", lambda d: [(_bmap(d), b"\xff" * 8)]),
    ("block-count-bomb", lambda d: [(384, _u32(0x3fffffff)), (368, struct.pack("<Q", 0x3fffffff << 20))]),
    ("disk-size-larger-than-blocks", lambda d: [(368, struct.pack("<Q", 1 << 40))]),
    ("block-size-not-power-of-two", lambda d: [(376, _u32(3 << 19))]),
    ("blocks-allocated-more-than-in-image", lambda d: [(388, _u32(1000))]),
    ("static-type-short-file", lambda d: [(76, _u32(2))]),
    ("undo-type", lambda d: [(76, _u32(3))]),
    ("differencing-without-parent-uuid", lambda d: [(76, _u32(4))]),
    ("comment-unterminated", lambda d: [(84, b"A" * 256)]),
]


def _uuid(number):
    return bytes([number]) * 16


def _differencing(parent_uuid):
    return lambda d: [(76, _u32(4)), (UUID_IMAGE, _uuid(0x11)), (UUID_LINK, parent_uuid)]


def _parent(uuid, link=bytes(16)):
    return lambda d: [(UUID_IMAGE, uuid), (UUID_LINK, link), (76, _u32(4 if link != bytes(16) else 1))]


def _with_parent(place):
    """A differencing child (UUID 0x11, parent 0x22) and its parent placed by ``place(directory, data)``."""
    def build(directory):
        child = _edit(_differencing(_uuid(0x22)))(directory)
        parent = _util.pristine(FMT)
        for offset, value in _parent(_uuid(0x22))(parent):
            parent = _util.poke(parent, offset, value)
        place(directory, parent)
        return child
    return build


def _place_outside(directory, data):
    target = _util.outside_file(directory).parent / "parent.vdi"
    _util.write(target, data)
    return target


def _place_symlink_out(directory, data):
    os.symlink(str(_place_outside(directory, data)), str(directory / "parent.vdi"))


def _place_symlink_etc(directory, data):
    os.symlink("/etc/passwd", str(directory / "parent.vdi"))
    _place_outside(directory, data)


def _place_fifo(directory, data):
    os.mkfifo(str(directory / "parent.vdi"))


def _place_twice(directory, data):
    _util.write(directory / "parent-a.vdi", data)
    _util.write(directory / "parent-b.vdi", data)


def _place_beside(directory, data):
    _util.write(directory / "parent.vdi", data)


def _place_directory(directory, data):
    (directory / "parent.vdi").mkdir()


def _place_loop(directory, data):
    # the parent is itself differencing, its parent the child: a loop through UUIDs
    looped = data
    for offset, value in _parent(_uuid(0x22), link=_uuid(0x11))(looped):
        looped = _util.poke(looped, offset, value)
    _util.write(directory / "parent.vdi", looped)


def _snapshots_layout(directory):
    """VirtualBox's layout: the child in Snapshots/, the parent one level up (searched by the policy)."""
    parent = _util.pristine(FMT)
    for offset, value in _parent(_uuid(0x22))(parent):
        parent = _util.poke(parent, offset, value)
    _util.write(directory / "parent.vdi", parent)
    (directory / "Snapshots").mkdir()
    return _edit(_differencing(_uuid(0x22)))(directory / "Snapshots")


PARENTS = [
    ("parent-missing", lambda directory, data: None, True, r"not found"),
    ("parent-outside", _place_outside, True, r"not found"),
    ("parent-symlink-out", _place_symlink_out, True, r"not found|refused"),
    ("parent-symlink-etc", _place_symlink_etc, True, r"not found|refused"),
    ("parent-fifo", _place_fifo, True, r"not found|refused"),
    ("parent-directory", _place_directory, True, r"not found|refused"),
    ("parent-ambiguous", _place_twice, True, r"ambiguous"),
    ("parent-loop", _place_loop, True, r"loop|refused|longer than"),
    ("parent-beside", _place_beside, False, ""),
]


def _cases():
    cases = _util.field_sweep(FMT, NAME, FIELDS, VALUES, source="iotests-084")
    for label, edits in STRUCTURAL:
        cases.append(Case(name="%s/%s" % (FMT, label), fmt=FMT, build=_edit(edits), source="iotests-084"))
    for label, place, must_refuse, pattern in PARENTS:
        cases.append(Case(name="%s/%s" % (FMT, label), fmt=FMT, build=_with_parent(place), must_refuse=must_refuse,
                          refuse=pattern, source="CVE-class differencing parent by UUID"))
    cases.append(Case(name="vdi/parent-snapshots-folder", fmt=FMT, build=_snapshots_layout,
                      source="CVE-class differencing parent by UUID"))
    cases.append(Case(name="vdi/parent-is-self", fmt=FMT, build=_edit(_differencing(_uuid(0x11))), must_refuse=True,
                      refuse=r"not found|loop", source="CVE-class differencing parent by UUID"))
    for length in (0, 400, 1024):
        cases.append(Case(name="%s/truncated-%d" % (FMT, length), fmt=FMT, build=_util.truncated(FMT, NAME, length),
                          source="iotests-084"))
    return cases


CASES = _cases()
