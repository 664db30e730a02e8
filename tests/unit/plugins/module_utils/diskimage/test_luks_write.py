# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""luks driver, write side: images we create (every cipher mode, IV
generator, key size and hash we offer) are unlocked by qemu-img with the
passphrase, laid out as qemu-img lays them out, and read by qemu-img
identical to a model of what we wrote; qemu can go on writing them; convert
to and from luks; options are validated without echoing the passphrase."""

import hashlib
import os
import random

import pytest

import qemu_tools
from qemu_tools import qemu_img, qemu_img_json
import luks_tools
from luks_tools import PASSPHRASE

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, InvalidOptionError, ReadOnlyImageError)

M = 1024 * 1024

# Our -o options and what qemu-img info must then say (cipher-alg, cipher-mode, ivgen-alg, ivgen-hash-alg, hash-alg).
CONFIGS = [
    ({}, ("aes-256", "xts", "plain64", None, "sha256")),
    ({"cipher-alg": "aes-128", "cipher-mode": "xts", "ivgen-alg": "plain", "hash-alg": "sha1"},
     ("aes-128", "xts", "plain", None, "sha1")),
    ({"cipher-alg": "aes-256", "cipher-mode": "cbc", "ivgen-alg": "essiv", "hash-alg": "sha512"},
     ("aes-256", "cbc", "essiv", "sha256", "sha512")),
    ({"cipher-alg": "aes-128", "cipher-mode": "cbc", "ivgen-alg": "essiv", "ivgen-hash-alg": "sha256",
      "hash-alg": "sha224"},
     ("aes-128", "cbc", "essiv", "sha256", "sha224")),
    ({"cipher-alg": "aes-256", "cipher-mode": "cbc", "ivgen-alg": "plain64", "hash-alg": "sha384"},
     ("aes-256", "cbc", "plain64", None, "sha384")),
    ({"cipher-alg": "aes-256", "cipher-mode": "ecb"}, ("aes-256", "ecb", "plain64", None, "sha256")),
]


def create(path, size, **options):
    opts = {"key-secret": PASSPHRASE, "iter-time": 10}
    opts.update(options)
    diskimage.create(str(path), "luks", size=size, options=opts)


def write_model(path, model):
    with open(str(path), "wb") as f:
        f.write(model)


def assert_qemu_sees(image, model, tmp_path):
    raw = tmp_path / "model.raw"
    write_model(raw, model)
    luks_tools.qemu_compare(image, raw)


@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_created_images_unlock_in_qemu(tmp_path, config):
    options, expected = CONFIGS[config]
    image = tmp_path / "new.luks"
    create(image, 2 * M + 1000, **options)
    oracle = qemu_img_json("info", image)
    data = oracle["format-specific"]["data"]
    assert oracle["virtual-size"] == 2 * M + 1024
    assert (data["cipher-alg"], data["cipher-mode"], data["ivgen-alg"], data.get("ivgen-hash-alg"),
            data["hash-alg"]) == expected
    assert [slot["active"] for slot in data["slots"]] == [True] + [False] * 7
    assert data["slots"][0]["stripes"] == 4000 and data["slots"][0]["iters"] >= 1000
    assert data["master-key-iters"] >= 1000
    assert diskimage.info(str(image))["format-specific"] == oracle["format-specific"]
    # Never written: both decrypt the same noise, which proves qemu found our master key.
    digest = luks_tools.qemu_digest(image, tmp_path)
    with diskimage.open_image(str(image), key_secret=PASSPHRASE) as opened:
        assert opened.read(0, 16) != bytes(16)
        assert hashlib.sha256(opened.read(0, opened.virtual_size)).hexdigest() == digest
    # Writes through both sides: qemu-io data read by us, ours read by qemu.
    luks_tools.qemu_io(image, "write -P 0x31 0 2M", "write -P 0x32 1000 3000")
    with diskimage.open_image(str(image), readonly=False, key_secret=PASSPHRASE) as opened:
        opened.write(2 * M - 100, b"\x45" * 1124)
        opened.write_zeroes(5000, 70000)
    model = bytearray(b"\x31" * (2 * M) + bytes(1024))
    model[1000:4000] = b"\x32" * 3000
    model[2 * M - 100:] = b"\x45" * 1124
    model[5000:75000] = bytes(70000)
    assert_qemu_sees(image, bytes(model), tmp_path)


def test_layout_as_qemu_img(tmp_path):
    # Key material offsets and payload offset as qemu-img places them (xts-256 and cbc-128 key sizes).
    ours = tmp_path / "ours.luks"
    theirs = tmp_path / "theirs.luks"
    create(ours, M, **{"cipher-alg": "aes-128", "cipher-mode": "cbc", "ivgen-alg": "plain64"})
    luks_tools.qemu_img_create(theirs, M, "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain64")
    a = qemu_img_json("info", ours)
    b = qemu_img_json("info", theirs)
    assert a["virtual-size"] == b["virtual-size"]
    assert os.path.getsize(str(ours)) == os.path.getsize(str(theirs))
    da, db = a["format-specific"]["data"], b["format-specific"]["data"]
    assert da["payload-offset"] == db["payload-offset"]
    assert [s["key-offset"] for s in da["slots"]] == [s["key-offset"] for s in db["slots"]]
    for key in ("cipher-alg", "cipher-mode", "ivgen-alg", "hash-alg"):
        assert da[key] == db[key]
    with open(str(ours), "rb") as f:
        header = f.read(592)
    # Inactive slots: state 0x0000dead, no iterations, no salt, 4000 stripes (as qemu writes them).
    with open(str(theirs), "rb") as f:
        qemu_header = f.read(592)
    for index in range(1, 8):
        start = 208 + index * 48
        assert header[start:start + 48] == qemu_header[start:start + 48]


def test_random_writes_read_back_by_qemu(tmp_path):
    image = tmp_path / "rand.luks"
    size = 3 * M
    create(image, size)
    rng = random.Random(4)
    model = bytearray(size)
    with diskimage.open_image(str(image), readonly=False, key_secret=PASSPHRASE) as opened:
        opened.write_zeroes(0, size)
        for _step in range(40):
            offset = rng.randrange(0, size - 1)
            length = rng.choice([1, 511, 512, 513, 4096, 70000, 600000])
            length = min(length, size - offset)
            if rng.random() < 0.2:
                opened.write_zeroes(offset, length)
                model[offset:offset + length] = bytes(length)
            else:
                data = bytes([rng.randrange(1, 256)]) * length
                opened.write(offset, data)
                model[offset:offset + length] = data
        assert opened.read(0, size) == bytes(model)
    assert_qemu_sees(image, bytes(model), tmp_path)


def test_convert_to_luks_and_back(tmp_path):
    raw = tmp_path / "src.raw"
    qemu_img("create", "-f", "raw", raw, "5M")
    qemu_tools.qemu_io(raw, "write -P 0x61 0 1M", "write -P 0x62 3M 4097", "write -P 0x63 5241000 1000",
                       fmt="raw")
    image = tmp_path / "out.luks"
    diskimage.convert(str(raw), str(image), "luks", src_fmt="raw",
                      options={"key-secret": PASSPHRASE, "iter-time": 10, "cipher-mode": "cbc",
                               "ivgen-alg": "essiv"})
    # The zero ranges were written (a new LUKS image does not read as zeroes).
    luks_tools.qemu_compare(image, raw)
    back = tmp_path / "back.qcow2"
    diskimage.convert(str(image), str(back), "qcow2", key_secret=PASSPHRASE)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", back, raw)
    assert diskimage.compare(str(image), str(raw), fmt_b="raw", key_secret=PASSPHRASE)
    assert diskimage.compare(str(back), str(image), key_secret=PASSPHRASE)
    with diskimage.open_image(str(back), readonly=False) as opened:
        opened.write(4 * M, b"changed")
    assert diskimage.compare_detail(str(image), str(back), key_secret=PASSPHRASE) == 4 * M
    # Into an existing image (qemu-img convert -n) needs the target's passphrase: refused clearly.
    with pytest.raises(InvalidOptionError, match="key_secret"):
        diskimage.convert(str(raw), str(image), "luks", src_fmt="raw", target_exists=True)


@pytest.mark.parametrize("preallocation", ["full", "off"])
def test_convert_to_luks_counts_the_zeroes_it_encrypts_as_written(tmp_path, preallocation):
    """Every sector of a LUKS payload is written (zeroes too, encrypted): bytes_written says so,
    while a qcow2 target writes only the data."""
    raw = tmp_path / "src.raw"
    qemu_img("create", "-f", "raw", "-o", "preallocation=" + preallocation, raw, "4M")
    qemu_tools.qemu_io(raw, "write -P 0x61 1M 64k", fmt="raw")
    image = tmp_path / "out.luks"
    result = diskimage.convert(str(raw), str(image), "luks", src_fmt="raw",
                               options={"key-secret": PASSPHRASE, "iter-time": 10})
    assert result["bytes_written"] == 4 * M, result
    assert result["bytes_zeroed"] == 4 * M - 64 * 1024, result
    luks_tools.qemu_compare(image, raw)
    plain = diskimage.convert(str(raw), str(tmp_path / "out.qcow2"), "qcow2", src_fmt="raw")
    assert plain["bytes_written"] == 64 * 1024, plain


def test_qemu_written_after_us(tmp_path):
    image = tmp_path / "shared.luks"
    create(image, M, **{"cipher-alg": "aes-128"})
    with diskimage.open_image(str(image), readonly=False, key_secret=PASSPHRASE) as opened:
        opened.write_zeroes(0, M)
        opened.write(100, b"ours" * 100)
    luks_tools.qemu_io(image, "write -P 0x77 4096 8192")
    model = bytearray(M)
    model[100:500] = b"ours" * 100
    model[4096:4096 + 8192] = b"\x77" * 8192
    with diskimage.open_image(str(image), key_secret=PASSPHRASE) as opened:
        assert opened.read(0, M) == bytes(model)
    assert_qemu_sees(image, bytes(model), tmp_path)


def test_resize(tmp_path):
    image = tmp_path / "resize.luks"
    create(image, M)
    with diskimage.open_image(str(image), readonly=False, key_secret=PASSPHRASE) as opened:
        opened.write(0, b"\x21" * M)
    # Growing writes encrypted zeroes (needs the passphrase); shrinking does not.
    with pytest.raises(InvalidOptionError, match="key_secret"):
        diskimage.resize(str(image), "+1M")
    assert diskimage.resize(str(image), "+1M", key_secret=PASSPHRASE) == {"old-size": M, "new-size": 2 * M}
    assert qemu_img_json("info", image)["virtual-size"] == 2 * M
    assert_qemu_sees(image, b"\x21" * M + bytes(M), tmp_path)
    diskimage.resize(str(image), 512 * 3, shrink=True)
    assert qemu_img_json("info", image)["virtual-size"] == 1536
    assert_qemu_sees(image, b"\x21" * 1536, tmp_path)
    with pytest.raises(InvalidOptionError, match="reallocation"):
        diskimage.resize(str(image), "2M", preallocation="full", key_secret=PASSPHRASE)


def test_read_only_and_range_refusals(tmp_path):
    image = tmp_path / "ro.luks"
    create(image, M)
    with diskimage.open_image(str(image), key_secret=PASSPHRASE) as opened:
        with pytest.raises(ReadOnlyImageError):
            opened.write(0, b"x")
        with pytest.raises(ImageError):
            opened.read(M - 1, 2)


@pytest.mark.parametrize("options, match", [
    ({"key-secret": None}, "key-secret"),
    ({"cipher-alg": "twofish-256"}, "cipher-alg"),
    ({"cipher-alg": "aes-512"}, "cipher-alg"),
    ({"cipher-mode": "ctr"}, "cipher-mode"),
    ({"ivgen-alg": "benbi"}, "ivgen-alg"),
    ({"hash-alg": "md5"}, "hash-alg"),
    ({"ivgen-hash-alg": "sha256"}, "ivgen-hash-alg"),
    ({"cipher-alg": "aes-192", "cipher-mode": "xts"}, "xts"),
    ({"cipher-alg": "aes-192", "cipher-mode": "cbc"}, "whole sectors"),
    ({"iter-time": 0}, "iter-time"),
    ({"iter-time": "soon"}, "iter-time"),
    ({"preallocation": "full"}, "reallocation"),
    ({"cluster_size": 65536}, "cluster_size"),
    ({"key-secret": 42}, "string or bytes"),
])
def test_invalid_options(tmp_path, options, match):
    image = tmp_path / "bad.luks"
    opts = {"key-secret": PASSPHRASE, "iter-time": 10}
    opts.update(options)
    opts = dict((k, v) for k, v in opts.items() if v is not None)
    with pytest.raises(InvalidOptionError, match=match) as caught:
        diskimage.create(str(image), "luks", size=M, options=opts)
    assert PASSPHRASE not in str(caught.value)
    assert not image.exists()
    assert not os.listdir(str(tmp_path))


def test_backing_file_refused(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(M))
    with pytest.raises(InvalidOptionError, match="backing"):
        diskimage.create(str(tmp_path / "top.luks"), "luks", backing_file="base.raw", backing_fmt="raw",
                         options={"key-secret": PASSPHRASE, "iter-time": 10})
