# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX images the library writes, judged by qemu-img: create options and layout, writes,
zero writes, convert to both subformats; qemu-img compare equal and qemu-img check clean."""

import os
import random
import struct
import uuid

import pytest

import qemu_tools
import vhdx_editing
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    InvalidOptionError, ReadOnlyImageError)

MIB = 1024 * 1024
PAGE83_GUID = uuid.UUID("beca12ab-b2e6-4523-93ef-c309e000c746")

CREATE_CASES = [
    ("10M", {}),
    ("10M", {"subformat": "fixed"}),
    ("10M", {"subformat": "fixed", "block_state_zero": False, "block_size": 1 * MIB}),
    ("3G", {"block_size": 32 * MIB, "log_size": 4 * MIB}),
    ("5243392", {"subformat": "dynamic", "block_size": 1 * MIB, "block_state_zero": "off"}),
    ("7M", {"subformat": "fixed", "block_state_zero": "off", "block_size": 2 * MIB}),
    ("2G", {"block_size": 1500000}),
]


def qemu_options(options):
    parts = []
    for key, value in sorted(options.items()):
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append("%s=%s" % (key, value))
    return ",".join(parts) or "subformat=dynamic"


def layout(path):
    regions = vhdx_editing.regions(path)
    log = vhdx_editing.log_region(path)
    items = vhdx_editing.metadata_items(path)
    values = {}
    for guid, (item_offset, item_length, flags, _entry) in items.items():
        raw = vhdx_editing.read_at(path, regions[vhdx_editing.METADATA_GUID][0] + item_offset, item_length)
        # Page 83 data is a random GUID.
        values[guid] = (item_length, flags, raw if guid != PAGE83_GUID else None)
    bat_offset, bat_length = regions[vhdx_editing.BAT_GUID]
    bat = vhdx_editing.read_at(path, bat_offset, bat_length)
    return {"size": os.path.getsize(str(path)), "regions": regions, "log": log, "metadata": values, "bat": bat}


@pytest.mark.parametrize("size, options", CREATE_CASES)
def test_created_images_have_qemu_img_layout(size, options, tmp_path):
    ours = tmp_path / "ours.vhdx"
    theirs = tmp_path / "theirs.vhdx"
    diskimage.create(str(ours), "vhdx", size=size, options=options)
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", qemu_options(options), theirs, size)
    assert layout(ours) == layout(theirs)
    info = diskimage.info(str(ours))
    theirs_info = qemu_tools.qemu_img_json("info", ours)
    for key in ("virtual-size", "format", "cluster-size", "format-specific"):
        assert info.get(key) == theirs_info.get(key)
    assert qemu_tools.qemu_img_json("check", ours)["check-errors"] == 0
    qemu_tools.qemu_img("compare", ours, theirs)


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_random_writes_read_back_by_qemu(subformat, tmp_path):
    size = 9 * MIB + 1536
    image = tmp_path / "disk.vhdx"
    diskimage.create(str(image), "vhdx", size=size, options={"subformat": subformat, "block_size": 1 * MIB,
                                                             "block_state_zero": subformat == "dynamic"})
    model = bytearray(size)
    rng = random.Random(4)
    with diskimage.open_image(str(image), readonly=False) as opened:
        for step in range(40):
            length = rng.choice([1, 512, 4096, 70000, 1 * MIB + 3, 2 * MIB])
            offset = rng.randrange(0, size - length)
            data = bytes([step + 1]) * length
            opened.write(offset, data)
            model[offset:offset + length] = data
        opened.write(size - 700, b"\xfe" * 700)
        model[size - 700:] = b"\xfe" * 700
        assert opened.read(0, size) == bytes(model)
    raw = tmp_path / "model.raw"
    raw.write_bytes(bytes(model))
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", raw, image)
    assert qemu_tools.qemu_img_json("check", image) == dict(diskimage.check(str(image)), filename=str(image))
    # The headers were updated as the spec asks before the first write: both valid, one sequence ahead.
    headers = [vhdx_editing.read_at(image, offset, 4096) for offset in vhdx_editing.HEADER_OFFSETS]
    for header in headers:
        assert vhdx_editing.crc32c(header[:4] + bytes(4) + header[8:]) == struct.unpack_from("<I", header, 4)[0]
    # qemu-io writes on top of ours, and we read them.
    qemu_tools.qemu_io(image, "write -P 0x42 3M 1M", fmt="vhdx")
    model[3 * MIB:4 * MIB] = b"\x42" * MIB
    with diskimage.open_image(str(image)) as opened:
        assert opened.read(0, size) == bytes(model)


def test_write_zeroes(tmp_path):
    image = tmp_path / "disk.vhdx"
    size = 6 * MIB
    diskimage.create(str(image), "vhdx", size=size, options={"block_size": 1 * MIB})
    with diskimage.open_image(str(image), readonly=False) as opened:
        opened.write(0, b"\x33" * (3 * MIB))
        opened.write_zeroes(MIB - 512, 1024)
        opened.write_zeroes(2 * MIB, MIB, may_unmap=True)
        opened.write_zeroes(4 * MIB, 2 * MIB)
    model = bytearray(b"\x33" * (3 * MIB) + bytes(3 * MIB))
    model[MIB - 512:MIB + 512] = bytes(1024)
    model[2 * MIB:3 * MIB] = bytes(MIB)
    raw = tmp_path / "model.raw"
    raw.write_bytes(bytes(model))
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", raw, image)
    assert qemu_tools.qemu_img_json("check", image)["check-errors"] == 0


@pytest.mark.parametrize("options", [
    {"subformat": "dynamic"},
    {"subformat": "dynamic", "block_size": 1 * MIB},
    {"subformat": "fixed"},
    {"subformat": "fixed", "block_state_zero": False, "block_size": 32 * MIB},
])
def test_convert_to_vhdx(options, tmp_path):
    source = tmp_path / "source.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", source, "13M")
    qemu_tools.qemu_io(source, "write -P 0x11 0 100k", "write -P 0x22 1M 64k", "write -P 0x33 3000000 5000",
                       "write -P 0x44 4M 3M", "write -P 0x55 12M 1M", fmt="raw")
    image = tmp_path / "disk.vhdx"
    diskimage.convert(str(source), str(image), "vhdx", options=options)
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", source, image)
    assert qemu_tools.qemu_img_json("check", image)["check-errors"] == 0
    assert diskimage.info(str(image))["cluster-size"] == qemu_tools.qemu_img_json("info", image)["cluster-size"]
    # And back: qemu's vhdx from our raw equals our vhdx through our reader.
    theirs = tmp_path / "theirs.vhdx"
    qemu_tools.qemu_img("convert", "-O", "vhdx", "-o", qemu_options(options), source, theirs)
    assert diskimage.compare(str(image), str(theirs))


@pytest.mark.parametrize("options", [
    {"subformat": "streamOptimized"},
    {"block_size": 3 * MIB},
    {"block_size": 512 * MIB},
    {"log_size": 5 * 1024 * MIB},
    {"block_state_zero": "maybe"},
    {"cluster_size": 65536},
    {"preallocation": "full"},
    {"backing_file": "base.vhdx"},
])
def test_invalid_create_options(options, tmp_path):
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "disk.vhdx"), "vhdx", size="10M", options=options)
    assert not os.path.exists(str(tmp_path / "disk.vhdx"))


def test_too_large(tmp_path):
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "disk.vhdx"), "vhdx", size=65 * 1024 * 1024 * MIB)


def test_read_only_open_refuses_writes(tmp_path):
    image = tmp_path / "disk.vhdx"
    diskimage.create(str(image), "vhdx", size="4M")
    before = vhdx_editing.read_at(image, 0, 2 * MIB)
    with diskimage.open_image(str(image)) as opened:
        with pytest.raises(ReadOnlyImageError):
            opened.write(0, b"x")
    assert vhdx_editing.read_at(image, 0, 2 * MIB) == before
