# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_virtualbox: a VirtualBox machine read from its files, field by field (machines A and B of
tests/support/make_virtualbox_machine.py, VirtualBox's own GOAD-DC01.vbox and a Vagrant box it exported,
handwritten settings of the innotek and 1.20 layouts, an rasd-only OVF) and the hostile cases."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import gzip
import hashlib
import os
import shutil
import sys

import pytest

import components
from qemu_tools import qemu_img

from ansible_collections.kvm.storage.plugins.module_utils import _virtualbox
from ansible_collections.kvm.storage.plugins.module_utils._virtualbox import VirtualBoxError, read_machine
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import open_image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
import make_virtualbox_machine  # noqa: E402  pylint: disable=wrong-import-position,import-error

GOAD = os.path.join(HERE, "samples", "vbox", "GOAD-DC01.vbox")
MUTATE_BOX = os.path.join(HERE, "diskimage", "samples", "ova", "mutate-test.box")
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("vbox"))
    return make_virtualbox_machine.make_all(directory)


def image_sha256(path, allow_dirs=None):
    digest = hashlib.sha256()
    with open_image(path, allow_dirs=allow_dirs) as image:
        for offset in range(0, image.virtual_size, MIB):
            digest.update(image.read(offset, min(MIB, image.virtual_size - offset)))
    return digest.hexdigest()


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------ machine A
def test_machine_a_hardware(fixtures):
    a = fixtures["A"]
    info = read_machine(a["vbox"])
    assert info["source"] == "vbox"
    assert info["folder"] == a["machine_dir"]
    assert info["settings_version"] == "1.19-linux"
    assert info["name"] == "A"
    assert info["uuid"] == a["uuid"]
    assert info["os_type"] == "Debian_64"
    assert info["cpus"] == 2
    assert info["memory_mib"] == 512
    assert (info["firmware"], info["firmware_type"], info["firmware_source"]) == ("efi", "EFI", "settings")
    assert info["chipset"] == "PIIX3"      # no Chipset element: VirtualBox's default
    assert info["rtc"] == "utc"
    assert info["boot_order"] == ["HardDisk", "DVD"]


def test_machine_a_nics_keep_their_macs_case_and_attachments(fixtures):
    nics = read_machine(fixtures["A"]["vbox"])["nics"]
    assert [nic["mac"] for nic in nics] == ["08:00:27:A1:B2:C3", "08:00:27:d4:e5:f6"]
    assert [(nic["slot"], nic["enabled"], nic["type"], nic["attachment"], nic["network"]) for nic in nics] == [
        (0, True, "82540EM", "NAT", None), (1, True, "virtio", "Bridged", "eth0")]


def test_machine_a_storage_controllers_and_attachments(fixtures):
    a = fixtures["A"]
    controllers = read_machine(a["vbox"])["storage_controllers"]
    assert [(c["name"], c["type"], c["bus"], c["port_count"], c["use_host_io_cache"]) for c in controllers] == [
        ("SATA", "AHCI", "SATA", 2, False)]
    disk, dvd = controllers[0]["attachments"]
    assert (disk["type"], disk["port"], disk["device"], disk["medium_uuid"]) == ("HardDisk", 0, 0, a["disk_uuids"][0])
    assert (dvd["type"], dvd["port"], dvd["device"], dvd["medium_uuid"]) == ("DVD", 1, 0, a["iso_uuid"])
    assert (dvd["path"], dvd["exists"], dvd["refused"]) == (a["iso"], True, None)


def test_machine_a_current_image_is_the_leaf_of_the_chain(fixtures):
    a = fixtures["A"]
    disks = read_machine(a["vbox"])["hard_disks"]
    assert len(disks) == 1
    disk = disks[0]
    assert (disk["controller"], disk["controller_type"], disk["bus"], disk["port"], disk["device"]) == (
        "SATA", "AHCI", "SATA", 0, 0)
    assert [layer["uuid"] for layer in disk["chain"]] == a["disk_uuids"]
    assert [layer["path"] for layer in disk["chain"]] == a["chain"]
    assert [layer["location"] for layer in disk["chain"]] == [
        "Snapshots/{%s}.vdi" % a["disk_uuids"][0], "Snapshots/{%s}.vdi" % a["disk_uuids"][1], "A.vdi"]
    assert all(layer["exists"] and layer["refused"] is None for layer in disk["chain"])
    assert [layer["type"] for layer in disk["chain"]] == ["Differencing", "Differencing", "Normal"]
    assert disk["current"]["path"] == a["chain"][0]
    assert disk["current"]["virtual_size"] == a["virtual_size"]
    assert disk["current"]["image_format"] == "vdi"
    assert disk["image_chain"] == a["chain"]


