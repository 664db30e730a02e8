# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw images: the guest view is the file (or block device) itself.

Behaviour follows QEMU's raw format over the file protocol: virtual size =
file size, holes read as zeroes, ``qemu-img create -f raw`` options
``preallocation=off|falloc|full``, no backing file, no check.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from .._io import ImageFile, pread_into
from ..errors import ImageError, InvalidOptionError, ReadOnlyImageError, UnsupportedOperation
from .base import (
    BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_OFFSET_VALID, BLOCK_ZERO, DATA, MAX_IO, QEMU_SECTOR_SIZE, ZERO, Driver, Extent,
    StatusRuns, fill_zero,
)

# A probed raw image may not have its first sector written: the new bytes could
# make the next probe see another format (docs/security.md rule 3).
PROBED_PROTECTED_BYTES = 512

# qemu-img create rounds sizes up to whole sectors.
SECTOR_SIZE = 512

# QEMU allocates the first block of a new raw file so that later probing of the
# file system's alignment works; that shows as 4 KiB of disk use.
FIRST_BLOCK_SIZE = 4096

PREALLOCATION_MODES = ("off", "falloc", "full")


class RawDriver(Driver):
    format_name = "raw"
    probe_fallback = True
    can_create = True
    can_write = True

    def __init__(self):
        super(RawDriver, self).__init__()
        # Set by chain.open_driver when the format was guessed, not given.
        self.probed = False

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        # Anything is a raw image; the weakest possible match (QEMU scores 1 too).
        return 1

    # --------------------------------------------------------------- lifecycle
    def _open_structures(self, opener):
        self.virtual_size = self._file.size()

    def close(self):
        self._close_file()
        super(RawDriver, self).close()

    @classmethod
    def create_on_device(cls, device, size, options=None, backing=None):
        """raw has no metadata: like qemu-img, the device only has to be large
        enough, its content is the image's (convert zeroes what must read zero).
        Nothing is written."""
        options = dict(options or {})
        preallocation = options.pop("preallocation", "off")
        if preallocation not in (None, False, "off"):
            raise InvalidOptionError("preallocation %r cannot be used for a raw image on a block device "
                                     "(the device is allocated already)" % (preallocation,), device)
        if options:
            raise InvalidOptionError("invalid option(s) for raw images: %s (supported: preallocation)"
                                     % ", ".join(sorted(options)), device)
        with ImageFile(device, writable=True) as device_file:
            device_size = device_file.size()
        if size > device_size:
            raise InvalidOptionError("the block device (%d bytes) is smaller than the image (%d bytes)"
                                     % (device_size, size), device)
        return False

    @classmethod
    def size_on_device(cls, device):
        # Without a size, a raw image on a device is the whole device.
        with ImageFile(device) as device_file:
            return device_file.size()

    @classmethod
    def create(cls, path, size, options=None, backing=None):
        options = dict(options or {})
        preallocation = options.pop("preallocation", None)
        if preallocation is None or preallocation is False:
            preallocation = "off"
        if preallocation not in PREALLOCATION_MODES:
            raise InvalidOptionError("unsupported preallocation mode %r for raw images "
                                     "(expected one of: %s)"
                                     % (preallocation, ", ".join(PREALLOCATION_MODES)), path)
        option_size = options.pop("size", None)
        if backing is not None or options.get("backing_file"):
            raise InvalidOptionError("raw images cannot have a backing file", path)
        options.pop("backing_file", None)
        options.pop("backing_fmt", None)
        if options:
            raise InvalidOptionError("invalid option(s) for raw images: %s (supported: preallocation)"
                                     % ", ".join(sorted(options)), path)
        if size is None:
            size = option_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)"
                                     % (size,), path)
        size = -(-size // SECTOR_SIZE) * SECTOR_SIZE

        image_file = ImageFile(path, create=True)
        try:
            image_file.truncate(size)
            if preallocation == "falloc":
                image_file.allocate(0, size)
            elif preallocation == "full":
                image_file.write_zeroes(0, size)
            elif size:
                image_file.write_zeroes(0, min(size, FIRST_BLOCK_SIZE))
            image_file.flush()
        except BaseException:
            image_file.close()
            # O_EXCL made the file ours: do not leave a half-made image behind.
            os.unlink(image_file.path)
            raise
        image_file.close()

    # -------------------------------------------------------------------- data
    def read(self, offset, length):
        """The bytes of the file; the part of a request past the end of the file
        reads as zeroes (callers reading a shorter backing file rely on it)."""
        if offset < 0 or length < 0:
            raise ImageError("read at offset %d, length %d: negative offset or length"
                             % (offset, length), self.path)
        data = self._file.pread(offset, length)
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def read_into(self, offset, view):
        if offset < 0:
            raise ImageError("read at offset %d, length %d: negative offset" % (offset, len(view)), self.path)
        count = pread_into(self._file, offset, view)
        if count < len(view):
            fill_zero(view[count:])

    def _check_write(self, offset, length, what):
        if self.readonly:
            raise ReadOnlyImageError("image is opened read-only", self.path)
        self._check_range(offset, length, what)

    def write(self, offset, data):
        length = len(data)
        self._check_write(offset, length, "write")
        if self.probed and length and offset < PROBED_PROTECTED_BYTES:
            raise UnsupportedOperation(
                "refusing to write to the first %d bytes of an image whose format was probed as "
                "raw: new contents there could make it look like another format (a security "
                "risk); give the format explicitly (fmt='raw') to write there"
                % PROBED_PROTECTED_BYTES, self.path)
        self._file.pwrite(offset, data)

    def write_zeroes(self, offset, length, may_unmap=False):
        # Zeroes cannot forge a format header, so probed images accept them at sector 0.
        self._check_write(offset, length, "write_zeroes")
        if not length:
            return
        if may_unmap and not self._file.is_block_device:
            self._file.punch_hole(offset, length)
        else:
            end = offset + length
            while offset < end:
                count = min(end - offset, MAX_IO)
                self._file.write_zeroes(offset, count)
                offset += count

    def block_status(self, offset, length):
        """Holes are ZERO without a host offset; data is DATA at the same host offset."""
        if length <= 0:
            return []
        extents = []
        for start, count, is_data in self._file.data_extents(offset, length):
            if is_data:
                extents.append(Extent(start, count, DATA, start))
            else:
                extents.append(Extent(start, count, ZERO, None))
        return extents

    def resize(self, new_size, preallocation=None):
        """Truncate or extend the file; the new area is a hole unless
        ``preallocation`` is falloc or full (qemu-img resize --preallocation)."""
        if self.readonly:
            raise ReadOnlyImageError("image is opened read-only", self.path)
        if preallocation in (None, False):
            preallocation = "off"
        if preallocation not in PREALLOCATION_MODES:
            raise InvalidOptionError("unsupported preallocation mode %r for raw images (expected one of: %s)"
                                     % (preallocation, ", ".join(PREALLOCATION_MODES)), self.path)
        if self._file.is_block_device:
            raise UnsupportedOperation("cannot resize a block device (size %d) to %d bytes: resize the "
                                       "device itself" % (self.virtual_size, new_size), self.path)
        old_size = self.virtual_size
        self._file.truncate(new_size)
        self.virtual_size = new_size
        if new_size > old_size:
            if preallocation == "falloc":
                self._file.allocate(old_size, new_size - old_size)
            elif preallocation == "full":
                self.write_zeroes(old_size, new_size - old_size)

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def device_zeroout(self):
        return self._file.zeroout if self._file is not None else None

    # ------------------------------------------------------------ map and measure
    def qemu_length(self):
        # A raw file's partial last sector is a whole sector to QEMU.
        return -(-self.virtual_size // QEMU_SECTOR_SIZE) * QEMU_SECTOR_SIZE

    def map_runs(self, offset, end, l1_table=None, cache=None):
        """The file's holes are ZERO and its data DATA, both ALLOCATED with the host
        offset (the guest offset)."""
        if self._file is None:
            return super(RawDriver, self).map_runs(offset, end, l1_table, cache)
        runs = StatusRuns()
        for start, length, is_data in self._file.data_extents(offset, end - offset):
            runs.add(start, length, (BLOCK_DATA if is_data else BLOCK_ZERO) | BLOCK_ALLOCATED | BLOCK_OFFSET_VALID,
                     start)
        return runs.runs

    # ----------------------------------------------------------------- queries
    def info(self):
        return {}

    def check(self, repair=None):
        raise UnsupportedOperation("raw images cannot be checked (qemu-img: this image format "
                                   "does not support checks)", self.path)
