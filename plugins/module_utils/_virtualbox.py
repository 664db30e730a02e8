# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a VirtualBox machine (``.vbox``, ``.ovf`` or ``.ova``) without VirtualBox.

Settings files follow VirtualBox's settings schema
(``src/VBox/Main/xml/VirtualBox-settings.xsd``, behaviour of ``Settings.cpp``):

* root ``<VirtualBox>`` in the ``http://www.virtualbox.org/`` namespace, or
  the ``http://www.innotek.de/VirtualBox-settings`` namespace of VirtualBox
  1.x/2.x; elements are matched by local name, so both read alike;
* ``StorageControllers`` under ``Machine`` (settings 1.9) or under
  ``Hardware`` (later); the older ``HardDiskAttachments``, ``SATAController``,
  ``DVDDrive`` and ``FloppyDrive`` become controllers of their own;
* settings 1.20 move chipset, RTC and CPU into a ``Platform`` element (under
  ``Machine`` per the schema, under ``Hardware`` as written by some builds:
  both are read) and the firmware into ``Hardware/Firmware@type``;
* attributes VirtualBox leaves out hold the schema's defaults (DEFAULTS).

Which image a hard disk uses *now*: the machine's own ``Hardware`` (its
current state) attaches medium UUIDs; the media registry nests each
differencing image under its parent (``MediaRegistry/HardDisks/HardDisk``),
so the chain is the path from the attached UUID up to its root.  The
snapshot tree is reported beside it.

OVF (DSP0243): VirtualBox's own ``vbox:Machine`` section is read like a
``.vbox`` machine (its ``Image`` UUIDs name ``DiskSection/Disk@vbox:uuid``);
without it, the standard ``rasd`` items of ``VirtualHardwareSection``.

Paths in the files are hostile input (docs/security.md rule 1): each goes
through ``diskimage.policy.resolve_reference`` with the settings file as the
referrer, so the machine folder and its ``Snapshots/`` are allowed, anything
else only inside ``allow_dirs``.  A refused or missing image is reported,
never opened.  XML is parsed only without a DTD (no entities), at most
MAX_SETTINGS_SIZE bytes.

Standard library only; no ansible import (unit-tested directly).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import bz2
import gzip
import lzma
import os
import struct
import tarfile
import uuid as uuidlib
from xml.etree import ElementTree

from ansible_collections.kvm.storage.plugins.module_utils.diskimage import open_image
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError,
    ImageNotFoundError,
    PolicyError,
    UnsupportedFeature,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ova import Archive, MemberPath
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.policy import (
    has_protocol,
    locator_file_name,
    resolve_reference,
)

# Largest settings file or OVF descriptor read (VirtualBox's are tens of KiB).
MAX_SETTINGS_SIZE = 4 * 1024 * 1024
# Snapshots in one tree, and nesting of differencing images (hostile files cannot make a walk unbounded).
MAX_SNAPSHOTS = 4096
MAX_SNAPSHOT_DEPTH = 256        # the tree is walked recursively: well inside Python's recursion limit
MAX_CHAIN = 64
# Tar members looked at, and decompressed bytes read, to find the OVF in a compressed box.
MAX_STREAM_MEMBERS = 64
MAX_STREAM_BYTES = 64 * 1024 * 1024

VBOX_NAMESPACES = ("http://www.virtualbox.org/", "http://www.innotek.de/VirtualBox-settings")
VBOX_OVF_NAMESPACE = "http://www.virtualbox.org/ovf/machine"

# Defaults of attributes VirtualBox omits (VirtualBox-settings.xsd; Settings.cpp for the boot order,
# which the schema leaves to the code: floppy, DVD, hard disk).
DEFAULTS = {
    "cpus": 1,                  # TCPU/@count
    "memory_mib": None,         # TMemory/@RAMSize is required; Settings.cpp leaves it unset ((uint32_t)-1) without it
    "firmware": "bios",         # TFirmware/@type absent: BIOS
    "chipset": "PIIX3",         # Settings.cpp: ChipsetType_PIIX3 when no Chipset element
    "rtc": "local",             # TRTC absent: the RTC runs in local time
    "boot_order": ["Floppy", "DVD", "HardDisk"],
    "adapter_type": "Am79C973",  # TNetworkAdapter/@type
    "adapter_enabled": False,   # TNetworkAdapter/@enabled
    "cable": True,              # TNetworkAdapter/@cable
    "port": 0,                  # TStorageControllerDevice/@port, @device
    "use_host_io_cache": True,  # TStorageController/@useHostIOCache
    "bootable": True,           # Settings.cpp: fBootable defaults to true
    "accelerate3d": False,      # TDisplay/@accelerate3D
    "audio_enabled": False,     # TAudioAdapter/@enabled
    "remote_display": False,    # TRemoteDisplay/@enabled
}

# StorageControllerType → the bus VirtualBox puts it on (IStorageController::bus, StorageBus names).
CONTROLLER_BUS = {
    "PIIX3": "IDE", "PIIX4": "IDE", "ICH6": "IDE",
    "AHCI": "SATA",
    "LsiLogic": "SCSI", "BusLogic": "SCSI",
    "LsiLogicSas": "SAS",
    "I82078": "Floppy",
    "USB": "USB",
    "NVMe": "PCIe",
    "VirtioSCSI": "VirtioSCSI",
}

# Network attachment elements of an Adapter (TNetworkConfig) → attachment type names (NetworkAttachmentType).
ATTACHMENTS = {
    "NAT": "NAT",
    "BridgedInterface": "Bridged",
    "HostInterface": "Bridged",          # the name settings before 1.10 used for bridging
    "InternalNetwork": "Internal",
    "HostOnlyInterface": "HostOnly",
    "NATNetwork": "NATNetwork",
    "GenericInterface": "Generic",
    "HostOnlyNetwork": "HostOnlyNetwork",
    "CloudNetwork": "Cloud",
}

# Medium formats as VirtualBox names them (HardDisk/@format) → the image library's (qemu-img's) names.
MEDIUM_FORMATS = {"VDI": "vdi", "VMDK": "vmdk", "VHD": "vpc", "VHDX": "vhdx", "PARALLELS": "parallels", "QED": "qed",
                  "QCOW": "qcow", "RAW": "raw"}

# GPT (UEFI 2.10 section 5.3): the header at LBA 1, its partition entry fields, the EFI system partition type.
GPT_SIGNATURE = b"EFI PART"
GPT_HEADER_FIELDS = struct.Struct("<QII")   # partition entry LBA (offset 72), number of entries, entry size
GPT_HEADER_FIELDS_OFFSET = 72
ESP_TYPE_GUID = uuidlib.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").bytes_le
MAX_GPT_ENTRIES = 1024
MAX_GPT_ENTRY_SIZE = 4096
MAX_GPT_TABLE_BYTES = 1024 * 1024

