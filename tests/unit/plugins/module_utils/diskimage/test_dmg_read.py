# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""dmg driver (read-only): the native samples and UDIF images built byte by
byte (koly trailer, XML property list or binary resource fork with mish
blocks; zlib, bzip2, raw, zero and ignore chunks) read as their source data
and as ``qemu-img convert -O raw`` reads them; info and map agree with
qemu-img; convert to qcow2 compares equal; ADC/LZFSE chunks, decompression
bombs, oversized property lists and damaged trailers give clear errors."""

import bz2
import hashlib
import os
import plistlib
import random
import shutil
import struct
import zlib

import pytest

from qemu_tools import qemu_img, qemu_img_json, raw_digest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, UnsupportedFeature, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.dmg import DmgDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe, probe_format

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "dmg")
# samples/dmg/SOURCES.md
SAMPLE_DIGESTS = {
    "simple-dmg.dmg.bz2": ("20647e0a98a830a6a250b91e0e6d7200a872caea07b87a3c19611f3dd031c9df", 1799168),
    "hfsplus_zlib.dmg": ("c86d3616818e175caca2f6022f49e190e5b1cfe39b2e8f9373119e22aa7eaf58", 1954304),
}
SECTOR = 512
ZERO, RAW, IGNORE, ADC, ZLIB, BZIP2, LZFSE, COMMENT, LAST = (
    0, 1, 2, 0x80000004, 0x80000005, 0x80000006, 0x80000007, 0x7ffffffe, 0xffffffff)


def mish_block(first_sector, sector_count, data_offset, chunks):
    """A BLKX table: chunks are (type, sector, count, offset, length) relative to the block."""
    header = struct.pack(">IIQQQII", 0x6d697368, 1, first_sector, sector_count, data_offset, 0, len(chunks))
    header += bytes(0x40 - len(header)) + bytes(8 + 128) + struct.pack(">I", len(chunks) + 1)
    entries = b"".join(struct.pack(">IIQQQQ", kind, 0, sector, count, offset, length)
                       for kind, sector, count, offset, length in chunks)
    return header + entries + struct.pack(">IIQQQQ", LAST, 0, sector_count, 0, 0, 0)


def koly(data_fork_length, rsrc, xml, sectors):
    trailer = bytearray(512)
    struct.pack_into(">4sII", trailer, 0, b"koly", 4, 512)
    struct.pack_into(">QQ", trailer, 0x18, 0, data_fork_length)
    struct.pack_into(">QQ", trailer, 0x28, *rsrc)
    struct.pack_into(">QQ", trailer, 0xd8, *xml)
    struct.pack_into(">Q", trailer, 0x1ec, sectors)
    return bytes(trailer)


def plist_document(blocks):
    return plistlib.dumps({"resource-fork": {"blkx": [
        {"Attributes": "0x0050", "CFName": "part %d" % index, "Data": block, "ID": str(index - 1),
         "Name": "part %d" % index} for index, block in enumerate(blocks)]}})


def resource_fork(blocks):
    """A binary resource fork as QEMU reads it: data offset, (unused), data length, then sized resources."""
    data = b"".join(struct.pack(">I", len(block)) + block for block in blocks)
    return struct.pack(">III", 16, 0, len(data)) + bytes(4) + data


def encode(kind, content, rng):
    if kind in (ZERO, IGNORE):
        return b""
    if kind == ZLIB:
        return zlib.compress(content, rng.choice((1, 6, 9)))
    if kind == BZIP2:
        return bz2.compress(content)
    return content        # raw chunks (and, in the codec test, stand-ins for ADC/LZFSE streams)


def build_dmg(path, layout, seed=1, binary_fork=False, sector_count=None, padding=0):
    """``layout``: list of mish blocks, each a list of (chunk type, sectors).  Returns the guest content."""
    rng = random.Random(seed)
    data_fork = bytearray()
    blocks = []
    expected = bytearray()
    first_sector = 0
    for block_layout in layout:
        block_data_offset = len(data_fork)
        chunks = []
        sector = 0
        for kind, count in block_layout:
            if kind in (ZERO, IGNORE):
                content = bytes(count * SECTOR)
            else:
                # Runs of one byte value and of random bytes: compressible and not.
                content = b"".join(bytes([rng.randrange(256)]) * 64 if rng.random() < 0.7 else rng.randbytes(64)
                                   for _piece in range(count * SECTOR // 64))
            encoded = encode(kind, content, rng)
            chunks.append((kind, sector, count, len(data_fork) - block_data_offset, len(encoded)))
            data_fork += encoded
            expected += content
            sector += count
        blocks.append(mish_block(first_sector, sector, block_data_offset, chunks))
        first_sector += sector
    data_fork += bytes(padding)
    if binary_fork:
        fork = resource_fork(blocks)
        rsrc, xml = (len(data_fork), len(fork)), (0, 0)
    else:
        fork = plist_document(blocks)
        rsrc, xml = (0, 0), (len(data_fork), len(fork))
    total = first_sector if sector_count is None else sector_count
    path.write_bytes(bytes(data_fork) + fork + koly(len(data_fork), rsrc, xml, total))
    return bytes(expected)


def our_bytes(path):
    with diskimage.open_image(str(path), fmt="dmg") as opened:
        return b"".join(opened.read(position, min(200000, opened.virtual_size - position))
                        for position in range(0, opened.virtual_size, 200000))


def oracle_bytes(path, tmp_path):
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "dmg", "-O", "raw", path, out)
    return out.read_bytes()


@pytest.mark.parametrize("name", sorted(SAMPLE_DIGESTS))
def test_native_samples(tmp_path, name):
    source = os.path.join(SAMPLES, name)
    path = tmp_path / name.replace(".bz2", "")
    if name.endswith(".bz2"):
        with open(source, "rb") as packed:
            path.write_bytes(bz2.decompress(packed.read()))
    else:
        shutil.copyfile(source, str(path))
    digest, size = SAMPLE_DIGESTS[name]
    assert probe_format(str(path)) == "dmg"
    data = our_bytes(path)
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == digest == raw_digest(path, tmp_path, fmt="dmg")
    assert diskimage.info(str(path)) == qemu_img_json("info", path)
    assert diskimage.map(str(path), fmt="dmg") == qemu_img_json("map", "-f", "dmg", path)
    target = tmp_path / "out.qcow2"
    diskimage.convert(str(path), str(target), "qcow2")
    qemu_img("compare", "-f", "dmg", "-F", "qcow2", path, target)


LAYOUTS = [
    [[(ZLIB, 8)]],
    [[(ZLIB, 16), (ZERO, 5), (RAW, 3), (IGNORE, 2), (ZLIB, 1)]],
    [[(RAW, 2), (ZLIB, 300)], [(ZERO, 1000), (ZLIB, 7)], [(IGNORE, 4), (RAW, 9)]],
    [[(ZLIB, 2048), (ZLIB, 2048), (ZERO, 20000)]],
]


@pytest.mark.parametrize("binary_fork", [False, True])
@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
def test_built_images_read_as_source_and_qemu(tmp_path, layout, binary_fork):
    path = tmp_path / "built.dmg"
    expected = build_dmg(path, LAYOUTS[layout], seed=layout, binary_fork=binary_fork)
    assert our_bytes(path) == expected
    assert oracle_bytes(path, tmp_path) == expected
    assert diskimage.info(str(path)) == qemu_img_json("info", path)


def test_bzip2_chunks_read_as_source(tmp_path):
    # qemu-img here has no dmg-bz2 module: the expected content is the source data.
    path = tmp_path / "bzip2.dmg"
    expected = build_dmg(path, [[(BZIP2, 64), (ZERO, 10), (BZIP2, 3)], [(ZLIB, 5), (BZIP2, 1)]], seed=9)
    assert our_bytes(path) == expected
    with diskimage.open_image(str(path), fmt="dmg") as opened:
        rng = random.Random(2)
        for _attempt in range(100):
            start = rng.randrange(len(expected))
            length = rng.randrange(min(70000, len(expected) - start) + 1)
            assert opened.read(start, length) == expected[start:start + length]


@pytest.mark.parametrize("kind,codec", [(ADC, "ADC"), (LZFSE, "LZFSE")])
def test_unsupported_codecs_are_named(tmp_path, kind, codec):
    path = tmp_path / "codec.dmg"
    expected = build_dmg(path, [[(ZLIB, 4), (kind, 4), (RAW, 2)]], seed=4)
    with diskimage.open_image(str(path), fmt="dmg") as opened:
        assert opened.read(0, 4 * SECTOR) == expected[:4 * SECTOR]
        assert opened.read(8 * SECTOR, 2 * SECTOR) == expected[8 * SECTOR:]
        with pytest.raises(UnsupportedFeature, match=codec):
            opened.read(4 * SECTOR, SECTOR)
    with pytest.raises(UnsupportedFeature, match=codec):
        diskimage.convert(str(path), str(tmp_path / "out.raw"), "raw")


def test_probe_by_name_only_when_no_other_format_claims(tmp_path):
    path = tmp_path / "built.dmg"
    build_dmg(path, LAYOUTS[0])
    assert probe(str(path)).format == "dmg"
    other = tmp_path / "other.img"
    shutil.copyfile(str(path), str(other))
    assert probe(str(other)).format == "raw"            # QEMU probes dmg by the file name alone
    qcow2_named_dmg = tmp_path / "disk.dmg"
    qemu_img("create", "-q", "-f", "qcow2", qcow2_named_dmg, "1M")
    assert probe(str(qcow2_named_dmg)).format == "qcow2"
    assert qemu_img_json("info", qcow2_named_dmg)["format"] == "qcow2"


def test_writes_and_creation_are_refused(tmp_path):
    path = tmp_path / "built.dmg"
    build_dmg(path, LAYOUTS[0])
    with pytest.raises(UnsupportedOperation, match="read-only"):
        DmgDriver.open(str(path), readonly=False)
    with pytest.raises(UnsupportedOperation, match="dmg"):
        diskimage.create(str(tmp_path / "new.dmg"), "dmg", size=4096)
    with pytest.raises(UnsupportedOperation):
        diskimage.check(str(path), fmt="dmg")


def patch_trailer(path, offset, fmt, value):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, len(data) - 512 + offset, value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset,fmt,value,message", [
    (0x18, ">Q", 1 << 40, "data fork offset"),
    (0x28, ">Q", 1 << 40, "resource fork"),
    (0x30, ">Q", 1 << 40, "resource fork"),
    (0xd8, ">Q", 1 << 40, "property list"),
    (0xe0, ">Q", 1 << 40, "property list"),
    (0x1ec, ">Q", 1 << 63, "sector count"),
])
def test_damaged_trailers_are_refused(tmp_path, offset, fmt, value, message):
    path = tmp_path / "built.dmg"
    build_dmg(path, LAYOUTS[1])
    patch_trailer(path, offset, fmt, value)
    with pytest.raises(CorruptImageError, match=message):
        DmgDriver.open(str(path))


def test_no_trailer_and_short_files(tmp_path):
    path = tmp_path / "built.dmg"
    build_dmg(path, LAYOUTS[1])
    full = path.read_bytes()
    path.write_bytes(full[:-512])
    with pytest.raises(FormatError, match="UDIF trailer"):
        DmgDriver.open(str(path))
    for length in (0, 100, 511):
        path.write_bytes(full[:length])
        with pytest.raises(FormatError, match="at least 512 bytes"):
            DmgDriver.open(str(path))
    path.write_bytes(full[:len(full) // 2] + full[-512:])
    with pytest.raises(ImageError):
        our_bytes(path)


def test_oversized_property_list_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.dmg"
    build_dmg(path, LAYOUTS[0], padding=17 * 1024 * 1024)     # sparse in practice: zeroes
    patch_trailer(path, 0xd8, ">Q", 0)
    patch_trailer(path, 0xe0, ">Q", 17 * 1024 * 1024)
    with pytest.raises(UnsupportedFeature, match="property list of 17825792 bytes exceeds"):
        DmgDriver.open(str(path))


@pytest.mark.parametrize("document,message", [
    (b"<?xml version='1.0'?><plist><dict><key>resource-fork</key>", "not a valid property list"),
    (b"<?xml version='1.0'?><!DOCTYPE plist [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;'>]>"
     b"<plist><string>&b;</string></plist>", "not a valid property list"),
    (plistlib.dumps({"resource-fork": {"plst": []}}), "no resource-fork/blkx"),
    (plistlib.dumps(["not", "a", "dict"]), "no resource-fork/blkx"),
])
def test_bad_property_lists(tmp_path, document, message):
    path = tmp_path / "bad.dmg"
    path.write_bytes(document + koly(0, (0, 0), (0, len(document)), 8))
    with pytest.raises(CorruptImageError, match=message):
        DmgDriver.open(str(path))


def build_single_chunk(path, kind, count, encoded, length=None):
    block = mish_block(0, count, 0, [(kind, 0, count, 0, len(encoded) if length is None else length)])
    fork = plist_document([block])
    path.write_bytes(encoded + fork + koly(len(encoded), (0, 0), (len(encoded), len(fork)), count))


@pytest.mark.parametrize("kind,codec", [(ZLIB, "zlib"), (BZIP2, "bzip2")])
def test_decompression_bomb_is_bounded(tmp_path, kind, codec):
    # Declares 8 sectors, inflates to 8 MiB.
    bomb = zlib.compress(bytes(8 << 20), 9) if kind == ZLIB else bz2.compress(bytes(8 << 20), 9)
    path = tmp_path / "bomb.dmg"
    build_single_chunk(path, kind, 8, bomb)
    with diskimage.open_image(str(path), fmt="dmg") as opened:
        with pytest.raises(CorruptImageError, match="%s data inflates past its declared size of 4096 bytes" % codec):
            opened.read(0, 512)


@pytest.mark.parametrize("kind,encoded,message", [
    (ZLIB, zlib.compress(bytes(1000)), "inflates to 1000 bytes, expected 4096"),
    (ZLIB, zlib.compress(bytes(4096))[:-8], "truncated zlib stream"),
    (ZLIB, b"garbage" * 10, "invalid zlib data"),
    (BZIP2, b"garbage" * 10, "invalid bzip2 data"),
    (BZIP2, bz2.compress(bytes(4096))[:-10], "truncated bzip2 stream"),
])
def test_bad_chunks(tmp_path, kind, encoded, message):
    path = tmp_path / "bad.dmg"
    build_single_chunk(path, kind, 8, encoded)
    with pytest.raises(CorruptImageError, match=message):
        our_bytes(path)


@pytest.mark.parametrize("count,length,error,message", [
    (200000, 10, UnsupportedFeature, "sector count 200000 for chunk 0 is larger than max"),
    (8, 65 << 20, UnsupportedFeature, "length 68157440 for chunk 0 is larger than max"),
    (8, 1 << 20, CorruptImageError, "past the end of the file"),
])
def test_chunk_limits(tmp_path, count, length, error, message):
    path = tmp_path / "limits.dmg"
    build_single_chunk(path, ZLIB, count, zlib.compress(bytes(4096)), length=length)
    with pytest.raises(error, match=message):
        DmgDriver.open(str(path))


def test_huge_zero_chunk_is_not_allocated(tmp_path):
    path = tmp_path / "zeroes.dmg"
    count = 1 << 40          # 512 TiB of zeroes: never materialised
    build_single_chunk(path, ZERO, count, b"")
    with diskimage.open_image(str(path), fmt="dmg") as opened:
        assert opened.virtual_size == count * SECTOR
        assert opened.read(count * SECTOR - 4096, 4096) == bytes(4096)


def test_sectors_without_a_chunk_are_a_read_error(tmp_path):
    path = tmp_path / "gap.dmg"
    expected = build_dmg(path, LAYOUTS[0], sector_count=16)     # chunks describe 8 of 16 sectors
    with diskimage.open_image(str(path), fmt="dmg") as opened:
        assert opened.read(0, 8 * SECTOR) == expected
        with pytest.raises(CorruptImageError, match="sector 8 is not described by any chunk"):
            opened.read(8 * SECTOR, SECTOR)


@pytest.mark.parametrize("fork,message", [
    (struct.pack(">III", 400, 0, 10) + bytes(4), "data offset 400 past its length"),
    (struct.pack(">III", 16, 0, 0) + bytes(4), "resource data of 0 bytes"),
    (struct.pack(">III", 16, 0, 1000) + bytes(4), "resource data of 1000 bytes"),
    (struct.pack(">III", 16, 0, 8) + bytes(4) + struct.pack(">I", 100) + bytes(4), "runs past the resource data"),
    (struct.pack(">III", 16, 0, 6) + bytes(4) + struct.pack(">I", 0) + bytes(2), "resource of 0 bytes"),
    (struct.pack(">III", 16, 0, 2) + bytes(4) + bytes(2), "truncated resource"),
])
def test_damaged_resource_forks(tmp_path, fork, message):
    path = tmp_path / "fork.dmg"
    path.write_bytes(fork + koly(0, (0, len(fork)), (0, 0), 8))
    with pytest.raises(CorruptImageError, match=message):
        DmgDriver.open(str(path))


def test_binary_property_list_is_refused(tmp_path):
    document = plistlib.dumps({"resource-fork": {"blkx": []}}, fmt=plistlib.FMT_BINARY)
    path = tmp_path / "binary.dmg"
    path.write_bytes(document + koly(0, (0, 0), (0, len(document)), 8))
    with pytest.raises(CorruptImageError, match="not a valid property list"):
        DmgDriver.open(str(path))
