#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: storage_pool
short_description: Define, build, start, stop, delete and remove libvirt storage pools
version_added: 0.1.0
description:
  - Manages one libvirt storage pool of type dir, fs, netfs, logical, disk, iscsi or rbd, defined from options or
    from a whole XML definition.
  - The module reads the pool once, compares it with the request and acts only on a difference.
  - Definitions are compared as normalised XML. What libvirt adds on its own (the uuid, sizes, the source format and
    volume group name it defaults to, target permissions the task does not set) is not a difference; everything the
    task sets is compared, so a pool changed behind Ansible's back is redefined (drift), never reported as unchanged.
  - An active pool whose definition changes keeps running with the old definition until it restarts;
    with O(restart=true) the module restarts it, otherwise it reports RV(restart_pending) and a warning.
  - The task checks what it can before it changes anything. A start or restart of a dir, fs or netfs pool whose target
    directory is missing is refused unless O(build=true) builds it, and O(state=deleted) refuses storage that is not empty.
  - When a step fails after others succeeded, the module undoes those it can, in reverse order (a pool it defined is
    undefined, a previous definition restored and the pool started again, a directory its build created removed,
    permissions and autostart set back) and fails saying what it undid. What cannot be undone is reported with
    C(changed=true) and the RV(actions) done.
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
      - Check mode computes the same plan as a real run and returns the same RV(actions), diff and C(changed).
      - It makes the same checks, so it fails where the real run would refuse (a missing target directory without
        O(build), storage to delete that is not empty). Failures only libvirt finds (a device that cannot be mounted, for
        example) are not predicted.
  diff_mode:
    support: full
    details:
      - The diff shows the pool's state, persistence, autostart, pending restart and its normalised definition, the
        same view used for the comparison; with target permissions on an existing directory, those of the directory.
