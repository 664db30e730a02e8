# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""create/convert on_device: images written in place on a block device (a
loop device over a file under tmp_path), checked with qemu-img."""

import os
import shutil
import subprocess
import time

import pytest

import components

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage

MIB = 1024 * 1024
POISON = b"\xaa"

needs_loop = components.needs(os.geteuid() == 0 and shutil.which("losetup") is not None, "loop device",
                              "needs root and losetup")


@pytest.fixture
def loop_device(request, tmp_path):
    """A loop device over an 8 MiB file filled with 0xAA (old data that must never show)."""
    backing = tmp_path / "device.img"
    backing.write_bytes(POISON * 8 * MIB)
    device = qemu_tools.run("losetup", "--find", "--show", str(backing)).strip()
    request.addfinalizer(lambda: subprocess.run(["losetup", "-d", device], check=False))
    return device


def make_source(tmp_path):
    """A 6 MiB qcow2 with data, a zero cluster written over nothing, and a hole."""
    path = tmp_path / "src.qcow2"
    qemu_tools.qemu_img("create", "-q", "-f", "qcow2", str(path), "6M")
    qemu_tools.qemu_io(path, "write -P 0x11 0 1M", "write -z 2M 1M", "write -P 0x22 5M 64k",
                       "write -P 0 3M 64k", fmt="qcow2")
    return str(path)


def device_bytes(device, offset, length):
    with open(device, "rb") as stream:
        stream.seek(offset)
        return stream.read(length)


@needs_loop
def test_qcow2_created_on_a_device_passes_check(loop_device):
    diskimage.create(loop_device, "qcow2", size="32M", on_device=True)
    qemu_tools.qemu_img("check", "-f", "qcow2", loop_device)
    assert qemu_tools.qemu_img_json("info", "-f", "qcow2", loop_device)["virtual-size"] == 32 * MIB


@needs_loop
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_onto_a_device_reads_back_as_qemu_img_raw(loop_device, tmp_path, fmt):
    src = make_source(tmp_path)
    result = diskimage.convert(src, loop_device, fmt, on_device=True, zero_tail=True, digest="sha256")
    assert result["digest"] == qemu_tools.raw_digest(src, tmp_path)
    if fmt == "qcow2":
        qemu_tools.qemu_img("check", "-f", "qcow2", loop_device)
    qemu_tools.qemu_img("compare", "-f", fmt, "-F", "qcow2", loop_device, src)


@needs_loop
def test_old_device_data_never_shows_through_zero_ranges_or_the_tail(loop_device, tmp_path):
    src = make_source(tmp_path)
    result = diskimage.convert(src, loop_device, "raw", on_device=True, zero_tail=True)
    # Holes, the zero cluster, zero data and the 6-8 MiB tail all read zero; loop devices offer BLKZEROOUT.
    assert POISON not in device_bytes(loop_device, 0, 8 * MIB)
    assert result["zeroout"] is True and result["bytes_zeroed"] >= 6 * MIB


@needs_loop
def test_known_zero_device_is_not_zeroed(loop_device, tmp_path):
    src = make_source(tmp_path)
    result = diskimage.convert(src, loop_device, "raw", on_device=True, zero_tail=True, target_is_zero=True)
    assert result["bytes_zeroed"] == 0
    # The caller said it reads zero; it did not, so the old data is still there (nothing was zeroed).
    assert device_bytes(loop_device, 7 * MIB, 16) == POISON * 16


@needs_loop
def test_without_zero_tail_the_tail_is_left_alone(loop_device, tmp_path):
    src = make_source(tmp_path)
    diskimage.convert(src, loop_device, "raw", on_device=True)
    assert device_bytes(loop_device, 7 * MIB, 16) == POISON * 16
    assert device_bytes(loop_device, 4 * MIB, 16) == bytes(16)


def test_an_existing_regular_file_is_still_refused(tmp_path):
    existing = tmp_path / "existing.img"
    existing.write_bytes(b"keep me")
    with pytest.raises(diskimage.InvalidOptionError, match="not a block device"):
        diskimage.create(str(existing), "qcow2", size="1M", on_device=True)
    src = tmp_path / "src.raw"
    src.write_bytes(bytes(MIB))
    with pytest.raises(diskimage.InvalidOptionError, match="not a block device"):
        diskimage.convert(str(src), str(existing), "raw", on_device=True)
    with pytest.raises(diskimage.InvalidOptionError, match="already exists"):
        diskimage.create(str(existing), "qcow2", size="1M")
    assert existing.read_bytes() == b"keep me"


def test_zero_tail_needs_on_device(tmp_path):
    src = tmp_path / "src.raw"
    src.write_bytes(bytes(MIB))
    with pytest.raises(diskimage.InvalidOptionError, match="zero_tail needs on_device"):
        diskimage.convert(str(src), str(tmp_path / "out.raw"), "raw", zero_tail=True)


@needs_loop
def test_a_device_held_by_qemu_io_is_refused(loop_device, tmp_path):
    src = make_source(tmp_path)
    holder = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "sleep 600000", loop_device],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Wait for qemu-io's lock on byte 100 of the device node (opening meanwhile would make it fail).
        inode = ":%d " % os.stat(loop_device).st_ino
        deadline = time.time() + 20
        while not any(inode in line and "OFDLCK" in line for line in open("/proc/locks").read().splitlines()):
            if holder.poll() is not None or time.time() > deadline:
                raise AssertionError("qemu-io never locked %s: %r" % (loop_device, holder.communicate()))
            time.sleep(0.05)
        with pytest.raises(diskimage.ImageInUseError, match="in use"):
            diskimage.create(loop_device, "qcow2", size="1M", on_device=True)
        with pytest.raises(diskimage.ImageInUseError, match="in use"):
            diskimage.convert(src, loop_device, "raw", on_device=True)
        with pytest.raises(diskimage.ImageInUseError, match="in use"):
            diskimage.convert(src, loop_device, "qcow2", on_device=True)
    finally:
        holder.kill()
        holder.communicate()
