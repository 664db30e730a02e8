# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VirtualBox differencing VDIs (snapshots): parents found by UUID under the
path policy, chains converted to one image, and hostile headers.

qemu-img cannot create differencing VDIs and no native sample exists, so the
children are built here byte by byte from VirtualBox's VDICore.h layout; the
expected guest view is a bytearray model computed from the blocks the test
puts in each layer, never from the reader."""

import os
import stat
import struct
import uuid

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import chain as chain_mod
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, ImageNotFoundError, UnsupportedFeature, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, UNALLOCATED, ZERO

M = 1024 * 1024
FREE = 0xffffffff
ZERO_BLOCK = "zero"

# VDICore.h: VDIPREHEADER (text[64], signature, version) then VDIHEADER1PLUS.
PRE = struct.Struct("<64sII")
HEADER = struct.Struct("<III256sIIIIIIIQIIII16s16s16s16sIIII")


def new_uuid():
    return uuid.uuid4().bytes_le


def build_vdi(path, disk_size, image_type, uuid_image, uuid_modify, uuid_link=bytes(16),
              uuid_parent_modify=bytes(16), blocks=None, block_size=M, block_extra=0, blocks_in_image=None,
              blocks_allocated=None, alignment=512):
    """A VDI as VirtualBox lays it out.  ``blocks``: {index: full block bytes
    or ZERO_BLOCK}; data slots are given in reverse index order so that slot
    and index differ."""
    blocks = blocks or {}
    count = blocks_in_image if blocks_in_image is not None else -(-disk_size // block_size)
    offset_bmap = -(-(PRE.size + HEADER.size) // alignment) * alignment
    offset_data = -(-(offset_bmap + 4 * count) // alignment) * alignment
    block_map = [FREE] * count
    slots = []
    for index in sorted(blocks, reverse=True):
        if blocks[index] == ZERO_BLOCK:
            block_map[index] = 0xfffffffe
        else:
            assert len(blocks[index]) == block_size
            block_map[index] = len(slots)
            slots.append(blocks[index])
    if blocks_allocated is None:
        blocks_allocated = len(slots)
    header = PRE.pack(b"<<< Oracle VM VirtualBox Disk Image >>>\n", 0xbeda107f, 0x00010001)
    header += HEADER.pack(400, image_type, 0, b"snapshot", offset_bmap, offset_data, 0, 0, 0, 512, 0,
                          disk_size, block_size, block_extra, count, blocks_allocated, uuid_image, uuid_modify,
                          uuid_link, uuid_parent_modify, 0, 0, 0, 512)
    with open(str(path), "wb") as f:
        f.write(header.ljust(offset_bmap, b"\0"))
        f.write(struct.pack("<%dI" % count, *block_map).ljust(offset_data - offset_bmap, b"\0"))
        for slot in slots:
            f.write(b"\xee" * block_extra + slot)


def header_uuids(path):
    with open(str(path), "rb") as f:
        raw = f.read(0x1c8)
    return raw[0x188:0x198], raw[0x198:0x1a8]


def apply_layer(model, blocks, block_size=M):
    for index, content in blocks.items():
        start = index * block_size
        end = min(start + block_size, len(model))
        if start >= len(model):
            continue
        model[start:end] = bytes(end - start) if content == ZERO_BLOCK else content[:end - start]


def block_of(byte, tail=None):
    block = bytearray(bytes([byte]) * M)
    if tail is not None:
        block[-7:] = tail * 7
    return bytes(block)


@pytest.fixture
def vbox_vm(tmp_path):
    """A VirtualBox VM folder: base.vdi (qemu-img made, dynamic) and two
    snapshots in Snapshots/{uuid}.vdi, each with blocks of its own."""
    vm = tmp_path / "GOAD-DC01"
    snapshots = vm / "Snapshots"
    snapshots.mkdir(parents=True)
    base = vm / "GOAD-DC01.vdi"
    qemu_img("create", "-f", "vdi", base, "6M")
    qemu_io(base, "write -P 0x10 0 1536k", "write -P 0x11 3M 4096", "write -P 0x12 5M 1M", fmt="vdi")
    base_raw = vm / "base.raw"
    qemu_img("convert", "-f", "vdi", "-O", "raw", base, base_raw)
    with open(str(base_raw), "rb") as f:
        model = bytearray(f.read())
    base_raw.unlink()
    base_uuid, base_modify = header_uuids(base)

    first_uuid, first_modify = new_uuid(), new_uuid()
    first_blocks = {1: block_of(0x21, b"a"), 2: block_of(0x22), 5: ZERO_BLOCK}
    first = snapshots / ("{%s}.vdi" % uuid.UUID(bytes_le=first_uuid))
    build_vdi(first, 6 * M, 4, first_uuid, first_modify, base_uuid, base_modify, first_blocks)
    first_model = bytearray(model)
    apply_layer(first_model, first_blocks)

    second_uuid, second_modify = new_uuid(), new_uuid()
    second_blocks = {0: block_of(0x31), 2: ZERO_BLOCK, 4: block_of(0x34, b"z"), 6: block_of(0x36)}
    second = snapshots / ("{%s}.vdi" % uuid.UUID(bytes_le=second_uuid))
    # The newest snapshot is larger (the disk was resized): block 7 reads zeroes past the parent's end.
    build_vdi(second, 8 * M, 4, second_uuid, second_modify, first_uuid, first_modify, second_blocks)
    second_model = bytearray(first_model) + bytearray(2 * M)
    apply_layer(second_model, second_blocks)
    return {"vm": vm, "base": base, "first": first, "second": second, "first_model": bytes(first_model),
            "second_model": bytes(second_model), "first_uuid": first_uuid, "second_uuid": second_uuid,
            "base_uuid": base_uuid}


def test_snapshot_chain_converts_to_one_qcow2(vbox_vm, tmp_path):
    """Issue 4: a VM with two snapshots (three VDIs) converts to a single
    qcow2 whose content equals the newest snapshot's view."""
    out = tmp_path / "flat.qcow2"
    diskimage.convert(str(vbox_vm["second"]), str(out), "qcow2")
    expected = tmp_path / "expected.raw"
    expected.write_bytes(vbox_vm["second_model"])
    qemu_img("compare", "-f", "qcow2", "-F", "raw", out, expected)
    check = qemu_img_json("check", out)
    assert not check.get("corruptions") and not check.get("leaks") and check["check-errors"] == 0
    info = qemu_img_json("info", out)
    assert info["virtual-size"] == 8 * M and "backing-filename" not in info


