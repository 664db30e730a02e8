# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small ISO 9660 file system holding files in its root directory only (a cloud-init NoCloud seed), written and
read back in pure Python (standard library only, never imports ansible).

Written from the specifications:

- ECMA-119 (ISO 9660), 4th edition: volume descriptors (8), directory records (9.1), path tables (9.4),
  file identifiers of interchange level 1 (7.5, 10.1);
- SUSP (IEEE P1281, System Use Sharing Protocol 1.12): SP, CE and ER entries;
- RRIP (IEEE P1282, Rock Ridge Interchange Protocol 1.12): PX, TF and NM entries, so that the names keep their case
  and their hyphens (``user-data``) on systems that read Rock Ridge;
- Joliet (Microsoft's specification): a supplementary volume descriptor with the escape sequence ``%/E`` (UCS-2
  level 3) and a second directory tree whose names are UCS-2 big-endian (without a version number).

The image is deterministic: the same files and volume identifier always give the same bytes (every time stamp is
SEED_TIME, no random identifier), which is what makes the seed module idempotent.

Private to this collection (the leading underscore): no compatibility promise.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
import struct

SECTOR = 2048
SYSTEM_AREA_SECTORS = 16                    # ECMA-119 6.2.1: sectors 0-15 are the system area
STANDARD_ID = b'CD001'
VD_PRIMARY, VD_SUPPLEMENTARY, VD_TERMINATOR = 1, 2, 255
JOLIET_ESCAPES = (b'%/@', b'%/C', b'%/E')   # UCS-2 levels 1, 2, 3
DIRECTORY_FLAG = 0x02                       # ECMA-119 9.1.6, file flags: directory
MAX_IMAGE_BYTES = 256 * 1024 * 1024         # a seed is small; a larger file is not one this module reads
MAX_FILES = 256
SEED_TIME = (2000, 1, 1, 0, 0, 0)           # every time stamp of the image (determinism)
FILE_MODE = 0o100444                        # Rock Ridge PX: regular file, read-only (the medium is read-only)
DIRECTORY_MODE = 0o40555

# ECMA-119 9.1: directory record, fixed part (33 bytes) before the file identifier
DIRECTORY_RECORD = struct.Struct('<BBIIII7sBBBHHB')
# ECMA-119 9.4: path table record, fixed part (8 bytes) before the directory identifier; L table little-endian
PATH_TABLE_RECORD_L = struct.Struct('<BBIH')
PATH_TABLE_RECORD_M = struct.Struct('>BBIH')
# SUSP 5.1: SP, the first entry of the root's "." record: check bytes BE EF, bytes skipped (0)
SUSP_SP = b'SP\x07\x01\xbe\xef\x00'
# RRIP 1.12 (IEEE P1282) extension identification, for the ER entry (SUSP 5.5)
RRIP_ID = b'IEEE_P1282'
RRIP_DESCRIPTOR = b'THE IEEE P1282 PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS.'
RRIP_SOURCE = (b'PLEASE CONTACT THE IEEE STANDARDS DEPARTMENT, PISCATAWAY, NJ, USA FOR THE P1282 SPECIFICATION.')

_D_CHARACTERS = re.compile(r'^[A-Z0-9_]*$')


class ISO9660Error(ValueError):
    """An image that is not an ISO 9660 seed this library reads, or a request it cannot write."""


def _both16(value):
    return struct.pack('<H', value) + struct.pack('>H', value)


def _both32(value):
    return struct.pack('<I', value) + struct.pack('>I', value)


def _recording_time():
    """ECMA-119 9.1.5: seven bytes (years since 1900, month, day, hour, minute, second, offset from GMT)."""
    year, month, day, hour, minute, second = SEED_TIME
    return bytes((year - 1900, month, day, hour, minute, second, 0))


def _volume_time():
    """ECMA-119 8.4.26.1: the 17-byte digits form of a volume date and time."""
    return ('%04d%02d%02d%02d%02d%02d00' % SEED_TIME).encode('ascii') + b'\x00'


_UNSPECIFIED_TIME = b'0' * 16 + b'\x00'


def _padded(text, length, encoding='ascii'):
    if encoding == 'utf-16-be':
        data = text.encode(encoding)
        return (data + ' '.encode(encoding) * length)[:length]
    return text.encode(encoding).ljust(length, b' ')[:length]


