# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Public snapshot API (snapshot_list/create/apply/delete) against qemu-img snapshot -l/-c/-a/-d."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, InvalidOptionError, UnsupportedOperation,
)

MIB = 1 << 20


def make_qcow2(tmp_path, name="disk.qcow2", size="4M", *commands):
    path = tmp_path / name
    qemu_tools.qemu_img("create", "-q", "-f", "qcow2", path, size)
    if commands:
        qemu_tools.qemu_io(path, *commands, fmt="qcow2")
    return str(path)


def qemu_snapshots(path):
    return qemu_tools.qemu_img_json("info", "-f", "qcow2", path).get("snapshots", [])


def assert_clean(path):
    result = qemu_tools.qemu_img_json("check", "-f", "qcow2", path)
    assert result.get("check-errors", 0) == 0 and result.get("leaks", 0) == 0 \
        and result.get("corruptions", 0) == 0, result


def test_list_equals_qemu_img_list(tmp_path):
    path = make_qcow2(tmp_path, "disk.qcow2", "4M", "write -P 0x11 0 64k")
    qemu_tools.qemu_img("snapshot", "-c", "first", path)
    qemu_tools.qemu_io(path, "write -P 0x22 64k 64k", fmt="qcow2")
    qemu_tools.qemu_img("snapshot", "-c", "second", path)
    listed = diskimage.snapshot_list(path)
    assert listed == qemu_snapshots(path)
    assert [(s["id"], s["name"]) for s in listed] == [("1", "first"), ("2", "second")]
    for snapshot in listed:
        assert snapshot["vm-state-size"] == 0 and snapshot["date-sec"] > 0 and "date-nsec" in snapshot
    # qemu-img snapshot -l shows the same IDs and names
    table = qemu_tools.qemu_img("snapshot", "-l", path)
    assert "first" in table and "second" in table


def test_list_of_an_image_without_snapshots_is_empty(tmp_path):
    assert diskimage.snapshot_list(make_qcow2(tmp_path)) == []
    raw = tmp_path / "disk.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", raw, "1M")
    assert diskimage.snapshot_list(str(raw), fmt="raw") == []


def test_created_snapshots_are_listed_by_qemu_img(tmp_path):
    path = make_qcow2(tmp_path, "disk.qcow2", "4M", "write -P 0x33 0 128k")
    diskimage.snapshot_create(path, "base")
    qemu_tools.qemu_io(path, "write -P 0x44 0 64k", fmt="qcow2")
    diskimage.snapshot_create(path, "later")
    listed = qemu_snapshots(path)
    assert [(s["id"], s["name"]) for s in listed] == [("1", "base"), ("2", "later")]
    assert listed == diskimage.snapshot_list(path)
    assert all(s["date-sec"] > 0 for s in listed)
    assert_clean(path)


def test_apply_restores_the_snapshot_content(tmp_path):
    path = make_qcow2(tmp_path, "disk.qcow2", "4M", "write -P 0x55 0 256k")
    reference = tmp_path / "reference.raw"
    qemu_tools.qemu_img("convert", "-f", "qcow2", "-O", "raw", path, reference)
    diskimage.snapshot_create(path, "clean")
    qemu_tools.qemu_io(path, "write -P 0x66 64k 512k", "write -z 0 4k", fmt="qcow2")
    with pytest.raises(AssertionError):
        qemu_tools.qemu_img("compare", "-f", "raw", "-F", "qcow2", reference, path)
    diskimage.snapshot_apply(path, "clean")
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "qcow2", reference, path)
    assert_clean(path)
    # qemu-img applies our snapshots too, and we apply by ID as qemu-img does
    qemu_tools.qemu_io(path, "write -P 0x77 0 64k", fmt="qcow2")
    diskimage.snapshot_apply(path, "1")
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", "qcow2", reference, path)


def test_apply_of_a_qemu_img_snapshot(tmp_path):
    path = make_qcow2(tmp_path, "disk.qcow2", "4M", "write -P 0x12 1M 64k")
    qemu_tools.qemu_img("snapshot", "-c", "theirs", path)
    expected = qemu_tools.raw_digest(path, tmp_path, fmt="qcow2")
    qemu_tools.qemu_io(path, "write -P 0x34 1M 64k", fmt="qcow2")
    diskimage.snapshot_apply(path, "theirs")
    assert qemu_tools.raw_digest(path, tmp_path, fmt="qcow2") == expected
    assert_clean(path)


def test_delete_frees_the_snapshot_clusters(tmp_path):
    path = make_qcow2(tmp_path, "disk.qcow2", "4M", "write -P 0x21 0 512k")
    before = qemu_tools.qemu_img_json("check", "-f", "qcow2", path)["image-end-offset"]
    diskimage.snapshot_create(path, "tmp")
    qemu_tools.qemu_io(path, "write -P 0x43 0 512k", fmt="qcow2")  # copy-on-write: new clusters
    diskimage.snapshot_delete(path, "tmp")
    assert qemu_snapshots(path) == []
    assert_clean(path)
    check = qemu_tools.qemu_img_json("check", "-f", "qcow2", path)
    # the 512k the snapshot kept are free again: allocated clusters are those of the live disk only
    fresh = make_qcow2(tmp_path, "fresh.qcow2", "4M", "write -P 0x43 0 512k")
    assert check["allocated-clusters"] == qemu_tools.qemu_img_json("check", "-f", "qcow2", fresh)["allocated-clusters"]
    assert before > 0


