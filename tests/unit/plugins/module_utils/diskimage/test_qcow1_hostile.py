# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow (version 1) driver on hostile input: bad headers, huge L1 tables,
table, cluster and compressed offsets past the end of the file, compressed
data that inflates to more or less than a cluster, backing names the path
policy refuses, truncation and random damage give a clear ImageError."""

import random
import struct
import zlib

import pytest

from qemu_tools import qemu_img, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, PolicyError, UnsupportedFeature)

M = 1024 * 1024
# Header field offsets (block/qcow.c QCowHeader, big-endian).
VERSION, BACKING_OFFSET, BACKING_SIZE, SIZE, CLUSTER_BITS, L2_BITS, CRYPT, L1_OFFSET = 4, 8, 16, 24, 32, 33, 36, 40
OFLAG_COMPRESSED = 1 << 63


def qemu_image(tmp_path, name="disk.qcow"):
    path = tmp_path / name
    qemu_img("create", "-q", "-f", "qcow", path, "4M")
    qemu_io(path, "write -P 0x61 0 8k", "write -P 0x62 3M 4k", fmt="qcow")
    return path, bytearray(path.read_bytes())


def patched(path, data, offset, fmt, value):
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    return path


def read_all(path):
    with diskimage.open_image(str(path), fmt="qcow") as image:
        return image.read(0, image.virtual_size)


def first_l2(data):
    l1_offset = struct.unpack_from(">Q", data, L1_OFFSET)[0]
    return l1_offset, struct.unpack_from(">Q", data, l1_offset)[0]


@pytest.mark.parametrize("offset, fmt, value, error", [
    (0, ">4s", b"QFI\xfa", FormatError),
    (VERSION, ">I", 2, ImageError),
    (VERSION, ">I", 7, UnsupportedFeature),
    (SIZE, ">Q", 1, FormatError),
    (CLUSTER_BITS, ">B", 8, FormatError),
    (CLUSTER_BITS, ">B", 17, FormatError),
    (L2_BITS, ">B", 5, FormatError),
    (L2_BITS, ">B", 14, FormatError),
    (CRYPT, ">I", 2, FormatError),
    (L1_OFFSET, ">Q", 1 << 40, CorruptImageError),
    (SIZE, ">Q", 1 << 62, UnsupportedFeature),
    (BACKING_OFFSET, ">Q", 1 << 40, CorruptImageError),
])
def test_bad_header_fields(tmp_path, offset, fmt, value, error):
    path, data = qemu_image(tmp_path)
    if offset == BACKING_OFFSET:
        struct.pack_into(">I", data, BACKING_SIZE, 10)
    patched(path, data, offset, fmt, value)
    with pytest.raises(error):
        diskimage.info(str(path), fmt="qcow")


def test_huge_l1_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.qcow"
    path.write_bytes(struct.pack(">4sIQIIQBBHIQ", b"QFI\xfb", 1, 0, 0, 0, 1 << 60, 9, 6, 0, 0, 48))
    with pytest.raises(UnsupportedFeature, match="exceeds"):
        diskimage.info(str(path), fmt="qcow")


def test_table_and_cluster_offsets_past_the_end(tmp_path):
    path, data = qemu_image(tmp_path)
    original = bytes(data)
    l1_offset, l2_offset = first_l2(data)
    patched(path, data, l1_offset, ">Q", len(data) * 4)
    with pytest.raises(CorruptImageError, match="L2 table offset"):
        read_all(path)
    data = bytearray(original)
    patched(path, data, l2_offset + 8, ">Q", len(data) * 8)
    with pytest.raises(CorruptImageError, match="past the end"):
        read_all(path)
    with pytest.raises(CorruptImageError):
        with diskimage.open_image(str(path), fmt="qcow", readonly=False) as image:
            image.write(4096, b"x" * 10)
    data = bytearray(original)
    # a compressed cluster whose bytes lie past the end of the file
    patched(path, data, l2_offset + 8, ">Q", OFLAG_COMPRESSED | (100 << (63 - 12)) | (len(data) + 4096))
    with pytest.raises(CorruptImageError, match="past the end"):
        read_all(path)


@pytest.mark.parametrize("payload", [
    # zlib streams without their 2-byte header and 4-byte checksum are raw deflate
    zlib.compress(b"\x01" * 100)[2:-4],         # inflates to less than a cluster
    b"\xff" * 50,                               # not deflate at all
])
def test_bad_compressed_clusters(tmp_path, payload):
    path, data = qemu_image(tmp_path)
    offset = len(data)
    data += payload
    l2_offset = first_l2(data)[1]
    struct.pack_into(">Q", data, l2_offset + 8, OFLAG_COMPRESSED | (len(payload) << (63 - 12)) | offset)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match="compressed cluster"):
        read_all(path)


def test_compressed_stream_longer_than_a_cluster_is_cut_at_the_cluster(tmp_path):
    # QEMU inflates into one cluster and ignores the rest: so does the library, without inflating the rest
    path, data = qemu_image(tmp_path)
    payload = zlib.compress(b"\x07" * (4096 * 200))[2:-4]
    offset = len(data)
    data += payload
    l2_offset = first_l2(data)[1]
    struct.pack_into(">Q", data, l2_offset + 8, OFLAG_COMPRESSED | (len(payload) << (63 - 12)) | offset)
    path.write_bytes(bytes(data))
    with diskimage.open_image(str(path), fmt="qcow") as image:
        assert image.read(4096, 4096) == b"\x07" * 4096
    qemu_io(path, "read -P 7 4k 4k", fmt="qcow")


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.raw", "sub/../../x"])
def test_backing_names_refused_by_the_policy(tmp_path, name):
    path = tmp_path / "top.qcow"
    qemu_img("create", "-q", "-f", "qcow", "-u", "-o", "backing_file=%s,backing_fmt=raw" % name, path, "1M")
    with pytest.raises(PolicyError):
        diskimage.open_image(str(path), fmt="qcow")
    assert diskimage.info(str(path), fmt="qcow")["backing-filename"] == name


def test_backing_name_too_long(tmp_path):
    path = tmp_path / "top.qcow"
    qemu_img("create", "-q", "-f", "qcow", "-u", "-o", "backing_file=base.raw,backing_fmt=raw", path, "1M")
    data = bytearray(path.read_bytes())
    patched(path, data, BACKING_SIZE, ">I", 5000)
    with pytest.raises(FormatError, match="too long"):
        diskimage.info(str(path), fmt="qcow")


def test_truncated_files(tmp_path):
    path, data = qemu_image(tmp_path)
    for length in (0, 10, 47, 48, 100, 4096, 4096 * 2 + 100, 4096 * 3 + 100):
        path.write_bytes(bytes(data[:length]))
        with pytest.raises(ImageError):
            read_all(path)


def test_random_damage_gives_image_errors_only(tmp_path):
    path, data = qemu_image(tmp_path)
    rng = random.Random(5)
    l1_offset, l2_offset = first_l2(data)
    for attempt in range(100):
        damaged = bytearray(data)
        region = rng.choice([(0, 48), (l1_offset, l1_offset + 16), (l2_offset, l2_offset + 32)])
        for _count in range(rng.randrange(1, 4)):
            damaged[rng.randrange(*region)] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        try:
            read_all(path)
        except ImageError:
            pass
        except Exception as exc:  # pylint: disable=broad-except
            raise AssertionError("attempt %d: %r" % (attempt, exc))


@pytest.mark.parametrize("target", ["header", "l1", "l2"])
def test_writes_never_land_on_metadata(tmp_path, target):
    path, data = qemu_image(tmp_path)
    l1_offset, l2_offset = first_l2(data)
    host = {"header": 8, "l1": l1_offset, "l2": l2_offset}[target]
    patched(path, data, l2_offset + 8, ">Q", host)
    before = path.read_bytes()
    with diskimage.open_image(str(path), fmt="qcow", readonly=False) as image:
        with pytest.raises(CorruptImageError, match="overlaps"):
            image.write(4096, b"\xee" * 512)
    assert path.read_bytes() == before
