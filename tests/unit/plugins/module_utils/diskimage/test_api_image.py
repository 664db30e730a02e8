# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""open_image(): guest reads and writes through the chain, as QEMU sees them."""

import json

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, ImageInUseError, ReadOnlyImageError, UnsupportedOperation,
)

KIB = 1 << 10


def guest_bytes(path, tmp_path, fmt):
    flat = tmp_path / "guest.raw"
    qemu_img("convert", "-f", fmt, "-O", "raw", path, flat)
    data = flat.read_bytes()
    flat.unlink()
    return data


def make_overlay(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_io(base, "write -P 0x31 0 512k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "2M")
    qemu_io(top, "write -P 0x32 100k 50k", "write -z 300k 64k", fmt="qcow2")
    return top


def test_reads_through_the_chain(tmp_path):
    top = make_overlay(tmp_path)
    expected = guest_bytes(top, tmp_path, "qcow2")
    with diskimage.open_image(str(top)) as image:
        assert image.virtual_size == 2 << 20 and image.format == "qcow2"
        assert image.read(0, image.virtual_size) == expected
        assert image.read(90 * KIB, 70 * KIB) == expected[90 * KIB:160 * KIB]


def test_block_status_covers_the_chain(tmp_path):
    top = make_overlay(tmp_path)
    expected = guest_bytes(top, tmp_path, "qcow2")
    with diskimage.open_image(str(top), fmt="qcow2") as image:
        runs = image.block_status()
    assert runs[0].start == 0 and sum(run.length for run in runs) == 2 << 20
    for run in runs:
        chunk = expected[run.start:run.start + run.length]
        if run.kind != "data":
            assert chunk == bytes(len(chunk)), run


def test_writes_seen_by_qemu(tmp_path):
    top = make_overlay(tmp_path)
    with diskimage.open_image(str(top), readonly=False) as image:
        image.write(64 * KIB, b"\x41" * (16 * KIB))
        image.write_zeroes(0, 4 * KIB)
        image.flush()
    qemu_io(top, "read -P 0x41 64k 16k", "read -P 0 0 4k", "read -P 0x31 4k 60k", fmt="qcow2")
    result = qemu_img_json("check", top)
    assert result["check-errors"] == 0 and "leaks" not in result and "corruptions" not in result


def test_read_only_by_default_and_closed_after_use(tmp_path):
    top = make_overlay(tmp_path)
    with diskimage.open_image(str(top)) as image:
        with pytest.raises(ReadOnlyImageError):
            image.write(0, b"x" * 512)
    assert image.closed
    with pytest.raises(ImageError):
        image.read(0, 512)
    # Locks are released: QEMU can write the image now.
    qemu_io(top, "write -P 1 0 512", fmt="qcow2")


def test_probed_raw_protects_sector_zero(tmp_path):
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", raw, "1M")
    with diskimage.open_image(str(raw), readonly=False) as image:
        with pytest.raises(UnsupportedOperation):
            image.write(0, b"QFI\xfb" + bytes(508))
        image.write(4096, b"ok")
    with diskimage.open_image(str(raw), fmt="raw", readonly=False) as image:
        image.write(0, b"QFI\xfb")
    assert raw.read_bytes()[:4] == b"QFI\xfb"


def test_out_of_range(tmp_path):
    top = make_overlay(tmp_path)
    with diskimage.open_image(str(top)) as image:
        with pytest.raises(ImageError):
            image.read(2 << 20, 1)


def test_image_in_use_needs_force_share(tmp_path):
    image = tmp_path / "busy.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    path = str(image)
    with diskimage.open_image(path, readonly=False) as writer:
        writer.write(0, b"\x07" * 4096)
        for operation in (lambda **kw: diskimage.info(path, **kw),
                          lambda **kw: diskimage.check(path, **kw),
                          lambda **kw: diskimage.compare(path, path, **kw),
                          lambda **kw: diskimage.convert(path, str(tmp_path / "copy.raw"), "raw", **kw)):
            with pytest.raises(ImageInUseError):
                operation()
        # A read-only look that shares every permission (qemu-img -U) is allowed.
        assert diskimage.info(path, force_share=True)["virtual-size"] == 1 << 20
        assert diskimage.compare(path, path, force_share=True)
        with diskimage.open_image(path, force_share=True) as reader:
            assert reader.virtual_size == 1 << 20
        with pytest.raises(ImageInUseError):
            diskimage.open_image(path, readonly=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.qcow2"]


def qemu_map_kinds(path):
    """qemu-img map of the chain as (start, length, kind) runs, adjacent kinds merged."""
    runs = []
    for entry in json.loads(qemu_img("map", "--output=json", path)):
        if entry["data"]:
            kind = "data"
        elif entry["present"]:
            kind = "zero"
        else:
            kind = "unallocated"
        if runs and runs[-1][2] == kind:
            runs[-1] = (runs[-1][0], runs[-1][1] + entry["length"], kind)
        else:
            runs.append((entry["start"], entry["length"], kind))
    return runs


def test_block_status_like_qemu_map(tmp_path):
    base = tmp_path / "base.raw"
    qemu_img("create", "-f", "raw", base, "1M")
    qemu_io(base, "write -P 1 0 256k", "write -P 2 768k 64k", fmt="raw")
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "2M")
    qemu_io(mid, "write -z 64k 64k", "write -P 3 1088k 64k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "mid.qcow2", "-F", "qcow2", top, "3M")
    qemu_io(top, "write -P 4 4k 4k", "write -z 800k 4k", "write -P 5 2100k 8k", fmt="qcow2")
    with diskimage.open_image(str(top)) as image:
        ours = [(run.start, run.length, run.kind) for run in image.block_status()]
    assert ours == qemu_map_kinds(top)
