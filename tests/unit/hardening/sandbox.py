# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run hostile images through the image library in a child process, under limits (issue #15).

The parent (``run_cases``) starts one child (the venv's python running this file) for a batch of
cases; for each case the child:

* raises its CPU soft limit to what it has used so far plus ``CPU_SECONDS`` (RLIMIT_CPU: the kernel
  sends SIGXCPU past it, which kills the child) under an address-space limit of ``ADDRESS_SPACE``
  (RLIMIT_AS, set once: a bomb that allocates past it gets a MemoryError);
* runs the operations (probe, info, check, map, compare, convert to raw and to qcow2) through the
  library's public API, with only the case's directory as its world;
* records every file the process opens, lists, links or removes (``sys.addaudithook``, installed
  after the library and the stdlib modules it uses are imported): a path outside the case's
  directory and the child's output directory (and outside Python's own module files, which a late
  import reads) is a defect.

Each operation ends as "ok" (it returned), "refused" (an ImageError subclass, with its message) or
"defect" (any other exception, a MemoryError, an open outside the policy); a case whose child dies
(signal, CPU limit) or runs past the wall-clock guard is a defect too.  The parent restarts a child for
the rest of a batch after a death.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

CPU_SECONDS = 5
ADDRESS_SPACE = 256 << 20
WALL_SECONDS = 30          # per case, beyond the CPU limit: a child blocked without using CPU
# A child whose address space grew past this after a case is replaced before the next one; and a case that
# ran out of address space in a child that had run cases before is run again in a new child: every case
# gets (nearly) the whole ADDRESS_SPACE, whatever the cases before it left behind.
RESTART_ABOVE = 160 << 20

OPERATIONS = ("probe", "info", "check", "map", "compare", "convert_raw", "convert_qcow2")

_HERE = pathlib.Path(__file__).resolve()


# ---------------------------------------------------------------------------------------------- parent

def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # glibc reserves 64 MiB of address space per thread arena: RLIMIT_AS would count the reservations of
    # convert's threads (64 MiB each, of nothing) against the 256 MiB; one arena keeps the limit on real use.
    env["MALLOC_ARENA_MAX"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def _start_child():
    errors = tempfile.TemporaryFile()  # pylint: disable=consider-using-with  # closed with the child
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-S", str(_HERE), "--child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=errors, env=_child_env(), cwd="/", start_new_session=True)
    proc.error_file = errors
    return proc


def _death(proc):
    code = proc.wait()
    proc.error_file.seek(0)
    stderr = proc.error_file.read().decode("utf-8", "replace")[-2000:]
    if code < 0:
        name = signal.Signals(-code).name  # pylint: disable=no-member
        return "child killed by %s%s" % (name, " (CPU limit)" if -code == signal.SIGXCPU else "")
    return "child exited with status %d: %s" % (code, stderr)


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


class Sandbox:
    """A child that runs jobs one after the other (started again after a death or a hang)."""

    def __init__(self, wall=WALL_SECONDS):
        self.wall = wall
        self.proc = None

    def run(self, job):
        """The result of ``job`` (a dict: image, fmt, case_dir, out_dir, and optionally ops, key_secret,
        trusted, cpu): {"ops": {operation: [outcome, message]}, "defect": None or a sentence about the
        whole case (the child's death, a hang)}."""
        fresh = self.proc is None
        result = self._run(job)
        out_of_memory = any(outcome == "defect" and message.startswith("MemoryError")
                            for outcome, message in result["ops"].values())
        if out_of_memory and not fresh:
            self.close()
            result = self._run(job)
        return result

    def _run(self, job):
        if self.proc is None:
            self.proc = _start_child()
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        line = _read_line(self.proc, self.wall)
        if line is None:
            _kill(self.proc)
            self._forget()
            return {"ops": {}, "defect": "no answer within %d s of wall-clock time (a hang)" % self.wall}
        if not line:
            death = _death(self.proc)
            self._forget()
            return {"ops": {}, "defect": death}
        result = json.loads(line)
        if result.pop("address_space", 0) > RESTART_ABOVE:
            self.close()
        return result

    def _forget(self):
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.error_file):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None

    def close(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=self.wall)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
        self._forget()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def run_cases(jobs, wall=WALL_SECONDS):
    """Results of ``jobs`` (see ``Sandbox.run``), run in one child (another after a death)."""
    with Sandbox(wall) as sandbox:
        return [sandbox.run(job) for job in jobs]


