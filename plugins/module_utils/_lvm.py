# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lvm2 command wrapper: reports parsed from ``--reportformat json``.

Every command runs through the module's run_command (no shell), with sizes in
bytes (``--units b --nosuffix``); a failing command raises LvmError naming the
command line and lvm2's stderr.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import re

# Report fields read for a logical volume (lvs -o).
LV_FIELDS = ("lv_name", "vg_name", "lv_path", "lv_size", "lv_tags", "lv_attr", "segtype", "pool_lv", "origin",
             "lv_uuid")
# Report fields read for a volume group (vgs -o).
VG_FIELDS = ("vg_name", "vg_extent_size", "vg_free", "vg_size")
# Report fields read for a thin pool (lvs -o).
POOL_FIELDS = ("lv_name", "segtype", "zero", "lv_size")

# lvm2's character sets (lvm(8) "VALID NAMES" and tags).
NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_+./=!:&#][A-Za-z0-9_+./=!:&#-]*$")
RESERVED_LV_PREFIXES = ("snapshot", "pvmove")
RESERVED_LV_PARTS = ("_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta",
                     "_tdata", "_tmeta", "_vorigin", "_vdata")
MAX_TAG_LENGTH = 1024


class LvmError(Exception):
    """An lvm2 command failed, or its report could not be understood."""

    def __init__(self, msg, cmd=None, rc=None, stderr=None):
        super(LvmError, self).__init__(msg)
        self.cmd = cmd
        self.rc = rc
        self.stderr = stderr


def check_vg_name(name):
    if not name or not NAME_RE.match(name) or name in (".", ".."):
        return "invalid volume group name %r (lvm2 allows A-Z a-z 0-9 + _ . -, not starting with -)" % (name,)
    return None


def check_lv_name(name):
    problem = check_vg_name(name)
    if problem:
        return problem.replace("volume group", "logical volume")
    if name.startswith(RESERVED_LV_PREFIXES) or any(part in name for part in RESERVED_LV_PARTS):
        return "invalid logical volume name %r: lvm2 reserves names starting with %s or containing %s" % (
            name, " or ".join(RESERVED_LV_PREFIXES), ", ".join(RESERVED_LV_PARTS))
    return None


def check_tag(tag):
    if not tag or len(tag) > MAX_TAG_LENGTH or not TAG_RE.match(tag):
        return "invalid LVM tag %r (lvm2 allows A-Z a-z 0-9 _ + . - / = ! : & #, not starting with -)" % (tag,)
    return None


