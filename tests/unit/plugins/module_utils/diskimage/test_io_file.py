# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ImageFile positioned I/O, allocation extents and hole punching."""

import os
import subprocess

import pytest

import components

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import _io
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    FormatError, ImageError, ImageNotFoundError, ReadOnlyImageError)

MIB = 1024 * 1024


@pytest.fixture
def sparse_raw(tmp_path):
    """8 MiB raw file with data written by qemu-io at known places, holes elsewhere."""
    path = tmp_path / "sparse.raw"
    with open(str(path), "wb") as f:
        f.truncate(8 * MIB)
    qemu_tools.qemu_io(path, "write -P 0x11 64k 64k", "write -P 0 1M 4k", "write -P 0x22 7M 1M",
                       fmt="raw")
    return path


def qemu_data_ranges(path):
    return [(e["start"], e["length"]) for e in
            qemu_tools.qemu_img_json("map", "-f", "raw", path) if e["data"]]


def test_data_extents_match_qemu_img_map(sparse_raw):
    with ImageFile(sparse_raw) as image:
        extents = image.data_extents(0, image.size())
    assert sum(extent[1] for extent in extents) == 8 * MIB
    position = 0
    for start, length, dummy in extents:
        assert start == position
        position += length
    assert [(s, n) for s, n, data in extents if data] == qemu_data_ranges(sparse_raw)


@pytest.mark.parametrize("offset,length", [(0, 100), (60 * 1024, 8 * 1024), (100 * 1024, 900 * 1024),
                                           (7 * MIB + 5, MIB - 5), (8 * MIB - 10, 20), (9 * MIB, 4096)])
def test_data_extents_clipped_to_the_range(sparse_raw, offset, length):
    with ImageFile(sparse_raw) as image:
        whole = image.data_extents(0, 10 * MIB)
        part = image.data_extents(offset, length)
    assert part[0][0] == offset
    assert sum(extent[1] for extent in part) == length
    for start, n, data in part:
        # Every byte of the piece has the state the whole-file query gave it.
        for w_start, w_n, w_data in whole:
            if w_start <= start < w_start + w_n:
                assert w_data == data
                assert start + n <= w_start + w_n
    # Past end of file reads as a hole.
    assert whole[-1] == (8 * MIB, 2 * MIB, False)


def test_pread_short_at_eof_and_pread_exact_names_the_structure(sparse_raw):
    with ImageFile(sparse_raw) as image:
        assert image.pread(8 * MIB - 3, 10) == b"\x22" * 3
        assert image.pread(9 * MIB, 10) == b""
        assert image.pread(64 * 1024, 4) == b"\x11" * 4
        with pytest.raises(FormatError, match=r"L1 table at offset 8388600 \(16 bytes\).*file size 8388608"):
            image.pread_exact(8 * MIB - 8, 16, "L1 table")
        assert image.pread_exact(0, 16, "header") == bytes(16)


def test_pwrite_read_back_by_qemu(tmp_path):
    path = tmp_path / "w.raw"
    with ImageFile(path, create=True) as image:
        assert image.writable
        image.truncate(MIB)
        image.pwrite(4096, b"\xab" * 8192)
        image.pwrite(MIB - 1, memoryview(b"\xcd"))
        image.flush()
    qemu_tools.qemu_io(path, "read -P 0xab 4096 8192", "read -P 0xcd 1048575 1", "read -P 0 0 4096",
                       fmt="raw")
    with pytest.raises(ImageError, match="already exists"):
        ImageFile(path, create=True)


