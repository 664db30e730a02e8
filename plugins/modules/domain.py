#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: domain
short_description: Define libvirt domains from XML, report drift, and manage their power state and autostart
version_added: 0.1.0
description:
  - Defines one libvirt domain (a virtual machine) from its XML definition, starts, shuts down and undefines it, and
    sets whether libvirt starts it at boot.
  - The module reads the domain once, compares it with the request and acts only on a difference.
  - The request is compared with the domain's persistent definition after normalisation, and only what the request
    specifies counts. An element or attribute of the request that the definition lacks, or holds with another value,
    is a difference. What libvirt adds on its own is not a difference, such as the C(<uuid>), PCI and drive
    C(<address>) elements, generated C(<mac>) addresses, C(<alias>) names, the defaults it writes out (controllers,
    C(<on_poweroff>), C(<cpu>), C(placement)...), and interface or console C(<target dev>) names it picks. Any of them
    written in the request is compared.
  - Elements are matched whatever their order, each with the closest one of its kind (two interfaces without MAC
    addresses are told apart by what the request gives of them); the order of the C(<boot>) elements of C(<os>) counts,
    being the boot order.
  - Values are compared as libvirt stores them. Memory amounts in any unit libvirt accepts (V(KiB), V(MiB), V(GiB),
    V(MB)...) compare in KiB; address numbers in hex or decimal compare as numbers; MAC addresses and UUIDs ignore
    case; host paths ignore repeated and trailing slashes; a machine type alias (V(pc), V(q35)) compares as the machine
    type libvirt expands it to.
  - A domain whose definition differs from the request (changed by hand, with C(virsh define) or C(virsh edit), or a
    request that changed) is a drift. The module reports it in RV(drift) and a warning and changes nothing, unless
    O(redefine=true), which defines the requested XML. A redefinition keeps the domain's UUID and the MAC address of
    each interface the request gives none, so that the guest keeps its identity and network addresses.
  - A running domain keeps its previous definition until it is next started; the module says so in
    RV(restart_pending) and a warning.
  - The disks of an undefined domain are never deleted.
  - When a step fails after others succeeded, the module undoes those it can, in reverse order (a domain it defined is
    undefined, a previous definition restored, a domain it started destroyed, autostart set back) and fails saying
    what it undid. A definition libvirt refuses leaves the previous one in place.
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
      - Check mode computes the same plan as a real run and returns the same RV(actions), RV(drift), diff and
        C(changed).
      - A definition that libvirt would refuse, and a guest that ignores a shutdown request, are found only by a real
        run.
  diff_mode:
    support: full
    details:
      - The diff shows the domain's state, persistence, autostart and its definition normalised, cut down to what the
        request specifies (the same view used for the comparison); after a (re)definition, the request normalised.
