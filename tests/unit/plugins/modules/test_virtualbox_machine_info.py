# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""virtualbox_machine_info as Ansible runs it: the same result in check mode, never a change, failures as
fail_json messages (no traceback), the sources untouched."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os
import sys

import pytest

from module_runner import run_module

from ansible_collections.kvm.storage.plugins.modules import virtualbox_machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
import make_virtualbox_machine  # noqa: E402  pylint: disable=wrong-import-position,import-error


@pytest.fixture
def machine_a(tmp_path):
    return make_virtualbox_machine.make_machine_a(str(tmp_path))


def snapshot_of(directory):
    """(path, sha256, mtime) of every file under ``directory``."""
    found = []
    for folder, _dirs, files in os.walk(directory):
        for name in sorted(files):
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found.append((path, hashlib.sha256(handle.read()).hexdigest(), os.stat(path).st_mtime_ns))
    return sorted(found)


@pytest.mark.parametrize("check_mode", [False, True])
def test_reads_machine_a_and_changes_nothing(capsys, machine_a, check_mode):
    before = snapshot_of(machine_a["machine_dir"])
    result = run_module(virtualbox_machine_info, capsys, check_mode=check_mode, path=machine_a["vbox"])
    assert result["changed"] is False
    assert "failed" not in result
    machine = result["machine"]
    assert (machine["name"], machine["cpus"], machine["memory_mib"], machine["firmware"]) == ("A", 2, 512, "efi")
    assert [nic["mac"] for nic in machine["nics"]] == machine_a["macs"]
    assert machine["hard_disks"][0]["current"]["path"] == machine_a["chain"][0]
    assert machine["hard_disks"][0]["current"]["virtual_size"] == machine_a["virtual_size"]
    assert snapshot_of(machine_a["machine_dir"]) == before


def test_images_false(capsys, machine_a):
    result = run_module(virtualbox_machine_info, capsys, path=machine_a["vbox"], images=False)
    assert "virtual_size" not in result["machine"]["hard_disks"][0]["current"]


def test_malformed_xml_fails_with_a_message(capsys, tmp_path):
    path = tmp_path / "broken.vbox"
    path.write_text("<VirtualBox xmlns='http://www.virtualbox.org/'><Machine>")
    result = run_module(virtualbox_machine_info, capsys, path=str(path))
    assert result["failed"] is True
    assert result["msg"].startswith("%s: settings file is not well-formed XML" % path)
    assert "exception" not in result and "Traceback" not in result["msg"]


def test_missing_path_fails_with_a_message(capsys, tmp_path):
    result = run_module(virtualbox_machine_info, capsys, path=str(tmp_path / "absent.ova"))
    assert result["failed"] is True
    assert result["msg"] == "%s: no such file" % (tmp_path / "absent.ova")


def test_refused_disk_is_reported_not_failed(capsys, machine_a):
    vbox = machine_a["vbox"]
    with open(vbox) as handle:
        text = handle.read()
    with open(vbox, "w") as handle:
        handle.write(text.replace('location="A.vdi"', 'location="/etc/passwd"'))
    result = run_module(virtualbox_machine_info, capsys, path=vbox)
    assert "failed" not in result
    base = result["machine"]["hard_disks"][0]["chain"][-1]
    assert base["path"] == "/etc/passwd" and "absolute paths are not allowed" in base["refused"]
    assert base["exists"] is None


def test_directory_path_fails_with_a_message(capsys, tmp_path):
    result = run_module(virtualbox_machine_info, capsys, path=str(tmp_path))
    assert result["failed"] is True
    assert result["msg"] == "%s: not a regular file" % tmp_path
