# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Early writeback (ops/transfer.py Writeback) starts the write-out of each
step without waiting for it and drops the pages already written out; the C
library it calls through ctypes is loaded once, without running ldconfig."""

import os
import subprocess

import pytest

from ansible_collections.kvm.storage.plugins.module_utils.diskimage import _io
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import transfer


@pytest.fixture
def written_file(tmp_path):
    path = str(tmp_path / "file")
    with open(path, "wb") as handle:
        handle.write(b"x" * 65536)
    return path


def record_calls(monkeypatch, sync_result=0):
    calls = []

    def sync_file_range(fd, offset, length, flags):
        calls.append(("sync_file_range", offset, length, flags))
        return sync_result

    def posix_fadvise(fd, offset, length, advice):
        calls.append(("fadvise", offset, length, advice))

    def fdatasync(fd):
        calls.append(("fdatasync",))

    monkeypatch.setattr(transfer, "_sync_file_range", lambda: sync_file_range)
    monkeypatch.setattr(transfer.os, "posix_fadvise", posix_fadvise, raising=False)
    monkeypatch.setattr(transfer.os, "fdatasync", fdatasync)
    return calls


def test_a_step_starts_the_write_out_without_waiting_then_drops_clean_pages(written_file, monkeypatch):
    writeback = transfer.Writeback(written_file)
    try:
        calls = record_calls(monkeypatch)
        assert writeback._write_out() is True
    finally:
        monkeypatch.undo()
        writeback.close()
    assert calls == [("sync_file_range", 0, 0, transfer.SYNC_FILE_RANGE_WRITE),
                     ("fadvise", 0, 0, os.POSIX_FADV_DONTNEED)]


def test_a_refused_sync_file_range_falls_back_to_fdatasync(written_file, monkeypatch):
    writeback = transfer.Writeback(written_file)
    try:
        calls = record_calls(monkeypatch, sync_result=-1)
        assert writeback._write_out() is True
    finally:
        monkeypatch.undo()
        writeback.close()
    assert [call[0] for call in calls] == ["sync_file_range", "fdatasync", "fadvise"]


def test_the_default_step_is_a_few_mib():
    assert 1 << 20 <= transfer.WRITEBACK_STEP <= 16 << 20


def test_the_c_library_is_loaded_once_without_running_a_program(monkeypatch):
    def no_program(*args, **kwargs):
        raise AssertionError("a program was run to find the C library: %r" % (args,))

    monkeypatch.setattr(_io, "_libc", None)
    monkeypatch.setattr(subprocess, "Popen", no_program)
    first = _io.libc_library()
    assert _io.libc_library() is first
    assert hasattr(first, "fsync")
