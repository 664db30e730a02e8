# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Edit VHDX files byte by byte for tests, from the specification alone (not the library's code):
headers, region table, metadata items, BAT entries, parent locators and log entries."""

import struct
import uuid

KIB = 1024
MIB = 1024 * KIB
HEADER_OFFSETS = (64 * KIB, 128 * KIB)
REGION_TABLE_OFFSETS = (192 * KIB, 256 * KIB)
BAT_GUID = uuid.UUID("2dc27766-f623-4200-9d64-115e9bfd4a08")
METADATA_GUID = uuid.UUID("8b7ca206-4790-4b9a-b8fe-575f050f886e")
FILE_PARAMETERS_GUID = uuid.UUID("caa16737-fa36-4d43-b3b6-33f0aa44e76b")
VIRTUAL_DISK_SIZE_GUID = uuid.UUID("2fa54224-cd1b-4876-b211-5dbed83bf4b8")
PARENT_LOCATOR_GUID = uuid.UUID("a8d35f2d-b30b-454d-abf7-d3d84834ab0c")
VHDX_PARENT_TYPE = uuid.UUID("b04aefb7-d19e-4a81-b789-25b8e9445913")


def crc32c(data):
    """Bitwise CRC-32C (Castagnoli, reflected), written independently of the library's table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _bit in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def seal(structure):
    """``structure`` with its CRC-32C written at offset 4 (computed with that field zero)."""
    structure = bytearray(structure)
    structure[4:8] = bytes(4)
    structure[4:8] = struct.pack("<I", crc32c(bytes(structure)))
    return bytes(structure)


def read_at(path, offset, length):
    with open(str(path), "rb") as image:
        image.seek(offset)
        return image.read(length)


def write_at(path, offset, data):
    with open(str(path), "r+b") as image:
        image.seek(offset)
        image.write(data)


def current_header(path):
    """(offset, raw 4 KiB) of the header with the higher sequence number."""
    best = None
    for offset in HEADER_OFFSETS:
        raw = read_at(path, offset, 4 * KIB)
        sequence = struct.unpack_from("<Q", raw, 8)[0]
        if raw[:4] == b"head" and (best is None or sequence > best[0]):
            best = (sequence, offset, raw)
    return best[1], best[2]


def data_write_guid(path):
    return uuid.UUID(bytes_le=current_header(path)[1][32:48])


def set_header_field(path, field_offset, value):
    """Change a field of both headers and re-seal them."""
    for offset in HEADER_OFFSETS:
        raw = bytearray(read_at(path, offset, 4 * KIB))
        raw[field_offset:field_offset + len(value)] = value
        write_at(path, offset, seal(raw))


def regions(path):
    raw = read_at(path, REGION_TABLE_OFFSETS[0], 64 * KIB)
    count = struct.unpack_from("<I", raw, 8)[0]
    found = {}
    for index in range(count):
        guid, offset, length, _flags = struct.unpack_from("<16sQII", raw, 16 + 32 * index)
        found[uuid.UUID(bytes_le=guid)] = (offset, length)
    return found


def set_region_tables(path, raw):
    for offset in REGION_TABLE_OFFSETS:
        write_at(path, offset, seal(raw))


def metadata_items(path):
    """{item guid: (offset in region, length, flags, table entry offset in file)}."""
    base = regions(path)[METADATA_GUID][0]
    table = read_at(path, base, 64 * KIB)
    count = struct.unpack_from("<H", table, 10)[0]
    items = {}
    for index in range(count):
        guid, offset, length, flags = struct.unpack_from("<16sIII", table, 32 + 32 * index)
        items[uuid.UUID(bytes_le=guid)] = (offset, length, flags, base + 32 + 32 * index)
    return items


def metadata_item_offset(path, guid):
    return regions(path)[METADATA_GUID][0] + metadata_items(path)[guid][0]