def test_machine_a_current_image_reads_the_current_state(fixtures):
    """The image reported as current, read with its chain, is the disk the current state sees; each
    snapshot's image is the disk that snapshot saw (known content per layer)."""
    a = fixtures["A"]
    disk = read_machine(a["vbox"])["hard_disks"][0]
    assert image_sha256(disk["current"]["path"]) == a["sha256"]["current"]
    assert image_sha256(disk["chain"][1]["path"]) == a["sha256"]["second"]
    assert image_sha256(disk["chain"][2]["path"]) == a["sha256"]["first"]


def test_machine_a_snapshot_tree_and_notes(fixtures):
    a = fixtures["A"]
    info = read_machine(a["vbox"])
    assert info["current_snapshot"] == {"uuid": a["current_snapshot"], "name": "second"}
    (first,) = info["snapshots"]
    assert (first["uuid"], first["name"], first["current"]) == (a["snapshots"]["first"], "first", False)
    (second,) = first["children"]
    assert (second["uuid"], second["name"], second["current"], second["children"]) == (
        a["snapshots"]["second"], "second", True, [])
    assert any("shared folder 'share'" in note for note in info["notes"])
    assert any(note.startswith("audio (HDA") for note in info["notes"])
    assert any(note.startswith("the EFI variables are not carried") for note in info["notes"])
    assert len(info["notes"]) == 3


def test_images_false_opens_nothing(fixtures):
    disk = read_machine(fixtures["A"]["vbox"], images=False)["hard_disks"][0]
    assert "virtual_size" not in disk["current"] and "image_chain" not in disk


# ------------------------------------------------------------------------------------------ machine B
def test_machine_b_ova_with_vbox_machine(fixtures):
    b = fixtures["B"]
    info = read_machine(b["ova"])
    assert (info["source"], info["settings_version"], info["name"], info["uuid"], info["os_type"]) == (
        "ova", "1.19-linux", "B", b["uuid"], "Debian_64")
    assert (info["cpus"], info["memory_mib"], info["firmware"], info["firmware_source"]) == (1, 256, "bios", "default")
    assert info["rtc"] == "local"            # no RTC element: local time, VirtualBox's default
    assert [(n["slot"], n["mac"], n["type"], n["attachment"]) for n in info["nics"]] == [
        (0, "08:00:27:B0:B0:B0", "Am79C973", "NAT")]
    (ide,) = info["storage_controllers"]
    assert (ide["name"], ide["type"], ide["bus"]) == ("IDE", "PIIX4", "IDE")
    assert [(x["type"], x["port"], x["device"], x["empty"]) for x in ide["attachments"]] == [
        ("HardDisk", 0, 0, False), ("DVD", 1, 0, True)]
    (disk,) = info["hard_disks"]
    assert disk["uuid"] == b["disk_uuids"][0]
    current = disk["current"]
    assert (current["member"], current["exists"], current["format"]) == (b["disk_member"], True, "VMDK")
    assert current["path"] == b["ova"] + "/" + b["disk_member"]
    assert (current["virtual_size"], current["image_format"]) == (b["virtual_size"], "vmdk")
    assert info["snapshots"] == [] and info["current_snapshot"] is None


def test_machine_b_disk_reads_its_content_inside_the_ova(fixtures):
    b = fixtures["B"]
    assert image_sha256(b["ova"]) == b["sha256"]["current"]


# ------------------------------------------------------------------------------------- VirtualBox's own
def test_goad_dc01_parses_with_its_disks_reported_absent(tmp_path):
    vbox = str(tmp_path / "GOAD-DC01.vbox")
    shutil.copy(GOAD, vbox)
    info = read_machine(vbox)
    assert (info["name"], info["uuid"], info["os_type"], info["cpus"], info["memory_mib"]) == (
        "GOAD-DC01", "a6277950-3d1b-45d3-b2fd-dc1f385027e1", "Windows2016_64", 2, 3000)
    assert (info["firmware"], info["rtc"], info["boot_order"]) == ("bios", "utc", ["HardDisk", "DVD"])
    assert [(n["mac"], n["attachment"], n["network"]) for n in info["nics"]] == [
        ("08:00:27:7A:A2:FC", "NAT", None), ("08:00:27:8C:C8:21", "HostOnly", "vboxnet0")]
    (disk,) = info["hard_disks"]
    assert (disk["controller_type"], disk["bus"]) == ("PIIX4", "IDE")
    # The current state attaches e6800503, child of 3c72ec80, child of the base 0898f36f (not the other branch).
    assert [layer["uuid"][:8] for layer in disk["chain"]] == ["e6800503", "3c72ec80", "0898f36f"]
    assert disk["chain"][-1]["path"] == str(tmp_path / "WindowsServer2019-disk001.vmdk")
    assert all(layer["exists"] is False and layer["refused"] is None for layer in disk["chain"])
    assert "image_error" not in disk
    assert sum("is missing" in note for note in info["notes"]) == 3
    assert info["current_snapshot"]["uuid"] == "264ccd7e-9ffd-45ba-bd0e-4e1968d3355a"
    assert [s["name"] for s in info["snapshots"]] == ["push_1766163705_7292"]
    assert info["snapshots"][0]["children"][0]["current"] is True
    assert any("port forwarding rules (3)" in note for note in info["notes"])


