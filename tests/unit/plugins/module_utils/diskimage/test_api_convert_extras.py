# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""convert() extras against qemu-img convert: into an existing image (-n), of
an internal snapshot (-l), with a progress callback; and the autoclear bits:
a library write to an image with a persistent bitmap leaves qemu-img check
clean and the stale bitmap gone."""

import shutil

import pytest

from qemu_tools import file_digest, qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, ImageNotFoundError, InvalidOptionError,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import MAX_IO


def assert_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0, result
    assert "corruptions" not in result and "leaks" not in result, result


def make_source(tmp_path, size="6M"):
    """qcow2 with data, zeroes over data, holes, an odd tail, and a snapshot of an earlier state."""
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, size)
    qemu_io(src, "write -P 0x11 0 2M", "write -P 0x12 5M 64k", fmt="qcow2")
    qemu_img("snapshot", "-c", "first", src)
    qemu_io(src, "write -P 0x21 512k 1M", "write -z 0 128k", "write -P 0x22 4100k 3k", fmt="qcow2")
    qemu_img("snapshot", "-c", "second", src)
    qemu_io(src, "write -P 0x31 3M 64k", fmt="qcow2")
    return src


def make_target(tmp_path, name, fmt, size, backing=None):
    """An existing image full of old data that the conversion must overwrite."""
    target = tmp_path / name
    args = ["create", "-q", "-f", fmt]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    qemu_img(*(args + [target, size]))
    qemu_io(target, "write -P 0x99 0 %s" % size, fmt=fmt)
    return target


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("target_size", ["6M", "8M"])
def test_convert_into_existing_image_as_qemu_img_convert_n(tmp_path, fmt, target_size):
    src = make_source(tmp_path)
    ours = make_target(tmp_path, "ours." + fmt, fmt, target_size)
    theirs = make_target(tmp_path, "theirs." + fmt, fmt, target_size)
    qemu_img("convert", "-n", "-O", fmt, src, theirs)
    result = diskimage.convert(str(src), str(ours), fmt, target_exists=True)
    assert result["virtual_size"] == 6 << 20
    qemu_img("compare", "-f", fmt, "-F", fmt, ours, theirs)
    assert qemu_img_json("info", ours)["virtual-size"] == qemu_img_json("info", theirs)["virtual-size"]
    if fmt == "qcow2":
        assert_clean(ours)


def test_convert_n_hides_the_targets_backing_file(tmp_path):
    src = make_source(tmp_path)
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "6M")
    qemu_io(base, "write -P 0x55 0 6M", fmt="qcow2")
    ours = tmp_path / "ours.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", ours)
    theirs = tmp_path / "theirs.qcow2"
    shutil.copyfile(str(ours), str(theirs))
    qemu_img("convert", "-n", "-O", "qcow2", src, theirs)
    diskimage.convert(str(src), str(ours), "qcow2", target_exists=True)
    qemu_img("compare", ours, theirs)
    qemu_img("compare", ours, src)
    assert_clean(ours)


def test_convert_n_compressed(tmp_path):
    src = make_source(tmp_path)
    ours = make_target(tmp_path, "ours.qcow2", "qcow2", "6M")
    diskimage.convert(str(src), str(ours), "qcow2", target_exists=True, compress=True)
    qemu_img("compare", ours, src)
    assert_clean(ours)


def test_convert_n_target_is_zero_skips_zero_ranges(tmp_path):
    src = make_source(tmp_path)
    ours = tmp_path / "ours.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", ours, "6M")
    theirs = tmp_path / "theirs.qcow2"
    shutil.copyfile(str(ours), str(theirs))
    qemu_img("convert", "-n", "--target-is-zero", "-O", "qcow2", src, theirs)
    diskimage.convert(str(src), str(ours), "qcow2", target_exists=True, target_is_zero=True)
    qemu_img("compare", ours, theirs)
    qemu_img("compare", ours, src)
    # nothing was written where the source reads zero: no zero clusters in the target
    assert not [e for e in qemu_img_json("map", ours) if e["zero"] and e["present"]]
    assert_clean(ours)


def test_convert_n_refusals(tmp_path):
    src = make_source(tmp_path)
    small = make_target(tmp_path, "small.qcow2", "qcow2", "4M")
    digest = file_digest(small)
    with pytest.raises(InvalidOptionError, match="smaller"):
        diskimage.convert(str(src), str(small), "qcow2", target_exists=True)
    with pytest.raises(InvalidOptionError, match="options"):
        diskimage.convert(str(src), str(small), "qcow2", target_exists=True, options={"cluster_size": 4096})
    with pytest.raises(InvalidOptionError, match="same image"):
        diskimage.convert(str(src), str(src), "qcow2", target_exists=True)
    with pytest.raises(ImageError):
        diskimage.convert(str(src), str(small), "raw", target_exists=False)
    assert file_digest(small) == digest
    with pytest.raises(ImageNotFoundError):
        diskimage.convert(str(src), str(tmp_path / "missing.qcow2"), "qcow2", target_exists=True)


@pytest.mark.parametrize("out_fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("snapshot, qemu_spec", [
    ("first", "snapshot.name=first"),
    ("second", "snapshot.name=second"),
    ("1", "snapshot.id=1"),
])
def test_convert_snapshot_as_qemu_img_convert_l(tmp_path, out_fmt, snapshot, qemu_spec):
    src = make_source(tmp_path)
    ours = tmp_path / ("ours." + out_fmt)
    theirs = tmp_path / ("theirs." + out_fmt)
    qemu_img("convert", "-l", qemu_spec, "-O", out_fmt, src, theirs)
    diskimage.convert(str(src), str(ours), out_fmt, snapshot=snapshot)
    qemu_img("compare", "-f", out_fmt, "-F", out_fmt, ours, theirs)
    with pytest.raises(AssertionError):
        qemu_img("compare", "-F", out_fmt, src, ours)  # the current content differs from every snapshot
    if out_fmt == "qcow2":
        assert_clean(ours)


def test_convert_snapshot_into_existing_image_and_unknown_snapshot(tmp_path):
    src = make_source(tmp_path)
    ours = make_target(tmp_path, "ours.qcow2", "qcow2", "6M")
    theirs = make_target(tmp_path, "theirs.qcow2", "qcow2", "6M")
    qemu_img("convert", "-n", "-l", "snapshot.name=first", "-O", "qcow2", src, theirs)
    diskimage.convert(str(src), str(ours), "qcow2", snapshot="first", target_exists=True)
    qemu_img("compare", ours, theirs)
    assert_clean(ours)
    with pytest.raises(ImageError, match="no snapshot"):
        diskimage.convert(str(src), str(tmp_path / "new.qcow2"), "qcow2", snapshot="nope")
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    with pytest.raises(ImageError):
        diskimage.convert(str(raw), str(tmp_path / "new2.qcow2"), "qcow2", src_fmt="raw", snapshot="first")


@pytest.mark.parametrize("compress", [False, True])
def test_progress_is_reported_per_chunk_up_to_the_total(tmp_path, compress):
    src = tmp_path / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", src, "24M")
    qemu_io(src, "write -P 0x01 0 20M", fmt="qcow2")
    calls = []
    diskimage.convert(str(src), str(tmp_path / "out.qcow2"), "qcow2", compress=compress,
                      progress=lambda done, total: calls.append((done, total)))
    assert all(total == 24 << 20 for _done, total in calls)
    assert calls[-1][0] == 24 << 20
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    assert len(set(done for done, _total in calls)) >= (20 << 20) // MAX_IO
    qemu_img("compare", src, tmp_path / "out.qcow2")


def test_progress_must_be_callable(tmp_path):
    src = make_source(tmp_path)
    with pytest.raises(InvalidOptionError, match="callable"):
        diskimage.convert(str(src), str(tmp_path / "out.qcow2"), "qcow2", progress=5)


def test_library_write_drops_stale_persistent_bitmaps(tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "4M")
    qemu_io(path, "write -P 0x01 0 1M", fmt="qcow2")
    qemu_img("bitmap", "--add", path, "bm0")
    qemu_img("bitmap", "--add", "-g", "128k", path, "bm1")
    assert [b["name"] for b in qemu_img_json("info", path)["format-specific"]["data"]["bitmaps"]] == ["bm0", "bm1"]
    with diskimage.open_image(str(path), fmt="qcow2", readonly=False) as image:
        image.write(2 << 20, b"\x42" * 65536)
    info = qemu_img_json("info", path)
    # QEMU must never trust a bitmap that missed this write: it is gone
    assert "bitmaps" not in info["format-specific"]["data"]
    assert_clean(path)
    qemu_io(path, "read -P 0x42 2M 64k", "read -P 0x01 0 1M", fmt="qcow2")
    # QEMU can add bitmaps again afterwards
    qemu_img("bitmap", "--add", path, "bm2")
    assert_clean(path)


@pytest.mark.parametrize("with_backing", [False, True])
@pytest.mark.parametrize("later_size", ["1200M", "2M"])
def test_convert_snapshot_keeps_current_virtual_size(tmp_path, with_backing, later_size):
    """qemu-img convert -l keeps the image's current virtual size: a snapshot
    taken when the disk was smaller reads unallocated (zeroes, or the backing
    file) past its L1 table; one taken when it was larger is cut."""
    src = tmp_path / "grown.qcow2"
    args = ["create", "-q", "-f", "qcow2"]
    if with_backing:
        base = tmp_path / "base.raw"
        qemu_img("create", "-q", "-f", "raw", base, "1200M")
        qemu_io(base, "write -P 0x55 1150M 64k", "write -P 0x66 2M 64k", fmt="raw")
        args += ["-b", "base.raw", "-F", "raw"]
    qemu_img(*(args + [src, "4M"]))
    qemu_io(src, "write -P 0x11 0 1M", "write -P 0x12 3M 64k", fmt="qcow2")
    qemu_img("snapshot", "-c", "small", src)
    qemu_img("resize", "-q", src, "1200M")
    qemu_io(src, "write -P 0x33 1100M 64k", "write -P 0x34 0 64k", fmt="qcow2")
    qemu_img("snapshot", "-c", "large", src)
    if later_size != "1200M":
        qemu_img("resize", "-q", "--shrink", src, later_size)
    size = qemu_img_json("info", src)["virtual-size"]
    for name in ("small", "large"):
        theirs = tmp_path / ("theirs-%s.qcow2" % name)
        ours = tmp_path / ("ours-%s.qcow2" % name)
        qemu_img("convert", "-l", "snapshot.name=" + name, "-O", "qcow2", src, theirs)
        result = diskimage.convert(str(src), str(ours), "qcow2", snapshot=name)
        assert result["virtual_size"] == size
        assert qemu_img_json("info", ours)["virtual-size"] == size
        qemu_img("compare", "-s", "-f", "qcow2", "-F", "qcow2", theirs, ours)
        assert_clean(ours)
    # revert (qemu-img snapshot -a) restores the snapshot's own size: snapshot_compare reports it
    compared = diskimage.snapshot_compare(str(src), "small")
    assert compared["snapshot-size"] == 4 << 20
    assert compared["virtual-size"] == size