def _sectors(length):
    return max(1, -(-length // SECTOR))


def level1_identifiers(names):
    """Interchange level 1 file identifiers (ECMA-119 7.5, 10.1: 8.3 d-characters, version ';1'), one per name, unique.

    A hyphen and every other character outside A-Z 0-9 _ become '_'; a clash is resolved by a number at the end of the
    name part."""
    taken = set()
    identifiers = {}
    for name in names:
        stem, dot, extension = name.upper().rpartition('.')
        if not dot:
            stem, extension = extension, ''
        stem = re.sub(r'[^A-Z0-9_]', '_', stem)[:8] or '_'
        extension = re.sub(r'[^A-Z0-9_]', '_', extension)[:3]
        candidate, number = stem, 0
        while (candidate + '.' + extension) in taken:
            number += 1
            suffix = str(number)
            candidate = stem[:8 - len(suffix)] + suffix
        taken.add(candidate + '.' + extension)
        identifiers[name] = (candidate + '.' + extension + ';1').encode('ascii')
    return identifiers


# ------------------------------------------------------------------------------------------------ writing
def _directory_record(extent, size, flags, identifier, system_use=b''):
    """ECMA-119 9.1, with ``system_use`` (SUSP entries) after the identifier and its padding byte."""
    padding = b'\x00' if len(identifier) % 2 == 0 else b''
    length = DIRECTORY_RECORD.size + len(identifier) + len(padding) + len(system_use)
    if length % 2:
        system_use += b'\x00'
        length += 1
    if length > 255:
        raise ISO9660Error('directory record of %r: %d bytes, at most 255 fit' % (identifier, length))
    fixed = struct.pack('<BB', length, 0) + _both32(extent) + _both32(size) + _recording_time() + \
        struct.pack('<BBB', flags, 0, 0) + _both16(1) + struct.pack('<B', len(identifier))
    return fixed + identifier + padding + system_use


def _rr_px(mode, links, serial):
    """RRIP 1.12 4.1.1: POSIX file attributes (mode, links, uid 0, gid 0, serial number), 44 bytes."""
    return b'PX' + bytes((44, 1)) + _both32(mode) + _both32(links) + _both32(0) + _both32(0) + _both32(serial)


def _rr_tf():
    """RRIP 1.12 4.1.6: time stamps modify, access and attributes (flags 0x0E), seven-byte form."""
    stamps = _recording_time() * 3
    return b'TF' + bytes((5 + len(stamps), 1, 0x0E)) + stamps


def _rr_nm(name):
    """RRIP 1.12 4.1.4: the alternate (POSIX) name; flags 0."""
    data = name.encode('utf-8')
    return b'NM' + bytes((5 + len(data), 1, 0)) + data


def _susp_ce(extent, offset, length):
    """SUSP 5.1: continuation area at ``extent``/``offset``, ``length`` bytes."""
    return b'CE' + bytes((28, 1)) + _both32(extent) + _both32(offset) + _both32(length)


def _susp_er():
    """SUSP 5.5: extensions reference naming RRIP 1.12 (extension version 1)."""
    return (b'ER' + bytes((8 + len(RRIP_ID) + len(RRIP_DESCRIPTOR) + len(RRIP_SOURCE), 1, len(RRIP_ID),
                           len(RRIP_DESCRIPTOR), len(RRIP_SOURCE), 1)) + RRIP_ID + RRIP_DESCRIPTOR + RRIP_SOURCE)


def _directory_extent(records):
    """Directory records laid into sectors (ECMA-119 6.8.1.1: a record never crosses a sector boundary)."""
    extent = bytearray()
    for record in records:
        used = len(extent) % SECTOR
        if used and used + len(record) > SECTOR:
            extent += b'\x00' * (SECTOR - used)
        extent += record
    return bytes(extent) + b'\x00' * (-len(extent) % SECTOR)


def _volume_descriptor(kind, volume_id, space, path_table_size, l_table, m_table, root_record, joliet):
    """ECMA-119 8.4 (primary) and 8.5 (supplementary: Joliet's escape sequence, UCS-2 identifiers)."""
    encoding = 'utf-16-be' if joliet else 'ascii'
    descriptor = bytearray(SECTOR)
    descriptor[0:7] = bytes((kind,)) + STANDARD_ID + b'\x01'
    descriptor[8:40] = _padded('', 32, encoding)                 # system identifier
    descriptor[40:72] = _padded(volume_id, 32, encoding)         # volume identifier
    descriptor[80:88] = _both32(space)
    if joliet:
        descriptor[88:91] = JOLIET_ESCAPES[2]
    descriptor[120:124] = _both16(1)                             # volume set size
    descriptor[124:128] = _both16(1)                             # volume sequence number
    descriptor[128:132] = _both16(SECTOR)
    descriptor[132:140] = _both32(path_table_size)
    descriptor[140:144] = struct.pack('<I', l_table)
    descriptor[148:152] = struct.pack('>I', m_table)
    descriptor[156:190] = root_record
    for start, length in ((190, 128), (318, 128), (446, 128), (574, 128), (702, 37), (739, 37), (776, 37)):
        descriptor[start:start + length] = _padded('', length, encoding) if not joliet or length == 128 else \
            _padded('', length - 1, encoding) + b'\x00'
    descriptor[813:830] = _volume_time()                         # creation
    descriptor[830:847] = _volume_time()                         # modification
    descriptor[847:864] = _UNSPECIFIED_TIME                      # expiration
    descriptor[864:881] = _UNSPECIFIED_TIME                      # effective
    descriptor[881] = 1                                          # file structure version
    return bytes(descriptor)


def _path_tables(root_extent):
    """ECMA-119 9.4: the one-directory path table (the root, its own parent), L and M forms."""
    identifier = b'\x00' + b'\x00'                               # root's identifier and the padding byte
    return (PATH_TABLE_RECORD_L.pack(1, 0, root_extent, 1) + identifier,
            PATH_TABLE_RECORD_M.pack(1, 0, root_extent, 1) + identifier)


def build_image(files, volume_id):
    """The image (bytes) of an ISO 9660 file system with Rock Ridge and Joliet names holding ``files`` (a mapping
    of name to bytes) in its root directory, volume identifier ``volume_id`` (d-characters, at most 32; Joliet gets
    the same identifier, at most 16 characters)."""
    if not _D_CHARACTERS.match(volume_id) or not 0 < len(volume_id) <= 16:
        raise ISO9660Error('volume identifier %r: expected 1 to 16 of the characters A-Z 0-9 _' % (volume_id,))
    if len(files) > MAX_FILES:
        raise ISO9660Error('%d files: at most %d fit this seed writer' % (len(files), MAX_FILES))
    for name in files:
        if not name or '/' in name or '\x00' in name or name in ('.', '..') or len(name.encode('utf-8')) > 120 \
                or len(name) > 64:
            raise ISO9660Error('file name %r: expected a plain name of 1 to 64 characters' % (name,))
    names = sorted(files)
    primary_ids = level1_identifiers(names)
    joliet_ids = dict((name, name.encode('utf-16-be')) for name in names)   # without ';1', as genisoimage writes

    # layout: descriptors 16-18, path tables 19-22, continuation area 23, then the two root directories, then data
    primary_l, primary_m, joliet_l, joliet_m, continuation = 19, 20, 21, 22, 23
    er_entry = _susp_er()

    def primary_records(root_extent, root_size, file_extents):
        dot_use = SUSP_SP + _susp_ce(continuation, 0, len(er_entry)) + _rr_px(DIRECTORY_MODE, 2, 1) + _rr_tf()
        records = [_directory_record(root_extent, root_size, DIRECTORY_FLAG, b'\x00', dot_use),
                   _directory_record(root_extent, root_size, DIRECTORY_FLAG, b'\x01',
                                     _rr_px(DIRECTORY_MODE, 2, 1) + _rr_tf())]
        for serial, name in enumerate(sorted(names, key=lambda n: primary_ids[n]), start=2):
            extent, size = file_extents[name]
            records.append(_directory_record(extent, size, 0, primary_ids[name],
                                             _rr_px(FILE_MODE, 1, serial) + _rr_tf() + _rr_nm(name)))
        return records

    def joliet_records(root_extent, root_size, file_extents):
        records = [_directory_record(root_extent, root_size, DIRECTORY_FLAG, b'\x00'),
                   _directory_record(root_extent, root_size, DIRECTORY_FLAG, b'\x01')]
        for name in sorted(names, key=lambda n: joliet_ids[n]):
            extent, size = file_extents[name]
            records.append(_directory_record(extent, size, 0, joliet_ids[name]))
        return records

    # the directories' sizes do not depend on the extents' values: measure them with placeholders first
    placeholder = dict((name, (0, len(files[name]))) for name in names)
    primary_size = len(_directory_extent(primary_records(0, 0, placeholder)))
    joliet_size = len(_directory_extent(joliet_records(0, 0, placeholder)))
    primary_root = continuation + 1
    joliet_root = primary_root + primary_size // SECTOR
    next_extent = joliet_root + joliet_size // SECTOR
    file_extents = {}
    for name in names:
        # every file gets at least one sector, so that an empty file's extent is inside the volume
        file_extents[name] = (next_extent, len(files[name]))
        next_extent += _sectors(len(files[name]))
    space = next_extent

    primary_dir = _directory_extent(primary_records(primary_root, primary_size, file_extents))
    joliet_dir = _directory_extent(joliet_records(joliet_root, joliet_size, file_extents))
    primary_tables = _path_tables(primary_root)
    joliet_tables = _path_tables(joliet_root)
    table_size = len(primary_tables[0])

    image = bytearray(space * SECTOR)
    image[16 * SECTOR:17 * SECTOR] = _volume_descriptor(
        VD_PRIMARY, volume_id, space, table_size, primary_l, primary_m,
        _directory_record(primary_root, primary_size, DIRECTORY_FLAG, b'\x00'), False)
    image[17 * SECTOR:18 * SECTOR] = _volume_descriptor(
        VD_SUPPLEMENTARY, volume_id, space, table_size, joliet_l, joliet_m,
        _directory_record(joliet_root, joliet_size, DIRECTORY_FLAG, b'\x00'), True)
    image[18 * SECTOR:18 * SECTOR + 7] = bytes((VD_TERMINATOR,)) + STANDARD_ID + b'\x01'
    for sector, table in ((primary_l, primary_tables[0]), (primary_m, primary_tables[1]),
                          (joliet_l, joliet_tables[0]), (joliet_m, joliet_tables[1])):
        image[sector * SECTOR:sector * SECTOR + len(table)] = table
    image[continuation * SECTOR:continuation * SECTOR + len(er_entry)] = er_entry
    image[primary_root * SECTOR:primary_root * SECTOR + primary_size] = primary_dir
    image[joliet_root * SECTOR:joliet_root * SECTOR + joliet_size] = joliet_dir
    for name in names:
        extent, size = file_extents[name]
        image[extent * SECTOR:extent * SECTOR + size] = files[name]
    return bytes(image)


# ------------------------------------------------------------------------------------------------ reading
class _Record(object):
    """One directory record (ECMA-119 9.1) read from an image."""

    def __init__(self, data, offset, where):
        if offset + DIRECTORY_RECORD.size > len(data):
            raise ISO9660Error('%s: directory record at byte %d runs past the directory' % (where, offset))
        self.length = data[offset]
        if self.length < DIRECTORY_RECORD.size + 1 or offset + self.length > len(data):
            raise ISO9660Error('%s: directory record at byte %d: length %d is out of bounds'
                               % (where, offset, self.length))
        self.extent = struct.unpack_from('<I', data, offset + 2)[0]
        self.size = struct.unpack_from('<I', data, offset + 10)[0]
        self.flags = data[offset + 25]
        id_length = data[offset + 32]
        start = offset + 33
        if start + id_length > offset + self.length:
            raise ISO9660Error('%s: directory record at byte %d: identifier length %d is out of bounds'
                               % (where, offset, id_length))
        self.identifier = bytes(data[start:start + id_length])
        use_start = start + id_length + (1 - id_length % 2)
        self.system_use = bytes(data[use_start:offset + self.length])


def _records(image, extent, size, where):
    if size > 1024 * SECTOR or extent * SECTOR + size > len(image):
        raise ISO9660Error('%s: directory at sector %d, %d bytes, is out of the image (%d bytes)'
                           % (where, extent, size, len(image)))
    data = image[extent * SECTOR:extent * SECTOR + size]
    offset = 0
    records = []
    while offset < len(data):
        if data[offset] == 0:       # the rest of this sector is padding
            offset = (offset // SECTOR + 1) * SECTOR
            continue
        record = _Record(data, offset, where)
        records.append(record)
        offset += record.length
    return records


def _susp_entries(image, system_use, skip=0):
    """The SUSP entries (signature, data) of a system use area, following CE continuation areas (bounded)."""
    entries = []
    area = system_use[skip:]
    for _hop in range(8):
        continuation = None
        offset = 0
        while offset + 4 <= len(area):
            signature, length = area[offset:offset + 2], area[offset + 2]
            if length < 4 or offset + length > len(area):
                break
            body = area[offset + 4:offset + length]
            if signature == b'ST':
                break
            if signature == b'CE' and len(body) >= 24:
                continuation = (struct.unpack_from('<I', body, 0)[0], struct.unpack_from('<I', body, 8)[0],
                                struct.unpack_from('<I', body, 16)[0])
            entries.append((signature, body))
            offset += length
        if continuation is None:
            break
        extent, start, length = continuation
        begin = extent * SECTOR + start
        if length > SECTOR or begin + length > len(image):
            break
        area = image[begin:begin + length]
    return entries


def _rock_ridge_name(image, record):
    name = b''
    found = False
    for signature, body in _susp_entries(image, record.system_use):
        if signature == b'NM' and body:
            flags = body[0]
            if flags & 0x06:        # CURRENT or PARENT: not a name
                return None
            name += body[1:]
            found = True
    return name.decode('utf-8', 'replace') if found else None


def _volume_descriptors(image):
    descriptors = []
    for sector in range(SYSTEM_AREA_SECTORS, SYSTEM_AREA_SECTORS + 32):
        descriptor = image[sector * SECTOR:(sector + 1) * SECTOR]
        if len(descriptor) < SECTOR or descriptor[1:6] != STANDARD_ID:
            raise ISO9660Error('volume descriptor at sector %d: expected the standard identifier CD001, found %r'
                               % (sector, bytes(descriptor[1:6])))
        if descriptor[0] == VD_TERMINATOR:
            return descriptors
        descriptors.append(descriptor)
    raise ISO9660Error('no volume descriptor set terminator in sectors 16 to 47')


def _root(image, descriptor, where):
    record = _Record(descriptor, 156, where)
    return _records(image, record.extent, record.size, where)


def read_image(image):
    """The volume identifier and the files of the root directory of an ISO 9660 image (bytes): ``(volume_id,
    {name: bytes})``, named as Linux names them (Rock Ridge, else Joliet, else the ISO 9660 name in lower case
    without its version). Raises ISO9660Error for anything else, including a subdirectory."""
    if len(image) > MAX_IMAGE_BYTES:
        raise ISO9660Error('%d bytes: larger than a seed (at most %d bytes)' % (len(image), MAX_IMAGE_BYTES))
    if len(image) < (SYSTEM_AREA_SECTORS + 2) * SECTOR:
        raise ISO9660Error('%d bytes: shorter than an ISO 9660 file system' % len(image))
    descriptors = _volume_descriptors(image)
    primary = [d for d in descriptors if d[0] == VD_PRIMARY]
    if not primary:
        raise ISO9660Error('no primary volume descriptor')
    primary = primary[0]
    volume_id = primary[40:72].decode('ascii', 'replace').rstrip(' \x00')
    records = _root(image, primary, 'primary root directory')
    rock_ridge = bool(records) and records[0].system_use.startswith(SUSP_SP[:6])
    names = {}
    if not rock_ridge:
        for descriptor in descriptors:
            if descriptor[0] == VD_SUPPLEMENTARY and bytes(descriptor[88:91]) in JOLIET_ESCAPES:
                for record in _root(image, descriptor, 'Joliet root directory'):
                    if record.identifier not in (b'\x00', b'\x01'):
                        name = record.identifier.decode('utf-16-be', 'replace')
                        names[(record.extent, record.size)] = name[:-2] if name.endswith(';1') else name
                break
    files = {}
    for record in records:
        if record.identifier in (b'\x00', b'\x01'):
            continue
        name = _rock_ridge_name(image, record) if rock_ridge else names.get((record.extent, record.size))
        if name is None:
            name = record.identifier.decode('ascii', 'replace').lower()
            name = name.rsplit(';', 1)[0].rstrip('.')
        if record.flags & DIRECTORY_FLAG:
            raise ISO9660Error('root directory holds the directory %r: a seed holds files only' % (name,))
        if record.extent * SECTOR + record.size > len(image):
            raise ISO9660Error('file %r: extent at sector %d, %d bytes, is out of the image'
                               % (name, record.extent, record.size))
        files[name] = bytes(image[record.extent * SECTOR:record.extent * SECTOR + record.size])
    return volume_id, files
