#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: domain_snapshot
short_description: Create, revert to and delete snapshots of libvirt domains
version_added: 0.1.0
description:
  - Creates a snapshot of a libvirt domain (internal, external disk-only, or external with the memory state), reverts
    the domain to a snapshot, or deletes snapshots (with their children, only their children, or only libvirt's record
    of them), for running and shut-off domains.
  - Snapshots are managed by name. The module reads the domain and its snapshots once, compares them with the task and
    acts only on a difference.
  - Operations the connected libvirt cannot do fail with a message naming its version; for example reverting to
    external snapshots needs libvirt 9.9.0 or later.
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
      - Check mode computes the same plan as a real run, with the same checks, RV(actions), diff and C(changed).
      - Check mode predicts the refusals the module knows of, such as overlay or memory files that exist or whose directory is
        missing, operations the connected libvirt version cannot do (reverting to external snapshots before 9.9.0,
        deleting external snapshots before 9.0.0), and the deletions of external snapshots libvirt refuses (with
        O(children) or O(children_only) over an external descendant, with children, or the current one on an internal parent).
      - A few refusals are known only to libvirt (for example deleting an external snapshot outside the disks' current
        backing chain); check mode cannot foresee those. A snapshot is created, reverted or deleted by one libvirt call,
        atomic for a creation (a failure leaves no overlay and no snapshot).
  diff_mode:
    support: full
    details:
      - The diff shows the domain's state, its current snapshot and its snapshot tree (state, kind, overlay and memory files,
        description of every snapshot), before and after.
      - For V(revert) it also says whether the domain is at the snapshot, and if not why (another current snapshot, another
        state, disks that no longer hold the snapshot's content), since a revert may change nothing else that is shown.
options:
  domain:
    description:
      - Name of the domain.
    type: str
    required: true
  name:
    description:
      - Name of the snapshot.
    type: str
    required: true
  state:
    description:
      - V(present) makes sure the snapshot exists, creating it from the domain as it is now.
        A snapshot of that name that exists already is not taken again; its description is updated when O(description)
        differs (libvirt redefines the snapshot with the new description; its content stays).
        What else the task asks for is compared with it (O(external), O(memory), O(disk_only), O(disks)); a snapshot cannot
        change, so a difference there is an error rather than a silent success.
      - V(revert) reverts the domain to the snapshot. See O(revert_always) for when a revert is skipped.
      - V(absent) deletes the snapshot (see O(children), O(children_only) and O(metadata_only)). A snapshot that does not
        exist is left alone.
    type: str
    choices: [present, absent, revert]
    default: present
  description:
    description:
      - Description of the snapshot (V(present)).
    type: str
  external:
    description:
      - Whether the snapshot is external (V(present)), where each disk snapshotted gets a new qcow2 overlay file that the domain
        writes to from then on, the current file becoming its read-only backing file; with O(memory) the memory state of a
        running domain is saved in a file too.
      - Internal snapshots (V(false)) live inside the qcow2 disk images, with the memory state of a running domain in
        the first disk. Every disk snapshotted must be qcow2.
      - Defaults to V(false), or V(true) when O(memory) or an overlay file in O(disks) is given.
      - For an existing snapshot, when given, compared with it.
    type: bool
  disk_only:
    description:
      - Take only the disks, not the memory state (V(present)).
      - Of a running domain, libvirt takes disk-only snapshots only as external ones (O(external=true)); an internal
        snapshot of a running domain always holds its memory.
      - A snapshot of a shut-off domain is always disk-only.
    type: bool
    default: false
  memory:
    description:
      - File that receives the memory state of a running domain in an external snapshot (V(present)); implies
        O(external=true). The file must not exist.
      - An external snapshot of a running domain needs either O(memory) or O(disk_only=true); O(memory) cannot be
        combined with O(disk_only=true).
    type: path
  disks:
    description:
      - How each disk is snapshotted (V(present)). Disks not listed are snapshotted as O(external) says, except cdroms,
        read-only disks, empty drives and disks whose definition says C(snapshot='no'), which are left out.
      - An internal snapshot takes every other disk (libvirt refuses to leave one out); an external one can leave any disk out.
      - The overlay file of an external snapshot of a file disk not given here is named as libvirt names it, beside the disk, with
        the extension of the disk's file replaced by the snapshot's name (V(/images/vm.qcow2) gets V(/images/vm.NAME)).
        The overlay file must not exist.
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - The disk, by its target (V(vda), V(sdb)) or the path of its source.
        type: str
        required: true
      snapshot:
        description:
          - V(internal), V(external), or V(no) to leave the disk out of the snapshot.
          - libvirt does not mix internal and external disks in one snapshot.
        type: str
        choices: [internal, external, 'no']
      file:
        description:
          - The overlay file of an external snapshot of this disk.
        type: path
  quiesce:
    description:
      - Freeze the guest's file systems while the snapshot is taken (V(present)), through the QEMU guest agent.
      - Needs a running domain with the guest agent channel (C(org.qemu.guest_agent.0)) and the agent running in the guest,
        and a disk-only external snapshot (O(external=true), O(disk_only=true)).
    type: bool
    default: false
  live:
    description:
      - Keep the guest running while its memory is saved (V(present), external snapshots with O(memory)); libvirt's
        C(VIR_DOMAIN_SNAPSHOT_CREATE_LIVE). Without it the guest is paused while its memory is written.
    type: bool
    default: false
  children:
    description:
      - Delete the snapshot's descendants too (V(absent)).
      - libvirt deletes no external snapshot this way; the module refuses when a descendant, or the snapshot with
        descendants, is external. For a snapshot without descendants it is the same as a plain deletion.
    type: bool
    default: false
  children_only:
    description:
      - Delete only the snapshot's descendants, keep the snapshot (V(absent)). Mutually exclusive with O(children).
      - Refused, in check mode too, when a descendant is external (libvirt deletes those one at a time), unless
        O(metadata_only=true).
    type: bool
    default: false
  metadata_only:
    description:
      - Delete only libvirt's record of the snapshots (V(absent)); internal snapshots stay in the qcow2 images, overlay and
        memory files of external snapshots stay where they are.
      - Deleting external snapshots for real merges each overlay into its backing file, which libvirt does from version 9.0.0,
        one snapshot at a time, only for a snapshot without children in the disks' current backing chain, and the current
        snapshot only when the snapshot before it (for each of its disks) is external too.
    type: bool
    default: false
  domain_state:
    description:
      - The state the domain is left in after a revert (V(revert)).
      - V(snapshot) is the state the snapshot recorded (running, paused, or shut off for a snapshot of a shut-off domain
        or a disk-only one). V(running) and V(paused) start the domain from a snapshot of a shut-off domain too.
    type: str
    choices: [snapshot, running, paused]
    default: snapshot
  revert_always:
    description:
      - Revert even when the domain looks reverted already (V(revert)).
      - Without it a revert is skipped when the snapshot is the domain's current snapshot, the domain is in the state the
        revert would leave it in (O(domain_state)), and, when that state is shut off, every disk of an internal snapshot still
        holds the snapshot's content (compared with the embedded image library; clusters the disk shares with the
        snapshot are not read).
      - The module cannot see what a running guest did since its last revert; set O(revert_always=true) to go back to the
        snapshot every time (for example to reset a test machine).
    type: bool
    default: false
  force:
    description:
      - Let libvirt revert when that is risky (V(revert)); libvirt's C(VIR_DOMAIN_SNAPSHOT_REVERT_FORCE), needed for example
        to revert a running domain to a snapshot whose definition is not compatible with the running one.
    type: bool
    default: false