# OVF rasd ResourceType values (CIM_ResourceAllocationSettingData).
RASD_CPU, RASD_MEMORY, RASD_IDE, RASD_SCSI, RASD_NIC = 3, 4, 5, 6, 10
RASD_FLOPPY, RASD_CD_DRIVE, RASD_DVD_DRIVE, RASD_DISK, RASD_SATA = 14, 15, 16, 17, 20
RASD_USB, RASD_SOUND = 23, 35
# rasd ResourceSubType of a SCSI/SATA controller (lower case) → StorageControllerType.
RASD_CONTROLLER_SUBTYPES = {
    "lsilogic": "LsiLogic", "buslogic": "BusLogic", "lsilogicsas": "LsiLogicSas", "virtioscsi": "VirtioSCSI",
    "virtio-scsi": "VirtioSCSI", "ahci": "AHCI", "nvme": "NVMe", "piix3": "PIIX3", "piix4": "PIIX4", "ich6": "ICH6",
}
# rasd ResourceSubType of a NIC (lower case) → VirtualBox adapter type.
RASD_NIC_SUBTYPES = {
    "pcnet32": "Am79C970A", "pcnet-fast iii": "Am79C973", "am79c973": "Am79C973", "am79c970a": "Am79C970A",
    "e1000": "82540EM", "82540em": "82540EM", "82543gc": "82543GC", "82545em": "82545EM", "virtio": "virtio",
    "virtio-net": "virtio", "e1000e": "82545EM",
}
# rasd AllocationUnits of memory → MiB factor numerator/denominator (bytes of the unit / MiB).
MEMORY_UNITS = {"byte": 1, "kilobytes": 1024, "megabytes": 1024 ** 2, "gigabytes": 1024 ** 3}


class VirtualBoxError(Exception):
    """A settings file or OVF that cannot be read (the message names the file and what was wrong)."""


def virtualbox_machine_info_argument_spec():
    """Options of kvm.storage.virtualbox_machine_info (``allow_dirs`` comes from the module: policy_argument_spec)."""
    return dict(
        path=dict(type='path', required=True),
        images=dict(type='bool', default=True),
    )


# ------------------------------------------------------------------------------------------- XML helpers
def _local(tag):
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _namespace(tag):
    return tag[1:].split("}", 1)[0] if isinstance(tag, str) and tag.startswith("{") else ""


def _child(element, name):
    if element is None:
        return None
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _first(*elements):
    """The first element that is not None (an Element without children is false: never use ``or``)."""
    return next((element for element in elements if element is not None), None)


def _children(element, name):
    if element is None:
        return []
    return [child for child in element if _local(child.tag) == name]


def _attr(element, name, default=None):
    """Attribute ``name`` in any namespace (ovf:id, vbox:uuid, plain names)."""
    if element is None:
        return default
    value = element.attrib.get(name)
    if value is not None:
        return value
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return default


def _bool(value, default):
    if value is None:
        return default
    return value.strip().lower() in ("true", "1", "yes", "on")


def _int(value, default, what, path):
    if value is None or value == "":
        return default
    try:
        text = value.strip()
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise VirtualBoxError("%s: %s: expected an integer, found %r" % (path, what, value))


def _text(element):
    return (element.text or "").strip() if element is not None else None


def _uuid(value):
    """A VirtualBox UUID ``{…}`` as bare lower-case text (None stays None)."""
    if value is None:
        return None
    return value.strip().strip("{}").lower()


def _parse_xml(text, path, what):
    if b"\0" in text:
        raise VirtualBoxError("%s: %s is not UTF-8 text (NUL bytes found)" % (path, what))
    lowered = text.lower()
    if b"<!doctype" in lowered or b"<!entity" in lowered:
        raise VirtualBoxError("%s: %s declares a DTD or entities: refused" % (path, what))
    try:
        return ElementTree.fromstring(text)
    except (ElementTree.ParseError, ValueError) as exc:
        raise VirtualBoxError("%s: %s is not well-formed XML: %s" % (path, what, exc))


def _read_file(path, what):
    try:
        size = os.stat(path).st_size
        if size > MAX_SETTINGS_SIZE:
            raise VirtualBoxError("%s: %s is %d bytes, more than the %d read" % (path, what, size, MAX_SETTINGS_SIZE))
        with open(path, "rb") as handle:
            return handle.read(MAX_SETTINGS_SIZE + 1)
    except OSError as exc:
        raise VirtualBoxError("%s: cannot read the %s: %s" % (path, what, exc.strerror or exc))


def mac_with_colons(value):
    """VirtualBox's ``0800277AA2FC`` as ``08:00:27:7A:A2:FC`` (the case kept), None when absent."""
    if value is None:
        return None
    digits = value.strip().replace(":", "").replace("-", "")
    if len(digits) != 12 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return value
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


# ----------------------------------------------------------------------------------------- media paths
def _add_stat(entry, path):
    """The size and modification time of an image file (for an archive member, the archive's time): what tells
    a caller that a source changed since it last looked."""
    try:
        st = os.stat(path)
    except OSError:
        return
    entry["file_size"] = st.st_size
    entry["mtime"] = st.st_mtime


class _Media:
    """Where the images a machine names are, and whether they may be looked at (the path policy)."""

    def __init__(self, referrer, allow_dirs, archive=None):
        self.referrer = referrer          # the settings file or OVF the names are relative to
        self.allow_dirs = list(allow_dirs or [])
        self.archive = archive            # an ova.Archive for names inside an OVA
        self.compressed = None            # "gzip"... for a compressed box: members listed, never opened
        self.compressed_members = set()
        self.compressed_complete = True

    def describe(self, location):
        """{location, path, exists, refused} for ``location`` as written in the file."""
        entry = {"location": location, "path": None, "exists": None, "refused": None}
        if location is None:
            entry["refused"] = "no location is recorded"
            return entry
        if "\\" in location and "/" not in location:
            # Written on Windows (Snapshots\{uuid}.vdi): the same name with slashes; a drive letter stays refused.
            location = locator_file_name(location)
        if self.archive is not None or self.compressed is not None:
            return self._describe_member(entry, location)
        base = os.path.dirname(os.path.abspath(self.referrer))
        entry["path"] = os.path.normpath(os.path.join(base, location))
        try:
            entry["path"] = resolve_reference(self.referrer, location, allow_dirs=self.allow_dirs,
                                              kind="image")
            entry["exists"] = True
            _add_stat(entry, entry["path"])
        except ImageNotFoundError:
            entry["exists"] = False
        except PolicyError as exc:
            entry["refused"] = str(exc)
        return entry

    def _describe_member(self, entry, location):
        name = location
        while name.startswith("./"):
            name = name[2:]
        if not name or name.startswith("/") or ".." in name.split("/") or has_protocol(name):
            entry["refused"] = ("image %r named in %s is refused: names inside an archive resolve to its members "
                                "only (no absolute names, '..' or protocol prefixes)" % (location, self.referrer))
            return entry
        entry["path"] = self.referrer + "/" + name
        if self.archive is not None:
            member = self.archive.members.get(name)
            entry["exists"] = member is not None
            entry["member"] = name
            if member is not None:
                _add_stat(entry, self.referrer)
                entry["file_size"] = member.size
        else:
            # Unknown (None) when the archive was too long to list every member.
            entry["exists"] = True if name in self.compressed_members else (False if self.compressed_complete else None)
            entry["member"] = name
        return entry

    def open_path(self, entry):
        """What open_image takes for a described entry."""
        if self.archive is not None:
            return MemberPath(self.archive, entry["member"])
        return entry["path"]

    def open_allow_dirs(self):
        # The machine folder is the images' own directory: a differencing VMDK in Snapshots/ names its parent in
        # the folder above, by '..' or an absolute name (docs/security.md rule 1: the machine's folder and its
        # Snapshots/ are one layout).
        return [os.path.dirname(os.path.abspath(self.referrer))] + self.allow_dirs


