# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi driver, read side: every VDI qemu-img/qemu-io writes (static, dynamic,
odd sizes, data patterns) reads byte-identical to ``qemu-img convert -O raw``,
and info/map/check agree with qemu-img's JSON."""

import hashlib
import os
import struct

import pytest

import qemu_tools
from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import probe as probe_mod
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, ZERO
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vdi import VdiDriver

M = 1024 * 1024

# qemu-io commands writing data, zero and unaligned ranges over a few MiB.
PATTERNS = [
    [],
    ["write -P 0x11 0 4k"],
    ["write -P 0x22 1000 3000", "write -P 0x33 1536k 1M", "write -z 3M 512k"],
    ["write -P 0x44 0 5M", "write -z 1M 1M", "write -P 0x55 4194303 2"],
    ["write -P 0x66 5242368 512", "write -P 0x77 2M 1"],
]


def our_digest(path):
    with VdiDriver.open(str(path), True, None) as drv:
        digest = hashlib.sha256()
        position = 0
        while position < drv.virtual_size:
            count = min(3 * M + 4096, drv.virtual_size - position)   # odd chunking on purpose
            digest.update(drv.read(position, count))
            position += count
        return digest.hexdigest()


def assert_info_matches(path):
    oracle = qemu_img_json("info", path)
    ours = diskimage.info(str(path))
    for key in ("virtual-size", "format", "cluster-size", "dirty-flag", "actual-size"):
        assert ours.get(key) == oracle.get(key), key
    assert "format-specific" not in oracle and "format-specific" not in ours
    assert "backing-filename" not in ours


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("pattern", range(len(PATTERNS)))
def test_qemu_io_written_images_read_identical(tmp_path, static, pattern):
    image = tmp_path / "disk.vdi"
    qemu_img("create", "-f", "vdi", "-o", "static=%s" % ("on" if static else "off"), image, "5M")
    if PATTERNS[pattern]:
        qemu_io(image, *PATTERNS[pattern], fmt="vdi")
    assert our_digest(image) == qemu_tools.raw_digest(image, tmp_path, fmt="vdi")
    assert_info_matches(image)
    assert diskimage.check(str(image)) == dict(qemu_img_json("check", image), filename=str(image))


