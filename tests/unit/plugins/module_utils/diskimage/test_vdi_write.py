# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi driver, write side: images we create and write are read by qemu-img
identical to a model of what was written, ``qemu-img check`` finds nothing,
and qemu-img can go on writing them."""

import os
import random
import struct

import pytest

import qemu_tools
from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError, InvalidOptionError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vdi import VdiDriver

M = 1024 * 1024


def write_model(path, model):
    with open(str(path), "wb") as f:
        f.write(model)


def assert_qemu_sees(image, model, tmp_path):
    raw = tmp_path / "model.raw"
    write_model(raw, model)
    qemu_img("compare", "-f", "vdi", "-F", "raw", image, raw)
    check = qemu_img_json("check", image)
    assert check == {"check-errors": 0, "filename": str(image), "format": "vdi"}
    assert diskimage.check(str(image)) == check


@pytest.mark.parametrize("static", [False, True])
def test_create_matches_qemu_img(tmp_path, static):
    ours = tmp_path / "ours.vdi"
    theirs = tmp_path / "theirs.vdi"
    options = {"static": "on"} if static else {}
    diskimage.create(str(ours), "vdi", size=5 * M + 1000, options=options)
    qemu_img("create", "-f", "vdi", "-o", "static=%s" % ("on" if static else "off"), theirs, str(5 * M + 1000))
    a, b = qemu_img_json("info", ours), qemu_img_json("info", theirs)
    for key in ("virtual-size", "cluster-size", "format", "dirty-flag"):
        assert a[key] == b[key], key
    assert os.path.getsize(str(ours)) == os.path.getsize(str(theirs))
    with open(str(ours), "rb") as f:
        mine = f.read(0x1c8)
    with open(str(theirs), "rb") as f:
        qemu = f.read(0x1c8)
    # Same fields as qemu-img writes, text and UUIDs aside.
    assert mine[64:0x188] == qemu[64:0x188]
    assert mine[0x1a8:0x1c8] == bytes(32)
    assert_qemu_sees(ours, bytes(5 * M + 1024), tmp_path)
    assert diskimage.info(str(ours))["cluster-size"] == M


@pytest.mark.parametrize("static", [False, True])
def test_random_writes_read_back_by_qemu(tmp_path, static):
    image = tmp_path / "w.vdi"
    size = 6 * M
    diskimage.create(str(image), "vdi", size=size, options={"static": static})
    model = bytearray(size)
    rng = random.Random(4 if static else 5)
    with diskimage.open_image(str(image), fmt="vdi", readonly=False) as img:
        for step in range(40):
            offset = rng.randrange(0, size - 1)
            length = rng.randrange(1, min(size - offset, 3 * M) + 1)
            if step % 7 == 3:
                data = bytes(length)          # zero data: leaves unallocated blocks alone
            else:
                data = bytes([rng.randrange(1, 256)]) * length
            img.write(offset, data)
            model[offset:offset + length] = data
    assert_qemu_sees(image, bytes(model), tmp_path)
    with VdiDriver.open(str(image), True, None) as drv:
        assert drv.read(0, size) == bytes(model)
        if not static:
            # Blocks that only ever received zeroes were never allocated.
            zero_blocks = sum(1 for i in range(6) if not any(model[i * M:(i + 1) * M]))
            allocated = sum(1 for e in drv.block_map if e < 0xfffffffe)
            assert allocated <= 6 - zero_blocks or zero_blocks == 0


def test_write_zeroes_and_qemu_continues_writing(tmp_path):
    image = tmp_path / "z.vdi"
    diskimage.create(str(image), "vdi", size=4 * M)
    model = bytearray(4 * M)
    with VdiDriver.open(str(image), False, None) as drv:
        drv.write(M + 100, b"\x77" * (M + 5))
        model[M + 100:2 * M + 105] = b"\x77" * (M + 5)
        drv.write_zeroes(M + 50, 300, may_unmap=True)
        model[M + 50:M + 350] = bytes(300)
        drv.write_zeroes(3 * M, M)           # unallocated: nothing to do
        before = os.path.getsize(str(image))
        drv.write_zeroes(0, 4 * M)
        model[:] = bytes(4 * M)
        drv.flush()
    assert os.path.getsize(str(image)) == before
    assert_qemu_sees(image, bytes(model), tmp_path)
    # qemu-img appends after our blocks and keeps the image consistent.
    qemu_io(image, "write -P 0x31 3M 4096", fmt="vdi")
    model[3 * M:3 * M + 4096] = b"\x31" * 4096
    assert_qemu_sees(image, bytes(model), tmp_path)
    with VdiDriver.open(str(image), True, None) as drv:
        assert drv.read(0, 4 * M) == bytes(model)


def test_writes_after_qemu_allocations(tmp_path):
    image = tmp_path / "q.vdi"
    qemu_img("create", "-f", "vdi", image, "5M")
    qemu_io(image, "write -P 0x41 4M 1M", "write -P 0x42 0 100", fmt="vdi")
    model = bytearray(5 * M)
    model[4 * M:] = b"\x41" * M
    model[:100] = b"\x42" * 100
    with diskimage.open_image(str(image), fmt="vdi", readonly=False) as img:
        img.write(2 * M - 10, b"\x43" * 20)
        img.write(50, b"\x44" * 10)
    model[2 * M - 10:2 * M + 10] = b"\x43" * 20
    model[50:60] = b"\x44" * 10
    assert_qemu_sees(image, bytes(model), tmp_path)


def test_first_write_changes_the_modification_uuid(tmp_path):
    image = tmp_path / "u.vdi"
    diskimage.create(str(image), "vdi", size=2 * M)
    with open(str(image), "rb") as f:
        before = f.read(0x1c8)
    with VdiDriver.open(str(image), False, None) as drv:
        drv.write(0, b"x")
        drv.write(M, b"y")
    with open(str(image), "rb") as f:
        after = f.read(0x1c8)
    assert after[0x188:0x198] == before[0x188:0x198]      # image UUID kept
    assert after[0x198:0x1a8] != before[0x198:0x1a8]      # modification UUID renewed
    assert struct.unpack_from("<I", after, 0x184)[0] == 2


@pytest.mark.parametrize("static", ["off", "on"])
def test_convert_to_vdi(tmp_path, static):
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-f", "qcow2", src, "7M")
    qemu_io(src, "write -P 0x51 0 1536k", "write -P 0x52 3M 4097", "write -z 5M 1M", "write -P 0x53 7339032 1000",
            fmt="qcow2")
    dst = tmp_path / "dst.vdi"
    diskimage.convert(str(src), str(dst), "vdi", options={"static": static})
    qemu_img("compare", "-f", "qcow2", "-F", "vdi", src, dst)
    assert qemu_img_json("check", dst)["check-errors"] == 0
    assert "corruptions" not in qemu_img_json("check", dst)
    assert qemu_img_json("info", dst)["virtual-size"] == 7 * M
    if static == "off":
        # Only blocks holding data were allocated: 0, 1, 3 and 6 (1536k spans two).
        with VdiDriver.open(str(dst), True, None) as drv:
            assert sum(1 for e in drv.block_map if e < 0xfffffffe) == 4
    assert qemu_tools.raw_digest(dst, tmp_path, fmt="vdi") == qemu_tools.raw_digest(src, tmp_path, fmt="qcow2")


def test_create_options_are_validated(tmp_path):
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "a.vdi"), "vdi", size=M, options={"cluster_size": 2 * M})
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "b.vdi"), "vdi", size=M, options={"preallocation": "full"})
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "c.vdi"), "vdi", size=M, options={"static": "maybe"})
    with pytest.raises(ImageError):
        diskimage.create(str(tmp_path / "d.vdi"), "vdi", size=0x3fffffff * M + 512)
    base = tmp_path / "base.vdi"
    diskimage.create(str(base), "vdi", size=M)
    with pytest.raises(ImageError):
        diskimage.create(str(tmp_path / "e.vdi"), "vdi", backing_file="base.vdi", backing_fmt="vdi")
    assert sorted(os.listdir(str(tmp_path))) == ["base.vdi"]


def test_read_only_open_refuses_writes(tmp_path):
    image = tmp_path / "ro.vdi"
    diskimage.create(str(image), "vdi", size=M)
    with VdiDriver.open(str(image), True, None) as drv:
        with pytest.raises(ImageError):
            drv.write(0, b"x")
        with pytest.raises(ImageError):
            drv.write_zeroes(0, 512)