def test_vagrant_box_gzip_is_read_for_its_ovf_and_its_disk_not_opened(tmp_path):
    box = str(tmp_path / "mutate-test.box")
    shutil.copy(MUTATE_BOX, box)
    info = read_machine(box)
    assert (info["source"], info["name"], info["settings_version"], info["cpus"], info["memory_mib"]) == (
        "ova", "mutate-test", "1.12-linux", 1, 256)
    assert info["boot_order"] == ["Floppy", "DVD", "HardDisk"]
    assert [c["type"] for c in info["storage_controllers"]] == ["PIIX4", "AHCI"]   # under Machine, 1.12
    assert len(info["nics"]) == 8 and info["nics"][0]["mac"] == "08:00:27:55:B8:8D"
    assert [n["enabled"] for n in info["nics"]] == [True] + [False] * 7
    (disk,) = info["hard_disks"]
    assert (disk["bus"], disk["current"]["member"], disk["current"]["exists"]) == ("SATA", "box-disk1.vmdk", True)
    assert "gzip-compressed" in disk["image_error"]
    assert any("USB controller" in note for note in info["notes"])
    # Decompressed to a plain tar, the same box is an OVA whose disk is read in place.
    ova = str(tmp_path / "mutate-test.ova")
    with gzip.open(box, "rb") as source, open(ova, "wb") as target:
        shutil.copyfileobj(source, target)
    disk = read_machine(ova)["hard_disks"][0]
    assert (disk["current"]["virtual_size"], disk["current"]["image_format"]) == (4 * MIB, "vmdk")


# ----------------------------------------------------------------------------------- handwritten layouts
INNOTEK = """<?xml version="1.0"?>
<VirtualBox xmlns="http://www.innotek.de/VirtualBox-settings" version="1.3-linux">
  <Machine uuid="{11111111-2222-3333-4444-555555555555}" name="old" OSType="WindowsXP">
    <Hardware>
      <CPU><HardwareVirtEx enabled="false"/></CPU>
      <Memory RAMSize="192"/>
      <BIOS><IDEController type="PIIX4"/></BIOS>
      <DVDDrive passthrough="false"><HostDrive src="/dev/cdrom"/></DVDDrive>
      <FloppyDrive enabled="false"/>
      <USBController enabled="true" enabledEhci="false"/>
      <Network>
        <Adapter slot="0" enabled="true" MACAddress="0800271A2B3C" cable="true"><HostInterface name="eth1"/></Adapter>
      </Network>
    </Hardware>
    <HardDiskAttachments>
      <HardDiskAttachment hardDisk="{aaaaaaaa-0000-0000-0000-000000000001}" bus="IDE" channel="0" device="1"/>
    </HardDiskAttachments>
  </Machine>
</VirtualBox>
"""


def test_innotek_namespace_and_defaults(tmp_path):
    info = read_machine(write(tmp_path, "old.xml", INNOTEK))
    assert (info["name"], info["cpus"], info["memory_mib"], info["firmware"], info["rtc"]) == (
        "old", 1, 192, "bios", "local")
    assert info["boot_order"] == ["Floppy", "DVD", "HardDisk"]      # no Boot element: VirtualBox's order
    (nic,) = info["nics"]
    assert (nic["mac"], nic["type"], nic["attachment"], nic["network"]) == (
        "08:00:27:1A:2B:3C", "Am79C973", "Bridged", "eth1")   # no type: the schema's Am79C973
    (ide,) = info["storage_controllers"]
    assert (ide["type"], ide["bus"]) == ("PIIX4", "IDE")
    disk, dvd = ide["attachments"]
    assert (disk["type"], disk["port"], disk["device"], disk["unregistered"]) == ("HardDisk", 0, 1, True)
    assert (dvd["type"], dvd["host_drive"]) == ("DVD", "/dev/cdrom")
    assert info["hard_disks"][0]["current"] is None
    assert any("not in this file's media registry" in note for note in info["notes"])
    assert any("host drive /dev/cdrom" in note for note in info["notes"])
    assert any("USB controller" in note for note in info["notes"])


