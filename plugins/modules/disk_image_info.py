#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: disk_image_info
short_description: Read information about QEMU disk image files
version_added: 0.1.0
description:
  - Returns what C(qemu-img info --output=json) returns for one or more images, including their internal snapshots,
    optionally with their backing chains, the result of a consistency check (C(qemu-img check)), their allocation map
    (C(qemu-img map)) and the size a conversion would need (C(qemu-img measure)), without needing qemu-img on the host.
  - Reads every format the collection reads; V(raw), V(qcow2), V(vmdk), V(vdi), V(vpc), V(vhdx), V(qed), V(qcow),
    V(luks), V(parallels), V(bochs), V(cloop) and V(dmg).
  - Reads the disks inside an OVA (an OVF package in one tar file) or an uncompressed Vagrant C(.box) in place, and
    lists them (RV(images[].ova_disks)).
  - Encrypted (V(luks)) images are described from their header without a passphrase (cipher, key slots, virtual
    size); their allocation map and measure need none either, and their data is never read.
  - Never writes to the images.
  - Every path is described on its own, in one rule; a missing path is reported with RV(images[].exists=false) and
    is no error; a path that exists but cannot be described gets RV(images[].error), and the task fails once every
    path was described, returning RV(images) with the failure.
author:
  - kvm.storage contributors (@kvm-storage)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - kvm.storage.image_policy
  - kvm.storage.image_policy.force_share
attributes:
  action_group:
    membership: [kvm.storage.image]
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - The module never changes anything; it runs the same in check mode.
  diff_mode:
    support: none
options:
  path:
    description:
      - Path of an image, or a list of paths.
      - The paths listed are the task's own; when an image names one of them (as its backing file, for example), it
        is opened wherever it is, without O(allow_dirs).
    type: raw
    required: true
  member:
    description:
      - The disk to describe inside an OVA or an uncompressed Vagrant C(.box) at O(path) (every path, when O(path) is
        a list); the disk is read inside the archive, which is never unpacked.
      - An integer is an index into RV(images[].ova_disks); a string is the name of a tar member.
      - By default, a path whose name ends in C(.ova) or C(.box) gives its first disk.
    type: raw
  backing_chain:
    description:
      - Also describe every image of the backing chain (like C(qemu-img info --backing-chain)), in RV(images[].backing-chain).
    type: bool
    default: false
  check:
    description:
      - Also check each image for consistency (like C(qemu-img check), without repairing), in RV(images[].check).
      - For a format that cannot be checked, RV(images[].check_note) says so instead; that is not a failure.
    type: bool
    default: false
  map:
    description:
      - Also return the allocation map of each image and its backing chain (like C(qemu-img map --output=json)), in
        RV(images[].map).
    type: bool
    default: false
  measure:
    description:
      - Also return the size an image converted from each image would need (like
        C(qemu-img measure --output=json -O out_format)), in RV(images[].measure).
    type: dict
    suboptions:
      out_format:
        description:
          - Format of the converted image (V(qcow2) or V(raw)).
        type: str
        default: qcow2
      options:
        description:
          - Creation options of the converted image, as for C(qemu-img measure -o) (for example C(cluster_size),
            C(preallocation), C(refcount_bits), C(extended_l2)).
        type: dict
        default: {}
  compare:
    description:
      - Also compare each image with another one, as C(qemu-img compare) does (guest-visible content; zeroes and
        unallocated areas are equal), in RV(images[].compare). A converted copy checked against its source, for
        example.
      - The other image is the task's own, so its backing chain opens as the chain of O(path) does.
    type: dict
    suboptions:
      path:
        description:
          - The image to compare with.
        type: path
        required: true
      format:
        description:
          - Its format; probed when not given.
        type: str
      member:
        description:
          - The disk inside an OVA or Vagrant C(.box) at O(compare.path), as O(member) selects one.
        type: raw
      strict:
        description:
          - Images of different virtual sizes differ (C(qemu-img compare -s)); without it, the larger image's extra
            part must read as zeroes.
        type: bool
        default: false
seealso:
  - module: kvm.storage.disk_image
'''

EXAMPLES = r'''
- name: Describe an overlay and its backing chain
  kvm.storage.disk_image_info:
    path: /var/lib/libvirt/images/vm1.qcow2
    backing_chain: true
  register: vm1_disk

- name: Show the virtual size of every layer
  ansible.builtin.debug:
    msg: "{{ vm1_disk.images[0]['backing-chain'] | map(attribute='virtual-size') | list }}"

- name: Check several images, including one a running guest uses
  kvm.storage.disk_image_info:
    path:
      - /var/lib/libvirt/images/base.qcow2
      - /var/lib/libvirt/images/vm2.qcow2
    check: true
    force_share: true
  register: checked