@pytest.mark.parametrize("size", [0, 512, 1000, M - 512, M, 3 * M + 7 * 512])
def test_odd_sizes(tmp_path, size):
    image = tmp_path / "odd.vdi"
    qemu_img("create", "-f", "vdi", image, str(size))
    if size >= 1024:
        qemu_io(image, "write -P 0x5a 0 512", "write -P 0xa5 %d 512" % (size // 512 * 512 - 512), fmt="vdi")
    assert our_digest(image) == qemu_tools.raw_digest(image, tmp_path, fmt="vdi")
    assert_info_matches(image)


@pytest.mark.parametrize("static", ["off", "on"])
def test_convert_from_raw_reads_identical(tmp_path, static):
    raw = tmp_path / "src.raw"
    qemu_img("create", "-f", "raw", raw, "6M")
    qemu_io(raw, "write -P 0x01 0 1536k", "write -P 0x02 2M 4096", "write -P 0x03 5767168 1000", fmt="raw")
    image = tmp_path / "conv.vdi"
    qemu_img("convert", "-f", "raw", "-O", "vdi", "-o", "static=" + static, raw, image)
    assert our_digest(image) == qemu_tools.file_digest(raw)
    out = tmp_path / "ours.raw"
    diskimage.convert(str(image), str(out), "raw")
    assert qemu_tools.file_digest(out) == qemu_tools.file_digest(raw)
    assert_info_matches(image)


def test_map_matches_qemu_on_dynamic_images(tmp_path):
    image = tmp_path / "map.vdi"
    qemu_img("create", "-f", "vdi", image, "6M")
    qemu_io(image, "write -P 0x10 3M 4096", "write -P 0x20 0 1", "write -P 0x30 4M 1M", fmt="vdi")
    assert diskimage.map(str(image)) == qemu_img_json("map", image)


def test_block_status_kinds_and_host_offsets(tmp_path):
    image = tmp_path / "bs.vdi"
    qemu_img("create", "-f", "vdi", image, "4M")
    qemu_io(image, "write -P 0x10 2M 4096", "write -P 0x20 0 1", fmt="vdi")
    with VdiDriver.open(str(image), True, None) as drv:
        extents = drv.block_status(0, drv.virtual_size)
        kinds = [(e.start, e.length, e.kind) for e in extents]
        assert kinds == [(0, M, DATA), (M, M, ZERO), (2 * M, M, DATA), (3 * M, M, ZERO)]
        # Block 2 was written first (slot 0), block 0 second (slot 1).
        assert extents[0].offset == extents[2].offset + M
        with open(str(image), "rb") as f:
            f.seek(extents[2].offset)
            assert f.read(4096) == b"\x10" * 4096
        assert drv.block_status(M + 5, 10) == [drv.block_status(M, M)[0]._replace(start=M + 5, length=10)]


def test_probe_and_open_without_format(tmp_path):
    image = tmp_path / "probe.vdi"
    qemu_img("create", "-f", "vdi", image, "1M")
    with open(str(image), "rb") as f:
        header = f.read(4096)
    assert VdiDriver.probe(header, str(image)) == 100
    assert VdiDriver.probe(header[:511], str(image)) == 0
    assert VdiDriver.probe(b"\0" * 4096, str(image)) == 0
    assert probe_mod.probe_format(str(image)) == "vdi"
    assert diskimage.info(str(image))["format"] == "vdi"


def test_virtualbox_header_text_and_lchs_header(tmp_path):
    """A VirtualBox-style header (Oracle text, header size 0x190 with LCHS
    geometry, 1 MiB aligned offsets) reads as qemu-img reads it."""
    image = tmp_path / "vbox.vdi"
    qemu_img("create", "-f", "vdi", image, "3M")
    qemu_io(image, "write -P 0x61 0 1M", "write -P 0x62 2M 1M", fmt="vdi")
    with open(str(image), "rb") as f:
        content = bytearray(f.read())
    old_data = struct.unpack_from("<I", content, 0x158)[0]
    new_bmap, new_data = 0x100000, 0x200000
    blocks = content[old_data:]
    bmap = content[0x200:0x200 + 12]
    content[0:64] = b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0")
    struct.pack_into("<I", content, 0x48, 0x190)
    struct.pack_into("<II", content, 0x154, new_bmap, new_data)
    struct.pack_into("<IIII", content, 0x1c8, 0, 0, 0, 512)
    rebuilt = bytes(content[:0x200]).ljust(new_bmap, b"\0") + bytes(bmap).ljust(new_data - new_bmap, b"\0") + bytes(blocks)
    with open(str(image), "wb") as f:
        f.write(rebuilt)
    assert our_digest(image) == qemu_tools.raw_digest(image, tmp_path, fmt="vdi")
    assert_info_matches(image)


def test_reads_outside_the_image_are_refused(tmp_path):
    image = tmp_path / "range.vdi"
    qemu_img("create", "-f", "vdi", image, "1M")
    with VdiDriver.open(str(image), True, None) as drv:
        with pytest.raises(ImageError):
            drv.read(M - 10, 11)
        with pytest.raises(ImageError):
            drv.read(-1, 1)
        assert drv.read(M - 10, 10) == bytes(10)


def test_qemu_check_on_damaged_block_maps(tmp_path):
    """Slots used twice, slots past the block count and a wrong allocated
    count are corruptions, counted as qemu-img check counts them."""
    image = tmp_path / "base.vdi"
    qemu_img("create", "-f", "vdi", image, "4M")
    qemu_io(image, "write -P 1 0 1M", "write -P 2 1M 1M", "write -P 3 3M 512", fmt="vdi")
    damages = [
        {0x204: 0},                    # block 1 reuses slot 0
        {0x208: 9},                    # block 2 points past the block count
        {0x184: 7},                    # allocated count wrong
        {0x204: 0, 0x208: 0, 0x184: 1},
    ]
    for number, damage in enumerate(damages):
        copy = tmp_path / ("damaged%d.vdi" % number)
        with open(str(image), "rb") as f:
            content = bytearray(f.read())
        for offset, value in damage.items():
            struct.pack_into("<I", content, offset, value)
        with open(str(copy), "wb") as f:
            f.write(content)
        oracle = qemu_img_json("check", copy)
        assert oracle.get("corruptions"), damage
        assert diskimage.check(str(copy)) == dict(oracle, filename=str(copy)), damage


def test_check_repair_is_unsupported_like_qemu(tmp_path):
    image = tmp_path / "r.vdi"
    qemu_img("create", "-f", "vdi", image, "1M")
    with pytest.raises(ImageError) as err:
        diskimage.check(str(image), repair="all")
    assert "support" in str(err.value)
    assert os.path.getsize(str(image)) > 0
