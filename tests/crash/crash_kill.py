# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kill -9 at random moments during the image library's writing operations (issue #15, "Crash safety").

Each scenario builds its images once (a template directory), runs the operation unkilled once on a copy to
measure its duration and record the state it leaves ("after"), then for every kill: copies the template,
starts the operation in a child process (the library through its public API), sends SIGKILL after a seeded
random delay in [0, duration] (a quarter of the kills in the first 10 ms) and judges what is left:

- a new image (convert, create) is absent at its final path, or complete: ``qemu-img check`` clean and
  ``qemu-img compare`` equal to the expected content -> "absent" / "complete";
- an image changed in place passes ``qemu-img check`` with at most leaked clusters and reads as its state
  before or after the operation (virtual size, content, snapshots and their content) -> "before" / "after";
  when it does not pass, the library's next writable open must repair it, after which it must pass and read
  as before or after -> "repaired";
- the same operation is then run again to completion in the same directory: it must succeed (or refuse only
  because its work is already done), leave the "after" state, and no temporary file may remain.

Anything else is "FAILED", with the reason.  docs/crash-safety.md describes the windows and what the library
does about them.  ``make crash CRASH_KILLS=n`` runs this file; tests/unit/hardening/test_crash_kill.py runs a
few kills per scenario.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20
EARLY = 0.010          # "very early": the first 10 ms of the operation
EARLY_SHARE = 0.25     # share of the kills placed there
OUTCOMES = ("absent", "complete", "before", "after", "partial", "repaired", "missed", "FAILED")

# The child: imports the library (a collection path made of a symlink to this checkout), says "ready", runs the
# operation and prints its duration.  The parent kills it after "ready".
CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2, vdi, vmdk, raw  # noqa
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_check  # noqa
op = json.loads(sys.argv[2])
if op["name"] == "reopen":
    def function(path):
        diskimage.open_image(path, readonly=False).driver.close()
else:
    function = getattr(diskimage, op["name"])
sys.stdout.write("ready\n")
sys.stdout.flush()
start = time.monotonic()
try:
    function(*op["args"], **op["kwargs"])
    status = "ok"
except diskimage.ImageError as exc:
    status = "error " + str(exc).replace("\n", " ")
