# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qed driver, read side: images made by qemu-img (create, convert, qemu-io
writes and zero writes, backing chains mixed with raw and qcow2) read
byte-identical to qemu-img convert -O raw; info, map and check agree with
qemu-img's JSON."""

import hashlib
import struct

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io, raw_digest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage

K = 1024
M = 1024 * K

# Data ranges written by qemu-io: several clusters, unaligned starts and ends, a zero write in data.
PATTERN = ["write -P 0x11 0 100k", "write -P 0x22 1M 4k", "write -P 0x33 2000k 13", "write -P 0x44 3M 1M",
           "write -z 3200k 64k", "write -P 0x55 5M 512"]


def our_digest(path, fmt="qed"):
    h = hashlib.sha256()
    with diskimage.open_image(str(path), fmt=fmt) as image:
        offset = 0
        while offset < image.virtual_size:
            count = min(4 * M, image.virtual_size - offset)
            h.update(image.read(offset, count))
            offset += count
    return h.hexdigest()


def assert_info_agrees(path):
    ours = diskimage.info(str(path))
    theirs = qemu_img_json("info", path)
    for key in ("virtual-size", "format", "cluster-size", "dirty-flag", "backing-filename",
                "backing-filename-format", "full-backing-filename", "format-specific", "encrypted"):
        assert ours.get(key) == theirs.get(key), key


def assert_map_agrees(path):
    assert diskimage.map(str(path)) == qemu_img_json("map", path)


@pytest.mark.parametrize("cluster_size, table_size", [(4096, 2), (65536, 4), (16384, 16)])
@pytest.mark.parametrize("how", ["convert", "qemu-io"])
def test_qemu_made_image_reads_like_qemu(tmp_path, how, cluster_size, table_size):
    size = 6 * M + 3 * 512
    image = tmp_path / "disk.qed"
    options = "cluster_size=%d,table_size=%d" % (cluster_size, table_size)
    if how == "convert":
        source = tmp_path / "source.raw"
        qemu_img("create", "-q", "-f", "raw", source, size)
        qemu_io(source, *PATTERN, fmt="raw")
        qemu_img("convert", "-O", "qed", "-o", options, source, image)
    else:
        qemu_img("create", "-q", "-f", "qed", "-o", options, image, size)
        qemu_io(image, *(PATTERN + ["write -z 1M 64k", "write -z 4608k 128k", "write -P 0x66 %d 1536" % (6 * M)]),
                fmt="qed")
    assert our_digest(image) == raw_digest(image, tmp_path)
    assert_info_agrees(image)
    assert_map_agrees(image)
    ours = diskimage.check(str(image))
    theirs = qemu_img_json("check", image)
    assert ours == theirs
    assert ours.get("allocated-clusters", 0) > 0


def test_zero_clusters_read_as_zeroes_over_a_backing_file(tmp_path):
    base = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, "2M")
    qemu_io(base, "write -P 0xaa 0 2M", fmt="raw")
    top = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=base.raw,backing_fmt=raw", top)
    qemu_io(top, "write -z 64k 128k", "write -P 0xbb 1M 1000", fmt="qed")
    with diskimage.open_image(str(top), fmt="qed") as image:
        assert image.read(64 * K, 128 * K) == bytes(128 * K)
        assert image.read(0, 64 * K) == b"\xaa" * (64 * K)
        # the rest of the written cluster is copied from the backing file
        assert image.read(M, 1000 + 24) == b"\xbb" * 1000 + b"\xaa" * 24
    kinds = [(e.start, e.length, e.kind) for e in diskimage.open_image(str(top), fmt="qed").block_status(0, 2 * M)]
    assert (64 * K, 128 * K, "zero") in kinds
    assert our_digest(top) == raw_digest(top, tmp_path)
    assert_map_agrees(top)
    assert_info_agrees(top)


@pytest.mark.parametrize("base_fmt", ["raw", "qcow2", "qed", "qcow"])
def test_backing_chains(tmp_path, base_fmt):
    base = tmp_path / ("base." + base_fmt)
    qemu_img("create", "-q", "-f", base_fmt, base, "3M")
    qemu_io(base, "write -P 0x61 0 3M", "write -z 1M 512k", fmt=base_fmt)
    middle = tmp_path / "middle.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=%s,backing_fmt=%s,cluster_size=4096"
             % (base.name, base_fmt), middle, "4M")
    qemu_io(middle, "write -P 0x62 4k 5000", "write -z 2M 8k", "write -P 0x63 3584k 100k", fmt="qed")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "backing_file=middle.qed,backing_fmt=qed", top)
    qemu_io(top, "write -P 0x64 8k 4k", fmt="qcow2")
    for image, fmt in ((middle, "qed"), (top, "qcow2")):
        assert our_digest(image, fmt) == raw_digest(image, tmp_path)
        assert_map_agrees(image)
    assert_info_agrees(middle)
    chain = diskimage.info(str(top), backing_chain=True)
    theirs = qemu_img_json("info", "--backing-chain", top)
    assert [layer["format"] for layer in chain] == [layer["format"] for layer in theirs]
    assert [layer.get("backing-filename-format") for layer in chain] == \
        [layer.get("backing-filename-format") for layer in theirs]


def test_backing_format_no_probe_means_raw(tmp_path):
    # A raw backing file that looks like a qcow2 image is still read as raw.
    fake = tmp_path / "base.img"
    qemu_img("create", "-q", "-f", "qcow2", fake, "1M")
    top = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=base.img,backing_fmt=raw", top, "1M")
    header = top.read_bytes()[:64]
    assert struct.unpack_from("<Q", header, 16)[0] & 0x4
    info = diskimage.info(str(top))
    assert info["backing-filename-format"] == "raw"
    with diskimage.open_image(str(top), fmt="qed") as image:
        assert image.read(0, 4) == b"QFI\xfb"
    assert our_digest(top) == raw_digest(top, tmp_path)


def test_dirty_flag_and_check_of_damaged_images(tmp_path):
    image = tmp_path / "disk.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2", image, "4M")
    qemu_io(image, "write -P 0x11 0 16k", "write -P 0x22 2M 8k", fmt="qed")
    data = bytearray(image.read_bytes())
    # needs-check bit: info reports the dirty flag as qemu-img does
    features = struct.unpack_from("<Q", data, 16)[0]
    struct.pack_into("<Q", data, 16, features | 0x2)
    l1_offset = struct.unpack_from("<Q", data, 40)[0]
    l2_offset = struct.unpack_from("<Q", data, l1_offset)[0]
    entries = struct.unpack_from("<4Q", data, l2_offset)
    # entry 1 points past the end of the file, entry 3 at the same cluster as entry 0
    struct.pack_into("<Q", data, l2_offset + 8, len(data) + 4096 * 8)
    struct.pack_into("<Q", data, l2_offset + 24, entries[0])
    # and a leaked cluster at the end
    data += b"\x5a" * 4096
    image.write_bytes(bytes(data))
    assert_info_agrees(image)
    # qemu-img info leaves the image alone (and reports no dirty flag)
    assert struct.unpack_from("<Q", image.read_bytes(), 16)[0] & 0x2
    ours = diskimage.check(str(image))
    theirs = qemu_img_json("check", image)
    assert ours == theirs
    assert ours["corruptions"] == 2 and ours["leaks"] >= 1
