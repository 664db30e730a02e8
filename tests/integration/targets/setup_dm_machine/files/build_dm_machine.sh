#!/usr/bin/env bash
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Build (once per kernel package version and recipe) the device-mapper test machine: Debian's kernel, a busybox
# initramfs (initramfs_init beside this script: loads virtio-blk and ext4, switch_root to /dev/vda) and a small
# Debian root file system in an ext4 image (debootstrap minbase with lvm2, thin-provisioning-tools, python3,
# openssh-server, qemu-utils; machine_init as its init: network, device-mapper modules, sshd), with the kernel's
# device-mapper modules in its /lib/modules and an SSH key pair made here (the client key stays in the build).
#   usage: build_dm_machine.sh [CACHE_ROOT]     (default ~/.cache/kvm-storage/dm-machine)
# Prints "dir=<build directory>" and "built=yes|no" on stdout; the build directory holds vmlinuz, initrd.img,
# root.img (raw ext4, never written by a run: boot it through an overlay), id_ed25519 (the client key), recipe.sha256,
# kernel-package and build-seconds.
# The kernel is downloaded with apt-get download and unpacked (never installed) by tests/support/debian_kernel.sh.
# Builds live in CACHE_ROOT/<kernel package>_<version>_<recipe hash>: a new kernel package or a changed recipe (this
# script, initramfs_init, machine_init) makes a new one; the others are removed once it is in place.
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (default bookworm).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# the kernel package and its modules, shared with setup_guest: tests/support/debian_kernel.sh of the collection
# (beside this script in a copy of it; ansible-test runs a copy of the target under <collection>/tests/output/.tmp/)
if [ -f "$HERE/debian_kernel.sh" ]; then
    KERNEL_LIB=$HERE/debian_kernel.sh