sys.stdout.write("%.6f %s\n" % (time.monotonic() - start, status))
sys.stdout.flush()
"""


# ------------------------------------------------------------------------------------------------ helpers
def _import_root():
    """A temporary directory where ansible_collections.kvm.storage is this checkout (as tests/unit/conftest.py)."""
    tmp = tempfile.mkdtemp(prefix="kvm-storage-crash-")
    os.makedirs(os.path.join(tmp, "ansible_collections", "kvm"))
    os.symlink(ROOT, os.path.join(tmp, "ansible_collections", "kvm", "storage"))
    atexit.register(shutil.rmtree, tmp, True)
    return tmp


_IMPORT_ROOT: List[str] = []


def import_root():
    if not _IMPORT_ROOT:
        _IMPORT_ROOT.append(_import_root())
    return _IMPORT_ROOT[0]


def run(*args, check=True):
    proc = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s%s" % (" ".join(map(str, args)), proc.returncode, proc.stdout,
                                                     proc.stderr))
    return proc


def qemu_io(path, fmt, commands):
    args = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    run(*(args + [path]))


def spread_writes(seed, size, chunks, chunk):
    """qemu-io write commands: ``chunks`` writes of ``chunk`` bytes at seeded offsets over ``size`` bytes."""
    rnd = random.Random(seed)
    slots = rnd.sample(range(size // chunk), chunks)
    return ["write -P 0x%02x %d %d" % (rnd.randrange(1, 256), slot * chunk, chunk) for slot in slots]


def qemu_check(path, fmt):
    """(clean, leaks only, summary) of qemu-img check."""
    proc = run("qemu-img", "check", "-f", fmt, "--output=json", path, check=False)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        return False, False, "qemu-img check failed (%d): %s" % (proc.returncode, proc.stderr.strip()[-300:])
    errors = result.get("check-errors", 0) + result.get("corruptions", 0)
    leaks = result.get("leaks", 0)
    summary = "check-errors %s corruptions %s leaks %s %s" % (
        result.get("check-errors", 0), result.get("corruptions", 0), leaks, proc.stderr.strip()[:300])
    return errors == 0 and leaks == 0, errors == 0, summary


def raw_digest(path, fmt, workdir, snapshot=None):
    out = os.path.join(workdir, ".crash-oracle.raw")
    args = ["qemu-img", "convert", "-f", fmt, "-O", "raw"]
    if snapshot is not None:
        args += ["-l", "snapshot.name=" + snapshot]
    run(*(args + [path, out]))
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for block in iter(lambda: f.read(4 * MIB), b""):
            digest.update(block)
    os.unlink(out)
    return digest.hexdigest()


def image_meta(path, fmt, workdir, leaks=False):
    """What qemu-img says of an image besides its content: virtual size, backing file, format options
    (without the corrupt bit), its snapshots with their content, and (``leaks``) its leaked clusters."""
    info = json.loads(run("qemu-img", "info", "-f", fmt, "--output=json", path).stdout)
    options = dict(info.get("format-specific", {}).get("data", {}))
    for volatile in ("corrupt", "cid", "parent-cid"):
        options.pop(volatile, None)
    snapshots = tuple(sorted((s["name"], raw_digest(path, fmt, workdir, s["name"]))
                             for s in info.get("snapshots", [])))
    options = json.dumps(options, sort_keys=True).replace(os.path.dirname(os.path.abspath(path)) + "/", "")
    meta = (info["virtual-size"], info.get("backing-filename"), options, snapshots)
    if leaks:
        result = json.loads(run("qemu-img", "check", "-f", fmt, "--output=json", path, check=False).stdout)
        meta += (result.get("leaks", 0),)
    return meta


def same_content(path, fmt, raw):
    return run("qemu-img", "compare", "-q", "-f", fmt, "-F", "raw", path, raw, check=False).returncode == 0


@dataclasses.dataclass
class Reference:
    """An image's state before and after the unkilled operation: its meta and a raw copy of its content."""

    name: str
    fmt: str
    leaks: bool
    meta: Dict[str, tuple]
    raw: Dict[str, str]

    def which(self, d, workdir):
        """The states ("before", "after") the image in directory ``d`` is in (none, one, or both)."""
        path = os.path.join(d, self.name)
        meta = image_meta(path, self.fmt, workdir, self.leaks)
        return [w for w in ("after", "before") if meta == self.meta[w] and same_content(path, self.fmt, self.raw[w])]

    def reads_as(self, d, workdir):
        """The states whose content (whatever the meta) the image in ``d`` reads as."""
        path = os.path.join(d, self.name)
        return [w for w in ("after", "before") if same_content(path, self.fmt, self.raw[w])]


def reference(name, fmt, leaks, before_dir, after_dir, workdir):
    ref = Reference(name, fmt, leaks, {}, {})
    for which, d in (("before", before_dir), ("after", after_dir)):
        ref.meta[which] = image_meta(os.path.join(d, name), fmt, workdir, leaks)
        ref.raw[which] = os.path.join(workdir, "%s-%s.raw" % (which, name))
        run("qemu-img", "convert", "-f", fmt, "-O", "raw", os.path.join(d, name), ref.raw[which])
    return ref


def copy_tree(src, dst):
    run("cp", "-a", "--sparse=always", src, dst)


