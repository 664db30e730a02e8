# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 compressed clusters (QEMU docs/interop/qcow2.rst, "Compressed Clusters
Descriptor"): the deflate/zstd codec and the driver's compressed reads and writes.

``Qcow2Codec`` is pure (no file access, no shared state; deflate by
``_deflate``: zlib-ng when importable, else zlib): ops/convert.py calls
``Qcow2Driver.compress_cluster`` from worker threads.  ``Qcow2CompressedMixin``
is the part of ``Qcow2Driver`` (formats/qcow2.py) that reads and stores
compressed clusters; it uses the driver's allocator (formats/qcow2_refcount.py)
and L2 write path.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from .. import _deflate
from ..errors import CorruptImageError, ImageError, UnsupportedFeature
from . import qcow2_layout as L

try:  # optional: zstd-compressed clusters; Python's own module first (3.14+)
    from compression import zstd as _compression_zstd
except ImportError:
    _compression_zstd = None
try:
    import zstd as _zstd_module  # python-zstd
except ImportError:
    _zstd_module = None
try:
    import zstandard as _zstandard_module
except ImportError:
    _zstandard_module = None


def _zstd_available():
    return _compression_zstd is not None or _zstd_module is not None or _zstandard_module is not None


def _zstd_decompress(data, limit):
    if _compression_zstd is not None:
        # one frame: what follows it (the padding to the sector) is left unused
        return _compression_zstd.ZstdDecompressor().decompress(data, limit)
    if _zstandard_module is not None:
        dobj = _zstandard_module.ZstdDecompressor().decompressobj()
        out = dobj.decompress(data)
        return out[:limit]
    return _zstd_module.decompress(data)[:limit]


def _zstd_compress(data):
    if _compression_zstd is not None:
        return _compression_zstd.compress(data)
    if _zstandard_module is not None:
        return _zstandard_module.ZstdCompressor().compress(data)
    return _zstd_module.compress(data)


class Qcow2Codec:
    """Compression of one image's clusters: raw deflate with a 4 KiB window
    (compression_type zlib) or zstd, as the header says.  Immutable."""

    def __init__(self, compression_type, cluster_size, path=None):
        self.compression_type = compression_type
        self.cluster_size = cluster_size
        self.path = path

    def compress(self, data):
        """Compressed bytes of one whole cluster, or None when compression does not pay."""
        if len(data) != self.cluster_size:
            raise ImageError("compress_cluster: expected %d bytes, got %d" % (self.cluster_size, len(data)),
                             self.path)
        if self.compression_type == L.COMPRESSION_ZSTD:
            if not _zstd_available():
                raise UnsupportedFeature("qcow2 zstd compression needs the zstd or zstandard Python module",
                                         self.path)
            compressed = _zstd_compress(bytes(data))
        else:
            compressed = _deflate.compress(data, -12)
        if len(compressed) >= self.cluster_size:
            return None
        return compressed

    def decompress(self, data, guest_cluster, coffset):
        """The cluster stored compressed in ``data`` (read at host ``coffset``;
        ``guest_cluster`` and ``coffset`` name it in errors)."""
        cs = self.cluster_size
        if self.compression_type == L.COMPRESSION_ZSTD:
            if not _zstd_available():
                raise UnsupportedFeature("qcow2 compressed clusters use zstd, but no zstd Python module "
                                         "(zstd or zstandard) is installed", self.path)
            try:
                cluster = _zstd_decompress(data, cs)
            except Exception as exc:  # the module's own error type
                raise CorruptImageError("qcow2 compressed cluster at guest offset 0x%x (host 0x%x): zstd "
                                        "decompression failed: %s" % (guest_cluster, coffset, exc), self.path)
        else:
            try:
                cluster = _deflate.decompressobj(-12).decompress(data, cs)
            except _deflate.ERRORS as exc:
                raise CorruptImageError("qcow2 compressed cluster at guest offset 0x%x (host 0x%x): deflate "
                                        "decompression failed: %s" % (guest_cluster, coffset, exc), self.path)
        if len(cluster) != cs:
            raise CorruptImageError("qcow2 compressed cluster at guest offset 0x%x (host 0x%x): expected %d bytes "
                                    "after decompression, found %d" % (guest_cluster, coffset, cs, len(cluster)),
                                    self.path)
        return cluster


class Qcow2CompressedMixin:
    """Compressed clusters of a Qcow2Driver.

    Driver state used: ``_codec`` (Qcow2Codec, set at open), ``_decompressed``
    (the last cluster decompressed: (L2 entry, bytes)), ``_compressed_end``
    (where the last compressed cluster ended: the next one is packed after it),
    and the allocator's ``_next_free``/``_alloc``/``_refcount_update``.
    """

    def _compressed_location(self, entry):
        x = self.header.compressed_offset_bits()
        coffset = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
        return coffset, sectors

    def _decompress(self, entry, guest_cluster):
        if self._decompressed[0] == entry:
            return self._decompressed[1]
        coffset, sectors = self._compressed_location(entry)
        csize = sectors * 512 - (coffset & 511)
        data = self._file.pread(coffset, csize)
        cluster = self._codec.decompress(data, guest_cluster, coffset)
        self._decompressed = (entry, cluster)
        return cluster

    def compress_cluster(self, data):
        """Compressed bytes of one whole cluster, or None when compression does not
        pay (pure function: safe to call from worker threads)."""
        return self._codec.compress(data)

    def write_compressed(self, offset, compressed):
        """Store ``compressed`` (from compress_cluster) as the cluster at guest ``offset``."""
        self._prepare_write()
        cs, cb = self._cs, self._cb
        if offset % cs or offset < 0 or offset >= self.virtual_size:
            raise ImageError("write_compressed: guest offset %d is not a cluster start inside the disk" % offset,
                             self.path)
        if self._data_file is not self._file:
            raise UnsupportedFeature("qcow2 images with an external data file cannot hold compressed clusters",
                                     self.path)
        if not compressed or len(compressed) >= cs:
            raise ImageError("write_compressed: compressed data of %d bytes for %d-byte clusters"
                             % (len(compressed or b""), cs), self.path)
        l1_index = (offset >> cb) // self._l2e
        index = (offset >> cb) - l1_index * self._l2e
        l2_offset, table = self._l2_for_write(l1_index)
        length = len(compressed)
        start = self._compressed_end
        if (start % cs and self._next_free == L.align_up(start, cs)
                and self._refcount(start) < self._rc_max):
            self._refcount_update(start, 1, 1)
            extra = start + length - L.align_up(start, cs)
            if extra > 0:
                got = self._alloc(-(-extra // cs))
                if got != L.align_up(start, cs):
                    self._refcount_update(start, 1, -1)
                    self._refcount_update(got, extra, -1)
                    start = self._alloc(-(-length // cs))
        else:
            start = self._alloc(-(-length // cs))
        self._file.pwrite(start, compressed)
        if start + length > self._file_size:
            self._file_size = start + length
        self._compressed_end = start + length
        x = self.header.compressed_offset_bits()
        sectors = ((start & 511) + length + 511) // 512
        entry = L.OFLAG_COMPRESSED | ((sectors - 1) << x) | start
        if self._ext:
            old = table[2 * index]
            table[2 * index] = entry
            table[2 * index + 1] = 0
        else:
            old = table[index]
            table[index] = entry
        self._write_l2_entries(l2_offset, table, index, index)
        if old & L.OFLAG_COMPRESSED or old & L.L2E_OFFSET_MASK:
            self._free_entry(old)