def add_metadata_item(path, guid, value, flags=0x4):
    """Append a metadata table entry and its value after the last item."""
    base = regions(path)[METADATA_GUID][0]
    items = metadata_items(path)
    count = len(items)
    end = max(offset + length for offset, length, _flags, _entry in items.values())
    item_offset = -(-end // 8) * 8
    write_at(path, base + 32 + 32 * count, struct.pack("<16sIII4x", guid.bytes_le, item_offset, len(value), flags))
    write_at(path, base + 10, struct.pack("<H", count + 1))
    write_at(path, base + item_offset, value)


def parent_locator(entries, locator_type=VHDX_PARENT_TYPE):
    """A parent locator item: header, key-value entries, then UTF-16LE keys and values."""
    header_size = 20 + 12 * len(entries)
    blob = b""
    table = b""
    for key, value in entries:
        key_raw, value_raw = key.encode("utf-16-le"), value.encode("utf-16-le")
        key_offset = header_size + len(blob)
        blob += key_raw
        value_offset = header_size + len(blob)
        blob += value_raw
        table += struct.pack("<IIHH", key_offset, value_offset, len(key_raw), len(value_raw))
    return struct.pack("<16sHH", locator_type.bytes_le, 0, len(entries)) + table + blob


def make_differencing(path, parent_linkage, relative_path, extra_entries=()):
    """Turn an empty dynamic image into a differencing one: has_parent set, a parent locator added."""
    parameters = metadata_item_offset(path, FILE_PARAMETERS_GUID)
    block_size, flags = struct.unpack("<II", read_at(path, parameters, 8))
    write_at(path, parameters, struct.pack("<II", block_size, flags | 0x2))
    entries = [("parent_linkage", "{%s}" % parent_linkage)]
    if relative_path is not None:
        entries.append(("relative_path", relative_path))
    entries.extend(extra_entries)
    add_metadata_item(path, PARENT_LOCATOR_GUID, parent_locator(entries), flags=0x4)
    return block_size


def bat_offset(path):
    return regions(path)[BAT_GUID][0]


def set_bat_entry(path, index, file_offset, state):
    write_at(path, bat_offset(path) + 8 * index, struct.pack("<Q", file_offset | state))


def bat_entry(path, index):
    return struct.unpack("<Q", read_at(path, bat_offset(path) + 8 * index, 8))[0]


def append_aligned(path, data):
    """Append ``data`` at the next 1 MiB boundary; returns its offset."""
    with open(str(path), "r+b") as image:
        image.seek(0, 2)
        offset = -(-image.tell() // MIB) * MIB
        image.truncate(offset)
        image.seek(offset)
        image.write(data)
        end = image.tell()
        image.truncate(-(-end // MIB) * MIB)
    return offset


def log_entry(log_guid, sequence, descriptors, tail=0, flushed_file_offset=0, last_file_offset=0):
    """One log entry (spec 2.3.1): ``descriptors`` are ("data", file offset, 4096 bytes) or
    ("zero", file offset, length).  Returns the sealed entry bytes."""
    count = len(descriptors)
    descriptor_sectors = -(-(64 + 32 * count) // 4096)
    data_sectors = []
    descriptor_bytes = b""
    for kind, file_offset, payload in descriptors:
        if kind == "zero":
            descriptor_bytes += struct.pack("<4sIQQQ", b"zero", 0, payload, file_offset, sequence)
        else:
            leading, middle, trailing = payload[:8], payload[8:4092], payload[4092:]
            descriptor_bytes += struct.pack("<4s4s8sQQ", b"desc", trailing, leading, file_offset, sequence)
            data_sectors.append(struct.pack("<4sI4084sI", b"data", sequence >> 32, middle, sequence & 0xFFFFFFFF))
    length = (descriptor_sectors + len(data_sectors)) * 4096
    header = struct.pack("<4sIIIQII16sQQ", b"loge", 0, length, tail, sequence, count, 0, log_guid.bytes_le,
                         flushed_file_offset, last_file_offset)
    first = (header + descriptor_bytes).ljust(descriptor_sectors * 4096, b"\0")
    return seal(first + b"".join(data_sectors))


def set_log_guid(path, log_guid):
    """Set the log GUID of both headers (offset 48 in a header) and re-seal them."""
    set_header_field(path, 48, log_guid.bytes_le)


def log_region(path):
    raw = current_header(path)[1]
    length, offset = struct.unpack_from("<IQ", raw, 68)
    return offset, length
