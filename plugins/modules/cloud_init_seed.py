#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: cloud_init_seed
short_description: Write a cloud-init NoCloud seed image (ISO 9660 or FAT) without external tools
version_added: 0.1.0
description:
  - Writes a cloud-init NoCloud seed image, a file system labelled C(CIDATA) holding C(user-data), C(meta-data) and
    optionally C(network-config) and C(vendor-data) in its root directory, to attach to a guest as a CD-ROM or a
    disk. cloud-init finds the seed by its label.
  - The image is written in pure Python by code that travels inside the module, so C(genisoimage), C(xorriso),
    C(mkfs.vfat) or C(mtools) are not needed on the host.
  - V(iso9660) images have Rock Ridge (IEEE P1282) and Joliet names, so that the lower-case hyphenated names
    (C(user-data)) are what Linux and other systems read; the ISO 9660 names proper are the 8.3 names of interchange
    level 1 (C(USER_DAT.;1)). V(vfat) images are FAT12 with long (VFAT) names.
  - The image is deterministic; the same options always give the same bytes (fixed time stamps, no random
    identifiers). The module builds the requested image, compares it with the file at O(path) and writes only on a
    difference, under a temporary name in the same directory, flushed to disk and then renamed into place, so that a
    failed run never leaves a partial seed at O(path).
  - A file at O(path) that is not a seed (an ISO 9660 or FAT file system whose root directory holds only files named
    C(user-data), C(meta-data), C(network-config) or C(vendor-data)) is never replaced or removed, unless
    O(force=true). The task fails instead, and the file is left as it was.
author:
  - kvm.storage contributors (@kvm-storage)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - ansible.builtin.files
attributes:
  action_group:
    membership: [kvm.storage.image]
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - Check mode builds the image in memory and compares it as a real run does; it returns the same RV(actions),
        RV(files), diff and C(changed).
  diff_mode:
    support: full
    details:
      - The diff is a list; first the seed's format, label and file names before and after, then one entry per file
        whose content changes, added or removed (its text; a file that is not UTF-8 is shown by its size and SHA-256).
