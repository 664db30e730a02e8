# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A qcow2 write of whole unallocated clusters (a conversion filling a new
image) takes a short path that plans nothing cluster by cluster: the file it
leaves is byte for byte the one the general path leaves, and qemu-img finds
it clean; writes that are partial, overwrite or need the general path's care
(extended L2 entries, a data file) still take it."""

import os
import random

import pytest

from qemu_tools import qemu_img

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.qcow2 import Qcow2Driver

K = 1024
M = 1024 * K


class NoOpener:
    def __call__(self, referrer, name, fmt):
        raise AssertionError("no backing file expected")


def write_all(path, size, options, writes):
    Qcow2Driver.create(str(path), size, options)
    with Qcow2Driver.open(str(path), False, NoOpener()) as driver:
        for offset, data in writes:
            driver.write(offset, data)
        driver.flush()
        return driver.read(0, size)


def conversion_like_writes(seed, size, chunk):
    """Chunks in guest order with gaps (holes), then overwrites and partial writes."""
    rng = random.Random(seed)
    writes = []
    position = 0
    while position + chunk <= size:
        if rng.random() < 0.7:
            writes.append((position, os.urandom(chunk)))
        position += chunk
    for _overwrite in range(6):
        offset = rng.randrange(0, size - 3 * chunk)
        writes.append((offset, os.urandom(rng.randrange(1, 3 * chunk))))
    return writes


@pytest.mark.parametrize("options, chunk", [
    ({"cluster_size": 65536}, M),
    ({"cluster_size": 4096}, 256 * K),          # several L2 tables
    ({"cluster_size": 65536, "refcount_bits": 1}, M),
    ({"cluster_size": 512, "compat": "0.10"}, 64 * K),
])
def test_the_short_path_leaves_the_file_the_general_path_leaves(tmp_path, monkeypatch, options, chunk):
    size = 12 * M
    writes = conversion_like_writes(14, size, chunk)
    taken = []
    original = Qcow2Driver._write_new_clusters

    def counting(self, *args):
        taken.append(args[1:3])
        return original(self, *args)

    monkeypatch.setattr(Qcow2Driver, "_write_new_clusters", counting)
    short = write_all(tmp_path / "short.qcow2", size, options, writes)
    assert taken
    monkeypatch.setattr(Qcow2Driver, "_new_cluster_entries", lambda self, *args: None)
    general = write_all(tmp_path / "general.qcow2", size, options, writes)
    assert short == general
    with open(str(tmp_path / "short.qcow2"), "rb") as one, open(str(tmp_path / "general.qcow2"), "rb") as two:
        assert one.read() == two.read()
    qemu_img("check", "-q", str(tmp_path / "short.qcow2"))
    qemu_img("compare", "-q", "-f", "qcow2", "-F", "qcow2", str(tmp_path / "short.qcow2"),
             str(tmp_path / "general.qcow2"))


def test_partial_overwriting_and_extended_l2_writes_take_the_general_path(tmp_path, monkeypatch):
    def refuse(self, *args):
        raise AssertionError("the short path was taken")

    monkeypatch.setattr(Qcow2Driver, "_write_new_clusters", refuse)
    size = 4 * M
    model = bytearray(size)
    writes = [(4096, os.urandom(65536)), (M + 512, os.urandom(M)), (2 * M, os.urandom(65536 + 1))]
    for offset, data in writes:
        model[offset:offset + len(data)] = data
    assert write_all(tmp_path / "partial.qcow2", size, {"cluster_size": 65536}, writes) == bytes(model)
    extended = [(0, os.urandom(M))]
    assert write_all(tmp_path / "extended.qcow2", size, {"cluster_size": 65536, "extended_l2": "on"},
                     extended)[:M] == extended[0][1]
    monkeypatch.undo()
    first = os.urandom(M)
    again = os.urandom(M)
    path = tmp_path / "overwrite.qcow2"
    taken = []
    original = Qcow2Driver._write_new_clusters

    def counting(self, *args):
        taken.append(args)
        return original(self, *args)

    monkeypatch.setattr(Qcow2Driver, "_write_new_clusters", counting)
    assert write_all(path, size, {"cluster_size": 65536}, [(0, first), (0, again)])[:M] == again
    assert len(taken) == 1      # the overwrite of allocated clusters is not "new"
    qemu_img("check", "-q", str(path))
