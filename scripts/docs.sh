#!/usr/bin/env bash
# The collection's documentation with antsibull-docs (its own docs, as Ansible's docsite shows collections):
#   scripts/docs.sh lint          antsibull-docs lint-collection-docs: module and role docs (--plugin-docs, which
#                                 validates the roles' argument specs too), references, docs/docsite/ (links, extra docs)
#   scripts/docs.sh build [DEST]  the HTML site (modules, roles with their options, examples, extra docs) built with
#                                 `antsibull-docs sphinx-init --use-current` and Sphinx, into DEST (default build/docs)
# Both work on a copy of the checkout's files (git-known, not ignored) under ansible_collections/kvm/storage, found
# only there (ANSIBLE_COLLECTIONS_PATH): what is documented is this checkout, never another installed kvm.storage.
# Offline: no intersphinx inventory is fetched, so the only warnings allowed are references to labels of Ansible's own
# documentation (common return values, configuration settings, ansible.builtin modules); any other warning fails.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KVM_STORAGE_VENV:-$HOME/.cache/kvm-storage/venv}
export PATH="$VENV/bin:$PATH" ANSIBLE_NOCOLOR=1 PYTHONWARNINGS=ignore

WORK=$(mktemp -d /tmp/kvm-storage-docs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
COLL="$WORK/ansible_collections/kvm/storage"
mkdir -p "$COLL"
(cd "$ROOT" && git ls-files -z -co --exclude-standard \
    | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf -) | tar -C "$COLL" -xf -
export ANSIBLE_COLLECTIONS_PATH="$WORK"

# labels of docs.ansible.com that antsibull-docs' pages refer to: unresolved offline, nothing else may be
ALLOWED_WARNING="WARNING: undefined label: '(common_return_values|ansible_configuration_settings|ansible_collections\.ansible\.builtin\.[a-z0-9_]+_(module|plugin))'"

case "${1:-}" in
    lint)
        (cd "$COLL" && antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs all \
            --disallow-unknown-collection-refs --check-extra-docs-refs .)
        echo "docs.sh: antsibull-docs lint-collection-docs clean"
        ;;
    build)
        dest=${2:-$ROOT/build/docs}
        mkdir -m 0700 "$WORK/site"
        antsibull-docs sphinx-init --use-current --dest-dir "$WORK/site" kvm.storage >/dev/null
        # offline: no inventories to fetch (the last assignment in conf.py wins)
        printf '\nintersphinx_mapping = {}\n' >> "$WORK/site/conf.py"
        chmod 0700 "$WORK/site/rst"
        (cd "$WORK/site" \
            && antsibull-docs --config-file antsibull-docs.cfg collection --cleanup everything --use-current \
                --dest-dir rst kvm.storage >/dev/null \
            && sphinx-build -M html rst build -c . -q --keep-going -w "$WORK/sphinx-warnings.log" 2>/dev/null)
        if grep -v -E "$ALLOWED_WARNING" "$WORK/sphinx-warnings.log" | grep -q .; then
            grep -v -E "$ALLOWED_WARNING" "$WORK/sphinx-warnings.log" >&2
            echo "docs.sh: Sphinx warned (above)" >&2
            exit 1
        fi
        rm -rf "$dest"
        mkdir -p "$(dirname "$dest")"
        cp -r "$WORK/site/build/html" "$dest"
        echo "docs.sh: built $dest/index.html ($(find "$dest/collections/kvm/storage" -name '*_module.html' | wc -l) module" \
            "pages, $(find "$dest/collections/kvm/storage" -name '*_role.html' | wc -l) role pages)"
        ;;
    *)
        echo "usage: $0 lint|build [DEST]" >&2
        exit 2
        ;;
esac
