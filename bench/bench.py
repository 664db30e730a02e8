# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make bench`: the image library against qemu-img, and the modules against ansible.builtin.stat.

Builds the corpus of issue #14 (corpus.py: 1 GiB virtual, 384 MiB of data, half random, half
text, holes elsewhere; in raw, qcow2, vdi, streamOptimized vmdk, vhd and vhdx made by qemu-img),
then for every conversion times our convert (a child process: child_convert.py), qemu-img convert
(default cache mode) and qemu-img convert -t writeback, as medians of N alternating runs, with our
peak RSS; our peak RSS again at 4 GiB virtual size; then the Ansible tasks (a disk_image and a
disk_image_info task against ansible.builtin.stat on the same file, each repeated) and the module
payload sizes.  Writes results.md, results.json and chart.png to the results directory and prints
the table.  The issue's targets are printed beside the values (pass/fail); nothing is asserted.

Environment: BENCH_QUICK=1 (small corpus, one run: proves the code works), BENCH_RUNS, BENCH_TASK_RUNS,
BENCH_WORKDIR, BENCH_OUT, BENCH_CACHE (warm or cold), BENCH_NOTE; the options below say the same.
"""

from __future__ import absolute_import, division, print_function

import argparse
import base64
import binascii
import datetime
import glob
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import chart  # noqa: E402  pylint: disable=wrong-import-position
import corpus  # noqa: E402  pylint: disable=wrong-import-position

MIB = 1 << 20
GIB = 1 << 30

# label, source (corpus.SOURCES), output format, output -o options, compressed clusters (-c)
CONVERSIONS = [
    ("raw -> qcow2", "raw", "qcow2", None, False),
    ("qcow2 -> qcow2", "qcow2", "qcow2", None, False),
    ("vdi -> qcow2", "vdi", "qcow2", None, False),
    ("vmdk streamOptimized -> qcow2", "vmdk-stream", "qcow2", None, False),
    ("vhd -> qcow2", "vhd", "qcow2", None, False),
    ("vhdx -> qcow2", "vhdx", "qcow2", None, False),
    ("qcow2 -> raw", "qcow2", "raw", None, False),
    ("raw -> compressed qcow2", "raw", "qcow2", None, True),
    ("raw -> vmdk streamOptimized", "raw", "vmdk", {"subformat": "streamOptimized"}, False),
]

# the targets of issue #14
TARGET_WRITEBACK = 1.0      # uncompressed: ours / qemu-img -t writeback
TARGET_DEFAULT = 1.5        # uncompressed: ours / qemu-img default
TARGET_COMPRESSED = 0.5     # compressed outputs: ours / qemu-img default, and no larger
TARGET_RSS_MIB = 64         # peak RSS at 4 GiB virtual size
TARGET_TASK = 1.3           # a disk_image task / an ansible.builtin.stat task

SIDES = ("ours", "qemu-img", "qemu-img -t writeback")


STARTED = time.monotonic()


def log(message):
    print("== bench %6.1fs: %s" % (time.monotonic() - STARTED, message), file=sys.stderr, flush=True)


def is_compressed(conversion):
    _label, _source, out_fmt, options, compress = conversion
    return compress or (out_fmt == "vmdk" and (options or {}).get("subformat") == "streamOptimized")


def option_args(options):
    return ["%s=%s" % item for item in sorted((options or {}).items())]


def allocated(path):
    return os.stat(path).st_blocks * 512


def remove(path):
    if os.path.lexists(path):
        os.unlink(path)


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def read_into_cache(path):
    """Read the data of ``path`` (holes skipped: SEEK_DATA/SEEK_HOLE) so that it is in the page cache."""
    with open(path, "rb", buffering=0) as handle:
        end = os.fstat(handle.fileno()).st_size
        offset = 0
        while offset < end:
            try:
                offset = os.lseek(handle.fileno(), offset, os.SEEK_DATA)
                hole = os.lseek(handle.fileno(), offset, os.SEEK_HOLE)
            except OSError:
                break
            while offset < hole:
                chunk = os.pread(handle.fileno(), min(8 * MIB, hole - offset), offset)
                if not chunk:
                    break
                offset += len(chunk)


def compile_library():
    """The library's bytecode, written before the timed runs (as an installed package has it): with
    PYTHONDONTWRITEBYTECODE set, or bytecode older than the sources, every child would compile the modules
    it imports again (20-30 ms of each of our runs on the build machine)."""
    import compileall  # pylint: disable=import-outside-toplevel
    if not compileall.compile_dir(os.path.join(ROOT, "plugins", "module_utils"), quiet=1):
        raise RuntimeError("compiling plugins/module_utils to bytecode failed")


def prepare(cache, sources):
    """The same page cache state before every timed run: earlier writes on disk (sync), then the
    sources in the page cache (warm) or nothing cached (cold)."""
    os.sync()
    if cache == "cold":
        drop_caches()
    else:
        for path in sources:
            read_into_cache(path)


def vm_hwm(pid):
    """The peak RSS (VmHWM, bytes) of process ``pid`` so far, 0 when /proc does not say."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_child(command):
    """Run ``command``; returns (wall seconds, peak RSS bytes of the child, stdout).

    The peak RSS is VmHWM sampled every 10 ms by a thread while the child runs (a lower bound; our
    child reports its own exactly): ru_maxrss would not do, Linux carries the parent's peak over
    fork and exec into the child's."""
    peak = [0]
    done = threading.Event()

    def sample(pid):
        while not done.is_set():
            peak[0] = max(peak[0], vm_hwm(pid))
            done.wait(0.01)

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=out, stderr=err)  # pylint: disable=consider-using-with
        sampler = threading.Thread(target=sample, args=(proc.pid,), daemon=True)
        sampler.start()
        _pid, status, _usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError("%s failed (exit %s): %s" % (" ".join(command), proc.returncode, stderr.strip()))
    return elapsed, peak[0], stdout


