# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kill -9 during the image library's writing operations (tests/crash, issue #15, docs/crash-safety.md).

A bounded pass of the kill driver: a few seeded kills per operation and format, on smaller images than
``make crash`` uses; any outcome other than absent / complete / before / after / partial / repaired fails.
Beside it, the two library behaviours the driver found missing, each shown on its own: temporary images a
killed convert/create left behind go on the next run, and the qcow2 snapshot operations' refcount window is
repaired by the next writable open.  Budget: under 120 s with ``pytest -n 2``.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import components
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile

CRASH = pathlib.Path(__file__).resolve().parents[2] / "crash"
sys.path.insert(0, str(CRASH))
import crash_kill  # noqa: E402  pylint: disable=wrong-import-position,import-error

KILLS = 3           # per scenario
SEED = 15
SIZE = 16 << 20     # images of 16 MiB (make crash: 64 MiB)

pytestmark = components.needs(shutil.which("qemu-img") and shutil.which("qemu-io"), "qemu-img", "the oracle")


@pytest.mark.parametrize("name", list(crash_kill.scenarios()))
def test_a_kill_leaves_the_image_absent_complete_before_or_after(name, tmp_path):
    crash_kill.set_size(SIZE)
    try:
        counts, failures, dummy = crash_kill.run_scenario(crash_kill.scenarios()[name], KILLS, SEED, str(tmp_path),
                                                          timing_runs=1)
    finally:
        crash_kill.set_size(64 << 20)
    assert not failures, "\n".join("kill at %.2f ms: %s" % (delay * 1000, detail) for delay, dummy, detail in failures)
    assert sum(counts.values()) == KILLS


def test_delays_are_seeded_and_some_fall_in_the_first_10_ms():
    first = crash_kill.delays("qcow2/convert", 0.5, 8, SEED)
    assert first == crash_kill.delays("qcow2/convert", 0.5, 8, SEED)
    assert first != crash_kill.delays("qcow2/convert", 0.5, 8, SEED + 1)
    assert all(0 <= d <= 0.5 for d in first)
    assert sum(d <= crash_kill.EARLY for d in first) >= 2


# ------------------------------------------------------- temporary images left behind by a killed run
def _stale(directory, name, tag):
    path = directory / (".%s.%s.tmp" % (name, tag))
    path.write_bytes(b"QFI\xfb" + bytes(4092))
    return path


@pytest.mark.parametrize("operation", ["create", "convert"])
def test_the_next_run_removes_temporary_images_a_killed_run_left(operation, tmp_path):
    stale = _stale(tmp_path, "disk.qcow2", "0a1b2c")
    other = _stale(tmp_path, "other.qcow2", "0a1b2c")     # another destination's: not touched
    lookalike = tmp_path / ".disk.qcow2.notours.tmp"
    lookalike.write_bytes(b"x")
    if operation == "create":
        diskimage.create(str(tmp_path / "disk.qcow2"), "qcow2", "1M")
    else:
        source = tmp_path / "source.raw"
        source.write_bytes(b"\x01" * 65536)
        diskimage.convert(str(source), str(tmp_path / "disk.qcow2"), "qcow2")
    assert not stale.exists()
    assert other.exists() and lookalike.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".disk.qcow2.")) == [lookalike.name]


def test_a_run_refused_because_the_image_exists_still_removes_the_temporary_name_a_killed_publish_left(tmp_path):
    # killed between link(temporary, destination) and unlink(temporary): both names, one file
    destination = tmp_path / "disk.qcow2"
    diskimage.create(str(destination), "qcow2", "1M")
    stale = tmp_path / ".disk.qcow2.abcdef.tmp"
    os.link(str(destination), str(stale))
    with pytest.raises(diskimage.InvalidOptionError, match="already exists"):
        diskimage.create(str(destination), "qcow2", "1M")
    assert not stale.exists() and destination.exists()


def test_a_temporary_image_in_use_by_a_run_in_progress_is_kept(tmp_path):
    held = _stale(tmp_path, "disk.qcow2", "d4e5f6")
    holder = ImageFile(str(held), writable=True)     # its own open file description: QEMU's locks held
    try:
        diskimage.create(str(tmp_path / "disk.qcow2"), "qcow2", "1M")
        assert held.exists()
    finally:
        holder.close()


# ------------------------------------------------------------------- the qcow2 snapshot refcount window
# The child runs the operation until it clears or sets the COPIED flags (_fix_copied): the refcounts are
# already changed there, so qemu-img check finds OFLAG_COPIED errors.  It dies there as a SIGKILL would.
WINDOW_CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_snapshot
qcow2_snapshot.Qcow2SnapshotMixin._fix_copied = lambda self: os._exit(9)
getattr(diskimage, sys.argv[2])(sys.argv[3], sys.argv[4])
"""


def _qemu_check(path):
    proc = subprocess.run(["qemu-img", "check", "--output=json", "-f", "qcow2", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("operation, name, snapshots_after", [
    ("snapshot_create", "s1", ["s0"]),        # killed before its table entry: not created
    ("snapshot_apply", "s0", ["s0"]),
    ("snapshot_delete", "s0", []),            # killed after the new table: deleted
])
def test_the_next_writable_open_repairs_a_snapshot_operation_killed_in_its_refcount_window(
        operation, name, snapshots_after, tmp_path):
    crash_kill.set_size(4 << 20)
    try:
        crash_kill._setup_snapshots(str(tmp_path))  # pylint: disable=protected-access
    finally:
        crash_kill.set_size(64 << 20)
    path = tmp_path / "disk.qcow2"
    content = {s: crash_kill.raw_digest(str(path), "qcow2", str(tmp_path), s) for s in ["s0"]}
    active = crash_kill.raw_digest(str(path), "qcow2", str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", WINDOW_CHILD, crash_kill.import_root(), operation, str(path), name],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode == 9, proc.stderr
    found = _qemu_check(path)
    assert found.get("corruptions", 0) > 0, found        # the window was hit
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], stdout=subprocess.PIPE,
                                     check=True).stdout)
    assert info["dirty-flag"] is True

    diskimage.open_image(str(path), readonly=False).driver.close()

    repaired = _qemu_check(path)
    assert repaired.get("corruptions", 0) == 0 and repaired.get("check-errors", 0) == 0 \
        and repaired.get("leaks", 0) == 0, repaired
    assert [s["name"] for s in diskimage.snapshot_list(str(path))] == snapshots_after
    expected_active = content["s0"] if operation == "snapshot_apply" else active
    assert crash_kill.raw_digest(str(path), "qcow2", str(tmp_path)) == expected_active
    for snapshot in snapshots_after:
        assert crash_kill.raw_digest(str(path), "qcow2", str(tmp_path), snapshot) == content[snapshot]


def test_snapshot_operations_leave_the_dirty_bit_clear(tmp_path):
    crash_kill.set_size(4 << 20)
    try:
        crash_kill._setup_snapshots(str(tmp_path))  # pylint: disable=protected-access
    finally:
        crash_kill.set_size(64 << 20)
    path = str(tmp_path / "disk.qcow2")
    for operation, name in (("snapshot_create", "s1"), ("snapshot_apply", "s0"), ("snapshot_delete", "s1")):
        getattr(diskimage, operation)(path, name)
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", path], stdout=subprocess.PIPE,
                                         check=True).stdout)
        assert info["dirty-flag"] is False, operation
        assert _qemu_check(path).get("corruptions", 0) == 0
    assert os.path.exists(path)
