#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: domain_disk_info
short_description: List the disks of a libvirt domain
version_added: 0.1.0
description:
  - Lists the disks of a libvirt domain, in its persistent definition and, when it runs, in its live definition, with the
    fields that M(kvm.storage.domain_disk) manages.
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
      - The module never changes anything; it runs the same in check mode.
  diff_mode:
    support: none
options:
  domain:
    description:
      - Name of the domain.
    type: str
    required: true
  target:
    description:
      - Only the disk with this target name (such as V(vdb)).
    type: str
seealso:
  - module: kvm.storage.domain_disk
'''

EXAMPLES = r'''
- name: The disks of web1
  kvm.storage.domain_disk_info:
    domain: web1
  register: web1_disks

- name: The image files web1 uses
  ansible.builtin.debug:
    msg: "{{ web1_disks.disks | selectattr('type', 'equalto', 'file') | map(attribute='source') | select | list }}"

- name: Is a medium in the cdrom drive of the running domain?
  kvm.storage.domain_disk_info:
    domain: web1
    target: hdc
    uri: qemu:///system
  register: cdrom

- name: Show it
  ansible.builtin.debug:
    msg: "{{ cdrom.live_disks[0].source | default('no medium') }}"
'''

RETURN = r'''
domain:
  description: The domain.
  returned: success
  type: dict
  contains:
    name:
      description: Name of the domain.
      type: str
      returned: always
      sample: web1
    active:
      description: Whether the domain runs.
      type: bool
      returned: always
      sample: true
    persistent:
      description: Whether the domain has a persistent definition (it is not transient).
      type: bool
      returned: always
      sample: true
disks:
  description:
    - The disks of the persistent definition (of the live one for a transient domain), in the definition's order.
  returned: success
  type: list
  elements: dict
  contains:
    target:
      description: Target name.
      type: str
      returned: always
      sample: vda
    bus:
      description: Bus.
      type: str
      returned: always
      sample: virtio
    device:
      description: V(disk), V(cdrom), V(floppy) or V(lun).
      type: str
      returned: always
      sample: disk
    type:
      description: V(file), V(block), V(volume) or V(network).
      type: str
      returned: always
      sample: file
    source:
      description: The path of a file or block device, a dict for a pool volume (C(pool), C(volume)) or a network disk
        (C(protocol), C(name), C(host) a list of dicts with C(name) and C(port)), null for an empty drive.
      type: raw
      returned: always
      sample: /var/lib/libvirt/images/web1.qcow2
    format:
      description: Format of the image (the driver type); null for an empty drive.
      type: str
      returned: always
      sample: qcow2
    cache:
      description: Cache mode, null when libvirt's default.
      type: str
      returned: always
      sample: none
    io:
      description: I/O mode, null when libvirt's default.
      type: str
      returned: always
      sample: native
    discard:
      description: Discard mode, null when libvirt's default.
      type: str
      returned: always
      sample: unmap
    detect_zeroes:
      description: Zero detection, null when libvirt's default.
      type: str
      returned: always
      sample: "off"
    readonly:
      description: Whether the guest sees the disk read-only (always for cdroms).
      type: bool
      returned: always
      sample: false
    shareable:
      description: Whether the disk is shareable.
      type: bool
      returned: always
      sample: false
    serial:
      description: Serial number, or null.
      type: str
      returned: always
      sample: DATA01
    wwn:
      description: World wide name, or null.
      type: str
      returned: always
      sample: 5000c50015ea71ad
    boot_order:
      description: Boot order, or null.
      type: int
      returned: always
      sample: 1
    xml:
      description: The normalised disk element (without addresses, aliases, backing chain).
      type: str
      returned: always
      sample: "<disk device=\"disk\" type=\"file\">...</disk>"
live_disks:
  description:
    - The disks of the running domain, with the keys of RV(disks); empty when the domain does not run.
  returned: success
  type: list
  elements: dict
  sample: []
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import run_libvirt_module
from ansible_collections.kvm.storage.plugins.module_utils._domain_disk import (
    domain_disk_info_argument_spec,
    run_domain_disk_info,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=domain_disk_info_argument_spec(),
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    run_libvirt_module(module, lambda conn: run_domain_disk_info(conn, module.params), readonly=True)


if __name__ == '__main__':
    main()
