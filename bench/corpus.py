# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark corpus: one deterministic raw image and its copies in the other formats.

The raw image has ``virtual_size`` bytes, of which ``data_size`` hold data in runs of
1-8 MiB (half of the data random bytes, half text), holes everywhere else.  The runs
come in pairs of the same length (one random, one text), so the two kinds are exactly
half each.  Everything comes from one seeded ``random.Random``: the same parameters
build the same bytes on every machine.  The other sources are made from the raw image
by ``qemu-img convert``.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import random
import subprocess

MIB = 1 << 20

# name -> (qemu-img format, qemu-img -o options): the sources of the benchmark
SOURCES = {
    "raw": ("raw", None),
    "qcow2": ("qcow2", None),
    "vdi": ("vdi", None),
    "vmdk-stream": ("vmdk", "subformat=streamOptimized"),
    "vhd": ("vpc", None),
    "vhdx": ("vhdx", None),
}

_WORDS = (
    "the kernel init systemd udev mount root boot grub initrd vmlinuz qemu libvirt domain disk image "
    "volume pool network bridge interface address route table error warning info debug notice "
    "started stopped failed reached target service socket timer path device file directory "
    "/usr/lib /etc /var/log /home /srv /opt = : ; , . ( ) { } [ ] 0 1 2 3 4 5 6 7 8 9 10 42 100 "
    "0x0000 0xffff return if else for while def class import from print self None True False"
).split()


def _text_pool(rng, size):
    """``size`` bytes of log- and source-like text lines (compresses about 3:1 with deflate)."""
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _word in range(rng.randint(3, 14))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode("ascii")[:size]


def layout(virtual_size, data_size, seed):
    """The data runs of the corpus: a list of (offset, length, kind), kind "random" or "text".

    ``data_size`` is a whole number of 2 MiB (a random and a text MiB per pair at least)."""
    if virtual_size % MIB or data_size % (2 * MIB) or not 0 < data_size <= virtual_size:
        raise ValueError("virtual size must be whole MiB, data size whole 2 MiB and at most the virtual size")
    rng = random.Random(seed)
    pairs = []
    left = data_size // MIB // 2
    while left:
        run = min(rng.randint(1, 8), left)
        pairs.append(run)
        left -= run
    runs = [run for run in pairs for _kind in (0, 1)]
    holes_total = virtual_size // MIB - data_size // MIB
    weights = [rng.random() for _gap in range(len(runs) + 1)]
    gaps = [int(holes_total * weight / sum(weights)) for weight in weights]
    gaps[-1] += holes_total - sum(gaps)
    result = []
    offset = 0
    for index, run in enumerate(runs):
        offset += gaps[index] * MIB
        result.append((offset, run * MIB, "random" if index % 2 == 0 else "text"))
        offset += run * MIB
    return result


def write_raw(path, virtual_size, data_size, seed=14):
    """Write the raw corpus image at ``path``; returns a description (dict) of it."""
    runs = layout(virtual_size, data_size, seed)
    rng = random.Random(seed + 1)
    pool = _text_pool(rng, 8 * MIB)
    pool += pool[:MIB]
    with open(path, "wb") as image:
        image.truncate(virtual_size)
        for offset, length, kind in runs:
            image.seek(offset)
            for _mib in range(length // MIB):
                if kind == "random":
                    image.write(rng.randbytes(MIB))
                else:
                    start = rng.randrange(0, 8 * MIB)
                    image.write(pool[start:start + MIB])
    return {
        "virtual_size": virtual_size,
        "data_size": data_size,
        "random_bytes": sum(length for _offset, length, kind in runs if kind == "random"),
        "text_bytes": sum(length for _offset, length, kind in runs if kind == "text"),
        "runs": len(runs),
        "seed": seed,
    }


def build(workdir, virtual_size, data_size, seed=14, log=print):
    """The raw corpus and its copies in every format of SOURCES, in ``workdir``.

    Reused when ``workdir`` holds a corpus built with the same parameters (corpus.json).
    Returns (description, {source name: (path, qemu-img format)})."""
    os.makedirs(workdir, exist_ok=True)
    stamp = os.path.join(workdir, "corpus.json")
    wanted = {"virtual_size": virtual_size, "data_size": data_size, "seed": seed, "sources": sorted(SOURCES)}
    paths = {name: (os.path.join(workdir, "source-%s.%s" % (name, fmt)), fmt) for name, (fmt, _opts) in SOURCES.items()}
    if os.path.exists(stamp):
        with open(stamp) as handle:
            built = json.load(handle)
        if built.get("wanted") == wanted and all(os.path.exists(path) for path, _fmt in paths.values()):
            return built["description"], paths
        os.unlink(stamp)
    raw = paths["raw"][0]
    log("building the corpus: %d MiB virtual, %d MiB data in %s" % (virtual_size // MIB, data_size // MIB, workdir))
    description = write_raw(raw, virtual_size, data_size, seed)
    for name, (fmt, opts) in SOURCES.items():
        if name == "raw":
            continue
        path = paths[name][0]
        if os.path.exists(path):
            os.unlink(path)
        command = ["qemu-img", "convert", "-f", "raw", "-O", fmt] + (["-o", opts] if opts else []) + [raw, path]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as handle:
        json.dump({"wanted": wanted, "description": description}, handle)
    return description, paths
