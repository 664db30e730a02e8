# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""_deflate: the optional deflate accelerator (zlib-ng) and its standard-library fallback.

Compressed qcow2 and streamOptimized VMDK images written with either are read back by
qemu-img and by the library, and are no larger than qemu-img's own."""

import importlib
import os
import random
import shutil
import sys
import threading
import zlib

import pytest

import components
import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import _deflate
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import CorruptImageError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import qcow2_compress, qcow2_layout, vmdk

try:
    from zlib_ng import zlib_ng as _zlib_ng  # noqa: F401  pylint: disable=unused-import
    HAS_ZLIB_NG = True
except ImportError:
    HAS_ZLIB_NG = False

needs_zlib_ng = components.needs(HAS_ZLIB_NG, "zlib-ng Python module", "pip install zlib-ng")
needs_qemu_img = components.needs(shutil.which("qemu-img"), "qemu-img")

MIB = 1024 * 1024
WORDS = ("kernel systemd udev mount root boot grub qemu libvirt domain disk image volume pool network "
         "bridge error warning info debug started stopped failed /usr/lib /etc /var/log 0x0000 42").split()


def _text(rng, size):
    words = []
    length = 0
    while length < size:
        word = rng.choice(WORDS) + rng.choice((" ", " ", "\n", "=", ": "))
        words.append(word)
        length += len(word)
    return "".join(words).encode()[:size]


@pytest.fixture(scope="module")
def source_raw(tmp_path_factory):
    """8 MiB: 1 MiB text, 1 MiB random, 1 MiB text at 5 MiB, holes elsewhere (as the benchmark corpus)."""
    rng = random.Random(14)
    path = tmp_path_factory.mktemp("deflate-source") / "source.raw"
    with open(str(path), "wb") as image:
        image.truncate(8 * MIB)
        image.write(_text(rng, MIB))
        image.write(bytes(rng.getrandbits(8) for dummy in range(MIB)))
        image.seek(5 * MIB)
        image.write(_text(rng, MIB))
    return path


@pytest.fixture(params=["accelerator", "stdlib"])
def backend(request, monkeypatch):
    """Run the test with zlib-ng (when installed) and with it forced off."""
    if request.param == "accelerator":
        if not HAS_ZLIB_NG:
            components.missing("zlib-ng Python module", "pip install zlib-ng")
        assert _deflate.backend_name() == "zlib-ng"
    else:
        monkeypatch.setattr(_deflate, "_zlib_ng", None)
        assert _deflate.backend_name() == "zlib"
    return request.param


def _reloaded_without_accelerator(monkeypatch):
    monkeypatch.setitem(sys.modules, "zlib_ng", None)  # makes "import zlib_ng" raise ImportError
    return importlib.reload(_deflate)


def test_without_an_importable_accelerator_the_standard_library_deflates(monkeypatch):
    try:
        module = _reloaded_without_accelerator(monkeypatch)
        assert module.backend() is zlib
        assert module.backend_name() == "zlib"
        data = _text(random.Random(1), 65536)
        # exactly what qemu-img writes: qcow2 raw deflate (level 6, 4 KiB window, memLevel 9), VMDK compress()
        expected = zlib.compressobj(6, zlib.DEFLATED, -12, 9)
        assert module.compress(data, -12) == expected.compress(data) + expected.flush()
        assert module.compress(data, 15) == zlib.compress(data)
        assert module.ERRORS == (zlib.error,)
    finally:
        monkeypatch.undo()
        importlib.reload(_deflate)


@needs_zlib_ng
def test_an_importable_zlib_ng_deflates_and_standard_zlib_inflates_its_output():
    assert _deflate.backend_name() == "zlib-ng"
    data = _text(random.Random(2), 65536)
    assert zlib.decompressobj(-12).decompress(_deflate.compress(data, -12)) == data
    assert zlib.decompress(_deflate.compress(data, 15)) == data
    stdlib = zlib.compressobj(6, zlib.DEFLATED, -12, 9)
    assert _deflate.decompressobj(-12).decompress(stdlib.compress(data) + stdlib.flush()) == data
    assert _deflate.decompressobj(15).decompress(zlib.compress(data)) == data


@needs_zlib_ng
def test_damaged_data_raises_an_error_of_errors_with_zlib_ng():
    with pytest.raises(_deflate.ERRORS):
        _deflate.decompressobj(15).decompress(b"\xff" * 64)


def _size(path):
    return os.stat(str(path)).st_blocks * 512


@needs_qemu_img
@pytest.mark.parametrize("out_fmt, options, qemu_args", [
    ("qcow2", None, ["-c", "-O", "qcow2"]),
    ("vmdk", {"subformat": "streamOptimized"}, ["-O", "vmdk", "-o", "subformat=streamOptimized"]),
], ids=["qcow2-compressed", "vmdk-streamOptimized"])
def test_compressed_output_is_read_back_and_no_larger_than_qemu_img(backend, source_raw, tmp_path, out_fmt,
                                                                    options, qemu_args):
    ours = tmp_path / ("ours." + out_fmt)
    theirs = tmp_path / ("theirs." + out_fmt)
    result = diskimage.convert(str(source_raw), str(ours), out_fmt, src_fmt="raw", options=options, compress=True)
    assert result["compressed_clusters"] > 0
    qemu_tools.qemu_img("convert", "-f", "raw", *(qemu_args + [source_raw, theirs]))
    qemu_tools.qemu_img("compare", "-f", "raw", "-F", out_fmt, source_raw, ours)
    if out_fmt == "qcow2":
        assert "No errors were found" in qemu_tools.qemu_img("check", ours)
    # the library reads its own output (and qemu-img's) back to the same bytes
    for image in (ours, theirs):
        back = tmp_path / (image.name + ".raw")
        diskimage.convert(str(image), str(back), "raw", src_fmt=out_fmt)
        with open(str(back), "rb") as got, open(str(source_raw), "rb") as want:
            assert got.read() == want.read()
    if out_fmt == "vmdk":
        # (a qcow2 file also holds metadata laid out unlike qemu-img's: its deflate is compared below)
        assert _size(ours) <= _size(theirs), (backend, _size(ours), _size(theirs))


