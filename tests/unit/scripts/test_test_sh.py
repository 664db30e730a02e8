# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""scripts/test.sh: a failure while copying the collection stops the suite with a clear message."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TEST_SH = os.path.join(ROOT, "scripts", "test.sh")


def stand_in(directory, name, script):
    path = directory / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


@pytest.fixture
def fake_tools(tmp_path):
    """A venv whose ansible-test only says it ran, and a tar that fails (as on a full disk)."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    os.symlink(sys.executable, str(venv_bin / "python"))
    stand_in(venv_bin, "ansible-test", 'echo "ANSIBLE-TEST RAN"')
    tools = tmp_path / "tools"
    tools.mkdir()
    stand_in(tools, "tar", 'echo "tar: simulated write error" >&2; exit 2')
    env = dict(os.environ, KVM_STORAGE_VENV=str(tmp_path / "venv"), TMPDIR=str(tmp_path),
               PATH=str(tools) + os.pathsep + os.environ["PATH"])
    return env


@pytest.mark.parametrize("suite", [["sanity", "--test", "pep8"], ["integration", "disk_image"]])
def test_a_failed_copy_of_the_collection_stops_the_suite(fake_tools, suite):
    proc = subprocess.run(["bash", TEST_SH] + suite, env=fake_tools, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "ANSIBLE-TEST RAN" not in proc.stdout
    assert "tar: simulated write error" in proc.stdout
    assert "test.sh: copying the collection to " in proc.stdout and "failed; stopping" in proc.stdout, proc.stdout


EXCLUDED = 'WARNING: Excluding local tests marked "needs/root" which require --allow-root or running as root: lvm_x'


@pytest.fixture
def excluding_ansible_test(tmp_path):
    """A venv whose ansible-test leaves a target out, as it does for needs/root when not root, and passes."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    os.symlink(sys.executable, str(venv_bin / "python"))
    stand_in(venv_bin, "ansible-test", "echo '%s' >&2; echo 'ANSIBLE-TEST RAN'" % EXCLUDED)
    return dict(os.environ, KVM_STORAGE_VENV=str(tmp_path / "venv"), TMPDIR=str(tmp_path))


def run_integration(env, ci):
    env = dict(env)
    env.pop("CI", None)
    if ci:
        env["CI"] = ci
    return subprocess.run(["bash", TEST_SH, "integration"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)


def test_in_ci_a_target_left_out_for_a_missing_component_fails_the_integration_suite(excluding_ansible_test):
    proc = run_integration(excluding_ansible_test, "true")
    assert proc.returncode != 0, proc.stdout
    assert "ANSIBLE-TEST RAN" in proc.stdout and EXCLUDED in proc.stdout
    assert "test.sh: CI=true: ansible-test left targets out" in proc.stdout, proc.stdout


def test_outside_ci_a_target_left_out_is_only_ansible_tests_warning(excluding_ansible_test):
    proc = run_integration(excluding_ansible_test, None)
    assert proc.returncode == 0, proc.stdout
    assert EXCLUDED in proc.stdout and "test.sh: CI=true" not in proc.stdout
