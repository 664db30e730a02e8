# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real lvm2 for unit tests: a volume group on a loop device, with the
activation stand-in of tests/integration/targets/setup_lvm first on PATH
(see DESIGN.md, "Real components in tests")."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import itertools
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
STANDIN = os.path.join(ROOT, "tests", "integration", "targets", "setup_lvm", "files", "kvmstorage_lvm_standin.py")
PREFIX = "kvmstorage_it_lvm"
_VG_NUMBERS = itertools.count(1)


def lvm2_available():
    return os.geteuid() == 0 and os.path.exists("/sbin/lvcreate") and shutil.which("losetup") is not None


class FakeModule:
    """What the backend uses of AnsibleModule: params, check_mode, get_bin_path, run_command."""

    def __init__(self, params, check_mode=False):
        self.params = params
        self.check_mode = check_mode
        self.commands = []

    def get_bin_path(self, name, required=False):
        return shutil.which(name)

    def run_command(self, args, environ_update=None):
        env = dict(os.environ)
        env.update(environ_update or {})
        self.commands.append(list(args))
        proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


class Testbed:
    def __init__(self, vg, bindir, pv_file):
        self.vg = vg
        self.bindir = bindir
        self.pv_file = pv_file

    def lvm(self, *args):
        """Run an lvm2 command through the stand-in; stdout."""
        proc = subprocess.run(list(args), env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              check=False)
        if proc.returncode != 0:
            raise AssertionError("%s failed: %s" % (" ".join(args), proc.stderr.decode("utf-8", "replace")))
        return proc.stdout.decode("utf-8", "replace")


def standin(*args):
    proc = subprocess.run([sys.executable, STANDIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=False)
    if proc.returncode != 0:
        raise AssertionError("stand-in %s failed: %s" % (" ".join(args), proc.stderr.decode("utf-8", "replace")))
    return proc.stdout.decode("utf-8", "replace")


@pytest.fixture
def lvm_testbed(tmp_path, monkeypatch):
    """A fresh VG (kvmstorage_it_lvm_u<pid>_<n>, 1 MiB extents) on a loop device; removed afterwards."""
    if not lvm2_available():
        pytest.skip("needs root, lvm2 and losetup")
    bindir = str(tmp_path / "bin")
    standin("install", bindir)
    vg = "%s_u%d_%d" % (PREFIX, os.getpid(), next(_VG_NUMBERS))
    pv_file = str(tmp_path / "pv.img")
    standin("create-vg", vg, pv_file, "96")
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("LVM_SUPPRESS_FD_WARNINGS", "1")
    try:
        yield Testbed(vg, bindir, pv_file)
    finally:
        standin("destroy-vg", vg, pv_file)
