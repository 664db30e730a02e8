# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""luks driver, read side: LUKS1 images made by qemu-img (every cipher mode
and IV generator it offers with AES) read byte-identical to ``qemu-img
convert -O raw`` with the passphrase, info and map agree with qemu-img's JSON,
and a wrong, missing or unusable passphrase (or no cryptography package)
gives a clear error that never contains the passphrase."""

import contextlib
import hashlib
import json
import shutil
import subprocess

import pytest

import qemu_tools
from qemu_tools import qemu_img, qemu_img_json
import luks_tools
from luks_tools import PASSPHRASE

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError, InvalidOptionError, UnsupportedFeature)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import luks as luks_mod

M = 1024 * 1024

# qemu-img -o options of the images qemu makes (AES in each mode, IV generator and hash it offers).
CONFIGS = {
    "xts-plain64": "",
    "cbc-plain-sha1": "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain,hash-alg=sha1",
    "cbc-essiv": "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha512",
}

# qemu-io commands: data, zero and unaligned ranges over 3 MiB.
PATTERNS = [
    ["write -P 0x11 0 4k"],
    ["write -P 0x22 1000 3000", "write -P 0x33 1536k 1M", "write -z 2M 512k"],
    ["write -P 0x44 0 3M", "write -z 1M 1M", "write -P 0x55 3145727 1", "write -P 0x66 777 1"],
]
SIZE = 3 * M


# Made once per module, all at once: qemu benchmarks PBKDF2 for about a second per new image
# (other modes, key sizes and hashes: images we create, read by qemu, in test_luks_write.py).


def _source_raw(directory):
    raw = directory / "src.raw"
    qemu_img("create", "-f", "raw", raw, "5M")
    qemu_tools.qemu_io(raw, "write -P 0x01 0 1536k", "write -P 0x02 2M 4096", "write -P 0x03 4194305 1000",
                       fmt="raw")
    return raw


@pytest.fixture(scope="module", name="qemu_images")
def qemu_images_fixture(tmp_path_factory):
    """CONFIGS as <name>.luks, and converted.luks (qemu-img convert -O luks of src.raw)."""
    directory = tmp_path_factory.mktemp("luks-qemu")
    raw = _source_raw(directory)
    jobs = {}
    for name, options in sorted(CONFIGS.items()):
        opts = "key-secret=sec0," + luks_tools.FAST + ("," + options if options else "")
        jobs[name] = ["qemu-img", "create", "-q", "-f", "luks", "--object", luks_tools.secret_object(),
                      "-o", opts, str(directory / (name + ".luks")), str(SIZE)]
    jobs["converted"] = ["qemu-img", "convert", "--object", luks_tools.secret_object(), "-f", "raw", "-O", "luks",
                         "-o", "key-secret=sec0," + luks_tools.FAST, str(raw), str(directory / "converted.luks")]
    failed = []
    with contextlib.ExitStack() as stack:
        procs = dict((name, stack.enter_context(subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                                 stderr=subprocess.PIPE)))
                     for name, argv in jobs.items())
        for name, proc in procs.items():
            proc.communicate()
            if proc.returncode:
                failed.append(name)
    for name in failed:
        # qemu's PBKDF2 benchmark now and then fails ("Unable to get accurate CPU usage"): once more.
        target = directory / (name + ".luks")
        if target.exists():
            target.unlink()
        qemu_tools.run(*jobs[name])
    return directory


def _copy(qemu_images, name, tmp_path):
    image = tmp_path / ("%s.luks" % name)
    shutil.copyfile(str(qemu_images / ("%s.luks" % name)), str(image))
    return image


def our_digest(path, key_secret=PASSPHRASE):
    with diskimage.open_image(str(path), key_secret=key_secret) as image:
        digest = hashlib.sha256()
        position = 0
        while position < image.virtual_size:
            count = min(M + 1000, image.virtual_size - position)   # odd chunking on purpose
            digest.update(image.read(position, count))
            position += count
        return digest.hexdigest()


def assert_info_matches(path):
    oracle = qemu_img_json("info", path)
    ours = diskimage.info(str(path))
    for key in ("virtual-size", "format", "format-specific", "encrypted", "dirty-flag", "actual-size",
                "cluster-size"):
        assert ours.get(key) == oracle.get(key), key
    assert oracle["format"] == "luks" and oracle["encrypted"] is True


@pytest.mark.parametrize("name, pattern", [(name, 1) for name in sorted(CONFIGS)]
                         + [("xts-plain64", 0), ("xts-plain64", 2), ("cbc-plain-sha1", 2)])
def test_qemu_io_written_images_read_identical(qemu_images, tmp_path, name, pattern):
    image = _copy(qemu_images, name, tmp_path)
    luks_tools.qemu_io(image, *PATTERNS[pattern])
    assert our_digest(image) == luks_tools.qemu_digest(image, tmp_path)
    assert_info_matches(image)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fresh_image_decrypts_like_qemu(qemu_images, tmp_path, name):
    # Never written: the payload is the file's zeroes, decrypted (noise), identical to qemu's view.
    image = _copy(qemu_images, name, tmp_path)
    assert our_digest(image) == luks_tools.qemu_digest(image, tmp_path)
    fs = diskimage.info(str(image))["format-specific"]
    assert fs["type"] == "luks" and fs == qemu_img_json("info", image)["format-specific"]


def test_convert_from_raw_reads_identical(qemu_images, tmp_path):
    raw = qemu_images / "src.raw"
    image = _copy(qemu_images, "converted", tmp_path)
    out = tmp_path / "ours.raw"
    diskimage.convert(str(image), str(out), "raw", src_fmt="luks", key_secret=PASSPHRASE)
    assert qemu_tools.file_digest(out) == qemu_tools.file_digest(raw)
    assert our_digest(image) == luks_tools.qemu_digest(image, tmp_path)
    assert_info_matches(image)
    # Every sector is data (qemu reports no host offset for encrypted data either).
    oracle = json.loads(qemu_tools.run("qemu-img", "map", "--output=json", "--object", luks_tools.secret_object(),
                                       "--image-opts", luks_tools.image_opts(image)))
    assert diskimage.map(str(image)) == oracle
    # Probed as luks, converted to qcow2 by us: qemu-img sees the same guest data.
    qcow2 = tmp_path / "out.qcow2"
    diskimage.convert(str(image), str(qcow2), "qcow2", key_secret=PASSPHRASE)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", qcow2, raw)


def test_passphrase_bytes_and_text_agree(qemu_images, tmp_path):
    image = _copy(qemu_images, "xts-plain64", tmp_path)
    luks_tools.qemu_io(image, "write -P 0x7e 0 64k")
    assert our_digest(image, PASSPHRASE.encode("utf-8")) == our_digest(image)


@pytest.mark.parametrize("wrong", ["Tr0ub4dor&3", "", PASSPHRASE + " ", PASSPHRASE.upper()])
def test_wrong_passphrase_is_refused_without_echo(qemu_images, tmp_path, wrong):
    image = _copy(qemu_images, "cbc-essiv", tmp_path)
    with pytest.raises(ImageError) as caught:
        diskimage.open_image(str(image), key_secret=wrong)
    message = str(caught.value)
    assert "Invalid password" in message and str(image) in message
    if wrong:
        assert wrong not in message
    assert PASSPHRASE not in message
    with pytest.raises(ImageError) as caught:
        diskimage.convert(str(image), str(tmp_path / "out.raw"), "raw", key_secret=wrong)
    assert "Invalid password" in str(caught.value)
    assert not (tmp_path / "out.raw").exists()


def test_missing_passphrase(qemu_images, tmp_path):
    image = _copy(qemu_images, "xts-plain64", tmp_path)
    # Header-only use needs no passphrase (as qemu-img info)...
    with diskimage.open_image(str(image)) as opened:
        assert opened.virtual_size == SIZE
        with pytest.raises(InvalidOptionError, match="key_secret"):
            opened.read(0, 512)
    # ...reading and writing do.
    with pytest.raises(InvalidOptionError, match="key_secret"):
        diskimage.convert(str(image), str(tmp_path / "out.raw"), "raw")
    with diskimage.open_image(str(image), readonly=False) as opened:
        with pytest.raises(InvalidOptionError, match="key_secret"):
            opened.write(0, b"data")
        with pytest.raises(InvalidOptionError, match="key_secret"):
            opened.write_zeroes(0, 512)
    with pytest.raises(InvalidOptionError, match="string or bytes"):
        diskimage.open_image(str(image), key_secret=1234)


def test_without_cryptography(qemu_images, tmp_path, monkeypatch):
    image = _copy(qemu_images, "xts-plain64", tmp_path)
    monkeypatch.setattr(luks_mod, "HAS_CRYPTOGRAPHY", False)
    with pytest.raises(UnsupportedFeature) as caught:
        diskimage.open_image(str(image), key_secret=PASSPHRASE)
    assert "'cryptography'" in str(caught.value) and PASSPHRASE not in str(caught.value)
    with pytest.raises(UnsupportedFeature, match="'cryptography'"):
        diskimage.convert(str(image), str(tmp_path / "out.raw"), "raw", key_secret=PASSPHRASE)
    with pytest.raises(UnsupportedFeature, match="'cryptography'"):
        diskimage.create(str(tmp_path / "new.luks"), "luks", size=M,
                         options={"key-secret": PASSPHRASE, "iter-time": 10})
    assert not (tmp_path / "new.luks").exists()
    # The header is still shown.
    assert_info_matches(image)


def test_unsupported_cipher_info_only(qemu_images, tmp_path):
    # The same header naming twofish (which QEMU may use): shown, not decrypted.
    image = _copy(qemu_images, "xts-plain64", tmp_path)
    with open(str(image), "r+b") as f:
        f.seek(8)
        f.write(b"twofish".ljust(32, b"\0"))
    assert_info_matches(image)
    assert diskimage.info(str(image))["format-specific"]["data"]["cipher-alg"] == "twofish-256"
    with pytest.raises(UnsupportedFeature, match="twofish-256"):
        diskimage.open_image(str(image), key_secret=PASSPHRASE)


def test_probe_and_format_refusals(qemu_images, tmp_path):
    image = _copy(qemu_images, "cbc-essiv", tmp_path)
    assert diskimage.info(str(image))["format"] == "luks"
    # Not luks: refused when the format is forced.
    raw = tmp_path / "plain.raw"
    raw.write_bytes(bytes(4096))
    with pytest.raises(ImageError, match="magic"):
        diskimage.open_image(str(raw), fmt="luks", key_secret=PASSPHRASE)
