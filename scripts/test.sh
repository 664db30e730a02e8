#!/usr/bin/env bash
# Run the test suites: unit (pytest), sanity (ansible-test, empty ignore list),
# lint (ansible-lint --profile production), integration (ansible-test integration,
# modules run for real through ansible-playbook), packaging (scripts/packaging.sh), awx (tests/awx/run.py),
# fleet (tests/fleet/run.py: one play over 20 hosts), molecule (the roles' scenarios in podman
# containers, scripts/molecule.sh).  `all` runs every suite, goes on
# past a failing one, and fails at the end if any failed.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KVM_STORAGE_VENV:-$HOME/.cache/kvm-storage/venv}
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

WORK=$(mktemp -d /tmp/kvm-storage-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# ansible-test needs the collection under .../ansible_collections/kvm/storage:
# copy what git knows about (tracked and new, not ignored) there.  Any failure of the
# copy (git, tar on either side) fails it: a suite never runs on a partial copy.
collection_copy() {
    local dest="$WORK/ansible_collections/kvm/storage"
    if [ ! -e "$WORK/collection-copied" ]; then
        rm -rf "$dest" && mkdir -p "$dest" || return 1
        (set -o pipefail
         cd "$ROOT" && git ls-files -z -co --exclude-standard \
            | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
            | tar --null -T - -cf -) | tar -C "$dest" -xf - || return 1
        touch "$WORK/collection-copied" || return 1
    fi
    echo "$dest"
}

# The copy for sanity and integration, or stop the suite with a clear message (the copy is needed by both).
collection_copy_or_stop() {
    if ! collection_copy; then
        echo "test.sh: copying the collection to $WORK/ansible_collections/kvm/storage failed; stopping" \
            "(the errors above say why)" >&2
        exit 1
    fi
}

suite_unit() {
    (cd "$ROOT" && "$PY" -m pytest -n 2 -q -p no:cacheprovider tests/unit)
}

suite_sanity() {
    local dest
    dest=$(collection_copy_or_stop) || exit 1
    # extra arguments go to ansible-test (e.g. --test pylint plugins/modules/x.py)
    (cd "$dest" && ansible-test sanity --python "$PYVER" --venv --color no "$@")
}

suite_lint() {
    (cd "$ROOT" && ansible-lint --profile production --offline --nocolor)
}

# CI services set CI=true; there a component missing is a failure, not a skip (the set-up installs them all).
in_ci() {
    case "${CI:-}" in true|TRUE|True|1|yes) return 0 ;; *) return 1 ;; esac
}

# One ansible-test integration run in the collection copy $1 (log $2) over the targets that follow (none: all).
integration_run() {
    local dest=$1 log=$2 rc
    shift 2
    (cd "$dest" && ansible-test integration --local --python "$PYVER" --color no -v "$@") >"$log" 2>&1
    rc=$?
    # ansible-test leaves out, with a warning only, targets whose needs it finds unmet (needs/root when not root...)
    if [ "$rc" -eq 0 ] && in_ci && grep -q '^WARNING: Excluding .*tests' "$log"; then
        echo "test.sh: CI=true: ansible-test left targets out (the \"Excluding\" warning above): the set-up" \
            "provides everything they need, so this fails" >>"$log"
        rc=1
    fi
    return "$rc"
}

