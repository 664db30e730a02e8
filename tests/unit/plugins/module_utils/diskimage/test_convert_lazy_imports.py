# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An uncompressed conversion without a digest does not import what only
compressed output (concurrent.futures) or a digest (hashlib) needs: every
module import is paid at each module run's start (issue #14)."""

import hashlib
import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
source, target = sys.argv[1:3]
diskimage.convert(source, target, "qcow2", src_fmt="raw")
print(json.dumps(sorted(name for name in ("concurrent.futures", "hashlib") if name in sys.modules)))
"""

DIGEST_SCRIPT = r"""
import json, sys
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
source, target = sys.argv[1:3]
result = diskimage.convert(source, target, "qcow2", src_fmt="raw", digest="sha256", compress=True)
print(json.dumps([result["digest"], "concurrent.futures" in sys.modules]))
"""


def run(script, tmp_path):
    source = str(tmp_path / "source.raw")
    with open(source, "wb") as handle:
        handle.truncate(4 << 20)
        handle.seek(1 << 20)
        handle.write(b"data" * 4096)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    output = subprocess.run([sys.executable, "-c", script, source, str(tmp_path / "out.qcow2")],
                            env=environment, check=True, stdout=subprocess.PIPE, cwd=str(tmp_path)).stdout
    return json.loads(output)


def test_an_uncompressed_conversion_imports_neither_the_thread_pool_nor_hashlib(tmp_path):
    assert run(SCRIPT, tmp_path) == []


def test_a_compressed_conversion_with_a_digest_still_has_both(tmp_path):
    digest, pool_imported = run(DIGEST_SCRIPT, tmp_path)
    expected = hashlib.sha256(bytes(1 << 20) + b"data" * 4096 + bytes((4 << 20) - (1 << 20) - 16384))
    assert digest == expected.hexdigest()
    assert pool_imported is True
