# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMDK reading against qemu-img: every subformat qemu-img makes, native samples, delta disks."""

import bz2
import gzip
import hashlib
import json
import os
import shutil
import subprocess

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import CorruptImageError, UnsupportedOperation
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import MAX_IO
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vmdk import VmdkDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe_format

MIB = 1024 * 1024
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "vmdk")
SUBFORMATS = ("monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat")
# Data ranges (several, unaligned), a zero range over data, and holes.
PATTERN = ("write -P 0x11 0 100k", "write -P 0x22 1M 64k", "write -P 0x33 3000000 5000",
           "write -P 0x44 4M 1M", "write -z 4500k 64k", "write -P 0x55 6000000 291152")


def our_digest(path, size=None):
    digest = hashlib.sha256()
    with diskimage.open_image(str(path)) as image:
        size = image.virtual_size if size is None else size
        for offset in range(0, size, MAX_IO):
            digest.update(image.read(offset, min(MAX_IO, size - offset)))
    return digest.hexdigest()


def prefix_digest(path, size):
    digest = hashlib.sha256()
    with open(str(path), "rb") as raw:
        digest.update(raw.read(size))
    return digest.hexdigest()


def assert_info_matches(path):
    theirs = qemu_tools.qemu_img_json("info", path)
    ours = diskimage.info(str(path))
    for key in ("virtual-size", "format", "cluster-size", "format-specific", "backing-filename",
                "backing-filename-format", "full-backing-filename"):
        assert ours.get(key) == theirs.get(key), key


@pytest.fixture(scope="module")
def source_raw(tmp_path_factory):
    path = tmp_path_factory.mktemp("vmdk-source") / "source.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", path, "6M")
    qemu_tools.qemu_io(path, *PATTERN, fmt="raw")
    return path


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_qemu_converted_images_read_identically(subformat, source_raw, tmp_path):
    image = tmp_path / "disk.vmdk"
    qemu_tools.qemu_img("convert", "-O", "vmdk", "-o", "subformat=" + subformat, source_raw, image)
    assert probe_format(str(image)) == "vmdk"
    assert our_digest(image) == qemu_tools.raw_digest(image, tmp_path) == qemu_tools.file_digest(source_raw)
    assert_info_matches(image)
    out = tmp_path / "ours.raw"
    diskimage.convert(str(image), str(out), "raw")
    assert qemu_tools.file_digest(out) == qemu_tools.file_digest(source_raw)
    assert diskimage.check(str(image))["check-errors"] == 0


@pytest.mark.parametrize("subformat", ("monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized"))
def test_map_matches_qemu(subformat, source_raw, tmp_path):
    image = tmp_path / "disk.vmdk"
    qemu_tools.qemu_img("convert", "-O", "vmdk", "-o", "subformat=" + subformat, source_raw, image)
    assert diskimage.map(str(image)) == qemu_tools.qemu_img_json("map", image)


@pytest.mark.parametrize("options", (
    "subformat=monolithicSparse", "subformat=monolithicSparse,zeroed_grain=on",
    "subformat=twoGbMaxExtentSparse,adapter_type=lsilogic", "subformat=monolithicFlat,hwversion=7",
    "subformat=twoGbMaxExtentFlat,compat6=on", "subformat=streamOptimized",
))
def test_qemu_created_images_written_by_qemu_io(options, tmp_path):
    image = tmp_path / "disk.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", "-o", options, image, "5M")
    commands = list(PATTERN[:3]) + ["write -P 0x66 2M 200k"]
    if "zeroed_grain" in options:
        commands += ["write -z 2M 128k"]
    if "streamOptimized" not in options:
        qemu_tools.qemu_io(image, *commands, fmt="vmdk")
    assert our_digest(image) == qemu_tools.raw_digest(image, tmp_path)
    assert_info_matches(image)
    if "zeroed_grain" in options:
        assert diskimage.map(str(image)) == qemu_tools.qemu_img_json("map", image)