def command_for(side, conversion, src, src_fmt, dst):
    _label, _source, out_fmt, options, compress = conversion
    if side == "ours":
        command = [sys.executable, os.path.join(HERE, "child_convert.py"), src, src_fmt, dst, out_fmt]
        command += ["--compress"] if compress else []
        for option in option_args(options):
            command += ["-o", option]
        return command
    command = ["qemu-img", "convert", "-f", src_fmt, "-O", out_fmt]
    command += ["-c"] if compress else []
    command += ["-o", ",".join(option_args(options))] if options else []
    command += ["-t", "writeback"] if side == "qemu-img -t writeback" else []
    return command + [src, dst]


def bench_conversions(paths, runs, cache, outdir):
    """Medians of ``runs`` alternating runs of every side of every conversion (the order of the sides rotates)."""
    results = {label: {"times": {side: [] for side in SIDES}, "rss": {side: [] for side in SIDES}, "size": {},
                       "in_process": []} for label, *_rest in CONVERSIONS}
    os.makedirs(outdir, exist_ok=True)
    for run in range(runs):
        order = SIDES[run % len(SIDES):] + SIDES[:run % len(SIDES)]
        for conversion in CONVERSIONS:
            label, source, out_fmt = conversion[:3]
            src, src_fmt = paths[source]
            for side in order:
                dst = os.path.join(outdir, "%s.%s" % (side.replace(" ", "_"), out_fmt))
                remove(dst)
                prepare(cache, [src])
                elapsed, rss, stdout = run_child(command_for(side, conversion, src, src_fmt, dst))
                if side == "ours":
                    # the library's own duration (without the interpreter's start and the imports), its exact peak
                    reported = json.loads(stdout)
                    results[label]["in_process"].append(reported["duration"])
                    rss = reported.get("peak_rss") or rss
                results[label]["times"][side].append(elapsed)
                results[label]["rss"][side].append(rss)
                results[label]["size"][side] = allocated(dst)
                if side == "ours" and run == 0:
                    # our output must hold the source's content (outside the timing)
                    subprocess.run(["qemu-img", "compare", "-q", "-f", src_fmt, "-F", out_fmt, src, dst], check=True)
                remove(dst)
            log("run %d/%d %-32s %s" % (run + 1, runs, label, "  ".join(
                "%s %.2fs" % (side, results[label]["times"][side][-1]) for side in SIDES)))
    return results


