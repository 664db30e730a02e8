# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A file with a format's magic and a version of it the library cannot read is refused by
name, as qemu-img refuses it ("Unsupported qcow2 version 4"), never taken for a raw image."""

import subprocess

import pytest

from qemu_tools import qemu_img

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import probe as probe_module
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import UnsupportedFeature


def qemu_refusal(path):
    proc = subprocess.run(["qemu-img", "info", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def patched(tmp_path, fmt, offset, value, name):
    path = tmp_path / name
    qemu_img("create", "-q", "-f", fmt, path, "1M")
    with open(str(path), "r+b") as image:
        image.seek(offset)
        image.write(value)
    return path


@pytest.mark.parametrize("version", [4, 5, 0xffffffff])
def test_qcow2_of_a_later_version_is_refused_by_name(tmp_path, version):
    path = patched(tmp_path, "qcow2", 4, version.to_bytes(4, "big"), "future.qcow2")
    assert "Unsupported qcow2 version %d" % version in qemu_refusal(path)
    expected = "unsupported qcow2 version %d" % version
    with pytest.raises(UnsupportedFeature, match=expected):
        probe_module.probe(str(path))
    with pytest.raises(UnsupportedFeature, match=expected):
        diskimage.info(str(path))
    with pytest.raises(UnsupportedFeature, match=expected):
        diskimage.info(str(path), fmt="qcow2")


def test_qcow2_magic_with_version_0_is_raw_with_a_warning_as_qemu_reads_it(tmp_path):
    path = patched(tmp_path, "qcow2", 4, bytes(4), "zero.qcow2")
    result = probe_module.probe(str(path))
    assert result.format == "raw" and "signature of a qcow2 image" in result.warning


@pytest.mark.parametrize("fmt,offset,value,expected", [
    ("vmdk", 4, (9).to_bytes(4, "little"), "unsupported VMDK version 9"),
    ("vdi", 68, (0x20000).to_bytes(4, "little"), "unsupported VDI image (version 2.0"),
])
def test_other_formats_of_an_unknown_version_are_refused_by_name(tmp_path, fmt, offset, value, expected):
    path = patched(tmp_path, fmt, offset, value, "future." + fmt)
    qemu_refusal(path)
    assert probe_module.probe_format(str(path)) == fmt
    with pytest.raises(UnsupportedFeature) as refusal:
        diskimage.info(str(path))
    assert expected in str(refusal.value)
