# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""create() makes the images qemu-img create makes, atomically and without overwriting."""

import os

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, ImageNotFoundError, InvalidOptionError, PolicyError,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import driver_class


def info_without_names(path):
    result = qemu_img_json("info", path)
    for key in ("filename", "actual-size"):
        result.pop(key, None)
    return result


def assert_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0
    assert "corruptions" not in result and "leaks" not in result, result


def listing(directory):
    return sorted(os.listdir(str(directory)))


@pytest.mark.parametrize("size", ["3M", "1000", 1 << 20, "0", "1.5k", "2g"])
def test_raw_like_qemu_img(tmp_path, size):
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    diskimage.create(str(ours), "raw", size)
    qemu_img("create", "-f", "raw", theirs, str(size))
    assert info_without_names(ours) == info_without_names(theirs)
    assert os.path.getsize(str(ours)) == os.path.getsize(str(theirs))


@pytest.mark.parametrize("options,qemu_options", [
    (None, None),
    ({"cluster_size": "4k"}, "cluster_size=4k"),
    ({"cluster_size": 2 << 20, "lazy_refcounts": "on"}, "cluster_size=2M,lazy_refcounts=on"),
    ({"compat": 0.1}, "compat=0.10"),
    ({"refcount_bits": "1", "extended_l2": True}, "refcount_bits=1,extended_l2=on"),
    ({"preallocation": "metadata"}, "preallocation=metadata"),
])
def test_qcow2_like_qemu_img(tmp_path, options, qemu_options):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    diskimage.create(str(ours), "qcow2", "7M", options=options)
    args = ["create", "-f", "qcow2"] + (["-o", qemu_options] if qemu_options else [])
    qemu_img(*(args + [theirs, "7M"]))
    assert info_without_names(ours) == info_without_names(theirs)
    assert_clean(ours)
    # The new image is usable by QEMU.
    qemu_io(ours, "write -P 0x42 64k 64k", "read -P 0x42 64k 64k", fmt="qcow2")
    assert_clean(ours)


def test_overlay_takes_backing_size_and_records_names(tmp_path):
    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "3M")
    qemu_io(base, "write -P 9 0 1M", fmt="qcow2")
    diskimage.create(str(top), "qcow2", backing_file="base.qcow2", backing_fmt="qcow2")
    result = qemu_img_json("info", top)
    assert result["virtual-size"] == 3 << 20
    assert result["backing-filename"] == "base.qcow2"
    assert result["backing-filename-format"] == "qcow2"
    assert_clean(top)
    qemu_img("compare", base, top)


def test_backing_in_options_and_explicit_size(tmp_path):
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", base, "1M")
    top = tmp_path / "top.qcow2"
    diskimage.create(str(top), "qcow2", "4M", options={"backing_file": "base.raw", "backing_fmt": "raw"})
    result = qemu_img_json("info", top)
    assert (result["virtual-size"], result["backing-filename-format"]) == (4 << 20, "raw")


def test_backing_format_is_required(tmp_path):
    qemu_img("create", "-f", "qcow2", tmp_path / "base.qcow2", "1M")
    with pytest.raises(InvalidOptionError) as excinfo:
        diskimage.create(str(tmp_path / "top.qcow2"), "qcow2", backing_file="base.qcow2")
    assert "backing_fmt" in str(excinfo.value)
    assert listing(tmp_path) == ["base.qcow2"]


def test_backing_must_exist_and_match_its_format(tmp_path):
    with pytest.raises(ImageNotFoundError):
        diskimage.create(str(tmp_path / "top.qcow2"), "qcow2", backing_file="nothere.qcow2",
                         backing_fmt="qcow2")
    qemu_img("create", "-f", "raw", tmp_path / "base.raw", "1M")
    with pytest.raises(ImageError):
        diskimage.create(str(tmp_path / "top.qcow2"), "qcow2", backing_file="base.raw",
                         backing_fmt="qcow2")
    assert listing(tmp_path) == ["base.raw"]