def test_delete_of_a_qemu_img_snapshot_matches_qemu_img(tmp_path):
    ours = make_qcow2(tmp_path, "ours.qcow2", "4M", "write -P 0x01 0 128k")
    theirs = make_qcow2(tmp_path, "theirs.qcow2", "4M", "write -P 0x01 0 128k")
    for path in (ours, theirs):
        qemu_tools.qemu_img("snapshot", "-c", "a", path)
        qemu_tools.qemu_io(path, "write -P 0x02 0 64k", fmt="qcow2")
        qemu_tools.qemu_img("snapshot", "-c", "b", path)
    diskimage.snapshot_delete(ours, "a")
    qemu_tools.qemu_img("snapshot", "-d", "a", theirs)
    strip = [({k: v for k, v in s.items() if not k.startswith("date")}) for s in qemu_snapshots(ours)]
    assert strip == [({k: v for k, v in s.items() if not k.startswith("date")}) for s in qemu_snapshots(theirs)]
    assert_clean(ours)
    qemu_tools.qemu_img("compare", ours, theirs)
    assert (qemu_tools.qemu_img_json("check", "-f", "qcow2", ours)["allocated-clusters"]
            == qemu_tools.qemu_img_json("check", "-f", "qcow2", theirs)["allocated-clusters"])


def test_unknown_snapshot_is_a_clear_error(tmp_path):
    path = make_qcow2(tmp_path)
    diskimage.snapshot_create(path, "exists")
    for function in (diskimage.snapshot_apply, diskimage.snapshot_delete):
        with pytest.raises(ImageError, match=r"no snapshot named 'missing'.*'exists'") as raised:
            function(path, "missing")
        assert path in str(raised.value)
    assert [s["name"] for s in qemu_snapshots(path)] == ["exists"]


def test_duplicate_name_is_refused(tmp_path):
    path = make_qcow2(tmp_path)
    qemu_tools.qemu_img("snapshot", "-c", "dup", path)
    with pytest.raises(ImageError, match=r"snapshot named 'dup' already exists \(id 1\)"):
        diskimage.snapshot_create(path, "dup")
    assert [s["name"] for s in qemu_snapshots(path)] == ["dup"]
    assert_clean(path)


@pytest.mark.parametrize("name", ["", None, "a\0b"])
def test_invalid_names_are_refused(tmp_path, name):
    path = make_qcow2(tmp_path)
    with pytest.raises(InvalidOptionError):
        diskimage.snapshot_create(path, name)


def test_raw_images_have_no_internal_snapshots(tmp_path):
    raw = tmp_path / "disk.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", raw, "1M")
    for function in (diskimage.snapshot_create, diskimage.snapshot_apply, diskimage.snapshot_delete):
        with pytest.raises(UnsupportedOperation, match="raw images have no internal snapshots"):
            function(str(raw), "x", fmt="raw")


def test_snapshot_of_an_image_in_use_is_refused(tmp_path):
    path = make_qcow2(tmp_path)
    with diskimage.open_image(path, readonly=False):
        with pytest.raises(diskimage.ImageInUseError):
            diskimage.snapshot_create(path, "busy")
    assert qemu_snapshots(path) == []


def test_compare_with_a_snapshot(tmp_path):
    path = make_qcow2(tmp_path, "disk.qcow2", "4M", "write -P 0x11 0 256k", "write -c -P 0x12 1M 64k")
    diskimage.snapshot_create(path, "s")
    assert diskimage.snapshot_compare(path, "s") == {"identical": True, "identical-prefix": True, "zero-beyond": True,
                                                     "snapshot-size": 4 * MIB, "virtual-size": 4 * MIB}
    # the same bytes written again: other clusters, same content
    qemu_tools.qemu_io(path, "write -P 0x11 0 64k", fmt="qcow2")
    assert diskimage.snapshot_compare(path, "s")["identical"]
    qemu_tools.qemu_io(path, "write -P 0x13 128k 512", fmt="qcow2")
    assert not diskimage.snapshot_compare(path, "s")["identical"]
    diskimage.snapshot_apply(path, "s")
    assert diskimage.snapshot_compare(path, "s")["identical"]
    qemu_tools.qemu_io(path, "write -z 1M 64k", fmt="qcow2")
    assert not diskimage.snapshot_compare(path, "1")["identical"]
    diskimage.snapshot_apply(path, "s")
    qemu_tools.qemu_img("resize", path, "6M")
    result = diskimage.snapshot_compare(path, "s")
    assert result == {"identical": False, "identical-prefix": True, "zero-beyond": True,
                      "snapshot-size": 4 * MIB, "virtual-size": 6 * MIB}
    qemu_tools.qemu_io(path, "write -P 0x14 5M 4k", fmt="qcow2")
    assert not diskimage.snapshot_compare(path, "s")["zero-beyond"]
    qemu_tools.qemu_img("resize", "--shrink", path, "2M")
    result = diskimage.snapshot_compare(path, "s")
    assert (result["identical"], result["identical-prefix"], result["zero-beyond"]) == (False, True, True)
    with pytest.raises(ImageError, match="no snapshot named 'other'"):
        diskimage.snapshot_compare(path, "other")
    assert_clean(path)
