# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the hostile-image generators: pristine images made by the library itself (once per process,
kept as bytes), then patched.  Everything is deterministic: no randomness without a fixed seed."""
from __future__ import annotations

import functools
import os
import pathlib
import struct
import tempfile

from ansible_collections.kvm.storage.plugins.module_utils import diskimage

from hardening.hostile._case import Case

MIB = 1 << 20
KIB = 1 << 10
LUKS_PASSPHRASE = "hostile-corpus"   # the sandbox hands it to operations on luks cases

# Where path-escape cases put the file they try to reach: beside the case directory, never inside it.
OUTSIDE = "outside"
# The usual refusal of a name the path policy rejects (PolicyError's messages).
POLICY = r"(?i)policy|outside|protocol|not allowed|refus|symbolic|\.\.|regular file|not inside"


@functools.lru_cache(maxsize=None)
def pristine(fmt, size=2 * MIB, options=(), writes=((0, b"\x11" * 65536), (MIB, b"\x22" * 65536))):
    """Bytes of a fresh ``fmt`` image made by the library, with ``writes`` (offset, data) applied."""
    with tempfile.TemporaryDirectory(prefix="hostile-pristine-") as directory:
        path = os.path.join(directory, "image." + fmt)
        opts = dict(options)
        key = {}
        if fmt == "luks":
            opts.setdefault("key-secret", LUKS_PASSPHRASE)
            opts.setdefault("iter-time", 10)
            key = {"key_secret": LUKS_PASSPHRASE}
        diskimage.create(path, fmt, size=size, options=opts)
        if writes:
            with diskimage.open_image(path, fmt=fmt, readonly=False, **key) as image:
                for offset, data in writes:
                    image.write(offset, data)
        with open(path, "rb") as image_file:
            return image_file.read()


def write(path, data):
    """``data`` written to ``path``, sparse (runs of zeroes are holes)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = memoryview(bytes(data))
    zero = bytes(65536)
    with open(str(path), "wb") as image_file:
        for start in range(0, len(data), 65536):
            chunk = data[start:start + 65536]
            if chunk != zero[:len(chunk)]:
                image_file.seek(start)
                image_file.write(chunk)
        image_file.truncate(len(data))
    return path


def poke(data, offset, value):
    """``data`` (bytes) with ``value`` written at ``offset`` (grown with zeroes when needed)."""
    data = bytearray(data)
    if offset < 0:
        offset += len(data)
    end = offset + len(value)
    if end > len(data):
        data.extend(bytes(end - len(data)))
    data[offset:end] = value
    return bytes(data)


def pack(fmt, value):
    return struct.pack(fmt, value)


def outside_file(directory, name="secret.raw", size=64 * KIB):
    """A file beside the case's directory (outside the policy), which an escape tries to reach."""
    target = pathlib.Path(directory).parent / OUTSIDE / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(b"SECRET!!" * (size // 8))
    return target


def patched(fmt, filename, edits, base=None):
    """A builder: the pristine ``fmt`` image (or ``base()`` bytes) with ``edits`` [(offset, bytes)] applied."""
    def build(directory):
        data = base() if base is not None else pristine(fmt)
        for offset, value in edits:
            data = poke(data, offset, value)
        return write(pathlib.Path(directory) / filename, data)
    return build


def edited(fmt, filename, edits, base=None):
    """A builder: the pristine ``fmt`` image (or ``base()`` bytes) with the edits that
    ``edits(data)`` computes from its bytes, [(offset, bytes)], applied."""
    def build(directory):
        data = base() if base is not None else pristine(fmt)
        for offset, value in edits(data):
            data = poke(data, offset, value)
        return write(pathlib.Path(directory) / filename, data)
    return build


def truncated(fmt, filename, length, base=None):
    def build(directory):
        data = base() if base is not None else pristine(fmt)
        return write(pathlib.Path(directory) / filename, data[:length])
    return build


def field_sweep(fmt, filename, fields, values, source, base=None, prefix=None):
    """Cases setting each header field (name, offset, struct format) to zero, to all ones and to each of
    ``values`` (integers, masked to the field's width): iotests' "invalid header values", field by field."""
    cases = []
    for name, offset, code in fields:
        width = struct.calcsize(code)
        seen = set()
        for value in (0, -1) + tuple(values or ()):
            value &= (1 << (8 * width)) - 1
            if value in seen:
                continue
            seen.add(value)
            cases.append(Case(name="%s/%s-%s=%#x" % (prefix or fmt, "field", name, value), fmt=fmt,
                              build=patched(fmt, filename, [(offset, struct.pack(code, value))], base),
                              source=source))
    return cases


HOSTILE_VALUES = (0x7fffffff,)


def symlink_out(directory, link_name, target):
    link = pathlib.Path(directory) / link_name
    os.symlink(str(target), str(link))
    return link


_HELPERS = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "module_utils" / "diskimage"


@functools.lru_cache(maxsize=None)
def helper(name):
    """A test helper module of tests/unit/plugins/module_utils/diskimage/ (vhd_building, vhdx_editing,
    qcow2_editing), loaded by path: that directory is on sys.path only when its own tests run."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    spec = importlib.util.spec_from_file_location("hostile_helper_" + name, str(_HELPERS / (name + ".py")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
