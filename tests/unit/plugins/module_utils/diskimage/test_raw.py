# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw driver against qemu-img / qemu-io."""

import hashlib
import os
import subprocess

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import _io
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, ImageInUseError, InvalidOptionError, ReadOnlyImageError, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import (
    DATA, MAX_IO, ZERO)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.raw import RawDriver

MIB = 1024 * 1024


@pytest.fixture
def qemu_raw(tmp_path):
    """A 6 MiB raw image written by qemu-io: patterned data, explicit zeroes, holes."""
    path = tmp_path / "qemu.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", path, "6M")
    qemu_tools.qemu_io(path, "write -P 0x61 0 4k", "write -P 0x62 1M 1M", "write -z 2M 64k",
                       "write -P 0x63 5M 12345", fmt="raw")
    return path


def guest_digest(driver):
    digest = hashlib.sha256()
    for offset in range(0, driver.virtual_size, MAX_IO):
        digest.update(driver.read(offset, min(MAX_IO, driver.virtual_size - offset)))
    return digest.hexdigest()


def test_read_matches_qemu(qemu_raw, tmp_path):
    with RawDriver.open(str(qemu_raw)) as driver:
        assert driver.format_name == "raw"
        assert driver.readonly and driver.backing is None
        info = qemu_tools.qemu_img_json("info", "-f", "raw", qemu_raw)
        assert driver.virtual_size == info["virtual-size"]
        assert guest_digest(driver) == qemu_tools.raw_digest(qemu_raw, tmp_path, fmt="raw")
        assert driver.read(5 * MIB + 12340, 10) == b"\x63" * 5 + bytes(5)
        assert driver.read(driver.virtual_size - 2, 4) == bytes(4)  # zero-filled past the end
        assert driver.info() == {}
        with pytest.raises(UnsupportedOperation, match="cannot be checked"):
            driver.check()


def test_block_status_matches_qemu_img_map(qemu_raw):
    qemu_map = qemu_tools.qemu_img_json("map", "-f", "raw", qemu_raw)
    with RawDriver.open(str(qemu_raw)) as driver:
        ours = driver.block_status(0, driver.virtual_size)
        assert ours == driver.block_status(0, driver.virtual_size)
        assert ours[0].start == 0 and sum(e.length for e in ours) == driver.virtual_size
        for extent in ours:
            if extent.kind == DATA:
                assert extent.offset == extent.start
            else:
                assert extent.kind == ZERO and extent.offset is None
        assert [(e.start, e.length) for e in ours if e.kind == DATA] == \
            [(e["start"], e["length"]) for e in qemu_map if e["data"]]
        middle = driver.block_status(MIB + 100, 2 * MIB)
        assert middle[0].start == MIB + 100 and sum(e.length for e in middle) == 2 * MIB


def test_writes_read_back_by_qemu(qemu_raw):
    with RawDriver.open(str(qemu_raw), readonly=False) as driver:
        driver.write(0, b"\x71" * 512)
        driver.write(3 * MIB + 1, b"\x72" * 100)
        driver.write_zeroes(1 * MIB + 4096, 8192)
        driver.write_zeroes(5 * MIB, MIB, may_unmap=True)
        driver.flush()
        status = driver.block_status(5 * MIB, MIB)
    assert status == [(5 * MIB, MIB, ZERO, None)]
    qemu_tools.qemu_io(qemu_raw, "read -P 0x71 0 512", "read -P 0x61 512 3584",
                       "read -P 0x72 3145729 100", "read -P 0x62 1M 4096", "read -P 0 1052672 8192",
                       "read -P 0x62 1060864 %d" % (MIB - 12288), "read -P 0 5M 1M", fmt="raw")


def test_write_zeroes_never_loops_per_byte_and_writes_in_bounded_chunks(tmp_path, monkeypatch):
    path = tmp_path / "z.raw"
    RawDriver.create(str(path), 10 * MIB)
    sizes = []
    real = _io.ImageFile.pwrite

    def record(self, offset, data):
        sizes.append(len(data))
        return real(self, offset, data)
    monkeypatch.setattr(_io.ImageFile, "pwrite", record)
    with RawDriver.open(str(path), readonly=False) as driver:
        driver.write(MIB, b"\xff" * (9 * MIB))
        sizes[:] = []
        driver.write_zeroes(100, 10 * MIB - 200)
    assert len(sizes) <= 4 and max(sizes) <= MAX_IO
    qemu_tools.qemu_io(path, "read -P 0 0 %d" % (10 * MIB - 100), "read -P 0xff %d 100" % (10 * MIB - 100),
                       fmt="raw")


