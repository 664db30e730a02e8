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
from ..formats.base import DATA, MAX_IO, ZERO, Driver
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


# Guest range whose block status is asked for at once (bounded memory whatever the image size).
STATUS_WINDOW = 1 << 30


def _paired_extents(extents_a, extents_b):
    """Walk two extent lists covering the same range: (start, end, extent_a, extent_b)."""
    index_a = index_b = 0
    while index_a < len(extents_a) and index_b < len(extents_b):
        extent_a, extent_b = extents_a[index_a], extents_b[index_b]
        end_a, end_b = extent_a.start + extent_a.length, extent_b.start + extent_b.length
        start, end = max(extent_a.start, extent_b.start), min(end_a, end_b)
        if start < end:
            yield start, end, extent_a, extent_b
        if end_a <= end:
            index_a += 1
        if end_b <= end:
            index_b += 1


def _same_cluster(start, extent_a, extent_b):
    """Whether both layers map ``start`` to the same host offset of the same file (so the same bytes)."""
    return (extent_a.kind == DATA and extent_b.kind == DATA and extent_a.offset is not None
            and extent_b.offset is not None
            and extent_a.offset + start - extent_a.start == extent_b.offset + start - extent_b.start)


def _same_content(layer_a, layer_b, size):
    """Whether two views of one image file read the same up to ``size`` (shared clusters are not read)."""
    for window in range(0, size, STATUS_WINDOW):
        length = min(STATUS_WINDOW, size - window)
        for start, end, extent_a, extent_b in _paired_extents(layer_a.block_status(window, length),
                                                              layer_b.block_status(window, length)):
            if extent_a.kind == extent_b.kind and extent_a.kind != DATA:
                continue  # both zero, or both falling through to the same backing file
            if _same_cluster(start, extent_a, extent_b):
                continue
            for position in range(start, end, MAX_IO):
                chunk = min(MAX_IO, end - position)
                if layer_a.read(position, chunk) != layer_b.read(position, chunk):
                    return False
    return True


def _reads_zero(layer, start, end):
    """Whether ``layer`` (with its backing chain) reads zeroes over [start, end)."""
    for window in range(start, end, STATUS_WINDOW):
        length = min(STATUS_WINDOW, end - window)
        for extent in layer.block_status(window, length):
            if extent.kind == ZERO or (extent.kind != DATA and layer.backing is None):
                continue
            for position in range(extent.start, extent.start + extent.length, MAX_IO):
                chunk = min(MAX_IO, extent.start + extent.length - position)
                if layer.read(position, chunk).count(0) != chunk:
                    return False
    return True


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
def snapshot_list(path, fmt=None, allow_dirs=None, force_share=False, trusted_files=None):
    """The internal snapshots of ``path`` as ``qemu-img snapshot -l`` lists
    them (the ``snapshots`` list of ``qemu-img info --output=json``: id, name,
    vm-state-size, date-sec, date-nsec, vm-clock-sec, vm-clock-nsec, icount).
    Formats without internal snapshots (raw) give an empty list."""
    driver = open_top_layer(path, fmt=fmt, allow_dirs=allow_dirs, force_share=force_share,
                            trusted_files=trusted_files)
    try:
        return list(driver.snapshots())
    finally:
        driver.close()


def _modify(path, name, fmt, allow_dirs, method, must_exist, trusted_files=None):
    _check_name(path, name)
    driver = open_driver(path, fmt=fmt, readonly=False, allow_dirs=allow_dirs, trusted_files=trusted_files)
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
def snapshot_create(path, name, fmt=None, allow_dirs=None, trusted_files=None):
    """Create internal snapshot ``name`` of the current disk (qemu-img snapshot -c).
    A name already used by a snapshot of the image is refused."""
    _modify(path, name, fmt, allow_dirs, "snapshot_create", must_exist=False, trusted_files=trusted_files)


@translate_os_errors("cannot apply snapshot")
def snapshot_apply(path, name, fmt=None, allow_dirs=None, trusted_files=None):
    """Revert the disk to snapshot ``name`` (by name, else by ID; qemu-img snapshot -a)."""
    _modify(path, name, fmt, allow_dirs, "snapshot_apply", must_exist=True, trusted_files=trusted_files)


@translate_os_errors("cannot delete snapshot")
def snapshot_delete(path, name, fmt=None, allow_dirs=None, trusted_files=None):
    """Delete snapshot ``name`` (by name, else by ID; qemu-img snapshot -d)."""
    _modify(path, name, fmt, allow_dirs, "snapshot_delete", must_exist=True, trusted_files=trusted_files)


@translate_os_errors("cannot compare with snapshot")
def snapshot_compare(path, name, fmt=None, allow_dirs=None, force_share=False, trusted_files=None):
    """Whether the current disk of ``path`` is what applying snapshot ``name``
    (by name, else by ID) would make it.  Returns {"identical": same size and
    content, "identical-prefix": the same content up to the smaller of the two
    sizes, "zero-beyond": the disk reads zeroes past the snapshot's size (true
    when it is not larger), "snapshot-size": virtual size the snapshot
    restores, "virtual-size": current virtual size}.  Clusters the disk still
    shares with the snapshot are not read; the others are compared byte for
    byte."""
    _check_name(path, name)
    current = open_driver(path, fmt=fmt, readonly=True, allow_dirs=allow_dirs, force_share=force_share,
                          trusted_files=trusted_files)
    snapshot = None
    try:
        if getattr(type(current), "snapshot_apply", None) is getattr(Driver, "snapshot_apply"):
            raise UnsupportedOperation("%s images have no internal snapshots" % current.format_name, path)
        if _find(current.snapshots(), name) is None:
            raise ImageError("no snapshot named %r (snapshots: %s)" % (
                name, ", ".join(repr(s["name"]) for s in current.snapshots()) or "none"), path)
        snapshot = open_driver(path, fmt=current.format_name, readonly=True, allow_dirs=allow_dirs,
                               force_share=True, trusted_files=trusted_files)
        snapshot.select_snapshot(name, snapshot_size=True)
        common = min(snapshot.virtual_size, current.virtual_size)
        prefix = _same_content(current, snapshot, common)
        beyond = _reads_zero(current, common, current.virtual_size) if prefix else False
        return {"identical": prefix and snapshot.virtual_size == current.virtual_size,
                "identical-prefix": prefix, "zero-beyond": beyond,
                "snapshot-size": snapshot.virtual_size, "virtual-size": current.virtual_size}
    finally:
        if snapshot is not None:
            snapshot.close()
        current.close()
