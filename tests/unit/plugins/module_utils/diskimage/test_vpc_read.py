# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vpc (VHD) driver, read side: images qemu-img/qemu-io write (dynamic and
fixed, sizes where the CHS rounding matters, force_size, data patterns) read
byte-identical to ``qemu-img convert -O raw``; info and map agree with
qemu-img's JSON; the native samples read to their documented digests with the
virtual size qemu-img reports for each creator."""

import bz2
import gzip
import hashlib
import os
import shutil

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io, raw_digest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageNotFoundError, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, ZERO
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vpc import VpcDriver

M = 1024 * 1024
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "vhd")

# qemu-io commands: data, zero and unaligned ranges, some across the 2 MiB block boundary.
PATTERNS = [
    [],
    ["write -P 0x11 0 4k"],
    ["write -P 0x22 1000 3000", "write -P 0x33 1536k 1M", "write -z 3M 512k"],
    ["write -P 0x44 0 5M", "write -z 1M 1M", "write -P 0x55 4194303 2"],
    ["write -P 0x66 2096640 1024", "write -P 0x77 2M 1"],
]

# Sizes where the CHS geometry rounds the size up differently (and one that is exact).
SIZES = [5 * M, 7340033, 6 * M - 512, 16 * 63 * 512 * 11]


def our_digest(path, fmt="vpc"):
    with diskimage.open_image(str(path), fmt=fmt) as image:
        digest = hashlib.sha256()
        position = 0
        while position < image.virtual_size:
            count = min(3 * M + 4096, image.virtual_size - position)   # odd chunking on purpose
            digest.update(image.read(position, count))
            position += count
        return digest.hexdigest()


def assert_info_matches(path):
    oracle = qemu_img_json("info", "-f", "vpc", path)
    ours = diskimage.info(str(path), fmt="vpc")
    for key in ("virtual-size", "format", "cluster-size", "dirty-flag", "actual-size", "format-specific"):
        assert ours.get(key) == oracle.get(key), key
    assert "backing-filename" not in ours


def assert_map_matches(path):
    oracle = qemu_img_json("map", "-f", "vpc", path)
    ours = diskimage.map(str(path), fmt="vpc")
    assert ours == oracle


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("pattern", range(len(PATTERNS)))
def test_qemu_io_written_images_read_identical(tmp_path, subformat, pattern):
    image = tmp_path / "disk.vhd"
    qemu_img("create", "-f", "vpc", "-o", "subformat=%s" % subformat, image, "5M")
    if PATTERNS[pattern]:
        qemu_io(image, *PATTERNS[pattern], fmt="vpc")
    assert our_digest(image) == raw_digest(image, tmp_path, fmt="vpc")
    assert_info_matches(image)
    if subformat == "dynamic":
        assert_map_matches(image)


@pytest.mark.parametrize("force_size", ["off", "on"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_virtual_size_follows_qemu_rounding(tmp_path, subformat, size, force_size):
    image = tmp_path / "disk.vhd"
    qemu_img("create", "-f", "vpc", "-o", "subformat=%s,force_size=%s" % (subformat, force_size), image, size)
    qemu_io(image, "write -P 0xa5 %d 512" % ((size - 1) // 512 * 512 - 512), fmt="vpc")
    assert_info_matches(image)
    assert our_digest(image) == raw_digest(image, tmp_path, fmt="vpc")


@pytest.mark.parametrize("options", ["subformat=dynamic", "subformat=fixed", "subformat=dynamic,force_size=on",
                                     "subformat=fixed,force_size=on"])
def test_qemu_img_converted_images_read_identical(tmp_path, options):
    source = tmp_path / "source.raw"
    qemu_img("create", "-f", "raw", source, "9M")
    qemu_io(source, "write -P 0x5a 0 1M", "write -P 0xc3 3M 2049k", "write -P 0x01 8388607 1", fmt="raw")
    image = tmp_path / "disk.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", options, source, image)
    assert our_digest(image) == raw_digest(image, tmp_path, fmt="vpc")
    assert_info_matches(image)
    if "dynamic" in options:
        assert_map_matches(image)


def test_probe_finds_dynamic_disks_only(tmp_path):
    dynamic = tmp_path / "dynamic.vhd"
    fixed = tmp_path / "fixed.vhd"
    qemu_img("create", "-f", "vpc", dynamic, "1M")
    qemu_img("create", "-f", "vpc", "-o", "subformat=fixed", fixed, "1M")
    # As with qemu-img: the dynamic disk's footer copy at offset 0 is probed; a fixed disk looks raw.
    assert diskimage.info(str(dynamic))["format"] == qemu_img_json("info", dynamic)["format"] == "vpc"
    assert diskimage.info(str(fixed))["format"] == qemu_img_json("info", fixed)["format"] == "raw"
    with open(str(dynamic), "rb") as f:
        header = f.read(4096)
    assert VpcDriver.probe(header, str(dynamic)) == 100
    assert VpcDriver.probe(b"\0" * 512, "x.vhd") == 0


def test_check_is_unsupported_like_qemu_img(tmp_path):
    image = tmp_path / "disk.vhd"
    qemu_img("create", "-f", "vpc", image, "1M")
    with pytest.raises(UnsupportedOperation):
        diskimage.check(str(image), fmt="vpc")


# ------------------------------------------------------------------ samples
def sample(tmp_path, name):
    """The sample decompressed into tmp_path."""
    source = os.path.join(SAMPLES, name)
    target = tmp_path / name.rsplit(".", 1)[0] if name.endswith((".bz2", ".gz")) else tmp_path / name
    opener = bz2.open if name.endswith(".bz2") else gzip.open if name.endswith(".gz") else open
    with opener(source, "rb") as src, open(str(target), "wb") as dst:
        shutil.copyfileobj(src, dst, 4 * M)
    return target


@pytest.fixture(scope="module", name="d2v_image")
def fixture_d2v_image(tmp_path_factory):
    """Disk2vhd's 264 MB sample, decompressed once for the module."""
    return sample(tmp_path_factory.mktemp("d2v"), "d2v-zerofilled.vhd.bz2")


