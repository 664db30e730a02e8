#!/usr/bin/env bash
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Sourced by setup.sh and molecule.sh: ensure_libvirtd starts libvirtd (and virtlogd) when qemu:///system does not
# answer (through systemd where it runs, directly on build machines without it), then waits up to 30 s for it to
# answer. Its argument is what to log (through the caller's log function) when it has to start the daemon.

ensure_libvirtd() {
    if virsh -c qemu:///system uri >/dev/null 2>&1; then
        return 0
    fi
    log "$1"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        systemctl start libvirtd
    else
        pgrep -x virtlogd >/dev/null 2>&1 || virtlogd -d
        pgrep -x libvirtd >/dev/null 2>&1 || libvirtd -d
    fi
    for _ in $(seq 1 30); do
        virsh -c qemu:///system uri >/dev/null 2>&1 && return 0
        sleep 1
    done
    log "WARNING: libvirtd does not answer on qemu:///system after 30 s"
    return 1
}
