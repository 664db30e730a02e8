# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""info() reports what qemu-img info --output=json reports, field for field."""

import os
import struct

import pytest

import qemu_tools
from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageNotFoundError, PolicyError,
)


def same_as_qemu(path, **kwargs):
    ours = diskimage.info(str(path), **kwargs)
    args = ["info"]
    if kwargs.get("backing_chain"):
        args.append("--backing-chain")
    theirs = qemu_img_json(*(args + [str(path)]))
    assert ours == theirs
    return ours


def test_raw_fresh_and_written(tmp_path):
    image = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", image, "3M")
    same_as_qemu(image)
    qemu_io(image, "write -P 0x5a 1M 128k", fmt="raw")
    result = same_as_qemu(image)
    assert result["format"] == "raw" and result["virtual-size"] == 3 << 20


@pytest.mark.parametrize("create_options", [
    "cluster_size=65536",
    "cluster_size=512,lazy_refcounts=on",
    "cluster_size=2M,refcount_bits=1",
    "compat=0.10",
    "extended_l2=on,cluster_size=128k",
    "refcount_bits=64,preallocation=metadata",
])
def test_qcow2_variants(tmp_path, create_options):
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", create_options, image, "5M")
    qemu_io(image, "write -P 0x11 0 100k", "write -z 2M 64k", "write -P 0x22 4M 3k", fmt="qcow2")
    same_as_qemu(image)


def test_qcow2_snapshots_listed(tmp_path):
    image = tmp_path / "snap.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_img("snapshot", "-c", "first", image)
    qemu_io(image, "write -P 1 0 4k", fmt="qcow2")
    qemu_img("snapshot", "-c", "second", image)
    result = same_as_qemu(image)
    assert [s["name"] for s in result["snapshots"]] == ["first", "second"]


def test_overlay_and_backing_chain(tmp_path):
    base = tmp_path / "base.raw"
    middle = tmp_path / "middle.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "raw", base, "2M")
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", middle)
    qemu_img("create", "-f", "qcow2", "-b", "middle.qcow2", "-F", "qcow2", top, "4M")
    qemu_io(top, "write -P 3 3M 64k", fmt="qcow2")
    single = same_as_qemu(top)
    assert single["backing-filename"] == "middle.qcow2"
    chain = same_as_qemu(top, backing_chain=True)
    assert [layer["format"] for layer in chain] == ["qcow2", "qcow2", "raw"]


def test_relative_names_reported_as_given(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    qemu_img("create", "-f", "qcow2", sub / "base.qcow2", "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", sub / "top.qcow2")
    monkeypatch.chdir(tmp_path)
    chain = same_as_qemu("./sub/../sub/top.qcow2", backing_chain=True)
    assert chain[1]["filename"] == "./sub/../sub/base.qcow2"


def test_explicit_format_and_no_backing_format(tmp_path):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    # Older qemu-img wrote images without a backing format: turn the backing
    # format header extension into an unknown (ignored) one.
    header = bytearray(top.read_bytes()[:4096])
    position = header.index(bytes.fromhex("e2792aca"))
    header[position:position + 4] = bytes.fromhex("0badcafe")
    with open(str(top), "r+b") as image_file:
        image_file.write(bytes(header))
    ours = diskimage.info(str(top), fmt="qcow2")
    theirs = qemu_img_json("info", "-f", "qcow2", str(top))
    assert ours == theirs
    assert "backing-filename-format" not in ours


def test_missing_image(tmp_path):
    with pytest.raises(ImageNotFoundError) as excinfo:
        diskimage.info(str(tmp_path / "absent.qcow2"))
    assert "absent.qcow2" in str(excinfo.value)


def test_backing_outside_policy_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    images = tmp_path / "images"
    elsewhere.mkdir()
    images.mkdir()
    qemu_img("create", "-f", "qcow2", elsewhere / "base.qcow2", "1M")
    top = images / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(elsewhere / "base.qcow2"), "-F", "qcow2", top)
    with pytest.raises(PolicyError):
        diskimage.info(str(top), backing_chain=True)
    # Like qemu-img info, the image itself is described without opening its backing file.
    assert diskimage.info(str(top)) == qemu_img_json("info", str(top))
    chain = diskimage.info(str(top), backing_chain=True, allow_dirs=[str(elsewhere)])
    assert chain == qemu_img_json("info", "--backing-chain", str(top))


def test_missing_backing_file(tmp_path):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    base.unlink()
    assert diskimage.info(str(top)) == qemu_img_json("info", str(top))
    with pytest.raises(ImageNotFoundError):
        diskimage.info(str(top), backing_chain=True)


def test_info_leaves_image_untouched(tmp_path):
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", image, "2M")
    qemu_io(image, "write -P 7 0 64k", fmt="qcow2")
    before = (qemu_tools.file_digest(image), os.stat(str(image)).st_mtime_ns)
    diskimage.info(str(image), backing_chain=True)
    assert (qemu_tools.file_digest(image), os.stat(str(image)).st_mtime_ns) == before


def test_external_data_file(tmp_path, monkeypatch):
    # qemu-img creates the data file relative to the working directory.
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "meta.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "data_file=guest.data", image, "2M")
    qemu_io(image, "write -P 8 0 256k", fmt="qcow2")
    result = same_as_qemu(image)
    assert result["format-specific"]["data"]["data-file"] == "guest.data"
    same_as_qemu(image, backing_chain=True)


def test_bitmaps_and_compressed_clusters(tmp_path):
    source = tmp_path / "source.raw"
    qemu_img("create", "-f", "raw", source, "1M")
    qemu_io(source, "write -P 9 0 512k", fmt="raw")
    image = tmp_path / "packed.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", source, image)
    qemu_img("bitmap", "--add", image, "changes")
    result = same_as_qemu(image)
    assert result["format-specific"]["data"]["bitmaps"][0]["name"] == "changes"


def test_qcow2_header_size_not_sector_aligned_is_rounded_down_like_qemu(tmp_path):
    """QEMU counts a qcow2 virtual size in whole sectors: header size 1000 is 512."""
    path = tmp_path / "odd.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    with open(str(path), "r+b") as image:
        image.seek(24)  # "Header": size field
        image.write(struct.pack(">Q", 1000))
    ours = diskimage.info(str(path), fmt="qcow2")
    assert ours["virtual-size"] == qemu_img_json("info", path)["virtual-size"] == 512
