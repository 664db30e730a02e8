# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""create(): ``qemu-img create``, with new images built under a temporary
name in the destination directory and renamed into place only when complete
and flushed (docs/security.md rule 7; docs/guarantees.md).

With ``on_device`` the image is written in place onto an existing block
device (an LVM logical volume, a disk partition), as ``qemu-img create``
onto a host device does: only block devices, never an existing file, and
only formats whose layout suits a fixed-size device (raw, qcow2)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import binascii
import errno
import os
import stat
import time

from .._io import ImageFile
from ..errors import ImageError, ImageInUseError, InvalidOptionError, UnsupportedOperation
from ..formats import driver_class
from .. import policy
from .image import open_driver, os_error, translate_os_errors
from .sizes import normalize_options, parse_size, round_up, SECTOR_SIZE

# Formats an image can be created in place on a block device in.
DEVICE_FORMATS = ("raw", "qcow2")

# errno values of link(2) on file systems without hard links.
_NO_HARD_LINKS = frozenset((errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP,
                            getattr(errno, "EOPNOTSUPP", errno.ENOTSUP), errno.ENOSYS))


# ------------------------------------------------------------ temporary files
def destination_path(path):
    """Absolute path of a new image; its directory must exist and the path must not."""
    destination = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(destination)
    if not os.path.isdir(directory):
        raise os_error(OSError(errno.ENOENT, "directory does not exist"), directory,
                       "cannot create an image in it")
    # what a killed run left behind goes first, even when that run got as far as publishing
    remove_stale_temporaries(destination)
    if os.path.lexists(destination):
        raise InvalidOptionError("the destination already exists; it is never overwritten "
                                 "(delete it first)", destination)
    return destination


