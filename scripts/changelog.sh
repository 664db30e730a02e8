#!/usr/bin/env bash
# The changelog, managed with antsibull-changelog: one fragment per change in changelogs/fragments/, the released
# versions in changelogs/changelog.yaml, CHANGELOG.md generated from both (never edited by hand).
#   scripts/changelog.sh lint     antsibull-changelog lint (fragments and changelog.yaml)
#   scripts/changelog.sh render   writes CHANGELOG.md: the released versions, and the fragments not released yet
#                                 under galaxy.yml's version marked "(unreleased)"
#   scripts/changelog.sh check    lint, then fails when CHANGELOG.md is not what `render` writes
# Releasing: `antsibull-changelog release` (it moves the fragments into changelog.yaml), then `render`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KVM_STORAGE_VENV:-$HOME/.cache/kvm-storage/venv}
export PATH="$VENV/bin:$PATH" ANSIBLE_NOCOLOR=1 PYTHONWARNINGS=ignore

# The changelog as it would be after releasing the pending fragments, written to $1 (run in a copy: the release
# consumes the fragments). The release date is not printed in the Markdown output, so a fixed one keeps it stable.
render_to() {
    local out=$1 work coll version
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    coll="$work/ansible_collections/kvm/storage"
    mkdir -p "$coll"
    (cd "$ROOT" && tar -cf - galaxy.yml meta plugins roles changelogs) | tar -C "$coll" -xf -
    rm -f "$coll/changelogs/.plugin-cache.yaml"
    version=$("$VENV/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["version"])' \
        "$ROOT/galaxy.yml")
    if compgen -G "$coll/changelogs/fragments/*.yml" >/dev/null || compgen -G "$coll/changelogs/fragments/*.yaml" >/dev/null; then
        (cd "$coll" && ANSIBLE_COLLECTIONS_PATH="$work" antsibull-changelog release --version "$version" \
            --date 2000-01-01 >/dev/null 2>"$work/release.log") || { cat "$work/release.log" >&2; return 1; }
        # the version the fragments go to is not released yet: say so in its heading and its table-of-contents entry
        "$VENV/bin/python" - "$coll/CHANGELOG.md" "$version" <<'PYEOF'
import sys
path, version = sys.argv[1], sys.argv[2].replace(".", "\\.")
text = open(path, encoding="utf-8").read()
text = text.replace("\n## v%s\n" % version, "\n## v%s (unreleased)\n" % version, 1)
text = text.replace(">v%s</a>" % version, ">v%s (unreleased)</a>" % version, 1)
open(path, "w", encoding="utf-8").write(text)
PYEOF
    else
        (cd "$coll" && ANSIBLE_COLLECTIONS_PATH="$work" antsibull-changelog generate >/dev/null 2>"$work/release.log") \
            || { cat "$work/release.log" >&2; return 1; }
    fi
    cp "$coll/CHANGELOG.md" "$out"
}

case "${1:-}" in
    lint)
        cd "$ROOT" && antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
        ;;
    render)
        render_to "$ROOT/CHANGELOG.md"
        echo "changelog.sh: wrote CHANGELOG.md"
        ;;
    check)
        (cd "$ROOT" && antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml)
        tmp=$(mktemp)
        trap 'rm -f "$tmp"' EXIT
        render_to "$tmp"
        if ! diff -u "$ROOT/CHANGELOG.md" "$tmp"; then
            echo "changelog.sh: CHANGELOG.md is not what changelogs/ generates (diff above): add a fragment to" \
                "changelogs/fragments/ instead of editing CHANGELOG.md, then run scripts/changelog.sh render" >&2
            exit 1
        fi
        echo "changelog.sh: changelog lint clean, CHANGELOG.md up to date"
        ;;
    *)
        echo "usage: $0 lint|render|check" >&2
        exit 2
        ;;
esac
