# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""open_driver: probing, backing chains through the path policy, loops, depth, cleanup."""

import hashlib
import os
import subprocess
import time

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import chain
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.chain import open_driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    FormatError, ImageError, ImageInUseError, ImageNotFoundError, InvalidOptionError, PolicyError,
    UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import DRIVERS
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import MAX_IO, Driver

MIB = 1024 * 1024
QCOW2_BACKING_FORMAT_EXTENSION = b"\xe2\x79\x2a\xca"


def lock_bytes(path):
    st = os.stat(str(path))
    device = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    held = set()
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "->" not in fields and device in fields:
                held.update(range(int(fields[-2]), int(fields[-1]) + 1))
    return held


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def create(path, fmt="qcow2", size="4M", backing=None, backing_fmt=None, cwd=None, options=None):
    args = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        args += ["-u", "-b", backing, "-F", backing_fmt or "qcow2"]
    if options:
        args += ["-o", options]
    args += [path, size]
    qemu_tools.run(*args, cwd=cwd)
    return path


def guest_digest(driver):
    digest = hashlib.sha256()
    for offset in range(0, driver.virtual_size, MAX_IO):
        digest.update(driver.read(offset, min(MAX_IO, driver.virtual_size - offset)))
    return digest.hexdigest()


@pytest.fixture
def three_layers(tmp_path):
    """base.raw <- mid.qcow2 <- top.qcow2, each layer writing its own pattern."""
    base = tmp_path / "base.raw"
    create(base, "raw")
    qemu_tools.qemu_io(base, "write -P 0x0b 0 4M", fmt="raw")
    create(tmp_path / "mid.qcow2", backing="base.raw", backing_fmt="raw", cwd=tmp_path)
    qemu_tools.qemu_io(tmp_path / "mid.qcow2", "write -P 0x0c 1M 1M", fmt="qcow2")
    create(tmp_path / "top.qcow2", backing="mid.qcow2", cwd=tmp_path)
    qemu_tools.qemu_io(tmp_path / "top.qcow2", "write -P 0x0d 1536k 1M", fmt="qcow2")
    return tmp_path


def test_chain_reads_like_qemu(three_layers, tmp_path):
    top = three_layers / "top.qcow2"
    with open_driver(str(top)) as driver:
        layers = []
        layer = driver
        while layer is not None:
            layers.append((layer.format_name, os.path.basename(layer.path), layer.readonly))
            layer = layer.backing
        assert layers == [("qcow2", "top.qcow2", True), ("qcow2", "mid.qcow2", True),
                          ("raw", "base.raw", True)]
        # Formats recorded in the images were used: nothing was probed below the top.
        assert driver.backing.backing.probed is False
        assert guest_digest(driver) == qemu_tools.raw_digest(top, tmp_path)


def test_chain_locks_match_qemu(three_layers):
    """Writable top, read-only backing layers: the same lock bytes as a qemu-io writer."""
    paths = [three_layers / name for name in ("top.qcow2", "mid.qcow2", "base.raw")]
    proc = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 600000", str(paths[0])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 20
        while not all(lock_bytes(p) for p in paths):
            assert proc.poll() is None and time.time() < deadline, "qemu-io did not lock the chain"
            time.sleep(0.05)
        theirs = [lock_bytes(p) for p in paths]
        # While qemu holds the chain, we can neither write the top nor read it with locks.
        with pytest.raises(ImageInUseError):
            open_driver(str(paths[0]), readonly=False)
        with pytest.raises(ImageInUseError):
            open_driver(str(paths[0]))
        with open_driver(str(paths[0]), force_share=True) as driver:
            assert driver.backing.backing.read(0, 1) == b"\x0b"
    finally:
        proc.kill()
        proc.communicate()
    with open_driver(str(paths[0]), readonly=False) as driver:
        assert not driver.readonly and driver.backing.readonly and driver.backing.backing.readonly
        ours = [lock_bytes(p) for p in paths]
    # qcow2 layers: exactly QEMU's bytes.  The raw base: QEMU's raw driver shares
    # write there (100 only); every read-only open of ours refuses to share write and
    # resize (+201, +203), as QEMU does for qcow2 files, so a base is never
    # rewritten under a reader.
    assert ours[:2] == theirs[:2]
    assert theirs[2] == {100}
    assert ours[2] == {100, 201, 203}
    assert [lock_bytes(p) for p in paths] == [set(), set(), set()]


def test_force_share_needs_read_only(three_layers):
    with pytest.raises(InvalidOptionError):
        open_driver(str(three_layers / "top.qcow2"), readonly=False, force_share=True)


def drop_backing_format(path):
    """Make the qcow2 image record no backing format (qemu-img 7.2 refuses to create one):
    its backing-format header extension becomes an unknown, ignored extension."""
    with open(str(path), "r+b") as image:
        header = image.read(65536)
        at = header.find(QCOW2_BACKING_FORMAT_EXTENSION)
        assert at > 0
        image.seek(at)
        image.write(b"\x7e\x57\x00\x01")
    assert "backing-filename-format" not in qemu_tools.qemu_img_json("info", path)


