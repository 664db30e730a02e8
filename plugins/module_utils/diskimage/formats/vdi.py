# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VirtualBox Disk Image (VDI) version 1.1: static, dynamic and differencing images.

Layout (VirtualBox ``VDICore.h``: VDIPREHEADER, VDIHEADER1/VDIHEADER1PLUS):
a 72-byte pre-header (text, signature 0xbeda107f, version), the version 1.1
header, a block map of little-endian 32-bit entries at ``offset_bmap`` and the
blocks at ``offset_data``.  Entry ``i`` of the map gives the slot of guest
block ``i`` in the data area (each slot is ``block_extra`` service bytes, then
the block); 0xffffffff is a free block (reads from the parent image, or zeroes
without one), 0xfffffffe a zero block (reads zeroes).

Behaviour follows QEMU's block/vdi.c for what QEMU supports (header checks,
``qemu-img create -f vdi -o static=on|off``, check, info) and VirtualBox for
what it does not: differencing images (type 4), whose parent is known only by
its UUID (``uuid_link`` = the parent's ``uuid_image``).  The parent is looked
up among the ``*.vdi`` files of the directories the path policy allows for it
(the image's own directory, the one above a ``Snapshots`` folder, allow_dirs;
docs/security.md rule 1); candidates' headers are read through the policy
helpers and the parent is opened through the opener.  Parents in other formats
(VirtualBox also allows VMDK/VHD parents) are not searched for.  A parent
whose modification UUID differs from the one the child recorded is used with
a warning in info() (VirtualBox does not refuse it either).

Version 0 headers (VirtualBox before 1.4) and undo images (type 3) are not
supported.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import os
import struct
import sys
import uuid as uuidlib

from .._io import ImageFile, pread_into
from .. import policy
from ..errors import (CorruptImageError, FormatError, ImageNotFoundError, InvalidOptionError,
                      PolicyError, UnsupportedFeature, UnsupportedOperation)
from .base import DATA, MAX_IO, UNALLOCATED, ZERO, Driver, Extent, recurse_into_file

SECTOR_SIZE = 512

# --- VDIPREHEADER (VDICore.h): text for the eyes, signature, version -------------
PRE_HEADER = struct.Struct("<64sII")
VDI_SIGNATURE = 0xbeda107f
VDI_VERSION_1_1 = 0x00010001
VDI_TEXT = b"<<< Oracle VM VirtualBox Disk Image >>>\n"

# --- VDIHEADER1 (VDICore.h), right after the pre-header ---------------------------
# header size, image type, flags, comment, offset of the block map, offset of the
# data, legacy geometry (cylinders, heads, sectors, sector size), unused, disk size,
# block size, block extra, blocks in image, blocks allocated, UUIDs: image,
# last modification, parent (linkage), parent's last modification.
HEADER_V1 = struct.Struct("<III256sIIIIIIIQIIII16s16s16s16s")
HEADER_V1_OFFSET = PRE_HEADER.size                 # 72
HEADER_V1_END = HEADER_V1_OFFSET + HEADER_V1.size  # 456
# VDIHEADER1PLUS adds the LCHS geometry (cylinders, heads, sectors, sector size).
LCHS_GEOMETRY = struct.Struct("<IIII")
HEADER_V1PLUS_SIZE = HEADER_V1.size + LCHS_GEOMETRY.size
# Byte offsets of the header fields we rewrite.
BLOCKS_ALLOCATED_OFFSET = HEADER_V1_OFFSET + 316
UUID_MODIFY_OFFSET = HEADER_V1_OFFSET + 336

# What QEMU writes: a 512-byte header area, header size 0x180, block map at 0x200.
HEADER_AREA = 512
QEMU_HEADER_SIZE = 0x180

TYPE_DYNAMIC = 1       # VirtualBox "normal"
TYPE_STATIC = 2        # VirtualBox "fixed"
TYPE_UNDO = 3
TYPE_DIFFERENCING = 4
TYPE_NAMES = {TYPE_DYNAMIC: "dynamic", TYPE_STATIC: "static", TYPE_UNDO: "undo",
              TYPE_DIFFERENCING: "differencing"}

# Image flags: only VDI_IMAGE_FLAGS_ZERO_EXPAND is defined (VD_VDI_IMAGE_FLAGS_MASK).
KNOWN_FLAGS = 0x01

BLOCK_FREE = 0xffffffff    # not allocated: parent's data, or zeroes
BLOCK_ZERO = 0xfffffffe    # discarded: zeroes
FIRST_UNALLOCATED = BLOCK_ZERO

DEFAULT_BLOCK_SIZE = 1024 * 1024
# QEMU's limits: at most 0x3fffffff blocks, disk size at most that many MiB.
MAX_BLOCKS = 0x3fffffff
MAX_DISK_SIZE = MAX_BLOCKS * DEFAULT_BLOCK_SIZE
# Block sizes accepted (VirtualBox: any power of two).
MIN_BLOCK_SIZE = SECTOR_SIZE
MAX_BLOCK_SIZE = 256 * 1024 * 1024
# Cap on the block map held in memory (docs/security.md rule 5): 16 TiB at 1 MiB blocks.
MAX_BLOCK_MAP_BYTES = 64 * 1024 * 1024

# Files looked at as possible parents of a differencing image.
PARENT_SUFFIXES = (".vdi",)

NULL_UUID = bytes(16)


def _uuid_text(raw):
    """RTUUID bytes (first three fields little-endian) as the usual text form."""
    return str(uuidlib.UUID(bytes_le=bytes(raw)))


def _is_power_of_two(value):
    return value > 0 and value & (value - 1) == 0


def _bool_option(value, name, path):
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off", "true", "false", "yes", "no"):
        return value.lower() in ("on", "true", "yes")
    raise InvalidOptionError("option %s expects on/off, found %r" % (name, value), path)


class VdiHeader:
    """The pre-header and version 1.1 header of a VDI file."""

    def __init__(self, raw, path):
        if len(raw) < HEADER_V1_END:
            raise FormatError("VDI header: file too short (%d bytes, expected at least %d)"
                              % (len(raw), HEADER_V1_END), path)
        self.text, self.signature, self.version = PRE_HEADER.unpack_from(raw, 0)
        (self.header_size, self.image_type, self.flags, self.comment, self.offset_bmap,
         self.offset_data, self.cylinders, self.heads, self.sectors, self.sector_size, self.unused,
         self.disk_size, self.block_size, self.block_extra, self.blocks_in_image, self.blocks_allocated,
         self.uuid_image, self.uuid_modify, self.uuid_link, self.uuid_parent_modify) = \
            HEADER_V1.unpack_from(raw, HEADER_V1_OFFSET)

    def validate(self, path, file_size):
        """Magic -> version -> sizes and offsets -> features (messages as QEMU's where it has one)."""
        if self.signature != VDI_SIGNATURE:
            raise FormatError("Image not in VDI format (bad signature %08x, expected %08x)"
                              % (self.signature, VDI_SIGNATURE), path)
        if self.version != VDI_VERSION_1_1:
            raise UnsupportedFeature("unsupported VDI image (version %d.%d, only 1.1 is supported)"
                                     % (self.version >> 16, self.version & 0xffff), path)
        if self.header_size < HEADER_V1.size:
            raise FormatError("VDI header: header size %d is smaller than the version 1.1 header (%d)"
                              % (self.header_size, HEADER_V1.size), path)
        if self.disk_size > MAX_DISK_SIZE:
            raise UnsupportedFeature("Unsupported VDI image size (size is 0x%x, max supported is 0x%x)"
                                     % (self.disk_size, MAX_DISK_SIZE), path)
        if self.offset_bmap % SECTOR_SIZE or self.offset_bmap < HEADER_V1_END:
            raise UnsupportedFeature("unsupported VDI image (block map offset 0x%x: expected a multiple of %d "
                                     "after the header)" % (self.offset_bmap, SECTOR_SIZE), path)
        if self.offset_data % SECTOR_SIZE:
            raise UnsupportedFeature("unsupported VDI image (unaligned data offset 0x%x)" % self.offset_data, path)
        if self.sector_size != SECTOR_SIZE:
            raise UnsupportedFeature("unsupported VDI image (sector size %d is not %d)"
                                     % (self.sector_size, SECTOR_SIZE), path)
        if not _is_power_of_two(self.block_size) or not MIN_BLOCK_SIZE <= self.block_size <= MAX_BLOCK_SIZE:
            raise UnsupportedFeature("unsupported VDI image (block size %d: expected a power of two from %d to %d)"
                                     % (self.block_size, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE), path)
        if self.block_extra and (not _is_power_of_two(self.block_extra) or self.block_extra % SECTOR_SIZE
                                 or self.block_extra > MAX_BLOCK_SIZE):
            raise UnsupportedFeature("unsupported VDI image (block extra size %d: expected 0 or a power of two "
                                     "multiple of %d up to %d)" % (self.block_extra, SECTOR_SIZE, MAX_BLOCK_SIZE),
                                     path)
        if self.blocks_in_image > MAX_BLOCKS:
            raise UnsupportedFeature("unsupported VDI image (too many blocks %d, max is %d)"
                                     % (self.blocks_in_image, MAX_BLOCKS), path)
        if self.disk_size > self.blocks_in_image * self.block_size:
            raise UnsupportedFeature("unsupported VDI image (disk size %d, image bitmap has room for %d)"
                                     % (self.disk_size, self.blocks_in_image * self.block_size), path)
        bmap_bytes = self.blocks_in_image * 4
        if bmap_bytes > MAX_BLOCK_MAP_BYTES:
            raise UnsupportedFeature("VDI block map of %d entries (%d bytes) exceeds the limit of %d bytes"
                                     % (self.blocks_in_image, bmap_bytes, MAX_BLOCK_MAP_BYTES), path)
        if self.offset_data < self.offset_bmap + bmap_bytes:
            raise CorruptImageError("VDI header: data offset 0x%x overlaps the block map (0x%x + %d bytes)"
                                    % (self.offset_data, self.offset_bmap, bmap_bytes), path)
        if self.offset_bmap + bmap_bytes > file_size:
            raise CorruptImageError("VDI block map at 0x%x (%d entries) runs past the end of the file (%d bytes)"
                                    % (self.offset_bmap, self.blocks_in_image, file_size), path)
        if self.image_type not in TYPE_NAMES:
            raise FormatError("VDI header: unknown image type %d (expected 1 to 4)" % self.image_type, path)
        if self.image_type == TYPE_UNDO:
            raise UnsupportedFeature("VDI undo images (type 3) are not supported", path)
        if self.flags & ~KNOWN_FLAGS:
            raise UnsupportedFeature("VDI header: unknown image flags 0x%x" % (self.flags & ~KNOWN_FLAGS), path)
        if self.image_type == TYPE_DIFFERENCING and self.uuid_link == NULL_UUID:
            raise CorruptImageError("VDI differencing image without a parent UUID", path)

    @property
    def virtual_size(self):
        # 'VBoxManage convertfromraw' can leave odd sizes; QEMU rounds up to a sector.
        return -(-self.disk_size // SECTOR_SIZE) * SECTOR_SIZE

    @property
    def slot_size(self):
        return self.block_size + self.block_extra


def _le_array(data):
    table = array.array("I")
    table.frombytes(bytes(data))
    if sys.byteorder != "little":
        table.byteswap()
    return table


def _le_bytes(table):
    if sys.byteorder != "little":
        table = array.array("I", table)
        table.byteswap()
    return table.tobytes()


class VdiDriver(Driver):
    format_name = "vdi"
    can_create = True
    can_write = True

    def __init__(self):
        super(VdiDriver, self).__init__()
        self._file = None
        self.header = None
        self.block_map = None
        self.warnings = []
        self.parent_uuid = None
        self._next_slot = 0
        self._modified = False

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        # QEMU: a whole header (512 bytes) with the signature scores 100.
        if len(header) >= HEADER_AREA and struct.unpack_from("<I", header, 64)[0] == VDI_SIGNATURE:
            return 100
        return 0

    # --------------------------------------------------------------- lifecycle
    def _open_structures(self, opener):
        path = self.path
        file_size = self._file.size()
        h = VdiHeader(self._file.pread(0, HEADER_AREA), path)
        h.validate(path, file_size)
        self.header = h
        self.virtual_size = h.virtual_size
        self.block_map = _le_array(self._file.pread_exact(h.offset_bmap, h.blocks_in_image * 4, "VDI block map"))
        used = [entry for entry in self.block_map if entry < FIRST_UNALLOCATED] if h.blocks_in_image else []
        # New blocks go after every slot in use, even when the header's count is wrong.
        self._next_slot = max([h.blocks_allocated] + [max(used) + 1 if used else 0])
        if h.image_type == TYPE_DIFFERENCING:
            if not self.readonly:
                raise UnsupportedOperation("writing VDI differencing images (VirtualBox snapshots) is not "
                                           "supported; convert the chain to a new image instead", path)
            self.parent_uuid = _uuid_text(h.uuid_link)
            self._open_parent(opener)

    # ------------------------------------------------------------ parent image
    def _parent_dirs(self, opener):
        finder = getattr(opener, "search_dirs", None)
        if finder is not None:
            return finder(self.path)
        return policy.search_dirs(self.path, getattr(opener, "allow_dirs", None))

    def _find_parent(self, dirs):
        """Real path of the one ``*.vdi`` file in ``dirs`` whose image UUID is our parent UUID."""
        wanted = self.header.uuid_link
        matches = []
        for candidate in policy.image_candidates(dirs, PARENT_SUFFIXES, exclude=os.path.realpath(self.path)):
            try:
                raw = policy.read_candidate_header(candidate, dirs, HEADER_AREA)
            except (OSError, PolicyError):
                continue
            if len(raw) < HEADER_V1_END:
                continue
            candidate_header = VdiHeader(raw, candidate)
            if candidate_header.signature == VDI_SIGNATURE and candidate_header.uuid_image == wanted:
                matches.append((candidate, candidate_header))
        if not matches:
            raise ImageNotFoundError("parent image {%s} of VDI differencing image %s not found: no .vdi file "
                                     "with that UUID in %s (pass allow_dirs to search more directories)"
                                     % (self.parent_uuid, self.path, ", ".join(dirs)), self.path)
        if len(matches) > 1:
            raise FormatError("parent image {%s} of VDI differencing image %s is ambiguous: %s all carry that "
                              "UUID (move the copies away)" % (self.parent_uuid, self.path,
                                                               ", ".join(m[0] for m in matches)), self.path)
        return matches[0]

    def _open_parent(self, opener):
        dirs = self._parent_dirs(opener)
        parent_path, parent_header = self._find_parent(dirs)
        own_dir = os.path.dirname(os.path.realpath(self.path))
        if os.path.dirname(parent_path) == own_dir:
            self.backing_filename = os.path.basename(parent_path)
        else:
            self.backing_filename = parent_path
        self.backing_format = "vdi"
        expected = self.header.uuid_parent_modify
        if expected != NULL_UUID and parent_header.uuid_modify != expected:
            self.warnings.append("parent image %s was modified after this differencing image was made: its "
                                 "modification UUID is {%s}, this image expects {%s}"
                                 % (parent_path, _uuid_text(parent_header.uuid_modify), _uuid_text(expected)))
        open_found = getattr(opener, "open_found", None)
        if open_found is None:
            return  # info() without the backing chain: the parent is named, not opened
        self.backing = open_found(self.path, parent_path, "vdi")
        if self.backing.header.uuid_image != self.header.uuid_link:
            raise FormatError("parent image %s changed while it was opened (UUID {%s}, expected {%s})"
                              % (parent_path, _uuid_text(self.backing.header.uuid_image), self.parent_uuid),
                              self.path)

    def close(self):
        self._close_file()
        super(VdiDriver, self).close()

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        options = dict(options or {})
        is_static = _bool_option(options.pop("static", None), "static", path)
        preallocation = options.pop("preallocation", None)
        if preallocation not in (None, False, "off"):
            raise InvalidOptionError("Preallocation mode %r not supported for vdi (use static=on)"
                                     % (preallocation,), path)
        option_size = options.pop("size", None)
        if backing is not None or options.get("backing_file"):
            raise InvalidOptionError("vdi images cannot have a backing file (qemu-img does not create "
                                     "differencing VDI images)", path)
        options.pop("backing_file", None)
        options.pop("backing_fmt", None)
        if options:
            raise InvalidOptionError("invalid option(s) for vdi images: %s (supported: static, preallocation)"
                                     % ", ".join(sorted(options)), path)
        if size is None:
            size = option_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)" % (size,),
                                     path)
        size = -(-size // SECTOR_SIZE) * SECTOR_SIZE
        if size > MAX_DISK_SIZE:
            raise InvalidOptionError("Unsupported VDI image size (size is 0x%x, max supported is 0x%x)"
                                     % (size, MAX_DISK_SIZE), path)
        block_size = DEFAULT_BLOCK_SIZE
        blocks = -(-size // block_size)
        bmap_bytes = -(-blocks * 4 // SECTOR_SIZE) * SECTOR_SIZE
        if blocks * 4 > MAX_BLOCK_MAP_BYTES:
            raise InvalidOptionError("VDI image of %d bytes needs a block map of %d bytes, over the limit of %d"
                                     % (size, blocks * 4, MAX_BLOCK_MAP_BYTES), path)
        offset_bmap = HEADER_AREA
        offset_data = offset_bmap + bmap_bytes
        header = PRE_HEADER.pack(VDI_TEXT, VDI_SIGNATURE, VDI_VERSION_1_1)
        header += HEADER_V1.pack(QEMU_HEADER_SIZE, TYPE_STATIC if is_static else TYPE_DYNAMIC, 0, b"",
                                 offset_bmap, offset_data, 0, 0, 0, SECTOR_SIZE, 0, size, block_size, 0,
                                 blocks, blocks if is_static else 0, uuidlib.uuid4().bytes_le,
                                 uuidlib.uuid4().bytes_le, NULL_UUID, NULL_UUID)
        header += bytes(HEADER_AREA - len(header))
        image_file = ImageFile(path, create=True)
        try:
            image_file.pwrite(0, header)
            position = offset_bmap
            # The block map in bounded pieces: identity for static images, free entries otherwise.
            step = MAX_IO // 4
            for first in range(0, blocks, step):
                count = min(step, blocks - first)
                if is_static:
                    piece = _le_bytes(array.array("I", range(first, first + count)))
                else:
                    piece = b"\xff" * (4 * count)
                image_file.pwrite(position, piece)
                position += len(piece)
            end = offset_data + blocks * block_size if is_static else offset_data
            image_file.truncate(end)
            image_file.flush()
        except BaseException:
            image_file.close()
            os.unlink(image_file.path)
            raise
        image_file.close()

    # -------------------------------------------------------------------- data
    def _slot_offset(self, slot):
        h = self.header
        return h.offset_data + slot * h.slot_size + h.block_extra

    def _runs(self, offset, length):
        """(start, length, entry kind, host offset) runs, merging neighbouring blocks alike."""
        bs = self.header.block_size
        runs = []
        end = offset + length
        position = offset
        while position < end:
            index = position // bs
            within = position - index * bs
            count = min(bs - within, end - position)
            entry = self.block_map[index]
            if entry < FIRST_UNALLOCATED:
                kind, host = DATA, self._slot_offset(entry) + within
            elif entry == BLOCK_ZERO or self.header.image_type != TYPE_DIFFERENCING:
                kind, host = ZERO, None
            else:
                kind, host = UNALLOCATED, None
            if runs:
                last_start, last_length, last_kind, last_host = runs[-1]
                if last_kind == kind and (kind != DATA or last_host + last_length == host):
                    runs[-1] = (last_start, last_length + count, kind, last_host)
                    position += count
                    continue
            runs.append((position, count, kind, host))
            position += count
        return runs

    def host_file_of_offsets(self):
        return self._file

    def block_status(self, offset, length):
        if length <= 0:
            return []
        self._check_range(offset, length, "block status")
        return [Extent(start, count, kind, host) for start, count, kind, host in self._runs(offset, length)]

    def _read_data(self, host, count, guest):
        data = self._file.pread(host, count)
        if len(data) < count:
            raise CorruptImageError("VDI block at guest offset %d: data at host offset %d (%d bytes) lies past the "
                                    "end of the file" % (guest, host, count), self.path)
        return data

    def read(self, offset, length):
        self._check_range(offset, length, "read")
        parts = []
        for start, count, kind, host in self._runs(offset, length):
            if kind == DATA:
                parts.append(self._read_data(host, count, start))
            elif kind == UNALLOCATED and self.backing is not None:
                inside = max(0, min(count, self.backing.virtual_size - start))
                if inside:
                    parts.append(self.backing.read(start, inside))
                if inside < count:
                    parts.append(bytes(count - inside))
            else:
                parts.append(bytes(count))
        return b"".join(parts)

    def read_into(self, offset, view):
        self._check_range(offset, len(view), "read")
        self._read_runs_into(view, offset, self._runs(offset, len(view)), self._read_host)

    def _read_host(self, host, part, _kind, guest):
        count = pread_into(self._file, host, part)
        if count < len(part):
            raise CorruptImageError("VDI block at guest offset %d: data at host offset %d (%d bytes) lies past the "
                                    "end of the file" % (guest, host, len(part)), self.path)

    # ------------------------------------------------------------------- write
    def _write_header_fields(self):
        """blocks_allocated, and on the first change since opening a new
        modification UUID (VirtualBox does so; children record the old one)."""
        if not self._modified:
            self.header.uuid_modify = uuidlib.uuid4().bytes_le
            self._file.pwrite(UUID_MODIFY_OFFSET, self.header.uuid_modify)
            self._modified = True
        self._file.pwrite(BLOCKS_ALLOCATED_OFFSET, struct.pack("<I", self.header.blocks_allocated))

    def _allocate(self, index, within, data):
        """Give block ``index`` a new slot at the end of the data area holding
        ``data`` at ``within`` and zeroes elsewhere (a whole block on disk, as
        QEMU and VirtualBox write it).  The block map and header are written
        by the caller, after the data."""
        h = self.header
        slot = self._next_slot
        slot_start = h.offset_data + slot * h.slot_size
        data_start = slot_start + h.block_extra + within
        data_end = data_start + len(data)
        self._file.write_zeroes(slot_start, data_start - slot_start)
        for piece in range(0, len(data), MAX_IO):
            self._file.pwrite(data_start + piece, bytes(data[piece:piece + MAX_IO]))
        self._file.write_zeroes(data_end, slot_start + h.slot_size - data_end)
        self.block_map[index] = slot
        self._next_slot = slot + 1
        h.blocks_allocated += 1

    def _store_map(self, first, last):
        """Write block map entries first..last (whole sectors of the map)."""
        per_sector = SECTOR_SIZE // 4
        lo = first // per_sector * per_sector
        hi = min(len(self.block_map), (last // per_sector + 1) * per_sector)
        self._file.pwrite(self.header.offset_bmap + lo * 4, _le_bytes(self.block_map[lo:hi]))

    def write(self, offset, data):
        self._check_writable()
        data = memoryview(bytes(data)) if not isinstance(data, (bytes, bytearray)) else memoryview(data)
        length = len(data)
        self._check_range(offset, length, "write")
        bs = self.header.block_size
        changed = []
        position = 0
        while position < length:
            guest = offset + position
            index = guest // bs
            within = guest - index * bs
            count = min(bs - within, length - position)
            piece = data[position:position + count]
            entry = self.block_map[index]
            if entry < FIRST_UNALLOCATED:
                self._file.pwrite(self._slot_offset(entry) + within, bytes(piece))
            elif piece.tobytes().count(0) != count:
                # An unallocated block reads zeroes (no parent: differencing images are read-only).
                self._allocate(index, within, piece)
                changed.append(index)
            position += count
        if changed:
            self._store_map(min(changed), max(changed))
            self._write_header_fields()

    def write_zeroes(self, offset, length, may_unmap=False):
        """Allocated blocks get zeroes written in place; free and zero blocks
        already read zeroes (blocks are never freed: QEMU appends new blocks
        at the allocated count, so a hole in the slots would be reused twice)."""
        self._check_writable()
        self._check_range(offset, length, "write_zeroes")
        for start, count, kind, host in self._runs(offset, length):
            if kind != DATA:
                continue
            done = 0
            while done < count:
                chunk = min(MAX_IO, count - done)
                self._file.pwrite(host + done, bytes(chunk))
                done += chunk

    def flush(self):
        if self._file is not None and not self.readonly:
            self._file.flush()

    def creation_options(self):
        return {"static": self.header.image_type == TYPE_STATIC}

    # ------------------------------------------------------------------- map
    def map_runs(self, offset, end, l1_table=None, cache=None):
        # A static image is raw-like: QEMU recurses into the file under its DATA ranges.
        runs = super(VdiDriver, self).map_runs(offset, end, l1_table, cache)
        if self.header.image_type == TYPE_STATIC and self._file is not None:
            runs = recurse_into_file(self._file, runs)
        return runs

    # ----------------------------------------------------------------- queries
    def info(self):
        result = {"cluster-size": self.header.block_size}
        if self.warnings:
            result["warnings"] = list(self.warnings)
        return result

    def check(self, repair=None):
        """``qemu-img check`` for vdi: each allocated entry must point below
        the block count, no slot may be used twice, and the header's allocated
        count must match.  Data slots past the end of the file are counted too
        (QEMU does not look; reading them fails)."""
        if repair:
            raise UnsupportedOperation("This image format does not support checks (repair of vdi images)",
                                       self.path)
        h = self.header
        corruptions = 0
        allocated = 0
        used = set()
        file_size = self._file.size()
        for index, entry in enumerate(self.block_map):
            if entry >= FIRST_UNALLOCATED:
                continue
            if entry >= h.blocks_in_image:
                corruptions += 1
                continue
            allocated += 1
            if entry in used:
                corruptions += 1
            else:
                used.add(entry)
                if self._slot_offset(entry) + h.block_size > file_size and \
                        index * h.block_size < self.virtual_size:
                    corruptions += 1
        if allocated != h.blocks_allocated:
            corruptions += 1
        result = {"check-errors": 0}
        if corruptions:
            result["corruptions"] = corruptions
        return result
