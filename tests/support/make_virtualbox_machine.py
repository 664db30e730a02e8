# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VirtualBox machines for tests, written from the formats' specifications (no VirtualBox needed).

Run it (``python3 make_virtualbox_machine.py DIR``: prints a JSON description of what it wrote) or import
it (``make_all(DIR)``, ``make_machine_a``, ``make_machine_b``, ``make_rasd_efi_ovf``).  Standard library
only; it does not use the collection's image library, so the library reading these files is checked
against an independent writer.

* machine A: ``DIR/A/A.vbox`` in VirtualBox's folder layout (settings 1.19, VirtualBox-settings.xsd):
  a dynamic VDI ``A.vdi`` and two snapshots, whose differencing VDIs are ``Snapshots/{uuid}.vdi``; an AHCI
  controller (disk on port 0, an ISO in the machine folder on port 1), two NICs with MACs (one upper, one
  lower case), 2 CPUs, 512 MiB, EFI, RTC in UTC, a shared folder and audio (notes).
* machine B: ``DIR/B.ova`` as VirtualBox exports it: a plain tar of ``B.ovf`` (OVF 1.0 with a
  ``vbox:Machine`` section), ``B-disk001.vmdk`` (streamOptimized) and the manifest ``B.mf``; an IDE
  (PIIX4) controller, 1 CPU, 256 MiB, BIOS.
* ``DIR/efi/efi.ovf`` + ``efi-disk1.vmdk``: an OVF without ``vbox:Machine`` (standard rasd items only)
  whose disk holds a GPT with an EFI system partition.

Every layer has known content: the result gives the sha256 of the disk as each snapshot and the current
state see it.  UUIDs are derived from the names, so the same call writes the same files.

