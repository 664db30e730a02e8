# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""map() lists what qemu-img map --output=json lists, entry for entry and field for field."""

import os
import random

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import PolicyError


def same_as_qemu(path, fmt=None, **kwargs):
    ours = diskimage.map(str(path), fmt=fmt, **kwargs)
    args = ["map"] + (["-f", fmt] if fmt else []) + [str(path)]
    theirs = qemu_img_json(*args)
    assert ours == theirs
    return ours


def entry_at(entries, offset):
    return next(e for e in entries if e["start"] <= offset < e["start"] + e["length"])


def test_raw_sparse(tmp_path):
    image = tmp_path / "sparse.raw"
    qemu_img("create", "-f", "raw", image, "3M")
    qemu_io(image, "write -P 0x5a 1M 4k", "write -P 0x11 2M 100k", fmt="raw")
    entries = same_as_qemu(image, fmt="raw")
    # (qemu-img create writes the first 4k of a raw file: look further in for a hole)
    hole, data = entry_at(entries, 512 << 10), entry_at(entries, 1 << 20)
    assert (hole["zero"], hole["data"], hole["present"]) == (True, False, True)
    assert hole["offset"] == hole["start"]
    assert (data["zero"], data["data"], data["offset"]) == (False, True, 1 << 20)


@pytest.mark.parametrize("size", [1000, 4097, 1 << 20])
def test_raw_unaligned_and_full(tmp_path, size):
    image = tmp_path / "bytes.raw"
    image.write_bytes(os.urandom(size))
    entries = same_as_qemu(image)
    # qemu sees whole sectors: a partial last sector is followed by zeroes.
    assert sum(e["length"] for e in entries) == -(-size // 512) * 512


def test_qcow2_cluster_kinds(tmp_path):
    image = tmp_path / "kinds.qcow2"
    qemu_img("create", "-f", "qcow2", image, "4M")
    qemu_io(image,
            "write -P 1 0 64k",              # data
            "write -z 128k 64k",             # zero cluster, no host cluster
            "write -P 2 256k 64k",
            "write -z 256k 64k",             # zero cluster keeping its host cluster
            "write -c -P 3 512k 64k",        # compressed: data without offset
            "write -P 4 1M 128k",
            "discard 1M 64k",                # discarded
            "write -P 5 3M 5k",              # partial cluster
            fmt="qcow2")
    entries = same_as_qemu(image)
    assert "offset" not in entry_at(entries, 512 << 10)
    assert entry_at(entries, 512 << 10)["data"] is True


def test_qcow2_compat_0_10(tmp_path):
    image = tmp_path / "old.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", image, "1M")
    qemu_io(image, "write -P 1 0 6k", "write -z 64k 64k", "write -c -P 2 512k 4k", fmt="qcow2")
    same_as_qemu(image)


def test_qcow2_empty_and_unaligned_size(tmp_path):
    image = tmp_path / "odd.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1000")
    entries = same_as_qemu(image)
    assert entries[0]["present"] is False and entries[0]["zero"] is True


@pytest.mark.parametrize("cluster_size", ["16k", "64k", "2M"])
def test_extended_l2_subclusters(tmp_path, cluster_size):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=%s" % cluster_size, base, "4M")
    qemu_io(base, "write -P 1 2k 2k", "write -z 64k 4k", "write -z 200k 64k", "write -P 2 1M 1k", fmt="qcow2")
    entries = same_as_qemu(base)
    # Unallocated subclusters of an allocated cluster keep the cluster's host offset.
    assert any("offset" in e and not e["present"] for e in entries)
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=%s" % cluster_size,
             "-b", "base.qcow2", "-F", "qcow2", top)
    qemu_io(top, "write -P 3 4k 2k", "write -z 1M 512", fmt="qcow2")
    same_as_qemu(top)


