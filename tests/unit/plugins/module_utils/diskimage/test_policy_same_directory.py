# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Path policy: absolute names in the image's own directory (libvirt's layout) are accepted like
relative ones; files the caller names (trusted_files: the task's own paths) are accepted wherever they
are; every escape from the directory is still refused without the target being opened."""

import json
import os
import subprocess
import sys

import pytest

import qemu_tools
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.chain import open_driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import PolicyError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.policy import resolve_reference

MIB = 1024 * 1024


def qemu_create(path, fmt="qcow2", size="1M", backing=None, backing_fmt="qcow2"):
    args = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        args += ["-u", "-b", backing, "-F", backing_fmt]
    qemu_tools.run(*(args + [path, size]))
    return str(path)


@pytest.fixture
def layout(tmp_path):
    """pool/ (the images' directory: base.qcow2 with data), outside/decoy.qcow2 (with data)."""
    pool = tmp_path / "pool"
    outside = tmp_path / "outside"
    pool.mkdir()
    outside.mkdir()
    base = qemu_create(pool / "base.qcow2")
    qemu_tools.qemu_io(base, "write -P 0x42 0 64k", fmt="qcow2")
    decoy = qemu_create(outside / "decoy.qcow2")
    qemu_tools.qemu_io(decoy, "write -P 0x44 0 64k", fmt="qcow2")
    return dict(tmp=tmp_path, pool=pool, outside=outside, base=base, decoy=decoy)


# ------------------------------------------------------------------ same-directory absolute names
def test_absolute_name_in_the_images_own_directory_is_accepted(layout):
    top = qemu_create(layout["pool"] / "top.qcow2", backing=layout["base"])
    assert resolve_reference(top, layout["base"]) == layout["base"]
    with open_driver(top) as driver:
        assert driver.backing.path == layout["base"]
        assert driver.read(0, 1) == b"\x42"
    chain = diskimage.info(top, backing_chain=True)
    assert [layer["filename"] for layer in chain] == [top, layout["base"]]


def test_absolute_name_through_a_symlinked_directory_is_in_the_same_directory(layout):
    """libvirt may name the pool through a symbolic link: real paths decide, on both sides."""
    link = layout["tmp"] / "pool-link"
    link.symlink_to(layout["pool"])
    top = qemu_create(layout["pool"] / "top.qcow2", backing=str(link / "base.qcow2"))
    assert resolve_reference(top, str(link / "base.qcow2")) == layout["base"]
    assert resolve_reference(str(link / "top.qcow2"), layout["base"]) == layout["base"]
    with open_driver(str(link / "top.qcow2")) as driver:
        assert driver.read(0, 1) == b"\x42"


def test_absolute_name_in_the_own_directory_with_allow_dirs_elsewhere(layout):
    """allow_dirs adds directories: it does not take the image's own directory away."""
    top = qemu_create(layout["pool"] / "top.qcow2", backing=layout["base"])
    with open_driver(top, allow_dirs=[str(layout["outside"])]) as driver:
        assert driver.backing.path == layout["base"]


@pytest.mark.parametrize("case", ["absolute-outside", "absolute-dotdot", "relative-dotdot", "symlink-out",
                                  "absolute-symlink-out", "symlinked-subdir-out"])
def test_escapes_are_refused_by_default(layout, case):
    name = escape_name(layout, case)
    with pytest.raises(PolicyError) as caught:
        resolve_reference(str(layout["pool"] / "top.qcow2"), name)
    assert repr(name) in str(caught.value)


def escape_name(layout, case):
    """A backing name written in pool/top.qcow2 that leads to outside/decoy.qcow2."""
    pool, decoy = layout["pool"], layout["decoy"]
    if case == "absolute-outside":
        return decoy
    if case == "absolute-dotdot":
        return str(pool) + "/../outside/decoy.qcow2"
    if case == "relative-dotdot":
        return "../outside/decoy.qcow2"
    if case == "symlink-out":
        (pool / "escape.qcow2").symlink_to(decoy)
        return "escape.qcow2"
    if case == "absolute-symlink-out":
        (pool / "escape.qcow2").symlink_to(decoy)
        return str(pool / "escape.qcow2")
    (pool / "sub").symlink_to(layout["outside"])
    return str(pool / "sub" / "decoy.qcow2")


# The child process records every file opened (audit event "open": builtins.open, io.open, os.open) and
# then opens, describes and converts the image the way the modules do.
AUDIT_SCRIPT = r"""
import json, os, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        opened.append(os.fsdecode(args[0]))
sys.addaudithook(hook)
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
top, output, allow_dirs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
errors = []
for label, call in (
        ("open_image", lambda: diskimage.open_image(top, allow_dirs=allow_dirs).close()),
        ("info", lambda: diskimage.info(top, backing_chain=True, allow_dirs=allow_dirs)),
        ("check", lambda: diskimage.check(top, allow_dirs=allow_dirs)),
        ("convert", lambda: diskimage.convert(top, output, "qcow2", allow_dirs=allow_dirs))):
    try:
        call()
        errors.append([label, None])
    except diskimage.ImageError as exc:
        errors.append([label, type(exc).__name__ + ": " + str(exc)])
print(json.dumps({"opened": opened, "errors": errors}))
"""


def audited_run(top, output, allow_dirs=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(entry for entry in sys.path if entry))
    proc = subprocess.run([sys.executable, "-c", AUDIT_SCRIPT, top, output, json.dumps(allow_dirs)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", ["absolute-outside", "absolute-dotdot", "relative-dotdot", "symlink-out",
                                  "absolute-symlink-out", "symlinked-subdir-out"])
def test_escapes_are_refused_without_the_target_being_opened(layout, case):
    name = escape_name(layout, case)
    top = qemu_create(layout["pool"] / "top.qcow2", backing=name)
    output = str(layout["pool"] / "flat.qcow2")
    decoy = os.path.realpath(layout["decoy"])
    seen = audited_run(top, output)
    for label, error in seen["errors"]:
        assert error is not None and error.startswith("PolicyError") and repr(name) in error, (label, error)
    assert not [path for path in seen["opened"] if os.path.realpath(path) == decoy
                or path.startswith(str(layout["outside"]))], seen["opened"]
    assert not os.path.exists(output)
    # The watch works: allowed by allow_dirs, the same target is opened.
    seen = audited_run(top, output, allow_dirs=[str(layout["outside"])])
    assert [error for label, error in seen["errors"]] == [None] * 4
    assert any(os.path.realpath(path) == decoy for path in seen["opened"])


def test_same_directory_absolute_name_is_opened_under_the_audit(layout):
    top = qemu_create(layout["pool"] / "top.qcow2", backing=layout["base"])
    seen = audited_run(top, str(layout["pool"] / "flat.qcow2"))
    assert [error for label, error in seen["errors"]] == [None] * 4
    assert layout["base"] in seen["opened"]


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_device_nodes_stay_refused_in_the_own_directory_and_when_trusted(layout, device):
    (layout["pool"] / "disk.raw").symlink_to(device)
    top = str(layout["pool"] / "top.qcow2")
    for name in (device, str(layout["pool"] / "disk.raw"), "disk.raw"):
        with pytest.raises(PolicyError):
            resolve_reference(top, name)
        with pytest.raises(PolicyError, match="device node"):
            resolve_reference(top, name, trusted_files=[device])


@pytest.mark.parametrize("name", ['json:{"file.filename": "%s"}', "file:%s", "nbd://localhost/x"])
def test_protocol_names_stay_refused_when_trusted(layout, name):
    name = name.replace("%s", layout["decoy"]) if "%s" in name else name
    with pytest.raises(PolicyError, match="json:|protocol prefix"):
        resolve_reference(str(layout["pool"] / "top.qcow2"), name, trusted_files=[layout["decoy"]])


# ------------------------------------------------------------------ trusted files
def test_trusted_file_is_accepted_wherever_it_is_and_nothing_beside_it(layout):
    top = str(layout["pool"] / "top.qcow2")
    decoy = layout["decoy"]
    other = qemu_create(layout["outside"] / "other.qcow2")
    assert resolve_reference(top, decoy, trusted_files=[decoy]) == decoy
    assert resolve_reference(top, "../outside/decoy.qcow2", trusted_files=decoy) == decoy
    (layout["pool"] / "alias.qcow2").symlink_to(decoy)
    assert resolve_reference(top, "alias.qcow2", trusted_files=[decoy]) == decoy
    # The trusted file is named through a symbolic link: real paths are compared.
    (layout["tmp"] / "named.qcow2").symlink_to(decoy)
    assert resolve_reference(top, decoy, trusted_files=[str(layout["tmp"] / "named.qcow2")]) == decoy
    for name in (other, "../outside/other.qcow2"):
        with pytest.raises(PolicyError):
            resolve_reference(top, name, trusted_files=[decoy])


def test_trusted_backing_file_elsewhere_creates_and_reads_back(layout, tmp_path):
    """The operator's backing_file in another directory: create, then every reader of the overlay."""
    decoy = layout["decoy"]
    top = str(layout["pool"] / "web01.qcow2")
    with pytest.raises(PolicyError, match="absolute"):
        diskimage.create(top, "qcow2", backing_file=decoy, backing_fmt="qcow2")
    assert not os.path.exists(top)
    trusted = [top, decoy]
    diskimage.create(top, "qcow2", backing_file=decoy, backing_fmt="qcow2", trusted_files=trusted)
    assert qemu_tools.qemu_img_json("info", top)["backing-filename"] == decoy
    with pytest.raises(PolicyError):
        diskimage.info(top, backing_chain=True)
    chain = diskimage.info(top, backing_chain=True, trusted_files=trusted)
    assert [layer["filename"] for layer in chain] == [top, decoy]
    with diskimage.open_image(top, trusted_files=trusted) as image:
        assert image.read(0, 1) == b"\x44"
    assert diskimage.check(top, trusted_files=trusted)["check-errors"] == 0
    assert diskimage.map(top, trusted_files=trusted)[0]["depth"] == 1
    assert diskimage.measure(src=top, trusted_files=trusted)["required"] > 0
    assert diskimage.compare(top, decoy, trusted_files=trusted)
    flat = str(tmp_path / "flat.qcow2")
    diskimage.convert(top, flat, "qcow2", trusted_files=trusted)
    assert diskimage.compare(flat, decoy)
    second = str(layout["pool"] / "web02.qcow2")
    diskimage.convert(flat, second, "qcow2", options={"backing_file": decoy, "backing_fmt": "qcow2"},
                      trusted_files=[decoy])
    diskimage.snapshot_create(top, "s1", trusted_files=trusted)
    assert [s["name"] for s in diskimage.snapshot_list(top, trusted_files=trusted)] == ["s1"]
    assert diskimage.snapshot_compare(top, "s1", trusted_files=trusted) is not None
    diskimage.snapshot_apply(top, "s1", trusted_files=trusted)
    diskimage.snapshot_delete(top, "s1", trusted_files=trusted)
    diskimage.amend(top, {"lazy_refcounts": True}, trusted_files=trusted)
    diskimage.rebase(top, decoy, backing_fmt="qcow2", trusted_files=trusted)
    diskimage.commit(top, trusted_files=trusted)
    diskimage.resize(top, "2M", trusted_files=trusted)
    qemu_tools.qemu_img("check", top)
    qemu_tools.qemu_img("check", decoy)
