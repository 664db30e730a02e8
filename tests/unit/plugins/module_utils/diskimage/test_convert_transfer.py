# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""convert()'s data path (ops/transfer.py) and its options object (ConvertOptions):
zero detection finds every non-zero byte, the read-ahead thread hands over its
errors and stops with the writer, early writeback never decides the outcome,
and the options object says the same as the keywords."""

import hashlib
import os
import random
import threading

import pytest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError, InvalidOptionError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.raw import RawDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import convert as convert_op
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import transfer
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops.convert import ConvertOptions

MIB = 1 << 20


def reference_runs(data, offset, granule):
    """zero_runs as its definition says, one block at a time."""
    runs = []
    position = 0
    while position < len(data):
        end = min(len(data), (offset + position) // granule * granule + granule - offset)
        zero = not any(data[position:end])
        if runs and runs[-1][2] == zero:
            runs[-1] = (runs[-1][0], end, zero)
        else:
            runs.append((position, end, zero))
        position = end
    return runs


# ----------------------------------------------------------------- zero detection
@pytest.mark.parametrize("granule", [512, 4096, 65536])
@pytest.mark.parametrize("offset", [0, 4096 * 3, 1000])
def test_zero_runs_find_isolated_bytes_at_block_edges(granule, offset):
    size = 64 * granule + 700
    for position in (0, 1, granule - 1, granule, 2 * granule - 1, 17 * granule, size - granule, size - 2, size - 1):
        data = bytearray(size)
        data[position] = 0x5a
        data = bytes(data)
        runs = transfer.zero_runs(data, offset, granule)
        assert runs == reference_runs(data, offset, granule), position
        assert [run for run in runs if not run[2] and run[0] <= position < run[1]], position


def test_zero_runs_agree_with_the_definition_on_random_layouts():
    rng = random.Random(14)
    for _trial in range(400):
        granule = rng.choice([512, 4096, 65536])
        data = bytearray(rng.choice([granule * rng.randint(1, 30), rng.randint(1, 200000)]))
        for _run in range(rng.randint(0, 6)):
            start = rng.randrange(len(data))
            end = min(len(data), start + rng.choice([1, granule, rng.randint(1, 4 * granule)]))
            fill = rng.choice([0, rng.randint(1, 255)])
            data[start:end] = bytes([fill]) * (end - start) if fill else bytes(end - start)
        offset = rng.choice([0, rng.randrange(1 << 30)])
        assert transfer.zero_runs(bytes(data), offset, granule) == reference_runs(data, offset, granule)


def test_zero_runs_of_all_zero_and_all_data_chunks_are_one_run():
    assert transfer.zero_runs(bytes(4 * MIB), 0, 4096) == [(0, 4 * MIB, True)]
    data = b"\x01" * (4 * MIB)
    assert transfer.zero_runs(data, 512, 4096) == [(0, 4 * MIB, False)]


def test_is_zero_sees_a_last_byte_beyond_the_shared_buffer():
    assert transfer.is_zero(bytes(transfer.MAX_IO + 10))
    assert not transfer.is_zero(bytes(transfer.MAX_IO + 9) + b"\x01")
    assert not transfer.is_zero(bytes(100) + b"\x01")


# -------------------------------------------------------------------- read-ahead
def test_read_ahead_yields_in_order_and_holds_at_most_depth_items():
    produced = []

    def produce(put):
        for number in range(50):
            produced.append(number)
            put(number)

    seen = []
    with transfer.ReadAhead(produce, 2) as items:
        for item in items:
            # The producer is at most depth items ahead, plus the one it is putting.
            assert len(produced) - len(seen) <= 2 + 2
            seen.append(item)
    assert seen == list(range(50))


def test_read_ahead_raises_the_producer_error_in_the_consumer():
    class Broken(ImageError):
        pass

    def produce(put):
        put(1)
        raise Broken("read failed", "/dev/null")

    seen = []
    with pytest.raises(Broken, match="read failed"):
        with transfer.ReadAhead(produce, 4) as items:
            for item in items:
                seen.append(item)
    assert seen == [1]


def test_read_ahead_stops_the_producer_when_the_consumer_fails():
    stopped = threading.Event()

    def produce(put):
        try:
            for number in range(1000000):
                put(number)
        finally:
            stopped.set()

    before = threading.active_count()
    with pytest.raises(RuntimeError):
        with transfer.ReadAhead(produce, 2) as items:
            for item in items:
                if item == 3:
                    raise RuntimeError("write failed")
    assert stopped.is_set()
    assert threading.active_count() == before


# ------------------------------------------------------------------- conversions
def make_raw(path, size=12 * MIB):
    """A raw source: data at the start, a single non-zero byte at the end of a
    zero chunk, holes, and data ending exactly at the image's end."""
    with open(path, "wb") as image:
        image.truncate(size)
        image.write(os.urandom(3 * MIB + 4096))
        image.seek(5 * MIB)
        image.write(bytes(MIB - 1) + b"\x07")
        image.seek(size - MIB)
        image.write(b"text " * (MIB // 5) + b"end!!"[:MIB % 5])
    return path


def leftovers(directory, keep):
    return sorted(name for name in os.listdir(directory) if name not in keep)


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_convert_through_the_pipeline_keeps_every_byte(tmp_path, out_fmt):
    source = make_raw(str(tmp_path / "source.raw"))
    target = str(tmp_path / ("out." + out_fmt))
    result = diskimage.convert(source, target, out_fmt, digest="sha256")
    with open(source, "rb") as image:
        expected = hashlib.sha256(image.read()).hexdigest()
    assert result["digest"] == expected
    back = str(tmp_path / "back.raw")
    diskimage.convert(target, back, "raw", src_fmt=out_fmt)
    with open(back, "rb") as image:
        assert hashlib.sha256(image.read()).hexdigest() == expected
    # Holes stay holes: the zero chunk around the lone byte is not written as data.
    assert result["bytes_written"] < 6 * MIB


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2", "vmdk", "vdi", "vpc", "qed", "qcow", "vhdx"])
def test_data_between_zero_blocks_of_one_chunk_is_written_to_every_format(tmp_path, out_fmt):
    """Zero blocks inside a read chunk split it: the data around them is handed to the
    driver as views on the chunk, which every writable format takes."""
    source = str(tmp_path / "source.raw")
    with open(source, "wb") as image:
        image.write(os.urandom(MIB) + bytes(3 * MIB) + b"data" * (MIB // 4) + bytes(MIB))
    target = str(tmp_path / ("out." + out_fmt))
    written = diskimage.convert(source, target, out_fmt, src_fmt="raw")["bytes_written"]
    # Only VHDX's blocks (32 MiB) are larger than the zero ranges, which are not written.
    assert written < 6 * MIB or out_fmt == "vhdx"
    back = str(tmp_path / "back.raw")
    diskimage.convert(target, back, "raw", src_fmt=out_fmt)
    with open(source, "rb") as one, open(back, "rb") as two:
        expected, found = one.read(), two.read()
    # VHD rounds the virtual size up to its disk geometry: the rest reads zero.
    assert found[:len(expected)] == expected and not any(found[len(expected):])


def test_a_read_error_in_the_pipeline_leaves_no_file(tmp_path, monkeypatch):
    source = make_raw(str(tmp_path / "source.raw"))
    reads = []
    original = RawDriver.read_into

    # The copy reads into its reusable buffers (read_into).
    def failing_read(self, offset, view):
        reads.append(offset)
        if len(reads) == 2:
            raise ImageError("simulated read error", self.path)
        return original(self, offset, view)

    monkeypatch.setattr(RawDriver, "read_into", failing_read)
    before = threading.active_count()
    with pytest.raises(ImageError, match="simulated read error"):
        diskimage.convert(source, str(tmp_path / "out.qcow2"), "qcow2")
    assert leftovers(str(tmp_path), ["source.raw"]) == []
    assert threading.active_count() == before


def test_a_write_error_stops_the_reader_and_leaves_no_file(tmp_path, monkeypatch):
    source = make_raw(str(tmp_path / "source.raw"), size=40 * MIB)
    reads = []
    original_read = convert_op._Converter.read

    def counting_read(self, offset, length):
        reads.append(offset)
        return original_read(self, offset, length)

    def failing_data(self, offset, data):
        raise ImageError("simulated write error", self.target.path)

    monkeypatch.setattr(convert_op._Converter, "read", counting_read)
    monkeypatch.setattr(convert_op._Converter, "data", failing_data)
    before = threading.active_count()
    with pytest.raises(ImageError, match="simulated write error"):
        diskimage.convert(source, str(tmp_path / "out.raw"), "raw")
    assert leftovers(str(tmp_path), ["source.raw"]) == []
    assert threading.active_count() == before
    # The reader stopped within its read-ahead, not at the end of the source.
    assert len(reads) <= convert_op.READ_AHEAD_DEPTH + 2


def test_progress_raising_stops_the_copy_and_leaves_no_file(tmp_path):
    source = make_raw(str(tmp_path / "source.raw"))

    def interrupt(done, total):
        if done > 0:
            raise KeyboardInterrupt()

    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        diskimage.convert(source, str(tmp_path / "out.raw"), "raw", progress=interrupt)
    assert leftovers(str(tmp_path), ["source.raw"]) == []
    assert threading.active_count() == before


# --------------------------------------------------------------------- writeback
def test_writeback_writes_out_after_each_step_and_closes(tmp_path, monkeypatch):
    path = str(tmp_path / "file")
    with open(path, "wb") as handle:
        handle.write(b"x" * 4096)
    calls = []
    done = threading.Event()

    def write_out(self):
        calls.append(os.fstat(self._fd).st_size)
        done.set()
        return True

    monkeypatch.setattr(transfer.Writeback, "_write_out", write_out)
    writeback = transfer.Writeback(path, step=1000)
    writeback.advance(999)
    writeback.advance(1000)
    assert done.wait(10)
    writeback.close()
    assert calls == [4096]
    writeback.close()


def test_writeback_failure_is_quiet_and_the_conversion_completes(tmp_path, monkeypatch):
    source = make_raw(str(tmp_path / "source.raw"), size=20 * MIB)
    monkeypatch.setattr(transfer, "WRITEBACK_STEP", MIB)
    attempts = []
    attempted = threading.Event()

    def broken(fd, *args):
        attempts.append(fd)
        attempted.set()
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(transfer, "_sync_file_range", lambda: broken)
    original_advance = transfer.Writeback.advance

    def advance(self, written):
        # The copy waits for the first write-out attempt (on a loaded machine the
        # writeback thread might otherwise not run before the copy ends).
        original_advance(self, written)
        if written >= MIB:
            attempted.wait(10)

    monkeypatch.setattr(transfer.Writeback, "advance", advance)
    target = str(tmp_path / "out.raw")
    diskimage.convert(source, target, "raw")
    with open(source, "rb") as one, open(target, "rb") as two:
        assert one.read() == two.read()
    # One attempt, then the writeback gives up (the final flush is the convert's own).
    assert len(attempts) == 1


def test_writeback_of_a_missing_file_does_nothing(tmp_path):
    writeback = transfer.Writeback(str(tmp_path / "absent"))
    writeback.advance(1 << 40)
    writeback.close()


# --------------------------------------------------------------- ConvertOptions
def test_convert_options_have_defaults_and_refuse_unknown_settings():
    settings = ConvertOptions()
    assert settings.compress is False and settings.create_options is None and settings.digest is None
    with pytest.raises(TypeError, match="colour"):
        ConvertOptions(colour="blue")
    assert repr(ConvertOptions(compress=True, key_secret="secret")) == "ConvertOptions(compress=True)"
    shown = repr(ConvertOptions(create_options={"key-secret": "passphrase", "cipher-alg": "aes-256"}))
    assert "passphrase" not in shown and "aes-256" in shown


@pytest.mark.parametrize("settings, message", [
    ({"progress": 5}, "callable"),
    ({"digest": "nonsense"}, "digest algorithm"),
    ({"zero_tail": True}, "zero_tail needs on_device"),
    ({"on_device": True, "target_exists": True}, "cannot be used together"),
])
def test_convert_options_are_validated(settings, message):
    with pytest.raises(InvalidOptionError, match=message):
        ConvertOptions(**settings)


def test_convert_takes_the_options_object_and_keywords_override_it(tmp_path):
    source = make_raw(str(tmp_path / "source.raw"))
    settings = ConvertOptions(src_fmt="raw", create_options={"cluster_size": "128k"}, digest="md5")
    one = diskimage.convert(source, str(tmp_path / "one.qcow2"), "qcow2", settings)
    two = diskimage.convert(source, str(tmp_path / "two.qcow2"), "qcow2", settings, digest="sha1",
                            options={"cluster_size": "64k"})
    assert len(one["digest"]) == 32 and len(two["digest"]) == 40
    assert diskimage.info(str(tmp_path / "one.qcow2"))["cluster-size"] == 128 * 1024
    assert diskimage.info(str(tmp_path / "two.qcow2"))["cluster-size"] == 64 * 1024
    assert settings.digest == "md5"        # the object itself is not changed
    with pytest.raises(InvalidOptionError, match="ConvertOptions"):
        diskimage.convert(source, str(tmp_path / "three.qcow2"), "qcow2", {"compress": True})
    with pytest.raises(InvalidOptionError, match="zero_tail"):
        diskimage.convert(source, str(tmp_path / "four.qcow2"), "qcow2", zero_tail=True)
    with pytest.raises(TypeError, match="same setting"):
        diskimage.convert(source, str(tmp_path / "five.qcow2"), "qcow2", options={}, create_options={})
    assert leftovers(str(tmp_path), ["source.raw", "one.qcow2", "two.qcow2"]) == []


def test_status_windows_grow_over_an_empty_disk_and_shrink_back_at_data():
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA, ZERO, Extent
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops.image import status_windows
    data_at = 1 << 49
    asked = []

    def status(offset, length):
        asked.append((offset, length))
        if offset <= data_at < offset + length:
            return [Extent(offset, data_at - offset, ZERO, None), Extent(data_at, offset + length - data_at, DATA, 0)]
        return [Extent(offset, length, ZERO, None)]

    windows = list(status_windows(0, 1 << 50, 64 * MIB, status))
    # A PiB in a few dozen calls, not 16 million windows of 64 MiB; every byte covered once, in order.
    assert len(asked) < 80
    assert [(start, end) for start, end, _runs in windows] == [(o, o + n) for o, n in asked]
    assert windows[0][0] == 0 and windows[-1][1] == 1 << 50
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    # After the window with data the next one is the base size again.
    after = [index for index, (_s, _e, runs) in enumerate(windows) if len(runs) == 2][0] + 1
    assert windows[after][1] - windows[after][0] == 64 * MIB


def test_compare_walks_huge_empty_images_to_their_last_byte(tmp_path):
    one, two = str(tmp_path / "one.qcow2"), str(tmp_path / "two.qcow2")
    size = 1 << 44                           # 16 TiB: 262144 windows of 64 MiB
    diskimage.create(one, "qcow2", size=size)
    diskimage.create(two, "qcow2", size=size)
    assert diskimage.compare(one, two)
    with diskimage.open_image(two, fmt="qcow2", readonly=False) as image:
        image.write(size - 512, b"\x01" * 512)
    assert not diskimage.compare(one, two)
