# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ISO 9660 seed writer, read by independent tools (isoinfo with Rock Ridge and with Joliet, xorriso), and
its reader, on its own images, on genisoimage's and on broken ones."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re
import struct

import pytest

from seed_tools import needs, run

from ansible_collections.kvm.storage.plugins.module_utils import _seed_iso9660 as iso

SEED = {
    "user-data": b"#cloud-config\nhostname: web1\n",
    "meta-data": b"instance-id: iid-1\n",
    "network-config": b"",                            # an empty file
    "vendor-data": bytes(range(256)) * 20,            # binary, three sectors
}


def write(tmp_path, files, volume_id="CIDATA", name="seed.iso"):
    path = str(tmp_path / name)
    with open(path, "wb") as image:
        image.write(iso.build_image(files, volume_id))
    return path


def listing_names(text):
    """The names of an isoinfo -l listing (its last column), without . and .."""
    names = [line.split()[-1] for line in text.splitlines() if re.match(r"^[-d][-rwx]{9}", line)]
    return sorted(name for name in names if name not in (".", ".."))


def test_the_same_files_give_the_same_bytes():
    assert iso.build_image(dict(SEED), "CIDATA") == iso.build_image(dict(reversed(list(SEED.items()))), "CIDATA")
    assert iso.build_image(SEED, "CIDATA") != iso.build_image(SEED, "OTHER")
    assert iso.build_image(SEED, "CIDATA") != iso.build_image(dict(SEED, **{"meta-data": b"x"}), "CIDATA")


def test_the_image_is_whole_sectors_and_holds_its_volume_space():
    image = iso.build_image(SEED, "CIDATA")
    assert len(image) % iso.SECTOR == 0
    assert struct.unpack_from("<I", image, 16 * iso.SECTOR + 80)[0] * iso.SECTOR == len(image)


@needs("isoinfo")
@pytest.mark.parametrize("names", ["-R", "-J"])
def test_isoinfo_reads_the_names_and_content(tmp_path, names):
    path = write(tmp_path, SEED)
    assert listing_names(run("isoinfo", names, "-l", "-i", path).decode()) == sorted(SEED)
    for name, content in SEED.items():
        assert run("isoinfo", names, "-i", path, "-x", "/" + name) == content


@needs("isoinfo")
def test_isoinfo_finds_the_volume_id_rock_ridge_and_joliet(tmp_path):
    text = run("isoinfo", "-d", "-i", write(tmp_path, SEED)).decode()
    assert "Volume id: CIDATA\n" in text
    assert "Rock Ridge signatures version 1 found" in text
    assert "Joliet with UCS level 3 found" in text
    assert "Logical block size is: 2048" in text


@needs("isoinfo")
def test_the_iso9660_names_proper_are_level_1(tmp_path):
    names = listing_names(run("isoinfo", "-l", "-i", write(tmp_path, SEED)).decode())
    assert names == ["META_DAT.;1", "NETWORK_.;1", "USER_DAT.;1", "VENDOR_D.;1"]


@needs("isoinfo")
def test_rock_ridge_attributes_are_read_only_files_owned_by_root(tmp_path):
    lines = run("isoinfo", "-R", "-l", "-i", write(tmp_path, SEED)).decode().splitlines()
    files = [line for line in lines if line.startswith("-")]
    assert len(files) == 4 and all(re.match(r"^-r--r--r-- +1 +0 +0 ", line) for line in files), lines


@needs("xorriso")
def test_xorriso_lists_and_extracts_the_files(tmp_path):
    path = write(tmp_path, SEED)
    out = run("xorriso", "-indev", path, "-lsl").decode()
    assert sorted(re.findall(r"'([^']+)'$", out, re.MULTILINE)) == sorted(SEED)
    report = run("xorriso", "-indev", path, "-pvd_info").decode() + \
        run("xorriso", "-indev", path, "-toc").decode()
    assert "CIDATA" in report
    target = tmp_path / "extracted"
    run("xorriso", "-osirrox", "on", "-indev", path, "-extract", "/", str(target))
    assert sorted(os.listdir(str(target))) == sorted(SEED)
    for name, content in SEED.items():
        assert (target / name).read_bytes() == content