# ------------------------------------------------------------------------------------- machine section
class _MachineReader:
    """Reads one ``Machine`` element (a .vbox machine or an OVF's vbox:Machine)."""

    def __init__(self, machine, path, media, registry):
        self.machine = machine
        self.path = path
        self.media = media
        self.registry = registry          # uuid → {"location", "format", "type", "parent", "kind"}
        self.notes = []

    # -- hardware
    def hardware(self):
        hardware = _child(self.machine, "Hardware")
        if hardware is None:
            raise VirtualBoxError("%s: the Machine has no Hardware element (the schema requires one)" % self.path)
        return hardware

    def platform(self, hardware):
        return _first(_child(self.machine, "Platform"), _child(hardware, "Platform"))

    def cpus(self, hardware):
        platform = self.platform(hardware)
        cpu = _first(_child(hardware, "CPU"), _child(platform, "CPU"))
        return _int(_attr(cpu, "count"), DEFAULTS["cpus"], "CPU count", self.path)

    def memory(self, hardware):
        memory = _int(_attr(_child(hardware, "Memory"), "RAMSize"), DEFAULTS["memory_mib"], "Memory RAMSize", self.path)
        if memory is None:
            self.notes.append("the file gives no memory size (Memory/@RAMSize, which the schema requires)")
        return memory

    def firmware(self, hardware):
        """("bios"|"efi", the VirtualBox type or None)."""
        element = _child(hardware, "Firmware")
        kind = _attr(element, "type")
        if kind is None:
            return DEFAULTS["firmware"], None
        return ("efi" if kind.upper().startswith("EFI") else "bios"), kind

    def chipset(self, hardware):
        platform = self.platform(hardware)
        chipset = _first(_child(platform, "Chipset"), _child(hardware, "Chipset"))
        return _attr(chipset, "type", DEFAULTS["chipset"])

    def rtc(self, hardware):
        platform = self.platform(hardware)
        rtc = _first(_child(platform, "RTC"), _child(hardware, "RTC"))
        value = _attr(rtc, "localOrUTC")
        if value is None:
            return DEFAULTS["rtc"]
        return "utc" if value.upper() == "UTC" else "local"

    def boot_order(self, hardware):
        boot = _child(hardware, "Boot")
        if boot is None:
            return list(DEFAULTS["boot_order"])
        orders = []
        for order in _children(boot, "Order"):
            position = _int(_attr(order, "position"), 0, "Boot Order position", self.path)
            orders.append((position, _attr(order, "device", "None")))
        return [device for _position, device in sorted(orders) if device != "None"]

    def nics(self, hardware):
        nics = []
        for adapter in _children(_child(hardware, "Network"), "Adapter"):
            attachment, network = "None", None
            for child in adapter:
                kind = ATTACHMENTS.get(_local(child.tag))
                if kind is not None:
                    attachment = kind
                    network = _attr(child, "name") or _attr(child, "driver")
                    if kind == "NAT" and _children(child, "Forwarding"):
                        self.notes.append("NIC %s: NAT port forwarding rules (%d) are not carried; libvirt's NAT "
                                          "network does not forward ports" % (_attr(adapter, "slot"),
                                                                              len(_children(child, "Forwarding"))))
                    break
            nics.append({
                "slot": _int(_attr(adapter, "slot"), 0, "Adapter slot", self.path),
                "enabled": _bool(_attr(adapter, "enabled"), DEFAULTS["adapter_enabled"]),
                "mac": mac_with_colons(_attr(adapter, "MACAddress")),
                "type": _attr(adapter, "type", DEFAULTS["adapter_type"]),
                "attachment": attachment,
                "network": network,
                "cable": _bool(_attr(adapter, "cable"), DEFAULTS["cable"]),
            })
        return sorted(nics, key=lambda nic: nic["slot"])

    # -- storage
    def controller_elements(self, hardware):
        """StorageController elements (under Hardware, or under Machine in settings 1.9)."""
        found = _children(_child(hardware, "StorageControllers"), "StorageController")
        if not found:
            found = _children(_child(self.machine, "StorageControllers"), "StorageController")
        return found

    def storage(self, hardware):
        controllers = []
        for element in self.controller_elements(hardware):
            kind = _attr(element, "type")
            controller = {
                "name": _attr(element, "name"),
                "type": kind,
                "bus": CONTROLLER_BUS.get(kind, "unknown"),
                "port_count": _int(_attr(element, "PortCount"), None, "PortCount", self.path),
                "bootable": _bool(_attr(element, "Bootable"), DEFAULTS["bootable"]),
                "use_host_io_cache": _bool(_attr(element, "useHostIOCache"), DEFAULTS["use_host_io_cache"]),
                "attachments": [self.attachment(device) for device in _children(element, "AttachedDevice")],
            }
            controllers.append(controller)
        controllers.extend(self.legacy_storage(hardware))
        return controllers

    def legacy_storage(self, hardware):
        """Settings before 1.9 (VirtualBox 1.x-3.0): HardDiskAttachments, SATAController, DVDDrive, FloppyDrive."""
        controllers = []
        ide_type = _attr(_child(_child(hardware, "BIOS"), "IDEController"), "type", "PIIX3")
        ide = {"name": "IDE Controller", "type": ide_type, "bus": "IDE", "port_count": 2, "bootable": True,
               "use_host_io_cache": True, "attachments": []}
        sata = {"name": "SATA Controller", "type": "AHCI", "bus": "SATA", "bootable": True, "use_host_io_cache": True,
                "port_count": _int(_attr(_child(hardware, "SATAController"), "PortCount"), None, "PortCount",
                                   self.path), "attachments": []}
        for attachment in _children(_child(self.machine, "HardDiskAttachments"), "HardDiskAttachment"):
            target = sata if _attr(attachment, "bus", "IDE") == "SATA" else ide
            entry = self._medium_attachment("HardDisk", _uuid(_attr(attachment, "hardDisk")))
            entry["port"] = _int(_attr(attachment, "channel"), 0, "HardDiskAttachment channel", self.path)
            entry["device"] = _int(_attr(attachment, "device"), 0, "HardDiskAttachment device", self.path)
            target["attachments"].append(entry)
        for device in _children(_child(hardware, "SATAController"), "AttachedDevice"):
            sata["attachments"].append(self.attachment(device))
        dvd = _child(hardware, "DVDDrive")
        if dvd is not None:
            entry = self._drive_attachment("DVD", dvd)
            entry["port"], entry["device"] = 1, 0       # the secondary master, where VirtualBox put the drive
            ide["attachments"].append(entry)
        if ide["attachments"]:
            controllers.append(ide)
        if sata["attachments"] or _bool(_attr(_child(hardware, "SATAController"), "enabled"), False):
            controllers.append(sata)
        floppy = _child(hardware, "FloppyDrive")
        if floppy is not None and _bool(_attr(floppy, "enabled"), True):
            entry = self._drive_attachment("Floppy", floppy)
            entry["port"], entry["device"] = 0, 0
            controllers.append({"name": "Floppy Controller", "type": "I82078", "bus": "Floppy", "port_count": 1,
                                "bootable": True, "use_host_io_cache": True, "attachments": [entry]})
        return controllers

    def _drive_attachment(self, kind, drive):
        image, host = _child(drive, "Image"), _child(drive, "HostDrive")
        if host is not None:
            entry = self._medium_attachment(kind, None)
            entry["host_drive"] = _attr(host, "src")
            return entry
        return self._medium_attachment(kind, _uuid(_attr(image, "uuid")))

    def attachment(self, device):
        kind = _attr(device, "type", "HardDisk")
        image, host = _child(device, "Image"), _child(device, "HostDrive")
        entry = self._medium_attachment(kind, _uuid(_attr(image, "uuid")))
        if host is not None:
            entry["host_drive"] = _attr(host, "src")
        entry["port"] = _int(_attr(device, "port"), DEFAULTS["port"], "AttachedDevice port", self.path)
        entry["device"] = _int(_attr(device, "device"), DEFAULTS["port"], "AttachedDevice device", self.path)
        entry["passthrough"] = _bool(_attr(device, "passthrough"), False)
        entry["nonrotational"] = _bool(_attr(device, "nonrotational"), False)
        entry["discard"] = _bool(_attr(device, "discard"), False)
        return entry

    def _medium_attachment(self, kind, medium_uuid):
        entry = {"type": kind, "port": 0, "device": 0, "medium_uuid": medium_uuid, "host_drive": None,
                 "location": None, "path": None, "exists": None, "refused": None, "empty": False,
                 "unregistered": False}
        if medium_uuid is None:
            entry["empty"] = True
            return entry
        medium = self.registry.get(medium_uuid)
        if medium is None:
            entry["unregistered"] = True
            return entry
        entry.update(self.media.describe(medium["location"]))
        entry["format"] = medium.get("format")
        return entry

    # -- snapshots
    def snapshots(self):
        current = _uuid(_attr(self.machine, "currentSnapshot"))
        counter = [0]
        roots = []
        for element in _children(self.machine, "Snapshot"):
            roots.append(self._snapshot(element, current, counter, 0))
        return roots, current

    def _snapshot(self, element, current, counter, depth):
        counter[0] += 1
        if counter[0] > MAX_SNAPSHOTS or depth > MAX_SNAPSHOT_DEPTH:
            raise VirtualBoxError("%s: more than %d snapshots, or snapshots nested deeper than %d: refused"
                                  % (self.path, MAX_SNAPSHOTS, MAX_SNAPSHOT_DEPTH))
        snapshot_uuid = _uuid(_attr(element, "uuid"))
        children = [self._snapshot(child, current, counter, depth + 1)
                    for child in _children(_child(element, "Snapshots"), "Snapshot")]
        return {"uuid": snapshot_uuid, "name": _attr(element, "name"), "time_stamp": _attr(element, "timeStamp"),
                "current": snapshot_uuid == current, "hard_disks": self._snapshot_disks(element),
                "children": children}

    def _snapshot_disks(self, element):
        """The hard disk media a snapshot's hardware attaches (where its disks stood when it was taken)."""
        controllers = _children(_child(_child(element, "Hardware"), "StorageControllers"), "StorageController")
        if not controllers:
            controllers = _children(_child(element, "StorageControllers"), "StorageController")
        disks = []
        for controller in controllers:
            for device in _children(controller, "AttachedDevice"):
                if _attr(device, "type", "HardDisk") == "HardDisk" and _child(device, "Image") is not None:
                    disks.append({
                        "controller": _attr(controller, "name"),
                        "port": _int(_attr(device, "port"), DEFAULTS["port"], "AttachedDevice port", self.path),
                        "device": _int(_attr(device, "device"), DEFAULTS["port"], "AttachedDevice device", self.path),
                        "uuid": _uuid(_attr(_child(device, "Image"), "uuid")),
                    })
        return disks

    # -- what KVM does not get
    def collect_notes(self, hardware):
        notes = self.notes
        for folder in _children(_child(hardware, "SharedFolders"), "SharedFolder"):
            notes.append("shared folder %r (host path %s) is not carried: share it another way (virtiofs, NFS)"
                         % (_attr(folder, "name"), _attr(folder, "hostPath")))
        usb_controller = _child(hardware, "USBController")
        usb = _child(hardware, "USB")
        filters = _children(usb_controller, "DeviceFilter") + _children(_child(usb, "DeviceFilters"), "DeviceFilter")
        controllers = _children(_child(usb, "Controllers"), "Controller")
        if controllers or _bool(_attr(usb_controller, "enabled"), False):
            notes.append("USB controller(s) %s are not carried; libvirt adds its own USB controller"
                         % (", ".join(_attr(c, "type", "?") for c in controllers) or "OHCI"))
        if filters:
            notes.append("USB device filters (%d) are not carried: pass host USB devices with libvirt <hostdev>"
                         % len(filters))
        display = _child(hardware, "Display")
        if _bool(_attr(display, "accelerate3D"), DEFAULTS["accelerate3d"]):
            notes.append("3D acceleration is not carried")
        audio = _child(hardware, "AudioAdapter")
        if audio is not None and _bool(_attr(audio, "enabled"), DEFAULTS["audio_enabled"]):
            notes.append("audio (%s controller) is not carried" % _attr(audio, "controller", "AC97"))
        if _bool(_attr(_child(hardware, "RemoteDisplay"), "enabled"), DEFAULTS["remote_display"]):
            notes.append("the VirtualBox remote display (VRDE) is not carried; libvirt offers VNC or SPICE")
        for port in _children(_child(hardware, "UART"), "Port"):
            if _bool(_attr(port, "enabled"), False):
                notes.append("serial port %s (%s) is not carried" % (_attr(port, "slot"), _attr(port, "hostMode")))
        for name in ("Clipboard", "DragAndDrop"):
            mode = _attr(_child(hardware, name), "mode")
            if mode not in (None, "Disabled"):
                notes.append("%s (%s) needs the VirtualBox Guest Additions: not carried" % (name, mode))
        for device in _children(_child(_child(hardware, "HostPci"), "Devices"), "Device"):
            notes.append("host PCI device %s is not carried" % (_attr(device, "name") or _attr(device, "host")))
        if (_attr(_child(hardware, "Firmware"), "type") or "").upper().startswith("EFI"):
            # NVRAM sits under BIOS before settings 1.20, under Firmware since.
            nvram = _attr(_first(_child(_child(hardware, "Firmware"), "NVRAM"),
                                 _child(_child(hardware, "BIOS"), "NVRAM")), "path")
            notes.append("the EFI variables%s are not carried: the guest starts with an empty NVRAM and boots from "
                         "the disk's fallback loader (\\EFI\\BOOT\\BOOTX64.EFI) until its boot entry is made again"
                         % (" (%s)" % nvram if nvram else ""))
        if _attr(self.machine, "stateFile"):
            notes.append("the machine has a saved state (%s): it is not carried, the guest boots cold"
                         % _attr(self.machine, "stateFile"))
        return notes


