# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal snapshots: ``qemu-img snapshot -l / -c / -a / -d``.

Thin wrappers over the driver's snapshot methods.  One deliberate
difference from qemu-img: creating a snapshot whose name is already taken is
refused (qemu-img only refuses a duplicate ID), so that a name always
designates one snapshot and can be used to manage snapshots idempotently.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ..errors import ImageError, InvalidOptionError, UnsupportedOperation
from ..formats.base import Driver
from .image import open_driver, translate_os_errors
from .info import open_top_layer


def _check_name(path, name):
    if not isinstance(name, str) or not name:
        raise InvalidOptionError("snapshot name must be a non-empty string, found %r" % (name,), path)
    if "\0" in name:
        raise InvalidOptionError("snapshot name %r contains a NUL character" % (name,), path)


def _snapshot_method(driver, method, path):
    function = getattr(driver, method, None)
    if function is None or getattr(type(driver), method, None) is getattr(Driver, method):
        raise UnsupportedOperation("%s images have no internal snapshots" % driver.format_name, path)
    return function


def _find(snapshots, name):
    """The listed snapshot ``name`` designates (by name, else by ID), or None."""
    for snapshot in snapshots:
        if snapshot["name"] == name:
            return snapshot
    for snapshot in snapshots:
        if snapshot["id"] == name:
            return snapshot
    return None


@translate_os_errors("cannot list snapshots")
def snapshot_list(path, fmt=None, allow_dirs=None, force_share=False):
    """The internal snapshots of ``path`` as ``qemu-img snapshot -l`` lists
    them (the ``snapshots`` list of ``qemu-img info --output=json``: id, name,
    vm-state-size, date-sec, date-nsec, vm-clock-sec, vm-clock-nsec, icount).
    Formats without internal snapshots (raw) give an empty list."""
    driver = open_top_layer(path, fmt=fmt, allow_dirs=allow_dirs, force_share=force_share)
    try:
        return list(driver.snapshots())
    finally:
        driver.close()


def _modify(path, name, fmt, allow_dirs, method, must_exist):
    _check_name(path, name)
    driver = open_driver(path, fmt=fmt, readonly=False, allow_dirs=allow_dirs)
    try:
        function = _snapshot_method(driver, method, path)
        existing = _find(driver.snapshots(), name)
        if must_exist and existing is None:
            raise ImageError("no snapshot named %r (snapshots: %s)" % (
                name, ", ".join(repr(s["name"]) for s in driver.snapshots()) or "none"), path)
        if not must_exist and existing is not None and existing["name"] == name:
            raise ImageError("a snapshot named %r already exists (id %s)" % (name, existing["id"]), path)
        function(name)
        driver.flush()
    finally:
        driver.close()


@translate_os_errors("cannot create snapshot")
def snapshot_create(path, name, fmt=None, allow_dirs=None):
    """Create internal snapshot ``name`` of the current disk (qemu-img snapshot -c).
    A name already used by a snapshot of the image is refused."""
    _modify(path, name, fmt, allow_dirs, "snapshot_create", must_exist=False)


@translate_os_errors("cannot apply snapshot")
def snapshot_apply(path, name, fmt=None, allow_dirs=None):
    """Revert the disk to snapshot ``name`` (by name, else by ID; qemu-img snapshot -a)."""
    _modify(path, name, fmt, allow_dirs, "snapshot_apply", must_exist=True)


@translate_os_errors("cannot delete snapshot")
def snapshot_delete(path, name, fmt=None, allow_dirs=None):
    """Delete snapshot ``name`` (by name, else by ID; qemu-img snapshot -d)."""
    _modify(path, name, fmt, allow_dirs, "snapshot_delete", must_exist=True)
