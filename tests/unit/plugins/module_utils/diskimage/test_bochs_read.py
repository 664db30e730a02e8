# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""bochs driver (read-only): the native sample and images built byte by byte
from the redolog layout (version 1 and 2 headers, extents stored out of order,
sector bitmaps with holes) read as an independent model says and as
``qemu-img convert -O raw`` reads them; info and map agree with qemu-img;
convert to qcow2 compares equal; damaged headers give clear errors."""

import bz2
import hashlib
import os
import random
import struct

import pytest

from qemu_tools import qemu_img, qemu_img_json, raw_digest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, UnsupportedFeature, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.bochs import BochsDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe_format

# The sample is shared with test_probe.py (probe_samples/SOURCES.md: origin, licence, digest).
SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_samples", "empty.bochs.bz2")
SAMPLE_RAW_SHA256 = "85e614bc2ef17bec493b849dbeea34687ba52d7b1fedc4e5fc3729b0fb059aad"
SECTOR = 512


def build_bochs(path, disk_size, extent_size, bitmap_size, version=2, seed=1, header_size=512, fill=0.5):
    """A growing redolog image and the guest content it describes (built from the layout, not the reader)."""
    rng = random.Random(seed)
    sectors_per_extent = extent_size // SECTOR
    extents = -(-disk_size // extent_size)
    catalog = [0xffffffff] * extents
    allocated = [index for index in range(extents) if rng.random() < fill]
    slots = list(range(len(allocated)))
    rng.shuffle(slots)                     # extents stored out of guest order
    bitmap_blocks = -(-bitmap_size // SECTOR)
    slot_bytes = SECTOR * (bitmap_blocks + sectors_per_extent)
    expected = bytearray(extents * extent_size)
    data_area = bytearray(len(allocated) * slot_bytes)
    for index, slot in zip(allocated, slots):
        catalog[index] = slot
        present = [rng.random() < 0.7 for _sector in range(sectors_per_extent)]
        bitmap = bytearray(bitmap_blocks * SECTOR)
        for sector, is_present in enumerate(present):
            if is_present:
                bitmap[sector // 8] |= 1 << (sector % 8)
        base = slot * slot_bytes
        data_area[base:base + len(bitmap)] = bitmap
        for sector in range(sectors_per_extent):
            content = bytes([rng.randrange(1, 256)]) * SECTOR
            start = base + (bitmap_blocks + sector) * SECTOR
            data_area[start:start + SECTOR] = content        # absent sectors carry stale bytes
            if present[sector]:
                guest = index * extent_size + sector * SECTOR
                expected[guest:guest + SECTOR] = content
    header = struct.pack("<32s16s16sII", b"Bochs Virtual HD Image", b"Redolog", b"Growing",
                         0x00020000 if version == 2 else 0x00010000, header_size)
    if version == 2:
        header += struct.pack("<IIIIQ", extents, bitmap_size, extent_size, 0, disk_size)
    else:
        header += struct.pack("<IIIQ", extents, bitmap_size, extent_size, disk_size)
    header += bytes(header_size - len(header))
    path.write_bytes(header + struct.pack("<%dI" % extents, *catalog) + bytes(data_area))
    return bytes(expected[:disk_size // SECTOR * SECTOR])


def our_bytes(path):
    with diskimage.open_image(str(path), fmt="bochs") as opened:
        return b"".join(opened.read(position, min(300000, opened.virtual_size - position))
                        for position in range(0, opened.virtual_size, 300000))


def oracle_bytes(path, tmp_path):
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "bochs", "-O", "raw", path, out)
    return out.read_bytes()


def assert_info_and_map(path):
    assert diskimage.info(str(path)) == qemu_img_json("info", path)
    assert diskimage.map(str(path), fmt="bochs") == qemu_img_json("map", "-f", "bochs", path)


def test_native_sample(tmp_path):
    path = tmp_path / "empty.bochs"
    with open(SAMPLE, "rb") as packed:
        path.write_bytes(bz2.decompress(packed.read()))
    assert probe_format(str(path)) == "bochs"
    data = our_bytes(path)
    assert len(data) == 1032192
    assert hashlib.sha256(data).hexdigest() == SAMPLE_RAW_SHA256 == raw_digest(path, tmp_path, fmt="bochs")
    assert_info_and_map(path)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("disk_size,extent_size,bitmap_size", [
    (1 * 1024 * 1024, 4096, 1),
    (3 * 1024 * 1024 + 4608, 64 * 1024, 16),
    (2 * 1024 * 1024, 512 * 1024, 128),
    (5 * 1024 * 1024 + 100, 1024 * 1024, 1024),      # bitmap of two sectors; odd disk size
])
def test_built_images_read_as_the_model_and_qemu(tmp_path, version, disk_size, extent_size, bitmap_size):
    path = tmp_path / "built.bochs"
    expected = build_bochs(path, disk_size, extent_size, bitmap_size, version=version, seed=disk_size + version)
    assert probe_format(str(path)) == "bochs"
    data = our_bytes(path)
    assert data == expected
    assert data == oracle_bytes(path, tmp_path)
    assert_info_and_map(path)


def test_unaligned_reads(tmp_path):
    path = tmp_path / "built.bochs"
    expected = build_bochs(path, 1024 * 1024, 8192, 2, seed=7)
    with diskimage.open_image(str(path), fmt="bochs") as opened:
        rng = random.Random(3)
        for _attempt in range(200):
            start = rng.randrange(0, len(expected))
            length = rng.randrange(0, min(40000, len(expected) - start) + 1)
            assert opened.read(start, length) == expected[start:start + length]


def test_convert_to_qcow2_compares_equal(tmp_path):
    path = tmp_path / "built.bochs"
    build_bochs(path, 2 * 1024 * 1024, 65536, 16, seed=11)
    target = tmp_path / "out.qcow2"
    diskimage.convert(str(path), str(target), "qcow2")
    qemu_img("compare", "-f", "bochs", "-F", "qcow2", path, target)


def test_writes_and_creation_are_refused(tmp_path):
    path = tmp_path / "built.bochs"
    build_bochs(path, 1024 * 1024, 4096, 1)
    with pytest.raises(UnsupportedOperation, match="read-only"):
        BochsDriver.open(str(path), readonly=False)
    with pytest.raises(UnsupportedOperation, match="bochs"):
        diskimage.create(str(tmp_path / "new.bochs"), "bochs", size=1024 * 1024)
    with pytest.raises(UnsupportedOperation):
        diskimage.check(str(path), fmt="bochs")


# Header field offsets of the version 2 redolog header.
CATALOG, BITMAP, EXTENT, DISK = 72, 76, 80, 88


@pytest.mark.parametrize("offset,fmt,value,error,message", [
    (0, "<32s", b"Bochs Virtual HD Imagf", FormatError, "not in Bochs format"),
    (48, "<16s", b"Undoable", UnsupportedFeature, "subtype"),
    (64, "<I", 0x00030000, UnsupportedFeature, "version"),
    (EXTENT, "<I", 256, FormatError, "at least 512"),
    (EXTENT, "<I", 0x1000000, UnsupportedFeature, "too large"),
    (BITMAP, "<I", 0, FormatError, "bitmap size"),
    (CATALOG, "<I", 0x7fffffff, UnsupportedFeature, "Catalog size is too large"),
    (CATALOG, "<I", 100, FormatError, "too small for this disk size"),
    (CATALOG, "<I", 1 << 20, CorruptImageError, "past the end of the file"),
])
def test_damaged_headers_are_refused(tmp_path, offset, fmt, value, error, message):
    path = tmp_path / "built.bochs"
    build_bochs(path, 1024 * 1024, 4096, 1)
    with open(str(path), "r+b") as image_file:
        image_file.seek(offset)
        image_file.write(struct.pack(fmt, value))
    with pytest.raises(error, match=message):
        BochsDriver.open(str(path))


def test_truncated_files(tmp_path):
    path = tmp_path / "built.bochs"
    build_bochs(path, 1024 * 1024, 4096, 1, fill=1.0)
    full = path.read_bytes()
    for length in (0, 100, 511, 600, len(full) // 2):
        path.write_bytes(full[:length])
        with pytest.raises(ImageError):
            our_bytes(path)
    path.write_bytes(full[:len(full) // 2])
    with pytest.raises(CorruptImageError, match="past the end of the file"):
        our_bytes(path)
