# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the entry of tests/unit/hardening/hostile/fuzz_regressions.py for a finding of the fuzzers.

    python tests/fuzz/regression.py FORMAT FINDING [NAME]

FINDING is a saved input (``<out>/<format>/findings/finding-*``, ``timeout-*``...), as the fuzzer of FORMAT
saw it; the entry embeds the image file it stands for (sparse inputs decoded), compressed and in base64.
"""

from __future__ import annotations

import base64
import pathlib
import sys
import tempfile
import textwrap
import zlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import seeds  # noqa: E402  pylint: disable=wrong-import-position


def image_bytes(fmt, finding):
    """The image file the fuzz input ``finding`` (bytes) of ``fmt`` stands for."""
    with tempfile.TemporaryDirectory(prefix="kvm-storage-fuzz-regression-") as work:
        path = pathlib.Path(work) / "image"
        seeds.write_input(str(path), fmt, finding)
        return path.read_bytes()


def entry(fmt, finding, name):
    """The ``_FOUND`` line (a Python tuple) for ``finding``."""
    packed = base64.b64encode(zlib.compress(image_bytes(fmt, finding), 9)).decode()
    lines = textwrap.wrap(packed, 100)
    corpus_fmt = "raw" if fmt == "probe" else fmt
    return "    (%r, %r,\n%s),\n" % (name, corpus_fmt, "\n".join('     "%s"' % line for line in lines))


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    fmt, finding = argv[0], pathlib.Path(argv[1])
    name = argv[2] if len(argv) == 3 else finding.name
    sys.stdout.write(entry(fmt, finding.read_bytes(), name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
