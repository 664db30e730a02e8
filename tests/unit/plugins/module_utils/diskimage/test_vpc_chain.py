# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Differencing VHDs (disk type 4), which qemu-img 7.2 cannot read as chains:
chains built byte by byte from the specification (vhd_building.py) with the
expected guest view modelled independently: sectors whose bitmap bit is set
come from the child, the others from the parent; the parent is found through
the W2ru then W2ku locators under the path policy and checked by unique id."""

import os
import random
import shutil
import struct

import pytest

from qemu_tools import qemu_img, qemu_img_json
import vhd_building as vhd

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    FormatError, ImageNotFoundError, PolicyError)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, UNALLOCATED, ZERO
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vpc import VpcDriver

K = 1024
BLOCK = 64 * K                 # small blocks keep the files small: 128 sectors, a one-sector bitmap
SECTORS = BLOCK // 512
PARENT_ID = bytes(range(16))
CHILD_ID = bytes(range(16, 32))


def random_block(rng):
    return bytes(rng.randrange(256) for _index in range(64)) * (BLOCK // 64)


def make_parent(directory, size, rng, name="parent.vhd", fixed=False, unique_id=PARENT_ID):
    """A dynamic (or fixed) parent with every other block allocated; returns its guest view."""
    view = bytearray(size)
    if fixed:
        for index in range(0, size // BLOCK, 2):
            view[index * BLOCK:(index + 1) * BLOCK] = random_block(rng)
        data = vhd.fixed_image(size, view, unique_id)
    else:
        blocks = {}
        for index in range(0, -(-size // BLOCK), 2):
            block = random_block(rng)
            blocks[index] = (b"\xff" * 512, block)
            end = min(size, (index + 1) * BLOCK)
            view[index * BLOCK:end] = block[:end - index * BLOCK]
        data = vhd.sparse_image(size, BLOCK, blocks, unique_id)
    path = os.path.join(str(directory), name)
    with open(path, "wb") as f:
        f.write(data)
    return view


def make_child(directory, size, parent_view, rng, locators, parent_id=PARENT_ID, name="child.vhd",
               unique_id=CHILD_ID):
    """A differencing child: some blocks unallocated, others with random sector bitmaps.
    Returns the expected guest view (parent bytes past the parent's end read zero)."""
    view = bytearray(size)
    shared = min(size, len(parent_view))
    view[:shared] = parent_view[:shared]
    blocks = {}
    for index in range(-(-size // BLOCK)):
        if index % 3 == 2:
            continue
        bits = [rng.randrange(2) for _sector in range(SECTORS)]
        if index == 0:
            bits = [1] * SECTORS
        elif index == 1:
            bits = [0] * SECTORS
        block = random_block(rng)
        blocks[index] = (vhd.bitmap_from_bits(bits, 512), block)
        for sector, bit in enumerate(bits):
            start = index * BLOCK + sector * 512
            if bit and start < size:
                view[start:min(size, start + 512)] = block[sector * 512:sector * 512 + min(512, size - start)]
    data = vhd.sparse_image(size, BLOCK, blocks, unique_id, disk_type=vhd.DIFFERENCING,
                            parent_id=parent_id, locators=locators)
    path = os.path.join(str(directory), name)
    with open(path, "wb") as f:
        f.write(data)
    return path, view


LOCATORS = [(b"W2ku", "C:\\VMs\\parent.vhd"), (b"W2ru", ".\\parent.vhd")]


def read_all(path, **kwargs):
    with diskimage.open_image(path, fmt="vpc", **kwargs) as image:
        return image.read(0, image.virtual_size)


@pytest.mark.parametrize("fixed_parent", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_chain_reads_the_modelled_view(tmp_path, seed, fixed_parent):
    rng = random.Random(seed)
    parent = make_parent(tmp_path, 10 * BLOCK, rng, fixed=fixed_parent)
    child, expected = make_child(tmp_path, 10 * BLOCK, parent, rng, LOCATORS)
    assert read_all(child) == bytes(expected)
    # Converting the chain flattens it to the same view.
    out = tmp_path / "flat.raw"
    diskimage.convert(child, str(out), "raw", src_fmt="vpc")
    assert out.read_bytes() == bytes(expected)
    # qemu-img cannot read a differencing chain itself: a VHD copy of it must read as the model in qemu-img.
    flat_vhd = tmp_path / "flat.vhd"
    diskimage.convert(child, str(flat_vhd), "vpc", src_fmt="vpc")
    model = tmp_path / "model.raw"
    model.write_bytes(bytes(expected))
    # qemu-img sizes a VHD by its CHS geometry, which may round up: the model must fit, the rest reads zero.
    assert qemu_img_json("info", "-f", "vpc", flat_vhd)["virtual-size"] >= len(expected)
    assert qemu_img("compare", "-f", "raw", "-F", "vpc", model, flat_vhd).endswith("Images are identical.\n")
    # Without an opener (no path policy) the parent is never opened.
    with pytest.raises(PolicyError):
        VpcDriver.open(child, True, None)
    with diskimage.open_image(child, fmt="vpc") as image:
        assert image.virtual_size == 10 * BLOCK


def test_block_status_of_the_child_layer(tmp_path):
    rng = random.Random(7)
    parent = make_parent(tmp_path, 6 * BLOCK, rng)
    child, _expected = make_child(tmp_path, 6 * BLOCK, parent, rng, LOCATORS)
    info = diskimage.info(child, backing_chain=True)
    assert [layer["filename"] for layer in info] == [child, os.path.join(str(tmp_path), "parent.vhd")]
    assert info[0]["backing-filename"] == "parent.vhd" and info[0]["backing-filename-format"] == "vpc"
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import chain
    with chain.open_driver(child, fmt="vpc") as driver:
        extents = driver.block_status(0, 6 * BLOCK)
        assert sum(e.length for e in extents) == 6 * BLOCK
        # Block 0: every bit set; block 1: none; block 2: unallocated.
        assert extents[0].kind == DATA and extents[0].start == 0 and extents[0].length >= BLOCK
        assert [e for e in extents if e.start == BLOCK][0].kind == UNALLOCATED
        assert driver.block_status(2 * BLOCK, BLOCK) == [(2 * BLOCK, BLOCK, UNALLOCATED, None)]
        assert driver.backing.block_status(BLOCK, BLOCK) == [(BLOCK, BLOCK, ZERO, None)]


def test_child_larger_than_parent_reads_zero_past_the_parent(tmp_path):
    rng = random.Random(3)
    parent = make_parent(tmp_path, 3 * BLOCK + 1024, rng)
    child, expected = make_child(tmp_path, 8 * BLOCK, parent, rng, LOCATORS)
    assert read_all(child) == bytes(expected)


def test_three_layer_chain(tmp_path):
    rng = random.Random(11)
    base = make_parent(tmp_path, 6 * BLOCK, rng, name="base.vhd", unique_id=b"B" * 16)
    _mid, mid_view = make_child(tmp_path, 6 * BLOCK, base, rng, [(b"W2ru", ".\\base.vhd")],
                                parent_id=b"B" * 16, name="mid.vhd", unique_id=b"M" * 16)
    top, expected = make_child(tmp_path, 6 * BLOCK, mid_view, rng, [(b"W2ru", "mid.vhd")],
                               parent_id=b"M" * 16, name="top.vhd", unique_id=b"T" * 16)
    assert read_all(top) == bytes(expected)


def test_relative_locator_into_a_subdirectory(tmp_path):
    rng = random.Random(5)
    (tmp_path / "parents").mkdir()
    parent = make_parent(tmp_path / "parents", 4 * BLOCK, rng)
    child, expected = make_child(tmp_path, 4 * BLOCK, parent, rng, [(b"W2ru", ".\\parents\\parent.vhd")])
    assert read_all(child) == bytes(expected)


def test_absolute_locator_needs_allow_dirs(tmp_path):
    rng = random.Random(6)
    (tmp_path / "base").mkdir()
    (tmp_path / "vm").mkdir()
    parent = make_parent(tmp_path / "base", 4 * BLOCK, rng)
    absolute = str(tmp_path / "base" / "parent.vhd")
    child, expected = make_child(tmp_path / "vm", 4 * BLOCK, parent, rng,
                                 [(b"W2ru", ".\\parent.vhd"), (b"W2ku", absolute)])
    with pytest.raises(ImageNotFoundError) as caught:
        read_all(child)
    assert "W2ru" in str(caught.value) and "W2ku" in str(caught.value) and "allow_dirs" in str(caught.value)
    assert read_all(child, allow_dirs=[str(tmp_path / "base")]) == bytes(expected)


@pytest.mark.parametrize("locators, needle", [
    ([(b"W2ku", "C:\\Users\\x\\parent.vhd")], "'C:'"),
    ([(b"W2ru", "..\\parent.vhd")], "'..'"),
    ([(b"W2ru", "/etc/passwd")], "absolute paths are not allowed"),
])
def test_locators_refused_by_the_policy(tmp_path, locators, needle):
    rng = random.Random(8)
    (tmp_path / "vm").mkdir()
    parent = make_parent(tmp_path, 4 * BLOCK, rng)
    child, _expected = make_child(tmp_path / "vm", 4 * BLOCK, parent, rng, locators)
    with pytest.raises(PolicyError) as caught:
        read_all(child)
    assert needle in str(caught.value) and "path policy" in str(caught.value)


def test_parent_unique_id_mismatch_is_refused(tmp_path):
    rng = random.Random(9)
    parent = make_parent(tmp_path, 4 * BLOCK, rng, unique_id=b"X" * 16)
    child, _expected = make_child(tmp_path, 4 * BLOCK, parent, rng, LOCATORS)
    with pytest.raises(FormatError) as caught:
        read_all(child)
    assert "unique id" in str(caught.value) and (b"X" * 16).hex() in str(caught.value)
    assert PARENT_ID.hex() in str(caught.value)


def test_differencing_without_locators_is_refused(tmp_path):
    rng = random.Random(10)
    parent = make_parent(tmp_path, 4 * BLOCK, rng)
    child, _expected = make_child(tmp_path, 4 * BLOCK, parent, rng, [])
    with pytest.raises(FormatError) as caught:
        read_all(child)
    assert "parent locator" in str(caught.value)


def test_self_referencing_child_is_a_loop(tmp_path):
    rng = random.Random(12)
    child, _expected = make_child(tmp_path, 4 * BLOCK, bytearray(4 * BLOCK), rng, [(b"W2ru", "child.vhd")],
                                  parent_id=CHILD_ID)
    with pytest.raises(FormatError) as caught:
        read_all(child)
    assert "loop" in str(caught.value)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_writes_to_a_differencing_child_keep_the_parent_showing_elsewhere(tmp_path, seed):
    rng = random.Random(seed)
    parent = make_parent(tmp_path, 10 * BLOCK, rng)
    parent_file = (tmp_path / "parent.vhd").read_bytes()
    child, expected = make_child(tmp_path, 10 * BLOCK, parent, rng, LOCATORS)
    with diskimage.open_image(child, fmt="vpc", readonly=False) as image:
        for _round in range(30):
            length = rng.choice([1, 100, 511, 512, 1000, BLOCK - 7, BLOCK + 513, 3 * BLOCK])
            offset = rng.randrange(0, 10 * BLOCK - length)
            if rng.random() < 0.25:
                image.write_zeroes(offset, length, may_unmap=True)
                expected[offset:offset + length] = bytes(length)
            else:
                data = bytes([rng.randrange(256)]) * length
                image.write(offset, data)
                expected[offset:offset + length] = data
        assert image.read(0, 10 * BLOCK) == bytes(expected)
    assert read_all(child) == bytes(expected)
    # The parent is only ever read.
    assert (tmp_path / "parent.vhd").read_bytes() == parent_file
    # The footer moved to the new end of the child.
    with open(child, "rb") as f:
        f.seek(-512, os.SEEK_END)
        assert f.read(8) == b"conectix"


def test_dynamic_sectors_with_clear_bits_read_zero_and_stay_zero_after_a_write(tmp_path):
    rng = random.Random(14)
    bits = [1, 0] * (SECTORS // 2)
    block = random_block(rng)
    path = str(tmp_path / "disk.vhd")
    with open(path, "wb") as f:
        f.write(vhd.sparse_image(2 * BLOCK, BLOCK, {0: (vhd.bitmap_from_bits(bits, 512), block)}, CHILD_ID))
    expected = bytearray(2 * BLOCK)
    for sector in range(0, SECTORS, 2):
        expected[sector * 512:(sector + 1) * 512] = block[sector * 512:(sector + 1) * 512]
    assert read_all(path) == bytes(expected)
    # Writing into the block sets every bit (as QEMU does), zeroing the clear sectors first,
    # so that qemu-img, which ignores sector bitmaps, then sees the same disk.
    with diskimage.open_image(path, fmt="vpc", readonly=False) as image:
        image.write(512 + 100, b"new")
    expected[612:615] = b"new"
    assert read_all(path) == bytes(expected)
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", path, out)
    assert out.read_bytes() == bytes(expected)


def test_windows_differencing_sample_over_a_constructed_parent(tmp_path):
    """dfvfs's diskpart-made child over a stand-in for its missing parent: a 4 MiB fixed VHD
    with the unique id the child records (SOURCES.md) and a known pattern.  The expected view
    is modelled from the child's BAT and sector bitmaps parsed here, per the specification."""
    samples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "vhd")
    child = str(tmp_path / "fat-differential.vhd")
    shutil.copyfile(os.path.join(samples, "fat-differential.vhd"), child)
    size = 4 * 1024 * 1024
    pattern = b"".join(struct.pack(">I", sector) * 128 for sector in range(size // 512))
    with open(str(tmp_path / "fat-parent.vhd"), "wb") as f:
        f.write(vhd.fixed_image(size, pattern, bytes.fromhex("5fa21a55f394aa4d99581951a67d5540")))
    with open(child, "rb") as f:
        raw = f.read()
    header = struct.unpack_from(">Q", raw, 16)[0]
    table, entries, block_size = struct.unpack_from(">QxxxxII", raw, header + 16)
    expected = bytearray(pattern)
    for index, entry in enumerate(struct.unpack_from(">%dI" % entries, raw, table)):
        if entry == vhd.UNUSED:
            continue
        bitmap = raw[entry * 512:entry * 512 + 512]
        for sector in range(block_size // 512):
            if bitmap[sector // 8] & (0x80 >> (sector % 8)):
                guest = index * block_size + sector * 512
                host = entry * 512 + 512 + sector * 512
                expected[guest:guest + 512] = raw[host:host + 512]
    assert expected != bytearray(pattern)
    assert read_all(child) == bytes(expected)
    info = diskimage.info(child, backing_chain=True)
    assert [layer["virtual-size"] for layer in info] == [size, size]
    # A stand-in with another unique id is refused.
    with open(str(tmp_path / "fat-parent.vhd"), "wb") as f:
        f.write(vhd.fixed_image(size, pattern, bytes(16)))
    with pytest.raises(FormatError):
        read_all(child)


def test_one_byte_into_an_unallocated_child_block(tmp_path):
    rng = random.Random(31)
    parent = make_parent(tmp_path, 4 * BLOCK, rng)
    child, expected = make_child(tmp_path, 4 * BLOCK, parent, rng, LOCATORS)
    with diskimage.open_image(child, fmt="vpc", readonly=False) as image:
        image.write(2 * BLOCK + 700, b"\x01")      # block 2 is unallocated in the child
    expected[2 * BLOCK + 700] = 1
    assert read_all(child) == bytes(expected)
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import chain
    with chain.open_driver(child, fmt="vpc") as driver:
        # Only the written sector (the second of the block) is the child's now.
        assert driver.block_status(2 * BLOCK, BLOCK)[:3] == [
            (2 * BLOCK, 512, UNALLOCATED, None), (2 * BLOCK + 512, 512, DATA, driver.block_status(2 * BLOCK + 512, 1)[0].offset),
            (2 * BLOCK + 1024, BLOCK - 1024, UNALLOCATED, None)]
