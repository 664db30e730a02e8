# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/support/make_virtualbox_machine.py against the oracle: what it writes is what it says it wrote.
qemu-img reads the base VDI, the streamOptimized VMDKs and the GPT (it refuses differencing VDIs, so the
differencing layers are checked through the sha256 of each state in test_virtualbox.py); the script runs
standalone and writes the same files twice."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile

import components
from qemu_tools import qemu_img, qemu_img_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
SCRIPT = os.path.join(ROOT, "tests", "support", "make_virtualbox_machine.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import make_virtualbox_machine  # noqa: E402  pylint: disable=wrong-import-position,import-error

needs_qemu_img = components.needs(shutil.which("qemu-img"), "qemu-img")


def raw_sha256(tmp_path, image, fmt):
    raw = str(tmp_path / "out.raw")
    qemu_img("convert", "-f", fmt, "-O", "raw", image, raw)
    with open(raw, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def run_script(directory):
    proc = subprocess.run([sys.executable, SCRIPT, str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=True)
    return json.loads(proc.stdout)


@needs_qemu_img
def test_machine_a_base_vdi_is_what_the_first_snapshot_saw(tmp_path):
    a = run_script(tmp_path / "fx")["A"]
    base = a["chain"][-1]
    assert qemu_img_json("check", "-f", "vdi", base)["check-errors"] == 0
    assert qemu_img_json("info", "-f", "vdi", base)["virtual-size"] == a["virtual_size"]
    assert raw_sha256(tmp_path, base, "vdi") == a["sha256"]["first"]


def test_machine_a_differencing_vdis_link_to_their_parents(tmp_path):
    """VDICore.h: a differencing image (type 4) names its parent by the parent's image UUID."""
    a = make_virtualbox_machine.make_machine_a(str(tmp_path))
    headers = []
    for path in a["chain"]:
        with open(path, "rb") as handle:
            raw = handle.read(512)
        image_type = struct.unpack_from("<I", raw, 76)[0]
        uuids = [raw[392 + 16 * i:408 + 16 * i] for i in range(4)]    # create, modify, linkage, parent modify
        headers.append((image_type, uuids))
    assert [h[0] for h in headers] == [4, 4, 1]
    for (child_type, child), (parent_type, parent) in zip(headers, headers[1:]):
        assert child[2] == parent[0] and child[3] == parent[1]
    assert headers[-1][1][2] == bytes(16)
    assert [str(make_virtualbox_machine.uuid.UUID(bytes_le=h[1][0])) for h in headers] == a["disk_uuids"]


@needs_qemu_img
def test_machine_b_is_an_ova_as_virtualbox_exports_it(tmp_path):
    b = run_script(tmp_path / "fx")["B"]
    with tarfile.open(b["ova"]) as tar:
        assert tar.getnames() == ["B.ovf", b["disk_member"], "B.mf"]
        tar.extract(b["disk_member"], str(tmp_path))
        manifest = tar.extractfile("B.mf").read().decode()
    disk = str(tmp_path / b["disk_member"])
    with open(disk, "rb") as handle:
        assert "SHA256 (%s) = %s" % (b["disk_member"], hashlib.sha256(handle.read()).hexdigest()) in manifest
    info = qemu_img_json("info", "-f", "vmdk", disk)
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert info["virtual-size"] == b["virtual_size"]
    assert raw_sha256(tmp_path, disk, "vmdk") == b["sha256"]["current"]


@needs_qemu_img
def test_efi_ovf_disk_holds_a_gpt_with_an_esp(tmp_path):
    efi = run_script(tmp_path / "fx")["efi_ovf"]
    assert raw_sha256(tmp_path, efi["disk"], "vmdk") == efi["sha256"]["current"]
    with open(str(tmp_path / "out.raw"), "rb") as handle:
        disk = handle.read()
    assert disk[512:520] == b"EFI PART" and disk[510:512] == b"\x55\xaa"
    assert disk[1024:1040] == make_virtualbox_machine.ESP_TYPE.bytes_le


def test_the_same_call_writes_the_same_files(tmp_path):
    first = make_virtualbox_machine.make_all(str(tmp_path / "one"))
    second = make_virtualbox_machine.make_all(str(tmp_path / "two"))
    assert json.dumps(first["A"]["sha256"]) == json.dumps(second["A"]["sha256"])
    for name in ("A/A.vdi", "A/A.vbox", "B.ova", "efi/efi-disk1.vmdk"):
        with open(str(tmp_path / "one" / name), "rb") as one, open(str(tmp_path / "two" / name), "rb") as two:
            assert one.read() == two.read(), name


def test_command_line_writes_machine_a_alone_with_its_name_and_snapshots(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--machine-a-only", "--name", "demo", "--snapshots", "1",
                           str(tmp_path / "fx")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=True)
    written = json.loads(proc.stdout)
    assert list(written) == ["demo"]
    assert sorted(os.listdir(str(tmp_path / "fx"))) == ["demo"]
    assert os.path.isfile(str(tmp_path / "fx" / "demo" / "demo.vbox"))
    assert len(written["demo"]["chain"]) == 2  # one snapshot: one differencing VDI on the base
