# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files an image names: backing files (qcow2, qcow, qed, vmdk parentFileNameHint), qcow2 external data
files and vmdk extents, each set to every hostile name of ``NAMES``.

Classes: CVE-2024-32498 and its kin (backing/data-file/extent names that reach host files: absolute,
``..``, symbolic links out of the directory), ``json:`` and protocol names (QEMU's nbd:, http:, file:,
vvfat: ... prefixes), device nodes, FIFOs (an open would block), directories, NUL bytes, missing files,
self-references; the OpenStack format inspector's rules (a backing file or data file named at all in an
upload; vmdk extents other than the image's own).  A name the policy accepts (a file beside the image,
``./a:b``) is a bounded success, so the corpus shows the policy is not a blanket refusal.
"""
from __future__ import annotations

import os
import pathlib
import struct

from hardening.hostile import _util
from hardening.hostile._case import Case

REFUSED = r"is refused|protocol|does not exist|loop|not a regular file|NUL|invalid|not valid|cannot"
MISSING = r"does not exist|not found|No such"
LOOP = r"loop|depth|refused|more than|longer than"
# a damaged name may also spoil the structure that holds it (a descriptor line, a header length)
DAMAGED = REFUSED + r"|no usable extent|expected <= \d+|too long"


def _outside_abs(directory):
    return str(_util.outside_file(directory))


def _outside_rel(directory):
    _util.outside_file(directory)
    return "../%s/secret.raw" % _util.OUTSIDE


def _outside_dotdot(directory):
    _util.outside_file(directory)
    (pathlib.Path(directory) / "sub").mkdir(exist_ok=True)
    return "sub/../../%s/secret.raw" % _util.OUTSIDE


def _abs_dotdot_inside(directory):
    # an absolute name that comes back into the directory through ".." (refused: ".." without allow_dirs)
    _util.write(pathlib.Path(directory) / "base.raw", bytes(65536))
    return "%s/../%s/base.raw" % (directory, os.path.basename(str(directory)))


def _symlink_out(directory):
    _util.symlink_out(directory, "link.raw", _util.outside_file(directory))
    return "link.raw"


def _symlink_etc(directory):
    _util.symlink_out(directory, "passwd.raw", "/etc/passwd")
    return "passwd.raw"


def _symlink_dir_out(directory):
    target = _util.outside_file(directory).parent
    _util.symlink_out(directory, "linkdir", target)
    return "linkdir/secret.raw"


def _symlink_loop(directory):
    _util.symlink_out(directory, "loop1.raw", "loop2.raw")
    _util.symlink_out(directory, "loop2.raw", "loop1.raw")
    return "loop1.raw"


def _fifo(directory):
    os.mkfifo(str(pathlib.Path(directory) / "fifo.raw"))
    return "fifo.raw"


def _directory(directory):
    (pathlib.Path(directory) / "adir").mkdir(exist_ok=True)
    return "adir"


def _beside(directory):
    _util.write(pathlib.Path(directory) / "base.raw", b"\x33" * 65536 + bytes(2 * _util.MIB - 65536))
    return "base.raw"


def _colon_file(directory):
    _util.write(pathlib.Path(directory) / "a:b", bytes(2 * _util.MIB))
    return "./a:b"


def _subdir(directory):
    _util.write(pathlib.Path(directory) / "sub" / "base.raw", bytes(2 * _util.MIB))
    return "sub/base.raw"


def _abs_beside(directory):
    _util.write(pathlib.Path(directory) / "base.raw", bytes(2 * _util.MIB))
    return str(pathlib.Path(directory) / "base.raw")


def _const(name):
    return lambda directory: name


# label, name (a function of the case's directory), must_refuse, the refusal's pattern
NAMES = [
    ("etc-passwd", _const("/etc/passwd"), True, REFUSED),
    ("etc-shadow", _const("/etc/shadow"), True, REFUSED),
    ("proc-environ", _const("/proc/self/environ"), True, REFUSED),
    ("dev-zero", _const("/dev/zero"), True, REFUSED),
    ("dev-stdin", _const("/dev/stdin"), True, REFUSED),
    ("outside-absolute", _outside_abs, True, REFUSED),
    ("outside-relative", _outside_rel, True, REFUSED),
    ("outside-dotdot", _outside_dotdot, True, REFUSED),
    ("absolute-dotdot-back-inside", _abs_dotdot_inside, True, REFUSED),
    ("symlink-out", _symlink_out, True, REFUSED),
    ("symlink-etc", _symlink_etc, True, REFUSED),
    ("symlinked-dir-out", _symlink_dir_out, True, REFUSED),
    ("symlink-loop", _symlink_loop, True, REFUSED),
    ("fifo", _fifo, True, REFUSED),
    ("directory", _directory, True, REFUSED),
    ("json-protocol", _const('json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}'), True, REFUSED),
    ("nbd-protocol", _const("nbd:127.0.0.1:10809"), True, REFUSED),
    ("nbd-unix-protocol", _const("nbd+unix:///export?socket=/run/nbd.sock"), True, REFUSED),
    ("http-protocol", _const("http://169.254.169.254/latest/meta-data"), True, REFUSED),
    ("file-protocol", _const("file:/etc/passwd"), True, REFUSED),
    ("vvfat-protocol", _const("fat:rw:/etc"), True, REFUSED),
    ("blkdebug-protocol", _const("blkdebug:/etc/passwd:base.raw"), True, REFUSED),
    ("ssh-protocol", _const("ssh://root@localhost/etc/shadow"), True, REFUSED),
    ("rbd-protocol", _const("rbd:pool/image:conf=/etc/ceph.conf"), True, REFUSED),
    ("host-device-protocol", _const("host_device:/dev/sda"), True, REFUSED),
    ("nul-byte", _const("base.raw\x00/etc/passwd"), True, DAMAGED + "|" + MISSING),
    ("missing", _const("missing.raw"), True, MISSING),
    ("tilde", _const("~/.ssh/id_rsa"), True, MISSING + "|" + REFUSED),
    ("long-name", _const("a" * 4000), True, MISSING + "|" + DAMAGED),
    ("newline-name", _const("base.raw\n/etc/passwd"), True, MISSING + "|" + DAMAGED),
    ("beside", _beside, False, ""),
    ("colon-file-name", _colon_file, False, ""),
    ("subdirectory", _subdir, False, ""),
    ("absolute-beside", _abs_beside, False, ""),
]


def _encode(name):
    return name.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------ the referring images

def _qcow2_backing(directory, name, filename="disk.qcow2"):
    data = _util.pristine("qcow2")
    data = _util.poke(data, 0x800, name)
    data = _util.poke(data, 8, struct.pack(">QI", 0x800, len(name)))
    return _util.write(pathlib.Path(directory) / filename, data)


def _qcow_backing(directory, name, filename="disk.qcow"):
    data = _util.pristine("qcow")
    offset = len(data)
    data = _util.poke(data, offset, name)
    data = _util.poke(data, 8, struct.pack(">QI", offset, len(name)))
    return _util.write(pathlib.Path(directory) / filename, data)


def _qed_backing(directory, name, filename="disk.qed"):
    data = _util.pristine("qed")
    features = struct.unpack_from("<Q", data, 16)[0] | 1
    data = _util.poke(data, 16, struct.pack("<Q", features))
    data = _util.poke(data, 0x400, name)
    data = _util.poke(data, 56, struct.pack("<II", 0x400, len(name)))
    return _util.write(pathlib.Path(directory) / filename, data)


VMDK_DESCRIPTOR = ('# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=%(parent_cid)s\n'
                   'createType="%(create_type)s"\n%(extra)s\n# Extent description\n%(extents)s\n'
                   '# The Disk Data Base\n#DDB\nddb.adapterType = "ide"\n')


def vmdk_descriptor(extents, create_type="monolithicFlat", parent_cid="ffffffff", extra=""):
    return (VMDK_DESCRIPTOR % {"parent_cid": parent_cid, "create_type": create_type, "extra": extra,
                               "extents": extents}).encode("utf-8", "surrogateescape")


def _vmdk_parent(directory, name, filename="disk.vmdk"):
    directory = pathlib.Path(directory)
    _util.write(directory / "disk-flat.raw", bytes(2 * _util.MIB))
    text = vmdk_descriptor('RW 4096 FLAT "disk-flat.raw" 0', parent_cid="22222222",
                           extra='parentFileNameHint="%s"' % name.decode("utf-8", "surrogateescape"))
    return _util.write(directory / filename, text)


def _vmdk_extent(directory, name, filename="disk.vmdk"):
    text = vmdk_descriptor('RW 4096 FLAT "%s" 0' % name.decode("utf-8", "surrogateescape"))
    return _util.write(pathlib.Path(directory) / filename, text)


def _qcow2_data_file(directory, name, filename="disk.qcow2"):
    """A qcow2 with the external-data-file feature, its data file named ``name``."""
    data = bytearray(_util.pristine("qcow2", writes=()))
    header_length = struct.unpack_from(">I", data, 100)[0]
    extension = struct.pack(">II", 0x44415441, len(name)) + name
    extension += bytes(-len(extension) % 8) + bytes(8)          # padding, then the end of the extensions
    data[header_length:header_length + len(extension)] = extension
    incompatible = struct.unpack_from(">Q", data, 72)[0] | 4
    struct.pack_into(">Q", data, 72, incompatible)
    struct.pack_into(">Q", data, 88, 2)                          # data_file_raw (autoclear)
    return _util.write(pathlib.Path(directory) / filename, data)


# The formats whose references are resolved by code of their own get every name; qcow and qed, whose
# backing files go through the same resolution as qcow2's, get the main classes.
SHORT = ("etc-passwd", "outside-relative", "outside-absolute", "symlink-out", "fifo", "json-protocol",
         "nbd-protocol", "missing", "nul-byte", "beside")
# Protocol prefixes beyond json:, nbd: and http: all take the same refusal (a ':' before the first '/'):
# the qcow2 backing file carries every one, the other long lists the first three.
EXTRA_PROTOCOLS = ("nbd-unix-protocol", "file-protocol", "vvfat-protocol", "blkdebug-protocol", "ssh-protocol",
                   "rbd-protocol", "host-device-protocol")
LONG = tuple(label for label, _name, _refuse, _pattern in NAMES if label not in EXTRA_PROTOCOLS)
REFERRERS = [
    ("qcow2", "backing", _qcow2_backing, "iotests-060", None),
    ("qcow", "backing", _qcow_backing, "iotests-092", SHORT),
    ("qed", "backing", _qed_backing, "iotests-116", SHORT),
    ("vmdk", "parent", _vmdk_parent, "iotests-059", SHORT),
    ("vmdk", "extent", _vmdk_extent, "format-inspector", LONG),
    ("qcow2", "data-file", _qcow2_data_file, "format-inspector", SHORT + ("symlink-etc", "dev-zero", "directory")),
]


def _builder(make, name_of):
    def build(directory):
        return make(directory, _encode(name_of(directory)))
    return build


def _cases():
    cases = []
    for fmt, kind, make, source, labels in REFERRERS:
        for label, name_of, must_refuse, pattern in NAMES:
            if labels is not None and label not in labels:
                continue
            if kind == "extent" and label in ("beside", "absolute-beside", "colon-file-name", "subdirectory"):
                # a flat extent file beside the descriptor is the format's normal shape
                must_refuse = False
            cases.append(Case(name="%s/%s-%s" % (fmt, kind, label), fmt=fmt, build=_builder(make, name_of),
                              must_refuse=must_refuse, refuse=pattern,
                              source="CVE-2024-32498" if must_refuse else source))
    # self-references and loops
    cases.append(Case(name="qcow2/backing-self", fmt="qcow2", build=_builder(_qcow2_backing, _const("disk.qcow2")),
                      must_refuse=True, refuse=LOOP, source="CVE-class chain loop"))
    cases.append(Case(name="qed/backing-self", fmt="qed", build=_builder(_qed_backing, _const("disk.qed")),
                      must_refuse=True, refuse=LOOP, source="CVE-class chain loop"))
    cases.append(Case(name="qcow/backing-self", fmt="qcow", build=_builder(_qcow_backing, _const("disk.qcow")),
                      must_refuse=True, refuse=LOOP, source="CVE-class chain loop"))
    cases.append(Case(name="vmdk/parent-self", fmt="vmdk", build=_builder(_vmdk_parent, _const("disk.vmdk")),
                      must_refuse=True, refuse=LOOP, source="CVE-class chain loop"))
    cases.append(Case(name="vmdk/extent-self", fmt="vmdk", build=_builder(_vmdk_extent, _const("disk.vmdk")),
                      must_refuse=False, source="format-inspector"))
    cases.append(Case(name="qcow2/data-file-self", fmt="qcow2", build=_builder(_qcow2_data_file, _const("disk.qcow2")),
                      must_refuse=False, source="format-inspector"))
    cases.append(Case(name="qcow2/backing-loop-two", fmt="qcow2", build=_qcow2_backing_pair, must_refuse=True, refuse=LOOP,
                      source="CVE-class chain loop"))
    cases.append(Case(name="qcow2/backing-loop-mixed-formats", fmt="qcow2", build=_mixed_loop, must_refuse=True,
                      refuse=LOOP, source="CVE-class chain loop"))
    cases.append(Case(name="qcow2/backing-depth-bomb", fmt="qcow2", build=_depth_bomb, must_refuse=True,
                      refuse=LOOP, source="CVE-class depth bomb"))
    cases.append(Case(name="qcow2/backing-chain-deep-but-allowed", fmt="qcow2", build=_deep_ok, source="chain depth"))
    cases.append(Case(name="qcow2/backing-chain-escape-at-depth", fmt="qcow2", build=_escape_at_depth,
                      must_refuse=True, refuse=REFUSED, source="CVE-2024-32498"))
    return cases


def _qcow2_backing_pair(directory):
    _qcow2_backing(directory, b"a.qcow2", "b.qcow2")
    return _qcow2_backing(directory, b"b.qcow2", "a.qcow2")


def _mixed_loop(directory):
    _qed_backing(directory, b"c.qcow", "b.qed")
    _qcow_backing(directory, b"a.qcow2", "c.qcow")
    return _qcow2_backing(directory, b"b.qed", "a.qcow2")


def _chain(directory, depth, bottom):
    for level in range(depth):
        name = ("l%d.qcow2" % (level + 1)).encode() if level + 1 < depth else bottom
        path = _qcow2_backing(directory, name, "l%d.qcow2" % level)
        if level == 0:
            top = path
    return top


def _depth_bomb(directory):
    _beside(directory)
    return _chain(directory, 80, b"base.raw")


def _deep_ok(directory):
    _beside(directory)
    return _chain(directory, 12, b"base.raw")


def _escape_at_depth(directory):
    return _chain(directory, 6, _encode(_outside_rel(directory)))


CASES = _cases()
