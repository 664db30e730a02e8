# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""luks driver, hostile input: damaged LUKS1 headers (magic, version, key
length, payload offset, key slots, stripes, PBKDF2 iteration counts, hashes,
ciphers) and truncated files give a clear ImageError before any unbounded
work or allocation, never another exception, and never the passphrase."""

import random
import shutil
import struct
import time

import pytest

from luks_tools import PASSPHRASE

from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    CorruptImageError, FormatError, ImageError, UnsupportedFeature)

M = 1024 * 1024

# Field offsets of the LUKS1 partition header (spec section 2.4).
VERSION = 6
CIPHER_NAME = 8
CIPHER_MODE = 40
HASH_SPEC = 72
PAYLOAD_OFFSET = 104
KEY_BYTES = 108
MK_DIGEST = 112
MK_ITERATIONS = 164
SLOTS = 208
SLOT_SIZE = 48
# Within a key slot.
SLOT_ACTIVE, SLOT_ITERATIONS, SLOT_SALT, SLOT_KEY_OFFSET, SLOT_STRIPES = 0, 4, 8, 40, 44


@pytest.fixture(scope="module", name="pristine")
def pristine_fixture(tmp_path_factory):
    directory = tmp_path_factory.mktemp("luks-hostile")
    image = directory / "pristine.luks"
    diskimage.create(str(image), "luks", size=M, options={"key-secret": PASSPHRASE, "iter-time": 10})
    with diskimage.open_image(str(image), readonly=False, key_secret=PASSPHRASE) as opened:
        opened.write(0, b"\x5a" * M)
    return image


def damaged(pristine, tmp_path, *edits):
    image = tmp_path / "damaged.luks"
    shutil.copyfile(str(pristine), str(image))
    with open(str(image), "r+b") as f:
        for offset, data in edits:
            f.seek(offset)
            f.write(data)
    return image


def u32(value):
    return struct.pack(">I", value)


def slot(index, field):
    return SLOTS + index * SLOT_SIZE + field


def open_fails(image, error, match, key_secret=PASSPHRASE, fmt=None):
    started = time.monotonic()
    with pytest.raises(error, match=match) as caught:
        with diskimage.open_image(str(image), fmt=fmt, key_secret=key_secret) as opened:
            opened.read(0, opened.virtual_size)
    assert time.monotonic() - started < 20
    assert PASSPHRASE not in str(caught.value)
    return caught.value


def test_pristine_reads(pristine):
    with diskimage.open_image(str(pristine), key_secret=PASSPHRASE) as opened:
        assert opened.read(0, M) == b"\x5a" * M


HEADER_CASES = [
    ("magic", [(0, b"LUKZ")], FormatError, "magic"),
    ("luks2", [(VERSION, b"\0\x02")], UnsupportedFeature, "version 2"),
    ("no key bytes", [(KEY_BYTES, u32(0))], FormatError, "master key length 0"),
    ("huge key bytes", [(KEY_BYTES, u32(0xffffffff))], FormatError, "master key length"),
    ("payload past EOF", [(PAYLOAD_OFFSET, u32(0xffffffff))], CorruptImageError, "past the end"),
    ("payload in header", [(PAYLOAD_OFFSET, u32(1))], CorruptImageError, "inside the header"),
    ("absurd stripes", [(slot(0, SLOT_STRIPES), u32(0xffffffff))], CorruptImageError, "stripes"),
    ("inactive slot stripes", [(slot(5, SLOT_STRIPES), u32(1 << 30))], CorruptImageError, "stripes"),
    ("key material in header", [(slot(0, SLOT_KEY_OFFSET), u32(0))], CorruptImageError, "overlaps the header"),
    ("key material over payload", [(slot(0, SLOT_KEY_OFFSET), u32(4000))], CorruptImageError, "payload"),
    ("key material past EOF", [(slot(0, SLOT_KEY_OFFSET), u32(0xfffffff0))], CorruptImageError, "payload"),
    ("overlapping slots", [(slot(1, SLOT_ACTIVE), u32(0x00AC71F3)), (slot(1, SLOT_KEY_OFFSET), u32(9))],
     CorruptImageError, "overlaps"),
    ("slot state", [(slot(3, SLOT_ACTIVE), u32(0x12345678))], CorruptImageError, "neither active"),
    ("no active slot", [(slot(0, SLOT_ACTIVE), u32(0xdead))], CorruptImageError, "no active key slot"),
    ("slot iterations huge", [(slot(0, SLOT_ITERATIONS), u32(0xffffffff))], CorruptImageError, "iterations"),
    ("slot iterations zero", [(slot(0, SLOT_ITERATIONS), u32(0))], CorruptImageError, "iterations"),
    ("digest iterations huge", [(MK_ITERATIONS, u32(0xfffffff0))], CorruptImageError, "iterations"),
    ("unknown hash", [(HASH_SPEC, b"whirlpool\0")], UnsupportedFeature, "whirlpool"),
    ("unknown cipher", [(CIPHER_NAME, b"serpent\0")], UnsupportedFeature, "serpent"),
    ("unknown mode", [(CIPHER_MODE, b"ctr-plain64\0")], UnsupportedFeature, "ctr"),
    ("unknown ivgen", [(CIPHER_MODE, b"xts-benbi\0")], UnsupportedFeature, "benbi"),
    ("essiv hash without AES key size", [(CIPHER_MODE, b"xts-essiv:sha1\0")], UnsupportedFeature, "sha1"),
    ("wrong digest", [(MK_DIGEST, bytes(20))], ImageError, "Invalid password"),
    ("damaged key material", [(4096 + 1000, b"\xff" * 64)], ImageError, "Invalid password"),
]


@pytest.mark.parametrize("edits, error, match", [case[1:] for case in HEADER_CASES],
                         ids=[case[0] for case in HEADER_CASES])
def test_damaged_headers(pristine, tmp_path, edits, error, match):
    image = damaged(pristine, tmp_path, *edits)
    # The format is forced: a damaged magic or version no longer probes as luks.
    open_fails(image, error, match, fmt="luks")


def test_header_checks_come_before_the_passphrase(pristine, tmp_path):
    # info() (no passphrase) validates the header as well.
    image = damaged(pristine, tmp_path, (PAYLOAD_OFFSET, u32(0xffffffff)))
    with pytest.raises(CorruptImageError, match="past the end"):
        diskimage.info(str(image))


@pytest.mark.parametrize("size", [0, 100, 591])
def test_truncated_header(pristine, tmp_path, size):
    image = tmp_path / "short.luks"
    with open(str(pristine), "rb") as f:
        image.write_bytes(f.read(size))
    with pytest.raises(FormatError):
        diskimage.info(str(image), fmt="luks")
    open_fails(image, FormatError, "too short|magic", fmt="luks")


def test_truncated_payload(pristine, tmp_path):
    image = damaged(pristine, tmp_path)
    info = diskimage.info(str(image))
    payload = info["format-specific"]["data"]["payload-offset"]
    # Cut inside the last sector: the partial sector is not part of the disk.
    with open(str(image), "r+b") as f:
        f.truncate(payload + 4096 + 100)
    with diskimage.open_image(str(image), key_secret=PASSPHRASE) as opened:
        assert opened.virtual_size == 4096
        assert opened.read(0, 4096) == b"\x5a" * 4096
    # Cut inside the key material: refused.
    with open(str(image), "r+b") as f:
        f.truncate(4096 + 1000)
    open_fails(image, CorruptImageError, "past the end")


def test_random_damage_gives_image_errors_only(pristine, tmp_path):
    """Flip bytes anywhere in the header (but in the iteration counts, whose
    legal range still allows slow derivations): ImageError or a clean read."""
    rng = random.Random(7)
    slow = set(range(MK_ITERATIONS, MK_ITERATIONS + 4))
    for index in range(8):
        slow.update(range(slot(index, SLOT_ITERATIONS), slot(index, SLOT_ITERATIONS) + 4))
    positions = [p for p in range(592) if p not in slow]
    outcomes = {"ok": 0, "error": 0}
    for _round in range(30):
        edits = []
        for _flip in range(rng.choice([1, 2, 4])):
            position = rng.choice(positions)
            edits.append((position, bytes([rng.randrange(256)])))
        image = damaged(pristine, tmp_path, *edits)
        try:
            with diskimage.open_image(str(image), key_secret=PASSPHRASE) as opened:
                opened.read(0, min(opened.virtual_size, 64 * 1024))
            outcomes["ok"] += 1
        except ImageError as exc:
            assert PASSPHRASE not in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 0