def test_write_errors(qemu_raw):
    with RawDriver.open(str(qemu_raw)) as driver:
        with pytest.raises(ReadOnlyImageError):
            driver.write(4096, b"x")
        with pytest.raises(ReadOnlyImageError):
            driver.write_zeroes(4096, 512)
    with RawDriver.open(str(qemu_raw), readonly=False) as driver:
        with pytest.raises(ImageError, match="beyond the end of the image"):
            driver.write(6 * MIB - 1, b"xy")
        with pytest.raises(ImageError, match="beyond the end"):
            driver.write_zeroes(6 * MIB, 1)
        assert os.path.getsize(str(qemu_raw)) == 6 * MIB


def test_probed_raw_refuses_sector_zero_writes(qemu_raw):
    with RawDriver.open(str(qemu_raw), readonly=False) as driver:
        driver.probed = True
        for offset in (0, 511):
            with pytest.raises(UnsupportedOperation, match="probed as raw.*fmt='raw'"):
                driver.write(offset, b"QFI\xfb")
        driver.write(512, b"QFI\xfb")
        driver.write_zeroes(0, 512)  # zeroes cannot forge a header
    qemu_tools.qemu_io(qemu_raw, "read -P 0 0 512", fmt="raw")
    with open(str(qemu_raw), "rb") as image:
        assert image.read(516)[512:] == b"QFI\xfb"


def test_open_takes_qemu_locks(qemu_raw):
    with RawDriver.open(str(qemu_raw), readonly=False):
        with pytest.raises(ImageInUseError):
            RawDriver.open(str(qemu_raw))
        RawDriver.open(str(qemu_raw), force_share=True).close()


@pytest.mark.parametrize("preallocation", [None, "off", "falloc", "full"])
@pytest.mark.parametrize("size", [0, 1000, 3 * MIB])
def test_create_like_qemu_img(tmp_path, preallocation, size):
    ours = tmp_path / "ours.raw"
    theirs = tmp_path / "theirs.raw"
    options = {} if preallocation is None else {"preallocation": preallocation}
    RawDriver.create(str(ours), size, options)
    args = ["create", "-q", "-f", "raw"]
    if preallocation:
        args += ["-o", "preallocation=%s" % preallocation]
    qemu_tools.qemu_img(*(args + [theirs, str(size)]))
    our_info = qemu_tools.qemu_img_json("info", ours)
    their_info = qemu_tools.qemu_img_json("info", theirs)
    assert our_info["format"] == "raw"
    assert our_info["virtual-size"] == their_info["virtual-size"]
    assert our_info["actual-size"] == their_info["actual-size"]
    assert qemu_tools.file_digest(ours) == qemu_tools.file_digest(theirs)
    assert qemu_tools.qemu_img_json("map", "-f", "raw", ours) == \
        qemu_tools.qemu_img_json("map", "-f", "raw", theirs)


@pytest.mark.parametrize("options,message", [
    ({"preallocation": "metadata"}, "unsupported preallocation mode 'metadata'"),
    ({"cluster_size": 65536}, "invalid option.*cluster_size"),
    ({"backing_file": "base.raw", "backing_fmt": "raw"}, "backing file"),
])
def test_create_refuses_options_qemu_img_refuses(tmp_path, options, message):
    path = tmp_path / "bad.raw"
    with pytest.raises(InvalidOptionError, match=message):
        RawDriver.create(str(path), MIB, options)
    assert not path.exists()
    spelled = ",".join("%s=%s" % item for item in options.items())
    assert subprocess.run(["qemu-img", "create", "-q", "-f", "raw", "-o", spelled,
                          str(tmp_path / "q.raw"), "1M"], check=False).returncode != 0


def test_create_refuses_bad_sizes_and_existing_files(tmp_path):
    with pytest.raises(InvalidOptionError, match="invalid image size"):
        RawDriver.create(str(tmp_path / "neg.raw"), -1)
    existing = tmp_path / "existing.raw"
    existing.write_bytes(b"keep")
    with pytest.raises(ImageError, match="already exists"):
        RawDriver.create(str(existing), MIB)
    assert existing.read_bytes() == b"keep"


def test_probe_score_is_the_weakest():
    assert RawDriver.probe(b"QFI\xfb" + bytes(100), "x.qcow2") == 1
    assert RawDriver.probe(b"", "x") == 1
