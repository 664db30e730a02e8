# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallels Desktop ``.hdd`` bundles (DiskDescriptor.xml + storages), which
qemu-img does not read: the native plain, expanding and split samples read to
their documented digests and, storage by storage, as qemu-img reads each
``.hds``; snapshot chains fall through to older images; storage names obey
the path policy; damaged descriptors give clear errors."""

import gzip
import hashlib
import os
import shutil

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageNotFoundError, PolicyError, UnsupportedFeature, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe_format

M = 1024 * 1024
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "parallels")
GUID = "{5fbaabe3-6958-40ff-92a7-860e329aab41}"
# samples/parallels/SOURCES.md: MiB i of plain/expanding holds byte i.
PLAIN_RAW_SHA256 = "7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f"
SPLIT_STORAGE_SECTORS = [3989504] * 5 + [1024000]


def unpack_bundle(name, tmp_path):
    """Copy samples/parallels/NAME.hdd to tmp_path, storages decompressed."""
    source = os.path.join(SAMPLES, name)
    bundle = tmp_path / name
    bundle.mkdir()
    for entry in sorted(os.listdir(source)):
        if entry.endswith(".gz"):
            with gzip.open(os.path.join(source, entry), "rb") as packed, open(str(bundle / entry[:-3]), "wb") as out:
                shutil.copyfileobj(packed, out, 4 * M)
        else:
            shutil.copyfile(os.path.join(source, entry), str(bundle / entry))
    return bundle


def digest(path, fmt=None):
    with diskimage.open_image(str(path), fmt=fmt) as opened:
        hashed = hashlib.sha256()
        for position in range(0, opened.virtual_size, 8 * M):
            hashed.update(opened.read(position, min(8 * M, opened.virtual_size - position)))
        return hashed.hexdigest()


@pytest.mark.parametrize("name", ["plain.hdd", "expanding.hdd"])
def test_single_storage_bundles(tmp_path, name):
    bundle = unpack_bundle(name, tmp_path)
    descriptor = bundle / "DiskDescriptor.xml"
    assert probe_format(str(descriptor)) == "parallels"
    assert digest(descriptor) == PLAIN_RAW_SHA256
    # The bundle directory and the empty placeholder inside it, with the format given.
    assert digest(bundle, fmt="parallels") == PLAIN_RAW_SHA256
    assert digest(bundle / name, fmt="parallels") == PLAIN_RAW_SHA256
    with diskimage.open_image(str(descriptor)) as opened:
        for mib in (0, 1, 42, 99):
            assert opened.read(mib * M, 512) == bytes([mib]) * 512
    info = diskimage.info(str(descriptor))
    assert info["format"] == "parallels" and info["virtual-size"] == 100 * M
    storage_file = bundle / ("%s.0.%s.hds" % (name, GUID))
    assert info["actual-size"] == os.stat(str(storage_file)).st_blocks * 512 + os.stat(str(descriptor)).st_blocks * 512
    assert "dirty-flag" not in info
    with pytest.raises(UnsupportedOperation, match="bundles"):
        diskimage.check(str(descriptor))


def test_expanding_storage_reads_as_qemu_reads_the_hds(tmp_path):
    bundle = unpack_bundle("expanding.hdd", tmp_path)
    hds = bundle / ("expanding.hdd.0.%s.hds" % GUID)
    out = tmp_path / "oracle.raw"
    qemu_img("convert", "-f", "parallels", "-O", "raw", hds, out)
    with open(str(out), "rb") as oracle:
        assert hashlib.sha256(oracle.read()).hexdigest() == PLAIN_RAW_SHA256
    assert digest(hds) == PLAIN_RAW_SHA256
    assert diskimage.check(str(hds)) == qemu_img_json("check", hds)
    assert diskimage.map(str(hds)) == qemu_img_json("map", hds)


def test_split_bundle_storage_by_storage(tmp_path):
    bundle = unpack_bundle("split.hdd", tmp_path)
    descriptor = bundle / "DiskDescriptor.xml"
    with diskimage.open_image(str(descriptor)) as opened:
        assert opened.virtual_size == 20971520 * 512
        assert opened.read(0, M) == b"\x01" * M
        start = 0
        for index, sectors in enumerate(SPLIT_STORAGE_SECTORS):
            storage = bundle / ("split.hdd.%d.%s.hds" % (index, GUID))
            end = start + sectors * 512
            # The documented boundary bytes (dissect test_hdd.py).
            if index < len(SPLIT_STORAGE_SECTORS) - 1:
                assert opened.read(end - 512, 1024) == bytes([index + 1]) * 512 + bytes([index + 2]) * 512
            # Allocation and data of the storage as qemu-img reads the .hds alone.
            oracle_map = qemu_img_json("map", "-f", "parallels", storage)
            ours = opened.block_status(start, end - start)
            assert [(e.start - start, e.length, e.kind == DATA) for e in ours] == \
                [(e["start"], e["length"], e["data"]) for e in oracle_map]
            raw = tmp_path / ("storage%d.raw" % index)
            qemu_img("convert", "-f", "parallels", "-O", "raw", storage, raw)
            with open(str(raw), "rb") as oracle:
                for extent in oracle_map:
                    if extent["data"]:
                        oracle.seek(extent["start"])
                        assert opened.read(start + extent["start"], extent["length"]) == oracle.read(extent["length"])
            raw.unlink()
            start = end


DESCRIPTOR = """<?xml version='1.0' encoding='UTF-8'?>
<Parallels_disk_image Version="1.0">
    <Disk_Parameters>
        <Disk_size>{sectors}</Disk_size>
    </Disk_Parameters>
    <StorageData>
{storages}
    </StorageData>
    <Snapshots>
{shots}
    </Snapshots>