def test_middle_snapshot_and_base_views(vbox_vm, tmp_path):
    out = tmp_path / "first.raw"
    diskimage.convert(str(vbox_vm["first"]), str(out), "raw")
    assert out.read_bytes() == vbox_vm["first_model"]
    with diskimage.open_image(str(vbox_vm["second"])) as img:
        assert img.read(0, 8 * M) == vbox_vm["second_model"]
        assert img.read(M - 3, 10) == vbox_vm["second_model"][M - 3:M + 7]


def test_block_status_and_chain_info(vbox_vm):
    with chain_mod.open_driver(str(vbox_vm["second"])) as top:
        status = [(e.start, e.length, e.kind) for e in top.block_status(0, 8 * M)]
        assert status == [(0, M, DATA), (M, M, UNALLOCATED), (2 * M, M, ZERO), (3 * M, M, UNALLOCATED),
                          (4 * M, M, DATA), (5 * M, M, UNALLOCATED), (6 * M, M, DATA), (7 * M, M, UNALLOCATED)]
        assert top.backing.path == str(vbox_vm["first"].resolve())
        assert top.backing.backing.path == str(vbox_vm["base"].resolve())
        assert top.backing.backing.backing is None
    chain = diskimage.info(str(vbox_vm["second"]), backing_chain=True)
    assert [layer["virtual-size"] for layer in chain] == [8 * M, 6 * M, 6 * M]
    assert all(layer["format"] == "vdi" and layer["cluster-size"] == M for layer in chain)
    assert chain[0]["backing-filename"] == vbox_vm["first"].name
    assert chain[0]["backing-filename-format"] == "vdi"
    assert chain[1]["backing-filename"] == str(vbox_vm["base"].resolve())
    assert "backing-filename" not in chain[2]
    assert not any("warnings" in layer for layer in chain)
    top_only = diskimage.info(str(vbox_vm["second"]))
    assert top_only["backing-filename"] == vbox_vm["first"].name
    mapped = diskimage.map(str(vbox_vm["second"]))
    assert mapped[0]["start"] == 0 and mapped[-1]["start"] + mapped[-1]["length"] == 8 * M
    assert {entry["depth"] for entry in mapped if entry["data"]} == {0, 1, 2}


def test_check_of_a_differencing_image(vbox_vm):
    result = diskimage.check(str(vbox_vm["second"]))
    assert result == {"check-errors": 0, "filename": str(vbox_vm["second"]), "format": "vdi"}