def run_case(job, wall=WALL_SECONDS):
    """The result of one job (see ``Sandbox.run``)."""
    return run_cases([job], wall)[0]


def _read_line(proc, wall):
    """One line from the child, b"" when it died, None past ``wall`` seconds."""
    import selectors  # pylint: disable=import-outside-toplevel
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + wall
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return None
            return proc.stdout.readline()


# ----------------------------------------------------------------------------------------------- child

class _Policy:
    """Paths the child may touch; every touch outside them is recorded as a violation."""

    # events whose first argument is a path the process reads, lists or changes
    EVENTS = ("open", "os.listdir", "os.scandir", "os.symlink", "os.link", "os.remove", "os.rename",
              "os.truncate", "os.chmod", "os.chown", "os.mkdir", "os.rmdir", "os.utime", "shutil.copyfile",
              "shutil.rmtree")

    def __init__(self, module_dirs):
        self.allowed = ()
        self.module_dirs = tuple(module_dirs)
        self.violations = []
        self.active = False

    def allow(self, dirs):
        self.allowed = tuple(os.path.realpath(d) for d in dirs)
        self.violations = []

    def _inside(self, path, dirs):
        return any(path == d or path.startswith(d + os.sep) for d in dirs)

    # events that act on a link itself, not on what it points to
    ON_THE_LINK = ("os.symlink", "os.link", "os.remove", "os.rename", "os.mkdir", "os.rmdir", "shutil.rmtree")

    def permitted(self, event, path):
        absolute = os.path.abspath(path)
        if event in self.ON_THE_LINK:
            real = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
        else:
            # an open follows symbolic links: a link in the case's directory that leads out of it is outside
            real = os.path.realpath(absolute)
        if self._inside(real, self.allowed):
            return True
        # a late import reads module files and lists the directories of sys.path
        if event in ("open", "os.listdir", "os.scandir") and self._inside(real, self.module_dirs):
            return event != "open" or real.endswith((".py", ".pyc", ".so")) or os.path.isdir(real)
        return False

    def hook(self, event, args):
        if not self.active or event not in self.EVENTS:
            return
        paths = [args[0]] if args else []
        if event in ("os.symlink", "os.link", "os.rename") and len(args) > 1:
            paths.append(args[1])
        for path in paths:
            if isinstance(path, int) or path is None:
                continue  # a file descriptor: its opening was recorded
            path = os.fsdecode(path)
            self.active = False  # realpath below must not recurse into the hook
            try:
                if not self.permitted(event, path):
                    self.violations.append("%s %s" % (event, path))
            finally:
                self.active = True


