# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostile-image corpus (issue #15, docs/security.md "Hostile-image corpus"): every case of every module
of tests/unit/hardening/hostile/ that defines CASES runs in a child process under a CPU limit, an
address-space limit and an audit hook on file opens (sandbox.py).  Each operation ends in a bounded success
or an ImageError, never a defect; must-refuse cases are refused with the expected message.  The harness is
shown to catch each kind of defect, so it cannot pass vacuously."""

import collections
import importlib
import json
import os
import pathlib
import pkgutil
import re

import pytest

from hardening import hostile, sandbox
from hardening.hostile import _util
from hardening.hostile._case import Case

# Every format the library reads (plugins/module_utils/diskimage/formats/ registry), and OVA archives.
READABLE_FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vpc", "qed", "qcow", "vhdx", "parallels", "bochs", "cloop",
                    "dmg", "luks", "ova")
# Operations that must refuse a must-refuse case; probe (which reads the header only) and check (which does not
# follow references) may succeed on an image whose header is sound.
REFUSING_OPERATIONS = ("info", "map", "compare", "convert_raw", "convert_qcow2")
# Defects the corpus found that are not fixed yet (strict xfail: the day they are fixed, the test says so).
# (vmdk/extent-sectors-petabytes was one: compare and convert walked a huge empty disk in fixed windows; the
# windows now grow while they come back empty, ops/image.py status_windows.)
KNOWN_DEFECTS = {}


def collect():
    """Every Case of every module of the hostile package (the fuzzers' regressions included)."""
    cases = []
    for module in sorted(pkgutil.iter_modules(hostile.__path__), key=lambda info: info.name):
        loaded = importlib.import_module("%s.%s" % (hostile.__name__, module.name))
        for case in getattr(loaded, "CASES", ()):
            cases.append(case)
    return cases


CORPUS = collect()


@pytest.fixture(scope="module", name="child")
def child_fixture():
    """One child process per test worker, serving the cases one after the other (restarted after a death)."""
    with sandbox.Sandbox() as runner:
        yield runner


def job_for(case, tmp_path):
    case_dir = tmp_path / "case"
    out_dir = tmp_path / "out"
    case_dir.mkdir()
    out_dir.mkdir()
    image = case.build(case_dir)
    job = {"image": str(image), "fmt": case.fmt, "case_dir": str(case_dir), "out_dir": str(out_dir)}
    if case.fmt == "luks":
        job["key_secret"] = _util.LUKS_PASSPHRASE
    if case.name in KNOWN_DEFECTS:
        job["cpu"] = 1      # the known hang need not take the whole CPU limit to show itself
    return job


def describe(result):
    return "\n".join("%-14s %-8s %s" % (name, outcome, message[:300])
                     for name, (outcome, message) in sorted(result["ops"].items())) or str(result["defect"])


def record(case, result):
    """With HOSTILE_CORPUS_REPORT=<file>, one JSON line per case (appended: xdist workers share the file)."""
    report = os.environ.get("HOSTILE_CORPUS_REPORT")
    if report:
        line = json.dumps({"name": case.name, "fmt": case.fmt, "source": case.source, "must_refuse": case.must_refuse,
                           "defect": result["defect"], "ops": result["ops"]}) + "\n"
        descriptor = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line.encode())
        finally:
            os.close(descriptor)


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.xfail(reason=KNOWN_DEFECTS[case.name], strict=True))
    if case.name in KNOWN_DEFECTS else case for case in CORPUS], ids=[case.name for case in CORPUS])
def test_hostile_image(case, child, tmp_path):
    result = child.run(job_for(case, tmp_path))
    record(case, result)
    assert result["defect"] is None, "%s: %s" % (case.name, result["defect"])
    defects = {name: message for name, (outcome, message) in result["ops"].items() if outcome == "defect"}
    assert not defects, "%s (%s):\n%s" % (case.name, case.source, describe(result))
    assert set(result["ops"]) == set(sandbox.OPERATIONS)
    if case.must_refuse:
        pattern = re.compile(case.refuse or ".")
        for name in REFUSING_OPERATIONS:
            outcome, message = result["ops"][name]
            assert outcome == "refused", "%s: %s was not refused:\n%s" % (case.name, name, describe(result))
            assert pattern.search(message), "%s: %s refused with %r, expected /%s/" % (
                case.name, name, message, case.refuse)
        for name in ("probe", "check"):
            outcome, message = result["ops"][name]
            if outcome == "refused":
                assert pattern.search(message), "%s: %s refused with %r, expected /%s/" % (
                    case.name, name, message, case.refuse)


