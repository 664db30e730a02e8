#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: lvm_volume_image
short_description: Put a guest disk image on an LVM logical volume
version_added: 0.1.0
description:
  - Creates a logical volume and writes a disk image onto it, raw (what the guest sees) or as a qcow2 image on the
    volume, in one idempotent task; what C(lvcreate) followed by C(qemu-img convert -n -O raw img /dev/vg/lv) does.
  - The image is read and written by the image library embedded in the collection, so C(qemu-img) is not needed;
    lvm2 is driven through its command line (C(lvs), C(vgs), C(lvcreate), C(lvresize), C(lvchange), C(lvremove)).
  - The device is the volume's C(lv_path) as lvm2 reports it; an inactive volume is activated with C(lvchange -ay).
  - What the volume holds is recorded in LVM tags (C(kvmstorage.format=), C(kvmstorage.size=), C(kvmstorage.sha256=),
    C(kvmstorage.source=)); a volume being written carries C(kvmstorage.writing) until the write completed.
  - The source is unchanged when the fingerprint of its files (device, inode, size, modification and change times of
    every file of its backing chain) matches the volume's C(kvmstorage.source=) tag, without reading it; otherwise the
    SHA-256 of its guest-visible content (the C(sha256sum) of the file C(qemu-img convert -O raw SRC out.raw) writes) is
    computed and compared with C(kvmstorage.sha256=) (a full read of the source, holes hashed as zeroes, about a
    second per GiB). A changed fingerprint over an unchanged content only refreshes the C(kvmstorage.source=) tag
    (not reported as a change).
  - A volume whose write (or the zeroing of its new end after growing) did not complete keeps the
    C(kvmstorage.writing) tag and is written again whole by the next run, without O(update).
  - The write is sparse-aware. Holes and zero blocks of the image are made to read zero with C(BLKZEROOUT) (zeroes
    are written where the device refuses it), except where the volume is known to read zero already (a new thin
    volume in a pool that zeroes new blocks; a new qcow2 image). Old data of the volume never shows through, past
    the image's end of a raw volume included.
author:
  - kvm.storage contributors (@kvm-storage)
requirements:
  - lvm2 (the C(lvs), C(vgs), C(lvcreate), C(lvresize), C(lvchange), C(lvremove) commands)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - kvm.storage.image_policy
attributes:
  action_group:
    membership: [kvm.storage.lvm]
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - Reports the steps it would take in RV(actions) and the diff; reads the source (to hash it) only when its
        fingerprint changed.
  diff_mode:
    support: full
