# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disks inside OVAs and Vagrant boxes, read in place, against `tar x` + qemu-img on the extracted files."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import ova
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageInUseError, ImageNotFoundError, InvalidOptionError, PolicyError, UnsupportedFeature, UnsupportedOperation)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import MAX_IO

MIB = 1024 * 1024
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples", "ova")
# Several data ranges (unaligned), zeroes written over data, holes.
PATTERN_A = ("write -P 0x11 0 100k", "write -P 0x22 1M 64k", "write -P 0x33 3000000 5000",
             "write -P 0x44 4M 1M", "write -z 4500k 64k", "write -P 0x55 6000000 291152")
PATTERN_B = ("write -P 0x66 512 4095", "write -P 0x77 2M 1M", "write -P 0x88 3M 1")
# The sample's disk: 4 MiB, all zero (its SOURCES.md row).
MUTATE_RAW_SHA256 = "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"

OVF_TEMPLATE = """<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
 xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
{files}
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
{disks}
  </DiskSection>
  <VirtualSystem ovf:id="test-vm">
    <Info>A virtual machine</Info>
  </VirtualSystem>
</Envelope>
"""
VMDK_STREAM_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def ovf_text(disks):
    """An OVF descriptor as VirtualBox exports it: [(href, capacity, format URI)]."""
    files = "\n".join('    <File ovf:id="file%d" ovf:href="%s"/>' % (index + 1, href)
                      for index, (href, _capacity, _uri) in enumerate(disks))
    entries = "\n".join(
        '    <Disk ovf:capacity="%d" ovf:diskId="vmdisk%d" ovf:fileRef="file%d" ovf:format="%s"/>'
        % (capacity, index + 1, index + 1, uri) for index, (_href, capacity, uri) in enumerate(disks))
    return OVF_TEMPLATE.format(files=files, disks=entries).encode("utf-8")


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, _BytesReader(data))


class _BytesReader:
    def __init__(self, data):
        self._data = data
        self._position = 0

    def read(self, size=-1):
        end = len(self._data) if size is None or size < 0 else self._position + size
        chunk = self._data[self._position:end]
        self._position += len(chunk)
        return chunk


def build_ova(path, ovf_name, ovf, members, tar_format=tarfile.USTAR_FORMAT):
    """A tar laid out as VirtualBox exports an OVA: the OVF first, then the disks, then the manifest."""
    manifest = ["SHA256 (%s) = %s" % (ovf_name, hashlib.sha256(ovf).hexdigest())]
    with tarfile.open(str(path), "w", format=tar_format) as tar:
        add_bytes(tar, ovf_name, ovf)
        for name, source in members:
            tar.add(str(source), arcname=name)
            manifest.append("SHA256 (%s) = %s" % (name, qemu_tools.file_digest(source)))
        add_bytes(tar, ovf_name[:-4] + ".mf", ("\n".join(manifest) + "\n").encode("ascii"))
    return path


def patterned_raw(path, size, pattern):
    qemu_tools.qemu_img("create", "-f", "raw", str(path), str(size))
    qemu_tools.qemu_io(str(path), *pattern, fmt="raw")
    return path


def stream_vmdk(raw, path):
    qemu_tools.qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(path))
    return path


def extract(archive, directory):
    directory.mkdir()
    subprocess.run(["tar", "-x", "-f", str(archive), "-C", str(directory)], check=True)
    return directory


def our_digest(path, **kwargs):
    digest = hashlib.sha256()
    with diskimage.open_image(str(path), **kwargs) as image:
        for offset in range(0, image.virtual_size, MAX_IO):
            digest.update(image.read(offset, min(MAX_IO, image.virtual_size - offset)))
    return digest.hexdigest()


def qemu_info(path):
    return qemu_tools.qemu_img_json("info", str(path))


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    """Two streamOptimized VMDKs made by qemu-img from patterned raw images, plus a qcow2."""
    base = tmp_path_factory.mktemp("ova-disks")
    raw_a = patterned_raw(base / "a.raw", 8 * MIB, PATTERN_A)
    raw_b = patterned_raw(base / "b.raw", 5 * MIB + 512, PATTERN_B)
    qcow2_b = base / "b.qcow2"
    qemu_tools.qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw_b), str(qcow2_b))
    return {
        "raw_a": raw_a, "raw_b": raw_b, "qcow2_b": qcow2_b,
        "vmdk_a": stream_vmdk(raw_a, base / "vm-disk001.vmdk"),
        "vmdk_b": stream_vmdk(raw_b, base / "vm-disk002.vmdk"),
    }


