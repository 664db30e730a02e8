# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry of format drivers, each imported when it is first asked for.

Ansible runs a module from a zip file, where Python caches no bytecode: every
module a task imports is compiled from source on every task.  So a driver is
imported only when its class is needed (``driver_class``, ``DRIVERS[name]``),
and probing imports only the drivers whose cheap pre-check on the header
bytes and file name passes (``claims``).

The imports stay static statements (inside the loader functions): Ansible's
payload finder walks the whole syntax tree, so every driver is still packed.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from collections.abc import MutableMapping


# ------------------------------------------------------------------ loaders
# One function per format, each with its static import (see the module docstring).
def _raw():
    from .raw import RawDriver
    return RawDriver


def _qcow2():
    from .qcow2 import Qcow2Driver
    return Qcow2Driver


def _vmdk():
    from .vmdk import VmdkDriver
    return VmdkDriver


def _vdi():
    from .vdi import VdiDriver
    return VdiDriver


def _vpc():
    from .vpc import VpcDriver
    return VpcDriver


def _qed():
    from .qed import QedDriver
    return QedDriver


def _qcow():
    from .qcow import QcowDriver
    return QcowDriver


def _vhdx():
    from .vhdx import VhdxDriver
    return VhdxDriver


def _parallels():
    from .parallels import ParallelsDriver
    return ParallelsDriver


def _bochs():
    from .bochs import BochsDriver
    return BochsDriver


def _cloop():
    from .cloop import CloopDriver
    return CloopDriver


def _dmg():
    from .dmg import DmgDriver
    return DmgDriver


def _luks():
    from .luks import LuksDriver
    return LuksDriver


# --------------------------------------------------------------- pre-checks
# Per format, a test on the first bytes (``header``, as Driver.probe gets them) and the
# file name that is true whenever that driver's probe() could score above 0: a driver
# whose pre-check fails is neither imported nor asked.  Each may be looser than the
# probe (it only has to be cheap), never stricter: tests/unit/.../test_probe_lazy.py
# compares the result with asking every driver.
def _starts(magic, offset=0):
    def check(header, filename):
        return header[offset:offset + len(magic)] == magic
    return check


def _vmdk_may_claim(header, filename):
    # KDMV / COWD sparse extents; a text descriptor (formats.vmdk.probe_descriptor_text):
    # comment lines and lines of spaces, then "version=".
    return header[:4] in (b"KDMV", b"COWD") or (header[:1] in (b"#", b" ", b"v") and b"version=" in header)


def _parallels_may_claim(header, filename):
    # either header magic; a bundle's DiskDescriptor.xml holds the <Parallels_disk_image> root element
    return header[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt") or b"<Parallels_disk_image" in header


def _dmg_may_claim(header, filename):
    # dmg is recognised by its file name only (as QEMU does)
    return bool(filename) and str(filename).endswith(".dmg")


def _always(header, filename):
    return True


QCOW_MAGIC = b"QFI\xfb"     # qcow and qcow2 share it; the big-endian version that follows tells them apart

# name: (loader, pre-check)
_FORMATS = {
    "raw": (_raw, _always),             # anything is raw (score 1): the probe's fallback
    "qcow2": (_qcow2, _starts(QCOW_MAGIC)),
    "vmdk": (_vmdk, _vmdk_may_claim),
    "vdi": (_vdi, _starts(b"\x7f\x10\xda\xbe", 64)),      # signature 0xbeda107f, little-endian, at 64
    "vpc": (_vpc, _starts(b"conectix")),
    "qed": (_qed, _starts(b"QED\x00")),
    "qcow": (_qcow, _starts(QCOW_MAGIC + b"\x00\x00\x00\x01")),
    "vhdx": (_vhdx, _starts(b"vhdxfile")),
    "parallels": (_parallels, _parallels_may_claim),
    "bochs": (_bochs, _starts(b"Bochs Virtual HD Image")),
    "cloop": (_cloop, _starts(b"#!/bin/sh\n#V2.0 Format\n")),
    "dmg": (_dmg, _dmg_may_claim),
    "luks": (_luks, _starts(b"LUKS\xba\xbe")),
}

_NOT_LOADED = object()


class DriverRegistry(MutableMapping):
    """Format name -> driver class; a driver's module is imported on the first lookup.

    Iterating, ``len`` and ``in`` import nothing; ``DRIVERS[name]``, ``get`` and
    ``values``/``items`` import what they return.  Entries may be replaced or removed
    (tests do); a replaced entry has no pre-check, so ``may_claim`` is always true for it.
    """

    def __init__(self, formats):
        self._formats = formats
        self._entries = dict((name, _NOT_LOADED) for name in formats)
        self._loaded = {}       # name -> the class its loader returned

    def __getitem__(self, name):
        cls = self._entries[name]
        if cls is _NOT_LOADED:
            cls = self._loaded.get(name)
            if cls is None:
                cls = self._loaded[name] = self._formats[name][0]()
            self._entries[name] = cls
        return cls

    def __setitem__(self, name, cls):
        self._entries[name] = cls

    def __delitem__(self, name):
        del self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def __repr__(self):
        return "DriverRegistry(%s)" % ", ".join(sorted(self._entries))

    def may_claim(self, name, header, filename):
        """False only when the driver registered as ``name`` surely scores ``header`` 0."""
        cls = self._entries[name]
        if name in self._formats and (cls is _NOT_LOADED or cls is self._loaded.get(name)):
            return self._formats[name][1](header, filename)
        return True


DRIVERS = DriverRegistry(_FORMATS)


def driver_class(fmt, path=None):
    """The driver class for format name ``fmt``."""
    from ..errors import UnsupportedFeature
    try:
        return DRIVERS[fmt]
    except KeyError:
        raise UnsupportedFeature("unknown or unsupported image format %r (supported: %s)"
                                 % (fmt, ", ".join(sorted(DRIVERS))), path)


def claims(header, filename=None, exclude=("raw",)):
    """``(score, name)`` of every registered driver, by name, that scores ``header`` above 0.

    ``header``: the first bytes of the image (bytes, as Driver.probe gets them); drivers
    in ``exclude`` are not asked.  Only drivers whose pre-check passes are imported.
    """
    found = []
    for name in sorted(DRIVERS):
        if name in exclude or not DRIVERS.may_claim(name, header, filename):
            continue
        score = DRIVERS[name].probe(header, filename)
        if score > 0:
            found.append((score, name))
    return found
