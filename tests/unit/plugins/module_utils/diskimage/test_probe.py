# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Format probing against qemu-img's own detection."""

import bz2
import os

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import probe as probe_module
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageNotFoundError, ProbeError)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import DRIVERS
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import Driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe

# Native sample images (origin and licence in probe_samples/SOURCES.md).
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_samples")

# (file name, qemu-img create arguments before the file name)
QEMU_MADE = [
    ("v3.qcow2", ["-f", "qcow2"]),
    ("v2.qcow2", ["-f", "qcow2", "-o", "compat=0.10"]),
    ("old.qcow", ["-f", "qcow"]),
    ("disk.qed", ["-f", "qed"]),
    ("sparse.vmdk", ["-f", "vmdk"]),
    ("flat.vmdk", ["-f", "vmdk", "-o", "subformat=monolithicFlat"]),
    ("disk.vdi", ["-f", "vdi"]),
    ("dynamic.vhd", ["-f", "vpc"]),
    ("fixed.vhd", ["-f", "vpc", "-o", "subformat=fixed"]),
    ("disk.vhdx", ["-f", "vhdx"]),
    ("disk.parallels", ["-f", "parallels"]),
    ("disk.luks", ["--object", "secret,id=sec0,data=pw", "-f", "luks", "-o", "key-secret=sec0,iter-time=10"]),
    ("zeroes.raw", ["-f", "raw"]),
]


def qemu_format(path):
    return qemu_tools.qemu_img_json("info", path)["format"]


def check_against_qemu(path):
    theirs = qemu_format(path)
    result = probe(str(path))
    if theirs in DRIVERS:
        assert result.format == theirs
        assert result.warning is None
    else:
        assert result.format == "raw"
        assert result.warning is not None
        assert "signature of a %s image" % theirs in result.warning
        assert str(path) in result.warning
    # Header bytes give the same answer as the path.
    with open(str(path), "rb") as image:
        assert probe(image.read(8192), str(path)).format == result.format
    return theirs, result


@pytest.mark.parametrize("name,args", QEMU_MADE, ids=[case[0] for case in QEMU_MADE])
def test_probe_agrees_with_qemu_img(tmp_path, name, args):
    path = tmp_path / name
    qemu_tools.qemu_img(*(["create", "-q"] + args + [path, "1M"]))
    check_against_qemu(path)


@pytest.mark.parametrize("sample", ["empty.bochs.bz2", "simple-pattern.cloop.bz2"])
def test_probe_agrees_with_qemu_img_on_samples(tmp_path, sample):
    source = os.path.join(SAMPLES, sample)
    path = tmp_path / sample[:-4]
    with open(source, "rb") as packed:
        path.write_bytes(bz2.decompress(packed.read()))
    theirs = check_against_qemu(path)[0]
    assert theirs in ("bochs", "cloop")


def test_plain_raw_has_no_warning(tmp_path):
    path = tmp_path / "data.raw"
    path.write_bytes(os.urandom(1024 * 1024))
    assert qemu_format(path) == "raw"
    assert probe(str(path)) == ("raw", None)
    assert probe(b"") == ("raw", None)
    assert probe(b"QFI") == ("raw", None)
    assert probe_module.probe_format(bytes(512)) == "raw"


# A bare signature (nothing valid after it) of every format that has a signature check of its own.
# claimed: the format's driver accepts the bare signature; otherwise the driver rejects it.
LOOKALIKES = [
    ("vdi", bytes(64) + b"\x7f\x10\xda\xbe", True),
    ("vpc", b"conectix" + bytes(100), True),
    ("vhdx", b"vhdxfile", True),
    ("luks", b"LUKS\xba\xbe\x00\x02", False),
    ("vmdk", b"# Disk DescriptorFile\n", False),
    ("qed", b"QED\x00", True),
]


def assert_raw_with_lookalike_warning(result, name):
    assert result.format == "raw"
    assert "guest.img: probed as raw" in result.warning
    assert "signature of a %s image" % name in result.warning


@pytest.mark.parametrize("name,header,claimed", LOOKALIKES, ids=[case[0] for case in LOOKALIKES])
def test_a_signature_no_driver_claims_is_raw_with_a_warning(monkeypatch, name, header, claimed):
    monkeypatch.delitem(DRIVERS, name)  # as if this library had no driver for the format
    assert_raw_with_lookalike_warning(probe(header + bytes(512), "guest.img"), name)


@pytest.mark.parametrize("name,header,claimed", LOOKALIKES, ids=[case[0] for case in LOOKALIKES])
def test_a_bare_signature_is_its_format_or_raw_with_a_warning_never_silently_raw(name, header, claimed):
    result = probe(header + bytes(512), "guest.img")
    if claimed:
        assert result == (name, None)
    else:  # the driver rejected the header: raw, but the user is told what it looks like
        assert_raw_with_lookalike_warning(result, name)


def test_signature_table_names_qemu_formats():
    assert probe_module.signature_format(b"QFI\xfb\x00\x00\x00\x01") == "qcow"
    assert probe_module.signature_format(b"QFI\xfb\x00\x00\x00\x03") == "qcow2"
    assert probe_module.signature_format(b"QFI\xfb\x00\x00\x00\x09") == "qcow2"
    assert probe_module.signature_format(b"\x00" * 512) is None


class GreedyDriver(Driver):
    """Claims everything: two non-raw claims must be refused, never guessed between."""
    format_name = "greedy"

    @classmethod
    def probe(cls, header, filename):
        return 50


def test_two_claims_are_an_error(tmp_path, monkeypatch):
    path = tmp_path / "disk.qcow2"
    qemu_tools.qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    monkeypatch.setitem(DRIVERS, "greedy", GreedyDriver)
    with pytest.raises(ProbeError, match=r"more than one format \(greedy \(score 50\), qcow2") as excinfo:
        probe(str(path))
    assert str(path) in str(excinfo.value)
    # A header only GreedyDriver claims is greedy's.
    assert probe(bytes(512)).format == "greedy"


def test_probe_reads_without_locking(tmp_path):
    path = tmp_path / "busy.qcow2"
    qemu_tools.qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    with ImageFile(path, writable=True):
        assert probe(str(path)).format == "qcow2"


def test_missing_file(tmp_path):
    with pytest.raises(ImageNotFoundError):
        probe(str(tmp_path / "missing.qcow2"))
