# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A test skipped for a missing component fails in CI and stays a skip elsewhere; no skip bypasses components.py."""

import os
import re
import subprocess
import sys

import pytest

UNIT = os.path.dirname(os.path.abspath(__file__))

SCRATCH_TESTS = '''
import components

def test_without_libvirtd():
    components.missing("libvirtd", "no socket")

@components.needs(False, "qemu-img")
def test_without_qemu_img():
    pass

def test_that_runs():
    pass
'''

SCRATCH_MODULE = '''
import components

components.missing("loop device", "losetup -f failed")

def test_never_collected():
    pass
'''


def run_scratch_suite(tmp_path, ci, source):
    (tmp_path / "test_scratch.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=UNIT)
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    # -p conftest: the suite's own conftest.py (its hooks) as a plugin; the scratch directory has none.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-p", "conftest", str(tmp_path)], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_in_ci_a_missing_component_is_a_failure(tmp_path, ci):
    rc, out = run_scratch_suite(tmp_path, ci, SCRATCH_TESTS)
    assert rc == 1, out
    assert re.search(r"\b1 passed\b", out) and "skipped" not in out, out
    for component in ("libvirtd (no socket)", "qemu-img"):
        assert "CI=true: missing component: %s. The set-up installs every component" % component in out, out


def test_in_ci_a_module_skipped_for_a_missing_component_is_a_collection_error(tmp_path):
    rc, out = run_scratch_suite(tmp_path, "true", SCRATCH_MODULE)
    assert rc == 2 and "ERROR collecting test_scratch.py" in out, out
    assert "CI=true: missing component: loop device (losetup -f failed). The set-up installs" in out, out


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_a_missing_component_is_a_skip_with_its_reason(tmp_path, ci):
    rc, out = run_scratch_suite(tmp_path, ci, SCRATCH_TESTS)
    assert rc == 0, out
    assert re.search(r"\b1 passed, 2 skipped\b", out), out
    for line, component in ((4, "libvirtd (no socket)"), (7, "qemu-img")):
        assert "test_scratch.py:%d: missing component: %s" % (line, component) in out, out
    rc, out = run_scratch_suite(tmp_path, ci, SCRATCH_MODULE)
    assert rc == 5 and re.search(r"\b1 skipped\b", out), out
    assert "missing component: loop device (losetup -f failed)" in out, out


# A skip written any other way would pass in CI unnoticed.
BYPASS = re.compile(r"pytest\.skip\(|\bskipif\(|importorskip\(|\.skipTest\(|pytest\.mark\.skip\b|unittest\.skip")


def test_every_skip_in_the_suite_goes_through_components():
    found = []
    for directory, dummy, files in os.walk(UNIT):
        for name in sorted(files):
            path = os.path.join(directory, name)
            if not name.endswith(".py") or path in (os.path.join(UNIT, "components.py"), os.path.abspath(__file__)):
                continue
            with open(path) as source:
                for number, line in enumerate(source, 1):
                    if BYPASS.search(line):
                        found.append("%s:%d: %s" % (os.path.relpath(path, UNIT), number, line.strip()))
    assert not found, ("skip for a missing component with components.missing() or components.needs(); "
                       "a test should not skip for any other reason:\n" + "\n".join(found))