PLATFORM_120 = """<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.20-linux">
  <Machine uuid="{22222222-2222-3333-4444-555555555555}" name="new" OSType="Ubuntu_64">
    <MediaRegistry>
      <HardDisks>
        <HardDisk uuid="{bbbbbbbb-0000-0000-0000-000000000001}" location="new.vdi" format="VDI" type="Normal"/>
      </HardDisks>
    </MediaRegistry>
    <Hardware>
      <Memory RAMSize="4096"/>
      <Firmware type="EFI64"><NVRAM path="new.nvram"/></Firmware>
      <Network>
        <Adapter slot="0" enabled="true" MACAddress="080027ABCDEF" type="virtio"><NATNetwork name="natnet1"/></Adapter>
      </Network>
      <StorageControllers>
        <StorageController name="NVMe" type="NVMe" PortCount="1">
          <AttachedDevice type="HardDisk" port="0" device="0"><Image uuid="{bbbbbbbb-0000-0000-0000-000000000001}"/></AttachedDevice>
        </StorageController>
      </StorageControllers>
    </Hardware>
    <Platform architecture="x86">
      <Chipset type="ICH9"/>
      <RTC localOrUTC="UTC"/>
      <CPU count="4"/>
    </Platform>
  </Machine>
</VirtualBox>
"""


def test_settings_1_20_platform_layout(tmp_path):
    info = read_machine(write(tmp_path, "new.vbox", PLATFORM_120))
    assert (info["cpus"], info["memory_mib"], info["chipset"], info["rtc"]) == (4, 4096, "ICH9", "utc")
    assert (info["firmware"], info["firmware_type"]) == ("efi", "EFI64")
    assert info["nics"][0]["attachment"] == "NATNetwork" and info["nics"][0]["network"] == "natnet1"
    assert any(note.startswith("the EFI variables (new.nvram) are not carried") for note in info["notes"])
    (nvme,) = info["storage_controllers"]
    assert (nvme["type"], nvme["bus"], nvme["bootable"], nvme["use_host_io_cache"]) == ("NVMe", "PCIe", True, True)
    (disk,) = info["hard_disks"]
    assert (disk["current"]["path"], disk["current"]["exists"]) == (str(tmp_path / "new.vdi"), False)


def test_platform_under_hardware_is_read_too(tmp_path):
    text = PLATFORM_120.replace("    </Hardware>\n    <Platform", "    <Platform").replace(
        "    </Platform>\n", "    </Platform>\n    </Hardware>\n")
    assert text.index("<Platform") < text.index("</Hardware>")
    info = read_machine(write(tmp_path, "new.vbox", text))
    assert (info["cpus"], info["chipset"], info["rtc"]) == (4, "ICH9", "utc")


def test_rasd_only_ovf_detects_efi_from_the_disk(fixtures):
    efi = fixtures["efi_ovf"]
    info = read_machine(efi["ovf"])
    assert (info["source"], info["name"], info["uuid"], info["settings_version"]) == ("ovf", "efi", None, None)
    assert (info["cpus"], info["memory_mib"]) == (2, 1024)          # memory in "byte * 2^20"
    assert (info["firmware"], info["firmware_source"]) == ("efi", "disk")
    assert [(n["mac"], n["type"], n["network"]) for n in info["nics"]] == [("00:50:56:aa:bb:cc", "82540EM",
                                                                            "VM Network")]
    (scsi,) = info["storage_controllers"]
    assert (scsi["type"], scsi["bus"]) == ("LsiLogic", "SCSI")
    (disk,) = info["hard_disks"]
    assert (disk["current"]["path"], disk["current"]["exists"], disk["current"]["virtual_size"]) == (
        efi["disk"], True, efi["virtual_size"])
    # Without opening the disk, nothing tells EFI: BIOS, VirtualBox's default.
    assert read_machine(efi["ovf"], images=False)["firmware"] == "bios"


def test_rasd_only_ovf_without_esp_stays_bios(fixtures, tmp_path):
    efi = fixtures["efi_ovf"]
    folder = tmp_path / "plain"
    folder.mkdir()
    make_virtualbox_machine.write_stream_vmdk(str(folder / os.path.basename(efi["disk"])),
                                              bytes(efi["virtual_size"]), make_virtualbox_machine._uuid("x"))
    shutil.copy(efi["ovf"], str(folder / "efi.ovf"))
    info = read_machine(str(folder / "efi.ovf"))
    assert (info["firmware"], info["firmware_source"]) == ("bios", "default")


