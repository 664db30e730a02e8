# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile OVAs and boxes: clear ImageErrors, bounded work, nothing read outside the archive."""

import bz2
import gzip
import io
import lzma
import os
import random
import subprocess
import tarfile

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import ova
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    FormatError, ImageError, ImageNotFoundError, PolicyError, UnsupportedFeature)

MIB = 1024 * 1024
VMDK_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
OVF = """<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="file1" ovf:href="%(href)s"%(file_extra)s/>
  </References>
  <DiskSection>
    <Info>disks</Info>
    <Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="%(ref)s"
          ovf:format="%(uri)s"/>
  </DiskSection>
</Envelope>
"""


def ovf(href="disk.vmdk", file_extra="", ref="file1"):
    return (OVF % {"href": href, "file_extra": file_extra, "ref": ref, "uri": VMDK_URI}).encode()


def tar_bytes(members, tar_format=tarfile.USTAR_FORMAT):
    """A tar in memory from [(TarInfo or name, data)]."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for item, data in members:
            info = item if isinstance(item, tarfile.TarInfo) else tarfile.TarInfo(item)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def vmdk(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-ova")
    raw = base / "disk.raw"
    qemu_tools.qemu_img("create", "-f", "raw", str(raw), "1M")
    qemu_tools.qemu_io(str(raw), "write -P 0x42 4096 64k", fmt="raw")
    image = base / "disk.vmdk"
    qemu_tools.qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(image))
    return image.read_bytes()


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_a_good_archive_reads(vmdk, tmp_path):
    """The baseline the hostile variants below start from."""
    path = write(tmp_path, "good.ova", tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", vmdk)]))
    with diskimage.open_image(path) as image:
        assert image.read(4096, 4) == b"\x42" * 4


def test_member_data_past_the_end_of_the_archive(vmdk, tmp_path):
    good = tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", vmdk)])
    disk_data = good.index(vmdk[:512])
    path = write(tmp_path, "truncated.ova", good[:disk_data + 1024])
    with pytest.raises(FormatError, match="beyond the end of the archive"):
        diskimage.open_image(path)
    with pytest.raises(FormatError, match="beyond the end of the archive"):
        diskimage.ova_disks(path)
    # A header claiming a huge size in a small file.
    info = tarfile.TarInfo("disk.vmdk")
    info.size = 1 << 40
    descriptor = tarfile.TarInfo("vm.ovf")
    descriptor.size = len(ovf())
    padding = bytes(-len(ovf()) % 512)
    path = write(tmp_path, "huge.ova", descriptor.tobuf(tarfile.GNU_FORMAT) + ovf() + padding
                 + info.tobuf(tarfile.GNU_FORMAT) + vmdk)
    with pytest.raises(FormatError, match="beyond the end of the archive"):
        diskimage.open_image(path)


def test_member_file_checks_the_archive_size_again(vmdk, tmp_path):
    path = write(tmp_path, "shrinks.ova", tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", vmdk)]))
    archive = ova.Archive.scan(path)
    os.truncate(path, 2048)
    with pytest.raises(FormatError, match="beyond the end of the archive"):
        diskimage.open_image(ova.MemberPath(archive, "disk.vmdk"))


@pytest.mark.parametrize("name", ["../disk.vmdk", "/disk.vmdk", "a/../disk.vmdk"])
def test_member_names_with_dotdot_or_absolute_are_refused(vmdk, tmp_path, name):
    data = tar_bytes([("vm.ovf", ovf(href=name)), (tarfile.TarInfo(name), vmdk)])
    path = write(tmp_path, "names.ova", data)
    with tarfile.open(path) as tar:
        assert tar.getnames()[1] == name
    with pytest.raises(PolicyError, match="refused"):
        diskimage.open_image(path)
    with pytest.raises(PolicyError, match="refused"):
        diskimage.open_image(path, member=name)
    with pytest.raises(PolicyError, match="refused"):
        diskimage.convert(path, str(tmp_path / "out.qcow2"), "qcow2")
    assert not os.path.exists(str(tmp_path / "out.qcow2"))
    # Nothing beside or above the archive was created or read.
    assert sorted(os.listdir(str(tmp_path))) == ["names.ova"]


def test_thousands_of_members_are_capped(tmp_path):
    members = [("vm.ovf", ovf())] + [("f%05d" % index, b"") for index in range(ova.MAX_MEMBERS + 50)]
    path = write(tmp_path, "many.ova", tar_bytes(members))
    with pytest.raises(FormatError, match="more than %d members" % ova.MAX_MEMBERS):
        diskimage.ova_disks(path)
    with pytest.raises(FormatError, match="more than %d members" % ova.MAX_MEMBERS):
        diskimage.info(path)


@pytest.mark.parametrize("compress,name", [(gzip.compress, "gzip"), (bz2.compress, "bzip2"),
                                           (lzma.compress, "xz")])
def test_compressed_archives_are_refused_clearly(vmdk, tmp_path, compress, name):
    path = write(tmp_path, "vm.box", compress(tar_bytes([("box.ovf", ovf()), ("disk.vmdk", vmdk)])))
    with pytest.raises(UnsupportedFeature, match="%s-compressed.*cannot be read without unpacking" % name):
        diskimage.open_image(path)
    with pytest.raises(UnsupportedFeature, match="%s-compressed" % name):
        diskimage.open_image(path, member=0, fmt="vmdk")


def test_not_a_tar_archive(tmp_path):
    for name, data in (("short.ova", b"x" * 100), ("random.ova", random.Random(4).randbytes(8192)),
                       ("zeros.ova", bytes(4096))):
        path = write(tmp_path, name, data)
        with pytest.raises(FormatError, match="tar"):
            diskimage.open_image(path)


def test_huge_pax_header_is_not_read(tmp_path):
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 512 * MIB
    header = info.tobuf(tarfile.USTAR_FORMAT)
    path = write(tmp_path, "pax.ova", header + b"x" * 4096)
    with pytest.raises(FormatError, match="at most %d are read" % ova.MAX_HEADER_READ):
        diskimage.ova_disks(path)
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = 64 * MIB
    path = write(tmp_path, "longname.ova", info.tobuf(tarfile.GNU_FORMAT) + b"y" * 4096)
    with pytest.raises(FormatError):
        diskimage.ova_disks(path)


@pytest.mark.parametrize("descriptor,error,message", [
    (b'<?xml version="1.0"?><!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
     b"<Envelope>&b;</Envelope>", FormatError, "DTD or entities"),
    (b"<Envelope><References>", FormatError, "not well-formed"),
    (b"\xff\xfe<\x00", FormatError, "not UTF-8"),
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE E [<!ENTITY a "a">]><E>&a;</E>'.encode("utf-16"),
     FormatError, "not UTF-8"),
    (b"\xef\xbb\xbf<Envelope><References>", FormatError, "not well-formed"),
    (ovf(file_extra=' ovf:compression="gzip"'), UnsupportedFeature, "gzip-compressed"),
    (ovf(file_extra=' ovf:chunkSize="1048576"'), UnsupportedFeature, "chunks"),
    (ovf(href="http://example.invalid/disk.vmdk"), PolicyError, "URL"),
    (ovf(href="file:///etc/passwd"), PolicyError, "URL"),
    (ovf(ref="file9"), FormatError, "References does not list"),
    (ovf(href="missing.vmdk"), ImageNotFoundError, "not a member"),
])
def test_hostile_ovf_descriptors(vmdk, tmp_path, descriptor, error, message):
    path = write(tmp_path, "ovf.ova", tar_bytes([("vm.ovf", descriptor), ("disk.vmdk", vmdk)]))
    with pytest.raises(error, match=message):
        diskimage.open_image(path)
    # An explicitly named member does not need the descriptor's disk list... unless it cannot be parsed.
    if error is ImageNotFoundError:
        with diskimage.open_image(path, member="disk.vmdk") as image:
            assert image.read(4096, 1) == b"\x42"


def test_oversized_ovf_descriptor(vmdk, tmp_path):
    padding = b"<!-- " + b"p" * ova.MAX_OVF_SIZE + b" -->"
    path = write(tmp_path, "big.ova", tar_bytes([("vm.ovf", ovf() + padding), ("disk.vmdk", vmdk)]))
    with pytest.raises(FormatError, match="at most %d are read" % ova.MAX_OVF_SIZE):
        diskimage.ova_disks(path)


def test_links_and_special_members_are_not_followed(vmdk, tmp_path):
    symlink = tarfile.TarInfo("link.vmdk")
    symlink.type = tarfile.SYMTYPE
    symlink.linkname = "/etc/passwd"
    hardlink = tarfile.TarInfo("hard.vmdk")
    hardlink.type = tarfile.LNKTYPE
    hardlink.linkname = "disk.vmdk"
    fifo = tarfile.TarInfo("fifo.vmdk")
    fifo.type = tarfile.FIFOTYPE
    path = write(tmp_path, "links.ova", tar_bytes([("vm.ovf", ovf(href="link.vmdk")), ("disk.vmdk", vmdk),
                                                   (symlink, None), (hardlink, None), (fifo, None)]))
    for member in (None, "link.vmdk", "hard.vmdk", "fifo.vmdk"):
        with pytest.raises(UnsupportedFeature, match="not a regular file"):
            diskimage.open_image(path, member=member)
    with diskimage.open_image(path, member="disk.vmdk") as image:
        assert image.read(4096, 1) == b"\x42"


def test_sparse_members_are_refused(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    disk = source / "disk.img"
    with open(str(disk), "wb") as handle:
        handle.truncate(2 * MIB)
        handle.seek(MIB)
        handle.write(b"\x42" * 4096)
    for tar_format in ("gnu", "posix"):
        path = str(tmp_path / ("sparse-%s.box" % tar_format))
        subprocess.run(["tar", "--sparse", "--format=%s" % tar_format, "-c", "-f", path, "-C", str(source),
                        "disk.img"], check=True)
        with tarfile.open(path) as tar:
            assert tar.getmembers()[0].issparse() or tar_format == "posix"
        with pytest.raises(UnsupportedFeature, match="sparse"):
            diskimage.open_image(path, member="disk.img", fmt="raw")


def test_duplicate_members_the_last_one_counts_as_with_tar_x(vmdk, tmp_path):
    path = write(tmp_path, "dup.ova", tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", b"\0" * 1024),
                                                 ("disk.vmdk", vmdk)]))
    with diskimage.open_image(path) as image:
        assert image.read(4096, 1) == b"\x42"


def test_mutated_headers_raise_only_image_errors(vmdk, tmp_path):
    """Random damage to the tar headers and the OVF: an ImageError or a clean read, nothing else."""
    good = tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", vmdk), ("vm.mf", b"SHA256 (vm.ovf) = 00\n")],
                     tar_format=tarfile.PAX_FORMAT)
    disk_start = good.index(vmdk[:512])
    header_ranges = [range(0, disk_start), range(disk_start + len(vmdk), len(good))]
    rng = random.Random(20261123)
    path = tmp_path / "fuzz.ova"
    for round_index in range(150):
        data = bytearray(good)
        for _count in range(rng.randint(1, 8)):
            where = rng.choice(header_ranges)
            position = rng.choice(where)
            data[position] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            diskimage.ova_disks(str(path))
            with diskimage.open_image(str(path)) as image:
                image.read(0, image.virtual_size)
        except ImageError:
            pass
        except Exception as exc:  # pylint: disable=broad-except
            pytest.fail("round %d: %s: %s" % (round_index, type(exc).__name__, exc))
