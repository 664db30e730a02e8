# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""bench/ (`make bench`) works: its quick mode writes a row for every conversion, the Ansible rows and the
chart; the corpus is deterministic; the chart is drawn without matplotlib too.  Speed is never asserted."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import components

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import bench  # noqa: E402  pylint: disable=wrong-import-position,import-error
import chart  # noqa: E402  pylint: disable=wrong-import-position,import-error
import corpus  # noqa: E402  pylint: disable=wrong-import-position,import-error

MIB = 1 << 20
needs_qemu_img = components.needs(shutil.which("qemu-img"), "qemu-img")


def read_png(path):
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG without interlace (what the stdlib renderer writes)."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height = header[:2]
    raw = zlib.decompress(idat)
    stride = width * 3 + 1
    return width, height, [raw[row * stride + 1:(row + 1) * stride] for row in range(height)]


@needs_qemu_img
def test_quick_mode_writes_every_conversion_the_ansible_tasks_and_the_chart(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("BENCH_")}
    env["BENCH_QUICK"] = "1"
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench.py"), "--out", str(out),
                           "--workdir", str(tmp_path / "work")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300, check=False)
    output = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    table = (out / "results.md").read_text()
    assert "BENCH_QUICK" in table
    for label, *_rest in bench.CONVERSIONS:
        rows = [line for line in table.splitlines() if line.startswith("| %s |" % label)]
        assert len(rows) == 1, (label, table)
        assert "not measured" not in rows[0]
        assert ("pass" in rows[0]) or ("FAIL" in rows[0])
        assert rows[0] in output  # printed too
    for task in ("ansible.builtin.stat", "kvm.storage.disk_image_info", "kvm.storage.disk_image"):
        assert any(line.startswith("| %s |" % task) for line in table.splitlines()), (task, table)
    results = json.loads((out / "results.json").read_text())
    assert [row["conversion"] for row in results["conversions"]] == [label for label, *_rest in bench.CONVERSIONS]
    for row in results["conversions"]:
        assert all(seconds > 0 for seconds in row["seconds"].values()), row
        assert row["size_ours"] > 0 and row["size_qemu"] > 0 and row["rss_ours"] > 0 and row["rss_big"] > 0, row
    assert results["ansible"]["tasks"]["kvm.storage.disk_image"]["changed"] is False
    assert results["ansible"]["payloads"]["kvm.storage.disk_image"]["zip_bytes"] > 0
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corpus_is_the_same_every_time_half_random_half_text(tmp_path):
    first, second = tmp_path / "a.raw", tmp_path / "b.raw"
    description = corpus.write_raw(str(first), 48 * MIB, 16 * MIB, seed=3)
    corpus.write_raw(str(second), 48 * MIB, 16 * MIB, seed=3)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    assert os.path.getsize(str(first)) == 48 * MIB
    assert description["random_bytes"] == description["text_bytes"] == 8 * MIB
    runs = corpus.layout(48 * MIB, 16 * MIB, 3)
    assert sum(length for _offset, length, _kind in runs) == 16 * MIB
    ends = [offset + length for offset, length, _kind in runs]
    assert all(end <= start for end, (start, _length, _kind) in zip(ends, runs[1:]))  # no overlap
    assert ends[-1] <= 48 * MIB
    data = first.read_bytes()
    for offset, length, kind in runs:
        piece = data[offset:offset + length]
        compressed = len(zlib.compress(piece, 1))
        assert compressed > 0.95 * length if kind == "random" else compressed < 0.6 * length, (offset, kind)
    holes = bytearray(data)
    for offset, length, _kind in runs:
        holes[offset:offset + length] = bytes(length)
    assert not any(holes)  # zeroes everywhere else


def test_chart_without_matplotlib_is_a_png_with_the_bars(tmp_path):
    path = str(tmp_path / "chart.png")
    panels = [{"title": "Time", "unit": "ratio", "series": ["a", "b"],
               "groups": [("raw -> qcow2", [1.0, 2.0]), ("qcow2 -> raw", [0.5, None])], "lines": [(1.5, "target")]}]
    chart.write_png(panels, path, "bench")
    width, height, rows = read_png(path)
    assert width == 1000 and height > 100
    colors = set()
    for row in rows:
        colors.update(bytes(row[index:index + 3]) for index in range(0, len(row), 3))
    for color in chart.COLORS[:2] + chart.LINE_COLORS[:1]:
        assert bytes(color) in colors
