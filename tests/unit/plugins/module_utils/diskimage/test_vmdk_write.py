# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMDK creation and writing: qemu-img reads what we write identically and finds it clean."""

import hashlib
import os
import random
import re
import struct
import subprocess

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    InvalidOptionError, UnsupportedOperation)

MIB = 1024 * 1024
SUBFORMATS = ("monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat")
PATTERN = ("write -P 0x11 0 100k", "write -P 0x22 1M 64k", "write -P 0x33 3000000 5000",
           "write -P 0x44 4M 1M", "write -z 4500k 64k", "write -P 0x55 6000000 291152")


def qemu_compare(first, second, fmt_first, fmt_second):
    proc = subprocess.run(["qemu-img", "compare", "-f", fmt_first, "-F", fmt_second, str(first), str(second)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    return proc.returncode, proc.stdout


def qemu_check_clean(path):
    proc = subprocess.run(["qemu-img", "check", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stdout
    assert "No errors were found" in proc.stdout


def descriptor_text(path):
    with open(str(path), "rb") as image:
        head = image.read(4)
        if head == b"KDMV":
            image.seek(512)
            text = image.read(20 * 512)
        else:
            image.seek(0)
            text = image.read()
    text = text.split(b"\x00", 1)[0].decode()
    return re.sub(r"(?m)^CID=[0-9a-f]+$", "CID=<cid>", text)


@pytest.fixture(scope="module")
def source_raw(tmp_path_factory):
    path = tmp_path_factory.mktemp("vmdk-write-source") / "source.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", path, "6M")
    qemu_tools.qemu_io(path, *PATTERN, fmt="raw")
    return path


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_convert_to_each_subformat(subformat, source_raw, tmp_path):
    target = tmp_path / "out.vmdk"
    diskimage.convert(str(source_raw), str(target), "vmdk", options={"subformat": subformat})
    assert qemu_compare(source_raw, target, "raw", "vmdk") == (0, "Images are identical.\n")
    qemu_check_clean(target)
    info = qemu_tools.qemu_img_json("info", target)
    assert info["format-specific"]["data"]["create-type"] == subformat
    ours = diskimage.info(str(target))
    assert ours["format-specific"] == info["format-specific"]
    assert ours.get("cluster-size") == info.get("cluster-size")
    # and back through our reader
    back = tmp_path / "back.raw"
    diskimage.convert(str(target), str(back), "raw")
    assert qemu_tools.file_digest(back) == qemu_tools.file_digest(source_raw)


def test_stream_optimized_layout_is_vmware_stream(source_raw, tmp_path):
    """Grains (with markers), grain tables, grain directory, footer, end-of-stream marker."""
    target = tmp_path / "stream.vmdk"
    diskimage.convert(str(source_raw), str(target), "vmdk", options={"subformat": "streamOptimized"})
    raw = target.read_bytes()
    assert raw[:4] == b"KDMV"
    version, flags = struct.unpack_from("<II", raw, 4)
    gd_offset = struct.unpack_from("<Q", raw, 56)[0]
    assert (version, flags, gd_offset) == (3, 0x30001, 0xffffffffffffffff)
    assert len(raw) % 512 == 0
    assert struct.unpack_from("<QII", raw, len(raw) - 512) == (0, 0, 0)            # end of stream
    assert struct.unpack_from("<QII", raw, len(raw) - 1536) == (1, 0, 3)           # footer marker
    assert raw[len(raw) - 1024:len(raw) - 1020] == b"KDMV"
    footer_gd = struct.unpack_from("<Q", raw, len(raw) - 1024 + 56)[0]
    assert struct.unpack_from("<QII", raw, (footer_gd - 1) * 512)[1:] == (0, 2)   # grain directory marker
    # The first grain follows the 128-sector overhead: a grain marker for guest sector 0.
    assert struct.unpack_from("<Q", raw, 128 * 512)[0] == 0
    # Only the grains holding data are stored, compressed: the file is smaller than the data.
    assert len(raw) < 3 * MIB


@pytest.mark.parametrize("options", (
    {}, {"adapter_type": "lsilogic"}, {"adapter_type": "buslogic", "hwversion": "7"},
    {"adapter_type": "legacyESX", "toolsversion": "10304"}, {"compat6": True}, {"zeroed_grain": True},
    {"subformat": "monolithicFlat", "adapter_type": "lsilogic"}, {"subformat": "twoGbMaxExtentSparse"},
    {"subformat": "twoGbMaxExtentFlat", "hwversion": "11"}, {"subformat": "streamOptimized"},
))
def test_create_descriptor_as_qemu_img(options, tmp_path):
    ours_dir = tmp_path / "ours"
    theirs_dir = tmp_path / "theirs"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    size = 3 * 1024 * MIB if options.get("subformat", "").startswith("twoGb") else 5 * MIB + 512
    diskimage.create(str(ours_dir / "disk.vmdk"), "vmdk", size=size, options=options)
    text_options = ",".join("%s=%s" % (key, ("on" if value is True else value)) for key, value in options.items())
    args = ["create", "-q", "-f", "vmdk"] + (["-o", text_options] if text_options else []) + [
        theirs_dir / "disk.vmdk", str(size)]
    qemu_tools.qemu_img(*args)
    assert descriptor_text(ours_dir / "disk.vmdk") == descriptor_text(theirs_dir / "disk.vmdk")
    assert sorted(os.listdir(str(ours_dir))) == sorted(os.listdir(str(theirs_dir)))
    ours_info = qemu_tools.qemu_img_json("info", ours_dir / "disk.vmdk")
    theirs_info = qemu_tools.qemu_img_json("info", theirs_dir / "disk.vmdk")
    for info in (ours_info, theirs_info):
        info["format-specific"]["data"].pop("cid")
        for extent in info["format-specific"]["data"]["extents"]:
            extent["filename"] = os.path.basename(extent["filename"])
    assert ours_info["format-specific"] == theirs_info["format-specific"]
    assert ours_info["virtual-size"] == theirs_info["virtual-size"]
    if options.get("subformat", "monolithicSparse") == "monolithicSparse":
        # Same layout as qemu-img's: header and tables byte for byte.
        with open(str(ours_dir / "disk.vmdk"), "rb") as ours, open(str(theirs_dir / "disk.vmdk"), "rb") as theirs:
            assert ours.read(512) == theirs.read(512)
    qemu_check_clean(ours_dir / "disk.vmdk")


def test_create_rejects_bad_options(tmp_path):
    for options in ({"subformat": "monolithic"}, {"adapter_type": "scsi"}, {"compat6": True, "hwversion": "7"},
                    {"subformat": "monolithicFlat", "zeroed_grain": True}, {"cluster_size": 65536}):
        with pytest.raises(InvalidOptionError):
            diskimage.create(str(tmp_path / "bad.vmdk"), "vmdk", size=MIB, options=options)
        assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("subformat", ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse"))
def test_random_writes_read_back_by_qemu(subformat, tmp_path):
    image = tmp_path / "disk.vmdk"
    mirror = tmp_path / "mirror.raw"
    size = 8 * MIB
    diskimage.create(str(image), "vmdk", size=size, options={"subformat": subformat})
    qemu_tools.qemu_img("create", "-q", "-f", "raw", mirror, str(size))
    rng = random.Random(4)
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened, open(str(mirror), "r+b") as raw:
        for step in range(60):
            offset = rng.randrange(0, size - 1)
            length = min(size - offset, rng.choice((1, 512, 4096, 65536, 70000, 300000)))
            if step % 5 == 4:
                data = bytes(length)
                opened.write_zeroes(offset, length)
            else:
                data = bytes([rng.randrange(1, 256)]) * length
                opened.write(offset, data)
            raw.seek(offset)
            raw.write(data)
            check_at = rng.randrange(0, size - 4096)
            raw.seek(check_at)
            assert opened.read(check_at, 4096) == raw.read(4096)
    assert qemu_compare(mirror, image, "raw", "vmdk") == (0, "Images are identical.\n")
    qemu_check_clean(image)


def test_zeroed_grain_writes_zeroed_entries(tmp_path):
    image = tmp_path / "disk.vmdk"
    diskimage.create(str(image), "vmdk", size=4 * MIB, options={"zeroed_grain": True})
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened:
        opened.write(0, b"\x01" * (2 * MIB))
        opened.write_zeroes(64 * 1024, 128 * 1024)
    qemu_map = qemu_tools.qemu_img_json("map", image)
    assert diskimage.map(str(image)) == qemu_map
    assert any(item["zero"] and item["present"] and item["start"] == 64 * 1024 for item in qemu_map)
    expected = bytearray(b"\x01" * (2 * MIB) + bytes(2 * MIB))
    expected[64 * 1024:192 * 1024] = bytes(128 * 1024)
    assert qemu_tools.raw_digest(image, tmp_path) == hashlib.sha256(expected).hexdigest()
    qemu_check_clean(image)


def test_stream_optimized_refuses_random_writes(tmp_path):
    image = tmp_path / "stream.vmdk"
    diskimage.create(str(image), "vmdk", size=4 * MIB, options={"subformat": "streamOptimized"})
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened:
        opened.write(MIB, b"\x42" * 1000)
        opened.write(MIB + 2000, b"\x43" * 1000)       # same grain, later: still sequential
        opened.write(2 * MIB, b"\x44" * 65536)
        with pytest.raises(UnsupportedOperation, match="sequential"):
            opened.write(0, b"\x01")
        with pytest.raises(UnsupportedOperation, match="sequential"):
            opened.write(MIB, b"\x01")
        assert opened.read(MIB, 3000) == b"\x42" * 1000 + bytes(1000) + b"\x43" * 1000
        opened.write(3 * MIB, b"\x45" * 512)            # appending after a read still works
        assert opened.read(3 * MIB - 2, 4) == b"\x00\x00\x45\x45"   # the open grain, from memory
        opened.write(3 * MIB + 512, b"\x46" * 512)      # and that grain stays open after a read
    qemu_check_clean(image)
    with diskimage.open_image(str(image)) as opened:
        assert opened.read(3 * MIB, 1536) == b"\x45" * 512 + b"\x46" * 512 + bytes(512)
    proc = subprocess.run(["qemu-io", "-f", "vmdk", "-r", "-c", "read -P 0x44 2M 64k", "-c", "read -P 0x45 3M 512",
                           str(image)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert proc.returncode == 0 and "Pattern verification failed" not in proc.stdout, proc.stdout


def test_stream_optimized_appends_after_reopen(tmp_path):
    image = tmp_path / "stream.vmdk"
    diskimage.create(str(image), "vmdk", size=4 * MIB, options={"subformat": "streamOptimized"})
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened:
        opened.write(0, b"\x01" * 65536)
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened:
        with pytest.raises(UnsupportedOperation):
            opened.write(0, b"\x02" * 512)
        opened.write(MIB, b"\x03" * 65536)
    qemu_check_clean(image)
    proc = subprocess.run(["qemu-io", "-f", "vmdk", "-r", "-c", "read -P 1 0 64k", "-c", "read -P 3 1M 64k",
                           str(image)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert proc.returncode == 0 and "Pattern verification failed" not in proc.stdout, proc.stdout


def test_qemu_stream_optimized_gets_whole_grains_appended(tmp_path, source_raw):
    """qemu-img's own stream layout (tables before the grains): unallocated grains may be
    written in any order, whole; allocated ones are never rewritten (as QEMU refuses)."""
    image = tmp_path / "qemu-stream.vmdk"
    qemu_tools.qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", source_raw, image)
    mirror = tmp_path / "mirror.raw"
    mirror.write_bytes(source_raw.read_bytes())
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened:
        with pytest.raises(UnsupportedOperation, match="allocated"):
            opened.write(0, b"\x01" * 65536)
        with pytest.raises(UnsupportedOperation, match="whole grains"):
            opened.write(2 * MIB + 512, b"\x01" * 512)
        for offset, value in ((3 * MIB, 7), (2 * MIB, 8), (5 * MIB + 65536, 9)):
            opened.write(offset, bytes([value]) * 65536)
            with open(str(mirror), "r+b") as raw:
                raw.seek(offset)
                raw.write(bytes([value]) * 65536)
        assert opened.read(2 * MIB, 4) == b"\x08" * 4
    assert qemu_compare(mirror, image, "raw", "vmdk") == (0, "Images are identical.\n")
    qemu_check_clean(image)


def test_compressed_convert_to_stream(source_raw, tmp_path):
    """convert(compress=True) compresses grains in worker threads and appends them in order."""
    target = tmp_path / "out.vmdk"
    result = diskimage.convert(str(source_raw), str(target), "vmdk", options={"subformat": "streamOptimized"},
                               compress=True)
    assert result["compressed_clusters"] > 0
    assert qemu_compare(source_raw, target, "raw", "vmdk") == (0, "Images are identical.\n")
    qemu_check_clean(target)


def test_compressed_convert_to_sparse_writes_plain_grains(source_raw, tmp_path):
    target = tmp_path / "out.vmdk"
    result = diskimage.convert(str(source_raw), str(target), "vmdk", compress=True)
    assert result["compressed_clusters"] == 0
    assert qemu_compare(source_raw, target, "raw", "vmdk") == (0, "Images are identical.\n")
    qemu_check_clean(target)


def test_delta_disk_created_and_written(tmp_path):
    base = tmp_path / "base.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", base, "4M")
    qemu_tools.qemu_io(base, "write -P 0x11 0 2M", fmt="vmdk")
    child = tmp_path / "child.vmdk"
    diskimage.create(str(child), "vmdk", backing_file="base.vmdk", backing_fmt="vmdk")
    theirs = tmp_path / "theirs.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", theirs)
    assert descriptor_text(child).replace("child.vmdk", "X") == descriptor_text(theirs).replace("theirs.vmdk", "X")
    with diskimage.open_image(str(child), fmt="vmdk", readonly=False) as opened:
        opened.write(100000, b"\x22" * 1000)          # partial grain: the rest is copied from the parent
        opened.write_zeroes(MIB, 65536)
    qemu_tools.qemu_io(theirs, "write -P 0x22 100000 1000", "write -z 1M 64k", fmt="vmdk")
    assert qemu_compare(theirs, child, "vmdk", "vmdk") == (0, "Images are identical.\n")
    assert qemu_tools.raw_digest(child, tmp_path) == qemu_tools.raw_digest(theirs, tmp_path)
    qemu_check_clean(child)


def test_backing_must_be_vmdk(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_tools.qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "child.vmdk"), "vmdk", backing_file="base.qcow2", backing_fmt="qcow2")


def test_first_write_changes_cid(tmp_path):
    image = tmp_path / "disk.vmdk"
    diskimage.create(str(image), "vmdk", size=MIB, options={"subformat": "monolithicFlat"})
    before = qemu_tools.qemu_img_json("info", image)["format-specific"]["data"]["cid"]
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened:
        opened.write(0, b"x" * 512)
        opened.write(512, b"y" * 512)
    after = qemu_tools.qemu_img_json("info", image)["format-specific"]["data"]["cid"]
    assert before != after
    assert diskimage.info(str(image))["format-specific"]["data"]["cid"] == after


@pytest.mark.parametrize("subformat", ("monolithicSparse", "streamOptimized"))
def test_convert_onto_a_vmdk_backing_file(subformat, tmp_path):
    """convert -B base.vmdk: only what differs from the base is stored, zeroes hide the base."""
    base = tmp_path / "base.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", base, "4M")
    qemu_tools.qemu_io(base, "write -P 0x11 0 4M", fmt="vmdk")
    child = tmp_path / "child.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", child)
    qemu_tools.qemu_io(child, "write -P 0x22 64k 64k", "write -z 1M 128k", "write -P 0x33 3M 4k", fmt="vmdk")
    out = tmp_path / "out.vmdk"
    diskimage.convert(str(child), str(out), "vmdk",
                      options={"subformat": subformat, "backing_file": "base.vmdk", "backing_fmt": "vmdk"})
    assert qemu_compare(child, out, "vmdk", "vmdk") == (0, "Images are identical.\n")
    qemu_check_clean(out)
    info = qemu_tools.qemu_img_json("info", out)
    assert info["backing-filename"] == "base.vmdk"
    assert info["format-specific"]["data"]["parent-cid"] == qemu_tools.qemu_img_json(
        "info", base)["format-specific"]["data"]["cid"]


@pytest.mark.parametrize("subformat", ("monolithicSparse", "streamOptimized"))
def test_unallocated_grain_tables_are_allocated_on_write(subformat, tmp_path):
    """Grain directory entries of 0 (no table yet): a write allocates the table (and its
    redundant copy) at the end of the file before the grain."""
    image = tmp_path / "disk.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=" + subformat, image, "80M")
    raw = bytearray(image.read_bytes())
    header = struct.unpack_from("<4sIIQQQQIQQQ", raw)
    rgd, gd = header[8], header[9]
    for directory in (rgd, gd):
        raw[directory * 512:directory * 512 + 8] = bytes(8)      # tables 0 and 1 "not allocated"
    image.write_bytes(bytes(raw))
    mirror = tmp_path / "mirror.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", mirror, "80M")
    writes = ((0, 0x61), (40 * MIB, 0x62), (70 * MIB, 0x63), (33 * MIB, 0x64))
    with diskimage.open_image(str(image), fmt="vmdk", readonly=False) as opened:
        for offset, value in writes:
            opened.write(offset, bytes([value]) * 65536)
    with open(str(mirror), "r+b") as mirror_file:
        for offset, value in writes:
            mirror_file.seek(offset)
            mirror_file.write(bytes([value]) * 65536)
    assert qemu_compare(mirror, image, "raw", "vmdk") == (0, "Images are identical.\n")
    qemu_check_clean(image)
    raw = image.read_bytes()
    assert struct.unpack_from("<2I", raw, gd * 512) != (0, 0)
    if subformat == "monolithicSparse":
        assert struct.unpack_from("<2I", raw, rgd * 512) != (0, 0)
        # the redundant tables hold the same entries as the primary ones
        for index in range(3):              # 80 MiB: three tables of 32 MiB
            primary = struct.unpack_from("<I", raw, gd * 512 + 4 * index)[0] * 512
            redundant = struct.unpack_from("<I", raw, rgd * 512 + 4 * index)[0] * 512
            assert primary != redundant
            assert raw[primary:primary + 2048] == raw[redundant:redundant + 2048]