@pytest.fixture(scope="module")
def single_ova(disks, tmp_path_factory):
    base = tmp_path_factory.mktemp("ova-single")
    ovf = ovf_text([("vm-disk001.vmdk", 8 * MIB, VMDK_STREAM_URI)])
    return build_ova(base / "vm.ova", "vm.ovf", ovf, [("vm-disk001.vmdk", disks["vmdk_a"])])


@pytest.fixture(scope="module")
def multi_ova(disks, tmp_path_factory):
    base = tmp_path_factory.mktemp("ova-multi")
    # DiskSection order (second disk first) differs from archive order on purpose.
    ovf = ovf_text([("vm-disk002.vmdk", 5 * MIB + 512, VMDK_STREAM_URI),
                    ("vm-disk001.vmdk", 8 * MIB, VMDK_STREAM_URI),
                    ("data.qcow2", 5 * MIB + 512, "http://example.invalid/qcow2")])
    return build_ova(base / "multi.ova", "multi.ovf", ovf,
                     [("vm-disk001.vmdk", disks["vmdk_a"]), ("vm-disk002.vmdk", disks["vmdk_b"]),
                      ("data.qcow2", disks["qcow2_b"])])


# ------------------------------------------------------------- acceptance point
def test_ova_converts_to_qcow2_like_tar_x_and_qemu_img(single_ova, tmp_path):
    """Issue 4: an OVA (streamOptimized VMDK inside) converts to qcow2 without unpacking,
    identical to what tar x + qemu-img convert gives."""
    ours = tmp_path / "ours.qcow2"
    diskimage.convert(str(single_ova), str(ours), "qcow2")
    extracted = extract(single_ova, tmp_path / "x")
    theirs = tmp_path / "theirs.qcow2"
    qemu_tools.qemu_img("convert", "-O", "qcow2", str(extracted / "vm-disk001.vmdk"), str(theirs))
    qemu_tools.qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(ours), str(theirs))
    assert qemu_tools.qemu_img_json("check", str(ours))["check-errors"] == 0
    assert qemu_tools.raw_digest(ours, tmp_path, "qcow2") == qemu_tools.raw_digest(theirs, tmp_path, "qcow2")
    assert qemu_info(ours)["virtual-size"] == qemu_info(theirs)["virtual-size"]
    # Nothing was unpacked beside the archive.
    assert sorted(os.listdir(os.path.dirname(str(single_ova)))) == ["vm.ova"]


def test_ova_member_reads_byte_identical(single_ova, disks, tmp_path):
    expected = qemu_tools.raw_digest(disks["raw_a"], tmp_path, "raw")
    assert our_digest(single_ova) == expected
    assert our_digest(single_ova, member="vm-disk001.vmdk") == expected
    assert our_digest(single_ova, member=0, fmt="vmdk") == expected
    assert diskimage.compare(str(single_ova), str(disks["raw_a"]), fmt_b="raw")