@pytest.mark.parametrize("preallocation,refcount_bits", [
    ("metadata", 16), ("metadata", 1), ("metadata", 4), ("metadata", 8), ("metadata", 64),
    ("falloc", 16), ("full", 2),
])
def test_preallocation(tmp_path, preallocation, refcount_bits):
    image = tmp_path / ("%s.qcow2" % preallocation)
    qemu_img("create", "-f", "qcow2", "-o", "preallocation=%s,refcount_bits=%d,cluster_size=4k"
             % (preallocation, refcount_bits), image, "1M")
    same_as_qemu(image)
    qemu_io(image, "write -P 9 64k 4k", "write -z 512k 64k", fmt="qcow2")
    entries = same_as_qemu(image)
    if preallocation == "metadata":
        # Unwritten preallocated clusters are data that reads as zeroes.
        assert entry_at(entries, 0)["data"] and entry_at(entries, 0)["zero"]


def test_three_deep_chain(tmp_path):
    base = tmp_path / "base.raw"
    middle = tmp_path / "middle.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "raw", base, "2M")
    qemu_io(base, "write -P 1 0 64k", "write -P 1 1M 4k", fmt="raw")
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", middle, "2M")
    qemu_io(middle, "write -P 2 64k 64k", "write -z 1M 64k", fmt="qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "middle.qcow2", "-F", "qcow2", top, "2M")
    qemu_io(top, "write -P 3 128k 64k", "write -z 192k 64k", fmt="qcow2")
    entries = same_as_qemu(top)
    assert [entry_at(entries, off)["depth"] for off in (0, 64 << 10, 128 << 10, 1 << 20)] == [2, 1, 0, 1]


def test_unallocated_through_the_chain(tmp_path):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "1M")
    entries = same_as_qemu(top)
    assert entries == [{"start": 0, "length": 1 << 20, "depth": 1, "present": False, "zero": True, "data": False}]


@pytest.mark.parametrize("backing_fmt,backing_size", [("raw", "1000"), ("raw", "1M"), ("qcow2", "1M")])
def test_backing_shorter_than_overlay(tmp_path, backing_fmt, backing_size):
    base = tmp_path / ("base." + backing_fmt)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", backing_fmt, base, backing_size)
    qemu_io(base, "write -P 1 0 512", fmt=backing_fmt)
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", backing_fmt, top, "3M")
    qemu_io(top, "write -P 2 2M 4k", fmt="qcow2")
    entries = same_as_qemu(top)
    past = entry_at(entries, (3 << 20) - 1)
    assert past["depth"] == 0 and past["zero"] and not past["present"]


def test_external_data_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "data_file=ext.data", image, "2M")
    qemu_io(image, "write -P 1 64k 64k", "write -z 1M 64k", "write -P 2 0 512", fmt="qcow2")
    entries = same_as_qemu(image)
    # Host offsets in an external data file are the guest offsets.
    data = entry_at(entries, 64 << 10)
    assert data["data"] and data["offset"] == data["start"]


def test_large_sparse_qcow2_is_quick(tmp_path):
    image = tmp_path / "big.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1T")
    qemu_io(image, "write -P 1 0 64k", "write -P 1 500G 64k", fmt="qcow2")
    same_as_qemu(image)


def test_backing_outside_policy_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    qemu_img("create", "-f", "qcow2", other / "base.qcow2", "1M")
    # A sibling directory (an absolute name in the image's own directory, or below it, is accepted).
    (tmp_path / "vm").mkdir()
    top = tmp_path / "vm" / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(other / "base.qcow2"), "-F", "qcow2", top)
    with pytest.raises(PolicyError):
        diskimage.map(str(top))
    same_as_qemu(top, allow_dirs=[str(other)])


@pytest.mark.parametrize("options", [None, {"extended_l2": True, "cluster_size": 32768}])
def test_image_written_by_the_library(tmp_path, options):
    image = tmp_path / "ours.qcow2"
    diskimage.create(str(image), "qcow2", size=2 << 20, options=options)
    with diskimage.open_image(str(image), fmt="qcow2", readonly=False) as opened:
        opened.write(4096, b"\x01" * 8192)
        opened.write_zeroes(1 << 20, 65536)
        opened.write(1536 << 10, b"\x02" * 512)
    same_as_qemu(image)