def _registry(machine, path):
    """uuid → medium from the machine's MediaRegistry (nested HardDisk elements are differencing children)."""
    registry = {}
    media_registry = _child(machine, "MediaRegistry")

    def add(element, kind, parent, depth):
        if depth > MAX_CHAIN:
            raise VirtualBoxError("%s: media registry nests more than %d differencing images: refused"
                                  % (path, MAX_CHAIN))
        if len(registry) >= MAX_SNAPSHOTS:
            raise VirtualBoxError("%s: media registry holds more than %d media: refused" % (path, MAX_SNAPSHOTS))
        medium_uuid = _uuid(_attr(element, "uuid"))
        if medium_uuid is None:
            return
        registry[medium_uuid] = {"location": _attr(element, "location"), "format": _attr(element, "format"),
                                 "type": _attr(element, "type", "Differencing" if parent else None), "parent": parent,
                                 "kind": kind}
        for child in _children(element, "HardDisk"):
            add(child, kind, medium_uuid, depth + 1)

    for disk in _children(_child(media_registry, "HardDisks"), "HardDisk"):
        add(disk, "HardDisk", None, 0)
    for kind, section in (("DVD", "DVDImages"), ("Floppy", "FloppyImages")):
        for image in _children(_child(media_registry, section), "Image"):
            add(image, kind, None, 0)
    return registry