def test_differencing_images_open_read_only(vbox_vm):
    with pytest.raises(UnsupportedOperation):
        diskimage.open_image(str(vbox_vm["second"]), readonly=False).read(0, 1)


def test_parent_modified_after_the_snapshot_is_a_warning(vbox_vm, tmp_path):
    # The base changes after the snapshot was taken: its modification UUID no longer matches.
    diskimage.open_image(str(vbox_vm["base"]), fmt="vdi", readonly=False).close()
    with diskimage.open_image(str(vbox_vm["base"]), fmt="vdi", readonly=False) as img:
        img.write(4 * M, b"changed")
    info = diskimage.info(str(vbox_vm["first"]))
    assert len(info["warnings"]) == 1 and "modification UUID" in info["warnings"][0]
    assert str(vbox_vm["base"].resolve()) in info["warnings"][0]
    with diskimage.open_image(str(vbox_vm["first"])) as img:
        assert img.read(4 * M, 7) == b"changed"


def test_missing_parent_names_the_uuid_and_the_directories(vbox_vm):
    vbox_vm["base"].rename(vbox_vm["vm"].parent / "elsewhere.vdi")
    with pytest.raises(ImageNotFoundError) as err:
        diskimage.info(str(vbox_vm["first"]))
    message = str(err.value)
    assert str(uuid.UUID(bytes_le=vbox_vm["base_uuid"])) in message
    assert "in %s, %s " % (vbox_vm["vm"] / "Snapshots", vbox_vm["vm"]) in message
    with pytest.raises(ImageNotFoundError):
        diskimage.convert(str(vbox_vm["second"]), str(vbox_vm["vm"] / "x.qcow2"), "qcow2")
    assert not (vbox_vm["vm"] / "x.qcow2").exists()
    # allow_dirs extends the search.
    with diskimage.open_image(str(vbox_vm["second"]), allow_dirs=[str(vbox_vm["vm"].parent)]) as img:
        assert img.read(0, 8 * M) == vbox_vm["second_model"]


