#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: domain_snapshot_info
short_description: List the snapshots of a libvirt domain with their tree
version_added: 0.1.0
description:
  - Returns every snapshot of a libvirt domain (or one of them) in tree order, with its parent and children, creation
    time, state, description, whether it is current, how each disk is in it (internal, external with its overlay file, or
    left out) and where its memory state is.
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
  domain:
    description:
      - Name of the domain. A domain that is not defined is an error.
    type: str
    required: true
  name:
    description:
      - Name of one snapshot to return; all of them when omitted.
      - A snapshot that does not exist gives an empty RV(snapshots) list, not an error.
    type: str
seealso:
  - module: kvm.storage.domain_snapshot
'''

EXAMPLES = r'''
- name: The snapshots of a domain
  kvm.storage.domain_snapshot_info:
    domain: web1
  register: web1_snapshots

- name: Show the tree and the current snapshot
  ansible.builtin.debug:
    msg: "{{ web1_snapshots.tree + ['current: ' ~ web1_snapshots.current] }}"

- name: One snapshot, on another host
  kvm.storage.domain_snapshot_info:
    domain: web1
    name: before-upgrade
    uri: qemu+ssh://root@hv1.example.com/system
  register: before_upgrade
'''

RETURN = r'''
snapshots:
  description:
    - The snapshots, depth first from the roots, siblings oldest first (with O(name), that one, or none).
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Name of the snapshot.
      type: str
      returned: always
      sample: before-upgrade
    parent:
      description: Name of its parent snapshot, null for a root.
      type: str
      returned: always
      sample: base
    children:
      description: Names of its children, oldest first.
      type: list
      elements: str
      returned: always
      sample: [nightly]
    descendants:
      description: Number of its descendants.
      type: int
      returned: always
      sample: 1
    creation_time:
      description: When it was taken, in seconds since the epoch.
      type: int
      returned: always
      sample: 1795424311
    creation_date:
      description: When it was taken, as an ISO 8601 UTC date.
      type: str
      returned: always
      sample: "2026-11-23T08:58:31Z"
    state:
      description:
        - The domain's state when it was taken (V(running), V(paused), V(shutoff)), or V(disk-snapshot) for a disk-only
          snapshot of a running domain.
      type: str
      returned: always
      sample: running
    current:
      description: Whether it is the domain's current snapshot.
      type: bool
      returned: always
      sample: true
    description:
      description: Its description, null when it has none.
      type: str
      returned: always
      sample: Before the distribution upgrade
    kind:
      description: V(internal), V(external), V(mixed) or V(none) (nothing but metadata).
      type: str
      returned: always
      sample: internal
    external:
      description: Whether a disk or the memory state is in a file of its own.
      type: bool
      returned: always
      sample: false
    disk_only:
      description: Whether it holds no memory state.
      type: bool
      returned: always
      sample: false
    memory:
      description: Where the memory state is.
      type: dict
      returned: always
      contains:
        snapshot:
          description: V(internal), V(external) or V(no).
          type: str
          returned: always
          sample: internal
        file:
          description: The memory state file of an external snapshot, else null.
          type: str
          returned: always
          sample: null
    disks:
      description: How each disk is in the snapshot.
      type: list
      elements: dict
      returned: always
      contains:
        name:
          description: Target of the disk.
          type: str
          returned: always
          sample: vda
        snapshot:
          description: V(internal), V(external) or V(no).
          type: str
          returned: always
          sample: internal
        file:
          description: Overlay file of an external snapshot of the disk, else null.
          type: str
          returned: always
          sample: null
        format:
          description: Format of the overlay file, else null.
          type: str
          returned: always
          sample: null
current:
  description: Name of the domain's current snapshot, null when there is none.
  returned: success
  type: str
  sample: before-upgrade
roots:
  description: Names of the snapshots without a parent, oldest first.
  returned: success
  type: list
  elements: str
  sample: [base]
tree:
  description: The snapshot tree as text lines, indented two spaces per level, one snapshot a line.
  returned: success
  type: list
  elements: str
  sample:
    - "- base (shutoff, internal)"
    - "  - before-upgrade (running, internal, with memory): Before the distribution upgrade"
domain_state:
  description: State of the domain as libvirt reports it (V(running), V(paused), V(shutoff), ...).
  returned: success
  type: str
  sample: running
lib_version:
  description: Version of the connected libvirt.
  returned: success
  type: str
  sample: 9.0.0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import run_libvirt_module
from ansible_collections.kvm.storage.plugins.module_utils._domain_snapshot import (
    domain_snapshot_info_argument_spec,
    run_domain_snapshot_info,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=domain_snapshot_info_argument_spec(),
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    run_libvirt_module(module, lambda conn: run_domain_snapshot_info(conn, module.params), readonly=True)


if __name__ == '__main__':
    main()