def test_the_corpus_is_large_and_covers_every_readable_format():
    names = [case.name for case in CORPUS]
    assert len(names) >= 300, len(names)
    assert len(set(names)) == len(names), [name for name, count in collections.Counter(names).items() if count > 1]
    assert all(isinstance(case, Case) for case in CORPUS)
    per_format = collections.Counter(case.fmt for case in CORPUS)
    assert not set(READABLE_FORMATS) - set(per_format), sorted(set(READABLE_FORMATS) - set(per_format))
    assert all(case.source for case in CORPUS), [case.name for case in CORPUS if not case.source]
    assert all(case.refuse for case in CORPUS if case.must_refuse)


def test_the_collector_takes_every_module_with_cases():
    modules = {info.name for info in pkgutil.iter_modules(hostile.__path__)}
    with_cases = {name for name in modules
                  if getattr(importlib.import_module("%s.%s" % (hostile.__name__, name)), "CASES", None)}
    assert with_cases >= {"references", "qcow2"}
    collected = {id(case) for case in CORPUS}
    for name in with_cases:
        module = importlib.import_module("%s.%s" % (hostile.__name__, name))
        assert all(id(case) in collected for case in module.CASES), name


# ---------------------------------------------------------------------------- the harness catches defects

def harmless(tmp_path, **extra):
    case_dir = tmp_path / "case"
    out_dir = tmp_path / "out"
    case_dir.mkdir()
    out_dir.mkdir()
    image = _util.write(case_dir / "disk.raw", b"\x01" * 65536)
    return dict({"image": str(image), "fmt": "raw", "case_dir": str(case_dir), "out_dir": str(out_dir)}, **extra)


def test_a_harmless_image_is_ok_everywhere(tmp_path, child):
    result = child.run(harmless(tmp_path))
    assert result["defect"] is None
    outcomes = {name: outcome for name, (outcome, _message) in result["ops"].items()}
    assert outcomes.pop("check") == "refused"      # raw images have no metadata to check (as qemu-img)
    assert outcomes == dict.fromkeys(set(sandbox.OPERATIONS) - {"check"}, "ok")


def test_an_open_outside_the_policy_is_a_defect(tmp_path, child):
    secret = _util.outside_file(tmp_path / "case")
    result = child.run(harmless(tmp_path, misbehave="open-outside", misbehave_target=str(secret)))
    outcome, message = result["ops"]["info"]
    assert outcome == "defect" and "outside the policy: open %s" % secret in message
    assert result["ops"]["map"][0] == "ok"          # the next operation starts clean


def test_an_open_through_a_symbolic_link_out_of_the_directory_is_a_defect(tmp_path, child):
    secret = _util.outside_file(tmp_path / "case")
    job = harmless(tmp_path)
    link = _util.symlink_out(job["case_dir"], "link.raw", secret)
    result = child.run(dict(job, misbehave="open-outside", misbehave_target=str(link)))
    outcome, message = result["ops"]["info"]
    assert outcome == "defect" and str(link) in message


def test_an_open_of_a_host_file_is_a_defect(tmp_path, child):
    result = child.run(harmless(tmp_path, misbehave="open-outside", misbehave_target="/etc/passwd"))
    assert result["ops"]["info"][0] == "defect"
    assert "/etc/passwd" in result["ops"]["info"][1]


def test_an_exception_other_than_image_error_is_a_defect(tmp_path, child):
    result = child.run(harmless(tmp_path, misbehave="raise"))
    assert result["ops"]["info"][0] == "defect" and "KeyError" in result["ops"]["info"][1]


def test_an_allocation_past_the_address_space_limit_is_a_defect(tmp_path, child):
    result = child.run(harmless(tmp_path, misbehave="allocate"))
    assert result["ops"]["info"] == ["defect", "MemoryError (address-space limit)"]


def test_a_cpu_limit_overrun_kills_the_child_and_is_a_defect(tmp_path, child):
    result = child.run(harmless(tmp_path, misbehave="spin", cpu=1))
    assert result["ops"] == {}
    assert "SIGXCPU" in result["defect"]
    (tmp_path / "again").mkdir()
    assert child.run(harmless(tmp_path / "again"))["defect"] is None     # the next case gets a new child


def test_a_hang_past_the_wall_clock_guard_is_a_defect(tmp_path):
    with sandbox.Sandbox(wall=3) as runner:
        result = runner.run(harmless(tmp_path, misbehave="sleep"))
    assert result["ops"] == {} and "hang" in result["defect"]


def test_refusals_are_recorded_with_their_message(tmp_path, child):
    job = harmless(tmp_path)
    pathlib.Path(job["image"]).unlink()
    result = child.run(job)
    outcome, message = result["ops"]["info"]
    assert outcome == "refused" and message.startswith("ImageNotFoundError")
