# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vpc (VHD) driver, write side: created images match qemu-img create byte for
byte (apart from time stamp, unique id and checksum), and images we write or
convert read back in qemu-img identical to their source (qemu-img compare)."""

import os
import random
import struct

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io, run

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, InvalidOptionError, ReadOnlyImageError)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import vpc

M = 1024 * 1024
FOOTER_COOKIE = b"conectix"


def masked(data):
    """The file with each footer's time stamp, checksum and unique id zeroed."""
    data = bytearray(data)
    for offset in (0, len(data) - 512):
        if data[offset:offset + 8] == FOOTER_COOKIE:
            data[offset + 24:offset + 28] = bytes(4)
            data[offset + 64:offset + 84] = bytes(20)
    return bytes(data)


def read_file(path):
    with open(str(path), "rb") as f:
        return f.read()


@pytest.mark.parametrize("force_size", [False, True])
@pytest.mark.parametrize("size", [0, 512, M, 5 * M + 7, 123456789, 3 * 1024 * M])
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_create_matches_qemu_img_create(tmp_path, subformat, size, force_size):
    ours = tmp_path / "ours.vhd"
    theirs = tmp_path / "theirs.vhd"
    diskimage.create(str(ours), "vpc", size, options={"subformat": subformat, "force_size": force_size})
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=%s,force_size=%s" % (subformat, "on" if force_size else "off"),
             theirs, size)
    assert os.path.getsize(str(ours)) == os.path.getsize(str(theirs))
    if subformat == "dynamic":
        assert masked(read_file(ours)) == masked(read_file(theirs))
    else:
        with open(str(ours), "rb") as a, open(str(theirs), "rb") as b:
            a.seek(-512, os.SEEK_END)
            b.seek(-512, os.SEEK_END)
            assert masked(a.read()) == masked(b.read())
    info = diskimage.info(str(ours), fmt="vpc")
    if subformat == "fixed" and size == 0:
        # The lone footer sits at offset 0, where qemu-img expects a dynamic disk: it cannot open its own image.
        assert info["virtual-size"] == 0
        return
    oracle = qemu_img_json("info", "-f", "vpc", ours)
    for key in ("virtual-size", "cluster-size", "format"):
        assert info.get(key) == oracle.get(key)
    assert info["virtual-size"] == qemu_img_json("info", "-f", "vpc", theirs)["virtual-size"]


def test_geometry_algorithm_examples():
    # Spec appendix: below 65535*16*63 sectors, 17/31/63 sectors per track; above, 255 and 16 heads.
    assert vpc.calculate_geometry(2048) == (30, 4, 17)
    assert vpc.calculate_geometry(65535 * 16 * 63) == (16191, 16, 255)
    assert vpc.calculate_geometry(10 ** 12) == (65535, 16, 255)
    # 10 MiB: not representable, rounded up to 302 cylinders of 4 heads x 17 sectors.
    assert vpc.rounded_size(10 * M) == (302 * 4 * 17 * 512, (302, 4, 17))
    assert vpc.rounded_size(10 * M, force_size=True) == (10 * M, (65535, 16, 255))
    with pytest.raises(InvalidOptionError):
        vpc.rounded_size(2041 * 1024 * M)


@pytest.mark.parametrize("options, message", [
    ({"subformat": "streamOptimized"}, "subformat"),
    ({"cluster_size": 65536}, "cluster_size"),
    ({"backing_file": "base.vhd", "backing_fmt": "vpc"}, "backing file"),
])
def test_create_refuses_bad_options(tmp_path, options, message):
    qemu_img("create", "-q", "-f", "vpc", tmp_path / "base.vhd", "1M")
    with pytest.raises(InvalidOptionError) as caught:
        diskimage.create(str(tmp_path / "x.vhd"), "vpc", M, options=options)
    assert message in str(caught.value)
    assert not os.path.exists(str(tmp_path / "x.vhd"))


