# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX log replay with log entries built byte by byte from the specification over a qemu-made
image: data and zero descriptors, a BAT update, sequence order, stale and corrupt entries.
qemu-img check -r all replays the same log: its result is the oracle for the writable replay."""

import shutil
import struct
import uuid

import pytest

import qemu_tools
import vhdx_editing
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.chain import open_driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import CorruptImageError, UnsupportedFeature

MIB = 1024 * 1024
SIZE = 4 * MIB
SECTOR = 4096
FIRST_PAYLOAD = bytes(range(256)) * 16
SECOND_PAYLOAD = bytes(range(255, -1, -1)) * 16


def block_offset(path, block):
    return vhdx_editing.bat_entry(path, block) & ~0xFFFFF


def dirty_image(tmp_path, corrupt=False, stale=True, descriptors_extra=(), tail=0):
    """A 4 MiB image with 1 MiB blocks: blocks 0 and 1 hold 0x11, block 2 is a zero block, and a
    0x99 block appended past the BAT's knowledge.  The log: seq 5 (a data sector in block 0, a
    zero run at the start of block 1, the BAT sector now naming the 0x99 block as block 2), seq 6
    (block 0's sector again), and an older entry seq 2 later in the log that must not be replayed.
    Returns (image, expected guest view after replay, guest view before replay)."""
    image = tmp_path / "dirty.vhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", image, SIZE)
    qemu_tools.qemu_io(image, "write -P 0x11 0 2M", fmt="vhdx")
    before = bytearray(b"\x11" * (2 * MIB) + bytes(2 * MIB))
    block0, block1 = block_offset(image, 0), block_offset(image, 1)
    extra = vhdx_editing.append_aligned(image, b"\x99" * MIB)
    bat_offset = vhdx_editing.bat_offset(image)
    bat_sector = bytearray(vhdx_editing.read_at(image, bat_offset, SECTOR))
    struct.pack_into("<Q", bat_sector, 16, extra | 6)
    file_size = (tmp_path / "dirty.vhdx").stat().st_size
    log_guid = uuid.uuid4()
    first = vhdx_editing.log_entry(log_guid, 5, [
        ("data", block0 + 8192, FIRST_PAYLOAD),
        ("zero", block1, 8192),
        ("data", bat_offset, bytes(bat_sector)),
    ] + list(descriptors_extra), tail=tail, flushed_file_offset=file_size, last_file_offset=file_size)
    second = vhdx_editing.log_entry(log_guid, 6, [("data", block0 + 8192 + SECTOR, SECOND_PAYLOAD),
                                                  ("data", block0 + 8192, SECOND_PAYLOAD)],
                                    tail=tail, flushed_file_offset=file_size, last_file_offset=file_size)
    if corrupt:
        second = second[:5000] + bytes([second[5000] ^ 1]) + second[5001:]
    log_offset, _log_length = vhdx_editing.log_region(image)
    vhdx_editing.write_at(image, log_offset, first + second)
    if stale:
        junk = vhdx_editing.log_entry(log_guid, 2, [("data", block0, b"\xdd" * SECTOR)], tail=0,
                                      flushed_file_offset=file_size, last_file_offset=file_size)
        vhdx_editing.write_at(image, log_offset + 64 * SECTOR, junk)
    vhdx_editing.set_log_guid(image, log_guid)
    expected = bytearray(before)
    expected[8192:8192 + SECTOR] = FIRST_PAYLOAD
    expected[MIB:MIB + 8192] = bytes(8192)
    expected[2 * MIB:3 * MIB] = b"\x99" * MIB
    if not corrupt:
        expected[8192:8192 + SECTOR] = SECOND_PAYLOAD
        expected[8192 + SECTOR:8192 + 2 * SECTOR] = SECOND_PAYLOAD
    return image, bytes(expected), bytes(before)


def read_all(path):
    with diskimage.open_image(str(path)) as image:
        return image.read(0, image.virtual_size)


@pytest.mark.parametrize("corrupt", [False, True])
def test_read_only_open_replays_in_memory(corrupt, tmp_path):
    image, expected, _before = dirty_image(tmp_path, corrupt=corrupt)
    file_before = qemu_tools.file_digest(image)
    assert read_all(image) == expected
    assert qemu_tools.file_digest(image) == file_before
    with open_driver(str(image)) as driver:
        assert driver.overlay is not None


@pytest.mark.parametrize("corrupt", [False, True])
def test_writable_replay_matches_qemu_img_check_repair(corrupt, tmp_path):
    image, expected, _before = dirty_image(tmp_path, corrupt=corrupt)
    theirs = tmp_path / "theirs.vhdx"
    shutil.copyfile(str(image), str(theirs))
    qemu_result = qemu_tools.qemu_img_json("check", "-r", "all", theirs)
    ours = diskimage.check(str(image), repair="all")
    assert ours["corruptions-fixed"] == qemu_result["corruptions-fixed"] == 1
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", raw, theirs)
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", raw, image)
    assert qemu_tools.qemu_img_json("check", image)["check-errors"] == 0
    assert vhdx_editing.current_header(image)[1][48:64] == bytes(16)
    assert read_all(image) == expected


def test_writes_after_a_replay(tmp_path):
    image, expected, _before = dirty_image(tmp_path)
    with diskimage.open_image(str(image), readonly=False) as opened:
        opened.write(3 * MIB, b"\x44" * 1000)
    expected = expected[:3 * MIB] + b"\x44" * 1000 + expected[3 * MIB + 1000:]
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", raw, image)
    assert qemu_tools.qemu_img_json("check", image)["check-errors"] == 0


def test_log_guid_with_an_empty_log_is_not_replayed(tmp_path):
    image = tmp_path / "clean.vhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", "block_size=1M", image, SIZE)
    qemu_tools.qemu_io(image, "write -P 0x11 0 1M", fmt="vhdx")
    vhdx_editing.set_log_guid(image, uuid.uuid4())
    assert read_all(image) == b"\x11" * MIB + bytes(3 * MIB)
    with diskimage.open_image(str(image), readonly=False) as opened:
        opened.write(MIB, b"\x22" * 512)
    assert vhdx_editing.current_header(image)[1][48:64] == bytes(16)
    qemu_tools.qemu_io(image, "read -P 0x22 1M 512", "read -P 0x11 0 1M", fmt="vhdx")


def test_entries_of_another_log_guid_are_ignored(tmp_path):
    image, _expected, before = dirty_image(tmp_path, stale=False)
    vhdx_editing.set_log_guid(image, uuid.uuid4())
    assert read_all(image) == before


def test_sequence_whose_tail_is_outside_it_is_not_replayed(tmp_path):
    """Spec 2.3.3: the head entry's tail must be an entry of the sequence (qemu does not check)."""
    image, _expected, before = dirty_image(tmp_path, stale=False, tail=100 * SECTOR)
    assert read_all(image) == before


def test_sequence_is_replayed_from_the_heads_tail(tmp_path):
    """Entry 5's tail names itself; entry 6's tail names entry 6: only entry 6 is replayed."""
    image, _expected, before = dirty_image(tmp_path, stale=False, tail=3 * SECTOR)
    expected = bytearray(before)
    expected[8192:8192 + 2 * SECTOR] = SECOND_PAYLOAD * 2
    assert read_all(image) == bytes(expected)


def test_descriptor_past_the_end_of_the_file_is_refused(tmp_path):
    image, _expected, _before = dirty_image(tmp_path, descriptors_extra=[("zero", 1 << 40, 8192)])
    with pytest.raises(CorruptImageError) as raised:
        read_all(image)
    assert "log descriptor" in str(raised.value)


def test_flushed_file_offset_past_the_end_is_refused(tmp_path):
    image, _expected, _before = dirty_image(tmp_path, stale=False)
    log_offset = vhdx_editing.log_region(image)[0]
    entry = bytearray(vhdx_editing.read_at(image, log_offset, 2 * SECTOR))
    struct.pack_into("<Q", entry, 48, 1 << 40)
    # Re-seal the first entry (header + descriptors sector, then its data sectors).
    length = struct.unpack_from("<I", entry, 8)[0]
    whole = bytearray(vhdx_editing.read_at(image, log_offset, length))
    whole[48:56] = entry[48:56]
    vhdx_editing.write_at(image, log_offset, vhdx_editing.seal(whole))
    with pytest.raises(CorruptImageError) as raised:
        read_all(image)
    assert "FlushedFileOffset" in str(raised.value)


def test_log_checksum_work_is_bounded(tmp_path):
    """Every log sector a header claiming the whole log: refused after twice the log is checksummed."""
    image = tmp_path / "overlap.vhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", image, SIZE)
    log_guid = uuid.uuid4()
    log_offset, log_length = vhdx_editing.log_region(image)
    header = struct.pack("<4sIIIQII16sQQ", b"loge", 0, log_length, 0, 1, 0, 0, log_guid.bytes_le, 0, 0)
    vhdx_editing.write_at(image, log_offset, header.ljust(SECTOR, b"\0") * (log_length // SECTOR))
    vhdx_editing.set_log_guid(image, log_guid)
    with pytest.raises(UnsupportedFeature) as raised:
        read_all(image)
    assert "overlap" in str(raised.value)


def test_huge_dirty_log_is_refused(tmp_path):
    image = tmp_path / "huge-log.vhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", "log_size=32M", image, SIZE)
    vhdx_editing.set_log_guid(image, uuid.uuid4())
    with pytest.raises(UnsupportedFeature) as raised:
        read_all(image)
    assert "log" in str(raised.value)
