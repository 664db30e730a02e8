# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A short, bounded pass of the fuzzer of every format (tests/fuzz, issue #15): no finding.

Each format's fuzzer (atheris, coverage-guided) runs a fixed number of inputs with a fixed libFuzzer seed from
seeds made at run time; any exception other than ImageError, a hang beyond the per-input timeout or a memory
bomb beyond the RSS limit fails the test, naming the saved input and its traceback.  ``make fuzz`` runs the same
fuzzers for minutes per format (docs/testing.md).  Budget: under 60 s for all formats with ``pytest -n 2``.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import components

FUZZ = pathlib.Path(__file__).resolve().parents[2] / "fuzz"
sys.path.insert(0, str(FUZZ))
import seeds  # noqa: E402  pylint: disable=wrong-import-position,import-error

try:
    import atheris  # noqa: F401  pylint: disable=unused-import,import-error
    HAVE_ATHERIS = True
except ImportError:
    HAVE_ATHERIS = False

# Inputs per format (its seeds always run first, whatever their number), and the bounds of one input.
RUNS = 40
TIMEOUT_SECONDS = 30     # wall time, on a loaded CI machine; make fuzz stops at 10 s
RSS_LIMIT_MB = 2048

pytestmark = [
    components.needs(HAVE_ATHERIS, "atheris", "the fuzzer, from requirements-dev.txt"),
    components.needs(shutil.which("qemu-img") is not None, "qemu-img", "it writes the seed images"),
]


def fuzz(fmt, out, runs):
    """Run the fuzzer of ``fmt`` for ``runs`` inputs (after its seeds): (exit status, output)."""
    command = [sys.executable, str(FUZZ / "fuzz_image.py"), "--format", fmt, "--out", str(out),
               "-seed=1", "-timeout=%d" % TIMEOUT_SECONDS, "-rss_limit_mb=%d" % RSS_LIMIT_MB, "-len_control=0",
               "-runs=%d" % runs]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                          universal_newlines=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    return proc.returncode, proc.stdout


def findings_text(where):
    """Every finding saved in ``where``, with its traceback."""
    # (libFuzzer's slow-unit-*, an input slower than 10 s that did not time out, says how loaded the machine is)
    found = sorted(path for path in where.iterdir()
                   if not path.name.endswith(".txt") and not path.name.startswith("slow-unit-")) if where.is_dir() else []
    texts = []
    for path in found:
        text = path.with_name(path.name + ".txt")
        texts.append("%s\n%s" % (path, text.read_text() if text.exists() else "(libFuzzer stopped on it)"))
    return texts


@pytest.mark.parametrize("fmt", seeds.FORMATS)
def test_short_fuzz_pass_finds_nothing(fmt, tmp_path):
    status, output = fuzz(fmt, tmp_path, RUNS)
    found = findings_text(tmp_path / fmt / "findings")
    assert not found, "the %s fuzzer found:\n%s" % (fmt, "\n".join(found))
    assert status == 0, "the %s fuzzer stopped (%d):\n%s" % (fmt, status, output[-3000:])
    assert "DONE" in output, output[-3000:]


def test_a_finding_fails_the_pass(tmp_path):
    """The target reports any exception but ImageError as a finding, with its input and traceback."""
    sys.path.insert(0, str(FUZZ))
    import fuzz_image  # pylint: disable=import-outside-toplevel,import-error
    target = fuzz_image.Target("qcow2", tmp_path / "findings")
    target.operations = lambda: (("boom", lambda: {}["missing"]), ("refused", lambda: target.probe("/nonexistent")))
    found = target.run(b"QFI\xfb")
    assert len(found) == 1 and found[0].startswith("boom KeyError at test_fuzz_short.py:"), found
    texts = findings_text(tmp_path / "findings")
    assert len(texts) == 1 and "KeyError: 'missing'" in texts[0]


@pytest.mark.parametrize("fmt", ["vhdx", "qcow2"])
def test_regression_entry_rebuilds_the_image_the_fuzzer_wrote(fmt, tmp_path):
    """regression.py's entry for a finding, as fuzz_regressions.py builds it, is the file the target wrote."""
    import ast  # pylint: disable=import-outside-toplevel
    import regression  # pylint: disable=import-outside-toplevel,import-error
    from hardening.hostile import fuzz_regressions  # pylint: disable=import-outside-toplevel
    image = b"\x01" * 700 + bytes(5000) + b"\x02" * 3
    finding = seeds.encode_sparse(image) if fmt in seeds.SPARSE else image
    name, corpus_fmt, packed = ast.literal_eval(regression.entry(fmt, finding, "example").strip().rstrip(","))
    case = fuzz_regressions._case(name, corpus_fmt, packed)  # pylint: disable=protected-access
    (tmp_path / "case").mkdir()
    built = case.build(tmp_path / "case")
    assert (case.name, case.source) == ("%s/fuzz-example" % fmt, "fuzz")
    assert built.read_bytes() == image
    assert sorted(path.name for path in (tmp_path / "case").iterdir()) == sorted([built.name] + list(seeds.AUX_FILES))


def test_regressions_write_the_files_the_fuzz_target_writes():
    from hardening.hostile import fuzz_regressions  # pylint: disable=import-outside-toplevel
    assert fuzz_regressions.AUX_FILES == seeds.AUX_FILES
    for fmt in seeds.FORMATS:
        assert fuzz_regressions.INPUT_NAME.get(fmt, "image.img") == seeds.input_name(fmt), fmt
