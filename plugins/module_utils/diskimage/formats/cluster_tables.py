# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What QEMU's two older L1/L2 cluster-table formats (qcow v1 and QED) share:
the open/close lifecycle, the write loop over L2 spans, the metadata overlap
check before in-place writes, and the run helpers of their block status.

A subclass provides ``_open_structures(opener)``, ``_fixed_metadata()``,
``_prepare_write()``, ``_write_in_table(offset, view)``, ``format_label`` and
the table geometry (``_l1``, ``_l2_entries``, ``_l2_bytes``, ``cluster_size``).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import bisect

from ..errors import CorruptImageError
from .base import Driver


def progression_length(table, first, stop, step):
    """How many entries of ``table`` from index ``first`` (at most up to
    ``stop``) continue ``table[first]`` by ``step`` each: whole runs of
    contiguous clusters (step = cluster size) or equal entries (step 0) found
    with slice comparisons instead of a Python loop per entry."""
    start = table[first]
    longest = stop - first
    if step:
        # a hostile entry near 2**64 cannot continue past it
        longest = max(1, min(longest, (0xFFFFFFFFFFFFFFFF - start) // step + 1))

    def matches(count):
        if step:
            expected = array.array("Q", range(start, start + count * step, step))
        else:
            expected = array.array("Q", [start]) * count
        return table[first:first + count] == expected

    if matches(longest):
        return longest
    low, high = 1, longest
    while high - low > 1:
        middle = (low + high) // 2
        if matches(middle):
            low = middle
        else:
            high = middle
    return low


class ClusterTableDriver(Driver):
    """Base of QcowDriver and QedDriver."""

    def _abandon_open(self):
        # Nothing to flush yet: close the file and the backing only.
        self._close_file()
        Driver.close(self)

    def close(self):
        try:
            if self._file is not None and not self.readonly:
                self.flush()
        finally:
            self._close_file()
            Driver.close(self)

    def _check_no_overlap(self, host, length, what, l2_tables=True):
        """Refuse a write of [host, host+length) that would land on the header,
        the L1 table or (``l2_tables``) an L2 table (docs/security.md rule 6)."""
        end = host + length
        for start, stop, name in self._fixed_metadata():
            if host < stop and start < end:
                raise CorruptImageError("%s: %s at 0x%x (%d bytes) overlaps the %s at 0x%x; refusing to write"
                                        % (self.format_label, what, host, length, name, start), self.path)
        if not l2_tables:
            return
        if self._l2_starts is None:
            self._l2_starts = sorted(set(offset for offset in self._l1 if offset))
        starts = self._l2_starts
        index = bisect.bisect_left(starts, host - self._l2_bytes + 1)
        if index < len(starts) and starts[index] < end:
            raise CorruptImageError("%s: %s at 0x%x (%d bytes) overlaps the L2 table at 0x%x; refusing to write"
                                    % (self.format_label, what, host, length, starts[index]), self.path)

    @staticmethod
    def _add_run(runs, start, count, kind, host):
        if runs:
            prev_start, prev_count, prev_kind, prev_host = runs[-1]
            if prev_kind == kind and prev_start + prev_count == start and (
                    host is None or prev_host + prev_count == host):
                runs[-1] = (prev_start, prev_count + count, kind, prev_host)
                return
        runs.append((start, count, kind, host))

    def write(self, offset, data):
        self._check_range(offset, len(data))
        self._prepare_write()
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        span = self._l2_entries * self.cluster_size
        pos = offset
        end = offset + len(view)
        while pos < end:
            table_end = min(end, (pos // span + 1) * span)
            self._write_in_table(pos, view[pos - offset:table_end - offset])
            pos = table_end
