# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Multi-file VMDK subformats (monolithicFlat, twoGbMaxExtentSparse/Flat)
write extent files beside the descriptor, named after the final name: a
create or convert that fails after the extents exist removes them with the
temporary descriptor (no partial files), a retry succeeds; extent names that
already exist (another image's extents) are refused without touching them."""

import os

import pytest

from qemu_tools import qemu_img, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vmdk import VmdkDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import convert as convert_op
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import create as create_op

SUBFORMATS = ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"]
BIG = 3 << 30          # two extents for the split subformats (sparse files: nothing written there)


def listing(directory):
    return sorted(os.listdir(str(directory)))


@pytest.fixture(name="source")
def source_fixture(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, str(BIG))
    qemu_io(path, "write -P 0x11 0 1M", "write -P 0x22 2100M 64k", "write -P 0x33 3071M 1M", fmt="qcow2")
    return path


class Boom(ImageError):
    pass


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_failed_convert_leaves_no_extent_files_and_retry_succeeds(tmp_path, source, subformat, monkeypatch):
    dst = tmp_path / "disk.vmdk"
    original = convert_op._Converter.copy_data
    calls = []

    def failing_copy_data(self, start, end):
        calls.append(start)
        original(self, start, end)
        if len(calls) == 2:     # some data written, then the source "fails"
            raise Boom("simulated read error", str(source))

    monkeypatch.setattr(convert_op._Converter, "copy_data", failing_copy_data)
    with pytest.raises(Boom):
        diskimage.convert(str(source), str(dst), "vmdk", options={"subformat": subformat})
    assert len(calls) == 2
    assert listing(tmp_path) == []
    monkeypatch.setattr(convert_op._Converter, "copy_data", original)
    diskimage.convert(str(source), str(dst), "vmdk", options={"subformat": subformat})
    qemu_img("compare", "-f", "qcow2", "-F", "vmdk", source, dst)
    qemu_img("check", "-f", "vmdk", dst)
    names = listing(tmp_path)
    assert names == sorted(os.path.basename(name) for name in VmdkDriver.created_files(str(dst)))
    assert len(names) == (2 if subformat == "monolithicFlat" else 3)


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_failed_create_leaves_no_extent_files(tmp_path, subformat, monkeypatch):
    dst = tmp_path / "disk.vmdk"

    def failing_publish(temporary, destination):
        raise Boom("simulated late failure", destination)

    monkeypatch.setattr(create_op, "publish", failing_publish)
    with pytest.raises(Boom):
        diskimage.create(str(dst), "vmdk", BIG, options={"subformat": subformat})
    assert listing(tmp_path) == []
    monkeypatch.undo()
    diskimage.create(str(dst), "vmdk", BIG, options={"subformat": subformat})
    qemu_img("check", "-f", "vmdk", dst)
    assert len(listing(tmp_path)) == (2 if subformat == "monolithicFlat" else 3)


@pytest.mark.parametrize("subformat, existing", [
    ("monolithicFlat", "disk-flat.vmdk"),
    ("twoGbMaxExtentSparse", "disk-s002.vmdk"),
    ("twoGbMaxExtentFlat", "disk-f001.vmdk"),
    ("twoGbMaxExtentFlat", "disk-f002.vmdk"),
])
@pytest.mark.parametrize("operation", ["create", "convert"])
def test_existing_extent_names_are_refused_untouched(tmp_path, source, subformat, existing, operation):
    other = tmp_path / existing
    other.write_bytes(b"another image's extent\n" * 100)
    before = other.read_bytes()
    dst = tmp_path / "disk.vmdk"
    with pytest.raises(ImageError):
        if operation == "create":
            diskimage.create(str(dst), "vmdk", BIG, options={"subformat": subformat})
        else:
            diskimage.convert(str(source), str(dst), "vmdk", options={"subformat": subformat})
    assert listing(tmp_path) == [existing]
    assert other.read_bytes() == before
    other.unlink()
    diskimage.create(str(dst), "vmdk", BIG, options={"subformat": subformat})
    qemu_img("check", "-f", "vmdk", dst)


def test_created_files_of_single_file_images(tmp_path):
    for subformat in ("monolithicSparse", "streamOptimized"):
        dst = tmp_path / (subformat + ".vmdk")
        diskimage.create(str(dst), "vmdk", "4M", options={"subformat": subformat})
        assert VmdkDriver.created_files(str(dst)) == [str(dst)]
    assert listing(tmp_path) == ["monolithicSparse.vmdk", "streamOptimized.vmdk"]