def test_qcow2_header_size_not_whole_sectors(tmp_path):
    image = tmp_path / "odd-header.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1024")
    with open(str(image), "r+b") as f:
        f.seek(24)      # header field "size"
        f.write((1000).to_bytes(8, "big"))
    entries = same_as_qemu(image)
    # QEMU sees whole sectors only: 512 bytes here.
    assert sum(e["length"] for e in entries) == 512


@pytest.mark.parametrize("seed", range(8))
def test_random_operations(tmp_path, seed):
    rng = random.Random(seed)
    cluster = rng.choice([4096, 16384, 65536])
    extended = cluster >= 16384 and rng.random() < 0.5
    options = "cluster_size=%d,extended_l2=%s" % (cluster, "on" if extended else "off")
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", options, base, "2M")
    qemu_img("create", "-f", "qcow2", "-o", options, "-b", "base.qcow2", "-F", "qcow2", top, "3M")
    for image, size in ((base, 2 << 20), (top, 3 << 20)):
        # Compressed writes need unallocated clusters: they come first.
        commands = ["write -c -P 9 %d %d" % (index * cluster, cluster)
                    for index in rng.sample(range(size // cluster), 3)]
        for dummy_step in range(12):
            length = rng.choice([512, 2048, 4096, cluster, 3 * cluster])
            offset = rng.randrange(0, size - length, 512)
            kind = rng.choice(["write -P 7", "write -z", "write -z -u", "discard"])
            commands.append("%s %d %d" % (kind, offset, length))
        qemu_io(image, *commands, fmt="qcow2")
    same_as_qemu(base)
    same_as_qemu(top)
    # measure walks the same chain status.
    for out_options in ("cluster_size=4k", "cluster_size=64k", "cluster_size=2M"):
        assert diskimage.measure(src=str(top), options=dict([out_options.split("=")])) == \
            qemu_img_json("measure", "-O", "qcow2", "-o", out_options, top)


@pytest.mark.parametrize("fmt, options, size, writes", [
    ("vdi", "static=on", "4M", ["write -P 0x11 64k 64k", "write -P 0x22 1M 1M", "write -z 3M 64k"]),
    ("vpc", "subformat=fixed", "4M", ["write -P 0x11 64k 64k", "write -P 0x22 1M 1M", "write -P 0x23 4000k 4k"]),
    ("vmdk", "subformat=monolithicFlat", "4M", ["write -P 0x11 64k 64k", "write -P 0x22 1M 1M"]),
    ("vmdk", "subformat=twoGbMaxExtentFlat", "3G",
     ["write -P 0x11 64k 64k", "write -P 0x22 2047M 2M", "write -P 0x33 3071M 1M"]),
], ids=["static-vdi", "fixed-vhd", "monolithic-flat-vmdk", "split-flat-vmdk"])
def test_raw_like_layers_recurse_into_the_file(tmp_path, fmt, options, size, writes):
    """Holes of the file under a static VDI, a fixed VHD or flat VMDK extents
    are data and zero, with their offset, as qemu-img map reports them."""
    path = tmp_path / ("image." + fmt)
    qemu_img("create", "-q", "-f", fmt, "-o", options, path, size)
    qemu_io(path, *writes, fmt=fmt)
    entries = same_as_qemu(path, fmt=fmt)
    assert any(entry["data"] and entry["zero"] and "offset" in entry for entry in entries), entries
    assert any(entry["data"] and not entry["zero"] for entry in entries), entries
    # measure walks the same status
    assert diskimage.measure(src=str(path), src_fmt=fmt) == qemu_img_json("measure", "-f", fmt, "-O", "qcow2", path)