def random_writes(seed, size, count):
    rng = random.Random(seed)
    writes = []
    for _index in range(count):
        length = rng.choice([1, 511, 512, 4096, 70000, 2 * M + 3])
        offset = rng.randrange(0, size - length)
        if rng.random() < 0.2:
            writes.append((offset, length))
        else:
            writes.append((offset, bytes([rng.randrange(1, 256)]) * length))
    return writes


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_written_images_compare_equal_in_qemu_img(tmp_path, subformat, seed):
    image_path = tmp_path / "disk.vhd"
    diskimage.create(str(image_path), "vpc", 9 * M + 1000, options={"subformat": subformat})
    with vpc.VpcDriver.open(str(image_path), readonly=False) as image:
        size = image.virtual_size
        model = bytearray(size)
        writes = random_writes(seed, size, 25)
        writes.append((size - 3, b"end"))
        for offset, data in writes:
            if isinstance(data, int):
                image.write_zeroes(offset, data, may_unmap=bool(offset % 2))
                model[offset:offset + data] = bytes(data)
            else:
                image.write(offset, data)
                model[offset:offset + len(data)] = data
        image.flush()
        assert image.read(0, size) == bytes(model)
    raw = tmp_path / "model.raw"
    raw.write_bytes(bytes(model))
    run("qemu-img", "compare", "-f", "vpc", "-F", "raw", image_path, raw)
    assert qemu_img_json("info", "-f", "vpc", image_path)["virtual-size"] == size
    # Writing again after reopening keeps appending blocks correctly (footer moved to the end).
    with vpc.VpcDriver.open(str(image_path), readonly=False) as image:
        image.write(size - 2 * M - 1, b"\x99" * (2 * M))
        model[size - 2 * M - 1:size - 1] = b"\x99" * (2 * M)
    raw.write_bytes(bytes(model))
    run("qemu-img", "compare", "-f", "vpc", "-F", "raw", image_path, raw)
    with open(str(image_path), "rb") as f:
        f.seek(-512, os.SEEK_END)
        assert f.read(8) == FOOTER_COOKIE


def test_dynamic_blocks_get_all_ones_bitmaps_and_the_footer_moves(tmp_path):
    image_path = tmp_path / "disk.vhd"
    diskimage.create(str(image_path), "vpc", 5 * M)
    before = read_file(image_path)
    with vpc.VpcDriver.open(str(image_path), readonly=False) as image:
        image.write(2 * M + 512, b"x" * 100)
    after = read_file(image_path)
    footer = before[-512:]
    assert after[:512] == before[:512] and after[-512:] == footer
    # The new block went where the footer was: bitmap (one sector of 0xff), then 2 MiB of data.
    block = len(before) - 512
    assert len(after) == block + 512 + 2 * M + 512
    assert after[block:block + 512] == b"\xff" * 512
    assert struct.unpack_from(">I", after, 1536 + 4)[0] == block // 512
    assert after[block + 512 + 512:block + 512 + 612] == b"x" * 100


@pytest.mark.parametrize("options", [{"subformat": "dynamic"}, {"subformat": "fixed"},
                                     {"subformat": "dynamic", "force_size": True}])
def test_convert_to_vpc_compares_equal(tmp_path, options):
    source = tmp_path / "source.raw"
    qemu_img("create", "-f", "raw", source, "7M")
    qemu_io(source, "write -P 0x5a 0 1M", "write -P 0xc3 3M 2049k", "write -P 0x01 7340031 1", fmt="raw")
    target = tmp_path / "out.vhd"
    diskimage.convert(str(source), str(target), "vpc", src_fmt="raw", options=options)
    run("qemu-img", "compare", "-f", "raw", "-F", "vpc", source, target)
    # And back: qemu-io sees what we wrote, we see what qemu-io writes over it.
    qemu_io(target, "write -P 0x42 1536k 1M", fmt="vpc")
    back = tmp_path / "back.raw"
    diskimage.convert(str(target), str(back), "raw", src_fmt="vpc")
    run("qemu-img", "compare", "-f", "vpc", "-F", "raw", target, back)


def test_qemu_io_writes_to_our_images_read_identical(tmp_path):
    image = tmp_path / "disk.vhd"
    diskimage.create(str(image), "vpc", 6 * M)
    qemu_io(image, "write -P 0x11 1000 3000", "write -P 0x22 2M 2M", "write -z 2560k 4k", fmt="vpc")
    with diskimage.open_image(str(image), fmt="vpc") as opened:
        data = opened.read(0, opened.virtual_size)
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", image, out)
    assert data == out.read_bytes()


def test_read_only_open_refuses_writes(tmp_path):
    image = tmp_path / "disk.vhd"
    diskimage.create(str(image), "vpc", M)
    with vpc.VpcDriver.open(str(image), readonly=True) as opened:
        with pytest.raises(ReadOnlyImageError):
            opened.write(0, b"x")
        with pytest.raises(ReadOnlyImageError):
            opened.write_zeroes(0, 512)


def test_api_compare_and_resize(tmp_path):
    source = tmp_path / "source.raw"
    qemu_img("create", "-f", "raw", source, "3M")
    qemu_io(source, "write -P 0x7e 1M 4k", fmt="raw")
    target = tmp_path / "out.vhd"
    diskimage.convert(str(source), str(target), "vpc", src_fmt="raw")
    assert diskimage.compare(str(source), str(target), fmt_a="raw", fmt_b="vpc")
    qemu_io(target, "write -P 0x7f 1M 1", fmt="vpc")
    assert not diskimage.compare(str(source), str(target), fmt_a="raw", fmt_b="vpc")
    # qemu-img 7.2 cannot resize vpc images either.
    with pytest.raises(ImageError):
        diskimage.resize(str(target), 8 * M, fmt="vpc")
