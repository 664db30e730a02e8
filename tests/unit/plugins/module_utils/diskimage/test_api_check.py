# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""check() returns what qemu-img check --output=json returns."""

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageNotFoundError, InvalidOptionError, UnsupportedOperation,
)


def qemu_keys(result):
    """The result without the human-readable findings (not in qemu-img's JSON)."""
    assert isinstance(result.get("messages", []), list)
    return dict((key, value) for key, value in result.items() if key != "messages")


@pytest.mark.parametrize("options,writes", [
    ("cluster_size=64k", []),
    ("cluster_size=4k", ["write -P 1 0 100k", "write -z 200k 8k", "write -P 2 1M 4k"]),
    ("compat=0.10,cluster_size=512", ["write -P 3 4k 12k"]),
])
def test_like_qemu_img(tmp_path, options, writes):
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", options, image, "2M")
    if writes:
        qemu_io(image, *writes, fmt="qcow2")
    assert qemu_keys(diskimage.check(str(image))) == qemu_img_json("check", str(image))
    assert qemu_keys(diskimage.check(str(image), fmt="qcow2")) == qemu_img_json("check", "-f", "qcow2", str(image))


def test_compressed_image(tmp_path):
    source = tmp_path / "source.raw"
    qemu_img("create", "-f", "raw", source, "1M")
    qemu_io(source, "write -P 4 0 512k", fmt="raw")
    image = tmp_path / "packed.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", source, image)
    result = diskimage.check(str(image))
    assert qemu_keys(result) == qemu_img_json("check", str(image))
    assert result["compressed-clusters"] == 8


def test_repair_of_clean_image_changes_nothing(tmp_path):
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 1 0 64k", fmt="qcow2")
    before = image.read_bytes()
    twin = tmp_path / "twin.qcow2"
    twin.write_bytes(before)
    result = diskimage.check(str(image), repair="leaks")
    expected = qemu_img_json("check", "-r", "leaks", str(twin))
    expected["filename"] = str(image)
    assert qemu_keys(result) == expected
    assert image.read_bytes() == before
    assert result["filename"] == str(image) and result["format"] == "qcow2"


def test_raw_cannot_be_checked(tmp_path):
    image = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", image, "1M")
    with pytest.raises(UnsupportedOperation) as excinfo:
        diskimage.check(str(image))
    assert "does not support checks" in str(excinfo.value)


def test_bad_arguments(tmp_path):
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    with pytest.raises(InvalidOptionError):
        diskimage.check(str(image), repair="everything")
    with pytest.raises(ImageNotFoundError):
        diskimage.check(str(tmp_path / "absent.qcow2"))


def leak_one_cluster(image):
    """Give the cluster just past the end of a default qcow2 image (64 KiB
    clusters, 16-bit refcounts, refcount block at 128 KiB) a refcount of 1."""
    data = bytearray(image.read_bytes())
    cluster = len(data) // 65536
    refblock = 2 * 65536
    data[refblock + 2 * cluster:refblock + 2 * cluster + 2] = (1).to_bytes(2, "big")
    data += bytes(65536)
    image.write_bytes(bytes(data))


def test_leaks_found_and_repaired_like_qemu_img(tmp_path):
    image = tmp_path / "leaky.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 1 0 64k", fmt="qcow2")
    leak_one_cluster(image)
    found = diskimage.check(str(image))
    assert qemu_keys(found) == qemu_img_json("check", str(image))
    assert found["leaks"] == 1
    twin = tmp_path / "twin.qcow2"
    twin.write_bytes(image.read_bytes())
    repaired = diskimage.check(str(image), repair="leaks")
    expected = qemu_img_json("check", "-r", "leaks", str(twin))
    expected["filename"] = str(image)
    assert qemu_keys(repaired) == expected
    after = qemu_img_json("check", str(image))
    assert after["check-errors"] == 0 and "leaks" not in after
