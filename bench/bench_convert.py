# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time the embedded image library against qemu-img, side by side.

Builds a sparse-ish raw image (default 1 GiB) with a mix of data patterns
(compressible text-like runs, random runs, explicit zero runs, holes), then
times convert (raw->qcow2, qcow2->raw, compressed qcow2), info and check with
both tools and prints the ratio ours/qemu-img.  Every output is verified with
qemu-img compare.  Not run in CI: see bench/README.md.
"""

from __future__ import absolute_import, division, print_function

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def import_library():
    """Import the library from this checkout as ansible_collections.kvm.storage."""
    shim = tempfile.mkdtemp(prefix="kvm-storage-bench-")
    os.makedirs(os.path.join(shim, "ansible_collections", "kvm"))
    os.symlink(ROOT, os.path.join(shim, "ansible_collections", "kvm", "storage"))
    sys.path.insert(0, shim)
    from ansible_collections.kvm.storage.plugins.module_utils import diskimage
    return diskimage, shim


def convert_image(diskimage, src, dst, out_fmt, src_fmt=None, options=None, compress=False):
    """Our convert, as every benchmark calls it (the one call site of diskimage.convert in bench/)."""
    settings = diskimage.ConvertOptions(src_fmt=src_fmt, create_options=options, compress=compress)
    return diskimage.convert(src, dst, out_fmt, settings)


def make_source(path, size, data_fraction, seed):
    """A raw image of ``size`` bytes: about ``data_fraction`` of it written in
    1-8 MiB runs of mixed content, the rest holes."""
    rng = random.Random(seed)
    words = [b"kernel", b"initrd", b"vmlinuz", b"systemd", b"qemu", b"libvirt", b"\n", b" ", b"/usr/lib/"]
    text_block = b"".join(rng.choice(words) for _word in range(200000))[:MIB]
    random_block = os.urandom(MIB)
    zero_block = bytes(MIB)
    with open(path, "wb") as image:
        image.truncate(size)
        offset = 0
        while offset < size:
            run = rng.randint(1, 8) * MIB
            if rng.random() < data_fraction:
                kind = rng.choice(("text", "text", "random", "zero", "mixed"))
                for position in range(offset, min(offset + run, size), MIB):
                    if kind == "text":
                        block = text_block
                    elif kind == "random":
                        block = random_block
                    elif kind == "zero":
                        block = zero_block
                    else:
                        block = text_block[:256 * 1024] + bytes(512 * 1024) + random_block[:256 * 1024]
                    image.seek(position)
                    image.write(block[:size - position])
            offset += run + rng.randint(0, 6) * MIB


def timed(function, repeat):
    best = None
    for _attempt in range(repeat):
        started = time.monotonic()
        function()
        elapsed = time.monotonic() - started
        best = elapsed if best is None else min(best, elapsed)
    return best


def run(*args):
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def remove(path):
    if os.path.exists(path):
        os.unlink(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size", default="1G", help="source image size (qemu-img size syntax, default 1G)")
    parser.add_argument("--data-fraction", type=float, default=0.5,
                        help="share of the image written with data (default 0.5)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement, best kept (default 1)")
    parser.add_argument("--workdir", help="directory for the images (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the images")
    args = parser.parse_args()

    diskimage, shim = import_library()
    size = diskimage.parse_size(args.size)
    workdir = args.workdir or tempfile.mkdtemp(prefix="kvm-storage-bench-images-")
    os.makedirs(workdir, exist_ok=True)
    source = os.path.join(workdir, "source.raw")
    try:
        print("building %s source image in %s ..." % (args.size, workdir))
        make_source(source, size, args.data_fraction, seed=42)
        qcow2_source = os.path.join(workdir, "source.qcow2")
        remove(qcow2_source)
        run("qemu-img", "convert", "-O", "qcow2", source, qcow2_source)

        cases = []

        def convert_case(name, src, out_fmt, compress):
            ours = os.path.join(workdir, "ours-%s.%s" % (name, out_fmt))
            theirs = os.path.join(workdir, "theirs-%s.%s" % (name, out_fmt))

            def run_ours():
                remove(ours)
                convert_image(diskimage, src, ours, out_fmt, compress=compress)

            def run_theirs():
                remove(theirs)
                run(*(["qemu-img", "convert", "-O", out_fmt] + (["-c"] if compress else []) + [src, theirs]))

            ours_time, theirs_time = timed(run_ours, args.repeat), timed(run_theirs, args.repeat)
            run("qemu-img", "compare", src, ours)
            cases.append(("convert " + name, ours_time, theirs_time,
                          "%d/%d MiB allocated" % (os.stat(ours).st_blocks * 512 // MIB,
                                                   os.stat(theirs).st_blocks * 512 // MIB)))
            return ours

        convert_case("raw->qcow2", source, "qcow2", False)
        convert_case("qcow2->raw", qcow2_source, "raw", False)
        compressed = convert_case("raw->qcow2 -c", source, "qcow2", True)

        for name, path in (("qcow2", qcow2_source), ("compressed qcow2", compressed)):
            cases.append(("info " + name, timed(lambda: diskimage.info(path), args.repeat),
                          timed(lambda: run("qemu-img", "info", "--output=json", path), args.repeat), ""))
            cases.append(("check " + name, timed(lambda: diskimage.check(path), args.repeat),
                          timed(lambda: run("qemu-img", "check", "--output=json", path), args.repeat), ""))

        print()
        print("%-24s %10s %10s %8s  %s" % ("operation", "ours (s)", "qemu-img", "ratio", "notes"))
        for name, ours_time, theirs_time, notes in cases:
            ratio = ours_time / theirs_time if theirs_time else float("inf")
            print("%-24s %10.3f %10.3f %7.1fx  %s" % (name, ours_time, theirs_time, ratio, notes))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(shim, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
