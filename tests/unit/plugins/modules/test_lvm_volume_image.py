# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""lvm_volume_image: pure logic (sizes, tags, plans, reports, errors), then the
backend against real lvm2 on a loop device (lvm_testbed), checked with qemu-img."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import shutil
import subprocess

import pytest

import components

from lvm_testbed import FakeModule, lvm_testbed, make_thin_pool  # noqa: F401  pylint: disable=unused-import

from ansible_collections.kvm.storage.plugins.module_utils import _lvm
from ansible_collections.kvm.storage.plugins.module_utils import _lvm_volume_image as lvi

MIB = 1024 * 1024
QEMU_IMG = shutil.which("qemu-img")
needs_qemu_img = components.needs(QEMU_IMG is not None, "qemu-img")


# ------------------------------------------------------------------ sizes
def test_raw_size_defaults_to_virtual_size_rounded_up_to_extents():
    assert lvi.volume_size("raw", 5 * MIB + 1, None, 4 * MIB) == (8 * MIB, 5 * MIB + 1)
    assert lvi.volume_size("raw", 8 * MIB, None, 4 * MIB) == (8 * MIB, 8 * MIB)


def test_qcow2_size_defaults_to_measure_required():
    assert lvi.volume_size("qcow2", 64 * MIB, 3 * MIB + 5, MIB) == (4 * MIB, 3 * MIB + 5)


def test_requested_size_is_rounded_and_must_hold_the_image():
    assert lvi.volume_size("raw", 5 * MIB, None, 4 * MIB, requested=9 * MIB) == (12 * MIB, 5 * MIB)
    with pytest.raises(lvi.VolumeImageError, match=r"size 1048576 is too small: a raw volume .* at least 5242880"):
        lvi.volume_size("raw", 5 * MIB, None, 4 * MIB, requested=MIB)
    with pytest.raises(lvi.VolumeImageError, match="qemu-img measure"):
        lvi.volume_size("qcow2", 5 * MIB, 2 * MIB, 4 * MIB, requested=MIB)


# ------------------------------------------------------------------- tags
def test_tags_round_trip_and_are_valid_lvm_tags():
    tags = lvi.encode_tags("qcow2", 12345, "ab" * 32, "cd" * 16)
    assert all(_lvm.check_tag(tag) is None for tag in tags)
    held = lvi.decode_tags(tags + ["someone_else"])
    assert held == {"ours": True, "writing": False, "complete": True, "format": "qcow2", "virtual_size": 12345,
                    "sha256": "ab" * 32, "source": "cd" * 16}


def test_tags_of_an_interrupted_write_are_incomplete():
    held = lvi.decode_tags(lvi.encode_tags("raw", 1, "00", "11") + [lvi.TAG_WRITING])
    assert held["ours"] and held["writing"] and not held["complete"]
    assert lvi.held_content(held) == "incomplete"


def test_foreign_tags_are_not_ours():
    held = lvi.decode_tags(["backup", "owner=ops"])
    assert not held["ours"] and not held["complete"]
    assert lvi.held_content(held) == "unknown (not written by this module)"


def test_tag_and_name_checks():
    assert _lvm.check_tag("-x") is not None
    assert _lvm.check_tag("a,b") is not None
    assert _lvm.check_lv_name("web_tdata") is not None
    assert "reserves" in _lvm.check_lv_name("snapshot1")
    assert _lvm.check_lv_name("web1-root") is None
    assert "volume group" in _lvm.check_vg_name("bad name")


# ---------------------------------------------------------------- reports
def test_parse_report_joins_every_section():
    text = json.dumps({"report": [{"lv": [{"lv_name": "a"}]}, {"lv": [{"lv_name": "b"}]}]})
    assert [row["lv_name"] for row in _lvm.parse_report(text)] == ["a", "b"]


@pytest.mark.parametrize("text, message", [
    ("not json", "cannot parse the JSON report of lvs"),
    ('{"other": []}', 'no "report" list'),
    ('{"report": [{"lv": ["x"]}]}', "unexpected report from lvs"),
])
def test_parse_report_errors_name_the_command(text, message):
    with pytest.raises(_lvm.LvmError, match=message):
        _lvm.parse_report(text, cmd="lvs")


