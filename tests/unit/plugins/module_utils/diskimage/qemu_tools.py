# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers that drive the oracle: qemu-img and qemu-io."""

import hashlib
import json
import subprocess
import time


# qemu-img's PBKDF2 benchmark (LUKS creation) fails now and then when the kernel's per-thread CPU
# accounting reports no time spent: an oracle hiccup, not a verdict, so it is retried.
QEMU_PBKDF_HICCUP = "Unable to get accurate CPU usage"


def run(*args, **kwargs):
    """Run a command, fail the test with its output when it fails."""
    for dummy in range(5):
        proc = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, check=False, **kwargs)
        if proc.returncode == 0 or QEMU_PBKDF_HICCUP not in proc.stderr:
            break
    if proc.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s"
                             % (" ".join(map(str, args)), proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout


def qemu_img(*args):
    return run("qemu-img", *args)


def qemu_img_json(*args):
    """qemu-img SUBCOMMAND ... --output=json, parsed.  check exits 2/3 on findings."""
    proc = subprocess.run(["qemu-img"] + [str(a) for a in args] + ["--output=json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if proc.returncode != 0 and not (args[0] == "check" and proc.stdout.strip()):
        raise AssertionError("qemu-img %s failed: %s" % (" ".join(map(str, args)), proc.stderr))
    return json.loads(proc.stdout)


def qemu_io(path, *commands, fmt=None):
    """qemu-io -c CMD ... on ``path`` (format given explicitly when known)."""
    args = ["qemu-io"]
    if fmt:
        args += ["-f", fmt]
    for command in commands:
        args += ["-c", command]
    args.append(str(path))
    out = run(*args)
    if "failed" in out.lower() or "error" in out.lower():
        raise AssertionError("qemu-io reported an error: %s" % out)
    return out


def raw_digest(path, tmp_path, fmt=None):
    """sha256 of the guest view, as qemu-img convert -O raw gives it."""
    out = tmp_path / ("oracle-%s.raw" % hashlib.sha1(str(path).encode()).hexdigest()[:8])
    args = ["convert", "-O", "raw"]
    if fmt:
        args += ["-f", fmt]
    qemu_img(*(args + [path, out]))
    digest = file_digest(out)
    out.unlink()
    return digest


def file_digest(path):
    h = hashlib.sha256()
    with open(str(path), "rb") as f:
        while True:
            chunk = f.read(4 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def wait_until_write_locked(path, holder, timeout=120):
    """Wait until ``holder`` (a qemu-io/qemu process) holds its write lock on ``path``: until
    `qemu-img info` is refused.  Fails the test when the holder exits or never takes the lock,
    so that a slow start on a loaded machine never passes for "the library ignored the lock"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holder.poll() is not None:
            output = holder.stdout.read() if holder.stdout is not None else ""
            raise AssertionError("the lock holder exited (%s) before locking %s: %s" % (holder.returncode, path, output))
        proc = subprocess.run(["qemu-img", "info", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            return
        time.sleep(0.05)
    raise AssertionError("%s was not locked by the holder within %d s" % (path, timeout))
