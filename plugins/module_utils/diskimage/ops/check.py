# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""check(): ``qemu-img check --output=json [-r leaks|all]``."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from ..errors import InvalidOptionError, UnsupportedOperation
from ..formats.base import Driver
from .image import open_driver, translate_os_errors

REPAIR_MODES = (None, "leaks", "all")


@translate_os_errors("cannot check image")
def check(path, fmt=None, repair=None, allow_dirs=None, force_share=False, member=None, trusted_files=None):
    """Check the consistency of the image at ``path``; with ``repair``
    ("leaks" or "all") fix what can be fixed, as qemu-img check -r does.

    Returns the dict of ``qemu-img check --output=json``: the driver's result
    plus ``filename`` and ``format``.  Formats without checks (raw) raise
    UnsupportedOperation, as qemu-img refuses them.  ``member``: a disk inside
    an OVA or Vagrant box (no repair there: read-only).
    """
    if repair not in REPAIR_MODES:
        raise InvalidOptionError("repair must be one of None, 'leaks', 'all', found %r" % (repair,), path)
    if repair is not None and force_share:
        raise InvalidOptionError("force_share cannot be used when repairing", path)
    filename = os.fspath(path)
    driver = open_driver(filename, fmt=fmt, readonly=repair is None, allow_dirs=allow_dirs,
                         force_share=force_share, member=member, check_open=repair is not None,
                         trusted_files=trusted_files)
    try:
        if type(driver).check is Driver.check:
            raise UnsupportedOperation("This image format does not support checks (format %s)"
                                       % driver.format_name, filename)
        result = dict(driver.check(repair=repair))
        if repair is not None:
            driver.flush()
    finally:
        driver.close()
    result["filename"] = filename
    result["format"] = driver.format_name
    return result
