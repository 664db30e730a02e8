# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shape of one hostile-image case (issue #15): generators, not blobs.

Every module of this package (tests/unit/hardening/hostile/) that defines ``CASES`` (a list of :class:`Case`)
contributes to the corpus that test_hostile_corpus.py runs, each case in a child process with CPU and
address-space limits and an audit hook on every file open.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile image.

    name: unique in the corpus, "<format>/<what it does>", e.g. "qcow2/backing-json-protocol".
    fmt: the format as the library names it (qcow2, vmdk, vpc, vhdx, vdi, qed, qcow, luks, parallels, dmg,
         cloop, bochs, raw, ova, ...).
    build: writes the image (and any files it names) into the given directory, returns the image's path;
           deterministic, small (a few MiB at most), no randomness without a fixed seed.
    must_refuse: the library must refuse to open/read it (an ImageError from probe or open); otherwise any
                 ImageError or a bounded success is acceptable.
    refuse: a regular expression the refusal's message must match (when must_refuse).
    source: where the class of case comes from: "iotests-060", "format-inspector", "CVE-2024-32498", "fuzz", ...
    """

    name: str
    fmt: str
    build: Callable[[pathlib.Path], pathlib.Path]
    must_refuse: bool = False
    refuse: str = ""
    source: str = ""
