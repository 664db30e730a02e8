#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: hypervisor_info
short_description: Tell whether a host can run KVM guests
version_added: 0.1.0
description:
  - Looks for the CPU's virtualization flag (C(vmx) for Intel VT-x, C(svm) for AMD-V) in C(/proc/cpuinfo), opens the
    KVM device for reading and writing and asks it for its API version, as QEMU does before it starts a KVM guest,
    and reads the C(nested) parameter of the loaded C(kvm_intel) or C(kvm_amd) module.
  - When KVM is not usable, guests still run under QEMU's TCG emulation, only much slower. The module then warns
    (O(warn)), or fails with O(require_kvm).
  - Needs nothing beyond Python on the host, so it can run before any hypervisor package is installed
    (the P(kvm.storage.kvm_host#role) role does so).
author:
  - kvm.storage contributors (@kvm-storage)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - The module never changes anything; it runs the same in check mode.
  diff_mode:
    support: none
options:
  require_kvm:
    description:
      - Fail when KVM is not usable, with the reasons in the message.
    type: bool
    default: false
  warn:
    description:
      - Warn when KVM is not usable (and O(require_kvm) is not set). With V(false) the result alone tells.
    type: bool
    default: true
  cpuinfo_path:
    description:
      - The CPU information file to read the flags from. Keep the default on real hosts; tests point it at a
        stand-in file.
    type: path
    default: /proc/cpuinfo
  kvm_device:
    description:
      - The KVM device to open. Keep the default on real hosts; tests point it at a stand-in.
    type: path
    default: /dev/kvm
seealso:
  - name: The KVM API, KVM_GET_API_VERSION
    description: The first call QEMU makes on the KVM device.
    link: https://docs.kernel.org/virt/kvm/api.html
'''

EXAMPLES = r'''
- name: Find out whether KVM is usable
  kvm.storage.hypervisor_info:
  register: hypervisor

- name: Say which nested virtualization setting the vendor module has
  ansible.builtin.debug:
    msg: "KVM usable: {{ hypervisor.kvm.usable }}, nested: {{ hypervisor.kvm.nested }}"

- name: Stop here on hosts without KVM
  kvm.storage.hypervisor_info:
    require_kvm: true
  when: inventory_hostname in groups['production'] | default([])
'''

RETURN = r'''
kvm:
  description: What was found.
  returned: success
  type: dict
  contains:
    usable:
      description: Whether KVM guests can run (a virtualization flag, and a KVM device that answers).
      type: bool
      returned: always
      sample: true
    problems:
      description: Why KVM is not usable, one sentence per reason (empty when usable).
      type: list
      elements: str
      returned: always
      sample: ["/dev/kvm does not exist (kvm_intel or kvm_amd not loaded, or no KVM in this kernel)"]
    cpu_flag:
      description: V(vmx), V(svm) or null when the CPU shows neither.
      type: str
      returned: always
      sample: vmx
    vendor_module:
      description: The kernel module that serves the flag (V(kvm_intel) or V(kvm_amd)), null without a flag.
      type: str
      returned: always
      sample: kvm_intel
    device:
      description: The KVM device.
      type: dict
      returned: always
      contains:
        path:
          description: Its path.
          type: str
          returned: always
          sample: /dev/kvm
        exists:
          description: Whether it exists.
          type: bool
          returned: always
          sample: true
        character_device:
          description: Whether it is a character device.
          type: bool
          returned: always
          sample: true
        readable:
          description: Whether the module's user may read it.
          type: bool
          returned: always
          sample: true
        writable:
          description: Whether the module's user may write it.
          type: bool
          returned: always
          sample: true
        api_version:
          description: The KVM API version it answered (12 on every kernel since 2.6.22), null when not asked.
          type: int
          returned: always
          sample: 12
        problem:
          description: Why it is not usable, null when it is.
          type: str
          returned: always
          sample: null
    nested:
      description:
        - Nested virtualization of each vendor module now (true, false, or null when the module is not loaded).
        - A changed C(modprobe.d) setting shows here only after the module is reloaded.
      type: dict
      returned: always
      sample: {"kvm_amd": null, "kvm_intel": true}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._hypervisor import (
    hypervisor_argument_spec,
    run_hypervisor_info,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(argument_spec=hypervisor_argument_spec(), supports_check_mode=True)
    refuse_nul_bytes(module)
    result, warning, failure = run_hypervisor_info(module.params)
    if failure:
        module.fail_json(msg=failure, **result)
    if warning:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
