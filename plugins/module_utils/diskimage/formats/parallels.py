# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallels expanding disk images (``.hds``), read-only.

Layout (QEMU docs/interop/parallels.txt): a 64-byte little-endian header,
the block allocation table (BAT, one 32-bit entry per cluster) right after
it, then the data clusters.  A BAT entry of 0 means the cluster is not
allocated (reads zeroes); otherwise it gives the cluster's position in the
file: in sectors for the old magic ``WithoutFreeSpace``, in clusters for
``WithouFreSpacExt``.  ``ext_off`` (sectors) points to the format extension
cluster (dirty bitmaps), which reading the guest data does not need.

Behaviour follows QEMU's block/parallels.c (probe score, header checks,
virtual size, block status, ``qemu-img check``).

Beyond QEMU (which reads one ``.hds`` file only), a Parallels Desktop bundle
``NAME.hdd/`` is read through its ``DiskDescriptor.xml``: opening the
descriptor (it probes as parallels), or with the format given the bundle
directory or the empty ``NAME.hdd`` placeholder inside it, gives the whole
disk, made of the storages the descriptor lists in order (split disks), each a ``Plain`` (raw) or ``Compressed`` (expanding
``.hds``) file; with snapshots, each storage is a chain of images from the
newest snapshot down to the base, unallocated clusters falling through.
Storage file names obey the path policy (opened through the opener, docs/security.md
rule 1); the descriptor is read whole only up to 1 MiB and parsed
without DTDs or entities.

Writing and creating are not supported by this library (qemu-img can create
parallels images; convert to qcow2 to get a writable image).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import os
import struct
import sys
from xml.etree import ElementTree

from .._io import ImageFile
from .. import policy
from ..errors import CorruptImageError, FormatError, UnsupportedFeature, UnsupportedOperation
from .base import DATA, UNALLOCATED, Extent, ReadOnlyDriver

SECTOR_SIZE = 512

# --- ParallelsHeader (docs/interop/parallels.txt, "Header") ---------------------------
# magic, version, heads, cylinders, tracks (sectors per cluster), bat_entries,
# nb_sectors, inuse, data_off (sectors), flags, ext_off (sectors).
HEADER_STRUCT = struct.Struct("<16sIIIIIQIIIQ")
MAGIC_SECTORS = b"WithoutFreeSpace"     # BAT entries in sectors; virtual size limited to 32 bits of sectors
MAGIC_CLUSTERS = b"WithouFreSpacExt"    # BAT entries in clusters
HEADER_VERSION = 2
HEADER_INUSE_MAGIC = 0x746F6E59
# --- Format extension cluster (docs/interop/parallels.txt, "Format Extension") --------
EXTENSION_MAGIC = 0xAB234CEF23DCEA87
EXTENSION_MAGIC_STRUCT = struct.Struct("<Q")

# QEMU: tracks at most INT32_MAX / 513 sectors per cluster.
MAX_TRACKS = 0x7fffffff // 513
# Cap on the BAT held in memory (docs/security.md rule 5): 16 M clusters (16 TiB at 1 MiB clusters).
MAX_BAT_BYTES = 64 * 1024 * 1024
# Sizes are int64 bytes, as in QEMU.
MAX_VIRTUAL_SIZE = (1 << 63) - 1

# --- Parallels Desktop bundle (NAME.hdd/DiskDescriptor.xml) -------------------------------
DESCRIPTOR_NAME = "DiskDescriptor.xml"
DESCRIPTOR_ROOT = "Parallels_disk_image"
MAX_DESCRIPTOR_BYTES = 1024 * 1024
MAX_STORAGES = 4096
MAX_SNAPSHOTS = 64
NULL_GUID = "{00000000-0000-0000-0000-000000000000}"
STORAGE_PLAIN = "Plain"             # raw data
STORAGE_EXPANDING = "Compressed"    # an expanding .hds image (Parallels calls it "compressed")


def _le_table(raw):
    table = array.array("I")
    table.frombytes(bytes(raw))
    if sys.byteorder != "little":
        table.byteswap()
    return table


def _is_descriptor(header, filename):
    """A bundle descriptor: named DiskDescriptor.xml, with the Parallels root element."""
    if not filename or os.path.basename(os.fsdecode(os.fspath(filename))) != DESCRIPTOR_NAME:
        return False
    return ("<" + DESCRIPTOR_ROOT).encode("ascii") in bytes(header[:4096])


