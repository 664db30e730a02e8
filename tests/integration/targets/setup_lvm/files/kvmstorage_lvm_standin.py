# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real lvm2 without device-mapper: the test stand-in described in docs/testing.md, "LVM without device-mapper".

The kernels of the build machines have no device-mapper, so LVs cannot be
activated.  Every lvm2 command goes through ``run``: the real command runs
with ``global{activation=0}`` added to its --config (metadata is real), and
after a command that may create, resize, rename or remove LVs each linear LV
of a test VG (name starting with PREFIX) gets a loop device over its PV's
backing file at the LV's offset, linked at the LV's path (what activation of
a linear LV gives): ``losetup -o pe_start+first_pe*extent_size --sizelimit
lv_size``.  Thin LVs and snapshots cannot be stood in for (metadata only).

Usage:
  python kvmstorage_lvm_standin.py install BINDIR       wrappers (lvcreate, lvs, ...) in BINDIR
  python kvmstorage_lvm_standin.py create-vg VG PVFILE SIZE_MIB
  python kvmstorage_lvm_standin.py destroy-vg VG PVFILE
  python kvmstorage_lvm_standin.py run COMMAND ARGS...  (what the wrappers call)
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import fcntl
import json
import os
import re
import subprocess
import sys

PREFIX = os.environ.get("KVMSTORAGE_STANDIN_PREFIX", "kvmstorage_it_lvm")
ACTIVATION_OFF = "global{activation=0}"
SBIN = "/sbin"
WRAPPED = ("lvcreate", "lvremove", "lvresize", "lvextend", "lvreduce", "lvrename", "lvchange", "lvconvert",
           "lvs", "vgs", "pvs", "vgchange", "lvdisplay", "vgdisplay")
# Commands after which LVs may have appeared, moved, changed size or gone.
CHANGING = frozenset(("lvcreate", "lvremove", "lvresize", "lvextend", "lvreduce", "lvrename", "lvconvert",
                      "vgremove", "vgchange"))
SEG_PE_RANGE = re.compile(r"^(?P<pv>/[^:]+):(?P<first>\d+)-(?P<last>\d+)$")


def lvm_env():
    env = dict(os.environ)
    env["LVM_SUPPRESS_FD_WARNINGS"] = "1"
    env["LC_ALL"] = "C"
    return env


def with_activation_off(args):
    """``args`` with global{activation=0} in its --config (lvm2 refuses a repeated --config)."""
    out = []
    merged = False
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--config" and index + 1 < len(args):
            out.extend([arg, args[index + 1] + " " + ACTIVATION_OFF])
            merged = True
            index += 2
            continue
        if arg.startswith("--config="):
            out.append(arg + " " + ACTIVATION_OFF)
            merged = True
        else:
            out.append(arg)
        index += 1
    if not merged:
        out = ["--config", ACTIVATION_OFF] + out
    return out