options:
  vg:
    description:
      - Volume group of the logical volume. It must exist.
    type: str
    required: true
  lv:
    description:
      - Name of the logical volume.
    type: str
    required: true
  src:
    description:
      - The image to put on the volume, in any format the image library reads (its backing chain is followed under
        the path policy, see O(allow_dirs); this file itself is the task's own and trusted).
      - Required with O(state=present).
    type: path
  src_format:
    description:
      - Format of O(src). Detected when omitted. Requires O(src).
    type: str
  size:
    description:
      - Size of the volume, in bytes or with a qemu-img suffix (C(K), C(M), C(G), C(T); powers of 1024), rounded up to
        whole extents of the volume group (the virtual size of a thin volume).
      - Default is the least the image needs, rounded up to whole extents; for O(format=raw) its virtual size, for
        O(format=qcow2) the C(required) size of C(qemu-img measure -O qcow2) of O(src).
      - Smaller than that is an error. An existing smaller volume is grown (see O(resize)); a larger one is kept
        unless O(shrink=true).
      - A qcow2 image on a volume allocates new clusters as the guest writes; at the default size it has room for
        the source's clusters only. Give O(size) (up to C(fully-allocated) of C(qemu-img measure)) for growth.
      - A relative size (V(+4G), V(-1G)) is refused; the size is the volume's, never a change of it.
    type: str
  format:
    description:
      - What is written on the volume. V(raw) is the guest's disk content itself; V(qcow2) is a qcow2 image (of the
        source's virtual size) on the volume, as C(qemu-img convert -O qcow2 img /dev/vg/lv) writes it.
    type: str
    choices: [raw, qcow2]
    default: raw
  thinpool:
    description:
      - Thin pool (in O(vg)) to create the volume in, as a thin volume. The pool must exist.
      - An existing volume that is not a thin volume of this pool is an error.
    type: str
  state:
    description:
      - V(present) creates the volume if needed and makes it hold O(src).
      - V(absent) removes the volume (C(lvremove --yes)). lvm2 removes the classic snapshots of a volume that is not
        thin with it (O(snapshot_before_write)'s included); the snapshots of a thin volume are thin volumes of their
        own and stay. A volume without this module's tags is removed only with O(force=true).
    type: str
    choices: [present, absent]
    default: present
  resize:
    description:
      - Grow an existing volume that is smaller than O(size) (or than the image needs) with C(lvresize). The new end
        of a raw volume is zeroed.
      - When V(false), a volume too small is an error.
    type: bool
    default: true
  shrink:
    description:
      - Shrink an existing volume that is larger than O(size). Without it a larger volume is kept (grow only).
      - A raw volume is shrunk no further than the image's virtual size; a qcow2 volume is shrunk only when it is
        rewritten.
    type: bool
    default: false
  update:
    description:
      - Rewrite a volume that this module wrote from another source content (or in another format).
      - When V(false), a volume holding another image is an error that names both contents; nothing is written.
    type: bool
    default: false
  force:
    description:
      - Overwrite (or with O(state=absent) remove) a volume that this module did not write (no C(kvmstorage.*) tags),
        which may hold anyone's data. Implies O(update).
      - An unchanged image is never written again, even with O(force=true).
    type: bool
    default: false
  snapshot_before_write:
    description:
      - Before overwriting an existing volume, take an LVM snapshot of it, named C(<lv>_snap_<UTC time>) (a thin
        snapshot for a thin volume; a classic snapshot as large as the volume otherwise). The name is returned in
        RV(snapshot). The snapshot is never removed by this module, except that lvm2 removes a classic snapshot
        with its volume (O(state=absent)).
      - lvm2 creates a thin snapshot with the activation skip flag (it is not active); C(lvchange -ay -K vg/snapshot)
        activates it. A classic snapshot is active, and the volume's writes copy its old blocks there first.
    type: bool
    default: false
notes:
  - Writing refuses a device that a running guest holds open (QEMU's image locks), as C(qemu-img) does, before any
    other step (no snapshot is taken, nothing is resized).
  - When a step fails after others succeeded, a volume the task created is removed again (the task changed nothing);
    otherwise the task fails with C(changed=true) and RV(actions) listing the steps that were done (an interrupted
    write is listed as such; the volume keeps the C(kvmstorage.writing) tag and is written again whole by the next
    run).
  - Without O(update) or O(force), a changed source makes the task fail rather than leave an old image in place
    silently.
seealso:
  - module: kvm.storage.lvm_volume_image_info
  - module: kvm.storage.disk_image
'''

EXAMPLES = r'''
- name: Debian cloud image on a 20 GiB raw volume
  kvm.storage.lvm_volume_image:
    vg: vg_guests
    lv: web1-root
    src: /var/lib/images/debian-12-genericcloud-amd64.qcow2
    size: 20G

- name: A qcow2 image on a thin volume (the volume sized by qemu-img measure)
  kvm.storage.lvm_volume_image:
    vg: vg_guests
    lv: web1-data
    src: /var/lib/images/data.vmdk
    src_format: vmdk
    format: qcow2
    thinpool: pool0

- name: Roll out a new golden image, keeping a snapshot of what was there
  kvm.storage.lvm_volume_image:
    vg: vg_guests
    lv: web1-root
    src: /var/lib/images/golden.qcow2
    update: true
    snapshot_before_write: true
  register: rollout

- name: Overwrite a volume made by hand; grow only, never shrink, and fail when it is too small
  kvm.storage.lvm_volume_image:
    vg: vg_guests
    lv: legacy
    src: /srv/images/legacy.raw
    force: true
    resize: false

- name: Shrink a raw volume to 10 GiB (no smaller than the image)
  kvm.storage.lvm_volume_image:
    vg: vg_guests
    lv: web1-root
    src: /var/lib/images/golden.qcow2
    size: 10G
    shrink: true

- name: An overlay whose backing file lives in a shared directory
  kvm.storage.lvm_volume_image:
    vg: vg_guests
    lv: web2-root
    src: /var/lib/images/web2.qcow2
    allow_dirs: [/var/lib/images/base]

- name: Remove the volume
  kvm.storage.lvm_volume_image:
    vg: vg_guests
    lv: web1-root
    state: absent
'''

RETURN = r'''
actions:
  description: The steps taken (in check mode, the steps that would be taken), in order; empty when nothing changed.
  type: list
  elements: str
  returned: always
  sample: ["create volume vg_guests/web1-root (21474836480 bytes)", "write raw image from /var/lib/images/a.qcow2 (new volume)"]
volume:
  description: The logical volume as lvm2 reports it after the task (before, in check mode); null when absent.
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
      description: LVM tags of the volume, sorted.
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
image:
  description:
    - What the volume holds, read from its device by the image library, with the keys of C(qemu-img info --output=json)
      (a raw volume's virtual size is the volume's size).
    - Null when absent, and in check mode when the volume is to be created or written.
  type: dict
  returned: always
  sample: {"format": "raw", "virtual-size": 21474836480, "filename": "/dev/vg_guests/web1-root"}
source:
  description: The source image, with O(state=present).
  type: dict
  returned: when state is present
  contains:
    format:
      description: Format of O(src).
      type: str
      sample: qcow2
    virtual_size:
      description: Virtual size of O(src) in bytes.
      type: int
      sample: 2147483648
    required_size:
      description: Bytes the volume needs at least (virtual size for raw, C(qemu-img measure) C(required) for qcow2).
      type: int
      sample: 2147483648
write:
  description: Statistics of the write, when the image was written.
  type: dict
  returned: when written
  sample: {"bytes_written": 1048576, "bytes_zeroed": 20400000000, "volume_size": 21474836480}
snapshot:
  description: Name of the snapshot taken before the write (O(snapshot_before_write)).
  type: str
  returned: when a snapshot was taken
  sample: web1-root_snap_20260101120000
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.storage.plugins.module_utils._lvm import LvmError
from ansible_collections.kvm.storage.plugins.module_utils._lvm_volume_image import (
    LVM_VOLUME_IMAGE_REQUIRED_BY,
    LVM_VOLUME_IMAGE_REQUIRED_IF,
    VolumeImageError,
    failure_text,
    lvm_volume_image_argument_spec,
    run_lvm_volume_image,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import ImageError


def main():
    module = AnsibleModule(
        argument_spec=lvm_volume_image_argument_spec(),
        supports_check_mode=True,
        required_if=LVM_VOLUME_IMAGE_REQUIRED_IF,
        required_by=LVM_VOLUME_IMAGE_REQUIRED_BY,
    )
    refuse_nul_bytes(module)
    try:
        result = run_lvm_volume_image(module)
    except LvmError as exc:
        module.fail_json(msg=str(exc), cmd=exc.cmd, rc=exc.rc, stderr=exc.stderr)
    except VolumeImageError as exc:
        # with what the task did before it failed (changed, actions), when a step failed after others
        module.fail_json(msg='%s/%s: %s' % (module.params['vg'], module.params['lv'], exc), **exc.result)
    except ImageError as exc:
        module.fail_json(msg='%s/%s: %s' % (module.params['vg'], module.params['lv'], failure_text(exc)))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