# The integration targets in two shards that run side by side (most targets use one core or wait on a TCG
# guest): shard "lvm" holds the targets that use LVM or the device-mapper machine (with kvm_host_role), shard "rest"
# the others and module_examples, the longest target after lvm_volume_image_dm, so that the shards take about
# as long. Targets with VGs of their own may run side by side: the LVM stand-in (setup_lvm) changes one VG's
# loop devices at a time, under that VG's lock, and only where they differ from its metadata. Each shard has its
# own copy of the collection (ansible-test's output directory is inside it). Their logs are printed one after the
# other when both are done.
integration_shards() {
    local targets=$ROOT/tests/integration/targets t lvm=() rest=()
    for t in "$targets"/*/; do
        t=$(basename "$t")
        case "$t" in setup_*) continue ;; esac
        [ -f "$targets/$t/aliases" ] || continue
        # INTEGRATION_EXCLUDE="a b": targets left out of a full run (on a machine where they run elsewhere)
        case " ${INTEGRATION_EXCLUDE:-} " in *" $t "*) continue ;; esac
        if [ "$t" != module_examples ] && { [ "$t" = kvm_host_role ] \
                || grep -qE '^(needs/target/setup_lvm|needs/target/setup_dm_machine)$' "$targets/$t/aliases"; }; then
            lvm+=("$t")
        else
            rest+=("$t")
        fi
    done
    echo "${lvm[*]}"
    echo "${rest[*]}"
}

suite_integration() {
    local dest dest2 rc rc2 shards lvm rest pid started
    dest=$(collection_copy_or_stop) || exit 1
    if [ $# -gt 0 ]; then
        # extra arguments name targets to run, in one run
        integration_run "$dest" "$WORK/integration.log" "$@"
        rc=$?
        cat "$WORK/integration.log"
        return "$rc"
    fi
    dest2="$WORK/shard2/ansible_collections/kvm/storage"
    if ! { mkdir -p "$(dirname "$dest2")" && cp -a "$dest" "$dest2"; }; then
        echo "test.sh: copying the collection failed" >&2
        return 1
    fi
    shards=$(integration_shards)
    lvm=$(sed -n 1p <<<"$shards")
    rest=$(sed -n 2p <<<"$shards")
    echo "integration shard lvm:  $lvm"
    echo "integration shard rest: $rest"
    started=$(date +%s)
    # shellcheck disable=SC2086  # word splitting of the target lists is wanted
    integration_run "$dest2" "$WORK/integration-rest.log" $rest &
    pid=$!
    # shellcheck disable=SC2086
    integration_run "$dest" "$WORK/integration-lvm.log" $lvm
    rc=$?
    echo "integration shard lvm: exit $rc after $(( $(date +%s) - started ))s"
    wait "$pid"
    rc2=$?
    echo "integration shard rest: exit $rc2 after $(( $(date +%s) - started ))s"
    echo "------------------- integration shard lvm (log) -------------------"
    cat "$WORK/integration-lvm.log"
    echo "------------------- integration shard rest (log) -------------------"
    cat "$WORK/integration-rest.log"
    echo "integration shards: lvm exit $rc, rest exit $rc2"
    [ "$rc" -eq 0 ] && [ "$rc2" -eq 0 ]
}

# The collection as users get it (galaxy-importer, changelog lint, docs lint + site in headless Chromium, tarball
# install + demo from the installed copy): scripts/packaging.sh; extra arguments name its steps (default: all)
suite_packaging() {
    bash "$ROOT/scripts/packaging.sh" "$@"
}

# The collection as AWX runs it (tests/awx/run.py, docs/awx.md): ee (ansible-builder create of
# execution-environment.yml, the context checked, its galaxy and introspection stages run here), job (the demo
# twice through ansible-runner on a private data dir, every task's events, the second job changed=0)
suite_awx() {
    "$PY" "$ROOT/tests/awx/run.py" "$@"
}

# A fleet in one play (tests/fleet/run.py, docs/fleet.md): 20 podman containers reached over ssh, forks 10, the play
# twice (the second changes nothing); the report (time per task and host, bytes over ssh per task) is printed.
# FLEET_HOSTS and FLEET_FORKS change the fleet's size; extra arguments go to run.py.
suite_fleet() {
    "$PY" "$ROOT/tests/fleet/run.py" --out "$WORK/fleet" "$@"
}

# extra arguments name scenarios (default: every scenario under extensions/molecule)
suite_molecule() {
    bash "$ROOT/scripts/molecule.sh" "$@"
}

run_suite() {
    local name=$1 start rc
    shift
    start=$(date +%s)
    echo "=================== $name ==================="
    # the suite's output is also kept for the digest of failures printed at the very end (CI shows the tail)
    "suite_$name" "$@" 2>&1 | tee "$WORK/suite-$name.log"
    rc=${PIPESTATUS[0]}
    echo "=================== $name: $([ "$rc" -eq 0 ] && echo passed || echo "FAILED (exit $rc)") in $(( $(date +%s) - start ))s"
    return "$rc"
}

# What failed in a suite, from its kept output: the lines around each failure (Ansible's fatal/FAILED!, molecule's and
# pytest's errors, tracebacks), the last 200 lines of them.
failure_digest() {
    local log="$WORK/suite-$1.log"
    [ -f "$log" ] || return 0
    echo "=================== digest of the $1 failures (from its output above) ==================="
    grep -a -n -E -B4 -A30 '^fatal: |FAILED! =>|^ERROR |^ERROR:|^E  |Traceback \(most recent|^FAILED |^[0-9]+ failed' "$log" \
        | cut -c1-400 | tail -n 200
}

# The caches that integration and molecule need, built in the background while unit, sanity and lint run (the
# builds wait on downloads and dpkg more than on the CPU): the test guest, the device-mapper test machine, the
# molecule image. Each builder takes a lock and the suites call them again (then they find the cache), so a
# failure here only costs time: the suite that needs the cache builds it and fails with the builder's message.
prebuild_start() {
    (
        bash "$ROOT/tests/integration/targets/setup_guest/files/build_guest.sh"
        bash "$ROOT/tests/integration/targets/setup_dm_machine/files/build_dm_machine.sh"
        bash "$ROOT/scripts/molecule.sh" --prepare-only
    ) >"$WORK/prebuild.log" 2>&1 &
    PREBUILD_PID=$!
}

prebuild_wait() {
    local rc
    [ -n "${PREBUILD_PID:-}" ] || return 0
    wait "$PREBUILD_PID"
    rc=$?
    PREBUILD_PID=""
    echo "=================== background builds (test guest, device-mapper machine, molecule image): exit $rc"
    tail -n 15 "$WORK/prebuild.log"
}

case "${1:-all}" in
    all)
        failed=()
        prebuild_start
        for s in unit sanity lint; do
            run_suite "$s" || failed+=("$s")
        done
        prebuild_wait
        # packaging, awx and fleet run beside the two integration shards (all of them wait on Ansible, libvirt and
        # TCG guests more than they use the cores): their output is kept and printed when the integration suite is done
        rm -f "$WORK/side-failed"
        (for s in packaging awx fleet; do run_suite "$s" || echo "$s" >>"$WORK/side-failed"; done) >"$WORK/side.log" 2>&1 &
        side_pid=$!
        run_suite integration || failed+=(integration)
        wait "$side_pid"
        cat "$WORK/side.log"
        if [ -f "$WORK/side-failed" ]; then
            while read -r s; do failed+=("$s"); done <"$WORK/side-failed"
        fi
        run_suite molecule || failed+=(molecule)
        if [ ${#failed[@]} -gt 0 ]; then
            for s in "${failed[@]}"; do
                failure_digest "$s"
            done
            echo "FAILED suites: ${failed[*]}"
            exit 1
        fi
        echo "all suites passed"
        ;;
    unit|sanity|lint|packaging|awx|fleet|integration|molecule)
        run_suite "$@"
        ;;
    *)
        echo "usage: $0 [all|unit|sanity|lint|packaging [STEP...]|awx [ee|job]|fleet [run.py options]|integration [TARGET...]|molecule [SCENARIO...]]" >&2
        exit 2
        ;;
esac
