#!/usr/bin/env bash
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Build (once per kernel package version and recipe) the test guest: Debian's kernel and a busybox
# initramfs whose /init (beside this script) prints the sha256 of every disk it finds (virtio-blk vdX;
# sdX on AHCI/SATA, PIIX IDE, LSI 53C895A SCSI and virtio-scsi), and the files of cloud-init seeds
# (ISO 9660 or FAT labelled cidata, on those disks or on a CD-ROM srX).
#   usage: build_guest.sh [CACHE_ROOT]     (default ~/.cache/kvm-storage/guest)
# Prints "dir=<directory holding vmlinuz and initrd.img>" and "built=yes|no" on stdout.
# The kernel is downloaded with apt-get download and unpacked (never installed).  The modules are
# MODULES plus everything they depend on (the depends= of each .ko's .modinfo, resolved by tests/support/debian_kernel.sh, not
# written by hand), loaded by /init in dependency order (the initramfs' /modules/order).
# The guest is rebuilt when the kernel package, this script or /init change (recipe.sha256).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# the kernel package and its modules, shared with setup_dm_machine: tests/support/debian_kernel.sh of the collection
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
CACHE_ROOT=${1:-$HOME/.cache/kvm-storage/guest}
# sd_mod and sr_mod first: the disks and CD-ROMs the host adapters find are attached as they are found
MODULES=(
    sd_mod sr_mod                       # SCSI/ATA disks (sdX) and CD-ROMs (srX)
    virtio_pci virtio_blk virtio_scsi   # virtio-blk (vdX), virtio-scsi (sdX)
    ahci ata_piix                       # SATA (AHCI, q35's ICH9) and IDE (PIIX, the pc machine type)
    sym53c8xx                           # libvirt's lsilogic SCSI controller (qemu's lsi53c895a)
    isofs vfat                          # cloud-init seeds: ISO 9660 (Rock Ridge, Joliet) and FAT
    nls_cp437 nls_ascii nls_utf8        # FAT's default code page and I/O character set (Debian: cp437, ascii), UTF-8
)

mkdir -p "$CACHE_ROOT"
# the kernel package linux-image-amd64 currently points at, e.g. linux-image-6.1.0-56-amd64
if ! kernel_package; then
    # no apt metadata: fall back to the newest guest already built
    latest=$(kernel_latest_build "$CACHE_ROOT" initrd.img)
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

key="${package}_${version}"
final="$CACHE_ROOT/$key"
# what the guest is built from besides the kernel: /init and this script (it holds MODULES)
recipe=$(cat "$HERE/init" "${BASH_SOURCE[0]}" "$KERNEL_LIB" | sha256sum | cut -d' ' -f1)

# one builder at a time (several test targets may start together)
exec 9>"$CACHE_ROOT/.lock"
flock 9

if [ -f "$final/vmlinuz" ] && [ -f "$final/initrd.img" ] && [ "$(cat "$final/recipe.sha256" 2>/dev/null)" = "$recipe" ]; then
    echo "dir=$final"
    echo "built=no"
    exit 0
fi

build=$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")
trap 'rm -rf "$build"' EXIT
mkdir "$build/out"

if [ -f "$final/vmlinuz" ] && [ -f "$final/modules/order" ] \
        && [ "$(cat "$final/modules/roots" 2>/dev/null)" = "${MODULES[*]}" ]; then
    # only /init changed: keep the unpacked kernel and modules
    cp -a "$final/vmlinuz" "$final/modules" "$final/kernel-package" "$build/out/"
else
    # only the kernel and the modules needed (the whole package is ~400 MB unpacked)
    kernel_fetch "$build/kernel"
    cp "$build/kernel/vmlinuz" "$build/out/vmlinuz"
    mkdir "$build/out/modules"
    kernel_unpack_modules "$build/kernel/modules" "${MODULES[@]}"
    while read -r module; do
        cp "$build/kernel/modules/${KERNEL_MODULE_FILE[$module]}" "$build/out/modules/"
        basename "${KERNEL_MODULE_FILE[$module]}" .ko
    done < <(kernel_load_order "${MODULES[@]}") >"$build/out/modules/order"
    echo "${MODULES[*]}" >"$build/out/modules/roots"
    echo "$package $version" >"$build/out/kernel-package"
fi

root="$build/initramfs"
mkdir -p "$root"/{bin,dev,proc,sys,modules}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
while read -r module; do
    cp "$build/out/modules/$module.ko" "$root/modules/"
done <"$build/out/modules/order"
cp "$build/out/modules/order" "$root/modules/order"
install -m 0755 "$HERE/init" "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9) >"$build/out/initrd.img"
echo "$recipe" >"$build/out/recipe.sha256"

find "$build/out" -type d -exec chmod 0755 {} +
find "$build/out" -type f -exec chmod 0644 {} +
# replace the previous build with two renames (a target copying from it meanwhile sees a whole one or none)
if [ -e "$final" ]; then
    mv "$final" "$build/previous"
fi
mv "$build/out" "$final"
echo "dir=$final"
echo "built=yes"
