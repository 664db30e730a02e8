# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 driver, create: images we create pass qemu-img check and show the
options in qemu-img info exactly as qemu-img's own images do."""

import os

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    InvalidOptionError, UnsupportedFeature)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2 as qcow2_mod
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.qcow2 import Qcow2Driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.raw import RawDriver

M = 1024 * 1024


def qemu_opts(options):
    return ",".join("%s=%s" % (k, ("on" if v else "off") if isinstance(v, bool) else v)
                    for k, v in sorted(options.items()))


def assert_check_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("corruptions", 0) == 0, result
    assert result.get("leaks", 0) == 0, result
    assert result.get("check-errors", 0) == 0, result
    return result


def assert_like_qemu(tmp_path, ours, size, options, backing=None):
    """``ours`` matches an image qemu-img creates with the same options."""
    theirs = tmp_path / ("theirs-" + os.path.basename(str(ours)))
    args = ["create", "-q", "-f", "qcow2"]
    qopts = {k: v for k, v in options.items() if k not in ("backing_file", "backing_fmt")}
    if qopts:
        args += ["-o", qemu_opts(qopts)]
    if backing:
        args += ["-b", backing[0], "-F", backing[1]]
    qemu_img(*(args + [theirs, str(size)]))
    mine = qemu_img_json("info", ours)
    oracle = qemu_img_json("info", theirs)
    for key in ("virtual-size", "cluster-size", "format-specific", "dirty-flag", "backing-filename",
                "backing-filename-format"):
        assert mine.get(key) == oracle.get(key), key
    return theirs


CREATE_MATRIX = [
    {},
    {"cluster_size": 512},
    {"cluster_size": 4096, "refcount_bits": 1},
    {"cluster_size": 2 * M},
    {"compat": "0.10"},
    {"compat": "v2", "cluster_size": 4096},
    {"compat": "v3", "lazy_refcounts": True},
    {"refcount_bits": 2},
    {"refcount_bits": 4, "cluster_size": 1024},
    {"refcount_bits": 8},
    {"refcount_bits": 32},
    {"refcount_bits": 64, "cluster_size": 512},
    {"extended_l2": True},
    {"extended_l2": True, "cluster_size": 16384},
    {"compression_type": "zlib"},
]


@pytest.mark.parametrize("options", CREATE_MATRIX, ids=[qemu_opts(o) or "defaults" for o in CREATE_MATRIX])
def test_create_like_qemu(tmp_path, options):
    path = tmp_path / "new.qcow2"
    size = 10 * M + 512
    Qcow2Driver.create(str(path), size, dict(options))
    assert_check_clean(path)
    assert_like_qemu(tmp_path, path, size, options)
    # qemu can write to it and our reader agrees
    qemu_io(path, "write -P 0x42 1M 100k", fmt="qcow2")
    assert_check_clean(path)
    with Qcow2Driver.open(str(path), True) as drv:
        assert drv.read(M, 100 * 1024) == b"\x42" * 100 * 1024
        assert drv.read(0, 4096) == bytes(4096)


def test_create_layout_like_qemu(tmp_path):
    # header, refcount table, refcount block, L1 table: same offsets as qemu-img
    path = tmp_path / "layout.qcow2"
    Qcow2Driver.create(str(path), 10 * M, {"cluster_size": 4096})
    theirs = assert_like_qemu(tmp_path, path, 10 * M, {"cluster_size": 4096})
    with Qcow2Driver.open(str(path), True) as mine, Qcow2Driver.open(str(theirs), True) as oracle:
        for field in ("l1_table_offset", "l1_size", "refcount_table_offset", "refcount_table_clusters",
                      "header_length", "refcount_order"):
            assert getattr(mine.header, field) == getattr(oracle.header, field), field
        assert mine.header.feature_names.get((2, 0)) == "bitmaps"