notes:
  - The domain must be defined. Create it with another module first (for example community.libvirt.virt).
  - Overlay and memory files are checked, and disks compared for the revert rule, on the managed host, where the module runs.
    With a O(uri) naming another host those checks would look at the wrong files; manage snapshots from the hypervisor itself.
  - Deleting an external snapshot with memory leaves its memory state file in place; remove it with M(ansible.builtin.file).
  - libvirt refuses several deletions of external snapshots (with children, the current one on an internal parent, outside
    the current backing chain); O(metadata_only=true) always works.
  - The directory of an overlay or memory file must exist; libvirt creates the file, not its directory.
  - A domain that is not defined fails the task with C(domain 'NAME' is not defined on URI), as in every module of the collection.
seealso:
  - module: kvm.storage.domain_snapshot_info
  - name: libvirt snapshot XML format
    description: The elements of a snapshot definition.
    link: https://libvirt.org/formatsnapshot.html
'''

EXAMPLES = r'''
# In this order on one domain: internal snapshots first (libvirt deletes no internal snapshot together with
# external ones, and reverts to external snapshots only from libvirt 9.9.0).
- name: Internal snapshot of a running or shut-off domain (qcow2 disks), with a description
  kvm.storage.domain_snapshot:
    domain: web1
    name: before-upgrade
    description: Before the distribution upgrade