def test_normalize_lv_types_sizes_tags_and_activity():
    row = {"lv_name": "a", "vg_name": "v", "lv_path": "/dev/v/a", "lv_size": "8388608", "lv_tags": "z,b",
           "lv_attr": "Vwi-a-tz--", "segtype": "thin", "pool_lv": "pool", "origin": "", "lv_uuid": "u"}
    lv = _lvm.normalize_lv(row)
    assert lv["size"] == 8388608 and lv["tags"] == ["b", "z"] and lv["pool"] == "pool" and lv["active"] is True
    assert _lvm.normalize_lv(dict(row, lv_attr="-wi-XX----"))["active"] is None
    with pytest.raises(_lvm.LvmError, match="unexpected lv_size '8.00m'"):
        _lvm.normalize_lv(dict(row, lv_size="8.00m"), "lvs")


class StubModule:
    def __init__(self, rc, out, err):
        self.result = (rc, out, err)
        self.calls = []

    def get_bin_path(self, name, required=False):
        return "/usr/sbin/" + name

    def run_command(self, args, environ_update=None):
        self.calls.append((args, environ_update))
        return self.result


def test_failing_command_shows_the_command_line_and_stderr():
    module = StubModule(5, "", "  Volume group \"nope\" not found\n")
    with pytest.raises(_lvm.LvmError) as info:
        _lvm.Lvm(module).resize("nope", "lv", 4 * MIB)
    assert str(info.value) == 'lvresize --yes -L 4194304b nope/lv failed (rc 5): Volume group "nope" not found'
    assert info.value.rc == 5 and info.value.cmd.startswith("/usr/sbin/lvresize ")
    assert module.calls[0][1]["LVM_SUPPRESS_FD_WARNINGS"] == "1"


