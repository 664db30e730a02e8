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


# The operations are imported on first use (PEP 562): a task imports only what it runs,
# which matters because Ansible runs modules from a zip file, compiling every imported
# module from source on every task.  The imports below are static statements so that
# Ansible's payload finder (which walks the whole syntax tree) still packs every operation.
def _load(name):
    """The public name ``name`` from its home module; None for a name this package lacks."""
    if name == "info":
        from .ops.info import info as value
    elif name == "create":
        from .ops.create import create as value
    elif name in ("convert", "ConvertOptions"):
        from .ops import convert as home
        value = getattr(home, name)
    elif name == "check":
        from .ops.check import check as value
    elif name in ("compare", "compare_detail"):
        from .ops import compare as home
        value = getattr(home, name)
    elif name in ("Image", "open_image"):
        from .ops import image as home
        value = getattr(home, name)
    elif name == "resize":
        from .ops.resize import resize as value
    elif name in ("parse_size", "normalize_options"):
        from .ops import sizes as home
        value = getattr(home, name)
    elif name == "map":
        from .ops.map import map as value  # pylint: disable=redefined-builtin
    elif name == "measure":
        from .ops.measure import measure as value
    elif name == "rebase":
        from .ops.rebase import rebase as value
    elif name == "commit":
        from .ops.commit import commit as value
    elif name == "amend":
        from .ops.amend import amend as value
    elif name in ("snapshot_list", "snapshot_create", "snapshot_apply", "snapshot_delete", "snapshot_compare"):
        from .ops import snapshot as home
        value = getattr(home, name)
    elif name == "ova_disks":
        from .ova import ova_disks as value
    else:
        return None
    return value


def __getattr__(name):
    value = _load(name)
    if value is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def deferred(name):
    """A function that calls this package's ``name`` (an operation, or a class to build), importing
    its module on the first call: a caller that binds it at import time still imports only what runs."""
    def call(*args, **kwargs):
        function = globals().get(name)
        if function is None:
            function = __getattr__(name)
        return function(*args, **kwargs)
    call.__name__ = name
    return call


# The operations are defined on first use (__getattr__ above).
# pylint: disable=undefined-all-variable
__all__ = [
    "info", "create", "convert", "ConvertOptions", "check", "compare", "compare_detail", "open_image", "Image", "resize",
    "map", "measure", "parse_size", "normalize_options", "rebase", "commit", "amend",
    "snapshot_list", "snapshot_create", "snapshot_apply", "snapshot_delete", "snapshot_compare", "ova_disks",
    "ImageError", "ImageNotFoundError", "FormatError", "CorruptImageError", "UnsupportedFeature",
    "UnsupportedOperation", "InvalidOptionError", "PolicyError", "ProbeError", "ImageInUseError",
    "ReadOnlyImageError", "NoSpaceError",
]
# pylint: enable=undefined-all-variable
