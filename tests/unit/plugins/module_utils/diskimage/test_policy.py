# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path policy for names found inside images: decided without opening anything."""

import builtins
import os
import threading

import pytest

from ansible_collections.kvm.storage.plugins.module_utils.diskimage import policy
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageNotFoundError, PolicyError)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.policy import resolve_reference


@pytest.fixture
def layout(tmp_path):
    """images/vm/top.qcow2 (the referrer), images/vm/base.raw, images/base/gold.raw,
    outside/decoy.raw."""
    vm = tmp_path / "images" / "vm"
    base = tmp_path / "images" / "base"
    outside = tmp_path / "outside"
    for directory in (vm, base, outside):
        directory.mkdir(parents=True)
    for path in (vm / "top.qcow2", vm / "base.raw", base / "gold.raw", outside / "decoy.raw"):
        path.write_bytes(b"x")
    (vm / "sub").mkdir()
    (vm / "sub" / "inner.raw").write_bytes(b"x")
    return dict(top=vm / "top.qcow2", vm=vm, base=base, outside=outside, tmp=tmp_path)


@pytest.fixture
def no_open(monkeypatch):
    """Any attempt to open a file while the policy decides fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the policy opened %r" % (args[:1],))
    monkeypatch.setattr(os, "open", forbidden)
    monkeypatch.setattr(builtins, "open", forbidden)


def test_relative_names_resolve_in_the_referrers_directory(layout, no_open):
    assert resolve_reference(layout["top"], "base.raw") == str(layout["vm"] / "base.raw")
    assert resolve_reference(layout["top"], "./base.raw") == str(layout["vm"] / "base.raw")
    assert resolve_reference(layout["top"], "sub/inner.raw") == str(layout["vm"] / "sub" / "inner.raw")
    assert resolve_reference(str(layout["top"]), b"base.raw") == str(layout["vm"] / "base.raw")


@pytest.mark.parametrize("name,reason", [
    ("", "empty"),
    ("base\0.raw", "NUL"),
    ("json:{\"file.filename\": \"/etc/passwd\"}", "json: descriptions are not allowed"),
    ("nbd://127.0.0.1:10809/export", "protocol prefix 'nbd:'"),
    ("nbd:localhost:10809", "protocol prefix 'nbd:'"),
    ("http://example.invalid/disk.raw", "protocol prefix 'http:'"),
    ("file:base.raw", "protocol prefix 'file:'"),
    ("base.raw:", "protocol prefix"),
    ("../base/gold.raw", "'..'"),
    ("sub/../base.raw", "'..'"),
    ("/etc/passwd", "absolute"),
])
def test_default_policy_refusals(layout, no_open, name, reason):
    with pytest.raises(PolicyError) as excinfo:
        resolve_reference(layout["top"], name, kind="backing file")
    message = str(excinfo.value)
    assert reason in message
    assert str(layout["top"]) in message
    assert "backing file %r" % name in message


def test_colon_after_a_slash_is_a_file_name(layout):
    (layout["vm"] / "a:b.raw").write_bytes(b"x")
    assert resolve_reference(layout["top"], "./a:b.raw") == str(layout["vm"] / "a:b.raw")


class FifoWatch:
    """A FIFO plus a thread blocked opening it for writing: the thread finishes only
    once somebody opens the FIFO for reading, so ``opened()`` proves an open."""

    def __init__(self, path):
        self.path = path
        os.mkfifo(str(path))
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._writer, daemon=True)
        self.thread.start()

    def _writer(self):
        fd = os.open(str(self.path), os.O_WRONLY)
        os.close(fd)
        self.done.set()

    def opened(self):
        return self.done.wait(0.2)

    def release(self):
        if not self.done.is_set():
            fd = os.open(str(self.path), os.O_RDONLY | os.O_NONBLOCK)
            self.done.wait(5)
            os.close(fd)


def test_absolute_decoy_refused_without_being_opened(layout):
    watch = FifoWatch(layout["outside"] / "decoy.fifo")
    try:
        with pytest.raises(PolicyError, match="absolute paths are not allowed"):
            resolve_reference(layout["top"], str(watch.path))
        # Allowed directory, but a FIFO is not an image: refused from stat alone.
        with pytest.raises(PolicyError, match="not a regular file"):
            resolve_reference(layout["top"], str(watch.path), allow_dirs=[str(layout["outside"])])
        assert not watch.opened()
    finally:
        watch.release()
    assert watch.opened()  # the watch itself works


def test_absolute_name_allowed_inside_allow_dirs(layout, no_open):
    decoy = str(layout["outside"] / "decoy.raw")
    with pytest.raises(PolicyError, match="absolute"):
        resolve_reference(layout["top"], decoy)
    assert resolve_reference(layout["top"], decoy, allow_dirs=[str(layout["outside"])]) == decoy
    # allow_dirs admits its own files only.
    with pytest.raises(PolicyError, match="outside the allowed directories"):
        resolve_reference(layout["top"], str(layout["base"] / "gold.raw"),
                          allow_dirs=[str(layout["outside"])])
    # An absolute name in the referrer's own directory is accepted, with or without allow_dirs.
    assert resolve_reference(layout["top"], str(layout["vm"] / "base.raw"),
                             allow_dirs=[str(layout["outside"])]) == str(layout["vm"] / "base.raw")
    assert resolve_reference(layout["top"], str(layout["vm"] / "base.raw")) == str(layout["vm"] / "base.raw")


def test_dotdot_with_allow_dirs_must_land_inside_them(layout, no_open):
    gold = str(layout["base"] / "gold.raw")
    assert resolve_reference(layout["top"], "../base/gold.raw", allow_dirs=[layout["base"]]) == gold
    assert resolve_reference(layout["top"], "sub/../base.raw",
                             allow_dirs=[layout["base"]]) == str(layout["vm"] / "base.raw")
    with pytest.raises(PolicyError, match="outside the allowed directories"):
        resolve_reference(layout["top"], "../../outside/decoy.raw", allow_dirs=[layout["base"]])
    # A prefix of a directory name is not that directory.
    (layout["tmp"] / "images" / "base2").mkdir()
    (layout["tmp"] / "images" / "base2" / "x.raw").write_bytes(b"x")
    with pytest.raises(PolicyError, match="outside"):
        resolve_reference(layout["top"], "../base2/x.raw", allow_dirs=[layout["base"]])


def test_symlink_escaping_the_directory_is_refused(layout, no_open):
    (layout["vm"] / "escape.raw").symlink_to(layout["outside"] / "decoy.raw")
    (layout["vm"] / "escape-dir").symlink_to(layout["outside"])
    (layout["vm"] / "inside.raw").symlink_to("sub/inner.raw")
    with pytest.raises(PolicyError, match="resolves to .*decoy.raw, outside"):
        resolve_reference(layout["top"], "escape.raw")
    with pytest.raises(PolicyError, match="resolves to .*decoy.raw, outside"):
        resolve_reference(layout["top"], "escape-dir/decoy.raw")
    assert resolve_reference(layout["top"], "inside.raw") == str(layout["vm"] / "sub" / "inner.raw")
    # ... unless its target directory is allowed.
    assert resolve_reference(layout["top"], "escape.raw", allow_dirs=[layout["outside"]]) == \
        str(layout["outside"] / "decoy.raw")


def test_referrer_reached_through_a_symlink_resolves_like_qemu(layout):
    """QEMU resolves relative names against the directory of the name it opened."""
    link = layout["outside"] / "link.qcow2"
    link.symlink_to(layout["top"])
    (layout["outside"] / "base.raw").write_bytes(b"y")
    assert resolve_reference(link, "base.raw") == str(layout["outside"] / "base.raw")


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_device_nodes_refused_even_in_allowed_dirs(layout, no_open, device):
    (layout["vm"] / "disk.raw").symlink_to(device)
    with pytest.raises(PolicyError, match="resolves to %s, outside" % device):
        resolve_reference(layout["top"], "disk.raw")
    with pytest.raises(PolicyError, match="is a device node"):
        resolve_reference(layout["top"], device, allow_dirs=["/dev"])
    with pytest.raises(PolicyError, match="is a device node"):
        resolve_reference(layout["top"], "disk.raw", allow_dirs=["/dev"])


def test_directories_and_missing_files(layout, no_open):
    with pytest.raises(PolicyError, match="is a directory"):
        resolve_reference(layout["top"], "sub")
    with pytest.raises(ImageNotFoundError, match="data file 'gone.raw' named in .*top.qcow2 does not exist"):
        resolve_reference(layout["top"], "gone.raw", kind="data file")
    (layout["vm"] / "dangling.raw").symlink_to(layout["outside"] / "nothing.raw")
    with pytest.raises(PolicyError, match="outside"):
        resolve_reference(layout["top"], "dangling.raw")


def test_search_dirs_for_virtualbox_parents(tmp_path):
    snapshots = tmp_path / "VM" / "Snapshots"
    snapshots.mkdir(parents=True)
    child = snapshots / "{uuid}.vdi"
    assert policy.search_dirs(child) == [str(snapshots), str(tmp_path / "VM")]
    assert policy.search_dirs(tmp_path / "VM" / "disk.vdi", allow_dirs=[tmp_path]) == \
        [str(tmp_path / "VM"), str(tmp_path)]


def test_allow_dirs_as_one_bare_directory(layout, no_open):
    decoy = str(layout["outside"] / "decoy.raw")
    assert resolve_reference(layout["top"], decoy, allow_dirs=str(layout["outside"])) == decoy
    assert resolve_reference(layout["top"], decoy, allow_dirs=layout["outside"]) == decoy


def test_dotdot_applies_after_symlinks_like_the_kernel(layout, no_open):
    """vm/link -> outside/deep/dir: 'link/../x' is outside/deep/x for the kernel (and
    QEMU), not vm/x as lexical normalisation would say."""
    deep = layout["outside"] / "deep"
    (deep / "dir").mkdir(parents=True)
    (deep / "x.raw").write_bytes(b"x")
    (layout["vm"] / "x.raw").write_bytes(b"x")
    (layout["vm"] / "link").symlink_to(deep / "dir")
    with pytest.raises(PolicyError, match="resolves to .*outside/deep/x.raw, outside"):
        resolve_reference(layout["top"], "link/../x.raw", allow_dirs=[layout["base"]])
    assert resolve_reference(layout["top"], "link/../x.raw", allow_dirs=[layout["outside"]]) == \
        str(deep / "x.raw")
