# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe image format detection (docs/security.md rule 3).

Every registered driver scores the first bytes of the image (only those whose
cheap pre-check passes are imported and asked: ``formats.claims``).  Exactly one
non-raw match gives the format; more than one is an error (never guess between
two formats); none gives ``raw``, and when the first sector of such a raw image
carries the signature of a known format (one we cannot open, or one whose
driver rejected the header) the result carries a warning: a guest may have
written that header, and treating the file as that format would let the guest
name host files as its backing file.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import collections
import os

from ._io import ImageFile
from .errors import ProbeError, UnsupportedFeature
from .formats import DRIVERS, claims

# Bytes handed to the drivers' probe() (Driver.probe gets "first 4 KiB or less").
PROBE_SIZE = 4096

# Signatures of image formats, for the warning about raw images that look like
# something else: (format name as qemu-img spells it, offset, magic bytes).
# One table: add a line when a format is added.
KNOWN_SIGNATURES = (
    ("qcow2", 0, b"QFI\xfb\x00\x00\x00\x02"),        # docs/interop/qcow2.rst, version 2
    ("qcow2", 0, b"QFI\xfb\x00\x00\x00\x03"),        # version 3
    ("qcow", 0, b"QFI\xfb\x00\x00\x00\x01"),         # QEMU's original qcow
    ("qcow2", 0, b"QFI\xfb"),                        # any other version
    ("qed", 0, b"QED\x00"),                          # QED specification, header magic
    ("vmdk", 0, b"KDMV"),                            # VMware sparse extent header
    ("vmdk", 0, b"COWD"),                            # VMware ESX "COWD" sparse extent
    ("vmdk", 0, b"# Disk DescriptorFile"),           # VMDK text descriptor
    ("vdi", 64, b"\x7f\x10\xda\xbe"),                # VirtualBox VDI signature 0xbeda107f (LE)
    ("vpc", 0, b"conectix"),                         # VHD footer copy of dynamic disks
    ("vhdx", 0, b"vhdxfile"),                        # VHDX file type identifier
    ("luks", 0, b"LUKS\xba\xbe"),                    # LUKS1/LUKS2 header
    ("parallels", 0, b"WithoutFreeSpace"),           # Parallels disk image
    ("parallels", 0, b"WithouFreSpacExt"),
    ("bochs", 0, b"Bochs Virtual HD Image"),
    ("cloop", 0, b"#!/bin/sh\n#V2.0 Format\n"),
)

# format: the probed format name; warning: None, or a sentence for the user.
ProbeResult = collections.namedtuple("ProbeResult", "format warning")


def signature_format(header):
    """Name of the format whose signature starts ``header``, or None."""
    for name, offset, magic in KNOWN_SIGNATURES:
        if header[offset:offset + len(magic)] == magic:
            return name
    return None


def read_header(path, size=PROBE_SIZE):
    """First ``size`` bytes of ``path`` (fewer for a short file), without locking."""
    with ImageFile(path, lock=False) as image_file:
        return image_file.pread(0, size)


def probe(source, filename=None):
    """Format of ``source`` (a path, or the first bytes of an image) as a ProbeResult.

    Raises ProbeError when more than one non-raw driver claims the header, and
    ImageNotFoundError for a missing path.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        header = bytes(source[:PROBE_SIZE])
        where = filename
    else:
        where = os.fspath(source)
        if getattr(where, "image_file_class", None) is None:  # an ova.MemberPath stays one
            where = os.path.abspath(where)
        filename = filename or where
        header = read_header(where)

    matches = claims(header, filename)
    if len(matches) > 1:
        raise ProbeError("the image header matches more than one format (%s); refusing to guess: "
                         "give the format explicitly"
                         % ", ".join("%s (score %d)" % (name, score) for score, name in sorted(matches)),
                         where)
    if matches:
        name = matches[0][1]
        unsupported = DRIVERS[name].unsupported_version(header)
        if unsupported:
            # its magic says what it is: refused by name (as qemu-img), never taken for raw
            raise UnsupportedFeature(unsupported, where)
        return ProbeResult(name, None)

    warning = None
    lookalike = signature_format(header)
    if lookalike is not None:
        warning = ("%s: probed as raw, but its first sector carries the signature of a %s image "
                   "that this library cannot open as such; it is treated as raw, and writes to "
                   "its first sector are refused. Give the format explicitly if this is intended."
                   % (where or "image", lookalike))
    return ProbeResult("raw", warning)


def probe_format(source, filename=None):
    """Just the format name of ``probe``."""
    return probe(source, filename).format