# ---------------------------------------------------------------------------------------- hostile input
HOSTILE = """<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">
  <Machine uuid="{33333333-2222-3333-4444-555555555555}" name="evil" OSType="Other">
    <MediaRegistry>
      <HardDisks>
        <HardDisk uuid="{cccccccc-0000-0000-0000-000000000001}" location="%s" format="VDI" type="Normal"/>
      </HardDisks>
    </MediaRegistry>
    <Hardware>
      <Memory RAMSize="64"/>
      <StorageControllers>
        <StorageController name="SATA" type="AHCI" PortCount="1">
          <AttachedDevice type="HardDisk" port="0" device="0"><Image uuid="{cccccccc-0000-0000-0000-000000000001}"/></AttachedDevice>
        </StorageController>
      </StorageControllers>
    </Hardware>
  </Machine>
</VirtualBox>
"""


@pytest.mark.parametrize("location, reason", [
    ("../../etc/passwd", "'..' components are not allowed"),
    ("/etc/passwd", "absolute paths are not allowed outside the image's directory"),
    ("nbd:localhost:10809", "protocol prefix"),
])
def test_names_outside_the_machine_folder_are_refused_never_opened(tmp_path, monkeypatch, location, reason):
    vbox = write(tmp_path, "evil.vbox", HOSTILE % location)
    opened = []
    monkeypatch.setattr(_virtualbox, "open_image", lambda *args, **kwargs: opened.append(args))
    info = read_machine(vbox)
    (disk,) = info["hard_disks"]
    current = disk["current"]
    assert reason in current["refused"]
    assert current["exists"] is None
    assert opened == []
    assert any(reason in note for note in info["notes"])


