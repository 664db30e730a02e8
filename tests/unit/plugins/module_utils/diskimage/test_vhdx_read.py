# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VHDX reading against qemu-img: images qemu-img makes (both subformats, several block sizes,
odd sizes), native Hyper-V / Windows / Disk2vhd samples, and the dirty-log sample replayed."""

import bz2
import gzip
import hashlib
import os
import shutil
import struct
import subprocess

import pytest

import qemu_tools
import vhdx_editing
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.chain import open_driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import FormatError, ImageNotFoundError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, MAX_IO
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe_format

MIB = 1024 * 1024
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "vhdx")
# Data ranges (several, unaligned), a zero range over data, and holes.
PATTERN = ("write -P 0x11 0 100k", "write -P 0x22 1M 64k", "write -P 0x33 3000000 5000",
           "write -P 0x44 4M 1M", "write -z 4500k 64k", "write -P 0x55 6000000 291152",
           "write -P 0x66 9437184 1M")


def our_digest(path, size=None):
    digest = hashlib.sha256()
    with diskimage.open_image(str(path)) as image:
        size = image.virtual_size if size is None else size
        for offset in range(0, size, MAX_IO):
            digest.update(image.read(offset, min(MAX_IO, size - offset)))
    return digest.hexdigest()


def assert_info_matches(path):
    theirs = qemu_tools.qemu_img_json("info", path)
    ours = diskimage.info(str(path))
    for key in ("virtual-size", "format", "cluster-size", "format-specific", "backing-filename",
                "backing-filename-format", "dirty-flag"):
        assert ours.get(key) == theirs.get(key), key


def unpack_sample(name, tmp_path):
    source = os.path.join(SAMPLES, name)
    opener = bz2.open if name.endswith(".bz2") else gzip.open
    target = tmp_path / name.rsplit(".", 1)[0]
    with opener(source, "rb") as compressed, open(str(target), "wb") as out:
        shutil.copyfileobj(compressed, out, 4 * MIB)
    return target


def data_extents_read_zero(path, start):
    """Every byte this image's layer holds from ``start`` on reads as zero."""
    with open_driver(str(path)) as driver:
        for extent in driver.block_status(start, driver.virtual_size - start):
            if extent.kind != DATA:
                continue
            for offset in range(extent.start, extent.start + extent.length, MAX_IO):
                count = min(MAX_IO, extent.start + extent.length - offset)
                if driver.read(offset, count) != bytes(count):
                    return False
    return True


@pytest.fixture(scope="module")
def source_raw(tmp_path_factory):
    path = tmp_path_factory.mktemp("vhdx-source") / "source.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", path, "11M")
    qemu_tools.qemu_io(path, *PATTERN, fmt="raw")
    return path


CONVERT_OPTIONS = [
    "subformat=dynamic",
    "subformat=dynamic,block_size=1M",
    "subformat=dynamic,block_size=32M,log_size=2M",
    "subformat=fixed",
    "subformat=fixed,block_size=1M",
    "subformat=fixed,block_size=2M,block_state_zero=off",
]


@pytest.mark.parametrize("options", CONVERT_OPTIONS)
def test_qemu_converted_images_read_identically(options, source_raw, tmp_path):
    image = tmp_path / "disk.vhdx"
    qemu_tools.qemu_img("convert", "-O", "vhdx", "-o", options, source_raw, image)
    assert probe_format(str(image)) == "vhdx"
    assert our_digest(image) == qemu_tools.raw_digest(image, tmp_path) == qemu_tools.file_digest(source_raw)
    assert_info_matches(image)
    out = tmp_path / "ours.raw"
    diskimage.convert(str(image), str(out), "raw")
    assert qemu_tools.file_digest(out) == qemu_tools.file_digest(source_raw)
    assert diskimage.check(str(image)) == dict(qemu_tools.qemu_img_json("check", image), filename=str(image))


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("size", [5 * MIB + 512, 3 * MIB - 512 * 3])
@pytest.mark.parametrize("block_size", ["1M", "8M"])
def test_qemu_created_and_written_odd_sizes(subformat, size, block_size, tmp_path):
    image = tmp_path / "disk.vhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", "-o", "subformat=%s,block_size=%s" % (subformat, block_size),
                        image, size)
    qemu_tools.qemu_io(image, "write -P 0x5a 0 1536", "write -P 0xa5 %d 512" % (size - 512),
                       "write -P 0x77 1048064 1024", fmt="vhdx")
    expected = bytearray(size)
    expected[0:1536] = b"\x5a" * 1536
    expected[1048064:1049088] = b"\x77" * 1024
    expected[size - 512:] = b"\xa5" * 512
    with diskimage.open_image(str(image)) as opened:
        assert opened.virtual_size == size
        assert opened.read(0, size) == bytes(expected)
    assert our_digest(image) == qemu_tools.raw_digest(image, tmp_path)
    assert_info_matches(image)