@needs("isoinfo")
def test_a_directory_of_more_than_one_sector(tmp_path):
    # 40 long names: the primary directory takes several sectors; no record may cross a sector boundary
    files = dict(("file-with-a-rather-long-name-%02d" % number, b"%d\n" % number) for number in range(40))
    path = write(tmp_path, files)
    assert listing_names(run("isoinfo", "-R", "-l", "-i", path).decode()) == sorted(files)
    assert listing_names(run("isoinfo", "-J", "-l", "-i", path).decode()) == sorted(files)
    assert run("isoinfo", "-R", "-i", path, "-x", "/file-with-a-rather-long-name-39") == b"39\n"
    assert iso.read_image(iso.build_image(files, "CIDATA")) == ("CIDATA", files)


def test_level1_identifiers_are_unique():
    ids = iso.level1_identifiers(["user-data", "user_data", "user-data.yaml", "USER-DATA"])
    assert len(set(ids.values())) == 4
    assert ids["user-data"] == b"USER_DAT.;1"
    assert all(re.match(rb"^[A-Z0-9_]{1,8}\.[A-Z0-9_]{0,3};1$", value) for value in ids.values())


def test_the_reader_reads_what_the_writer_wrote():
    assert iso.read_image(iso.build_image(SEED, "CIDATA")) == ("CIDATA", SEED)


@needs("genisoimage")
@pytest.mark.parametrize("options, expected_names", [
    (["-J", "-r"], ["meta-data", "user-data"]),        # Rock Ridge
    (["-J"], ["meta-data", "user-data"]),              # Joliet only
    ([], ["meta_dat", "user_dat"]),                    # ISO 9660 names only, as Linux shows them
])
def test_the_reader_reads_genisoimage_images(tmp_path, options, expected_names):
    source = tmp_path / "source"
    source.mkdir()
    (source / "user-data").write_bytes(b"#cloud-config\n")
    (source / "meta-data").write_bytes(b"instance-id: a\n" * 300)
    path = str(tmp_path / "g.iso")
    run("genisoimage", "-quiet", "-o", path, "-V", "cidata", *(options + [str(source)]))
    with open(path, "rb") as image:
        label, files = iso.read_image(image.read())
    assert label == "cidata"
    assert sorted(files) == expected_names
    assert sorted(files.values()) == sorted([b"#cloud-config\n", b"instance-id: a\n" * 300])


@needs("genisoimage")
def test_the_reader_refuses_a_subdirectory(tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    path = str(tmp_path / "g.iso")
    run("genisoimage", "-quiet", "-o", path, "-r", str(source))
    with open(path, "rb") as image, pytest.raises(iso.ISO9660Error, match="directory 'sub'"):
        iso.read_image(image.read())


@pytest.mark.parametrize("damage, message", [
    (lambda image: image[:20 * iso.SECTOR], "out of the image"),
    (lambda image: image[:16 * iso.SECTOR + 3], "shorter than an ISO 9660"),
    (lambda image: image[:16 * iso.SECTOR + 1] + b"XXXXX" + image[16 * iso.SECTOR + 6:], "CD001"),
    (lambda image: image[:16 * iso.SECTOR + 156 + 2] + struct.pack("<I", 10 ** 6) + image[16 * iso.SECTOR + 162:],
     "out of the image"),
])
def test_the_reader_refuses_broken_images_with_its_own_error(damage, message):
    with pytest.raises(iso.ISO9660Error, match=message):
        iso.read_image(damage(iso.build_image(SEED, "CIDATA")))


def test_the_reader_refuses_a_file_extent_outside_the_image():
    image = bytearray(iso.build_image({"user-data": b"x"}, "CIDATA"))
    # the file is the last record of the primary root directory (sector 24): point its extent far away
    root = 24 * iso.SECTOR
    offset = root
    while image[offset]:
        last = offset
        offset += image[offset]
    struct.pack_into("<I", image, last + 2, 10 ** 6)
    with pytest.raises(iso.ISO9660Error, match="out of the image"):
        iso.read_image(bytes(image))


@pytest.mark.parametrize("files, volume_id, message", [
    ({"a": b""}, "cidata", "volume identifier"),
    ({"a": b""}, "A" * 17, "volume identifier"),
    ({"a/b": b""}, "CIDATA", "file name"),
    ({"": b""}, "CIDATA", "file name"),
    ({"x" * 65: b""}, "CIDATA", "file name"),
])
def test_the_writer_refuses_what_it_cannot_write(files, volume_id, message):
    with pytest.raises(iso.ISO9660Error, match=message):
        iso.build_image(files, volume_id)