def test_ova_info_and_map_match_qemu_on_the_extracted_disk(single_ova, tmp_path):
    extracted = extract(single_ova, tmp_path / "x") / "vm-disk001.vmdk"
    theirs = qemu_info(extracted)
    ours = diskimage.info(str(single_ova))
    assert ours["filename"] == str(single_ova) + "/vm-disk001.vmdk"
    for key in ("virtual-size", "format", "cluster-size"):
        assert ours[key] == theirs[key], key
    their_data = dict(theirs["format-specific"]["data"])
    our_data = dict(ours["format-specific"]["data"])
    for data in (their_data, our_data):
        for extent in data.get("extents", []):
            extent.pop("filename")
    assert our_data == their_data
    # Room taken in the archive: the member rounded to tar blocks.
    assert ours["actual-size"] == -(-os.path.getsize(str(extracted)) // 512) * 512
    their_map = qemu_tools.qemu_img_json("map", str(extracted))
    assert diskimage.map(str(single_ova)) == their_map
    assert diskimage.check(str(single_ova))["check-errors"] == 0
    measured = diskimage.measure(src=str(single_ova), src_member=0)
    assert measured == qemu_tools.qemu_img_json("measure", "-O", "qcow2", str(extracted))


def test_ova_disks_lists_the_ovf_disks_in_disksection_order(multi_ova):
    listed = diskimage.ova_disks(str(multi_ova))
    with tarfile.open(str(multi_ova)) as tar:
        sizes = {member.name: member.size for member in tar.getmembers()}
    assert [disk["name"] for disk in listed] == ["vm-disk002.vmdk", "vm-disk001.vmdk", "data.qcow2"]
    assert [disk["index"] for disk in listed] == [0, 1, 2]
    assert [disk["size"] for disk in listed] == [sizes[disk["name"]] for disk in listed]
    assert [disk["format"] for disk in listed] == ["vmdk", "vmdk", "qcow2"]
    assert [disk["capacity"] for disk in listed] == [5 * MIB + 512, 8 * MIB, 5 * MIB + 512]
    assert listed[0]["disk-id"] == "vmdisk1"
    assert listed[0]["ovf-format"] == VMDK_STREAM_URI


def test_multi_disk_ova_selects_by_default_index_and_name(multi_ova, disks, tmp_path):
    digest_a = qemu_tools.raw_digest(disks["raw_a"], tmp_path, "raw")
    digest_b = qemu_tools.raw_digest(disks["raw_b"], tmp_path, "raw")
    # Default: the first disk of the DiskSection, not of the archive.
    assert our_digest(multi_ova) == digest_b
    assert our_digest(multi_ova, member=1) == digest_a
    assert our_digest(multi_ova, member="vm-disk001.vmdk") == digest_a
    assert our_digest(multi_ova, member=2) == digest_b
    assert diskimage.info(str(multi_ova), member=2)["format"] == "qcow2"
    assert diskimage.compare(str(multi_ova), str(multi_ova), member_a=0, member_b="data.qcow2")
    assert not diskimage.compare(str(multi_ova), str(multi_ova), member_a=0, member_b=1)
    extracted = extract(multi_ova, tmp_path / "x")
    for member, name in ((1, "vm-disk001.vmdk"), ("vm-disk002.vmdk", "vm-disk002.vmdk")):
        ours = tmp_path / ("ours-%s.qcow2" % name)
        diskimage.convert(str(multi_ova), str(ours), "qcow2", src_member=member)
        qemu_tools.qemu_img("compare", "-F", "vmdk", str(ours), str(extracted / name))
        assert qemu_tools.qemu_img_json("check", str(ours))["check-errors"] == 0


def test_member_selector_errors(multi_ova):
    with pytest.raises(InvalidOptionError, match="index 3 is out of range"):
        diskimage.open_image(str(multi_ova), member=3)
    with pytest.raises(ImageNotFoundError, match="not a member"):
        diskimage.open_image(str(multi_ova), member="nope.vmdk")
    with pytest.raises(InvalidOptionError, match="name or an index"):
        diskimage.open_image(str(multi_ova), member=1.5)


def test_member_other_than_a_disk_and_the_archive_itself(single_ova):
    with tarfile.open(str(single_ova)) as tar:
        ovf = tar.extractfile("vm.ovf").read()
    # Any regular member may be named; an explicit raw reads the archive file itself.
    with diskimage.open_image(str(single_ova), member="vm.ovf", fmt="raw") as image:
        assert image.virtual_size == len(ovf)
        assert image.read(0, len(ovf)) == ovf
    with diskimage.open_image(str(single_ova), fmt="raw") as image:
        assert image.virtual_size == os.path.getsize(str(single_ova))


def test_writes_inside_an_archive_are_refused(single_ova):
    before = qemu_tools.file_digest(single_ova)
    with pytest.raises(UnsupportedOperation, match="read-only"):
        diskimage.open_image(str(single_ova), readonly=False)
    with pytest.raises(UnsupportedOperation, match="read-only"):
        diskimage.open_image(str(single_ova), member=0, fmt="vmdk", readonly=False)
    with pytest.raises(UnsupportedOperation):
        diskimage.resize(str(single_ova), 16 * MIB)
    with pytest.raises(UnsupportedOperation):
        diskimage.check(str(single_ova), member=0, repair="all")
    archive = ova.Archive.scan(str(single_ova))
    path = ova.MemberPath(archive, "vm-disk001.vmdk")
    with pytest.raises(UnsupportedOperation):
        ImageFile(path, writable=True)
    with ImageFile(path) as member_file:
        with pytest.raises(UnsupportedOperation):
            member_file.pwrite(0, b"x")
        with pytest.raises(UnsupportedOperation):
            member_file.truncate(0)
    assert qemu_tools.file_digest(single_ova) == before


def test_member_file_is_bounded_to_the_member(single_ova):
    archive = ova.Archive.scan(str(single_ova))
    with tarfile.open(str(single_ova)) as tar:
        info = tar.getmember("vm-disk001.vmdk")
        content = tar.extractfile(info).read()
    with ImageFile(ova.MemberPath(archive, "vm-disk001.vmdk")) as member_file:
        assert member_file.size() == len(content)
        assert member_file.pread(0, len(content) + 4096) == content
        assert member_file.pread(len(content) - 10, 100) == content[-10:]
        assert member_file.pread(len(content), 10) == b""
        extents = member_file.data_extents(0, len(content) + 512)
        assert extents[0][0] == 0 and sum(run for _start, run, _data in extents) == len(content) + 512
        assert extents[-1][2] is False


def test_locks_are_taken_on_the_archive(single_ova):
    with diskimage.open_image(str(single_ova)):
        with pytest.raises(ImageInUseError):
            ImageFile(str(single_ova), writable=True)
    ImageFile(str(single_ova), writable=True).close()


def test_descriptor_extents_resolve_to_members_of_the_same_archive(disks, tmp_path):
    """A monolithicFlat VMDK (descriptor + flat extent) inside an OVA: the extent is
    the sibling member, never the file of that name beside the archive."""
    flat = tmp_path / "src" / "flat.vmdk"
    flat.parent.mkdir()
    qemu_tools.qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
                        str(disks["raw_b"]), str(flat))
    ovf = ovf_text([("disks/flat.vmdk", 5 * MIB + 512, "http://www.vmware.com/interfaces/specifications/vmdk.html")])
    archive = build_ova(tmp_path / "flat.ova", "flat.ovf", ovf,
                        [("disks/flat.vmdk", flat), ("disks/flat-flat.vmdk", tmp_path / "src" / "flat-flat.vmdk")])
    # A decoy beside the archive with the extent's name: never read.
    (tmp_path / "flat-flat.vmdk").write_bytes(b"\xee" * 4096)
    (tmp_path / "disks").mkdir()
    (tmp_path / "disks" / "flat-flat.vmdk").write_bytes(b"\xee" * 4096)
    expected = qemu_tools.raw_digest(disks["raw_b"], tmp_path, "raw")
    assert our_digest(archive) == expected
    extents = diskimage.info(str(archive))["format-specific"]["data"]["extents"]
    assert extents[0]["filename"] == str(archive) + "/disks/flat-flat.vmdk"
    # Without the extent member the decoys are not used.
    missing = build_ova(tmp_path / "missing.ova", "missing.ovf", ovf, [("disks/flat.vmdk", flat)])
    with pytest.raises(ImageNotFoundError, match="not a member of the archive"):
        diskimage.open_image(str(missing))


