# shellcheck shell=bash
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Debian's kernel for the test machines, sourced by the builders (setup_guest's build_guest.sh, setup_dm_machine's
# build_dm_machine.sh): the package linux-image-amd64 points at, downloaded with apt-get download and unpacked
# (never installed); only the modules asked for and what they depend on (each .ko's depends=, resolved here, not
# written by hand), and their load order.
#
#   kernel_package                 sets KERNEL_PACKAGE (e.g. linux-image-6.1.0-57-amd64) and KERNEL_VERSION from
#                                  apt's metadata; returns 1 when there is none
#   kernel_latest_build ROOT FILE  prints the newest ROOT/linux-image-* directory holding FILE (no apt metadata)
#   kernel_fetch DIR               downloads the package into DIR; sets KERNEL_DEB, KERNEL_RELEASE, KERNEL_LISTING;
#                                  DIR/vmlinuz is the kernel
#   kernel_unpack_modules DIR M... unpacks modules M and what they depend on into DIR/<path in the package>.ko
#                                  (decompressed); sets KERNEL_MODULE_DEPENDS[m] (comma separated) and
#                                  KERNEL_MODULE_FILE[m] (the path under DIR), keys spelled with _ for -
#   kernel_load_order M...         prints modules M and what they depend on, each after its dependencies (depth
#                                  first, the order of M kept), one per line, as KERNEL_MODULE_FILE's keys

# shellcheck disable=SC2034  # read by the builders that source this file
declare -A KERNEL_MODULE_DEPENDS=()
declare -A KERNEL_MODULE_FILE=()

kernel_package() {
    KERNEL_PACKAGE=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}') \
        || return 1
    [ -n "$KERNEL_PACKAGE" ] || return 1
    KERNEL_VERSION=$(apt-cache show --no-all-versions "$KERNEL_PACKAGE" | awk '/^Version:/ {print $2; exit}')
    [ -n "$KERNEL_VERSION" ]
}

kernel_latest_build() {
    local latest
    latest=$(find "$1" -mindepth 1 -maxdepth 1 -type d -name 'linux-image-*' -printf '%T@ %p\n' 2>/dev/null \
        | sort -rn | head -n 1 | cut -d' ' -f2- || true)
    if [ -n "$latest" ] && [ -f "$latest/$2" ]; then
        echo "${latest%/}"
    fi
}

kernel_fetch() {
    local dir=$1
    mkdir -p "$dir/pkg"
    (cd "$dir" && apt-get download "$KERNEL_PACKAGE=$KERNEL_VERSION" >&2)
    KERNEL_DEB=$(ls "$dir"/*.deb)
    KERNEL_RELEASE=${KERNEL_PACKAGE#linux-image-}
    KERNEL_LISTING=$(dpkg-deb -c "$KERNEL_DEB" | awk '{print $NF}')
    dpkg-deb --fsys-tarfile "$KERNEL_DEB" | tar -x -C "$dir/pkg" "./boot/vmlinuz-$KERNEL_RELEASE"
    mv "$dir/pkg/boot/vmlinuz-$KERNEL_RELEASE" "$dir/vmlinuz"
}

# one pass: the named modules (a module's name spells - and _ alike: dm-mod.ko, virtio_blk.ko)
_kernel_unpack() {
    local dir=$1 module member pattern file target
    shift
    local members=()
    for module in "$@"; do
        pattern=${module//[-_]/[-_]}
        member=$(grep -E "/kernel/(.*/)?$pattern\.ko(\.xz|\.zst|\.gz)?$" <<<"$KERNEL_LISTING" | head -n 1 || true)
        if [ -z "$member" ]; then
            echo "module $module not found in $KERNEL_DEB" >&2
            return 1
        fi
        members+=("$member")
    done
    mkdir -p "$dir/.pkg"
    dpkg-deb --fsys-tarfile "$KERNEL_DEB" | tar -x -C "$dir/.pkg" "${members[@]}"
    for member in "${members[@]}"; do
        file="$dir/.pkg/$member"
        target="$dir/${member%.ko*}.ko"
        mkdir -p "$(dirname "$target")"
        case "$member" in
            *.ko.xz) xz -dc "$file" >"$target" ;;
            *.ko.zst) zstd -dc "$file" >"$target" ;;
            *.ko.gz) gzip -dc "$file" >"$target" ;;
            *) cp "$file" "$target" ;;
        esac
        module=$(basename "${member%.ko*}")
        # shellcheck disable=SC2034  # read by the builders that source this file
        KERNEL_MODULE_FILE[${module//-/_}]=${member%.ko*}.ko
        KERNEL_MODULE_DEPENDS[${module//-/_}]=$(tr '\0' '\n' <"$target" | sed -n 's/^depends=//p' | head -n 1 | tr - _)
    done
    rm -rf "$dir/.pkg"
}

kernel_unpack_modules() {
    local dir=$1 module dependency
    shift
    local wanted=("${@//-/_}")
    while [ ${#wanted[@]} -gt 0 ]; do
        _kernel_unpack "$dir" "${wanted[@]}" || return 1
        wanted=()
        for module in "${!KERNEL_MODULE_DEPENDS[@]}"; do
            for dependency in ${KERNEL_MODULE_DEPENDS[$module]//,/ }; do
                [ -n "${KERNEL_MODULE_DEPENDS[$dependency]+set}" ] || [[ " ${wanted[*]} " == *" $dependency "* ]] \
                    || wanted+=("$dependency")
            done
        done
    done
}

kernel_load_order() {
    local module
    local _order=()
    _kernel_visit() {
        local dependency
        [[ " ${_order[*]} " == *" $1 "* ]] && return 0
        for dependency in ${KERNEL_MODULE_DEPENDS[$1]//,/ }; do _kernel_visit "$dependency"; done
        _order+=("$1")
    }
    for module in "${@//-/_}"; do _kernel_visit "$module"; done
    printf '%s\n' "${_order[@]}"
}