def bench_rss(paths, outdir):
    """Our peak RSS per conversion (one run each)."""
    rss = {}
    os.makedirs(outdir, exist_ok=True)
    for conversion in CONVERSIONS:
        label, source, out_fmt = conversion[:3]
        src, src_fmt = paths[source]
        dst = os.path.join(outdir, "rss.%s" % out_fmt)
        remove(dst)
        prepare("warm", [src])
        elapsed, sampled, stdout = run_child(command_for("ours", conversion, src, src_fmt, dst))
        rss[label] = json.loads(stdout).get("peak_rss") or sampled
        remove(dst)
        log("peak RSS %-32s %.1f MiB (%.2fs)" % (label, rss[label] / MIB, elapsed))
    return rss


# The Ansible part ---------------------------------------------------------------------------------------------

def ansible_env(workdir, times_file, keep_remote=False):
    shim = os.path.join(workdir, "collections")
    if not os.path.exists(os.path.join(shim, "ansible_collections", "kvm", "storage")):
        os.makedirs(os.path.join(shim, "ansible_collections", "kvm"), exist_ok=True)
        os.symlink(ROOT, os.path.join(shim, "ansible_collections", "kvm", "storage"))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": shim,          # this checkout, whatever is installed elsewhere
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "False",
        "ANSIBLE_HOME": os.path.join(workdir, "home"),
        "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, "local_tmp"),
        "ANSIBLE_REMOTE_TMP": os.path.join(workdir, "remote_tmp"),
        "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "bench_task_times",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_KEEP_REMOTE_FILES": "1" if keep_remote else "0",
        "BENCH_TASK_TIMES": times_file,
    })
    env.pop("ANSIBLE_CONFIG", None)
    return env


def task_list(image, virtual_size):
    """The tasks compared: name -> (module, arguments).  The baseline is a stat without its checksum (by default
    stat reads the whole file for a sha1: on this image that is most of its time); the default one is shown too."""
    return {
        "ansible.builtin.stat": ("ansible.builtin.stat", {"path": image, "get_checksum": False}),
        "ansible.builtin.stat (checksum)": ("ansible.builtin.stat", {"path": image}),
        "kvm.storage.disk_image_info": ("kvm.storage.disk_image_info", {"path": image}),
        "kvm.storage.disk_image": ("kvm.storage.disk_image",
                                   {"path": image, "format": "qcow2", "size": virtual_size}),
    }


def write_playbook(path, tasks, repeats):
    """A playbook running each task once as a warm-up, then ``repeats`` rounds of all of them (order rotating)."""
    names = list(tasks)
    entries = []
    for name in names:
        entries.append(("Warm-up %s" % name, name))
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            entries.append(("Round %d %s" % (round_number + 1, name), name))
    play = {
        "name": "Bench tasks",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [{"name": title, tasks[name][0]: tasks[name][1]} for title, name in entries],
    }
    with open(path, "w") as handle:
        json.dump([play], handle, indent=1)  # JSON is YAML


def ansible_playbook():
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return beside if os.path.exists(beside) else shutil.which("ansible-playbook")