def test_allow_dirs_admits_an_absolute_name_elsewhere(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    make_virtualbox_machine.write_vdi(str(other / "disk.vdi"), MIB, {0: b"\x01" * MIB},
                                      make_virtualbox_machine._uuid("disk"))
    machine = tmp_path / "machine"
    machine.mkdir()
    vbox = write(machine, "m.vbox", HOSTILE % (other / "disk.vdi"))
    refused = read_machine(vbox)["hard_disks"][0]["current"]
    assert refused["refused"] and "virtual_size" not in refused
    admitted = read_machine(vbox, allow_dirs=[str(other)])["hard_disks"][0]["current"]
    assert (admitted["refused"], admitted["exists"], admitted["virtual_size"]) == (None, True, MIB)


def test_symlink_out_of_the_machine_folder_is_refused(tmp_path):
    (tmp_path / "link.vdi").symlink_to("/etc/passwd")
    current = read_machine(write(tmp_path, "evil.vbox", HOSTILE % "link.vdi"))["hard_disks"][0]["current"]
    assert "outside the allowed directories" in current["refused"]


@pytest.mark.parametrize("text, message", [
    ("<VirtualBox xmlns='http://www.virtualbox.org/'><Machine", "is not well-formed XML"),
    ("<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><VirtualBox/>", "declares a DTD or entities"),
    ("<Envelope xmlns='http://schemas.dmtf.org/ovf/envelope/1'/>", "not a VirtualBox settings file"),
    ("<VirtualBox xmlns='http://example.com/'><Machine/></VirtualBox>", "not a VirtualBox settings file"),
    ("<VirtualBox xmlns='http://www.virtualbox.org/' version='1.19'><Global/></VirtualBox>", "no Machine element"),
    ("<VirtualBox xmlns='http://www.virtualbox.org/' version='1.19'><Machine name='x'/></VirtualBox>",
     "has no Hardware element"),
])
def test_malformed_settings_give_a_clear_error(tmp_path, text, message):
    path = write(tmp_path, "bad.vbox", text)
    with pytest.raises(VirtualBoxError) as caught:
        read_machine(path)
    assert message in str(caught.value)
    assert path in str(caught.value)


def test_non_integer_field_names_the_field(tmp_path):
    path = write(tmp_path, "bad.vbox", (HOSTILE % "x.vdi").replace('RAMSize="64"', 'RAMSize="lots"'))
    with pytest.raises(VirtualBoxError, match="Memory RAMSize: expected an integer, found 'lots'"):
        read_machine(path)


def test_ova_member_names_cannot_leave_the_archive(fixtures, tmp_path):
    """An OVF href with '..' or an absolute name inside an OVA is refused (names resolve to members only)."""
    import tarfile
    ova = str(tmp_path / "evil.ova")
    ovf = open(fixtures["efi_ovf"]["ovf"]).read().replace('ovf:href="efi-disk1.vmdk"', 'ovf:href="../../etc/passwd"')
    with tarfile.open(ova, "w") as tar:
        make_virtualbox_machine._tar_add(tar, "evil.ovf", ovf.encode())
    (disk,) = read_machine(ova)["hard_disks"]
    assert "names inside an archive resolve to its members only" in disk["current"]["refused"]


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(VirtualBoxError, match="no such file"):
        read_machine(str(tmp_path / "absent.vbox"))


def test_mac_with_colons_keeps_the_case():
    assert _virtualbox.mac_with_colons("080027aBcDeF") == "08:00:27:aB:cD:eF"
    assert _virtualbox.mac_with_colons(None) is None


def test_compressed_box_longer_than_the_stream_limit_keeps_its_ovf(tmp_path, monkeypatch):
    """A box whose disk lies past the bytes read: the OVF is read, the disk's existence is unknown (None)."""
    import tarfile
    monkeypatch.setattr(_virtualbox, "MAX_STREAM_BYTES", 256 * 1024)
    with tarfile.open(MUTATE_BOX, "r:gz") as source:
        ovf = source.extractfile("./box.ovf").read()
    box = str(tmp_path / "long.box")
    with tarfile.open(box, "w:gz") as tar:
        make_virtualbox_machine._tar_add(tar, "box.ovf", ovf)
        make_virtualbox_machine._tar_add(tar, "padding", bytes(MIB))
        make_virtualbox_machine._tar_add(tar, "box-disk1.vmdk", b"x")
    info = read_machine(box)
    assert info["name"] == "mutate-test"
    assert info["hard_disks"][0]["current"]["exists"] is None
    # A box whose descriptor comes after the limit is refused with a clear error.
    late = str(tmp_path / "late.box")
    with tarfile.open(late, "w:gz") as tar:
        make_virtualbox_machine._tar_add(tar, "padding", bytes(MIB))
        make_virtualbox_machine._tar_add(tar, "box.ovf", ovf)
    with pytest.raises(VirtualBoxError, match="no OVF descriptor in the first 262144 decompressed bytes"):
        read_machine(late)


def test_snapshots_list_the_disks_they_attach(fixtures):
    a = fixtures["A"]
    (first,) = read_machine(a["vbox"], images=False)["snapshots"]
    assert first["hard_disks"] == [{"controller": "SATA", "port": 0, "device": 0, "uuid": a["disk_uuids"][2]}]
    assert first["children"][0]["hard_disks"][0]["uuid"] == a["disk_uuids"][1]


def test_snapshot_nesting_is_bounded(tmp_path):
    depth = _virtualbox.MAX_SNAPSHOT_DEPTH + 2
    nested = ""
    for index in reversed(range(depth)):
        nested = ('<Snapshot uuid="{00000000-0000-0000-0000-%012d}" name="s%d" timeStamp="2026-01-01T00:00:00Z">'
                  '<Hardware><Memory RAMSize="64"/></Hardware>%s</Snapshot>'
                  % (index + 1, index, "<Snapshots>%s</Snapshots>" % nested if nested else ""))
    text = (HOSTILE % "x.vdi").replace("    <Hardware>\n      <Memory", nested + "\n    <Hardware>\n      <Memory", 1)
    with pytest.raises(VirtualBoxError, match="nested deeper than"):
        read_machine(write(tmp_path, "deep.vbox", text))


def test_missing_memory_is_reported_not_invented(tmp_path):
    """Settings.cpp leaves the memory size unset without Memory/@RAMSize: null and a note, no made-up size."""
    info = read_machine(write(tmp_path, "m.vbox", (HOSTILE % "x.vdi").replace('<Memory RAMSize="64"/>', "")))
    assert info["memory_mib"] is None
    assert any("no memory size" in note for note in info["notes"])


def test_a_new_snapshot_moves_the_current_image(tmp_path):
    """Machine A written again with a third snapshot: the current snapshot and image move, the state reads
    as the new layer says, and the files of the earlier layers keep their bytes."""
    before = make_virtualbox_machine.make_machine_a(str(tmp_path))
    with open(before["chain"][0], "rb") as handle:
        second_layer = handle.read()
    after = make_virtualbox_machine.make_machine_a(str(tmp_path), snapshots=3)
    info = read_machine(after["vbox"])
    assert info["current_snapshot"] == {"uuid": after["current_snapshot"], "name": "third"}
    assert info["current_snapshot"]["uuid"] != before["current_snapshot"]
    disk = info["hard_disks"][0]
    assert [layer["uuid"] for layer in disk["chain"]] == after["disk_uuids"]
    assert after["disk_uuids"][1:] == before["disk_uuids"]
    assert image_sha256(disk["current"]["path"]) == after["sha256"]["current"] != before["sha256"]["current"]
    with open(before["chain"][0], "rb") as handle:
        assert handle.read() == second_layer


def test_ovf_machine_naming_a_disk_the_disk_section_lacks(fixtures, tmp_path):
    import tarfile
    b = fixtures["B"]
    with tarfile.open(b["ova"]) as tar:
        ovf = tar.extractfile("B.ovf").read().decode()
    ovf = ovf.replace('vbox:uuid="%s"' % b["disk_uuids"][0], 'vbox:uuid="00000000-0000-0000-0000-00000000000b"')
    info = read_machine(write(tmp_path, "B.ovf", ovf))
    assert info["source"] == "ovf"
    (disk,) = info["hard_disks"]
    assert disk["current"] is None and disk["chain"] == []
    assert any("DiskSection names no disk with that vbox:uuid" in note for note in info["notes"])


def test_vbox_machine_without_firmware_stays_bios_whatever_the_disk(fixtures, tmp_path):
    """VirtualBox's section without a Firmware type means BIOS: a GPT with an ESP on the disk does not change it."""
    import tarfile
    b, efi = fixtures["B"], fixtures["efi_ovf"]
    with tarfile.open(b["ova"]) as tar:
        ovf = tar.extractfile("B.ovf").read()
    with open(efi["disk"], "rb") as handle:
        disk = handle.read()
    ova = str(tmp_path / "B-gpt.ova")
    with tarfile.open(ova, "w") as tar:
        make_virtualbox_machine._tar_add(tar, "B.ovf", ovf)
        make_virtualbox_machine._tar_add(tar, b["disk_member"], disk)
    info = read_machine(ova)
    assert info["hard_disks"][0]["current"]["virtual_size"] == efi["virtual_size"]     # the disk was opened
    assert (info["firmware"], info["firmware_source"]) == ("bios", "default")


def test_names_written_on_windows(tmp_path):
    (tmp_path / "Snapshots").mkdir()
    (tmp_path / "Snapshots" / "disk.vdi").write_bytes(b"")
    current = read_machine(write(tmp_path, "w.vbox", HOSTILE % "Snapshots\\disk.vdi"), images=False)[
        "hard_disks"][0]["current"]
    assert (current["location"], current["path"], current["exists"]) == (
        "Snapshots\\disk.vdi", str(tmp_path / "Snapshots" / "disk.vdi"), True)
    drive = read_machine(write(tmp_path, "d.vbox", HOSTILE % "C:\\VMs\\disk.vdi"))["hard_disks"][0]["current"]
    assert "protocol prefix 'C:'" in drive["refused"]


def test_existing_images_carry_their_size_and_mtime(fixtures):
    a, b = fixtures["A"], fixtures["B"]
    for layer in read_machine(a["vbox"], images=False)["hard_disks"][0]["chain"]:
        st = os.stat(layer["path"])
        assert (layer["file_size"], layer["mtime"]) == (st.st_size, st.st_mtime)
    current = read_machine(b["ova"], images=False)["hard_disks"][0]["current"]
    import tarfile
    with tarfile.open(b["ova"]) as tar:
        assert current["file_size"] == tar.getmember(b["disk_member"]).size
    assert current["mtime"] == os.stat(b["ova"]).st_mtime
    goad = read_machine(GOAD, images=False)["hard_disks"][0]["current"]
    assert "file_size" not in goad and "mtime" not in goad


VMDK_MACHINE = """<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.16-linux">
  <Machine uuid="{44444444-2222-3333-4444-555555555555}" name="vm" OSType="Ubuntu_64"
           currentSnapshot="{55555555-2222-3333-4444-555555555555}">
    <MediaRegistry>
      <HardDisks>
        <HardDisk uuid="{dddddddd-0000-0000-0000-000000000001}" location="vm.vmdk" format="VMDK" type="Normal">
          <HardDisk uuid="{dddddddd-0000-0000-0000-000000000002}" location="%s" format="VMDK"/>
        </HardDisk>
      </HardDisks>
    </MediaRegistry>
    <Snapshot uuid="{55555555-2222-3333-4444-555555555555}" name="s" timeStamp="2026-01-01T00:00:00Z">
      <Hardware><Memory RAMSize="64"/></Hardware>
      <StorageControllers>
        <StorageController name="SCSI" type="LsiLogic" PortCount="16">
          <AttachedDevice type="HardDisk" port="0" device="0"><Image uuid="{dddddddd-0000-0000-0000-000000000001}"/></AttachedDevice>
        </StorageController>
      </StorageControllers>
    </Snapshot>
    <Hardware><Memory RAMSize="64"/></Hardware>
    <StorageControllers>
      <StorageController name="SCSI" type="LsiLogic" PortCount="16">
        <AttachedDevice type="HardDisk" port="0" device="0"><Image uuid="{dddddddd-0000-0000-0000-000000000002}"/></AttachedDevice>
      </StorageController>
    </StorageControllers>
  </Machine>
</VirtualBox>
"""


@pytest.mark.parametrize("parent_name", ["../vm.vmdk", "{folder}/vm.vmdk"])
@components.needs(shutil.which("qemu-img"), "qemu-img")
def test_differencing_vmdk_in_snapshots_opens_its_parent_in_the_machine_folder(tmp_path, parent_name):
    """Settings 1.16 (controllers under Machine, in the snapshot too): the VMDK child in Snapshots/ names its
    parent above it, by '..' or absolute: opened, as the machine folder is the images' own directory."""
    (tmp_path / "Snapshots").mkdir()
    qemu_img("create", "-q", "-f", "vmdk", str(tmp_path / "vm.vmdk"), "4M")
    child = str(tmp_path / "Snapshots" / "{dddddddd-0000-0000-0000-000000000002}.vmdk")
    qemu_img("create", "-q", "-f", "vmdk", "-b", parent_name.format(folder=tmp_path), "-F", "vmdk", child)
    info = read_machine(write(tmp_path, "vm.vbox", VMDK_MACHINE % "Snapshots/{dddddddd-0000-0000-0000-000000000002}.vmdk"))
    (disk,) = info["hard_disks"]
    assert (disk["controller_type"], disk["bus"]) == ("LsiLogic", "SCSI")
    assert "image_error" not in disk
    assert disk["current"]["virtual_size"] == 4 * MIB
    assert [os.path.realpath(p) for p in disk["image_chain"]] == [os.path.realpath(child),
                                                                  os.path.realpath(str(tmp_path / "vm.vmdk"))]
    assert info["snapshots"][0]["hard_disks"][0]["uuid"] == "dddddddd-0000-0000-0000-000000000001"
    assert not any("differs" in note for note in info["notes"])


def test_a_damaged_image_is_reported_not_failed(tmp_path):
    a = make_virtualbox_machine.make_machine_a(str(tmp_path))
    with open(a["chain"][0], "r+b") as handle:
        handle.seek(64)
        handle.write(b"\0\0\0\0")          # the VDI signature
    (disk,) = read_machine(a["vbox"])["hard_disks"]
    assert disk["current"]["exists"] is True and "virtual_size" not in disk["current"]
    assert disk["image_error"] and a["chain"][0] in disk["image_error"]


def test_rasd_items_of_a_real_virtualbox_export(tmp_path):
    """The Vagrant box's OVF without its vbox:Machine section: VirtualBox 4's standard items alone."""
    import re
    import tarfile
    with tarfile.open(MUTATE_BOX, "r:gz") as box:
        ovf = box.extractfile("./box.ovf").read().decode()
        box.extract("./box-disk1.vmdk", str(tmp_path))
    ovf = re.sub(r"<vbox:Machine.*</vbox:Machine>", "", ovf, flags=re.S)
    info = read_machine(write(tmp_path, "box.ovf", ovf))
    assert (info["source"], info["name"], info["os_type"], info["cpus"], info["memory_mib"]) == (
        "ovf", "mutate-test", "Linux26", 1, 256)
    assert [(n["type"], n["attachment"], n["mac"]) for n in info["nics"]] == [("82540EM", "NAT", None)]
    assert [(c["name"], c["type"], c["bus"]) for c in info["storage_controllers"]] == [
        ("ideController0", "PIIX4", "IDE"), ("ideController1", "PIIX4", "IDE"), ("sataController0", "AHCI", "SATA")]
    (cdrom,) = info["storage_controllers"][1]["attachments"]
    assert (cdrom["type"], cdrom["port"], cdrom["device"], cdrom["empty"]) == ("DVD", 1, 0, True)
    (disk,) = info["hard_disks"]
    assert (disk["bus"], disk["port"], disk["device"]) == ("SATA", 0, 0)
    current = disk["current"]
    assert (current["path"], current["exists"], current["virtual_size"], current["image_format"]) == (
        str(tmp_path / "box-disk1.vmdk"), True, 4 * MIB, "vmdk")
    assert current["file_size"] == os.stat(current["path"]).st_size
    assert (info["firmware"], info["firmware_source"]) == ("bios", "default")
    assert any("audio (ensoniq1371)" in note for note in info["notes"])
