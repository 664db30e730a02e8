# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""resize() gives the image qemu-img resize gives: same size, same content, check clean."""

import os
import shutil
import subprocess
import sys

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageInUseError, InvalidOptionError,
)


def assert_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0, result
    assert "corruptions" not in result and "leaks" not in result, result


def resized_by_qemu(path, size, tmp_path, fmt, shrink=False):
    """A copy of ``path`` resized by qemu-img: the oracle."""
    theirs = tmp_path / ("theirs-" + os.path.basename(str(path)))
    shutil.copyfile(str(path), str(theirs))
    qemu_img(*(["resize", "-f", fmt] + (["--shrink"] if shrink else []) + [theirs, str(size)]))
    return theirs


def virtual_size(path):
    return qemu_img_json("info", path)["virtual-size"]


def test_raw_grow_is_sparse_and_keeps_data(tmp_path):
    path = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", path, "1M")
    qemu_io(path, "write -P 0x5a 4k 64k", fmt="raw")
    theirs = resized_by_qemu(path, "9M", tmp_path, "raw")
    result = diskimage.resize(str(path), "9M", fmt="raw")
    assert result == {"old-size": 1 << 20, "new-size": 9 << 20}
    assert os.path.getsize(str(path)) == 9 << 20
    assert os.stat(str(path)).st_blocks * 512 < 2 << 20
    qemu_img("compare", "-f", "raw", "-F", "raw", path, theirs)


def test_raw_grow_with_full_preallocation_allocates(tmp_path):
    path = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", path, "1M")
    diskimage.resize(str(path), "+3M", fmt="raw", preallocation="full")
    assert os.path.getsize(str(path)) == 4 << 20
    assert os.stat(str(path)).st_blocks * 512 >= 3 << 20


def test_raw_shrink_needs_shrink_and_then_truncates(tmp_path):
    path = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", path, "4M")
    qemu_io(path, "write -P 0x11 0 4M", fmt="raw")
    with pytest.raises(InvalidOptionError, match="shrink"):
        diskimage.resize(str(path), "1M", fmt="raw")
    assert os.path.getsize(str(path)) == 4 << 20
    theirs = resized_by_qemu(path, "1M", tmp_path, "raw", shrink=True)
    diskimage.resize(str(path), "1M", fmt="raw", shrink=True)
    qemu_img("compare", "-s", "-f", "raw", "-F", "raw", path, theirs)


@pytest.mark.parametrize("create_options,new_size", [
    ("cluster_size=64k", "3G"),                      # L1 grows inside its own cluster
    ("cluster_size=512", "64M"),                     # L1 outgrows its cluster: moved
    ("cluster_size=512,refcount_bits=1", "40M"),
    ("cluster_size=16k,extended_l2=on", "2G"),
    ("compat=0.10", "1G"),
])
def test_qcow2_grow_like_qemu_img(tmp_path, create_options, new_size):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", create_options, path, "1M")
    qemu_io(path, "write -P 0x61 0 300k", "write -z 500k 100k", "write -P 0x62 1020k 4k", fmt="qcow2")
    theirs = resized_by_qemu(path, new_size, tmp_path, "qcow2")
    diskimage.resize(str(path), new_size, fmt="qcow2")
    assert_clean(path)
    assert virtual_size(path) == virtual_size(theirs)
    qemu_img("compare", "-s", "-f", "qcow2", "-F", "qcow2", path, theirs)
    # the grown image stays writable by QEMU at its new end
    qemu_io(path, "write -P 0x63 %d 512" % (virtual_size(path) - 512), fmt="qcow2")
    assert_clean(path)


def test_qcow2_grow_hides_a_longer_backing_file(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0xaa 0 4M", fmt="qcow2")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", overlay, "1M")
    diskimage.resize(str(overlay), "4M", fmt="qcow2")
    assert_clean(overlay)
    qemu_io(overlay, "read -P 0xaa 0 1M", "read -P 0 1M 3M", fmt="qcow2")


@pytest.mark.parametrize("create_options", ["cluster_size=64k", "cluster_size=512", "cluster_size=16k,extended_l2=on"])
def test_qcow2_shrink_frees_clusters_like_qemu_img(tmp_path, create_options):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", create_options, path, "8M")
    qemu_io(path, "write -P 0x71 0 8M", fmt="qcow2")
    with pytest.raises(InvalidOptionError, match="shrink"):
        diskimage.resize(str(path), "3M", fmt="qcow2")
    theirs = resized_by_qemu(path, "3M", tmp_path, "qcow2", shrink=True)
    before = qemu_img_json("check", path)["image-end-offset"]
    diskimage.resize(str(path), "3M", fmt="qcow2", shrink=True)
    assert_clean(path)
    assert virtual_size(path) == 3 << 20
    qemu_img("compare", "-s", "-f", "qcow2", "-F", "qcow2", path, theirs)
    # the clusters past the new end were freed: QEMU reuses them for new writes
    qemu_io(path, "write -P 0x72 0 1M", fmt="qcow2")
    assert qemu_img_json("check", path)["image-end-offset"] <= before


