# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A plain copy reads and writes in COPY_CHUNK pieces (small, so that the
buffers in flight stay in the CPU caches), never less than a whole target
cluster (a new cluster written in part would be filled, then rewritten) and
never more than MAX_IO; the output holds the source's content either way."""

import os

import pytest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import MAX_IO
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.qcow2 import Qcow2Driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.raw import RawDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import convert as convert_op

MIB = 1 << 20


def make_source(path, size=10 * MIB):
    with open(path, "wb") as image:
        image.truncate(size)
        image.write(os.urandom(6 * MIB + 4096))
        image.seek(8 * MIB)
        image.write(b"text " * (MIB // 5))
    return path


def record_writes(monkeypatch, driver_class):
    lengths = []
    original = driver_class.write

    def write(self, offset, data):
        lengths.append((offset, len(data)))
        return original(self, offset, data)

    monkeypatch.setattr(driver_class, "write", write)
    return lengths


def read_back(path, fmt):
    with diskimage.open_image(path, fmt=fmt) as image:
        return image.read(0, image.virtual_size)


@pytest.mark.parametrize("out_fmt, options, chunk", [
    ("raw", None, convert_op.COPY_CHUNK),
    ("qcow2", {"cluster_size": 65536}, convert_op.COPY_CHUNK),
    ("qcow2", {"cluster_size": 2 * MIB}, 2 * MIB),
])
def test_a_plain_copy_writes_chunks_of_copy_chunk_or_whole_clusters(tmp_path, monkeypatch, out_fmt, options, chunk):
    source = make_source(str(tmp_path / "source.raw"))
    lengths = record_writes(monkeypatch, RawDriver if out_fmt == "raw" else Qcow2Driver)
    target = str(tmp_path / ("out." + out_fmt))
    diskimage.convert(source, target, out_fmt, src_fmt="raw", options=options)
    assert lengths
    assert max(length for _offset, length in lengths) == chunk
    assert all(offset % chunk == 0 for offset, _length in lengths)
    with open(source, "rb") as handle:
        assert read_back(target, out_fmt) == handle.read()


def test_the_chunk_is_copy_chunk_at_least_and_max_io_at_most():
    assert 64 * 1024 <= convert_op.COPY_CHUNK <= MAX_IO

    class Source:
        virtual_size = 1 << 30

    class Target:
        def __init__(self, cluster_size):
            self.cluster_size = cluster_size

    def chunk(cluster_size):
        return convert_op._Converter(Source(), Target(cluster_size), None, 0, True, None).chunk_size

    assert chunk(0) == convert_op.COPY_CHUNK
    assert chunk(65536) == convert_op.COPY_CHUNK
    assert chunk(2 * MIB) == max(2 * MIB, convert_op.COPY_CHUNK)
    assert chunk(32 * MIB) == MAX_IO
