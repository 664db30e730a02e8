#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: virtualbox_machine_info
short_description: Read a VirtualBox machine (.vbox, .ovf or .ova) without VirtualBox
version_added: 0.1.0
description:
  - Returns what a VirtualBox machine is made of, read from its files alone, so that it can be rebuilt as a KVM guest
    (the role C(kvm.storage.virtualbox_migration) uses it); VirtualBox need not be installed.
  - Reads VirtualBox settings files (C(.vbox)) from VirtualBox 1.x to 7 (the C(http://www.virtualbox.org/) and the old
    C(http://www.innotek.de/VirtualBox-settings) namespaces, storage controllers under C(Machine) or under
    C(Hardware), the settings 1.20 C(Platform) layout), and OVF appliances (C(.ovf), or an C(.ova) or Vagrant C(.box)
    tar archive) with VirtualBox's C(vbox:Machine) section or, without it, the standard OVF hardware items.
  - Settings VirtualBox leaves out of its files hold its defaults (VirtualBox's settings schema); they are filled in.
  - For each hard disk, returns the image the machine's current state uses (the leaf of its chain of differencing
    images, found through the media registry) with the whole chain, and the snapshot tree.
  - Paths found in the files are untrusted; they follow the collection's path policy with the settings file as the
    referrer, so the machine's folder and its C(Snapshots/) folder are the images' own directories and anything
    elsewhere is refused unless inside O(allow_dirs). A refused or missing image is reported
    (RV(machine.hard_disks[].chain[].refused), RV(machine.hard_disks[].chain[].exists)) and noted in
    RV(machine.notes), never opened; it does not fail the task.
  - Never writes anything.
author:
  - kvm.storage contributors (@kvm-storage)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - kvm.storage.image_policy
attributes:
  action_group:
    membership: [kvm.storage.image]
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - The module never changes anything; it runs the same in check mode.
  diff_mode:
    support: none
options:
  path:
    description:
      - The machine to read, a VirtualBox settings file (C(.vbox)), an OVF descriptor (C(.ovf)), or an OVA or Vagrant
        C(.box) (a tar archive holding an OVF descriptor; a compressed one is read for its descriptor only, its disks
        are listed but not opened).
      - The kind is told by the name's suffix, else by the file's content.
    type: path
    required: true
  images:
    description:
      - Open the current image of each hard disk read-only, to report its format and virtual size
        (RV(machine.hard_disks[].current.virtual_size)), check its backing chain against the media registry and,
        for an OVF without C(vbox:Machine) or a firmware setting, detect EFI from the disk (a GPT with an EFI system
        partition).
      - With V(false), only the XML is read.
    type: bool
    default: true
seealso:
  - module: kvm.storage.disk_image_info
'''

EXAMPLES = r'''
- name: Read a VirtualBox machine in its folder
  kvm.storage.virtualbox_machine_info:
    path: /srv/vbox/A/A.vbox
  register: vm_a

- name: Show the image each hard disk of the current state uses, and what cannot be carried to KVM
  ansible.builtin.debug:
    msg:
      - "{{ vm_a.machine.hard_disks | map(attribute='current') | map(attribute='path') | list }}"
      - "{{ vm_a.machine.notes }}"

- name: Read an appliance exported by VirtualBox (an OVA)
  kvm.storage.virtualbox_machine_info:
    path: /srv/vbox/B.ova
  register: vm_b

- name: Show its CPUs, memory, firmware and MAC addresses
  ansible.builtin.debug:
    msg: >-
      {{ vm_b.machine.cpus }} CPUs, {{ vm_b.machine.memory_mib }} MiB, {{ vm_b.machine.firmware }},
      {{ vm_b.machine.nics | map(attribute='mac') | list }}

- name: Read a machine whose ISO images lie in a shared folder, without opening its disks
  kvm.storage.virtualbox_machine_info:
    path: /srv/vbox/A/A.vbox
    allow_dirs:
      - /srv/iso
    images: false
'''

RETURN = r'''
machine:
  description: The machine.
  returned: success
  type: dict
  contains:
    path:
      description: The file read.
      type: str
      sample: /srv/vbox/A/A.vbox
    folder:
      description:
        - The machine's folder (that of the file read), whose files and C(Snapshots/) are the images' own
          directories; give it as C(allow_dirs) to the modules that open the images
          (M(kvm.storage.disk_image_info), M(kvm.storage.disk_image)), as this module does when it opens them.
      type: str
      sample: /srv/vbox/A
    source:
      description: What the file is, V(vbox) (a settings file), V(ovf) (an OVF descriptor) or V(ova) (a tar archive).
      type: str
      sample: vbox
    settings_version:
      description:
        - The settings format version (the C(version) of C(VirtualBox) or of C(vbox:Machine)); null for an OVF without
          C(vbox:Machine).
      type: str
      sample: 1.19-linux
    name:
      description: The machine's name.
      type: str
      sample: A
    uuid:
      description: The machine's UUID (without braces); null for an OVF without C(vbox:Machine).
      type: str
      sample: bc9309cf-639c-573d-b4b7-91072b100e38
    os_type:
      description: VirtualBox's guest OS type (C(OSType)), or the OVF's operating system description.
      type: str
      sample: Debian_64
    cpus:
      description: The number of virtual CPUs.
      type: int
      sample: 2
    memory_mib:
      description: The memory size in MiB; null when the file gives none (RV(machine.notes) says so).
      type: int
      sample: 2048
    firmware:
      description: V(bios) or V(efi).
      type: str
      sample: efi
    firmware_type:
      description: The firmware type as VirtualBox writes it (C(BIOS), C(EFI), C(EFI64)...); null when the file gives none.
      type: str
      sample: EFI
    firmware_source:
      description:
        - Where RV(machine.firmware) comes from, V(settings) (the file says so), V(default) (the file says nothing,
          BIOS), V(ovf) (a VMware C(firmware) setting in the OVF) or V(disk) (an OVF without C(vbox:Machine) or a
          firmware setting, whose first disk holds a GPT with an EFI system partition).
      type: str
      sample: settings
    chipset:
      description: The chipset, V(PIIX3) or V(ICH9).
      type: str
      sample: PIIX3
    rtc:
      description: Whether the guest's clock runs in V(local) time or in V(utc).
      type: str
      sample: utc
    boot_order:
      description: The boot devices in order (C(HardDisk), C(DVD), C(Floppy), C(Network)), without the unused positions.
      type: list
      elements: str
      sample: [HardDisk, DVD]
    nics:
      description: The network adapters, by slot.
      type: list
      elements: dict
      contains:
        slot:
          description: The adapter's slot (0 to 35).
          type: int
        enabled:
          description: Whether the adapter is enabled.
          type: bool
        mac:
          description:
            - The MAC address with colons, its letters in the case VirtualBox stored them; null when none is
              stored.
          type: str
          sample: "08:00:27:A1:B2:C3"
        type:
          description:
            - The adapter type (C(Am79C970A), C(Am79C973), C(Am79C960) PCnet, C(82540EM), C(82543GC), C(82545EM)
              Intel PRO/1000, C(virtio)).
          type: str
          sample: 82540EM
        attachment:
          description:
            - What the adapter is attached to, C(NAT), C(Bridged), C(Internal), C(HostOnly), C(NATNetwork),
              C(Generic), C(HostOnlyNetwork), C(Cloud) or C(None).
          type: str
          sample: Bridged
        network:
          description:
            - The bridged host interface, internal network, host-only interface, NAT network or generic driver name,
              or the OVF network name; null for NAT.
          type: str
          sample: eth0
        cable:
          description: Whether the cable is connected.
          type: bool
    storage_controllers:
      description: The storage controllers and what is attached to them.
      type: list
      elements: dict
      contains:
        name:
          description: The controller's name.
          type: str
          sample: SATA
        type:
          description:
            - The controller type (C(PIIX3), C(PIIX4), C(ICH6), C(AHCI), C(LsiLogic), C(BusLogic), C(LsiLogicSas),
              C(I82078), C(USB), C(NVMe), C(VirtioSCSI)).
          type: str
          sample: AHCI
        bus:
          description: The bus (C(IDE), C(SATA), C(SCSI), C(SAS), C(Floppy), C(USB), C(PCIe), C(VirtioSCSI)).
          type: str
          sample: SATA
        port_count:
          description: The number of ports; null when the file does not say.
          type: int
        bootable:
          description: Whether the firmware may boot from the controller.
          type: bool
        use_host_io_cache:
          description: Whether VirtualBox used the host's I/O cache for the controller.
          type: bool
        attachments:
          description:
            - The devices attached, with RV(machine.storage_controllers[].attachments[].type) C(HardDisk), C(DVD) or
              C(Floppy), RV(machine.storage_controllers[].attachments[].port) and
              RV(machine.storage_controllers[].attachments[].device), the C(medium_uuid) attached, the image's
              C(location) as written, its resolved C(path), C(exists), C(refused) (why the path policy refused it) and
              C(format), or C(host_drive) (a host device), or C(empty) (a drive without a medium).
          type: list
          elements: dict
          contains:
            type:
              description: C(HardDisk), C(DVD) or C(Floppy).
              type: str
            port:
              description: The port (for IDE, the channel).
              type: int
            device:
              description: The device on the port (for IDE, master 0 or slave 1).
              type: int
    hard_disks:
      description: The hard disks of the current state, in controller order.
      type: list
      elements: dict
      contains:
        controller:
          description: The name of the controller the disk is attached to.
          type: str
        controller_type:
          description: Its type (as in RV(machine.storage_controllers[].type)).
          type: str
        bus:
          description: Its bus.
          type: str
        port:
          description: The port.
          type: int
        device:
          description: The device on the port.
          type: int
        uuid:
          description: The UUID of the medium attached (the current image); null for an OVF without C(vbox:Machine).
          type: str
        current:
          description:
            - The image the current state uses (the first element of RV(machine.hard_disks[].chain)), null when the
              medium is not in the file's media registry.
          type: dict
          contains:
            uuid:
              description: The medium's UUID (without braces); null for an OVF without C(vbox:Machine).
              type: str
            format:
              description: The format the file records for the medium (C(VDI), C(VMDK), C(VHD)...).
              type: str
              sample: VDI
            type:
              description: The medium type (C(Normal), C(Immutable)..., C(Differencing) for a differencing image).
              type: str
            location:
              description: The location as written in the file.
              type: str
              sample: Snapshots/{d446c10d-5aaf-504f-9af1-d486a380b377}.vdi
            path:
              description:
                - The location resolved against the settings file's folder, or C(<archive>/<member>) inside an OVA.
              type: str
            member:
              description: The tar member, for an image inside an OVA or box.
              type: str
              returned: for an image inside an archive
            exists:
              description:
                - Whether the image exists; null when the name was refused (nothing was looked at), or when a
                  compressed archive is too long for its members to be listed.
              type: bool
            refused:
              description: Null, or why the path policy refused the name (the image is then not opened).
              type: str
            file_size:
              description: The size of the image file in bytes (of the tar member, inside an archive).
              type: int
              returned: when the image exists
            mtime:
              description:
                - The modification time of the image file (of the archive, inside one), seconds since the epoch.
                - With RV(machine.hard_disks[].current.file_size), what tells that a source changed since it was read.
              type: float
              returned: when the image exists
            virtual_size:
              description: The virtual size in bytes, read from the image.
              type: int
              returned: when O(images=true) and the image could be opened
            image_format:
              description: The format the image library found.
              type: str
              returned: when O(images=true) and the image could be opened
        chain:
          description:
            - The chain of differencing images from the current image down to its base (the current image first), as
              the media registry nests them.
          type: list
          elements: dict
          contains:
            uuid:
              description: The medium's UUID (without braces); null for an OVF without C(vbox:Machine).
              type: str
            format:
              description: The format the file records for the medium (C(VDI), C(VMDK), C(VHD)...).
              type: str
              sample: VDI
            type:
              description: The medium type (C(Normal), C(Immutable)..., C(Differencing) for a differencing image).
              type: str
            location:
              description: The location as written in the file.
              type: str
              sample: Snapshots/{d446c10d-5aaf-504f-9af1-d486a380b377}.vdi
            path:
              description:
                - The location resolved against the settings file's folder, or C(<archive>/<member>) inside an OVA.
              type: str
            member:
              description: The tar member, for an image inside an OVA or box.
              type: str
              returned: for an image inside an archive
            exists:
              description:
                - Whether the image exists; null when the name was refused (nothing was looked at), or when a
                  compressed archive is too long for its members to be listed.
              type: bool
            refused:
              description: Null, or why the path policy refused the name (the image is then not opened).
              type: str
            file_size:
              description: The size of the image file in bytes (of the tar member, inside an archive).
              type: int
              returned: when the image exists
            mtime:
              description:
                - The modification time of the image file (of the archive, inside one), seconds since the epoch.
                - With RV(machine.hard_disks[].current.file_size), what tells that a source changed since it was read.
              type: float
              returned: when the image exists
        image_chain:
          description: The chain as the images themselves name it (opened read-only), the current image first.
          type: list
          elements: str
          returned: when O(images=true) and the current image could be opened
        image_error:
          description: Why the current image could not be opened.
          type: str
          returned: when O(images=true) and the current image exists but could not be opened
    snapshots:
      description:
        - The snapshot tree, its roots (VirtualBox has one), each with C(uuid), C(name), C(time_stamp), C(current)
          (whether it is the current snapshot), C(hard_disks) (the media its hardware attaches, each with
          C(controller), C(port), C(device) and C(uuid)) and C(children).
      type: list
      elements: dict
    current_snapshot:
      description: The current snapshot (C(uuid) and C(name)), null when the machine has no snapshot.
      type: dict
      sample: {"uuid": "38c805b9-0a4b-5c34-b1f7-4af1a8ae61ce", "name": "second"}
    notes:
      description:
        - What cannot be carried to a KVM guest (shared folders, USB controllers and filters, 3D acceleration, audio,
          remote display, serial ports, host drives, a saved state, NAT port forwarding) and images that are missing,
          refused or unknown.
      type: list
      elements: str
      sample: ["shared folder 'share' (host path /srv/share) is not carried: share it another way (virtiofs, NFS)"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import policy_argument_spec
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes
from ansible_collections.kvm.storage.plugins.module_utils._virtualbox import (
    VirtualBoxError,
    run_virtualbox_machine_info,
    virtualbox_machine_info_argument_spec,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError


def main():
    argument_spec = virtualbox_machine_info_argument_spec()
    argument_spec.update(policy_argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    try:
        result = run_virtualbox_machine_info(module.params)
    except (VirtualBoxError, ImageError) as exc:
        module.fail_json(msg=to_native(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg=to_native(exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
