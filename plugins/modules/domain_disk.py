#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: domain_disk
short_description: Attach, detach and update the disks of a libvirt domain
version_added: 0.1.0
description:
  - Attaches a disk to a libvirt domain, detaches it, or changes it, in the domain's persistent definition, in the running
    domain (live), or both.
  - "Sources: an image file, a block device, a volume of a libvirt storage pool, or a network disk (nbd, iscsi, rbd, ssh,
    http, https, and the other protocols libvirt knows). Devices: disk, cdrom, floppy, lun. Buses: virtio, scsi, sata, ide,
    usb, fdc."
  - The format written into the disk's driver is the image's real format, as the image library embedded in this
    collection detects it from the image's header; a O(format) that says otherwise is an error, never a guest reading an
    image in the wrong format.
  - The disk is found by O(target), or by its source when O(target) is not given. A new disk without O(target) gets the
    first free target name of its bus (V(vdX) for virtio, V(sdX) for scsi, sata and usb, V(hdX) for ide, V(fdX) for fdc).
  - Options that are not given keep the value the disk has; a new disk gets libvirt's defaults. The disk found and the
    disk asked for are compared as normalised disk elements, without what libvirt adds on its own (addresses, aliases,
    the backing chain, the driver name).
  - On a cdrom or floppy drive the source is the medium. Changing it is a media change (live too). A task without O(source)
    keeps the medium the drive has; only O(source) set to V("") ejects it, and the eject is named in RV(actions).
  - A disk found by O(target) whose source is another image keeps it, and the task fails, unless O(replace_source=true).
  - Everything the module can know is checked before anything changes, in check mode too, against the disk the task
    produces (the options given over the ones kept) - O(io=native) with a cache mode that is not V(none) or
    V(directsync), a O(boot_order) that libvirt refuses, a O(wwn) off the ide and scsi buses, a hot-plug or hot-unplug
    QEMU cannot make, a live change libvirt cannot make - so that such a task fails without changing anything.
  - A source attached read-write to another running domain is refused, unless both disks are shareable.
author:
  - kvm.storage contributors (@kvm-storage)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - kvm.storage.libvirt
attributes:
  action_group:
    membership: [kvm.storage.libvirt]
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - Check mode computes the same plan as a real run (including the format detection, the conflict check and the
        refusals the module knows, see the description) and returns the same RV(actions), diff and C(changed). It cannot
        tell whether a guest would acknowledge a live detach, nor foresee other refusals of libvirt.
  diff_mode:
    support: full
    details:
      - The diff shows the normalised disk element of each definition managed (persistent, live), or V(absent).