def test_block_status_of_a_dynamic_image(source_raw, tmp_path):
    image = tmp_path / "disk.vhdx"
    qemu_tools.qemu_img("convert", "-O", "vhdx", "-o", "block_size=1M", source_raw, image)
    with open_driver(str(image)) as driver:
        extents = driver.block_status(0, driver.virtual_size)
        assert sum(extent.length for extent in extents) == driver.virtual_size
        data_blocks = set()
        for extent in extents:
            if extent.kind == DATA:
                assert extent.offset % MIB == extent.start % MIB
                data_blocks.update(range(extent.start // MIB, (extent.start + extent.length - 1) // MIB + 1))
            else:
                assert driver.read(extent.start, extent.length) == bytes(extent.length)
    # Blocks qemu-img convert allocates: those with non-zero data.
    with open(str(source_raw), "rb") as raw:
        content = raw.read()
    expected = {block for block in range(11) if content[block * MIB:(block + 1) * MIB].strip(b"\0")}
    assert data_blocks == expected


@pytest.mark.slow
def test_hyperv_dynamic_sample(tmp_path):
    image = unpack_sample("iotest-dynamic-1G.vhdx.bz2", tmp_path)
    assert probe_format(str(image)) == "vhdx"
    with diskimage.open_image(str(image)) as opened:
        assert opened.virtual_size == 1024 * MIB
        for offset in range(0, 66 * MIB, MAX_IO):
            expected = b"\xa5" if offset < 33 * MIB else b"\x96"
            chunk = opened.read(offset, MAX_IO if offset + MAX_IO <= 66 * MIB else 66 * MIB - offset)
            if offset < 33 * MIB < offset + len(chunk):
                split = 33 * MIB - offset
                assert chunk == b"\xa5" * split + b"\x96" * (len(chunk) - split)
            else:
                assert chunk == expected * len(chunk)
    assert data_extents_read_zero(image, 66 * MIB)
    assert_info_matches(image)
    out = tmp_path / "ours.raw"
    diskimage.convert(str(image), str(out), "raw")
    # The documented raw sha256 (d3d112d8...) is that pattern; qemu-img compare checks the whole GiB.
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", out, image)


@pytest.mark.parametrize("name, digest", [
    ("dynamic.vhdx.gz", "8e2b5e9265d694b42b81819e3bff29770eff4ed0f4f9f311693ff3dbdc93efac"),
    ("fixed.vhdx.gz", "bc0be4623b15aa84216fb31ba24e3b621ec7f1c72d198c990ac0eced222d9f62"),
])
def test_windows_samples(name, digest, tmp_path):
    image = unpack_sample(name, tmp_path)
    assert our_digest(image) == digest == qemu_tools.raw_digest(image, tmp_path)
    assert_info_matches(image)
    with diskimage.open_image(str(image)) as opened:
        assert opened.read(0x200000, 512) == b"\xff" * 512
        assert opened.read(510, 2) == b"\x55\xaa"


@pytest.mark.slow
def test_disk2vhd_sample(tmp_path):
    image = unpack_sample("test-disk2vhd.vhdx.bz2", tmp_path)
    assert_info_matches(image)
    out = tmp_path / "ours.raw"
    diskimage.convert(str(image), str(out), "raw")
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vhdx", out, image)
    assert qemu_tools.file_digest(out) == "96d964042be9b58dda1725567abfb0cf9fd8380e2118754afa979c2ad445938a"
    assert diskimage.check(str(image))["check-errors"] == 0


def test_dirty_log_is_replayed_in_memory_on_a_read_only_open(tmp_path):
    image = unpack_sample("iotest-dirtylog-10G-4M.vhdx.bz2", tmp_path)
    before = qemu_tools.file_digest(image)
    with diskimage.open_image(str(image)) as opened:
        assert opened.virtual_size == 10 * 1024 * MIB
        assert opened.read(0, 18 * MIB) == b"\xa5" * (18 * MIB)
        assert opened.read(18 * MIB, 2 * MIB) == bytes(2 * MIB)
    assert data_extents_read_zero(image, 18 * MIB)
    # Read-only: the file is untouched, and check reports the log still to replay.
    assert qemu_tools.file_digest(image) == before
    assert diskimage.check(str(image))["corruptions"] == 1
    # qemu-img refuses the read-only open of this image.
    refused = subprocess.run(["qemu-img", "info", str(image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, check=False)
    assert refused.returncode != 0 and "log that needs to be replayed" in refused.stderr


def test_dirty_log_replay_into_the_file_matches_qemu_img_check_repair(tmp_path):
    image = unpack_sample("iotest-dirtylog-10G-4M.vhdx.bz2", tmp_path)
    theirs = tmp_path / "theirs.vhdx"
    shutil.copyfile(str(image), str(theirs))
    qemu_result = qemu_tools.qemu_img_json("check", "-r", "all", theirs)
    ours = diskimage.check(str(image), repair="all")
    assert {key: value for key, value in ours.items() if key != "filename"} == \
        {key: value for key, value in qemu_result.items() if key != "filename"}
    # Same guest view as qemu's replay (block status first: 10 GiB of mostly absent blocks), and qemu reads ours.
    assert diskimage.compare(str(image), str(theirs))
    qemu_tools.qemu_io(image, "read -P 0xa5 0 18M", "read -P 0 18M 2M", fmt="vhdx")
    assert qemu_tools.qemu_img_json("check", image) == dict(diskimage.check(str(image)), filename=str(image))
    with open_driver(str(image)) as driver:
        assert driver.overlay is None
        assert driver.header.log_guid == bytes(16)
        assert driver.read(0, 18 * MIB) == b"\xa5" * (18 * MIB)
    assert data_extents_read_zero(image, 18 * MIB)


def test_differencing_sample_names_its_missing_parent(tmp_path):
    image = unpack_sample("differencing.avhdx.gz", tmp_path)
    assert probe_format(str(image)) == "vhdx"
    with pytest.raises(ImageNotFoundError) as raised:
        diskimage.open_image(str(image))
    message = str(raised.value)
    assert "relative_path" in message
    assert "Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx" in message
    # A parent of that name whose DataWriteGuid differs from parent_linkage is refused.
    impostor = tmp_path / "Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx"
    qemu_tools.qemu_img("create", "-q", "-f", "vhdx", impostor, "8G")
    with pytest.raises(FormatError) as raised:
        diskimage.open_image(str(image))
    assert "DataWriteGuid" in str(raised.value) and "ff34003b-11ed-4cf8-a166-b2be05e20b80" in str(raised.value)


def test_logical_sector_size_4096(source_raw, tmp_path):
    """Hyper-V also makes 4096-byte logical sectors (another chunk ratio); qemu-img 7.2 neither makes
    nor opens them, so the expected view is the source the image was made from."""
    image = tmp_path / "disk.vhdx"
    qemu_tools.qemu_img("convert", "-O", "vhdx", "-o", "block_size=1M", source_raw, image)
    logical = vhdx_editing.metadata_item_offset(image, vhdx_editing.uuid.UUID("8141bf1d-a96f-4709-ba47-f233a8faab5f"))
    vhdx_editing.write_at(image, logical, struct.pack("<I", 4096))
    with open_driver(str(image)) as driver:
        assert driver.logical_sector_size == 4096
        assert driver.chunk_ratio == (1 << 23) * 4096 // MIB
    assert our_digest(image) == qemu_tools.file_digest(source_raw)