def device_path(path):
    """Absolute path of an existing block device an image is written onto in
    place (``on_device``); anything else is refused, regular files included."""
    destination = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(destination)
    except OSError as exc:
        raise os_error(exc, destination, "on_device: cannot find the block device")
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidOptionError("on_device: the destination is not a block device (mode 0o%o); an existing "
                                 "file is never overwritten" % stat.S_IFMT(st.st_mode), destination)
    # An exclusive open fails while the kernel holds the device (mounted, swap, device-mapper, md).
    try:
        fd = os.open(destination, os.O_RDONLY | os.O_EXCL | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise ImageInUseError("on_device: the block device is in use by the system (mounted, swap, or held "
                                  "by device-mapper or md)", destination)
        raise os_error(exc, destination, "on_device: cannot open the block device")
    os.close(fd)
    return destination


def device_driver_class(fmt, path):
    """The driver class of ``fmt`` for an image created in place on a block device."""
    cls = creatable_driver_class(fmt, path)
    if fmt not in DEVICE_FORMATS:
        raise UnsupportedOperation("creating %s images on a block device is not supported (formats: %s)"
                                   % (fmt, ", ".join(DEVICE_FORMATS)), path)
    return cls


def build_on_device(cls, fmt, device, size, options, backing):
    """Write a new image of format ``fmt`` (driver class ``cls``) onto block
    ``device`` in place (``Driver.create_on_device``: raw writes nothing).
    The device is opened writable with QEMU's locks either way, so a device
    in use by a running guest is refused."""
    if cls.create_on_device(device, size, options, backing):
        sync_file(device)


def temporary_path(destination):
    """``.<name>.XXXXXX.tmp`` beside ``destination`` (drivers create it with O_EXCL)."""
    directory, name = os.path.split(destination)
    tag = binascii.hexlify(os.urandom(3)).decode("ascii")
    return os.path.join(directory, ".%s.%s.tmp" % (name, tag))


# A temporary image is stale when no process holds it open; on a file system without
# OFD locks that cannot be told, and only one untouched for this long is taken as stale.
STALE_WITHOUT_LOCKS = 3600


def remove_stale_temporaries(destination):
    """Remove the ``.<name>.XXXXXX.tmp`` temporary images of ``destination``
    that a run killed before it could discard them left behind
    (docs/crash-safety.md).  A run in progress holds QEMU's locks on its
    temporary image from the moment it creates it (O_EXCL, then the locks):
    such a file is in use and kept.  A stale one is removed while this
    process holds the write lock on it, so a creator racing with us fails
    with "in use" rather than writing to a removed name.  Best effort: what
    cannot be opened or removed stays (the new run has its own name)."""
    directory, name = os.path.split(destination)
    prefix, suffix = ".%s." % name, ".tmp"
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        tag = entry[len(prefix):-len(suffix)]
        if not (entry.startswith(prefix) and entry.endswith(suffix) and len(tag) == 6
                and all(c in "0123456789abcdef" for c in tag)):
            continue
        path = os.path.join(directory, entry)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            image_file = ImageFile(path, writable=True)
        except (ImageError, OSError):
            continue        # in use by a run in progress (ImageInUseError), or not ours to open
        try:
            if image_file.locked or os.fstat(image_file.fd).st_mtime < time.time() - STALE_WITHOUT_LOCKS:
                os.unlink(path)
        except OSError:
            pass
        finally:
            image_file.close()


def sync_file(path, cls=None):
    """fsync ``path`` (the temporary image) before it is published; with the
    driver class ``cls``, every file the new image consists of (VMDK extents)."""
    for name in (cls.created_files(path) if cls is not None else [path]):
        try:
            fd = os.open(name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise os_error(exc, name, "cannot flush the new image")


def _sync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync directories; the data itself is synced
    finally:
        os.close(fd)


def publish(temporary, destination):
    """Give the finished, flushed temporary image its final name, never
    replacing a file that appeared there meanwhile."""
    try:
        os.link(temporary, destination)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise InvalidOptionError("the destination already exists; it is never overwritten "
                                     "(delete it first)", destination)
        if exc.errno not in _NO_HARD_LINKS:
            raise os_error(exc, destination, "cannot move the new image into place")
        # No hard links here: the existence check and rename are as close as it gets.
        if os.path.lexists(destination):
            raise InvalidOptionError("the destination already exists; it is never overwritten "
                                     "(delete it first)", destination)
        try:
            os.rename(temporary, destination)
        except OSError as exc2:
            raise os_error(exc2, destination, "cannot move the new image into place")
    else:
        discard(temporary)
    _sync_directory(os.path.dirname(destination))


def discard(temporary, cls=None):
    """Remove a temporary image (best effort: used on failure paths); with the
    driver class ``cls``, the companion files it created too (VMDK extents
    named after the final name: Driver.created_files)."""
    names = [temporary]
    if cls is not None:
        try:
            names = cls.created_files(temporary)
        except (ImageError, OSError):
            pass
    for name in names:
        try:
            os.unlink(name)
        except OSError:
            pass


def close_quietly(driver):
    """Close ``driver`` on an error path without hiding the original error."""
    if driver is None:
        return
    try:
        driver.close()
    except Exception:  # pylint: disable=broad-except
        pass


# ---------------------------------------------------------------- backing file
def split_backing_options(options, backing_file, backing_fmt, path):
    """Move backing_file/backing_fmt from ``options`` to the arguments (they may
    be given either way, not differently both ways)."""
    for key, value in (("backing_file", backing_file), ("backing_fmt", backing_fmt)):
        if key in options:
            if value is not None and value != options[key]:
                raise InvalidOptionError("%s given twice with different values (%r and %r)"
                                         % (key, value, options[key]), path)
    backing_file = options.pop("backing_file", backing_file)
    backing_fmt = options.pop("backing_fmt", backing_fmt)
    if backing_file is not None and not isinstance(backing_file, str):
        raise InvalidOptionError("backing_file must be a string, found %r" % (backing_file,), path)
    if backing_file == "":
        backing_file = None
    if backing_file is None:
        if backing_fmt is not None:
            raise InvalidOptionError("backing_fmt %r given without backing_file" % (backing_fmt,), path)
        return None, None
    if not backing_fmt:
        raise InvalidOptionError("backing_fmt is required with backing_file %r: the backing "
                                 "format is never guessed" % (backing_file,), path)
    return backing_file, backing_fmt


def open_backing(destination, backing_file, backing_fmt, allow_dirs, trusted_files=None):
    """Open the backing file named ``backing_file`` for a new image at
    ``destination``, through the path policy, read-only and shared (a running
    guest may use it)."""
    resolved = policy.resolve_reference(destination, backing_file, allow_dirs=allow_dirs,
                                        kind="backing file", trusted_files=trusted_files)
    return open_driver(resolved, fmt=backing_fmt, readonly=True, allow_dirs=allow_dirs,
                       force_share=True, trusted_files=trusted_files)


def build_image(cls, temporary, size, options, backing, destination):
    """Driver.create on ``temporary``; closes whatever it may return.  Errors
    name ``destination``, the file the caller asked for, not the temporary one."""
    try:
        created = cls.create(temporary, size, options=options, backing=backing)
    except ImageError as exc:
        if temporary not in str(exc):
            raise
        raise type(exc)(str(exc).replace(temporary, destination), destination)
    if created is not None and hasattr(created, "close"):
        created.close()


def target_and_driver_class(path, fmt, on_device):
    """(checked destination path, driver class) of an image written at ``path``: an existing block device
    when ``on_device``, else a new file."""
    if on_device:
        destination = device_path(path)
        return destination, device_driver_class(fmt, destination)
    destination = destination_path(path)
    return destination, creatable_driver_class(fmt, destination)


def creatable_driver_class(fmt, path):
    if not fmt or not isinstance(fmt, str):
        raise InvalidOptionError("the image format is required to write an image (never guessed)", path)
    cls = driver_class(fmt, path)
    if not cls.can_create:
        raise UnsupportedOperation("creating %s images is not supported" % fmt, path)
    return cls


# ---------------------------------------------------------------------- create
@translate_os_errors("cannot create image")
def create(path, fmt, size=None, backing_file=None, backing_fmt=None, options=None,
           allow_dirs=None, on_device=False, trusted_files=None):
    """Create a new image of format ``fmt`` at ``path`` (never overwriting).

    ``size`` in bytes or as a qemu-img size string; without it the backing
    file's virtual size.  Like qemu-img the size is rounded up to 512 bytes.
    ``backing_file`` is recorded as given and resolved relative to the new
    image through the path policy; ``backing_fmt`` is required with it.
    ``on_device``: ``path`` is an existing block device (an LVM logical
    volume, a partition) and the image is written onto it in place, as
    qemu-img create onto a host device (raw or qcow2; the device is locked
    like an image, and refused when in use; a regular file is still never
    overwritten).  A raw image on a device writes nothing: its size
    (default: the device's) must fit the device.
    """
    destination, cls = target_and_driver_class(path, fmt, on_device)
    options = normalize_options(options)
    if "size" in options:
        if size is not None and parse_size(size) != options["size"]:
            raise InvalidOptionError("size given twice with different values", destination)
        size = options.pop("size")
    backing_file, backing_fmt = split_backing_options(options, backing_file, backing_fmt, destination)

    backing = None
    temporary = None
    try:
        if backing_file is not None:
            backing = open_backing(destination, backing_file, backing_fmt, allow_dirs, trusted_files)
            options["backing_file"] = backing_file
            options["backing_fmt"] = backing_fmt
        if size is None and on_device:
            size = cls.size_on_device(destination)
        if size is None:
            if backing is None:
                raise InvalidOptionError("size is required to create an image without a backing file",
                                         destination)
            size = backing.virtual_size
        else:
            size = parse_size(size)
        size = round_up(size, SECTOR_SIZE)
        if on_device:
            build_on_device(cls, fmt, destination, size, options, backing)
            return
        temporary = temporary_path(destination)
        build_image(cls, temporary, size, options, backing, destination)
        sync_file(temporary, cls)
        publish(temporary, destination)
        temporary = None
    except ImageError:
        raise
    except OSError as exc:
        raise os_error(exc, exc.filename or destination, "cannot create image")
    finally:
        if temporary is not None:
            discard(temporary, cls)
        close_quietly(backing)
