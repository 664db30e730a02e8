#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: disk_image
short_description: Create, convert, resize, rebase, commit, repair, snapshot and remove QEMU disk image files
version_added: 0.1.0
description:
  - Manages one disk image file the way C(qemu-img create), C(qemu-img convert), C(qemu-img resize),
    C(qemu-img rebase), C(qemu-img commit), C(qemu-img amend), C(qemu-img check -r) and C(qemu-img snapshot) do,
    without needing qemu-img on the host; the image library travels inside the module.
  - Images are written in the formats qemu-img writes; V(raw), V(qcow2), V(vmdk) (subformats V(monolithicSparse),
    V(streamOptimized), V(monolithicFlat), V(twoGbMaxExtentSparse), V(twoGbMaxExtentFlat)), V(vdi) (dynamic or static),
    V(vpc) (VHD, dynamic or fixed), V(vhdx) (dynamic or fixed), V(qed), V(qcow) and V(luks) (LUKS1 encrypted images,
    with O(encryption_passphrase)).
  - Sources of a conversion (O(src)) may also be V(parallels), V(bochs), V(cloop) or V(dmg) images, and disks inside
    an OVA or a Vagrant C(.box) (O(src_member)), read in place without unpacking the archive.
  - The module reads the image once, compares it with the request, and acts only on a difference.
  - New images are built under a temporary name in the destination directory and renamed into place when complete,
    so a failed run never leaves a partial image at O(path).
  - An existing image whose format, backing file, backing format or reported creation options differ from the request
    is never silently accepted; the task fails unless O(force=true), which recreates it. Two differences are resolved in
    place instead, keeping the content; a different backing file when O(rebase) is set, and different amendable options
    (C(compat), C(lazy_refcounts), C(refcount_bits)), which are amended.
  - Instead of O(path), O(pool) and O(volume) name a volume of a libvirt storage pool. In a file-backed pool
    (types C(dir), C(fs), C(netfs)) the volume is the file O(volume) in the pool's target directory; everything
    works as with O(path), and the pool is refreshed when the task changed something. In other pools (C(logical),
    C(disk), C(iscsi), ...) libvirt's volume API is used; see O(pool).
  - On an existing image the steps run in this order; O(repair), O(revert_to), O(commit), amending options, O(rebase),
    resizing to O(size), then deleting and creating O(snapshots).
author:
  - kvm.storage contributors (@kvm-storage)
requirements:
  - the Python C(cryptography) package on the managed host, for V(luks) images only
  - libvirt-python (the C(libvirt) Python module) on the managed host, with O(pool) only
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
  - ansible.builtin.files
  - kvm.storage.image_policy
  - kvm.storage.libvirt
attributes:
  action_group:
    membership: [kvm.storage.image]
  platform:
    platforms: posix
  check_mode:
    support: full
    details:
      - Check mode computes the same plan as a real run and returns the same RV(actions) and C(changed).
  diff_mode:
    support: full
    details:
      - The diff shows the normalised image view used for the comparison (format, virtual size, backing file,
        backing format, creation options, snapshot names; with O(repair) the leaks and corruptions found, with
        O(commit) the bytes the image holds above its backing file, with O(revert_to) whether the disk matches the
        snapshot) plus file attributes that change.
