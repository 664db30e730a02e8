# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A conversion skips the holes of a source layer's own file (VHDX, VHD, VDI:
``host_file_of_offsets``) instead of reading them: allocated blocks whose host
range is a hole read as zeroes, and are converted as zeroes without a read.
Only holes that cover whole granule-aligned guest blocks count, and never past
the file's end (the driver's read decides what those are)."""

import os

import pytest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import driver_class
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, ZERO, Extent
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vhdx import VhdxDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops.image import split_file_holes

from qemu_tools import qemu_img, run

KIB = 1 << 10
MIB = 1 << 20


def sparse_file(path, pieces, size):
    """A file of ``size`` bytes with data at the (offset, length) ``pieces``, holes elsewhere."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, length in pieces:
            handle.seek(offset)
            handle.write(b"\xa5" * length)
    return str(path)


def seek_holes_work(path):
    with ImageFile(path) as image:
        return any(not is_data for _start, _length, is_data in image.data_extents(0, image.size()))


def test_split_keeps_only_whole_aligned_holes_inside_the_file(tmp_path):
    path = sparse_file(tmp_path / "host", [(0, 64 * KIB), (192 * KIB, 64 * KIB)], 256 * KIB)
    if not seek_holes_work(path):
        pytest.fail("the temporary directory's file system reports no holes (SEEK_HOLE): this test needs it")
    with ImageFile(path) as image:
        assert split_file_holes(image, Extent(0, 256 * KIB, DATA, 0), 64 * KIB) == [
            Extent(0, 64 * KIB, DATA, 0), Extent(64 * KIB, 128 * KIB, ZERO, None),
            Extent(192 * KIB, 64 * KIB, DATA, 192 * KIB)]
        # guest = host + 4 KiB: of the hole (guest 68K-196K) only the aligned block 128K-192K is whole
        assert split_file_holes(image, Extent(4 * KIB, 256 * KIB, DATA, 0), 64 * KIB) == [
            Extent(4 * KIB, 124 * KIB, DATA, 0), Extent(128 * KIB, 64 * KIB, ZERO, None),
            Extent(192 * KIB, 68 * KIB, DATA, 188 * KIB)]
        # a hole smaller than the granule stays data
        assert split_file_holes(image, Extent(0, 256 * KIB, DATA, 0), 256 * KIB) == [
            Extent(0, 256 * KIB, DATA, 0)]
        # past the end of the file: data (the read finds what it is), not a hole
        assert split_file_holes(image, Extent(0, 512 * KIB, DATA, 0), 64 * KIB) == [
            Extent(0, 64 * KIB, DATA, 0), Extent(64 * KIB, 128 * KIB, ZERO, None),
            Extent(192 * KIB, 320 * KIB, DATA, 192 * KIB)]


def host_offset(image, guest):
    """The host offset of guest offset ``guest`` of ``image`` (its driver's block status: qemu-img map
    reports none for VHDX)."""
    with driver_class(image[image.rindex(".") + 1:]).open(image) as layer:
        extent = layer.block_status(guest, 1)[0]
    assert extent.kind == DATA and extent.offset is not None, extent
    return extent.offset


@pytest.mark.parametrize("fmt, options", [("vhdx", "block_size=8M"), ("vpc", "subformat=dynamic"),
                                          ("vdi", "static=off")])
def test_convert_skips_holes_of_the_source_file(tmp_path, fmt, options):
    raw = str(tmp_path / "data.raw")
    with open(raw, "wb") as handle:
        handle.write(os.urandom(8 * MIB))
    source = str(tmp_path / ("source." + fmt))
    qemu_img("convert", "-f", "raw", "-O", fmt, "-o", options, raw, source)
    # a hole in the host file under guest 2-4 MiB (inside allocated blocks): it reads as zeroes
    hole = host_offset(source, 2 * MIB)
    assert host_offset(source, 4 * MIB - 1) == hole + 2 * MIB - 1
    run("fallocate", "--punch-hole", "--offset", str(hole), "--length", str(2 * MIB), source)
    if not seek_holes_work(source):
        pytest.fail("the temporary directory's file system reports no holes (SEEK_HOLE): this test needs it")

    target = str(tmp_path / "target.qcow2")
    result = diskimage.convert(source, target, "qcow2")
    qemu_img("compare", "-f", fmt, "-F", "qcow2", source, target)
    qemu_img("check", "-f", "qcow2", target)
    # the hole was not read (8 MiB of data, 2 of them a hole): 6 MiB read, the rest converted as zeroes; the
    # host offsets need not be aligned (VDI's data starts at 1 KiB): the file system's hole is then a little
    # smaller, and one 64 KiB cluster at either end of it is read
    assert 6 * MIB <= result["bytes_read"] <= 6 * MIB + 128 * KIB
    assert result["bytes_written"] == 6 * MIB
    with open(raw, "r+b") as handle:
        handle.seek(2 * MIB)
        handle.write(bytes(2 * MIB))
    qemu_img("compare", "-f", "raw", "-F", "qcow2", raw, target)


def test_a_replayed_log_keeps_the_file_ranges_read(tmp_path):
    """A VHDX opened read-only with a log to replay reads some ranges from memory, not from the file:
    its file's holes say nothing then."""
    source = str(tmp_path / "disk.vhdx")
    qemu_img("create", "-f", "vhdx", source, "16M")
    with VhdxDriver.open(source) as driver:
        assert driver.host_file_of_offsets() is not None
        driver.overlay = object()
        try:
            assert driver.host_file_of_offsets() is None
        finally:
            driver.overlay = None
