# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""measure() reports what qemu-img measure --output=json reports, field for field."""

import subprocess

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, InvalidOptionError, PolicyError, UnsupportedOperation,
)


def option_string(options):
    return ",".join("%s=%s" % item for item in sorted(options.items()))


def same_as_qemu(size=None, src=None, out_fmt="qcow2", options=None, snapshot=None, **kwargs):
    ours = diskimage.measure(size=size, src=None if src is None else str(src), out_fmt=out_fmt,
                             options=options, snapshot=snapshot, **kwargs)
    args = ["measure", "-O", out_fmt]
    if options:
        args += ["-o", option_string(options)]
    if size is not None:
        args += ["--size", size]
    if snapshot is not None:
        args += ["-l", snapshot]
    if src is not None:
        args.append(src)
    theirs = qemu_img_json(*args)
    assert ours == theirs
    return ours


def qemu_refuses(*args):
    proc = subprocess.run(["qemu-img", "measure", "--output=json"] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc.returncode != 0


SIZES = ["0", "1M", "10G", "1000", "123456789"]
QCOW2_OPTIONS = [
    {},
    {"cluster_size": "512"},
    {"cluster_size": "2M"},
    {"refcount_bits": "1"},
    {"refcount_bits": "64"},
    {"extended_l2": "on"},
    {"extended_l2": "on", "cluster_size": "16k", "refcount_bits": "8"},
    {"preallocation": "metadata"},
    {"preallocation": "falloc"},
    {"preallocation": "full"},
    {"compat": "0.10"},
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("options", QCOW2_OPTIONS, ids=option_string)
def test_qcow2_from_size(size, options):
    result = same_as_qemu(size=size, options=options)
    assert "bitmaps" not in result


@pytest.mark.parametrize("size", SIZES + ["1T"])
@pytest.mark.parametrize("options", [None, {"preallocation": "full"}])
def test_raw_from_size(size, options):
    result = same_as_qemu(size=size, out_fmt="raw", options=options)
    assert result["required"] == result["fully-allocated"]


def test_integer_size_and_large_size_cap():
    assert diskimage.measure(size=1 << 30) == qemu_img_json("measure", "-O", "qcow2", "--size", "1G")
    assert qemu_refuses("-O", "qcow2", "-o", "cluster_size=512", "--size", "1T")
    with pytest.raises(InvalidOptionError):
        diskimage.measure(size="1T", options={"cluster_size": 512})


@pytest.mark.parametrize("options", [
    {"cluster_size": "3000"},
    {"cluster_size": "4M"},
    {"refcount_bits": "3"},
    {"compat": "0.10", "refcount_bits": "8"},
    {"extended_l2": "on", "cluster_size": "8k"},
    {"preallocation": "sometimes"},
    {"compat": "2.0"},
    {"no_such_option": "1"},
], ids=option_string)
def test_invalid_qcow2_options_refused_like_qemu(options):
    assert qemu_refuses("-O", "qcow2", "-o", option_string(options), "--size", "1M")
    with pytest.raises(InvalidOptionError):
        diskimage.measure(size="1M", options=options)


def test_size_or_source_not_both(tmp_path):
    image = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", image, "1M")
    with pytest.raises(InvalidOptionError):
        diskimage.measure(size="1M", src=str(image))
    with pytest.raises(InvalidOptionError):
        diskimage.measure()
    with pytest.raises(UnsupportedOperation):
        diskimage.measure(size="1M", out_fmt="vmdk")


@pytest.fixture(name="sources")
def fixture_sources(tmp_path):
    """Source images: sparse raw, unaligned raw, qcow2 with data, zero, discarded
    and compressed clusters, metadata preallocation, and a 3-deep chain."""
    made = {}
    sparse = tmp_path / "sparse.raw"
    qemu_img("create", "-f", "raw", sparse, "3M")
    qemu_io(sparse, "write -P 1 1M 3k", "write -P 2 2M 100k", fmt="raw")
    made["sparse-raw"] = sparse
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x07" * 1000)
    made["unaligned-raw"] = odd
    kinds = tmp_path / "kinds.qcow2"
    qemu_img("create", "-f", "qcow2", kinds, "4M")
    qemu_io(kinds, "write -P 1 0 64k", "write -z 128k 64k", "write -P 2 256k 64k", "write -z 256k 64k",
            "write -c -P 3 512k 64k", "write -P 4 1M 128k", "discard 1M 64k", "write -P 5 3M 5k", fmt="qcow2")
    made["qcow2-kinds"] = kinds
    prealloc = tmp_path / "prealloc.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "preallocation=metadata", prealloc, "2M")
    qemu_io(prealloc, "write -P 1 64k 4k", fmt="qcow2")
    made["qcow2-metadata-prealloc"] = prealloc
    compressed = tmp_path / "compressed.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", kinds, compressed)
    made["qcow2-compressed"] = compressed
    base = tmp_path / "base.raw"
    middle = tmp_path / "middle.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "raw", base, "1M")
    qemu_io(base, "write -P 1 0 64k", fmt="raw")
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", middle, "2M")
    qemu_io(middle, "write -P 2 64k 64k", fmt="qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "middle.qcow2", "-F", "qcow2", top, "3M")
    qemu_io(top, "write -P 3 128k 64k", "write -z 192k 64k", "write -P 4 2100k 5k", fmt="qcow2")
    made["chain"] = top
    return made


SOURCE_NAMES = ["sparse-raw", "unaligned-raw", "qcow2-kinds", "qcow2-metadata-prealloc", "qcow2-compressed", "chain"]


@pytest.mark.parametrize("options", [
    {},
    {"cluster_size": "512"},
    {"cluster_size": "2M"},
    {"refcount_bits": "1"},
    {"extended_l2": "on"},
    {"preallocation": "falloc"},
    {"backing_file": "elsewhere.qcow2"},
    {"compat": "0.10"},
], ids=option_string)
def test_qcow2_from_sources(sources, options):
    for name in SOURCE_NAMES:
        result = same_as_qemu(src=sources[name], options=options)
        assert ("bitmaps" in result) == (name not in ("sparse-raw", "unaligned-raw")
                                         and options.get("compat") != "0.10")


def test_raw_from_sources(sources):
    for name in SOURCE_NAMES:
        same_as_qemu(src=sources[name], out_fmt="raw")


def test_required_counts_only_data_clusters(sources):
    empty = diskimage.measure(size="3M")
    result = same_as_qemu(src=sources["sparse-raw"])
    # The first 4k (qemu-img create writes it), 1M+3k and 2M+100k: 1 + 1 + 2 clusters of data.
    assert result["required"] - empty["required"] == 4 * 65536


def test_bitmaps_of_the_source(tmp_path):
    image = tmp_path / "bitmaps.qcow2"
    qemu_img("create", "-f", "qcow2", image, "4M")
    qemu_img("bitmap", "--add", image, "first")
    qemu_img("bitmap", "--add", "-g", "512", image, "a-much-longer-bitmap-name")
    for options in ({}, {"cluster_size": "4k"}, {"compat": "0.10"}):
        same_as_qemu(src=image, options=options)
    assert same_as_qemu(src=image)["bitmaps"] > 0
    old = tmp_path / "v2.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", old, "4M")
    assert "bitmaps" not in same_as_qemu(src=old)


def test_internal_snapshot_of_the_source(tmp_path):
    image = tmp_path / "snap.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 1 0 128k", fmt="qcow2")
    qemu_img("snapshot", "-c", "before", image)
    qemu_img("resize", "-q", image, "4M")
    qemu_io(image, "write -P 2 2M 1M", fmt="qcow2")
    now = same_as_qemu(src=image)
    then = same_as_qemu(src=image, snapshot="before")
    assert then["required"] < now["required"]
    same_as_qemu(src=image, snapshot="1", out_fmt="raw")
    same_as_qemu(src=image, snapshot="snapshot.name=before")
    with pytest.raises(ImageError):
        diskimage.measure(src=str(image), snapshot="missing")


def test_backing_outside_policy_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    qemu_img("create", "-f", "qcow2", other / "base.qcow2", "1M")
    # A sibling directory (an absolute name in the image's own directory, or below it, is accepted).
    (tmp_path / "vm").mkdir()
    top = tmp_path / "vm" / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(other / "base.qcow2"), "-F", "qcow2", top)
    with pytest.raises(PolicyError):
        diskimage.measure(src=str(top))
    same_as_qemu(src=top, allow_dirs=[str(other)])
