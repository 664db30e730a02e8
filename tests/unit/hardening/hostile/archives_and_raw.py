# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw images that look like something else (the OpenStack format inspector's rules: GPT and MBR
look-alikes, other formats' magic with versions no driver reads, an ISO, a descriptor that is not one):
read as raw (probe's warning then refuses writes to the first sector) or refused by name, never opened
as the look-alike; a header a driver claims but cannot read is refused, not read as raw; LUKS
headers (key slots, stripes and iteration counts as CPU and memory bombs, payloads out of the file); and
OVA archives (member names with ``..`` or absolute, links out of the archive, members past its end,
descriptors that name other members, tar bombs)."""
from __future__ import annotations

import io
import struct
import tarfile

from hardening.hostile import _util
from hardening.hostile._case import Case


# ------------------------------------------------------------------------------------------------- raw

def _mbr(partition_type, gpt=False):
    data = bytearray(1 << 20)
    struct.pack_into("<B3sBBBBII", data, 446, 0x80 if not gpt else 0, b"\0\2\0", partition_type, 0xff, 0xff, 0xff,
                     1, 2047)
    data[510:512] = b"\x55\xaa"
    if gpt:
        header = bytearray(92)
        header[0:8] = b"EFI PART"
        struct.pack_into("<IIIIQQQQ16sQII", header, 8, 0x00010000, 92, 0, 0, 1, 2047, 34, 2014, b"G" * 16, 2, 128, 128)
        data[512:512 + 92] = header
    return bytes(data)


RAW = [
    ("mbr-linux", lambda: _mbr(0x83), False),
    ("mbr-protective-gpt", lambda: _mbr(0xee, gpt=True), False),
    ("gpt-header-bomb", lambda: _util.poke(_mbr(0xee, gpt=True), 512 + 80, struct.pack("<II", 0xffffffff, 0xffffffff)),
     False),
    ("iso9660", lambda: _util.poke(bytes(1 << 20), 0x8001, b"CD001\x01"), False),
    ("qcow2-magic-version-99", lambda: b"QFI\xfb" + struct.pack(">I", 99) + bytes(65536), True),
    ("qcow2-magic-version-0", lambda: b"QFI\xfb" + struct.pack(">I", 0) + bytes(65536), False),
    ("qcow2-magic-only", lambda: b"QFI\xfb", False),
    ("vmdk-descriptor-like-text", lambda: b"# Disk DescriptorFile\nversion=1\ncreateType=\"bogus\"\n" + bytes(4096),
     True),
    ("vmdk-magic-garbage", lambda: b"KDMV" + b"\xff" * 4092, True),
    ("vhdx-magic-garbage", lambda: b"vhdxfile" + b"\xff" * (1 << 20), True),
    ("vpc-magic-short", lambda: b"conectix" + bytes(100), True),
    ("qed-magic-garbage", lambda: b"QED\x00" + b"\xff" * 4092, True),
    ("luks-magic-version-3", lambda: b"LUKS\xba\xbe" + struct.pack(">H", 3) + bytes(4096), False),
    ("vdi-signature-garbage", lambda: _util.poke(bytes(4096), 64, struct.pack("<I", 0xbeda107f)), True),
    ("parallels-magic-garbage", lambda: b"WithoutFreeSpace" + b"\xff" * 4080, False),
    ("bochs-magic-garbage", lambda: b"Bochs Virtual HD Image".ljust(32, b"\0") + b"\xff" * 480, False),
    ("cloop-preamble-garbage", lambda: b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 "
                                       b"/dev/cloop $1\n".ljust(128, b"\0") + b"\xff" * 512, True),
    ("empty", lambda: b"", False),
    ("one-byte", lambda: b"\x01", False),
    ("all-ones", lambda: b"\xff" * 65536, False),
]


# ------------------------------------------------------------------------------------------------ luks
# LUKS1 field offsets (big-endian; spec section 2.4); key slot fields within a 48-byte slot at 208
PAYLOAD, KEY_BYTES, MK_ITERATIONS, SLOTS = 104, 108, 164, 208
SLOT_ITERATIONS, SLOT_KEY_OFFSET, SLOT_STRIPES = 4, 40, 44


def _luks_edit(*edits):
    def build(directory):
        data = _util.pristine("luks")
        for offset, value in edits:
            data = _util.poke(data, offset, value)
        return _util.write(directory / "disk.luks", data)
    return build


def _u32(value):
    return struct.pack(">I", value)


LUKS = [
    ("pristine", ()),
    ("version-2", ((6, struct.pack(">H", 2)),)),
    ("mk-iterations-bomb", ((MK_ITERATIONS, _u32(0xffffffff)),)),
    ("slot-iterations-bomb", ((SLOTS + SLOT_ITERATIONS, _u32(0xffffffff)),)),
    ("slot-iterations-zero", ((SLOTS + SLOT_ITERATIONS, _u32(0)),)),
    ("stripes-bomb", ((SLOTS + SLOT_STRIPES, _u32(0xffffffff)),)),
    ("stripes-zero", ((SLOTS + SLOT_STRIPES, _u32(0)),)),
    ("stripes-one", ((SLOTS + SLOT_STRIPES, _u32(1)),)),
    ("slot-key-past-eof", ((SLOTS + SLOT_KEY_OFFSET, _u32(0x7fffffff)),)),
    ("slot-key-on-header", ((SLOTS + SLOT_KEY_OFFSET, _u32(0)),)),
    ("slot-key-on-payload", ((SLOTS + SLOT_KEY_OFFSET, _u32(4096)),)),
    ("slot-active-garbage", ((SLOTS, _u32(0x12345678)),)),
    ("key-bytes-zero", ((KEY_BYTES, _u32(0)),)),
    ("key-bytes-huge", ((KEY_BYTES, _u32(0x7fffffff)),)),
    ("key-bytes-odd", ((KEY_BYTES, _u32(33)),)),
    ("payload-zero", ((PAYLOAD, _u32(0)),)),
    ("payload-past-eof", ((PAYLOAD, _u32(0x7fffffff)),)),
    ("payload-max", ((PAYLOAD, _u32(0xffffffff)),)),
    ("cipher-unknown", ((8, b"serpent".ljust(32, b"\0")),)),
    ("cipher-unterminated", ((8, b"a" * 32),)),
    ("mode-unknown", ((40, b"ctr-plain64".ljust(32, b"\0")),)),
    ("mode-ivgen-unknown", ((40, b"xts-essiv:whirlpool".ljust(32, b"\0")),)),
    ("hash-unknown", ((72, b"whirlpool".ljust(32, b"\0")),)),
    ("hash-md5", ((72, b"md5".ljust(32, b"\0")),)),
    ("digest-wrong", ((112, b"\0" * 20),)),
]


# ------------------------------------------------------------------------------------------------- ova

OVF = ('<?xml version="1.0"?>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
       'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References>%s</References><DiskSection><Info>d</Info>'
       '%s</DiskSection></Envelope>')


def ovf(hrefs=("disk.vmdk",)):
    files = "".join('<File ovf:id="f%d" ovf:href="%s"/>' % (n, href) for n, href in enumerate(hrefs))
    disks = "".join('<Disk ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d%d" '
                    'ovf:fileRef="f%d" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html'
                    '#streamOptimized"/>' % (n, n) for n in range(len(hrefs)))
    return (OVF % (files, disks)).encode()


def _stream_vmdk():
    return _util.pristine("vmdk", options=(("subformat", "streamOptimized"),))


def tar_bytes(members, tar_format=tarfile.USTAR_FORMAT):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for item, data in members:
            info = item if isinstance(item, tarfile.TarInfo) else tarfile.TarInfo(item)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _huge_member():
    descriptor = tarfile.TarInfo("vm.ovf")
    data = ovf()
    descriptor.size = len(data)
    info = tarfile.TarInfo("disk.vmdk")
    info.size = 1 << 40
    return (descriptor.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512) + info.tobuf(tarfile.GNU_FORMAT)
            + _stream_vmdk())


def _many_members():
    return tar_bytes([("vm.ovf", ovf())] + [("m%05d" % n, b"") for n in range(20000)])


OVA = [
    ("pristine", lambda: tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", _stream_vmdk())]), False),
    ("member-dotdot", lambda: tar_bytes([("vm.ovf", ovf(["../disk.vmdk"])), ("../disk.vmdk", _stream_vmdk())]), True),
    ("member-absolute", lambda: tar_bytes([("vm.ovf", ovf(["/etc/passwd"])), ("/etc/passwd", _stream_vmdk())]), True),
    ("href-etc-passwd", lambda: tar_bytes([("vm.ovf", ovf(["/etc/passwd"])), ("disk.vmdk", _stream_vmdk())]), True),
    ("href-outside", lambda: tar_bytes([("vm.ovf", ovf(["../outside/secret.raw"])), ("disk.vmdk", _stream_vmdk())]),
     True),
    ("href-url", lambda: tar_bytes([("vm.ovf", ovf(["http://169.254.169.254/disk.vmdk"])),
                                    ("disk.vmdk", _stream_vmdk())]), True),
    ("href-missing-member", lambda: tar_bytes([("vm.ovf", ovf(["other.vmdk"])), ("disk.vmdk", _stream_vmdk())]),
     True),
    ("symlink-member", lambda: tar_bytes([("vm.ovf", ovf()), (_link("disk.vmdk", "/etc/passwd"), None)]), True),
    ("hardlink-member", lambda: tar_bytes([("vm.ovf", ovf()), (_link("disk.vmdk", "/etc/passwd", tarfile.LNKTYPE),
                                                               None)]), True),
    ("member-past-end", _huge_member, True),
    ("member-is-descriptor", lambda: tar_bytes([("vm.ovf", ovf(["vm.ovf"]))]), False),
    ("disk-names-other-extent", lambda: tar_bytes([
        ("vm.ovf", ovf()), ("disk.vmdk", b'# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n'
                                         b'createType="monolithicFlat"\nRW 2048 FLAT "/etc/passwd" 0\n')]), True),
    ("duplicate-members", lambda: tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", _stream_vmdk()),
                                             ("disk.vmdk", b"\xff" * 4096)]), False),
    ("descriptor-entity-bomb", lambda: tar_bytes([
        ("vm.ovf", b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;'
                   b'&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><Envelope>&c;</Envelope>'),
        ("disk.vmdk", _stream_vmdk())]), False),
    ("descriptor-external-entity", lambda: tar_bytes([
        ("vm.ovf", b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]><Envelope>&x;'
                   b'</Envelope>'), ("disk.vmdk", _stream_vmdk())]), False),
    ("many-members", _many_members, False),
    ("pax-size-bomb", lambda: tar_bytes([("vm.ovf", ovf()), (_pax("disk.vmdk", {"size": str(1 << 60)}), b"")],
                                        tarfile.PAX_FORMAT), False),
    ("pax-path-dotdot", lambda: tar_bytes([("vm.ovf", ovf(["../disk.vmdk"])),
                                           (_pax("disk.vmdk", {"path": "../disk.vmdk"}), _stream_vmdk())],
                                          tarfile.PAX_FORMAT), True),
    ("truncated-header", lambda: tar_bytes([("vm.ovf", ovf()), ("disk.vmdk", _stream_vmdk())])[:700], False),
    ("not-a-tar", lambda: b"\xff" * 10240, False),
]


def _pax(name, headers):
    info = tarfile.TarInfo(name)
    info.pax_headers = dict(headers)
    return info


def _bytes(name, make):
    def build(directory):
        _util.outside_file(directory)
        return _util.write(directory / name, make())
    return build


def _cases():
    cases = []
    for label, make, refused in RAW:
        cases.append(Case(name="raw/lookalike-%s" % label, fmt="raw", build=_bytes("disk.img", make),
                          must_refuse=refused,
                          refuse=r"(?i)not supported|unsupported|version|invalid|corrupt|not a|magic|header|short|"
                                 r"expected|signature|descriptor|refus|extent|too small|truncated|cannot|fewer than|"
                                 r"must be",
                          source="format-inspector"))
    for label, edits in LUKS:
        cases.append(Case(name="luks/%s" % label, fmt="luks", build=_luks_edit(*edits), source="CVE-class luks bombs"))
    for label, make, refused in OVA:
        cases.append(Case(name="ova/%s" % label, fmt="ova", build=_bytes("vm.ova", make), must_refuse=refused,
                          refuse=r"refused|not found|no member|beyond the end|not a regular|link|missing|names no|"
                                 r"does not exist|protocol|no such|not in the archive|is a URL|not a member",
                          source="CVE-2024-32498 (OVA members)"))
    return cases


CASES = _cases()
