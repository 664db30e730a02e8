# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow (version 1) driver, read side: images made by qemu-img (create,
convert, convert -c for compressed clusters, qemu-io writes, backing chains
mixed with raw, qcow2 and qed) read byte-identical to qemu-img convert -O
raw; info and map agree with qemu-img's JSON; qemu-img has no check for qcow
and neither has the library."""

import hashlib
import subprocess

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io, raw_digest, run

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    UnsupportedFeature, UnsupportedOperation)

K = 1024
M = 1024 * K

PATTERN = ["write -P 0x11 0 100k", "write -P 0x22 1M 4k", "write -P 0x33 2000k 13", "write -P 0x44 3M 1M",
           "write -z 3200k 64k", "write -P 0x55 5M 512"]


def our_digest(path, fmt="qcow"):
    h = hashlib.sha256()
    with diskimage.open_image(str(path), fmt=fmt) as image:
        offset = 0
        while offset < image.virtual_size:
            count = min(4 * M, image.virtual_size - offset)
            h.update(image.read(offset, count))
            offset += count
    return h.hexdigest()


def convert_compressed(source, image):
    """qemu-img convert -c -O qcow: qemu-img 7.2 exits 1 without a message after
    writing the whole image (its end-of-stream compressed write fails for qcow),
    so completeness is checked with qemu-img compare instead."""
    proc = subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow", str(source), str(image)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode in (0, 1) and not proc.stderr.strip(), proc.stderr
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow", source, image)


def assert_info_agrees(path):
    ours = diskimage.info(str(path))
    theirs = qemu_img_json("info", path)
    for key in ("virtual-size", "format", "cluster-size", "dirty-flag", "backing-filename",
                "backing-filename-format", "full-backing-filename", "format-specific", "encrypted"):
        assert ours.get(key) == theirs.get(key), key


def assert_map_agrees(path):
    assert diskimage.map(str(path)) == qemu_img_json("map", path)


@pytest.mark.parametrize("size", [6 * M + 3 * 512, 6 * M + 100])
@pytest.mark.parametrize("how", ["convert", "convert -c", "qemu-io"])
def test_qemu_made_image_reads_like_qemu(tmp_path, how, size):
    image = tmp_path / "disk.qcow"
    if how.startswith("convert"):
        source = tmp_path / "source.raw"
        qemu_img("create", "-q", "-f", "raw", source, size)
        qemu_io(source, *PATTERN, fmt="raw")
        if how == "convert":
            qemu_img("convert", "-O", "qcow", source, image)
        else:
            convert_compressed(source, image)
    else:
        qemu_img("create", "-q", "-f", "qcow", image, size)
        qemu_io(image, *(PATTERN + ["write -z 1M 64k", "write -P 0x66 %d 1536" % (6 * M - 1024)]), fmt="qcow")
    assert our_digest(image) == raw_digest(image, tmp_path)
    assert_info_agrees(image)
    assert_map_agrees(image)
    with pytest.raises(UnsupportedOperation):
        diskimage.check(str(image))


def test_compressed_clusters_are_reported_without_host_offset(tmp_path):
    source = tmp_path / "source.raw"
    qemu_img("create", "-q", "-f", "raw", source, "1M")
    qemu_io(source, "write -P 0x41 0 64k", fmt="raw")
    image = tmp_path / "disk.qcow"
    convert_compressed(source, image)
    with diskimage.open_image(str(image), fmt="qcow") as disk:
        extents = disk.block_status(0, M)
        assert extents[0].kind == "data" and extents[0].offset is None and extents[0].length == 64 * K
        assert disk.read(60 * K, 8 * K) == b"\x41" * (4 * K) + bytes(4 * K)
    # compressed: the file is much smaller than the data
    assert image.stat().st_size < 16 * K


@pytest.mark.parametrize("base_fmt", ["raw", "qcow2", "qed", "qcow"])
def test_backing_chains(tmp_path, base_fmt):
    base = tmp_path / ("base." + base_fmt)
    qemu_img("create", "-q", "-f", base_fmt, base, "3M")
    qemu_io(base, "write -P 0x61 0 3M", "write -z 1M 512k", fmt=base_fmt)
    middle = tmp_path / "middle.qcow"
    qemu_img("create", "-q", "-f", "qcow", "-o", "backing_file=%s,backing_fmt=%s" % (base.name, base_fmt),
             middle, "4M")
    qemu_io(middle, "write -P 0x62 4k 5000", "write -z 2M 8k", "write -P 0x63 3584k 100k", fmt="qcow")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "backing_file=middle.qcow,backing_fmt=qcow", top)
    qemu_io(top, "write -P 0x64 8k 4k", fmt="qcow2")
    for image, fmt in ((middle, "qcow"), (top, "qcow2")):
        assert our_digest(image, fmt) == raw_digest(image, tmp_path)
        assert_map_agrees(image)
    assert_info_agrees(middle)
    # qcow records no backing format: the backing file is probed
    chain = diskimage.info(str(top), backing_chain=True)
    theirs = qemu_img_json("info", "--backing-chain", top)
    assert [layer["format"] for layer in chain] == [layer["format"] for layer in theirs]
    assert "backing-filename-format" not in chain[1]


def test_encrypted_images_are_named_not_read(tmp_path):
    image = tmp_path / "secret.qcow"
    qemu_img("create", "-q", "-f", "qcow", "--object", "secret,id=sec0,data=abc",
             "-o", "encryption=on,encrypt.key-secret=sec0", image, "1M")
    assert_info_agrees(image)
    assert diskimage.info(str(image))["encrypted"] is True
    with pytest.raises(UnsupportedFeature, match="encryption"):
        with diskimage.open_image(str(image), fmt="qcow") as disk:
            disk.read(0, 512)
