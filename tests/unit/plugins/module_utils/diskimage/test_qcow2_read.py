# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 driver, read side: every image qemu-img/qemu-io writes reads back
byte-identical, and info()/snapshots() match qemu-img info --output=json."""

import hashlib
import json
import os
import struct

import pytest

import qemu_tools
from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, PolicyError, UnsupportedFeature)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2 as qcow2_mod
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import (
    DATA, UNALLOCATED, ZERO)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.qcow2 import Qcow2Driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.raw import RawDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile

M = 1024 * 1024


class DirOpener:
    """Opens names relative to the referrer's directory (the tests' stand-in for chain.py)."""

    def __init__(self):
        self.opened = []

    def __call__(self, referrer, name, fmt):
        path = os.path.join(os.path.dirname(referrer), name)
        self.opened.append(path)
        cls = Qcow2Driver if fmt == "qcow2" else RawDriver
        return cls.open(path, True, self)

    def data_file(self, referrer, name, writable=False):
        if os.path.isabs(name):
            raise PolicyError("absolute data file name %r refused" % name, referrer)
        path = os.path.join(os.path.dirname(referrer), name)
        self.opened.append(path)
        return ImageFile(path, writable=writable)


def our_digest(path, opener=None):
    with Qcow2Driver.open(str(path), True, opener or DirOpener()) as drv:
        h = hashlib.sha256()
        pos = 0
        while pos < drv.virtual_size:
            count = min(3 * M + 4096, drv.virtual_size - pos)   # odd chunking on purpose
            h.update(drv.read(pos, count))
            pos += count
        return h.hexdigest()


def assert_info_matches(path):
    oracle = qemu_img_json("info", path)
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        ours = drv.info()
        assert drv.virtual_size == oracle["virtual-size"]
    for key in ("cluster-size", "dirty-flag", "format-specific"):
        assert ours[key] == oracle[key], key
    assert ours.get("snapshots", []) == oracle.get("snapshots", [])


def write_cmds(cs):
    """qemu-io commands touching data, zero and discarded clusters, unaligned."""
    cs = min(cs, 128 * 1024)
    return ["write -P 0x11 %d %d" % (cs // 2, 3 * cs + 512),
            "write -P 0x22 1M 300k",
            "write -z 1100k 150k",
            "write -P 0x33 2M 512k",
            "discard 2M %d" % max(cs, 64 * 1024),
            "write -P 0x44 3000k 7k"]


MATRIX = [
    ("cs512", "cluster_size=512"),
    ("cs4k", "cluster_size=4096"),
    ("cs64k", "cluster_size=65536"),
    ("cs2m", "cluster_size=2M"),
    ("v2-cs4k", "compat=0.10,cluster_size=4096"),
    ("v2-cs64k", "compat=0.10"),
    ("rc1", "refcount_bits=1,cluster_size=4096"),
    ("rc2", "refcount_bits=2"),
    ("rc8", "refcount_bits=8,cluster_size=512"),
    ("rc64", "refcount_bits=64,cluster_size=512"),
    ("rc32", "refcount_bits=32"),
    ("extl2-64k", "extended_l2=on"),
    ("extl2-16k", "extended_l2=on,cluster_size=16k"),
    ("extl2-2m", "extended_l2=on,cluster_size=2M"),
    ("lazy", "lazy_refcounts=on"),
]


@pytest.mark.parametrize("name,options", MATRIX, ids=[m[0] for m in MATRIX])
def test_read_matches_qemu(tmp_path, name, options):
    path = tmp_path / (name + ".qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, path, "4M")
    cs = qemu_img_json("info", path)["cluster-size"]
    qemu_io(path, *write_cmds(cs), fmt="qcow2")
    assert our_digest(path) == qemu_tools.raw_digest(path, tmp_path)
    assert_info_matches(path)


@pytest.mark.parametrize("cluster_size", ["512", "4096", "65536", "2M"])
def test_compressed_clusters(tmp_path, cluster_size):
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, "3M")
    qemu_io(src, "write -P 0x5a 0 1M", "write -P 0x11 1536k 100k", "write -z 2M 64k",
            "write -P 0x22 2500k 3k", fmt="qcow2")
    dst = tmp_path / "comp.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=%s" % cluster_size, src, dst)
    assert our_digest(dst) == qemu_tools.raw_digest(dst, tmp_path)
    assert_info_matches(dst)
    with Qcow2Driver.open(str(dst), True, DirOpener()) as drv:
        kinds = {(e.kind, e.offset is None) for e in drv.block_status(0, drv.virtual_size)}
    assert (DATA, True) in kinds        # compressed clusters: DATA without host offset


def test_compressed_mixed_with_random(tmp_path):
    raw = tmp_path / "src.raw"
    with open(str(raw), "wb") as f:
        f.write(b"compressible text " * 60000)
        f.write(os.urandom(512 * 1024))
        f.write(bytes(300000))
        f.write(b"tail" * 1000)
    dst = tmp_path / "mixed.qcow2"
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", raw, dst)
    assert our_digest(dst) == qemu_tools.raw_digest(dst, tmp_path)


def test_zstd_compressed(tmp_path):
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, "1M")
    qemu_io(src, "write -P 0x5a 0 512k", fmt="qcow2")
    dst = tmp_path / "zstd.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, dst)
    assert qemu_img_json("info", dst)["format-specific"]["data"]["compression-type"] == "zstd"
    assert_info_matches(dst)
    if qcow2_mod._zstd_available():
        assert our_digest(dst) == qemu_tools.raw_digest(dst, tmp_path)
    else:
        with Qcow2Driver.open(str(dst), True, DirOpener()) as drv:
            with pytest.raises(UnsupportedFeature, match="zstd"):
                drv.read(0, 4096)


def test_zero_clusters_with_preallocated_offset(tmp_path):
    path = tmp_path / "prealloc.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "2M")
    # write -z without -u keeps the host clusters: zero flag with a preallocated offset
    qemu_io(path, "write -P 0x60 0 1M", "write -z 0 8k", "write -P 0x61 8k 20k", "write -z 28k 996k",
            fmt="qcow2")
    # fill the preallocated-but-zero clusters' host space with garbage: must still read zeroes
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        zero_hosts = []
        table = drv._load_l2(drv._l1[0] & 0x00fffffffffffe00)
        for entry in table[:512]:
            if entry & 1 and entry & 0x00fffffffffffe00:
                zero_hosts.append(entry & 0x00fffffffffffe00)
    assert zero_hosts
    with open(str(path), "r+b") as f:
        for host in zero_hosts[:20]:
            f.seek(host)
            f.write(b"\xee" * 4096)
    assert our_digest(path) == qemu_tools.raw_digest(path, tmp_path)
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        status = drv.block_status(0, drv.virtual_size)
    assert [(e.start, e.length, e.kind) for e in status[:4]] == [
        (0, 8192, ZERO), (8192, 20 * 1024, DATA), (28 * 1024, 996 * 1024, ZERO), (M, M, UNALLOCATED)]


def test_block_status_kinds_and_merging(tmp_path):
    path = tmp_path / "bs.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M")
    qemu_io(path, "write -P 1 0 64k", "write -z 64k 16k", fmt="qcow2")
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        status = drv.block_status(0, M)
    assert [(e.start, e.length, e.kind) for e in status] == [
        (0, 65536, DATA), (65536, 16384, ZERO), (81920, M - 81920, UNALLOCATED)]
    assert status[0].offset is not None
    mapped = qemu_img_json("map", path)
    assert mapped[0]["offset"] == status[0].offset


def test_read_coalesces_contiguous_clusters(tmp_path, monkeypatch):
    path = tmp_path / "co.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "2M")
    qemu_io(path, "write -P 7 0 1M", fmt="qcow2")
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        drv.read(0, 4096)   # warm the L2 cache
        calls = []
        real = drv._file.pread

        def counting(offset, length):
            calls.append((offset, length))
            return real(offset, length)
        monkeypatch.setattr(drv._file, "pread", counting)
        data = drv.read(0, M)
    assert data == b"\x07" * M
    assert calls == [(calls[0][0], M)]   # one pread for the whole contiguous run


def test_read_of_one_contiguous_host_run_hands_back_the_bytes_as_read(tmp_path, monkeypatch):
    path = tmp_path / "one.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "2M")
    qemu_io(path, "write -P 9 0 1M", fmt="qcow2")
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        drv.read(0, 4096)   # warm the L2 cache
        returned = []
        real = drv._file.pread

        def recording(offset, length):
            returned.append(real(offset, length))
            return returned[-1]
        monkeypatch.setattr(drv._file, "pread", recording)
        data = drv.read(4096, M - 8192)
    assert data == b"\x09" * (M - 8192)
    assert len(returned) == 1 and data is returned[0]   # not copied into a buffer and copied again


def test_read_of_a_cluster_cut_short_by_the_end_of_the_file_reads_zeroes_past_it(tmp_path):
    path = tmp_path / "short.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    qemu_io(path, "write -P 5 0 64k", fmt="qcow2")
    size = os.path.getsize(str(path))
    with open(str(path), "r+b") as f:
        f.truncate(size - 4096)     # the last (data) cluster ends 4 KiB early
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        data = drv.read(0, 65536)
        whole = drv.read(0, M)
    assert data == b"\x05" * (65536 - 4096) + bytes(4096)
    assert whole == data + bytes(M - 65536)
    assert hashlib.sha256(whole).hexdigest() == qemu_tools.raw_digest(path, tmp_path)   # as qemu reads it


def test_extended_l2_subclusters(tmp_path):
    base = tmp_path / "base.raw"
    with open(str(base), "wb") as f:
        f.write(b"\xbb" * (2 * M))
    path = tmp_path / "ext.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", "-b", "base.raw",
             "-F", "raw", path)
    qemu_io(path, "write -P 0x11 2k 1k", "write -z 8k 4k", "write -P 0x22 70k 2k", fmt="qcow2")
    assert our_digest(path) == qemu_tools.raw_digest(path, tmp_path)
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        status = drv.block_status(0, 64 * 1024)
        # 2 KiB subclusters: 2k-3k written -> subcluster 1 allocated (its COW from the backing)
        assert [(e.start, e.length, e.kind) for e in status] == [
            (0, 2048, UNALLOCATED), (2048, 2048, DATA), (4096, 4096, UNALLOCATED), (8192, 4096, ZERO),
            (12288, 65536 - 12288, UNALLOCATED)]
        assert drv.read(0, 4096) == b"\xbb" * 2048 + b"\x11" * 1024 + b"\xbb" * 1024


def test_three_deep_mixed_chain(tmp_path):
    base = tmp_path / "base.raw"
    with open(str(base), "wb") as f:
        f.write(os.urandom(3 * M))
    mid = tmp_path / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.raw", "-F", "raw", mid)
    qemu_io(mid, "write -P 0x11 100k 300k", "write -z 1M 64k", "discard 2M 64k", fmt="qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "mid.qcow2", "-F", "qcow2", top)
    qemu_io(top, "write -P 0x22 200k 5k", "write -z 1500k 64k", fmt="qcow2")
    opener = DirOpener()
    assert our_digest(top, opener) == qemu_tools.raw_digest(top, tmp_path)
    assert [os.path.basename(p) for p in opener.opened] == ["mid.qcow2", "base.raw"]
    assert_info_matches(top)
    assert_info_matches(mid)
    with Qcow2Driver.open(str(top), True, DirOpener()) as drv:
        assert drv.backing_filename == "mid.qcow2"
        assert drv.backing_format == "qcow2"
        assert drv.backing.backing_format == "raw"


def test_backing_shorter_than_overlay(tmp_path):
    base = tmp_path / "short.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "1M")
    qemu_io(base, "write -P 0x55 0 1M", fmt="qcow2")
    top = tmp_path / "long.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "short.qcow2", "-F", "qcow2", top, "3M")
    qemu_io(top, "write -P 0x66 2M 4k", fmt="qcow2")
    assert our_digest(top) == qemu_tools.raw_digest(top, tmp_path)
    with Qcow2Driver.open(str(top), True, DirOpener()) as drv:
        assert drv.read(M - 4, 8) == b"\x55" * 4 + b"\0" * 4


def test_virtual_size_not_cluster_aligned(tmp_path):
    path = tmp_path / "odd.qcow2"
    size = 5 * M + 1536
    qemu_img("create", "-q", "-f", "qcow2", path, str(size))
    qemu_io(path, "write -P 0x77 %d 1536" % (5 * M), "write -P 0x78 4M 512", fmt="qcow2")
    assert our_digest(path) == qemu_tools.raw_digest(path, tmp_path)
    assert_info_matches(path)
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        assert drv.virtual_size == size
        assert drv.read(size - 512, 512) == b"\x77" * 512
        with pytest.raises(ImageError):
            drv.read(size - 512, 1024)


def test_snapshots_listed_like_qemu(tmp_path):
    path = tmp_path / "snap.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "2M")
    qemu_io(path, "write -P 1 0 1M", fmt="qcow2")
    qemu_img("snapshot", "-c", "first", path)
    qemu_io(path, "write -P 2 512k 1M", fmt="qcow2")
    qemu_img("snapshot", "-c", "second", path)
    qemu_io(path, "write -P 3 0 4k", fmt="qcow2")
    assert our_digest(path) == qemu_tools.raw_digest(path, tmp_path)
    assert_info_matches(path)
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        assert [s["name"] for s in drv.snapshots()] == ["first", "second"]


def test_bitmaps_in_info(tmp_path):
    path = tmp_path / "bm.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "4M")
    qemu_img("bitmap", "--add", path, "b0")
    qemu_img("bitmap", "--add", "-g", "128K", path, "b1")
    qemu_img("bitmap", "--disable", path, "b1")
    qemu_io(path, "write -P 1 0 64k", fmt="qcow2")
    assert_info_matches(path)
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        assert [b["name"] for b in drv.info()["format-specific"]["data"]["bitmaps"]] == ["b0", "b1"]


def _patch(path, offset, data):
    with open(str(path), "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_unknown_header_extension_tolerated(tmp_path):
    path = tmp_path / "ext.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    qemu_io(path, "write -P 9 0 4k", fmt="qcow2")
    # header_length is 112: put an unknown extension there, then the end marker
    _patch(path, 112, struct.pack(">II", 0x12345678, 5) + b"hello\0\0\0" + struct.pack(">II", 0, 0))
    qemu_img_json("info", path)   # qemu accepts it too
    assert our_digest(path) == qemu_tools.raw_digest(path, tmp_path)
    assert_info_matches(path)


def test_unknown_incompatible_bit_refused(tmp_path):
    path = tmp_path / "inc.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    _patch(path, 72, struct.pack(">Q", 1 << 20))
    with pytest.raises(UnsupportedFeature, match="incompatible"):
        Qcow2Driver.open(str(path), True, DirOpener())


def test_corrupt_flag_read_only(tmp_path):
    path = tmp_path / "corrupt.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    qemu_io(path, "write -P 9 0 4k", fmt="qcow2")
    _patch(path, 72, struct.pack(">Q", 2))
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        assert drv.read(0, 4096) == b"\x09" * 4096
        assert drv.info()["format-specific"]["data"]["corrupt"] is True
    with pytest.raises(CorruptImageError, match="corrupt bit"):
        Qcow2Driver.open(str(path), False, DirOpener())


def test_dirty_image_reads_and_is_repaired_on_writable_open(tmp_path):
    path = tmp_path / "dirty.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "1M")
    qemu_io(path, "write -P 9 0 4k", fmt="qcow2")
    _patch(path, 72, struct.pack(">Q", 1))
    assert qemu_img_json("info", path)["dirty-flag"] is True
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        assert drv.read(0, 4096) == b"\x09" * 4096
        assert drv.info()["dirty-flag"] is True
    with Qcow2Driver.open(str(path), False, DirOpener()) as drv:      # repaired as QEMU does
        assert drv.info()["dirty-flag"] is False
    assert qemu_img_json("info", path)["dirty-flag"] is False


def test_encrypted_image_refused_on_read(tmp_path):
    path = tmp_path / "enc.qcow2"
    qemu_img("create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2",
             "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", path, "1M")
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        assert drv.info()["encrypted"] is True
        with pytest.raises(UnsupportedFeature, match="encryption"):
            drv.read(0, 512)
    assert_info_matches(path)     # the LUKS header described as qemu-img does


def test_entry_past_eof_is_corrupt(tmp_path):
    path = tmp_path / "eof.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "1M")
    qemu_io(path, "write -P 9 8k 4k", fmt="qcow2")
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        l2_offset = drv._l1[0] & 0x00fffffffffffe00
    _patch(path, l2_offset + 2 * 8, struct.pack(">Q", (1 << 63) | (1 << 40)))
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        with pytest.raises(CorruptImageError) as info:
            drv.read(0, 16384)
    message = str(info.value)
    assert "guest offset 0x2000" in message and "0x%x" % l2_offset in message and "entry 2" in message


def test_l1_table_past_eof_refused(tmp_path):
    path = tmp_path / "l1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    _patch(path, 40, struct.pack(">Q", 1 << 30))
    with pytest.raises(FormatError):
        Qcow2Driver.open(str(path), True, DirOpener())


def test_compressed_cluster_bounded_output(tmp_path):
    src = tmp_path / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", src, "64k")
    qemu_io(src, "write -P 0x41 0 4k", fmt="qcow2")
    dst = tmp_path / "c.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", src, dst)
    with Qcow2Driver.open(str(dst), True, DirOpener()) as drv:
        entry = drv._load_l2(drv._l1[0] & 0x00fffffffffffe00)[0]
        coffset, _sectors = drv._compressed_location(entry)
    # replace the compressed stream with one that inflates far past the cluster size
    import zlib
    bomb = zlib.compressobj(9, zlib.DEFLATED, -12)
    stream = bomb.compress(bytes(64 * 4096)) + bomb.flush()
    assert len(stream) < 512
    _patch(dst, coffset, stream)
    with Qcow2Driver.open(str(dst), True, DirOpener()) as drv:
        assert drv.read(0, 4096) == bytes(4096)   # bounded to one cluster, no error: a valid prefix


def _in_dir(tmp_path, *args):
    """Run a qemu tool in tmp_path: QEMU opens relative data file names from its working directory."""
    return qemu_tools.run(*args, cwd=str(tmp_path))


def test_external_data_file(tmp_path):
    path = tmp_path / "ext.qcow2"
    _in_dir(tmp_path, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=ext.data", path, "2M")
    _in_dir(tmp_path, "qemu-io", "-f", "qcow2", "-c", "write -P 0x31 4k 100k", "-c", "write -z 512k 64k", path)
    opener = DirOpener()
    oracle = tmp_path / "oracle.raw"
    _in_dir(tmp_path, "qemu-img", "convert", "-O", "raw", path, oracle)
    assert our_digest(path, opener) == qemu_tools.file_digest(oracle)
    assert [os.path.basename(p) for p in opener.opened] == ["ext.data"]
    with Qcow2Driver.open(str(path), True, DirOpener()) as drv:
        assert drv.read(4096, 4) == b"\x31" * 4
        info = drv.info()["format-specific"]["data"]
    oracle_info = json.loads(_in_dir(tmp_path, "qemu-img", "info", "--output=json", path))
    assert info == oracle_info["format-specific"]["data"]
    raw_path = tmp_path / "raw.qcow2"
    _in_dir(tmp_path, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=raw.data,data_file_raw=on",
            raw_path, "1M")
    _in_dir(tmp_path, "qemu-io", "-f", "qcow2", "-c", "write -P 0x32 0 8k", raw_path)
    _in_dir(tmp_path, "qemu-img", "convert", "-O", "raw", raw_path, oracle)
    assert our_digest(raw_path) == qemu_tools.file_digest(oracle)
    with Qcow2Driver.open(str(raw_path), True, DirOpener()) as drv:
        assert drv.info()["format-specific"]["data"]["data-file-raw"] is True


def test_absolute_data_file_refused_without_opening(tmp_path):
    decoy = tmp_path / "decoy.data"
    path = tmp_path / "abs.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s" % decoy, path, "1M")
    opener = DirOpener()
    with pytest.raises(PolicyError):
        Qcow2Driver.open(str(path), True, opener)
    assert opener.opened == []


def test_absolute_data_file_refused_by_default_policy(tmp_path, monkeypatch):
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import chain
    decoy = tmp_path / "decoy.data"
    # Outside the image's directory (an absolute name in it is accepted like a relative one).
    (tmp_path / "vm").mkdir()
    path = tmp_path / "vm" / "abs.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s" % decoy, path, "1M")
    with open(str(decoy), "wb") as f:
        f.write(b"decoy")
    opened = []
    real_open = os.open

    def recording_open(name, *args, **kwargs):
        opened.append(os.fspath(name))
        return real_open(name, *args, **kwargs)
    monkeypatch.setattr(os, "open", recording_open)
    with pytest.raises(PolicyError):
        chain.open_driver(str(path), "qcow2")
    monkeypatch.undo()
    assert str(decoy) not in opened and str(path) in opened
    with open(str(decoy), "rb") as f:
        assert f.read() == b"decoy"


@pytest.mark.parametrize("options", ["cluster_size=4096", "extended_l2=on,cluster_size=16k"])
def test_damaged_metadata_raises_only_image_errors(tmp_path, options):
    """Hostile input: random damage to the metadata clusters ends in an ImageError
    (or a read of some data), never in another exception."""
    import random
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", options, base, "1M")
    qemu_io(base, "write -P 1 0 300k", "write -z 400k 32k", fmt="qcow2")
    qemu_img("snapshot", "-c", "s", base)
    qemu_io(base, "write -P 2 100k 10k", fmt="qcow2")
    with open(str(base), "rb") as f:
        original = f.read()
    cs = qemu_img_json("info", base)["cluster-size"]
    path = tmp_path / "damaged.qcow2"
    unexpected = []
    read_through = 0
    for seed in range(120):
        rnd = random.Random(seed)
        damaged = bytearray(original)
        for dummy in range(rnd.randrange(1, 5)):
            pos = rnd.randrange(0, min(len(damaged), 6 * cs))
            damaged[pos:pos + 8] = bytes(rnd.randrange(256) for dummy in range(8))
        with open(str(path), "wb") as f:
            f.write(damaged)
        for readonly in (True, False):
            try:
                with Qcow2Driver.open(str(path), readonly, DirOpener()) as drv:
                    drv.info()
                    if drv.virtual_size <= 16 * M:
                        drv.read(0, drv.virtual_size)
                        drv.block_status(0, drv.virtual_size)
                        read_through += 1
                    if not readonly and drv.virtual_size >= M:
                        drv.write(5000, b"x" * 70000)
                        drv.write_zeroes(200000, 300000, may_unmap=True)
            except ImageError:
                pass
            except Exception as exc:  # noqa: B902 - the point of the test
                unexpected.append((seed, readonly, repr(exc)))
    assert unexpected == []
    assert read_through > 20      # the damage is not all caught by the header checks