options:
  name:
    description:
      - Name of the domain. Required unless O(xml) has a C(<name>); when both are given they must agree.
    type: str
  xml:
    description:
      - The domain's definition, libvirt's domain XML (a C(<domain>) root element), for example from a template.
      - Without a C(<name>), O(name) is written into it.
      - Required to define a domain that does not exist. Without it, the definition of an existing domain is left as
        it is and only its state and autostart are managed.
      - libvirt validates the definition against its schema when it defines it.
    type: str
  state:
    description:
      - V(present) the domain is defined; it is started or shut down only when it is defined by this task (then it
        stays shut off).
      - V(running) the domain is defined and running (a paused domain is resumed).
      - V(shutoff) the domain is defined and shut off (see O(shutdown_timeout) and O(force)).
      - V(absent) the domain is shut off and undefined (see O(undefine_flags)); its disks are kept.
    type: str
    choices: [present, running, shutoff, absent]
    default: present
  autostart:
    description:
      - Whether libvirt starts the domain when it starts. Left as it is when not set; a new domain has no autostart.
    type: bool
  redefine:
    description:
      - What to do when the domain's definition differs from O(xml) (a drift).
      - V(false) reports the differences in RV(drift) and a warning, and leaves the definition as it is.
      - V(true) defines the requested XML (the domain's UUID, and the MAC addresses of the interfaces the request gives
        none, are kept).
    type: bool
    default: false
  shutdown_timeout:
    description:
      - How long, in seconds, to wait for the guest to shut down after the shutdown request (ACPI power button or
        guest agent, as libvirt chooses), for O(state=shutoff) and O(state=absent).
    type: int
    default: 120
  force:
    description:
      - Destroy (power off) the domain when it is still running after O(shutdown_timeout), or when it is paused.
      - Without it, a guest that does not shut down in time fails the task and is left running.
    type: bool
    default: false
  undefine_flags:
    description:
      - What libvirt removes with the domain's definition for O(state=absent); libvirt refuses to undefine a domain
        that has any of them unless told what to do with it. A domain with snapshots or a managed save image is
        refused before anything changes (before it is shut down) unless the matching flag is given.
      - V(managed_save) the saved state of a managed save. V(snapshots_metadata) and V(checkpoints_metadata) libvirt's
        records of snapshots and checkpoints (the disks' snapshot data stay in the images).
      - V(nvram) the UEFI variable store file; without it the file is kept (V(keep_nvram), the default).
        V(tpm) or V(keep_tpm) the emulated TPM's state.
    type: list
    elements: str
    choices: [checkpoints_metadata, keep_nvram, keep_tpm, managed_save, nvram, snapshots_metadata, tpm]
    default: []
notes:
  - The comparison is with the persistent definition (C(virsh dumpxml --inactive)).
  - A request that libvirt stores differently from how it is written (an element libvirt ignores, a value it rewrites
    that the module does not normalise) is reported in a warning right after it is defined, and as a drift on later
    runs; write it as C(virsh dumpxml --inactive) shows it.
seealso:
  - module: kvm.storage.domain_disk
  - module: kvm.storage.domain_snapshot
  - name: libvirt domain XML format
    description: The elements of a domain definition.
    link: https://libvirt.org/formatdomain.html
'''

EXAMPLES = r'''
- name: A small guest, defined and running, started whenever libvirt starts
  kvm.storage.domain:
    state: running
    autostart: true
    xml: |
      <domain type='qemu'>
        <name>web1</name>
        <memory unit='MiB'>64</memory>
        <vcpu>1</vcpu>
        <os>
          <type arch='x86_64' machine='pc'>hvm</type>
        </os>
        <devices>
          <emulator>/usr/bin/qemu-system-x86_64</emulator>
          <interface type='user'>
            <model type='virtio'/>
          </interface>
        </devices>
      </domain>

- name: The same definition with more memory is reported as a drift, and nothing changes
  kvm.storage.domain:
    xml: |
      <domain type='qemu'>
        <name>web1</name>
        <memory unit='MiB'>96</memory>
        <vcpu>1</vcpu>
        <os>
          <type arch='x86_64' machine='pc'>hvm</type>
        </os>
      </domain>
  register: web1_check

- name: Show what differs
  ansible.builtin.debug:
    var: web1_check.drift

- name: Define it with more memory; the guest uses it from its next start
  kvm.storage.domain:
    redefine: true
    xml: |
      <domain type='qemu'>
        <name>web1</name>
        <memory unit='MiB'>96</memory>
        <vcpu>1</vcpu>
        <os>
          <type arch='x86_64' machine='pc'>hvm</type>
        </os>
        <devices>
          <emulator>/usr/bin/qemu-system-x86_64</emulator>
          <interface type='user'>
            <model type='virtio'/>
          </interface>
        </devices>
      </domain>

- name: Shut it down, powering it off when the guest ignores the request for 30 s
  kvm.storage.domain:
    name: web1
    state: shutoff
    shutdown_timeout: 30
    force: true

- name: Remove it (its disks are kept), with libvirt's snapshot records
  kvm.storage.domain:
    name: web1
    state: absent
    force: true
    undefine_flags: [snapshots_metadata]
'''

RETURN = r'''
domain:
  description:
    - The domain as libvirt reports it after the task; in check mode, as it is before.
    - An empty dictionary when there is no domain.
  returned: success
  type: dict
  contains:
    name:
      description: Name of the domain.
      type: str
      returned: always
      sample: web1
    uuid:
      description: UUID of the domain.
      type: str
      returned: always
      sample: 0b3c3c4e-8f35-4e1c-9f3b-8d5f1c2a7e41
    state:
      description: V(running), V(paused), V(shutoff), V(shutdown) (shutting down), V(crashed), V(blocked) or V(pmsuspended).
      type: str
      returned: always
      sample: running
    autostart:
      description: Whether libvirt starts the domain when it starts.
      type: bool
      returned: always
      sample: true
    persistent:
      description: Whether the domain is defined persistently (not transient).
      type: bool
      returned: always
      sample: true
drift:
  description:
    - The differences between the request and the domain's persistent definition found before the task, normalised
      (memory in KiB). Each names the element (V(/domain/memory)) or attribute (V(/domain/os/type/@machine)), the value
      requested and the value defined (null when the definition lacks it; a missing element is requested as its XML).
    - Empty when they agree, when no O(xml) is given, and for a domain the task defines.
    - With O(redefine=true) these are the differences the redefinition removed.
  returned: success
  type: list
  elements: dict
  sample:
    - path: /domain/memory
      requested: '98304'
      actual: '65536'
actions:
  description:
    - What the task did, in order; in check mode, what it would do.
  returned: success
  type: list
  elements: str
  sample:
    - define domain 'web1'
    - start domain 'web1'
restart_pending:
  description:
    - Whether this task redefined the domain while it runs, so that what was defined applies when it is next
      started. The live definition is not compared (libvirt expands it when it starts a domain).
  returned: success
  type: bool
  sample: false
notes:
  description:
    - The warnings of the task, also shown as warnings, such as a drift or a pending restart.
  returned: success
  type: list
  elements: str
  sample:
    - "domain 'web1' differs from the requested definition: /domain/memory: requested 98304, defined 65536; nothing was
      changed, set redefine=true to define the requested XML"
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._domain import (
    DOMAIN_REQUIRED_ONE_OF,
    domain_argument_spec,
    run_domain,
)
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import run_libvirt_module
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=domain_argument_spec(),
        required_one_of=DOMAIN_REQUIRED_ONE_OF,
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    run_libvirt_module(module, lambda conn: run_domain(conn, module.params, module.check_mode))


if __name__ == '__main__':
    main()
