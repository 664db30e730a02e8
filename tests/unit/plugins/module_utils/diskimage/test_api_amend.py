# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""amend() against qemu-img amend on copies: the same qemu-img info, the same
guest content (snapshots included), qemu-img check clean; options qemu-img
cannot change are refused, naming the option."""

import shutil

import pytest

from qemu_tools import file_digest, qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    InvalidOptionError, UnsupportedFeature,
)

COMPARED_INFO_KEYS = ("format", "virtual-size", "cluster-size", "backing-filename", "backing-filename-format",
                      "format-specific")


def assert_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0, result
    assert "corruptions" not in result and "leaks" not in result, result


def info_view(path):
    info = qemu_img_json("info", path)
    view = dict((key, info.get(key)) for key in COMPARED_INFO_KEYS)
    view["snapshots"] = [(s["id"], s["name"]) for s in info.get("snapshots", [])]
    return view


def make_image(tmp_path, create_options, backing=False, snapshots=True):
    """A qcow2 image with data, zero clusters (plain and preallocated), a
    compressed cluster and optionally a snapshot and a backing file."""
    args = ["create", "-q", "-f", "qcow2"]
    if backing:
        base = tmp_path / "base.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", base, "4M")
        qemu_io(base, "write -P 0x01 0 4M", fmt="qcow2")
        args += ["-b", "base.qcow2", "-F", "qcow2"]
    path = tmp_path / "disk.qcow2"
    if create_options:
        args += ["-o", create_options]
    qemu_img(*(args + [path, "4M"]))
    qemu_io(path, "write -P 0x11 0 256k", "write -P 0x12 1M 64k", fmt="qcow2")
    if snapshots:
        qemu_img("snapshot", "-c", "s1", path)
    # zero clusters: over allocated data (kept allocated) and over nothing
    qemu_io(path, "write -z 64k 64k", "write -z 2M 128k", "write -P 0x13 3M 4k", fmt="qcow2")
    return path


def amended_by_qemu(path, tmp_path, options):
    theirs = tmp_path / "theirs.qcow2"
    shutil.copyfile(str(path), str(theirs))
    qemu_img("amend", "-f", "qcow2", "-o", options, theirs)
    return theirs


def snapshot_views(path, tmp_path, tag):
    """Digests of the current content and of every snapshot's (qemu-img convert -l)."""
    out = tmp_path / ("view-%s.raw" % tag)
    qemu_img("convert", "-O", "raw", path, out)
    digests = [file_digest(out)]
    for snap in qemu_img_json("info", path).get("snapshots", []):
        qemu_img("convert", "-l", "snapshot.name=" + snap["name"], "-O", "raw", path, out)
        digests.append(file_digest(out))
    out.unlink()
    return digests


CASES = [
    # (create options, amend options as dict, the same for qemu-img amend -o, backing file)
    ("", {"compat": "0.10"}, "compat=0.10", False),
    ("", {"compat": "0.10"}, "compat=0.10", True),
    ("lazy_refcounts=on", {"compat": "0.10", "lazy_refcounts": False}, "compat=0.10,lazy_refcounts=off", True),
    ("compat=0.10", {"compat": "1.1"}, "compat=1.1", False),
    ("compat=0.10", {"compat": "v3", "lazy_refcounts": "on"}, "compat=v3,lazy_refcounts=on", True),
    ("", {"lazy_refcounts": True}, "lazy_refcounts=on", False),
    ("lazy_refcounts=on", {"lazy_refcounts": "off"}, "lazy_refcounts=off", False),
    ("", {"refcount_bits": 8}, "refcount_bits=8", True),
    ("refcount_bits=8,cluster_size=4096", {"refcount_bits": 16, "compat": "0.10"},
     "refcount_bits=16,compat=0.10", False),
]


def case_id(case):
    return "%s_to_%s%s" % (case[0] or "default", case[2], "_backing" if case[3] else "")


@pytest.mark.parametrize("create_options, options, qemu_options, backing", CASES, ids=[case_id(c) for c in CASES])
def test_amend_matches_qemu_img_amend(tmp_path, create_options, options, qemu_options, backing):
    path = make_image(tmp_path, create_options, backing=backing)
    before = snapshot_views(path, tmp_path, "before")
    theirs = amended_by_qemu(path, tmp_path, qemu_options)
    diskimage.amend(str(path), options)
    assert info_view(path) == info_view(theirs)
    assert snapshot_views(path, tmp_path, "after") == before
    assert_clean(path)
    # the amended image stays usable by QEMU
    qemu_io(path, "write -P 0x77 2M 8k", fmt="qcow2")
    assert_clean(path)