def test_errors_for_missing_read_only_and_non_files(tmp_path, sparse_raw):
    with pytest.raises(ImageNotFoundError, match="does not exist"):
        ImageFile(tmp_path / "missing.raw")
    with ImageFile(sparse_raw) as image:
        for call in (lambda: image.pwrite(0, b"x"), lambda: image.truncate(0),
                     lambda: image.punch_hole(0, 4096), lambda: image.allocate(0, 4096)):
            with pytest.raises(ReadOnlyImageError):
                call()
    with pytest.raises(ImageError, match="directory"):
        ImageFile(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    # Opening a FIFO read-only would block without a writer: it must be refused at once.
    for writable in (False, True):
        with pytest.raises(ImageError, match="neither a regular file nor a block device"):
            ImageFile(fifo, writable=writable)
    with pytest.raises(ImageError, match="neither a regular file"):
        ImageFile("/dev/null")
    with pytest.raises(ImageError, match="cannot create the image.*directory exist"):
        ImageFile(tmp_path / "no-such-dir" / "new.raw", create=True)


@pytest.mark.parametrize("fallocate_available", [True, False])
def test_punch_hole_reads_zero_and_deallocates(sparse_raw, monkeypatch, fallocate_available):
    if not fallocate_available:
        monkeypatch.setattr(_io, "_fallocate", lambda: None)
    with ImageFile(sparse_raw, writable=True) as image:
        before = image.allocated_size()
        punched = image.punch_hole(7 * MIB, MIB)
        image.punch_hole(8 * MIB, MIB)  # past EOF: nothing, and no extension
        assert image.size() == 8 * MIB
        image.flush()
        after = image.allocated_size()
        extents = image.data_extents(7 * MIB, MIB)
    qemu_tools.qemu_io(sparse_raw, "read -P 0 7M 1M", "read -P 0x11 64k 64k", fmt="raw")
    assert punched is fallocate_available
    if fallocate_available:
        assert after <= before - MIB
        assert extents == [(7 * MIB, MIB, False)]


def test_write_zeroes_and_allocate(tmp_path):
    path = tmp_path / "z.raw"
    with ImageFile(path, create=True) as image:
        image.pwrite(0, b"\xff" * (3 * _io.ZERO_CHUNK // 2))
        image.write_zeroes(10, _io.ZERO_CHUNK + 100)
        image.allocate(0, 8 * MIB)
        assert image.size() == 8 * MIB
        assert image.allocated_size() >= 8 * MIB
    qemu_tools.qemu_io(path, "read -P 0xff 0 10", "read -P 0 10 %d" % (_io.ZERO_CHUNK + 100),
                       "read -P 0xff %d %d" % (_io.ZERO_CHUNK + 110, _io.ZERO_CHUNK // 2 - 110),
                       fmt="raw")


@pytest.fixture
def loop_device(tmp_path):
    backing = tmp_path / "loop-backing.raw"
    with open(str(backing), "wb") as f:
        f.write(b"\x5a" * 4096)
        f.truncate(4 * MIB)
    if os.geteuid() != 0:
        components.missing("loop device", "loop devices need root")
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if proc.returncode != 0:
        components.missing("loop device", proc.stderr.strip())
    device = proc.stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def test_block_device(loop_device):
    with ImageFile(loop_device, writable=True) as image:
        assert image.is_block_device
        assert image.size() == 4 * MIB
        assert image.data_extents(0, 4 * MIB) == [(0, 4 * MIB, True)]
        assert image.pread(0, 4) == b"\x5a" * 4
        image.pwrite(MIB, b"\x77" * 512)
        image.punch_hole(0, 4096)  # discard (or zero writes): must read zero either way
        image.flush()
        image.truncate(4 * MIB)
        with pytest.raises(ImageError, match="block device"):
            image.truncate(2 * MIB)
        rc = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 512", loop_device],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False).returncode
        assert rc != 0  # our lock holds qemu off the device too
    qemu_tools.qemu_io(loop_device, "read -P 0x77 1M 512", "read -P 0 0 4096", fmt="raw")


def test_pread_into_fills_the_view_and_stops_short_at_the_end_of_the_file(tmp_path):
    path = tmp_path / "data"
    content = os.urandom(3 * MIB + 100)
    path.write_bytes(content)
    image_file = ImageFile(path)
    try:
        buffer = bytearray(2 * MIB)
        assert _io.pread_into(image_file, 4096, memoryview(buffer)) == 2 * MIB
        assert bytes(buffer) == content[4096:4096 + 2 * MIB]
        tail = bytearray(b"\xee" * 300)
        assert _io.pread_into(image_file, 3 * MIB, memoryview(tail)[50:]) == 100
        assert bytes(tail[:50]) == b"\xee" * 50 and bytes(tail[50:150]) == content[3 * MIB:]
        assert bytes(tail[150:]) == b"\xee" * 150
    finally:
        image_file.close()


def test_pread_into_reads_other_file_objects_through_their_pread(tmp_path):
    class Window:
        """A file object that is no plain ImageFile (as an archive member's window)."""

        def pread(self, offset, length):
            return bytes(range(offset, offset + min(length, 5)))

    buffer = bytearray(8)
    assert _io.pread_into(Window(), 10, memoryview(buffer)) == 5
    assert bytes(buffer) == bytes(range(10, 15)) + bytes(3)


def test_pwrite_from_writes_the_parts_one_after_another_through_short_writes(tmp_path, monkeypatch):
    path = tmp_path / "data"
    path.write_bytes(b"\xaa" * 20000)
    real_pwritev = os.pwritev
    calls = []

    def short_pwritev(fd, buffers, offset):
        # at most 2 buffers (IOV_MAX below) and at most 3000 bytes per call, as a kernel may
        assert len(buffers) <= 2
        calls.append(len(buffers))
        room, limited = 3000, []
        for buffer in buffers:
            if room <= 0:
                break
            limited.append(memoryview(buffer)[:room])
            room -= len(limited[-1])
        return real_pwritev(fd, limited, offset)

    monkeypatch.setattr(_io, "_iov_max", lambda: 2)
    monkeypatch.setattr(_io.os, "pwritev", short_pwritev)
    content = os.urandom(9000)
    parts = [content[:1000], bytearray(content[1000:5000]), b"", memoryview(content)[5000:8000],
             memoryview(bytearray(content[8000:9000]))]
    image_file = ImageFile(path, writable=True)
    try:
        _io.pwrite_from(image_file, 777, parts)
    finally:
        image_file.close()
    assert len(calls) == 3      # 9000 bytes, 3000 per call: buffers cut part-way are continued
    assert path.read_bytes() == b"\xaa" * 777 + content + b"\xaa" * (20000 - 777 - 9000)


def test_pwrite_from_keeps_what_it_overwrites_for_undo(tmp_path):
    path = tmp_path / "data"
    before = os.urandom(8192)
    path.write_bytes(before)
    image_file = ImageFile(path, writable=True)
    try:
        image_file.start_undo()
        _io.pwrite_from(image_file, 4096, [b"\x01" * 4096, b"\x02" * 4096])
        assert image_file.size() == 12288
        image_file.undo()
    finally:
        image_file.close()
    assert path.read_bytes() == before


def test_pwrite_from_writes_other_file_objects_through_their_pwrite():
    class Window:
        """A file object that is no plain ImageFile."""

        def __init__(self):
            self.writes = []

        def pwrite(self, offset, data):
            self.writes.append((offset, bytes(data)))

    window = Window()
    _io.pwrite_from(window, 5, [b"ab", memoryview(b"cd"), bytearray(b"e")])
    assert window.writes == [(5, b"abcde")]
