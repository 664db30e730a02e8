# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Embedded image library: what qemu-img does, in pure Python (stdlib only).

One function per qemu-img subcommand; dictionaries have the keys and meanings
of ``qemu-img ... --output=json`` (see docs/architecture.md, "Public API").  Every function that opens
images takes ``allow_dirs`` (more directories whose files an image may name,
e.g. as its backing file) and ``trusted_files`` (files the caller names itself,
accepted wherever they are when an image names them: see ``policy``);
read-only ones take ``force_share`` (qemu-img -U).
Errors are ImageError subclasses from ``errors``.

Operations not implemented yet are deliberately absent rather than stubbed.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from .errors import (  # noqa: F401 (re-exported)
    ImageError, ImageNotFoundError, FormatError, CorruptImageError, UnsupportedFeature,
    UnsupportedOperation, InvalidOptionError, PolicyError, ProbeError, ImageInUseError,
    ReadOnlyImageError, NoSpaceError,
)
from .ops.info import info  # noqa: F401
from .ops.create import create  # noqa: F401
from .ops.convert import convert  # noqa: F401
from .ops.check import check  # noqa: F401
from .ops.compare import compare, compare_detail  # noqa: F401
from .ops.image import Image, open_image  # noqa: F401
from .ops.resize import resize  # noqa: F401
from .ops.sizes import parse_size, normalize_options  # noqa: F401
from .ops.map import map  # noqa: F401  pylint: disable=redefined-builtin
from .ops.measure import measure  # noqa: F401
from .ops.rebase import rebase  # noqa: F401
from .ops.commit import commit  # noqa: F401
from .ops.amend import amend  # noqa: F401
from .ops.snapshot import (  # noqa: F401
    snapshot_list, snapshot_create, snapshot_apply, snapshot_delete, snapshot_compare,
)
from .ova import ova_disks  # noqa: F401

__all__ = [
    "info", "create", "convert", "check", "compare", "compare_detail", "open_image", "Image", "resize",
    "map", "measure", "parse_size", "normalize_options", "rebase", "commit", "amend",
    "snapshot_list", "snapshot_create", "snapshot_apply", "snapshot_delete", "snapshot_compare", "ova_disks",
    "ImageError", "ImageNotFoundError", "FormatError", "CorruptImageError", "UnsupportedFeature",
    "UnsupportedOperation", "InvalidOptionError", "PolicyError", "ProbeError", "ImageInUseError",
    "ReadOnlyImageError", "NoSpaceError",
]
