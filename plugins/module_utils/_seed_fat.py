# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small FAT12 file system holding files in its root directory only (a cloud-init NoCloud seed), written and read
back in pure Python (standard library only, never imports ansible).

Written from Microsoft's "FAT: General Overview of On-Disk Format" (version 1.03): the boot sector and BPB (section
3), the FAT type determined by the count of clusters (section 3.5), FAT12 entries packed in 12 bits (section 4),
directory entries (section 6), long file names (section 7: LFN entries with the checksum of the short name) and the
volume label entry (attribute ATTR_VOLUME_ID).

The reader also reads FAT16 (the two differ only in the FAT entries' width). The image is deterministic: the same
files and label always give the same bytes (time stamps are SEED_TIME, the volume serial number a hash of the
content).

Private to this collection (the leading underscore): no compatibility promise.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import re
import struct

SECTOR = 512
RESERVED_SECTORS = 1
NUMBER_OF_FATS = 2
ROOT_ENTRIES = 512                  # 32 sectors of root directory, as FAT volumes of hard disks have
MEDIA = 0xF8                        # fixed disk
FAT12_MAX_CLUSTERS = 4084           # section 3.5: fewer than 4085 clusters is FAT12
CLUSTER_MARGIN = 16                 # free clusters kept beyond the files' need
FAT16_MAX_CLUSTERS = 65524
MAX_IMAGE_BYTES = 256 * 1024 * 1024
SEED_TIME = (2000, 1, 1, 0, 0, 0)
ATTR_READ_ONLY, ATTR_HIDDEN, ATTR_SYSTEM, ATTR_VOLUME_ID, ATTR_DIRECTORY, ATTR_ARCHIVE = 1, 2, 4, 8, 16, 32
ATTR_LONG_NAME = ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_VOLUME_ID
LAST_LONG_ENTRY = 0x40
DELETED = 0xE5

# section 3.1 and 3.2: boot sector, BPB and the FAT12/FAT16 extended fields (offsets 0 to 61)
BOOT_SECTOR = struct.Struct('<3s8sHBHBHHBHHHII BBBI11s8s'.replace(' ', ''))
# section 6: directory entry (32 bytes)
DIRECTORY_ENTRY = struct.Struct('<11sBBBHHHHHHHI')
# section 7: long file name entry (32 bytes): order, name1 (5 UCS-2), attr, type, checksum, name2 (6), 0, name3 (2)
LONG_NAME_ENTRY = struct.Struct('<B10sBBB12sH4s')
SIGNATURE = b'\x55\xaa'             # bytes 510 and 511 of the boot sector
_SHORT_NAME_CHARS = re.compile(r'[^A-Z0-9!#$%&\'()@^_`{}~-]')
_LABEL = re.compile(r'^[A-Z0-9_-]{1,11}$')


class FATError(ValueError):
    """An image that is not a FAT seed this library reads, or a request it cannot write."""


def _date():
    year, month, day = SEED_TIME[:3]
    return ((year - 1980) << 9) | (month << 5) | day


def _time():
    hour, minute, second = SEED_TIME[3:]
    return (hour << 11) | (minute << 5) | (second // 2)


def short_names(names):
    """8.3 short names (section 6.1, 11 bytes: name and extension padded with spaces), one per name, unique: the
    name in upper case without invalid characters, cut to six characters and a numeric tail ``~N``."""
    taken = set()
    result = {}
    for name in names:
        stem, dot, extension = name.upper().rpartition('.')
        if not dot or not stem:
            stem, extension = name.upper(), ''
        stem = _SHORT_NAME_CHARS.sub('_', stem.replace(' ', '').replace('.', ''))
        extension = _SHORT_NAME_CHARS.sub('_', extension.replace(' ', ''))[:3]
        number = 1
        while True:
            tail = '~%d' % number
            short = (stem[:8 - len(tail)] + tail).ljust(8) + extension.ljust(3)
            if short not in taken:
                break
            number += 1
        taken.add(short)
        result[name] = short.encode('ascii')
    return result


def lfn_checksum(short_name):
    """Section 7.2: the checksum of the 11-byte short name that every LFN entry of the name records."""
    total = 0
    for byte in short_name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _long_name_entries(name, checksum):
    """Section 7: the LFN entries of ``name``, in the order they are written (last part first)."""
    units = name.encode('utf-16-le')
    count = -(-len(units) // 26)
    units += b'\x00\x00' if len(units) < count * 26 else b''
    units = units.ljust(count * 26, b'\xff')
    entries = []
    for order in range(count, 0, -1):
        part = units[(order - 1) * 26:order * 26]
        entries.append(LONG_NAME_ENTRY.pack(order | (LAST_LONG_ENTRY if order == count else 0), part[0:10],
                                            ATTR_LONG_NAME, 0, checksum, part[10:22], 0, part[22:26]))
    return entries


def _short_entry(name11, attributes, cluster, size):
    return DIRECTORY_ENTRY.pack(name11, attributes, 0, 0, _time(), _date(), _date(), 0, _time(), _date(), cluster,
                                size)


def _layout(clusters, sectors_per_cluster):
    """Sectors of one FAT, of the root directory, the first data sector and the total, for ``clusters``."""
    fat_sectors = -(-((clusters + 2) * 3 // 2 + 1) // SECTOR)
    root_sectors = ROOT_ENTRIES * 32 // SECTOR
    data_start = RESERVED_SECTORS + NUMBER_OF_FATS * fat_sectors + root_sectors
    return fat_sectors, root_sectors, data_start, data_start + clusters * sectors_per_cluster


def _set_fat12(fat, cluster, value):
    offset = cluster + cluster // 2
    if cluster % 2 == 0:
        fat[offset] = value & 0xFF
        fat[offset + 1] = (fat[offset + 1] & 0xF0) | (value >> 8)
    else:
        fat[offset] = (fat[offset] & 0x0F) | ((value & 0x0F) << 4)
        fat[offset + 1] = value >> 4


def build_image(files, label):
    """The image (bytes) of a FAT12 file system labelled ``label`` (upper case, at most 11 characters) holding
    ``files`` (a mapping of name to bytes) in its root directory, each with a long (VFAT) name."""
    if not _LABEL.match(label):
        raise FATError('label %r: expected 1 to 11 of the characters A-Z 0-9 _ -' % (label,))
    for name in files:
        if not name or len(name) > 255 or any(c in name for c in '/\\:*?"<>|\x00') or name.strip(' .') != name:
            raise FATError('file name %r: expected a plain name of 1 to 255 characters' % (name,))
    names = sorted(files)
    shorts = short_names(names)
    entries = [_short_entry(label.ljust(11).encode('ascii'), ATTR_VOLUME_ID, 0, 0)]
    for name in names:
        entries.extend(_long_name_entries(name, lfn_checksum(shorts[name])))
        entries.append(None)        # the short entry, once its cluster is known
    if len(entries) > ROOT_ENTRIES:
        raise FATError('%d directory entries: the root directory holds %d' % (len(entries), ROOT_ENTRIES))

    for sectors_per_cluster in (1, 2, 4, 8, 16, 32, 64):
        cluster_bytes = sectors_per_cluster * SECTOR
        needed = sum(-(-len(files[name]) // cluster_bytes) for name in names)
        if needed + CLUSTER_MARGIN <= FAT12_MAX_CLUSTERS - CLUSTER_MARGIN:
            break
    else:
        raise FATError('%d bytes of files: more than a FAT12 seed holds' % sum(len(v) for v in files.values()))
    clusters = needed + CLUSTER_MARGIN
    fat_sectors, root_sectors, data_start, total = _layout(clusters, sectors_per_cluster)

    image = bytearray(total * SECTOR)
    fat = bytearray(fat_sectors * SECTOR)
    _set_fat12(fat, 0, 0xF00 | MEDIA)
    _set_fat12(fat, 1, 0xFFF)
    next_cluster = 2
    index = 1
    for name in names:
        data = files[name]
        count = -(-len(data) // cluster_bytes)
        first = next_cluster if count else 0
        for number in range(count):
            cluster = next_cluster + number
            _set_fat12(fat, cluster, 0xFFF if number == count - 1 else cluster + 1)
        if count:
            start = (data_start + (first - 2) * sectors_per_cluster) * SECTOR
            image[start:start + len(data)] = data
        next_cluster += count
        while entries[index] is not None:
            index += 1
        entries[index] = _short_entry(shorts[name], ATTR_ARCHIVE, first, len(data))
        index += 1

    serial = struct.unpack('<I', hashlib.sha256(repr((label, sorted(files.items()))).encode('utf-8')).digest()[:4])[0]
    boot = BOOT_SECTOR.pack(b'\xeb\x3c\x90', b'MSWIN4.1', SECTOR, sectors_per_cluster, RESERVED_SECTORS,
                            NUMBER_OF_FATS, ROOT_ENTRIES, total if total < 0x10000 else 0, MEDIA, fat_sectors,
                            32, 64, 0, total if total >= 0x10000 else 0,
                            0x80, 0, 0x29, serial, label.ljust(11).encode('ascii'), b'FAT12   ')
    image[0:len(boot)] = boot
    image[510:512] = SIGNATURE
    for copy in range(NUMBER_OF_FATS):
        start = (RESERVED_SECTORS + copy * fat_sectors) * SECTOR
        image[start:start + len(fat)] = fat
    root = b''.join(entries)
    start = (RESERVED_SECTORS + NUMBER_OF_FATS * fat_sectors) * SECTOR
    image[start:start + len(root)] = root
    del root_sectors
    return bytes(image)


# ------------------------------------------------------------------------------------------------ reading
def read_image(image):
    """The label and the files of the root directory of a FAT12/FAT16 image (bytes): ``(label, {name: bytes})``,
    with long names where they are (else the short name in lower case, as Linux shows it by default). Raises
    FATError for anything else, including a subdirectory."""
    if len(image) > MAX_IMAGE_BYTES:
        raise FATError('%d bytes: larger than a seed (at most %d bytes)' % (len(image), MAX_IMAGE_BYTES))
    if len(image) < SECTOR * 4:
        raise FATError('%d bytes: shorter than a FAT file system' % len(image))
    if image[510:512] != SIGNATURE:
        raise FATError('boot sector: expected the signature 55 AA at byte 510, found %r' % (bytes(image[510:512]),))
    (_jump, _oem, bytes_per_sector, sectors_per_cluster, reserved, fats, root_entries, total16, _media, fat_size,
     _track, _heads, _hidden, total32, _drive, _res, boot_signature, _serial, bpb_label,
     _type) = BOOT_SECTOR.unpack_from(image, 0)
    if bytes_per_sector not in (512, 1024, 2048, 4096):
        raise FATError('BPB: bytes per sector %d, expected 512, 1024, 2048 or 4096' % bytes_per_sector)
    if sectors_per_cluster not in (1, 2, 4, 8, 16, 32, 64, 128) or not reserved or not fats or not fat_size \
            or not root_entries:
        raise FATError('BPB: not a FAT12/FAT16 volume (sectors per cluster %d, reserved %d, FATs %d, FAT size %d, '
                       'root entries %d)' % (sectors_per_cluster, reserved, fats, fat_size, root_entries))
    total = total16 or total32
    if total * bytes_per_sector > len(image):
        raise FATError('BPB: %d sectors of %d bytes, the image has %d bytes' % (total, bytes_per_sector, len(image)))
    root_start = (reserved + fats * fat_size) * bytes_per_sector
    root_bytes = root_entries * 32
    data_start = root_start + -(-root_bytes // bytes_per_sector) * bytes_per_sector
    cluster_bytes = sectors_per_cluster * bytes_per_sector
    if data_start > total * bytes_per_sector:
        raise FATError('BPB: the data area starts after the end of the volume')
    clusters = (total * bytes_per_sector - data_start) // cluster_bytes
    if clusters > FAT16_MAX_CLUSTERS:
        raise FATError('%d clusters: a FAT32 volume, not a seed this module writes' % clusters)
    fat = image[reserved * bytes_per_sector:(reserved + fat_size) * bytes_per_sector]
    fat12 = clusters <= FAT12_MAX_CLUSTERS

    def next_of(cluster):
        if fat12:
            offset = cluster + cluster // 2
            if offset + 1 >= len(fat):
                raise FATError('FAT entry of cluster %d is out of the FAT' % cluster)
            pair = fat[offset] | (fat[offset + 1] << 8)
            return (pair >> 4) if cluster % 2 else (pair & 0xFFF), 0xFF8
        if 2 * cluster + 1 >= len(fat):
            raise FATError('FAT entry of cluster %d is out of the FAT' % cluster)
        return struct.unpack_from('<H', fat, 2 * cluster)[0], 0xFFF8

    def content(name, first, size):
        data = bytearray()
        cluster = first
        seen = set()
        while len(data) < size:
            if not 2 <= cluster < clusters + 2 or cluster in seen:
                raise FATError('file %r: cluster chain broken at cluster %d' % (name, cluster))
            seen.add(cluster)
            start = data_start + (cluster - 2) * cluster_bytes
            data += image[start:start + cluster_bytes]
            cluster, end = next_of(cluster)
            if cluster >= end:
                break
        if len(data) < size:
            raise FATError('file %r: %d bytes recorded, its clusters hold %d' % (name, size, len(data)))
        return bytes(data[:size])

    label = None
    files = {}
    long_parts = {}
    for offset in range(root_start, root_start + root_bytes, 32):
        entry = image[offset:offset + 32]
        if entry[0] == 0:
            break
        if entry[0] == DELETED:
            long_parts = {}
            continue
        attributes = entry[11]
        if attributes & 0x3F == ATTR_LONG_NAME:
            order, name1, _attr, _kind, checksum, name2, _zero, name3 = LONG_NAME_ENTRY.unpack(entry)
            if order & LAST_LONG_ENTRY:
                long_parts = {}
            long_parts[order & 0x1F] = (checksum, name1 + name2 + name3)
            continue
        short = bytes(entry[0:11])
        if attributes & ATTR_VOLUME_ID:
            label = short.decode('ascii', 'replace').rstrip(' ')
            long_parts = {}
            continue
        name = None
        if long_parts and all(part[0] == lfn_checksum(short) for part in long_parts.values()):
            units = b''.join(long_parts[order][1] for order in sorted(long_parts))
            name = units.decode('utf-16-le', 'replace').split('\x00', 1)[0]
        long_parts = {}
        if name is None:
            stem, extension = short[:8].decode('ascii', 'replace').rstrip(' '), \
                short[8:].decode('ascii', 'replace').rstrip(' ')
            name = (stem + ('.' + extension if extension else '')).lower()
        if name in ('.', '..'):
            continue
        if attributes & ATTR_DIRECTORY:
            raise FATError('root directory holds the directory %r: a seed holds files only' % (name,))
        _n, _a, _r, _t, _ct, _cd, _ad, high, _wt, _wd, low, size = DIRECTORY_ENTRY.unpack(entry)
        first = (high << 16) | low
        files[name] = content(name, first, size) if size else b''
    if label is None and boot_signature == 0x29:
        label = bpb_label.decode('ascii', 'replace').rstrip(' ')
    return label or '', files