def lvm(command, *args):
    """Run an lvm2 command (activation off); its JSON report, or raise."""
    argv = [os.path.join(SBIN, command)] + with_activation_off(list(args))
    proc = subprocess.run(argv, env=lvm_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError("%s failed (rc %d): %s" % (" ".join(argv), proc.returncode, stderr))
    return proc.stdout.decode("utf-8", "replace")


def report(command, fields, *args):
    text = lvm(command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", ",".join(fields), *args)
    rows = []
    for part in json.loads(text)["report"]:
        for values in part.values():
            rows.extend(values)
    return rows


def losetup(*args):
    proc = subprocess.run(["losetup"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise RuntimeError("losetup %s failed: %s" % (" ".join(args), proc.stderr.decode("utf-8", "replace").strip()))
    return proc.stdout.decode("utf-8", "replace")


def loop_info(device):
    """{name, back-file, offset, sizelimit} of a loop device, or None."""
    try:
        text = losetup("--json", "-l", "-O", "NAME,BACK-FILE,OFFSET,SIZELIMIT", device)
    except RuntimeError:
        return None
    devices = json.loads(text or '{"loopdevices": []}').get("loopdevices", [])
    return devices[0] if devices else None


def backing_file(pv_device):
    info = loop_info(pv_device)
    if info is None or not info.get("back-file"):
        raise RuntimeError("the PV %s is not a loop device over a file" % pv_device)
    return info["back-file"].replace(" (deleted)", "")


def test_vgs():
    return [row["vg_name"] for row in report("vgs", ["vg_name"]) if row["vg_name"].startswith(PREFIX)]


def wanted_standins(vg):
    """{lv_path: (back_file, offset, size)} for the linear LVs of ``vg``."""
    pe_start = {row["pv_name"]: int(row["pe_start"]) for row in report("pvs", ["pv_name", "pe_start"], "-S", "vg_name=" + vg)}
    rows = report("lvs", ["lv_name", "lv_path", "lv_size", "vg_extent_size", "segtype", "seg_pe_ranges"], vg)
    by_path = {}
    for row in rows:
        by_path.setdefault(row["lv_path"] or row["lv_name"], []).append(row)
    wanted = {}
    for path, segments in by_path.items():
        if not path.startswith("/dev/") or any(seg["segtype"] not in ("linear", "striped") for seg in segments):
            continue
        if len(segments) != 1:
            raise RuntimeError("stand-in: %s has %d segments; a loop device maps one contiguous range "
                               "(keep test LVs contiguous)" % (path, len(segments)))
        match = SEG_PE_RANGE.match(segments[0]["seg_pe_ranges"].strip())
        if match is None:
            raise RuntimeError("stand-in: cannot map %s (seg_pe_ranges %r)" % (path, segments[0]["seg_pe_ranges"]))
        extent = int(segments[0]["vg_extent_size"])
        offset = pe_start[match.group("pv")] + int(match.group("first")) * extent
        wanted[path] = (backing_file(match.group("pv")), offset, int(segments[0]["lv_size"]))
    return wanted


def current_standins(vg):
    """{lv_path: (loop_device, back_file, offset, size)} of the links in /dev/<vg>."""
    directory = os.path.join("/dev", vg)
    current = {}
    if not os.path.isdir(directory):
        return current
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        target = os.path.realpath(path)
        info = loop_info(target) if os.path.islink(path) and target.startswith("/dev/loop") else None
        if info is None:
            current[path] = (None, None, None, None)
        else:
            current[path] = (target, info["back-file"].replace(" (deleted)", ""), int(info["offset"]),
                             int(info["sizelimit"]))
    return current


def remove_standin(path, device):
    if device is not None:
        losetup("-d", device)
    if os.path.lexists(path):
        os.unlink(path)


def sync_vg(vg, wanted):
    current = current_standins(vg)
    for path, (device, back, offset, size) in current.items():
        if wanted.get(path) != (back, offset, size):
            remove_standin(path, device)
    for path, (back, offset, size) in wanted.items():
        if path in current and current[path][1:] == (back, offset, size):
            continue
        device = losetup("-f", "--show", "-o", str(offset), "--sizelimit", str(size), back).strip()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(device, path)
    directory = os.path.join("/dev", vg)
    if not wanted and os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)


def lock_path(vg):
    return "/run/lock/%s.standin.lock" % vg


def named_vgs(args):
    """The test VGs a command line names (as VG or VG/LV); all test VGs when it names none."""
    names = set()
    for arg in args:
        if not arg.startswith("-"):
            names.add(arg.split("/")[0])
            names.add(arg.replace("/dev/", "", 1).split("/")[0])
    vgs = test_vgs()
    named = [vg for vg in vgs if vg in names]
    return named or vgs


def sync(args):
    """Bring the stand-ins of the VGs named in ``args`` in line with their metadata (one at a time per VG)."""
    for vg in named_vgs(args):
        with open(lock_path(vg), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                wanted = wanted_standins(vg)
            except RuntimeError as exc:
                if "not found" in str(exc):
                    continue  # removed meanwhile
                raise
            sync_vg(vg, wanted)


def run(command, args):
    argv = [os.path.join(SBIN, command)] + with_activation_off(args)
    rc = subprocess.run(argv, env=lvm_env(), check=False).returncode
    if command in CHANGING:
        try:
            sync(args)
        except (RuntimeError, OSError, ValueError) as exc:
            sys.stderr.write("lvm stand-in: %s\n" % exc)
            return rc or 70
    return rc


def install(bindir):
    os.makedirs(bindir, exist_ok=True)
    for command in WRAPPED + ("vgremove",):
        path = os.path.join(bindir, command)
        with open(path, "w") as stream:
            stream.write('#!/bin/sh\nexec %s %s run %s "$@"\n' % (sys.executable, os.path.abspath(__file__), command))
        os.chmod(path, 0o755)


def create_vg(vg, pv_file, size_mib):
    if not vg.startswith(PREFIX):
        raise RuntimeError("test VG names start with %s" % PREFIX)
    with open(pv_file, "wb") as stream:
        stream.truncate(int(size_mib) * 1024 * 1024)
    device = losetup("-f", "--show", pv_file).strip()
    lvm("pvcreate", "-y", device)
    lvm("vgcreate", "-y", "-s", "1m", vg, device)
    print(json.dumps({"vg": vg, "pv": device, "pv_file": pv_file}))


def destroy_vg(vg, pv_file):
    """Remove the stand-ins, the VG, the PV and its loop device (each step best effort)."""
    if not vg.startswith(PREFIX):
        raise RuntimeError("test VG names start with %s" % PREFIX)
    errors = []
    for path, entry in current_standins(vg).items():
        try:
            remove_standin(path, entry[0])
        except (RuntimeError, OSError) as exc:
            errors.append(str(exc))
    directory = os.path.join("/dev", vg)
    if os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
    pv_devices = []
    pv_file = os.path.abspath(pv_file)
    for info in json.loads(losetup("--json", "-l", "-O", "NAME,BACK-FILE") or '{"loopdevices": []}')["loopdevices"]:
        if (info.get("back-file") or "").replace(" (deleted)", "") == pv_file:
            pv_devices.append(info["name"])
    for step in (("vgremove", "-ff", "-y", vg),) + tuple(("pvremove", "-ff", "-y", d) for d in pv_devices):
        try:
            lvm(*step)
        except RuntimeError as exc:
            if "not found" not in str(exc) and "No PV" not in str(exc):
                errors.append(str(exc))
    for device in pv_devices:
        try:
            losetup("-d", device)
        except RuntimeError as exc:
            errors.append(str(exc))
    for path in (pv_file, lock_path(vg)):
        if os.path.exists(path):
            os.unlink(path)
    if errors:
        raise RuntimeError("; ".join(errors))


def main(argv):
    if len(argv) >= 3 and argv[1] == "run":
        return run(argv[2], argv[3:])
    try:
        if len(argv) == 3 and argv[1] == "install":
            install(argv[2])
        elif len(argv) == 5 and argv[1] == "create-vg":
            create_vg(argv[2], argv[3], argv[4])
        elif len(argv) == 4 and argv[1] == "destroy-vg":
            destroy_vg(argv[2], argv[3])
        else:
            sys.stderr.write(__doc__)
            return 2
    except (RuntimeError, OSError) as exc:
        sys.stderr.write("lvm stand-in: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