def run_playbook(workdir, playbook, times_file, keep_remote=False):
    if os.path.exists(times_file):
        os.unlink(times_file)
    proc = subprocess.run([ansible_playbook(), "-i", "localhost,", playbook], cwd=workdir,
                          env=ansible_env(workdir, times_file, keep_remote), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError("ansible-playbook %s failed:\n%s" % (playbook, proc.stdout.decode(errors="replace")[-4000:]))
    with open(times_file) as handle:
        return [json.loads(line) for line in handle]


def payload_size(path):
    """The AnsiballZ wrapper ``path``: (its size, the size of the zip inside, the files in the zip)."""
    with open(path, "rb") as handle:
        text = handle.read()
    longest = max(re.findall(rb"[A-Za-z0-9+/=]{200,}", text), key=len, default=b"")
    try:
        data = base64.b64decode(longest)
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (binascii.Error, zipfile.BadZipFile):
        return len(text), None, None
    return len(text), len(data), len(names)


def bench_ansible(workdir, image, virtual_size, repeats):
    os.makedirs(workdir, exist_ok=True)
    tasks = task_list(image, virtual_size)
    times_file = os.path.join(workdir, "times.jsonl")
    playbook = os.path.join(workdir, "tasks.yml")
    write_playbook(playbook, tasks, repeats)
    log("ansible: %d rounds of %s" % (repeats, ", ".join(tasks)))
    records = run_playbook(workdir, playbook, times_file)
    seconds = {name: [] for name in tasks}
    changed = {name: False for name in tasks}
    for record in records:
        if record["status"] != "ok":
            raise RuntimeError("task %s: %s %s" % (record["name"], record["status"], record["msg"]))
        for name in tasks:
            if record["name"].startswith("Round ") and record["name"].endswith(" " + name):
                seconds[name].append(record["seconds"])
                changed[name] = changed[name] or record["changed"]
    # the payloads: the same tasks once more, their AnsiballZ files kept
    remote_tmp = os.path.join(workdir, "remote_tmp")
    shutil.rmtree(remote_tmp, ignore_errors=True)
    write_playbook(playbook, tasks, 0)
    run_playbook(workdir, playbook, times_file, keep_remote=True)
    payloads = {}
    for name, (module, _args) in tasks.items():
        found = sorted(glob.glob(os.path.join(remote_tmp, "ansible-tmp-*", "AnsiballZ_%s.py" % module.rsplit(".", 1)[1])))
        if found:
            wrapper, zipped, files = payload_size(found[0])
            payloads[name] = {"wrapper_bytes": wrapper, "zip_bytes": zipped, "zip_files": files}
    shutil.rmtree(remote_tmp, ignore_errors=True)
    return {"tasks": {name: {"seconds": values, "median": statistics.median(values), "changed": changed[name]}
                      for name, values in seconds.items()},
            "payloads": payloads, "repeats": repeats}


# Results ------------------------------------------------------------------------------------------------------

def verdict(value, limit):
    return "pass" if value <= limit else "FAIL"


def summarize(conversions, rss_big):
    rows = []
    for conversion in CONVERSIONS:
        label = conversion[0]
        data = conversions[label]
        median = {side: statistics.median(data["times"][side]) for side in SIDES}
        row = {
            "conversion": label,
            "compressed": is_compressed(conversion),
            "seconds": median,
            "ratio_writeback": median["ours"] / median["qemu-img -t writeback"],
            "ratio_default": median["ours"] / median["qemu-img"],
            "size_ours": data["size"]["ours"],
            "size_qemu": data["size"]["qemu-img"],
            "rss_ours": max(data["rss"]["ours"]),
            "rss_qemu": max(data["rss"]["qemu-img"]),
            "rss_big": rss_big.get(label),
            "in_process": statistics.median(data["in_process"]),
            "runs": {side: data["times"][side] for side in SIDES},
        }
        if row["compressed"]:
            row["targets"] = {"ratio_default": verdict(row["ratio_default"], TARGET_COMPRESSED),
                              "size": verdict(row["size_ours"], row["size_qemu"])}
        else:
            row["targets"] = {"ratio_writeback": verdict(row["ratio_writeback"], TARGET_WRITEBACK),
                              "ratio_default": verdict(row["ratio_default"], TARGET_DEFAULT)}
        if row["rss_big"] is not None:
            row["targets"]["rss"] = verdict(row["rss_big"], TARGET_RSS_MIB * MIB)
        rows.append(row)
    return rows


def conversion_table(rows, big_label):
    lines = [
        "| conversion | ours (s) | ours in-process (s) | qemu-img (s) | qemu-img -t writeback (s) "
        "| ours / -t writeback | ours / default | output MiB ours / qemu-img | peak RSS MiB ours (qemu-img) | peak RSS MiB at %s |" % big_label,
        "|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for row in rows:
        seconds, targets = row["seconds"], row["targets"]
        if row["compressed"]:
            writeback = "%.2f (no target)" % row["ratio_writeback"]
            default = "%.2f (≤ %.1f: %s)" % (row["ratio_default"], TARGET_COMPRESSED, targets["ratio_default"])
            sizes = "%.1f / %.1f (no larger: %s)" % (row["size_ours"] / MIB, row["size_qemu"] / MIB, targets["size"])
        else:
            writeback = "%.2f (≤ %.1f: %s)" % (row["ratio_writeback"], TARGET_WRITEBACK, targets["ratio_writeback"])
            default = "%.2f (≤ %.1f: %s)" % (row["ratio_default"], TARGET_DEFAULT, targets["ratio_default"])
            sizes = "%.1f / %.1f" % (row["size_ours"] / MIB, row["size_qemu"] / MIB)
        big = ("%.1f (≤ %d: %s)" % (row["rss_big"] / MIB, TARGET_RSS_MIB, targets["rss"])
               if row["rss_big"] is not None else "not measured")
        lines.append("| %s | %.3f | %.3f | %.3f | %.3f | %s | %s | %s | %.1f (%.1f) | %s |" % (
            row["conversion"], seconds["ours"], row["in_process"], seconds["qemu-img"], seconds["qemu-img -t writeback"],
            writeback, default, sizes, row["rss_ours"] / MIB, row["rss_qemu"] / MIB, big))
    return lines


def ansible_table(ansible):
    tasks = ansible["tasks"]
    stat = tasks["ansible.builtin.stat"]["median"]
    lines = ["| task | median (s) | / stat | target | changed | module payload: zip KiB (files), AnsiballZ file KiB |",
             "|---|---:|---:|---|---|---|"]
    for name, data in tasks.items():
        ratio = data["median"] / stat
        target = ("≤ %.1f: %s" % (TARGET_TASK, verdict(ratio, TARGET_TASK)) if name == "kvm.storage.disk_image"
                  else "")
        payload = ansible["payloads"].get(name)
        if payload and payload["zip_bytes"] is not None:
            payload_text = "%.0f (%d), %.0f" % (
                payload["zip_bytes"] / 1024, payload["zip_files"], payload["wrapper_bytes"] / 1024)
        elif payload:
            payload_text = "?, %.0f" % (payload["wrapper_bytes"] / 1024)
        else:
            payload_text = "not found"
        lines.append("| %s | %.3f | %.2f | %s | %s | %s |" % (
            name, data["median"], ratio, target, data["changed"], payload_text))
    return lines


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    qemu = subprocess.run(["qemu-img", "--version"], stdout=subprocess.PIPE, check=True).stdout.decode().splitlines()[0]
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, check=False).stdout.decode().strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, check=False).stdout.decode().strip()
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "qemu_img": qemu, "commit": commit + (" (with uncommitted changes)" if dirty else "")}


