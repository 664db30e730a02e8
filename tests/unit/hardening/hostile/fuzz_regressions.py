# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every input on which the fuzzers (tests/fuzz, ``make fuzz``) found a defect, as a regression case.

Each image is embedded as zlib+base64 of the minimised input as the library saw it (the file, not the fuzzer's
sparse encoding), and written beside the files the fuzz target keeps next to every input (a raw backing file,
a VMDK flat extent), so a reference to them resolves as it did under the fuzzer.  The comment of each case
says what the library did wrong and what fixed it.
"""
from __future__ import annotations

import base64
import zlib

from hardening.hostile._case import Case

# What the fuzz target keeps beside every input (tests/fuzz/seeds.py AUX_FILES).
AUX_FILES = {"backing.img": b"\xa5" * 65536, "image-flat.vmdk": b"\x5a" * 65536}
INPUT_NAME = {"dmg": "image.dmg", "ova": "image.ova", "vmdk": "image.vmdk"}


def _fuzzed(fmt, packed):
    """A build function writing the embedded input (and the files beside it) as the fuzz target did."""
    def build(directory):
        for name, content in AUX_FILES.items():
            (directory / name).write_bytes(content)
        path = directory / INPUT_NAME.get(fmt, "image.img")
        path.write_bytes(zlib.decompress(base64.b64decode(packed)))
        return path
    return build


def _case(name, fmt, packed):
    return Case(name="%s/fuzz-%s" % (fmt, name), fmt=fmt, build=_fuzzed(fmt, packed), source="fuzz")


# (name, format as the corpus opens it: "raw" for the probe fuzzer's finds, zlib+base64 of the input)
_FOUND = [
    # 2026-12-07, make fuzz: a sparse VMDK whose descriptor offset (sectors, uint64) times 512 is past the largest
    # file offset: an OverflowError from os.pread in open (ImageFile.pread now reads nothing there).
    ('finding-0d8216691c6b', 'vmdk',
     "eNrzdvENU1ZwyazLVnBhgIIit0yvYgVbBSVDYyWulJQkvfTUfAM0YGhhZGJuaGRmZmloZmBsZm5kaWKWm1oC1q9kbmxjbmJhbGZi"
     "psQFAPV0E9o="),
]

CASES = [_case(name, fmt, packed) for name, fmt, packed in _FOUND]
