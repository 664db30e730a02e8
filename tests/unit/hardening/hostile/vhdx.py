# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile VHDX images: the classes of qemu-iotests 064 (images other tools made, read as they are) and
070 (a log to replay: entries that write over the headers or far past the end of the file, bad sequence
numbers, a log GUID with no log), headers, region tables and metadata items out of place or too large,
BAT entries past the file or on metadata, and differencing disks whose parent locator names host files
(the CVE class "differencing parents")."""
from __future__ import annotations

import os
import struct
import uuid

from hardening.hostile import _util
from hardening.hostile._case import Case

FMT = "vhdx"
NAME = "disk.vhdx"


def _ed():
    return _util.helper("vhdx_editing")


def _build(*edits):
    """A builder: the pristine image written to disk.vhdx, then each edit(path) applied."""
    def build(directory):
        path = _util.write(directory / NAME, _util.pristine(FMT))
        for edit in edits:
            edit(path)
        return path
    return build


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _bit in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def _seal(structure):
    """``structure`` with its CRC-32C at offset 4 (vhdx_editing.seal, table-driven: a 64 KiB region table
    takes milliseconds, not a second)."""
    structure = bytearray(structure)
    structure[4:8] = bytes(4)
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in structure:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    structure[4:8] = struct.pack("<I", crc ^ 0xFFFFFFFF)
    return bytes(structure)


def _header_field(offset, value):
    return lambda path: _ed().set_header_field(path, offset, value)


def _region(index, guid=None, offset=None, length=None, flags=None, count=None):
    def edit(path):
        ed = _ed()
        table = bytearray(ed.read_at(path, ed.REGION_TABLE_OFFSETS[0], 64 * 1024))
        entry = list(struct.unpack_from("<16sQII", table, 16 + 32 * index))
        for position, value in ((0, guid.bytes_le if guid else None), (1, offset), (2, length), (3, flags)):
            if value is not None:
                entry[position] = value
        struct.pack_into("<16sQII", table, 16 + 32 * index, *entry)
        if count is not None:
            struct.pack_into("<I", table, 8, count)
        for table_offset in ed.REGION_TABLE_OFFSETS:
            ed.write_at(path, table_offset, _seal(table))
    return edit


def _metadata_value(guid_name, value):
    def edit(path):
        ed = _ed()
        ed.write_at(path, ed.metadata_item_offset(path, getattr(ed, guid_name)), value)
    return edit


def _metadata_entry(guid_name, offset=None, length=None, flags=None):
    def edit(path):
        ed = _ed()
        item_offset, item_length, item_flags, entry = ed.metadata_items(path)[getattr(ed, guid_name)]
        ed.write_at(path, entry + 16, struct.pack("<III", item_offset if offset is None else offset,
                                                  item_length if length is None else length,
                                                  item_flags if flags is None else flags))
    return edit


def _bat(index, file_offset, state):
    return lambda path: _ed().set_bat_entry(path, index, file_offset, state)


def _log(descriptors, sequence=1, **extra):
    """A log (one entry) whose descriptors replay ``descriptors``; the headers name it."""
    def edit(path):
        ed = _ed()
        log_guid = uuid.UUID(int=0x1234)
        offset, length = ed.log_region(path)
        entry = ed.log_entry(log_guid, sequence, descriptors, **extra)
        ed.write_at(path, offset, entry[:length])
        ed.set_log_guid(path, log_guid)
    return edit


def _differencing(relative_path, extra=(), place=None):
    def edit(path):
        ed = _ed()
        directory = path.parent
        if place is not None:
            place(directory)
        ed.make_differencing(path, uuid.UUID(int=0x77), relative_path(directory) if callable(relative_path)
                             else relative_path, extra_entries=extra)
    return edit


def _outside_parent(directory):
    target = _util.outside_file(directory).parent / "parent.vhdx"
    _util.write(target, _util.pristine(FMT))
    return target


def _symlink_out(directory):
    os.symlink(str(_outside_parent(directory)), str(directory / "parent.vhdx"))


def _beside(directory):
    _util.write(directory / "parent.vhdx", _util.pristine(FMT))


PARENT_NAMES = [
    ("etc-passwd", "/etc/passwd", None),
    ("outside-relative", "..\\%s\\parent.vhdx" % _util.OUTSIDE, _outside_parent),
    ("outside-relative-slashes", "../%s/parent.vhdx" % _util.OUTSIDE, _outside_parent),
    ("outside-absolute", lambda d: str(d.parent / _util.OUTSIDE / "parent.vhdx"), _outside_parent),
    ("windows-absolute", "C:\\Windows\\win.ini", None),
    ("unc-path", "\\\\server\\share\\parent.vhdx", None),
    ("symlink-out", "parent.vhdx", _symlink_out),
    ("json-protocol", 'json:{"file.filename":"/etc/passwd"}', None),
    ("nbd-protocol", "nbd:localhost:10809", None),
    ("missing", "missing.vhdx", None),
    ("linkage-mismatch", "parent.vhdx", _beside),
    ("self", NAME, None),
]

HEADER_VALUES = [
    ("sequence-max", 8, struct.pack("<Q", 0xffffffffffffffff)),
    ("log-version", 66, struct.pack("<H", 7)),
    ("version", 68, struct.pack("<H", 2)),
    ("log-length-bomb", 68 + 2, struct.pack("<H", 1)),
    ("log-length-huge", 68, struct.pack("<IQ", 0xfff00000, 1 << 20)),
    ("log-offset-past-eof", 72, struct.pack("<Q", 1 << 44)),
    ("log-offset-on-header", 72, struct.pack("<Q", 0)),
    ("log-guid-without-log", 48, uuid.UUID(int=0x99).bytes_le),
]

REGIONS = [
    ("bat-offset-zero", dict(index=0, offset=0)),
    ("bat-offset-past-eof", dict(index=0, offset=1 << 44)),
    ("bat-length-bomb", dict(index=0, length=0xfff00000)),
    ("bat-length-zero", dict(index=0, length=0)),
    ("region-unaligned", dict(index=0, offset=0x100001)),
    ("region-on-region", dict(index=1, offset=192 * 1024)),
    ("regions-overlap", dict(index=1, offset=None, length=None)),
    ("region-unknown-required", dict(index=1, guid=uuid.UUID(int=5), flags=1)),
    ("region-count-bomb", dict(index=0, count=0xffffffff)),
    ("region-count-zero", dict(index=0, count=0)),
]

METADATA = [
    ("block-size-zero", "FILE_PARAMETERS_GUID", struct.pack("<I", 0)),
    ("block-size-odd", "FILE_PARAMETERS_GUID", struct.pack("<I", 3 << 20)),
    ("block-size-huge", "FILE_PARAMETERS_GUID", struct.pack("<I", 1 << 31)),
    ("leave-blocks-allocated-and-parent", "FILE_PARAMETERS_GUID", struct.pack("<II", 1 << 21, 3)),
    ("disk-size-zero", "VIRTUAL_DISK_SIZE_GUID", struct.pack("<Q", 0)),
    ("disk-size-exabytes", "VIRTUAL_DISK_SIZE_GUID", struct.pack("<Q", 1 << 62)),
    ("disk-size-unaligned", "VIRTUAL_DISK_SIZE_GUID", struct.pack("<Q", (2 << 20) + 1)),
    ("disk-size-max", "VIRTUAL_DISK_SIZE_GUID", struct.pack("<Q", 0xffffffffffffffff)),
]


def _metadata_region_on_bat(path):
    _region(1, offset=_ed().regions(path)[_ed().BAT_GUID][0])(path)


def _cases():
    cases = []
    for label, offset, value in HEADER_VALUES:
        cases.append(Case(name="vhdx/header-%s" % label, fmt=FMT, build=_build(_header_field(offset, value)),
                          source="iotests-070"))
    for label, keywords in REGIONS:
        keywords = dict(keywords)
        if label == "regions-overlap":
            edit = _metadata_region_on_bat
        else:
            edit = _region(keywords.pop("index"), **keywords)
        cases.append(Case(name="vhdx/%s" % label, fmt=FMT, build=_build(edit), source="iotests-064"))
    for label, guid_name, value in METADATA:
        cases.append(Case(name="vhdx/metadata-%s" % label, fmt=FMT, build=_build(_metadata_value(guid_name, value)),
                          source="iotests-064"))
    for label, guid_name, keywords in [
            ("item-offset-past-region", "VIRTUAL_DISK_SIZE_GUID", dict(offset=0x7fffffff)),
            ("item-length-bomb", "VIRTUAL_DISK_SIZE_GUID", dict(length=0xffffffff)),
            ("item-on-table", "VIRTUAL_DISK_SIZE_GUID", dict(offset=0)),
            ("item-unknown-flags", "FILE_PARAMETERS_GUID", dict(flags=0xfffffff0))]:
        cases.append(Case(name="vhdx/metadata-%s" % label, fmt=FMT,
                          build=_build(_metadata_entry(guid_name, **keywords)), source="iotests-064"))
    for label, file_offset, state in [
            ("past-eof", 1 << 44, 6), ("on-header", 0, 6), ("on-metadata", 2 << 20, 6), ("unaligned", 0x180000, 6),
            ("invalid-state", 0, 4), ("undefined-state", 3 << 20, 5), ("partially-present-no-parent", 3 << 20, 7),
            ("offset-max", 0xfffffffffff00000, 6)]:
        cases.append(Case(name="vhdx/bat-%s" % label, fmt=FMT, build=_build(_bat(0, file_offset, state)),
                          source="iotests-064"))
    for label, descriptors in [
            ("log-writes-header", [("data", 0, b"\xee" * 4096)]),
            ("log-writes-region-table", [("data", 192 * 1024, b"\xee" * 4096)]),
            ("log-writes-past-eof", [("data", 1 << 40, b"\xee" * 4096)]),
            ("log-zero-bomb", [("zero", 0, 1 << 50)]),
            ("log-zero-unaligned", [("zero", 1, 4096)])]:
        cases.append(Case(name="vhdx/%s" % label, fmt=FMT, build=_build(_log(descriptors)), source="iotests-070"))
    cases.append(Case(name="vhdx/log-sequence-zero", fmt=FMT,
                      build=_build(_log([("data", 4 << 20, b"\xee" * 4096)], sequence=0)), source="iotests-070"))
    cases.append(Case(name="vhdx/log-flushed-offset-bomb", fmt=FMT,
                      build=_build(_log([("data", 4 << 20, b"\xee" * 4096)], flushed_file_offset=1 << 50,
                                        last_file_offset=1 << 50)), source="iotests-070"))
    for label, name, place in PARENT_NAMES:
        cases.append(Case(name="vhdx/parent-%s" % label, fmt=FMT, build=_build(_differencing(name, place=place)),
                          must_refuse=True,
                          refuse=r"is refused|does not exist|not found|protocol|parent|loop|linkage|locator",
                          source="CVE-class differencing parent"))
    host_paths = (("absolute_win32_path", "\\\\?\\C:\\etc\\passwd"), ("volume_path", "/etc/passwd"))
    cases.append(Case(name="vhdx/parent-absolute-win32-path-etc", fmt=FMT,
                      build=_build(_differencing("parent.vhdx", extra=host_paths)),
                      must_refuse=True, refuse=r"is refused|does not exist|not found|parent|linkage",
                      source="CVE-class differencing parent"))
    for length in (0, 200 * 1024, 3 << 20):
        cases.append(Case(name="vhdx/truncated-%d" % length, fmt=FMT, build=_util.truncated(FMT, NAME, length),
                          source="iotests-064"))
    return cases


CASES = _cases()
