# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deflate for compressed image data: an accelerator when the host has one, else the standard library.

``zlib_ng.zlib_ng`` (PyPI ``zlib-ng``) is a drop-in of the ``zlib`` module's API
(``compressobj``/``decompressobj``/``error``) and is about twice as fast; it is
used when it can be imported, never required.  Its output is plain deflate (RFC
1951) or zlib (RFC 1950) data that any inflater reads, qemu-img's included.

Its levels do not compress exactly as zlib's: ``_LEVELS`` holds, per window, the
zlib-ng level whose output was no larger than zlib's default level (what qemu-img
uses for qcow2 clusters and streamOptimized VMDK grains) on the benchmark corpus
(bench/corpus.py: half random, half text, 64 KiB clusters) while still faster.

Both zlib and zlib-ng release the GIL while they work, so callers compress and
inflate from worker threads.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import zlib as _stdlib_zlib

try:  # optional accelerator (never required)
    from zlib_ng import zlib_ng as _zlib_ng
except ImportError:
    _zlib_ng = None

# zlib's default level: what qemu-img compresses with.
DEFAULT_LEVEL = 6

# wbits -> memLevel: qemu-img's (9 for qcow2's raw deflate, zlib's compress() default 8 for VMDK).
_MEMLEVELS = {-12: 9, 15: 8}

# wbits -> zlib-ng level no larger than zlib's DEFAULT_LEVEL (see the module docstring).
_LEVELS = {-12: 6, 15: 7}

# The error types an inflater may raise (the accelerator's and the standard library's).
ERRORS = (_stdlib_zlib.error,) if _zlib_ng is None else (_stdlib_zlib.error, _zlib_ng.error)


def backend():
    """The module that compresses and inflates: zlib-ng's when importable, else ``zlib``."""
    return _zlib_ng if _zlib_ng is not None else _stdlib_zlib


def backend_name():
    """``zlib-ng`` or ``zlib`` (for messages and results)."""
    return "zlib-ng" if backend() is not _stdlib_zlib else "zlib"


def compress(data, wbits):
    """``data`` deflated at qemu-img's compression ratio or better: raw deflate for a
    negative ``wbits`` (its window, e.g. -12 for qcow2 clusters), the zlib format for
    ``wbits`` 8..15 (e.g. 15 for VMDK grains)."""
    module = backend()
    level = DEFAULT_LEVEL if module is _stdlib_zlib else _LEVELS.get(wbits, DEFAULT_LEVEL)
    compressor = module.compressobj(level, module.DEFLATED, wbits, _MEMLEVELS.get(wbits, 8))
    return compressor.compress(data) + compressor.flush()


def decompressobj(wbits):
    """An inflater for ``wbits`` (as ``zlib.decompressobj``); its errors are in ``ERRORS``."""
    return backend().decompressobj(wbits)
