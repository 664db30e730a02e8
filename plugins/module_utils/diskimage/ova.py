# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disks inside an OVA (an OVF package in one tar file) or a Vagrant ``.box``,
read in place: nothing is unpacked to disk.

An archive is a *container*, not an image format: a disk stored in it is a
tar member, i.e. a run of bytes at a known offset of the archive file.
``MemberPath`` names one member (its text is ``<archive>/<member>``, the way
file managers show paths inside archives) and ``MemberFile`` is the read-only
``ImageFile`` view of it: ``pread`` bounded to the member, ``size()`` the
member size, locks taken on the archive file itself.  ``_io.ImageFile``
returns a MemberFile when it is given a MemberPath, so every format driver
reads a member without knowing it (its ``open(path)`` builds an ImageFile).

Which member (``locate``):
  * ``member`` given (a name, or an index into the disk list): that member of
    the archive ``path``, whatever the file is called;
  * no member, a name ending in ``.ova`` or ``.box``, and no format or (for a
    read-only open) any format but ``raw``: the first disk.  An explicit
    ``raw`` reads the archive file itself; write opens with an explicit
    format open the file itself too (docs/security.md rule 2: nothing is guessed on a write
    path, and a name alone is never taken for content on one).
  * the disk list is the OVF descriptor's DiskSection order (a Disk's fileRef
    → References/File href); without an OVF descriptor (e.g. a libvirt
    Vagrant box), the members whose names end in a disk image suffix, in
    archive order.  Any regular member may be named explicitly.

Tar headers are read with the stdlib ``tarfile`` in read-only ``r:`` mode on
a seekable reader: it seeks over member data (``r|`` streaming mode would
read all of it) and gives each member's data offset (``TarInfo.offset_data``).
Bounds (docs/security.md rule 5): at most MAX_MEMBERS tar headers are scanned;
tarfile reads (pax and GNU long-name data) are capped at MAX_HEADER_READ; the
OVF descriptor at MAX_OVF_SIZE and parsed only without a DTD (no entities);
every member's data must lie inside the archive file.  Compressed archives
(gzip: most Vagrant boxes; bzip2, xz, zstd) and sparse or compressed members
have no fixed member offsets: refused with an error saying to unpack first.

Path policy (docs/security.md rule 1): names found inside a member (VMDK extents, backing
files) resolve only to other members of the same archive, relative to the
member's directory, never with ``..``, absolute names or protocol prefixes,
and never to files on disk (``policy.resolve_reference`` asks the
MemberPath; parents found by UUID search are never looked for).

Duplicate member names: the last one counts, as ``tar x`` leaves it.
Writing inside an archive is never supported (UnsupportedOperation).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import posixpath
import re
import tarfile
from urllib.parse import unquote
from xml.etree import ElementTree

from ._io import ImageFile
from .errors import (FormatError, ImageError, ImageNotFoundError, InvalidOptionError, PolicyError,
                     UnsupportedFeature, UnsupportedOperation)
from .policy import ARCHIVE_SUFFIXES, has_protocol

# Members taken for disks when the archive has no OVF descriptor.
DISK_SUFFIXES = (".vmdk", ".vdi", ".qcow2", ".qcow", ".qed", ".img", ".raw", ".vhd", ".vhdx", ".hdd")
# Tar headers scanned at most (OVAs hold a handful of files).
MAX_MEMBERS = 1024
# Largest single read tarfile may do while scanning (header blocks, pax/long-name data).
MAX_HEADER_READ = 1024 * 1024
# Largest OVF descriptor read (VirtualBox's are ~10 KiB).
MAX_OVF_SIZE = 4 * 1024 * 1024
TAR_BLOCK = 512
# What tarfile raises on malformed headers (numbers and names it cannot decode included).
_TAR_ERRORS = (tarfile.TarError, ValueError, OverflowError, UnicodeError, EOFError)

# Compressed archives: magic at offset 0 → name (no fixed member offsets inside).
COMPRESSED_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