def chart_panels(rows, ansible, big_label, corpus_label="corpus"):
    panels = [{
        "title": "Time, ours / qemu-img (median)", "unit": "ratio",
        "series": ["ours / qemu-img -t writeback", "ours / qemu-img default"],
        "groups": [(row["conversion"], [row["ratio_writeback"], row["ratio_default"]]) for row in rows],
        "lines": [(TARGET_COMPRESSED, "compressed target 0.5"), (TARGET_WRITEBACK, "target 1.0 (-t writeback)"),
                  (TARGET_DEFAULT, "target 1.5 (default)")],
    }, {
        "title": "Our peak RSS", "unit": "MiB",
        "series": [corpus_label, big_label],
        "groups": [(row["conversion"], [row["rss_ours"] / MIB,
                                        row["rss_big"] / MIB if row["rss_big"] is not None else None]) for row in rows],
        "lines": [(TARGET_RSS_MIB, "target 64 MiB")],
    }]
    if ansible:
        stat = ansible["tasks"]["ansible.builtin.stat"]["median"]
        panels.append({
            "title": "Ansible task (median)", "unit": "seconds",
            "series": ["task"],
            "groups": [(name, [data["median"]]) for name, data in ansible["tasks"].items()],
            "lines": [(TARGET_TASK * stat, "target 1.3x stat")],
        })
    return panels


