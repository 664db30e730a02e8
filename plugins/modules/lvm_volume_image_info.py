#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: lvm_volume_image_info
short_description: Read what an LVM logical volume holds
version_added: 0.1.0
description:
  - Returns a logical volume as lvm2 reports it (path, size, tags), what its C(kvmstorage.*) tags say it holds (as
    written by M(kvm.storage.lvm_volume_image)), and the image read from its device by the embedded image library.
  - Never changes anything.
author:
  - kvm.storage contributors (@kvm-storage)
requirements:
  - lvm2 (the C(lvs) and C(vgs) commands)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
attributes:
  action_group:
    membership: [kvm.storage.lvm]
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - The module never changes anything; it runs the same in check mode.
  diff_mode:
    support: none
options:
  vg:
    description:
      - Volume group of the logical volume. A missing volume group is an error.
    type: str
    required: true
  lv:
    description:
      - Name of the logical volume. A missing volume gives RV(exists=false), not an error.
    type: str
    required: true
  format:
    description:
      - Format to read the volume's content as.
      - By default the format recorded in the volume's tags; detected (probed) on a volume without complete tags.
    type: str
  force_share:
    description:
      - Read the device even when a running guest holds a write lock on it (like C(qemu-img info -U)).
    type: bool
    default: true
notes:
  - The device of an inactive volume does not exist; RV(image) is then null (the volume is not activated).
seealso:
  - module: kvm.storage.lvm_volume_image
'''

EXAMPLES = r'''
- name: What does web1-root hold?
  kvm.storage.lvm_volume_image_info:
    vg: vg_guests
    lv: web1-root
  register: web1_root

- name: Show the content digest recorded by lvm_volume_image
  ansible.builtin.debug:
    msg: "{{ web1_root.holds.sha256 }} ({{ web1_root.image['virtual-size'] }} bytes, {{ web1_root.image.format }})"
  when: web1_root.exists and web1_root.holds.complete

- name: Read a volume made by hand as qcow2, refusing it while a guest writes to it
  kvm.storage.lvm_volume_image_info:
    vg: vg_guests
    lv: legacy
    format: qcow2
    force_share: false
'''

RETURN = r'''
exists:
  description: Whether the logical volume exists.
  type: bool
  returned: always
  sample: true
volume:
  description: The logical volume as lvm2 reports it; null when it does not exist.
  type: dict
  returned: always
  contains:
    vg:
      description: Volume group.
      type: str
      sample: vg_guests
    lv:
      description: Logical volume name.
      type: str
      sample: web1-root
    path:
      description: Device path (lvm2's C(lv_path)).
      type: str
      sample: /dev/vg_guests/web1-root
    size:
      description: Size in bytes.
      type: int
      sample: 21474836480
    tags:
      description: LVM tags, sorted.
      type: list
      elements: str
      sample: ["kvmstorage.format=raw", "kvmstorage.sha256=9f86d0...", "kvmstorage.size=2147483648", "kvmstorage.source=4e1f..."]
    segtype:
      description: Segment type (C(linear), C(thin), ...).
      type: str
      sample: linear
    thinpool:
      description: Thin pool of a thin volume, else null.
      type: str
      sample: pool0
holds:
  description: What the C(kvmstorage.*) tags say the volume holds; null when it does not exist.
  type: dict
  returned: always
  contains:
    written_by_module:
      description: Whether the volume carries tags of M(kvm.storage.lvm_volume_image).
      type: bool
      sample: true
    complete:
      description: Whether the last write completed (false while or after an interrupted write).
      type: bool
      sample: true
    format:
      description: Format of the image on the volume.
      type: str
      sample: raw
    virtual_size:
      description: Virtual size of the source image written there.
      type: int
      sample: 2147483648
    sha256:
      description: SHA-256 of the guest-visible content of the source written there.
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    source:
      description: Fingerprint of the source files when they were written or last found unchanged.
      type: str
      sample: 4e1f0c1f5a3b2c9d8e7f6a5b4c3d2e1f
image:
  description:
    - The volume's content read by the image library, with the keys of C(qemu-img info --output=json).
    - Null when the volume does not exist or its device does not exist (inactive volume).
  type: dict
  returned: always
  sample: {"format": "qcow2", "virtual-size": 2147483648, "filename": "/dev/vg_guests/web1-data", "cluster-size": 65536}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._lvm import LvmError
from ansible_collections.kvm.storage.plugins.module_utils._lvm_volume_image import (
    VolumeImageError,
    lvm_volume_image_info_argument_spec,
    run_lvm_volume_image_info,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import ImageError


def main():
    module = AnsibleModule(
        argument_spec=lvm_volume_image_info_argument_spec(),
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    try:
        result = run_lvm_volume_image_info(module)
    except LvmError as exc:
        module.fail_json(msg=str(exc), cmd=exc.cmd, rc=exc.rc, stderr=exc.stderr)
    except (VolumeImageError, ImageError) as exc:
        module.fail_json(msg='%s/%s: %s' % (module.params['vg'], module.params['lv'], exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
