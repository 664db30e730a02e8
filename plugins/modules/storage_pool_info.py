#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: storage_pool_info
short_description: Read information about libvirt storage pools
version_added: 0.1.0
description:
  - Returns the state, sizes, volumes and definition of one libvirt storage pool, or of all of them.
  - Opens a read-only connection and never changes anything.
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
  name:
    description:
      - Name of a pool. All pools (active and inactive, persistent and transient) when omitted.
      - A pool that does not exist gives an empty RV(pools) list, not an error.
    type: str
seealso:
  - module: kvm.storage.storage_pool
'''

EXAMPLES = r'''
- name: All storage pools
  kvm.storage.storage_pool_info:
  register: all_pools

- name: Free bytes of the images pool
  kvm.storage.storage_pool_info:
    name: images
  register: images_pool

- name: Show them
  ansible.builtin.debug:
    msg: "{{ images_pool.pools[0].available }} bytes free in {{ images_pool.pools[0].target }}"
  when: images_pool.pools | length > 0
'''

RETURN = r'''
pools:
  description:
    - The pools, sorted by name (one at most with O(name)).
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Name of the pool.
      type: str
      returned: always
      sample: images
    uuid:
      description: UUID of the pool.
      type: str
      returned: always
      sample: 1f8d0f92-cd8e-46c1-9bd3-c959e3e11a2a
    type:
      description: Type of the pool (V(dir), V(fs), V(netfs), V(logical), V(disk), V(iscsi), V(rbd), ...).
      type: str
      returned: always
      sample: dir
    state:
      description: V(active), V(inactive), V(building), V(degraded) or V(inaccessible).
      type: str
      returned: always
      sample: active
    autostart:
      description: Whether libvirt starts the pool when it starts.
      type: bool
      returned: always
      sample: true
    persistent:
      description: Whether the pool is defined persistently (not transient).
      type: bool
      returned: always
      sample: true
    capacity:
      description: Size of the pool's storage in bytes (the last known value when inactive).
      type: int
      returned: always
      sample: 107374182400
    allocation:
      description: Bytes allocated (the last known value when inactive).
      type: int
      returned: always
      sample: 21474836480
    available:
      description: Bytes free (the last known value when inactive).
      type: int
      returned: always
      sample: 85899345920
    target:
      description: Target path of the pool (null for rbd pools).
      type: str
      returned: always
      sample: /var/lib/libvirt/images
    volumes:
      description: Names of the volumes of an active pool (empty when inactive).
      type: list
      elements: str
      returned: always
      sample: [vm1.qcow2]
    xml:
      description: The pool's definition as libvirt reports it (the live one when active).
      type: str
      returned: always
      sample: "<pool type='dir'>...</pool>"
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import run_libvirt_module
from ansible_collections.kvm.storage.plugins.module_utils._storage_pool import (
    run_storage_pool_info,
    storage_pool_info_argument_spec,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=storage_pool_info_argument_spec(),
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    run_libvirt_module(module, lambda conn: run_storage_pool_info(conn, module.params), readonly=True)


if __name__ == '__main__':
    main()
