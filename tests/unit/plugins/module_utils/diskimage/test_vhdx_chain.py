# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Differencing VHDX chains.  qemu-img cannot create them: the child is a qemu-made dynamic image
turned into a differencing one byte by byte (has_parent, parent locator, BAT states, sector bitmap),
and the expected guest view is modelled in the test from the parent's raw content."""

import uuid

import pytest

import qemu_tools
import vhdx_editing
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.chain import open_driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageNotFoundError, PolicyError, UnsupportedFeature, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, UNALLOCATED, ZERO

MIB = 1024 * 1024
SECTOR = 512
SIZE = 8 * MIB
CHUNK_RATIO = (1 << 23) * SECTOR // MIB   # payload blocks per sector bitmap block, 1 MiB blocks
# Sectors of block 4 held by the child (bits set in the sector bitmap).
PARTIAL_SECTORS = [(0, 8), (100, 101), (777, 1000), (2040, 2048)]


def make_parent(tmp_path, name="base.vhdx"):
    parent = tmp_path / name
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", parent, SIZE)
    qemu_tools.qemu_io(parent, "write -P 0x11 0 8M", "write -P 0x12 3M 1M", "write -P 0x13 4194000 3000",
                       fmt="vhdx")
    raw = tmp_path / (name + ".raw")
    qemu_tools.qemu_img("convert", "-O", "raw", parent, raw)
    with open(str(raw), "rb") as content:
        return parent, bytearray(content.read())


