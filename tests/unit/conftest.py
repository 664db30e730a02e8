# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make this checkout importable as ansible_collections.kvm.storage.

A symlink in a private temporary directory points at the checkout, so the
tests always import the code under test, whatever is installed elsewhere.

With CI=true, a test skipped because a component is missing fails (components.py).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TMP = tempfile.mkdtemp(prefix="kvm-storage-import-")
os.makedirs(os.path.join(_TMP, "ansible_collections", "kvm"))
os.symlink(_ROOT, os.path.join(_TMP, "ansible_collections", "kvm", "storage"))
sys.path.insert(0, _TMP)
atexit.register(shutil.rmtree, _TMP, True)
for _name in list(sys.modules):
    if _name == "ansible_collections" or _name.startswith("ansible_collections.kvm"):
        del sys.modules[_name]

# qemu_tools (the oracle: qemu-img and qemu-io) serves the module tests too.
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins", "module_utils", "diskimage"))
# components (skips for a missing component) serves every test.
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import components  # noqa: E402  pylint: disable=wrong-import-position


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
    """With CI=true, a test skipped for a missing component fails (components.py says why)."""
    outcome = yield
    components.point_at_the_test(outcome.get_result(), item)
    components.fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # pylint: disable=unused-argument
    """The same for a whole module skipped while it was collected."""
    outcome = yield
    components.fail_in_ci(outcome.get_result())


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs mounted inside the test's temp dir (root only), unmounted afterwards: a file system to fill."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        components.missing("tmpfs mount", "mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mount_point)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    if proc.returncode != 0:
        components.missing("tmpfs mount", proc.stdout.strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
