# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""parallels driver (read-only): images qemu-img/qemu-io write and the native
samples read byte-identical to ``qemu-img convert -O raw``; info, map and check
agree with qemu-img's JSON; convert to qcow2 compares equal; writing and
creating are refused clearly."""

import bz2
import hashlib
import os

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io, raw_digest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import UnsupportedOperation
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, UNALLOCATED
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.parallels import ParallelsDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe_format

M = 1024 * 1024
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "parallels")

# qemu-io commands: data, zero and unaligned ranges, some across cluster boundaries.
PATTERNS = [
    [],
    ["write -P 0x11 0 4k"],
    ["write -P 0x22 1000 3000", "write -P 0x33 1536k 1M", "write -z 3M 512k"],
    ["write -P 0x44 0 5M", "write -z 1M 1M", "write -P 0x55 4194303 2"],
    ["write -P 0x66 2096640 1024", "write -P 0x77 5M 1", "write -P 0x12 3M 64k"],
]

# Documented in samples/parallels/SOURCES.md (shared/testdata/SOURCES.md).
SAMPLE_DIGESTS = {
    "parallels-v1.bz2": ("15faf41ebc93b5f734341cb7a2d909001e3f7306960f9d8bc63894f2a8e5bc45", 2 * M),
    "parallels-v2.bz2": ("15faf41ebc93b5f734341cb7a2d909001e3f7306960f9d8bc63894f2a8e5bc45", 2 * M),
    "parallels-with-bitmap.bz2": (None, 64 * 1024 * M),
}


def our_digest(path):
    with diskimage.open_image(str(path), fmt="parallels") as image:
        digest = hashlib.sha256()
        position = 0
        while position < image.virtual_size:
            count = min(3 * M + 4096, image.virtual_size - position)   # odd chunking on purpose
            digest.update(image.read(position, count))
            position += count
        return digest.hexdigest()


def assert_matches_qemu(path, tmp_path):
    assert our_digest(path) == raw_digest(path, tmp_path, fmt="parallels")
    oracle = qemu_img_json("info", "-f", "parallels", path)
    ours = diskimage.info(str(path), fmt="parallels")
    assert ours == oracle
    assert diskimage.map(str(path), fmt="parallels") == qemu_img_json("map", "-f", "parallels", path)
    theirs = qemu_img_json("check", "-f", "parallels", path)
    ours = diskimage.check(str(path), fmt="parallels")
    assert ours == theirs


def unpack_sample(name, tmp_path):
    path = tmp_path / name[:-4]
    with open(os.path.join(SAMPLES, name), "rb") as packed:
        path.write_bytes(bz2.decompress(packed.read()))
    return path


@pytest.mark.parametrize("cluster_size", [None, "64k", "4k"])
@pytest.mark.parametrize("pattern", range(len(PATTERNS)))
def test_qemu_io_written_images_read_identical(tmp_path, cluster_size, pattern):
    image = tmp_path / "disk.hds"
    args = ["create", "-q", "-f", "parallels"]
    if cluster_size:
        args += ["-o", "cluster_size=%s" % cluster_size]
    qemu_img(*(args + [image, "6M"]))
    if PATTERNS[pattern]:
        qemu_io(image, *PATTERNS[pattern], fmt="parallels")
    assert probe_format(str(image)) == "parallels"
    assert_matches_qemu(image, tmp_path)


@pytest.mark.parametrize("size", ["1M", "3000k", "7M"])
def test_converted_by_qemu_img_read_identical(tmp_path, size):
    source = tmp_path / "source.raw"
    qemu_img("create", "-q", "-f", "raw", source, size)
    qemu_io(source, "write -P 0xa1 0 300k", "write -P 0xb2 700k 10k", "write -P 0xc3 900k 100k", fmt="raw")
    image = tmp_path / "converted.hds"
    qemu_img("convert", "-f", "raw", "-O", "parallels", source, image)
    assert_matches_qemu(image, tmp_path)
    assert our_digest(image) == raw_digest(source, tmp_path, fmt="raw")


@pytest.mark.parametrize("name", sorted(SAMPLE_DIGESTS))
def test_native_samples(tmp_path, name):
    image = unpack_sample(name, tmp_path)
    digest, size = SAMPLE_DIGESTS[name]
    with diskimage.open_image(str(image)) as opened:
        assert opened.virtual_size == size
    assert diskimage.info(str(image)) == qemu_img_json("info", image)
    assert diskimage.check(str(image)) == qemu_img_json("check", image)
    assert diskimage.map(str(image)) == qemu_img_json("map", image)
    if digest:
        assert our_digest(image) == digest == raw_digest(image, tmp_path, fmt="parallels")


def test_old_magic_sample_contents(tmp_path):
    image = unpack_sample("parallels-v1.bz2", tmp_path)
    with diskimage.open_image(str(image), fmt="parallels") as opened:
        for index, value in enumerate((0x11, 0x22, 0x33, 0x44)):
            assert opened.read(index * 65536, 65536) == bytes([value]) * 65536
        assert opened.read(256 * 1024, 4096) == bytes(4096)


def test_block_status_host_offsets(tmp_path):
    image = tmp_path / "disk.hds"
    qemu_img("create", "-q", "-f", "parallels", "-o", "cluster_size=64k", image, "1M")
    qemu_io(image, "write -P 0x5a 128k 64k", "write -P 0x6b 0 64k", fmt="parallels")
    driver = ParallelsDriver.open(str(image))
    try:
        extents = driver.block_status(0, driver.virtual_size)
        assert [(e.start, e.length, e.kind) for e in extents] == [
            (0, 65536, DATA), (65536, 65536, UNALLOCATED), (131072, 65536, DATA), (196608, 1048576 - 196608, UNALLOCATED)]
        with open(str(image), "rb") as raw_file:
            for extent in extents:
                if extent.kind == DATA:
                    raw_file.seek(extent.offset)
                    assert raw_file.read(extent.length) == driver.read(extent.start, extent.length)
    finally:
        driver.close()


def test_convert_to_qcow2_compares_equal(tmp_path):
    image = tmp_path / "disk.hds"
    qemu_img("create", "-q", "-f", "parallels", image, "5M")
    qemu_io(image, *PATTERNS[3], fmt="parallels")
    target = tmp_path / "out.qcow2"
    diskimage.convert(str(image), str(target), "qcow2")
    qemu_img("compare", "-f", "parallels", "-F", "qcow2", image, target)
    assert qemu_img_json("check", target)["check-errors"] == 0


def test_writes_and_creation_are_refused(tmp_path):
    image = tmp_path / "disk.hds"
    qemu_img("create", "-q", "-f", "parallels", image, "1M")
    with pytest.raises(UnsupportedOperation, match="read-only"):
        ParallelsDriver.open(str(image), readonly=False)
    with pytest.raises(UnsupportedOperation, match="parallels"):
        diskimage.create(str(tmp_path / "new.hds"), "parallels", size=M)
    assert not (tmp_path / "new.hds").exists()
    with pytest.raises(UnsupportedOperation):
        diskimage.convert(str(image), str(tmp_path / "copy.hds"), "parallels")
    with pytest.raises(UnsupportedOperation, match="read-only.*repairs"):
        diskimage.check(str(image), fmt="parallels", repair="all")
    driver = ParallelsDriver.open(str(image))
    try:
        with pytest.raises(UnsupportedOperation, match="writing parallels"):
            driver.write(0, b"x")
    finally:
        driver.close()
