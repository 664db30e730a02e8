# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""info(): what ``qemu-img info --output=json`` reports, key for key."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from .._io import ImageFile
from ..errors import ImageError
from ..chain import locate
from ..formats import driver_class
from ..policy import resolve_reference
from ..probe import probe_format
from .image import open_driver, os_error, translate_os_errors


class _TopOnlyOpener:
    """Opener for info() without the backing chain: like qemu-img info, the
    backing file is named but not opened (so a missing or refused backing file
    does not hide the image's own information).  Data files, part of the
    image itself, are opened under the path policy."""

    def __init__(self, allow_dirs, force_share, trusted_files=None):
        self.allow_dirs = list(allow_dirs) if allow_dirs else None
        self.force_share = force_share
        self.trusted_files = trusted_files

    def __call__(self, referrer_path, name, fmt=None):
        return None

    def data_file(self, referrer_path, name, writable=None):
        resolved = resolve_reference(referrer_path, name, self.allow_dirs, kind="data file",
                                     trusted_files=self.trusted_files)
        return ImageFile(resolved, writable=False, force_share=self.force_share)


def open_top_layer(path, fmt=None, allow_dirs=None, force_share=False, member=None, trusted_files=None):
    """Open only the top layer of ``path``, read-only (format probed when None;
    ``member``: a disk inside an OVA or Vagrant box)."""
    try:
        path = locate(path, fmt, member)
        if fmt is None:
            fmt = probe_format(path)
        cls = driver_class(fmt, path)
        return cls.open(path, readonly=True, opener=_TopOnlyOpener(allow_dirs, force_share, trusted_files),
                        force_share=force_share)
    except ImageError:
        raise
    except OSError as exc:
        raise os_error(exc, exc.filename or path, "cannot open image")


def combine_backing_name(referrer_name, backing_name):
    """The backing file name as qemu-img shows it in full-backing-filename:
    relative names joined to the directory part of the referrer's name, as
    spelled by the caller (no normalisation)."""
    if backing_name.startswith("/") or "/" not in referrer_name:
        return backing_name
    return referrer_name[:referrer_name.rindex("/") + 1] + backing_name


def allocated_size(path):
    """Bytes allocated to the file on disk (st_blocks), as qemu-img's actual-size."""
    if getattr(path, "archive", None) is not None:
        return path.allocated_size()  # an ova.MemberPath: its blocks in the archive
    try:
        return os.stat(path).st_blocks * 512
    except OSError as exc:
        raise os_error(exc, path, "cannot stat image file")


def layer_info(driver, filename):
    """The info dict of one opened layer; ``filename`` is the name to report."""
    result = {
        "virtual-size": driver.virtual_size,
        "filename": filename,
        "format": driver.format_name,
        "actual-size": allocated_size(driver.path),
        "dirty-flag": False,
    }
    if driver.backing_filename:
        result["backing-filename"] = driver.backing_filename
        result["full-backing-filename"] = combine_backing_name(filename, driver.backing_filename)
        if driver.backing_format:
            result["backing-filename-format"] = driver.backing_format
    result.update(driver.info())
    if result.get("dirty-flag", False) is None:
        del result["dirty-flag"]     # formats qemu-img reports no dirty flag for (bochs, cloop, dmg, parallels)
    if not result.get("snapshots"):
        snapshots = driver.snapshots()
        if snapshots:
            result["snapshots"] = snapshots
        else:
            result.pop("snapshots", None)
    return result


@translate_os_errors("cannot read image information")
def info(path, fmt=None, backing_chain=False, allow_dirs=None, force_share=False, member=None,
         trusted_files=None):
    """``qemu-img info --output=json [--backing-chain]`` of ``path``.

    Returns a dict, or with ``backing_chain`` a list of dicts, top layer first.
    Without ``backing_chain`` the backing file is named, not opened (as
    qemu-img info does); with it every layer is opened through the path policy.
    ``member`` selects a disk inside an OVA or Vagrant box; its filename is
    reported as ``<archive>/<member>``.
    """
    filename = os.fspath(path)
    if backing_chain:
        driver = open_driver(filename, fmt=fmt, readonly=True, allow_dirs=allow_dirs,
                             force_share=force_share, member=member, trusted_files=trusted_files)
    else:
        driver = open_top_layer(filename, fmt=fmt, allow_dirs=allow_dirs, force_share=force_share,
                                member=member, trusted_files=trusted_files)
    try:
        if getattr(driver.path, "member_name", None) is not None:
            filename = "%s/%s" % (os.fsdecode(filename), driver.path.member_name)
        top = layer_info(driver, filename)
        if not backing_chain:
            return top
        chain_info = [top]
        layer, name = driver, filename
        while layer.backing is not None:
            name = combine_backing_name(name, layer.backing_filename or layer.backing.path)
            layer = layer.backing
            chain_info.append(layer_info(layer, name))
        return chain_info
    finally:
        driver.close()