# ---------------------------------------------------------------------------------------------- scenarios
@dataclasses.dataclass
class Scenario:
    """One operation on one format.

    setup(d): builds the images in directory d.  op(d): (function name, args, kwargs) of the library call.
    new: name of the image the operation creates (a new image) -- else ``target`` is changed in place.
    view_fmt: the format of ``target`` when it is not ``fmt`` (commit: the qcow2 top, read through its chain,
    must read as before or after, which are the same).
    progress: the image whose state says how far the operation got (commit: the base; default: ``target``);
    one that reads as neither its state before nor after is "partial" -- and fine only where ``partial`` says so
    (commit: the base holds part of the top's data; repair: part of the leaks are fixed).
    leaks: the leaked clusters are part of the state (repair).
    extra_checked: more images that must pass qemu-img check with at most leaks (commit: the base).
    done: words of the ImageError a rerun may refuse with when the work is already done.
    """

    name: str
    fmt: str
    setup: Callable[[str], None]
    op: Callable[[str], Tuple[str, list, dict]]
    new: Optional[str] = None
    target: Optional[str] = None
    view_fmt: Optional[str] = None
    progress: Optional[Tuple[str, str]] = None
    partial: bool = False
    leaks: bool = False
    extra_checked: Tuple[Tuple[str, str], ...] = ()
    done: Tuple[str, ...] = ()


SIZE = 64 * MIB      # virtual size of the images (set_size); data written over 3/8 of it, in 512 KiB pieces


def set_size(size):
    """Make the scenarios' images ``size`` bytes (a multiple of 4 MiB) instead of 64 MiB."""
    global SIZE  # pylint: disable=global-statement
    SIZE = size


def _chunks(share):
    return max(2, SIZE // (512 * 1024) * share // 128)


def _qcow2_with_data(d, name="disk.qcow2", seed=1, share=48, options="cluster_size=65536"):
    path = os.path.join(d, name)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, str(SIZE))
    qemu_io(path, "qcow2", spread_writes(seed, SIZE, _chunks(share), 512 * 1024))
    return path


def _raw_with_data(d, name, seed):
    path = os.path.join(d, name)
    run("qemu-img", "create", "-q", "-f", "raw", path, str(SIZE))
    qemu_io(path, "raw", spread_writes(seed, SIZE, _chunks(48), 512 * 1024))
    return path


def _setup_source(d):
    _qcow2_with_data(d, "src.qcow2", seed=2)


def _setup_snapshots(d):
    path = _qcow2_with_data(d, seed=3)
    run("qemu-img", "snapshot", "-c", "s0", path)
    qemu_io(path, "qcow2", spread_writes(4, SIZE, _chunks(24), 512 * 1024))


def _setup_chain(base_fmt):
    def setup(d):
        base = os.path.join(d, "base." + base_fmt)
        raw_base = _raw_with_data(d, ".base-data.raw", 5)
        run("qemu-img", "convert", "-f", "raw", "-O", base_fmt, raw_base, base)
        os.unlink(raw_base)
        top = os.path.join(d, "top.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base." + base_fmt, "-F", base_fmt, top)
        qemu_io(top, "qcow2", spread_writes(6, SIZE, _chunks(40), 512 * 1024))
    return setup


def _setup_rebase(d):
    _setup_chain("qcow2")(d)
    _qcow2_with_data(d, "base2.qcow2", seed=7)


