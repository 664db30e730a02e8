# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Open an image with its backing chain (docs/security.md rules 1, 2, 3, 5).

``open_driver`` probes the format when none is given, opens the top image
through its driver and hands the driver an *opener*: the only way a driver
may open a file named inside an image.  The opener applies the path policy
(policy.resolve_reference), opens backing layers read-only, bounds the chain
depth and refuses loops (by real path).  If anything fails, every file
already opened is closed again.

Backing formats: a backing file whose format the image records is opened with
that format; one without a recorded format is probed, which is acceptable
because backing layers are only ever read (docs/security.md rule 2 forbids guessing on write
paths), and a probed-raw layer also refuses writes to its first sector.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from ._io import ImageFile
from .errors import FormatError, ImageError
from .formats import driver_class
from .policy import resolve_found, resolve_reference, search_dirs
from .policy import ARCHIVE_SUFFIXES
from .probe import probe

# Layers in one chain, the top image included.
MAX_CHAIN_DEPTH = 64


def _as_list(paths):
    """``allow_dirs``/``trusted_files`` as a list (one path may be given bare), None when empty."""
    if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
        paths = [paths]
    return list(paths) if paths else None


def _describe(trail):
    return " -> ".join(trail)


class _Chain:
    """State shared by the openers of one open_driver call."""

    def __init__(self, allow_dirs, force_share, key_secret=None, check_open=False, trusted_files=None):
        self.allow_dirs = list(allow_dirs) if allow_dirs else None
        # Files the caller names itself (policy.resolve_reference): accepted wherever they are.
        self.trusted_files = _as_list(trusted_files)
        self.force_share = force_share
        # Opened writable by check with repair (qemu's BDRV_O_CHECK): the top layer only.
        self.check_open = check_open
        # Passphrase for encrypted (LUKS) layers; never logged or put in a message.
        self.key_secret = key_secret
        # Everything opened so far, closed in reverse order on failure.
        self.opened = []

    def open_layer(self, path, fmt, readonly, trail):
        """Open ``path`` (already allowed) as layer ``len(trail)`` of the chain."""
        real = os.path.realpath(path)
        if real in trail:
            raise FormatError("backing chain loop: %s" % _describe(trail + [real]), trail[0])
        trail = trail + [real]
        if len(trail) > MAX_CHAIN_DEPTH:
            raise FormatError("backing chain longer than %d layers: %s"
                              % (MAX_CHAIN_DEPTH, _describe(trail[:3] + ["..."] + trail[-2:])), trail[0])
        warning = None
        probed = fmt is None
        if probed:
            result = probe(path)
            fmt, warning = result.format, result.warning
        cls = driver_class(fmt, path)
        opener = _Opener(self, trail, writable=not readonly)
        driver = cls.open(path, readonly=readonly, opener=opener, force_share=self.force_share)
        self.opened.append(driver)
        # A probed raw image refuses writes to its first sector (docs/security.md rule 3).
        if probed and cls.probe_fallback:
            driver.probed = True
        driver.probe_warning = warning
        return driver

    def close_all(self):
        while self.opened:
            item = self.opened.pop()
            try:
                item.close()
            except Exception:
                pass


class _Opener:
    """Passed to a driver's open(): opens files named inside the image at the
    end of ``trail`` under the caller's policy."""

    def __init__(self, chain, trail, writable):
        self._chain = chain
        self._trail = trail
        self._writable = writable

    def __call__(self, referrer_path, name, fmt=None):
        """Open backing file ``name`` of ``referrer_path`` read-only, as a Driver."""
        resolved = resolve_reference(referrer_path, name, self._chain.allow_dirs, kind="backing file",
                                     trusted_files=self._chain.trusted_files)
        try:
            return self._chain.open_layer(resolved, fmt or None, True, self._trail)
        except ImageError as exc:
            if exc.path is None or exc.path == resolved:
                # Say which image named the failing backing file.
                raise type(exc)("%s (backing file %r of %s)" % (exc, name, referrer_path),
                                exc.path) from exc
            raise

    @property
    def allow_dirs(self):
        """The caller's extra allowed directories (None when none)."""
        return self._chain.allow_dirs

    @property
    def trusted_files(self):
        """The files the caller names itself (None when none)."""
        return self._chain.trusted_files

    @property
    def check_open(self):
        """Whether the layer is the top image opened writable by check with
        repair (ops/check.py; qemu's BDRV_O_CHECK): a qcow2 driver then opens
        a corrupt-flagged image writable, for the repair only."""
        return bool(self._chain.check_open and self._writable and len(self._trail) == 1)

    @property
    def key_secret(self):
        """The caller's passphrase for encrypted layers (formats/luks.py), or None."""
        return self._chain.key_secret

    def search_dirs(self, referrer_path):
        """Directories searched for a parent known only by UUID (policy.search_dirs)."""
        return search_dirs(referrer_path, self._chain.allow_dirs)

    def open_found(self, referrer_path, path, fmt=None):
        """Open ``path``, found by a UUID search in search_dirs(referrer_path),
        read-only as the next layer of the chain (VirtualBox differencing parents)."""
        resolved = resolve_found(referrer_path, path, self.search_dirs(referrer_path))
        try:
            return self._chain.open_layer(resolved, fmt or None, True, self._trail)
        except ImageError as exc:
            if exc.path is None or exc.path == resolved:
                raise type(exc)("%s (parent image %s of %s)" % (exc, resolved, referrer_path),
                                exc.path) from exc
            raise

    def data_file(self, referrer_path, name, writable=None):
        """Open external data file ``name`` of ``referrer_path`` as an ImageFile,
        writable when the referring layer is (unless ``writable`` says otherwise)."""
        resolved = resolve_reference(referrer_path, name, self._chain.allow_dirs, kind="data file",
                                     trusted_files=self._chain.trusted_files)
        if writable is None:
            writable = self._writable
        image_file = ImageFile(resolved, writable=bool(writable) and self._writable,
                               force_share=self._chain.force_share and not writable)
        self._chain.opened.append(image_file)
        return image_file


def locate(path, fmt=None, member=None, readonly=True):
    """ova.locate: what to open for ``path``.  The archive reader (ova) is imported only for a
    name it may apply to (a member selector, an archive member, an archive suffix)."""
    if member is None and getattr(path, "image_file_class", None) is None:     # not an ova.MemberPath
        absolute = os.path.abspath(os.fspath(path))
        if not os.fsdecode(absolute).lower().endswith(ARCHIVE_SUFFIXES):
            return absolute
    from .ova import locate as locate_in_archive
    return locate_in_archive(path, fmt, member, readonly)


def open_driver(path, fmt=None, readonly=True, allow_dirs=None, force_share=False, member=None, key_secret=None,
                check_open=False, trusted_files=None):
    """Open image ``path`` (format ``fmt``, probed when None) with its backing
    chain; backing layers and data files go through the path policy with
    ``allow_dirs`` and ``trusted_files`` (files the caller names itself).  Returns the top Driver; closing it closes the chain.
    ``member`` selects a disk inside an OVA or Vagrant box (ova.locate: read
    only; ``.ova``/``.box`` files open their first disk without it).
    ``key_secret``: the passphrase of encrypted (LUKS) layers.
    ``check_open``: only for ops/check.py repairing (qemu's BDRV_O_CHECK)."""
    path = locate(path, fmt, member, readonly)
    chain = _Chain(allow_dirs, force_share, key_secret, check_open, trusted_files)
    try:
        return chain.open_layer(path, fmt, readonly, [])
    except BaseException:
        chain.close_all()
        raise
