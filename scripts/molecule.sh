#!/usr/bin/env bash
# Run the molecule scenarios (extensions/molecule/<scenario>) after installing what they need, idempotently, on
# Debian 12 as root with no image registry and no Galaxy: podman, runc and debootstrap (apt), the
# containers.podman collection from the `ansible` package on PyPI (in its own venv, the project's venv untouched),
# runc as podman's runtime, and the Debian 12 image (python3 and systemd, so that a scenario may boot systemd as
# PID 1) built locally with debootstrap.
# Usage: scripts/molecule.sh [SCENARIO...]   (default: every scenario)
#        scripts/molecule.sh --prepare-only   (only what the scenarios need: packages, collections, image)
set -euo pipefail
PREPARE_ONLY=false
if [ "${1:-}" = "--prepare-only" ]; then
    PREPARE_ONLY=true
    shift
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KVM_STORAGE_VENV:-$HOME/.cache/kvm-storage/venv}
COLLECTIONS_VENV=$HOME/.cache/kvm-storage/molecule-collections
IMAGE=localhost/kvmstorage-debian12-systemd:latest
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "== molecule: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "molecule.sh: run as root (it installs podman and builds a container image)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/molecule" ]; then
    echo "molecule.sh: $VENV/bin/molecule missing: run scripts/setup.sh (make setup) first" >&2
    exit 1
fi

# 1. podman, runc and debootstrap
missing=()
for pkg in podman runc debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null
fi

# 2. runc as podman's runtime (crun is not installed; runc works in these machines' containers)
if ! grep -qs '^runtime = "runc"' /etc/containers/containers.conf; then
    log "setting runc as podman's runtime in /etc/containers/containers.conf"
    mkdir -p /etc/containers
    if [ -s /etc/containers/containers.conf ] && grep -q '^\[engine\]' /etc/containers/containers.conf; then
        sed -i '/^\[engine\]/a runtime = "runc"' /etc/containers/containers.conf
    else
        printf '[engine]\nruntime = "runc"\n' >> /etc/containers/containers.conf
    fi
fi

# 3. containers.podman (and the rest of the community collections) from the ansible package on PyPI
if [ ! -d "$COLLECTIONS_VENV/ansible_collections/containers/podman" ]; then
    log "installing the ansible package's collections into $COLLECTIONS_VENV"
    "$VENV/bin/python" -m pip install -q --no-deps --target "$COLLECTIONS_VENV" 'ansible==12.*'
fi

# 4. the Debian 12 image, built locally (no registry is reachable)
if ! podman image exists "$IMAGE"; then
    log "building $IMAGE with debootstrap"
    rootfs=$(mktemp -d /tmp/kvmstorage-debian12.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,systemd,systemd-sysv,dbus bookworm "$rootfs" "$MIRROR"
    # the container reads the host's resolver (network: host); apt there uses the same mirror
    echo "deb $MIRROR bookworm main" > "$rootfs/etc/apt/sources.list"
    tar -C "$rootfs" -c . | podman import - "$IMAGE"
    rm -rf "$rootfs"
    trap - EXIT
fi

if $PREPARE_ONLY; then
    log "prepared: podman, runc, $COLLECTIONS_VENV, $IMAGE"
    exit 0
fi

# 5. libvirtd, which the delegated scenarios use on this machine (scripts/setup.sh started it; say so loudly if it
# is not answering any more, and start it again)
# shellcheck source=scripts/libvirtd.sh
. "$ROOT/scripts/libvirtd.sh"
ensure_libvirtd "WARNING: libvirtd is not answering on qemu:///system before the scenarios; starting it again"

# 6. the scenarios
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$HOME/.ansible/collections:$COLLECTIONS_VENV"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
cd "$ROOT"
if [ $# -eq 0 ]; then
    mapfile -t scenarios < <(find extensions/molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' \
                             | xargs -r -n1 basename | sort)
else
    scenarios=("$@")
fi
for scenario in "${scenarios[@]}"; do
    log "scenario $scenario"
    # molecule keeps a scenario's state (created, prepared...) in ~/.ansible/tmp between runs, and a test sequence
    # without destroy (the delegated scenarios) never clears it: the next run would skip prepare ("instances already
    # prepared") and fail on what the previous run's cleanup removed. Every run starts from nothing.
    molecule reset -s "$scenario"
    molecule test -s "$scenario"
done
log "all scenarios passed: ${scenarios[*]}"
