# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 driver, writes: after our writes qemu-img check finds no errors and
no leaks, and the guest view equals a bytearray model of the disk."""

import os
import random
import struct
import zlib

import pytest

import components

import qemu_tools
from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, ImageError, PolicyError, ReadOnlyImageError)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.qcow2 import Qcow2Driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.raw import RawDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile

M = 1024 * 1024


class DirOpener:
    """Opens names relative to the referrer's directory (stand-in for chain.py)."""

    def __call__(self, referrer, name, fmt):
        path = os.path.join(os.path.dirname(referrer), name)
        cls = Qcow2Driver if fmt == "qcow2" else RawDriver
        return cls.open(path, True, self)

    def data_file(self, referrer, name, writable=False):
        if os.path.isabs(name):
            raise PolicyError("absolute data file name refused", referrer)
        return ImageFile(os.path.join(os.path.dirname(referrer), name), writable=writable)


def guest_view(path, tmp_path, cwd=None):
    out = tmp_path / "view.raw"
    qemu_tools.run("qemu-img", "convert", "-O", "raw", path, out, cwd=cwd)
    with open(str(out), "rb") as f:
        data = f.read()
    out.unlink()
    return data


def assert_check_clean(path, cwd=None):
    import json
    import subprocess
    proc = subprocess.run(["qemu-img", "check", "--output=json", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, cwd=cwd, check=False)
    result = json.loads(proc.stdout)
    assert result.get("corruptions", 0) == 0, result
    assert result.get("leaks", 0) == 0, result
    assert result.get("check-errors", 0) == 0, result
    assert proc.returncode == 0, proc.stderr


def random_writes(drv, model, seed, count=40, zero_share=0.25):
    """Unaligned, cross-cluster, overlapping data and zero writes, mirrored in ``model``."""
    rnd = random.Random(seed)
    size = len(model)
    sizes = [1, 511, 512, 4096, 65536 + 7, 300000, M + 3]
    for step in range(count):
        offset = rnd.randrange(0, size)
        if rnd.random() < 0.3:
            offset -= offset % 512
        length = min(size - offset, rnd.choice(sizes))
        if rnd.random() < zero_share:
            drv.write_zeroes(offset, length, may_unmap=rnd.random() < 0.5)
            model[offset:offset + length] = bytes(length)
        else:
            pattern = bytes([rnd.randrange(1, 256)]) * 61 + bytes([step % 256, 0, 255])
            data = (pattern * (length // len(pattern) + 1))[:length]
            drv.write(offset, data)
            model[offset:offset + length] = data
    # a write at the very end of the disk
    drv.write(size - 1000, b"\xee" * 1000)
    model[size - 1000:] = b"\xee" * 1000


WRITE_MATRIX = [
    ("cs512", "cluster_size=512"),
    ("cs4k", "cluster_size=4096"),
    ("cs64k", "cluster_size=65536"),
    ("cs2m", "cluster_size=2M"),
    ("v2-cs4k", "compat=0.10,cluster_size=4096"),
    ("v2", "compat=0.10"),
    ("rc1", "refcount_bits=1,cluster_size=4096"),
    ("rc4", "refcount_bits=4,cluster_size=1024"),
    ("rc64-cs512", "refcount_bits=64,cluster_size=512"),
    ("rc32", "refcount_bits=32"),
    ("extl2", "extended_l2=on"),
    ("extl2-16k", "extended_l2=on,cluster_size=16k"),
    ("lazy", "lazy_refcounts=on,cluster_size=4096"),
]


@pytest.mark.parametrize("creator", ["qemu", "ours"])
@pytest.mark.parametrize("name,options", WRITE_MATRIX, ids=[m[0] for m in WRITE_MATRIX])
def test_random_writes(tmp_path, name, options, creator):
    path = tmp_path / (name + ".qcow2")
    size = 4 * M + 1536      # not cluster aligned
    if creator == "qemu":
        qemu_img("create", "-q", "-f", "qcow2", "-o", options, path, str(size))
        qemu_io(path, "write -P 0x5c 100k 200k", "write -z 1M 64k", fmt="qcow2")
        model = bytearray(guest_view(path, tmp_path))
    else:
        opts = dict(kv.split("=") for kv in options.split(","))
        Qcow2Driver.create(str(path), size, opts)
        model = bytearray(size)
    with Qcow2Driver.open(str(path), False, DirOpener()) as drv:
        random_writes(drv, model, zlib.crc32(name.encode()))   # reproducible seed
        assert drv.read(0, size) == bytes(model)
    assert_check_clean(path)
    assert guest_view(path, tmp_path) == bytes(model)
    assert qemu_img_json("info", path)["dirty-flag"] is False


@pytest.mark.parametrize("options", ["cluster_size=4096", "compat=0.10,cluster_size=512",
                                     "extended_l2=on,cluster_size=16k", "refcount_bits=1,cluster_size=4096"])
def test_writes_over_backing(tmp_path, options):
    base = tmp_path / "base.raw"
    with open(str(base), "wb") as f:
        f.write(os.urandom(2 * M))       # shorter than the overlay
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "base.raw", "-F", "raw", mid, "3M")
    qemu_io(mid, "write -P 0x21 500k 100k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, "-b", "mid.qcow2", "-F", "qcow2", top)
    model = bytearray(guest_view(top, tmp_path))
    with Qcow2Driver.open(str(top), False, DirOpener()) as drv:
        random_writes(drv, model, 7, count=30)
        # zero writes where the backing shows through must hide it
        drv.write_zeroes(0, 256 * 1024, may_unmap=True)
        model[0:256 * 1024] = bytes(256 * 1024)
        drv.write_zeroes(1000, 5000)
        model[1000:6000] = bytes(5000)
    assert_check_clean(top)
    assert guest_view(top, tmp_path) == bytes(model)
    assert_check_clean(mid)


def test_refcount_table_grows_and_moves(tmp_path):
    path = tmp_path / "grow.qcow2"
    Qcow2Driver.create(str(path), 16 * M, {"cluster_size": 512, "refcount_bits": 64})
    with Qcow2Driver.open(str(path), True) as drv:
        before = (drv.header.refcount_table_offset, drv.header.refcount_table_clusters)
    data = os.urandom(6 * M)
    with Qcow2Driver.open(str(path), False) as drv:
        for pos in range(0, len(data), M):
            drv.write(pos, data[pos:pos + M])
    with Qcow2Driver.open(str(path), True) as drv:
        after = (drv.header.refcount_table_offset, drv.header.refcount_table_clusters)
    assert after != before and after[1] > before[1]
    assert_check_clean(path)
    assert guest_view(path, tmp_path)[:len(data)] == data


def test_snapshot_copy_on_write(tmp_path):
    path = tmp_path / "snap.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "2M")
    qemu_io(path, "write -P 0x31 0 1M", fmt="qcow2")
    before = guest_view(path, tmp_path)
    qemu_img("snapshot", "-c", "s1", path)
    model = bytearray(before)
    with Qcow2Driver.open(str(path), False) as drv:
        drv.write(100, b"\x41" * 5000)
        model[100:5100] = b"\x41" * 5000
        drv.write_zeroes(64 * 1024, 64 * 1024)
        model[64 * 1024:128 * 1024] = bytes(64 * 1024)
        drv.write(1536 * 1024, b"\x42" * 4096)
        model[1536 * 1024:1540 * 1024] = b"\x42" * 4096
    assert_check_clean(path)
    assert guest_view(path, tmp_path) == bytes(model)
    out = tmp_path / "s1.raw"
    qemu_img("convert", "-l", "snapshot.name=s1", "-O", "raw", path, out)
    with open(str(out), "rb") as f:
        assert f.read() == before
    # qemu can still revert to it
    qemu_img("snapshot", "-a", "s1", path)
    assert guest_view(path, tmp_path) == before
    assert_check_clean(path)


@pytest.mark.parametrize("options", [{"cluster_size": 512}, {"cluster_size": 4096, "refcount_bits": 1},
                                     {}, {"cluster_size": 2 * M}, {"extended_l2": True},
                                     {"compat": "0.10", "cluster_size": 4096}])
def test_compressed_writes(tmp_path, options):
    path = tmp_path / "c.qcow2"
    size = max(4 * M, 4 * options.get("cluster_size", 65536))
    Qcow2Driver.create(str(path), size, dict(options))
    model = bytearray(size)
    rnd = random.Random(3)
    with Qcow2Driver.open(str(path), False) as drv:
        cs = drv.header.cluster_size
        for cluster in range(0, size, cs * 2):
            text = ("cluster %d " % cluster).encode() * (cs // 8)
            data = text[:cs // 2] + bytes(rnd.randrange(256) for dummy in range(min(64, cs // 4)))
            data = (data + bytes(cs))[:cs]
            compressed = drv.compress_cluster(data)
            assert compressed is not None and len(compressed) < cs
            drv.write_compressed(cluster, compressed)
            model[cluster:cluster + cs] = data
        assert drv.compress_cluster(os.urandom(cs)) is None
        # overwrite parts of compressed clusters: copy-on-write from the compressed data
        drv.write(cs // 2 + 3, b"\x55" * (cs + 10))
        model[cs // 2 + 3:cs // 2 + 3 + cs + 10] = b"\x55" * (cs + 10)
        drv.write_zeroes(2 * cs, cs)
        model[2 * cs:3 * cs] = bytes(cs)
        # and compressed over an allocated cluster
        again = drv.compress_cluster(b"z" * cs)
        drv.write_compressed(0, again)
        model[0:cs] = b"z" * cs
    assert_check_clean(path)
    assert guest_view(path, tmp_path) == bytes(model)


def test_overwrite_qemu_compressed_image(tmp_path):
    src = tmp_path / "src.raw"
    with open(str(src), "wb") as f:
        f.write(b"qemu compressed text " * 100000)
    path = tmp_path / "qc.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", src, path)
    model = bytearray(guest_view(path, tmp_path))
    with Qcow2Driver.open(str(path), False) as drv:
        random_writes(drv, model, 11, count=20)
    assert_check_clean(path)
    assert guest_view(path, tmp_path) == bytes(model)


def test_bitmaps_dropped_on_first_write(tmp_path):
    path = tmp_path / "bm.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "4M")
    qemu_io(path, "write -P 1 0 1M", fmt="qcow2")
    qemu_img("bitmap", "--add", path, "b0")
    qemu_img("bitmap", "--add", "-g", "512K", path, "b1")
    qemu_io(path, "write -P 2 1M 1M", fmt="qcow2")   # so that the bitmaps have data clusters
    assert "bitmaps" in qemu_img_json("info", path)["format-specific"]["data"]
    with Qcow2Driver.open(str(path), False) as drv:
        drv.write(0, b"\x07" * 512)
    info = qemu_img_json("info", path)
    assert "bitmaps" not in info["format-specific"]["data"]
    assert_check_clean(path)
    with Qcow2Driver.open(str(path), True) as drv:
        assert drv.header.autoclear_features == 0
        assert drv.header.bitmaps is None


def test_lazy_refcounts_image_stays_clean(tmp_path):
    path = tmp_path / "lazy.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "2M")
    with Qcow2Driver.open(str(path), False) as drv:
        drv.write(0, b"\x01" * 70000)
        with open(str(path), "rb") as f:
            assert struct.unpack(">Q", f.read(80)[72:80])[0] & 1 == 0   # never dirty: refcounts exact
    assert_check_clean(path)
    assert qemu_img_json("info", path)["dirty-flag"] is False


def test_overlap_check_marks_corrupt(tmp_path):
    path = tmp_path / "ov.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M")
    qemu_io(path, "write -P 9 0 8k", fmt="qcow2")
    with Qcow2Driver.open(str(path), True) as drv:
        l2_offset = drv._l1[0] & 0x00fffffffffffe00
        l1_offset = drv.header.l1_table_offset
    # guest cluster 1 now claims the L1 table as its data cluster (refcount 1: COPIED)
    with open(str(path), "r+b") as f:
        f.seek(l2_offset + 8)
        f.write(struct.pack(">Q", (1 << 63) | l1_offset))
    with Qcow2Driver.open(str(path), False) as drv:
        with pytest.raises(CorruptImageError, match="L1 table"):
            drv.write(4096, b"\xff" * 4096)
    with open(str(path), "rb") as f:
        header = f.read(4096)
        f.seek(l1_offset)
        assert f.read(8) == struct.pack(">Q", (1 << 63) | l2_offset)   # L1 untouched
    assert struct.unpack(">Q", header[72:80])[0] & 2
    assert qemu_img_json("info", path)["format-specific"]["data"]["corrupt"] is True


def test_crash_after_data_leaves_only_leaks(tmp_path, monkeypatch):
    path = tmp_path / "crash.qcow2"
    Qcow2Driver.create(str(path), 4 * M, {"cluster_size": 4096})
    drv = Qcow2Driver.open(str(path), False)
    drv.write(0, b"\x01" * 4096)

    def crash(*args):
        raise RuntimeError("simulated crash before the L2 update")
    monkeypatch.setattr(drv, "_write_l2_entries", crash)
    with pytest.raises(RuntimeError):
        drv.write(M, b"\x02" * 64 * 1024)
    drv._file.close()
    result = qemu_img_json("check", path)
    assert result.get("corruptions", 0) == 0
    assert result.get("leaks", 0) > 0
    assert guest_view(path, tmp_path)[:4096] == b"\x01" * 4096


def test_read_only_open_refuses_writes(tmp_path):
    path = tmp_path / "ro.qcow2"
    Qcow2Driver.create(str(path), M, {})
    with Qcow2Driver.open(str(path), True) as drv:
        with pytest.raises(ReadOnlyImageError):
            drv.write(0, b"x")
        with pytest.raises(ReadOnlyImageError):
            drv.write_zeroes(0, 512)


def test_write_outside_disk_refused(tmp_path):
    path = tmp_path / "out.qcow2"
    Qcow2Driver.create(str(path), M, {})
    with Qcow2Driver.open(str(path), False) as drv:
        with pytest.raises(ImageError):
            drv.write(M - 1, b"xy")


def _in_dir(tmp_path, *args):
    return qemu_tools.run(*args, cwd=str(tmp_path))


@pytest.mark.parametrize("raw_mode", ["off", "on"])
def test_external_data_file_writes(tmp_path, raw_mode):
    path = tmp_path / "ext.qcow2"
    _in_dir(tmp_path, "qemu-img", "create", "-q", "-f", "qcow2", "-o",
            "data_file=ext.data,data_file_raw=%s,cluster_size=4096" % raw_mode, path, "2M")
    _in_dir(tmp_path, "qemu-io", "-f", "qcow2", "-c", "write -P 0x31 4k 100k", path)
    model = bytearray(guest_view(path, tmp_path, cwd=str(tmp_path)))
    with Qcow2Driver.open(str(path), False, DirOpener()) as drv:
        random_writes(drv, model, 5, count=20)
    assert_check_clean(path, cwd=str(tmp_path))
    assert guest_view(path, tmp_path, cwd=str(tmp_path)) == bytes(model)
    if raw_mode == "on":
        with open(str(tmp_path / "ext.data"), "rb") as f:
            assert f.read() == bytes(model)


def _resize_both(tmp_path, source, steps, options_for_qemu=()):
    """Apply ``steps`` [(size, preallocation)] with our driver to one copy and
    qemu-img resize to another; return both paths."""
    import shutil
    ours = tmp_path / "ours.qcow2"
    theirs = tmp_path / "theirs.qcow2"
    shutil.copy(str(source), str(ours))
    shutil.copy(str(source), str(theirs))
    for size, prealloc in steps:
        with Qcow2Driver.open(str(ours), False, DirOpener()) as drv:
            drv.resize(size, preallocation=prealloc)
        args = ["resize", "-f", "qcow2"]
        if prealloc:
            args.append("--preallocation=%s" % prealloc)
        current = qemu_img_json("info", theirs)["virtual-size"]
        if size < current:
            args.append("--shrink")
        qemu_img(*(args + [theirs, str(size)]))
    return ours, theirs


@pytest.mark.parametrize("options", ["cluster_size=512", "cluster_size=4096,refcount_bits=1",
                                     "compat=0.10", "extended_l2=on,cluster_size=16k"])
def test_resize_like_qemu(tmp_path, options):
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, src, "1M")
    qemu_io(src, "write -P 0x61 0 300k", "write -P 0x62 1000k 24k", fmt="qcow2")
    # grow past the L1 table's first cluster, shrink to an odd size, grow again
    steps = [(9 * M, None), (700 * 1024 + 512, None), (3 * M, None), (5 * M, "metadata")]
    ours, theirs = _resize_both(tmp_path, src, steps)
    assert_check_clean(ours)
    assert qemu_img_json("info", ours)["virtual-size"] == 5 * M
    assert guest_view(ours, tmp_path) == guest_view(theirs, tmp_path)


def test_resize_hides_longer_backing(tmp_path):
    base = tmp_path / "base.raw"
    with open(str(base), "wb") as f:
        f.write(os.urandom(4 * M))
    src = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", src, "2M")
    ours, theirs = _resize_both(tmp_path, src, [(6 * M, None)])
    assert_check_clean(ours)
    view = guest_view(ours, tmp_path)
    assert view == guest_view(theirs, tmp_path)
    assert view[2 * M:] == bytes(4 * M)


@pytest.mark.parametrize("mode", ["falloc", "full"])
def test_resize_preallocation(tmp_path, mode):
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", src, "1M")
    qemu_io(src, "write -P 0x61 0 100k", fmt="qcow2")
    ours, theirs = _resize_both(tmp_path, src, [(3 * M, mode)])
    assert_check_clean(ours)
    assert guest_view(ours, tmp_path) == guest_view(theirs, tmp_path)
    grown = [e for e in qemu_img_json("map", ours) if e["start"] + e["length"] > M]
    assert grown and all(e["data"] and "offset" in e for e in grown)
    with open(str(ours), "rb") as f:
        assert os.fstat(f.fileno()).st_blocks * 512 >= 2 * M


@pytest.mark.parametrize("cluster_size", ["4096", "65536"])
def test_resize_keeps_snapshots(tmp_path, cluster_size):
    src = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=%s" % cluster_size, src, "4M")
    qemu_io(src, "write -P 0x31 0 4M", fmt="qcow2")
    qemu_img("snapshot", "-c", "before", src)
    qemu_io(src, "write -P 0x32 1M 1M", fmt="qcow2")
    ours, theirs = _resize_both(tmp_path, src, [(1536 * 1024, None), (6 * M, None)])
    assert_check_clean(ours)
    assert guest_view(ours, tmp_path) == guest_view(theirs, tmp_path)
    for image in (ours, theirs):
        out = tmp_path / "snap.raw"
        qemu_img("convert", "-l", "snapshot.name=before", "-O", "raw", image, out)
        with open(str(out), "rb") as f:
            assert f.read(4 * M) == b"\x31" * (4 * M)


def test_extended_l2_partial_zero_of_compressed_cluster(tmp_path):
    path = tmp_path / "xc.qcow2"
    Qcow2Driver.create(str(path), 2 * M, {"extended_l2": True})
    cs = 65536
    data = (b"subcluster text " * (cs // 16))[:cs]
    model = bytearray(2 * M)
    with Qcow2Driver.open(str(path), False) as drv:
        for cluster in (0, cs, 2 * cs):
            drv.write_compressed(cluster, drv.compress_cluster(data))
            model[cluster:cluster + cs] = data
        # whole subclusters inside compressed clusters, across a cluster boundary
        drv.write_zeroes(cs - 4096, 8192, may_unmap=True)
        model[cs - 4096:cs + 4096] = bytes(8192)
        drv.write_zeroes(2 * cs + 2048, 2048)
        model[2 * cs + 2048:2 * cs + 4096] = bytes(2048)
        assert drv.read(0, 3 * cs) == bytes(model[:3 * cs])
    assert_check_clean(path)
    assert guest_view(path, tmp_path) == bytes(model)


@pytest.mark.parametrize("target", ["refcount block", "refcount table", "L1 table"])
def test_overlap_check_on_metadata_writes(tmp_path, target):
    path = tmp_path / "ovm.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M")
    qemu_io(path, "write -P 9 0 8k", fmt="qcow2")
    with Qcow2Driver.open(str(path), False) as drv:
        drv._prepare_write()
        l1_offset = drv.header.l1_table_offset
        offsets = {"refcount block": drv._reftable[0], "refcount table": drv.header.refcount_table_offset,
                   "L1 table": l1_offset}
    with open(str(path), "rb") as f:
        f.seek(offsets[target])
        before = f.read(4096)
    # the active L1 entry now claims that cluster as its L2 table
    with open(str(path), "r+b") as f:
        f.seek(l1_offset)
        f.write(struct.pack(">Q", (1 << 63) | offsets[target]))
    with pytest.raises(CorruptImageError, match="overlap"):
        with Qcow2Driver.open(str(path), False) as drv:
            drv.write(0, b"\x01" * 512)
    with open(str(path), "rb") as f:
        f.seek(offsets[target])
        after = f.read(4096)
        f.seek(72)
        incompatible = struct.unpack(">Q", f.read(8))[0]
    assert incompatible & 2
    if target != "L1 table":
        assert after == before


def test_overlapping_tables_refused_before_writing(tmp_path):
    path = tmp_path / "ovt.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M")
    qemu_io(path, "write -P 9 0 8k", fmt="qcow2")
    with Qcow2Driver.open(str(path), True) as drv:
        reftable = drv.header.refcount_table_offset
    with open(str(path), "r+b") as f:      # the L1 table moved onto the refcount table
        f.seek(40)
        f.write(struct.pack(">Q", reftable))
    with Qcow2Driver.open(str(path), False) as drv:
        with pytest.raises(CorruptImageError, match="overlaps"):
            drv.write(0, b"\x01")
    assert qemu_img_json("info", path)["format-specific"]["data"]["corrupt"] is True


@pytest.fixture
def loop_device(tmp_path):
    """A 16 MiB loop device over a file in tmp_path (skipped where loop devices are unavailable)."""
    import subprocess
    backing = tmp_path / "loop.img"
    with open(str(backing), "wb") as f:
        f.truncate(16 * M)
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if proc.returncode != 0:
        components.missing("loop device", proc.stderr.strip())
    device = proc.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.mark.parametrize("creator", ["qemu", "ours"])
def test_block_device(tmp_path, loop_device, creator):
    # on a block device the device size says nothing about which clusters are in use
    with open(loop_device, "r+b") as f:
        f.write(b"\xaa" * 16 * M)      # old garbage must never show through
    if creator == "qemu":
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", loop_device, "8M")
    else:
        Qcow2Driver.create(loop_device, 8 * M, {"cluster_size": 4096})
    model = bytearray(8 * M)
    with Qcow2Driver.open(loop_device, False) as drv:
        random_writes(drv, model, 21, count=25)
    assert_check_clean(loop_device)
    assert guest_view(loop_device, tmp_path) == bytes(model)


@pytest.mark.parametrize("options", [{"preallocation": "metadata"}, {"preallocation": "falloc"},
                                     {"preallocation": "metadata", "compat": "0.10"}])
def test_block_device_preallocation_reads_zero(tmp_path, loop_device, options):
    with open(loop_device, "r+b") as f:
        f.write(b"\xaa" * 16 * M)
    Qcow2Driver.create(loop_device, 4 * M, dict(options, cluster_size=65536))
    assert_check_clean(loop_device)
    assert guest_view(loop_device, tmp_path) == bytes(4 * M)


def _snapshot_view(path, tmp_path, name):
    out = tmp_path / "snapview.raw"
    qemu_img("convert", "-l", "snapshot.name=%s" % name, "-O", "raw", path, out)
    with open(str(out), "rb") as f:
        data = f.read()
    out.unlink()
    return data


@pytest.mark.parametrize("options", ["cluster_size=4096", "compat=0.10,cluster_size=512",
                                     "extended_l2=on,cluster_size=16k", "refcount_bits=4,cluster_size=4096"])
def test_internal_snapshots_create_apply_delete(tmp_path, options):
    path = tmp_path / "snaps.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, path, "2M")
    qemu_io(path, "write -P 0x11 0 1M", "write -z 1M 64k", fmt="qcow2")
    first = guest_view(path, tmp_path)
    with Qcow2Driver.open(str(path), False) as drv:
        drv.snapshot_create("first")
        cs = drv.header.cluster_size
        drv.write_compressed(1536 * 1024, drv.compress_cluster((b"c" * cs)))
        drv.write(100, b"\x22" * 70000)
    assert_check_clean(path)
    second = guest_view(path, tmp_path)
    qemu_img("snapshot", "-c", "second", path)          # qemu adds one on top of ours
    with Qcow2Driver.open(str(path), False) as drv:
        drv.write_zeroes(0, 512 * 1024, may_unmap=True)
        drv.snapshot_create("third")
        assert [s["name"] for s in drv.snapshots()] == ["first", "second", "third"]
        assert [s["id"] for s in drv.snapshots()] == ["1", "2", "3"]
    assert_check_clean(path)
    listed = qemu_img_json("info", path)["snapshots"]
    assert [(s["id"], s["name"]) for s in listed] == [("1", "first"), ("2", "second"), ("3", "third")]
    assert _snapshot_view(path, tmp_path, "first") == first
    assert _snapshot_view(path, tmp_path, "second") == second
    with Qcow2Driver.open(str(path), False) as drv:
        drv.snapshot_apply("first")
        assert drv.read(0, len(first)) == first
    assert_check_clean(path)
    assert guest_view(path, tmp_path) == first
    with Qcow2Driver.open(str(path), False) as drv:
        drv.snapshot_delete("second")
        drv.snapshot_delete("1")          # by ID
        drv.write(4096, b"\x33" * 8192)   # the active disk owns its clusters again
    assert_check_clean(path)
    assert [s["name"] for s in qemu_img_json("info", path)["snapshots"]] == ["third"]
    expected = bytearray(first)
    expected[4096:12288] = b"\x33" * 8192
    assert guest_view(path, tmp_path) == bytes(expected)
    qemu_img("snapshot", "-a", "third", path)
    assert_check_clean(path)
    qemu_img("snapshot", "-d", "third", path)
    assert_check_clean(path)


def test_snapshot_refused_when_refcounts_would_overflow(tmp_path):
    path = tmp_path / "rc1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=1,cluster_size=4096", path, "1M")
    qemu_io(path, "write -P 1 0 64k", fmt="qcow2")
    with open(str(path), "rb") as f:
        before = f.read()
    with Qcow2Driver.open(str(path), False) as drv:
        with pytest.raises(ImageError, match="refcount"):
            drv.snapshot_create("s")
    with open(str(path), "rb") as f:
        assert f.read() == before


def test_file_grows_in_steps_and_ends_where_qemu_ends_it(tmp_path, monkeypatch):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    for path in (ours, theirs):
        qemu_img("create", "-q", "-f", "qcow2", path, "64M")
    writes = [(n * 128 * 1024, n % 251 + 1) for n in range(200)]    # 200 clusters, each allocated alone
    truncates = []
    real_truncate = ImageFile.truncate

    def counting_truncate(self, size):
        truncates.append(size)
        return real_truncate(self, size)

    monkeypatch.setattr(ImageFile, "truncate", counting_truncate)
    with Qcow2Driver.open(str(ours), False) as drv:
        for offset, byte in writes:
            drv.write(offset, bytes([byte]) * 4096)
        grown = len(truncates)
    # one step covers them all (not one ftruncate per allocation), cut back once at close
    assert grown == 1
    assert len(truncates) == 2
    qemu_io(theirs, *["write -P %d %d 4096" % (byte, offset) for offset, byte in writes], fmt="qcow2")
    assert os.path.getsize(str(ours)) == os.path.getsize(str(theirs))
    assert_check_clean(ours)
    assert guest_view(ours, tmp_path) == guest_view(theirs, tmp_path)


def test_flush_cuts_the_file_back_and_writes_after_it_grow_it_again(tmp_path):
    path = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "64M")
    with Qcow2Driver.open(str(path), False) as drv:
        drv.write(0, b"\x01" * 65536)
        drv.flush()
        after_first = os.path.getsize(str(path))
        drv.write(32 * M, b"\x02" * 65536)
    # header, refcount table and block, L1 padding, L2 table, one data cluster: qemu's layout
    assert after_first % 65536 == 0 and after_first <= 6 * 65536
    assert os.path.getsize(str(path)) == after_first + 65536
    assert_check_clean(path)
    expected = bytearray(64 * M)
    expected[0:65536] = b"\x01" * 65536
    expected[32 * M:32 * M + 65536] = b"\x02" * 65536
    assert guest_view(path, tmp_path) == bytes(expected)
