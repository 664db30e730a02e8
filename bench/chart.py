# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark chart: panels of horizontal bars, written as a PNG.

With matplotlib importable (``make bench`` installs it into the virtualenv) the chart is drawn
by matplotlib; without it by a small stdlib renderer (zlib + a 5x7 bitmap font), so that the
benchmark never depends on it.  A panel is a dict:

  {"title": str, "unit": str, "series": [name, ...],
   "groups": [(label, [value or None per series]), ...],
   "lines": [(value, name), ...]}      # reference lines (targets)
"""

from __future__ import absolute_import, division, print_function

import struct
import zlib

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189)]
LINE_COLORS = [(214, 39, 40), (127, 127, 127), (23, 190, 207)]


def write_chart(panels, path, title):
    """Write ``panels`` to the PNG ``path``; returns "matplotlib" or "stdlib" (the renderer used)."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    except ImportError:
        write_png(panels, path, title)
        return "stdlib"
    _write_matplotlib(pyplot, panels, path, title)
    return "matplotlib"


def _hex(color):
    return "#%02x%02x%02x" % color


def _write_matplotlib(pyplot, panels, path, title):
    heights = [max(2.0, 0.3 * len(panel["groups"]) * max(1, len(panel["series"])) + 1.0) for panel in panels]
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(10, sum(heights)),
                                   gridspec_kw={"height_ratios": heights}, squeeze=False)
    figure.suptitle(title, fontsize=11)
    for axis, panel in zip(axes[:, 0], panels):
        count = len(panel["series"])
        width = 0.8 / max(1, count)
        labels = [label for label, _values in panel["groups"]]
        for index, name in enumerate(panel["series"]):
            positions = [group + (index - (count - 1) / 2.0) * width for group in range(len(labels))]
            values = [values[index] if values[index] is not None else 0 for _label, values in panel["groups"]]
            bars = axis.barh(positions, values, height=width, color=_hex(COLORS[index % len(COLORS)]), label=name)
            axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
        for index, (value, name) in enumerate(panel["lines"]):
            axis.axvline(value, color=_hex(LINE_COLORS[index % len(LINE_COLORS)]), linestyle="--", label=name)
        axis.set_yticks(range(len(labels)))
        axis.set_yticklabels(labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_title(panel["title"], fontsize=10)
        axis.set_xlabel(panel["unit"], fontsize=8)
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


# 5x7 bitmap font: 7 rows of 5 bits per glyph, as 14 hex digits (lower case is drawn as upper case)
_FONT = {
    "A": "0E11111F111111", "B": "1E11111E11111E", "C": "0E11101010110E", "D": "1E11111111111E",
    "E": "1F10101E10101F", "F": "1F10101E101010", "G": "0E11101711110F",
    "H": "1111111F111111", "I": "0E04040404040E", "J": "0702020202120C",
    "K": "11121418141211", "L": "1010101010101F", "M": "111B1515111111", "N": "11111915131111",
    "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D", "R": "1E11111E141211",
    "S": "0F10100E01011E", "T": "1F040404040404", "U": "1111111111110E", "V": "11111111110A04",
    "W": "1111111515150A", "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F",
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F",
    "3": "1F02040201110E", "4": "02060A121F0202", "5": "1F101E0101110E", "6": "0608101E11110E",
    "7": "1F010204080808", "8": "0E11110E11110E", "9": "0E11110F01020C", ".": "00000000000C0C",
    "-": "0000001F000000", ">": "08040201020408", "<": "02040810080402", "/": "00010204081000",
    ":": "000C0C000C0C00", "(": "02040808080402", ")": "08040202020408", "=": "00001F001F0000",
    ",": "000000000C0408", "%": "18190204081303", "_": "0000000000001F", "+": "0004041F040400",
    " ": "00000000000000", "?": "0E110102040004", "*": "00150E1F0E1500",
}


class _Canvas:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def rect(self, left, top, width, height, color):
        left, top = max(0, int(left)), max(0, int(top))
        right, bottom = min(self.width, int(left + width)), min(self.height, int(top + height))
        if right <= left or bottom <= top:
            return
        row = bytes(color) * (right - left)
        for y in range(top, bottom):
            start = (y * self.width + left) * 3
            self.pixels[start:start + len(row)] = row

    def text(self, left, top, text, color=(0, 0, 0), scale=2):
        for char in text.upper():
            rows = _FONT.get(char, _FONT["?"])
            for y in range(7):
                bits = int(rows[2 * y:2 * y + 2], 16)
                for x in range(5):
                    if bits & (0x10 >> x):
                        self.rect(left + x * scale, top + y * scale, scale, scale, color)
            left += 6 * scale

    def png(self):
        raw = b"".join(b"\x00" + bytes(self.pixels[y * self.width * 3:(y + 1) * self.width * 3])
                       for y in range(self.height))

        def chunk(kind, data):
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_png(panels, path, title):
    """The chart drawn without matplotlib: the same panels, bars with their values, target lines dashed."""
    width, label_width, bar_height, scale = 1000, 300, 14, 2
    plot_width = width - label_width - 90
    heights = []
    for panel in panels:
        heights.append(40 + len(panel["groups"]) * (len(panel["series"]) * bar_height + 8) + 20 * 2)
    canvas = _Canvas(width, 40 + sum(heights))
    canvas.text(10, 10, title, scale=scale)
    top = 40
    for panel, height in zip(panels, heights):
        canvas.text(10, top + 6, "%s (%s)" % (panel["title"], panel["unit"]), scale=scale)
        values = [value for _label, group in panel["groups"] for value in group if value is not None]
        peak = max(values + [value for value, _name in panel["lines"]] + [1e-9])
        y = top + 30
        for label, group in panel["groups"]:
            canvas.text(10, y + 2, label[:24], scale=scale)
            for index, value in enumerate(group):
                if value is not None:
                    length = plot_width * value / peak
                    canvas.rect(label_width, y, length, bar_height - 2, COLORS[index % len(COLORS)])
                    canvas.text(label_width + length + 4, y, "%.2f" % value, scale=1)
                y += bar_height
            y += 8
        for index, (value, name) in enumerate(panel["lines"]):
            x = label_width + plot_width * value / peak
            for dash in range(top + 30, y, 6):
                canvas.rect(x, dash, 2, 3, LINE_COLORS[index % len(LINE_COLORS)])
            canvas.text(x + 3, y + 2 + 10 * index, name, color=LINE_COLORS[index % len(LINE_COLORS)], scale=1)
        legend_x = label_width
        for index, name in enumerate(panel["series"]):
            canvas.rect(legend_x, y + 24, 10, 10, COLORS[index % len(COLORS)])
            canvas.text(legend_x + 14, y + 26, name, scale=1)
            legend_x += 14 + 6 * len(name) + 20
        top += height
    with open(path, "wb") as handle:
        handle.write(canvas.png())
