# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real lvm2 for unit tests: a volume group on a loop device, with the
activation stand-in of tests/integration/targets/setup_lvm first on PATH
(see docs/testing.md, "LVM without device-mapper")."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import itertools
import os
import random
import re
import shutil
import string
import subprocess
import sys

import pytest

import components

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


THIN_POOL_SEGMENT = """\
            segment1 {
                start_extent = 0
                extent_count = %(extents)d

                type = "thin-pool"
                metadata = "%(pool)s_tmeta"
                pool = "%(pool)s_tdata"
                transaction_id = %(transaction)d
                chunk_size = 128
                discards = "passdown"
                zero_new_blocks = %(zero)d
            }
"""
THIN_VOLUME = """\
        %(name)s {
            id = "%(uuid)s"
            status = ["READ", "WRITE", "VISIBLE"]
            flags = []
            creation_time = 1700000000
            creation_host = "kvmstorage"
            segment_count = 1

            segment1 {
                start_extent = 0
                extent_count = %(extents)d

                type = "thin"
                thin_pool = "%(pool)s"
                transaction_id = 0
                device_id = 1
            }
        }

"""


def lvm_uuid():
    """A random id in lvm2's form (6-4-4-4-4-4-6 letters and digits)."""
    alphabet = string.ascii_letters + string.digits
    return "-".join("".join(random.choice(alphabet) for dummy in range(n)) for n in (6, 4, 4, 4, 4, 4, 6))


def _lv_block(text, name):
    """(start, end) of the metadata block of LV ``name`` in vgcfgbackup text."""
    start = text.index("\t\t%s {\n" % name)
    end = text.index("\n\t\t}\n", start) + len("\n\t\t}\n")
    return start, end


def make_thin_pool(testbed, pool, zero=True, thin_volume=None, tmp_dir=None):
    """A thin pool ``pool`` (16 MiB, 1 MiB extents) and optionally a thin volume in it, in the VG's metadata
    only: lvm2 cannot create them without device-mapper, so the metadata is written with vgcfgrestore."""
    testbed.lvm("lvcreate", "-n", pool + "data", "-L", "16m", testbed.vg)
    testbed.lvm("lvcreate", "-n", pool + "meta", "-L", "4m", testbed.vg)
    backup = os.path.join(tmp_dir, "vg.txt")
    config = ["--config", "global{activation=0}"]
    testbed.lvm("/sbin/vgcfgbackup", *(config + ["-f", backup, testbed.vg]))
    with open(backup) as stream:
        text = stream.read()
    start, end = _lv_block(text, pool + "data")
    data = text[start:end]
    head, tail = data.split("\t\t\tsegment1 {", 1)
    # The pool gets a new id; the data LV keeps its own as the hidden <pool>_tdata.
    pool_block = re.sub(r'id = "[^"]+"', 'id = "%s"' % lvm_uuid(), head.replace(pool + "data {", pool + " {"), count=1)
    pool_block += THIN_POOL_SEGMENT % dict(extents=16, pool=pool, transaction=1 if thin_volume else 0,
                                           zero=1 if zero else 0) + "\t\t}\n"
    hidden = data.replace(pool + "data {", pool + "_tdata {").replace('"READ", "WRITE", "VISIBLE"', '"READ", "WRITE"')
    text = text[:start] + pool_block + "\n" + hidden + text[end:]
    start, end = _lv_block(text, pool + "meta")
    meta = text[start:end].replace(pool + "meta {", pool + "_tmeta {")
    meta = meta.replace('"READ", "WRITE", "VISIBLE"', '"READ", "WRITE"')
    if thin_volume:
        meta += "\n" + THIN_VOLUME % dict(name=thin_volume, uuid=lvm_uuid(), extents=8, pool=pool)
    text = text[:start] + meta + text[end:]
    with open(backup, "w") as stream:
        stream.write(text)
    testbed.lvm("/sbin/vgcfgrestore", *(config + ["--force", "-f", backup, testbed.vg]))


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
        components.missing("lvm2", "needs root, /sbin/lvcreate and losetup")
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