- name: Allocation map and the size of a compressed copy
  kvm.storage.disk_image_info:
    path: /var/lib/libvirt/images/vm1.qcow2
    map: true
    measure:
      out_format: qcow2
      options:
        cluster_size: 64K
  register: vm1_usage

- name: Show the bytes the overlay holds itself and the size a converted copy needs
  ansible.builtin.debug:
    msg: >-
      {{ vm1_usage.images[0].map | selectattr('depth', 'equalto', 0) | selectattr('present')
         | map(attribute='length') | sum }} bytes in the overlay,
      {{ vm1_usage.images[0].measure.required }} bytes needed

- name: List the internal snapshots of an image
  kvm.storage.disk_image_info:
    path: /var/lib/libvirt/images/base.qcow2
  register: base_disk

- name: Show the snapshot names
  ansible.builtin.debug:
    msg: "{{ base_disk.images[0].snapshots | default([]) | map(attribute='name') | list }}"

- name: List the disks of an OVA and describe the second one
  kvm.storage.disk_image_info:
    path: /srv/import/appliance.ova
    member: 1
  register: appliance

- name: Show the member names and virtual sizes of the appliance's disks
  ansible.builtin.debug:
    msg: "{{ appliance.images[0].ova_disks | items2dict(key_name='name', value_name='capacity') }}"

- name: Describe a VirtualBox and a Hyper-V disk
  kvm.storage.disk_image_info:
    path:
      - /srv/vbox/data.vdi
      - /srv/hyperv/data.vhdx

- name: Compare a flattened copy with the overlay it came from (like qemu-img compare)
  kvm.storage.disk_image_info:
    path: /var/lib/libvirt/images/vm1-flat.qcow2
    compare:
      path: /var/lib/libvirt/images/vm1.qcow2
  register: flat_copy

- name: Fail when the copy differs from its source
  ansible.builtin.assert:
    that: flat_copy.images[0].compare.identical
    fail_msg: "first difference at byte {{ flat_copy.images[0].compare.first_difference }}"

- name: Fail when an image has errors
  ansible.builtin.assert:
    that: item.check is not defined or item.check['check-errors'] | default(0) == 0
  loop: "{{ checked.images }}"
  loop_control:
    label: "{{ item.filename }}"
