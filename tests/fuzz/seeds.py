# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seed images for the fuzzers (issue #15), made at run time: valid images of every format the library reads.

qemu-img writes what it can (small clusters, a little data, snapshots, bitmaps, compressed clusters), the
library's own ``create`` writes a second opinion, and the sample images kept in the repository (formats
qemu-img cannot write: bochs, cloop, dmg, VirtualBox/VMware/Hyper-V samples, an OVA) are added decompressed.
Each seed is one file; the fuzz target writes its input as ``image.<suffix>`` in a private directory that also
holds the files a seed names (``AUX_FILES``: a backing file, a VMDK flat extent), so chains open too.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import pathlib
import struct
import subprocess
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "unit" / "plugins" / "module_utils" / "diskimage" / "samples"
SHARED_SAMPLES = pathlib.Path("/work/shared/testdata")

# Formats with a fuzz target.  "probe" fuzzes format detection itself: every seed, no format given
# (whatever no driver claims is read as raw, so raw is fuzzed there).
FORMATS = ("qcow2", "vmdk", "vdi", "vpc", "qed", "qcow", "vhdx", "luks", "parallels", "bochs", "cloop", "dmg",
           "ova", "probe")

# The fuzz input's file name per format (dmg is recognised by its suffix, an OVA by its suffix).
SUFFIX = {"dmg": ".dmg", "ova": ".ova", "vmdk": ".vmdk"}

PASSPHRASE = "fuzz"          # the LUKS seeds' passphrase, given to the library as key_secret
BACKING = "backing.img"      # a raw file beside the input, the backing file of the seeds that have one
FLAT_EXTENT = "image-flat.vmdk"

# The files beside every input (name -> content): what the seeds name.
AUX_FILES = {BACKING: b"\xa5" * 65536, FLAT_EXTENT: b"\x5a" * 65536}

# Largest seed kept, in bytes (libFuzzer's -max_len follows the largest seed; a sparse seed counts encoded).
MAX_SEED = 1 << 20

# Formats whose images are mostly zeroes (a VHDX is 8 MiB at least, a LUKS header 2 MiB): their fuzz input is
# the image in a sparse encoding (``encode_sparse``), so the fuzzer mutates the structures, not the zeroes.
SPARSE = ("vhdx", "luks", "vdi", "vpc", "parallels")
SPARSE_UNIT = 512
SPARSE_LIMIT = 64 << 20     # a decoded input never grows beyond this
SAMPLE_LIMIT = 16 << 20     # larger samples are not decompressed (their encoding would exceed MAX_SEED anyway)
_RECORD = struct.Struct("<II")  # offset in SPARSE_UNITs, length in bytes; the data follows


