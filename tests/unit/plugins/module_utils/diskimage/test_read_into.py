# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Driver.read_into: the guest bytes read into a buffer the caller reuses (a copy's read buffers
hold the previous chunk's bytes): every byte is set, holes and unallocated ranges to zero or to the
backing file's bytes, exactly as read() returns them."""

import os
import random

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.chain import open_driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import Driver

MIB = 1 << 20
SIZE = 12 * MIB


def _raw_source(path):
    """Data, zeroes written as data, holes; a partial block at the end."""
    rng = random.Random(15)
    with open(path, "wb") as image:
        image.truncate(SIZE - 3 * 512)
        for start, length in ((0, 300 * 1024), (MIB + 4096, 2 * MIB), (5 * MIB, 512), (8 * MIB - 1000, 3 * MIB)):
            image.seek(start)
            image.write(bytes(rng.getrandbits(8) for _byte in range(64)) * (length // 64) + bytes(length % 64))
        image.seek(4 * MIB)
        image.write(bytes(MIB))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    qemu_tools.qemu_img("--version")
    tmp = tmp_path_factory.mktemp("read_into")
    raw = _raw_source(str(tmp / "source.raw"))
    made = {"raw": (raw, "raw")}
    for name, fmt, options in (("qcow2", "qcow2", ()), ("qcow2-compressed", "qcow2", ("-c",)),
                               ("vdi", "vdi", ()), ("vpc", "vpc", ()), ("vpc-fixed", "vpc", ("-o", "subformat=fixed")),
                               ("vhdx", "vhdx", ())):
        path = str(tmp / ("image-" + name))
        qemu_tools.qemu_img("convert", "-f", "raw", "-O", fmt, *options, raw, path)
        made[name] = (path, fmt)
    for fmt in ("qcow2",):   # (the library, like qemu-img, creates no differencing VHD or VHDX)
        base = made["qcow2" if fmt == "qcow2" else fmt][0]
        overlay = str(tmp / ("overlay-" + fmt))
        diskimage.create(overlay, fmt, backing_file=os.path.basename(base), backing_fmt=fmt)
        with diskimage.open_image(overlay, fmt=fmt, readonly=False) as image:
            image.write(MIB, b"\x5c" * 65536)
            image.write_zeroes(6 * MIB, MIB)
            image.write(11 * MIB, b"\x11" * 524288)
        made["overlay-" + fmt] = (overlay, fmt)
    return made


RANGES = [(0, 4 * MIB), (4096, 1000), (MIB - 512, 2 * MIB + 1024), (4 * MIB, 4 * MIB), (5 * MIB + 100, 700),
          (6 * MIB - 4096, 3 * MIB), (SIZE - 4 * MIB - 3 * 512, 4 * MIB)]


@pytest.mark.parametrize("name", ["raw", "qcow2", "qcow2-compressed", "vdi", "vpc", "vpc-fixed", "vhdx",
                                  "overlay-qcow2"])
def test_read_into_a_used_buffer_gives_what_read_gives(images, name):
    path, fmt = images[name]
    with open_driver(path, fmt=fmt) as driver:
        if name != "raw":
            assert type(driver).read_into is not Driver.read_into, "a data-path format reads in place"
        for offset, length in RANGES:
            length = min(length, driver.virtual_size - offset)
            buffer = bytearray(b"\xaa" * (length + 17))
            driver.read_into(offset, memoryview(buffer)[:length])
            assert bytes(buffer[:length]) == bytes(driver.read(offset, length)), (offset, length)
            assert buffer[length:] == b"\xaa" * 17, "read_into wrote past the view"


def test_read_into_a_differencing_vhd_shows_the_parent_and_the_child_sector_bitmaps(tmp_path):
    import test_vpc_chain as vpc_chain  # pylint: disable=import-outside-toplevel
    rng = random.Random(16)
    size = 10 * vpc_chain.BLOCK
    parent = vpc_chain.make_parent(tmp_path, size, rng)
    child, expected = vpc_chain.make_child(tmp_path, size, parent, rng, vpc_chain.LOCATORS)
    with open_driver(child, fmt="vpc") as driver:
        for offset in range(0, size, 3 * vpc_chain.BLOCK // 2):
            length = min(size - offset, 2 * vpc_chain.BLOCK + 1000)
            buffer = bytearray(b"\xaa" * length)
            driver.read_into(offset, memoryview(buffer))
            assert buffer == expected[offset:offset + length], offset
