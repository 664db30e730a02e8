# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A grow that runs out of space leaves the image as it was, as qemu-img resize does:
same virtual size, same file length (raw), no leaked clusters (qcow2), and an error
saying "no space left" in words."""

import os
import subprocess

import pytest


from qemu_tools import file_digest, qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import NoSpaceError


def small_image(small_fs, fmt):
    path = small_fs / ("disk." + fmt)
    qemu_img("create", "-f", fmt, path, "2M")
    qemu_io(path, "write -P 0x5a 0 1M", "write -P 0xa5 1536k 256k", fmt=fmt)
    return path


@pytest.mark.parametrize("preallocation", ["falloc", "full"])
def test_raw_grow_out_of_space_restores_the_file(small_fs, preallocation):
    path = small_image(small_fs, "raw")
    digest = file_digest(path)
    with pytest.raises(NoSpaceError, match="no space left on") as failure:
        diskimage.resize(str(path), "64M", fmt="raw", preallocation=preallocation)
    message = str(failure.value)
    assert "Errno" not in message and str(path) in message
    assert "left as it was" in message
    assert os.path.getsize(str(path)) == 2 << 20
    assert file_digest(path) == digest
    # the space the failed grow took is given back: the same grow of a smaller size works
    diskimage.resize(str(path), "4M", fmt="raw", preallocation=preallocation)
    assert os.path.getsize(str(path)) == 4 << 20


@pytest.mark.parametrize("preallocation", ["falloc", "full"])
def test_qcow2_grow_out_of_space_leaves_no_leak(small_fs, preallocation):
    path = small_image(small_fs, "qcow2")
    theirs_check = qemu_img_json("check", path)
    length = os.path.getsize(str(path))
    digest = file_digest(path)
    with pytest.raises(NoSpaceError, match="no space left on") as failure:
        diskimage.resize(str(path), "64M", fmt="qcow2", preallocation=preallocation)
    assert "Errno" not in str(failure.value)
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0, result
    assert "leaks" not in result and "corruptions" not in result, result
    assert result["image-end-offset"] == theirs_check["image-end-offset"]
    assert qemu_img_json("info", path)["virtual-size"] == 2 << 20
    assert os.path.getsize(str(path)) == length
    assert file_digest(path) == digest
    qemu_io(path, "read -P 0x5a 0 1M", "read -P 0 1M 512k", "read -P 0xa5 1536k 256k", fmt="qcow2")
    # qemu-img fails the same way on the same image
    proc = subprocess.run(["qemu-img", "resize", "-f", "qcow2", "--preallocation=" + preallocation, str(path), "64M"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert proc.returncode != 0
    diskimage.resize(str(path), "3M", fmt="qcow2", preallocation=preallocation)
    assert qemu_img_json("check", path).get("check-errors", 0) == 0


def test_undo_puts_back_length_and_overwritten_bytes_and_refuses_beyond_its_limit(tmp_path, monkeypatch):
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import _io
    path = tmp_path / "file"
    path.write_bytes(b"a" * 8192)
    with _io.ImageFile(str(path), writable=True) as image_file:
        image_file.start_undo()
        image_file.pwrite(100, b"b" * 200)
        image_file.pwrite(150, b"c" * 10000)     # overwrites, then extends the file
        image_file.punch_hole(0, 4096)
        image_file.truncate(50000)
        image_file.undo()
    assert path.read_bytes() == b"a" * 8192
    monkeypatch.setattr(_io, "UNDO_LIMIT", 1000)
    with _io.ImageFile(str(path), writable=True) as image_file:
        image_file.start_undo()
        image_file.pwrite(0, b"d" * 600)
        image_file.pwrite(1000, b"e" * 600)
        with pytest.raises(diskimage.ImageError, match="cannot undo"):
            image_file.undo()
