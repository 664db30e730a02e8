# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions raised by the image library.

Messages name the file, the structure, the expected and the actual value
(docs/security.md rule 9).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ImageError(Exception):
    """Base class of every error the image library raises."""

    def __init__(self, message, path=None):
        self.path = path
        if path is not None and str(path) not in message:
            message = "%s: %s" % (path, message)
        super(ImageError, self).__init__(message)


class ImageNotFoundError(ImageError):
    """The image file does not exist."""


class FormatError(ImageError):
    """The image is not in the expected format, or a structure in it is invalid."""


class CorruptImageError(FormatError):
    """A metadata structure is inconsistent (overlap, out of range, bad refcount)."""


class UnsupportedFeature(ImageError):
    """The image uses a feature the library does not implement (e.g. an unknown
    incompatible feature bit, or zstd without a zstd module)."""


class UnsupportedOperation(ImageError):
    """The driver cannot do this operation (e.g. write to a read-only format)."""


class InvalidOptionError(ImageError):
    """A creation option or argument has an invalid value."""


class PolicyError(ImageError):
    """A path named inside an image is refused by the path policy."""


class ProbeError(ImageError):
    """The format cannot be determined safely."""


class ImageInUseError(ImageError):
    """Another process holds a conflicting lock on the image (QEMU-compatible locks).

    ``reason`` is the message without advice; ``read_only_look`` says whether a read-only open that shares
    every permission (``force_share``, like ``qemu-img -U``) would succeed, which the message then suggests.
    Callers without a force_share of their own build their advice from ``reason``.
    """

    def __init__(self, message, path=None, read_only_look=False):
        super(ImageInUseError, self).__init__(message, path)
        self.reason = str(self)
        self.read_only_look = read_only_look
        if read_only_look:
            self.args = ("%s; force_share allows a read-only look" % self.reason,)


class ReadOnlyImageError(ImageError):
    """A write was attempted on an image opened read-only."""


class NoSpaceError(ImageError):
    """The file system (or device) holding an image has no space left for a write (ENOSPC, EDQUOT)."""