options:
  domain:
    description:
      - Name of the domain.
    type: str
    required: true
  target:
    description:
      - Target device name of the disk in the guest, such as V(vdb), V(sda), V(hdc) or V(fda).
      - The disk is found by its target. Without O(target), it is found by O(source), and a new disk gets the first
        free target of its bus.
      - Needed for an empty cdrom or floppy drive, and to eject a medium.
    type: str
  source:
    description:
      - Where the disk's data is. One of
      - "a path (a string): an image file (O(type=file)) or a block device (O(type=block)); without O(type), a block
        device when the path is one on this host, otherwise a file;"
      - "a dict with C(pool) and C(volume): a volume of a libvirt storage pool (O(type=volume)), and C(mode) (V(host) or
        V(direct)) for volumes of iSCSI pools;"
      - "a dict with C(protocol) (V(nbd), V(iscsi), V(rbd), V(ssh), V(http), V(https), V(ftp), V(ftps), V(tftp), V(gluster),
        V(nfs)), C(name) (rbd: V(pool/image); iscsi: V(target-iqn/lun); nbd: the export name, optional; others: the path on
        the server), C(host) (a name, V(name:port), a dict with C(name) and C(port), or a list of these), C(port) (the port of
        hosts that name none), C(auth) (a dict with C(username), and C(secret_usage) or C(secret_uuid) naming a libvirt secret,
        and C(secret_type), V(ceph) for rbd and V(iscsi) for iscsi by default) and C(initiator) (iscsi: the initiator's IQN):
        a network disk (O(type=network)); or a dict with C(path), the same as a path."
      - Files and block devices must exist; their format is detected. A pool volume's format is detected when its pool
        keeps its volumes on this host, otherwise taken from libvirt. A network disk's format cannot be read, so O(format)
        is required for it.
      - On a cdrom or floppy drive, V("") is an empty drive (it ejects the medium of a drive that has one); without
        O(source), the drive keeps its medium, and a new drive is empty. On other devices a new disk needs a source.
      - Given with O(target), a source that is not the one the disk at that target has replaces the image the guest sees
        there only with O(replace_source=true) (a medium change of a cdrom or floppy drive needs nothing).
    type: raw
  replace_source:
    description:
      - Whether a disk found by O(target) with another source gets O(source) in its place (the guest then sees another
        image under the same target). Without it such a task fails, so that a target already taken is never silently
        given another image.
      - A running domain cannot change the source of a disk that is not a cdrom or floppy live; set O(live=false) for it.
    type: bool
    default: false
  type:
    description:
      - Type of the source. Usually implied by O(source), see there; a given type must agree with it.
    type: str
    choices: [file, block, volume, network]
  device:
    description:
      - What the guest sees. V(lun) passes SCSI commands through to a block device or an iSCSI LUN (bus V(scsi)).
      - Defaults to V(disk) for a new disk; an existing disk keeps its device unless given (a change replaces the disk in the
        persistent definition, and is refused live).
    type: str
    choices: [disk, cdrom, floppy, lun]
  bus:
    description:
      - Bus of the disk. Defaults to the bus of the target name (V(vd) virtio, V(sd) scsi, V(hd) ide, V(fd) fdc), otherwise by
        device, V(virtio) for disks, V(ide) for cdroms (V(sata) on q35 machines), V(fdc) for floppies, V(scsi) for luns.
      - libvirt adds the controller a bus needs (an ide, sata, scsi or floppy controller), also live for scsi.
      - QEMU cannot hot-plug or hot-unplug sata, ide and fdc disks, nor a cdrom or floppy drive on another bus than scsi or
        usb; attach or detach those with the domain shut off (or O(live=false)). The task fails on them before changing
        anything.
      - The target name must fit the bus (V(vdX) for virtio, V(sdX) for scsi, sata and usb, V(hdX) for ide, V(fdX) for fdc).
    type: str
    choices: [virtio, scsi, sata, ide, usb, fdc]
  format:
    description:
      - Format of the image, such as V(raw) or V(qcow2). It is detected for files, block devices and pool volumes, and a given
        format must equal the detected one; required for network disks (nothing here reads them).
      - ISO images (cdrom media) are V(raw) images to QEMU.
    type: str
  cache:
    description:
      - Host cache mode of the disk.
    type: str
    choices: [default, none, writethrough, writeback, directsync, unsafe]
  io:
    description:
      - Asynchronous I/O mode.
      - V(native) needs O(cache=none) or V(directsync) in the disk the task produces (a cache mode the disk keeps counts too);
        libvirt refuses the other combinations, so the task fails before changing anything.
    type: str
    choices: [threads, native, io_uring]
  discard:
    description:
      - Whether the guest's discard (trim) requests are passed to the image (V(unmap)) or ignored.
    type: str
    choices: [unmap, ignore]
  detect_zeroes:
    description:
      - Whether QEMU detects writes of zeroes and turns them into zero writes (V(on)) or discards (V(unmap), with O(discard=unmap)).
    type: str
    choices: ['off', 'on', unmap]
  readonly:
    description:
      - Whether the guest sees the disk read-only. Cdroms are always read-only.
    type: bool
  shareable:
    description:
      - Whether the disk may be used by several domains at once (the guests must coordinate, for example with a cluster
        filesystem). Needed on both sides to attach a source used read-write by another running domain.
    type: bool
  serial:
    description:
      - Serial number the guest sees. V("") removes it.
    type: str
  wwn:
    description:
      - World wide name of the disk (16 hexadecimal digits). V("") removes it.
      - libvirt gives one only to disks on the ide and scsi buses; on another bus the task fails before changing anything.
    type: str
  boot_order:
    description:
      - Boot order of the disk (1 first). V(0) removes it.
      - libvirt refuses it for domains whose definition has C(<os><boot dev=.../></os>), which libvirt adds to a domain
        defined without any boot order, and a boot order another device has; the task fails on both before changing
        anything.
    type: int
  state:
    description:
      - V(present) attaches the disk, or changes it where it differs from the task.
      - V(absent) detaches it (found by O(target) or O(source); the other options are not used). The image is left alone.
    type: str
    choices: [present, absent]
    default: present
  persistent:
    description:
      - Manage the disk in the domain's persistent definition (what the domain has when it starts next).
    type: bool
    default: true
  live:
    description:
      - Manage the disk in the running domain. Defaults to V(true) when the domain runs, V(false) otherwise.
      - V(true) for a domain that does not run is an error.
      - Some changes cannot be made live - O(cache), O(io), O(discard), O(readonly), O(shareable), O(serial), O(wwn),
        O(boot_order), and the source of a disk that is not a cdrom or floppy; the task fails on them before changing
        anything. Set O(live=false) and restart the domain for them.
    type: bool
  detach_timeout:
    description:
      - Seconds to wait for the guest to release a disk detached live. libvirt only asks for the hot-unplug, and most buses
        (virtio, and pci devices in general) need the guest OS to acknowledge it; a disk still attached after this time
        fails the task, and the persistent definition is then left unchanged.
      - Disks on the scsi and usb buses are released by QEMU itself, without the guest.
      - libvirt itself waits up to 5 seconds for the release before it returns, so a detach the guest ignores takes at least
        that long to fail. Running the task again repeats the unplug request.
    type: int
    default: 30
notes:
  - Changes are made live first, then in the persistent definition, so that a change the running domain refuses leaves the
    persistent definition as it was.
  - When a step fails after others succeeded (libvirt refuses the persistent change after the live one was made), the
    steps done are undone, latest first. What cannot be undone (a live attach of a virtio disk that no guest releases)
    is reported in the failed result with C(changed=true) and the RV(actions) done.
  - Format detection reads the image's header on the managed host; with a remote O(uri), files and block devices are the
    remote host's, so the format is not detected and must be given (or be the disk's current one).
