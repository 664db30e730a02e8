# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Size strings and -o option values are read the way qemu-img reads them."""

import re
import subprocess

import pytest

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import InvalidOptionError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import sizes


def qemu_img_size(tmp_path, text):
    """The size qemu-img create reports for SIZE ``text`` (None when it refuses it)."""
    # --help style parse only: -o size=... would be parsed differently; use the SIZE argument.
    target = tmp_path / "size-probe.raw"
    proc = subprocess.run(["qemu-img", "create", "-f", "raw", str(target), "--", text],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if target.exists():
        target.unlink()
    match = re.search(r"size=(\d+)", proc.stdout)
    if "Invalid image size" in proc.stderr or not match:
        return None
    return int(match.group(1))


SIZE_STRINGS = ["0", "1000", "1k", "1K", "100b", "100B", "1.5M", "1m", "0.5k", "0.3k",
                "1.25k", "1.k", "1.0", "0x1000", "01k", "+1k", " 1M", "3G", "2T", "1P",
                "1M5", "1.5", "1.5b", ".5k", "1e3", "1 k", "1k ", "1KiB", "0x1.8k",
                "9223372036854775807", "9223372036854775808", "8E", "7.99E"]


@pytest.mark.parametrize("text", SIZE_STRINGS)
def test_size_string_like_qemu_img(tmp_path, text):
    expected = qemu_img_size(tmp_path, text)
    if expected is None:
        with pytest.raises(InvalidOptionError):
            sizes.parse_size(text)
    else:
        assert sizes.parse_size(text) == expected


@pytest.mark.parametrize("value", [-1, True, 1.5, None, [1]])
def test_size_rejects_non_sizes(value):
    with pytest.raises(InvalidOptionError):
        sizes.parse_size(value)


def test_size_int_passes_through():
    assert sizes.parse_size(12345) == 12345


def test_options_typed_from_yaml_values():
    options = sizes.normalize_options({
        "cluster_size": "64k", "lazy_refcounts": "on", "extended_l2": False,
        "refcount_bits": "16", "compat": 1.1, "preallocation": "metadata", "unset": None,
        "something_new": "kept",
    })
    assert options == {"cluster_size": 65536, "lazy_refcounts": True, "extended_l2": False,
                       "refcount_bits": 16, "compat": "1.1", "preallocation": "metadata",
                       "something_new": "kept"}
    assert sizes.normalize_options({"compat": 0.1}) == {"compat": "0.10"}
    assert sizes.normalize_options({"lazy_refcounts": "off"}) == {"lazy_refcounts": False}
    assert sizes.normalize_options(None) == {}


@pytest.mark.parametrize("options", [
    {"lazy_refcounts": "maybe"}, {"lazy_refcounts": 1}, {"cluster_size": "64x"},
    {"refcount_bits": "sixteen"}, {"refcount_bits": True}, {"compat": True}, "cluster_size=64k",
])
def test_options_refused(options):
    with pytest.raises(InvalidOptionError):
        sizes.normalize_options(options)