def test_candidates_outside_the_allowed_directories_are_never_opened(vbox_vm, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    moved = outside / "base.vdi"
    vbox_vm["base"].rename(moved)
    # A symbolic link in the VM folder leading out of it.
    (vbox_vm["vm"] / "link.vdi").symlink_to(moved)
    opened = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        opened.append(os.path.realpath(os.fspath(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    with pytest.raises(ImageNotFoundError):
        diskimage.info(str(vbox_vm["second"]), backing_chain=True)
    assert str(moved.resolve()) not in opened
    assert opened  # the recording did see the image's own files
    monkeypatch.undo()
    with diskimage.open_image(str(vbox_vm["second"]), allow_dirs=[str(outside)]) as img:
        assert img.read(0, 8 * M) == vbox_vm["second_model"]


def test_subfolders_are_not_searched(vbox_vm):
    sibling = vbox_vm["vm"] / "Other"
    sibling.mkdir()
    vbox_vm["base"].rename(sibling / "base.vdi")
    with pytest.raises(ImageNotFoundError):
        diskimage.info(str(vbox_vm["first"]))
    assert diskimage.info(str(vbox_vm["first"]), allow_dirs=[str(sibling)])["backing-filename"] == \
        str((sibling / "base.vdi").resolve())


def test_fifos_and_devices_named_vdi_are_skipped(vbox_vm):
    fifo = vbox_vm["vm"] / "Snapshots" / "fifo.vdi"
    os.mkfifo(str(fifo))
    try:
        os.mknod(str(vbox_vm["vm"] / "null.vdi"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (OSError, AttributeError):
        pass  # no permission to make device nodes here: the FIFO still tests the rule
    with diskimage.open_image(str(vbox_vm["second"])) as img:
        assert img.read(0, 8 * M) == vbox_vm["second_model"]


def test_two_files_with_the_parent_uuid_are_ambiguous(vbox_vm):
    (vbox_vm["vm"] / "copy.vdi").write_bytes(vbox_vm["base"].read_bytes())
    with pytest.raises(FormatError) as err:
        diskimage.info(str(vbox_vm["first"]))
    assert "ambiguous" in str(err.value)


def test_parent_loop_is_refused(tmp_path):
    a_uuid, b_uuid = new_uuid(), new_uuid()
    build_vdi(tmp_path / "a.vdi", M, 4, a_uuid, new_uuid(), b_uuid)
    build_vdi(tmp_path / "b.vdi", M, 4, b_uuid, new_uuid(), a_uuid)
    with pytest.raises(FormatError) as err:
        diskimage.open_image(str(tmp_path / "a.vdi")).read(0, 1)
    assert "loop" in str(err.value)
    # An image naming itself as its parent is not its own candidate.
    alone = tmp_path / "alone"
    alone.mkdir()
    build_vdi(alone / "self.vdi", M, 4, a_uuid, new_uuid(), a_uuid)
    with pytest.raises(ImageNotFoundError):
        diskimage.open_image(str(alone / "self.vdi")).read(0, 1)


def test_chain_depth_is_bounded(tmp_path):
    uuids = [new_uuid() for level in range(chain_mod.MAX_CHAIN_DEPTH + 2)]
    build_vdi(tmp_path / "l0.vdi", M, 1, uuids[0], new_uuid())
    for level in range(1, len(uuids)):
        build_vdi(tmp_path / ("l%d.vdi" % level), M, 4, uuids[level], new_uuid(), uuids[level - 1])
    with pytest.raises(FormatError) as err:
        diskimage.open_image(str(tmp_path / ("l%d.vdi" % (len(uuids) - 1)))).read(0, 1)
    assert "longer than" in str(err.value)
    with diskimage.open_image(str(tmp_path / "l10.vdi")) as img:
        assert img.read(0, M) == bytes(M)


def test_block_extra_and_large_blocks_in_a_chain(tmp_path):
    base_uuid, base_modify = new_uuid(), new_uuid()
    big = 2 * M
    base_blocks = {0: b"\x01" * big, 2: b"\x02" * big}
    build_vdi(tmp_path / "base.vdi", 5 * M + 512, 1, base_uuid, base_modify, blocks=base_blocks, block_size=big,
              block_extra=512)
    child_blocks = {1: block_of(0x03), 4: ZERO_BLOCK}
    build_vdi(tmp_path / "child.vdi", 5 * M + 512, 4, new_uuid(), new_uuid(), base_uuid, base_modify,
              blocks=child_blocks)
    model = bytearray(5 * M + 512)
    apply_layer(model, base_blocks, big)
    apply_layer(model, child_blocks)
    with diskimage.open_image(str(tmp_path / "child.vdi")) as img:
        assert img.read(0, len(model)) == bytes(model)


# ------------------------------------------------------------------ hostile
def hostile(tmp_path, **fields):
    path = tmp_path / "hostile.vdi"
    build_vdi(path, 2 * M, 1, new_uuid(), new_uuid(), blocks={0: block_of(0x42)})
    with open(str(path), "r+b") as f:
        for offset, (fmt, value) in fields.items():
            f.seek(int(offset[1:], 16))
            f.write(struct.pack(fmt, value))
    return path


@pytest.mark.parametrize("fields, error", [
    ({"x040": ("<I", 0x12345678)}, FormatError),                   # signature
    ({"x044": ("<I", 0x00000002)}, UnsupportedFeature),            # version 0.2
    ({"x048": ("<I", 100)}, FormatError),                          # header size
    ({"x04c": ("<I", 3)}, UnsupportedFeature),                     # undo image
    ({"x04c": ("<I", 9)}, FormatError),                            # unknown type
    ({"x050": ("<I", 0x10)}, UnsupportedFeature),                  # unknown flag
    ({"x154": ("<I", 0x400)}, CorruptImageError),                  # block map overlaps the data
    ({"x154": ("<I", 0x7ffffe00)}, CorruptImageError),             # block map past the end of the file
    ({"x154": ("<I", 0x201)}, UnsupportedFeature),                 # unaligned block map
    ({"x178": ("<I", 3 * M)}, UnsupportedFeature),                 # block size not a power of two
    ({"x170": ("<Q", 5 * M)}, UnsupportedFeature),                 # disk larger than the block map
    ({"x180": ("<I", 0x3fffffff), "x170": ("<Q", 0x3fffffff * M)}, UnsupportedFeature),   # capped block map
    ({"x180": ("<I", 0x40000000)}, UnsupportedFeature),            # more blocks than VDI allows
    ({"x04c": ("<I", 4)}, CorruptImageError),                      # differencing without a parent UUID
])
def test_hostile_headers(tmp_path, fields, error):
    path = hostile(tmp_path, **fields)
    with pytest.raises(error) as err:
        diskimage.info(str(path), fmt="vdi")
    assert str(path) in str(err.value) or err.value.path == str(path)


def test_huge_block_count_is_refused_before_any_allocation(tmp_path, monkeypatch):
    path = hostile(tmp_path, x180=("<I", 20 * 1024 * 1024), x170=("<Q", 20 * 1024 * M))
    reads = []
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import _io
    real_pread = _io.ImageFile.pread

    def recording_pread(self, offset, length):
        reads.append(length)
        return real_pread(self, offset, length)

    monkeypatch.setattr(_io.ImageFile, "pread", recording_pread)
    with pytest.raises(UnsupportedFeature) as err:
        diskimage.info(str(path), fmt="vdi")
    assert "limit" in str(err.value)
    assert max(reads) <= 4096


def test_truncated_files(tmp_path):
    path = hostile(tmp_path)
    content = path.read_bytes()
    for length in (0, 100, 0x1c0, 0x204):
        path.write_bytes(content[:length])
        with pytest.raises(FormatError):
            diskimage.info(str(path), fmt="vdi")


def test_block_past_the_end_of_the_file(tmp_path):
    path = hostile(tmp_path)
    with open(str(path), "r+b") as f:
        f.seek(0x204)
        f.write(struct.pack("<I", 1))     # block 1 -> slot 1, beyond the single slot written
        f.seek(0x184)
        f.write(struct.pack("<I", 2))
    with diskimage.open_image(str(path), fmt="vdi") as img:
        assert img.read(0, 16) == b"\x42" * 16
        with pytest.raises(CorruptImageError):
            img.read(M, 16)
    assert diskimage.check(str(path), fmt="vdi").get("corruptions") == 1
    with pytest.raises(ImageError):
        diskimage.convert(str(path), str(tmp_path / "out.raw"), "raw", src_fmt="vdi")


def test_writes_to_a_virtualbox_image_with_block_extra(tmp_path):
    """VirtualBox layouts qemu-img refuses (2 MiB blocks, 512 service bytes
    before each block) are written slot by slot as VirtualBox reads them."""
    path = tmp_path / "vbox.vdi"
    big = 2 * M
    blocks = {1: b"\x05" * big}
    build_vdi(path, 6 * M, 1, new_uuid(), new_uuid(), blocks=blocks, block_size=big, block_extra=512)
    model = bytearray(6 * M)
    apply_layer(model, blocks, big)
    with diskimage.open_image(str(path), fmt="vdi", readonly=False) as img:
        img.write(5 * M - 3, b"\x06" * 6)
        img.write(big + 10, b"\x07" * 5)
    model[5 * M - 3:5 * M + 3] = b"\x06" * 6
    model[big + 10:big + 15] = b"\x07" * 5
    assert diskimage.check(str(path), fmt="vdi") == {"check-errors": 0, "filename": str(path), "format": "vdi"}
    with diskimage.open_image(str(path), fmt="vdi") as img:
        assert img.read(0, 6 * M) == bytes(model)
    content = path.read_bytes()
    offset_data = struct.unpack_from("<I", content, 0x158)[0]
    # The new block took slot 1: its service bytes are zero, then the block.
    slot = offset_data + (big + 512)
    assert content[slot:slot + 512] == bytes(512)
    assert content[slot + 512 + M - 3:slot + 512 + M + 3] == b"\x06" * 6
    assert len(content) == offset_data + 2 * (big + 512)


# ------------------------------------------- policy helpers of the UUID search
def test_policy_candidate_helpers(tmp_path):
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import policy
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import PolicyError
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.vdi").write_bytes(b"s" * 600)
    (inside / "a.vdi").write_bytes(b"a" * 600)
    (inside / "B.VDI").write_bytes(b"b" * 600)
    (inside / "notes.txt").write_bytes(b"n")
    (inside / "link.vdi").symlink_to(outside / "secret.vdi")
    (inside / "dir.vdi").mkdir()
    os.mkfifo(str(inside / "pipe.vdi"))
    dirs = [str(inside)]
    found = policy.image_candidates(dirs, (".vdi",))
    assert found == [str((inside / "B.VDI").resolve()), str((inside / "a.vdi").resolve())]
    assert policy.image_candidates(dirs, (".vdi",), exclude=found[0]) == found[1:]
    assert len(policy.image_candidates(dirs, (".vdi",), limit=1)) == 1
    assert policy.read_candidate_header(found[1], dirs, 4) == b"aaaa"
    for refused in (inside / "link.vdi", inside / "pipe.vdi", inside / "dir.vdi", outside / "secret.vdi"):
        with pytest.raises(PolicyError):
            policy.read_candidate_header(str(refused), dirs, 4)
        with pytest.raises(PolicyError):
            policy.resolve_found(str(inside / "child.vdi"), str(refused), dirs)
    assert policy.resolve_found(str(inside / "child.vdi"), found[1], dirs) == found[1]