def test_backing_without_recorded_format_is_probed_read_only(tmp_path):
    base = create(tmp_path / "base.raw", "raw", "1M")
    qemu_tools.qemu_io(base, "write -P 0x51 0 512", fmt="raw")
    top = create(tmp_path / "top.qcow2", size="1M", backing="base.raw", backing_fmt="raw", cwd=tmp_path)
    drop_backing_format(top)
    with open_driver(str(top), readonly=False) as driver:
        assert driver.backing_format is None
        assert driver.backing.format_name == "raw"
        assert driver.backing.probed is True
        assert driver.backing.readonly
        assert driver.read(0, 512) == b"\x51" * 512
        with pytest.raises(ImageError):
            driver.backing.write(4096, b"x")


def test_probed_raw_top_protects_sector_zero(tmp_path):
    path = create(tmp_path / "disk.img", "raw", "1M")
    with open_driver(str(path), readonly=False) as driver:
        assert driver.format_name == "raw" and driver.probed
        assert driver.probe_warning is None
        with pytest.raises(UnsupportedOperation, match="probed as raw"):
            driver.write(0, b"QFI\xfb\x00\x00\x00\x03")
        driver.write(4096, b"ok")
    with open_driver(str(path), fmt="raw", readonly=False) as driver:
        assert not driver.probed
        driver.write(0, b"MBR!")
    qemu_tools.qemu_io(path, "read -P 0x6f 4096 1", "read -P 0x6b 4097 1", fmt="raw")
    with open(str(path), "rb") as image:
        assert image.read(8) == b"MBR!" + bytes(4)


def test_probe_warning_is_passed_on(tmp_path):
    path = tmp_path / "looks-like.vdi"
    # Shorter than a VDI header (512 bytes): the vdi driver does not claim it, the signature table warns.
    path.write_bytes(bytes(64) + b"\x7f\x10\xda\xbe" + bytes(32))
    with open_driver(str(path)) as driver:
        assert driver.format_name == "raw"
        assert "vdi" in driver.probe_warning


@pytest.mark.parametrize("name,error,message", [
    ("/ABS/base.raw", PolicyError, "absolute paths are not allowed"),
    ("../base.raw", PolicyError, "'..' components are not allowed"),
    ("json:{\"file\": {\"driver\": \"file\", \"filename\": \"base.raw\"}}", PolicyError, "json:"),
    ("nbd://127.0.0.1:10809/x", PolicyError, "protocol prefix 'nbd:'"),
    ("missing.raw", ImageNotFoundError, "does not exist"),
])
def test_backing_names_go_through_the_policy(tmp_path, name, error, message):
    outer = tmp_path / "outer"
    (outer / "vm").mkdir(parents=True)
    create(outer / "base.raw", "raw", "1M")
    name = name.replace("/ABS", str(outer))
    top = create(outer / "vm" / "top.qcow2", size="1M", backing=name, backing_fmt="raw")
    before = open_fds()
    with pytest.raises(error, match=message) as excinfo:
        open_driver(str(top))
    assert str(top) in str(excinfo.value)
    assert open_fds() == before
    assert lock_bytes(top) == set()


def test_allow_dirs_admits_backing_outside_the_image_directory(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "vm").mkdir()
    base = create(tmp_path / "base" / "gold.raw", "raw", "1M")
    qemu_tools.qemu_io(base, "write -P 0x47 0 1M", fmt="raw")
    for name in (str(base), "../base/gold.raw"):
        top = create(tmp_path / "vm" / "top.qcow2", size="1M", backing=name, backing_fmt="raw")
        with pytest.raises(PolicyError):
            open_driver(str(top))
        with open_driver(str(top), allow_dirs=[str(tmp_path / "base")]) as driver:
            assert driver.backing.path == str(base)
            assert driver.read(MIB - 1, 1) == b"\x47"
        os.unlink(str(top))


def test_loops_are_detected_and_everything_closed(tmp_path):
    a = create(tmp_path / "a.qcow2", size="1M")
    b = create(tmp_path / "b.qcow2", size="1M", backing="a.qcow2", cwd=tmp_path)
    qemu_tools.qemu_img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a)
    before = open_fds()
    with pytest.raises(FormatError, match=r"backing chain loop: .*/b.qcow2 -> .*/a.qcow2 -> .*/b.qcow2"):
        open_driver(str(b))
    assert open_fds() == before
    assert lock_bytes(a) == set() and lock_bytes(b) == set()
    # A loop through a symbolic link is the same file.
    os.symlink("c.qcow2", str(tmp_path / "alias.qcow2"))
    c = create(tmp_path / "c.qcow2", size="1M", backing="alias.qcow2", cwd=tmp_path)
    with pytest.raises(FormatError, match="loop"):
        open_driver(str(c))
    assert open_fds() == before