options:
  path:
    description:
      - Path of the image file.
      - Exactly one of O(path) and O(pool) (with O(volume)) is required.
    type: path
  pool:
    description:
      - Name of the libvirt storage pool (on the host of O(uri)) holding the image as volume O(volume), instead of
        O(path). The pool must be active.
      - File-backed pools (types C(dir), C(fs), C(netfs)) of the managed host; the image is the file O(volume) in the
        pool's target directory. Every option works as with O(path). After a change the pool is refreshed, so that
        libvirt lists the new, changed or removed volume.
      - When O(uri) names another host (libvirt's host name differs from the managed host's), a file-backed pool's
        directory is not reachable from the managed host; its volumes are then managed through libvirt's volume API,
        as for the other pools (raw files, created sparse).
      - Other pools (C(logical), C(disk), C(iscsi), C(scsi), C(rbd), ...); libvirt's volume API is used, and only
        O(state), O(format) (V(raw), the default), O(size), O(src), O(src_format), O(src_member), O(src_snapshot),
        O(src_passphrase), O(force) and O(allow_dirs) apply (other options fail the task). O(state=present) creates
        the volume with the capacity O(size), else the virtual size of O(src) (one of them is needed to create it).
        O(src) is read through the image library (any format it reads) and uploaded as raw data through a libvirt
        stream, ranges that read as zeroes sent as holes; the rest of the volume past O(src)'s size is zeroed.
        O(state=absent) deletes the volume.
      - Idempotence with the volume API; a volume that exists with a capacity of at least O(size) (or O(src)'s
        virtual size) is left alone, and its content is not compared with O(src) (as an image file converted from
        O(src) is not converted again). Uploads happen when the task creates the volume. A smaller volume is grown
        (without O(src)); with O(src) the task fails unless O(force=true), which deletes the volume, creates it
        again and uploads O(src). To upload again into a volume of the right size, remove it first (O(state=absent)).
      - libvirt names the volumes of a C(disk) pool after their partitions (for example V(sdb1)); O(volume) must be
        the name of the next partition to create one.
    type: str
  volume:
    description:
      - Name of the volume in O(pool); required with O(pool). One file name (no C(/)).
    type: str
  state:
    description:
      - V(present) makes sure the image exists as requested.
      - V(absent) removes the image file; its backing files are left alone. The extent files of a multi-file V(vmdk)
        (V(monolithicFlat), V(twoGbMaxExtentSparse), V(twoGbMaxExtentFlat)) are removed with its descriptor when they
        are in the same directory; extent files elsewhere are left alone.
    type: str
    choices: [present, absent]
    default: present
  format:
    description:
      - Format of the image, for example V(qcow2), V(raw), V(vmdk), V(vdi), V(vpc), V(vhdx), V(qed), V(qcow) or
        V(luks).
      - V(luks) images are encrypted; they need O(encryption_passphrase).
      - Required with O(state=present). The format of an image is never guessed before writing to it.
      - A volume of a pool managed through libvirt's volume API (see O(pool)) holds raw data; O(format) is V(raw)
        there, or left unset.
      - An existing image in another format is a failure unless O(force=true).
    type: str
  size:
    description:
      - Virtual size of the image, in bytes (an integer) or with a qemu-img suffix (V(K), V(M), V(G), V(T), V(P), V(E),
        powers of 1024; for example V(10G) or V(1.5G)).
      - Rounded up to a multiple of 512 bytes, as qemu-img does.
      - Required to create an image without O(src) or O(backing_file); with O(backing_file) the default is the
        backing file's virtual size.
      - An existing image that is smaller is grown; an existing image that is larger is shrunk only with O(shrink=true).
      - With O(src), the converted image is then resized to this size.
      - V(vpc) images get the next size their CHS geometry can represent (as with C(qemu-img create -f vpc)), unless
        C(force_size) is set in O(options); an existing V(vpc) image of that rounded size matches O(size).
      - Only V(raw), V(qcow2), V(qed) and V(luks) images can change their size; for other formats (V(vmdk), V(vdi),
        V(vpc), V(vhdx), V(qcow)) a different O(size) fails, in check mode too, as C(qemu-img resize) does.
      - A size with a sign is relative to the virtual size the existing image has, as with C(qemu-img resize);
        V(+10G) grows it by 10 GiB, V(-1G) shrinks it by 1 GiB (with O(shrink=true) only). The result is rounded up
        to whole sectors and must be positive.
      - A relative size is not idempotent; every run grows (or shrinks) the image again, as running
        C(qemu-img resize +10G) twice does. Give the absolute size for a task that changes nothing on its second run.
      - A relative size needs an existing image file; it fails (in check mode too) when the image would be created
        or recreated, with O(src), with O(revert_to), and for a pool managed through libvirt's volume API.
    type: raw
  shrink:
    description:
      - Allow O(size) to be smaller than the virtual size of an existing image. The data past the new end is lost.
    type: bool
    default: false
  src:
    description:
      - Image to convert into O(path) (like C(qemu-img convert)).
      - When O(path) already exists with the requested O(format), backing file and options and with the virtual size
        of O(src) (or O(size) when given), it is taken as converted from O(src) already and is not converted again;
        the contents are not compared. Use O(force=true) together with a differing option, or remove O(path) first,
        to convert again.
      - When O(path) exists but differs, the task fails unless O(force=true), which converts again.
    type: path
  src_passphrase:
    description:
      - The passphrase of O(src) when it is an encrypted (V(luks)) image; required then. Requires O(src).
      - It is checked before anything is written (in check mode too); a passphrase that unlocks no key slot of
        O(src) fails the task.
      - Ignored when O(src) is not encrypted.
    type: str
  src_format:
    description:
      - Format of O(src). By default it is detected. Requires O(src).
      - A fixed VHD is detected as V(raw) (its footer is at its end, as qemu-img detects it too); set V(vpc) to read it
        as a VHD.
    type: str
  src_member:
    description:
      - The disk to convert when O(src) is an OVA (an OVF package in one tar file) or an uncompressed Vagrant C(.box);
        the disk is read inside the archive, which is never unpacked.
      - An integer is an index into the archive's disk list (the OVF descriptor's disk order, or the archive order of
        members named like disk images when there is no descriptor); a string is the name of a tar member.
      - By default, an O(src) whose name ends in C(.ova) or C(.box) gives its first disk (unless O(src_format=raw)).
      - M(kvm.storage.disk_image_info) lists the disks of an archive in RV(kvm.storage.disk_image_info#module:images[].ova_disks).
      - Requires O(src).
    type: raw
  src_snapshot:
    description:
      - Convert this internal snapshot of O(src) (its name, else its ID) instead of its current state (like
        C(qemu-img convert -l snapshot.name=NAME)). Requires O(src).
      - As for any conversion, an existing image at O(path) that matches the request is not converted again.
    type: str
  backing_file:
    description:
      - Backing file of the image (an overlay), recorded in the image as written here.
      - A relative name is resolved in the directory of O(path). The file named here is the task's own; it is trusted
        wherever it is (an absolute name in another directory needs no O(allow_dirs)), for the creation and for every
        later run of the task that reads the image again; it must still be a regular file, not a protocol name.
      - With O(src), the converted image holds only what differs from the backing file (like C(qemu-img convert -B)).
      - When an existing image has another backing file (or backing format), the task fails unless O(rebase) is set,
        which changes it in place, or O(force=true), which recreates the image.
      - With O(rebase), an empty string means no backing file; the image is flattened (its backing chain's data copied
        into it, with O(rebase=safe)).
      - When not given, the backing file of an existing image is not compared.
    type: str
  backing_format:
    description:
      - Format of O(backing_file). Requires O(backing_file).
      - By default the backing file's format is detected, and recorded explicitly in the image.
    type: str
  options:
    description:
      - Creation options of the format, spelled as for C(qemu-img create -o), for example C(cluster_size),
        C(compat), C(lazy_refcounts), C(refcount_bits), C(preallocation), C(compression_type), C(extended_l2).
      - Values may be integers, booleans or strings (sizes like V(64K) and V(on)/V(off) are accepted).
      - Other formats take their own options, for example C(subformat) for V(vmdk), V(vpc) and V(vhdx), C(static) for
        V(vdi), C(adapter_type), C(compat6) and C(hwversion) for V(vmdk), C(block_size) and C(log_size) for V(vhdx),
        C(force_size) for V(vpc), C(cluster_size) and C(table_size) for V(qed), C(cipher-alg) (V(aes-128), V(aes-192),
        V(aes-256)), C(cipher-mode) (V(xts), V(cbc), V(ecb)), C(ivgen-alg) (V(plain), V(plain64), V(essiv)),
        C(ivgen-hash-alg), C(hash-alg) and C(iter-time) (milliseconds of PBKDF2 work to unlock, default 2000) for
        V(luks).
      - The passphrase of a V(luks) image goes in O(encryption_passphrase), never in C(key-secret) here.
      - The options compared with an existing image are those it records where they can be read back; for V(qcow2)
        C(cluster_size), C(compat), C(lazy_refcounts), C(refcount_bits), C(compression_type), C(extended_l2),
        C(data_file) and C(data_file_raw); for V(vmdk) C(subformat) (the descriptor's create type); for V(vdi)
        C(static); for V(vpc) C(subformat); for V(vhdx) C(subformat) and C(block_size); for V(qed) C(cluster_size);
        for V(luks) C(cipher-alg), C(cipher-mode), C(ivgen-alg), C(ivgen-hash-alg) and C(hash-alg).
        An option is compared only when the task gives it. The other options only apply when the image is created.
      - When an existing image differs in C(compat), C(lazy_refcounts) or C(refcount_bits), the image is amended in
        place (like C(qemu-img amend)), keeping its content. A difference in another compared option needs
        O(force=true).
    type: dict
    default: {}
  compress:
    description:
      - Compress the data written by a conversion (like C(qemu-img convert -c)). Requires O(src) and a format that
        supports compression (qcow2). Data clusters are compressed with deflate, in parallel.
    type: bool
    default: false
  preallocation:
    description:
      - Preallocation of a created image (like C(qemu-img create -o preallocation=...)) and of the range an existing
        image grows by (like C(qemu-img resize --preallocation)).
      - V(off) allocates nothing, V(metadata) writes the qcow2 tables (qcow2 only), V(falloc) reserves the space
        without writing it, V(full) writes zeroes.
      - The preallocation of an existing image is not compared; it only applies when the image is created or grown.
      - A grow with V(falloc) or V(full) by more than the free space of the file system is refused before anything
        is written (in check mode too). A grow that runs out of space all the same is taken back, as
        C(qemu-img resize) leaves the image (same size, no leaked clusters); the task fails saying no space is left.
      - Same as C(preallocation) in O(options), which may be given instead; the two must agree.
    type: str
    choices: ["off", metadata, falloc, full]
  snapshots:
    description:
      - Internal snapshots that must be present in, or absent from, the image (like C(qemu-img snapshot -c) and
        C(qemu-img snapshot -d)). qcow2 only.
      - A snapshot that must be present and is missing is created from the image as the task leaves it (after any
        other change the task makes). A snapshot that exists is left alone, whatever its content.
      - A snapshot that must be absent is deleted, every snapshot of that name if there are several; its clusters are
        freed.
      - Snapshots not listed are left alone.
      - Names are matched exactly; a snapshot name is never taken as a snapshot ID here.
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - The name of the snapshot.
        type: str
        required: true
      state:
        description:
          - Whether the snapshot must exist.
        type: str
        choices: [present, absent]
        default: present
  revert_to:
    description:
      - Make the disk what internal snapshot O(revert_to) (its name, else its ID) holds, its content and its virtual
        size (like C(qemu-img snapshot -a)). qcow2 only. The snapshot itself is kept.
      - The snapshot is applied only when the disk differs from it, which makes the task idempotent. To find out, the
        disk is compared with the snapshot; clusters they still share are not read, the others are read and compared.
      - Everything written since the snapshot was taken is lost. Every run of the task reverts again what was written
        in between; use it in a play meant to reset a disk, not in one that runs regularly.
      - With O(size), the disk is reverted and then resized; it matches when it has that size, the snapshot's content
        up to the smaller of the two sizes, and zeroes past the snapshot's end.
      - The task fails, in check mode too, when the image has no such snapshot.
      - Mutually exclusive with O(src) (a revert applies to an existing image).
    type: str
  rebase:
    description:
      - When an existing image records another backing file or backing format than O(backing_file) and
        O(backing_format), change them in place (like C(qemu-img rebase)) instead of failing.
      - V(safe) keeps what the guest sees; where the old and the new backing chains differ, the data of the old one
        is copied into the image first. Both backing chains must be readable.
      - V(unsafe) only rewrites the backing file name and format (like C(qemu-img rebase -u)), for a backing file that
        was moved or renamed; with a backing file of other content, the guest sees other data.
      - Requires O(backing_file); O(backing_file="") removes the backing file. Mutually exclusive with O(src).
    type: str
    choices: [safe, unsafe]
  commit:
    description:
      - Write the data the image holds above its backing file into the backing file, then empty the image (like
        C(qemu-img commit)), so that the backing file holds the disk as the guest sees it.
      - Nothing is done when the image holds nothing of its own (its allocation map shows no range at depth 0), which
        makes the task idempotent.
      - The image must have a backing file, and the backing file must be writable and not in use. Other overlays on
        the same backing file then see the committed data.
      - O(commit=true) cannot be combined with O(src).
    type: bool
    default: false
  repair:
    description:
      - Check the consistency of an existing image and repair what the check finds (like C(qemu-img check -r)).
      - V(none) does not check.
      - V(leaks) frees leaked clusters (allocated but unused, harmless but wasted space). When the check finds
        corruptions, the task fails and changes nothing; use V(all) for them.
      - V(all) also repairs corruptions (refcounts too low, wrong copied flags) and rebuilds the refcount structure.
      - The task reports a change only when the check finds something and the repair fixes it. Formats without a
        consistency check (raw) are left alone.
      - The image is checked again after the repair. Damage the repair cannot fix (for example an L1 table entry
        pointing past the end of the file) fails the task, as C(qemu-img check -r) exits with status 2; the
        failure still reports what was fixed (RV(repair), and C(changed=true) when the repair wrote anything), and
        nothing after the repair is done.
    type: str
    choices: [none, leaks, all]
    default: none
  encryption_passphrase:
    description:
      - The passphrase of the V(luks) image at O(path); required with O(format=luks) and O(state=present), refused
        with other formats.
      - A new image (created, or converted from O(src)) gets it in key slot 0, as C(qemu-img create -f luks
        --object secret,id=sec0,data=PASSPHRASE -o key-secret=sec0) does.
      - An existing image is unlocked with it on every run, before anything is written and in check mode too; a
        passphrase that unlocks none of its key slots fails the task. Changing the passphrase of an existing image
        is not done here; O(force=true) does not replace an image only because of its passphrase.
      - Unlocking and creating need the Python C(cryptography) package on the managed host.
      - Not needed to remove an image.
    type: str
  force:
    description:
      - Recreate the image when its format, backing file, backing format, compared creation options or (with O(src))
        virtual size differ from the request.
      - Without O(src) the recreated image is empty; with O(src) it is converted again. The existing content is lost.
      - An image that matches the request is left alone even with O(force=true).
    type: bool
    default: false
notes:
  - The file attributes (O(mode), O(owner), O(group)) are checked before anything changes; a mode that is neither
    octal nor symbolic, or an owner or group unknown on the host, fails the task with the image untouched. In check
    mode an unknown owner or group is a warning, as with M(ansible.builtin.file) (an earlier task may create it).
  - A O(mode) given as a number (an unquoted V(711) in YAML is the decimal number 711, which is C(01307)) is applied
    as it is, with a warning that says what it means; quote modes (V('0711')).
  - When a step fails after others succeeded, a new image the task created is removed again (the task changed
    nothing); otherwise the task fails with C(changed=true) and RV(actions) listing the steps that were done.
  - libvirt 9.0 cannot delete the volumes of a C(disk) pool on a device whose partition names carry a C(p) before
    the number (C(loop0p1), C(nvme0n1p1)); it runs C(parted rm p1), which fails, and the task reports libvirt's error.
  - Passphrases are marked C(no_log); they never appear in RV(actions), the diff or error messages.
  - Images in use by a running guest (locked the way QEMU locks them) are not written; the task fails. To read such
    an image meanwhile, use M(kvm.storage.disk_image_info) with its C(force_share) option.
  - Like QEMU, a qcow2 image left dirty by a crash with lazy refcounts is repaired when it is opened for writing.
  - The image at O(path) must be a regular file.
seealso:
  - module: kvm.storage.disk_image_info
  - module: kvm.storage.storage_pool
'''

EXAMPLES = r'''
- name: Create a 20 GiB qcow2 image
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/base.qcow2
    format: qcow2
    size: 20G
    options:
      cluster_size: 64K
      lazy_refcounts: true
    mode: "0640"

- name: Create an overlay on it (the backing format is detected and recorded)
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    format: qcow2
    backing_file: base.qcow2

- name: Convert a raw image into a compressed qcow2 image
  kvm.storage.disk_image:
    path: /srv/export/vm1.qcow2
    src: /srv/import/vm1.img
    src_format: raw
    format: qcow2
    compress: true

# A long conversion runs in the background on the host (async), Ansible checking every 10 s for up to an hour:
# no SSH or job time-out while a large image is copied. poll: 0 and ansible.builtin.async_status start several.
- name: Convert a large image in the background
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1-imported.qcow2
    src: /srv/import/vm1.img
    src_format: raw
    format: qcow2
  async: 3600
  poll: 10

- name: Create a dynamic VirtualBox disk (VDI)
  kvm.storage.disk_image:
    path: /srv/vbox/data.vdi
    format: vdi
    size: 8G

- name: Create a fixed-size Hyper-V disk (VHDX), all of its space allocated
  kvm.storage.disk_image:
    path: /srv/hyperv/data.vhdx
    format: vhdx
    size: 8G
    options:
      subformat: fixed

- name: Export a qcow2 image as a stream-optimized VMDK (for VMware or an OVA)
  kvm.storage.disk_image:
    path: /srv/export/vm1.vmdk
    src: /var/lib/libvirt/images/vm1.qcow2
    format: vmdk
    options:
      subformat: streamOptimized

- name: Import a VirtualBox appliance (the disk inside the OVA is read in place)
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/appliance.qcow2
    src: /srv/import/appliance.ova
    src_member: 0
    format: qcow2

- name: Import the disk of a Vagrant box by its member name
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/box.qcow2
    src: /srv/import/debian.box
    src_member: box-disk001.vmdk
    format: qcow2

- name: Create an encrypted (LUKS) image, the passphrase taken from a vault-encrypted variable
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/secret.luks
    format: luks
    size: 10G
    encryption_passphrase: "{{ vault_disk_passphrase }}"
    options:
      cipher-alg: aes-256
      cipher-mode: xts
      iter-time: 2000

- name: Encrypt a qcow2 image into a LUKS image
  kvm.storage.disk_image:
    path: /srv/export/vm1.luks
    src: /var/lib/libvirt/images/vm1.qcow2
    format: luks
    encryption_passphrase: "{{ vault_disk_passphrase }}"

- name: Decrypt a LUKS image into a qcow2 image
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1-plain.qcow2
    src: /srv/export/vm1.luks
    src_passphrase: "{{ vault_disk_passphrase }}"
    format: qcow2

- name: Create a qcow2 volume in a directory pool (the pool is refreshed afterwards)
  kvm.storage.disk_image:
    pool: default
    volume: vm1.qcow2
    format: qcow2
    size: 20G

- name: Import a VMDK into an LVM pool; the logical volume gets the disk's virtual size, the data is uploaded as raw
  kvm.storage.disk_image:
    pool: vg_guests
    volume: vm1-root
    src: /srv/import/vm1.vmdk
    uri: qemu:///system

- name: Delete a volume of a remote host's LVM pool
  kvm.storage.disk_image:
    pool: vg_guests
    volume: old-root
    state: absent
    uri: qemu+ssh://root@hv2.example.com/system

- name: Grow an image to 40 GiB
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/base.qcow2
    format: qcow2
    size: 40G

- name: Grow an image, reserving the new space on disk
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/data.raw
    format: raw
    size: 100G
    preallocation: falloc

- name: Keep a snapshot named before-upgrade, drop the old one
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    format: qcow2
    snapshots:
      - name: before-upgrade
      - name: before-install
        state: absent

- name: Export an internal snapshot as a compressed image of its own
  kvm.storage.disk_image:
    path: /srv/export/vm1-before-upgrade.qcow2
    src: /var/lib/libvirt/images/vm1.qcow2
    src_snapshot: before-upgrade
    format: qcow2
    compress: true

- name: Reset a test VM's disk to its clean snapshot (nothing done when it still matches)
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/test-vm.qcow2
    format: qcow2
    revert_to: clean

- name: Move an overlay onto a new base image, keeping what the guest sees
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    format: qcow2
    backing_file: base-2024.qcow2
    rebase: safe

- name: Record a new name for a backing file that was renamed (content unchanged)
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    format: qcow2
    backing_file: base-renamed.qcow2
    backing_format: qcow2
    rebase: unsafe

- name: Merge an overlay into its backing file
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    format: qcow2
    commit: true

- name: Make an overlay independent of its backing file (flatten it)
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    format: qcow2
    backing_file: ""
    rebase: safe

- name: Turn on lazy refcounts and 64-bit refcounts of an existing image (amended in place)
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/base.qcow2
    format: qcow2
    options:
      lazy_refcounts: true
      refcount_bits: 64

- name: Free leaked clusters
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/base.qcow2
    format: qcow2
    repair: leaks
  register: repaired

- name: Show what the repair found (repair is returned only when something was repaired, never in check mode)
  ansible.builtin.debug:
    var: repaired.repair
  when: repaired.repair is defined

- name: Remove an image
  kvm.storage.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    state: absent
'''

RETURN = r'''
path:
  description:
    - The path of the image; with O(pool), the path of the volume (for a volume API pool, null in check mode
      before the volume exists).
  returned: with O(pool)
  type: str
  sample: /var/lib/libvirt/images/vm1.qcow2
volume:
  description:
    - The volume as libvirt describes it after the task (in check mode, before); empty when there is none.
  returned: with O(pool)
  type: dict
  contains:
    name:
      description: The volume name.
      type: str
      returned: when the volume exists
      sample: vm1.qcow2
    pool:
      description: The pool name.
      type: str
      returned: when the volume exists
      sample: default
    path:
      description: The volume's path on the host.
      type: str
      returned: when the volume exists
      sample: /var/lib/libvirt/images/vm1.qcow2
    key:
      description: The volume's key in libvirt.
      type: str
      returned: when the volume exists
      sample: /var/lib/libvirt/images/vm1.qcow2
    type:
      description: What libvirt says the volume is (C(file), C(block), C(network), ...).
      type: str
      returned: when the volume exists
      sample: file
    format:
      description: The volume format libvirt reports (an image format in a file pool, a partition type in a disk pool).
      type: str
      returned: when the volume exists
      sample: qcow2
    capacity:
      description: The volume's capacity (virtual size) in bytes.
      type: int
      returned: when the volume exists
      sample: 21474836480
    allocation:
      description: The bytes the volume occupies in the pool.
      type: int
      returned: when the volume exists
      sample: 200704
upload:
  description:
    - Statistics of an upload into a volume of a pool managed through libvirt's volume API (not in check mode).
  returned: when an upload ran
  type: dict
  contains:
    bytes_read:
      description: Bytes of guest data read from O(src) (ranges that are holes or zero clusters are not read).
      type: int
      returned: always
      sample: 1048576
    bytes_sent:
      description: Bytes of data sent to libvirt.
      type: int
      returned: always
      sample: 1048576
    holes_sent:
      description: Bytes sent as holes (zeroes that libvirt writes itself).
      type: int
      returned: always
      sample: 20970496
    duration:
      description: Seconds the upload took.
      type: float
      returned: always
      sample: 0.5
image:
  description:
    - Information about the image, with the keys of C(qemu-img info --output=json).
    - With O(pool), returned for file-backed pools only.
    - In check mode, the image as it is before the change.
    - An empty dictionary when there is no image (O(state=absent), or check mode before creation).
  returned: with O(path) or a file-backed O(pool)
  type: dict
  sample:
    virtual-size: 21474836480
    filename: /var/lib/libvirt/images/base.qcow2
    cluster-size: 65536
    format: qcow2
    actual-size: 200704
    dirty-flag: false
    format-specific:
      type: qcow2
      data:
        compat: "1.1"
        compression-type: zlib
        lazy-refcounts: true
        refcount-bits: 16
        corrupt: false
        extended-l2: false
actions:
  description:
    - What was done, or in check mode what would be done, in order; empty when nothing changed.
    - Option values are spelled as qemu-img spells them (V(on)/V(off) for booleans).
    - When the task fails after some steps were done, the steps that were done (with C(changed=true)).
  returned: success
  type: list
  elements: str
  sample:
    - create qcow2 image /var/lib/libvirt/images/base.qcow2 of 21474836480 bytes
conversion:
  description:
    - Statistics of the conversion from O(src), when one ran (not in check mode).
  returned: when a conversion ran
  type: dict
  contains:
    duration:
      description: Seconds the conversion took.
      type: float
      returned: always
      sample: 1.25
    bytes_read:
      description: Bytes of guest data read from O(src) (holes and zeroes are not read).
      type: int
      returned: always
      sample: 1048576
    bytes_written:
      description:
        - Bytes of guest data written to the new image (zeroes are not written, except into a LUKS payload, where
          they are encrypted and written like any data).
      type: int
      returned: always
      sample: 1048576
    compressed_clusters:
      description: Clusters written compressed (with O(compress=true)).
      type: int
      returned: always
      sample: 16
repair:
  description:
    - The result of the repair, with the keys of C(qemu-img check -r --output=json) (C(leaks-fixed),
      C(corruptions-fixed), what remains in C(leaks) and C(corruptions), C(messages)).
  returned: when O(repair) found something to repair (not in check mode)
  type: dict
  sample: {"check-errors": 0, "leaks-fixed": 2, "image-end-offset": 458752, "total-clusters": 64}
stats:
  description:
    - How long the changes took and how much they wrote (not in check mode).
    - For a volume API pool only RV(stats.duration); see RV(upload).
  returned: when something was changed
  type: dict
  contains:
    duration:
      description: Seconds all operations took.
      type: float
      returned: always
      sample: 0.42
    bytes_written:
      description:
        - Bytes written by all operations. Operations that copy guest data (conversion, commit, rebase) report the
          guest data they wrote; for the others it is how much the image file's allocation grew.
      type: int
      returned: always
      sample: 196608
    operations:
      description: One entry per action of RV(actions), in order.
      type: list
      elements: dict
      returned: always
      sample: [{"kind": "commit", "duration": 0.12, "bytes_written": 196608}]
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import (
    DISK_IMAGE_MUTUALLY_EXCLUSIVE,
    DISK_IMAGE_REQUIRED_BY,
    DISK_IMAGE_REQUIRED_IF,
    DISK_IMAGE_REQUIRED_ONE_OF,
    DISK_IMAGE_REQUIRED_TOGETHER,
    DiskImageError,
    disk_image_argument_spec,
    run_disk_image,
)
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import (
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    LibvirtModuleError,
)
from ansible_collections.kvm.storage.plugins.module_utils._task_input import refuse_nul_bytes
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError


def main():
    module = AnsibleModule(
        argument_spec=disk_image_argument_spec(),
        mutually_exclusive=DISK_IMAGE_MUTUALLY_EXCLUSIVE,
        required_together=DISK_IMAGE_REQUIRED_TOGETHER,
        required_one_of=DISK_IMAGE_REQUIRED_ONE_OF,
        required_if=DISK_IMAGE_REQUIRED_IF,
        required_by=DISK_IMAGE_REQUIRED_BY,
        supports_check_mode=True,
        add_file_common_args=True,
    )
    refuse_nul_bytes(module)
    pool = module.params['pool']
    if pool is not None and not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib('libvirt-python'), exception=LIBVIRT_IMPORT_ERROR)
    subject = module.params['path'] or 'volume %s of storage pool %s' % (module.params['volume'], pool)
    try:
        if pool is None:
            result = run_disk_image(module)
        else:
            # imported only for a pool's volume: a task on an image file does not compile it
            from ansible_collections.kvm.storage.plugins.module_utils._pool_volume import run_pool_volume
            result = run_pool_volume(module)
    except DiskImageError as exc:
        # with what the task did before it failed (changed, actions), when it did something
        module.fail_json(msg=to_native(exc), **exc.result)
    except (ImageError, LibvirtModuleError) as exc:
        module.fail_json(msg=to_native(exc))
    except (OSError, IOError) as exc:
        module.fail_json(msg='%s: %s' % (subject, to_native(exc)))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