</Parallels_disk_image>
"""


def storage_xml(start, end, images):
    body = "".join("<Image><GUID>%s</GUID><Type>%s</Type><File>%s</File></Image>" % image for image in images)
    return "<Storage><Start>%d</Start><End>%d</End><Blocksize>128</Blocksize>%s</Storage>" % (start, end, body)


def shot_xml(guid, parent):
    return "<Shot><GUID>%s</GUID><ParentGUID>%s</ParentGUID></Shot>" % (guid, parent)


BASE = "{11111111-1111-1111-1111-111111111111}"
DELTA = "{22222222-2222-2222-2222-222222222222}"
NULL = "{00000000-0000-0000-0000-000000000000}"


def make_chain(tmp_path):
    """A bundle with two storages, each a base image and a snapshot delta, and its expected content."""
    bundle = tmp_path / "chain.hdd"
    bundle.mkdir()
    storages = []
    expected = b""
    for index, writes in enumerate((["write -P 0x31 0 1M", "write -P 0x32 2M 64k"],
                                    ["write -P 0x41 64k 128k"])):
        base = bundle / ("base%d.hds" % index)
        delta = bundle / ("delta%d.hds" % index)
        for layer in (base, delta):
            qemu_img("create", "-q", "-f", "parallels", "-o", "cluster_size=64k", layer, "3M")
        qemu_io(base, *writes, fmt="parallels")
        qemu_io(delta, "write -P 0x%x 512k 64k" % (0x50 + index), "write -P 0x%x 2M 8k" % (0x60 + index),
                fmt="parallels")
        base_bytes = bytearray(open_raw(base, tmp_path))
        delta_bytes = open_raw(delta, tmp_path)
        for extent in qemu_img_json("map", "-f", "parallels", delta):
            if extent["data"]:
                base_bytes[extent["start"]:extent["start"] + extent["length"]] = \
                    delta_bytes[extent["start"]:extent["start"] + extent["length"]]
        expected += bytes(base_bytes)
        storages.append(storage_xml(index * 6144, (index + 1) * 6144, [
            (BASE, "Compressed", base.name), (DELTA, "Compressed", delta.name)]))
    (bundle / "DiskDescriptor.xml").write_text(DESCRIPTOR.format(
        sectors=12288, storages="\n".join(storages), shots=shot_xml(BASE, NULL) + shot_xml(DELTA, BASE)))
    return bundle, expected


def open_raw(path, tmp_path):
    out = tmp_path / "layer.raw"
    qemu_img("convert", "-f", "parallels", "-O", "raw", path, out)
    data = out.read_bytes()
    out.unlink()
    return data


def test_snapshot_chain_falls_through(tmp_path):
    bundle, expected = make_chain(tmp_path)
    with diskimage.open_image(str(bundle / "DiskDescriptor.xml")) as opened:
        assert opened.read(0, opened.virtual_size) == expected
    target = tmp_path / "flat.qcow2"
    diskimage.convert(str(bundle / "DiskDescriptor.xml"), str(target), "qcow2")
    assert open_raw_qcow2(target, tmp_path) == expected


def open_raw_qcow2(path, tmp_path):
    out = tmp_path / "flat.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", path, out)
    return out.read_bytes()


def test_block_status_of_a_bundle(tmp_path):
    bundle, expected = make_chain(tmp_path)
    with diskimage.open_image(str(bundle / "DiskDescriptor.xml")) as opened:
        size = opened.virtual_size
    mapped = diskimage.map(str(bundle / "DiskDescriptor.xml"))
    assert sum(entry["length"] for entry in mapped) == size
    for entry in mapped:
        if not entry["data"]:
            assert expected[entry["start"]:entry["start"] + entry["length"]] == bytes(entry["length"])
    assert any(entry["data"] for entry in mapped) and any(not entry["data"] for entry in mapped)


def write_descriptor(bundle, storages, sectors, shots=""):
    (bundle / "DiskDescriptor.xml").write_text(DESCRIPTOR.format(sectors=sectors, storages=storages, shots=shots))


@pytest.fixture(name="bundle")
def small_bundle(tmp_path):
    bundle = tmp_path / "disk.hdd"
    bundle.mkdir()
    qemu_img("create", "-q", "-f", "parallels", bundle / "disk.hds", "1M")
    (bundle / "disk.raw").write_bytes(b"\x77" * M)
    return bundle


@pytest.mark.parametrize("name", ["../disk.hds", "/etc/passwd", "sub/../../disk.hds"])
def test_storage_names_obey_the_policy(bundle, name):
    write_descriptor(bundle, storage_xml(0, 2048, [(BASE, "Plain", name)]), 2048)
    with pytest.raises(PolicyError):
        diskimage.open_image(str(bundle / "DiskDescriptor.xml"))


@pytest.mark.parametrize("storages,sectors,shots,error,message", [
    (storage_xml(0, 2048, [(BASE, "Plain", "missing.raw")]), 2048, "", ImageNotFoundError, "missing.raw"),
    (storage_xml(0, 4096, [(BASE, "Plain", "disk.raw")]), 4096, "", CorruptImageError, "holds 1048576 bytes"),
    (storage_xml(0, 4096, [(BASE, "Compressed", "disk.hds")]), 4096, "", CorruptImageError, "virtual size"),
    (storage_xml(0, 2048, [(BASE, "Encrypted", "disk.raw")]), 2048, "", UnsupportedFeature, "image type"),
    (storage_xml(0, 1024, [(BASE, "Plain", "disk.raw")]) + storage_xml(1025, 2048, [(BASE, "Plain", "disk.raw")]),
     2048, "", CorruptImageError, "does not continue"),
    (storage_xml(0, 2048, [(BASE, "Plain", "disk.raw")]), 4096, "", CorruptImageError, "cover 2048 sectors"),
    (storage_xml(0, 2048, [(BASE, "Plain", "disk.raw")]), 2048, shot_xml(DELTA, NULL), CorruptImageError,
     "no image for snapshot"),
    (storage_xml(0, 2048, [(BASE, "Plain", "disk.raw")]), 2048, shot_xml(BASE, DELTA) + shot_xml(DELTA, BASE),
     UnsupportedFeature, "0 branches"),
    (storage_xml(0, 2048, [(BASE, "Plain", "disk.raw")]), 2048, shot_xml(BASE, DELTA), CorruptImageError,
     "parent chain"),
    ("", 2048, "", FormatError, "0 storages"),
    (storage_xml(0, 2048, [(BASE, "Plain", "disk.raw")]), "x", "", FormatError, "Disk_size"),
])
def test_damaged_descriptors(bundle, storages, sectors, shots, error, message):
    write_descriptor(bundle, storages, sectors, shots)
    with pytest.raises(error, match=message):
        diskimage.open_image(str(bundle / "DiskDescriptor.xml"))


def test_plain_bundle_reads_its_raw_storage(bundle):
    write_descriptor(bundle, storage_xml(0, 2048, [(BASE, "Plain", "disk.raw")]), 2048)
    with diskimage.open_image(str(bundle / "DiskDescriptor.xml")) as opened:
        assert opened.read(0, M) == b"\x77" * M


@pytest.mark.parametrize("document,error,message", [
    (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'a'>]><Parallels_disk_image/>", FormatError, "entities"),
    (b"<Parallels_disk_image><Disk_Parameters>", FormatError, "not well-formed"),
    (b"<Parallels_disk_image>" + b" " * (2 * M) + b"</Parallels_disk_image>", UnsupportedFeature, "exceeds"),
])
def test_hostile_descriptor_documents(bundle, document, error, message):
    (bundle / "DiskDescriptor.xml").write_bytes(document)
    with pytest.raises(error, match=message):
        diskimage.open_image(str(bundle / "DiskDescriptor.xml"), fmt="parallels")


def test_a_raw_image_with_a_descriptor_header_is_not_a_bundle(tmp_path):
    # Only a file named DiskDescriptor.xml is read as a descriptor.
    path = tmp_path / "guest.img"
    path.write_bytes(b"<?xml version='1.0'?><Parallels_disk_image>" + bytes(4096))
    assert probe_format(str(path)) == "raw"