def test_create_with_backing(tmp_path):
    base = tmp_path / "base.raw"
    RawDriver.create(str(base), 3 * M)
    with open(str(base), "r+b") as f:
        f.write(b"\x99" * M)
    overlay = tmp_path / "overlay.qcow2"
    with RawDriver.open(str(base), True) as backing:
        Qcow2Driver.create(str(overlay), None, {"backing_file": "base.raw", "backing_fmt": "raw"},
                           backing=backing)
        assert backing.read(0, 1) == b"\x99"   # still open: create does not close the caller's backing
    info = qemu_img_json("info", overlay)
    assert info["virtual-size"] == 3 * M
    assert info["backing-filename"] == "base.raw"
    assert info["backing-filename-format"] == "raw"
    assert_check_clean(overlay)
    assert_like_qemu(tmp_path, overlay, 3 * M, {"backing_file": "base.raw", "backing_fmt": "raw"},
                     backing=("base.raw", "raw"))
    out = tmp_path / "out.raw"
    qemu_img("convert", "-O", "raw", overlay, out)
    with open(str(out), "rb") as f:
        assert f.read(M + 1) == b"\x99" * M + b"\0"


def test_create_backing_small_cluster_long_name(tmp_path):
    # 512-byte clusters leave little header room: the feature table is dropped, the name kept
    name = "b" * 200 + ".raw"
    RawDriver.create(str(tmp_path / name), M)
    path = tmp_path / "small.qcow2"
    Qcow2Driver.create(str(path), M, {"cluster_size": 512, "backing_file": name, "backing_fmt": "raw"})
    assert qemu_img_json("info", path)["backing-filename"] == name
    assert_check_clean(path)


@pytest.mark.parametrize("mode", ["metadata", "falloc", "full"])
@pytest.mark.parametrize("options", [{"cluster_size": 4096}, {"compat": "0.10"},
                                     {"extended_l2": True}, {"cluster_size": 512, "refcount_bits": 64}],
                         ids=["cs4k", "v2", "extl2", "cs512-rc64"])
def test_preallocation_like_qemu(tmp_path, mode, options):
    options = dict(options, preallocation=mode)
    path = tmp_path / "pre.qcow2"
    size = 3 * M
    Qcow2Driver.create(str(path), size, options)
    assert_check_clean(path)
    theirs = assert_like_qemu(tmp_path, path, size, options)

    def shape(p):
        """qemu-img map without host offsets, adjacent equal runs merged."""
        runs = []
        for extent in qemu_img_json("map", p):
            attrs = {k: v for k, v in extent.items() if k not in ("offset", "start", "length")}
            attrs["has-offset"] = "offset" in extent
            if mode == "metadata":
                del attrs["zero"]   # depends on where the file system has holes (4 KiB blocks)
            if runs and runs[-1][1] == attrs and runs[-1][0][1] == extent["start"]:
                runs[-1][0][1] = extent["start"] + extent["length"]
            else:
                runs.append(([extent["start"], extent["start"] + extent["length"]], attrs))
        return runs
    assert shape(path) == shape(theirs)
    if mode != "metadata":
        assert os.stat(str(path)).st_blocks * 512 >= size
    if options.get("cluster_size") == 4096 and mode == "metadata":
        # single L2 table: data clusters start where qemu puts them
        assert qemu_img_json("map", path)[0].get("offset") == qemu_img_json("map", theirs)[0].get("offset")


def test_preallocation_with_backing_needs_extended_l2(tmp_path):
    RawDriver.create(str(tmp_path / "b.raw"), M)
    with pytest.raises(InvalidOptionError, match="extended_l2"):
        Qcow2Driver.create(str(tmp_path / "x.qcow2"), M, {"backing_file": "b.raw", "backing_fmt": "raw",
                                                          "preallocation": "metadata"})
    path = tmp_path / "y.qcow2"
    Qcow2Driver.create(str(path), M, {"backing_file": "b.raw", "backing_fmt": "raw",
                                      "preallocation": "metadata", "extended_l2": True})
    assert_check_clean(path)
    assert qemu_img_json("map", path)[0]["depth"] == 1   # backing still shows through


