# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile VHDX input: bad signatures and CRC-32C checksums, regions and metadata items out of
place, huge or misplaced BATs, invalid states, truncation, random corruption.  Every failure is
a clear ImageError, never another exception and never an unbounded allocation."""

import os
import random
import struct
import uuid

import pytest

import qemu_tools
import vhdx_editing
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, UnsupportedFeature)

MIB = 1024 * 1024
SIZE = 6 * MIB


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.vhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", path, SIZE)
    qemu_tools.qemu_io(path, "write -P 0x11 0 1536k", "write -P 0x22 5M 4k", fmt="vhdx")
    return path


def read_all(path):
    with diskimage.open_image(str(path)) as opened:
        return opened.read(0, opened.virtual_size)


def expected_content():
    content = bytearray(SIZE)
    content[0:1536 * 1024] = b"\x11" * (1536 * 1024)
    content[5 * MIB:5 * MIB + 4096] = b"\x22" * 4096
    return bytes(content)


def region_table(path):
    return bytearray(vhdx_editing.read_at(path, vhdx_editing.REGION_TABLE_OFFSETS[0], 64 * 1024))


def set_region(path, index, guid=None, offset=None, length=None, flags=None):
    table = region_table(path)
    entry = list(struct.unpack_from("<16sQII", table, 16 + 32 * index))
    for position, value in ((0, guid.bytes_le if guid else None), (1, offset), (2, length), (3, flags)):
        if value is not None:
            entry[position] = value
    struct.pack_into("<16sQII", table, 16 + 32 * index, *entry)
    vhdx_editing.set_region_tables(path, table)


def test_the_fixture_reads_correctly(image):
    assert read_all(image) == expected_content()


def test_not_a_vhdx_and_too_short(tmp_path):
    other = tmp_path / "other.vhdx"
    other.write_bytes(b"vhdxfilX" + bytes(2 * MIB))
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(other), fmt="vhdx")
    assert "vhdxfile" in str(raised.value)
    short = tmp_path / "short.vhdx"
    short.write_bytes(b"vhdxfile" + bytes(4000))
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(short))
    assert "header section" in str(raised.value)


def test_one_bad_header_falls_back_to_the_other(image):
    current_offset = vhdx_editing.current_header(image)[0]
    vhdx_editing.write_at(image, current_offset + 200, b"\x01")
    assert read_all(image) == expected_content()
    other = [offset for offset in vhdx_editing.HEADER_OFFSETS if offset != current_offset][0]
    vhdx_editing.write_at(image, other + 4000, b"\x01")
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(image))
    assert "CRC-32C" in str(raised.value)


def test_headers_with_equal_sequence_numbers_must_be_identical(image):
    current_offset, raw = vhdx_editing.current_header(image)
    other = [offset for offset in vhdx_editing.HEADER_OFFSETS if offset != current_offset][0]
    twin = bytearray(raw)
    twin[16:32] = uuid.uuid4().bytes_le
    vhdx_editing.write_at(image, other, vhdx_editing.seal(twin))
    with pytest.raises(CorruptImageError):
        diskimage.open_image(str(image))
    # Identical twins (as Disk2vhd writes them) are fine.
    vhdx_editing.write_at(image, other, raw)
    assert read_all(image) == expected_content()


def test_unsupported_log_version(image):
    vhdx_editing.set_header_field(image, 64, struct.pack("<H", 1))
    with pytest.raises(UnsupportedFeature):
        diskimage.open_image(str(image))


def test_region_tables(image):
    # A bad first copy: the second is used.
    vhdx_editing.write_at(image, vhdx_editing.REGION_TABLE_OFFSETS[0] + 100, b"\x01")
    assert read_all(image) == expected_content()
    vhdx_editing.write_at(image, vhdx_editing.REGION_TABLE_OFFSETS[1] + 100, b"\x01")
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(image))
    assert "region table" in str(raised.value)


def test_region_table_entry_count_is_capped(image):
    table = region_table(image)
    struct.pack_into("<I", table, 8, 100000)
    vhdx_editing.set_region_tables(image, table)
    with pytest.raises(FormatError):
        diskimage.open_image(str(image))


@pytest.mark.parametrize("change, error", [
    ({"offset": 1 << 40}, CorruptImageError),           # past the end of the file
    ({"offset": 0}, CorruptImageError),                 # over the header section
    ({"offset": 1 * MIB}, CorruptImageError),           # over the log
    ({"length": 2 * MIB}, CorruptImageError),           # over the metadata region
    ({"offset": 2 * MIB + 4096}, CorruptImageError),    # not 1 MiB aligned
    ({"guid": uuid.uuid4(), "flags": 1}, UnsupportedFeature),   # unknown required region
    ({"guid": uuid.uuid4(), "flags": 0}, FormatError),  # optional unknown region: the BAT is then missing
])
def test_bad_bat_region_entries(image, change, error):
    regions = vhdx_editing.regions(image)
    assert regions[vhdx_editing.BAT_GUID][0] == 2 * MIB
    set_region(image, 0, **change)
    with pytest.raises(error):
        diskimage.open_image(str(image))


def metadata_entry(path, guid):
    return vhdx_editing.metadata_items(path)[guid][3]


@pytest.mark.parametrize("guid, offset, length, flags, error", [
    (vhdx_editing.FILE_PARAMETERS_GUID, 2 * MIB, 8, 4, CorruptImageError),      # outside the region
    (vhdx_editing.FILE_PARAMETERS_GUID, 100, 8, 4, CorruptImageError),           # inside the table
    (vhdx_editing.VIRTUAL_DISK_SIZE_GUID, 65536 + 8, 4, 6, CorruptImageError),   # too short
    (uuid.uuid4(), 65536, 8, 4, UnsupportedFeature),                              # unknown and required
])
def test_bad_metadata_entries(image, guid, offset, length, flags, error):
    entry = metadata_entry(image, vhdx_editing.FILE_PARAMETERS_GUID if guid not in (
        vhdx_editing.FILE_PARAMETERS_GUID, vhdx_editing.VIRTUAL_DISK_SIZE_GUID) else guid)
    vhdx_editing.write_at(image, entry, struct.pack("<16sIII", guid.bytes_le, offset, length, flags))
    with pytest.raises(error):
        diskimage.open_image(str(image))


def test_missing_required_item_and_bad_signature(image):
    entry = metadata_entry(image, vhdx_editing.VIRTUAL_DISK_SIZE_GUID)
    # An optional item of unknown id in its place: ignored, so the required size item is missing.
    vhdx_editing.write_at(image, entry, struct.pack("<16sIII", uuid.uuid4().bytes_le, 65536 + 8, 8, 0))
    with pytest.raises(CorruptImageError) as raised:
        diskimage.open_image(str(image))
    assert "virtual disk size" in str(raised.value)
    base = vhdx_editing.regions(image)[vhdx_editing.METADATA_GUID][0]
    vhdx_editing.write_at(image, base, b"metadatX")
    with pytest.raises(FormatError):
        diskimage.open_image(str(image))


@pytest.mark.parametrize("item, value", [
    (vhdx_editing.FILE_PARAMETERS_GUID, struct.pack("<II", 3 * MIB, 0)),
    (vhdx_editing.FILE_PARAMETERS_GUID, struct.pack("<II", 512 * MIB, 0)),
    (vhdx_editing.FILE_PARAMETERS_GUID, struct.pack("<II", MIB, 2)),          # has_parent without a locator
    (vhdx_editing.VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", SIZE + 100)),      # not whole sectors
    (vhdx_editing.VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", 1 << 60)),         # beyond 64 TiB
    (vhdx_editing.VIRTUAL_DISK_SIZE_GUID, struct.pack("<Q", 1 << 40)),         # more blocks than the BAT holds
    (uuid.UUID("8141bf1d-a96f-4709-ba47-f233a8faab5f"), struct.pack("<I", 1024)),
])
def test_bad_metadata_values(image, item, value):
    vhdx_editing.write_at(image, vhdx_editing.metadata_item_offset(image, item), value)
    with pytest.raises(CorruptImageError):
        diskimage.open_image(str(image))


def test_huge_bat_is_capped(image):
    """A 60 TiB disk with 1 MiB blocks needs a 480 MiB BAT: refused before reading it."""
    vhdx_editing.write_at(image, vhdx_editing.metadata_item_offset(image, vhdx_editing.VIRTUAL_DISK_SIZE_GUID),
                          struct.pack("<Q", 60 << 40))
    set_region(image, 0, offset=16 * MIB, length=600 * MIB)
    os.truncate(str(image), 700 * MIB)
    with pytest.raises(UnsupportedFeature) as raised:
        diskimage.open_image(str(image))
    assert "BAT" in str(raised.value)


def test_block_past_the_end_of_the_file(image):
    vhdx_editing.set_bat_entry(image, 1, 100 * MIB, 6)
    with diskimage.open_image(str(image)) as opened:
        assert opened.read(0, MIB) == b"\x11" * MIB
        with pytest.raises(CorruptImageError) as raised:
            opened.read(MIB, 4096)
    assert "past the end of the file" in str(raised.value)
    ours = diskimage.check(str(image))
    theirs = qemu_tools.qemu_img_json("check", image)
    assert ours == dict(theirs, filename=str(image))


@pytest.mark.parametrize("offset, state", [
    (2 * MIB, 6),      # the BAT region
    (3 * MIB, 6),      # the metadata region
    (1 * MIB, 6),      # the log
    (0, 6),            # the header section
    (8 * MIB, 4),      # invalid state
    (8 * MIB, 7),      # partially present without a parent
])
def test_bad_bat_entries(image, offset, state):
    vhdx_editing.set_bat_entry(image, 1, offset, state)
    with pytest.raises(CorruptImageError):
        diskimage.open_image(str(image))


def test_sector_bitmap_entry_in_a_disk_without_parent(image):
    # Chunk ratio 4096 with 1 MiB blocks: entry 4096 would be the first sector bitmap; the 6 MiB
    # disk's BAT has only 6 entries, so put a bad state on a payload entry of a huge disk instead.
    vhdx_editing.write_at(image, vhdx_editing.metadata_item_offset(image, vhdx_editing.VIRTUAL_DISK_SIZE_GUID),
                          struct.pack("<Q", 4097 * MIB))
    vhdx_editing.set_bat_entry(image, 4096, 0, 2)
    with pytest.raises(CorruptImageError) as raised:
        diskimage.open_image(str(image))
    assert "sector bitmap" in str(raised.value)


@pytest.mark.parametrize("size", [2 * MIB, 3 * MIB + 1000, 9 * MIB])
def test_truncated_files(image, size):
    os.truncate(str(image), size)
    with pytest.raises(ImageError):
        read_all(image)


def test_random_corruption_of_metadata_and_bat(image):
    rng = random.Random(7)
    metadata = vhdx_editing.regions(image)[vhdx_editing.METADATA_GUID][0]
    areas = [(2 * MIB, 2 * MIB + 64), (metadata, metadata + 256), (metadata + 65536, metadata + 65536 + 64)]
    for attempt in range(40):
        changes = []
        for flip in range(rng.randint(1, 4)):
            low, high = areas[(attempt + flip) % len(areas)]
            offset = rng.randrange(low, high)
            changes.append((offset, vhdx_editing.read_at(image, offset, 1)))
            vhdx_editing.write_at(image, offset, bytes([rng.randrange(256)]))
        try:
            with diskimage.open_image(str(image)) as opened:
                # A corrupt size may be huge: read what the test image can hold.
                opened.read(0, min(opened.virtual_size, 8 * MIB))
        except ImageError:
            pass
        for offset, original in reversed(changes):
            vhdx_editing.write_at(image, offset, original)
    assert read_all(image) == expected_content()