@pytest.mark.parametrize("name, raw_sha256", [
    ("dynamic.vhd.gz", "ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784"),
    ("fixed.vhd.gz", "459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463"),
])
def test_samples_read_to_documented_digest(tmp_path, name, raw_sha256):
    image = sample(tmp_path, name)
    assert our_digest(image) == raw_sha256
    assert_info_matches(image)
    assert_map_matches(image)


def test_d2v_sample_reads_to_documented_digest(d2v_image):
    # Documented raw sha256 (= qemu-img convert -O raw of the sample).
    assert our_digest(d2v_image) == "1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143"
    assert_info_matches(d2v_image)
    assert_map_matches(d2v_image)


def test_windows_samples_hold_the_documented_sectors(tmp_path):
    dynamic = sample(tmp_path, "dynamic.vhd.gz")
    fixed = sample(tmp_path, "fixed.vhd.gz")
    with diskimage.open_image(str(dynamic), fmt="vpc") as a, diskimage.open_image(str(fixed), fmt="vpc") as b:
        assert a.read(0x200000, 512) == b"\xff" * 512 == b.read(0x200000, 512)
        mbr_a, mbr_b = a.read(0, 512), b.read(0, 512)
        assert mbr_a[510:] == b"\x55\xaa" == mbr_b[510:]
        # Only the 4-byte disk signature at 440 differs (dissect test_vhd.py).
        assert mbr_a[:440] == mbr_b[:440] and mbr_a[444:] == mbr_b[444:] and mbr_a[440:444] != mbr_b[440:444]


@pytest.mark.parametrize("name, creator, expected_size", [
    # Virtual PC: the CHS geometry 65278/16/255, below the footer's current size.
    ("virtualpc-dynamic.vhd.bz2", b"vpc ", 65278 * 16 * 255 * 512),
    # Hyper-V: the footer's current size.
    ("hyperv2012r2-dynamic.vhd.bz2", b"win ", 136365211648),
])
def test_creator_decides_the_virtual_size(tmp_path, name, creator, expected_size):
    image = sample(tmp_path, name)
    assert_info_matches(image)
    with VpcDriver.open(str(image), True, None) as driver:
        assert driver.footer.creator_app == creator
        assert driver.virtual_size == expected_size
        # Nothing allocated: one zero run over the whole disk, and reads give zeroes.
        assert driver.block_status(0, expected_size) == [(0, expected_size, ZERO, None)]
        assert driver.read(expected_size - 3 * M, 3 * M) == bytes(3 * M)
    assert_map_matches(image)


def test_d2v_blocks_are_allocated_and_zero_filled(d2v_image):
    # "zerofilled": every block is allocated (bitmaps all set, as qemu-img map shows) and holds zeroes.
    # Sectors with clear bitmap bits are covered by test_vpc_chain.py's built images.
    with VpcDriver.open(str(d2v_image), True, None) as driver:
        assert driver.footer.creator_app == b"d2v\x00"
        statuses = driver.block_status(0, driver.virtual_size)
        assert sum(e.length for e in statuses) == driver.virtual_size
        assert {e.kind for e in statuses} == {DATA}
        for start in (0, 4 * M, driver.virtual_size - M):
            assert driver.read(start, M) == bytes(M)


def test_differencing_sample_without_parent_names_locators_and_policy(tmp_path):
    image = tmp_path / "fat-differential.vhd"
    shutil.copyfile(os.path.join(SAMPLES, "fat-differential.vhd"), str(image))
    with pytest.raises(ImageNotFoundError) as caught:
        diskimage.open_image(str(image), fmt="vpc")
    message = str(caught.value)
    assert "W2ru locator '.\\\\fat-parent.vhd'" in message
    assert "does not exist" in message and str(tmp_path / "fat-parent.vhd") in message
    assert "W2ku locator 'C:\\\\Projects\\\\dfvfs\\\\test_data\\\\fat-parent.vhd'" in message
    assert "refused" in message and "path policy" in message
    # qemu-img info does not open parents: neither do we; the virtual size agrees.
    ours = diskimage.info(str(image))
    oracle = qemu_img_json("info", image)
    for key in ("virtual-size", "format", "cluster-size"):
        assert ours[key] == oracle[key]
    assert ours["backing-filename"] == "fat-parent.vhd" and ours["backing-filename-format"] == "vpc"
