# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vpc (VHD) driver on hostile input: damaged footers and headers, offsets past
the end of the file, huge tables, overlapping blocks and locators give a clear
ImageError (never another exception, never an unbounded allocation)."""

import os
import random
import struct

import pytest

from qemu_tools import qemu_img, qemu_io
import vhd_building as vhd

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, UnsupportedFeature)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vpc import VpcDriver

M = 1024 * 1024


def qemu_dynamic(tmp_path, size="6M"):
    """A qemu-img-made dynamic disk with two allocated blocks; returns (path, bytes)."""
    path = tmp_path / "disk.vhd"
    qemu_img("create", "-q", "-f", "vpc", path, size)
    qemu_io(path, "write -P 0x61 0 4k", "write -P 0x62 2M 4k", fmt="vpc")
    return path, bytearray(path.read_bytes())


def refresh_checksums(data):
    """Recompute the footer copies' and the dynamic header's checksums after a patch."""
    for offset in (0, len(data) - 512):
        if data[offset:offset + 8] == vhd.COOKIE:
            struct.pack_into(">I", data, offset + 64, vhd.checksum(data[offset:offset + 512], 64))
    header = struct.unpack_from(">Q", data, 16)[0]
    if header + 1024 <= len(data) and data[header:header + 8] == vhd.HEADER_COOKIE:
        struct.pack_into(">I", data, header + 36, vhd.checksum(data[header:header + 1024], 36))
    return data


def open_patched(tmp_path, data, **kwargs):
    path = tmp_path / "patched.vhd"
    path.write_bytes(bytes(data))
    with VpcDriver.open(str(path), **kwargs) as driver:
        return driver.read(0, min(driver.virtual_size, M))


def patch_both_footers(data, offset, fmt, *values):
    struct.pack_into(fmt, data, offset, *values)
    struct.pack_into(fmt, data, len(data) - 512 + offset, *values)


HEADER = 512
# Damaged variants per seed in the random test: VPC_FUZZ_ATTEMPTS in the environment raises it for a
# longer run, never below the minimum (a run that tried nothing would pass having tested nothing).
MIN_FUZZ_ATTEMPTS = 60


def fuzz_attempts(environ):
    wanted = environ.get("VPC_FUZZ_ATTEMPTS", "").strip()
    if not wanted:
        return MIN_FUZZ_ATTEMPTS
    try:
        return max(MIN_FUZZ_ATTEMPTS, int(wanted))
    except ValueError:
        raise ValueError("VPC_FUZZ_ATTEMPTS must be a whole number of attempts, found %r" % wanted)


ATTEMPTS = fuzz_attempts(os.environ)
BAT = 1536


@pytest.mark.parametrize("patch, error, needle", [
    (lambda d: patch_both_footers(d, 28, ">4s", b"vpc "), FormatError, "incorrect checksum"),
    (lambda d: patch_both_footers(d, 60, ">I", 5), UnsupportedFeature, "disk type 5"),
    (lambda d: patch_both_footers(d, 16, ">Q", 1 << 40), CorruptImageError, "past the end of the file"),
    (lambda d: d.__setitem__(slice(HEADER, HEADER + 8), b"cxsparsE"), FormatError, "cookie"),
    (lambda d: struct.pack_into(">I", d, HEADER + 32, 3 * 1024 * 1024), FormatError, "block size"),
    (lambda d: struct.pack_into(">I", d, HEADER + 32, 256), FormatError, "block size"),
    (lambda d: struct.pack_into(">Q", d, HEADER + 16, 1 << 50), CorruptImageError, "past the end of the file"),
    (lambda d: struct.pack_into(">I", d, HEADER + 28, 1), CorruptImageError, "BAT has 1 entries"),
    (lambda d: struct.pack_into(">I", d, BAT, 0x7FFFFFF0), CorruptImageError, "truncated"),
    (lambda d: struct.pack_into(">I", d, BAT, 1), CorruptImageError, "overlaps"),
    (lambda d: struct.pack_into(">I", d, BAT + 4, struct.unpack_from(">I", d, BAT)[0]), CorruptImageError,
     "overlaps"),
    # A 2040+ GiB disk (current size used with the maximum geometry).
    (lambda d: (patch_both_footers(d, 28, ">4s", b"win "), patch_both_footers(d, 48, ">Q", 2041 * 1024 * M)),
     UnsupportedFeature, "2040 GiB"),
])
def test_damaged_dynamic_images(tmp_path, patch, error, needle):
    _path, data = qemu_dynamic(tmp_path)
    patch(data)
    if needle != "incorrect checksum":
        refresh_checksums(data)
    with pytest.raises(error) as caught:
        open_patched(tmp_path, data)
    assert needle in str(caught.value)
    assert "patched.vhd" in str(caught.value)


def test_huge_block_allocation_table_is_capped(tmp_path):
    # 2000 GiB of 512-byte blocks: 4 * 2^32 bytes of BAT would be needed.
    data = bytearray(vhd.sparse_image(4096, 512, {}, b"U" * 16))
    patch_both_footers(data, 48, ">Q", 2000 * 1024 * M)
    struct.pack_into(">I", data, HEADER + 28, 0xFFFFFFFF)
    refresh_checksums(data)
    with pytest.raises(UnsupportedFeature) as caught:
        open_patched(tmp_path, data)
    assert "block allocation table" in str(caught.value)


def test_truncated_files(tmp_path):
    _path, data = qemu_dynamic(tmp_path)
    for length in (0, 100, 511, 1000, 2048, len(data) - 600):
        with pytest.raises(ImageError):
            open_patched(tmp_path, data[:length])
    # Without its final footer the disk is still whole (the copy at offset 0 describes it), as in qemu-img.
    assert open_patched(tmp_path, data[:len(data) - 512])[:4096] == b"\x61" * 4096


def test_not_a_vhd(tmp_path):
    with pytest.raises(FormatError) as caught:
        open_patched(tmp_path, bytearray(b"hello" * 300))
    assert "conectix" in str(caught.value)


def test_parent_locator_past_the_end_of_the_file(tmp_path):
    data = bytearray(vhd.sparse_image(4 * 65536, 65536, {}, b"C" * 16, disk_type=vhd.DIFFERENCING,
                                      parent_id=b"P" * 16, locators=[(b"W2ru", "parent.vhd")]))
    struct.pack_into(">I", data, HEADER + 576 + 8, 1 << 30)       # data length of locator 0
    refresh_checksums(data)
    with pytest.raises(CorruptImageError) as caught:
        open_patched(tmp_path, data)
    assert "parent locator 0 (W2ru)" in str(caught.value)


def test_fixed_disk_larger_than_its_data_is_not_written(tmp_path):
    path = tmp_path / "fixed.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", path, "1M")
    data = bytearray(path.read_bytes())
    struct.pack_into(">Q", data, len(data) - 512 + 48, 64 * M)
    struct.pack_into(">4s", data, len(data) - 512 + 28, b"win ")
    struct.pack_into(">I", data, len(data) - 512 + 64, vhd.checksum(data[-512:], 64))
    path.write_bytes(bytes(data))
    # Read-only, the missing data reads as zeroes (as in qemu-img); writes would hit the footer.
    with diskimage.open_image(str(path), fmt="vpc") as image:
        assert image.virtual_size == 64 * M
        assert image.read(63 * M, 512) == bytes(512)
    with pytest.raises(CorruptImageError):
        VpcDriver.open(str(path), readonly=False)


def test_reads_beyond_the_virtual_size_are_refused(tmp_path):
    path, _data = qemu_dynamic(tmp_path)
    with VpcDriver.open(str(path)) as driver:
        with pytest.raises(ImageError):
            driver.read(driver.virtual_size - 1, 2)
        with pytest.raises(ImageError):
            driver.read(-1, 1)


def test_new_blocks_never_overwrite_a_block_at_the_end_of_a_file_without_final_footer(tmp_path):
    # The BAT has an entry past the virtual size (not read) whose block ends the file, with no footer after it.
    block = 65536
    hidden = b"\x5c" * block
    data = vhd.sparse_image(block, block, {1: (b"\xff" * 512, hidden)}, b"H" * 16, max_table_entries=2)
    data = data[:len(data) - 512]
    path = tmp_path / "nofooter.vhd"
    path.write_bytes(data)
    with VpcDriver.open(str(path), readonly=False) as driver:
        driver.write(0, b"\x63" * 4096)
    result = path.read_bytes()
    assert result[len(data) - block:len(data)] == hidden
    with VpcDriver.open(str(path)) as driver:
        assert driver.read(0, block) == b"\x63" * 4096 + bytes(block - 4096)
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "vpc", "-O", "raw", path, out)
    assert out.read_bytes() == b"\x63" * 4096 + bytes(block - 4096)


def test_damaged_footer_copy_falls_back_to_the_footer_at_the_end(tmp_path):
    _path, data = qemu_dynamic(tmp_path)
    data[28:32] = b"vpc "           # the copy at offset 0 no longer matches its checksum
    assert open_patched(tmp_path, data)[:4096] == b"\x61" * 4096
    data[len(data) - 512 + 28:len(data) - 512 + 32] = b"vpc "
    with pytest.raises(FormatError) as caught:
        open_patched(tmp_path, data)
    assert "incorrect checksum" in str(caught.value)


def test_declared_table_larger_than_the_file_does_not_move_new_blocks_away(tmp_path):
    path, data = qemu_dynamic(tmp_path)
    struct.pack_into(">I", data, HEADER + 28, 0x3FFFFFFF)      # max table entries: a 4 GiB BAT
    refresh_checksums(data)
    path.write_bytes(bytes(data))
    with VpcDriver.open(str(path), readonly=False) as driver:
        driver.write(4 * M, b"\x64" * 512)
    assert path.stat().st_size == len(data) + 512 + 2 * M


@pytest.mark.parametrize("setting, attempts", [(None, 60), ("0", 60), ("-5", 60), ("", 60), ("500", 500)])
def test_the_environment_raises_the_fuzz_attempts_but_never_lowers_them(setting, attempts):
    assert fuzz_attempts({} if setting is None else {"VPC_FUZZ_ATTEMPTS": setting}) == attempts


def test_a_fuzz_setting_that_is_not_a_number_is_refused():
    with pytest.raises(ValueError, match="VPC_FUZZ_ATTEMPTS must be a whole number of attempts, found 'many'"):
        fuzz_attempts({"VPC_FUZZ_ATTEMPTS": "many"})


@pytest.mark.parametrize("seed", range(4))
def test_random_metadata_damage_gives_image_errors_only(tmp_path, seed):
    chain_parent = vhd.sparse_image(4 * 65536, 65536, {0: (b"\xff" * 512, b"p" * 65536)}, b"P" * 16)
    (tmp_path / "parent.vhd").write_bytes(chain_parent)
    pristine = vhd.sparse_image(4 * 65536, 65536, {1: (b"\x0f" * 512, b"c" * 65536)}, b"C" * 16,
                                disk_type=vhd.DIFFERENCING, parent_id=b"P" * 16,
                                locators=[(b"W2ru", ".\\parent.vhd"), (b"W2ku", "C:\\parent.vhd")])
    rng = random.Random(seed)
    attempts = 0
    for _attempt in range(ATTEMPTS):
        attempts += 1
        data = bytearray(pristine)
        for _flip in range(rng.randrange(1, 4)):
            # Damage the footers, the header, the BAT or a locator, then fix checksums half of the time.
            where = rng.choice([rng.randrange(0, 2048), rng.randrange(len(data) - 512, len(data))])
            data[where] = rng.randrange(256)
        if rng.random() < 0.5:
            refresh_checksums(data)
        path = tmp_path / "child.vhd"
        path.write_bytes(bytes(data))
        try:
            with diskimage.open_image(str(path), fmt="vpc") as image:
                size = min(image.virtual_size, 4 * M)
                image.read(0, size)
        except ImageError:
            pass
    assert attempts >= MIN_FUZZ_ATTEMPTS  # an environment setting never makes the run try less