options:
  path:
    description:
      - The seed image file. Its directory must exist.
      - It must not be a directory, a device or any other file that is not a regular file.
    type: path
    required: true
  format:
    description:
      - The file system of the image. cloud-init reads both.
      - V(iso9660) for a CD-ROM (the usual choice), V(vfat) for a disk.
    type: str
    choices: [iso9660, vfat]
    default: iso9660
  label:
    description:
      - The label of the file system (the ISO 9660 volume identifier, the FAT volume label), 1 to 11 of the characters
        A-Z, a-z, 0-9 and C(_). It is written in upper case, which both file systems require; cloud-init accepts the
        labels C(cidata) and C(CIDATA).
    type: str
    default: cidata
  user_data:
    description:
      - The content of C(user-data).
      - A string is written as it is (a cloud-config document starts with the line C(#cloud-config); a script with
        C(#!)).
      - A dictionary is written as a cloud-config document, the line C(#cloud-config) followed by the dictionary in
        YAML (block style, keys sorted, strings quoted where YAML could read them as something else), which needs no
        PyYAML on the host.
      - When not given, an empty cloud-config document (C(#cloud-config) alone).
    type: raw
  meta_data:
    description:
      - The content of C(meta-data); a string as it is, a dictionary in YAML.
      - When not given, C(instance-id) only, derived from O(path); C(iid-) followed by the first 16 hexadecimal
        digits of the SHA-256 of the absolute path, so that it stays the same from run to run and differs between
        seeds. cloud-init runs its once-per-instance steps again when the instance ID changes.
    type: raw
  network_config:
    description:
      - The content of C(network-config) (cloud-init's network configuration, version 1 or 2); a string as it is, a
        dictionary in YAML.
      - When not given, the seed has no C(network-config).
    type: raw
  vendor_data:
    description:
      - The content of C(vendor-data); a string as it is, a dictionary as a cloud-config document as with
        O(user_data).
      - When not given, the seed has no C(vendor-data).
    type: raw
  state:
    description:
      - V(present) writes the seed; V(absent) removes the file at O(path).
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Replace (V(present)) or remove (V(absent)) a file at O(path) that is not a seed.
    type: bool
    default: false
notes:
  - A replaced seed keeps the mode and, where the user running the module may set it, the owner and group of the
    file it replaces; O(mode), O(owner) and O(group) set them otherwise. A new seed is created with the mode 0666
    less the umask.
  - A guest reads a seed when it boots; a running guest does not see a new seed until its CD-ROM or disk is
    changed or it is restarted.
seealso:
  - name: cloud-init NoCloud data source
    description: The seed's files, label and how cloud-init finds them.
    link: https://cloudinit.readthedocs.io/en/latest/reference/datasources/nocloud.html
'''

EXAMPLES = r'''
- name: A seed for a guest, as an ISO 9660 image to attach as a CD-ROM
  kvm.storage.cloud_init_seed:
    path: /var/lib/libvirt/images/web1-seed.iso
    user_data:
      hostname: web1
      users:
        - name: ops
          sudo: ALL=(ALL) NOPASSWD:ALL
          ssh_authorized_keys:
            - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxQ0f4d6iC5bqyqUuJZDPXqq6Wl3q1q7A0mB7ygcOC3 ops@example.com
      packages: [qemu-guest-agent]
    meta_data:
      instance-id: web1-0001
      local-hostname: web1
    network_config:
      version: 2
      ethernets:
        eth0:
          match:
            name: "en*"
          dhcp4: true
    mode: '0640'

- name: The same seed as a FAT image, for a guest without a CD-ROM drive
  kvm.storage.cloud_init_seed:
    path: /var/lib/libvirt/images/web1-seed.img
    format: vfat
    user_data: |
      #cloud-config
      hostname: web1
    meta_data: |
      instance-id: web1-0001

- name: Remove the seed once the guest has booted
  kvm.storage.cloud_init_seed:
    path: /var/lib/libvirt/images/web1-seed.iso
    state: absent
'''

RETURN = r'''
path:
  description: The seed image file, O(path).
  returned: always
  type: str
  sample: /var/lib/libvirt/images/web1-seed.iso
format:
  description: The file system of the seed, O(format).
  returned: always
  type: str
  sample: iso9660
label:
  description: The label written (O(label) in upper case); null with O(state=absent).
  returned: always
  type: str
  sample: CIDATA
files:
  description:
    - The files of the seed as requested (also in check mode, and when nothing changed), by name; empty with
      O(state=absent).
  returned: always
  type: dict
  contains:
    sha256:
      description: The SHA-256 of the file's content, in hexadecimal.
      type: str
    size:
      description: The size of the file in bytes.
      type: int
  sample:
    meta-data:
      sha256: 5a2d4d1bd1d8c2f7d0c0d5c1c4a7e6f4c6ee5e1d9d6cb0c5d8b8a2d0b8a5c9a1
      size: 26
    user-data:
      sha256: 0e8e5a8ed3c19cd6d53dd7b2c4fdb4bc8d0a1cb4f3f6a3c0a1b5b9b0b6f7d3a2
      size: 120
actions:
  description: What the task did, in order; in check mode, what it would do.
  returned: always
  type: list
  elements: str
  sample:
    - write iso9660 seed /var/lib/libvirt/images/web1-seed.iso
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.kvm.storage.plugins.module_utils._cloud_init_seed import (
    CloudInitSeedError,
    cloud_init_seed_argument_spec,
    run_cloud_init_seed,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes


def main():
    module = AnsibleModule(
        argument_spec=cloud_init_seed_argument_spec(),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    refuse_nul_bytes(module)
    try:
        result = run_cloud_init_seed(module)
    except CloudInitSeedError as exc:
        module.fail_json(msg=to_native(exc), **exc.result)
    except (OSError, IOError) as exc:
        module.fail_json(msg='%s: %s' % (module.params['path'], to_native(exc)))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
