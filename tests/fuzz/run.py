# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``make fuzz``: run the fuzzer of each format in turn for a given time, then print per format the CPU time,
executions, coverage (libFuzzer's cov/ft: code edges and features reached) and findings.

    python tests/fuzz/run.py [--seconds 300] [--formats "qcow2 vmdk"] [--out /var/tmp/kvm-storage-fuzz]

One fuzzer runs at a time.  The corpus of each format stays in ``<out>/<format>/corpus`` (a later run goes on
from it), findings in ``<out>/<format>/findings`` (``finding-*`` with a ``.txt`` traceback, and libFuzzer's
``timeout-*``/``oom-*``/``crash-*``; libFuzzer's ``slow-unit-*``, an input slower than 10 s that did not time
out, is no finding: on a loaded machine the seeds alone can be), each run's output in ``<out>/<format>/log-*.txt`` and the table in
``<out>/summary.json``.  A run that stops on a timeout or a memory bomb is restarted for the rest of its time.
Exit status 1 when anything was found.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import seeds  # noqa: E402  pylint: disable=wrong-import-position

# Per input: libFuzzer stops the run (and saves the input) beyond these.
TIMEOUT_SECONDS = 30     # wall time: a loaded machine makes a sound input slow (vhdx CRC-32C in Python)
RSS_LIMIT_MB = 2048

_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)")
_EXECUTED = re.compile(r"^stat::number_of_executed_units: (\d+)")


def fuzz_once(fmt, out, seconds, log):
    """One libFuzzer run of at most ``seconds``: (executions, cov, ft, cpu seconds, exit status)."""
    command = [sys.executable, str(HERE / "fuzz_image.py"), "--format", fmt, "--out", str(out),
               "-max_total_time=%d" % max(1, int(seconds)), "-timeout=%d" % TIMEOUT_SECONDS,
               "-rss_limit_mb=%d" % RSS_LIMIT_MB, "-len_control=0", "-print_final_stats=1", "-print_pcs=0"]
    with open(log, "a") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        dummy, status, usage = os.wait4(proc.pid, 0)
    executions = cov = ft = 0
    with open(log, errors="replace") as output:
        for line in output:
            match = _STATUS.match(line)
            if match:
                executions, cov, ft = int(match.group(1)), int(match.group(2)), int(match.group(3))
            match = _EXECUTED.match(line)
            if match:
                executions = int(match.group(1))
    return executions, cov, ft, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def findings(out, fmt):
    """The files of the findings of ``fmt`` (inputs, without their .txt)."""
    where = out / fmt / "findings"
    if not where.is_dir():
        return []
    return sorted(path.name for path in where.iterdir()
                  if not path.name.endswith(".txt") and path.name.startswith(("finding-", "crash-", "timeout-",
                                                                             "oom-", "leak-")))


def fuzz_format(fmt, out, seconds):
    """Fuzz ``fmt`` for ``seconds`` of wall time (restarting after a stop): its row of the table."""
    (out / fmt).mkdir(parents=True, exist_ok=True)
    before = set(findings(out, fmt))
    deadline = time.monotonic() + seconds
    row = {"format": fmt, "runs": 0, "executions": 0, "cov": 0, "ft": 0, "cpu_seconds": 0.0, "stops": []}
    while True:
        left = deadline - time.monotonic()
        if left < 2:
            break
        log = out / fmt / ("log-%s-%d.txt" % (time.strftime("%Y%m%dT%H%M%S"), row["runs"]))
        executions, cov, ft, cpu, status = fuzz_once(fmt, out, left, log)
        row["runs"] += 1
        row["executions"] += executions
        row["cov"], row["ft"] = max(row["cov"], cov), max(row["ft"], ft)
        row["cpu_seconds"] += cpu
        if status != 0:
            row["stops"].append("exit %d (%s)" % (status, log.name))
            if executions == 0 and row["runs"] > 1:
                break       # it stops at once: restarting would only repeat that
    row["cpu_seconds"] = round(row["cpu_seconds"], 1)
    row["new_findings"] = sorted(set(findings(out, fmt)) - before)
    row["findings"] = findings(out, fmt)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=300, help="wall time per format (default 300)")
    parser.add_argument("--formats", default="", help="space- or comma-separated; default: every format (%s)"
                        % " ".join(seeds.FORMATS))
    parser.add_argument("--out", default="/var/tmp/kvm-storage-fuzz")
    args = parser.parse_args(argv)
    formats = [f for f in re.split(r"[\s,]+", args.formats) if f] or list(seeds.FORMATS)
    unknown = [f for f in formats if f not in seeds.FORMATS]
    if unknown:
        parser.error("unknown format(s) %s (known: %s)" % (", ".join(unknown), " ".join(seeds.FORMATS)))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for fmt in formats:
        print("fuzzing %s for %d s ..." % (fmt, args.seconds), flush=True)
        row = fuzz_format(fmt, out, args.seconds)
        rows.append(row)
        print("  %(format)s: %(executions)d executions, cov %(cov)d ft %(ft)d, %(cpu_seconds).0f s CPU, " % row
              + "%d finding(s) (%d new)" % (len(row["findings"]), len(row["new_findings"])), flush=True)
        (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n%-10s %9s %11s %6s %6s %9s" % ("format", "CPU s", "executions", "cov", "ft", "findings"))
    for row in rows:
        print("%-10s %9.0f %11d %6d %6d %9d" % (row["format"], row["cpu_seconds"], row["executions"], row["cov"],
                                                row["ft"], len(row["findings"])))
    print("%-10s %9.0f %11d" % ("total", sum(r["cpu_seconds"] for r in rows), sum(r["executions"] for r in rows)))
    for row in rows:
        for name in row["findings"]:
            print("finding: %s" % (out / row["format"] / "findings" / name))
    return 1 if any(row["findings"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