def _bundle_descriptor(path):
    """The DiskDescriptor.xml to read when ``path`` names a bundle (its directory,
    its descriptor, or the empty placeholder file inside it), else None."""
    if getattr(path, "resolve_sibling", None) is not None:
        return None         # a member of an archive: a plain .hds
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return os.path.join(path, DESCRIPTOR_NAME)
    if os.path.basename(path) == DESCRIPTOR_NAME:
        return path
    sibling = os.path.join(os.path.dirname(path), DESCRIPTOR_NAME)
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0 and os.path.isfile(sibling):
            return sibling
    except OSError:
        return None
    return None


def _text(element, tag, path):
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise FormatError("Parallels DiskDescriptor.xml: missing <%s> in <%s>" % (tag, element.tag), path)
    return found.text.strip()


def _number(element, tag, path):
    text = _text(element, tag, path)
    if not text.isdigit() or len(text) > 19:
        raise FormatError("Parallels DiskDescriptor.xml: <%s> is %r, expected a number of sectors" % (tag, text), path)
    return int(text)


class ParallelsHeader:
    """The 64-byte header of a Parallels image."""

    def __init__(self, raw, path):
        if len(raw) < HEADER_STRUCT.size:
            raise FormatError("Parallels header: file too short (%d bytes, expected at least %d)"
                              % (len(raw), HEADER_STRUCT.size), path)
        (self.magic, self.version, self.heads, self.cylinders, self.tracks, self.bat_entries,
         self.nb_sectors, self.inuse, self.data_off, self.flags, self.ext_off) = HEADER_STRUCT.unpack_from(raw, 0)

    def validate(self, path, file_size):
        """Magic -> version -> sizes and offsets (QEMU's messages where it has one)."""
        if self.magic not in (MAGIC_SECTORS, MAGIC_CLUSTERS):
            raise FormatError("Image not in Parallels format (magic %r, expected %r or %r)"
                              % (self.magic, MAGIC_SECTORS, MAGIC_CLUSTERS), path)
        if self.version != HEADER_VERSION:
            raise UnsupportedFeature("Image not in Parallels format (version %d, expected %d)"
                                     % (self.version, HEADER_VERSION), path)
        if self.tracks == 0:
            raise FormatError("Invalid image: Zero sectors per track (Parallels header tracks = 0)", path)
        if self.tracks > MAX_TRACKS:
            raise UnsupportedFeature("Invalid image: Too big cluster (%d sectors per cluster, at most %d)"
                                     % (self.tracks, MAX_TRACKS), path)
        bat_bytes = 4 * self.bat_entries
        if bat_bytes > MAX_BAT_BYTES:
            raise UnsupportedFeature("Catalog too large: Parallels BAT of %d entries (%d bytes) exceeds the "
                                     "limit of %d bytes" % (self.bat_entries, bat_bytes, MAX_BAT_BYTES), path)
        if HEADER_STRUCT.size + bat_bytes > file_size:
            raise CorruptImageError("Parallels BAT (%d entries at offset %d) runs past the end of the file "
                                    "(%d bytes)" % (self.bat_entries, HEADER_STRUCT.size, file_size), path)
        if self.virtual_size > MAX_VIRTUAL_SIZE:
            raise UnsupportedFeature("Parallels image of %d sectors is too large (at most %d bytes)"
                                     % (self.nb_sectors, MAX_VIRTUAL_SIZE), path)
        if self.ext_off and self.ext_off * SECTOR_SIZE + EXTENSION_MAGIC_STRUCT.size > file_size:
            raise CorruptImageError("Parallels format extension at sector %d lies past the end of the file "
                                    "(%d bytes)" % (self.ext_off, file_size), path)

    @property
    def offset_multiplier(self):
        """Sectors per BAT unit."""
        return 1 if self.magic == MAGIC_SECTORS else self.tracks

    @property
    def virtual_size(self):
        sectors = self.nb_sectors
        if self.magic == MAGIC_SECTORS:
            sectors &= 0xffffffff     # the old format has a 32-bit sector count
        return sectors * SECTOR_SIZE

    @property
    def cluster_size(self):
        return self.tracks * SECTOR_SIZE


