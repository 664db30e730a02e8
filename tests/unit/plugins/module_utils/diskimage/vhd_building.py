# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build VHD files byte by byte from Microsoft's "Virtual Hard Disk Image Format
Specification", independently of the driver under test (for differencing
chains and damaged images that no tool here can make)."""

import struct

SECTOR = 512
COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
UNUSED = 0xFFFFFFFF


def checksum(structure, field_offset):
    """One's complement of the sum of the bytes, the checksum field excluded."""
    total = sum(structure[:field_offset]) + sum(structure[field_offset + 4:])
    return (~total) & 0xFFFFFFFF


def footer(disk_type, size, unique_id, data_offset, creator=b"win ", geometry=(65535, 16, 255)):
    """Hard Disk Footer (spec: "Hard Disk Footer Format"): 512 bytes, big-endian."""
    raw = bytearray(512)
    raw[0:8] = COOKIE
    struct.pack_into(">II", raw, 8, 2, 0x00010000)             # features (reserved bit), format version
    struct.pack_into(">Q", raw, 16, data_offset)
    struct.pack_into(">I", raw, 24, 0x2a000000)                 # time stamp
    raw[28:32] = creator
    struct.pack_into(">HH", raw, 32, 10, 0)                     # creator version
    raw[36:40] = b"Wi2k"
    struct.pack_into(">QQ", raw, 40, size, size)                # original size, current size
    struct.pack_into(">HBB", raw, 56, *geometry)
    struct.pack_into(">I", raw, 60, disk_type)
    raw[68:84] = unique_id
    struct.pack_into(">I", raw, 64, checksum(raw, 64))
    return raw


def fixed_image(size, content, unique_id, creator=b"win "):
    """A fixed disk: the data, then the footer."""
    if len(content) != size:
        raise ValueError("content must have the disk size")
    return bytes(content) + bytes(footer(FIXED, size, unique_id, 0xFFFFFFFFFFFFFFFF, creator))


def sparse_image(size, block_size, blocks, unique_id, disk_type=DYNAMIC, parent_id=bytes(16),
                 locators=(), creator=b"win ", max_table_entries=None):
    """A dynamic or differencing disk.

    ``blocks``: {block index: (bitmap bytes, data bytes of block_size)};
    ``locators``: [(platform code, path text)], stored UTF-16LE in their own sectors.
    Layout: footer copy, dynamic disk header, BAT, locator data, blocks, footer.
    """
    entries = max_table_entries if max_table_entries is not None else -(-size // block_size)
    bitmap_size = -(-(block_size // SECTOR) // 8 // SECTOR) * SECTOR or SECTOR
    table_offset = 3 * SECTOR
    bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
    position = table_offset + bat_bytes
    locator_entries = []
    locator_data = b""
    for code, text in locators:
        encoded = text.encode("utf-16-le")
        space = -(-len(encoded) // SECTOR) * SECTOR or SECTOR
        locator_entries.append((code, space, len(encoded), position + len(locator_data)))
        locator_data += encoded + bytes(space - len(encoded))
    position += len(locator_data)
    bat = [UNUSED] * entries
    block_area = b""
    for index in sorted(blocks):
        bitmap, data = blocks[index]
        if len(bitmap) != bitmap_size or len(data) != block_size:
            raise ValueError("bitmap or data of the wrong size")
        bat[index] = (position + len(block_area)) // SECTOR
        block_area += bitmap + data
    header = bytearray(1024)
    header[0:8] = HEADER_COOKIE
    struct.pack_into(">QQIII", header, 8, 0xFFFFFFFFFFFFFFFF, table_offset, 0x00010000, entries, block_size)
    header[40:56] = parent_id
    name = (locators[0][1] if locators else "").encode("utf-16-be")[:512]
    header[64:64 + len(name)] = name
    for number, (code, space, length, offset) in enumerate(locator_entries):
        struct.pack_into(">4sIIIQ", header, 576 + 24 * number, code, space, length, 0, offset)
    struct.pack_into(">I", header, 36, checksum(header, 36))
    bat_raw = struct.pack(">%dI" % entries, *bat) + b"\xff" * (bat_bytes - 4 * entries)
    foot = bytes(footer(disk_type, size, unique_id, SECTOR, creator))
    return foot + bytes(header) + bat_raw + locator_data + block_area + foot


def bitmap_from_bits(bits, bitmap_size):
    """Sector bitmap from a list of 0/1 per sector: the first sector is the most significant bit."""
    value = 0
    for bit in bits:
        value = (value << 1) | bit
    value <<= (bitmap_size * 8 - len(bits))
    return value.to_bytes(bitmap_size, "big")
