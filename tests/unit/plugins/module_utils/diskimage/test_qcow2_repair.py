# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 repair (check -r leaks|all, dirty images) against qemu-img check -r.

Every case damages an image made by qemu-img/qemu-io, repairs one copy with
qemu-img check -r and another with our checker, and asserts that the JSON is
the same (fixed counts and the counts of the double check after repair), that
qemu-img check finds our repaired image clean, and that qemu-img compare finds
both repaired copies identical to the guest.
"""

import json
import os
import shutil
import subprocess

import pytest

import qemu_tools
from qcow2_editing import Qcow2Editor
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_check, qcow2_layout
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, InvalidOptionError,
)

MiB = 1024 * 1024


def create(path, size="4M", *options):
    args = ["create", "-f", "qcow2"]
    if options:
        args += ["-o", ",".join(options)]
    qemu_tools.qemu_img(*(args + [path, size]))
    return path


def write(path, *commands):
    qemu_tools.qemu_io(path, *commands, fmt="qcow2")
    return path


def qemu_check(path, *options):
    """qemu-img check [-r ...] --output=json without filename and format."""
    proc = subprocess.run(["qemu-img", "check", "--output=json"] + list(options) + [str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.stdout.strip(), "qemu-img check failed (%d): %s" % (proc.returncode, proc.stderr)
    result = json.loads(proc.stdout)
    del result["filename"], result["format"]
    return result


def header_of(image_file, path):
    return qcow2_layout.parse_header(image_file.pread(0, 2 * MiB), str(path), image_file.size())


def our_repair(path, mode):
    with ImageFile(str(path), writable=True) as image_file:
        return qcow2_check.check_image(image_file, header_of(image_file, path), str(path), repair=mode)


def guest_view_equal(a, b, a_may_be_unreadable=False):
    proc = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(a), str(b)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    # 3: block status failed, 4: read failed
    if a_may_be_unreadable and proc.returncode in (3, 4) and str(a) in proc.stderr:
        return True         # the damage made the original unreadable there
    return proc.returncode == 0


def assert_repaired_like_qemu(path, mode, clean=True, qemu_fails=False):
    """Repair ``path`` with us and a copy with qemu-img; same JSON, same guest
    view (and the same as before the repair); qemu-img check clean afterwards.
    With ``qemu_fails``, qemu-img 7.2 cannot repair the damage (its overlap
    check stops the rebuild): we must, and leave a clean image."""
    path = str(path)
    before = path + ".before"
    twin = path + ".qemu"
    shutil.copyfile(path, before)
    shutil.copyfile(path, twin)
    if qemu_fails:
        proc = subprocess.run(["qemu-img", "check", "-r", mode, twin], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, check=False)
        assert proc.returncode == 1 and "ERROR writing refblock" in proc.stderr, proc.stderr
        result = our_repair(path, mode)
        messages = result.pop("messages")
        assert result["corruptions-fixed"] and "corruptions" not in result and not result["check-errors"]
    else:
        expected = qemu_check(twin, "-r", mode)
        result = our_repair(path, mode)
        messages = result.pop("messages")
        assert result == expected, "\n".join(messages[:60])
        assert guest_view_equal(twin, path)
    if clean:
        after = qemu_check(path)
        assert after["check-errors"] == 0 and "leaks" not in after and "corruptions" not in after, after
        assert guest_view_equal(before, path, a_may_be_unreadable=True)
        assert our_repair(path, mode) == dict(after, messages=[])       # nothing left to repair
    return result, messages


def _written(path, *options):
    create(path, "4M", *options)
    return write(path, "write -P 0x11 0 300k", "write -P 0x22 1M 64k", "write -P 0x33 3M 4k")


def _with_snapshot(path, *options):
    _written(path, *options)
    qemu_tools.qemu_img("snapshot", "-c", "s1", path)
    return write(path, "write -P 0x44 64k 64k")


def cluster_of(path, guest_offset):
    for extent in qemu_tools.qemu_img_json("map", "-f", "qcow2", path):
        if extent["start"] <= guest_offset < extent["start"] + extent["length"] and "offset" in extent:
            return (extent["offset"] + guest_offset - extent["start"]) // Qcow2Editor(path).cluster_size
    raise AssertionError("guest offset %d is not allocated" % guest_offset)


# -------------------------------------------------------------------- leaks
@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("refcount_bits", [1, 2, 4, 8, 16, 32, 64])
def test_leaked_clusters_freed(tmp_path, refcount_bits, mode):
    path = _written(tmp_path / "image.qcow2", "refcount_bits=%d" % refcount_bits)
    editor = Qcow2Editor(path)
    for dummy in range(3):
        editor.set_refcount(editor.append_cluster(), 1)
    result, messages = assert_repaired_like_qemu(path, mode)
    assert result["leaks-fixed"] == 3 and "leaks" not in result
    assert sum(m.startswith("Repairing cluster ") for m in messages) == 3


@pytest.mark.parametrize("refcount_bits", [2, 16, 64])
def test_refcount_too_high_on_shared_cluster(tmp_path, refcount_bits):
    path = _with_snapshot(tmp_path / "image.qcow2", "refcount_bits=%d" % refcount_bits)
    editor = Qcow2Editor(path)
    cluster = cluster_of(path, 2 * 65536)       # shared by the snapshot and the active L1
    assert editor.refcount(cluster) == 2
    editor.set_refcount(cluster, 3)
    result, _messages = assert_repaired_like_qemu(path, "leaks")
    assert result["leaks-fixed"] == 1
    assert Qcow2Editor(path).refcount(cluster) == 2


def test_leak_and_copied_flag_repaired_in_leaks_mode(tmp_path):
    """Once the refcount is right again, OFLAG_COPIED is right too."""
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount(cluster_of(path, 1 * MiB), 2)
    result, _messages = assert_repaired_like_qemu(path, "leaks")
    assert result["leaks-fixed"] == 1


def _compat_010(path):
    create(path, "4M", "compat=0.10")
    write(path, "write -P 1 0 100k", "write -z 0 64k", "write -P 2 3M 64k")
    qemu_tools.qemu_img("snapshot", "-c", "old", path)
    return write(path, "write -P 3 0 64k")


def _external_data_file(path):
    create(path, "4M", "data_file=%s" % path.with_name("data.raw"))
    return write(path, "write -P 1 0 128k", "write -z 1M 64k", "write -P 2 3M 4k")


def _compressed(path):
    source = _written(path.with_name("source.qcow2"))
    qemu_tools.qemu_img("convert", "-c", "-O", "qcow2", source, path)
    return write(path, "write -P 5 8k 8k")


@pytest.mark.parametrize("make", [_compat_010, _external_data_file, _compressed],
                         ids=["compat-0.10", "external-data-file", "compressed"])
def test_leaks_and_copied_flags_in_other_layouts(tmp_path, make):
    path = make(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount(editor.append_cluster(), 1)
    editor.set_l1_entry(0, editor.l1_entry(0) ^ qcow2_layout.OFLAG_COPIED)
    result, _messages = assert_repaired_like_qemu(path, "all")
    assert result["leaks-fixed"] == 1 and result["corruptions-fixed"] == 1


# -------------------------------------------------------------- corruptions
@pytest.mark.parametrize("refcount_bits", [2, 8, 32])
def test_refcount_too_low_raised(tmp_path, refcount_bits):
    path = _with_snapshot(tmp_path / "image.qcow2", "refcount_bits=%d" % refcount_bits)
    editor = Qcow2Editor(path)
    cluster = cluster_of(path, 2 * 65536)
    editor.set_refcount(cluster, 1)
    result, messages = assert_repaired_like_qemu(path, "all")
    assert result["corruptions-fixed"] >= 1
    assert "Repairing cluster %d refcount=1 reference=2" % cluster in messages
    assert Qcow2Editor(path).refcount(cluster) == 2


def test_refcount_too_low_is_left_by_leaks_mode(tmp_path):
    path = _with_snapshot(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount(cluster_of(path, 2 * 65536), 1)
    result, _messages = assert_repaired_like_qemu(path, "leaks", clean=False)
    assert result["corruptions"] >= 1 and "corruptions-fixed" not in result


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("table", ["l1", "l2"])
def test_oflag_copied_fixed(tmp_path, table, mode):
    path = _with_snapshot(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    if table == "l2":
        # unshared cluster loses the flag, shared one gains it
        editor.set_l2_entry(65536, editor.l2_entry(65536) & ~qcow2_layout.OFLAG_COPIED)
        editor.set_l2_entry(2 * 65536, editor.l2_entry(2 * 65536) | qcow2_layout.OFLAG_COPIED)
        fixed = 2
    else:
        editor.set_l1_entry(0, editor.l1_entry(0) ^ qcow2_layout.OFLAG_COPIED)
        fixed = 1
    result, messages = assert_repaired_like_qemu(path, mode)
    assert result["corruptions-fixed"] == fixed
    assert sum(m.startswith("Repairing OFLAG_COPIED") for m in messages) == fixed


def test_oflag_copied_fixed_in_extended_l2(tmp_path):
    path = create(tmp_path / "image.qcow2", "4M", "extended_l2=on")
    write(path, "write -P 1 0 200k", "write -P 2 2M 64k")
    editor = Qcow2Editor(path)
    editor.set_l2_entry(2 * MiB, editor.l2_entry(2 * MiB) & ~qcow2_layout.OFLAG_COPIED)
    result, _messages = assert_repaired_like_qemu(path, "all")
    assert result["corruptions-fixed"] == 1


@pytest.mark.parametrize("options", [(), ("extended_l2=on",)], ids=["standard", "extended-l2"])
def test_misaligned_preallocated_cluster_becomes_zero(tmp_path, options):
    path = create(tmp_path / "image.qcow2", "4M", *options)
    write(path, "write -P 1 0 256k", "write -z 64k 64k")
    editor = Qcow2Editor(path)
    entry = editor.l2_entry(64 * 1024)
    assert entry & qcow2_layout.L2E_OFFSET_MASK          # zero cluster keeping its host cluster
    editor.set_l2_entry(64 * 1024, entry + 512)
    result, messages = assert_repaired_like_qemu(path, "all")
    assert result["corruptions-fixed"] >= 1
    assert any(m.startswith("Repairing offset=") and "Preallocated cluster" in m for m in messages)


# --------------------------------------------------------------- rebuilds
def _misaligned_refcount_block(editor):
    editor.set_refcount_table_entry(0, editor.refcount_table_entry(0) + 512)


def _reserved_bits_in_refcount_table(editor):
    editor.set_refcount_table_entry(0, editor.refcount_table_entry(0) | 1)


def _refcount_block_referenced_twice(editor):
    editor.set_refcount_table_entry(1, editor.refcount_table_entry(0))


def _used_cluster_with_refcount_zero(editor):
    editor.set_refcount(cluster_of(editor.path, 1 * MiB), 0)


def _refcount_block_outside_image(editor):
    editor.set_refcount_table_entry(1, 64 * MiB)


# damage → whether qemu-img 7.2 fails to repair it
REBUILDS = {
    "misaligned-refcount-block": (_misaligned_refcount_block, True),
    "reserved-bits-in-refcount-table": (_reserved_bits_in_refcount_table, True),
    "refcount-block-referenced-twice": (_refcount_block_referenced_twice, False),
    "used-cluster-with-refcount-zero": (_used_cluster_with_refcount_zero, False),
    "refcount-block-outside-image": (_refcount_block_outside_image, False),
}


@pytest.mark.parametrize("damage", sorted(REBUILDS))
def test_refcount_structure_rebuilt(tmp_path, damage):
    path = _with_snapshot(tmp_path / "image.qcow2")
    damage_function, qemu_fails = REBUILDS[damage]
    damage_function(Qcow2Editor(path))
    result, messages = assert_repaired_like_qemu(path, "all", qemu_fails=qemu_fails)
    assert result["corruptions-fixed"] >= 1
    if damage != "refcount-block-outside-image":
        assert "Rebuilding refcount structure" in messages


@pytest.mark.parametrize("damage", ["used-cluster-with-refcount-zero", "reserved-bits-in-refcount-table"])
@pytest.mark.parametrize("options", [("cluster_size=512", "refcount_bits=1"),
                                     ("cluster_size=4096", "refcount_bits=64"),
                                     ("cluster_size=512", "refcount_bits=4"),
                                     ("cluster_size=1024", "refcount_bits=16")],
                         ids=["512-refcount1", "4k-refcount64", "512-refcount4", "1k-refcount16"])
def test_rebuild_with_several_refcount_blocks(tmp_path, options, damage):
    """Small clusters: the rebuilt table spans several refcount blocks."""
    path = create(tmp_path / "image.qcow2", "2M", *options)
    write(path, "write -P 1 0 1M", "write -P 2 1536k 100k")
    editor = Qcow2Editor(path)
    damage_function, qemu_fails = REBUILDS[damage]
    if damage == "used-cluster-with-refcount-zero":
        editor.set_refcount(cluster_of(path, 1536 * 1024), 0)
    else:
        damage_function(editor)
    _result, messages = assert_repaired_like_qemu(path, "all", qemu_fails=qemu_fails)
    assert "Rebuilding refcount structure" in messages


def test_rebuild_is_refused_in_leaks_mode(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    _misaligned_refcount_block(Qcow2Editor(path))
    proc = subprocess.run(["qemu-img", "check", "-r", "leaks", str(path) + ""], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode == 1 and "need to rebuild" in proc.stderr
    before = open(str(path), "rb").read()
    with pytest.raises(CorruptImageError, match="need to be rebuilt"):
        our_repair(path, "leaks")
    assert open(str(path), "rb").read() == before


# ------------------------------------------------------------ dirty images
def _dirty(path):
    """A lazy-refcounts image left dirty by a crash of qemu-io."""
    create(path, "16M", "lazy_refcounts=on")
    write(path, "write -P 0x11 4M 128k")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 1M", "-c", "write -P 0x66 8M 64k",
                    "-c", "abort", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert Qcow2Editor(path).header.dirty
    return path


def _expected_dirty_content(tmp_path):
    """The guest view qemu-io wrote, as a raw image."""
    raw = tmp_path / "expected.raw"
    qemu_tools.qemu_img("create", "-f", "raw", raw, "16M")
    qemu_tools.qemu_io(raw, "write -P 0x11 4M 128k", "write -P 0x55 0 1M", "write -P 0x66 8M 64k", fmt="raw")
    return raw


def _same_guest_view(image, raw):
    proc = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(image), str(raw)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    return proc.returncode == 0


@pytest.mark.parametrize("mode", ["all"])
def test_dirty_image_repaired_like_qemu(tmp_path, mode):
    path = _dirty(tmp_path / "image.qcow2")
    result, _messages = assert_repaired_like_qemu(path, mode)
    assert result["corruptions-fixed"] > 0
    assert not Qcow2Editor(path).header.dirty
    assert _same_guest_view(path, _expected_dirty_content(tmp_path))


def test_repair_dirty(tmp_path):
    path = _dirty(tmp_path / "image.qcow2")
    twin = tmp_path / "twin.qcow2"
    shutil.copyfile(str(path), str(twin))
    # qemu-io opening the image for writing repairs it the same way
    qemu_tools.qemu_io(twin, "read -P 0x55 0 1M", fmt="qcow2")
    with ImageFile(str(path), writable=True) as image_file:
        header, result = qcow2_check.repair_dirty(image_file, header_of(image_file, path), str(path))
    assert not header.dirty and header.refcount_table_offset == Qcow2Editor(path).header.refcount_table_offset
    assert result["corruptions-fixed"] > 0
    after = qemu_check(path)
    assert after == qemu_check(twin)
    assert after["check-errors"] == 0 and "leaks" not in after and "corruptions" not in after
    assert _same_guest_view(path, _expected_dirty_content(tmp_path))


# ---------------------------------------------------------------- interface
def test_repair_needs_a_writable_file(tmp_path):
    path = _written(tmp_path / "image.qcow2")
    with ImageFile(str(path)) as image_file:
        header = header_of(image_file, path)
        for mode in ("leaks", "all"):
            with pytest.raises(InvalidOptionError, match="opened for writing"):
                qcow2_check.check_image(image_file, header, str(path), repair=mode)
        with pytest.raises(InvalidOptionError):
            qcow2_check.check_image(image_file, header, str(path), repair="everything")


def test_clean_image_is_not_written(tmp_path):
    path = _with_snapshot(tmp_path / "image.qcow2")
    before = open(str(path), "rb").read()
    mtime = os.stat(str(path)).st_mtime_ns
    assert_repaired_like_qemu(path, "all")
    assert open(str(path), "rb").read() == before and os.stat(str(path)).st_mtime_ns == mtime


# ---------------------------------------------------------- through the API
def test_dirty_image_reads_through_the_driver(tmp_path):
    from ansible_collections.kvm.storage.plugins.module_utils import diskimage
    path = _dirty(tmp_path / "image.qcow2")
    expected = open(str(_expected_dirty_content(tmp_path)), "rb").read()
    with diskimage.open_image(str(path), fmt="qcow2") as image:
        assert image.read(0, 16 * MiB) == expected
    assert Qcow2Editor(path).header.dirty           # reading changes nothing


def test_write_to_dirty_image_repairs_it(tmp_path):
    from ansible_collections.kvm.storage.plugins.module_utils import diskimage
    path = _dirty(tmp_path / "image.qcow2")
    raw = _expected_dirty_content(tmp_path)
    with diskimage.open_image(str(path), fmt="qcow2", readonly=False) as image:
        image.write(12 * MiB, b"\x77" * 70000)
    qemu_tools.qemu_io(raw, "write -P 0x77 12M 70000", fmt="raw")
    after = qemu_check(path)
    assert after["check-errors"] == 0 and "leaks" not in after and "corruptions" not in after, after
    assert not Qcow2Editor(path).header.dirty
    assert _same_guest_view(path, raw)


def test_public_check_repairs_dirty_image_like_qemu(tmp_path):
    """diskimage.check(repair="all") → writable open → repaired as qemu-img check -r all."""
    from ansible_collections.kvm.storage.plugins.module_utils import diskimage
    path = _dirty(tmp_path / "image.qcow2")
    twin = tmp_path / "twin.qcow2"
    shutil.copyfile(str(path), str(twin))
    expected = qemu_check(twin, "-r", "all")
    result = diskimage.check(str(path), repair="all")
    assert result.pop("filename") == str(path) and result.pop("format") == "qcow2"
    result.pop("messages")
    assert result == expected and result["corruptions-fixed"] > 0
    assert guest_view_equal(twin, path)
    assert qemu_check(path) == qemu_check(twin)


@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_public_check_repairs_like_qemu(tmp_path, mode):
    from ansible_collections.kvm.storage.plugins.module_utils import diskimage
    path = _with_snapshot(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount(editor.append_cluster(), 1)
    editor.set_l1_entry(0, editor.l1_entry(0) ^ qcow2_layout.OFLAG_COPIED)
    twin = tmp_path / "twin.qcow2"
    shutil.copyfile(str(path), str(twin))
    expected = qemu_check(twin, "-r", mode)
    result = diskimage.check(str(path), repair=mode)
    del result["filename"], result["format"], result["messages"]
    assert result == expected and result["leaks-fixed"] == 1
    assert qemu_check(path) == qemu_check(twin)


# ------------------------------------------------------------ random damage
def _fuzz_base(path, cluster_size, *options):
    # no persistent bitmaps: qemu-img check -r releases them on its read-write
    # open (counted as leaks fixed) and stores them again on close
    create(path, "4M", "cluster_size=%d" % cluster_size, *options)
    write(path, "write -P 1 0 100k", "write -P 2 1M 64k", "write -z 2M 8k", "write -c -P 5 2560k 128k")
    qemu_tools.qemu_img("snapshot", "-c", "s1", path)
    return write(path, "write -P 3 4k 16k", "discard 64k 16k", "write -P 4 3M 64k")


def _metadata_offsets(path):
    """Host offsets of L1 tables, L2 tables, refcount table and blocks, snapshot table."""
    editor = Qcow2Editor(path)
    header = editor.header
    cluster_size = editor.cluster_size
    offsets = {header.l1_table_offset, header.refcount_table_offset, header.snapshots_offset}
    offsets.update(editor.refcount_table_entry(i) for i in range(header.refcount_table_clusters * cluster_size // 8))
    l1_tables = [(header.l1_table_offset, header.l1_size)]
    with open(str(path), "rb") as f:
        f.seek(header.snapshots_offset)
        l1_tables.append(tuple(int.from_bytes(f.read(n), "big") for n in (8, 4)))
    for l1_offset, l1_size in l1_tables:
        offsets.update(editor._read_u64(l1_offset + 8 * i) & qcow2_layout.L1E_OFFSET_MASK for i in range(l1_size))
    return sorted(o for o in offsets if 0 < o < os.path.getsize(str(path)))


@pytest.mark.parametrize("mode", ["leaks", "all"])
@pytest.mark.parametrize("cluster_size,options", [(4096, ()), (65536, ("extended_l2=on", "refcount_bits=4"))],
                         ids=["4k", "64k-extended-refcount4"])
def test_random_damage_repaired_like_qemu(tmp_path, cluster_size, options, mode):
    """Wherever qemu-img check -r repairs randomly damaged metadata, our
    repair gives the same JSON and the same guest view."""
    import random
    base = _fuzz_base(tmp_path / "base.qcow2", cluster_size, *options)
    with open(str(base), "rb") as f:
        pristine = f.read()
    targets = _metadata_offsets(base)
    rng = random.Random(cluster_size + len(mode))
    ours_path, theirs_path = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    compared = 0
    for case in range(25):
        image = bytearray(pristine)
        for _edit in range(rng.randint(1, 3)):
            offset = rng.choice(targets) + rng.randrange(0, 512 if rng.random() < 0.8 else cluster_size)
            offset = min(offset & ~7, len(image) - 8)
            action = rng.random()
            if action < 0.5:
                image[offset + rng.randrange(8)] ^= 1 << rng.randrange(8)
            elif action < 0.8:
                image[offset:offset + 8] = bytes(8)
            else:
                image[offset:offset + 8] = bytes(rng.randrange(256) for dummy in range(8))
        for target in (ours_path, theirs_path):
            with open(str(target), "wb") as f:
                f.write(image)
        proc = subprocess.run(["qemu-img", "check", "-r", mode, "--output=json", str(theirs_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        if not proc.stdout.strip():
            continue            # qemu-img could not repair (or open) it
        expected = json.loads(proc.stdout)
        del expected["filename"], expected["format"]
        result = our_repair(ours_path, mode)
        result.pop("messages")
        assert result == expected, "case %d: %s" % (case, proc.stderr[-3000:])
        compare = subprocess.run(["qemu-img", "compare", str(theirs_path), str(ours_path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        assert compare.returncode != 1, "case %d: guest views differ" % case
        compared += 1
    assert compared >= 15


def test_repair_writes_are_checked_for_metadata_overlap(tmp_path):
    """A repair write landing on metadata of another kind marks the image
    corrupt and stops (QEMU's overlap check)."""
    path = _with_snapshot(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    l2_table = editor.l1_entry(0) & qcow2_layout.L1E_OFFSET_MASK
    with ImageFile(str(path), writable=True) as image_file:
        header = header_of(image_file, path)
        walker = qcow2_check._Walker(image_file, header, str(path), qcow2_check.FIX_ERRORS)
        walker.compute()
        entry = image_file.pread(l2_table, 8)
        walker.write(l2_table, entry, ("active L2 table",))          # allowed: its own kind
        for offset, kind in ((header.refcount_table_offset + 8, "refcount table"), (100, "qcow2_header"),
                             (header.l1_table_offset, "active L1 table"), (header.snapshots_offset, "snapshot table")):
            with pytest.raises(CorruptImageError, match="over the %s" % kind):
                walker.write(offset, bytes(8), ("active L2 table",))
    assert Qcow2Editor(path).header.corrupt
    assert qemu_check(path)["check-errors"] == 0      # nothing was written


@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_repair_clears_the_corrupt_bit(tmp_path, mode):
    """As qemu-img check -r: a repair leaving no corruption marks the image consistent."""
    path = _written(tmp_path / "image.qcow2")
    editor = Qcow2Editor(path)
    editor.set_refcount(editor.append_cluster(), 1)
    features = editor.header.incompatible_features | qcow2_layout.INCOMPAT_CORRUPT
    editor._write(qcow2_layout.OFF_INCOMPATIBLE_FEATURES, features.to_bytes(8, "big"))
    assert Qcow2Editor(path).header.corrupt
    assert_repaired_like_qemu(path, mode)
    assert not Qcow2Editor(path).header.corrupt
    assert not Qcow2Editor(str(path) + ".qemu").header.corrupt


@pytest.mark.parametrize("mode", ["leaks", "all"])
def test_damage_repair_cannot_fix_is_still_reported_after_the_repair(tmp_path, mode):
    """An L1 entry far past the end of the file: the repair fixes the leaks around it, and the
    result (the check after the repair) still counts the corruption, as qemu-img check -r does."""
    from ansible_collections.kvm.storage.plugins.module_utils import diskimage
    path = _written(tmp_path / "image.qcow2")
    Qcow2Editor(path).set_l1_entry(0, qcow2_layout.OFLAG_COPIED | (1 << 40))
    twin = tmp_path / "twin.qcow2"
    shutil.copyfile(str(path), str(twin))
    expected = qemu_check(twin, "-r", mode)
    result = diskimage.check(str(path), repair=mode)
    del result["filename"], result["format"], result["messages"]
    assert result == expected and result["corruptions"] >= 1, (result, expected)
    after = diskimage.check(str(path))
    del after["filename"], after["format"], after["messages"]
    assert after == qemu_check(path) == qemu_check(twin)
    assert after["corruptions"] >= 1