def test_qcow2_shrink_keeps_snapshot_content(tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", path, "4M")
    qemu_io(path, "write -P 0x31 0 4M", fmt="qcow2")
    qemu_img("snapshot", "-c", "before", path)
    theirs = resized_by_qemu(path, "1M", tmp_path, "qcow2", shrink=True)
    diskimage.resize(str(path), "1M", fmt="qcow2", shrink=True)
    assert_clean(path)
    views = []
    for image in (path, theirs):
        snap = tmp_path / ("snap-%s.raw" % image.name)
        qemu_img("convert", "-f", "qcow2", "-O", "raw", "-l", "snapshot.name=before", image, snap)
        views.append(snap.read_bytes())
    # the snapshot's clusters survive the shrink: its view is what qemu-img gives, all 0x31
    assert views[0] == views[1]
    assert views[0] and views[0] == b"\x31" * len(views[0])
    qemu_img("snapshot", "-a", "before", path)
    assert_clean(path)


def test_qcow2_size_must_be_sector_multiple(tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    with pytest.raises(InvalidOptionError, match="multiple of 512"):
        diskimage.resize(str(path), 2000001, fmt="qcow2")
    assert virtual_size(path) == 1 << 20


def test_resize_refuses_an_image_in_use(tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", path, "1M")
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 20000", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for dummy in range(100):
            try:
                with open("/proc/locks") as locks:
                    if str(os.stat(str(path)).st_ino) in locks.read():
                        break
            except OSError:
                pass
            subprocess.run(["sleep", "0.05"], check=True)
        with pytest.raises(ImageInUseError):
            diskimage.resize(str(path), "2M", fmt="qcow2")
    finally:
        holder.kill()
        holder.wait()
    assert virtual_size(path) == 1 << 20


@pytest.mark.parametrize("create_options", ["cluster_size=64k", "cluster_size=4k", "cluster_size=16k,extended_l2=on",
                                            "cluster_size=4k,refcount_bits=64", "cluster_size=4k,refcount_bits=1"])
def test_qcow2_shrink_gives_back_the_file_tail_like_qemu_img(tmp_path, create_options):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", create_options, path, "40M")
    qemu_io(path, "write -P 0x71 0 40M", fmt="qcow2")
    theirs = resized_by_qemu(path, "1M", tmp_path, "qcow2", shrink=True)
    diskimage.resize(str(path), "1M", fmt="qcow2", shrink=True)
    assert_clean(path)
    qemu_img("compare", "-s", "-f", "qcow2", "-F", "qcow2", path, theirs)
    ours_size, theirs_size = os.path.getsize(str(path)), os.path.getsize(str(theirs))
    # the file ends after its last used cluster, as qemu-img leaves it (a few clusters of margin)
    margin = 4 * 65536
    assert ours_size <= theirs_size + margin, (ours_size, theirs_size)
    assert os.stat(str(path)).st_blocks * 512 <= os.stat(str(theirs)).st_blocks * 512 + margin
    assert qemu_img_json("check", path)["image-end-offset"] <= ours_size


def test_qcow2_preallocated_grow_killed_keeps_the_old_size_and_a_rerun_completes_it(tmp_path):
    path = str(tmp_path / "disk.qcow2")
    qemu_img("create", "-f", "qcow2", path, "1M")
    # A process killed (SIGKILL: no undo, no flush) in the middle of the preallocation.
    child = (
        "import os, signal, sys\n"
        "from ansible_collections.kvm.storage.plugins.module_utils import diskimage\n"
        "from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.qcow2 import Qcow2Driver\n"
        "def killed(self, mode, first_cluster=0):\n"
        "    self._file.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "Qcow2Driver._preallocate = killed\n"
        "diskimage.resize(sys.argv[1], '8M', fmt='qcow2', preallocation='full')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    proc = subprocess.run([sys.executable, "-c", child, path], env=env, check=False)
    assert proc.returncode == -9
    # The header still says the old size (the new one is written last, as QEMU does)...
    assert qemu_img_json("info", path)["virtual-size"] == 1 << 20
    qemu_img("check", path)                  # (fails the test on any error it reports)
    # ... so running the resize again finds work to do and completes the preallocation.
    diskimage.resize(path, "8M", fmt="qcow2", preallocation="full")
    assert qemu_img_json("info", path)["virtual-size"] == 8 << 20
    assert os.stat(path).st_blocks * 512 >= 7 << 20