def make_child(tmp_path, parent, relative_path=".\\base.vhdx", linkage=None, extra_entries=()):
    """The child and the model of its guest view (parent content overlaid with the child's)."""
    child = tmp_path / "child.avhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M,block_state_zero=off", child, SIZE)
    linkage = linkage or vhdx_editing.data_write_guid(parent)
    vhdx_editing.make_differencing(child, linkage, relative_path, extra_entries)
    # Block 1: fully present.
    offset = vhdx_editing.append_aligned(child, b"\xc1" * MIB)
    vhdx_editing.set_bat_entry(child, 1, offset, 6)
    # Block 2: zero (hides the parent); blocks 6 and 7: undefined and unmapped, read as zeroes too.
    vhdx_editing.set_bat_entry(child, 2, 0, 2)
    vhdx_editing.set_bat_entry(child, 6, 0, 1)
    vhdx_editing.set_bat_entry(child, 7, 0, 3)
    # Block 4: partially present, the set sectors from the child.
    block4 = bytes(range(256)) * (MIB // 256)
    offset = vhdx_editing.append_aligned(child, block4)
    vhdx_editing.set_bat_entry(child, 4, offset, 7)
    # Block 5: partially present with no sector set (all from the parent).
    offset = vhdx_editing.append_aligned(child, b"\xee" * MIB)
    vhdx_editing.set_bat_entry(child, 5, offset, 7)
    # The chunk's sector bitmap: bit i of byte j is sector 8j+i of the chunk.
    bitmap = bytearray(MIB)
    sectors_per_block = MIB // SECTOR
    for first, last in PARTIAL_SECTORS:
        for sector in range(4 * sectors_per_block + first, 4 * sectors_per_block + last):
            bitmap[sector // 8] |= 1 << (sector % 8)
    offset = vhdx_editing.append_aligned(child, bytes(bitmap))
    vhdx_editing.set_bat_entry(child, CHUNK_RATIO, offset, 6)
    return child, block4


def model(parent_content, block4):
    view = bytearray(parent_content)
    view[1 * MIB:2 * MIB] = b"\xc1" * MIB
    view[2 * MIB:3 * MIB] = bytes(MIB)
    view[6 * MIB:8 * MIB] = bytes(2 * MIB)
    for first, last in PARTIAL_SECTORS:
        view[4 * MIB + first * SECTOR:4 * MIB + last * SECTOR] = block4[first * SECTOR:last * SECTOR]
    return bytes(view)


@pytest.fixture
def chain(tmp_path):
    parent, content = make_parent(tmp_path)
    child, block4 = make_child(tmp_path, parent)
    return parent, child, model(content, block4)


def test_child_reads_its_blocks_over_the_parent(chain, tmp_path):
    parent, child, expected = chain
    with diskimage.open_image(str(child)) as image:
        assert image.virtual_size == SIZE
        assert image.read(0, SIZE) == expected
        # Unaligned reads across the partial block's runs.
        for offset, length in ((4 * MIB + 7 * SECTOR + 3, 2000), (4 * MIB + 99 * SECTOR, 3 * SECTOR), (3 * MIB - 5, 10)):
            assert image.read(offset, length) == expected[offset:offset + length]
    out = tmp_path / "flat.raw"
    diskimage.convert(str(child), str(out), "raw")
    with open(str(out), "rb") as flat:
        assert flat.read() == expected
    qcow2 = tmp_path / "flat.qcow2"
    diskimage.convert(str(child), str(qcow2), "qcow2")
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "qcow2", out, qcow2)
    info = diskimage.info(str(child))
    assert info["backing-filename"] == "base.vhdx"
    assert info["cluster-size"] == MIB


def test_block_status_of_the_child_layer(chain):
    _parent, child, _expected = chain
    with open_driver(str(child)) as driver:
        extents = driver.block_status(0, SIZE)
    kinds = [(extent.start, extent.length, extent.kind) for extent in extents]
    assert (0, MIB, UNALLOCATED) == kinds[0]
    assert (MIB, MIB, DATA) == kinds[1]
    assert (2 * MIB, MIB, ZERO) == kinds[2]
    block4 = [item for item in kinds if 4 * MIB <= item[0] < 5 * MIB]
    assert [(start - 4 * MIB) // SECTOR for start, _length, kind in block4 if kind == DATA] == \
        [first for first, _last in PARTIAL_SECTORS]
    assert sum(length for _start, length, _kind in kinds) == SIZE


def test_chunk_without_sector_bitmap(tmp_path):
    """No partially present block: the chunk's sector bitmap entry stays NOT_PRESENT."""
    parent, content = make_parent(tmp_path)
    child, _block4 = make_child(tmp_path, parent)
    for index in (4, 5, CHUNK_RATIO):
        vhdx_editing.set_bat_entry(child, index, 0, 0)
    expected = bytearray(content)
    expected[1 * MIB:2 * MIB] = b"\xc1" * MIB
    expected[2 * MIB:3 * MIB] = bytes(MIB)
    expected[6 * MIB:8 * MIB] = bytes(2 * MIB)
    with diskimage.open_image(str(child)) as image:
        assert image.read(0, SIZE) == bytes(expected)


def test_partially_present_block_needs_its_sector_bitmap(tmp_path):
    parent, _content = make_parent(tmp_path)
    child, _block4 = make_child(tmp_path, parent)
    vhdx_editing.set_bat_entry(child, CHUNK_RATIO, 0, 0)
    with diskimage.open_image(str(child)) as image:
        assert image.read(0, 4 * MIB)
        with pytest.raises(CorruptImageError) as raised:
            image.read(4 * MIB, 4096)
    assert "sector bitmap" in str(raised.value)


def test_parent_linkage_must_match_the_parents_data_write_guid(tmp_path):
    parent, _content = make_parent(tmp_path)
    make_child(tmp_path, parent, linkage=uuid.uuid4())
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(tmp_path / "child.avhdx"))
    assert "DataWriteGuid" in str(raised.value)
    assert str(vhdx_editing.data_write_guid(parent)) in str(raised.value)


def test_parent_linkage2_is_accepted(tmp_path):
    parent, content = make_parent(tmp_path)
    child, block4 = make_child(tmp_path, parent, linkage=uuid.uuid4(), extra_entries=[
        ("parent_linkage2", "{%s}" % vhdx_editing.data_write_guid(parent))])
    with diskimage.open_image(str(child)) as image:
        assert image.read(0, SIZE) == model(content, block4)


def test_parent_with_another_logical_sector_size_is_refused(chain):
    parent, child, _expected = chain
    logical = vhdx_editing.metadata_item_offset(parent, uuid.UUID("8141bf1d-a96f-4709-ba47-f233a8faab5f"))
    vhdx_editing.write_at(parent, logical, b"\x00\x10\x00\x00")
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(child))
    assert "logical sectors" in str(raised.value)


