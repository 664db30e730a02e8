# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""convert() output equals its source for qemu-img, passes qemu-img check,
keeps holes, and never copies zeroes as data."""

import json
import os

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io, raw_digest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, ImageNotFoundError, InvalidOptionError,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import sizes

MIB = 1 << 20
KIB = 1 << 10

# Data pattern written into sources: (offset, length, byte); byte 0 writes zeroes as data.
PATTERN = (
    (0, 64 * KIB, 0x11),
    (192 * KIB, 4 * KIB, 0x22),          # 4 KiB inside a 64 KiB cluster
    (1 * MIB, 1 * MIB, 0),               # allocated, but zero bytes
    (2 * MIB + 512, 300 * KIB, 0x33),    # unaligned run over several clusters
    (5 * MIB - 8 * KIB, 8 * KIB, 0x44),  # last clusters
)
SIZE = 5 * MIB
# Bytes of PATTERN that are not zero.
NONZERO = sum(length for _offset, length, byte in PATTERN if byte)


def write_pattern(path, fmt, pattern=PATTERN):
    qemu_io(path, *["write -P %d %d %d" % (byte, offset, length) for offset, length, byte in pattern],
            fmt=fmt)


def make_source(tmp_path, fmt, name="source", size=SIZE, options=None, pattern=PATTERN):
    path = tmp_path / ("%s.%s" % (name, fmt))
    args = ["create", "-f", fmt] + (["-o", options] if options else [])
    qemu_img(*(args + [path, str(size)]))
    write_pattern(path, fmt, pattern)
    return path


def assert_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0
    assert "corruptions" not in result and "leaks" not in result, result
    return result


def mapped(path, fmt):
    """qemu-img map --output=json of ``path``."""
    return json.loads(qemu_img("map", "--output=json", "-f", fmt, path))


def data_bytes(path, fmt, depth=None):
    return sum(entry["length"] for entry in mapped(path, fmt)
               if entry["data"] and (depth is None or entry["depth"] == depth))


def allocated(path):
    return os.stat(str(path)).st_blocks * 512


def assert_same_content(a, b, tmp_path):
    qemu_img("compare", a, b)
    assert raw_digest(a, tmp_path) == raw_digest(b, tmp_path)


def test_raw_to_qcow2(tmp_path):
    source = make_source(tmp_path, "raw")
    target = tmp_path / "out.qcow2"
    result = diskimage.convert(str(source), str(target), "qcow2")
    assert_same_content(source, target, tmp_path)
    assert_clean(target)
    # Zero bytes in the source are not written as data: only the clusters
    # holding non-zero bytes are allocated.
    written = data_bytes(target, "qcow2")
    assert NONZERO <= written <= NONZERO + 6 * 64 * KIB
    assert NONZERO <= result["bytes_written"] <= written
    assert result["bytes_read"] >= NONZERO
    assert result["duration"] >= 0 and result["virtual_size"] == SIZE


def test_qcow2_to_raw_keeps_holes(tmp_path):
    source = make_source(tmp_path, "qcow2")
    target = tmp_path / "out.raw"
    diskimage.convert(str(source), str(target), "raw")
    assert_same_content(source, target, tmp_path)
    assert os.path.getsize(str(target)) == SIZE
    # Holes stay holes and zero data stays a hole: about the non-zero data is allocated.
    assert allocated(target) <= NONZERO + 256 * KIB


def test_holes_are_never_read(tmp_path):
    source = tmp_path / "sparse.raw"
    qemu_img("create", "-f", "raw", source, "256M")
    write_pattern(source, "raw", [(100 * MIB, 1 * MIB, 0x55)])
    target = tmp_path / "out.qcow2"
    result = diskimage.convert(str(source), str(target), "qcow2")
    # The raw driver reads the first 4 KiB block qemu-img create allocates; nothing else
    # but the written MiB.
    assert result["bytes_read"] <= 1 * MIB + 64 * KIB
    assert data_bytes(target, "qcow2") == 1 * MIB
    qemu_img("compare", source, target)


@pytest.mark.parametrize("source_cluster,target_cluster", [
    ("4k", "64k"), ("64k", "512"), ("2M", "64k"), ("512", "2M"),
])
def test_qcow2_to_qcow2_cluster_sizes(tmp_path, source_cluster, target_cluster):
    source = make_source(tmp_path, "qcow2", options="cluster_size=%s" % source_cluster)
    target = tmp_path / "out.qcow2"
    diskimage.convert(str(source), str(target), "qcow2", options={"cluster_size": target_cluster})
    assert_same_content(source, target, tmp_path)
    assert_clean(target)
    info = qemu_img_json("info", target)
    assert info["cluster-size"] == sizes.parse_size(target_cluster)


def make_chain(tmp_path):
    """base.raw (3 MiB) <- mid.qcow2 (4 MiB) <- top.qcow2 (5 MiB, 4 KiB clusters), each
    layer with data, zeroes over lower data, and data past the lower layer's end."""
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", base, "3M")
    write_pattern(base, "raw", [(0, 3 * MIB, 0x61)])
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "4M")
    qemu_io(mid, "write -P 0x62 512k 256k", "write -z 1M 128k", "write -P 0x63 3584k 64k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "mid.qcow2", "-F", "qcow2", top, "5M")
    qemu_io(top, "write -P 0x64 0 8k", "write -z 2M 4k", "write -P 0x65 1056k 4k",
            "write -P 0x66 4608k 12k", fmt="qcow2")
    return base, mid, top


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_chain_to_flat(tmp_path, out_fmt):
    _base, _mid, top = make_chain(tmp_path)
    target = tmp_path / ("flat." + out_fmt)
    diskimage.convert(str(top), str(target), out_fmt)
    assert_same_content(top, target, tmp_path)
    assert "backing-filename" not in qemu_img_json("info", target)
    if out_fmt == "qcow2":
        assert_clean(target)


def test_compressed_output(tmp_path):
    size = 3 * MIB + 512   # a partial last cluster
    source = tmp_path / "source.raw"
    qemu_img("create", "-f", "raw", source, str(size))
    write_pattern(source, "raw", [(0, 1 * MIB, 0x71), (2 * MIB, 256 * KIB, 0)])
    # Incompressible clusters are written uncompressed.
    with open(str(source), "r+b") as image_file:
        image_file.seek(1 * MIB + 64 * KIB)
        image_file.write(os.urandom(128 * KIB))
        image_file.seek(size - 512)
        image_file.write(b"\x72" * 512)
    target = tmp_path / "out.qcow2"
    result = diskimage.convert(str(source), str(target), "qcow2", compress=True)
    assert_same_content(source, target, tmp_path)
    check = assert_clean(target)
    assert check["compressed-clusters"] >= 16
    assert result["compressed_clusters"] == check["compressed-clusters"]
    # The compressed image is much smaller than the data it holds.
    assert allocated(target) < 1 * MIB


def test_compressed_output_through_chain(tmp_path):
    _base, _mid, top = make_chain(tmp_path)
    target = tmp_path / "out.qcow2"
    diskimage.convert(str(top), str(target), "qcow2", compress=True, options={"cluster_size": "16k"})
    assert_same_content(top, target, tmp_path)
    assert assert_clean(target)["compressed-clusters"] > 0


def test_compress_needs_qcow2(tmp_path):
    source = make_source(tmp_path, "raw", size=MIB, pattern=())
    with pytest.raises(InvalidOptionError):
        diskimage.convert(str(source), str(tmp_path / "out.raw"), "raw", compress=True)
    assert sorted(os.listdir(str(tmp_path))) == ["source.raw"]


def test_backing_output_copies_only_the_top_layer(tmp_path):
    _base, mid, top = make_chain(tmp_path)
    target = tmp_path / "new-top.qcow2"
    diskimage.convert(str(top), str(target), "qcow2",
                      options={"backing_file": "mid.qcow2", "backing_fmt": "qcow2", "cluster_size": "4k"})
    info = qemu_img_json("info", target)
    assert info["backing-filename"] == "mid.qcow2" and info["backing-filename-format"] == "qcow2"
    assert_clean(target)
    assert_same_content(top, target, tmp_path)
    # Only what top.qcow2 itself holds was copied (the zeroed 4 KiB is a zero cluster).
    assert data_bytes(target, "qcow2", depth=0) == data_bytes(top, "qcow2", depth=0)
    assert data_bytes(target, "qcow2", depth=0) == (8 + 4 + 12) * KIB


def test_backing_output_needs_backing_format(tmp_path):
    _base, _mid, top = make_chain(tmp_path)
    with pytest.raises(InvalidOptionError):
        diskimage.convert(str(top), str(tmp_path / "x.qcow2"), "qcow2", options={"backing_file": "mid.qcow2"})
    assert not (tmp_path / "x.qcow2").exists()


def test_progress_and_no_overwrite(tmp_path):
    source = make_source(tmp_path, "qcow2")
    target = tmp_path / "out.raw"
    calls = []
    diskimage.convert(str(source), str(target), "raw", progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (SIZE, SIZE)
    assert [done for done, _total in calls] == sorted(done for done, _total in calls)
    assert all(total == SIZE for _done, total in calls)
    digest = raw_digest(target, tmp_path, fmt="raw")
    with pytest.raises(ImageError) as excinfo:
        diskimage.convert(str(source), str(target), "qcow2")
    assert "exists" in str(excinfo.value)
    assert raw_digest(target, tmp_path, fmt="raw") == digest


def test_failures_leave_nothing_behind(tmp_path):
    with pytest.raises(ImageNotFoundError):
        diskimage.convert(str(tmp_path / "absent.qcow2"), str(tmp_path / "out.qcow2"), "qcow2")
    source = make_source(tmp_path, "raw", size=MIB, pattern=[(0, 4096, 1)])

    def interrupt(done, total):
        if done:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        diskimage.convert(str(source), str(tmp_path / "out.qcow2"), "qcow2", progress=interrupt)
    with pytest.raises(InvalidOptionError):
        diskimage.convert(str(source), str(tmp_path / "out.qcow2"), "qcow2", options={"cluster_size": "1k3"})
    assert sorted(os.listdir(str(tmp_path))) == ["source.raw"]


def test_odd_sized_raw_source(tmp_path):
    source = tmp_path / "odd.raw"
    source.write_bytes(b"\x01" * 1000)
    target = tmp_path / "odd.qcow2"
    diskimage.convert(str(source), str(target), "qcow2", src_fmt="raw")
    theirs = tmp_path / "theirs.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", source, theirs)
    assert qemu_img_json("info", target)["virtual-size"] == qemu_img_json("info", theirs)["virtual-size"]
    qemu_img("compare", target, theirs)


def allocation_map(path, fmt):
    """qemu-img map of ``path`` without host offsets (they may differ)."""
    return [dict((key, value) for key, value in entry.items() if key != "offset")
            for entry in mapped(path, fmt)]


@pytest.mark.parametrize("src_fmt,out_fmt,options", [
    ("raw", "qcow2", None),
    ("qcow2", "qcow2", "cluster_size=4k"),
    ("qcow2", "raw", None),
    ("raw", "raw", None),
])
def test_allocation_like_qemu_img(tmp_path, src_fmt, out_fmt, options):
    source = make_source(tmp_path, src_fmt)
    ours, theirs = tmp_path / ("ours." + out_fmt), tmp_path / ("theirs." + out_fmt)
    diskimage.convert(str(source), str(ours), out_fmt,
                      options=dict(o.split("=") for o in options.split(",")) if options else None)
    qemu_img(*(["convert", "-O", out_fmt] + (["-o", options] if options else []) + [source, theirs]))
    assert allocation_map(ours, out_fmt) == allocation_map(theirs, out_fmt)


@pytest.mark.parametrize("compress", [False, True])
def test_backing_output_like_qemu_img(tmp_path, compress):
    _base, _mid, top = make_chain(tmp_path)
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    diskimage.convert(str(top), str(ours), "qcow2", compress=compress,
                      options={"backing_file": "mid.qcow2", "backing_fmt": "qcow2", "cluster_size": "4k"})
    qemu_img(*(["convert", "-O", "qcow2", "-o", "cluster_size=4k", "-B", "mid.qcow2", "-F", "qcow2"]
               + (["-c"] if compress else []) + [top, theirs]))
    assert allocation_map(ours, "qcow2") == allocation_map(theirs, "qcow2")
    assert_same_content(top, ours, tmp_path)
    assert_clean(ours)


def test_backing_output_hides_a_longer_backing_file(tmp_path):
    # The source's backing file ends at 1 MiB: past it the source reads zeroes.  The
    # new backing file has the same first MiB and more data after it, which must not
    # show through.
    short_base = tmp_path / "short.raw"
    qemu_img("create", "-f", "raw", short_base, "1M")
    write_pattern(short_base, "raw", [(0, 1 * MIB, 0x21)])
    long_base = tmp_path / "long.raw"
    qemu_img("create", "-f", "raw", long_base, "3M")
    write_pattern(long_base, "raw", [(0, 1 * MIB, 0x21), (1 * MIB, 2 * MIB, 0x22)])
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "short.raw", "-F", "raw", top, "3M")
    qemu_io(top, "write -P 0x23 1536k 64k", fmt="qcow2")
    ours = tmp_path / "ours.qcow2"
    diskimage.convert(str(top), str(ours), "qcow2", options={"backing_file": "long.raw", "backing_fmt": "raw"})
    # (qemu-img 7.2 convert -B leaves 1M..1.5M unallocated here, so its output shows
    # long.raw's bytes where the source reads zeroes: not an oracle for this case.)
    assert_same_content(top, ours, tmp_path)
    assert_clean(ours)
    top_layer = [(entry["start"], entry["length"], entry["zero"], entry["data"])
                 for entry in allocation_map(ours, "qcow2") if entry["depth"] == 0]
    assert top_layer == [(1 * MIB, 512 * KIB, True, False), (1536 * KIB, 64 * KIB, False, True),
                         (1600 * KIB, 3 * MIB - 1600 * KIB, True, False)]


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_compressed_source(tmp_path, out_fmt):
    plain = make_source(tmp_path, "raw")
    packed = tmp_path / "packed.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=16k", plain, packed)
    target = tmp_path / ("out." + out_fmt)
    diskimage.convert(str(packed), str(target), out_fmt)
    assert_same_content(plain, target, tmp_path)
    theirs = tmp_path / ("theirs." + out_fmt)
    qemu_img("convert", "-O", out_fmt, packed, theirs)
    assert allocation_map(target, out_fmt) == allocation_map(theirs, out_fmt)
    if out_fmt == "qcow2":
        assert assert_clean(target).get("compressed-clusters", 0) == 0


@pytest.mark.parametrize("compress", [False, True])
def test_runs_across_status_windows(tmp_path, compress):
    # Data across the boundaries of the block status windows (64 MiB) and at the end.
    size = 150 * MIB + 1536
    source = tmp_path / "wide.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", source, str(size))
    qemu_io(source, "write -P 0x51 %d %d" % (64 * MIB - 8 * KIB, 16 * KIB),
            "write -P 0x52 %d %d" % (128 * MIB - 4 * KIB, 12 * KIB),
            "write -z %d %d" % (128 * MIB + 4 * KIB, 4 * KIB),
            "write -P 0x53 %d %d" % (size - 2048, 2048), fmt="qcow2")
    target = tmp_path / "wide-out.qcow2"
    result = diskimage.convert(str(source), str(target), "qcow2", compress=compress)
    qemu_img("compare", source, target)
    assert diskimage.compare(str(source), str(target))
    assert diskimage.compare_detail(str(target), str(source), strict=False) is None
    # Compressed output reads whole 64 KiB clusters around the data.
    assert result["bytes_read"] <= (400 if compress else 160) * KIB
    assert_clean(target)