options:
  name:
    description:
      - Name of the pool. Required unless O(xml) gives it.
    type: str
  type:
    description:
      - Type of the pool. With O(target), O(source) and the permission options it describes the pool's definition.
      - Without O(type) and O(xml) the pool must exist already; its definition is then left as it is and only its
        state, autostart and refresh are managed.
    type: str
    choices: [dir, fs, netfs, logical, disk, iscsi, rbd]
  target:
    description:
      - Target path of the pool, the directory that holds its volumes (dir, fs, netfs), or where their device nodes
        appear (logical, disk, iscsi). Required for dir, fs and netfs pools; rbd pools have none.
    type: path
  source:
    description:
      - Source of the pool's storage. Each type takes some of these keys and refuses the others.
      - V(fs) needs O(source.device) (one), takes O(source.format). V(netfs) needs O(source.host) (one) and
        O(source.dir), takes O(source.port) and O(source.format). V(logical) takes O(source.device) (the physical
        volumes), O(source.name) and O(source.format). V(disk) needs O(source.device) (one), takes O(source.format).
        V(iscsi) needs O(source.host) and O(source.device) (the target IQN), takes O(source.port),
        O(source.initiator) and O(source.auth). V(rbd) needs O(source.host) and O(source.name), takes O(source.port)
        and O(source.auth). V(dir) takes none.
    type: dict
    suboptions:
      host:
        description:
          - Host names of the storage server (for rbd, the Ceph monitors).
        type: list
        elements: str
      port:
        description:
          - Port of every O(source.host). Requires O(source.host).
        type: int
      dir:
        description:
          - Directory exported by the server (netfs).
        type: str
      device:
        description:
          - Device paths (fs, logical, disk) or the iSCSI target IQN (iscsi).
        type: list
        elements: str
      name:
        description:
          - Name of the volume group (logical; libvirt uses the pool's name when it is not given) or of the Ceph pool (rbd).
        type: str
      format:
        description:
          - Filesystem type (fs, for example V(ext4); netfs, for example V(nfs)), V(lvm2) (logical) or the partition
            table type (disk, for example V(gpt) or V(dos)).
          - libvirt uses V(auto) for fs and netfs, V(lvm2) for logical and V(unknown) for disk when it is not given.
        type: str
      initiator:
        description:
          - IQN of the iSCSI initiator (iscsi).
        type: str
      auth:
        description:
          - "Authentication with a libvirt secret (iscsi: V(chap); rbd: V(ceph))."
        type: dict
        suboptions:
          type:
            description: Authentication type.
            type: str
            required: true
            choices: [chap, ceph]
          username:
            description: User name.
            type: str
            required: true
          secret_usage:
            description: Usage name of the libvirt secret that holds the password or key.
            type: str
          secret_uuid:
            description: UUID of the libvirt secret that holds the password or key.
            type: str
  xml:
    description:
      - The whole pool definition, instead of O(type), O(target), O(source), O(uuid), O(mode), O(owner) and O(group).
      - It is compared after the same normalisation as a definition built from options.
    type: str
  uuid:
    description:
      - UUID of the pool. By default libvirt chooses one, and an existing pool keeps its own.
      - An existing pool with another uuid is an error (a pool cannot change its uuid).
    type: str
  mode:
    description:
      - Permissions of the target directory, as an octal string such as V("0755") (the pool's target/permissions/mode).
      - Used when the pool is built (libvirt uses V(0711) for a directory it creates without it).
      - For dir, fs and netfs pools whose target directory exists, the directory itself is compared and changed.
      - Quote it. An unquoted V(711) is read by YAML as the decimal number 711 (octal V(01307)); it is applied
        as that number, with a warning saying so, as M(kvm.storage.disk_image) does.
    type: raw
  owner:
    description:
      - Owner (user name or uid) of the target directory, as O(mode).
    type: str
  group:
    description:
      - Group (name or gid) of the target directory, as O(mode).
    type: str
  state:
    description:
      - V(present) makes sure the pool is defined (persistently) as requested; an active pool stays active,
        an inactive one stays inactive.
      - V(active) also starts it. V(inactive) also stops it.
      - V(absent) stops the pool when it is active and undefines it. Its storage is left alone.
      - V(deleted) stops the pool when it is active and deletes its storage with virStoragePoolDelete (the target directory
        of dir, fs and netfs pools; the volume group of logical pools). The pool stays defined.
        A pool that is not defined is left alone. Other pool types are refused.
      - The storage must be empty (no entry in the directory of a dir pool, or in the mount point of an fs or netfs pool
        that is not mounted; no volume in an active logical pool, whose volume group libvirt removes with its volumes);
        otherwise the task fails before it stops the pool. Remove the volumes first.
      - An inactive logical pool is refused with V(deleted), as libvirt lists its volumes only while it is active. Start it first.
      - With V(absent) and V(deleted) only O(name) (or the name in O(xml)) is used.
    type: str
    choices: [present, absent, active, inactive, deleted]
    default: present
  autostart:
    description:
      - Whether libvirt starts the pool when it starts. Left as it is when not given.
    type: bool
  build:
    description:
      - Build the pool before its first start, when it is defined by this task or, for dir, fs and netfs pools, when its
        target directory is missing (and the pool is not active).
      - Without O(build), a pool whose target directory is missing is not started (the task fails before it changes
        anything); a pool is defined without its directory only with O(state=present) or O(state=inactive).
      - With O(restart=true), a new definition whose target directory is missing is built between the stop and the start.
      - Building creates the target directory with the target permissions; for fs pools it also makes a filesystem on
        the device, for logical pools a volume group, for disk pools a partition table, but only on a device that holds
        none (libvirt's no-overwrite build). A device that holds one already counts as built.
    type: bool
    default: false
  refresh:
    description:
      - Refresh an active pool (rescan its volumes), unless this task starts or restarts it anyway.
      - A refresh does not count as a change.
    type: bool
    default: false
  restart:
    description:
      - Restart an active pool whose definition differs from the one it runs with (after a redefinition by this or an
        earlier task), so that the new definition applies now.
    type: bool
    default: false
notes:
  - Target directories are compared and created on the managed host; with a remote O(uri) they are the remote host's.
  - libvirt copies the permissions of an existing target directory into the pool's definition when it starts or
    refreshes the pool; this is why those permissions are compared on the directory.
seealso:
  - module: kvm.storage.storage_pool_info
  - name: libvirt storage pool XML format
    description: The elements of a pool definition.
    link: https://libvirt.org/formatstorage.html
'''

EXAMPLES = r'''
- name: A directory pool, built, started now and whenever libvirt starts
  kvm.storage.storage_pool:
    name: images
    type: dir
    target: /var/lib/libvirt/images
    mode: "0711"
    build: true
    autostart: true
    state: active

- name: An ext4 filesystem on a disk, mounted by libvirt
  kvm.storage.storage_pool:
    name: fast
    type: fs
    source:
      device: /dev/sdb1
      format: ext4
    target: /srv/fast
    build: true
    state: active

- name: An NFS export, mounted on a directory made for it
  kvm.storage.storage_pool:
    name: shared
    type: netfs
    source:
      host: nfs.example.com
      dir: /export/images
      format: nfs
    target: /var/lib/libvirt/shared
    build: true
    state: active

- name: An LVM volume group
  kvm.storage.storage_pool:
    name: guests
    type: logical
    source:
      name: vg_guests
      device: [/dev/sdc]
    target: /dev/vg_guests
    build: true
    state: active

- name: A Ceph RBD pool
  kvm.storage.storage_pool:
    name: ceph
    type: rbd
    source:
      name: libvirt-pool
      host: [mon1.example.com, mon2.example.com]
      port: 6789
      auth:
        type: ceph
        username: libvirt
        secret_usage: client.libvirt secret
    state: active

- name: A pool from its whole XML definition (files/pools/backup.xml), its directory built, restarted if it changed
  kvm.storage.storage_pool:
    xml: "{{ lookup('ansible.builtin.file', 'pools/backup.xml') }}"
    build: true
    state: active
    restart: true

- name: Rescan the volumes of an existing pool
  kvm.storage.storage_pool:
    name: images
    state: active
    refresh: true

- name: Remove a pool (its storage stays)
  kvm.storage.storage_pool:
    name: old
    state: absent
'''

RETURN = r'''
pool:
  description:
    - The pool as libvirt reports it after the task; in check mode, as it is before.
    - An empty dictionary when there is no pool.
  returned: success
  type: dict
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
      description: Type of the pool.
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
actions:
  description:
    - What was done, or in check mode what would be done, in order; empty when nothing changed.
    - On a failure, the steps done before it that could not be undone (then C(changed) is true); empty when the
      module undid them all or failed before it changed anything.
  returned: always
  type: list
  elements: str
  sample:
    - define dir storage pool 'images'
    - build storage pool 'images' (create /var/lib/libvirt/images)
    - start storage pool 'images'
restart_pending:
  description:
    - Whether the pool is active with a definition that differs from the one it runs with, and was not restarted
      (see O(restart)).
  returned: success
  type: bool
  sample: false
notes:
  description:
    - The warnings of the task, also shown as warnings, such as a pending restart or a build that found the pool built already.
  returned: success
  type: list
  elements: str
  sample:
    - storage pool 'images' is active and its new definition applies when it restarts; set restart=true to restart it now
refreshed:
  description:
    - Whether the pool was refreshed (O(refresh=true); never in check mode).
  returned: success
  type: bool
  sample: false
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import run_libvirt_module
from ansible_collections.kvm.storage.plugins.module_utils._storage_pool import (
    STORAGE_POOL_MUTUALLY_EXCLUSIVE,
    STORAGE_POOL_REQUIRED_ONE_OF,
    run_storage_pool,
    storage_pool_argument_spec,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=storage_pool_argument_spec(),
        mutually_exclusive=STORAGE_POOL_MUTUALLY_EXCLUSIVE,
        required_one_of=STORAGE_POOL_REQUIRED_ONE_OF,
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    run_libvirt_module(module, lambda conn: run_storage_pool(conn, module.params, module.check_mode))


if __name__ == '__main__':
    main()
