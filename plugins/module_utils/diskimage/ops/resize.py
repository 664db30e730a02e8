# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""resize(): change an image's virtual size, as ``qemu-img resize`` does.

Growing is always allowed; shrinking only with ``shrink=True`` (qemu-img's
``--shrink``), because everything past the new end is lost.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ..errors import ImageError, InvalidOptionError, NoSpaceError
from .image import open_driver
from .sizes import parse_size


def resize(path, size, fmt=None, shrink=False, preallocation=None, allow_dirs=None, key_secret=None,
           trusted_files=None):
    """Set the virtual size of ``path`` to ``size`` (bytes or a size string;
    a leading ``+``/``-`` is relative to the current size, as in qemu-img).
    ``key_secret``: the passphrase of an encrypted (LUKS) image."""
    relative = None
    if isinstance(size, str) and size.strip()[:1] in ("+", "-"):
        relative = size.strip()[0]
        size = size.strip()[1:]
    new_size = parse_size(size)
    driver = open_driver(path, fmt=fmt, readonly=False, allow_dirs=allow_dirs, key_secret=key_secret,
                         trusted_files=trusted_files)
    try:
        current = driver.virtual_size
        if relative == "+":
            new_size = current + new_size
        elif relative == "-":
            new_size = current - new_size
            if new_size < 0:
                raise InvalidOptionError("cannot shrink by more than the current size %d" % current, path)
        if new_size == current:
            return {"old-size": current, "new-size": current}
        if new_size < current and not shrink:
            raise InvalidOptionError(
                "shrinking from %d to %d bytes deletes the data past the new end; "
                "pass shrink=True to do it" % (current, new_size), path)
        if new_size > current:
            _grow(driver, current, new_size, preallocation)
        else:
            driver.resize(new_size, preallocation=preallocation)
            driver.flush()
        return {"old-size": current, "new-size": driver.virtual_size}
    finally:
        driver.close()


def _grow(driver, current, new_size, preallocation):
    """Grow, or leave the image as it was: a grow that fails half-way (out of space
    for falloc/full preallocation) has its writes taken back, as qemu-img resize,
    which commits the new size only once the space is there."""
    files = driver.host_files()
    for image_file in files:
        image_file.start_undo()
    try:
        driver.resize(new_size, preallocation=preallocation)
        driver.flush()
    except BaseException as exc:
        undo_errors = []
        for image_file in files:
            # each file, even when putting back another failed (an image and its external data file)
            try:
                image_file.undo()
            except Exception as undo_exc:  # pylint: disable=broad-except
                undo_errors.append(str(undo_exc))
        if undo_errors:
            error = ImageError("growing from %d to %d bytes failed (%s), and putting the image back failed "
                               "too (%s): the image is left partly grown; check it with qemu-img check"
                               % (current, new_size, exc, "; ".join(undo_errors)), driver.path)
            # the image changed: a caller reporting changes says so
            error.image_changed = True
            raise error
        if isinstance(exc, NoSpaceError):
            raise NoSpaceError("cannot grow the image from %d to %d bytes%s: no space left on the device "
                               "(file system) holding it; the image was left as it was (%d bytes)"
                               % (current, new_size, " with %s preallocation" % preallocation
                                  if preallocation not in (None, "off") else "", current), driver.path)
        raise
    finally:
        for image_file in files:
            image_file.stop_undo()
