#!/usr/bin/env bash
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Start, reach and stop the device-mapper test machine (built by build_dm_machine.sh) in a work directory.
#   dm_machine.sh start BUILD_DIR WORK_DIR [PV_SIZE]
#       Boots the machine under TCG (qemu-system-x86_64 -accel tcg -daemonize, not through libvirt): the build's
#       root.img behind a qcow2 overlay WORK_DIR/root.qcow2 (the build is never written), a sparse spare disk
#       WORK_DIR/pv.img of PV_SIZE (default 1G) as /dev/vdb, SSH forwarded from 127.0.0.1:<free port>, the serial
#       console in WORK_DIR/console.log, the pid in WORK_DIR/qemu.pid.  Writes WORK_DIR/machine.env (BUILD_DIR,
#       PORT, KEY) and prints "port=<port>" and "pid=<pid>".  Does not wait for the boot (wait_for_connection).
#   dm_machine.sh ssh WORK_DIR [COMMAND...]
#       ssh into the machine as root (host key not checked, nothing written to known_hosts).
#   dm_machine.sh stop WORK_DIR
#       Kills the machine's qemu (the pid in WORK_DIR/qemu.pid, if it is still that qemu) and waits for it to end.
set -euo pipefail

SSH_OPTIONS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null
    -o LogLevel=ERROR -o IdentitiesOnly=yes -o BatchMode=yes)

usage() {
    echo "usage: $0 start BUILD_DIR WORK_DIR [PV_SIZE] | ssh WORK_DIR [COMMAND...] | stop WORK_DIR" >&2
    exit 2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# the pid in WORK_DIR/qemu.pid when that process is still this work directory's qemu
machine_pid() {
    local work=$1 pid
    pid=$(cat "$work/qemu.pid" 2>/dev/null || true)
    [ -n "$pid" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$work/qemu.pid" || return 1
    echo "$pid"
}

start() {
    local build=$1 work=$2 pv_size=${3:-1G} port
    for file in vmlinuz initrd.img root.img id_ed25519; do
        [ -f "$build/$file" ] || { echo "$build/$file is missing: not a build of build_dm_machine.sh" >&2; exit 1; }
    done
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    if machine_pid "$work" >/dev/null; then
        echo "a machine already runs in $work (pid $(machine_pid "$work"))" >&2
        exit 1
    fi
    qemu-img create -q -f qcow2 -F raw -b "$build/root.img" "$work/root.qcow2"
    rm -f "$work/pv.img"
    truncate -s "$pv_size" "$work/pv.img"
    # the free port may be taken between the look-up and qemu's bind: try again with another one
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        rm -f "$work/qemu.pid"
        if qemu-system-x86_64 -accel tcg -machine pc -smp 1 -m 1024 \
                -name kvmstorage-dm-machine \
                -kernel "$build/vmlinuz" -initrd "$build/initrd.img" \
                -append "console=ttyS0 panic=-1 quiet" \
                -drive "file=$work/root.qcow2,format=qcow2,if=virtio,cache=unsafe" \
                -drive "file=$work/pv.img,format=raw,if=virtio,cache=unsafe" \
                -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=net0 \
                -serial "file:$work/console.log" -display none -monitor none -no-reboot \
                -daemonize -pidfile "$work/qemu.pid" 2>"$work/qemu.stderr"; then
            printf 'BUILD_DIR=%q\nPORT=%q\nKEY=%q\n' "$build" "$port" "$build/id_ed25519" >"$work/machine.env"
            echo "port=$port"
            echo "pid=$(cat "$work/qemu.pid")"
            return 0
        fi
        grep -q "hostfwd\|host forwarding" "$work/qemu.stderr" || break
    done
    echo "qemu-system-x86_64 did not start:" >&2
    cat "$work/qemu.stderr" >&2
    exit 1
}

machine_ssh() {
    local work=$1
    shift
    # shellcheck disable=SC1091
    . "$work/machine.env"
    # shellcheck disable=SC2153  # PORT and KEY come from machine.env
    exec ssh "${SSH_OPTIONS[@]}" -i "$KEY" -p "$PORT" root@127.0.0.1 "$@"
}

stop() {
    local work=$1 pid tries=0
    work=$(cd "$work" 2>/dev/null && pwd) || return 0
    pid=$(machine_pid "$work") || return 0
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ $tries -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    echo "stopped=$pid"
}

case "${1:-}" in
    start) [ $# -ge 3 ] || usage; start "$2" "$3" "${4:-}" ;;
    ssh) [ $# -ge 2 ] || usage; shift; machine_ssh "$@" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
