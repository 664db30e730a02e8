# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvm.storage.cloud_init_seed run as Ansible runs it: what it writes (read back by isoinfo and mtools),
idempotence, check and diff mode, the atomic replacement, refusals that leave the file as it was."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os
import stat
import sys

import pytest
import yaml

from module_runner import run_module

from ansible_collections.kvm.storage.plugins.module_utils import _cloud_init_seed
from ansible_collections.kvm.storage.plugins.modules import cloud_init_seed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from seed_tools import needs, run  # noqa: E402  pylint: disable=wrong-import-position

USER_DATA = {"hostname": "web1", "packages": ["nginx"], "users": [{"name": "ops", "sudo": "ALL=(ALL) NOPASSWD:ALL"}]}


def seed(capsys, path, check_mode=False, **args):
    return run_module(cloud_init_seed, capsys, check_mode=check_mode, path=str(path), **args)


@needs("isoinfo")
def test_an_iso_seed_holds_the_requested_files(tmp_path, capsys):
    path = tmp_path / "seed.iso"
    result = seed(capsys, path, user_data=USER_DATA, meta_data="instance-id: web1\n",
                  network_config={"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}, vendor_data="#!/bin/sh\n")
    assert result["changed"] and result["format"] == "iso9660" and result["label"] == "CIDATA"
    user_data = run("isoinfo", "-R", "-i", str(path), "-x", "/user-data")
    assert user_data.startswith(b"#cloud-config\n")
    assert yaml.safe_load(user_data) == USER_DATA
    assert run("isoinfo", "-J", "-i", str(path), "-x", "/meta-data") == b"instance-id: web1\n"
    assert yaml.safe_load(run("isoinfo", "-R", "-i", str(path), "-x", "/network-config")) == \
        {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}
    assert result["files"]["user-data"] == dict(sha256=hashlib.sha256(user_data).hexdigest(), size=len(user_data))
    assert sorted(result["files"]) == ["meta-data", "network-config", "user-data", "vendor-data"]


@needs("mtype", "mlabel")
def test_a_fat_seed_has_the_default_user_and_meta_data(tmp_path, capsys):
    path = tmp_path / "seed.img"
    result = seed(capsys, path, format="vfat", label="CiData")
    assert result["label"] == "CIDATA"
    assert run("mlabel", "-s", "-i", str(path), "::").strip() == b"Volume label is CIDATA"
    assert run("mtype", "-i", str(path), "::user-data") == b"#cloud-config\n"
    expected = "instance-id: iid-%s\n" % hashlib.sha256(str(path).encode()).hexdigest()[:16]
    assert run("mtype", "-i", str(path), "::meta-data") == expected.encode()
    assert sorted(result["files"]) == ["meta-data", "user-data"]


def test_the_default_instance_id_follows_the_path(tmp_path):
    first = _cloud_init_seed.default_instance_id(str(tmp_path / "a.iso"))
    assert first == _cloud_init_seed.default_instance_id(str(tmp_path / "a.iso"))
    assert first != _cloud_init_seed.default_instance_id(str(tmp_path / "b.iso"))


@pytest.mark.parametrize("fmt", ["iso9660", "vfat"])
def test_a_second_run_changes_nothing_and_rewrites_nothing(tmp_path, capsys, fmt):
    path = tmp_path / "seed"
    first = seed(capsys, path, format=fmt, user_data=USER_DATA)
    before = os.stat(str(path))
    for check_mode in (True, False):
        again = seed(capsys, path, check_mode=check_mode, format=fmt, user_data=USER_DATA)
        assert not again["changed"] and again["actions"] == [] and "diff" not in again
        assert again["files"] == first["files"]
    after = os.stat(str(path))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_check_mode_predicts_a_new_seed_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "seed.iso"
    predicted = seed(capsys, path, check_mode=True, user_data=USER_DATA)
    assert not path.exists() and os.listdir(str(tmp_path)) == []
    done = seed(capsys, path, user_data=USER_DATA)
    for key in ("changed", "actions", "files", "diff", "label", "format"):
        assert predicted[key] == done[key], key


def test_a_changed_seed_is_replaced_and_the_diff_names_the_files_that_change(tmp_path, capsys):
    path = tmp_path / "seed.iso"
    seed(capsys, path, user_data=USER_DATA, vendor_data="vendor\n")
    os.chmod(str(path), 0o640)
    inode = os.stat(str(path)).st_ino
    changed = dict(USER_DATA, hostname="web2")
    predicted = seed(capsys, path, check_mode=True, user_data=changed, network_config="version: 2\n")
    assert os.stat(str(path)).st_ino == inode
    done = seed(capsys, path, user_data=changed, network_config="version: 2\n")
    assert predicted["diff"] == done["diff"] and done["changed"]
    headers = [entry["before_header"] for entry in done["diff"]]
    assert headers == ["%s (seed)" % path] + ["%s:%s" % (path, name)
                                              for name in ("network-config", "user-data", "vendor-data")]
    assert done["diff"][1] == dict(before_header=headers[1], after_header=headers[1], before="", after="version: 2\n")
    assert "hostname: web1" in done["diff"][2]["before"] and "hostname: web2" in done["diff"][2]["after"]
    assert done["diff"][3]["before"] == "vendor\n" and done["diff"][3]["after"] == ""
    assert os.stat(str(path)).st_ino != inode                      # a new file, renamed into place
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o640       # with the mode of the one it replaced
    assert _cloud_init_seed.read_seed(path.read_bytes())[0][2]["network-config"] == b"version: 2\n"
    assert os.listdir(str(tmp_path)) == ["seed.iso"]


def test_a_binary_file_is_shown_by_its_digest_in_the_diff(tmp_path, capsys):
    path = tmp_path / "seed.iso"
    binary = b"\xff\x00binary"
    files = {"user-data": b"#cloud-config\n", "meta-data": b"x\n", "vendor-data": binary}
    path.write_bytes(_cloud_init_seed.build("iso9660", "CIDATA", files))
    result = seed(capsys, path, user_data="#cloud-config\n", meta_data="x\n")
    assert result["diff"][-1]["before"] == "(binary: 8 bytes, sha256 %s)\n" % hashlib.sha256(binary).hexdigest()


def test_mode_is_applied_and_reported_as_a_change_alone(tmp_path, capsys):
    path = tmp_path / "seed.iso"
    seed(capsys, path)
    result = seed(capsys, path, mode="0600")
    assert result["changed"] and result["actions"] == ["set attributes of %s" % path]
    assert stat.S_IMODE(os.stat(str(path)).st_mode) == 0o600


def test_a_file_that_is_not_a_seed_is_neither_replaced_nor_removed(tmp_path, capsys):
    path = tmp_path / "data.img"
    path.write_bytes(b"precious" * 1000)
    for state in ("present", "absent"):
        result = seed(capsys, path, state=state)
        assert result["failed"]
        assert "is not a seed this module writes" in result["msg"] and "force=true" in result["msg"]
        assert path.read_bytes() == b"precious" * 1000
    assert os.listdir(str(tmp_path)) == ["data.img"]
    assert seed(capsys, path, force=True)["changed"]
    assert _cloud_init_seed.read_seed(path.read_bytes())[0][0] == "iso9660"


@needs("genisoimage")
def test_an_iso_with_other_files_is_not_a_seed(tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    (source / "user-data").write_bytes(b"#cloud-config\n")
    (source / "install.sh").write_bytes(b"#!/bin/sh\n")
    path = tmp_path / "other.iso"
    run("genisoimage", "-quiet", "-o", str(path), "-r", "-V", "cidata", str(source))
    result = seed(capsys, path)
    assert result["failed"] and "holding other files than a seed (install.sh)" in result["msg"]


@needs("genisoimage")
def test_a_seed_written_by_genisoimage_is_replaced_without_force(tmp_path, capsys):
    source = tmp_path / "source"
    source.mkdir()
    (source / "user-data").write_bytes(b"#cloud-config\n")
    (source / "meta-data").write_bytes(b"instance-id: x\n")
    path = tmp_path / "seed.iso"
    run("genisoimage", "-quiet", "-o", str(path), "-J", "-r", "-V", "cidata", str(source))
    result = seed(capsys, path, user_data="#cloud-config\n", meta_data="instance-id: x\n")
    assert result["changed"]
    assert result["diff"][0]["before"] == "format: iso9660\nlabel: cidata\nfiles: meta-data, user-data\n"
    assert len(result["diff"]) == 1                                 # the same files: no file differs


def test_state_absent_removes_a_seed_and_check_mode_keeps_it(tmp_path, capsys):
    path = tmp_path / "seed.img"
    seed(capsys, path, format="vfat")
    predicted = seed(capsys, path, check_mode=True, state="absent")
    assert predicted["changed"] and path.exists()
    assert [entry["after"] for entry in predicted["diff"]] == ["", "", ""]
    assert seed(capsys, path, state="absent")["changed"] and not path.exists()
    assert not seed(capsys, path, state="absent")["changed"]


@pytest.mark.parametrize("args, message", [
    (dict(user_data=["a"]), "user_data: expected a string or a dictionary, found list"),
    (dict(meta_data=3), "meta_data: expected a string or a dictionary, found int"),
    (dict(label="ci-data"), "label: expected 1 to 11 of the characters"),
    (dict(label="twelve_chars"), "label: expected 1 to 11 of the characters"),
    (dict(mode="u=banana"), "mode: expected an octal mode"),
])
def test_bad_input_fails_with_a_clear_message_and_writes_nothing(tmp_path, capsys, args, message):
    result = seed(capsys, tmp_path / "seed.iso", **args)
    assert result["failed"] and message in result["msg"], result["msg"]
    assert os.listdir(str(tmp_path)) == []


def test_the_plan_writes_replaces_or_removes_only_on_a_difference(tmp_path):
    path = str(tmp_path / 'seed.iso')
    files = {'meta-data': b'instance-id: a\n', 'user-data': b'#cloud-config\n'}
    image = _cloud_init_seed.build('iso9660', 'CIDATA', files)
    wanted = ('iso9660', 'CIDATA', files)
    missing = _cloud_init_seed.Existing(path)
    assert not _cloud_init_seed.plan_seed(missing, 'iso9660').changed
    write = _cloud_init_seed.plan_seed(missing, 'iso9660', image, wanted)
    assert write.kinds() == ['write'] and write.descriptions() == ['write iso9660 seed %s' % path]
    assert (write.before, write.after) == (None, wanted) and not os.path.exists(path)
    with open(path, 'wb') as stream:
        stream.write(image)
    present = _cloud_init_seed.Existing(path)
    assert _cloud_init_seed.plan_seed(present, 'iso9660', image, wanted).actions == []
    other = _cloud_init_seed.build('iso9660', 'CIDATA', dict(files, **{'user-data': b'#cloud-config\nx: 1\n'}))
    assert _cloud_init_seed.plan_seed(present, 'iso9660', other, wanted).kinds() == ['replace']
    assert _cloud_init_seed.plan_seed(present, 'iso9660').descriptions() == ['remove %s' % path]


def test_a_missing_directory_and_a_directory_at_path_are_refused(tmp_path, capsys):
    result = seed(capsys, tmp_path / "missing" / "seed.iso")
    assert result["failed"] and "the directory %s does not exist" % (tmp_path / "missing") in result["msg"]
    result = seed(capsys, tmp_path)
    assert result["failed"] and "is a directory" in result["msg"]


def test_a_failed_write_leaves_the_previous_seed_and_no_temporary_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "seed.iso"
    seed(capsys, path, user_data="one\n")
    previous = path.read_bytes()

    def refuse(source, target):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(_cloud_init_seed.os, "rename", refuse)
    result = seed(capsys, path, user_data="two\n")
    assert result["failed"] and "No space left on device" in result["msg"]
    assert path.read_bytes() == previous
    assert os.listdir(str(tmp_path)) == ["seed.iso"]
