# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The FAT seed writer, checked by independent tools (fsck.fat, mtools), and its reader, on its own images, on
mkfs.fat's (FAT12 and FAT16) and on broken ones."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
import struct

import pytest

from seed_tools import needs, run, run_rc

from ansible_collections.kvm.storage.plugins.module_utils import _seed_fat as fat

SEED = {
    "user-data": b"#cloud-config\nhostname: web1\n",
    "meta-data": b"instance-id: iid-1\n",
    "network-config": b"",                            # an empty file: no cluster
    "vendor-data": bytes(range(256)) * 20,            # binary, eleven clusters
}


def write(tmp_path, files, label="CIDATA", name="seed.img"):
    path = str(tmp_path / name)
    with open(path, "wb") as image:
        image.write(fat.build_image(files, label))
    return path


def test_the_same_files_give_the_same_bytes():
    assert fat.build_image(dict(SEED), "CIDATA") == fat.build_image(dict(reversed(list(SEED.items()))), "CIDATA")
    assert fat.build_image(SEED, "CIDATA") != fat.build_image(SEED, "OTHER")
    assert fat.build_image(SEED, "CIDATA") != fat.build_image(dict(SEED, **{"meta-data": b"x"}), "CIDATA")


@needs("fsck.fat")
@pytest.mark.parametrize("files", [SEED, {"user-data": b"u" * (3 * 1024 * 1024)}, {}], ids=["seed", "3MiB", "empty"])
def test_fsck_finds_nothing_to_repair(tmp_path, files):
    rc, out = run_rc("fsck.fat", "-n", "-V", write(tmp_path, files))
    assert rc == 0, out
    assert len([line for line in out.splitlines() if line.strip()]) <= 4, out
    assert not re.search(r"(?i)wrong|differ|invalid|mark|free cluster", out), out


@needs("mlabel", "mdir", "mtype")
def test_mtools_read_the_label_names_and_content(tmp_path):
    path = write(tmp_path, SEED)
    assert run("mlabel", "-s", "-i", path, "::").decode().strip() == "Volume label is CIDATA"
    listing = run("mdir", "-i", path, "::").decode()
    names = re.findall(r"^\S+ +\d+ 2000-01-01 +0:00  (\S+)$", listing, re.MULTILINE)
    assert sorted(names) == sorted(SEED), listing
    assert "Volume in drive : is CIDATA" in listing
    for name, content in SEED.items():
        assert run("mtype", "-i", path, "::" + name) == content


@needs("mcopy", "fsck.fat")
def test_a_large_file_spans_many_clusters(tmp_path):
    content = bytes(range(251)) * 12000                     # 3 MB: clusters of more than one sector
    path = write(tmp_path, {"user-data": content})
    run("mcopy", "-i", path, "::user-data", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == content
    assert struct.unpack_from("<B", fat.build_image({"user-data": content}, "CIDATA"), 13)[0] > 1


def test_the_reader_reads_what_the_writer_wrote():
    assert fat.read_image(fat.build_image(SEED, "CIDATA")) == ("CIDATA", SEED)


def test_short_names_are_unique_8_3_names():
    names = fat.short_names(["user-data", "user-data2", "network-config", "a.b.c", "x"])
    assert names["user-data"] == b"USER-D~1   "
    assert names["user-data2"] == b"USER-D~2   "
    assert names["a.b.c"] == b"AB~1    C  "
    assert len(set(names.values())) == 5


def test_lfn_checksum_of_the_spec_example():
    # the rotate-right-and-add sum of the 11 bytes, computed by hand for "USER-D~1   "
    total = 0
    for byte in b"USER-D~1   ":
        total = ((total >> 1) | ((total & 1) << 7)) + byte & 0xFF
    assert fat.lfn_checksum(b"USER-D~1   ") == total


@needs("mkfs.fat", "mcopy")
@pytest.mark.parametrize("fat_bits", ["12", "16"])
def test_the_reader_reads_mkfs_fat_images(tmp_path, fat_bits):
    path = str(tmp_path / "m.img")
    run("mkfs.fat", "-C", "-F", fat_bits, "-n", "CIDATA", path, "20480")
    for name, content in SEED.items():
        (tmp_path / name).write_bytes(content)
        run("mcopy", "-i", path, str(tmp_path / name), "::" + name)
    with open(path, "rb") as image:
        assert fat.read_image(image.read()) == ("CIDATA", SEED)


@needs("mkfs.fat", "mmd")
def test_the_reader_refuses_a_subdirectory(tmp_path):
    path = str(tmp_path / "m.img")
    run("mkfs.fat", "-C", path, "1440")
    run("mmd", "-i", path, "::sub")
    with open(path, "rb") as image, pytest.raises(fat.FATError, match="directory 'sub'"):
        fat.read_image(image.read())


def _root_entry_offset(image, name11):
    reserved, fats, fat_size = struct.unpack_from("<H", image, 14)[0], image[16], struct.unpack_from("<H", image, 22)[0]
    root = (reserved + fats * fat_size) * 512
    return image.index(name11, root)


def test_the_reader_refuses_a_cluster_chain_loop():
    image = bytearray(fat.build_image({"user-data": b"u" * 2000}, "CIDATA"))
    # clusters 2, 3, 4, 5: make 3 point back to 2 (FAT12 at sector 1: cluster 3 is the high 12 bits of bytes 4-5)
    fat_start = 512
    pair = image[fat_start + 4] | image[fat_start + 5] << 8
    pair = (pair & 0x000F) | (2 << 4)
    image[fat_start + 4], image[fat_start + 5] = pair & 0xFF, pair >> 8
    with pytest.raises(fat.FATError, match="cluster chain broken"):
        fat.read_image(bytes(image))


def test_the_reader_refuses_a_size_its_clusters_do_not_hold():
    image = bytearray(fat.build_image({"user-data": b"u" * 100}, "CIDATA"))
    struct.pack_into("<I", image, _root_entry_offset(image, b"USER-D~1   ") + 28, 10 ** 6)
    with pytest.raises(fat.FATError):
        fat.read_image(bytes(image))


@pytest.mark.parametrize("damage, message", [
    (lambda image: image[:1000], "shorter than a FAT"),
    (lambda image: image[:510] + b"\x00\x00" + image[512:], "signature 55 AA"),
    (lambda image: image[:11] + struct.pack("<H", 100) + image[13:], "bytes per sector"),
    (lambda image: image[:19] + struct.pack("<H", 60000) + image[21:], "sectors of 512 bytes"),
])
def test_the_reader_refuses_broken_images_with_its_own_error(damage, message):
    with pytest.raises(fat.FATError, match=message):
        fat.read_image(damage(fat.build_image(SEED, "CIDATA")))


@pytest.mark.parametrize("files, label, message", [
    ({"a": b""}, "cidata", "label"),
    ({"a": b""}, "A" * 12, "label"),
    ({"a/b": b""}, "CIDATA", "file name"),
    ({" a": b""}, "CIDATA", "file name"),
    ({"u": b"x" * (200 * 1024 * 1024)}, "CIDATA", "more than a FAT12 seed holds"),
])
def test_the_writer_refuses_what_it_cannot_write(files, label, message):
    with pytest.raises(fat.FATError, match=message):
        fat.build_image(files, label)