@pytest.mark.parametrize("extent_name", ["../flat-flat.vmdk", "/etc/passwd", "json:{}", "file:flat-flat.vmdk"])
def test_descriptor_extents_cannot_leave_the_archive(disks, tmp_path, extent_name):
    flat = tmp_path / "flat.vmdk"
    qemu_tools.qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
                        str(disks["raw_b"]), str(flat))
    descriptor = flat.read_text().replace('"flat-flat.vmdk"', '"%s"' % extent_name)
    assert extent_name in descriptor
    flat.write_text(descriptor)
    ovf = ovf_text([("flat.vmdk", 5 * MIB + 512, VMDK_STREAM_URI)])
    archive = build_ova(tmp_path / "evil.ova", "evil.ovf", ovf,
                        [("flat.vmdk", flat), ("flat-flat.vmdk", tmp_path / "flat-flat.vmdk")])
    with pytest.raises(PolicyError):
        diskimage.open_image(str(archive))
    with pytest.raises(PolicyError):
        diskimage.info(str(archive))


def test_pax_and_gnu_archives_with_long_names(disks, tmp_path):
    long_name = "d" * 120 + "/vm-disk001.vmdk"
    ovf = ovf_text([(long_name, 8 * MIB, VMDK_STREAM_URI)])
    expected = qemu_tools.raw_digest(disks["raw_a"], tmp_path, "raw")
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        archive = build_ova(tmp_path / ("long-%d.ova" % tar_format), "vm.ovf", ovf,
                            [(long_name, disks["vmdk_a"])], tar_format=tar_format)
        assert our_digest(archive) == expected
        assert diskimage.ova_disks(str(archive))[0]["name"] == long_name


def test_tar_without_ovf_lists_disk_members_in_archive_order(disks, tmp_path):
    """A libvirt Vagrant box: metadata.json, Vagrantfile and box.img (qcow2), no OVF."""
    archive = tmp_path / "libvirt.box"
    with tarfile.open(str(archive), "w") as tar:
        add_bytes(tar, "./metadata.json", json.dumps({"provider": "libvirt", "format": "qcow2"}).encode())
        add_bytes(tar, "./Vagrantfile", b"Vagrant.configure('2') do |config| end\n")
        tar.add(str(disks["qcow2_b"]), arcname="./box.img")
    assert [disk["name"] for disk in diskimage.ova_disks(str(archive))] == ["box.img"]
    assert our_digest(archive) == qemu_tools.raw_digest(disks["raw_b"], tmp_path, "raw")


