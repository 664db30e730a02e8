# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rebase() against qemu-img rebase: safe mode keeps the guest view byte-identical,
unsafe mode changes the header only, flatten drops the backing file; the
recorded backing file and format equal qemu-img's, and qemu-img check is clean."""

import os
import random
import shutil

import pytest

from qemu_tools import file_digest, qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageNotFoundError, InvalidOptionError, PolicyError, UnsupportedOperation,
)

OVERLAY_OPTIONS = {
    "v3": [],
    "v2": ["-o", "compat=0.10"],
    "extl2": ["-o", "extended_l2=on"],
    "small-clusters": ["-o", "cluster_size=4096"],
}


def assert_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0, result
    assert "corruptions" not in result and "leaks" not in result, result


def save_view(path, out):
    qemu_img("convert", "-O", "raw", path, out)
    return out


def make_chain(tmp_path, overlay_kind="v3"):
    """base (4M) <- mid <- top, with data, zeroes and partial clusters at every level."""
    base, mid, top = (tmp_path / "base.qcow2", tmp_path / "mid.qcow2", tmp_path / "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0x11 0 3M", "write -P 0x12 3584k 512k", fmt="qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
    qemu_io(mid, "write -P 0x22 1M 1M", "write -z 2560k 128k", "write -P 0x23 100k 3k", fmt="qcow2")
    qemu_img(*(["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2"]
               + OVERLAY_OPTIONS[overlay_kind] + [top]))
    qemu_io(top, "write -P 0x33 1536k 64k", "write -P 0x34 3076k 8k", "write -z 200k 60k", fmt="qcow2")
    return base, mid, top


def make_other(tmp_path, size, name="other.qcow2"):
    """An unrelated backing file: same bytes as base in some places, different in others."""
    other = tmp_path / name
    qemu_img("create", "-q", "-f", "qcow2", other, size)
    qemu_io(other, "write -P 0x11 0 512k", "write -P 0x55 1M 256k", fmt="qcow2")
    return other


def rebased_by_qemu(top, tmp_path, args):
    theirs = tmp_path / "theirs-top.qcow2"
    shutil.copyfile(str(top), str(theirs))
    qemu_img(*(["rebase", "-f", "qcow2"] + args + [theirs]))
    return theirs


def backing_of(path):
    info = qemu_img_json("info", path)
    return info.get("backing-filename"), info.get("backing-filename-format")


@pytest.mark.parametrize("overlay_kind", sorted(OVERLAY_OPTIONS))
def test_safe_rebase_onto_grandparent_keeps_the_guest_view(tmp_path, overlay_kind):
    base, _mid, top = make_chain(tmp_path, overlay_kind)
    before = save_view(top, tmp_path / "before.raw")
    theirs = rebased_by_qemu(top, tmp_path, ["-b", "base.qcow2", "-F", "qcow2"])
    result = diskimage.rebase(str(top), "base.qcow2", backing_fmt="qcow2")
    assert result["bytes_written"] > 0
    qemu_img("compare", "-F", "raw", top, before)
    qemu_img("compare", top, theirs)
    assert backing_of(top) == backing_of(theirs) == ("base.qcow2", "qcow2")
    assert_clean(top)
    assert_clean(base)


@pytest.mark.parametrize("new_size", ["2M", "4M", "8M"])
def test_safe_rebase_onto_shorter_or_longer_backing(tmp_path, new_size):
    _base, _mid, top = make_chain(tmp_path)
    make_other(tmp_path, new_size)
    before = save_view(top, tmp_path / "before.raw")
    theirs = rebased_by_qemu(top, tmp_path, ["-b", "other.qcow2", "-F", "qcow2"])
    diskimage.rebase(str(top), "other.qcow2", backing_fmt="qcow2")
    qemu_img("compare", "-F", "raw", top, before)
    qemu_img("compare", top, theirs)
    assert backing_of(top) == backing_of(theirs)
    assert_clean(top)


def test_safe_rebase_onto_raw_backing(tmp_path):
    _base, _mid, top = make_chain(tmp_path)
    other = tmp_path / "other.raw"
    qemu_img("create", "-q", "-f", "raw", other, "3M")
    qemu_io(other, "write -P 0x11 0 1M", fmt="raw")
    before = save_view(top, tmp_path / "before.raw")
    theirs = rebased_by_qemu(top, tmp_path, ["-b", "other.raw", "-F", "raw"])
    diskimage.rebase(str(top), "other.raw", backing_fmt="raw")
    qemu_img("compare", "-F", "raw", top, before)
    assert backing_of(top) == backing_of(theirs) == ("other.raw", "raw")
    assert_clean(top)


@pytest.mark.parametrize("overlay_kind", ["v3", "v2"])
@pytest.mark.parametrize("name", ["", None])
def test_flatten_copies_everything_and_drops_the_backing(tmp_path, overlay_kind, name):
    _base, _mid, top = make_chain(tmp_path, overlay_kind)
    before = save_view(top, tmp_path / "before.raw")
    theirs = rebased_by_qemu(top, tmp_path, ["-b", ""])
    diskimage.rebase(str(top), name)
    qemu_img("compare", "-F", "raw", top, before)
    assert backing_of(top) == backing_of(theirs) == (None, None)
    assert_clean(top)
    # no backing left: the image reads the same alone, moved elsewhere
    alone = tmp_path / "sub"
    alone.mkdir()
    shutil.copyfile(str(top), str(alone / "top.qcow2"))
    qemu_img("compare", "-F", "raw", alone / "top.qcow2", before)


def test_rebase_three_deep_onto_unrelated_then_flatten_progress(tmp_path):
    _base, _mid, top = make_chain(tmp_path)
    make_other(tmp_path, "3M")
    before = save_view(top, tmp_path / "before.raw")
    calls = []
    diskimage.rebase(str(top), "other.qcow2", backing_fmt="qcow2", progress=lambda done, total: calls.append(
        (done, total)))
    assert calls and calls[-1] == (4 << 20, 4 << 20)
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    diskimage.rebase(str(top), "")
    qemu_img("compare", "-F", "raw", top, before)
    assert_clean(top)


def test_unsafe_rebase_changes_the_header_only(tmp_path):
    _base, _mid, top = make_chain(tmp_path)
    make_other(tmp_path, "4M")
    theirs = rebased_by_qemu(top, tmp_path, ["-u", "-b", "other.qcow2", "-F", "qcow2"])
    map_before = qemu_img_json("map", top)
    diskimage.rebase(str(top), "other.qcow2", backing_fmt="qcow2", unsafe=True)
    assert backing_of(top) == backing_of(theirs) == ("other.qcow2", "qcow2")
    qemu_img("compare", top, theirs)
    assert [e for e in qemu_img_json("map", top) if e["depth"] == 0] == \
        [e for e in map_before if e["depth"] == 0]
    assert_clean(top)


def test_unsafe_rebase_works_with_the_old_backing_gone(tmp_path):
    base, mid, top = make_chain(tmp_path)
    os.rename(str(mid), str(tmp_path / "moved.qcow2"))
    diskimage.rebase(str(top), "moved.qcow2", backing_fmt="qcow2", unsafe=True)
    assert backing_of(top) == ("moved.qcow2", "qcow2")
    assert_clean(top)
    os.unlink(str(base))
    digest = file_digest(top)
    with pytest.raises(ImageNotFoundError):
        diskimage.rebase(str(top), "")  # safe mode reads the old chain, which is now broken
    assert file_digest(top) == digest
    diskimage.rebase(str(top), "", unsafe=True)
    assert backing_of(top) == (None, None)
    assert_clean(top)


def test_unsafe_rebase_of_v2_image_and_long_name(tmp_path):
    _base, _mid, top = make_chain(tmp_path, "v2")
    name = "x" * 200 + ".qcow2"
    theirs = rebased_by_qemu(top, tmp_path, ["-u", "-b", name, "-F", "qcow2"])
    diskimage.rebase(str(top), name, backing_fmt="qcow2", unsafe=True)
    shutil.copyfile(str(_mid), str(tmp_path / name))  # qemu-img check opens the backing file
    assert backing_of(top) == backing_of(theirs) == (name, "qcow2")
    assert qemu_img_json("info", top)["format-specific"]["data"]["compat"] == "0.10"
    assert_clean(top)


def test_rebase_refusals(tmp_path):
    _base, _mid, top = make_chain(tmp_path)
    digest = file_digest(top)
    with pytest.raises(InvalidOptionError, match="backing_fmt"):
        diskimage.rebase(str(top), "base.qcow2")
    with pytest.raises(InvalidOptionError, match="backing_fmt"):
        diskimage.rebase(str(top), "", backing_fmt="qcow2")
    with pytest.raises(PolicyError):
        diskimage.rebase(str(top), "../elsewhere.qcow2", backing_fmt="qcow2")
    with pytest.raises(PolicyError):
        diskimage.rebase(str(top), "/etc/passwd", backing_fmt="raw")
    with pytest.raises(InvalidOptionError, match="leads back"):
        diskimage.rebase(str(top), "top.qcow2", backing_fmt="qcow2")
    assert file_digest(top) == digest
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    with pytest.raises(UnsupportedOperation):
        diskimage.rebase(str(raw), "base.qcow2", backing_fmt="qcow2", fmt="raw")
    with pytest.raises(UnsupportedOperation):
        diskimage.rebase(str(raw), "base.qcow2", backing_fmt="qcow2", fmt="raw", unsafe=True)


def test_rebase_allow_dirs_lets_a_backing_elsewhere_in(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _base, _mid, top = make_chain(tmp_path)
    other = make_other(elsewhere, "4M")
    before = save_view(top, tmp_path / "before.raw")
    diskimage.rebase(str(top), str(other), backing_fmt="qcow2", allow_dirs=[str(elsewhere)])
    assert backing_of(top) == (str(other), "qcow2")
    qemu_img("compare", "-F", "raw", top, before)
    assert_clean(top)


def test_rebase_onto_ancestor_below_a_shorter_layer(tmp_path):
    """base (4M) <- mid (2M: base's tail hidden) <- top (4M): onto base, the tail
    that read as zeroes must be kept as zeroes."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0x11 0 4M", fmt="qcow2")
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid, "2M")
    qemu_io(mid, "write -P 0x22 1M 64k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top, "4M")
    qemu_io(top, "write -P 0x33 3M 64k", fmt="qcow2")
    before = save_view(top, tmp_path / "before.raw")
    theirs = rebased_by_qemu(top, tmp_path, ["-b", "base.qcow2", "-F", "qcow2"])
    result = diskimage.rebase(str(top), "base.qcow2", backing_fmt="qcow2")
    assert result["bytes_written"] == 64 * 1024 + 2 * 1024 * 1024 - 64 * 1024
    qemu_img("compare", "-F", "raw", top, before)
    qemu_img("compare", top, theirs)
    assert_clean(top)


def test_rebase_and_persistent_bitmaps(tmp_path):
    """Unsafe rebase changes no data: bitmaps stay (as with qemu-img rebase -u);
    a safe rebase that writes data drops the bitmaps it does not maintain."""
    _base, _mid, top = make_chain(tmp_path)
    qemu_img("bitmap", "--add", top, "bm0")
    theirs = rebased_by_qemu(top, tmp_path, ["-u", "-b", "base.qcow2", "-F", "qcow2"])
    diskimage.rebase(str(top), "base.qcow2", backing_fmt="qcow2", unsafe=True)
    assert qemu_img_json("info", top)["format-specific"] == qemu_img_json("info", theirs)["format-specific"]
    assert [b["name"] for b in qemu_img_json("info", top)["format-specific"]["data"]["bitmaps"]] == ["bm0"]
    assert_clean(top)
    before = save_view(top, tmp_path / "before.raw")
    diskimage.rebase(str(top), "")
    assert "bitmaps" not in qemu_img_json("info", top)["format-specific"]["data"]
    qemu_img("compare", "-F", "raw", top, before)
    assert_clean(top)


def random_writes(path, rng, count, size):
    commands = []
    for _index in range(count):
        offset = rng.randrange(0, size // 512) * 512
        length = min(size - offset, rng.choice([512, 4096, 65536, 200 * 1024]))
        if rng.random() < 0.3:
            commands.append("write -z %d %d" % (offset, length))
        else:
            commands.append("write -P 0x%02x %d %d" % (rng.randrange(1, 256), offset, length))
    qemu_io(path, *commands, fmt="qcow2")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_chains_rebase_and_commit_keep_the_guest_view(tmp_path, seed):
    rng = random.Random(seed)
    size = 3 << 20
    names = ["l0.qcow2", "l1.qcow2", "l2.qcow2", "l3.qcow2"]
    for depth, name in enumerate(names):
        args = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=%d" % rng.choice([4096, 65536])]
        if depth:
            args += ["-b", names[depth - 1], "-F", "qcow2"]
        qemu_img(*(args + [tmp_path / name, str(size - rng.choice([0, 1 << 20]) if depth == 1 else size)]))
        random_writes(tmp_path / name, rng, 12, size if depth != 1 else qemu_img_json(
            "info", tmp_path / name)["virtual-size"])
    top = tmp_path / names[-1]
    other = tmp_path / "other.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", other, str(size + rng.choice([-(1 << 20), 0, 1 << 20])))
    random_writes(other, rng, 8, qemu_img_json("info", other)["virtual-size"])
    before = save_view(top, tmp_path / "before.raw")
    diskimage.rebase(str(top), rng.choice(["l0.qcow2", "l1.qcow2", "other.qcow2"]), backing_fmt="qcow2")
    qemu_img("compare", "-F", "raw", top, before)
    assert_clean(top)
    committed = diskimage.commit(str(top))
    qemu_img("compare", "-F", "raw", top, before)
    # the backing file now shows the overlay's view (it may be longer: its tail is its own)
    expected = before.read_bytes()
    backing_view = save_view(committed["backing_file"], tmp_path / "backing.raw").read_bytes()
    assert backing_view[:len(expected)] == expected
    assert_clean(top)
    assert_clean(committed["backing_file"])
    diskimage.rebase(str(top), "")
    qemu_img("compare", "-F", "raw", top, before)
    assert_clean(top)
