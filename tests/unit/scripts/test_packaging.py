# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's packaging: galaxy.yml's build_ignore, meta/runtime.yml's action groups and Ansible range,
scripts/changelog.sh's checks, and the page checks of tests/packaging/check_docs_site.py (the packaging suite of
scripts/test.sh runs them all on the real artifact; these tests show that each check catches what it is for)."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VENV_BIN = os.path.dirname(sys.executable)


def tool(name):
    """A tool of the virtualenv the tests run in (scripts/setup.sh installs them from requirements-dev.txt)."""
    path = os.path.join(VENV_BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


def git_known_copy(dest):
    """The checkout's git-known files (tracked and new, not ignored) copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           stdout=subprocess.PIPE).stdout.decode().split("\0")
    for rel in files:
        src = os.path.join(ROOT, rel)
        if rel and os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


CLUTTER = [".venv/bin/python", "venv/lib/site.py", ".tox/py/x", ".pytest_cache/v/cache", ".github/workflows/ci.yml",
           ".gitignore", ".ci/run", "plugins/modules/__pycache__/disk_image.cpython-311.pyc", "__pycache__/x.pyc",
           "tests/output/junit.xml", "build/docs/index.html", "kvm-storage-0.0.9.tar.gz", "bench/results/README.md",
           "changelogs/.plugin-cache.yaml", "tests/unit/plugins/module_utils/diskimage/samples/README"]
NEEDED = ["playbooks/demo.yml", "playbooks/inventory.ini", "tests/support/make_virtualbox_machine.py",
          "meta/runtime.yml", "plugins/modules/disk_image.py", "roles/kvm_host/meta/argument_specs.yml",
          "changelogs/changelog.yaml", "changelogs/config.yaml", "docs/docsite/links.yml", "docs/docsite/extra-docs.yml",
          "CHANGELOG.md", "README.md", "COPYING", "LICENSES/GPL-3.0-or-later.txt"]


def test_build_ignore_keeps_clutter_out_of_the_artifact_and_what_users_need_in(tmp_path):
    src = tmp_path / "src"
    git_known_copy(str(src))
    for rel in CLUTTER:
        os.makedirs(os.path.dirname(str(src / rel)), exist_ok=True)
        (src / rel).write_text("clutter\n")
    subprocess.run([tool("ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path / "dist"), str(src)],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with tarfile.open(glob.glob(str(tmp_path / "dist" / "kvm-storage-*.tar.gz"))[0]) as tar:
        names = set(tar.getnames())
    clutter_dirs = {".venv", "venv", ".tox", ".pytest_cache", ".github", ".ci", "build", "bench"}
    leaked = sorted(n for n in names if n in CLUTTER or n.split("/")[0] in clutter_dirs or "__pycache__" in n
                    or n.endswith((".pyc", ".tar.gz")) or n.startswith("tests/unit/plugins/module_utils/diskimage/samples"))
    assert not leaked, leaked
    assert [rel for rel in NEEDED if rel not in names] == []


def test_every_module_is_in_exactly_one_action_group_and_groups_name_only_modules():
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as f:
        runtime = yaml.safe_load(f)
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))
                     if not os.path.basename(p).startswith("_"))
    grouped = [m for members in runtime["action_groups"].values() for m in members]
    assert sorted(grouped) == modules


# the option a group's module_defaults set for all its members (a default goes to every member: one that does not take
# it fails with "Unsupported parameters")
GROUP_OPTIONS = {"image": ["allow_dirs"], "libvirt": ["uri"], "lvm": ["vg", "lv"], "host": [], "cloud_init": []}


def test_every_module_of_a_group_accepts_the_options_the_group_shares(tmp_path):
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as f:
        groups = yaml.safe_load(f)["action_groups"]
    assert sorted(groups) == sorted(GROUP_OPTIONS)
    colls = tmp_path / "collections" / "ansible_collections" / "kvm"
    colls.mkdir(parents=True)
    os.symlink(ROOT, str(colls / "storage"))
    modules = sorted("kvm.storage." + m for members in groups.values() for m in members)
    docs = json.loads(subprocess.run([tool("ansible-doc"), "-t", "module", "--json"] + modules, check=True,
                                     env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections")),
                                     stdout=subprocess.PIPE).stdout)
    lacking = ["%s lacks %s (group %s)" % (m, o, g) for g, members in groups.items() for m in members
               for o in GROUP_OPTIONS[g] if o not in docs["kvm.storage." + m]["doc"]["options"]]
    assert lacking == []


def test_the_ansible_range_admits_the_ansible_core_the_tests_run():
    from ansible.module_utils.compat.version import LooseVersion
    from ansible.release import __version__
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as f:
        requires = yaml.safe_load(f)["requires_ansible"]
    assert requires.startswith(">="), requires
    assert "," not in requires and "<" not in requires, "no upper bound: %s" % requires
    assert LooseVersion(__version__) >= LooseVersion(requires[2:]), (requires, __version__)


@pytest.fixture
def changelog_checkout(tmp_path):
    """What scripts/changelog.sh needs, copied: its checks there never touch the checkout."""
    dest = tmp_path / "checkout"
    for rel in ("galaxy.yml", "CHANGELOG.md", "scripts/changelog.sh"):
        os.makedirs(os.path.dirname(str(dest / rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), str(dest / rel))
    for rel in ("meta", "plugins", "roles", "changelogs"):
        shutil.copytree(os.path.join(ROOT, rel), str(dest / rel),
                        ignore=shutil.ignore_patterns("__pycache__", ".plugin-cache.yaml"))
    return dest


def run_changelog_check(checkout):
    env = dict(os.environ, KVM_STORAGE_VENV=os.path.dirname(VENV_BIN), TMPDIR=str(checkout.parent))
    return subprocess.run(["bash", str(checkout / "scripts" / "changelog.sh"), "check"], env=env, check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


def test_changelog_check_refuses_a_hand_edited_changelog(changelog_checkout):
    with open(str(changelog_checkout / "CHANGELOG.md"), "a") as f:
        f.write("* a change written by hand\n")
    proc = run_changelog_check(changelog_checkout)
    assert proc.returncode != 0, proc.stdout
    assert "+* a change written by hand" not in proc.stdout and "-* a change written by hand" in proc.stdout
    assert "add a fragment to changelogs/fragments/" in proc.stdout


def test_changelog_check_refuses_a_fragment_antsibull_changelog_cannot_use(changelog_checkout):
    (changelog_checkout / "changelogs" / "fragments" / "bad.yml").write_text("---\nnew_things:\n  - A section no one knows.\n")
    proc = run_changelog_check(changelog_checkout)
    assert proc.returncode != 0, proc.stdout
    assert "bad.yml" in proc.stdout and "new_things" in proc.stdout, proc.stdout


def load_check_docs_site():
    spec = importlib.util.spec_from_file_location(
        "kvm_storage_check_docs_site", os.path.join(ROOT, "tests", "packaging", "check_docs_site.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def page(heading, rows, table_class="longtable ansible-option-table docutils"):
    cells = "".join('<tr><td><div id="parameter-%s"></div><p class="ansible-option-title"><strong>%s</strong></p></td>'
                    '</tr>' % (anchor, name) for anchor, name in rows)
    return '<html><body><h1>%s<a>¶</a></h1><table class="%s"><tbody>%s</tbody></table></body></html>' % (
        heading, table_class, cells)


def test_the_docs_page_check_finds_every_option_and_names_what_is_missing():
    check = load_check_docs_site()
    paths = check.option_paths({"path": {}, "snapshots": {"suboptions": {"name": {}, "state": {}}}})
    assert paths == ["path", "snapshots", "snapshots/name", "snapshots/state"]
    full = [("path", "path"), ("snapshots", "snapshots"), ("snapshots/name", "name"), ("snapshots/state", "state")]
    heading = "kvm.storage.disk_image module – Create QEMU disk images"
    assert check.page_problems(page(heading, full), "kvm.storage.disk_image", paths) == []
    problems = check.page_problems(page(heading, full[:3]), "kvm.storage.disk_image", paths)
    assert problems == ["option snapshots/state: no anchor parameter-snapshots/state in an options table"]
    unnamed = full[:3] + [("snapshots/state", "")]
    assert check.page_problems(page(heading, unnamed), "kvm.storage.disk_image", paths) == [
        "option snapshots/state: its name is not shown in an options table"]
    no_table = check.page_problems(page(heading, full, table_class="docutils"), "kvm.storage.disk_image", paths)
    assert "no options table (table.ansible-option-table)" in no_table and len(no_table) == 5
    assert check.page_problems(page("Search", full), "kvm.storage.disk_image", paths) == [
        "the page's heading 'Search¶' does not name kvm.storage.disk_image"]


def test_the_docs_page_check_reads_role_anchors_under_their_entry_point():
    check = load_check_docs_site()
    rows = [("main--kvm_host_storage_pools", "kvm_host_storage_pools"), ("main--kvm_host_storage_pools/name", "name")]
    paths = check.option_paths({"kvm_host_storage_pools": {"options": {"name": {}}}})
    assert check.page_problems(page("kvm.storage.kvm_host role", rows), "kvm.storage.kvm_host", paths, "main--") == []
    assert check.page_problems(page("kvm.storage.kvm_host role", rows), "kvm.storage.kvm_host", paths) != []