@pytest.mark.parametrize("options,match", [
    ({"compat": "0.10", "lazy_refcounts": True}, "lazy_refcounts"),
    ({"compat": "0.10", "refcount_bits": 8}, "refcount_bits"),
    ({"compat": "0.10", "extended_l2": True}, "extended_l2"),
    ({"extended_l2": True, "cluster_size": 8192}, "16384"),
    ({"cluster_size": 256}, "cluster_size"),
    ({"cluster_size": 4 * M}, "cluster_size"),
    ({"cluster_size": 3000}, "cluster_size"),
    ({"refcount_bits": 128}, "refcount_bits"),
    ({"refcount_bits": 3}, "refcount_bits"),
    ({"compat": "2.0"}, "compat"),
    ({"preallocation": "sparse"}, "preallocation"),
    ({"compression_type": "lz4"}, "compression_type"),
    ({"backing_fmt": "raw"}, "backing_file"),
    ({"backing_file": "x.raw"}, "backing_fmt"),
    ({"no_such_option": 1}, "no_such_option"),
    ({"lazy_refcounts": "maybe"}, "lazy_refcounts"),
])
def test_invalid_options(tmp_path, options, match):
    with pytest.raises(InvalidOptionError, match=match):
        Qcow2Driver.create(str(tmp_path / "bad.qcow2"), M, options)


def test_invalid_size(tmp_path):
    with pytest.raises(InvalidOptionError, match="512"):
        Qcow2Driver.create(str(tmp_path / "odd.qcow2"), M + 100, {})
    with pytest.raises(InvalidOptionError, match="size"):
        Qcow2Driver.create(str(tmp_path / "none.qcow2"), None, {})


def test_zstd_compression_type(tmp_path):
    path = tmp_path / "z.qcow2"
    if qcow2_mod._zstd_available():
        Qcow2Driver.create(str(path), M, {"compression_type": "zstd"})
        assert qemu_img_json("info", path)["format-specific"]["data"]["compression-type"] == "zstd"
    else:
        with pytest.raises(UnsupportedFeature, match="zstd"):
            Qcow2Driver.create(str(path), M, {"compression_type": "zstd"})
    with pytest.raises(InvalidOptionError, match="compat"):
        Qcow2Driver.create(str(tmp_path / "z2.qcow2"), M, {"compression_type": "zstd", "compat": "0.10"})


def test_large_virtual_size_small_file(tmp_path):
    path = tmp_path / "big.qcow2"
    Qcow2Driver.create(str(path), 64 * 1024 * M, {})
    assert_check_clean(path)
    assert os.path.getsize(str(path)) < M
    assert_like_qemu(tmp_path, path, 64 * 1024 * M, {})


def test_empty_disk(tmp_path):
    path = tmp_path / "empty.qcow2"
    Qcow2Driver.create(str(path), 0, {})
    assert_check_clean(path)
    assert_like_qemu(tmp_path, path, 0, {})
    assert os.path.getsize(str(path)) == 3 * 65536
    with Qcow2Driver.open(str(path), True) as drv:
        assert drv.virtual_size == 0 and drv.read(0, 0) == b""
        assert drv.block_status(0, 0) == []


@pytest.mark.parametrize("options", [{"encrypt.format": "luks"}, {"encryption": True},
                                     {"data_file": "x.data"}])
def test_unsupported_creation_features(tmp_path, options):
    with pytest.raises(UnsupportedFeature):
        Qcow2Driver.create(str(tmp_path / "u.qcow2"), M, options)
    assert not (tmp_path / "x.data").exists()


def test_protocol_hints_accepted(tmp_path):
    path = tmp_path / "hint.qcow2"
    Qcow2Driver.create(str(path), M, {"nocow": False, "extent_size_hint": 1048576})
    assert_check_clean(path)
