# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The independent readers and writers of ISO 9660 and FAT images the seed tests check against: isoinfo and
genisoimage (genisoimage), xorriso, fsck.fat and mkfs.fat (dosfstools), mtools."""

import shutil
import subprocess

import components

TOOLS = ("isoinfo", "genisoimage", "xorriso", "fsck.fat", "mkfs.fat", "mlabel", "mdir", "mtype", "mcopy", "mmd")
FOUND = dict((tool, shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")) for tool in TOOLS)


def needs(*tools):
    """The mark that skips (fails in CI) a test needing ``tools`` when one is missing."""
    missing = [tool for tool in tools if not FOUND[tool]]
    return components.needs(not missing, ", ".join(missing) or tools[0],
                            "install genisoimage, xorriso, dosfstools and mtools (scripts/setup.sh)")


def run(*args, **kwargs):
    """stdout (bytes) of a tool that must succeed."""
    command = [FOUND.get(args[0]) or args[0]] + list(args[1:])
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, **kwargs)
    if proc.returncode != 0:
        raise AssertionError("%s failed (%d): %s %s" % (" ".join(command), proc.returncode,
                                                        proc.stdout.decode("utf-8", "replace"),
                                                        proc.stderr.decode("utf-8", "replace")))
    return proc.stdout


def run_rc(*args):
    """(returncode, stdout + stderr text) of a tool."""
    command = [FOUND.get(args[0]) or args[0]] + list(args[1:])
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")
