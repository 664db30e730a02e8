#!/usr/bin/env bash
# Run the test suites: unit (pytest), sanity (ansible-test, empty ignore list),
# lint (ansible-lint --profile production), integration (ansible-test integration,
# modules run for real through ansible-playbook), molecule (the roles' scenarios in podman
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

suite_integration() {
    local dest rc
    dest=$(collection_copy_or_stop) || exit 1
    # extra arguments name targets to run (default: every target)
    (cd "$dest" && ansible-test integration --local --python "$PYVER" --color no -v "$@") 2>&1 \
        | tee "$WORK/integration.log"
    rc=${PIPESTATUS[0]}
    # ansible-test leaves out, with a warning only, targets whose needs it finds unmet (needs/root when not root...)
    if [ "$rc" -eq 0 ] && in_ci && grep -q '^WARNING: Excluding .*tests' "$WORK/integration.log"; then
        echo "test.sh: CI=true: ansible-test left targets out (the \"Excluding\" warning above): the set-up" \
            "provides everything they need, so this fails" >&2
        rc=1
    fi
    return "$rc"
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
        for s in unit sanity lint integration molecule; do
            if [ "$s" = integration ]; then
                prebuild_wait
            fi
            run_suite "$s" || failed+=("$s")
        done
        if [ ${#failed[@]} -gt 0 ]; then
            for s in "${failed[@]}"; do
                failure_digest "$s"
            done
            echo "FAILED suites: ${failed[*]}"
            exit 1
        fi
        echo "all suites passed"
        ;;
    unit|sanity|lint|integration|molecule)
        run_suite "$@"
        ;;
    *)
        echo "usage: $0 [all|unit|sanity|lint|integration [TARGET...]|molecule [SCENARIO...]]" >&2
        exit 2
        ;;
esac