- name: Revert to a snapshot and leave the domain paused
  kvm.storage.domain_snapshot:
    domain: web1
    name: before-upgrade
    state: revert
    domain_state: paused

- name: Reset a test machine to its snapshot every time, even if libvirt deems it risky
  kvm.storage.domain_snapshot:
    domain: test1
    name: clean
    state: revert
    domain_state: running
    revert_always: true
    force: true

- name: Delete only the descendants of a snapshot
  kvm.storage.domain_snapshot:
    domain: web1
    name: before-upgrade
    state: absent
    children_only: true

- name: Delete a snapshot and every snapshot taken from it since
  kvm.storage.domain_snapshot:
    domain: web1
    name: before-upgrade
    state: absent
    children: true

- name: External disk-only snapshot, overlays named by libvirt beside the disks, the second disk left out
  kvm.storage.domain_snapshot:
    domain: web1
    name: nightly
    external: true
    disk_only: true
    disks:
      - name: vdb
        snapshot: "no"

- name: External disk-only snapshot with the guest's file systems frozen, overlay files given
  kvm.storage.domain_snapshot:
    domain: db1
    name: consistent
    external: true
    disk_only: true
    quiesce: true
    disks:
      - name: vda
        file: /var/lib/libvirt/images/db1-consistent.qcow2
      - name: /var/lib/libvirt/images/db1-data.qcow2
        file: /var/lib/libvirt/images/db1-data-consistent.qcow2

- name: External snapshot of a running domain with its memory, the guest kept running meanwhile
  kvm.storage.domain_snapshot:
    domain: web1
    name: with-memory
    memory: /var/lib/libvirt/images/web1-with-memory.mem
    live: true

- name: Forget an external snapshot, keeping its files
  kvm.storage.domain_snapshot:
    domain: web1
    name: nightly
    state: absent
    metadata_only: true
    uri: qemu+ssh://root@hv1.example.com/system
'''

RETURN = r'''
snapshot:
  description:
    - The snapshot after the task (in check mode, as it is before); an empty dictionary when there is none.
  returned: success
  type: dict
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
          sample: external
        file:
          description: The memory state file of an external snapshot, else null.
          type: str
          returned: always
          sample: /var/lib/libvirt/images/web1-with-memory.mem
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
          sample: external
        file:
          description: Overlay file of an external snapshot of the disk, else null.
          type: str
          returned: always
          sample: /var/lib/libvirt/images/web1.nightly
        format:
          description: Format of the overlay file, else null.
          type: str
          returned: always
          sample: qcow2
current:
  description: Name of the domain's current snapshot after the task (in check mode, before), null when there is none.
  returned: success
  type: str
  sample: before-upgrade
domain_state:
  description: State of the domain after the task (in check mode, before), as libvirt reports it (V(running), V(paused), V(shutoff), ...).
  returned: success
  type: str
  sample: running
lib_version:
  description: Version of the connected libvirt.
  returned: success
  type: str
  sample: 9.0.0
actions:
  description:
    - What was done, or in check mode what would be done; empty when nothing changed.
  returned: success
  type: list
  elements: str
  sample:
    - "create internal snapshot 'before-upgrade' of running domain 'web1' (with memory)"
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import run_libvirt_module
from ansible_collections.kvm.storage.plugins.module_utils._domain_snapshot import (
    DOMAIN_SNAPSHOT_MUTUALLY_EXCLUSIVE,
    domain_snapshot_argument_spec,
    run_domain_snapshot,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=domain_snapshot_argument_spec(),
        mutually_exclusive=DOMAIN_SNAPSHOT_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    run_libvirt_module(module, lambda conn: run_domain_snapshot(conn, module.params, module.check_mode))


if __name__ == '__main__':
    main()
