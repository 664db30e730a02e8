# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 consistency check against ``qemu-img check --output=json``.

Images are made by qemu-img/qemu-io; the damaged ones are edited here by the
helpers of ``Qcow2Editor``, each named for the on-disk structure it changes.
Every case asserts that our dictionary equals qemu-img's (without filename
and format) and that the findings are listed in "messages".
"""

import json
import os
import random
import struct
import subprocess

import pytest

import qemu_tools
from qcow2_editing import Qcow2Editor
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_check, qcow2_layout
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, UnsupportedOperation,
)

MiB = 1024 * 1024
SECRET = ["--object", "secret,id=sec0,data=test-passphrase"]


# ---------------------------------------------------------------------- oracle
def ours(path):
    with ImageFile(str(path)) as image_file:
        header = qcow2_layout.parse_header(image_file.pread(0, 2 * MiB), str(path), image_file.size())
        return qcow2_check.check_image(image_file, header, str(path))


# Findings worded exactly as qemu-img prints them on stderr.
EXACT_MESSAGE_PREFIXES = ("Leaked cluster ", "ERROR")


def qemu_check_with_stderr(path, image_opts=None):
    """qemu-img check --output=json, without filename and format, and its stderr lines."""
    args = ["qemu-img", "check", "--output=json"]
    args += SECRET + ["--image-opts", image_opts] if image_opts else [str(path)]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.stdout.strip(), "qemu-img check failed (%d): %s" % (proc.returncode, proc.stderr)
    result = json.loads(proc.stdout)
    del result["filename"], result["format"]
    return result, proc.stderr.splitlines()


def qemu_check(path, image_opts=None):
    return qemu_check_with_stderr(path, image_opts)[0]


def assert_same_as_qemu(path, image_opts=None):
    """Our result equals qemu-img's on every key, and the findings qemu-img
    words in a fixed way are the same lines; returns our messages."""
    result = ours(path)
    messages = result.pop("messages")
    expected, stderr = qemu_check_with_stderr(path, image_opts)
    assert result == expected, "\n".join(messages[:40])
    if expected.get("leaks") or expected.get("corruptions"):
        assert messages, "findings without messages"
    else:
        assert messages == []
    assert ([m for m in messages if m.startswith(EXACT_MESSAGE_PREFIXES)]
            == [line for line in stderr if line.startswith(EXACT_MESSAGE_PREFIXES)])
    return messages


def create(path, size="16M", *options):
    args = ["create", "-f", "qcow2"]
    if options:
        args += ["-o", ",".join(options)]
    qemu_tools.qemu_img(*(args + [path, size]))
    return path


def write(path, *commands):
    qemu_tools.qemu_io(path, *commands, fmt="qcow2")
    return path


def host_offset(path, guest_offset):
    """Host offset of a guest cluster, from qemu-img map (the oracle)."""
    for extent in qemu_tools.qemu_img_json("map", "-f", "qcow2", path):
        if extent["start"] <= guest_offset < extent["start"] + extent["length"] and "offset" in extent:
            return extent["offset"] + guest_offset - extent["start"]
    raise AssertionError("guest offset %d is not allocated in %s" % (guest_offset, path))


# ------------------------------------------------------------- clean images
def _written(path):
    create(path)
    return write(path, "write -P 0x11 0 300k", "write -P 0x22 5M 64k", "write -P 0x33 1M 4k",
                 "write -P 0x44 15M 1M")


def _compressed(path):
    source = _written(path.with_name("source.qcow2"))
    qemu_tools.qemu_img("convert", "-c", "-O", "qcow2", source, path)
    return path


def _compressed_then_written(path):
    _compressed(path)
    return write(path, "write -P 0x55 0 8k", "write -P 0x66 2M 128k")


def _snapshots(path):
    _written(path)
    qemu_tools.qemu_img("snapshot", "-c", "first", path)
    write(path, "write -P 0x77 64k 64k", "write -P 0x78 8M 256k")
    qemu_tools.qemu_img("snapshot", "-c", "second", path)
    return write(path, "write -P 0x79 0 4k")


def _zero_clusters(path):
    _written(path)
    # zeroes over allocated clusters keep their host cluster (zero flag + offset);
    # over unallocated ones they make plain zero clusters
    return write(path, "write -z 0 128k", "write -z 10M 1M", "write -z -u 5M 64k")


def _discarded(path):
    _written(path)
    return write(path, "discard 0 256k", "discard 15M 512k")


def _extended_l2(path):
    create(path, "16M", "extended_l2=on", "cluster_size=64k")
    return write(path, "write -P 0x11 0 3k", "write -P 0x22 70k 10k", "write -z 1M 64k",
                 "write -P 0x33 2M 200k", "write -z 2M 8k", "discard 2112k 64k")


def _compat_010(path):
    create(path, "16M", "compat=0.10")
    return write(path, "write -P 0x11 0 100k", "write -z 0 64k", "write -P 0x22 7M 64k")


def _compat_010_snapshots(path):
    _compat_010(path)
    qemu_tools.qemu_img("snapshot", "-c", "old", path)
    return write(path, "write -P 0x23 0 64k")


def _preallocated_metadata(path):
    create(path, "8M", "preallocation=metadata")
    return write(path, "write -P 0x11 1M 64k")


def _bitmaps(path):
    _written(path)
    qemu_tools.qemu_img("bitmap", "--add", "-f", "qcow2", path, "dirty0")
    qemu_tools.qemu_img("bitmap", "--add", "-f", "qcow2", "-g", "4096", path, "dirty1")
    # writes through qemu-io set bits, so bitmap data clusters get allocated on close
    return write(path, "write -P 0x5a 0 1M", "write -P 0x5b 9M 2M")


def _backing_overlay(path):
    base = _written(path.with_name("base.qcow2"))
    qemu_tools.qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", path)
    return write(path, "write -P 0x99 4k 4k", "write -P 0x9a 5M 128k")


def _create_with_data_file(path, *options):
    # absolute: QEMU resolves a relative data file name against its working directory
    data_file = path.with_name("data.raw")
    create(path, "8M", "data_file=%s" % data_file, *options)
    assert data_file.exists()
    return path


def _external_data_file(path):
    _create_with_data_file(path)
    return write(path, "write -P 0x11 0 128k", "write -z 1M 64k", "write -P 0x22 3M 4k")


def _external_data_file_raw(path):
    _create_with_data_file(path, "data_file_raw=on")
    return write(path, "write -P 0x11 0 128k")


def _compressed_extended_l2(path):
    source = _written(path.with_name("source.qcow2"))
    qemu_tools.qemu_img("convert", "-c", "-O", "qcow2", "-o", "extended_l2=on", source, path)
    return write(path, "write -P 0x12 8M 3k")


CLEAN_IMAGES = {
    "empty": create,
    "written": _written,
    "compressed": _compressed,
    "compressed-then-written": _compressed_then_written,
    "snapshots": _snapshots,
    "zero-clusters": _zero_clusters,
    "discarded": _discarded,
    "extended-l2": _extended_l2,
    "compat-0.10": _compat_010,
    "compat-0.10-snapshots": _compat_010_snapshots,
    "preallocation-metadata": _preallocated_metadata,
    "bitmaps": _bitmaps,
    "backing-overlay": _backing_overlay,
    "external-data-file": _external_data_file,
    "external-data-file-raw": _external_data_file_raw,
    "compressed-extended-l2": _compressed_extended_l2,
}


@pytest.mark.parametrize("kind", sorted(CLEAN_IMAGES))
def test_clean_image_matches_qemu(tmp_path, kind):
    path = CLEAN_IMAGES[kind](tmp_path / "image.qcow2")
    assert_same_as_qemu(path)
    assert "leaks" not in ours(path) and "corruptions" not in ours(path)


@pytest.mark.parametrize("refcount_bits", [1, 2, 4, 8, 16, 32, 64])
def test_refcount_widths_match_qemu(tmp_path, refcount_bits):
    path = create(tmp_path / "image.qcow2", "16M", "refcount_bits=%d" % refcount_bits)
    write(path, "write -P 1 0 200k", "write -P 2 9M 64k")
    if refcount_bits > 1:       # shared clusters need refcounts of 2
        qemu_tools.qemu_img("snapshot", "-c", "s", path)
        write(path, "write -P 3 0 64k")
    assert_same_as_qemu(path)


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536, 2 * MiB])
def test_cluster_sizes_match_qemu(tmp_path, cluster_size):
    path = create(tmp_path / "image.qcow2", "8M", "cluster_size=%d" % cluster_size)
    write(path, "write -P 1 0 5k", "write -P 2 3M 1k", "write -P 3 6M 2M")
    qemu_tools.qemu_img("snapshot", "-c", "s", path)
    write(path, "write -P 4 4k 4k")
    result = ours(path)
    assert result["allocated-clusters"] > 0
    assert_same_as_qemu(path)


def test_luks_crypto_header_is_counted(tmp_path):
    path = tmp_path / "image.qcow2"
    luks = ["-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0", path, "4M"]
    qemu_tools.qemu_img(*(["create"] + SECRET + luks))
    image_opts = "driver=qcow2,encrypt.key-secret=sec0,file.filename=%s" % path
    qemu_tools.run(*(["qemu-io"] + SECRET + ["--image-opts", image_opts, "-c", "write -P 1 0 128k"]))
    assert_same_as_qemu(path, image_opts)


def test_fragmentation_counts_match_qemu(tmp_path):
    path = create(tmp_path / "image.qcow2", "16M", "cluster_size=4096")
    # writes in reverse guest order allocate host clusters backwards
    write(path, *["write -P %d %dk 4k" % (n, 4 * (40 - n)) for n in range(40)])
    result = ours(path)
    assert result["fragmented-clusters"] > 30
    assert_same_as_qemu(path)


# -------------------------------------------------------------------- leaks
@pytest.mark.parametrize("refcount_bits", [1, 2, 4, 8, 16, 32, 64])
def test_leaked_appended_cluster(tmp_path, refcount_bits):
    path = create(tmp_path / "image.qcow2", "4M", "refcount_bits=%d" % refcount_bits)
    write(path, "write -P 1 0 64k")
    editor = Qcow2Editor(path)
    cluster = editor.append_cluster()
    editor.set_refcount(cluster, 1)
    messages = assert_same_as_qemu(path)
    assert ours(path)["leaks"] == 1
    assert "Leaked cluster %d refcount=1 reference=0" % cluster in messages


def test_leaked_extra_refcount_on_data_cluster(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    cluster = host_offset(path, 5 * MiB) // editor.cluster_size
    editor.set_refcount(cluster, 2)
    messages = assert_same_as_qemu(path)
    result = ours(path)
    # refcount 2 on a cluster flagged OFLAG_COPIED is also a corruption for qemu
    assert result["leaks"] == 1 and result["corruptions"] == 1
    assert any(m.startswith("ERROR OFLAG_COPIED data cluster") for m in messages)


@pytest.mark.parametrize("with_bitmap", [False, True])
def test_lazy_refcounts_after_abort(tmp_path, with_bitmap):
    path = create(tmp_path / "image.qcow2", "16M", "lazy_refcounts=on")
    if with_bitmap:     # the abort leaves the bitmap flagged in-use
        qemu_tools.qemu_img("bitmap", "--add", "-f", "qcow2", path, "dirty0")
        write(path, "write -P 3 12M 1M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "write -P 2 8M 64k", "-c", "abort",
                    str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert Qcow2Editor(path).header.dirty
    assert_same_as_qemu(path)
    assert ours(path)["corruptions"] > 0


# -------------------------------------------------------------- corruptions
def test_used_cluster_with_refcount_zero(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    cluster = host_offset(path, 1 * MiB) // editor.cluster_size
    editor.set_refcount(cluster, 0)
    messages = assert_same_as_qemu(path)
    assert "ERROR cluster %d refcount=0 reference=1" % cluster in messages


def test_two_l2_entries_share_a_cluster(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    leaked = editor.l2_entry(64 * 1024)
    editor.set_l2_entry(64 * 1024, editor.l2_entry(0))
    messages = assert_same_as_qemu(path)
    result = ours(path)
    assert result["corruptions"] >= 1 and result["leaks"] == 1
    cluster = (leaked & qcow2_layout.L2E_OFFSET_MASK) // editor.cluster_size
    assert "Leaked cluster %d refcount=1 reference=0" % cluster in messages


def test_l2_oflag_copied_cleared(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    entry = editor.l2_entry(5 * MiB)
    editor.set_l2_entry(5 * MiB, entry & ~qcow2_layout.OFLAG_COPIED)
    messages = assert_same_as_qemu(path)
    assert ours(path)["corruptions"] == 1
    assert messages == ["ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=1"
                        % (entry & ~qcow2_layout.OFLAG_COPIED)]


def test_l1_oflag_copied_cleared(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_l1_entry(0, editor.l1_entry(0) & ~qcow2_layout.OFLAG_COPIED)
    messages = assert_same_as_qemu(path)
    assert messages[0].startswith("ERROR OFLAG_COPIED L2 cluster: l1_index=0")


def test_l2_table_beyond_end_of_file(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_l1_entry(0, qcow2_layout.OFLAG_COPIED | (64 * MiB))
    messages = assert_same_as_qemu(path)
    assert any("exceeding the end of the file" in m for m in messages)


def test_l2_table_misaligned(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_l1_entry(0, editor.l1_entry(0) + 512)
    messages = assert_same_as_qemu(path)
    assert any("Table is not cluster aligned" in m for m in messages)


def test_data_cluster_misaligned_and_reserved_bits(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_l2_entry(0, editor.l2_entry(0) + 512)
    editor.set_l2_entry(64 * 1024, editor.l2_entry(64 * 1024) | 2)
    messages = assert_same_as_qemu(path)
    assert any("Data cluster is not properly aligned" in m for m in messages)
    assert any("reserved bits set" in m for m in messages)


def test_compressed_cluster_with_copied_flag(tmp_path):
    path = _compressed(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_l2_entry(0, editor.l2_entry(0) | qcow2_layout.OFLAG_COPIED)
    messages = assert_same_as_qemu(path)
    assert any("copied flag must never be set for compressed clusters" in m for m in messages)


def test_refcount_block_missing_from_table(tmp_path):
    """Clusters whose refcount block is gone read refcount 0."""
    path = create(tmp_path / "image.qcow2", "4M", "cluster_size=512", "refcount_bits=64")
    write(path, "write -P 1 0 200k")
    editor = Qcow2Editor(path)
    editor.set_refcount_table_entry(3, 0)
    messages = assert_same_as_qemu(path)
    assert ours(path)["corruptions"] >= 64
    assert any(m.startswith("ERROR cluster ") for m in messages)


def test_refcount_table_entry_with_reserved_bits(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount_table_entry(0, editor.refcount_table_entry(0) | 1)
    messages = assert_same_as_qemu(path)
    assert "ERROR refcount table entry 0 has reserved bits set" in messages


def test_refcount_block_misaligned_is_a_check_error(tmp_path):
    """QEMU cannot read refcounts through a refcount block pointer inside a
    cluster: one check error per cluster it covers."""
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount_table_entry(0, editor.refcount_table_entry(0) + 512)
    messages = assert_same_as_qemu(path)
    assert ours(path)["check-errors"] > 0
    assert "ERROR refcount block 0 is not cluster aligned; refcount table entry corrupted" in messages


def test_refcount_block_outside_image(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount_table_entry(1, 1 << 30)
    messages = assert_same_as_qemu(path)
    assert "ERROR refcount block 1 is outside image" in messages


def test_refcount_block_referenced_twice(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount_table_entry(1, editor.refcount_table_entry(0))
    messages = assert_same_as_qemu(path)
    assert "ERROR refcount block 1 refcount=2" in messages


def test_extended_l2_subcluster_bitmaps(tmp_path):
    path = create(tmp_path / "image.qcow2", "4M", "extended_l2=on")
    write(path, "write -P 1 0 128k")
    editor = Qcow2Editor(path)
    # subcluster allocation bitmap: second half of the extended L2 entry
    unallocated_bitmap = editor.l2_entry_offset(5 * 65536) + 8
    editor._write_u64(unallocated_bitmap, 1)
    allocated_bitmap = editor.l2_entry_offset(0) + 8
    editor._write_u64(allocated_bitmap, editor._read_u64(allocated_bitmap) | (1 << 32))
    messages = assert_same_as_qemu(path)
    assert ours(path)["corruptions"] == 2
    assert "ERROR: Unallocated cluster has non-zero subcluster allocation map" in messages


@pytest.mark.parametrize("options", [(), ("extended_l2=on",)], ids=["standard", "extended-l2"])
def test_l2_table_cut_by_end_of_file(tmp_path, options):
    """An L2 table whose first entry is the last 8 bytes of the file."""
    path = create(tmp_path / "image.qcow2", "4M", *options)
    write(path, "write -P 1 0 64k", "write -P 2 1M 64k")
    editor = Qcow2Editor(path)
    size = os.path.getsize(str(path))
    assert size % editor.cluster_size == 0
    editor._write(size, struct.pack(">Q", editor.l2_entry(0)))         # L2 entry 0, and EOF
    editor.set_l1_entry(0, qcow2_layout.OFLAG_COPIED | size)
    assert_same_as_qemu(path)


def test_refcount_overflow_with_one_bit_refcounts(tmp_path):
    path = create(tmp_path / "image.qcow2", "4M", "refcount_bits=1")
    write(path, "write -P 1 0 128k")
    editor = Qcow2Editor(path)
    editor.set_l2_entry(64 * 1024, editor.l2_entry(0))
    messages = assert_same_as_qemu(path)
    assert any(m.startswith("ERROR: overflow cluster offset=") for m in messages)


def test_snapshot_l1_misaligned(tmp_path):
    path = _snapshots(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    # first snapshot table entry: l1_table_offset is its first field
    offset = editor.header.snapshots_offset
    editor._write_u64(offset, editor._read_u64(offset) + 512)
    messages = assert_same_as_qemu(path)
    assert any("L1 table is not cluster aligned; snapshot table entry corrupted" in m for m in messages)


def _l1_entry_without_offset(editor):
    # only OFLAG_COPIED set: QEMU reads the header cluster as an L2 table
    editor.set_l1_entry(0, qcow2_layout.OFLAG_COPIED)


def _l1_entry_reserved_bits(editor):
    editor.set_l1_entry(0, editor.l1_entry(0) | 2)


def _zero_cluster_reserved_bits(editor):
    editor.set_l2_entry(7 * 65536, qcow2_layout.OFLAG_ZERO | 4)


def _file_truncated_inside_last_cluster(editor):
    os.truncate(editor.path, os.path.getsize(editor.path) - 32768)


def _file_truncated_by_more_than_a_cluster(editor):
    os.truncate(editor.path, os.path.getsize(editor.path) - 65536 - 4096)


DAMAGE = {
    "l1-entry-without-offset": _l1_entry_without_offset,
    "l1-entry-reserved-bits": _l1_entry_reserved_bits,
    "zero-cluster-reserved-bits": _zero_cluster_reserved_bits,
    "file-truncated-inside-last-cluster": _file_truncated_inside_last_cluster,
    "file-truncated-by-more-than-a-cluster": _file_truncated_by_more_than_a_cluster,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_image_matches_qemu(tmp_path, damage):
    path = create(tmp_path / "image.qcow2", "4M")
    write(path, "write -P 1 0 128k", "write -P 2 3M 64k")
    DAMAGE[damage](Qcow2Editor(path))
    assert_same_as_qemu(path)


@pytest.mark.parametrize("virtual_size", [3 * 65536 + 100, 3 * 65536 + 600])
def test_virtual_size_not_a_multiple_of_512(tmp_path, virtual_size):
    path = create(tmp_path / "image.qcow2", "1M")
    Qcow2Editor(path)._write(qcow2_layout.OFF_SIZE, struct.pack(">Q", virtual_size))    # header "size"
    assert_same_as_qemu(path)


def test_compressed_image_truncated_inside_last_cluster(tmp_path):
    path = _compressed(tmp_path / "image.qcow2")
    os.truncate(str(path), os.path.getsize(str(path)) - 100)
    assert_same_as_qemu(path)


def test_snapshot_entry_without_disk_size_in_v3(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    qemu_tools.qemu_img("snapshot", "-c", "only", path)
    editor = Qcow2Editor(path)
    # snapshot table entry: extra_data_size is the last field of the fixed part
    extra_data_size = editor.header.snapshots_offset + qcow2_layout.SNAPSHOT_HEADER.size - 4
    with open(str(path), "rb") as f:
        f.seek(extra_data_size)
        assert struct.unpack(">I", f.read(4))[0] >= 16
    editor._write(extra_data_size, struct.pack(">I", 8))
    messages = assert_same_as_qemu(path)
    assert "ERROR snapshot table entry 0 is incomplete" in messages


# ------------------------------------------------------- random damage
def _metadata_offsets(path):
    """Host offsets of the metadata structures: L1 tables (active and snapshot),
    L2 tables, refcount table and blocks, snapshot table, bitmap directory and tables."""
    editor = Qcow2Editor(path)
    header = editor.header
    with open(str(path), "rb") as f:
        image = f.read()

    def u64(offset):
        return struct.unpack_from(">Q", image, offset)[0]

    offsets = [header.l1_table_offset, header.refcount_table_offset]
    offsets += [u64(header.refcount_table_offset + 8 * i)
                for i in range(header.refcount_table_clusters * editor.cluster_size // 8)]
    l1_tables = [(header.l1_table_offset, header.l1_size)]
    if header.nb_snapshots:
        offsets.append(header.snapshots_offset)
        l1_tables.append(struct.unpack_from(">QI", image, header.snapshots_offset))
    for l1_offset, l1_size in l1_tables:
        offsets += [u64(l1_offset + 8 * i) & qcow2_layout.L1E_OFFSET_MASK for i in range(l1_size)]
    if header.bitmaps:
        offsets += [header.bitmaps[2], u64(header.bitmaps[2])]
    return sorted(set(o for o in offsets if 0 < o < len(image)))


def _fuzz_base(path, cluster_size, *options):
    create(path, "4M", "cluster_size=%d" % cluster_size, *options)
    write(path, "write -P 1 0 100k", "write -P 2 1M 64k", "write -z 2M 8k", "write -c -P 5 2560k 128k")
    qemu_tools.qemu_img("snapshot", "-c", "s1", path)
    write(path, "write -P 3 4k 16k", "discard 64k 16k")
    qemu_tools.qemu_img("bitmap", "--add", "-f", "qcow2", path, "b0")
    return write(path, "write -P 4 3M 64k")


@pytest.mark.parametrize("cluster_size,options", [
    (4096, ()), (512, ("refcount_bits=64",)), (65536, ("extended_l2=on", "refcount_bits=4")),
], ids=["4k", "512-refcount64", "64k-extended-refcount4"])
def test_random_metadata_damage_matches_qemu(tmp_path, cluster_size, options):
    """Flip bits, zero or scramble words inside the metadata; wherever qemu-img
    check gives a result, ours is the same."""
    base = _fuzz_base(tmp_path / "base.qcow2", cluster_size, *options)
    clean = assert_same_as_qemu(base) == [] and ours(base)
    assert clean["compressed-clusters"] and clean["fragmented-clusters"]
    with open(str(base), "rb") as f:
        pristine = f.read()
    targets = _metadata_offsets(base)
    rng = random.Random(cluster_size)
    path = tmp_path / "damaged.qcow2"
    compared = 0
    for _case in range(40):
        image = bytearray(pristine)
        for _edit in range(rng.randint(1, 3)):
            offset = rng.choice(targets) + rng.randrange(0, min(512, cluster_size) if rng.random() < 0.8 else cluster_size)
            offset = min(offset & ~7, len(image) - 8)
            action = rng.random()
            if action < 0.5:
                image[offset + rng.randrange(8)] ^= 1 << rng.randrange(8)
            elif action < 0.8:
                image[offset:offset + 8] = bytes(8)
            else:
                image[offset:offset + 8] = bytes(rng.randrange(256) for dummy in range(8))
        with open(str(path), "wb") as f:
            f.write(image)
        proc = subprocess.run(["qemu-img", "check", "--output=json", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        if not proc.stdout.strip():
            continue            # qemu-img could not open the image at all
        expected = json.loads(proc.stdout)
        del expected["filename"], expected["format"]
        result = ours(path)
        messages = result.pop("messages")
        assert result == expected, "case %d: %s" % (_case, proc.stderr[:2000])
        assert ([m for m in messages if m.startswith(EXACT_MESSAGE_PREFIXES)]
                == [line for line in proc.stderr.splitlines() if line.startswith(EXACT_MESSAGE_PREFIXES)])
        compared += 1
    assert compared >= 30


def _qemu_img_check_fails(path):
    proc = subprocess.run(["qemu-img", "check", "--output=json", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    return proc.returncode == 1 and proc.stderr


def test_snapshot_extra_data_too_large_fails_the_check(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    qemu_tools.qemu_img("snapshot", "-c", "only", path)
    editor = Qcow2Editor(path)
    # snapshot table entry: extra_data_size, the last field of the fixed part
    editor._write(editor.header.snapshots_offset + qcow2_layout.SNAPSHOT_HEADER.size - 4, struct.pack(">I", 2048))
    assert "Too much extra metadata" in _qemu_img_check_fails(path)
    with pytest.raises(CorruptImageError, match="snapshot table entry 0: extra data"):
        ours(path)


def test_invalid_bitmap_directory_entry_fails_the_check(tmp_path):
    path = _bitmaps(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    _nb_bitmaps, _size, directory = editor.header.bitmaps
    editor._write(directory + 16, b"\x07")        # bitmap directory entry 0: type
    assert _qemu_img_check_fails(path)
    with pytest.raises(CorruptImageError, match="bitmap directory: entry 0 is invalid"):
        ours(path)


# ---------------------------------------------------------------- interface
def test_public_check_uses_this_checker(tmp_path):
    """diskimage.ops.check → Qcow2Driver.check → check_image, filename/format added."""
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import check as check_op
    path = create(tmp_path / "image.qcow2", "4M")
    write(path, "write -P 1 0 64k")
    editor = Qcow2Editor(path)
    editor.set_refcount(editor.append_cluster(), 1)
    result = check_op.check(str(path))
    assert result.pop("filename") == str(path) and result.pop("format") == "qcow2"
    assert result.pop("messages")
    assert result == qemu_check(path)


def test_compute_references_counts_shared_clusters(tmp_path):
    path = _snapshots(tmp_path / "image.qcow2")
    shared = host_offset(path, 5 * MiB)
    with ImageFile(str(path)) as image_file:
        header = qcow2_layout.parse_header(image_file.pread(0, 65536), str(path), image_file.size())
        references = qcow2_check.compute_references(image_file, header, str(path))
    editor = Qcow2Editor(path)
    cluster = shared // editor.cluster_size
    assert references.counts[cluster] == editor.refcount(cluster) == 3
    assert references.counts[0] == 1                 # the header
    assert references.nb_clusters == -(-os.path.getsize(str(path)) // editor.cluster_size)


def test_absurd_file_size_is_refused(tmp_path, monkeypatch):
    path = write(create(tmp_path / "image.qcow2", "1M", "cluster_size=512"), "write 0 64k")
    assert os.path.getsize(str(path)) > 16 * 512
    monkeypatch.setattr(qcow2_check, "MAX_CHECK_CLUSTERS", 16)
    with pytest.raises(UnsupportedOperation, match="at most 16 cluster"):
        ours(path)


def test_messages_are_capped(tmp_path, monkeypatch):
    path = create(tmp_path / "image.qcow2", "16M", "lazy_refcounts=on")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "abort", str(path)],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    findings = len(ours(path)["messages"])
    assert findings > 5
    monkeypatch.setattr(qcow2_check, "MAX_MESSAGES", 3)
    result = ours(path)
    assert result["messages"][3] == "... and %d more findings not listed" % (findings - 3)
    assert len(result["messages"]) == 4 and result["corruptions"] == findings


def test_messages_are_json_serialisable(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    Qcow2Editor(path).set_refcount(host_offset(path, 0) // 65536, 0)
    result = ours(path)
    assert json.loads(json.dumps(result)) == result
