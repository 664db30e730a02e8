# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2_compress.Qcow2Codec, the deflate codec of compressed clusters on its own:
it needs no driver, so convert's worker threads can call it concurrently.
(Images qemu-img reads back are tested through the driver in test_qcow2_write.py.)"""

import os
import threading
import zlib

import pytest

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import CorruptImageError, ImageError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_layout as L
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.qcow2_compress import Qcow2Codec

CLUSTER = 65536


def _cluster(seed):
    """A compressible cluster that differs with ``seed``."""
    line = ("cluster %d: some text that compresses\n" % seed).encode()
    return (line * (CLUSTER // len(line) + 1))[:CLUSTER]


def test_a_compressed_cluster_is_raw_deflate_and_decompresses_to_itself():
    codec = Qcow2Codec(L.COMPRESSION_ZLIB, CLUSTER, "/img.qcow2")
    data = _cluster(1)
    compressed = codec.compress(data)
    assert compressed is not None and len(compressed) < CLUSTER
    # raw deflate with a 4 KiB window, as QEMU reads it
    assert zlib.decompressobj(-12).decompress(compressed) == data
    assert codec.decompress(compressed, 0, 0x50000) == data


def test_an_incompressible_cluster_is_stored_plain():
    codec = Qcow2Codec(L.COMPRESSION_ZLIB, CLUSTER)
    assert codec.compress(os.urandom(CLUSTER)) is None


def test_only_whole_clusters_are_compressed():
    codec = Qcow2Codec(L.COMPRESSION_ZLIB, CLUSTER, "/img.qcow2")
    with pytest.raises(ImageError, match="expected 65536 bytes, got 4096"):
        codec.compress(bytes(4096))


def test_damaged_compressed_data_names_the_cluster():
    codec = Qcow2Codec(L.COMPRESSION_ZLIB, CLUSTER, "/img.qcow2")
    with pytest.raises(CorruptImageError, match=r"guest offset 0x30000 \(host 0x7000\): deflate decompression"):
        codec.decompress(b"\xff" * 64, 0x30000, 0x7000)
    short = codec.compress(_cluster(2))[:-8]
    with pytest.raises(CorruptImageError, match="expected 65536 bytes after decompression"):
        codec.decompress(short, 0x30000, 0x7000)


def test_one_codec_serves_several_threads_at_once():
    codec = Qcow2Codec(L.COMPRESSION_ZLIB, CLUSTER)
    clusters = [_cluster(seed) for seed in range(32)]
    expected = [codec.compress(data) for data in clusters]
    results = {}

    def work(index):
        for _round in range(4):
            results[index] = codec.compress(clusters[index])

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(clusters))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[index] for index in range(len(clusters))] == expected
    assert [codec.decompress(blob, 0, 0) for blob in expected] == clusters