def report(out, settings, description, rows, ansible, big_label):
    info = machine()
    corpus_text = ("%d MiB virtual, %d MiB of data (%d MiB random, %d MiB text) in %d runs of 1-8 MiB, holes "
                   "elsewhere (seed %d)" % (description["virtual_size"] // MIB, description["data_size"] // MIB,
                                            description["random_bytes"] // MIB, description["text_bytes"] // MIB,
                                            description["runs"], description["seed"]))
    cache_text = ("warm: before every timed run, earlier writes are synced and the source's data is read into the "
                  "page cache" if settings["cache"] == "warm" else
                  "cold: before every timed run, earlier writes are synced and the page cache is dropped")
    lines = [
        "# kvm.storage benchmark%s" % (" (BENCH_QUICK: a small corpus, one run; proves the code, measures nothing)"
                                       if settings["quick"] else ""),
        "",
        "- Date: %s; load average at start %s, at end %s" % (settings["date"], settings["load_start"],
                                                             " ".join("%.2f" % value for value in os.getloadavg())),
        "- Machine: %s, %d CPUs, Linux %s, Python %s, %s; commit %s" % (
            info["cpu"], info["cpus"], info["kernel"], info["python"], info["qemu_img"], info["commit"]),
        "- Corpus: %s; sources made by qemu-img convert (qcow2, vdi, vmdk streamOptimized, vpc (vhd), vhdx)"
        % corpus_text,
        "- Times: wall time of a process (ours: `python bench/child_convert.py`, interpreter start and imports "
        "included, the library's bytecode compiled beforehand as an installed package has it; \"in-process\" is "
        "the duration convert() itself reports; theirs: `qemu-img convert -f FMT "
        "-O FMT`, default cache mode, and with `-t writeback`), median of %d "
        "alternating runs (the order of the three sides rotates every run)" % settings["runs"],
        "- Page cache: %s (the same for both sides)" % cache_text,
        "- Output MiB: allocated size (st_blocks) of the output; peak RSS: VmHWM of the child (ours: reported by "
        "the child at its end; qemu-img's: sampled every 10 ms, a lower bound); "
        "%s: our peak RSS on a corpus of %s virtual with the same data, one run" % (big_label, big_label),
        "- Our outputs are checked with `qemu-img compare` against their source (first run, not timed)",
        "- Targets (issue #14; printed, never asserted): uncompressed ≤ %.1f× qemu-img -t writeback and ≤ %.1f× "
        "qemu-img default; compressed outputs ≤ %.1f× qemu-img default and no larger; peak RSS ≤ %d MiB at 4 GiB "
        "virtual size; a disk_image task ≤ %.1f× an ansible.builtin.stat task" % (
            TARGET_WRITEBACK, TARGET_DEFAULT, TARGET_COMPRESSED, TARGET_RSS_MIB, TARGET_TASK),
    ]
    if settings["note"]:
        lines.append("- Note: %s" % settings["note"])
    lines += ["", "## Conversions", ""] + conversion_table(rows, big_label)
    if ansible:
        lines += ["", "## Ansible tasks", "",
                  "Connection local, ansible_python_interpreter %s, default settings (no pipelining); each task "
                  "once as a warm-up, then %d rounds (order rotating); time from the task's start to its result "
                  "(callback bench/callback_plugins/bench_task_times.py); the disk_image task asks for the image "
                  "as it is (no change); the baseline, ansible.builtin.stat, runs with get_checksum: false (the "
                  "default reads the whole file for a sha1: the \"(checksum)\" row). Payload: the AnsiballZ file "
                  "of one run with ANSIBLE_KEEP_REMOTE_FILES=1 and the zip inside it." % (sys.executable, ansible["repeats"]), ""]
        lines += ansible_table(ansible)
    lines += ["", "![chart: the ratios, the peak RSS and the Ansible tasks](chart.png)"]
    text = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump({"settings": settings, "machine": info, "corpus": description, "conversions": rows,
                   "ansible": ansible}, handle, indent=1, sort_keys=True)
    corpus_label = "%d MiB" % (description["virtual_size"] // MIB) if description["virtual_size"] < GIB else (
        "%d GiB" % (description["virtual_size"] // GIB))
    renderer = chart.write_chart(chart_panels(rows, ansible, big_label, corpus_label), os.path.join(out, "chart.png"),
                                 "kvm.storage bench %s: %s virtual, %d MiB of data, medians of %d runs" % (
                                     settings["date"], corpus_label, description["data_size"] // MIB,
                                     settings["runs"]))
    return text, renderer


def parse_args(argv=None):
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", default=quick,
                        help="a small corpus (32 MiB, 12 MiB data), one run, one task round (BENCH_QUICK=1)")
    parser.add_argument("--runs", type=int, default=os.environ.get("BENCH_RUNS"),
                        help="alternating runs per conversion, medians reported (BENCH_RUNS, default 3; quick 1)")
    parser.add_argument("--task-runs", type=int, default=os.environ.get("BENCH_TASK_RUNS"),
                        help="rounds of the Ansible tasks (BENCH_TASK_RUNS, default 10; quick 1)")
    parser.add_argument("--cache", choices=("warm", "cold"), default=os.environ.get("BENCH_CACHE", "warm"),
                        help="page cache before every timed run (BENCH_CACHE; cold drops caches: root only)")
    parser.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR"),
                        help="for the corpus (kept and reused); default a temporary directory in /var/tmp, removed")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT"),
                        help="results directory (BENCH_OUT; default bench/results, quick bench/results/quick)")
    parser.add_argument("--note", default=os.environ.get("BENCH_NOTE", ""), help="a line for the results (BENCH_NOTE)")
    parser.add_argument("--parts", default="convert,rss,ansible", help="comma-separated: convert, rss, ansible")
    args = parser.parse_args(argv)
    args.runs = int(args.runs or (1 if args.quick else 3))
    args.task_runs = int(args.task_runs or (1 if args.quick else 10))
    args.out = args.out or os.path.join(HERE, "results", "quick" if args.quick else "")
    args.parts = set(args.parts.split(","))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        virtual_size, data_size, big_size = 32 * MIB, 12 * MIB, 64 * MIB
    else:
        virtual_size, data_size, big_size = GIB, 384 * MIB, 4 * GIB
    big_label = "%d %s" % ((big_size // GIB, "GiB") if big_size >= GIB else (big_size // MIB, "MiB"))
    settings = {"quick": args.quick, "runs": args.runs, "task_runs": args.task_runs, "cache": args.cache,
                "note": args.note, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "load_start": " ".join("%.2f" % value for value in os.getloadavg())}
    workdir = args.workdir or tempfile.mkdtemp(prefix="kvm-storage-bench-", dir="/var/tmp")
    try:
        description, paths = corpus.build(os.path.join(workdir, "corpus"), virtual_size, data_size, log=log)
        conversions = {label: {"times": {side: [0.0] for side in SIDES}, "rss": {side: [0] for side in SIDES},
                               "size": {side: 0 for side in SIDES}, "in_process": [0.0]}
                       for label, *_rest in CONVERSIONS}
        if "convert" in args.parts:
            compile_library()
            conversions = bench_conversions(paths, args.runs, args.cache, os.path.join(workdir, "out"))
        ansible = None
        if "ansible" in args.parts:
            ansible = bench_ansible(os.path.join(workdir, "ansible"), paths["qcow2"][0], virtual_size, args.task_runs)
        rss_big = {}
        if "rss" in args.parts:
            _big_description, big_paths = corpus.build(os.path.join(workdir, "corpus-big"), big_size, data_size, log=log)
            rss_big = bench_rss(big_paths, os.path.join(workdir, "out"))
        rows = summarize(conversions, rss_big)
        text, renderer = report(args.out, settings, description, rows, ansible, big_label)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    print("written: %s (results.md, results.json, chart.png drawn by %s)" % (args.out, renderer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