def test_backing_elsewhere_needs_allow_dirs(tmp_path):
    shared = tmp_path / "shared"
    images = tmp_path / "images"
    shared.mkdir()
    images.mkdir()
    qemu_img("create", "-f", "qcow2", shared / "base.qcow2", "2M")
    top = images / "top.qcow2"
    with pytest.raises(PolicyError):
        diskimage.create(str(top), "qcow2", backing_file=str(shared / "base.qcow2"), backing_fmt="qcow2")
    assert listing(images) == []
    diskimage.create(str(top), "qcow2", backing_file=str(shared / "base.qcow2"), backing_fmt="qcow2",
                     allow_dirs=[str(shared)])
    assert qemu_img_json("info", top)["full-backing-filename"] == str(shared / "base.qcow2")


def test_existing_destination_is_never_overwritten(tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(b"precious")
    with pytest.raises(ImageError) as excinfo:
        diskimage.create(str(image), "qcow2", "1M")
    assert "exists" in str(excinfo.value)
    assert image.read_bytes() == b"precious"
    assert listing(tmp_path) == ["disk.raw"]


def test_invalid_requests_leave_nothing(tmp_path):
    target = str(tmp_path / "disk.qcow2")
    with pytest.raises(InvalidOptionError):
        diskimage.create(target, "qcow2", "1M", options={"cluster_size": "3k"})
    with pytest.raises(InvalidOptionError):
        diskimage.create(target, "qcow2", "1M", options={"no_such_option": 1})
    with pytest.raises(InvalidOptionError):
        diskimage.create(target, "qcow2", "12Q")
    with pytest.raises(InvalidOptionError):
        diskimage.create(target, "qcow2")
    with pytest.raises(InvalidOptionError):
        diskimage.create(target, None, "1M")
    with pytest.raises(ImageError):
        diskimage.create(target, "nosuchformat", "1M")
    with pytest.raises(ImageNotFoundError):
        diskimage.create(str(tmp_path / "missing-dir" / "disk.qcow2"), "qcow2", "1M")
    assert listing(tmp_path) == []


def test_built_under_temporary_name(tmp_path, monkeypatch):
    cls = driver_class("qcow2")
    seen = []
    original = cls.create.__func__

    def spy(klass, path, size, options=None, backing=None):
        seen.append((path, sorted(os.listdir(str(tmp_path)))))
        original(klass, path, size, options=options, backing=backing)
        raise ImageError("injected failure after the image was written", path)

    monkeypatch.setattr(cls, "create", classmethod(spy))
    with pytest.raises(ImageError):
        diskimage.create(str(tmp_path / "disk.qcow2"), "qcow2", "1M")
    (path, _before), = seen
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(tmp_path)
    assert name.startswith(".disk.qcow2.") and name.endswith(".tmp") and len(name) == len(".disk.qcow2.XXXXXX.tmp")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_empty_image(tmp_path, fmt):
    ours, theirs = tmp_path / ("ours." + fmt), tmp_path / ("theirs." + fmt)
    diskimage.create(str(ours), fmt, 0)
    qemu_img("create", "-f", fmt, theirs, "0")
    assert info_without_names(ours) == info_without_names(theirs)
    if fmt == "qcow2":
        assert_clean(ours)
    copy = tmp_path / "copy.qcow2"
    result = diskimage.convert(str(ours), str(copy), "qcow2", compress=True)
    assert result["virtual_size"] == 0 and result["bytes_read"] == 0
    qemu_img("compare", ours, copy)


def test_bad_option_error_names_the_destination_not_the_temporary_file(tmp_path):
    path = tmp_path / "disk.qcow2"
    with pytest.raises(InvalidOptionError) as raised:
        diskimage.create(str(path), "qcow2", "1M", options={"cluster_size": 3000})
    assert str(raised.value).startswith(str(path) + ":")
    assert ".tmp" not in str(raised.value)
    assert raised.value.path == str(path)
    assert listing(tmp_path) == []