elif [[ $HERE == */tests/output/.tmp/* ]]; then
    KERNEL_LIB=${HERE%%/tests/output/.tmp/*}/tests/support/debian_kernel.sh
else
    KERNEL_LIB=$HERE/../../../../support/debian_kernel.sh
fi
# shellcheck source-path=SCRIPTDIR/../../../../support source=debian_kernel.sh
. "$KERNEL_LIB"
CACHE_ROOT=${1:-$HOME/.cache/kvm-storage/dm-machine}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
# the root file system's packages (minbase: no recommends, no docs kept)
PACKAGES=lvm2,thin-provisioning-tools,python3,openssh-server,openssh-sftp-server,qemu-utils,kmod,iproute2
# loaded by the initramfs, in this order after what each depends on: the root disk and its file system
# (ext4 and jbd2 ask the crypto API for crc32c: crc32c_generic first)
INITRAMFS_MODULES=(crc32c_generic virtio_pci virtio_blk ext4)
# installed in the root's /lib/modules (depmod run there) besides INITRAMFS_MODULES: loaded by machine_init
ROOT_MODULES=(virtio_net dm_mod dm_snapshot dm_thin_pool)
ROOT_SIZE=1G

mkdir -p "$CACHE_ROOT"
if ! kernel_package; then
    # no apt metadata: fall back to the newest machine already built
    latest=$(kernel_latest_build "$CACHE_ROOT" root.img)
    if [ -n "$latest" ]; then
        echo "dir=$latest"
        echo "built=no"
        exit 0
    fi
    echo "cannot find the package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)" >&2
    exit 1
fi
package=$KERNEL_PACKAGE
version=$KERNEL_VERSION

recipe=$(cat "${BASH_SOURCE[0]}" "$KERNEL_LIB" "$HERE/initramfs_init" "$HERE/machine_init" | sha256sum | cut -d' ' -f1)
final="$CACHE_ROOT/${package}_${version}_${recipe:0:16}"

# one builder at a time (several runs may start together)
exec 9>"$CACHE_ROOT/.lock"
flock 9

if [ -f "$final/root.img" ] && [ "$(cat "$final/recipe.sha256" 2>/dev/null)" = "$recipe" ]; then
    echo "dir=$final"
    echo "built=no"
    exit 0
fi

started=$(date +%s)
build=$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")
trap 'rm -rf "$build"' EXIT
mkdir "$build/out" "$build/pkg" "$build/modules"

# ------------------------------------------------------------------ the root file system (the longest step)
rootfs="$build/rootfs"
echo "debootstrap $SUITE from $MIRROR ($PACKAGES)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$build/debootstrap.log" 2>&1 || {
    tail -n 30 "$build/debootstrap.log" >&2
    exit 1
}

# ------------------------------------------------------------------ the kernel and its modules
kernel_fetch "$build/kernel"
release=$KERNEL_RELEASE
cp "$build/kernel/vmlinuz" "$build/out/vmlinuz"
kernel_unpack_modules "$build/modules" "${INITRAMFS_MODULES[@]}" "${ROOT_MODULES[@]}"

# the root's modules: every module unpacked, with the package's module lists; depmod (the root's own) indexes them
moddir="$rootfs/lib/modules/$release"
mkdir -p "$moddir"
cp -a "$build/modules/lib/modules/$release/kernel" "$moddir/"
# shellcheck disable=SC2153  # KERNEL_DEB is set by kernel_fetch (debian_kernel.sh)
dpkg-deb --fsys-tarfile "$KERNEL_DEB" | tar -x -C "$build/pkg" \
    "./lib/modules/$release/modules.order" "./lib/modules/$release/modules.builtin" \
    "./lib/modules/$release/modules.builtin.modinfo"
cp "$build/pkg/lib/modules/$release"/modules.{order,builtin,builtin.modinfo} "$moddir/"
chroot "$rootfs" /sbin/depmod "$release"

# ------------------------------------------------------------------ the initramfs
initramfs="$build/initramfs"
mkdir -p "$initramfs"/{bin,dev,proc,sys,newroot,modules}
cp /bin/busybox "$initramfs/bin/busybox"
ln -s busybox "$initramfs/bin/sh"
while read -r module; do
    cp "$build/modules/${KERNEL_MODULE_FILE[$module]}" "$initramfs/modules/"
    basename "${KERNEL_MODULE_FILE[$module]}" .ko
done < <(kernel_load_order "${INITRAMFS_MODULES[@]}") >"$initramfs/modules/order"
install -m 0755 "$HERE/initramfs_init" "$initramfs/init"
(cd "$initramfs" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -6) >"$build/out/initrd.img"

# ------------------------------------------------------------------ the root's configuration
install -m 0755 "$HERE/machine_init" "$rootfs/sbin/kvmstorage-init"
echo kvmstorage-dm >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kvmstorage-dm\n' >"$rootfs/etc/hosts"
: >"$rootfs/etc/resolv.conf"
# no udev in the machine: lvm2 and libdevmapper make the device nodes and links themselves; no dmeventd
cat >"$rootfs/etc/lvm/lvm.conf" <<'EOF'
# kvm.storage device-mapper test machine: no udev, no dmeventd, no lvmpolld (built by build_dm_machine.sh)
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global {
    use_lvmpolld = 0
}
EOF
cat >"$rootfs/etc/ssh/sshd_config.d/kvmstorage.conf" <<'EOF'
# kvm.storage device-mapper test machine: root with the build's key only
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
EOF
ssh-keygen -q -t ed25519 -N '' -C "kvmstorage-dm-machine" -f "$build/out/id_ed25519"
install -d -m 0700 "$rootfs/root/.ssh"
install -m 0600 "$build/out/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
# what a test machine does not need: the packages' archives and lists, documentation, translations; devtmpfs
# provides /dev
rm -rf "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/usr/share/doc/* \
    "${rootfs:?}"/usr/share/man/* "${rootfs:?}"/usr/share/info/* "${rootfs:?}"/usr/share/locale/* "${rootfs:?}"/dev/*

truncate -s "$ROOT_SIZE" "$build/out/root.img"
mke2fs -q -F -t ext4 -L kvmstorage-dm -d "$rootfs" "$build/out/root.img"

echo "$package $version" >"$build/out/kernel-package"
echo "$recipe" >"$build/out/recipe.sha256"
echo $(( $(date +%s) - started )) >"$build/out/build-seconds"
chmod 0755 "$build/out"
chmod 0644 "$build/out"/{vmlinuz,initrd.img,root.img,id_ed25519.pub,kernel-package,recipe.sha256,build-seconds}
chmod 0600 "$build/out/id_ed25519"
# put the build in place with one rename, then drop the older builds
if [ -e "$final" ]; then
    mv "$final" "$build/previous"
fi
mv "$build/out" "$final"
find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -name 'linux-image-*' ! -path "$final" -exec rm -rf {} +
echo "dir=$final"
echo "built=yes"