class ParallelsDriver(ReadOnlyDriver):
    format_name = "parallels"
    read_only_reason = ("this library opens parallels images read-only, no writes or repairs (convert to qcow2 for a "
                        "writable copy)")

    def __init__(self):
        super(ParallelsDriver, self).__init__()
        self.header = None
        self.bat = None
        self._file_size = 0

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        # QEMU: a whole header with either magic and version 2 scores 100.
        if _is_descriptor(header, filename):
            return 100      # a bundle's DiskDescriptor.xml (QEMU does not read bundles)
        if len(header) < HEADER_STRUCT.size:
            return 0
        if header[:16] in (MAGIC_SECTORS, MAGIC_CLUSTERS) and struct.unpack_from("<I", header, 16)[0] == HEADER_VERSION:
            return 100
        return 0

    # --------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, path, readonly=True, opener=None, force_share=False):
        if not readonly:
            raise cls.refusal("opening", path, " for writing")
        descriptor = _bundle_descriptor(path)
        if descriptor is not None:
            return ParallelsBundle.open_descriptor(descriptor, opener, force_share)
        return super(ParallelsDriver, cls).open(path, readonly, opener, force_share)

    def _open_structures(self, opener):
        path = self.path
        self._file_size = self._file.size()
        h = ParallelsHeader(self._file.pread(0, HEADER_STRUCT.size), path)
        h.validate(path, self._file_size)
        self.header = h
        self.virtual_size = h.virtual_size
        self.bat = _le_table(self._file.pread_exact(HEADER_STRUCT.size, 4 * h.bat_entries, "Parallels BAT"))
        if h.ext_off:
            magic = EXTENSION_MAGIC_STRUCT.unpack(self._file.pread_exact(
                h.ext_off * SECTOR_SIZE, EXTENSION_MAGIC_STRUCT.size, "Parallels format extension"))[0]
            if magic != EXTENSION_MAGIC:
                raise FormatError("Wrong parallels Format Extension magic: 0x%x, expected: 0x%x"
                                  % (magic, EXTENSION_MAGIC), path)

    # -------------------------------------------------------------------- data
    def _host_offset(self, index):
        """Host byte offset of cluster ``index``, or None when it is not allocated."""
        if index >= len(self.bat):
            return None
        entry = self.bat[index]
        if entry == 0:
            return None
        return entry * self.header.offset_multiplier * SECTOR_SIZE

    def _runs(self, offset, length):
        """(guest start, length, host offset or None), merging clusters contiguous in the file."""
        cs = self.header.cluster_size
        runs = []
        end = offset + length
        position = offset
        covered = len(self.bat) * cs
        while position < end:
            index = position // cs
            if position >= covered:
                # Past the BAT: unallocated in one run, however large the virtual size.
                if runs and runs[-1][2] is None:
                    runs[-1] = (runs[-1][0], end - runs[-1][0], None)
                else:
                    runs.append((position, end - position, None))
                break
            within = position - index * cs
            count = min(cs - within, end - position)
            host = self._host_offset(index)
            if host is not None:
                host += within
            if runs:
                last_start, last_length, last_host = runs[-1]
                if (host is None and last_host is None) or \
                        (host is not None and last_host is not None and last_host + last_length == host):
                    runs[-1] = (last_start, last_length + count, last_host)
                    position += count
                    continue
            runs.append((position, count, host))
            position += count
        return runs

    def block_status(self, offset, length):
        if length <= 0:
            return []
        self._check_range(offset, length, "block status")
        return [Extent(start, count, UNALLOCATED if host is None else DATA, host)
                for start, count, host in self._runs(offset, length)]

    def read(self, offset, length):
        self._check_range(offset, length, "read")
        parts = []
        for start, count, host in self._runs(offset, length):
            if host is None:
                parts.append(bytes(count))
                continue
            data = self._file.pread(host, count)
            if len(data) < count:
                raise CorruptImageError("Parallels cluster for guest offset %d: data at host offset %d (%d bytes) "
                                        "lies past the end of the file (%d bytes)"
                                        % (start, host, count, self._file.size()), self.path)
            parts.append(data)
        return b"".join(parts)

    # ----------------------------------------------------------------- queries
    def check(self, repair=None):
        """``qemu-img check`` for parallels (QEMU's parallels_co_check): an
        unclean header and clusters outside the file are corruptions, space
        after the last cluster is leaked; repairs are not supported here."""
        if repair:
            raise UnsupportedOperation("repairing parallels images is not supported (read-only driver)", self.path)
        h = self.header
        cluster_size = h.cluster_size
        size = self._file.size()
        corruptions = 0
        if h.inuse == HEADER_INUSE_MAGIC:
            corruptions += 1
        allocated = 0
        fragmented = 0
        high = 0
        previous = 0
        multiplier = h.offset_multiplier * SECTOR_SIZE
        for entry in self.bat:
            host = entry * multiplier
            if host == 0:
                previous = 0
                continue
            if host > size:
                corruptions += 1
            allocated += 1
            if host > high:
                high = host
            if previous and previous + cluster_size != host:
                fragmented += 1
            previous = host
        result = {"check-errors": 0, "image-end-offset": high + cluster_size, "total-clusters": len(self.bat)}
        if size > high + cluster_size:
            result["leaks"] = -(-(size - high - cluster_size) // cluster_size)
        if corruptions:
            result["corruptions"] = corruptions
        if allocated:
            result["allocated-clusters"] = allocated
        if fragmented:
            result["fragmented-clusters"] = fragmented
        return result


class ParallelsBundle(ReadOnlyDriver):
    """A Parallels Desktop ``.hdd`` bundle read through its DiskDescriptor.xml."""

    format_name = "parallels"
    read_only_reason = "Parallels bundles are read-only in this library (convert to qcow2 for a writable copy)"

    def __init__(self):
        super(ParallelsBundle, self).__init__()
        # (first byte, end byte, layers newest first); a layer is ("plain", ImageFile) or ("expanding", driver).
        self.storages = []
        self._files = []
        self._layers = []

    @classmethod
    def open_descriptor(cls, path, opener, force_share):
        self = cls()
        self.path = os.path.abspath(path)
        try:
            with ImageFile(self.path, force_share=force_share) as descriptor_file:
                size = descriptor_file.size()
                if size > MAX_DESCRIPTOR_BYTES:
                    raise UnsupportedFeature("Parallels DiskDescriptor.xml of %d bytes exceeds the limit of %d bytes"
                                             % (size, MAX_DESCRIPTOR_BYTES), self.path)
                document = descriptor_file.pread_exact(0, size, "Parallels DiskDescriptor.xml")
            self._open_storages(self._parse(document), opener, force_share)
        except BaseException:
            self.close()
            raise
        return self

    def _parse(self, document):
        if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
            raise FormatError("Parallels DiskDescriptor.xml: DTDs and entities are not accepted", self.path)
        try:
            root = ElementTree.fromstring(document)
        except ElementTree.ParseError as exc:
            raise FormatError("Parallels DiskDescriptor.xml is not well-formed XML (%s)" % exc, self.path)
        if root.tag != DESCRIPTOR_ROOT:
            raise FormatError("Parallels DiskDescriptor.xml: root element <%s>, expected <%s>"
                              % (root.tag, DESCRIPTOR_ROOT), self.path)
        return root

    def _snapshot_chain(self, root):
        """GUIDs from the newest snapshot down to the base (None: one image per storage, no snapshots)."""
        shots = root.findall("Snapshots/Shot")
        if not shots:
            return None
        if len(shots) > MAX_SNAPSHOTS:
            raise UnsupportedFeature("Parallels bundle with %d snapshots (at most %d)" % (len(shots), MAX_SNAPSHOTS),
                                     self.path)
        parents = {}
        for shot in shots:
            parents[_text(shot, "GUID", self.path).lower()] = _text(shot, "ParentGUID", self.path).lower()
        referenced = set(parents.values())
        leaves = [guid for guid in parents if guid not in referenced]
        if len(leaves) != 1:
            raise UnsupportedFeature("Parallels bundle snapshot tree has %d branches; only a single chain of snapshots "
                                     "is supported" % len(leaves), self.path)
        chain = []
        guid = leaves[0]
        while guid != NULL_GUID:
            if guid not in parents or guid in chain:
                raise CorruptImageError("Parallels DiskDescriptor.xml: snapshot %s has no valid parent chain" % guid,
                                        self.path)
            chain.append(guid)
            guid = parents[guid]
        return chain

    def _storage_file(self, name, opener, force_share):
        data_file = getattr(opener, "data_file", None)
        if data_file is not None:
            image_file = data_file(self.path, name, writable=False)
        else:
            resolved = policy.resolve_reference(self.path, name, None, kind="Parallels storage file")
            image_file = ImageFile(resolved, force_share=force_share)
        self._files.append(image_file)
        return image_file

    def _open_layer(self, image, size, opener, force_share):
        kind = _text(image, "Type", self.path)
        name = _text(image, "File", self.path)
        if kind not in (STORAGE_PLAIN, STORAGE_EXPANDING):
            raise UnsupportedFeature("Parallels storage %s has image type %r (supported: %s, %s)"
                                     % (name, kind, STORAGE_PLAIN, STORAGE_EXPANDING), self.path)
        image_file = self._storage_file(name, opener, force_share)
        if kind == STORAGE_PLAIN:
            if image_file.size() < size:
                raise CorruptImageError("Parallels plain storage %s holds %d bytes, the descriptor needs %d"
                                        % (name, image_file.size(), size), self.path)
            return ("plain", image_file)
        layer = ParallelsDriver.open_file(image_file)
        self._layers.append(layer)
        if layer.virtual_size < size:
            raise CorruptImageError("Parallels storage image %s has a virtual size of %d bytes, the descriptor "
                                    "needs %d" % (name, layer.virtual_size, size), self.path)
        return ("expanding", layer)

    def _open_storages(self, root, opener, force_share):
        disk_sectors = _number(root, "Disk_Parameters/Disk_size", self.path)
        chain = self._snapshot_chain(root)
        storages = root.findall("StorageData/Storage")
        if not storages or len(storages) > MAX_STORAGES:
            raise FormatError("Parallels DiskDescriptor.xml lists %d storages (expected 1 to %d)"
                              % (len(storages), MAX_STORAGES), self.path)
        position = 0
        for storage in storages:
            start = _number(storage, "Start", self.path)
            end = _number(storage, "End", self.path)
            if start != position or end <= start:
                raise CorruptImageError("Parallels DiskDescriptor.xml: storage [%d, %d) does not continue at sector %d"
                                        % (start, end, position), self.path)
            images = storage.findall("Image")
            if chain is None:
                if len(images) != 1:
                    raise FormatError("Parallels storage at sector %d has %d images and the bundle no snapshots"
                                      % (start, len(images)), self.path)
                selected = images
            else:
                by_guid = dict((_text(image, "GUID", self.path).lower(), image) for image in images)
                missing = [guid for guid in chain if guid not in by_guid]
                if missing:
                    raise CorruptImageError("Parallels storage at sector %d has no image for snapshot %s"
                                            % (start, missing[0]), self.path)
                selected = [by_guid[guid] for guid in chain]
            size = (end - start) * SECTOR_SIZE
            layers = [self._open_layer(image, size, opener, force_share) for image in selected]
            self.storages.append((start * SECTOR_SIZE, end * SECTOR_SIZE, layers))
            position = end
        if position != disk_sectors:
            raise CorruptImageError("Parallels DiskDescriptor.xml: storages cover %d sectors, the disk has %d"
                                    % (position, disk_sectors), self.path)
        self.virtual_size = disk_sectors * SECTOR_SIZE

    def close(self):
        layers, self._layers = self._layers, []
        for layer in layers:
            layer.close()
        files, self._files = self._files, []
        for image_file in files:
            image_file.close()
        super(ParallelsBundle, self).close()

    def info(self):
        # The bundle's disk space is its storage files' (plus the descriptor's, counted by ops).
        actual = os.stat(self.path).st_blocks * 512 + sum(image_file.allocated_size() for image_file in self._files)
        return {"dirty-flag": None, "actual-size": actual}

    def check(self, repair=None):
        raise UnsupportedOperation("checking Parallels bundles is not supported: check each .hds storage file "
                                   "(qemu-img does not read bundles)", self.path)

    # -------------------------------------------------------------------- data
    def _layer_runs(self, layers, offset, length):
        """(start, length, (ImageFile, host offset) or None) within one storage, falling through the snapshots."""
        kind, layer = layers[0]
        if kind == "plain":
            return [(offset, length, (layer, offset))]
        runs = []
        for start, count, host in layer._runs(offset, length):   # pylint: disable=protected-access
            if host is not None:
                runs.append((start, count, (layer._file, host)))  # pylint: disable=protected-access
            elif len(layers) > 1:
                runs.extend(self._layer_runs(layers[1:], start, count))
            else:
                runs.append((start, count, None))
        return runs

    def _runs(self, offset, length):
        self._check_range(offset, length, "access")
        runs = []
        end = offset + length
        for first, last, layers in self.storages:
            if last <= offset or first >= end:
                continue
            start = max(offset, first)
            stop = min(end, last)
            runs.extend((first + run_start, count, source)
                        for run_start, count, source in self._layer_runs(layers, start - first, stop - start))
        return runs

    def block_status(self, offset, length):
        if length <= 0:
            return []
        extents = []
        for start, count, source in self._runs(offset, length):
            kind = UNALLOCATED if source is None else DATA
            if extents and extents[-1].kind == kind:
                extents[-1] = Extent(extents[-1].start, extents[-1].length + count, kind, None)
            else:
                extents.append(Extent(start, count, kind, None))
        return extents

    def read(self, offset, length):
        parts = []
        for start, count, source in self._runs(offset, length):
            if source is None:
                parts.append(bytes(count))
                continue
            image_file, host = source
            data = image_file.pread(host, count)
            if len(data) < count:
                raise CorruptImageError("Parallels storage %s: data for guest offset %d at host offset %d (%d bytes) "
                                        "lies past the end of the file" % (image_file.path, start, host, count),
                                        self.path)
            parts.append(data)
        return b"".join(parts)