seealso:
  - module: kvm.storage.domain_disk_info
  - module: kvm.storage.disk_image
  - name: libvirt domain XML format, hard drives, floppy disks, CDROMs
    description: The elements of a disk.
    link: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
'''

EXAMPLES = r'''
- name: Attach a qcow2 image as the next free virtio disk, now and in the persistent definition
  kvm.storage.domain_disk:
    domain: web1
    source: /var/lib/libvirt/images/web1-data.qcow2
    cache: none
    io: native
    discard: unmap
    detect_zeroes: unmap

- name: Attach a block device as sdb, shared by two cluster nodes
  kvm.storage.domain_disk:
    domain: "{{ item }}"
    target: sdb
    bus: scsi
    source: /dev/mapper/shared_lun
    type: block
    shareable: true
    serial: CLUSTER01
    wwn: "5000c50015ea71ad"
  loop: [node1, node2]

- name: >-
    Attach a pool volume to the persistent definition only, read-only, second in the boot order (the system disk has boot
    order 1; libvirt refuses boot orders in a domain that boots by <os><boot dev=.../></os>)
  kvm.storage.domain_disk:
    domain: web1
    target: vdc
    source:
      pool: images
      volume: tools.qcow2
    readonly: true
    boot_order: 2
    live: false

- name: Attach a Ceph RBD image (its format cannot be read here, so it is given)
  kvm.storage.domain_disk:
    domain: db1
    target: vdd
    source:
      protocol: rbd
      name: libvirt-pool/db1-data
      host: [mon1.example.com:6789, mon2.example.com:6789]
      auth:
        username: libvirt
        secret_usage: client.libvirt secret
    format: raw

- name: Attach an iSCSI LUN as a SCSI passthrough device
  kvm.storage.domain_disk:
    domain: db1
    target: sdc
    device: lun
    bus: scsi
    source:
      protocol: iscsi
      name: iqn.2013-06.com.example:storage/1
      host: san.example.com
      port: 3260
      initiator: iqn.2013-06.com.example:db1
    format: raw

- name: An NBD export, an HTTPS image and an image over SSH
  kvm.storage.domain_disk:
    domain: test1
    target: "{{ item.target }}"
    source: "{{ item.source }}"
    format: "{{ item.format }}"
  loop:
    - {target: vde, source: {protocol: nbd, name: export1, host: {name: nbd.example.com, port: 10809}}, format: qcow2}
    - {target: vdf, source: {protocol: https, name: /images/tools.iso, host: www.example.com}, format: raw}
    - {target: vdg, source: {protocol: ssh, name: /srv/images/a.qcow2, host: storage.example.com}, format: qcow2}

- name: Add an empty cdrom drive (the domain shut off; ide cannot be hot-plugged)
  kvm.storage.domain_disk:
    domain: web1
    target: hdc
    device: cdrom
    bus: ide

- name: Insert an installation medium into it (live too when the domain runs)
  kvm.storage.domain_disk:
    domain: web1
    target: hdc
    device: cdrom
    source: /var/lib/libvirt/images/debian-12.iso

- name: Eject it (a task without source keeps the medium)
  kvm.storage.domain_disk:
    domain: web1
    target: hdc
    source: ""

- name: A floppy image
  kvm.storage.domain_disk:
    domain: dos1
    target: fda
    device: floppy
    source: /srv/floppies/boot.img

- name: A disk image on the sata bus and a usb stick image, in the persistent definition only
  kvm.storage.domain_disk:
    domain: web1
    source: "{{ item.source }}"
    bus: "{{ item.bus }}"
    format: raw
    persistent: true
    live: false
  loop:
    - {source: /srv/sata.img, bus: sata}
    - {source: /srv/stick.img, bus: usb}

