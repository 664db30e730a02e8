# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile images of the read-only formats, built byte by byte from their layouts: parallels (qemu-iotests
076: invalid cluster sizes, BAT sizes and catalog entries, sizes that overflow), bochs (078: catalog sizes,
extent and bitmap sizes, disk sizes), cloop (075: block sizes, block counts, offsets that go backwards or
past the file, blocks that inflate past their size) and dmg (chunk tables: counts, lengths and offsets out
of range, decompression bombs, property lists that are not property lists)."""
from __future__ import annotations

import plistlib
import struct
import zlib

from hardening.hostile import _util
from hardening.hostile._case import Case

# ------------------------------------------------------------------------------------------- parallels
PARALLELS_HEADER = struct.Struct("<16sIIIIIQIIIQ")


def parallels_image(magic=b"WithoutFreeSpace", tracks=8, bat_entries=256, nb_sectors=2048, data_off=8,
                    bat=None, ext_off=0, inuse=0):
    cluster = min(max(tracks, 1), 2048) * 512          # the data written: at most 1 MiB a cluster
    header = PARALLELS_HEADER.pack(magic, 2, 16, 1, tracks, bat_entries, nb_sectors, inuse, data_off, 0, ext_off)
    table = [0] * min(bat_entries, 1024)                # a bomb's BAT is cut: the file ends before it
    for index, entry in (bat or {0: 8, 5: 16}).items():
        table[index] = entry
    data = header + struct.pack("<%dI" % len(table), *table)
    data = data.ljust(min(data_off, 2048) * 512, b"\0")
    return data + b"\x61" * cluster + b"\x62" * cluster


PARALLELS_FIELDS = [("version", 16, "<I"), ("tracks", 28, "<I"), ("bat_entries", 32, "<I"), ("nb_sectors", 36, "<Q"),
                    ("inuse", 44, "<I"), ("data_off", 48, "<I"), ("ext_off", 56, "<Q")]
PARALLELS_STRUCTURAL = [
    ("bat-entry-past-eof", lambda: parallels_image(bat={0: 0x7ffffff0})),
    ("bat-entry-on-header", lambda: parallels_image(bat={0: 0})),
    ("bat-entry-on-bat", lambda: parallels_image(bat={0: 1})),
    ("bat-entry-duplicate", lambda: parallels_image(bat={0: 8, 1: 8})),
    ("bat-entry-max", lambda: parallels_image(bat={0: 0xffffffff})),
    ("clusters-magic-entry-overflow", lambda: parallels_image(magic=b"WithouFreSpacExt", bat={0: 0xffffffff})),
    ("bat-entries-bomb", lambda: parallels_image(bat_entries=0x3fffffff, nb_sectors=0x3fffffff * 8)[:8192]),
    ("nb-sectors-exabytes", lambda: parallels_image(magic=b"WithouFreSpacExt", nb_sectors=1 << 62)),
    ("tracks-zero", lambda: parallels_image(tracks=0)),
    ("tracks-huge", lambda: parallels_image(tracks=0x7fffffff)[:8192]),
    ("data-off-past-eof", lambda: parallels_image(data_off=0x7fffffff)[:8192]),
    ("ext-off-past-eof", lambda: parallels_image(magic=b"WithouFreSpacExt", ext_off=1 << 40)),
    ("ext-off-on-header", lambda: parallels_image(magic=b"WithouFreSpacExt", ext_off=0)),
    ("in-use", lambda: parallels_image(inuse=0x746F6E59)),
    ("ext-off-garbage", lambda: parallels_image(magic=b"WithouFreSpacExt", ext_off=2)),
]

# ------------------------------------------------------------------------------------------------ bochs
BOCHS_HEADER = struct.Struct("<32s16s16sII")


def bochs_image(catalog=256, bitmap=512, extent=4096, disk=1 << 20, version=0x00020000, header_size=512,
                entries=None, subtype=b"Growing"):
    header = BOCHS_HEADER.pack(b"Bochs Virtual HD Image", b"Redolog", subtype, version, header_size)
    if version == 0x00010000:
        header += struct.pack("<IIIQ", catalog, bitmap, extent, disk)
    else:
        header += struct.pack("<IIIIQ", catalog, bitmap, extent, 0, disk)
    header = header.ljust(512, b"\0")
    table = [0xffffffff] * min(catalog, 4096)
    for index, entry in (entries or {0: 0, 3: 1}).items():
        if index < len(table):
            table[index] = entry
    body = struct.pack("<%dI" % len(table), *table)
    body = body.ljust(-(-len(body) // 512) * 512, b"\0")
    block = b"\xff" * min(bitmap, 1 << 16) + b"\x42" * min(extent, 1 << 16)
    return header + body + block + block


BOCHS_FIELDS = [("version", 64, "<I"), ("header_size", 68, "<I"), ("catalog", 72, "<I"), ("bitmap", 76, "<I"),
                ("extent", 80, "<I"), ("disk", 88, "<Q")]
BOCHS_STRUCTURAL = [
    ("catalog-entry-past-eof", lambda: bochs_image(entries={0: 0x7ffffff0})),
    ("catalog-entry-duplicate", lambda: bochs_image(entries={0: 0, 1: 0})),
    ("catalog-entry-reserved", lambda: bochs_image(entries={0: 0xfffffffe})),
    ("catalog-bomb", lambda: bochs_image(catalog=0x3fffffff, disk=1 << 40)),
    ("catalog-too-small", lambda: bochs_image(catalog=1)),
    ("extent-odd", lambda: bochs_image(extent=4097)),
    ("extent-huge", lambda: bochs_image(extent=0x800000, catalog=1)),
    ("bitmap-too-small", lambda: bochs_image(bitmap=1, extent=0x800000, catalog=1)),
    ("disk-exabytes", lambda: bochs_image(disk=1 << 62)),
    ("disk-max", lambda: bochs_image(disk=0xffffffffffffffff)),
    ("version-1", lambda: bochs_image(version=0x00010000)),
    ("subtype-undoable", lambda: bochs_image(subtype=b"Undoable")),
    ("header-size-past-eof", lambda: bochs_image(header_size=0x7fffffff)),
    ("header-size-zero", lambda: bochs_image(header_size=0)),
    ("header-size-unaligned", lambda: bochs_image(header_size=513)),
]

# ------------------------------------------------------------------------------------------------ cloop
CLOOP_MAGIC = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"


def cloop_image(block_size=4096, blocks=None, offsets=None, n_blocks=None):
    blocks = blocks if blocks is not None else [zlib.compress(bytes([n]) * block_size) for n in range(16)]
    count = len(blocks) if n_blocks is None else n_blocks
    start = 128 + 8 + 8 * (len(blocks) + 1)
    table = [start]
    for block in blocks:
        table.append(table[-1] + len(block))
    if offsets is not None:
        table = offsets(table)
    head = CLOOP_MAGIC.ljust(128, b"\0") + struct.pack(">II", block_size, count)
    return head + struct.pack(">%dQ" % len(table), *table) + b"".join(blocks)


CLOOP_FIELDS = [("block_size", 128, ">I"), ("n_blocks", 132, ">I"), ("offset0", 136, ">Q"), ("offset1", 144, ">Q")]
CLOOP_STRUCTURAL = [
    ("offsets-backwards", lambda: cloop_image(offsets=lambda t: t[:3] + [t[1]] + t[4:])),
    ("offsets-past-eof", lambda: cloop_image(offsets=lambda t: t[:-1] + [1 << 40])),
    ("offset-overflow", lambda: cloop_image(offsets=lambda t: [0xffffffffffffff00] + t[1:])),
    ("block-bigger-than-cap", lambda: cloop_image(offsets=lambda t: t[:1] + [t[0] + (1 << 28)] + t[2:])),
    ("decompression-bomb", lambda: cloop_image(blocks=[zlib.compress(bytes(64 << 20))], block_size=4096)),
    ("block-inflates-short", lambda: cloop_image(blocks=[zlib.compress(b"x" * 100)])),
    ("block-garbage", lambda: cloop_image(blocks=[b"\xde\xad\xbe\xef" * 64])),
    ("block-empty", lambda: cloop_image(blocks=[b""])),
    ("max-block-size-bomb", lambda: cloop_image(block_size=64 << 20, blocks=[zlib.compress(bytes(64 << 20), 9)])),
    ("n-blocks-bomb", lambda: cloop_image(n_blocks=0x0fffffff)),
    ("n-blocks-overflow", lambda: cloop_image(n_blocks=0xffffffff)),
    ("block-size-odd", lambda: cloop_image(block_size=4095)),
]

# -------------------------------------------------------------------------------------------------- dmg
CHUNK = struct.Struct(">IIQQQQ")
ZLIB, RAW, ZERO, LAST = 0x80000005, 1, 0, 0xffffffff


def mish(chunks, first_sector=0, data_offset=0, count=None):
    block = bytearray(204)
    struct.pack_into(">II", block, 0, 0x6d697368, 1)
    struct.pack_into(">QQQ", block, 8, first_sector, sum(c[3] for c in chunks), data_offset)
    struct.pack_into(">I", block, 200, len(chunks) if count is None else count)
    for chunk in chunks:
        block += CHUNK.pack(*chunk)
    return bytes(block)


def dmg_image(chunks=None, data=None, sectors=None, plist=None, koly=None):
    if data is None:
        compressed = zlib.compress(b"\x77" * 4096)
        data = compressed + b"\x55" * 4096
        chunks = [(ZLIB, 0, 0, 8, 0, len(compressed)), (RAW, 0, 8, 8, len(compressed), 4096), (ZERO, 0, 16, 16, 0, 0),
                  (LAST, 0, 32, 0, 0, 0)]
    if plist is None:
        plist = plistlib.dumps({"resource-fork": {"blkx": [{"Data": mish(chunks), "Name": "disk"}]}},
                               fmt=plistlib.FMT_XML)
    trailer = bytearray(512)
    trailer[0:4] = b"koly"
    struct.pack_into(">III", trailer, 4, 4, 512, 1)
    struct.pack_into(">QQ", trailer, 0x18, 0, len(data))
    struct.pack_into(">QQ", trailer, 0xd8, len(data), len(plist))
    struct.pack_into(">Q", trailer, 0x1ec, 32 if sectors is None else sectors)
    for offset, value in (koly or {}).items():
        trailer[offset:offset + len(value)] = value
    return data + plist + bytes(trailer)


def _dmg_chunks(*chunks):
    return lambda: dmg_image(chunks=list(chunks), data=b"\x55" * 8192)


DMG_STRUCTURAL = [
    ("chunk-past-eof", _dmg_chunks((RAW, 0, 0, 8, 1 << 40, 4096))),
    ("chunk-length-bomb", _dmg_chunks((RAW, 0, 0, 8, 0, 1 << 40))),
    ("chunk-sectors-bomb", _dmg_chunks((RAW, 0, 0, 1 << 40, 0, 4096))),
    ("zero-chunk-sectors-bomb", _dmg_chunks((ZERO, 0, 0, 1 << 50, 0, 0))),
    ("chunks-overlap", _dmg_chunks((RAW, 0, 0, 8, 0, 4096), (RAW, 0, 4, 8, 0, 4096))),
    ("chunk-sector-overflow", _dmg_chunks((RAW, 0, 0xffffffffffffff00, 8, 0, 4096))),
    ("chunk-offset-overflow", _dmg_chunks((RAW, 0, 0, 8, 0xfffffffffffff000, 4096))),
    ("zlib-bomb", lambda: dmg_image(chunks=[(ZLIB, 0, 0, 8, 0, len(zlib.compress(bytes(64 << 20))))],
                                    data=zlib.compress(bytes(64 << 20)))),
    ("zlib-bomb-declared-large", lambda: dmg_image(chunks=[(ZLIB, 0, 0, 1 << 17, 0, len(zlib.compress(bytes(64 << 20))))],
                                                   data=zlib.compress(bytes(64 << 20)), sectors=1 << 17)),
    ("bzip2-garbage", _dmg_chunks((0x80000006, 0, 0, 8, 0, 4096))),
    ("zlib-garbage", _dmg_chunks((ZLIB, 0, 0, 8, 0, 4096))),
    ("adc-chunk", _dmg_chunks((0x80000004, 0, 0, 8, 0, 4096))),
    ("lzfse-chunk", _dmg_chunks((0x80000007, 0, 0, 8, 0, 4096))),
    ("unknown-chunk-type", _dmg_chunks((0x12345678, 0, 0, 8, 0, 4096))),
    ("sectors-not-described", lambda: dmg_image(sectors=1 << 20)),
    ("sector-count-exabytes", lambda: dmg_image(sectors=1 << 60)),
    ("sector-count-max", lambda: dmg_image(sectors=0xffffffffffffffff)),
    ("plist-not-xml", lambda: dmg_image(plist=b"\xff" * 1024)),
    ("plist-entity-bomb", lambda: dmg_image(plist=b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaaaaaaaa">'
                                                  b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;'
                                                  b'&b;&b;&b;&b;&b;&b;">]><plist><dict><key>&c;</key><string>&c;'
                                                  b'</string></dict></plist>')),
    ("plist-external-entity", lambda: dmg_image(plist=b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY x SYSTEM '
                                                      b'"file:///etc/passwd">]><plist><string>&x;</string></plist>')),
    ("plist-deep-nesting", lambda: dmg_image(plist=b"<plist>" + b"<array>" * 50000 + b"</array>" * 50000 + b"</plist>")),
    ("plist-wrong-types", lambda: dmg_image(plist=plistlib.dumps({"resource-fork": {"blkx": [1, "x", {"Data": 5}]}}))),
    ("plist-no-blkx", lambda: dmg_image(plist=plistlib.dumps({"resource-fork": {}}))),
    ("mish-count-bomb", lambda: dmg_image(plist=plistlib.dumps(
        {"resource-fork": {"blkx": [{"Data": mish([(RAW, 0, 0, 8, 0, 4096)], count=0xffffffff)}]}}))),
    ("plist-past-trailer", lambda: dmg_image(koly={0xd8: struct.pack(">QQ", 0, 1 << 40)})),
    ("plist-length-bomb", lambda: dmg_image(koly={0xe0: struct.pack(">Q", 0xffffffffffffffff)})),
    ("data-fork-past-trailer", lambda: dmg_image(koly={0x18: struct.pack(">Q", 1 << 40)})),
    ("rsrc-fork-garbage", lambda: dmg_image(koly={0x28: struct.pack(">QQ", 0, 64)})),
    ("rsrc-fork-length-bomb", lambda: dmg_image(koly={0x28: struct.pack(">QQ", 0, 1 << 40)})),
    ("no-trailer", lambda: dmg_image()[:-512]),
    ("two-trailers", lambda: dmg_image() + dmg_image()[-512:]),
]


def _sweep(fmt, name, base, fields, values, source):
    cases = []
    for field, offset, code in fields:
        width = struct.calcsize(code)
        seen = set()
        for value in values:
            value &= (1 << (8 * width)) - 1
            if value in seen:
                continue
            seen.add(value)
            cases.append(Case(name="%s/field-%s=%#x" % (fmt, field, value), fmt=fmt,
                              build=_util.patched(fmt, name, [(offset, struct.pack(code, value))], base),
                              source=source))
    return cases


def _cut(base, name, length):
    return lambda directory: _util.write(directory / name, base()[:length])


def _bytes(name, make):
    return lambda directory: _util.write(directory / name, make())


def _cases():
    cases = []
    values = (0, -1)
    for fmt, name, base, fields, structural, source in [
            ("parallels", "disk.hds", parallels_image, PARALLELS_FIELDS, PARALLELS_STRUCTURAL, "iotests-076"),
            ("bochs", "disk.bochs", bochs_image, BOCHS_FIELDS, BOCHS_STRUCTURAL, "iotests-078"),
            ("cloop", "disk.cloop", cloop_image, CLOOP_FIELDS, CLOOP_STRUCTURAL, "iotests-075"),
            ("dmg", "disk.dmg", dmg_image, [], DMG_STRUCTURAL, "dmg chunk tables")]:
        cases.extend(_sweep(fmt, name, base, fields, values, source))
        cases.append(Case(name="%s/pristine" % fmt, fmt=fmt, build=_bytes(name, base), source=source))
        for label, make in structural:
            cases.append(Case(name="%s/%s" % (fmt, label), fmt=fmt, build=_bytes(name, make), source=source))
        for length in (0, 64, 1000):
            cases.append(Case(name="%s/truncated-%d" % (fmt, length), fmt=fmt,
                              build=_cut(base, name, length),
                              source=source))
    return cases


CASES = _cases()