def test_split_image_over_two_gib_extents(tmp_path):
    """Extents of 2 GiB: data around the boundary lands in two files."""
    image = tmp_path / "big.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", image, "3G")
    qemu_tools.qemu_io(image, "write -P 0x77 2047M 2M", "write -P 0x78 3071M 1M", fmt="vmdk")
    assert_info_matches(image)
    with diskimage.open_image(str(image)) as opened:
        assert opened.read(2047 * MIB, 2 * MIB) == b"\x77" * (2 * MIB)
        assert opened.read(3071 * MIB, MIB) == b"\x78" * MIB
        assert opened.read(2046 * MIB, MIB) == bytes(MIB)
    assert diskimage.map(str(image)) == qemu_tools.qemu_img_json("map", image)


def test_native_stream_optimized_sample(tmp_path):
    image = tmp_path / "iotest-version3.vmdk"
    with bz2.open(os.path.join(SAMPLES, "iotest-version3.vmdk.bz2")) as packed, open(str(image), "wb") as out:
        shutil.copyfileobj(packed, out)
    assert probe_format(str(image)) == "vmdk"
    assert_info_matches(image)
    info = diskimage.info(str(image))
    assert info["virtual-size"] == 16 << 30
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    with diskimage.open_image(str(image)) as opened:
        for i in range(100):
            offset = i * 655360 + i * 512
            expected = bytes([0x30 + i % 10]) * 512
            assert opened.read(offset, 512) == expected
            assert opened.read(offset + 512, 512) == bytes(512)
    # Everything is in the first 66 MiB: compare that part with qemu's raw view.
    size = 66 * MIB
    qemu_raw = tmp_path / "qemu.raw"
    qemu_tools.qemu_img("convert", "-O", "raw", image, qemu_raw)
    assert our_digest(image, size) == prefix_digest(qemu_raw, size)
    assert diskimage.map(str(image)) == qemu_tools.qemu_img_json("map", image)


def _sesparse(tmp_path):
    extent = tmp_path / "disk-sesparse.vmdk"
    with gzip.open(os.path.join(SAMPLES, "sesparse.vmdk.gz")) as packed, open(str(extent), "wb") as out:
        shutil.copyfileobj(packed, out)
    descriptor = tmp_path / "disk.vmdk"
    descriptor.write_text('# Disk DescriptorFile\nversion=1\nCID=5eb2a01c\nparentCID=ffffffff\n'
                          'createType="seSparse"\n\n# Extent description\n'
                          'RW 1048576 SESPARSE "disk-sesparse.vmdk"\n\n# The Disk Data Base\n#DDB\n\n'
                          'ddb.adapterType = "lsilogic"\n')
    return descriptor


def test_native_sesparse_sample(tmp_path):
    descriptor = _sesparse(tmp_path)
    assert probe_format(str(descriptor)) == "vmdk"
    assert_info_matches(descriptor)
    with diskimage.open_image(str(descriptor)) as opened:
        assert opened.virtual_size == 512 * MIB
        assert opened.read(0, 16 * MIB) == b"a" * (16 * MIB)
        assert opened.read(16 * MIB, MIB) == bytes(MIB)
    out = tmp_path / "ours.raw"
    diskimage.convert(str(descriptor), str(out), "raw")
    # qemu-img compare skips what both sides leave unallocated: quicker than hashing 512 MiB twice.
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "vmdk", out, descriptor)
    assert prefix_digest(out, 16 * MIB) == hashlib.sha256(b"a" * (16 * MIB)).hexdigest()
    ours = diskimage.map(str(descriptor))
    assert ours == qemu_tools.qemu_img_json("map", descriptor)


def test_sesparse_refuses_writes(tmp_path):
    descriptor = _sesparse(tmp_path)
    with pytest.raises(UnsupportedOperation, match="seSparse"):
        diskimage.open_image(str(descriptor), readonly=False)


@pytest.fixture
def qemu_chain(tmp_path):
    base = tmp_path / "base.vmdk"
    child = tmp_path / "child.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", base, "4M")
    qemu_tools.qemu_io(base, "write -P 0x11 0 1M", "write -P 0x22 2M 100k", fmt="vmdk")
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
    qemu_tools.qemu_io(child, "write -P 0x33 512k 1000", "write -P 0x44 3M 64k", fmt="vmdk")
    return base, child


