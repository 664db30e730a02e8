#!/usr/bin/env bash
# The collection as users get it (the `packaging` suite of scripts/test.sh; steps by name: `packaging.sh importer docs`):
#   build      ansible-galaxy collection build of this checkout (galaxy.yml's build_ignore applied)
#   importer   galaxy-importer (what Galaxy runs on upload) on that tarball: no error, no warning
#   changelog  antsibull-changelog lint, and CHANGELOG.md is what changelogs/ generates (scripts/changelog.sh check)
#   docs       antsibull-docs lint-collection-docs, the HTML site built (scripts/docs.sh), every module and role page
#              opened in headless Chromium with its options table checked (tests/packaging/check_docs_site.py)
#   demo       the tarball installed into an empty collections path (the only one Ansible searches), then
#              playbooks/demo.yml run from the installed copy, under names and a directory of its own, removed after
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KVM_STORAGE_VENV:-$HOME/.cache/kvm-storage/venv}
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH" ANSIBLE_NOCOLOR=1 PYTHONWARNINGS=ignore

WORK=$(mktemp -d /tmp/kvm-storage-packaging.XXXXXX)
TAG="pkg$$"
cleanup_demo() {
    local d
    for d in "kvmstorage_${TAG}_vm" "kvmstorage_${TAG}_vbox"; do
        if virsh -q -c qemu:///system dominfo "$d" >/dev/null 2>&1; then
            virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
            virsh -q -c qemu:///system undefine "$d" --snapshots-metadata --managed-save --nvram >/dev/null 2>&1 \
                || virsh -q -c qemu:///system undefine "$d" --snapshots-metadata >/dev/null
        fi
    done
    if virsh -q -c qemu:///system pool-info "kvmstorage_${TAG}" >/dev/null 2>&1; then
        virsh -q -c qemu:///system pool-destroy "kvmstorage_${TAG}" >/dev/null 2>&1
        virsh -q -c qemu:///system pool-undefine "kvmstorage_${TAG}" >/dev/null
    fi
}
trap 'cleanup_demo; rm -rf "$WORK"' EXIT

TARBALL=""
step_build() {
    mkdir -p "$WORK/dist"
    (cd "$ROOT" && ansible-galaxy collection build --force --output-path "$WORK/dist" .) || return 1
    TARBALL=$(ls "$WORK"/dist/kvm-storage-*.tar.gz) || return 1
    echo "artifact: $TARBALL ($(tar -tzf "$TARBALL" | grep -vc '/$') files, $(du -k "$TARBALL" | cut -f1) KiB)"
}

need_tarball() {
    [ -n "$TARBALL" ] || step_build >/dev/null
}

step_importer() {
    local log="$WORK/importer.log"
    need_tarball || return 1
    mkdir -p "$WORK/importer"
    (cd "$WORK/importer" && GALAXY_IMPORTER_CONFIG="$ROOT/tests/packaging/galaxy-importer.cfg" \
        "$PY" -m galaxy_importer.main "$TARBALL") >"$log" 2>&1
    local rc=$?
    grep -v '^Loading ' "$log"
    if [ "$rc" -ne 0 ]; then
        echo "galaxy-importer: exit $rc" >&2
        return 1
    fi
    if grep -E -i '^(WARNING|ERROR)|Traceback' "$log" >/dev/null; then
        echo "galaxy-importer: warnings or errors (above)" >&2
        return 1
    fi
    grep -q 'Importer processing completed successfully' "$log" || return 1
}

step_changelog() {
    bash "$ROOT/scripts/changelog.sh" check
}

step_docs() {
    local coll
    bash "$ROOT/scripts/docs.sh" lint || return 1
    bash "$ROOT/scripts/docs.sh" build "$WORK/site" || return 1
    # ansible-doc says what each page must show: the checkout's copy, found alone
    coll="$WORK/docs-collection"
    mkdir -p "$coll/ansible_collections/kvm"
    ln -s "$ROOT" "$coll/ansible_collections/kvm/storage"
    ANSIBLE_COLLECTIONS_PATH="$coll" "$PY" "$ROOT/tests/packaging/check_docs_site.py" "$WORK/site"
}

step_demo() {
    local colls="$WORK/collections" installed found
    need_tarball || return 1
    mkdir -p "$colls"
    # the install too looks only there (else it finds the checkout's link and says "already installed")
    ANSIBLE_COLLECTIONS_PATH="$colls" ansible-galaxy collection install -p "$colls" "$TARBALL" || return 1
    installed="$colls/ansible_collections/kvm/storage"
    # only the installed copy is found: the checkout's link in ~/.ansible/collections is not searched
    found=$(ANSIBLE_COLLECTIONS_PATH="$colls" ansible-galaxy collection list kvm.storage 2>/dev/null | grep '^# ')
    echo "ansible-galaxy collection list kvm.storage: $found"
    if [ "$found" != "# $colls/ansible_collections" ]; then
        echo "demo: kvm.storage is found elsewhere than the installed copy ($found)" >&2
        return 1
    fi
    [ -f "$installed/playbooks/demo.yml" ] || { echo "demo: the artifact has no playbooks/demo.yml" >&2; return 1; }
    cleanup_demo
    (cd "$WORK" && ANSIBLE_COLLECTIONS_PATH="$colls" ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false \
        ansible-playbook -i "$installed/playbooks/inventory.ini" "$installed/playbooks/demo.yml" \
        -e "demo_dir=$WORK/demo" -e "demo_pool=kvmstorage_${TAG}" -e "demo_domain=kvmstorage_${TAG}_vm" \
        -e "demo_vbox_domain=kvmstorage_${TAG}_vbox") | tee "$WORK/demo.log" | grep -E -A6 '^PLAY RECAP|^fatal:|FAILED!'
    local rc=${PIPESTATUS[0]}
    cleanup_demo
    if [ "$rc" -ne 0 ] || ! grep -E -q '^localhost +: ok=[0-9]+ +changed=[0-9]+ +unreachable=0 +failed=0' "$WORK/demo.log"; then
        echo "demo from the installed copy failed (exit $rc)" >&2
        return 1
    fi
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(build importer changelog docs demo)
passed=0
failed=0
for s in "${steps[@]}"; do
    case "$s" in build|importer|changelog|docs|demo) ;; *) echo "usage: $0 [build|importer|changelog|docs|demo]..." >&2; exit 2 ;; esac
    start=$(date +%s)
    echo "------------------- packaging: $s -------------------"
    if "step_$s"; then
        passed=$((passed + 1))
        echo "------------------- packaging: $s passed in $(( $(date +%s) - start ))s"
    else
        failed=$((failed + 1))
        echo "------------------- packaging: $s FAILED in $(( $(date +%s) - start ))s"
    fi
done
echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