def _setup_leaks(d):
    """An image with 256 leaked clusters (16 MiB of data no table reaches, refcount 1)."""
    path = _qcow2_with_data(d, seed=8)
    with open(path, "r+b") as f:
        header = f.read(104)
        cluster_bits, = struct.unpack_from(">I", header, 20)
        reftable, = struct.unpack_from(">Q", header, 48)
        f.seek(reftable)
        refblock, = struct.unpack(">Q", f.read(8))
        cluster = 1 << cluster_bits
        end = -(-os.fstat(f.fileno()).st_size // cluster)
        f.seek(end * cluster)
        f.write(b"\xa5" * (256 * cluster))
        f.seek(refblock + 2 * end)
        f.write(struct.pack(">256H", *([1] * 256)))


def _convert(fmt):
    return lambda d: ("convert", [os.path.join(d, "src.qcow2"), os.path.join(d, "out." + fmt), fmt], {})


def _create(fmt, options):
    return lambda d: ("create", [os.path.join(d, "new." + fmt), fmt, str(SIZE * 4)], {"options": options})


def _commit(d):
    return ("commit", [os.path.join(d, "top.qcow2")], {})


def scenarios():
    """Every scenario, by name."""
    items = []
    for fmt, create_options in (("qcow2", {"preallocation": "metadata"}), ("vdi", {"static": True}),
                                ("vmdk", {"subformat": "monolithicSparse"})):
        items.append(Scenario("%s/convert" % fmt, fmt, _setup_source, _convert(fmt), new="out." + fmt,
                              done=("already exists",)))
        items.append(Scenario("%s/create" % fmt, fmt, lambda d: None, _create(fmt, create_options),
                              new="new." + fmt, done=("already exists",)))
        items.append(Scenario("%s/commit" % fmt, fmt, _setup_chain(fmt), _commit, target="top.qcow2",
                              view_fmt="qcow2", progress=("base." + fmt, fmt), partial=True,
                              extra_checked=(("base." + fmt, fmt),)))
    items += [
        Scenario("qcow2/resize", "qcow2", _qcow2_with_data,
                 lambda d: ("resize", [os.path.join(d, "disk.qcow2"), str(2 * SIZE)], {"preallocation": "full"}),
                 target="disk.qcow2"),
        Scenario("qcow2/rebase", "qcow2", _setup_rebase,
                 lambda d: ("rebase", [os.path.join(d, "top.qcow2"), "base2.qcow2", "qcow2"], {}),
                 target="top.qcow2"),
        Scenario("qcow2/amend", "qcow2", _qcow2_with_data,
                 lambda d: ("amend", [os.path.join(d, "disk.qcow2"), {"refcount_bits": 64}], {}),
                 target="disk.qcow2"),
        Scenario("qcow2/snapshot_create", "qcow2", _setup_snapshots,
                 lambda d: ("snapshot_create", [os.path.join(d, "disk.qcow2"), "s1"], {}),
                 target="disk.qcow2", done=("already exists",)),
        Scenario("qcow2/snapshot_apply", "qcow2", _setup_snapshots,
                 lambda d: ("snapshot_apply", [os.path.join(d, "disk.qcow2"), "s0"], {}), target="disk.qcow2"),
        Scenario("qcow2/snapshot_delete", "qcow2", _setup_snapshots,
                 lambda d: ("snapshot_delete", [os.path.join(d, "disk.qcow2"), "s0"], {}),
                 target="disk.qcow2", done=("no snapshot named",)),
        Scenario("qcow2/repair", "qcow2", _setup_leaks,
                 lambda d: ("check", [os.path.join(d, "disk.qcow2")], {"repair": "all"}), target="disk.qcow2",
                 leaks=True, partial=True),
    ]
    return collections.OrderedDict((s.name, s) for s in items)


# ------------------------------------------------------------------------------------------------ running
def start_child(op):
    name, args, kwargs = op
    return subprocess.Popen([sys.executable, "-c", CHILD, import_root(),
                             json.dumps({"name": name, "args": args, "kwargs": kwargs})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def run_op(op):
    """Run the operation to completion: (duration, status)."""
    child = start_child(op)
    out, err = child.communicate()
    lines = out.split("\n")
    if child.returncode != 0 or len(lines) < 2 or lines[0] != "ready":
        return None, "crashed (%s): %s%s" % (child.returncode, out, err.strip()[-800:])
    duration, status = lines[1].split(" ", 1)
    return float(duration), status


def run_killed(op, delay):
    """Start the operation and SIGKILL it ``delay`` seconds after it started; True when it was killed."""
    child = start_child(op)
    ready = child.stdout.readline()
    if ready != "ready\n":
        child.communicate()
        raise RuntimeError("the child did not start: %r %s" % (ready, child.stderr.read()))
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    return child.returncode == -signal.SIGKILL


@dataclasses.dataclass
class Prepared:
    scenario: Scenario
    template: str
    duration: float
    view: Optional[Reference]          # in place: the image that must read as before or after
    progress: Optional[Reference]      # in place: the image that says how far the operation got
    expected_raw: Optional[str]        # new image: its expected content


def prepare(scenario, workdir, timing_runs=2):
    """Template, unkilled runs (duration, "after" state) and the "before" state."""
    template = os.path.join(workdir, "template")
    os.mkdir(template)
    scenario.setup(template)
    done = os.path.join(workdir, "reference")
    copy_tree(template, done)
    duration, status = run_op(scenario.op(done))
    if status != "ok":
        raise RuntimeError("%s: the unkilled run failed: %s" % (scenario.name, status))
    # the shortest unkilled run: the first one also fills the page cache
    for dummy in range(timing_runs - 1):
        again = os.path.join(workdir, "again")
        copy_tree(template, again)
        duration = min(duration, run_op(scenario.op(again))[0] or duration)
        shutil.rmtree(again)
    view = progress = expected_raw = None
    if scenario.new:
        expected_raw = os.path.join(workdir, "expected.raw")
        run("qemu-img", "convert", "-f", scenario.fmt, "-O", "raw", os.path.join(done, scenario.new), expected_raw)
    else:
        view = reference(scenario.target, scenario.view_fmt or scenario.fmt, scenario.leaks, template, done, workdir)
        progress = view
        if scenario.progress:
            progress = reference(scenario.progress[0], scenario.progress[1], False, template, done, workdir)
    shutil.rmtree(done)
    return Prepared(scenario, template, duration, view, progress, expected_raw)


def judge_new(prepared, d):
    scenario = prepared.scenario
    path = os.path.join(d, scenario.new)
    if not os.path.lexists(path):
        return "absent", ""
    clean, dummy, summary = qemu_check(path, scenario.fmt)
    if not clean:
        return "FAILED", "new image at its final path fails qemu-img check: " + summary
    proc = run("qemu-img", "compare", "-f", scenario.fmt, "-F", "raw", path, prepared.expected_raw, check=False)
    if proc.returncode != 0:
        return "FAILED", "new image at its final path differs from the expected content: " + proc.stdout.strip()
    return "complete", ""


def judge_in_place(prepared, d, workdir):
    scenario = prepared.scenario
    repaired = False
    checked = [(scenario.target, scenario.view_fmt or scenario.fmt)] + list(scenario.extra_checked)
    for name, fmt in checked:
        path = os.path.join(d, name)
        dummy, passes, summary = qemu_check(path, fmt)
        if passes:
            continue
        # a window named in docs/crash-safety.md: the next writable open must repair it
        duration, status = run_op(("reopen", [path], {}))
        dummy, passes, summary2 = qemu_check(path, fmt)
        if duration is None or status != "ok" or not passes:
            return "FAILED", "%s fails qemu-img check (%s) and the next writable open did not repair it (%s; %s)" % (
                name, summary, status, summary2)
        repaired = True
    if not prepared.view.reads_as(d, workdir):
        return "FAILED", "%s reads neither as before nor as after the operation" % scenario.target
    which = prepared.progress.which(d, workdir)
    if not which:
        if not scenario.partial:
            return "FAILED", "%s is neither in its state before nor after the operation" % prepared.progress.name
        which = ["partial"]
    return ("repaired" if repaired else which[0]), "(%s)" % which[0] if repaired else ""


def one_kill(prepared, delay, workdir, index):
    """Kill once; (outcome, detail)."""
    scenario = prepared.scenario
    d = os.path.join(workdir, "kill%d" % index)
    copy_tree(prepared.template, d)
    try:
        killed = run_killed(scenario.op(d), delay)
        if scenario.new:
            outcome, detail = judge_new(prepared, d)
        else:
            outcome, detail = judge_in_place(prepared, d, workdir)
        if outcome == "FAILED":
            return outcome, detail
        if not killed:
            outcome = "missed"
        # the next run of the same operation, to completion, in the same directory
        duration, status = run_op(scenario.op(d))
        if duration is None or (status != "ok" and not any(w in status for w in scenario.done)):
            return "FAILED", "the rerun after the kill failed: %s" % status
        if scenario.new:
            again, detail = judge_new(prepared, d)
            if again != "complete":
                return "FAILED", "after the rerun the new image is %s %s" % (again, detail)
        elif prepared.progress.which(d, workdir)[:1] != ["after"] or "after" not in prepared.view.reads_as(d, workdir):
            return "FAILED", "after the rerun the image is not in its state after the operation"
        expected = set(os.listdir(prepared.template)) | ({scenario.new} if scenario.new else set())
        left = sorted(set(os.listdir(d)) - expected)
        if left:
            return "FAILED", "left behind after the rerun: %s" % ", ".join(left)
        return outcome, detail
    finally:
        shutil.rmtree(d, ignore_errors=True)


def delays(scenario_name, duration, kills, seed):
    """Seeded kill delays: EARLY_SHARE of them in the first 10 ms, the others spread over [0, duration]."""
    rnd = random.Random(zlib.crc32(scenario_name.encode()) ^ seed)
    out = []
    for i in range(kills):
        if i % int(1 / EARLY_SHARE) == 0:
            out.append(rnd.uniform(0, min(EARLY, duration)))
        else:
            out.append(rnd.uniform(0, duration))
    return out


def run_scenario(scenario, kills, seed, workdir, log=None, timing_runs=2):
    """Kill ``scenario`` ``kills`` times: a Counter of outcomes and a list of (delay, outcome, detail) failures."""
    os.makedirs(workdir, exist_ok=True)
    prepared = prepare(scenario, workdir, timing_runs)
    counts = collections.Counter()
    failures = []
    for index, delay in enumerate(delays(scenario.name, prepared.duration, kills, seed)):
        outcome, detail = one_kill(prepared, delay, workdir, index)
        counts[outcome] += 1
        if outcome == "FAILED":
            failures.append((delay, outcome, detail))
        if log is not None:
            log("%-24s kill %3d at %7.2f ms of %7.2f ms: %s %s" % (
                scenario.name, index, delay * 1000, prepared.duration * 1000, outcome, detail))
    return counts, failures, prepared.duration


def table(results):
    """The outcome table: one row per scenario, one column per outcome."""
    lines = ["%-24s %6s %9s " % ("operation", "kills", "duration") + " ".join("%8s" % o for o in OUTCOMES)]
    total = collections.Counter()
    for name, (counts, dummy, duration) in results.items():
        total.update(counts)
        lines.append("%-24s %6d %7.0fms " % (name, sum(counts.values()), duration * 1000)
                     + " ".join("%8d" % counts[o] for o in OUTCOMES))
    lines.append("%-24s %6d %9s " % ("total", sum(total.values()), "") + " ".join("%8d" % total[o] for o in OUTCOMES))
    return "\n".join(lines)


def _print(line):
    print(line, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--kills", type=int, default=210, help="kills in all, shared among the scenarios")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--only", action="append", help="scenario names (default: all)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--size-mib", type=int, default=64, help="virtual size of the images (MiB)")
    parser.add_argument("--tmpdir", help="where the images go (default: the system's temporary directory)")
    args = parser.parse_args(argv)
    set_size(args.size_mib * MIB)
    chosen = [s for name, s in scenarios().items() if not args.only or name in args.only]
    per = max(1, -(-args.kills // len(chosen)))
    results: Dict[str, tuple] = collections.OrderedDict()
    failures = []
    base = tempfile.mkdtemp(prefix="kvm-storage-crash-run-", dir=args.tmpdir)
    try:
        for scenario in chosen:
            log = _print if args.verbose else None
            counts, failed, duration = run_scenario(scenario, per, args.seed,
                                                    os.path.join(base, scenario.name.replace("/", "-")), log)
            results[scenario.name] = (counts, failed, duration)
            failures += [(scenario.name,) + f for f in failed]
            print("%-24s %s" % (scenario.name, dict(counts)), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(results))
    for name, delay, dummy, detail in failures:
        print("FAILED %s (kill at %.2f ms): %s" % (name, delay * 1000, detail))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
