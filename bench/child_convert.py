# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One conversion by the image library, in a process of its own (bench.py times it and reads its peak RSS).

python3 bench/child_convert.py SRC SRC_FORMAT DST OUT_FORMAT [--compress] [-o NAME=VALUE ...]

Prints the library's result (JSON) on stdout, with "peak_rss": this process's peak RSS in bytes (VmHWM).
"""

from __future__ import absolute_import, division, print_function

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_convert import convert_image, import_library  # noqa: E402  pylint: disable=wrong-import-position


def peak_rss():
    """This process's peak resident set size in bytes (VmHWM), None where /proc does not say.

    Not ru_maxrss: Linux carries the parent's peak over fork and exec into it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("src")
    parser.add_argument("src_format")
    parser.add_argument("dst")
    parser.add_argument("out_format")
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("-o", dest="options", action="append", default=[], help="NAME=VALUE output option")
    args = parser.parse_args()
    options = dict(option.split("=", 1) for option in args.options) or None
    diskimage, shim = import_library()
    try:
        result = convert_image(diskimage, args.src, args.dst, args.out_format, src_fmt=args.src_format,
                               options=options, compress=args.compress)
    finally:
        shutil.rmtree(shim, ignore_errors=True)
    result = dict(result, peak_rss=peak_rss())
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