def test_a_parent_written_after_the_child_was_made_is_refused(chain):
    parent, child, _expected = chain
    qemu_tools.qemu_io(parent, "write -P 0x99 0 512", fmt="vhdx")
    with pytest.raises(FormatError):
        diskimage.open_image(str(child))


@pytest.mark.parametrize("relative_path, error", [
    ("/etc/base.vhdx", PolicyError),
    ("..\\base.vhdx", PolicyError),
    (".\\..\\outside\\base.vhdx", PolicyError),
    ("C:\\Hyper-V\\base.vhdx", PolicyError),
    ("missing.vhdx", ImageNotFoundError),
])
def test_parent_paths_obey_the_policy(relative_path, error, tmp_path):
    parent, _content = make_parent(tmp_path)
    make_child(tmp_path, parent, relative_path=relative_path)
    with pytest.raises(error) as raised:
        diskimage.open_image(str(tmp_path / "child.avhdx"))
    assert "relative_path" in str(raised.value)


def test_parent_in_a_subdirectory_and_in_allow_dirs(tmp_path):
    (tmp_path / "parents").mkdir()
    parent, content = make_parent(tmp_path / "parents")
    child, block4 = make_child(tmp_path, parent, relative_path=".\\parents\\base.vhdx")
    with diskimage.open_image(str(child)) as image:
        assert image.read(0, SIZE) == model(content, block4)
    # An absolute name is followed inside the child's directory (below it too, like a relative name) ...
    child, block4 = make_child(tmp_path, parent, relative_path=str(parent))
    with diskimage.open_image(str(child)) as image:
        assert image.read(0, SIZE) == model(content, block4)
    # ... and elsewhere only inside allow_dirs.
    (tmp_path / "vm").mkdir()
    child, block4 = make_child(tmp_path / "vm", parent, relative_path=str(parent))
    with pytest.raises(PolicyError):
        diskimage.open_image(str(child))
    driver = open_driver(str(child), allow_dirs=[str(tmp_path / "parents")])
    try:
        assert driver.read(0, SIZE) == model(content, block4)
    finally:
        driver.close()


def test_locator_without_relative_path_or_of_another_type(tmp_path):
    parent, _content = make_parent(tmp_path)
    make_child(tmp_path, parent, relative_path=None,
               extra_entries=[("absolute_win32_path", "C:\\Hyper-V\\base.vhdx")])
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(tmp_path / "child.avhdx"))
    assert "relative_path" in str(raised.value)
    child = tmp_path / "other.vhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", child, SIZE)
    parameters = vhdx_editing.metadata_item_offset(child, vhdx_editing.FILE_PARAMETERS_GUID)
    vhdx_editing.write_at(child, parameters + 4, b"\x02")
    vhdx_editing.add_metadata_item(child, vhdx_editing.PARENT_LOCATOR_GUID, vhdx_editing.parent_locator(
        [("relative_path", "base.vhdx")], locator_type=uuid.uuid4()))
    with pytest.raises(UnsupportedFeature):
        diskimage.open_image(str(child))


def test_differencing_images_are_not_written(chain):
    _parent, child, _expected = chain
    with diskimage.open_image(str(child), readonly=False) as image:
        with pytest.raises(UnsupportedOperation):
            image.write(0, b"x" * 512)