@needs_zlib_ng
@pytest.mark.parametrize("out_fmt, options", [("qcow2", None), ("vmdk", {"subformat": "streamOptimized"})],
                         ids=["qcow2-compressed", "vmdk-streamOptimized"])
def test_zlib_ng_output_is_no_larger_than_the_standard_librarys(source_raw, tmp_path, monkeypatch,
                                                                out_fmt, options):
    accelerated = tmp_path / ("zlib-ng." + out_fmt)
    diskimage.convert(str(source_raw), str(accelerated), out_fmt, src_fmt="raw", options=options, compress=True)
    monkeypatch.setattr(_deflate, "_zlib_ng", None)
    stdlib = tmp_path / ("zlib." + out_fmt)
    diskimage.convert(str(source_raw), str(stdlib), out_fmt, src_fmt="raw", options=options, compress=True)
    assert os.path.getsize(str(accelerated)) <= os.path.getsize(str(stdlib))


# ------------------------------------------------- streamOptimized VMDK reads
@pytest.fixture()
def stream_vmdk(source_raw, tmp_path):
    path = tmp_path / "stream.vmdk"
    qemu_tools.qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", source_raw, path)
    return path


def _compressed_hosts(path):
    """(grain index, host offset of its marker) of every compressed grain, in guest order."""
    driver = vmdk.VmdkDriver.open(str(path))
    try:
        extent = driver.extents[0]
        return [(start // extent.grain_size, host) for start, dummy, state, host in extent.runs(0, extent.size)
                if state == vmdk._COMPRESSED]  # pylint: disable=protected-access
    finally:
        driver.close()


@needs_qemu_img
def test_a_read_of_many_compressed_grains_inflates_them_on_worker_threads(stream_vmdk, source_raw, monkeypatch):
    monkeypatch.setattr(vmdk.os, "cpu_count", lambda: 4)
    threads = set()
    inflate = vmdk._SparseExtent.read_compressed  # pylint: disable=protected-access

    def recording(extent, host, grain_index):
        threads.add(threading.current_thread().name)
        return inflate(extent, host, grain_index)

    monkeypatch.setattr(vmdk._SparseExtent, "read_compressed", recording)
    with diskimage.open_image(str(stream_vmdk)) as opened, open(str(source_raw), "rb") as source:
        for offset in range(0, 8 * MIB, 2 * MIB):
            assert opened.read(offset, 2 * MIB) == source.read(2 * MIB)
    assert threads and threading.current_thread().name not in threads


@needs_qemu_img
def test_a_damaged_grain_among_many_is_the_one_named(stream_vmdk, monkeypatch):
    monkeypatch.setattr(vmdk.os, "cpu_count", lambda: 4)
    grains = _compressed_hosts(stream_vmdk)
    (first, first_host), (dummy, later_host) = grains[3], grains[6]
    with open(str(stream_vmdk), "r+b") as image:
        for host in (first_host, later_host):  # the deflate data after the 12-byte marker
            image.seek(host + 12)
            image.write(b"\xff" * 32)
    with diskimage.open_image(str(stream_vmdk)) as opened:
        with pytest.raises(CorruptImageError, match="VMDK compressed grain %d at offset %d cannot be inflated"
                           % (first, first_host)):
            opened.read(0, 2 * MIB)


# ------------------------------------------------- zstd: Python's own module (3.14+) first
class _StubZstd:
    """Stands in for Python 3.14's compression.zstd (this interpreter may be older): a "frame" of
    zero bytes is the zstd magic and their count; it records its calls."""

    MAGIC = b"\x28\xb5\x2f\xfd"

    def __init__(self):
        self.calls = []
        stub = self

        class ZstdDecompressor:  # pylint: disable=too-few-public-methods
            def decompress(self, data, max_length=-1):
                stub.calls.append(("decompress", max_length))
                assert bytes(data[:4]) == stub.MAGIC
                return bytes(int.from_bytes(bytes(data[4:8]), "little"))[:max_length]

        self.ZstdDecompressor = ZstdDecompressor  # pylint: disable=invalid-name

    def compress(self, data):
        self.calls.append(("compress", len(data)))
        assert not any(data)
        return self.MAGIC + len(data).to_bytes(4, "little")


def test_zstd_clusters_use_pythons_own_module_when_it_imports(monkeypatch):
    stub = _StubZstd()
    monkeypatch.setattr(qcow2_compress, "_compression_zstd", stub)
    monkeypatch.setattr(qcow2_compress, "_zstandard_module", None)
    monkeypatch.setattr(qcow2_compress, "_zstd_module", None)
    codec = qcow2_compress.Qcow2Codec(qcow2_layout.COMPRESSION_ZSTD, 4096, "/img.qcow2")
    compressed = codec.compress(bytes(4096))
    assert compressed == _StubZstd.MAGIC + (4096).to_bytes(4, "little")
    # the padding after the frame (to the sector) is not part of it; at most one cluster comes out
    assert codec.decompress(compressed + bytes(412), 0, 0x10000) == bytes(4096)
    assert stub.calls == [("compress", 4096), ("decompress", 4096)]