# -------------------------------------------------------- the native Vagrant box
def test_gzip_compressed_vagrant_box_is_refused_clearly(tmp_path):
    box = tmp_path / "mutate-test.box"
    shutil.copy(os.path.join(SAMPLES, "mutate-test.box"), str(box))
    for call in (lambda: diskimage.info(str(box)), lambda: diskimage.ova_disks(str(box)),
                 lambda: diskimage.convert(str(box), str(tmp_path / "out.qcow2"), "qcow2"),
                 lambda: diskimage.open_image(str(box), member="box-disk1.vmdk")):
        with pytest.raises(UnsupportedFeature, match="gzip-compressed.*without unpacking"):
            call()
    assert not os.path.exists(str(tmp_path / "out.qcow2"))


def test_native_vagrant_box_reads_in_place_like_tar_x(tmp_path):
    """The VirtualBox-made box, decompressed to a plain tar (as `gunzip` leaves it):
    its disk is read in place, equal to tar x + qemu-img convert."""
    box = tmp_path / "mutate-test.box"
    with gzip.open(os.path.join(SAMPLES, "mutate-test.box"), "rb") as source, open(str(box), "wb") as target:
        shutil.copyfileobj(source, target)
    listed = diskimage.ova_disks(str(box))
    assert [(disk["name"], disk["format"], disk["capacity"]) for disk in listed] == [
        ("box-disk1.vmdk", "vmdk", 4 * MIB)]
    ours = tmp_path / "ours.qcow2"
    diskimage.convert(str(box), str(ours), "qcow2")
    extracted = extract(box, tmp_path / "x")
    theirs = tmp_path / "theirs.qcow2"
    qemu_tools.qemu_img("convert", "-O", "qcow2", str(extracted / "box-disk1.vmdk"), str(theirs))
    qemu_tools.qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(ours), str(theirs))
    assert qemu_tools.qemu_img_json("check", str(ours))["check-errors"] == 0
    assert our_digest(box) == MUTATE_RAW_SHA256
    assert qemu_tools.raw_digest(extracted / "box-disk1.vmdk", tmp_path) == MUTATE_RAW_SHA256
    info = diskimage.info(str(box))
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert info["virtual-size"] == qemu_info(extracted / "box-disk1.vmdk")["virtual-size"]


def test_ovf_hrefs_are_relative_to_the_descriptor_and_may_be_escaped(disks, tmp_path):
    expected = qemu_tools.raw_digest(disks["raw_a"], tmp_path, "raw")
    ovf = ovf_text([("my%20disk.vmdk", 8 * MIB, VMDK_STREAM_URI)])
    archive = build_ova(tmp_path / "sub.ova", "appliance/vm.ovf", ovf,
                        [("my disk.vmdk", disks["vmdk_b"]), ("appliance/my disk.vmdk", disks["vmdk_a"])])
    assert [disk["name"] for disk in diskimage.ova_disks(str(archive))] == ["appliance/my disk.vmdk"]
    assert our_digest(archive) == expected


def test_backing_files_resolve_to_members_of_the_same_archive(disks, tmp_path):
    """A VMDK delta disk whose parent (parentFileNameHint) is another member."""
    work = tmp_path / "src"
    work.mkdir()
    shutil.copy(str(disks["vmdk_a"]), str(work / "base.vmdk"))
    child = work / "child.vmdk"
    qemu_tools.qemu_img("create", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(child))
    qemu_tools.qemu_io(str(child), "write -P 0x99 2M 64k", fmt="vmdk")
    expected = qemu_tools.raw_digest(child, tmp_path, "vmdk")
    ovf = ovf_text([("child.vmdk", 8 * MIB, "http://www.vmware.com/interfaces/specifications/vmdk.html")])
    archive = build_ova(tmp_path / "delta.ova", "delta.ovf", ovf,
                        [("child.vmdk", child), ("base.vmdk", work / "base.vmdk")])
    assert our_digest(archive) == expected
    chain = diskimage.info(str(archive), backing_chain=True)
    assert [layer["filename"] for layer in chain] == [str(archive) + "/child.vmdk", str(archive) + "/base.vmdk"]
    assert chain[0]["backing-filename"] == "base.vmdk"
    # The parent only beside the archive, not inside it: never opened.
    lonely = build_ova(tmp_path / "lonely.ova", "delta.ovf", ovf, [("child.vmdk", child)])
    shutil.copy(str(disks["vmdk_a"]), str(tmp_path / "base.vmdk"))
    with pytest.raises(ImageNotFoundError, match="not a member of the archive"):
        diskimage.open_image(str(lonely))
