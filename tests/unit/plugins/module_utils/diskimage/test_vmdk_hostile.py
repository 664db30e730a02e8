# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile VMDK images: refused with a clear ImageError, never another exception, never
an unbounded allocation, never a file opened outside the path policy."""

import random
import struct
import zlib

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, PolicyError, UnsupportedFeature)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import MAX_IO

MIB = 1024 * 1024
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")


def descriptor(create_type, extent_lines, extra=""):
    return ('# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=ffffffff\ncreateType="%s"\n%s\n'
            '# Extent description\n%s\n# The Disk Data Base\n#DDB\n' % (create_type, extra, extent_lines))


def read_all(path, fmt=None):
    with diskimage.open_image(str(path), fmt=fmt) as opened:
        for offset in range(0, opened.virtual_size, MAX_IO):
            opened.read(offset, min(MAX_IO, opened.virtual_size - offset))


@pytest.fixture
def sparse(tmp_path):
    """A qemu-img made monolithicSparse image with two grains of data; returns (path, header fields)."""
    path = tmp_path / "disk.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", path, "2M")
    qemu_tools.qemu_io(path, "write -P 0x11 0 64k", "write -P 0x22 1M 64k", fmt="vmdk")
    return path


def patch_header(path, **fields):
    names = ("magic", "version", "flags", "capacity", "grain", "desc_offset", "desc_size", "gtes",
             "rgd", "gd", "overhead", "unclean", "check", "compress")
    raw = bytearray(path.read_bytes())
    values = list(HEADER.unpack_from(raw))
    for name, value in fields.items():
        values[names.index(name)] = value
    HEADER.pack_into(raw, 0, *values)
    path.write_bytes(bytes(raw))
    return values


@pytest.mark.parametrize("name", ("/etc/hostname", "../outside.bin", "sub/../../outside.bin"))
def test_extent_paths_outside_the_policy_are_refused(name, tmp_path):
    (tmp_path.parent / "outside.bin").write_bytes(bytes(MIB))
    path = tmp_path / "disk.vmdk"
    path.write_text(descriptor("monolithicFlat", 'RW 2048 FLAT "%s" 0' % name))
    with pytest.raises(PolicyError):
        diskimage.open_image(str(path))
    with pytest.raises(PolicyError):
        diskimage.info(str(path))


def test_extent_path_allowed_by_allow_dirs(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_bytes(b"\x5a" * MIB)
    top = tmp_path / "top"
    top.mkdir()
    path = top / "disk.vmdk"
    path.write_text(descriptor("monolithicFlat", 'RW 2048 FLAT "%s" 0' % (other / "data.bin")))
    with diskimage.open_image(str(path), allow_dirs=[str(other)]) as opened:
        assert opened.read(0, 4) == b"\x5a" * 4


def test_absolute_parent_hint_is_refused(sparse, tmp_path):
    # Outside the child's directory (an absolute name in its own directory is accepted like a relative one).
    (tmp_path / "vm").mkdir()
    child = tmp_path / "vm" / "child.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", "-b", str(sparse), "-F", "vmdk", child)
    with pytest.raises(PolicyError):
        diskimage.open_image(str(child))
    with diskimage.open_image(str(child), allow_dirs=[str(tmp_path)]) as image:
        assert image.read(0, 1) == b"\x11"
    # info names the parent without opening it, as qemu-img info does
    assert diskimage.info(str(child))["backing-filename"] == str(sparse)


def test_parent_loop_is_refused(tmp_path):
    path = tmp_path / "loop.vmdk"
    qemu_tools.qemu_img("create", "-q", "-f", "vmdk", path, "1M")
    raw = bytearray(path.read_bytes())
    text = raw[512:512 + 20 * 512].split(b"\x00", 1)[0]
    new_text = text.replace(b'createType="monolithicSparse"\n',
                            b'createType="monolithicSparse"\nparentFileNameHint="loop.vmdk"\n')
    raw[512:512 + len(new_text)] = new_text
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="loop"):
        diskimage.open_image(str(path))


def test_huge_grain_directory_is_refused(sparse):
    # 2^40 sectors with one-sector grains: a grain directory of 8 GiB
    patch_header(sparse, capacity=1 << 40, grain=1)
    with pytest.raises(UnsupportedFeature, match="grain directory"):
        diskimage.open_image(str(sparse))


def test_grain_directory_past_end_of_file(sparse):
    patch_header(sparse, gd=1 << 30)
    with pytest.raises(CorruptImageError, match="grain directory"):
        diskimage.open_image(str(sparse))


@pytest.mark.parametrize("fields, error, message", (
    ({"version": 4}, UnsupportedFeature, "version"),
    ({"gtes": 4096}, FormatError, "grain table size"),
    ({"gtes": 0}, FormatError, "grain table"),
    ({"grain": 0}, FormatError, "grain"),
    ({"grain": 1 << 24}, UnsupportedFeature, "grain size"),
    ({"overhead": 1 << 40}, FormatError, "truncated"),
))
def test_bad_header_fields(sparse, fields, error, message):
    patch_header(sparse, **fields)
    with pytest.raises(error, match=message):
        diskimage.open_image(str(sparse))


def test_grain_table_and_grain_offsets_past_end_of_file(sparse):
    values = HEADER.unpack_from(sparse.read_bytes())
    raw = bytearray(sparse.read_bytes())
    gd_offset = values[9] * 512
    first_gt = struct.unpack_from("<I", raw, gd_offset)[0] * 512
    # grain 0 points far beyond the end of the file
    struct.pack_into("<I", raw, first_gt, 1 << 28)
    sparse.write_bytes(bytes(raw))
    with pytest.raises(CorruptImageError, match="after the end"):
        read_all(sparse)
    with pytest.raises(CorruptImageError):
        diskimage.check(str(sparse))
    # the grain table itself beyond the end of the file
    struct.pack_into("<I", raw, gd_offset, 1 << 28)
    sparse.write_bytes(bytes(raw))
    with pytest.raises(CorruptImageError, match="grain table"):
        read_all(sparse)


def _stream(tmp_path):
    source = tmp_path / "source.raw"
    qemu_tools.qemu_img("create", "-q", "-f", "raw", source, "1M")
    qemu_tools.qemu_io(source, "write -P 0x31 0 64k", fmt="raw")
    path = tmp_path / "stream.vmdk"
    diskimage.convert(str(source), str(path), "vmdk", options={"subformat": "streamOptimized"})
    return path


def _replace_grain(path, payload, size=None):
    raw = bytearray(path.read_bytes())
    grain_at = 128 * 512
    lba, old_size = struct.unpack_from("<QI", raw, grain_at)
    assert lba == 0 and old_size
    room = ((12 + old_size + 511) // 512) * 512 - 12
    payload = payload[:room]
    struct.pack_into("<QI", raw, grain_at, 0, len(payload) if size is None else size)
    raw[grain_at + 12:grain_at + 12 + room] = payload.ljust(room, b"\x00")
    path.write_bytes(bytes(raw))


def test_compressed_grain_bombs_and_garbage(tmp_path):
    path = _stream(tmp_path)
    read_all(path)
    # inflates to more than one grain (64 KiB): refused, never inflated beyond the grain size
    _replace_grain(path, zlib.compress(bytes(1 << 20), 9))
    with pytest.raises(CorruptImageError, match="more than the grain size"):
        read_all(path)
    _replace_grain(path, b"not deflate data at all")
    with pytest.raises(CorruptImageError, match="inflated"):
        read_all(path)
    _replace_grain(path, zlib.compress(b"x" * 100), size=1 << 31)
    with pytest.raises(CorruptImageError, match="compressed size"):
        read_all(path)


def test_stream_with_bad_footer(tmp_path):
    path = _stream(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-512] = 7
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="footer"):
        diskimage.open_image(str(path))


@pytest.mark.parametrize("text, error", (
    ('# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
     '# Extent description\nRW 8 FLAT "x.bin" 0\n', FormatError),
    ('# Disk DescriptorFile\nversion=1\nCID=zz\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
     '# Extent description\nRW 8 FLAT "x.bin" 0\n', FormatError),
    (descriptor("fancyNewType", 'RW 8 FLAT "x.bin" 0'), UnsupportedFeature),
    (descriptor("monolithicFlat", 'RW 8 FLAT "x.bin"'), FormatError),
    (descriptor("monolithicFlat", "# none"), FormatError),
    (descriptor("twoGbMaxExtentSparse", 'RW 8 SPARSE "x.bin"'), FormatError),
    (descriptor("monolithicFlat", '\n# x\n'.join('RW 1 FLAT "x.bin" 0' for dummy in range(5000))), UnsupportedFeature),
))
def test_bad_descriptors(text, error, tmp_path):
    (tmp_path / "x.bin").write_bytes(bytes(4096))
    path = tmp_path / "disk.vmdk"
    path.write_text(text)
    with pytest.raises(error):
        diskimage.open_image(str(path), fmt="vmdk")


def test_sesparse_with_bad_headers(tmp_path):
    extent = tmp_path / "delta.vmdk"
    header = [0] * 26
    header[0:5] = [0xcafebabe, 0x200000001, 2048, 8, 64]
    header[10] = 1          # volatile header at sector 1
    header[16:18] = [4, 1]  # grain directory at sector 4, one sector
    header[18] = 8
    header[24] = 16
    volatile = struct.pack("<4Q", 0xcafecafe, 0, 0, 1)   # journal must be replayed
    extent.write_bytes(struct.pack("<26Q", *header).ljust(512, b"\x00") + volatile.ljust(512, b"\x00")
                       + bytes(20 * 512))
    path = tmp_path / "disk.vmdk"
    path.write_text(descriptor("seSparse", 'RW 2048 SESPARSE "delta.vmdk"'))
    with pytest.raises(UnsupportedFeature, match="journal"):
        diskimage.open_image(str(path))
    header[1] = 3
    extent.write_bytes(struct.pack("<26Q", *header).ljust(512, b"\x00") + bytes(21 * 512))
    with pytest.raises(UnsupportedFeature, match="version"):
        diskimage.open_image(str(path))


def test_truncated_files(sparse, tmp_path):
    raw = sparse.read_bytes()
    for length in (0, 3, 100, 600, 40000):
        cut = tmp_path / ("cut%d.vmdk" % length)
        cut.write_bytes(raw[:length])
        with pytest.raises(ImageError):
            read_all(cut, fmt="vmdk")


def test_random_corruption_raises_only_image_errors(sparse, tmp_path):
    """Flip bytes in the metadata of a sparse and a stream image: every failure is an ImageError."""
    originals = [sparse.read_bytes(), _stream(tmp_path).read_bytes()]
    rng = random.Random(59)
    target = tmp_path / "fuzz.vmdk"
    for attempt in range(300):
        raw = bytearray(originals[attempt % 2])
        metadata_end = min(len(raw), 70 * 1024) if attempt % 2 == 0 else len(raw)
        for _flip in range(rng.randrange(1, 6)):
            position = rng.randrange(0, 512) if rng.random() < 0.5 else rng.randrange(0, metadata_end)
            if attempt % 2 and rng.random() < 0.5:
                position = len(raw) - 1 - rng.randrange(0, 4096)
            raw[position] = rng.randrange(256)
        target.write_bytes(bytes(raw))
        try:
            read_all(target)
            diskimage.info(str(target))
        except ImageError:
            pass
