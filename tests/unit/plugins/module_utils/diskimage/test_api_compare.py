# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""compare()/compare_detail() agree with qemu-img compare [-s], verdict and offset."""

import re
import subprocess

import pytest

from qemu_tools import qemu_img, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageNotFoundError

MIB = 1 << 20
KIB = 1 << 10


def qemu_compare(a, b, strict=False):
    """(identical, mismatch offset or None) as qemu-img compare reports them."""
    args = ["qemu-img", "compare"] + (["-s"] if strict else []) + [str(a), str(b)]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    match = re.search(r"(?:mismatch at offset|Offset) (\d+)", proc.stdout)
    return proc.returncode == 0, int(match.group(1)) if match else None


def assert_agrees(a, b, strict=False, check_offset=True):
    identical, offset = qemu_compare(a, b, strict)
    assert diskimage.compare(str(a), str(b), strict=strict) is identical
    detail = diskimage.compare_detail(str(a), str(b), strict=strict)
    assert (detail is None) is identical
    if check_offset and offset is not None:
        assert detail == offset
    return detail


def raw_image(tmp_path, name, size, *writes):
    path = tmp_path / name
    qemu_img("create", "-f", "raw", path, str(size))
    if writes:
        qemu_io(path, *writes, fmt="raw")
    return path


def test_identical_and_converted_copies(tmp_path):
    a = raw_image(tmp_path, "a.raw", "2M", "write -P 1 0 64k", "write -P 2 1M 100k")
    copy = tmp_path / "copy.qcow2"
    qemu_img("convert", "-O", "qcow2", a, copy)
    assert_agrees(a, a)
    assert_agrees(a, copy)
    assert_agrees(copy, a)
    assert_agrees(copy, copy, strict=True)


@pytest.mark.parametrize("offset", [0, 511, 70000, 1 * MIB + 5, 2 * MIB - 1])
def test_first_mismatch_offset(tmp_path, offset):
    a = raw_image(tmp_path, "a.raw", "2M", "write -P 1 0 64k", "write -P 2 1M 100k")
    b = tmp_path / "b.qcow2"
    qemu_img("convert", "-O", "qcow2", a, b)
    with open(str(a), "r+b") as image_file:
        image_file.seek(offset)
        old = image_file.read(1)
        image_file.seek(offset)
        image_file.write(bytes([old[0] ^ 0x80]))
    assert assert_agrees(a, b) == offset // 512 * 512
    assert assert_agrees(b, a) == offset // 512 * 512


def test_size_mismatch(tmp_path):
    small = raw_image(tmp_path, "small.raw", "1M", "write -P 1 0 64k")
    big = raw_image(tmp_path, "big.raw", "2M", "write -P 1 0 64k", "write -P 0 1536k 64k")
    assert_agrees(small, big)
    assert_agrees(big, small)
    assert_agrees(small, big, strict=True, check_offset=False)
    assert diskimage.compare_detail(str(small), str(big), strict=True) == 1 * MIB
    qemu_io(big, "write -P 9 1600k 1k", fmt="raw")
    assert assert_agrees(small, big) == 1600 * KIB


def test_strict_allocation_state(tmp_path):
    a = raw_image(tmp_path, "a.raw", "1M", "write -P 1 0 64k")
    q = tmp_path / "a.qcow2"
    qemu_img("convert", "-O", "qcow2", a, q)
    # Same content; a hole in raw (allocated as zero) is no unallocated qcow2 cluster.
    assert_agrees(a, q, strict=True)
    zeroed = tmp_path / "zeroed.qcow2"
    qemu_img("convert", "-O", "qcow2", a, zeroed)
    qemu_io(zeroed, "write -z 512k 64k", fmt="qcow2")
    assert_agrees(q, zeroed)
    # qemu-img reports the first block status difference, which includes its
    # end-of-image flag (65536 here); the allocation differs from 512 KiB on.
    assert_agrees(q, zeroed, strict=True, check_offset=False)
    assert diskimage.compare_detail(str(q), str(zeroed), strict=True) == 512 * KIB


def test_chain_against_flat_copy(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "2M")
    qemu_io(base, "write -P 5 0 1M", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "3M")
    qemu_io(top, "write -z 256k 64k", "write -P 6 2560k 4k", fmt="qcow2")
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-O", "raw", top, flat)
    assert_agrees(top, flat)
    assert_agrees(top, base)
    assert diskimage.compare(str(top), str(flat), fmt_a="qcow2", fmt_b="raw")


def test_missing_image(tmp_path):
    a = raw_image(tmp_path, "a.raw", "1M")
    with pytest.raises(ImageNotFoundError):
        diskimage.compare(str(a), str(tmp_path / "nothere.raw"))
