# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cloop driver (read-only): the native sample and V2.0 images built byte by
byte (zlib blocks, an offsets table) read as their source data and as
``qemu-img convert -O raw`` reads them; info and map agree with qemu-img;
convert to qcow2 compares equal; damaged tables and decompression bombs give
clear errors."""

import bz2
import hashlib
import os
import random
import struct
import zlib

import pytest

from qemu_tools import qemu_img, qemu_img_json, raw_digest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, UnsupportedFeature, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.cloop import CloopDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe_format

# The sample is shared with test_probe.py (probe_samples/SOURCES.md: origin, licence, digest).
SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_samples", "simple-pattern.cloop.bz2")
SAMPLE_RAW_SHA256 = "7c77af2771e0f86b7ec9707374c7416037fedae45cb0e6e27fbdf55688a5dd12"
PREAMBLE = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
K = 1024


def build_cloop(path, content, block_size, compressed_blocks=None):
    """A cloop V2.0 image of ``content`` (a multiple of block_size)."""
    blocks = compressed_blocks
    if blocks is None:
        blocks = [zlib.compress(content[start:start + block_size], 6) for start in range(0, len(content), block_size)]
    header = PREAMBLE + bytes(128 - len(PREAMBLE)) + struct.pack(">II", block_size, len(blocks))
    position = len(header) + 8 * (len(blocks) + 1)
    offsets = [position]
    for block in blocks:
        position += len(block)
        offsets.append(position)
    path.write_bytes(header + struct.pack(">%dQ" % len(offsets), *offsets) + b"".join(blocks))


def patterned(size, seed):
    rng = random.Random(seed)
    data = bytearray(size)
    for _run in range(size // 20000 + 1):
        start = rng.randrange(0, size)
        length = rng.randrange(1, 30000)
        data[start:start + length] = bytes([rng.randrange(256)]) * len(data[start:start + length])
    return bytes(data)


def our_bytes(path):
    with diskimage.open_image(str(path), fmt="cloop") as opened:
        return b"".join(opened.read(position, min(100000, opened.virtual_size - position))
                        for position in range(0, opened.virtual_size, 100000))


def test_native_sample(tmp_path):
    path = tmp_path / "simple-pattern.cloop"
    with open(SAMPLE, "rb") as packed:
        path.write_bytes(bz2.decompress(packed.read()))
    assert probe_format(str(path)) == "cloop"
    data = our_bytes(path)
    assert hashlib.sha256(data).hexdigest() == SAMPLE_RAW_SHA256 == raw_digest(path, tmp_path, fmt="cloop")
    for value in range(1, 16):
        assert data[value * 64 * K:value * 64 * K + 512] == bytes([value]) * 512
    assert diskimage.info(str(path)) == qemu_img_json("info", path)
    assert diskimage.map(str(path), fmt="cloop") == qemu_img_json("map", "-f", "cloop", path)


@pytest.mark.parametrize("block_size,blocks", [(512, 7), (64 * K, 20), (256 * K, 5), (1536, 333)])
def test_built_images_read_as_source_and_qemu(tmp_path, block_size, blocks):
    content = patterned(block_size * blocks, block_size + blocks)
    path = tmp_path / "built.cloop"
    build_cloop(path, content, block_size)
    assert probe_format(str(path)) == "cloop"
    assert our_bytes(path) == content
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "cloop", "-O", "raw", path, out)
    assert out.read_bytes() == content
    assert diskimage.info(str(path)) == qemu_img_json("info", path)
    with diskimage.open_image(str(path), fmt="cloop") as opened:
        rng = random.Random(5)
        for _attempt in range(100):
            start = rng.randrange(len(content))
            length = rng.randrange(min(3 * block_size, len(content) - start) + 1)
            assert opened.read(start, length) == content[start:start + length]


def test_convert_to_qcow2_compares_equal(tmp_path):
    path = tmp_path / "built.cloop"
    build_cloop(path, patterned(64 * K * 16, 3), 64 * K)
    target = tmp_path / "out.qcow2"
    diskimage.convert(str(path), str(target), "qcow2")
    qemu_img("compare", "-f", "cloop", "-F", "qcow2", path, target)


def test_writes_and_creation_are_refused(tmp_path):
    path = tmp_path / "built.cloop"
    build_cloop(path, bytes(4096), 4096)
    with pytest.raises(UnsupportedOperation, match="read-only"):
        CloopDriver.open(str(path), readonly=False)
    with pytest.raises(UnsupportedOperation, match="cloop"):
        diskimage.create(str(tmp_path / "new.cloop"), "cloop", size=4096)
    with pytest.raises(UnsupportedOperation):
        diskimage.check(str(path), fmt="cloop")


@pytest.mark.parametrize("offset,fmt,value,error,message", [
    (128, ">I", 1000, FormatError, "multiple of 512"),
    (128, ">I", 0, FormatError, "cannot be zero"),
    (128, ">I", 128 * K * K, UnsupportedFeature, "64 MB or less"),
    (132, ">I", 0xffffffff, UnsupportedFeature, "too many offsets"),
    (132, ">I", 1000, CorruptImageError, "past the end of the file"),
    (136 + 8, ">Q", 1, CorruptImageError, "not monotonically increasing"),
    (136 + 8 * 4, ">Q", 1 << 40, CorruptImageError, "invalid compressed block size"),
])
def test_damaged_headers_are_refused(tmp_path, offset, fmt, value, error, message):
    path = tmp_path / "built.cloop"
    build_cloop(path, patterned(4 * 4096, 1), 4096)
    with open(str(path), "r+b") as image_file:
        image_file.seek(offset)
        image_file.write(struct.pack(fmt, value))
    with pytest.raises(error, match=message):
        CloopDriver.open(str(path))


def test_last_block_past_end_of_file(tmp_path):
    path = tmp_path / "built.cloop"
    build_cloop(path, patterned(4 * 4096, 1), 4096)
    full = path.read_bytes()
    path.write_bytes(full[:-10])
    with pytest.raises(CorruptImageError, match="past the end of the file"):
        CloopDriver.open(str(path))
    for length in (0, 50, 135, 140):
        path.write_bytes(full[:length])
        with pytest.raises(ImageError):
            our_bytes(path)


def test_decompression_bomb_is_bounded(tmp_path):
    # Block 1 inflates to 64 MiB but the image declares 4 KiB blocks.
    bomb = zlib.compress(bytes(64 * K * K), 9)
    blocks = [zlib.compress(b"\x01" * 4096), bomb]
    path = tmp_path / "bomb.cloop"
    build_cloop(path, None, 4096, compressed_blocks=blocks)
    with diskimage.open_image(str(path), fmt="cloop") as opened:
        assert opened.read(0, 4096) == b"\x01" * 4096
        with pytest.raises(CorruptImageError, match="inflates past the block size"):
            opened.read(4096, 512)


@pytest.mark.parametrize("block,message", [
    (zlib.compress(bytes(1000)), "inflates to 1000 bytes"),
    (zlib.compress(bytes(4096))[:-6], "truncated zlib stream"),
    (zlib.compress(bytes(4096))[:-4], "truncated zlib stream"),     # all the data, no checksum
    (b"not zlib data at all", "invalid zlib data"),
])
def test_bad_blocks(tmp_path, block, message):
    path = tmp_path / "bad.cloop"
    build_cloop(path, None, 4096, compressed_blocks=[block])
    with pytest.raises(CorruptImageError, match=message):
        our_bytes(path)
