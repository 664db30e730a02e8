# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""usage: thin_pool.py VG POOL

A 16 MiB thin pool POOL in VG, in the VG's metadata only: lvm2 cannot create one without device-mapper, so its
data and metadata LVs are made with lvcreate and the metadata rewritten with vgcfgrestore (as the unit tests'
lvm_testbed.make_thin_pool does). Run with the setup_lvm wrappers first on PATH.
"""

import os
import random
import re
import string
import subprocess
import sys
import tempfile

CONFIG = ["--config", "global{activation=0}"]
THIN_POOL_SEGMENT = """\
\t\t\tsegment1 {
\t\t\t\tstart_extent = 0
\t\t\t\textent_count = %(extents)d

\t\t\t\ttype = "thin-pool"
\t\t\t\tmetadata = "%(pool)s_tmeta"
\t\t\t\tpool = "%(pool)s_tdata"
\t\t\t\ttransaction_id = 0
\t\t\t\tchunk_size = 128
\t\t\t\tdiscards = "passdown"
\t\t\t\tzero_new_blocks = 1
\t\t\t}
"""


def run(*args):
    proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit("%s failed: %s" % (" ".join(args), proc.stderr))
    return proc.stdout


def lvm_uuid():
    alphabet = string.ascii_letters + string.digits
    return "-".join("".join(random.choice(alphabet) for dummy in range(n)) for n in (6, 4, 4, 4, 4, 4, 6))


def lv_block(text, name):
    start = text.index("\t\t%s {\n" % name)
    return start, text.index("\n\t\t}\n", start) + len("\n\t\t}\n")


def main(vg, pool):
    run("lvcreate", "-q", "-n", pool + "data", "-L", "16m", vg)
    run("lvcreate", "-q", "-n", pool + "meta", "-L", "4m", vg)
    with tempfile.TemporaryDirectory() as tmp:
        backup = os.path.join(tmp, "vg.txt")
        run(*(["vgcfgbackup"] + CONFIG + ["-f", backup, vg]))
        with open(backup) as stream:
            text = stream.read()
        extents = int(run("lvs", "--noheadings", "--units", "b", "-o", "seg_size_pe", "%s/%sdata" % (vg, pool)))
        start, end = lv_block(text, pool + "data")
        data = text[start:end]
        head = data.split("\t\t\tsegment1 {", 1)[0]
        # The pool gets a new id; the data LV keeps its own as the hidden <pool>_tdata.
        pool_block = re.sub(r'id = "[^"]+"', 'id = "%s"' % lvm_uuid(), head.replace(pool + "data {", pool + " {"), count=1)
        pool_block += THIN_POOL_SEGMENT % dict(extents=extents, pool=pool) + "\t\t}\n"
        hidden = data.replace(pool + "data {", pool + "_tdata {").replace('"READ", "WRITE", "VISIBLE"', '"READ", "WRITE"')
        text = text[:start] + pool_block + "\n" + hidden + text[end:]
        start, end = lv_block(text, pool + "meta")
        meta = text[start:end].replace(pool + "meta {", pool + "_tmeta {")
        text = text[:start] + meta.replace('"READ", "WRITE", "VISIBLE"', '"READ", "WRITE"') + text[end:]
        with open(backup, "w") as stream:
            stream.write(text)
        run(*(["vgcfgrestore"] + CONFIG + ["--force", "-f", backup, vg]))


if __name__ == "__main__":
    main(*sys.argv[1:3])
