# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""check(repair=...) on a qcow2 image whose corrupt bit is set: qemu-img check
-r opens it writable for the repair (BDRV_O_CHECK) and clears the bit when no
corruption remains; so must diskimage.check.  Every other writable open of
such an image is still refused."""

import json
import shutil
import struct
import subprocess

import pytest

from qcow2_editing import Qcow2Editor
from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import CorruptImageError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_layout


def set_corrupt_bit(path):
    with open(str(path), "r+b") as handle:
        handle.seek(72)
        features = struct.unpack(">Q", handle.read(8))[0]
        handle.seek(72)
        handle.write(struct.pack(">Q", features | 2))


def qemu_check(path, *options):
    proc = subprocess.run(["qemu-img", "check", "--output=json"] + list(options) + [str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.stdout.strip(), "qemu-img check failed (%d): %s" % (proc.returncode, proc.stderr)
    result = json.loads(proc.stdout)
    del result["filename"], result["format"]
    return result


def our_check(path, repair=None):
    result = diskimage.check(str(path), repair=repair)
    for key in ("filename", "format", "messages"):
        result.pop(key, None)
    return result


def corrupt_flag(path):
    return qemu_img_json("info", path)["format-specific"]["data"]["corrupt"]


def make_image(tmp_path, damage):
    path = tmp_path / "image.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "4M")
    qemu_io(path, "write -P 0x11 0 1M", "write -P 0x22 2M 64k", fmt="qcow2")
    if damage:
        editor = Qcow2Editor(str(path))
        editor.set_refcount(editor.append_cluster(), 1)                                  # a leak
        editor.set_l1_entry(0, editor.l1_entry(0) ^ qcow2_layout.OFLAG_COPIED)          # a corruption
    set_corrupt_bit(path)
    return path


@pytest.mark.parametrize("damage", [False, True], ids=["flag-only", "leak-and-corruption"])
@pytest.mark.parametrize("mode", ["all", "leaks"])
def test_repair_of_corrupt_flagged_image_as_qemu_img(tmp_path, damage, mode):
    path = make_image(tmp_path, damage)
    twin = tmp_path / "twin.qcow2"
    before = tmp_path / "before.qcow2"
    shutil.copyfile(str(path), str(twin))
    shutil.copyfile(str(path), str(before))
    with pytest.raises(CorruptImageError, match="corrupt bit"):
        diskimage.resize(str(path), "8M")               # ordinary writable opens still refused
    expected = qemu_check(twin, "-r", mode)
    assert our_check(path, repair=mode) == expected
    # the bit is cleared exactly when qemu-img clears it; both checks agree afterwards
    assert corrupt_flag(path) == corrupt_flag(twin)
    assert our_check(path) == qemu_check(twin) == qemu_check(path)
    if not damage or mode == "all":
        assert not corrupt_flag(path)
        after = qemu_check(path)
        assert after["check-errors"] == 0 and "corruptions" not in after and "leaks" not in after, after
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", path, twin)
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", path, before)


def test_corrupt_flagged_backing_file_is_not_opened_writable_by_repair(tmp_path):
    base = make_image(tmp_path, False)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "image.qcow2", "-F", "qcow2", top)
    digest_before = base.read_bytes()
    our_check(top, repair="all")
    assert base.read_bytes() == digest_before
    assert corrupt_flag(base)