# OVF envelope (DSP0243): namespaces differ between versions, so elements and
# attributes are matched by local name.
_CAPACITY_UNITS = re.compile(r"^\s*byte\s*(?:\*\s*(\d+)\s*(?:\^\s*(\d+))?)?\s*$")
# OVF ovf:format URI fragments → qemu-img format names (informational: members are probed).
_OVF_FORMATS = (("vmdk", "vmdk"), ("qcow2", "qcow2"), ("vhdx", "vhdx"), ("137171", "vpc"),
                ("vhd", "vpc"), ("vdi", "vdi"), ("raw", "raw"))


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _attribute(element, name):
    """Attribute ``name`` of ``element`` in any namespace (ovf:href, href...)."""
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _normalise_name(name):
    """A tar member name without leading ``./`` (as VirtualBox and vagrant write them)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def _unsafe_reason(name):
    """Why ``name`` may not be used as a member or reference name, or None."""
    if not name:
        return "the name is empty"
    if "\0" in name:
        return "the name contains a NUL byte"
    if name.startswith("/"):
        return "absolute names are not allowed"
    if ".." in name.split("/"):
        return "'..' is not allowed"
    return None


class _Member:
    """One tar member: where its data lies in the archive."""

    def __init__(self, name, offset, size, regular, sparse):
        self.name = name
        self.offset = offset
        self.size = size
        self.regular = regular
        self.sparse = sparse


class _BoundedReader:
    """The file object tarfile scans: positioned reads of the archive, each
    bounded, so a hostile pax or long-name header cannot make tarfile
    allocate the size it claims."""

    def __init__(self, image_file):
        self._file = image_file
        self._position = 0
        self.name = image_file.path

    def read(self, size=-1):
        if size is None or size < 0 or size > MAX_HEADER_READ:
            raise FormatError("tar archive: a header asks for %s bytes at offset %d (at most %d are read "
                              "for tar headers)" % (size, self._position, MAX_HEADER_READ), self._file.path)
        data = self._file.pread(self._position, size)
        self._position += len(data)
        return data

    def seek(self, offset, whence=os.SEEK_SET):
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += self._file.size()
        if offset < 0:
            raise FormatError("tar archive: negative offset %d" % offset, self._file.path)
        self._position = offset
        return offset

    def tell(self):
        return self._position


class Archive:
    """The member table of a tar archive (OVA or Vagrant box) and its disks."""

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        self.size = 0
        self.members = {}
        self.unsafe = {}
        self.order = []
        self.ovf_name = None
        self.disks = []

    @classmethod
    def scan(cls, path):
        archive = cls(path)
        with ImageFile(archive.path, lock=False) as image_file:
            archive.size = image_file.size()
            archive._scan(image_file)
            archive._find_disks(image_file)
        return archive

    # ------------------------------------------------------------- tar headers
    def _scan(self, image_file):
        head = image_file.pread(0, TAR_BLOCK)
        for magic, name in COMPRESSED_MAGICS:
            if head.startswith(magic):
                raise UnsupportedFeature(
                    "the archive is %s-compressed (Vagrant boxes usually are): members of a compressed tar "
                    "have no fixed offsets and cannot be read without unpacking; unpack it first "
                    "(tar xf) and use the extracted disk, or decompress it to a plain tar" % name, self.path)
        if len(head) < TAR_BLOCK:
            raise FormatError("not a tar archive (OVA): %d bytes, shorter than one tar header (%d)"
                              % (len(head), TAR_BLOCK), self.path)
        reader = _BoundedReader(image_file)
        try:
            tar = tarfile.open(fileobj=reader, mode="r:")
        except _TAR_ERRORS as exc:
            raise FormatError("not a tar archive (OVA): %s" % exc, self.path)
        try:
            while True:
                try:
                    info = tar.next()
                except _TAR_ERRORS as exc:
                    raise FormatError("tar archive: bad header after %d members: %s"
                                      % (len(self.order), exc), self.path)
                if info is None:
                    break
                if len(self.order) >= MAX_MEMBERS:
                    raise FormatError("tar archive holds more than %d members: refused (an OVA holds a "
                                      "handful of files)" % MAX_MEMBERS, self.path)
                self._add(info)
                # tarfile keeps every TarInfo; only our own table is needed.
                tar.members = []
        except _TAR_ERRORS as exc:
            raise FormatError("tar archive: %s" % exc, self.path)
        if not self.order:
            raise FormatError("tar archive holds no members", self.path)

    def _add(self, info):
        name = _normalise_name(info.name)
        self.order.append(name)
        reason = _unsafe_reason(name)
        if reason is not None:
            self.unsafe[name] = reason
            return
        if info.isdir():
            return
        if info.size < 0 or info.offset_data < 0:
            raise FormatError("tar member %r: negative size %d or data offset %d"
                              % (name, info.size, info.offset_data), self.path)
        sparse = bool(info.sparse) or any(key.startswith("GNU.sparse.") for key in info.pax_headers)
        regular = info.isreg() and not sparse
        member = _Member(name, info.offset_data, info.size, regular, sparse)
        if regular and info.offset_data + info.size > self.size:
            raise FormatError("tar member %r: data at offset %d (%d bytes) lies beyond the end of the archive "
                              "(size %d)" % (name, info.offset_data, info.size, self.size), self.path)
        self.unsafe.pop(name, None)
        self.members[name] = member

    def member(self, name, kind="member"):
        """The regular member ``name`` (normalised), or an ImageError saying why not."""
        name = _normalise_name(name)
        reason = _unsafe_reason(name) or self.unsafe.get(name)
        if reason is not None:
            raise PolicyError("%s %r of archive %s is refused: %s" % (kind, name, self.path, reason), self.path)
        found = self.members.get(name)
        if found is None:
            raise ImageNotFoundError("%s %r is not a member of the archive %s (members: %s)"
                                     % (kind, name, self.path, ", ".join(self.order[:20])), self.path)
        if found.sparse:
            raise UnsupportedFeature("tar member %r is stored sparse: it cannot be read in place; unpack the "
                                     "archive first" % name, self.path)
        if not found.regular:
            raise UnsupportedFeature("tar member %r is not a regular file (link, device or other special "
                                     "member): refused" % name, self.path)
        return found

    # -------------------------------------------------------------------- OVF
    def _find_disks(self, image_file):
        ovf = [name for name in self.order if name.lower().endswith(".ovf") and name in self.members]
        if not ovf:
            self.disks = [{"name": name, "index": index, "size": self.members[name].size, "format": None,
                           "capacity": None, "disk-id": None, "ovf-format": None}
                          for index, name in enumerate(
                              n for n in _unique(self.order)
                              if n in self.members and self.members[n].regular and n.lower().endswith(DISK_SUFFIXES))]
            return
        self.ovf_name = ovf[0]
        member = self.member(self.ovf_name, "OVF descriptor")
        if member.size > MAX_OVF_SIZE:
            raise FormatError("OVF descriptor %r is %d bytes (at most %d are read)"
                              % (self.ovf_name, member.size, MAX_OVF_SIZE), self.path)
        text = image_file.pread_exact(member.offset, member.size, "OVF descriptor %r" % self.ovf_name)
        self.disks = self._parse_ovf(text)

    def _parse_ovf(self, text):
        if b"\0" in text:
            # UTF-16/32 would hide a DTD from the check below; OVF descriptors are UTF-8.
            raise FormatError("OVF descriptor %r is not UTF-8 text (NUL bytes found)" % self.ovf_name, self.path)
        lowered = text.lower()
        if b"<!doctype" in lowered or b"<!entity" in lowered:
            raise FormatError("OVF descriptor %r declares a DTD or entities: refused" % self.ovf_name, self.path)
        try:
            envelope = ElementTree.fromstring(text)
        except (ElementTree.ParseError, ValueError) as exc:
            raise FormatError("OVF descriptor %r is not well-formed XML: %s" % (self.ovf_name, exc), self.path)
        files = {}
        for element in envelope.iter():
            if _local(element.tag) == "File" and _attribute(element, "id") is not None:
                files[_attribute(element, "id")] = element
        disks = []
        for section in envelope.iter():
            if _local(section.tag) != "DiskSection":
                continue
            for disk in section:
                if _local(disk.tag) != "Disk":
                    continue
                file_ref = _attribute(disk, "fileRef")
                if file_ref is None:
                    continue  # a blank disk: nothing stored in the package
                file_element = files.get(file_ref)
                if file_element is None or not _attribute(file_element, "href"):
                    raise FormatError("OVF descriptor %r: disk %r names file %r, which References does not list"
                                      % (self.ovf_name, _attribute(disk, "diskId"), file_ref), self.path)
                disks.append(self._disk_entry(len(disks), disk, file_element))
        return disks

    def _disk_entry(self, index, disk, file_element):
        href = _attribute(file_element, "href")
        if has_protocol(href):
            raise PolicyError("OVF descriptor %r: disk file %r is a URL; only members of the archive are read"
                              % (self.ovf_name, href), self.path)
        # hrefs are relative to the descriptor (RFC 3986 references: percent-escapes decoded when
        # the name as written is not a member).
        base = posixpath.dirname(self.ovf_name)
        name = _normalise_name(posixpath.join(base, href) if base and not href.startswith("/") else href)
        if name not in self.members and "%" in name:
            unquoted = unquote(name)
            if unquoted in self.members:
                name = unquoted
        if _attribute(file_element, "compression"):
            raise UnsupportedFeature("OVF descriptor %r: disk file %r is stored %s-compressed: it cannot be "
                                     "read in place; unpack it first"
                                     % (self.ovf_name, name, _attribute(file_element, "compression")), self.path)
        if _attribute(file_element, "chunkSize"):
            raise UnsupportedFeature("OVF descriptor %r: disk file %r is split into chunks: not supported"
                                     % (self.ovf_name, name), self.path)
        ovf_format = _attribute(disk, "format")
        fmt = None
        if ovf_format:
            for fragment, qemu_name in _OVF_FORMATS:
                if fragment in ovf_format.lower():
                    fmt = qemu_name
                    break
        member = self.members.get(name)
        return {
            "name": name,
            "index": index,
            "size": member.size if member is not None else None,
            "format": fmt,
            "capacity": _capacity(_attribute(disk, "capacity"), _attribute(disk, "capacityAllocationUnits")),
            "disk-id": _attribute(disk, "diskId"),
            "ovf-format": ovf_format,
        }

    # -------------------------------------------------------------- selecting
    def select(self, selector=None):
        """The member name for ``selector``: None (the first disk), an int
        (index into the disk list) or a member name."""
        if selector is None:
            if not self.disks:
                raise FormatError("the archive holds no disk image (%s)"
                                  % ("its OVF descriptor %r lists no disk" % self.ovf_name if self.ovf_name
                                     else "no OVF descriptor and no member named *%s" % "/*".join(DISK_SUFFIXES)),
                                  self.path)
            name = self.disks[0]["name"]
        elif isinstance(selector, bool) or not isinstance(selector, (int, str)):
            raise InvalidOptionError("member must be a name or an index, found %r" % (selector,), self.path)
        elif isinstance(selector, int):
            if not 0 <= selector < len(self.disks):
                raise InvalidOptionError("disk index %d is out of range: the archive holds %d disk(s)"
                                         % (selector, len(self.disks)), self.path)
            name = self.disks[selector]["name"]
        else:
            name = selector
        self.member(name, "disk")
        return _normalise_name(name)


def _unique(names):
    seen = set()
    for name in names:
        if name not in seen:
            seen.add(name)
            yield name


def _capacity(value, units):
    """OVF capacity in bytes (``capacity`` × ``capacityAllocationUnits``), or None."""
    if value is None or not value.strip().isdigit():
        return None
    factor = 1
    if units:
        match = _CAPACITY_UNITS.match(units)
        if match is None:
            return None
        if match.group(1):
            factor = int(match.group(1)) ** int(match.group(2) or 1)
    return int(value) * factor


class MemberPath(str):
    """The name of one archive member: ``<archive>/<member>`` as text, with
    the scanned archive attached.  ``_io.ImageFile`` opens it as a MemberFile;
    ``policy.resolve_reference`` resolves names inside it with resolve_sibling."""

    def __new__(cls, archive, name):
        self = str.__new__(cls, archive.path + "/" + name)
        self.archive = archive
        self.member_name = name
        return self

    @property
    def image_file_class(self):
        return MemberFile

    def allocated_size(self):
        """Bytes the member occupies in the archive (data rounded to tar blocks)."""
        size = self.archive.members[self.member_name].size
        return (size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK

    def resolve_sibling(self, name, kind="file"):
        """The member named ``name`` inside this member (VMDK extent, backing
        file): relative to this member's directory in the same archive, never
        outside it."""
        def refuse(reason):
            return PolicyError("%s %r named in %s is refused: %s" % (kind, name, self, reason), self.archive.path)

        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if not isinstance(name, str):
            raise refuse("the name is not text")
        if name.startswith("json:") or has_protocol(name):
            raise refuse("only plain names of members of the same archive are allowed")
        reason = _unsafe_reason(name)
        if reason is not None:
            raise refuse(reason + " (names inside an archive member resolve to members of the same archive)")
        resolved = _normalise_name(posixpath.join(posixpath.dirname(self.member_name), _normalise_name(name)))
        self.archive.member(resolved, kind)
        return MemberPath(self.archive, resolved)


class MemberFile(ImageFile):
    """Read-only ImageFile over one archive member (see the module docstring)."""

    def __init__(self, path, writable=False, create=False, lock=True, force_share=False):
        # pylint: disable=super-init-not-called,non-parent-init-called
        self.fd = None
        if writable or create:
            raise UnsupportedOperation("images inside an OVA or Vagrant box (tar archive) are read-only: writing "
                                       "is not supported; convert the disk out of the archive first", str(path))
        member = path.archive.member(path.member_name, "disk")
        self.member_offset = member.offset
        self.member_size = member.size
        ImageFile.__init__(self, path.archive.path, writable=False, lock=lock, force_share=force_share)
        if self.member_offset + self.member_size > ImageFile.size(self):
            archive_size = ImageFile.size(self)
            self.close()
            raise FormatError("tar member %r (offset %d, %d bytes) lies beyond the end of the archive (size %d)"
                              % (path.member_name, member.offset, member.size, archive_size), path.archive.path)
        self.path = path

    def size(self):
        return self.member_size

    def allocated_size(self):
        return self.path.allocated_size()

    def pread(self, offset, length):
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        length = max(0, min(length, self.member_size - offset))
        if length == 0:
            return b""
        return ImageFile.pread(self, self.member_offset + offset, length)

    def data_extents(self, offset, length):
        if length <= 0:
            return []
        inside = max(0, min(length, self.member_size - offset))
        extents = []
        if inside:
            for start, run, is_data in ImageFile.data_extents(self, self.member_offset + offset, inside):
                extents.append((start - self.member_offset, run, is_data))
        if inside < length:
            extents.append((offset + inside, length - inside, False))
        return extents

    def _read_only(self, *args, **kwargs):
        raise UnsupportedOperation("images inside an OVA or Vagrant box (tar archive) are read-only", str(self.path))

    pwrite = truncate = allocate = write_zeroes = punch_hole = _read_only

    def __repr__(self):
        return "<MemberFile %s ro>" % (self.path,)


def locate(path, fmt=None, member=None, readonly=True):
    """What to open for ``path``: a MemberPath when ``path`` is read as an
    archive (see the module docstring), else the absolute path itself."""
    if isinstance(path, MemberPath):
        if member is not None:
            raise InvalidOptionError("a member is already selected in %s" % path, path.archive.path)
        return path
    absolute = os.path.abspath(os.fspath(path))
    if member is None:
        if not os.fsdecode(absolute).lower().endswith(ARCHIVE_SUFFIXES):
            return absolute
        if fmt is not None and (fmt == "raw" or not readonly):
            return absolute
    if not readonly:
        raise UnsupportedOperation("images inside an OVA or Vagrant box (tar archive) are read-only: writing is "
                                   "not supported (give the format explicitly to open the archive file itself)",
                                   absolute)
    archive = Archive.scan(absolute)
    return MemberPath(archive, archive.select(member))


def ova_disks(path):
    """The disks of the OVA or Vagrant box ``path``, in the OVF descriptor's
    order (archive order without one): dicts with ``name`` (member name),
    ``index``, ``size`` (bytes in the archive; None when the member is
    missing), ``format`` (qemu-img name derived from the OVF's ovf:format, or
    None), ``capacity`` (virtual size in bytes from the OVF, or None),
    ``disk-id`` and ``ovf-format`` (as the OVF says, or None)."""
    try:
        archive = Archive.scan(path)
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError("cannot read the archive: %s" % (exc.strerror or exc), os.path.abspath(os.fspath(path)))
    return [dict(disk) for disk in archive.disks]
