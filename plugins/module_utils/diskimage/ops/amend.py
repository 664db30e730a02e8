# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""amend(): ``qemu-img amend -o``: change format options in place.

qcow2 allows compat (0.10 <-> 1.1), lazy_refcounts, refcount_bits and
backing_file/backing_fmt (header only); any other option is refused by the
driver, naming it.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ..errors import InvalidOptionError
from .create import close_quietly
from .image import open_driver, translate_os_errors
from .sizes import normalize_options


@translate_os_errors("cannot amend image")
def amend(path, options, fmt=None, allow_dirs=None, trusted_files=None):
    """Apply the qemu-img ``-o`` ``options`` to the existing image ``path``."""
    options = normalize_options(options)
    if not options:
        raise InvalidOptionError("amend needs at least one option", path)
    driver = open_driver(path, fmt=fmt, readonly=False, allow_dirs=allow_dirs, trusted_files=trusted_files)
    try:
        driver.amend(options)
        driver.flush()
    finally:
        close_quietly(driver)
