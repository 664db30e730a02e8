# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qed driver, write side: created images equal qemu-img create's byte for
byte; images we write (random writes and zero writes against a model, over
backing files) or convert read in qemu-img identical to their source
(qemu-img compare) and pass qemu-img check; the needs-check bit is set while
clusters are allocated and cleared on a clean close."""

import random
import struct

import pytest

from qemu_tools import qemu_img, qemu_img_json, qemu_io, run

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError, InvalidOptionError

K = 1024
M = 1024 * K
NEED_CHECK = 0x2


def features(path):
    with open(str(path), "rb") as f:
        return struct.unpack_from("<Q", f.read(64), 16)[0]


def write_model(path, model):
    with open(str(path), "wb") as f:
        f.write(bytes(model))


def assert_same_as(tmp_path, image, model):
    expected = tmp_path / "expected.raw"
    write_model(expected, model)
    run("qemu-img", "compare", "-f", "qed", "-F", "raw", image, expected)
    check = qemu_img_json("check", image)
    assert check["check-errors"] == 0 and "corruptions" not in check and "leaks" not in check, check
    assert diskimage.check(str(image)) == check


@pytest.mark.parametrize("options, size", [
    ({}, 10 * M),
    ({"cluster_size": 4096, "table_size": 2}, 5 * M + 512),
    ({"cluster_size": 1 * M, "table_size": 16}, 3 * 1024 * M),
    ({}, 0),
    ({}, 1000),
])
def test_create_matches_qemu_img_create(tmp_path, options, size):
    ours = tmp_path / "ours.qed"
    theirs = tmp_path / "theirs.qed"
    diskimage.create(str(ours), "qed", size, options=options)
    qemu_img("create", "-q", "-f", "qed", "-o", ",".join("%s=%s" % item for item in sorted(options.items())) or
             "cluster_size=65536", theirs, size)
    assert ours.read_bytes() == theirs.read_bytes()
    assert diskimage.info(str(ours))["virtual-size"] == qemu_img_json("info", ours)["virtual-size"]


@pytest.mark.parametrize("backing_fmt", ["raw", "qcow2"])
def test_create_with_backing_file_matches_qemu_img(tmp_path, backing_fmt):
    base = tmp_path / "base.img"
    qemu_img("create", "-q", "-f", backing_fmt, base, "3M")
    ours = tmp_path / "ours.qed"
    theirs = tmp_path / "theirs.qed"
    diskimage.create(str(ours), "qed", backing_file="base.img", backing_fmt=backing_fmt)
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=base.img,backing_fmt=%s" % backing_fmt, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    info = diskimage.info(str(ours))
    oracle = qemu_img_json("info", ours)
    for key in ("virtual-size", "backing-filename", "backing-filename-format", "cluster-size"):
        assert info.get(key) == oracle.get(key)


@pytest.mark.parametrize("options", [
    {"cluster_size": 2048}, {"cluster_size": 3 * 4096}, {"table_size": 3}, {"table_size": 32}, {"table_size": 1},
    {"subformat": "dynamic"}, {"preallocation": "full"}, {"cluster_size": "big"},
])
def test_invalid_options(tmp_path, options):
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "x.qed"), "qed", M, options=options)
    assert not list(tmp_path.iterdir())


def test_too_large_for_the_tables(tmp_path):
    # 4 KiB clusters, 2-cluster tables: 1024 * 1024 * 4096 bytes at most
    with pytest.raises(InvalidOptionError):
        diskimage.create(str(tmp_path / "x.qed"), "qed", 4 * 1024 * M + 512,
                         options={"cluster_size": 4096, "table_size": 2})


@pytest.mark.parametrize("cluster_size", [4096, 65536])
def test_random_writes_and_zeroes_match_a_model(tmp_path, cluster_size):
    size = 9 * M + 1536
    image = tmp_path / "disk.qed"
    diskimage.create(str(image), "qed", size, options={"cluster_size": cluster_size, "table_size": 2})
    model = bytearray(size)
    rng = random.Random(cluster_size)
    with diskimage.open_image(str(image), fmt="qed", readonly=False) as disk:
        for step in range(60):
            offset = rng.randrange(size)
            length = min(rng.choice([1, 511, 4096, 70000, 300000]), size - offset)
            if step % 4 == 3:
                disk.write_zeroes(offset, length)
                model[offset:offset + length] = bytes(length)
            else:
                data = bytes([rng.randrange(1, 256)]) * length
                disk.write(offset, data)
                model[offset:offset + length] = data
            if step == 5:
                # clusters were allocated: the image says it needs a check until closed cleanly
                assert features(image) & NEED_CHECK
        disk.write_zeroes(0, size)
        model[:] = bytes(size)
        disk.write(size - 700, b"\x77" * 700)
        model[size - 700:] = b"\x77" * 700
        assert disk.read(0, size) == bytes(model)
    assert not features(image) & NEED_CHECK
    assert_same_as(tmp_path, image, model)


def test_whole_cluster_zero_writes_make_zero_clusters(tmp_path):
    base = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, "1M")
    qemu_io(base, "write -P 0xaa 0 1M", fmt="raw")
    image = tmp_path / "top.qed"
    diskimage.create(str(image), "qed", backing_file="base.raw", backing_fmt="raw", options={"cluster_size": 4096})
    with diskimage.open_image(str(image), fmt="qed", readonly=False) as disk:
        disk.write_zeroes(8 * K, 64 * K)
        disk.write_zeroes(100 * K + 5, 10)
        disk.write(200 * K + 100, b"\x01" * 50)
    kinds = {(e.start, e.length): e.kind for e in diskimage.open_image(str(image), fmt="qed").block_status(0, M)}
    assert kinds[(8 * K, 64 * K)] == "zero"
    model = bytearray(b"\xaa" * M)
    model[8 * K:72 * K] = bytes(64 * K)
    model[100 * K + 5:100 * K + 15] = bytes(10)
    model[200 * K + 100:200 * K + 150] = b"\x01" * 50
    assert_same_as(tmp_path, image, model)
    assert diskimage.map(str(image)) == qemu_img_json("map", image)


def test_writes_on_a_qemu_made_image_and_chain(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io(base, "write -P 0x31 0 4M", fmt="qcow2")
    image = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=base.qcow2,backing_fmt=qcow2", image)
    qemu_io(image, "write -P 0x32 64k 64k", "write -z 1M 64k", fmt="qed")
    model = bytearray(b"\x31" * 4 * M)
    model[64 * K:128 * K] = b"\x32" * (64 * K)
    model[M:M + 64 * K] = bytes(64 * K)
    with diskimage.open_image(str(image), fmt="qed", readonly=False) as disk:
        for offset, length, value in ((65 * K, 3, 0x41), (M + 5, 7, 0x42), (3 * M - 10, 20, 0x43),
                                      (4 * M - 1, 1, 0x44)):
            disk.write(offset, bytes([value]) * length)
            model[offset:offset + length] = bytes([value]) * length
    expected = tmp_path / "expected.raw"
    write_model(expected, model)
    run("qemu-img", "compare", "-F", "raw", image, expected)
    check = qemu_img_json("check", image)
    assert check["check-errors"] == 0 and "corruptions" not in check and "leaks" not in check
    assert diskimage.check(str(image)) == check


def test_convert_to_and_from_qed(tmp_path):
    source = tmp_path / "source.raw"
    qemu_img("create", "-q", "-f", "raw", source, 7 * M + 512)
    qemu_io(source, "write -P 0x11 0 100k", "write -P 0x22 1M 4k", "write -P 0x33 2000k 13",
            "write -P 0x44 5M 1M", "write -P 0x55 %d 512" % (7 * M), fmt="raw")
    target = tmp_path / "out.qed"
    diskimage.convert(str(source), str(target), "qed", options={"cluster_size": 16384})
    run("qemu-img", "compare", "-f", "raw", "-F", "qed", source, target)
    check = qemu_img_json("check", target)
    assert "corruptions" not in check and "leaks" not in check
    assert diskimage.check(str(target)) == check
    assert diskimage.info(str(target))["cluster-size"] == 16384
    back = tmp_path / "back.qcow2"
    diskimage.convert(str(target), str(back), "qcow2")
    run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", source, back)


def test_opened_with_needs_check_is_repaired_before_writing(tmp_path):
    image = tmp_path / "disk.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4096", image, "2M")
    qemu_io(image, "write -P 0x11 0 8k", fmt="qed")
    data = bytearray(image.read_bytes())
    struct.pack_into("<Q", data, 16, features(image) | NEED_CHECK)
    l1_offset = struct.unpack_from("<Q", data, 40)[0]
    l2_offset = struct.unpack_from("<Q", data, l1_offset)[0]
    # a cluster entry past the end of the file, as a crash between writes could leave
    struct.pack_into("<Q", data, l2_offset + 16, len(data) + 40960)
    image.write_bytes(bytes(data))
    with diskimage.open_image(str(image), fmt="qed", readonly=False) as disk:
        disk.write(M, b"\x22" * 4096)
        assert disk.read(8 * K, 4096) == bytes(4096)
    assert not features(image) & NEED_CHECK
    check = qemu_img_json("check", image)
    assert "corruptions" not in check and "leaks" not in check
    qemu_io(image, "read -P 0x11 0 8k", "read -P 0 8k 4k", "read -P 0x22 1M 4k", fmt="qed")


def test_repair_drops_invalid_entries_like_qemu_img(tmp_path):
    images = []
    for name in ("ours.qed", "theirs.qed"):
        image = tmp_path / name
        qemu_img("create", "-q", "-f", "qed", "-o", "cluster_size=4096", image, "2M")
        qemu_io(image, "write -P 0x11 0 12k", fmt="qed")
        data = bytearray(image.read_bytes())
        l1_offset = struct.unpack_from("<Q", data, 40)[0]
        l2_offset = struct.unpack_from("<Q", data, l1_offset)[0]
        struct.pack_into("<Q", data, l2_offset + 8, 123)
        image.write_bytes(bytes(data))
        images.append(image)
    ours = diskimage.check(str(images[0]), repair="all")
    theirs = qemu_img_json("check", "-r", "all", images[1])
    for result in (ours, theirs):
        result.pop("filename")
    assert ours == theirs
    assert images[0].read_bytes() == images[1].read_bytes()


@pytest.mark.parametrize("new_fmt", ["raw", "qcow2"])
def test_rebase_unsafe_records_the_name_as_qemu_img_does(tmp_path, new_fmt):
    for name in ("old.raw", "new.img"):
        qemu_img("create", "-q", "-f", "raw" if name == "old.raw" else new_fmt, tmp_path / name, "1M")
    images = []
    for name in ("ours.qed", "theirs.qed"):
        image = tmp_path / name
        qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=old.raw,backing_fmt=raw", image)
        images.append(image)
    diskimage.rebase(str(images[0]), "new.img", backing_fmt=new_fmt, unsafe=True)
    qemu_img("rebase", "-u", "-f", "qed", "-b", "new.img", "-F", new_fmt, images[1])
    assert images[0].read_bytes() == images[1].read_bytes()
    diskimage.rebase(str(images[0]), "", unsafe=True)
    qemu_img("rebase", "-u", "-f", "qed", "-b", "", images[1])
    assert images[0].read_bytes() == images[1].read_bytes()
    assert "backing-filename" not in diskimage.info(str(images[0]))


def test_safe_rebase_keeps_the_guest_view(tmp_path):
    base = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, "2M")
    qemu_io(base, "write -P 0x21 0 2M", fmt="raw")
    image = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=base.raw,backing_fmt=raw,cluster_size=4096", image)
    qemu_io(image, "write -P 0x22 4k 4k", fmt="qed")
    before = tmp_path / "before.raw"
    qemu_img("convert", "-O", "raw", image, before)
    diskimage.rebase(str(image), "", unsafe=False)
    run("qemu-img", "compare", "-F", "raw", image, before)
    assert "backing-filename" not in qemu_img_json("info", image)


def test_resize_grows_like_qemu_img_and_hides_a_longer_backing_file(tmp_path):
    ours = tmp_path / "ours.qed"
    theirs = tmp_path / "theirs.qed"
    for image in (ours, theirs):
        qemu_img("create", "-q", "-f", "qed", image, "1M")
    diskimage.resize(str(ours), 5 * M + 512)
    qemu_img("resize", "-f", "qed", theirs, 5 * M + 512)
    assert ours.read_bytes() == theirs.read_bytes()
    with pytest.raises(ImageError):
        diskimage.resize(str(ours), M, shrink=True)
    base = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, "4M")
    qemu_io(base, "write -P 0x31 0 4M", fmt="raw")
    top = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=base.raw,backing_fmt=raw,cluster_size=4096", top,
             M + 1024)
    diskimage.resize(str(top), 3 * M)
    model = bytearray(b"\x31" * (M + 1024) + bytes(2 * M - 1024))
    assert_same_as(tmp_path, top, model)


def test_commit_writes_into_the_backing_file(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "2M")
    qemu_io(base, "write -P 0x21 0 2M", fmt="qcow2")
    top = tmp_path / "top.qed"
    qemu_img("create", "-q", "-f", "qed", "-o", "backing_file=base.qcow2,backing_fmt=qcow2,cluster_size=4096", top)
    qemu_io(top, "write -P 0x22 4k 6000", "write -z 1M 8k", fmt="qed")
    expected = tmp_path / "expected.raw"
    qemu_img("convert", "-O", "raw", top, expected)
    diskimage.commit(str(top))
    run("qemu-img", "compare", "-F", "raw", base, expected)
    run("qemu-img", "compare", "-F", "raw", top, expected)
    assert diskimage.map(str(top)) == qemu_img_json("map", top)
    check = qemu_img_json("check", top)
    assert "allocated-clusters" not in check and "leaks" not in check


@pytest.mark.parametrize("options", [{}, {"cluster_size": 4096, "table_size": 2}])
def test_convert_output_is_byte_identical_to_qemu_img(tmp_path, options):
    source = tmp_path / "source.raw"
    qemu_img("create", "-q", "-f", "raw", source, 6 * M + 1536)
    qemu_io(source, "write -P 0x11 0 100k", "write -P 0x22 1M 4k", "write -P 0x33 2000k 13",
            "write -P 0x44 3M 2M", "write -P 0x55 6M 512", fmt="raw")
    ours = tmp_path / "ours.qed"
    theirs = tmp_path / "theirs.qed"
    diskimage.convert(str(source), str(ours), "qed", options=options)
    qemu_img("convert", "-O", "qed", "-o", ",".join("%s=%s" % item for item in sorted(options.items())) or
             "cluster_size=65536", source, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
