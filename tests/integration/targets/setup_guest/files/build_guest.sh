#!/usr/bin/env bash
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Build (once per kernel package version) the test guest: Debian's kernel and a busybox
# initramfs whose /init (beside this script) prints the sha256 of every virtio disk.
#   usage: build_guest.sh [CACHE_ROOT]     (default ~/.cache/kvm-storage/guest)
# Prints "dir=<directory holding vmlinuz and initrd.img>" and "built=yes|no" on stdout.
# The kernel is downloaded with apt-get download and unpacked (never installed).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE_ROOT=${1:-$HOME/.cache/kvm-storage/guest}
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

mkdir -p "$CACHE_ROOT"
# the kernel package linux-image-amd64 currently points at, e.g. linux-image-6.1.0-56-amd64
package=""
version=""
if package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}') \
        && [ -n "$package" ]; then
    version=$(apt-cache show --no-all-versions "$package" | awk '/^Version:/ {print $2; exit}')
fi
if [ -z "$package" ] || [ -z "$version" ]; then
    # no apt metadata: fall back to the newest guest already built
    latest=$(find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -name 'linux-image-*' -printf '%T@ %p\n' 2>/dev/null \
        | sort -rn | head -n 1 | cut -d' ' -f2- || true)
    if [ -n "$latest" ] && [ -f "$latest/initrd.img" ]; then
        echo "dir=${latest%/}"
        echo "built=no"
        exit 0
    fi
    echo "cannot find the package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)" >&2
    exit 1
fi

key="${package}_${version}"
final="$CACHE_ROOT/$key"
init_sum=$(sha256sum "$HERE/init" | cut -d' ' -f1)

# one builder at a time (several test targets may start together)
exec 9>"$CACHE_ROOT/.lock"
flock 9

if [ -f "$final/vmlinuz" ] && [ -f "$final/initrd.img" ] && [ "$(cat "$final/init.sha256" 2>/dev/null)" = "$init_sum" ]; then
    echo "dir=$final"
    echo "built=no"
    exit 0
fi

build=$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")
trap 'rm -rf "$build"' EXIT
mkdir "$build/out"

if [ -f "$final/vmlinuz" ] && [ -d "$final/modules" ]; then
    # only /init changed: keep the unpacked kernel and modules
    cp -a "$final/vmlinuz" "$final/modules" "$final/kernel-package" "$build/out/"
else
    (cd "$build" && apt-get download "$package=$version" >&2)
    deb=$(ls "$build"/*.deb)
    kernel_release=${package#linux-image-}
    # unpack only the kernel and the six modules (the whole package is ~400 MB unpacked)
    mkdir "$build/pkg" "$build/out/modules"
    members=("./boot/vmlinuz-$kernel_release")
    listing=$(dpkg-deb -c "$deb" | awk '{print $NF}')
    for module in "${MODULES[@]}"; do
        member=$(grep -E "/kernel/drivers/.*/$module\.ko(\.xz|\.zst|\.gz)?$" <<<"$listing" | head -n 1)
        if [ -z "$member" ]; then
            echo "module $module not found in $deb" >&2
            exit 1
        fi
        members+=("$member")
    done
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$build/pkg" "${members[@]}"
    for member in "${members[@]:1}"; do
        file="$build/pkg/$member"
        module=$(basename "$member")
        case "$module" in
            *.ko.xz) xz -dc "$file" >"$build/out/modules/${module%.xz}" ;;
            *.ko.zst) zstd -dc "$file" >"$build/out/modules/${module%.zst}" ;;
            *.ko.gz) gzip -dc "$file" >"$build/out/modules/${module%.gz}" ;;
            *) cp "$file" "$build/out/modules/$module" ;;
        esac
    done
    cp "$build/pkg/boot/vmlinuz-$kernel_release" "$build/out/vmlinuz"
    echo "$package $version" >"$build/out/kernel-package"
fi

root="$build/initramfs"
mkdir -p "$root"/{bin,dev,proc,sys,modules}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
for module in "${MODULES[@]}"; do
    cp "$build/out/modules/$module.ko" "$root/modules/"
done
install -m 0755 "$HERE/init" "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9) >"$build/out/initrd.img"
echo "$init_sum" >"$build/out/init.sha256"

find "$build/out" -type d -exec chmod 0755 {} +
find "$build/out" -type f -exec chmod 0644 {} +
rm -rf "$final"
mv "$build/out" "$final"
echo "dir=$final"
echo "built=yes"