def test_reports_ask_for_json_in_bytes():
    row = {"vg_name": "v", "vg_extent_size": "4194304", "vg_free": "0", "vg_size": "8388608"}
    module = StubModule(0, json.dumps({"report": [{"vg": [row]}]}), "")
    assert _lvm.Lvm(module).vg("v") == {"name": "v", "extent_size": 4194304, "free": 0, "size": 8388608}
    args = module.calls[0][0]
    assert args[:8] == ["/usr/sbin/vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                        ",".join(_lvm.VG_FIELDS)]
    assert _lvm.Lvm(module).vg("other") is None


def test_thin_create_and_snapshot_command_lines():
    module = StubModule(0, "", "")
    lvm = _lvm.Lvm(module)
    lvm.create("v", "a", 8 * MIB, thinpool="pool", tags=["t1"])
    lvm.snapshot("v", "a", "a_snap", thin=True)
    lvm.snapshot("v", "b", "b_snap", thin=False)
    assert [call[0][1:] for call in module.calls] == [
        ["-n", "a", "--yes", "--addtag", "t1", "-V", "8388608b", "--thinpool", "pool", "v"],
        ["--yes", "-s", "-n", "a_snap", "v/a"],
        ["--yes", "-s", "-n", "b_snap", "-l", "100%ORIGIN", "v/b"],
    ]


# ------------------------------------------------------------------- plans
SOURCE = {"format": "qcow2", "virtual_size": 16 * MIB, "fingerprint": "f1"}


def request(**changes):
    base = dict(format="raw", size=16 * MIB, size_given=False, thinpool=None, update=False, force=False, resize=True,
                shrink=False, snapshot_before_write=False, src="/img")
    base.update(changes)
    return base


def volume(tags, size=16 * MIB, pool=None):
    return {"vg": "v", "name": "a", "size": size, "tags": tags, "pool": pool, "segtype": "linear", "path": "/dev/v/a"}


def no_hash():
    raise AssertionError("the source must not be hashed when its fingerprint is unchanged")


def steps(plan):
    return [step for step, detail in plan["steps"]]


def test_plan_new_volume_creates_and_writes():
    plan = lvi.plan_present(None, SOURCE, request(), no_hash)
    assert steps(plan) == ["create", "write"] and plan["new_size"] == 16 * MIB


def test_plan_unchanged_fingerprint_does_nothing_without_reading():
    lv = volume(lvi.encode_tags("raw", 16 * MIB, "aa", "f1"))
    assert lvi.plan_present(lv, SOURCE, request(force=True, update=True), no_hash)["steps"] == []


def test_plan_changed_fingerprint_same_content_does_nothing():
    lv = volume(lvi.encode_tags("raw", 16 * MIB, "aa", "f0"))
    plan = lvi.plan_present(lv, SOURCE, request(), lambda: "aa")
    assert plan["steps"] == [] and plan["sha256"] == "aa"


def test_plan_changed_content_needs_update():
    lv = volume(lvi.encode_tags("raw", 16 * MIB, "aa", "f0"))
    with pytest.raises(lvi.VolumeImageError, match=r"v/a holds another image \(content sha256 aa, source bb\); "
                                                   r"update: true"):
        lvi.plan_present(lv, SOURCE, request(), lambda: "bb")
    plan = lvi.plan_present(lv, SOURCE, request(update=True, snapshot_before_write=True), lambda: "bb")
    assert steps(plan) == ["snapshot", "write"]


def test_plan_format_change_is_a_changed_image():
    lv = volume(lvi.encode_tags("raw", 16 * MIB, "aa", "f1"))
    with pytest.raises(lvi.VolumeImageError, match="format raw, requested qcow2"):
        lvi.plan_present(lv, SOURCE, request(format="qcow2"), no_hash)
    assert steps(lvi.plan_present(lv, SOURCE, request(format="qcow2", force=True), no_hash)) == ["write"]


def test_plan_foreign_volume_needs_force():
    with pytest.raises(lvi.VolumeImageError, match="not written by this module .* force: true overwrites it"):
        lvi.plan_present(volume(["backup"]), SOURCE, request(update=True), no_hash)
    plan = lvi.plan_present(volume(["backup"]), SOURCE, request(force=True, snapshot_before_write=True), no_hash)
    assert steps(plan) == ["snapshot", "write"]


def test_plan_interrupted_write_is_rewritten_without_update():
    plan = lvi.plan_present(volume([lvi.TAG_WRITING]), SOURCE, request(), no_hash)
    assert plan["steps"] == [("write", "the previous write did not complete")]


def test_plan_grows_and_zeroes_the_new_end_of_a_raw_volume():
    lv = volume(lvi.encode_tags("raw", 16 * MIB, "aa", "f1"), size=16 * MIB)
    plan = lvi.plan_present(lv, SOURCE, request(size=32 * MIB, size_given=True), no_hash)
    assert plan["steps"] == [("resize", (16 * MIB, 32 * MIB)), ("zero_tail", (16 * MIB, 32 * MIB))]
    with pytest.raises(lvi.VolumeImageError, match="resize: true grows it"):
        lvi.plan_present(lv, SOURCE, request(size=32 * MIB, size_given=True, resize=False), no_hash)


def test_plan_grow_only_unless_shrink():
    lv = volume(lvi.encode_tags("raw", 16 * MIB, "aa", "f1"), size=32 * MIB)
    assert lvi.plan_present(lv, SOURCE, request(size_given=True), no_hash)["steps"] == []
    plan = lvi.plan_present(lv, SOURCE, request(size_given=True, shrink=True), no_hash)
    assert plan["steps"] == [("resize", (32 * MIB, 16 * MIB))]
    qcow2 = volume(lvi.encode_tags("qcow2", 16 * MIB, "aa", "f1"), size=32 * MIB)
    with pytest.raises(lvi.VolumeImageError, match="shrinking a qcow2 volume means rewriting it"):
        lvi.plan_present(qcow2, SOURCE, request(format="qcow2", size_given=True, shrink=True), no_hash)


def test_plan_refuses_a_volume_outside_the_requested_pool():
    with pytest.raises(lvi.VolumeImageError, match="not as a thin volume of pool pool0"):
        lvi.plan_present(volume([]), SOURCE, request(thinpool="pool0"), no_hash)


# ------------------------------------------------------- real lvm2 testbed
def qemu_img(*args):
    proc = subprocess.run([QEMU_IMG] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


def make_source(path, fmt="qcow2", seed=b"a"):
    """A 6 MiB image with data, a zero cluster written explicitly and holes (qemu-io)."""
    raw = str(path) + ".raw"
    with open(raw, "wb") as stream:
        stream.truncate(6 * MIB)
        stream.seek(0)
        stream.write(seed * 100000)
        stream.seek(3 * MIB + 512)
        stream.write(b"tail" + seed * 5000)
        stream.seek(5 * MIB)
        stream.write(bytes(65536))
    rc, out = qemu_img("convert", "-f", "raw", "-O", fmt, raw, str(path))
    assert rc == 0, out
    os.unlink(raw)
    return str(path)


def params(vg, src, **changes):
    base = dict(vg=vg, lv="img1", src=src, src_format=None, size=None, format="raw", thinpool=None,
                state="present", resize=True, shrink=False, update=False, force=False, snapshot_before_write=False,
                allow_dirs=[])
    base.update(changes)
    return base


def run(check_mode=False, **kwargs):
    module = FakeModule(params(**kwargs), check_mode=check_mode)
    return lvi.VolumeImage(module).run(), module


def poison_free_space(testbed, size_mib):
    """Fill the VG's first free extents with 0xAA (through a temporary LV), so old data would show."""
    testbed.lvm("lvcreate", "-n", "poison", "-L", "%dm" % size_mib, testbed.vg)
    with open("/dev/%s/poison" % testbed.vg, "r+b") as stream:
        stream.write(b"\xaa" * size_mib * MIB)
        os.fsync(stream.fileno())
    testbed.lvm("lvremove", "-y", "%s/poison" % testbed.vg)


def raw_sha256(src):
    """SHA-256 of qemu-img's raw conversion of ``src`` (the guest-visible content)."""
    raw = src + ".check.raw"
    rc, out = qemu_img("convert", "-O", "raw", src, raw)
    assert rc == 0, out
    with open(raw, "rb") as stream:
        digest = hashlib.sha256(stream.read()).hexdigest()
    os.unlink(raw)
    return digest


@needs_qemu_img
def test_raw_volume_reads_back_as_the_source_and_is_idempotent(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.qcow2")
    poison_free_space(lvm_testbed, 8)
    result, dummy = run(check_mode=True, vg=vg, src=src, size="7M")
    assert result["changed"] and result["actions"][0].startswith("create volume %s/img1 (7340032 bytes" % vg)
    assert lvi.Lvm(FakeModule({})).lv(vg, "img1") is None
    result, dummy = run(vg=vg, src=src, size="7M")
    device = result["volume"]["path"]
    assert device == "/dev/%s/img1" % vg and result["volume"]["size"] == 7 * MIB
    # The tail past the image (6-7 MiB) held 0xAA: compare checks it reads zero now.
    rc, out = qemu_img("compare", "-f", "raw", "-F", "qcow2", device, src)
    assert rc == 0, out
    assert lvi.decode_tags(result["volume"]["tags"])["sha256"] == raw_sha256(src)
    # Holes and the tail were zeroed with BLKZEROOUT (loop devices support it), not by writing zeroes.
    assert result["write"]["bytes_zeroed"] > MIB and result["write"]["zeroout"] is True
    assert result["write"]["bytes_written"] < 2 * MIB
    result, module = run(vg=vg, src=src, size="7M")
    assert not result["changed"] and result["actions"] == []
    assert not any(cmd[0].endswith(("lvcreate", "lvchange")) for cmd in module.commands)
    # Same content, new file: only the fingerprint tag moves; no change reported.
    shutil.copy(src, src + ".new")
    os.rename(src + ".new", src)
    result, dummy = run(vg=vg, src=src, size="7M")
    assert not result["changed"]


@needs_qemu_img
def test_changed_source_fails_without_update_and_is_rewritten_with_it(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.qcow2")
    run(vg=vg, src=src)
    make_source(tmp_path / "new.qcow2", seed=b"b")
    os.rename(str(tmp_path / "new.qcow2"), src)
    with pytest.raises(lvi.VolumeImageError, match="holds another image .* update: true"):
        run(vg=vg, src=src)
    result, dummy = run(check_mode=True, vg=vg, src=src, update=True)
    assert result["changed"] and result["diff"]["after"]["content"] == "written from %s" % src
    result, dummy = run(vg=vg, src=src, update=True)
    assert result["changed"] and result["actions"][-1].startswith("write raw image")
    rc, out = qemu_img("compare", "-f", "raw", result["volume"]["path"], src)
    assert rc == 0, out


@needs_qemu_img
def test_qcow2_volume_passes_check_and_compare(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.vmdk", fmt="vmdk")
    poison_free_space(lvm_testbed, 8)
    result, dummy = run(vg=vg, src=src, format="qcow2")
    device = result["volume"]["path"]
    assert result["image"]["format"] == "qcow2" and result["image"]["virtual-size"] == 6 * MIB
    rc, out = qemu_img("check", "-f", "qcow2", device)
    assert rc == 0, out
    rc, out = qemu_img("compare", "-f", "qcow2", "-F", "vmdk", device, src)
    assert rc == 0, out
    result, dummy = run(vg=vg, src=src, format="qcow2")
    assert not result["changed"]


@needs_qemu_img
def test_grow_zeroes_the_new_end_and_absent_removes(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.qcow2")
    run(vg=vg, src=src)
    poison_free_space(lvm_testbed, 4)
    result, dummy = run(vg=vg, src=src, size="10M")
    assert result["changed"] and result["volume"]["size"] == 10 * MIB
    rc, out = qemu_img("compare", "-f", "raw", result["volume"]["path"], src)
    assert rc == 0, out
    result, dummy = run(vg=vg, src=src, size="8M")
    assert not result["changed"]
    result, dummy = run(check_mode=True, vg=vg, lv="img1", src=None, state="absent")
    assert result["changed"] and os.path.exists("/dev/%s/img1" % vg)
    result, dummy = run(vg=vg, lv="img1", src=None, state="absent")
    assert result["changed"] and result["volume"] is None and not os.path.lexists("/dev/%s/img1" % vg)
    result, dummy = run(vg=vg, lv="img1", src=None, state="absent")
    assert not result["changed"]


def test_foreign_volume_needs_force_and_snapshot_failure_names_the_command(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    lvm_testbed.lvm("lvcreate", "-n", "img1", "-L", "8m", vg)
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as stream:
        stream.write(b"x" * MIB)
    with pytest.raises(lvi.VolumeImageError, match="was not written by this module"):
        run(vg=vg, src=src)
    with pytest.raises(lvi.VolumeImageError, match="force: true removes it"):
        run(vg=vg, src=None, state="absent")
    # No device-mapper here: the snapshot fails, and the error names the lvcreate command and lvm2's reason.
    with pytest.raises(_lvm.LvmError, match=r"^lvcreate --yes -s -n img1_snap_\d+ -l 100%ORIGIN " + vg
                       + r"/img1 failed \(rc \d+\): .*device-mapper"):
        run(vg=vg, src=src, force=True, snapshot_before_write=True)
    result, dummy = run(vg=vg, src=src, force=True)
    with open(result["volume"]["path"], "rb") as stream:
        assert stream.read(MIB) == b"x" * MIB and stream.read() == bytes(7 * MIB)


def test_missing_vg_and_thin_pool_are_clear_errors(lvm_testbed, tmp_path):  # noqa: F811
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as stream:
        stream.truncate(MIB)
    with pytest.raises(lvi.VolumeImageError, match="volume group kvmstorage_it_lvm_missing not found"):
        run(vg="kvmstorage_it_lvm_missing", src=src)
    with pytest.raises(lvi.VolumeImageError, match="thin pool %s/pool0 not found" % lvm_testbed.vg):
        run(vg=lvm_testbed.vg, src=src, thinpool="pool0")


def test_info_reads_tags_and_image(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as stream:
        stream.write(b"y" * 3 * MIB)
    run(vg=vg, src=src)
    info = lvi.run_lvm_volume_image_info(FakeModule(dict(vg=vg, lv="img1", format=None, force_share=True)))
    assert info["exists"] and info["holds"]["complete"] and info["holds"]["format"] == "raw"
    assert info["holds"]["sha256"] == hashlib.sha256(b"y" * 3 * MIB).hexdigest()
    assert info["image"]["format"] == "raw" and info["image"]["virtual-size"] == 3 * MIB
    missing = lvi.run_lvm_volume_image_info(FakeModule(dict(vg=vg, lv="nope", format=None, force_share=True)))
    assert missing == {"changed": False, "exists": False, "volume": None, "holds": None, "image": None}


@needs_qemu_img
def test_interrupted_growth_leaves_the_volume_to_be_rewritten(lvm_testbed, tmp_path, monkeypatch):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.qcow2")
    run(vg=vg, src=src)
    poison_free_space(lvm_testbed, 4)

    def crash(device, start, end):
        raise lvi.ImageError("simulated failure", device)

    monkeypatch.setattr(lvi, "zero_range", crash)
    with pytest.raises(lvi.VolumeImageError, match="simulated failure"):
        run(vg=vg, src=src, size="9M")
    monkeypatch.undo()
    lv = lvi.Lvm(FakeModule({})).lv(vg, "img1")
    assert lv["size"] == 9 * MIB and lvi.TAG_WRITING in lv["tags"]
    # No update needed: the module's own write did not complete; the whole volume is written again.
    result, dummy = run(vg=vg, src=src, size="9M")
    assert result["actions"] == ["write raw image from %s (the previous write did not complete)" % src]
    rc, out = qemu_img("compare", "-f", "raw", result["volume"]["path"], src)
    assert rc == 0, out


@needs_qemu_img
def test_qcow2_volume_rewritten_with_update_passes_check(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.qcow2")
    run(vg=vg, src=src, format="qcow2", size="8M")
    make_source(tmp_path / "new.qcow2", seed=b"c")
    os.rename(str(tmp_path / "new.qcow2"), src)
    result, dummy = run(vg=vg, src=src, format="qcow2", size="8M", update=True)
    assert result["changed"] and result["volume"]["size"] == 8 * MIB
    rc, out = qemu_img("check", "-f", "qcow2", result["volume"]["path"])
    assert rc == 0, out
    rc, out = qemu_img("compare", "-f", "qcow2", result["volume"]["path"], src)
    assert rc == 0, out


def test_thin_pool_and_volumes_metadata_only(lvm_testbed, tmp_path):  # noqa: F811
    """lvm2 creates no thin volume without device-mapper: what can be checked is the metadata side."""
    vg = lvm_testbed.vg
    make_thin_pool(lvm_testbed, "pool0", zero=True, thin_volume="thin1", tmp_dir=str(tmp_path))
    make_thin_pool(lvm_testbed, "pool1", zero=False, tmp_dir=str(tmp_path))
    lvm = lvi.Lvm(FakeModule({}))
    assert lvm.thin_pool(vg, "pool0") == {"name": "pool0", "zero": True}
    assert lvm.thin_pool(vg, "pool1") == {"name": "pool1", "zero": False}
    assert lvm.thin_pool(vg, "thin1") is None
    thin = lvm.lv(vg, "thin1")
    assert thin["pool"] == "pool0" and thin["segtype"] == "thin" and thin["size"] == 8 * MIB
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as stream:
        stream.write(b"t" * MIB)
    # The volume exists in another pool (or is thick): refused before anything is done.
    with pytest.raises(lvi.VolumeImageError, match="exists in thin pool pool0, not as a thin volume of pool pool1"):
        run(vg=vg, lv="thin1", src=src, thinpool="pool1", force=True)
    # Creating a thin volume: the exact lvcreate call, and lvm2's refusal shown with it.
    result = None
    with pytest.raises(_lvm.LvmError, match=r"^lvcreate -n img1 --yes --addtag kvmstorage.writing -V 2097152b "
                       r"--thinpool pool0 " + vg + r" failed \(rc \d+\): .*device-mapper"):
        result, dummy = run(vg=vg, src=src, thinpool="pool0", size="2M")
    assert result is None
    result, dummy = run(check_mode=True, vg=vg, src=src, thinpool="pool0", size="2M")
    assert result["actions"][0] == "create volume %s/img1 (2097152 bytes in thin pool pool0)" % vg


def test_the_volume_itself_is_refused_as_source(lvm_testbed, tmp_path):  # noqa: F811
    vg = lvm_testbed.vg
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as stream:
        stream.write(b"s" * MIB)
    result, dummy = run(vg=vg, src=src)
    with pytest.raises(lvi.VolumeImageError, match="is \\(or is backed by\\) the volume itself"):
        run(vg=vg, src=result["volume"]["path"], src_format="raw", force=True, update=True)


# ------------------------------------------------- a step fails after others succeeded
@needs_qemu_img
def test_failed_write_into_a_new_volume_removes_the_volume_again(lvm_testbed, tmp_path, monkeypatch):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.qcow2")

    def crash(*args, **kwargs):
        raise lvi.ImageError("simulated failure", src)

    monkeypatch.setattr(lvi, "write_image", crash)
    with pytest.raises(lvi.VolumeImageError, match="simulated failure.* removed again") as caught:
        run(vg=vg, src=src)
    # Taken back: the task changed nothing, and says so.
    assert caught.value.result == {"changed": False, "actions": []}
    assert lvi.Lvm(FakeModule({})).lv(vg, "img1") is None


@needs_qemu_img
def test_failure_after_a_grow_reports_changed_with_the_grow(lvm_testbed, tmp_path, monkeypatch):  # noqa: F811
    vg = lvm_testbed.vg
    src = make_source(tmp_path / "src.qcow2")
    run(vg=vg, src=src)

    def crash(device, start, end):
        raise lvi.ImageError("simulated failure", device)

    monkeypatch.setattr(lvi, "zero_range", crash)
    with pytest.raises(lvi.VolumeImageError, match="zero the new end .* failed: .*simulated failure") as caught:
        run(vg=vg, src=src, size="9M")
    assert caught.value.result["changed"] is True
    assert caught.value.result["actions"] == ["grow volume %s/img1 from %d to %d bytes" % (vg, 6 * MIB, 9 * MIB)]


def test_signed_size_is_refused_not_read_without_its_sign(lvm_testbed, tmp_path):  # noqa: F811
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as stream:
        stream.truncate(MIB)
    with pytest.raises(lvi.VolumeImageError, match=r"size \+4M: a relative size"):
        run(vg=lvm_testbed.vg, src=src, size="+4M")
    assert lvi.Lvm(FakeModule({})).lv(lvm_testbed.vg, "img1") is None


def test_module_failure_after_a_step_reports_changed_and_actions(monkeypatch):
    from ansible_collections.kvm.storage.plugins.modules import lvm_volume_image
    reported = {}

    class Module:
        params = {"vg": "vg0", "lv": "lv0"}

        def __init__(self, **kwargs):
            pass

        def fail_json(self, **kwargs):
            reported.update(kwargs)
            raise SystemExit(1)

    def failing(module):
        raise lvi.VolumeImageError("write failed", result={"changed": True, "actions": ["grow volume vg0/lv0"]})

    monkeypatch.setattr(lvm_volume_image, "AnsibleModule", Module)
    monkeypatch.setattr(lvm_volume_image, "run_lvm_volume_image", failing)
    with pytest.raises(SystemExit):
        lvm_volume_image.main()
    assert reported == {"msg": "vg0/lv0: write failed", "changed": True, "actions": ["grow volume vg0/lv0"]}


@pytest.mark.parametrize("args, message", [
    (dict(vg="vg0", lv="lv0"), "state is present but all of the following are missing: src"),
    (dict(vg="vg0", lv="lv0", state="absent", src_format="raw"), "missing parameter(s) required by 'src_format': src"),
])
def test_option_constraints_are_declared_with_the_spec(capsys, monkeypatch, args, message):
    from module_runner import run_module
    from ansible_collections.kvm.storage.plugins.modules import lvm_volume_image

    def never(module):
        raise AssertionError("the task ran although its options were refused")

    monkeypatch.setattr(lvm_volume_image, "run_lvm_volume_image", never)
    result = run_module(lvm_volume_image, capsys, **args)
    assert result["failed"] and result["msg"] == message


def test_source_in_use_message_says_what_this_module_can_do(tmp_path):
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as stream:
        stream.truncate(MIB)
    with ImageFile(src, writable=True):
        with pytest.raises(lvi.ImageError) as caught:
            lvi.content_sha256(src, "raw", None)
    text = lvi.failure_text(caught.value)
    assert "in use by another process" in text and "shut the guest down" in text and "force_share" not in text


# ------------------------------------------- origins of classic snapshots (found on real device-mapper)
class OriginRuleLvm:
    """Stands in for lvm2 with one of its rules: ``lvresize`` of the origin of classic snapshots (lv_attr ``o``)
    fails while it is active ("Snapshot origin volumes can be resized only while inactive: try lvchange -an.").
    Keeps one volume (a dict of normalize_lv's keys) and records the calls."""

    def __init__(self, attr, path, size=8 * MIB, pool=None, resize_error=None):
        self.volume = {"vg": "v", "name": "a", "path": path, "size": size, "tags": [], "attr": attr,
                       "segtype": "thin" if pool else "linear", "pool": pool, "origin": None, "uuid": "u",
                       "active": attr[4] == "a"}
        self.calls = []
        self.resize_error = resize_error

    def _set_active(self, active):
        self.volume["active"] = active
        self.volume["attr"] = self.volume["attr"][:4] + ("a" if active else "-") + self.volume["attr"][5:]

    def lv(self, vg, lv):
        return dict(self.volume)

    def snapshot(self, vg, lv, name, thin):
        self.calls.append(("snapshot", name, thin))
        if not thin:
            self.volume["attr"] = "o" + self.volume["attr"][1:]

    def deactivate(self, vg, lv):
        self.calls.append(("deactivate",))
        self._set_active(False)

    def activate(self, vg, lv):
        self.calls.append(("activate",))
        self._set_active(True)

    def resize(self, vg, lv, size):
        self.calls.append(("resize", size))
        if self.resize_error:
            raise _lvm.LvmError(self.resize_error)
        if self.volume["attr"][0] == "o" and self.volume["active"]:
            raise _lvm.LvmError("lvresize --yes -L %db v/a failed (rc 5): Snapshot origin volumes can be resized "
                                "only while inactive: try lvchange -an." % size)
        self.volume["size"] = size

    def change_tags(self, vg, lv, add=(), delete=()):
        self.calls.append(("tags", sorted(add), sorted(delete)))
        self.volume["tags"] = sorted((set(self.volume["tags"]) - set(delete)) | set(add))


def test_deactivate_command_line():
    module = StubModule(0, "", "")
    _lvm.Lvm(module).deactivate("v", "a")
    assert module.calls[0][0] == ["/usr/sbin/lvchange", "-an", "v/a"]


def test_an_active_origin_of_classic_snapshots_is_deactivated_around_lvresize():
    lvm = OriginRuleLvm("owi-a-s---", "/dev/v/a")
    lvi.resize_volume(lvm, lvm.lv("v", "a"), 12 * MIB)
    assert lvm.calls == [("deactivate",), ("resize", 12 * MIB), ("activate",)]
    assert lvm.volume["size"] == 12 * MIB and lvm.volume["active"]


@pytest.mark.parametrize("attr", ["-wi-a-----", "Vwi-a-tz--", "owi---s---", "-wi-------"])
def test_other_volumes_are_resized_as_they_are(attr):
    # linear, a thin volume (its snapshots are thin: lvm2 resizes it active), an inactive origin, an inactive volume
    lvm = OriginRuleLvm(attr, "/dev/v/a", pool="pool" if attr[0] == "V" else None)
    lvi.resize_volume(lvm, lvm.lv("v", "a"), 12 * MIB)
    assert lvm.calls == [("resize", 12 * MIB)]
    assert lvm.volume["attr"] == attr


def test_the_origin_is_activated_again_when_lvresize_fails():
    lvm = OriginRuleLvm("owi-a-s---", "/dev/v/a", resize_error="lvresize failed (rc 5): Insufficient free space")
    with pytest.raises(_lvm.LvmError, match="Insufficient free space"):
        lvi.resize_volume(lvm, lvm.lv("v", "a"), 12 * MIB)
    assert lvm.calls == [("deactivate",), ("resize", 12 * MIB), ("activate",)]
    assert lvm.volume["active"]


def test_snapshot_before_a_write_that_grows_a_linear_volume(tmp_path, monkeypatch):
    """The classic snapshot makes the volume an origin: the grow that follows it must know (lvm2 refuses to
    resize an active origin), and the write goes to the reactivated volume."""
    device = tmp_path / "device"
    device.write_bytes(bytes(8 * MIB))
    lvm = OriginRuleLvm("-wi-a-----", str(device))
    lvm.volume["tags"] = lvi.encode_tags("raw", 8 * MIB, "aa", "f0")
    written = []

    def write_image(image, device_path, fmt, volume_size, known_zero, **policy):
        written.append((device_path, volume_size, lvm.volume["active"]))
        return "bb", {"bytes_written": 0, "bytes_zeroed": 0, "volume_size": volume_size}

    monkeypatch.setattr(lvi, "write_image", write_image)
    module = FakeModule(params(vg="v", lv="a", src=str(device), update=True, snapshot_before_write=True))
    runner = lvi.VolumeImage(module, lvm=lvm)
    plan = {"steps": [("snapshot", None), ("resize", (8 * MIB, 12 * MIB)), ("write", "source changed")],
            "write_reason": "source changed", "new_size": 12 * MIB, "sha256": None}
    source = {"format": "raw", "virtual_size": 12 * MIB, "fingerprint": "f1"}
    lv = runner._execute_steps(plan, lvm.lv("v", "a"), None, source, None, "raw", 12 * MIB, [], {})
    assert [call[0] for call in lvm.calls] == ["snapshot", "deactivate", "resize", "activate", "tags", "tags"]
    assert written == [(str(device), 12 * MIB, True)]
    assert lv["size"] == 12 * MIB and lvi.TAG_SHA256 + "bb" in lv["tags"]
    assert runner.result["snapshot"].startswith("a_snap_")


def test_a_volume_in_use_is_refused_before_the_snapshot_and_the_grow(tmp_path, monkeypatch):
    """A running guest holds the device (QEMU's locks): the write would be refused, so nothing is done before it
    either (no snapshot left behind, no grow)."""
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
    device = tmp_path / "device"
    device.write_bytes(bytes(8 * MIB))
    lvm = OriginRuleLvm("-wi-a-----", str(device))
    lvm.volume["tags"] = lvi.encode_tags("raw", 8 * MIB, "aa", "f0")
    monkeypatch.setattr(lvi, "write_image", lambda *args, **kwargs: pytest.fail("the write must not start"))
    runner = lvi.VolumeImage(FakeModule(params(vg="v", lv="a", src=str(device), update=True,
                                               snapshot_before_write=True)), lvm=lvm)
    plan = {"steps": [("snapshot", None), ("resize", (8 * MIB, 12 * MIB)), ("write", "source changed")],
            "write_reason": "source changed", "new_size": 12 * MIB, "sha256": None}
    runner.actions.extend(["snapshot v/a before writing", "grow volume v/a", "write raw image"])
    source = {"format": "raw", "virtual_size": 12 * MIB, "fingerprint": "f1"}
    with ImageFile(str(device), writable=True):
        with pytest.raises(lvi.ImageInUseError) as caught:
            runner.execute(plan, lvm.lv("v", "a"), None, source, None, "raw", 12 * MIB)
    assert lvm.calls == [] and "snapshot" not in runner.result
    assert "shut the guest down" in lvi.failure_text(caught.value)