def _chain(registry, leaf_uuid, media, path):
    """The differencing chain of ``leaf_uuid``, the leaf first (as qemu-img --backing-chain lists it)."""
    chain = []
    seen = set()
    current = leaf_uuid
    while current is not None:
        if current in seen or len(chain) > MAX_CHAIN:
            raise VirtualBoxError("%s: media registry: a loop or more than %d layers above medium {%s}"
                                  % (path, MAX_CHAIN, leaf_uuid))
        seen.add(current)
        medium = registry.get(current)
        if medium is None:
            break
        layer = {"uuid": current, "format": medium["format"], "type": medium["type"]}
        layer.update(media.describe(medium["location"]))
        chain.append(layer)
        current = medium["parent"]
    return chain


# ----------------------------------------------------------------------------------------- image reading
def esp_in_gpt(image):
    """Whether ``image`` (an opened diskimage Image) holds a GPT with an EFI system partition."""
    for sector in (512, 4096):
        if image.virtual_size < 2 * sector + 92:
            continue
        header = image.read(sector, 92)
        if header[:8] != GPT_SIGNATURE:
            continue
        entries_lba, count, entry_size = GPT_HEADER_FIELDS.unpack_from(header, GPT_HEADER_FIELDS_OFFSET)
        if not (128 <= entry_size <= MAX_GPT_ENTRY_SIZE and entry_size % 8 == 0):
            continue
        count = min(count, MAX_GPT_ENTRIES, MAX_GPT_TABLE_BYTES // entry_size)
        start = entries_lba * sector
        if start <= 0 or start >= image.virtual_size:
            continue
        table = image.read(start, min(count * entry_size, image.virtual_size - start))
        for offset in range(0, len(table) - 15, entry_size):
            if table[offset:offset + 16] == ESP_TYPE_GUID:
                return True
    return False


def _describe_images(info, media, detect_efi):
    """Open each hard disk's current image (read-only) for its format and virtual size; find the ESP."""
    esp = None
    for disk in info["hard_disks"]:
        current = disk["current"]
        if current is None or not current.get("exists") or current.get("refused"):
            continue
        if media.compressed is not None:
            disk["image_error"] = ("the archive is %s-compressed: its disks cannot be read in place; unpack it to a "
                                   "plain tar (an OVA) first" % media.compressed)
            continue
        try:
            # The format the file records, not a probe (a damaged image is not taken for a raw one).
            fmt = MEDIUM_FORMATS.get((current.get("format") or "").upper())
            with open_image(media.open_path(current), fmt=fmt, readonly=True,
                            allow_dirs=media.open_allow_dirs()) as image:
                current["virtual_size"] = image.virtual_size
                current["image_format"] = image.format
                layers = []
                driver = image.driver
                while driver is not None:
                    layers.append(str(driver.path))
                    driver = getattr(driver, "backing", None)
                disk["image_chain"] = layers
                expected = [layer["path"] for layer in disk["chain"]]
                if media.archive is None and [os.path.realpath(p) for p in layers] != [
                        os.path.realpath(p) for p in expected if p]:
                    info["notes"].append("hard disk %s port %s device %s: the images' own backing chain (%s) differs "
                                         "from the media registry's (%s)"
                                         % (disk["controller"], disk["port"], disk["device"], " -> ".join(layers),
                                            " -> ".join(p or "?" for p in expected)))
                if detect_efi and esp is None:
                    esp = esp_in_gpt(image)
        except ImageError as exc:
            disk["image_error"] = str(exc)
    return esp


# ------------------------------------------------------------------------------------------- the result
def _hard_disks(controllers, registry, media, path):
    disks = []
    for controller in controllers:
        for attachment in controller["attachments"]:
            if attachment["type"] != "HardDisk":
                continue
            chain = _chain(registry, attachment["medium_uuid"], media, path) if attachment["medium_uuid"] else []
            disks.append({
                "controller": controller["name"],
                "controller_type": controller["type"],
                "bus": controller["bus"],
                "port": attachment["port"],
                "device": attachment["device"],
                "uuid": attachment["medium_uuid"],
                "current": chain[0] if chain else None,
                "chain": chain,
            })
    return disks


def _machine_result(reader, hardware, source, path):
    firmware, firmware_type = reader.firmware(hardware)
    controllers = reader.storage(hardware)
    snapshots, current = reader.snapshots()
    info = {
        "path": path,
        "source": source,
        "name": _attr(reader.machine, "name"),
        "uuid": _uuid(_attr(reader.machine, "uuid")),
        "os_type": _attr(reader.machine, "OSType"),
        "cpus": reader.cpus(hardware),
        "memory_mib": reader.memory(hardware),
        "firmware": firmware,
        "firmware_type": firmware_type,
        "firmware_source": "settings" if firmware_type else "default",
        "chipset": reader.chipset(hardware),
        "rtc": reader.rtc(hardware),
        "boot_order": reader.boot_order(hardware),
        "nics": reader.nics(hardware),
        "storage_controllers": controllers,
        "hard_disks": _hard_disks(controllers, reader.registry, reader.media, path),
        "snapshots": snapshots,
        "current_snapshot": None,
        "notes": reader.collect_notes(hardware),
    }
    if current is not None:
        found = _find_snapshot(snapshots, current)
        info["current_snapshot"] = {"uuid": current, "name": found["name"] if found else None}
        if found is None:
            info["notes"].append("currentSnapshot {%s} is not in the snapshot tree" % current)
    return info


def _find_snapshot(snapshots, wanted):
    stack = list(snapshots)
    while stack:
        snapshot = stack.pop()
        if snapshot["uuid"] == wanted:
            return snapshot
        stack.extend(snapshot["children"])
    return None


def _report_media(info):
    """Notes for media that are missing, refused or unknown, so nothing is silently left out."""
    for controller in info["storage_controllers"]:
        for attachment in controller["attachments"]:
            where = "%s port %s device %s" % (controller["name"], attachment["port"], attachment["device"])
            if attachment.get("unregistered"):
                why = ("VirtualBox before 4.0 kept media in the global VirtualBox.xml" if info["source"] == "vbox"
                       else "the OVF's DiskSection names no disk with that vbox:uuid")
                info["notes"].append("%s: %s {%s} is not in this file's media registry (%s)"
                                     % (where, attachment["type"], attachment["medium_uuid"], why))
            if attachment["host_drive"]:
                info["notes"].append("%s: host drive %s is not carried" % (where, attachment["host_drive"]))
    for disk in info["hard_disks"]:
        where = "hard disk on %s port %s device %s" % (disk["controller"], disk["port"], disk["device"])
        for layer in disk["chain"]:
            if layer["refused"]:
                info["notes"].append("%s: %s" % (where, layer["refused"]))
            elif layer["exists"] is False:
                info["notes"].append("%s: image %s is missing" % (where, layer["path"]))


def read_vbox(path, allow_dirs=None, images=True):
    """The machine described by VirtualBox settings file ``path`` (see the module docstring)."""
    path = os.path.abspath(path)
    root = _parse_xml(_read_file(path, "settings file"), path, "settings file")
    if _local(root.tag) != "VirtualBox" or _namespace(root.tag) not in VBOX_NAMESPACES:
        raise VirtualBoxError("%s: not a VirtualBox settings file: the root element is %r, expected VirtualBox in "
                              "namespace %s" % (path, root.tag, " or ".join(VBOX_NAMESPACES)))
    machine = _child(root, "Machine")
    if machine is None:
        raise VirtualBoxError("%s: no Machine element (a global VirtualBox.xml describes no machine)" % path)
    media = _Media(path, allow_dirs)
    reader = _MachineReader(machine, path, media, _registry(machine, path))
    info = _machine_result(reader, reader.hardware(), "vbox", path)
    info["settings_version"] = _attr(root, "version")
    info["folder"] = machine_folder(info)
    _report_media(info)
    if images:
        _describe_images(info, media, detect_efi=False)
    return info


# ------------------------------------------------------------------------------------------------- OVF
def _ovf_text_from_archive(path):
    """(OVF text, archive or None, compression or None, (member names, all seen)) for an OVA or Vagrant box."""
    try:
        archive = Archive.scan(path)
    except UnsupportedFeature as exc:
        compression = next((name for name in ("gzip", "bzip2", "xz") if name in str(exc)), None)
        if compression is None:
            raise VirtualBoxError(str(exc))
        text, names, complete = _stream_ovf(path, compression)
        return text, None, compression, (names, complete)
    except ImageError as exc:
        raise VirtualBoxError(str(exc))
    if archive.ovf_name is None:
        raise VirtualBoxError("%s: the archive holds no OVF descriptor (*.ovf)" % path)
    member = archive.member(archive.ovf_name, "OVF descriptor")
    if member.size > MAX_SETTINGS_SIZE:
        raise VirtualBoxError("%s: OVF descriptor %r is %d bytes, more than the %d read"
                              % (path, archive.ovf_name, member.size, MAX_SETTINGS_SIZE))
    with ImageFile(archive.path, lock=False) as image_file:
        text = image_file.pread_exact(member.offset, member.size, "OVF descriptor %r" % archive.ovf_name)
    return text, archive, None, (list(archive.members), True)


class _StreamLimit(Exception):
    """MAX_STREAM_BYTES of a compressed archive were read."""


class _BoundedStream:
    """A decompressed stream that delivers at most MAX_STREAM_BYTES (a decompression bomb stops there)."""

    def __init__(self, stream):
        self._stream = stream
        self._read = 0

    def read(self, size=-1):
        if size is None or size < 0:
            size = MAX_STREAM_BYTES - self._read + 1
        data = self._stream.read(size)
        self._read += len(data)
        if self._read > MAX_STREAM_BYTES:
            raise _StreamLimit()
        return data


def _stream_ovf(path, compression):
    """(OVF text, member names seen, whether every member was seen) of a compressed tar (a Vagrant box), read as a
    stream: past MAX_STREAM_BYTES the rest is not read, and a disk not seen by then is of unknown existence."""
    opener = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[compression]
    names = []
    text = None
    complete = True
    try:
        with opener(path, "rb") as raw:
            with tarfile.open(fileobj=_BoundedStream(raw), mode="r|") as tar:
                for count, member in enumerate(tar):
                    if count >= MAX_STREAM_MEMBERS:
                        complete = False
                        break
                    name = member.name
                    while name.startswith("./"):
                        name = name[2:]
                    names.append(name)
                    if text is None and name.lower().endswith(".ovf") and member.isreg():
                        if member.size > MAX_SETTINGS_SIZE:
                            raise VirtualBoxError("%s: OVF descriptor %r is %d bytes, more than the %d read"
                                                  % (path, name, member.size, MAX_SETTINGS_SIZE))
                        text = tar.extractfile(member).read()
    except _StreamLimit:
        if text is None:
            raise VirtualBoxError("%s: no OVF descriptor in the first %d decompressed bytes of the archive"
                                  % (path, MAX_STREAM_BYTES))
        return text, names, False
    except (OSError, EOFError, tarfile.TarError, lzma.LZMAError, ValueError) as exc:
        if text is None:
            raise VirtualBoxError("%s: cannot read the %s-compressed archive: %s" % (path, compression, exc))
        complete = False        # the descriptor was read; what follows it is damaged
    if text is None:
        raise VirtualBoxError("%s: the archive holds no OVF descriptor (*.ovf) among its first members" % path)
    return text, names, complete


def read_ovf(path, allow_dirs=None, images=True):
    """The machine an OVF descriptor (``.ovf``) or an OVA/Vagrant box (tar) describes."""
    path = os.path.abspath(path)
    is_archive = not path.lower().endswith(".ovf")
    if is_archive:
        text, archive, compression, names = _ovf_text_from_archive(path)
        media = _Media(path, allow_dirs, archive=archive)
        if compression is not None:
            media.compressed = compression
            media.compressed_members, media.compressed_complete = set(names[0]), names[1]
    else:
        text = _read_file(path, "OVF descriptor")
        media = _Media(path, allow_dirs)
    envelope = _parse_xml(text, path, "OVF descriptor")
    if _local(envelope.tag) != "Envelope":
        raise VirtualBoxError("%s: not an OVF descriptor: the root element is %r, expected Envelope"
                              % (path, envelope.tag))
    systems = [e for e in envelope.iter() if _local(e.tag) == "VirtualSystem"]
    if not systems:
        raise VirtualBoxError("%s: the OVF descriptor has no VirtualSystem" % path)
    system = systems[0]
    files = {_attr(f, "id"): _attr(f, "href") for f in envelope.iter() if _local(f.tag) == "File"}
    disks = {}
    for disk in (e for e in envelope.iter() if _local(e.tag) == "Disk"):
        disks[_attr(disk, "diskId")] = {"href": files.get(_attr(disk, "fileRef")), "format": _attr(disk, "format"),
                                        "vbox_uuid": _uuid(_attr(disk, "uuid")),
                                        "capacity": _attr(disk, "capacity")}
    machine = next((e for e in system if _local(e.tag) == "Machine" and _namespace(e.tag) == VBOX_OVF_NAMESPACE),
                   None)
    if machine is not None:
        registry = {}
        for disk in disks.values():
            if disk["vbox_uuid"]:
                registry[disk["vbox_uuid"]] = {"location": disk["href"], "format": _ovf_format(disk["format"]),
                                               "type": "Normal", "parent": None, "kind": "HardDisk"}
        reader = _MachineReader(machine, path, media, registry)
        info = _machine_result(reader, reader.hardware(), "ova" if is_archive else "ovf", path)
        info["settings_version"] = _attr(machine, "version", "1.15")   # TMachine/@version default, for OVF
    else:
        info = _rasd_machine(system, disks, media, path, "ova" if is_archive else "ovf")
    if len(systems) > 1:
        info["notes"].append("the OVF holds %d virtual systems; only the first (%s) is described"
                             % (len(systems), info["name"]))
    info["folder"] = machine_folder(info)
    vmware_firmware = _vmware_firmware(system)
    if info["firmware_source"] == "default" and vmware_firmware:
        info["firmware"], info["firmware_type"], info["firmware_source"] = vmware_firmware, vmware_firmware, "ovf"
    _report_media(info)
    if images:
        # VirtualBox's own section decides (no Firmware type there is BIOS); the disk is asked only without it.
        detect = machine is None and info["firmware_source"] == "default"
        esp = _describe_images(info, media, detect_efi=detect)
        if detect and esp:
            info["firmware"], info["firmware_source"] = "efi", "disk"
    return info


def _ovf_format(ovf_format):
    if not ovf_format:
        return None
    lowered = ovf_format.lower()
    for fragment, name in (("vmdk", "VMDK"), ("vhd", "VHD"), ("vdi", "VDI"), ("qcow2", "qcow2"), ("raw", "RAW")):
        if fragment in lowered:
            return name
    return None


def _vmware_firmware(system):
    """VMware's ``<vmw:Config vmw:key="firmware" vmw:value="efi"/>`` in the VirtualHardwareSection."""
    for element in system.iter():
        if _local(element.tag) == "Config" and _attr(element, "key") == "firmware":
            value = (_attr(element, "value") or "").lower()
            return "efi" if value.startswith("efi") else "bios"
    return None


def _rasd(item, name):
    return _text(_child(item, name))


def _rasd_machine(system, disks, media, path, source):
    """A machine from the standard OVF items (no vbox:Machine)."""
    section = next((e for e in system if _local(e.tag) == "VirtualHardwareSection"), None)
    items = _children(section, "Item") + _children(section, "StorageItem") + _children(section, "EthernetPortItem")
    os_section = next((e for e in system if _local(e.tag) == "OperatingSystemSection"), None)
    os_type = _text(next((e for e in os_section if _local(e.tag) == "OSType"), None)) if os_section is not None \
        else None
    info = {
        "path": path, "source": source, "settings_version": None,
        "name": _text(_child(system, "Name")) or _attr(system, "id"),
        "uuid": None,
        "os_type": os_type or _text(_child(os_section, "Description")) or _attr(os_section, "id"),
        "cpus": DEFAULTS["cpus"], "memory_mib": DEFAULTS["memory_mib"],
        "firmware": DEFAULTS["firmware"], "firmware_type": None, "firmware_source": "default",
        "chipset": DEFAULTS["chipset"], "rtc": "utc",
        "boot_order": ["HardDisk", "DVD"],
        "nics": [], "storage_controllers": [], "hard_disks": [], "snapshots": [], "current_snapshot": None,
        "notes": ["no VirtualBox machine section: read from the standard OVF items (the RTC is taken as UTC and "
                  "the boot order as hard disk, DVD)"],
    }
    controllers = {}
    for item in items:
        kind = _int(_rasd(item, "ResourceType"), 0, "rasd ResourceType", path)
        instance = _rasd(item, "InstanceID")
        subtype = (_rasd(item, "ResourceSubType") or "").strip()
        if kind == RASD_CPU:
            info["cpus"] = _int(_rasd(item, "VirtualQuantity"), DEFAULTS["cpus"], "CPU VirtualQuantity", path)
        elif kind == RASD_MEMORY:
            info["memory_mib"] = _memory_mib(item, path)
        elif kind in (RASD_IDE, RASD_SCSI, RASD_SATA):
            default = {RASD_IDE: "PIIX4", RASD_SCSI: "LsiLogic", RASD_SATA: "AHCI"}[kind]
            controller_type = RASD_CONTROLLER_SUBTYPES.get(subtype.lower(), default) if subtype else default
            controllers[instance] = {"name": _rasd(item, "ElementName") or _rasd(item, "Caption") or instance,
                                     "type": controller_type, "bus": CONTROLLER_BUS[controller_type],
                                     "port_count": None, "bootable": True, "use_host_io_cache": True,
                                     "attachments": [], "address": _rasd(item, "Address")}
        elif kind == RASD_NIC:
            info["nics"].append({
                "slot": len(info["nics"]), "enabled": True,
                "mac": mac_with_colons(_rasd(item, "Address")),
                "type": RASD_NIC_SUBTYPES.get(subtype.lower(), subtype or DEFAULTS["adapter_type"]),
                "attachment": "NAT" if (_rasd(item, "Connection") or "").upper() == "NAT" else "Bridged",
                "network": _rasd(item, "Connection"),
                "cable": True,
            })
        elif kind == RASD_USB:
            info["notes"].append("USB controller(s) are not carried; libvirt adds its own USB controller")
        elif kind == RASD_SOUND:
            info["notes"].append("audio (%s) is not carried" % (subtype or "sound card"))
    for item in items:
        kind = _int(_rasd(item, "ResourceType"), 0, "rasd ResourceType", path)
        if kind not in (RASD_DISK, RASD_CD_DRIVE, RASD_DVD_DRIVE, RASD_FLOPPY):
            continue
        controller = controllers.get(_rasd(item, "Parent"))
        if controller is None:
            controller = controllers.setdefault("__unknown__", {
                "name": "unknown", "type": None, "bus": "unknown", "port_count": None, "bootable": True,
                "use_host_io_cache": True, "attachments": [], "address": None})
        attachment = {"type": {RASD_DISK: "HardDisk", RASD_FLOPPY: "Floppy"}.get(kind, "DVD"),
                      "port": _int(_rasd(item, "AddressOnParent"), 0, "rasd AddressOnParent", path), "device": 0,
                      "medium_uuid": None, "host_drive": None, "location": None, "path": None, "exists": None,
                      "refused": None, "empty": True}
        if controller["bus"] == "IDE":
            # IDE: the controller's Address is the channel, AddressOnParent the master/slave position.
            attachment["device"] = attachment["port"]
            attachment["port"] = _int(controller["address"], 0, "rasd Address", path)
        resource = _rasd(item, "HostResource") or ""
        disk_id = resource.rsplit("/", 1)[-1] if "/disk/" in resource else None
        disk = disks.get(disk_id)
        if disk is not None:
            attachment.update(media.describe(disk["href"]))
            attachment["empty"] = False
            attachment["disk_id"] = disk_id     # an OVF disk id, not a UUID (the standard items carry none)
            attachment["format"] = _ovf_format(disk["format"])
        controller["attachments"].append(attachment)
    info["storage_controllers"] = [dict((k, v) for k, v in c.items() if k != "address") for c in controllers.values()]
    if info["memory_mib"] is None:
        info["notes"].append("the OVF gives no memory size (no rasd item of ResourceType 4 with a VirtualQuantity)")
    for controller in info["storage_controllers"]:
        for attachment in controller["attachments"]:
            if attachment["type"] != "HardDisk" or attachment["empty"]:
                continue
            layer = dict((k, attachment.get(k)) for k in ("location", "path", "exists", "refused", "member",
                                                          "file_size", "mtime") if k in attachment)
            layer.update({"uuid": None, "format": attachment.get("format"), "type": "Normal"})
            info["hard_disks"].append({"controller": controller["name"], "controller_type": controller["type"],
                                       "bus": controller["bus"], "port": attachment["port"],
                                       "device": attachment["device"], "uuid": None,
                                       "current": layer, "chain": [layer]})
    return info


def _memory_mib(item, path):
    quantity = _int(_rasd(item, "VirtualQuantity"), None, "memory VirtualQuantity", path)
    if quantity is None:
        return None
    units = (_rasd(item, "AllocationUnits") or "MegaBytes").strip().lower().replace(" ", "")
    if units in MEMORY_UNITS:
        return quantity * MEMORY_UNITS[units] // (1024 ** 2)
    if units.startswith("byte*2^"):           # DSP0004 programmatic units: byte * 2^20
        exponent = _int(units[len("byte*2^"):], 20, "memory AllocationUnits", path)
        return quantity * (2 ** exponent) // (1024 ** 2)
    raise VirtualBoxError("%s: memory AllocationUnits %r is not understood (expected MegaBytes or byte * 2^N)"
                          % (path, _rasd(item, "AllocationUnits")))


# ----------------------------------------------------------------------------------------------- entry
def read_machine(path, allow_dirs=None, images=True):
    """The machine at ``path``: a ``.vbox`` settings file, an ``.ovf`` descriptor, or an OVA / Vagrant box."""
    lowered = os.fspath(path).lower()
    if not os.path.exists(path):
        raise VirtualBoxError("%s: no such file" % path)
    if not os.path.isfile(path):
        raise VirtualBoxError("%s: not a regular file" % path)
    if lowered.endswith((".ovf", ".ova", ".box")):
        return read_ovf(path, allow_dirs, images)
    if lowered.endswith((".vbox", ".xml", ".vbox-prev")):
        return read_vbox(path, allow_dirs, images)
    with open(path, "rb") as handle:
        head = handle.read(512)
    if b"<VirtualBox" in head:
        return read_vbox(path, allow_dirs, images)
    if b"<Envelope" in head or b":Envelope" in head:
        return read_ovf(path, allow_dirs, images)
    return read_ovf(path, allow_dirs, images)   # a tar archive under another name


def run_virtualbox_machine_info(params):
    """The module's result: {"changed": False, "machine": {...}}."""
    machine = read_machine(params["path"], params.get("allow_dirs") or [], params.get("images", True))
    return {"changed": False, "machine": machine}


def machine_folder(info):
    """The folder to pass as ``allow_dirs`` when the images are opened elsewhere, as this module opens them: a
    differencing VMDK in Snapshots/ names its parent in the folder above (by '..' or an absolute name)."""
    return os.path.dirname(info["path"])


__all__ = ["VirtualBoxError", "read_machine", "read_vbox", "read_ovf", "run_virtualbox_machine_info",
           "virtualbox_machine_info_argument_spec", "mac_with_colons", "esp_in_gpt", "DEFAULTS"]