# qemu-img amend needs up to half a minute for narrow refcounts: the expected
# info is the original's with the new width, the content is checked as above.
@pytest.mark.parametrize("create_options, bits", [("", 2), ("", 64), ("refcount_bits=1", 32), ("", 1)])
def test_amend_refcount_width(tmp_path, create_options, bits):
    path = make_image(tmp_path, create_options, snapshots=False)
    before = snapshot_views(path, tmp_path, "before")
    expected = info_view(path)
    expected["format-specific"]["data"]["refcount-bits"] = bits
    diskimage.amend(str(path), {"refcount_bits": str(bits)})
    assert info_view(path) == expected
    assert snapshot_views(path, tmp_path, "after") == before
    assert_clean(path)
    qemu_io(path, "write -P 0x77 2M 8k", fmt="qcow2")
    assert_clean(path)


@pytest.mark.parametrize("create_options", ["", "compat=0.10"])
def test_amend_backing_file_as_qemu_img_rebase_unsafe(tmp_path, create_options):
    """qemu-img 7.2 amend refuses backing changes ("use rebase"); ours does what
    rebase -u does, header only."""
    path = make_image(tmp_path, create_options, backing=True)
    shutil.copyfile(str(tmp_path / "base.qcow2"), str(tmp_path / "other.qcow2"))
    theirs = tmp_path / "theirs.qcow2"
    shutil.copyfile(str(path), str(theirs))
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "other.qcow2", "-F", "qcow2", theirs)
    diskimage.amend(str(path), {"backing_file": "other.qcow2", "backing_fmt": "qcow2"})
    assert info_view(path) == info_view(theirs)
    qemu_img("compare", path, theirs)
    assert_clean(path)
    # the same values again: qemu-img amend accepts them as a no-op, so do we
    qemu_img("amend", "-f", "qcow2", "-o", "backing_file=other.qcow2,backing_fmt=qcow2", theirs)
    diskimage.amend(str(path), {"backing_file": "other.qcow2", "backing_fmt": "qcow2"})
    assert info_view(path) == info_view(theirs)
    assert_clean(path)


def test_downgrade_with_bitmaps_drops_them_without_leaks(tmp_path):
    path = make_image(tmp_path, "", snapshots=False)
    qemu_img("bitmap", "--add", path, "bm0")
    before = snapshot_views(path, tmp_path, "before")
    diskimage.amend(str(path), {"compat": "0.10"})
    info = qemu_img_json("info", path)
    assert info["format-specific"]["data"]["compat"] == "0.10"
    assert "bitmaps" not in info["format-specific"]["data"]
    assert snapshot_views(path, tmp_path, "after") == before
    assert_clean(path)


@pytest.mark.parametrize("options, message", [
    ({"cluster_size": 4096}, "cluster_size"),
    ({"preallocation": "full"}, "preallocation"),
    ({"extended_l2": True}, "extended_l2"),
    ({"no_such_option": 1}, "no_such_option"),
    ({"compat": "0.10", "lazy_refcounts": True}, "lazy refcounts"),
    ({"compat": "0.10", "refcount_bits": 8}, "refcount"),
    ({"refcount_bits": 3}, "refcount_bits"),
    ({"compat": "2.0"}, "compat"),
    ({"backing_fmt": "qcow2"}, "backing_fmt"),
    ({}, "at least one option"),
])
def test_amend_refuses_what_qemu_img_refuses(tmp_path, options, message):
    path = make_image(tmp_path, "", snapshots=False)
    digest = file_digest(path)
    with pytest.raises(InvalidOptionError, match=message):
        diskimage.amend(str(path), options)
    assert file_digest(path) == digest


def test_refcount_width_too_small_for_shared_clusters_is_refused(tmp_path):
    path = make_image(tmp_path, "")
    theirs = tmp_path / "theirs.qcow2"
    shutil.copyfile(str(path), str(theirs))
    proc = qemu_img_json("info", theirs)
    assert proc["snapshots"]
    with pytest.raises(InvalidOptionError, match="refcount of 2"):
        diskimage.amend(str(path), {"refcount_bits": 1})
    assert_clean(path)
    assert qemu_img_json("info", path)["format-specific"]["data"]["refcount-bits"] == 16


def test_downgrade_refuses_extended_l2(tmp_path):
    path = make_image(tmp_path, "extended_l2=on", snapshots=False)
    digest = file_digest(path)
    with pytest.raises(UnsupportedFeature, match="incompatible features"):
        diskimage.amend(str(path), {"compat": "0.10"})
    assert file_digest(path) == digest
