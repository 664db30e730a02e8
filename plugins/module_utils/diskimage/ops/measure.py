# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""measure(): the sizes ``qemu-img measure --output=json`` reports.

``fully-allocated`` is the file size of an image whose every cluster is
allocated; ``required`` the size a conversion of the source (or a new empty
image) needs.  For qcow2 both follow QEMU's estimate (block/qcow2.c): one
header cluster, L2 tables and L1 table for the whole virtual size, and the
refcount table and blocks that cover all of it (the fixed point of "refcount
metadata refcounts itself"); ``required`` then keeps only the data clusters
that hold source data (DATA and not ZERO in the chain's block status, whole
clusters of the output's size).  ``bitmaps`` (qcow2 v3 output, qcow2 v3
source) is the room the source's persistent bitmaps would take.  For raw,
both are the virtual size (whole sectors).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ..errors import ImageError, InvalidOptionError, UnsupportedFeature, UnsupportedOperation
from .image import open_driver, translate_os_errors
from .map import ALLOCATED, DATA, ZERO, chain_status, layer_status, qemu_length
from .sizes import SECTOR_SIZE, normalize_options, parse_size, round_up

DEFAULT_CLUSTER_SIZE = 65536
# QEMU's cap on the L1 table (QCOW_MAX_L1_SIZE) that limits the virtual size.
MAX_L1_BYTES = 32 * 1024 * 1024
# Extended L2 entries need 32 subclusters of at least 512 bytes.
MIN_EXTENDED_L2_CLUSTER_SIZE = 16384
REFTABLE_ENTRY_SIZE = 8
L1_ENTRY_SIZE = 8
# Bitmap directory entry without name and extra data (qcow2.rst "Bitmap directory").
BITMAP_DIRECTORY_ENTRY_SIZE = 24
BITMAP_TABLE_ENTRY_SIZE = 8

PREALLOCATION_MODES = ("off", "metadata", "falloc", "full")
# Options qemu-img measure accepts per output format (format plus file protocol options).
_FILE_OPTIONS = ("size", "preallocation", "nocow", "extent_size_hint")
_ACCEPTED_OPTIONS = {
    "raw": frozenset(_FILE_OPTIONS),
    "qcow2": frozenset(_FILE_OPTIONS + (
        "compat", "backing_file", "backing_fmt", "data_file", "data_file_raw", "lazy_refcounts",
        "refcount_bits", "encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg",
        "encrypt.cipher-mode", "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg",
        "encrypt.iter-time", "cluster_size", "extended_l2", "compression_type",
    )),
}


def refcount_metadata_size(clusters, cluster_size, refcount_bits):
    """Bytes of refcount table plus refcount blocks needed to count
    ``clusters`` clusters and themselves (the smallest fixed point)."""
    blocks_per_table_cluster = cluster_size // REFTABLE_ENTRY_SIZE
    refcounts_per_block = cluster_size * 8 // refcount_bits
    table = blocks = 0
    total = None
    while True:
        blocks = -(-(clusters + table + blocks) // refcounts_per_block)
        table = -(-blocks // blocks_per_table_cluster)
        new_total = clusters + blocks + table
        if new_total == total:
            break
        total = new_total
    return (blocks + table) * cluster_size


def fully_allocated_size(virtual_size, cluster_size, refcount_bits, extended_l2):
    """File size of a qcow2 image of ``virtual_size`` with every cluster allocated."""
    aligned = round_up(virtual_size, cluster_size)
    l2_entry_size = 16 if extended_l2 else 8
    metadata = cluster_size                                      # header
    l2_entries = round_up(aligned // cluster_size, cluster_size // l2_entry_size)
    metadata += l2_entries * l2_entry_size                       # L2 tables
    l1_entries = round_up(l2_entries * l2_entry_size // cluster_size, cluster_size // L1_ENTRY_SIZE)
    metadata += l1_entries * L1_ENTRY_SIZE                       # L1 table
    metadata += refcount_metadata_size((metadata + aligned) // cluster_size, cluster_size, refcount_bits)
    return metadata + aligned


def _qcow2_options(options):
    """(cluster_size, version, refcount_bits, extended_l2, preallocation,
    has_backing_file) from ``-o`` options, validated as qcow2_measure does."""
    extended_l2 = bool(options.get("extended_l2", False))
    cluster_size = options.get("cluster_size", DEFAULT_CLUSTER_SIZE)
    if not isinstance(cluster_size, int) or not 512 <= cluster_size <= 2 * 1024 * 1024 \
            or cluster_size & (cluster_size - 1):
        raise InvalidOptionError("measure: cluster_size must be a power of two between 512 and 2048k, found %r"
                                 % (cluster_size,))
    if extended_l2 and cluster_size < MIN_EXTENDED_L2_CLUSTER_SIZE:
        raise InvalidOptionError("measure: extended L2 entries are only supported with cluster sizes of at "
                                 "least %d bytes, found %d" % (MIN_EXTENDED_L2_CLUSTER_SIZE, cluster_size))
    compat = options.get("compat", "1.1")
    if compat in ("0.10", "v2"):
        version = 2
    elif compat in ("1.1", "v3"):
        version = 3
    else:
        raise InvalidOptionError("measure: invalid compatibility level %r (expected 0.10, v2, 1.1 or v3)"
                                 % (compat,))
    refcount_bits = options.get("refcount_bits", 16)
    if not isinstance(refcount_bits, int) or not 1 <= refcount_bits <= 64 or refcount_bits & (refcount_bits - 1):
        raise InvalidOptionError("measure: refcount_bits must be a power of two up to 64, found %r"
                                 % (refcount_bits,))
    if version < 3 and refcount_bits != 16:
        raise InvalidOptionError("measure: refcount widths other than 16 bits require compat 1.1 or above "
                                 "(found refcount_bits %d with compat %s)" % (refcount_bits, compat))
    preallocation = options.get("preallocation", "off")
    if preallocation not in PREALLOCATION_MODES:
        raise InvalidOptionError("measure: preallocation must be one of %s, found %r"
                                 % (", ".join(PREALLOCATION_MODES), preallocation))
    if options.get("encrypt.format") == "luks":
        raise UnsupportedFeature("measure: LUKS-encrypted qcow2 output is not supported")
    return cluster_size, version, refcount_bits, extended_l2, preallocation, "backing_file" in options


def _check_options(out_fmt, options):
    accepted = _ACCEPTED_OPTIONS[out_fmt]
    for name in options:
        if name not in accepted:
            raise InvalidOptionError("measure: invalid parameter %r for output format %s (known: %s)"
                                     % (name, out_fmt, ", ".join(sorted(accepted))))
    if out_fmt == "raw" and options.get("preallocation", "off") not in PREALLOCATION_MODES:
        raise InvalidOptionError("measure: preallocation must be one of %s, found %r"
                                 % (", ".join(PREALLOCATION_MODES), options["preallocation"]))


# ---------------------------------------------------------------- sources
def _find_snapshot(driver, snapshot):
    """The snapshot table entry ``snapshot`` names: an ID, else a name (as
    qemu-img -l), or ``snapshot.id=ID,snapshot.name=NAME``."""
    table = driver.snapshot_table()
    if table is None:
        raise UnsupportedOperation("measure: %s images have no internal snapshots" % driver.format_name,
                                   driver.path)
    snapshot = str(snapshot)
    if snapshot.startswith("snapshot."):
        wanted = {}
        for item in snapshot.split(","):
            key, _sep, value = item.partition("=")
            if key not in ("snapshot.id", "snapshot.name"):
                raise InvalidOptionError("measure: invalid snapshot selector %r" % item, driver.path)
            wanted[key[len("snapshot."):]] = value
        matches = [s for s in table if all(s[key] == value for key, value in wanted.items())]
    else:
        matches = [s for s in table if s["id"] == snapshot] or [s for s in table if s["name"] == snapshot]
    if not matches:
        raise ImageError("measure: snapshot %r not found" % snapshot, driver.path)
    return matches[0]


def _source_runs(driver, length, l1_table):
    """Chain block status of the source, the top layer read through ``l1_table``
    when a snapshot is measured."""
    if l1_table is None:
        return chain_status(driver, 0, length)
    cache = {}
    runs = []
    for start, run_length, flags, host in layer_status(driver, 0, length, l1_table=l1_table, cache=cache):
        if flags & (DATA | ZERO) or driver.backing is None:
            runs.append((start, run_length, 0, flags, host))
        else:
            chain_status(driver.backing, start, start + run_length, 1, cache, runs)
    return runs


def _data_bytes(runs, cluster_size):
    """Bytes of the output clusters (``cluster_size``) that hold source data:
    QEMU's walk, which rounds each data run up to the next cluster boundary."""
    required = 0
    position = 0
    for start, length, _depth, flags, _host in runs:
        run_end = start + length
        if run_end <= position:
            continue
        start = max(start, position)
        if flags & ZERO:
            position = run_end
        elif flags & DATA and flags & ALLOCATED:
            cluster_end = round_up(run_end, cluster_size)
            required += cluster_end - (start - start % cluster_size)
            position = cluster_end
        else:
            position = run_end
    return required


def _bitmaps_size(driver, length, cluster_size):
    """Room for the source's persistent bitmaps in the output (all clusters of
    each bitmap, its table and the directory)."""
    total = 0
    directory_bytes = 0
    for bitmap in driver.bitmaps():
        bits = -(-length // bitmap["granularity"])
        clusters = -(-(-(-bits // 8)) // cluster_size)
        total += clusters * cluster_size
        total += round_up(clusters * BITMAP_TABLE_ENTRY_SIZE, cluster_size)
        directory_bytes += round_up(BITMAP_DIRECTORY_ENTRY_SIZE + len(bitmap["name"].encode("utf-8")), 8)
    return total + round_up(directory_bytes, cluster_size)


@translate_os_errors("measure failed")
def measure(size=None, src=None, out_fmt="qcow2", options=None, src_fmt=None, allow_dirs=None,
            force_share=False, snapshot=None, src_member=None, trusted_files=None):
    """What ``qemu-img measure --output=json`` prints, as a dict: ``required``
    and ``fully-allocated`` bytes for an ``out_fmt`` image of ``size`` bytes
    (metadata only) or converted from image ``src`` (its data), plus
    ``bitmaps`` when both the source and the output can hold persistent
    bitmaps.  ``snapshot`` (ID or name) measures a source's internal snapshot.
    ``src_member``: a disk inside the OVA or Vagrant box ``src``."""
    if (size is None) == (src is None):
        raise InvalidOptionError("measure: give either a size or a source image, not %s"
                                 % ("both" if src is not None else "neither"))
    if snapshot is not None and src is None:
        raise InvalidOptionError("measure: a snapshot can only be measured in a source image")
    if out_fmt not in _ACCEPTED_OPTIONS:
        raise UnsupportedOperation("measure: the %r format does not support size measurement "
                                   "(supported: qcow2, raw)" % (out_fmt,))
    options = normalize_options(options)
    _check_options(out_fmt, options)
    if size is not None:
        size = parse_size(size)
    else:
        size = 0
    qcow2 = None
    if out_fmt == "qcow2":
        qcow2 = _qcow2_options(options)
        cluster_size, version, refcount_bits, extended_l2, preallocation, has_backing_file = qcow2
        # QEMU checks the size given (0 with a source) against the L1 table cap.
        l2_entry_size = 16 if extended_l2 else 8
        l2_tables = -(-(round_up(size, cluster_size) // cluster_size) // (cluster_size // l2_entry_size))
        if l2_tables * L1_ENTRY_SIZE > MAX_L1_BYTES:
            raise InvalidOptionError("measure: the image size %d is too large for cluster_size %d "
                                     "(try using a larger cluster size)" % (size, cluster_size))
    if src is None:
        return _result(out_fmt, qcow2, size, None, None)
    driver = open_driver(src, fmt=src_fmt, readonly=True, allow_dirs=allow_dirs, force_share=force_share,
                         member=src_member, trusted_files=trusted_files)
    try:
        length = qemu_length(driver)
        l1_table = None
        if snapshot is not None:
            l1_table = driver.snapshot_l1_table(_find_snapshot(driver, snapshot))
        if qcow2 is None:
            return _result(out_fmt, None, length, None, None)
        cluster_size = qcow2[0]
        if qcow2[5]:
            # The new backing file may share nothing with the source: count everything.
            data = round_up(length, cluster_size)
        else:
            data = _data_bytes(_source_runs(driver, length, l1_table), cluster_size)
        bitmaps = None
        if qcow2[1] >= 3 and driver.persistent_bitmaps_supported():
            bitmaps = _bitmaps_size(driver, length, cluster_size)
        return _result(out_fmt, qcow2, length, data, bitmaps)
    finally:
        driver.close()


def _result(out_fmt, qcow2, virtual_size, data, bitmaps):
    if qcow2 is None:
        required = round_up(virtual_size, SECTOR_SIZE)
        return {"required": required, "fully-allocated": required}
    cluster_size, _version, refcount_bits, extended_l2, preallocation, _backing = qcow2
    aligned = round_up(virtual_size, cluster_size)
    if preallocation in ("full", "falloc"):
        data = aligned
    fully = fully_allocated_size(aligned, cluster_size, refcount_bits, extended_l2)
    result = {"required": fully - aligned + (data or 0), "fully-allocated": fully}
    if bitmaps is not None:
        result["bitmaps"] = bitmaps
    return result
