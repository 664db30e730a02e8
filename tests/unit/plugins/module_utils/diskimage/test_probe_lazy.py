# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probing asks only the drivers whose pre-check passes: the result is the one of asking every driver.

``every_driver_probe`` is the algorithm probe.py had before the pre-checks (every registered
driver's probe() called); the lazy ``probe`` must give the same result or raise the same error on
every sample image, every image qemu-img and this library make, and edge and random headers.
"""

import bz2
import gzip
import os
import random
import shutil

import components
import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import create
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import probe as probe_module
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ProbeError, UnsupportedFeature
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import DRIVERS

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_DIRS = [os.path.join(HERE, "samples"), os.path.join(HERE, "probe_samples"),
               os.path.join(os.path.dirname(HERE), "samples")]

FILENAMES = (None, "guest.img", "disk.dmg", "DiskDescriptor.xml", "/images/bundle.hdd/DiskDescriptor.xml",
             "disk.vmdk", "dmg")


def every_driver_probe(header, filename):
    """probe.probe() of a header as it was before the pre-checks: every driver is asked."""
    header = bytes(header[:probe_module.PROBE_SIZE])
    where = filename
    matches = []
    for name in sorted(DRIVERS):
        if name == "raw":
            continue
        score = DRIVERS[name].probe(header, filename)
        if score > 0:
            matches.append((score, name))
    if len(matches) > 1:
        raise ProbeError("the image header matches more than one format (%s); refusing to guess: "
                         "give the format explicitly"
                         % ", ".join("%s (score %d)" % (name, score) for score, name in sorted(matches)),
                         where)
    if matches:
        name = matches[0][1]
        unsupported = DRIVERS[name].unsupported_version(header)
        if unsupported:
            raise UnsupportedFeature(unsupported, where)
        return probe_module.ProbeResult(name, None)
    warning = None
    lookalike = probe_module.signature_format(header)
    if lookalike is not None:
        warning = ("%s: probed as raw, but its first sector carries the signature of a %s image "
                   "that this library cannot open as such; it is treated as raw, and writes to "
                   "its first sector are refused. Give the format explicitly if this is intended."
                   % (where or "image", lookalike))
    return probe_module.ProbeResult("raw", warning)


def outcome(function, header, filename):
    try:
        return ("result", function(header, filename))
    except Exception as exc:  # pylint: disable=broad-except  # compared, type and message
        return ("error", type(exc).__name__, str(exc))


def assert_same(header, filenames=FILENAMES):
    seen = set()
    for filename in filenames:
        expected = outcome(every_driver_probe, header, filename)
        assert outcome(probe_module.probe, header, filename) == expected, (header[:80], filename)
        seen.add(expected[1].format if expected[0] == "result" else expected[1])
    return seen


def sample_headers():
    """(name, first 8 KiB) of every sample image in the unit tests, decompressed."""
    found = []
    for top in SAMPLE_DIRS:
        for directory, dummy, files in os.walk(top):
            for name in sorted(files):
                if name.endswith(".md"):
                    continue
                path = os.path.join(directory, name)
                opener = bz2.open if name.endswith(".bz2") else gzip.open if name.endswith(".gz") else open
                with opener(path, "rb") as image:
                    found.append((name.rsplit(".", 1)[0] if opener is not open else name, image.read(8192)))
    return found


def test_sample_images_probe_as_with_every_driver():
    samples = sample_headers()
    assert len(samples) >= 30
    seen = set()
    for name, header in samples:
        seen |= assert_same(header, FILENAMES + (name,))
    # the samples cover these formats (a lost sample directory would make this test vacuous)
    assert {"vhdx", "vpc", "vmdk", "parallels", "bochs", "cloop", "dmg", "raw"} <= seen


# (file name, qemu-img create arguments before the file name)
QEMU_MADE = [
    ("v3.qcow2", ["-f", "qcow2"]),
    ("v2.qcow2", ["-f", "qcow2", "-o", "compat=0.10"]),
    ("old.qcow", ["-f", "qcow"]),
    ("disk.qed", ["-f", "qed"]),
    ("sparse.vmdk", ["-f", "vmdk"]),
    ("flat.vmdk", ["-f", "vmdk", "-o", "subformat=monolithicFlat"]),
    ("stream.vmdk", ["-f", "vmdk", "-o", "subformat=streamOptimized"]),
    ("disk.vdi", ["-f", "vdi"]),
    ("dynamic.vhd", ["-f", "vpc"]),
    ("fixed.vhd", ["-f", "vpc", "-o", "subformat=fixed"]),
    ("disk.vhdx", ["-f", "vhdx"]),
    ("disk.parallels", ["-f", "parallels"]),
    ("disk.luks", ["--object", "secret,id=sec0,data=pw", "-f", "luks", "-o", "key-secret=sec0,iter-time=10"]),
    ("zeroes.raw", ["-f", "raw"]),
]


@components.needs(shutil.which("qemu-img"), "qemu-img")
def test_qemu_img_images_probe_as_with_every_driver(tmp_path):
    for name, args in QEMU_MADE:
        path = tmp_path / name
        qemu_tools.qemu_img(*(["create", "-q"] + args + [path, "1M"]))
        for image in sorted(tmp_path.iterdir()):     # the flat vmdk's extent file too
            header = image.read_bytes()[:8192]
            assert_same(header, FILENAMES + (str(image),))
            assert probe_module.probe(str(image)) == every_driver_probe(header, str(image))


LIBRARY_MADE = [
    ("raw", {}), ("qcow2", {}), ("qcow2", {"compat": "0.10"}), ("qcow", {}), ("qed", {}), ("vdi", {}),
    ("vmdk", {}), ("vmdk", {"subformat": "streamOptimized"}), ("vmdk", {"subformat": "monolithicFlat"}),
    ("vpc", {}), ("vpc", {"subformat": "fixed"}), ("vhdx", {}),
]


def test_library_images_probe_as_with_every_driver(tmp_path):
    formats = set()
    for number, (fmt, options) in enumerate(LIBRARY_MADE):
        directory = tmp_path / str(number)
        directory.mkdir()
        create(str(directory / ("disk." + fmt)), fmt, "1M", options=options)
        for image in sorted(directory.iterdir()):
            header = image.read_bytes()[:8192]
            assert_same(header, FILENAMES + (str(image),))
            result = probe_module.probe(str(image))
            assert result == every_driver_probe(header, str(image))
            formats.add(result.format)
    assert formats == {"raw", "qcow2", "qcow", "qed", "vdi", "vmdk", "vpc", "vhdx"}


# Every magic a pre-check or the look-alike table knows, and near misses of them.
MAGICS = [magic for dummy, offset, magic in probe_module.KNOWN_SIGNATURES if offset == 0] + [
    b"KDMV", b"COWD", b"QFI\xfb\x00\x00\x00\x00", b"QFI\xfb\x00\x00\x00\x04", b"QFI\xfb\xff\xff\xff\xff",
    b"LUKS\xba\xbe\x00\x01", b"LUKS\xba\xbe\x00\x02", b"WithoutFreeSpace\x02\x00\x00\x00",
    b"WithouFreSpacExt\x02\x00\x00\x00", b"WithoutFreeSpace\x01\x00\x00\x00",
    b"Bochs Virtual HD Image\x00", b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 "
    b"/dev/cloop $1\n",
]
DESCRIPTORS = [
    b"# Disk DescriptorFile\nversion=1\n", b"# Disk DescriptorFile\r\nversion=2\r\n", b"version=3\n",
    b"   \nversion=1\n", b"  \r\nversion=2\r\n", b"#\n#\nversion=3\r\n", b"# x\nversion=4\n", b"version=1",
    b"v", b"#", b" ", b"# no newline", b"  x\nversion=1\n", b"<?xml version='1.0'?>\n<Parallels_disk_image>",
    b"<Parallels_disk_image Version=\"1.0\">", b"<?xml version=\"1.0\"?><Other/>",
    b"version=1\n<Parallels_disk_image>",      # vmdk's and (named DiskDescriptor.xml) parallels': two claims
]


def edge_headers():
    rng = random.Random(14)
    headers = [b"", b"\x00", bytes(512), bytes(4096), b"\xff" * 4096]
    for magic in MAGICS + DESCRIPTORS:
        for tail in (b"", bytes(16), bytes(600), bytes(4096), bytes(rng.getrandbits(8) for dummy in range(1024))):
            headers.append(magic + tail)
        headers.append(magic[:-1])
        headers.append(b"\x00" + magic + bytes(600))
    vdi = bytes(64) + b"\x7f\x10\xda\xbe"
    headers += [vdi, vdi + bytes(600), vdi[:-1] + bytes(600), bytes(63) + vdi[64:] + bytes(600)]
    return headers


def test_edge_headers_probe_as_with_every_driver():
    seen = set()
    for header in edge_headers():
        seen |= assert_same(header)
    # two claims and a refused version are among them
    assert {"ProbeError", "UnsupportedFeature", "raw", "qcow2", "qcow", "vmdk", "luks", "parallels", "dmg"} <= seen


def test_random_headers_probe_as_with_every_driver():
    rng = random.Random(1414)
    prefixes = [b""] + MAGICS + DESCRIPTORS
    for number in range(400):
        size = rng.choice((0, 3, 64, 511, 512, 4096))
        header = bytes(rng.getrandbits(8) for dummy in range(size))
        if number % 2:
            header = rng.choice(prefixes) + header
        assert_same(header)
