# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ImageFile takes QEMU's image locks: checked against real qemu-io / qemu-img
processes holding the same file, in both directions."""

import os
import subprocess
import time

import pytest

import components

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageInUseError, InvalidOptionError)

FORMATS = ["raw", "qcow2"]


def lock_bytes(path):
    """Set of bytes locked on ``path`` by anyone, read from /proc/locks (the kernel's view)."""
    st = os.stat(str(path))
    device = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    held = set()
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "->" in fields or device not in fields:
                continue
            start, end = fields[-2], fields[-1]
            if end == "EOF":
                end = start
            held.update(range(int(start), int(end) + 1))
    return held


def make_image(tmp_path, fmt, name="disk"):
    path = tmp_path / ("%s.%s" % (name, fmt))
    qemu_tools.qemu_img("create", "-q", "-f", fmt, path, "1M")
    return path


@pytest.fixture
def holder(request):
    """Start a qemu-io that keeps ``path`` open; killed when the test ends."""
    procs = []

    def start(path, fmt, readonly=False, force_share=False):
        before = lock_bytes(path)
        args = ["qemu-io", "-f", fmt]
        if readonly:
            args.append("-r")
        if force_share:
            args.append("-U")
        args += ["-c", "sleep 600000", str(path)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.time() + 20
        while 100 not in lock_bytes(path) - before or proc.poll() is not None:
            if proc.poll() is not None:
                raise AssertionError("qemu-io exited early: %r" % (proc.communicate(),))
            if time.time() > deadline:
                raise AssertionError("qemu-io never locked %s" % path)
            time.sleep(0.05)
        return proc

    def stop():
        for proc in procs:
            proc.kill()
            proc.communicate()

    request.addfinalizer(stop)
    return start


def run(*args):
    proc = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def qemu_io_can_write(path, fmt):
    return run("qemu-io", "-f", fmt, "-c", "write 0 512", path)


# ---------------------------------------------------------------- lock layout
@pytest.mark.parametrize("readonly,force_share,our_mode", [
    (False, False, dict(writable=True)),
    (True, False, dict()),
    (True, True, dict(force_share=True)),
])
def test_lock_bytes_match_qemu_on_qcow2(tmp_path, holder, readonly, force_share, our_mode):
    """Same bytes as QEMU's qcow2 opener in the same mode (qemu-img and qemu-io agree there)."""
    path = make_image(tmp_path, "qcow2")
    proc = holder(path, "qcow2", readonly=readonly, force_share=force_share)
    theirs = lock_bytes(path)
    proc.kill()
    proc.communicate()
    assert lock_bytes(path) == set()
    with ImageFile(path, **our_mode):
        ours = lock_bytes(path)
    assert ours == theirs
    assert lock_bytes(path) == set()


def test_no_locks_when_disabled(tmp_path):
    path = make_image(tmp_path, "raw")
    with ImageFile(path, writable=True, lock=False):
        assert lock_bytes(path) == set()


def test_force_share_requires_read_only(tmp_path):
    path = make_image(tmp_path, "raw")
    with pytest.raises(InvalidOptionError, match="read-only"):
        ImageFile(path, writable=True, force_share=True)


# ------------------------------------------------------- qemu holds the image
@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_blocks_our_opens_except_force_share(tmp_path, holder, fmt):
    path = make_image(tmp_path, fmt)
    holder(path, fmt)
    theirs = lock_bytes(path)
    # raw: qemu-io holds write (101); qcow2: it also refuses to share write (201).
    with pytest.raises(ImageInUseError, match=r"in use by another process \(QEMU lock on byte [12]01\)"):
        ImageFile(path, writable=True)
    with pytest.raises(ImageInUseError, match=r"byte 101\): it holds the \"write\"") as excinfo:
        ImageFile(path)
    assert str(excinfo.value).startswith("%s is in use" % path)
    # Failed opens left no lock behind.
    assert lock_bytes(path) == theirs
    with ImageFile(path, force_share=True) as image:
        assert image.pread(0, 4) == open(str(path), "rb").read(4)


def test_writer_blocks_qemu_img_info_like_us(tmp_path, holder):
    """qemu-img info on qcow2 (the format that restricts sharing) fails against a
    writer, and -U succeeds: our read-only open and force_share do the same."""
    path = make_image(tmp_path, "qcow2")
    holder(path, "qcow2")
    rc, out = run("qemu-img", "info", path)
    assert rc != 0 and "lock" in out
    rc, out = run("qemu-img", "info", "-U", path)
    assert rc == 0, out
    with pytest.raises(ImageInUseError):
        ImageFile(path)
    ImageFile(path, force_share=True).close()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("force_share", [False, True])
def test_our_writable_open_fails_exactly_when_qemu_io_write_fails(tmp_path, holder, fmt, force_share):
    """Against a read-only qemu-io (with or without -U), decide like a second qemu-io writer."""
    path = make_image(tmp_path, fmt)
    holder(path, fmt, readonly=True, force_share=force_share)
    rc, out = qemu_io_can_write(path, fmt)
    if rc == 0:
        ImageFile(path, writable=True).close()
    else:
        assert "lock" in out
        with pytest.raises(ImageInUseError):
            ImageFile(path, writable=True)
    # A read-only open coexists with a read-only holder, as qemu-img info does.
    assert run("qemu-img", "info", "-f", fmt, path)[0] == 0
    ImageFile(path).close()


def test_qcow2_file_locked_whatever_format_we_read_it_as(tmp_path, holder):
    """Locks are on the file: a qcow2 file held by qemu-io cannot be opened for writing
    by us (as raw bytes or otherwise)."""
    path = make_image(tmp_path, "qcow2")
    holder(path, "qcow2", readonly=True)
    with pytest.raises(ImageInUseError, match="byte 201"):
        ImageFile(path, writable=True)


# ---------------------------------------------------------- we hold the image
@pytest.mark.parametrize("fmt", FORMATS)
def test_our_writable_open_blocks_qemu(tmp_path, fmt):
    path = make_image(tmp_path, fmt)
    with ImageFile(path, writable=True):
        rc, out = qemu_io_can_write(path, fmt)
        assert rc != 0
        assert 'Failed to get "write" lock' in out
        rc, out = run("qemu-img", "info", "-U", path)
        assert rc == 0, out
        if fmt == "qcow2":
            # qemu-img's qcow2 opener does not share write: it must see our writer.
            rc, out = run("qemu-img", "info", path)
            assert rc != 0 and 'Failed to get shared "write" lock' in out
    rc, out = qemu_io_can_write(path, fmt)
    assert rc == 0, out


@pytest.mark.parametrize("fmt", FORMATS)
def test_our_read_only_open_blocks_writers_not_readers(tmp_path, fmt):
    path = make_image(tmp_path, fmt)
    with ImageFile(path):
        rc, out = qemu_io_can_write(path, fmt)
        assert rc != 0 and "lock" in out
        rc, out = run("qemu-io", "-r", "-f", fmt, "-c", "read 0 512", path)
        assert rc == 0, out
        rc, out = run("qemu-img", "info", "-f", fmt, path)
        assert rc == 0, out
    with ImageFile(path, force_share=True):
        rc, out = qemu_io_can_write(path, fmt)
        assert rc == 0, out


def test_locks_conflict_between_our_own_opens(tmp_path):
    """OFD locks belong to the open file description, so two opens in one process
    see each other like two processes would."""
    path = make_image(tmp_path, "raw")
    first = ImageFile(path, writable=True)
    try:
        with pytest.raises(ImageInUseError):
            ImageFile(path, writable=True)
        with pytest.raises(ImageInUseError):
            ImageFile(path)
        # Another descriptor of the same file closing must not drop our locks (OFD, not POSIX).
        os.close(os.open(str(path), os.O_RDONLY))
        assert {100, 101, 103, 201, 203} <= lock_bytes(path)
    finally:
        first.close()
    with ImageFile(path, writable=True):
        pass
    readers = [ImageFile(path), ImageFile(path)]
    for reader in readers:
        reader.close()


# ------------------------------------------------------------- a real guest
@pytest.fixture
def paused_guest(request):
    """A paused QEMU machine (no guest code runs) with ``path`` as its virtio disk."""
    procs = []

    def start(path, fmt):
        args = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-S", "-display", "none",
                "-nodefaults", "-drive", "file=%s,format=%s,if=none,id=disk0" % (path, fmt),
                "-device", "virtio-blk-pci,drive=disk0"]
        try:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError:
            components.missing("qemu-system-x86_64")
        procs.append(proc)
        deadline = time.time() + 30
        while 101 not in lock_bytes(path):
            if proc.poll() is not None:
                raise AssertionError("qemu-system-x86_64 exited: %r" % (proc.communicate(),))
            assert time.time() < deadline, "the guest never locked %s" % path
            time.sleep(0.05)
        return proc

    def stop():
        for proc in procs:
            proc.kill()
            proc.communicate()

    request.addfinalizer(stop)
    return start


@pytest.mark.parametrize("fmt", FORMATS)
def test_image_of_a_running_guest_is_never_opened_for_writing(tmp_path, paused_guest, fmt):
    path = make_image(tmp_path, fmt)
    paused_guest(path, fmt)
    with pytest.raises(ImageInUseError, match=r"in use by another process \(QEMU lock on byte 201\): "
                                              r"it does not share the \"write\""):
        ImageFile(path, writable=True)
    with pytest.raises(ImageInUseError, match="byte 101"):
        ImageFile(path)
    assert run("qemu-img", "info", "-U", path)[0] == 0
    with ImageFile(path, force_share=True) as image:
        assert image.size() == os.path.getsize(str(path))
