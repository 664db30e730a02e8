# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""parallels driver against damaged headers: truncation, bad magic/version,
zero or huge clusters, huge BATs, BAT entries past the end of the file, an
unclean header and a bad format extension give clear ImageErrors (never an
unbounded allocation); check agrees with qemu-img check on the damaged ones."""

import struct

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, UnsupportedFeature)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.parallels import ParallelsDriver

# Header field offsets (docs/interop/parallels.txt).
VERSION = 16
TRACKS = 28
BAT_ENTRIES = 32
NB_SECTORS = 36
INUSE = 44
EXT_OFF = 56
BAT = 64


@pytest.fixture(name="image")
def qemu_made_image(tmp_path):
    path = tmp_path / "disk.hds"
    qemu_img("create", "-q", "-f", "parallels", "-o", "cluster_size=64k", path, "1M")
    qemu_io(path, "write -P 0x42 0 64k", "write -P 0x43 192k 64k", fmt="parallels")
    return path


def patch(path, offset, fmt, value):
    with open(str(path), "r+b") as image_file:
        image_file.seek(offset)
        image_file.write(struct.pack(fmt, value))


def read_all(path):
    with diskimage.open_image(str(path), fmt="parallels") as opened:
        return opened.read(0, opened.virtual_size)


@pytest.mark.parametrize("offset,fmt,value,error,message", [
    (0, "<16s", b"WithoutFreeSpacX", FormatError, "not in Parallels format"),
    (VERSION, "<I", 3, UnsupportedFeature, "version 3"),
    (TRACKS, "<I", 0, FormatError, "Zero sectors per track"),
    (TRACKS, "<I", 0x7fffffff, UnsupportedFeature, "Too big cluster"),
    (BAT_ENTRIES, "<I", 0xffffffff, UnsupportedFeature, "Catalog too large"),
    (BAT_ENTRIES, "<I", 1 << 20, CorruptImageError, "past the end of the file"),
    (EXT_OFF, "<Q", 1 << 40, CorruptImageError, "format extension"),
    (EXT_OFF, "<Q", 1, FormatError, "Format Extension magic"),
    (NB_SECTORS, "<Q", 1 << 62, UnsupportedFeature, "too large"),
])
def test_damaged_headers_are_refused(image, offset, fmt, value, error, message):
    patch(image, offset, fmt, value)
    with pytest.raises(error, match=message):
        ParallelsDriver.open(str(image))


@pytest.mark.parametrize("length", [0, 10, 63, 64 + 8])
def test_truncated_files(image, length):
    with open(str(image), "r+b") as image_file:
        image_file.truncate(length)
    with pytest.raises(ImageError):
        read_all(image)


def test_cluster_past_end_of_file(image):
    patch(image, BAT + 4, "<I", 0x10000)      # cluster 1 -> cluster 65536 (4 GiB into the file)
    with pytest.raises(CorruptImageError, match="past the end of the file"):
        read_all(image)
    assert diskimage.check(str(image), fmt="parallels") == qemu_img_json("check", "-f", "parallels", image)
    assert diskimage.check(str(image), fmt="parallels")["corruptions"] == 1


def test_unclean_header_is_a_corruption_for_check(image):
    patch(image, INUSE, "<I", 0x746F6E59)
    ours = diskimage.check(str(image), fmt="parallels")
    assert ours == qemu_img_json("check", "-f", "parallels", image)
    assert ours["corruptions"] == 1
    assert read_all(image)[:65536] == b"\x42" * 65536


def test_fragmented_and_leaked_clusters_counted_as_qemu(image):
    # Swap the two allocated clusters and grow the file: fragmentation and a leak.
    with open(str(image), "r+b") as image_file:
        image_file.seek(BAT)
        table = list(struct.unpack("<16I", image_file.read(64)))
        table[0], table[3] = table[3], table[0]
        image_file.seek(BAT)
        image_file.write(struct.pack("<16I", *table))
        image_file.seek(0, 2)
        image_file.write(bytes(100000))
    ours = diskimage.check(str(image), fmt="parallels")
    assert ours == qemu_img_json("check", "-f", "parallels", image)
    assert ours["leaks"] == 2


def test_virtual_size_beyond_the_bat_reads_zeroes(tmp_path, image):
    patch(image, NB_SECTORS, "<Q", 4096)      # 2 MiB, BAT covers 1 MiB
    data = read_all(image)
    assert len(data) == 2 * 1024 * 1024
    assert data[:65536] == b"\x42" * 65536
    assert data[1024 * 1024:] == bytes(1024 * 1024)
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "parallels", "-O", "raw", image, out)
    assert out.read_bytes() == data


def test_huge_virtual_size_past_the_bat_is_one_run(image):
    patch(image, NB_SECTORS, "<Q", (1 << 54) - 1)     # 8 EiB, BAT covers 1 MiB
    driver = ParallelsDriver.open(str(image))
    try:
        extents = driver.block_status(0, driver.virtual_size)
        assert len(extents) == 4 and extents[-1].start == 256 * 1024 and extents[-1].length == driver.virtual_size - 256 * 1024
        assert driver.read(driver.virtual_size - 4096, 4096) == bytes(4096)
    finally:
        driver.close()