def test_depth_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(chain, "MAX_CHAIN_DEPTH", 4)
    create(tmp_path / "l0.raw", "raw", "1M")
    previous, previous_fmt = "l0.raw", "raw"
    for index in range(1, 5):
        create(tmp_path / ("l%d.qcow2" % index), size="1M", backing=previous, backing_fmt=previous_fmt,
               cwd=tmp_path)
        previous, previous_fmt = "l%d.qcow2" % index, "qcow2"
    before = open_fds()
    with open_driver(str(tmp_path / "l3.qcow2")) as driver:  # four layers: fine
        assert driver.backing.backing.backing.format_name == "raw"
    with pytest.raises(FormatError, match="backing chain longer than 4 layers"):
        open_driver(str(tmp_path / "l4.qcow2"))
    assert open_fds() == before


def test_default_depth_cap_allows_deep_qemu_chains():
    assert chain.MAX_CHAIN_DEPTH >= 32


def test_missing_top(tmp_path):
    with pytest.raises(ImageNotFoundError):
        open_driver(str(tmp_path / "nothing.qcow2"))
    with pytest.raises(ImageNotFoundError):
        open_driver(str(tmp_path / "nothing.qcow2"), fmt="qcow2")


def test_unknown_format(tmp_path):
    path = create(tmp_path / "disk.raw", "raw", "1M")
    with pytest.raises(ImageError, match="unknown or unsupported image format 'vfat'"):
        open_driver(str(path), fmt="vfat")


@pytest.mark.parametrize("readonly", [True, False])
def test_data_file_goes_through_the_policy_and_follows_writability(tmp_path, tmp_path_factory, readonly):
    top = create(tmp_path / "top.qcow2", size="1M", options="data_file=data.raw", cwd=tmp_path)
    data = tmp_path / "data.raw"
    # QEMU opens a relative data file name from its working directory; we resolve it
    # in the image's directory (the policy's rule for every name inside an image).
    qemu_tools.run("qemu-io", "-f", "qcow2", "-c", "write -P 0x44 0 64k", top, cwd=str(tmp_path))
    before = open_fds()
    with open_driver(str(top), readonly=readonly) as driver:
        assert driver.data_file == "data.raw"
        assert driver.read(0, 2) == b"\x44\x44"
        # The data file holds guest data: locked like the image itself.
        assert (101 in lock_bytes(data)) is (not readonly)
        assert 100 in lock_bytes(data)
    assert open_fds() == before
    assert lock_bytes(data) == set()
    # An absolute data file name in the image's own directory is accepted like a relative one ...
    qemu_tools.run("qemu-img", "amend", "-f", "qcow2", "-o", "data_file=%s" % data, top, cwd=str(tmp_path))
    with open_driver(str(top), readonly=readonly) as driver:
        assert driver.read(0, 1) == b"\x44"
    # ... one outside it and outside allow_dirs is refused.
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.link(str(data), str(elsewhere / "data.raw"))
    qemu_tools.run("qemu-img", "amend", "-f", "qcow2", "-o", "data_file=%s" % (elsewhere / "data.raw"),
                   top, cwd=str(tmp_path))
    os.unlink(str(data))
    with pytest.raises(PolicyError, match="data file"):
        open_driver(str(top), readonly=readonly)
    assert open_fds() == before
    with open_driver(str(top), readonly=readonly, allow_dirs=[str(elsewhere)]) as driver:
        assert driver.read(0, 1) == b"\x44"


class LeakyDriver(Driver):
    """A driver that opens its backing file, then fails without closing it: the
    chain must close what its openers handed out."""
    format_name = "leaky"
    # Keeps what it opened alive, so that garbage collection cannot hide a missing close.
    kept = []

    @classmethod
    def probe(cls, header, filename):
        return 100 if header.startswith(b"LEAKY\n") else 0

    @classmethod
    def open(cls, path, readonly=True, opener=None, force_share=False):
        with ImageFile(path, writable=not readonly, force_share=force_share) as own:
            names = own.pread(0, 4096).decode().split("\n")
        cls.kept.append(opener(path, names[1], "raw"))
        cls.kept.append(opener.data_file(path, names[2]))
        raise FormatError("leaky header: broken on purpose", path)


def test_failed_open_closes_what_the_openers_opened(tmp_path, monkeypatch):
    monkeypatch.setitem(DRIVERS, "leaky", LeakyDriver)
    base = create(tmp_path / "base.raw", "raw", "1M")
    top = tmp_path / "top.leaky"
    data = create(tmp_path / "data.raw", "raw", "1M")
    top.write_bytes(b"LEAKY\nbase.raw\ndata.raw\n")
    before = open_fds()
    for readonly in (True, False):
        with pytest.raises(FormatError, match="broken on purpose"):
            open_driver(str(top), readonly=readonly)
        assert open_fds() == before
        assert lock_bytes(base) == set() and lock_bytes(data) == set()
    assert len(LeakyDriver.kept) == 4
    del LeakyDriver.kept[:]