VDI: VirtualBox ``VDICore.h`` (VDIPREHEADER, VDIHEADER1PLUS; image types 1 = dynamic, 4 = differencing,
whose ``uuidLinkage`` is the parent's ``uuidCreate``).  VMDK: VMware "Virtual Disk Format 5.0",
stream-optimized compressed sparse extents (grain markers, grain tables, grain directory, footer,
end-of-stream marker).  GPT: UEFI 2.10 section 5.3.
"""

from __future__ import absolute_import, division, print_function

import argparse
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import uuid
import zlib

MIB = 1024 * 1024
SECTOR = 512
NAMESPACE = uuid.UUID("6d1d3a57-8c57-4a39-9b0e-4c2f3f1a9e10")

# --- VDI (VDICore.h) ------------------------------------------------------------------------------
VDI_PRE_HEADER = struct.Struct("<64sII")
VDI_SIGNATURE = 0xbeda107f
VDI_VERSION = 0x00010001
VDI_TEXT = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
# VDIHEADER1 then the LCHS geometry of VDIHEADER1PLUS.
VDI_HEADER = struct.Struct("<III256sIIIIIIIQIIII16s16s16s16sIIII")
VDI_TYPE_DYNAMIC = 1
VDI_TYPE_DIFFERENCING = 4
VDI_BLOCK_FREE = 0xffffffff
VDI_BLOCK_ZERO = 0xfffffffe
VDI_BLOCK_SIZE = MIB

# --- VMDK sparse extent header (SparseExtentHeader), stream-optimized -----------------------------
VMDK_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH433s")
VMDK_MAGIC = b"KDMV"
VMDK_FLAGS = 1 | (1 << 16) | (1 << 17)     # valid new-line test, compressed grains, markers
VMDK_GD_AT_END = 0xffffffffffffffff
VMDK_GRAIN_SECTORS = 128
VMDK_GTES_PER_GT = 512
VMDK_MARKER_EOS, VMDK_MARKER_GT, VMDK_MARKER_GD, VMDK_MARKER_FOOTER = 0, 1, 2, 3

ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
LINUX_DATA_TYPE = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


def _uuid(*parts):
    return uuid.uuid5(NAMESPACE, "/".join(parts))


def pattern(label, length):
    """``length`` bytes that depend on ``label`` only (the known content of one block)."""
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------- VDI
def write_vdi(path, size, blocks, image_uuid, parent=None, zero_blocks=()):
    """A dynamic VDI (``parent`` None) or a differencing one over ``parent`` (its (uuid, modify uuid)).
    ``blocks``: {block index: 1 MiB of data}; ``zero_blocks``: indexes marked discarded (read as zeroes).
    Returns the image's modification UUID."""
    count = -(-size // VDI_BLOCK_SIZE)
    offset_bmap = SECTOR
    offset_data = offset_bmap + -(-count * 4 // SECTOR) * SECTOR
    block_map = [VDI_BLOCK_FREE] * count
    for index in zero_blocks:
        block_map[index] = VDI_BLOCK_ZERO
    data = bytearray()
    for slot, index in enumerate(sorted(blocks)):
        block_map[index] = slot
        data += blocks[index]
    modify_uuid = _uuid(str(image_uuid), "modify")
    parent_uuid, parent_modify = parent if parent else (uuid.UUID(int=0), uuid.UUID(int=0))
    header = VDI_PRE_HEADER.pack(VDI_TEXT, VDI_SIGNATURE, VDI_VERSION)
    header += VDI_HEADER.pack(
        VDI_HEADER.size, VDI_TYPE_DIFFERENCING if parent else VDI_TYPE_DYNAMIC, 0, b"", offset_bmap,
        offset_data, 0, 0, 0, SECTOR, 0, size, VDI_BLOCK_SIZE, 0, count, len(blocks),
        image_uuid.bytes_le, modify_uuid.bytes_le, parent_uuid.bytes_le, parent_modify.bytes_le,
        0, 16, 63, SECTOR)
    with open(path, "wb") as handle:
        handle.write(header.ljust(offset_bmap, b"\0"))
        handle.write(struct.pack("<%dI" % count, *block_map).ljust(offset_data - offset_bmap, b"\0"))
        handle.write(bytes(data))
    return modify_uuid


# ------------------------------------------------------------------------------------------ VMDK
def _vmdk_header(capacity_sectors, descriptor_sectors, gd_offset, overhead):
    return VMDK_HEADER.pack(VMDK_MAGIC, 3, VMDK_FLAGS, capacity_sectors, VMDK_GRAIN_SECTORS, 1,
                            descriptor_sectors, VMDK_GTES_PER_GT, 0, gd_offset, overhead, 0,
                            b"\n \r\n", 1, b"")


def _marker(value, kind):
    return struct.pack("<QII", value, 0, kind).ljust(SECTOR, b"\0")


def write_stream_vmdk(path, content, image_uuid, adapter="ide"):
    """A streamOptimized VMDK whose guest content is ``content`` (all-zero grains are left out)."""
    capacity = len(content) // SECTOR
    grain = VMDK_GRAIN_SECTORS * SECTOR
    cylinders = min(16383, max(1, capacity // (16 * 63)))
    descriptor = (
        "# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n"
        "# Extent description\nRDONLY %d SPARSE \"%s\"\n\n# The disk Data Base\n#DDB\n\n"
        "ddb.virtualHWVersion = \"4\"\nddb.adapterType=\"%s\"\nddb.geometry.cylinders=\"%d\"\n"
        "ddb.geometry.heads=\"16\"\nddb.geometry.sectors=\"63\"\nddb.geometry.biosCylinders=\"%d\"\n"
        "ddb.geometry.biosHeads=\"16\"\nddb.geometry.biosSectors=\"63\"\nddb.uuid.image=\"%s\"\n"
        "ddb.uuid.parent=\"00000000-0000-0000-0000-000000000000\"\n"
        "ddb.uuid.modification=\"00000000-0000-0000-0000-000000000000\"\n"
        "ddb.uuid.parentmodification=\"00000000-0000-0000-0000-000000000000\"\n"
        % (zlib.crc32(image_uuid.bytes), capacity, os.path.basename(path), adapter, cylinders, cylinders,
           image_uuid)).encode()
    descriptor_sectors = -(-len(descriptor) // SECTOR) + 1
    overhead = 1 + descriptor_sectors
    out = bytearray(_vmdk_header(capacity, descriptor_sectors, VMDK_GD_AT_END, overhead))
    out += descriptor.ljust(descriptor_sectors * SECTOR, b"\0")
    grains = -(-len(content) // grain)
    tables = -(-grains // VMDK_GTES_PER_GT)
    entries = [0] * (tables * VMDK_GTES_PER_GT)
    for index in range(grains):
        data = content[index * grain:(index + 1) * grain]
        if not any(data):
            continue
        compressed = zlib.compress(data)
        entries[index] = len(out) // SECTOR
        record = struct.pack("<QI", index * VMDK_GRAIN_SECTORS, len(compressed)) + compressed
        out += record.ljust(-(-len(record) // SECTOR) * SECTOR, b"\0")
    table_sectors = VMDK_GTES_PER_GT * 4 // SECTOR
    directory = []
    for table in range(tables):
        out += _marker(table_sectors, VMDK_MARKER_GT)
        directory.append(len(out) // SECTOR)
        out += struct.pack("<%dI" % VMDK_GTES_PER_GT, *entries[table * VMDK_GTES_PER_GT:(table + 1) * VMDK_GTES_PER_GT])
    directory_sectors = -(-len(directory) * 4 // SECTOR)
    out += _marker(directory_sectors, VMDK_MARKER_GD)
    gd_offset = len(out) // SECTOR
    out += struct.pack("<%dI" % len(directory), *directory).ljust(directory_sectors * SECTOR, b"\0")
    out += _marker(1, VMDK_MARKER_FOOTER)
    out += _vmdk_header(capacity, descriptor_sectors, gd_offset, overhead)
    out += _marker(0, VMDK_MARKER_EOS)
    with open(path, "wb") as handle:
        handle.write(bytes(out))


# ------------------------------------------------------------------------------------------- GPT
def gpt_disk(size, partitions):
    """``size`` bytes holding a protective MBR and a GPT (128 entries) with ``partitions``:
    (type UUID, first LBA, last LBA, name)."""
    disk = bytearray(size)
    sectors = size // SECTOR
    mbr_entry = struct.pack("<B3sB3sII", 0, b"\0\x02\0", 0xee, b"\xff\xff\xff", 1, min(sectors - 1, 0xffffffff))
    disk[446:462] = mbr_entry
    disk[510:512] = b"\x55\xaa"
    entries = bytearray(128 * 128)
    for index, (type_uuid, first, last, name) in enumerate(partitions):
        entries[index * 128:(index + 1) * 128] = struct.pack(
            "<16s16sQQQ72s", type_uuid.bytes_le, _uuid("gpt", name).bytes_le, first, last, 0,
            name.encode("utf-16-le"))
    entries_crc = zlib.crc32(bytes(entries))

    def header(current, backup, entries_lba):
        fields = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, 92, 0, 0, current, backup, 34,
                             sectors - 34, _uuid("gpt", "disk").bytes_le, entries_lba, 128, 128, entries_crc)
        crc = zlib.crc32(fields)
        return fields[:16] + struct.pack("<I", crc) + fields[20:]

    disk[SECTOR:SECTOR + 92] = header(1, sectors - 1, 2)
    disk[2 * SECTOR:2 * SECTOR + len(entries)] = entries
    backup_entries = (sectors - 33) * SECTOR
    disk[backup_entries:backup_entries + len(entries)] = entries
    disk[(sectors - 1) * SECTOR:(sectors - 1) * SECTOR + 92] = header(sectors - 1, 1, sectors - 33)
    return disk


# ------------------------------------------------------------------------------------- settings XML
def _hardware(attached, firmware, nics, cpus, memory, dvd=None, extras=""):
    """One <Hardware> (the machine's or a snapshot's), attaching hard disk ``attached`` on AHCI port 0."""
    adapters = "".join(
        '        <Adapter slot="%d" enabled="true" MACAddress="%s" type="%s">\n          %s\n        </Adapter>\n'
        % (slot, mac, kind, attachment) for slot, (mac, kind, attachment) in enumerate(nics))
    dvd_device = ('          <AttachedDevice passthrough="false" type="DVD" hotpluggable="false" port="1" device="0">\n'
                  '            <Image uuid="{%s}"/>\n          </AttachedDevice>\n' % dvd) if dvd else ""
    return (
        '    <Hardware>\n'
        '      <CPU count="%d">\n        <PAE enabled="true"/>\n        <LongMode enabled="true"/>\n      </CPU>\n'
        '      <Memory RAMSize="%d"/>\n'
        '      <Firmware type="%s"/>\n'
        '      <Boot>\n        <Order position="1" device="HardDisk"/>\n        <Order position="2" device="DVD"/>\n'
        '        <Order position="3" device="None"/>\n        <Order position="4" device="None"/>\n      </Boot>\n'
        '      <Display controller="VMSVGA" VRAMSize="16"/>\n'
        '      <Network>\n%s      </Network>\n'
        '      <RTC localOrUTC="UTC"/>\n'
        '%s'
        '      <StorageControllers>\n'
        '        <StorageController name="SATA" type="AHCI" PortCount="2" useHostIOCache="false" Bootable="true">\n'
        '          <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">\n'
        '            <Image uuid="{%s}"/>\n          </AttachedDevice>\n'
        '%s'
        '        </StorageController>\n'
        '      </StorageControllers>\n'
        '    </Hardware>\n' % (cpus, memory, firmware, adapters, extras, attached, dvd_device))


def _indent(text, spaces):
    return "".join(" " * spaces + line if line.strip() else line for line in text.splitlines(True))


SNAPSHOT_NAMES = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def _diff_layer(name, number, count):
    """(blocks written, blocks zeroed) of differencing layer ``number`` (1, 2, ...): known content per layer."""
    block = VDI_BLOCK_SIZE
    written = (1, 4) if number == 1 else (2, 5) if number == 2 else (number % count, (number + 3) % count)
    blocks = dict((i, pattern("%s diff%d %d" % (name, number, i), block)) for i in written if i < count)
    return blocks, ((3,) if number == 2 and count > 3 else ())


def make_machine_a(directory, name="A", size=8 * MIB, snapshots=2):
    """Machine A (see the module docstring) with ``snapshots`` snapshots (1 to 8; each adds a differencing VDI;
    the last one is the current snapshot); returns what a test checks.  Written again over the same folder with
    more snapshots, it is the same machine after new snapshots were taken (the earlier files keep their bytes)."""
    if not 1 <= snapshots <= len(SNAPSHOT_NAMES):
        raise ValueError("snapshots: 1 to %d, not %r" % (len(SNAPSHOT_NAMES), snapshots))
    machine_dir = os.path.join(directory, name)
    snapshots_dir = os.path.join(machine_dir, "Snapshots")
    os.makedirs(snapshots_dir, exist_ok=True)
    block = VDI_BLOCK_SIZE
    count = size // block
    base_uuid = _uuid(name, "base")
    # (uuid, path relative to the machine folder, {block: data}, zero blocks), the base first.
    layers = [(base_uuid, name + ".vdi",
               dict((i, pattern("%s base %d" % (name, i), block)) for i in range(min(4, count))), ())]
    for number in range(1, snapshots + 1):
        diff_uuid = _uuid(name, "diff%d" % number)
        blocks, zeroes = _diff_layer(name, number, count)
        layers.append((diff_uuid, "Snapshots/{%s}.vdi" % diff_uuid, blocks, zeroes))
    parent = None
    state = bytearray(size)
    states = []
    for layer_uuid, relative, blocks, zeroes in layers:
        modify = write_vdi(os.path.join(machine_dir, relative), size, blocks, layer_uuid, parent, zeroes)
        parent = (layer_uuid, modify)
        for index, data in blocks.items():
            state[index * block:(index + 1) * block] = data
        for index in zeroes:
            state[index * block:(index + 1) * block] = bytes(block)
        states.append(sha256(bytes(state)))
    iso_uuid = _uuid(name, "iso")
    iso = bytearray(64 * 1024)
    iso[0x8001:0x8006] = b"CD001"
    with open(os.path.join(machine_dir, "tools.iso"), "wb") as handle:
        handle.write(bytes(iso))
    nics = [("080027A1B2C3", "82540EM", "<NAT/>"), ("080027d4e5f6", "virtio", '<BridgedInterface name="eth0"/>')]
    names = SNAPSHOT_NAMES[:snapshots]
    snapshot_uuids = dict((snapshot, _uuid(name, "snapshot", snapshot)) for snapshot in names)
    extras = ('      <AudioAdapter controller="HDA" driver="Pulse" enabled="true"/>\n'
              '      <SharedFolders>\n        <SharedFolder name="share" hostPath="/srv/share" writable="true"/>\n'
              '      </SharedFolders>\n')

    def hardware(attached):
        return _hardware(attached, "EFI", nics, 2, 512, dvd=iso_uuid, extras=extras)

    def registry(index, indent):
        layer_uuid, relative = layers[index][0], layers[index][1]
        attributes = 'uuid="{%s}" location="%s" format="VDI"%s' % (layer_uuid, relative,
                                                                   ' type="Normal"' if index == 0 else "")
        if index + 1 == len(layers):
            return "%s<HardDisk %s/>\n" % (" " * indent, attributes)
        children = registry(index + 1, indent + 2)
        return "%s<HardDisk %s>\n%s%s</HardDisk>\n" % (" " * indent, attributes, children, " " * indent)

    def snapshot_tree(index, indent):
        # Snapshot ``index`` froze layer ``index``: its hardware attaches that layer.
        snapshot = names[index]
        children = ""
        if index + 1 < len(names):
            children = ("%s  <Snapshots>\n%s%s  </Snapshots>\n"
                        % (" " * indent, snapshot_tree(index + 1, indent + 4), " " * indent))
        return ('%s<Snapshot uuid="{%s}" name="%s" timeStamp="2026-01-%02dT00:00:00Z">\n%s%s%s</Snapshot>\n'
                % (" " * indent, snapshot_uuids[snapshot], snapshot, index + 1,
                   _indent(hardware(layers[index][0]), indent - 2), children, " " * indent))

    vbox = (
        '<?xml version="1.0"?>\n'
        '<!-- Written by make_virtualbox_machine.py from VirtualBox-settings.xsd -->\n'
        '<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">\n'
        '  <Machine uuid="{%s}" name="%s" OSType="Debian_64" currentSnapshot="{%s}" snapshotFolder="Snapshots"'
        ' lastStateChange="2026-01-02T03:04:05Z">\n'
        '    <MediaRegistry>\n      <HardDisks>\n%s      </HardDisks>\n'
        '      <DVDImages>\n        <Image uuid="{%s}" location="tools.iso"/>\n      </DVDImages>\n'
        '    </MediaRegistry>\n'
        '%s'
        '%s'
        '  </Machine>\n'
        '</VirtualBox>\n' % (
            _uuid(name, "machine"), name, snapshot_uuids[names[-1]], registry(0, 8), iso_uuid,
            snapshot_tree(0, 4), hardware(layers[-1][0])))
    vbox_path = os.path.join(machine_dir, name + ".vbox")
    with open(vbox_path, "w") as handle:
        handle.write(vbox)
    sha256s = dict((snapshot, states[index]) for index, snapshot in enumerate(names))
    sha256s["current"] = states[-1]
    return {
        "vbox": vbox_path,
        "machine_dir": machine_dir,
        "name": name,
        "uuid": str(_uuid(name, "machine")),
        "virtual_size": size,
        "cpus": 2,
        "memory_mib": 512,
        "firmware": "efi",
        "macs": ["08:00:27:A1:B2:C3", "08:00:27:d4:e5:f6"],
        "nic_types": ["82540EM", "virtio"],
        # The current image first, the base last.
        "disk_uuids": [str(layer[0]) for layer in reversed(layers)],
        "chain": [os.path.join(machine_dir, layer[1]) for layer in reversed(layers)],
        "iso": os.path.join(machine_dir, "tools.iso"),
        "iso_uuid": str(iso_uuid),
        "snapshots": dict((key, str(value)) for key, value in snapshot_uuids.items()),
        "current_snapshot": str(snapshot_uuids[names[-1]]),
        # The disk as each snapshot saw it, and as the current state sees it.
        "sha256": sha256s,
    }


def _ovf_b(name, disk_name, disk_uuid, capacity, machine_uuid, mac):
    return (
        '<?xml version="1.0"?>\n'
        '<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"'
        ' xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"'
        ' xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"'
        ' xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">\n'
        '  <References>\n    <File ovf:id="file1" ovf:href="%(disk)s"/>\n  </References>\n'
        '  <DiskSection>\n    <Info>List of the virtual disks used in the package</Info>\n'
        '    <Disk ovf:capacity="%(capacity)d" ovf:diskId="vmdisk1" ovf:fileRef="file1"'
        ' ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"'
        ' vbox:uuid="%(disk_uuid)s"/>\n  </DiskSection>\n'
        '  <NetworkSection>\n    <Info>Logical networks used in the package</Info>\n'
        '    <Network ovf:name="NAT">\n      <Description>Logical network used by this appliance.</Description>\n'
        '    </Network>\n  </NetworkSection>\n'
        '  <VirtualSystem ovf:id="%(name)s">\n    <Info>A virtual machine</Info>\n'
        '    <OperatingSystemSection ovf:id="96">\n      <Info>The kind of installed guest operating system</Info>\n'
        '      <Description>Debian_64</Description>\n      <vbox:OSType ovf:required="false">Debian_64</vbox:OSType>\n'
        '    </OperatingSystemSection>\n'
        '    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements for a virtual machine</Info>\n'
        '      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n'
        '        <vssd:InstanceID>0</vssd:InstanceID>\n'
        '        <vssd:VirtualSystemIdentifier>%(name)s</vssd:VirtualSystemIdentifier>\n'
        '        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>\n      </System>\n'
        '      <Item>\n        <rasd:Caption>1 virtual CPU</rasd:Caption>\n'
        '        <rasd:Description>Number of virtual CPUs</rasd:Description>\n'
        '        <rasd:ElementName>1 virtual CPU</rasd:ElementName>\n        <rasd:InstanceID>1</rasd:InstanceID>\n'
        '        <rasd:ResourceType>3</rasd:ResourceType>\n        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>\n'
        '      </Item>\n'
        '      <Item>\n        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>\n'
        '        <rasd:Caption>256 MB of memory</rasd:Caption>\n        <rasd:Description>Memory Size</rasd:Description>\n'
        '        <rasd:ElementName>256 MB of memory</rasd:ElementName>\n        <rasd:InstanceID>2</rasd:InstanceID>\n'
        '        <rasd:ResourceType>4</rasd:ResourceType>\n        <rasd:VirtualQuantity>256</rasd:VirtualQuantity>\n'
        '      </Item>\n'
        '      <Item>\n        <rasd:Address>0</rasd:Address>\n        <rasd:Caption>ideController0</rasd:Caption>\n'
        '        <rasd:Description>IDE Controller</rasd:Description>\n'
        '        <rasd:ElementName>ideController0</rasd:ElementName>\n        <rasd:InstanceID>3</rasd:InstanceID>\n'
        '        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>\n        <rasd:ResourceType>5</rasd:ResourceType>\n'
        '      </Item>\n'
        '      <Item>\n        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\n'
        '        <rasd:Caption>Ethernet adapter on \'NAT\'</rasd:Caption>\n        <rasd:Connection>NAT</rasd:Connection>\n'
        '        <rasd:ElementName>Ethernet adapter on \'NAT\'</rasd:ElementName>\n'
        '        <rasd:InstanceID>4</rasd:InstanceID>\n        <rasd:ResourceSubType>PCNet32</rasd:ResourceSubType>\n'
        '        <rasd:ResourceType>10</rasd:ResourceType>\n      </Item>\n'
        '      <Item>\n        <rasd:AddressOnParent>0</rasd:AddressOnParent>\n        <rasd:Caption>disk1</rasd:Caption>\n'
        '        <rasd:Description>Disk Image</rasd:Description>\n        <rasd:ElementName>disk1</rasd:ElementName>\n'
        '        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>\n        <rasd:InstanceID>5</rasd:InstanceID>\n'
        '        <rasd:Parent>3</rasd:Parent>\n        <rasd:ResourceType>17</rasd:ResourceType>\n      </Item>\n'
        '    </VirtualHardwareSection>\n'
        '    <vbox:Machine ovf:required="false" version="1.19-linux" uuid="{%(machine_uuid)s}" name="%(name)s"'
        ' OSType="Debian_64" snapshotFolder="Snapshots" lastStateChange="2026-01-02T03:04:05Z">\n'
        '      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>\n'
        '      <Hardware>\n'
        '        <Memory RAMSize="256"/>\n'
        '        <Boot>\n          <Order position="1" device="HardDisk"/>\n          <Order position="2" device="DVD"/>\n'
        '          <Order position="3" device="None"/>\n          <Order position="4" device="None"/>\n        </Boot>\n'
        '        <Display VRAMSize="16"/>\n'
        '        <Network>\n'
        '          <Adapter slot="0" enabled="true" MACAddress="%(mac)s" type="Am79C973">\n            <NAT/>\n'
        '          </Adapter>\n        </Network>\n'
        '        <StorageControllers>\n'
        '          <StorageController name="IDE" type="PIIX4" PortCount="2" useHostIOCache="true" Bootable="true">\n'
        '            <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">\n'
        '              <Image uuid="{%(disk_uuid)s}"/>\n            </AttachedDevice>\n'
        '            <AttachedDevice passthrough="false" type="DVD" hotpluggable="false" port="1" device="0"/>\n'
        '          </StorageController>\n        </StorageControllers>\n'
        '        <CPU count="1"/>\n'
        '      </Hardware>\n'
        '    </vbox:Machine>\n'
        '  </VirtualSystem>\n'
        '</Envelope>\n' % {"disk": disk_name, "capacity": capacity, "disk_uuid": disk_uuid, "name": name,
                           "machine_uuid": machine_uuid, "mac": mac})


def _tar_add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = 1767322800
    tar.addfile(info, io.BytesIO(data))


def make_machine_b(directory, name="B", size=4 * MIB):
    """Machine B (see the module docstring); returns what a test checks."""
    os.makedirs(directory, exist_ok=True)
    grain = VMDK_GRAIN_SECTORS * SECTOR
    content = bytearray(size)
    for index in (0, 5, 20, size // grain - 1):
        content[index * grain:(index + 1) * grain] = pattern("%s grain %d" % (name, index), grain)
    disk_uuid = _uuid(name, "disk")
    disk_name = "%s-disk001.vmdk" % name
    work = os.path.join(directory, ".%s-work" % name)
    os.makedirs(work, exist_ok=True)
    disk_path = os.path.join(work, disk_name)
    write_stream_vmdk(disk_path, bytes(content), disk_uuid)
    with open(disk_path, "rb") as handle:
        disk = handle.read()
    os.unlink(disk_path)
    os.rmdir(work)
    mac = "080027B0B0B0"
    ovf = _ovf_b(name, disk_name, disk_uuid, size, _uuid(name, "machine"), mac).encode()
    manifest = ("SHA256 (%s.ovf) = %s\nSHA256 (%s) = %s\n" % (name, sha256(ovf), disk_name, sha256(disk))).encode()
    ova_path = os.path.join(directory, name + ".ova")
    with tarfile.open(ova_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        # VirtualBox writes the descriptor first, then the disks, then the manifest.
        _tar_add(tar, name + ".ovf", ovf)
        _tar_add(tar, disk_name, disk)
        _tar_add(tar, name + ".mf", manifest)
    return {
        "ova": ova_path,
        "name": name,
        "uuid": str(_uuid(name, "machine")),
        "virtual_size": size,
        "cpus": 1,
        "memory_mib": 256,
        "firmware": "bios",
        "macs": ["08:00:27:B0:B0:B0"],
        "nic_types": ["Am79C973"],
        "disk_uuids": [str(disk_uuid)],
        "disk_member": disk_name,
        "sha256": {"current": sha256(bytes(content))},
    }


def _ovf_rasd(name, disk_name, capacity):
    """An OVF with standard items only (no vbox:Machine): 2 CPUs, 1 GiB, a SCSI disk, an E1000 NIC."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"'
        ' xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">\n'
        '  <References>\n    <File ovf:href="%(disk)s" ovf:id="file1"/>\n  </References>\n'
        '  <DiskSection>\n    <Info>Virtual disks</Info>\n'
        '    <Disk ovf:capacity="%(capacity)d" ovf:diskId="vmdisk1" ovf:fileRef="file1"'
        ' ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>\n'
        '  </DiskSection>\n'
        '  <VirtualSystem ovf:id="%(name)s">\n    <Info>A virtual machine</Info>\n    <Name>%(name)s</Name>\n'
        '    <OperatingSystemSection ovf:id="101">\n      <Info>OS</Info>\n      <Description>Linux 64-bit</Description>\n'
        '    </OperatingSystemSection>\n'
        '    <VirtualHardwareSection>\n      <Info>Hardware</Info>\n'
        '      <Item>\n        <rasd:ElementName>2 virtual CPUs</rasd:ElementName>\n'
        '        <rasd:InstanceID>1</rasd:InstanceID>\n        <rasd:ResourceType>3</rasd:ResourceType>\n'
        '        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>\n      </Item>\n'
        '      <Item>\n        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>\n'
        '        <rasd:ElementName>1024MB of memory</rasd:ElementName>\n        <rasd:InstanceID>2</rasd:InstanceID>\n'
        '        <rasd:ResourceType>4</rasd:ResourceType>\n        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>\n'
        '      </Item>\n'
        '      <Item>\n        <rasd:Address>0</rasd:Address>\n        <rasd:ElementName>SCSI controller 0</rasd:ElementName>\n'
        '        <rasd:InstanceID>3</rasd:InstanceID>\n        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>\n'
        '        <rasd:ResourceType>6</rasd:ResourceType>\n      </Item>\n'
        '      <Item>\n        <rasd:AddressOnParent>0</rasd:AddressOnParent>\n'
        '        <rasd:ElementName>Hard disk 1</rasd:ElementName>\n'
        '        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>\n        <rasd:InstanceID>4</rasd:InstanceID>\n'
        '        <rasd:Parent>3</rasd:Parent>\n        <rasd:ResourceType>17</rasd:ResourceType>\n      </Item>\n'
        '      <Item>\n        <rasd:Address>00:50:56:aa:bb:cc</rasd:Address>\n'
        '        <rasd:Connection>VM Network</rasd:Connection>\n        <rasd:ElementName>Network adapter 1</rasd:ElementName>\n'
        '        <rasd:InstanceID>5</rasd:InstanceID>\n        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>\n'
        '        <rasd:ResourceType>10</rasd:ResourceType>\n      </Item>\n'
        '    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n'
        % {"disk": disk_name, "capacity": capacity, "name": name})


def make_rasd_efi_ovf(directory, name="efi", size=4 * MIB):
    """``DIR/<name>/<name>.ovf`` (standard items only) and its streamOptimized disk holding a GPT with an ESP."""
    folder = os.path.join(directory, name)
    os.makedirs(folder, exist_ok=True)
    sectors = size // SECTOR
    content = gpt_disk(size, [(ESP_TYPE, 2048, 4095, "EFI system partition"),
                              (LINUX_DATA_TYPE, 4096, sectors - 34, "root")])
    disk_name = "%s-disk1.vmdk" % name
    write_stream_vmdk(os.path.join(folder, disk_name), bytes(content), _uuid(name, "disk"), adapter="lsilogic")
    ovf_path = os.path.join(folder, name + ".ovf")
    with open(ovf_path, "w") as handle:
        handle.write(_ovf_rasd(name, disk_name, size))
    return {"ovf": ovf_path, "name": name, "disk": os.path.join(folder, disk_name), "virtual_size": size,
            "cpus": 2, "memory_mib": 1024, "firmware": "efi", "macs": ["00:50:56:aa:bb:cc"],
            "sha256": {"current": sha256(bytes(content))}}


def make_all(directory):
    """Machines A and B and the rasd-only EFI OVF under ``directory``."""
    return {"A": make_machine_a(directory), "B": make_machine_b(directory), "efi_ovf": make_rasd_efi_ovf(directory)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write VirtualBox machines (no VirtualBox needed) and print what "
                                                 "was written as JSON, with the sha256 of each disk state.")
    parser.add_argument("directory")
    parser.add_argument("--machine-a-only", action="store_true",
                        help="write machine A alone (DIRECTORY/NAME/NAME.vbox), not B and the EFI OVF")
    parser.add_argument("--name", default="A", help="machine A's name and folder (default A)")
    parser.add_argument("--snapshots", type=int, default=2, help="machine A's snapshots, 1 to 8 (default 2)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    directory = os.path.abspath(args.directory)
    if args.machine_a_only:
        written = {args.name: make_machine_a(directory, name=args.name, snapshots=args.snapshots)}
    else:
        written = make_all(directory)
    print(json.dumps(written, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