- name: Change the cache mode of vdb in the persistent definition (it cannot change live); io=native needs cache none
  kvm.storage.domain_disk:
    domain: web1
    target: vdb
    cache: writeback
    io: threads
    live: false

- name: Give vdb another image (a target already used keeps its image unless replace_source is true)
  kvm.storage.domain_disk:
    domain: web1
    target: vdb
    source: /var/lib/libvirt/images/web1-data2.qcow2
    replace_source: true
    live: false

- name: Detach a disk found by its source, waiting up to 2 minutes for the guest to release it
  kvm.storage.domain_disk:
    domain: web1
    source: /var/lib/libvirt/images/web1-data2.qcow2
    state: absent
    detach_timeout: 120

- name: On another host
  kvm.storage.domain_disk:
    domain: web2
    target: vdb
    source: /var/lib/libvirt/images/web2-data.qcow2
    format: qcow2
    uri: qemu+ssh://root@hv2.example.com/system
'''

RETURN = r'''
target:
  description:
    - Target name of the disk (the one chosen for a new disk); null for an absent disk found by a source it does not have.
  returned: success
  type: str
  sample: vdb
disk:
  description:
    - The disk after the task (in check mode, as it would be), from the persistent definition when it is managed, otherwise
      from the live one. An empty dictionary when there is no such disk.
  returned: success
  type: dict
  contains:
    target:
      description: Target name.
      type: str
      returned: when a disk
      sample: vdb
    bus:
      description: Bus.
      type: str
      returned: when a disk
      sample: virtio
    device:
      description: V(disk), V(cdrom), V(floppy) or V(lun).
      type: str
      returned: when a disk
      sample: disk
    type:
      description: V(file), V(block), V(volume) or V(network).
      type: str
      returned: when a disk
      sample: file
    source:
      description: The path of a file or block device, a dict for a pool volume or a network disk (C(host) a list of dicts
        with C(name) and C(port)), null for an empty drive.
      type: raw
      returned: when a disk
      sample: /var/lib/libvirt/images/web1-data.qcow2
    format:
      description: Format of the image (the driver type); null for an empty drive.
      type: str
      returned: when a disk
      sample: qcow2
    cache:
      description: Cache mode, null when libvirt's default.
      type: str
      returned: when a disk
      sample: none
    io:
      description: I/O mode, null when libvirt's default.
      type: str
      returned: when a disk
      sample: native
    discard:
      description: Discard mode, null when libvirt's default.
      type: str
      returned: when a disk
      sample: unmap
    detect_zeroes:
      description: Zero detection, null when libvirt's default.
      type: str
      returned: when a disk
      sample: unmap
    readonly:
      description: Whether the guest sees the disk read-only.
      type: bool
      returned: when a disk
      sample: false
    shareable:
      description: Whether the disk is shareable.
      type: bool
      returned: when a disk
      sample: false
    serial:
      description: Serial number, or null.
      type: str
      returned: when a disk
      sample: DATA01
    wwn:
      description: World wide name, or null.
      type: str
      returned: when a disk
      sample: 5000c50015ea71ad
    boot_order:
      description: Boot order, or null.
      type: int
      returned: when a disk
      sample: 1
    xml:
      description: The normalised disk element (what the task compares and the diff shows).
      type: str
      returned: when a disk
      sample: "<disk device=\"disk\" type=\"file\">...</disk>"
live_disk:
  description:
    - The disk in the live definition after the task (in check mode, as it would be, when live is managed), with the keys of
      RV(disk). An empty dictionary when the domain does not run or has no such disk live.
  returned: success
  type: dict
  sample: {}
actions:
  description:
    - What was done, or in check mode what would be done, in order; empty when nothing changed.
    - In a failed task, the steps done before the failure that could not be undone (C(changed) is then true).
  returned: success, and failures that leave steps done
  type: list
  elements: str
  sample:
    - attach disk /var/lib/libvirt/images/web1-data.qcow2 as vdb to the live definition of domain 'web1'
    - attach disk /var/lib/libvirt/images/web1-data.qcow2 as vdb to the persistent definition of domain 'web1'
notes:
  description:
    - The warnings of the task, also shown as warnings (an image probed as raw whose first sector looks like another format).
  returned: success
  type: list
  elements: str
  sample: []
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import run_libvirt_module
from ansible_collections.kvm.storage.plugins.module_utils._domain_disk import (
    domain_disk_argument_spec,
    run_domain_disk,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=domain_disk_argument_spec(),
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    run_libvirt_module(module, lambda conn: run_domain_disk(conn, module.params, module.check_mode))


if __name__ == '__main__':
    main()
