#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need, idempotently and quickly on a re-run:
# Debian packages, libvirtd, a virtualenv with the tools, and the collection installed
# where Ansible finds it (as a symlink to this checkout).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KVM_STORAGE_VENV:-$HOME/.cache/kvm-storage/venv}
COLLECTIONS_DIR=${KVM_STORAGE_COLLECTIONS_DIR:-$HOME/.ansible/collections}
APT_PACKAGES=(qemu-utils qemu-system-x86 busybox-static cpio parted libvirt-daemon-system libvirt-dev pkg-config lvm2 python3-venv python3-dev gcc git shellcheck genisoimage xorriso dosfstools mtools openssh-client debootstrap e2fsprogs chromium)

log() { printf '== setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (it installs Debian packages and starts libvirtd)" >&2
    exit 1
fi

# 1. Debian packages (apt-get update only when something is missing)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}" </dev/null
elif ! apt-cache show --no-all-versions linux-image-amd64 >/dev/null 2>&1; then
    # the guest tests download Debian's kernel package (never installed): they need the package lists
    log "updating the apt package lists"
    apt-get update -q
fi

# 2. libvirtd (no systemd on build machines: started directly), answering on qemu:///system
# shellcheck source=scripts/libvirtd.sh
. "$ROOT/scripts/libvirtd.sh"
ensure_libvirtd "starting libvirtd"

# 3. virtualenv with the tools, rebuilt when requirements-dev.txt changes
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "creating virtualenv $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
    echo "$want" > "$stamp"
fi

# ansible-test downloads a pip bootstrap script from a host these machines cannot reach:
# give it an offline stand-in for the pip version it asks for.
pip_version=$("$VENV/bin/python" -c 'import re, ansible_test._internal.python_requirements as m, inspect; print(re.search(r"pip=.([0-9.]+)", inspect.getsource(m)).group(1))')
mkdir -p "$HOME/.ansible/test/cache"
install -m 0644 "$ROOT/scripts/ansible-test-get-pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"

# 4. the collection, where Ansible looks by default (~/.ansible/collections)
mkdir -p "$COLLECTIONS_DIR/ansible_collections/kvm"
link="$COLLECTIONS_DIR/ansible_collections/kvm/storage"
if [ -e "$link" ] && [ ! -L "$link" ]; then
    # An installed copy (ansible-galaxy collection install) would shadow this checkout, and `ln -sfn` would put the
    # link inside it: move it aside (out of every collections path), loudly, instead of deleting it.
    aside="$HOME/.cache/kvm-storage/replaced-collections/storage.$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$(dirname "$aside")"
    mv "$link" "$aside"
    log "moved the installed kvm.storage at $link aside to $aside (this checkout replaces it)"
fi
ln -sfn "$ROOT" "$link"
log "ready: venv $VENV, collection kvm.storage -> $ROOT"