def parse_report(text, cmd=None):
    """The rows of an lvm2 JSON report (``{"report": [{"lv": [...]}, ...]}``)
    as a list of dicts of strings."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise LvmError("cannot parse the JSON report of %s: %s" % (cmd or "lvm2", exc), cmd=cmd)
    if not isinstance(document, dict) or not isinstance(document.get("report"), list):
        raise LvmError("unexpected report from %s: no \"report\" list" % (cmd or "lvm2"), cmd=cmd)
    rows = []
    for part in document["report"]:
        if not isinstance(part, dict):
            raise LvmError("unexpected report from %s: %r" % (cmd or "lvm2", part), cmd=cmd)
        for values in part.values():
            if not isinstance(values, list) or not all(isinstance(row, dict) for row in values):
                raise LvmError("unexpected report from %s: %r" % (cmd or "lvm2", values), cmd=cmd)
            rows.extend(values)
    return rows


def parse_int(value, field, cmd=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LvmError("unexpected %s %r in the report of %s (expected bytes, --units b --nosuffix)"
                       % (field, value, cmd or "lvm2"), cmd=cmd)


def split_tags(value):
    """lv_tags as reported (comma separated) → sorted list."""
    return sorted(tag for tag in (value or "").split(",") if tag)


def normalize_lv(row, cmd=None):
    """A report row of LV_FIELDS → typed dict."""
    attr = row.get("lv_attr") or ""
    return {
        "name": row.get("lv_name", ""),
        "vg": row.get("vg_name", ""),
        "path": row.get("lv_path") or "",
        "size": parse_int(row.get("lv_size"), "lv_size", cmd),
        "tags": split_tags(row.get("lv_tags")),
        "attr": attr,
        "segtype": row.get("segtype", ""),
        "pool": row.get("pool_lv") or None,
        "origin": row.get("origin") or None,
        "uuid": row.get("lv_uuid", ""),
        # lv_attr character 5: a(ctive), -, or X (unknown: no device-mapper to ask)
        "active": {"a": True, "-": False}.get(attr[4:5]),
    }


def round_up(value, unit):
    return -(-value // unit) * unit


def command_line(args):
    return " ".join(_quote(arg) for arg in args)


def _quote(arg):
    if arg and re.match(r"^[A-Za-z0-9_+./=:,@%-]+$", arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


class Lvm:
    """lvm2 through its command line; ``module`` provides get_bin_path and run_command."""

    ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C"}

    def __init__(self, module):
        self.module = module
        self._paths = {}

    def _binary(self, command):
        if command not in self._paths:
            self._paths[command] = self.module.get_bin_path(command)
            if not self._paths[command]:
                raise LvmError("cannot find the lvm2 command %s (install lvm2)" % command, cmd=command)
        return self._paths[command]

    def run(self, command, *args):
        """Run ``command`` with ``args``; stdout, or LvmError with the command line and stderr."""
        argv = [self._binary(command)] + [str(arg) for arg in args]
        rc, out, err = self.module.run_command(argv, environ_update=dict(self.ENV))
        if rc != 0:
            stderr = (err or "").strip()
            raise LvmError("%s failed (rc %d): %s" % (command_line([command] + argv[1:]), rc,
                                                      stderr or (out or "").strip() or "no message"),
                           cmd=command_line(argv), rc=rc, stderr=stderr)
        return out

    def report(self, command, fields, *args):
        out = self.run(command, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", ",".join(fields), *args)
        return parse_report(out, cmd=command)

    # ------------------------------------------------------------- queries
    def vg(self, vg):
        """The volume group ``vg`` (name, extent_size, free, size) or None."""
        rows = [row for row in self.report("vgs", VG_FIELDS) if row.get("vg_name") == vg]
        if not rows:
            return None
        row = rows[0]
        return {
            "name": vg,
            "extent_size": parse_int(row.get("vg_extent_size"), "vg_extent_size", "vgs"),
            "free": parse_int(row.get("vg_free"), "vg_free", "vgs"),
            "size": parse_int(row.get("vg_size"), "vg_size", "vgs"),
        }

    def lv(self, vg, lv):
        """The logical volume ``vg``/``lv`` (normalize_lv) or None (hidden LVs included)."""
        rows = [row for row in self.report("lvs", LV_FIELDS, "-a", vg) if row.get("lv_name") == lv]
        if not rows:
            return None
        # One row per segment is possible with segment fields: the LV fields agree.
        return normalize_lv(rows[0], "lvs")

    def thin_pool(self, vg, pool):
        """{name, zero} of the thin pool ``vg``/``pool`` or None when there is no such thin pool."""
        rows = [row for row in self.report("lvs", POOL_FIELDS, "-a", vg) if row.get("lv_name") == pool]
        if not rows or rows[0].get("segtype") != "thin-pool":
            return None
        # zero: "zero" when the pool zeroes newly provisioned blocks (lvs -o zero).
        return {"name": pool, "zero": rows[0].get("zero") == "zero"}

    # ------------------------------------------------------------- changes
    def create(self, vg, lv, size, thinpool=None, tags=()):
        args = ["-n", lv, "--yes"]
        for tag in tags:
            args.extend(["--addtag", tag])
        if thinpool:
            args.extend(["-V", "%db" % size, "--thinpool", thinpool, vg])
        else:
            args.extend(["-L", "%db" % size, vg])
        self.run("lvcreate", *args)

    def resize(self, vg, lv, size):
        self.run("lvresize", "--yes", "-L", "%db" % size, "%s/%s" % (vg, lv))

    def remove(self, vg, lv):
        self.run("lvremove", "--yes", "%s/%s" % (vg, lv))

    def snapshot(self, vg, lv, name, thin):
        if thin:
            self.run("lvcreate", "--yes", "-s", "-n", name, "%s/%s" % (vg, lv))
        else:
            self.run("lvcreate", "--yes", "-s", "-n", name, "-l", "100%ORIGIN", "%s/%s" % (vg, lv))

    def change_tags(self, vg, lv, add=(), delete=()):
        args = []
        for tag in delete:
            args.extend(["--deltag", tag])
        for tag in add:
            args.extend(["--addtag", tag])
        if args:
            self.run("lvchange", *(args + ["%s/%s" % (vg, lv)]))

    def activate(self, vg, lv):
        self.run("lvchange", "-ay", "%s/%s" % (vg, lv))

    def deactivate(self, vg, lv):
        self.run("lvchange", "-an", "%s/%s" % (vg, lv))