def encode_sparse(data):
    """``data`` as records (offset, length, bytes) of its non-zero runs of SPARSE_UNITs, then its length."""
    out = []
    unit = SPARSE_UNIT
    start = None
    for offset in range(0, len(data), unit):
        chunk = data[offset:offset + unit]
        if chunk.strip(b"\0") and start is None:
            start = offset
        elif not chunk.strip(b"\0") and start is not None:
            out.append(_RECORD.pack(start // unit, offset - start) + data[start:offset])
            start = None
    if start is not None:
        out.append(_RECORD.pack(start // unit, len(data) - start) + data[start:])
    out.append(_RECORD.pack(len(data) // unit, len(data) % unit) + data[len(data) - len(data) % unit:])
    return b"".join(out)


def decode_sparse(encoded):
    """[(offset, bytes)] of an encoded input and the file's length (at most SPARSE_LIMIT): any bytes decode."""
    chunks = []
    end = 0
    pos = 0
    while pos + _RECORD.size <= len(encoded):
        unit_offset, length = _RECORD.unpack_from(encoded, pos)
        data = encoded[pos + _RECORD.size:pos + _RECORD.size + length]
        pos += _RECORD.size + len(data)
        offset = unit_offset * SPARSE_UNIT
        if offset + len(data) > SPARSE_LIMIT:
            continue
        chunks.append((offset, data))
        end = max(end, offset + len(data))
    return chunks, end


def write_input(path, fmt, data):
    """Write the fuzz input ``data`` of ``fmt`` to ``path`` as the image it stands for."""
    with open(path, "wb") as out:
        if fmt not in SPARSE:
            out.write(data)
            return
        chunks, end = decode_sparse(data)
        for offset, chunk in chunks:
            out.seek(offset)
            out.write(chunk)
        out.truncate(end)


def input_name(fmt):
    """The file name the fuzz target writes its input to."""
    return "image" + SUFFIX.get(fmt, ".img")


# What the seed-making commands that failed said (fuzz_image.py prints them when a format got no seed).
FAILURES = []


def _run(*args):
    """Run a seed-making command; a failure is tried once more (a loaded machine), then recorded in FAILURES."""
    for _attempt in range(2):
        proc = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if proc.returncode == 0:
            return True
    FAILURES.append("%s: exit %d: %s" % (" ".join(str(a) for a in args), proc.returncode,
                                         proc.stderr.decode("utf-8", "replace").strip()))
    return False


def _qemu(work, name, fmt, size, opts="", io_commands=(), backing=None, extra=()):
    path = work / name
    args = ["qemu-img", "create", "-q", "-f", fmt]
    if opts:
        args += ["-o", opts]
    if backing:
        args += ["-b", backing, "-F", "raw"]
    args += list(extra) + [path, size]
    if not _run(*args):
        return None
    for command in io_commands:
        _run("qemu-io", "-f", fmt, "-c", command, path)
    return path


def _qemu_seeds(work, fmt):
    """Images qemu-img writes in ``fmt`` (paths in ``work``; those it cannot make are left out)."""
    io_small = ("write -P 0x11 0 4k", "write -z 8k 4k", "write -P 0x22 60k 2k")
    made = []
    if fmt == "qcow2":
        made += [
            _qemu(work, "a.qcow2", "qcow2", "128k", "cluster_size=512", io_small + ("write -c -P 3 32k 512",)),
            _qemu(work, "b.qcow2", "qcow2", "64k", "cluster_size=4096,compat=0.10", io_small),
            _qemu(work, "c.qcow2", "qcow2", "64k", "cluster_size=512,refcount_bits=1,lazy_refcounts=on", io_small),
            _qemu(work, "d.qcow2", "qcow2", "64k", "cluster_size=512", ("write -P 1 0 1k",), backing=BACKING),
            _qemu(work, "e.qcow2", "qcow2", "64k", "cluster_size=1024,extended_l2=on", io_small),
            _qemu(work, "f.qcow2", "qcow2", "64k", "cluster_size=512,compression_type=zstd",
                  ("write -c -P 4 0 4k",)),
        ]
        snap = _qemu(work, "g.qcow2", "qcow2", "64k", "cluster_size=512", io_small)
        if snap:
            _run("qemu-img", "snapshot", "-c", "s1", snap)
            _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 2k", snap)
            _run("qemu-img", "bitmap", "--add", snap, "b0")
            made.append(snap)
    elif fmt == "vmdk":
        made += [
            _qemu(work, "a.vmdk", "vmdk", "1M", "", io_small),
            _qemu(work, "b.vmdk", "vmdk", "1M", "subformat=streamOptimized", ()),
            _qemu(work, "c.vmdk", "vmdk", "64k", "", ("write -P 1 0 1k",), backing=BACKING),
        ]
        stream = work / "s.vmdk"
        raw = work / "s.raw"
        raw.write_bytes(b"\x11" * 4096 + bytes(8192) + b"\x22" * 2048)
        if _run("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, stream):
            made.append(stream)
        flat_dir = work / "flat"
        flat_dir.mkdir()
        if _run("qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat_dir / "image.vmdk",
                "64k"):
            made.append(flat_dir / "image.vmdk")
    elif fmt == "vdi":
        made += [
            _qemu(work, "a.vdi", "vdi", "1M", "", ()),
            _qemu(work, "b.vdi", "vdi", "64k", "static=on", ()),
        ]
    elif fmt == "vpc":
        made += [
            _qemu(work, "a.vhd", "vpc", "1M", "", ()),
            _qemu(work, "b.vhd", "vpc", "64k", "subformat=fixed", io_small),
        ]
    elif fmt == "qed":
        made += [
            _qemu(work, "a.qed", "qed", "1M", "cluster_size=4096,table_size=1", io_small),
            _qemu(work, "b.qed", "qed", "64k", "cluster_size=4096,table_size=1", ("write -P 1 0 1k",),
                  backing=BACKING),
        ]
    elif fmt == "qcow":
        made += [
            _qemu(work, "a.qcow", "qcow", "128k", "", io_small),
            _qemu(work, "b.qcow", "qcow", "64k", "", ("write -P 1 0 1k",), backing=BACKING),
        ]
    elif fmt == "vhdx":
        made += [
            _qemu(work, "a.vhdx", "vhdx", "1M", "block_size=1M,log_size=1M", ("write -P 1 0 4k",)),
        ]
    elif fmt == "luks":
        secret = ["--object", "secret,id=sec0,data=%s" % PASSPHRASE]
        made += [
            _qemu(work, "a.luks", "luks", "64k", "key-secret=sec0,iter-time=1", (), extra=secret),
        ]
    elif fmt == "parallels":
        made += [
            _qemu(work, "a.hds", "parallels", "1M", "cluster_size=4k", ()),
        ]
    return [path for path in made if path is not None]


def _library_seeds(work, fmt):
    """Images the library itself writes in ``fmt`` (formats it can create)."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.kvm.storage.plugins.module_utils import diskimage
    made = []
    lib_fmt = {"probe": None}.get(fmt, fmt)
    if lib_fmt is None:
        return made
    for index, options in enumerate(({}, {"cluster_size": "4096"} if fmt in ("qcow2", "qed") else None)):
        if options is None:
            continue
        path = work / ("lib%d.%s" % (index, fmt))
        try:
            diskimage.create(str(path), lib_fmt, "64k", options=options)
            with diskimage.open_image(str(path), fmt=lib_fmt, readonly=False) as image:
                image.write(0, b"\x77" * 1024)
        except diskimage.ImageError:
            continue
        made.append(path)
    return made


def _unpack(path, limit):
    """The sample at ``path`` decompressed, or None when it is larger than ``limit`` (never read beyond)."""
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rb") as sample:
        data = sample.read(limit + 1)
    return data if len(data) <= limit else None


# Samples kept in the repository (and the shared test data, when present), per format.
_SAMPLE_GLOBS = {
    "vmdk": ["vmdk/*.vmdk*", "vmdk/*/*.vmdk*"],
    "vpc": ["vhd/*.vhd*", "vhd/*/*.vhd*"],
    "vhdx": ["vhdx/*.vhdx*", "vhdx/*/*.vhdx*", "vhdx/*.avhdx*"],
    "parallels": ["parallels/parallels-*", "parallels/*/parallels-*", "parallels/*.hdd/*.hds*"],
    "bochs": ["bochs/*/*.bochs*"],
    "cloop": ["cloop/*/*.cloop*"],
    "dmg": ["dmg/*.dmg*", "dmg/*/*.dmg*"],
    "ova": ["ova/*.box", "ova/*/*.box", "ova/*.ova"],
}


def _sample_seeds(work, fmt):
    made = []
    seen = set()
    for base in (SAMPLES, SHARED_SAMPLES):
        for pattern in _SAMPLE_GLOBS.get(fmt, ()):
            for found in sorted(base.glob(pattern)):
                if not found.is_file() or found.suffix == ".md":
                    continue
                data = _unpack(found, SAMPLE_LIMIT if fmt in SPARSE else MAX_SEED)
                if not data or data in seen:
                    continue
                seen.add(data)
                path = work / ("sample-%d%s" % (len(made), SUFFIX.get(fmt, ".img")))
                path.write_bytes(data)
                made.append(path)
    return made


def _ova_seed(work):
    """An OVA (tar) with an OVF descriptor and a small stream-optimized VMDK disk."""
    disks = _qemu_seeds(work, "vmdk")
    disk = next((path for path in disks if path.name == "s.vmdk"), None)
    if disk is None:
        return []
    ovf = (b'<?xml version="1.0"?>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
           b'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">\n'
           b'<References><File ovf:href="disk1.vmdk" ovf:id="file1"/></References>\n'
           b'<DiskSection><Disk ovf:capacity="16384" ovf:diskId="vmdisk1" ovf:fileRef="file1" '
           b'ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>\n'
           b'</Envelope>\n')
    out = work / "built.ova"
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("fuzz.ovf", ovf), ("disk1.vmdk", disk.read_bytes())):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mtime = 0
            tar.addfile(member, io.BytesIO(data))
    return [out]


def make_seeds(fmt, work):
    """Seed inputs (bytes, distinct, smallest first) for the fuzz target of ``fmt``, made in ``work``."""
    work = pathlib.Path(work)
    for name, content in AUX_FILES.items():
        (work / name).write_bytes(content)
    formats = [f for f in FORMATS if f not in ("probe", "luks")] if fmt == "probe" else [fmt]
    paths = []
    for one in formats:
        sub = work / one
        sub.mkdir(exist_ok=True)
        for name in AUX_FILES:
            if not (sub / name).exists():
                os.link(work / name, sub / name)
        paths += _qemu_seeds(sub, one) + _library_seeds(sub, one) + _sample_seeds(sub, one)
        if one == "ova":
            paths += _ova_seed(sub)
    seeds = set()
    for path in paths:
        data = path.read_bytes()
        if fmt in SPARSE:
            if len(data) > SPARSE_LIMIT:
                continue
            data = encode_sparse(data)
        if 0 < len(data) <= MAX_SEED:
            seeds.add(data)
    if fmt == "probe":
        # raw look-alikes: an MBR and a GPT header, a text file that starts like a VMDK descriptor
        seeds.add(bytes(510) + b"\x55\xaa" + b"EFI PART" + bytes(504))
        seeds.add(b"# Disk DescriptorFile\nversion=1\n")
    return sorted(seeds, key=lambda data: (len(data), data))
