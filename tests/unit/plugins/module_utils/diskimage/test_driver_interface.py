# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The driver interface as one template (formats/base.py): one way to open, one name for the
layer's file, and the capabilities operations use instead of a driver's private names."""

import ast
import os

import pytest

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import FormatError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import DRIVERS
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import (
    BLOCK_ALLOCATED, BLOCK_DATA, BLOCK_OFFSET_VALID, BLOCK_ZERO, DATA, Driver, Extent)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.raw import RawDriver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import map as map_op

LIBRARY = os.path.dirname(diskimage.__file__)


class _Refusing(Driver):
    """A format whose structures never parse."""

    format_name = "refusing"
    abandoned = None

    def _open_structures(self, opener):
        raise FormatError("not this format", self.path)

    def _abandon_open(self):
        type(self).abandoned = self._file
        super(_Refusing, self)._abandon_open()


def test_a_failed_open_closes_the_file_and_raises(tmp_path):
    path = tmp_path / "image"
    path.write_bytes(bytes(4096))
    with pytest.raises(FormatError, match="not this format"):
        _Refusing.open(str(path))
    assert _Refusing.abandoned is not None and _Refusing.abandoned.fd is None


def test_open_file_keeps_the_file_under_one_name(tmp_path):
    path = tmp_path / "image.raw"
    path.write_bytes(bytes(1000))
    with RawDriver.open(str(path)) as driver:
        assert driver.host_files() == [driver._file] and driver._file.path == str(path)
        assert driver.virtual_size == 1000


def test_no_format_copies_the_open_template():
    # Formats only wrap it to refuse what they cannot open (read-only formats, Parallels bundles).
    own = sorted(name for name, cls in DRIVERS.items() if "open" in vars(cls) or "open_file" in vars(cls))
    assert own == ["parallels"]


def test_qemu_length_rounds_a_raw_file_up_and_a_format_down(tmp_path):
    path = tmp_path / "odd.raw"
    path.write_bytes(bytes(1000))
    with RawDriver.open(str(path)) as driver:
        assert driver.qemu_length() == 1024 == map_op.qemu_length(driver)
    layer = Driver()
    layer.virtual_size = 1000
    assert layer.qemu_length() == 512


class _Layer(Driver):
    """A layer that only reports block status: the default map_runs translates it."""

    format_name = "layer"

    def block_status(self, offset, length):
        return [Extent(offset, 512, DATA, 4096), Extent(offset + 512, length - 512, "unallocated", None)]


def test_map_uses_the_drivers_runs_and_applies_the_backing_rule():
    layer = _Layer()
    layer.virtual_size = 2048
    assert layer.map_runs(0, 2048) == [(0, 512, BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET_VALID, 4096),
                                       (512, 1536, 0, None)]
    # Without a backing file the unallocated rest reads as zeroes (ops/map.py's rule, not the driver's).
    assert map_op.layer_status(layer, 0, 2048) == [(0, 512, BLOCK_DATA | BLOCK_ALLOCATED | BLOCK_OFFSET_VALID, 4096),
                                                   (512, 1536, BLOCK_ZERO, None)]
    assert (map_op.DATA, map_op.ZERO, map_op.OFFSET_VALID, map_op.ALLOCATED) == \
        (BLOCK_DATA, BLOCK_ZERO, BLOCK_OFFSET_VALID, BLOCK_ALLOCATED)


def test_only_raw_is_the_probe_fallback():
    assert [name for name, cls in DRIVERS.items() if cls.probe_fallback] == ["raw"]


def _operation_sources():
    for folder, dirs, files in os.walk(LIBRARY):
        dirs[:] = [name for name in dirs if name not in ("formats", "__pycache__")]
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _private_uses(path):
    """(line, text) of attributes with a private name read from anything but self/cls,
    and of comparisons of ``format_name`` with a literal."""
    with open(path) as handle:
        tree = ast.parse(handle.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, ast.dump(node)))
        if isinstance(node, ast.Compare):
            sides = [node.left] + list(node.comparators)
            if any(isinstance(side, ast.Attribute) and side.attr == "format_name" for side in sides) \
                    and any(isinstance(side, ast.Constant) for side in sides):
                found.append((node.lineno, ast.dump(node)))
        if isinstance(node, ast.ImportFrom) and "formats" in (node.module or ""):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.startswith("_"))
    return found


# Archive.scan builds the Archive it parses (ova.py): its own class, no driver.
_OWN_CLASS = {("ova.py", "_scan"), ("ova.py", "_find_disks")}


def test_no_operation_reaches_into_a_driver():
    offenders = []
    for path in _operation_sources():
        for line, text in _private_uses(path):
            if any(os.path.basename(path) == name and attr in text for name, attr in _OWN_CLASS):
                continue
            offenders.append("%s:%d %s" % (os.path.relpath(path, LIBRARY), line, text))
    assert offenders == []


@pytest.mark.parametrize("fmt, options, expected", [
    ("vdi", {"static": True}, {"static": True}),
    ("vdi", {}, {"static": False}),
    ("vpc", {"subformat": "fixed"}, {"subformat": "fixed"}),
    ("vpc", {}, {"subformat": "dynamic"}),
    ("vhdx", {"subformat": "fixed"}, {"subformat": "fixed"}),
    ("vhdx", {}, {"subformat": "dynamic"}),
    ("qcow2", {}, {}),
])
def test_creation_options_the_image_records(tmp_path, fmt, options, expected):
    path = str(tmp_path / ("image." + fmt))
    diskimage.create(path, fmt, 4 * 1024 * 1024, options=options)
    with diskimage.open_image(path, fmt=fmt) as image:
        assert image.driver.creation_options() == expected
