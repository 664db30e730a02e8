# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""compare(): ``qemu-img compare [-s]``.

Ranges that read as zeroes in both images (by block status) are skipped
without reading.  Images of different sizes compare equal when the extra area
of the larger one reads as zeroes, unless ``strict``: then a size difference
is a difference, and so is a difference in allocation state (data, allocated
zeroes, unallocated) at the same offset.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ..formats.base import MAX_IO, ZEROES
from .image import chain_block_status, open_driver, reads_zero, status_windows, translate_os_errors
from .create import close_quietly

SECTOR_SIZE = 512
# Guest bytes whose block status is asked for at once (bounds the extent lists).
STATUS_WINDOW = 16 * MAX_IO
_COMPARE_BLOCK = 64 * 1024
_ZERO_GRANULE = 4096


def first_nonzero(data):
    """Index of the first non-zero byte of ``data``, or None."""
    if ZEROES.startswith(data):
        return None
    granule = ZEROES[:_ZERO_GRANULE]
    for position in range(0, len(data), _ZERO_GRANULE):
        if not data.startswith(granule, position):
            block = bytes(data[position:position + _ZERO_GRANULE])
            return position + len(block) - len(block.lstrip(b"\0"))
    # Only a short tail block can be left.
    tail_start = len(data) - len(data) % _ZERO_GRANULE
    tail = bytes(data[tail_start:])
    return tail_start + len(tail) - len(tail.lstrip(b"\0"))


def first_difference(data_a, data_b):
    """Index of the first byte where ``data_a`` and ``data_b`` (same length) differ, or None."""
    if data_a == data_b:
        return None
    for position in range(0, len(data_a), _COMPARE_BLOCK):
        block_a = data_a[position:position + _COMPARE_BLOCK]
        block_b = data_b[position:position + _COMPARE_BLOCK]
        if block_a != block_b:
            for index in range(0, len(block_a), SECTOR_SIZE):
                if block_a[index:index + SECTOR_SIZE] != block_b[index:index + SECTOR_SIZE]:
                    return position + index
    return None


def _sector(offset):
    return offset // SECTOR_SIZE * SECTOR_SIZE


def _paired_runs(runs_a, runs_b):
    """Walk two run lists covering the same range: (start, end, kind_a, kind_b)."""
    index_a = index_b = 0
    while index_a < len(runs_a) and index_b < len(runs_b):
        run_a, run_b = runs_a[index_a], runs_b[index_b]
        start = max(run_a.start, run_b.start)
        end_a, end_b = run_a.start + run_a.length, run_b.start + run_b.length
        end = min(end_a, end_b)
        if start < end:
            yield start, end, run_a.kind, run_b.kind
        if end_a <= end:
            index_a += 1
        if end_b <= end:
            index_b += 1


class _Comparison:
    def __init__(self, image_a, image_b, strict):
        self.image_a = image_a
        self.image_b = image_b
        self.strict = strict

    def _data_mismatch(self, start, end):
        """First mismatch offset reading both images over [start, end)."""
        position = start
        while position < end:
            chunk_end = min(end, position // MAX_IO * MAX_IO + MAX_IO)
            length = chunk_end - position
            found = first_difference(self.image_a.read(position, length),
                                     self.image_b.read(position, length))
            if found is not None:
                return _sector(position + found)
            position = chunk_end
        return None

    @staticmethod
    def _nonzero_at(image, start, end):
        """First offset in [start, end) of ``image`` that does not read as zero."""
        position = start
        while position < end:
            chunk_end = min(end, position // MAX_IO * MAX_IO + MAX_IO)
            found = first_nonzero(image.read(position, chunk_end - position))
            if found is not None:
                return _sector(position + found)
            position = chunk_end
        return None

    def common_part(self, size):
        def both(offset, length):
            return chain_block_status(self.image_a, offset, length), chain_block_status(self.image_b, offset, length)

        for _window, _window_end, (runs_a, runs_b) in status_windows(0, size, STATUS_WINDOW, both):
            for start, end, kind_a, kind_b in _paired_runs(runs_a, runs_b):
                if self.strict and kind_a != kind_b:
                    return start
                zero_a, zero_b = reads_zero(kind_a), reads_zero(kind_b)
                if zero_a and zero_b:
                    continue
                if zero_a:
                    found = self._nonzero_at(self.image_b, start, end)
                elif zero_b:
                    found = self._nonzero_at(self.image_a, start, end)
                else:
                    found = self._data_mismatch(start, end)
                if found is not None:
                    return found
        return None

    def extra_part(self, image, start):
        """First non-zero offset past ``start`` in the larger image."""
        size = image.virtual_size
        windows = status_windows(align_window(start), size, STATUS_WINDOW,
                                 lambda offset, length: chain_block_status(image, offset, length))
        for _window, _window_end, runs in windows:
            for run in runs:
                run_start = max(run.start, start)
                run_end = run.start + run.length
                if run_start >= run_end or reads_zero(run.kind):
                    continue
                found = self._nonzero_at(image, run_start, run_end)
                if found is not None:
                    return found
        return None


def align_window(offset):
    return offset // STATUS_WINDOW * STATUS_WINDOW


@translate_os_errors("cannot compare images")
def compare_detail(a, b, fmt_a=None, fmt_b=None, strict=False, allow_dirs=None, force_share=False,
                   member_a=None, member_b=None, key_secret=None, trusted_files=None):
    """The first offset (sector-aligned, as qemu-img reports it) where the
    images ``a`` and ``b`` differ, or None when they compare equal.  In strict
    mode a size difference is reported at the end of the smaller image.
    ``member_a``/``member_b``: disks inside OVAs or Vagrant boxes.
    ``key_secret``: the passphrase of encrypted (LUKS) images among them."""
    image_a = image_b = None
    try:
        image_a = open_driver(a, fmt=fmt_a, readonly=True, allow_dirs=allow_dirs, force_share=force_share,
                              member=member_a, key_secret=key_secret, trusted_files=trusted_files)
        image_b = open_driver(b, fmt=fmt_b, readonly=True, allow_dirs=allow_dirs, force_share=force_share,
                              member=member_b, key_secret=key_secret, trusted_files=trusted_files)
        size_a, size_b = image_a.virtual_size, image_b.virtual_size
        common = min(size_a, size_b)
        if strict and size_a != size_b:
            return common
        comparison = _Comparison(image_a, image_b, strict)
        found = comparison.common_part(common)
        if found is not None or size_a == size_b:
            return found
        return comparison.extra_part(image_a if size_a > size_b else image_b, common)
    finally:
        close_quietly(image_b)
        close_quietly(image_a)


def compare(a, b, fmt_a=None, fmt_b=None, strict=False, allow_dirs=None, force_share=False,
            member_a=None, member_b=None, key_secret=None, trusted_files=None):
    """Whether images ``a`` and ``b`` have the same guest content (qemu-img compare)."""
    return compare_detail(a, b, fmt_a=fmt_a, fmt_b=fmt_b, strict=strict, allow_dirs=allow_dirs,
                          force_share=force_share, member_a=member_a, member_b=member_b,
                          key_secret=key_secret, trusted_files=trusted_files) is None