def _preload():
    """Import the library (every module of it) and what it imports late, before the hook."""
    import importlib  # pylint: disable=import-outside-toplevel
    import pkgutil  # pylint: disable=import-outside-toplevel
    package = importlib.import_module("ansible_collections.kvm.storage.plugins.module_utils.diskimage")
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
    for name in ("zlib", "bz2", "lzma", "hashlib", "hmac", "tempfile", "tarfile", "xml.etree.ElementTree",
                 "plistlib", "base64", "uuid", "concurrent.futures", "concurrent.futures.thread", "threading",
                 "encodings.utf_16", "encodings.utf_16_le", "encodings.utf_16_be", "encodings.latin_1",
                 "encodings.ascii", "encodings.idna", "selectors", "signal", "traceback", "resource", "json"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    return package


def _operations(lib, job):
    image, fmt, out = job["image"], job.get("fmt"), job["out_dir"]
    # raw cases test probing itself: the library is asked without a format
    open_fmt = None if fmt in (None, "raw", "ova") else fmt
    extra = {}
    if job.get("trusted"):
        extra["trusted_files"] = job["trusted"]
    convert_extra = dict(extra, src_fmt=open_fmt)
    if job.get("key_secret"):
        convert_extra["key_secret"] = job["key_secret"]
    compare_extra = dict(extra, fmt_a=open_fmt, fmt_b=open_fmt)
    if job.get("key_secret"):
        compare_extra["key_secret"] = job["key_secret"]
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import probe as probing  # pylint: disable=import-outside-toplevel
    return {
        "probe": lambda: probing.probe(image),
        "info": lambda: lib.info(image, fmt=open_fmt, backing_chain=True, **extra),
        "check": lambda: lib.check(image, fmt=open_fmt, **extra),
        "map": lambda: lib.map(image, fmt=open_fmt, **extra),
        "compare": lambda: lib.compare(image, image, **compare_extra),
        "convert_raw": lambda: lib.convert(image, os.path.join(out, "out.raw"), "raw", **convert_extra),
        "convert_qcow2": lambda: lib.convert(image, os.path.join(out, "out.qcow2"), "qcow2", **convert_extra),
    }


def _run_job(lib, policy, job):
    import resource  # pylint: disable=import-outside-toplevel
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (used + job.get("cpu", CPU_SECONDS), resource.RLIM_INFINITY))
    policy.allow([job["case_dir"], job["out_dir"]])
    results = {}
    operations = _operations(lib, job)
    for name in job.get("ops") or OPERATIONS:
        policy.violations = []
        policy.active = True
        try:
            _run_test_hook(job, name)
            operations[name]()
            outcome = ["ok", ""]
        except lib.ImageError as exc:
            outcome = ["refused", "%s: %s" % (type(exc).__name__, exc)]
        except MemoryError:
            outcome = ["defect", "MemoryError (address-space limit)"]
        except BaseException as exc:  # pylint: disable=broad-except
            import traceback  # pylint: disable=import-outside-toplevel
            outcome = ["defect", "%s: %s\n%s" % (type(exc).__name__, exc, traceback.format_exc()[-1500:])]
        finally:
            policy.active = False
        if policy.violations:
            outcome = ["defect", "outside the policy: %s (operation: %s %s)"
                       % ("; ".join(sorted(set(policy.violations))[:5]), outcome[0], outcome[1][:200])]
        results[name] = outcome
        for leftover in os.listdir(job["out_dir"]):
            os.unlink(os.path.join(job["out_dir"], leftover))
    return {"ops": results, "defect": None, "address_space": _address_space()}


def _address_space():
    """This process's address space in bytes (read with the audit hook inactive)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _run_test_hook(job, name):
    """Deliberate defects, for the harness's own tests (a harness that cannot fail proves nothing)."""
    misbehave = job.get("misbehave")
    if not misbehave or name != "info":
        return
    if misbehave == "open-outside":
        with open(misbehave_target(job), "rb"):
            pass
    elif misbehave == "spin":
        while True:
            pass
    elif misbehave == "raise":
        raise KeyError("not an ImageError")
    elif misbehave == "allocate":
        job["ballast"] = bytearray(ADDRESS_SPACE * 2)
    elif misbehave == "sleep":
        time.sleep(3600)


def misbehave_target(job):
    return job.get("misbehave_target") or "/etc/hostname"


def _child():
    import resource  # pylint: disable=import-outside-toplevel
    lib = _preload()
    # The library's threads (convert's read-ahead and write-back) with 2 MiB stacks, not glibc's 8 MiB:
    # the stacks glibc keeps for reuse would otherwise take 40 MiB of the address space.
    threading.stack_size(2 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    module_dirs = set()
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            module_dirs.add(os.path.realpath(entry))
    module_dirs.add(os.path.dirname(os.path.realpath(lib.__file__)))
    policy = _Policy(sorted(module_dirs))
    sys.addaudithook(policy.hook)
    stdin, stdout = sys.stdin.buffer, sys.stdout
    while True:
        line = stdin.readline()
        if not line:
            return
        result = _run_job(lib, policy, json.loads(line))
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    _child()
