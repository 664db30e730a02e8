# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qed driver on hostile input: bad headers, huge tables, offsets past the end
of the file, backing file names the path policy refuses, truncation and
random damage give a clear ImageError, never another exception."""

import random
import struct

import pytest

from qemu_tools import qemu_img, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, PolicyError, UnsupportedFeature)

M = 1024 * 1024
# Header field offsets (qed_spec.txt): cluster size, table size, header size, features, L1 offset, image size,
# backing file name offset and size.
CLUSTER_SIZE, TABLE_SIZE, HEADER_SIZE, FEATURES, L1_OFFSET, IMAGE_SIZE, NAME_OFFSET, NAME_SIZE = \
    4, 8, 12, 16, 40, 48, 56, 60


def qemu_image(tmp_path, name="disk.qed"):
    path = tmp_path / name
    qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2", path, "4M")
    qemu_io(path, "write -P 0x61 0 8k", "write -P 0x62 3M 4k", fmt="qed")
    return path, bytearray(path.read_bytes())


def patched(path, data, offset, fmt, value):
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    return path


def read_all(path):
    with diskimage.open_image(str(path), fmt="qed") as image:
        return image.read(0, image.virtual_size)


@pytest.mark.parametrize("offset, fmt, value, error", [
    (0, "<4s", b"QEE\x00", FormatError),
    (CLUSTER_SIZE, "<I", 3000, FormatError),
    (CLUSTER_SIZE, "<I", 128 * M, FormatError),
    (TABLE_SIZE, "<I", 0, FormatError),
    (TABLE_SIZE, "<I", 3, FormatError),
    (TABLE_SIZE, "<I", 0x80000000, FormatError),
    (HEADER_SIZE, "<I", 0, FormatError),
    (HEADER_SIZE, "<I", 0xFFFFFFFF, FormatError),
    (FEATURES, "<Q", 0x10, UnsupportedFeature),
    (L1_OFFSET, "<Q", 1 << 40, CorruptImageError),
    (L1_OFFSET, "<Q", 4097, CorruptImageError),
    (L1_OFFSET, "<Q", 0, CorruptImageError),
    (IMAGE_SIZE, "<Q", 1 << 62, FormatError),
    (IMAGE_SIZE, "<Q", 4 * M + 1, FormatError),
])
def test_bad_header_fields(tmp_path, offset, fmt, value, error):
    path, data = qemu_image(tmp_path)
    patched(path, data, offset, fmt, value)
    with pytest.raises(error):
        diskimage.info(str(path), fmt="qed")


def test_huge_tables_are_refused_before_reading(tmp_path):
    # 64 MiB clusters with 16-cluster tables: 1 GiB per table, above the cap
    path = tmp_path / "huge.qed"
    header = struct.pack("<4sIIIQQQQQII", b"QED\x00", 64 * M, 16, 1, 0, 0, 0, 64 * M, 1 << 40, 0, 0)
    path.write_bytes(header)
    with pytest.raises(UnsupportedFeature, match="exceed"):
        diskimage.info(str(path), fmt="qed")


def test_l2_and_data_offsets_past_the_end(tmp_path):
    path, data = qemu_image(tmp_path)
    l1_offset = struct.unpack_from("<Q", data, L1_OFFSET)[0]
    l2_offset = struct.unpack_from("<Q", data, l1_offset)[0]
    original = bytes(data)
    patched(path, data, l2_offset, "<Q", len(data) * 8)
    with pytest.raises(CorruptImageError, match="past the end"):
        read_all(path)
    with pytest.raises(CorruptImageError):
        with diskimage.open_image(str(path), fmt="qed", readonly=False) as image:
            image.write(0, b"x" * 10)
    data = bytearray(original)
    patched(path, data, l2_offset, "<Q", 4096 + 5)
    with pytest.raises(CorruptImageError, match="misaligned"):
        read_all(path)
    data = bytearray(original)
    patched(path, data, l1_offset, "<Q", len(data) * 4)
    with pytest.raises(CorruptImageError, match="L2 table offset"):
        read_all(path)
    # check counts what reads refuse instead of failing
    result = diskimage.check(str(path), fmt="qed")
    assert result["corruptions"] == 1


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.raw", "json:{\"file\":{}}", "sub/../../x"])
def test_backing_names_refused_by_the_policy(tmp_path, name):
    path = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-u", "-o", "backing_file=%s,backing_fmt=raw" % name, path, "1M")
    with pytest.raises(PolicyError):
        diskimage.open_image(str(path), fmt="qed")
    # info names the backing file without opening it
    assert diskimage.info(str(path), fmt="qed")["backing-filename"] == name


def test_backing_name_outside_the_header(tmp_path):
    path = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-u", "-o", "backing_file=base.raw,backing_fmt=raw", path, "1M")
    data = bytearray(path.read_bytes())
    patched(path, data, NAME_OFFSET, "<I", 65536 - 2)
    with pytest.raises(FormatError, match="backing file name"):
        diskimage.info(str(path), fmt="qed")
    patched(path, data, NAME_OFFSET, "<I", 64)
    patched(path, data, NAME_SIZE, "<I", 0)
    with pytest.raises(FormatError, match="backing file name"):
        diskimage.info(str(path), fmt="qed")


def test_truncated_files(tmp_path):
    path, data = qemu_image(tmp_path)
    for length in (0, 10, 63, 64, 4096, 4096 * 2, 4096 * 3 + 100):
        path.write_bytes(bytes(data[:length]))
        with pytest.raises(ImageError):
            read_all(path)


def test_random_damage_gives_image_errors_only(tmp_path):
    path, data = qemu_image(tmp_path)
    rng = random.Random(4)
    l1_offset = struct.unpack_from("<Q", data, L1_OFFSET)[0]
    l2_offset = struct.unpack_from("<Q", data, l1_offset)[0]
    for attempt in range(100):
        damaged = bytearray(data)
        region = rng.choice([(0, 64), (l1_offset, l1_offset + 64), (l2_offset, l2_offset + 64)])
        for _count in range(rng.randrange(1, 4)):
            damaged[rng.randrange(*region)] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        try:
            read_all(path)
            diskimage.check(str(path), fmt="qed")
        except ImageError:
            pass
        except Exception as exc:  # pylint: disable=broad-except
            raise AssertionError("attempt %d: %r" % (attempt, exc))


@pytest.mark.parametrize("target", ["l1", "l2"])
def test_writes_never_land_on_metadata(tmp_path, target):
    path, data = qemu_image(tmp_path)
    l1_offset = struct.unpack_from("<Q", data, L1_OFFSET)[0]
    l2_offset = struct.unpack_from("<Q", data, l1_offset)[0]
    # the data cluster of guest offset 4 KiB points at the L1 table or at the L2 table itself
    patched(path, data, l2_offset + 8, "<Q", l1_offset if target == "l1" else l2_offset)
    before = path.read_bytes()
    with diskimage.open_image(str(path), fmt="qed", readonly=False) as image:
        with pytest.raises(CorruptImageError, match="overlaps"):
            image.write(4096, b"\xee" * 512)
    assert path.read_bytes()[l1_offset:] == before[l1_offset:]