'''

RETURN = r'''
images:
  description:
    - One entry per O(path), in order, with the keys of C(qemu-img info --output=json) when the image exists.
  returned: always (with a failure too, see RV(images[].error))
  type: list
  elements: dict
  contains:
    exists:
      description:
        - Whether the file exists. When it does not, only RV(images[].filename) is returned besides; a missing path
          is not an error (as with M(ansible.builtin.stat)).
        - A path that exists but cannot be described (a directory, a device, a damaged image, a backing file the
          path policy refuses) has RV(images[].error) instead of the image's keys; the task then fails, after every
          path was described, and still returns RV(images).
        - For a tar archive holding no disk (and no O(member) given), only RV(images[].filename) and
          RV(images[].ova_disks) are returned besides.
      type: bool
      returned: always
      sample: true
    error:
      description:
        - Why an existing path cannot be described; the task fails when an entry has it (RV(images) is returned with
          the failure).
      type: str
      returned: when the path exists but cannot be described
      sample: "/var/lib/libvirt/images: is a directory, not an image file"
    filename:
      description: The path of the image; for a disk inside an archive, C(<archive>/<member>).
      type: str
      returned: always
      sample: /var/lib/libvirt/images/vm1.qcow2
    format:
      description: The format of the image.
      type: str
      returned: when the image exists
      sample: qcow2
    virtual-size:
      description: The size of the disk the guest sees, in bytes.
      type: int
      returned: when the image exists
      sample: 21474836480
    actual-size:
      description: The bytes the image file occupies on its file system.
      type: int
      returned: when the image exists
      sample: 200704
    cluster-size:
      description: The cluster size, for formats that have one.
      type: int
      returned: when the format has clusters
      sample: 65536
    dirty-flag:
      description: Whether the image is marked dirty.
      type: bool
      returned: when the image exists
      sample: false
    backing-filename:
      description: The backing file as recorded in the image.
      type: str
      returned: when the image has a backing file
      sample: base.qcow2
    full-backing-filename:
      description: The backing file resolved against the image's directory.
      type: str
      returned: when the image has a backing file
      sample: /var/lib/libvirt/images/base.qcow2
    backing-filename-format:
      description: The format of the backing file as recorded in the image.
      type: str
      returned: when the image records it
      sample: qcow2
    format-specific:
      description: Format-specific information (for qcow2 C(compat), C(lazy-refcounts), C(refcount-bits), ...).
      type: dict
      returned: when the format has some
      sample: {"type": "qcow2", "data": {"compat": "1.1", "lazy-refcounts": false, "refcount-bits": 16}}
    backing-chain:
      description: The info of every image in the backing chain, this image first (C(qemu-img info --backing-chain)).
      type: list
      elements: dict
      returned: when O(backing_chain=true) and the image exists
    check:
      description: The result of the consistency check, with the keys of C(qemu-img check --output=json).
      type: dict
      returned: when O(check=true) and the format can be checked
      sample: {"check-errors": 0, "image-end-offset": 262144, "total-clusters": 1}
    check_note:
      description: Why the image was not checked (its format has no consistency check).
      type: str
      returned: when O(check=true) and the format cannot be checked
    snapshots:
      description:
        - The internal snapshots of the image, as C(qemu-img snapshot -l) lists them, with the keys of
          C(qemu-img info --output=json).
      type: list
      elements: dict
      returned: when the image has internal snapshots
      contains:
        id:
          description: The ID of the snapshot (a number, as a string).
          type: str
          sample: "1"
        name:
          description: The name of the snapshot.
          type: str
          sample: before-upgrade
        vm-state-size:
          description: Bytes of saved VM state (RAM and devices) in the snapshot; 0 for disk-only snapshots.
          type: int
          sample: 0
        date-sec:
          description: When the snapshot was taken, seconds since the epoch.
          type: int
          sample: 1700000000
        date-nsec:
          description: Nanoseconds part of RV(images[].snapshots[].date-sec).
          type: int
          sample: 123000000
        vm-clock-sec:
          description: Guest clock at the snapshot, seconds.
          type: int
          sample: 0
        vm-clock-nsec:
          description: Nanoseconds part of RV(images[].snapshots[].vm-clock-sec).
          type: int
          sample: 0
    map:
      description:
        - The allocation map of the image and its backing chain, as C(qemu-img map --output=json) prints it.
        - C(depth) is the layer the range is read from (0 for the image itself), C(present) whether a layer holds it,
          C(zero) whether it reads as zeroes, C(data) whether data is stored for it, C(offset) where in the file.
      type: list
      elements: dict
      returned: when O(map=true) and the image exists
      sample: [{"start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680}]
    measure:
      description:
        - What C(qemu-img measure --output=json) prints for a conversion of the image to O(measure.out_format).
        - C(required) is the size the converted image needs as it is, C(fully-allocated) the size when every cluster
          is allocated; C(bitmaps) the bytes persistent bitmaps need, when both formats support them.
      type: dict
      returned: when O(measure) is given and the image exists
      sample: {"required": 393216, "fully-allocated": 21478375424}
    compare:
      description:
        - How the image compares with O(compare.path).
      type: dict
      returned: when O(compare) is given and the image exists
      contains:
        path:
          description: The image compared with.
          type: str
          returned: always
          sample: /var/lib/libvirt/images/vm1.qcow2
        identical:
          description: Whether the guest sees the same bytes in both.
          type: bool
          returned: always
          sample: true
        first_difference:
          description:
            - The first offset where they differ (rounded down to a 512-byte sector, as C(qemu-img compare) reports
              it), null when identical.
          type: int
          returned: always
          sample: null
    ova_disks:
      description:
        - The disks of the archive when the file is a tar archive (an OVA or an uncompressed Vagrant C(.box)), in the
          order of the OVF descriptor's disk section (the archive order of members named like disk images when there
          is no descriptor). RV(images[].ova_disks[].index) or RV(images[].ova_disks[].name) select one with O(member).
      type: list
      elements: dict
      returned: when the file is a tar archive
      contains:
        name:
          description: The tar member holding the disk.
          type: str
          sample: appliance-disk1.vmdk
        index:
          description: The position of the disk in the list.
          type: int
          sample: 0
        size:
          description: Bytes the member occupies in the archive; null when the OVF names a file the archive lacks.
          type: int
          sample: 1054720
        format:
          description: The format the OVF descriptor gives the disk, as qemu-img names it (null when unknown).
          type: str
          sample: vmdk
        capacity:
          description: The virtual size the OVF descriptor gives the disk, in bytes (null without a descriptor).
          type: int
          sample: 10737418240
        disk-id:
          description: The OVF C(ovf:diskId) of the disk.
          type: str
          sample: vmdisk1
        ovf-format:
          description: The OVF C(ovf:format) of the disk, as written.
          type: str
          sample: http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized
'''

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import (
    DiskImageError,
    disk_image_info_argument_spec,
    run_disk_image_info,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError


def main():
    module = AnsibleModule(
        argument_spec=disk_image_info_argument_spec(),
        supports_check_mode=True,
    )
    refuse_nul_bytes(module)
    try:
        result = run_disk_image_info(module.params)
    except DiskImageError as exc:
        # with every path's entry (images) when the task failed on some of them
        module.fail_json(msg=to_native(exc), **exc.result)
    except ImageError as exc:
        module.fail_json(msg=to_native(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg=to_native(exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
