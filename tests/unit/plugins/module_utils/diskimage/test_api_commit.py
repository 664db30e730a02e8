# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""commit() against qemu-img commit: the backing file ends up with the former
overlay view, the overlay is emptied (unless empty=False), qemu-img check is
clean on both, and a backing file in use is never written."""

import subprocess

import pytest

from qemu_tools import file_digest, qemu_img, qemu_img_json, qemu_io, wait_until_write_locked

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageInUseError, InvalidOptionError,
)


def assert_clean(path):
    result = qemu_img_json("check", path)
    assert result.get("check-errors", 0) == 0, result
    assert "corruptions" not in result and "leaks" not in result, result


def save_view(path, out):
    qemu_img("convert", "-O", "raw", path, out)
    return out


def layer_map(path):
    """qemu-img map entries without host offsets (they differ between writers)."""
    return [dict((k, v) for k, v in entry.items() if k != "offset") for entry in qemu_img_json("map", path)]


def make_pair(directory, base_fmt="qcow2", top_options=(), base_size="4M", top_size=None):
    base = directory / ("base." + base_fmt)
    top = directory / "top.qcow2"
    qemu_img("create", "-q", "-f", base_fmt, base, base_size)
    qemu_io(base, "write -P 0x11 0 3M", "write -P 0x12 3584k 64k", fmt=base_fmt)
    args = ["create", "-q", "-f", "qcow2", "-b", base.name, "-F", base_fmt] + list(top_options) + [top]
    if top_size:
        args.append(top_size)
    qemu_img(*args)
    qemu_io(top, "write -P 0x33 1M 64k", "write -P 0x34 2052k 6k", "write -z 0 128k", "write -z 3584k 4k",
            fmt="qcow2")
    return base, top


def committed_by_qemu(tmp_path, make, args=()):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    base, top = make(theirs)
    qemu_img(*(["commit", "-f", "qcow2"] + list(args) + [top]))
    return base, top


@pytest.mark.parametrize("base_fmt", ["qcow2", "raw"])
@pytest.mark.parametrize("top_options", [(), ("-o", "compat=0.10"), ("-o", "extended_l2=on")],
                         ids=["v3", "v2", "extl2"])
def test_commit_writes_the_overlay_view_into_the_backing_and_empties_it(tmp_path, base_fmt, top_options):
    ours = tmp_path / "ours"
    ours.mkdir()
    base, top = make_pair(ours, base_fmt, top_options)
    view = save_view(top, tmp_path / "view.raw")
    their_base, their_top = committed_by_qemu(tmp_path, lambda d: make_pair(d, base_fmt, top_options))
    result = diskimage.commit(str(top))
    assert result["bytes_written"] > 0
    assert result["backing_file"] == str(base)
    qemu_img("compare", "-f", base_fmt, "-F", "raw", base, view)
    qemu_img("compare", "-f", base_fmt, "-F", base_fmt, base, their_base)
    qemu_img("compare", "-F", "raw", top, view)
    assert not [e for e in qemu_img_json("map", top) if e["depth"] == 0 and e["present"]]
    assert_clean(top)
    if base_fmt == "qcow2":
        # (a raw base's holes depend on the host's hole punching granularity)
        assert layer_map(top) == layer_map(their_top)
        assert_clean(base)


def test_commit_without_emptying_keeps_the_overlay(tmp_path):
    base, top = make_pair(tmp_path)
    view = save_view(top, tmp_path / "view.raw")
    map_before = layer_map(top)
    digest = file_digest(top)
    diskimage.commit(str(top), fmt="qcow2", empty=False)
    qemu_img("compare", "-F", "raw", base, view)
    assert layer_map(top) == map_before
    assert file_digest(top) == digest
    assert_clean(base)


def test_commit_in_a_three_deep_chain_leaves_the_bottom_alone(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "2M")
    qemu_io(base, "write -P 0x01 0 2M", fmt="qcow2")
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
    qemu_io(mid, "write -P 0x02 512k 512k", fmt="qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
    qemu_io(top, "write -P 0x03 768k 512k", "write -z 0 64k", fmt="qcow2")
    view = save_view(top, tmp_path / "view.raw")
    base_digest = file_digest(base)
    diskimage.commit(str(top))
    assert file_digest(base) == base_digest
    qemu_img("compare", "-F", "raw", mid, view)
    qemu_img("compare", "-F", "raw", top, view)
    for path in (top, mid, base):
        assert_clean(path)


def test_commit_grows_a_smaller_backing_file_as_qemu_does(tmp_path):
    def make(directory):
        base, top = make_pair(directory, top_size="6M")
        qemu_io(top, "write -P 0x66 5M 64k", fmt="qcow2")
        return base, top

    ours = tmp_path / "ours"
    ours.mkdir()
    base, top = make(ours)
    view = save_view(top, tmp_path / "view.raw")
    their_base, _their_top = committed_by_qemu(tmp_path, make)
    diskimage.commit(str(top))
    assert qemu_img_json("info", base)["virtual-size"] == qemu_img_json("info", their_base)["virtual-size"]
    qemu_img("compare", "-F", "raw", base, view)
    qemu_img("compare", base, their_base)
    assert_clean(base)
    assert_clean(top)


def test_commit_with_internal_snapshot_in_the_overlay(tmp_path):
    base, top = make_pair(tmp_path)
    qemu_img("snapshot", "-c", "s1", top)
    qemu_io(top, "write -P 0x77 2M 64k", fmt="qcow2")
    view = save_view(top, tmp_path / "view.raw")
    diskimage.commit(str(top))
    qemu_img("compare", "-F", "raw", base, view)
    assert not [e for e in qemu_img_json("map", top) if e["depth"] == 0 and e["present"]]
    assert [s["name"] for s in qemu_img_json("info", top)["snapshots"]] == ["s1"]
    assert_clean(top)
    assert_clean(base)


def test_commit_refuses_a_backing_file_in_use(tmp_path):
    base, top = make_pair(tmp_path)
    digests = (file_digest(base), file_digest(top))
    # a scripted qemu-io (not its interactive prompt, which now and then exits at once in a busy suite)
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 600000", str(base)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    try:
        wait_until_write_locked(base, holder)
        with pytest.raises(ImageInUseError):
            diskimage.commit(str(top))
    finally:
        holder.kill()
        holder.communicate(timeout=10)
    assert (file_digest(base), file_digest(top)) == digests
    assert_clean(top)


def forget_backing_format(path):
    """Turn the backing format header extension into an unknown one (ignored by
    readers): the image then names its backing file without a format."""
    with open(str(path), "r+b") as image:
        header = image.read(4096)
        at = header.index(bytes.fromhex("e2792aca"))
        image.seek(at)
        image.write(bytes.fromhex("7e57ca5e"))


def test_commit_refuses_without_backing_and_with_unrecorded_raw_format(tmp_path):
    alone = tmp_path / "alone.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", alone, "1M")
    with pytest.raises(InvalidOptionError, match="no backing file"):
        diskimage.commit(str(alone))
    raw = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top)
    qemu_io(top, "write -P 0x01 0 64k", fmt="qcow2")
    forget_backing_format(top)
    assert "backing-filename-format" not in qemu_img_json("info", top)
    digests = (file_digest(raw), file_digest(top))
    with pytest.raises(InvalidOptionError, match="probes as raw"):
        diskimage.commit(str(top))
    assert (file_digest(raw), file_digest(top)) == digests


def test_commit_into_unrecorded_but_probed_qcow2_backing(tmp_path):
    base, top = make_pair(tmp_path)
    forget_backing_format(top)
    view = save_view(top, tmp_path / "view.raw")
    diskimage.commit(str(top))
    qemu_img("compare", "-F", "raw", base, view)
    assert_clean(base)
    assert_clean(top)


def test_commit_reports_progress_up_to_the_virtual_size(tmp_path):
    base, top = make_pair(tmp_path)
    qemu_io(top, "write -P 0x44 0 3M", fmt="qcow2")
    view = save_view(top, tmp_path / "view.raw")
    calls = []
    diskimage.commit(str(top), progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4 << 20, 4 << 20)
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    qemu_img("compare", "-F", "raw", base, view)
    with pytest.raises(InvalidOptionError, match="callable"):
        diskimage.commit(str(top), progress="yes")