def test_delta_disk_reads_through_parent(qemu_chain, tmp_path):
    child = qemu_chain[1]
    assert our_digest(child) == qemu_tools.raw_digest(child, tmp_path)
    assert_info_matches(child)
    assert diskimage.map(str(child)) == qemu_tools.qemu_img_json("map", child)
    chain = diskimage.info(str(child), backing_chain=True)
    assert [layer["format-specific"]["data"]["cid"] for layer in chain] == [
        layer["format-specific"]["data"]["cid"] for layer in qemu_tools.qemu_img_json("info", "--backing-chain", child)]
    assert chain[0]["format-specific"]["data"]["parent-cid"] == chain[1]["format-specific"]["data"]["cid"]


def test_delta_disk_with_changed_parent_is_refused(qemu_chain):
    base, child = qemu_chain
    # Writing the parent gives it a new CID: the delta no longer matches it (qemu: EINVAL).
    qemu_tools.qemu_io(base, "write -P 0x99 1M 4k", fmt="vmdk")
    proc = subprocess.run(["qemu-img", "convert", "-O", "raw", str(child), str(child) + ".raw"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert proc.returncode != 0
    with diskimage.open_image(str(child)) as opened:
        assert opened.read(512 * 1024, 1000) == b"\x33" * 1000
        with pytest.raises(CorruptImageError, match="CID"):
            opened.read(0, 4096)


def test_vmfs_flat_descriptor(tmp_path):
    """createType vmfs: a VMFS extent is flat data at offset 0."""
    data = tmp_path / "disk-flat.vmdk"
    payload = bytes(range(256)) * 4096 * 2
    data.write_bytes(payload)
    descriptor = tmp_path / "disk.vmdk"
    descriptor.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                          'createType="vmfs"\n\n# Extent description\nRW 4096 VMFS "disk-flat.vmdk"\n\n'
                          'ddb.adapterType = "lsilogic"\n')
    assert_info_matches(descriptor)
    assert our_digest(descriptor) == qemu_tools.raw_digest(descriptor, tmp_path) == hashlib.sha256(payload).hexdigest()


def test_flat_extent_with_offset_and_several_extents(tmp_path):
    """monolithicFlat descriptor with two FLAT extents, one at a non-zero offset.  (A blank
    line straight before an extent line makes qemu parse that extent twice: a comment
    line separates them, as in every descriptor qemu-img and VMware write.)"""
    (tmp_path / "a.bin").write_bytes(b"\xaa" * MIB)
    (tmp_path / "b.bin").write_bytes(b"\x00" * 4096 + b"\xbb" * MIB)
    descriptor = tmp_path / "disk.vmdk"
    descriptor.write_text('# Disk DescriptorFile\nversion=1\nCID=1234\nparentCID=ffffffff\n'
                          'createType="monolithicFlat"\n\n# Extent description\nRW 2048 FLAT "a.bin" 0\nRW 2048 FLAT "b.bin" 8\n')
    assert_info_matches(descriptor)
    assert our_digest(descriptor) == qemu_tools.raw_digest(descriptor, tmp_path)
    with diskimage.open_image(str(descriptor)) as opened:
        assert opened.read(MIB - 1, 2) == b"\xaa\xbb"


def _cowd_extent(path, capacity_sectors, grain_sectors, grains):
    """A vmfsSparse ("COWD") extent built from the layout QEMU reads: header, grain
    directory at sector 4, one 4096-entry grain table per directory entry, grains."""
    import struct
    gtes = 4096
    gd_entries = -(-capacity_sectors // (gtes * grain_sectors))
    gd_sector = 4
    gt_sector = gd_sector + -(-gd_entries * 4 // 512)
    gt_sectors = gtes * 4 // 512
    data_sector = gt_sector + gd_entries * gt_sectors
    image = bytearray(data_sector * 512)
    struct.pack_into("<4s10I", image, 0, b"COWD", 1, 3, capacity_sectors, grain_sectors, gd_sector,
                     gd_entries, 0, 0, 0, 0)
    for index in range(gd_entries):
        struct.pack_into("<I", image, gd_sector * 512 + 4 * index, gt_sector + index * gt_sectors)
    for grain_index, payload in grains.items():
        sector = len(image) // 512
        image += payload.ljust(grain_sectors * 512, b"\x00")
        table, entry = divmod(grain_index, gtes)
        struct.pack_into("<I", image, (gt_sector + table * gt_sectors) * 512 + 4 * entry, sector)
    path.write_bytes(bytes(image))


def test_vmfs_sparse_cowd_extent(tmp_path):
    _cowd_extent(tmp_path / "disk-delta.vmdk", 8192, 2, {0: b"\x01" * 1024, 5: b"\x05" * 700, 4000: b"\x40" * 1024})
    descriptor = tmp_path / "disk.vmdk"
    descriptor.write_text('# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=ffffffff\n'
                          'createType="vmfsSparse"\n\n# Extent description\nRW 8192 VMFSSPARSE "disk-delta.vmdk"\n')
    assert_info_matches(descriptor)
    assert our_digest(descriptor) == qemu_tools.raw_digest(descriptor, tmp_path)
    with diskimage.open_image(str(descriptor)) as opened:
        assert opened.read(5 * 1024, 1024) == b"\x05" * 700 + bytes(324)
        assert opened.read(4000 * 1024, 1024) == b"\x40" * 1024


def test_probe_descriptor_text_as_qemu_does():
    assert VmdkDriver.probe(b"# Disk DescriptorFile\nversion=1\nCID=1\n", None) == 100
    assert VmdkDriver.probe(b"# comment\n   \r\nversion=3\r\n", None) == 100
    assert VmdkDriver.probe(b"version=4\n", None) == 0
    assert VmdkDriver.probe(b"\nversion=1\n", None) == 0
    assert VmdkDriver.probe(b"KDMV\x01\x00\x00\x00", None) == 100
    assert VmdkDriver.probe(b"hello world", None) == 0


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_check_json_as_qemu_img(subformat, source_raw, tmp_path):
    image = tmp_path / "disk.vmdk"
    qemu_tools.qemu_img("convert", "-O", "vmdk", "-o", "subformat=" + subformat, source_raw, image)
    theirs = qemu_tools.qemu_img_json("check", image)
    ours = diskimage.check(str(image))
    theirs["filename"] = ours["filename"]
    assert json.loads(json.dumps(ours)) == theirs
    assert theirs["check-errors"] == 0


class _Window:
    """A read-only view of part of a file (as a VMDK member inside an OVA tar)."""

    def __init__(self, path, start, size):
        self.path = str(path)
        self._file = open(self.path, "rb")
        self._start = start
        self._size = size

    def size(self):
        return self._size

    def pread(self, offset, length):
        length = max(0, min(length, self._size - offset))
        return os.pread(self._file.fileno(), length, self._start + offset)

    def pread_exact(self, offset, length, what):
        data = self.pread(offset, length)
        if len(data) != length:
            raise AssertionError("short read of %s" % what)
        return data

    def close(self):
        self._file.close()


def test_open_file_reads_a_stream_inside_a_container(source_raw, tmp_path):
    stream = tmp_path / "disk.vmdk"
    qemu_tools.qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", source_raw, stream)
    container = tmp_path / "container.bin"
    payload = stream.read_bytes()
    container.write_bytes(b"\xee" * 1536 + payload + b"\xee" * 1024)
    driver = VmdkDriver.open_file(_Window(container, 1536, len(payload)))
    try:
        digest = hashlib.sha256()
        for offset in range(0, driver.virtual_size, MAX_IO):
            digest.update(driver.read(offset, min(MAX_IO, driver.virtual_size - offset)))
        assert digest.hexdigest() == qemu_tools.file_digest(source_raw)
    finally:
        driver.close()
