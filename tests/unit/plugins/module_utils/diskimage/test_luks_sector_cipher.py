# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SectorCipher encrypts runs of sectors in bulk (one AES-ECB pass with the XTS tweaks or
CBC chains computed for all sectors at once): the result must be, byte for byte, what the
cipher gives sector by sector with its own IV (the reference below, one cryptography
context per sector, as dm-crypt and QEMU define the payload)."""

import hashlib
import os

import pytest

import components

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError:  # the reference cipher of these tests
    components.missing("python cryptography")

from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import luks  # noqa: E402


def reference(spec, key, first_sector, data, decrypt):
    """Sector by sector, each with its own IV: the definition of the payload encryption."""
    out = []
    for index in range(-(-len(data) // 512)):
        sector = first_sector + index
        width = 32 if spec.ivgen_alg == "plain" else 64
        iv = ((sector & ((1 << width) - 1)).to_bytes(8, "little") + bytes(8))
        if spec.ivgen_alg == "essiv":
            essiv = Cipher(algorithms.AES(hashlib.new(spec.ivgen_hash, key).digest()), modes.ECB()).encryptor()
            iv = essiv.update(iv) + essiv.finalize()
        mode = modes.XTS(iv) if spec.mode == "xts" else modes.CBC(iv)
        context = Cipher(algorithms.AES(key), mode)
        context = context.decryptor() if decrypt else context.encryptor()
        out.append(context.update(data[index * 512:(index + 1) * 512]) + context.finalize())
    return b"".join(out)


SPECS = [
    ("aes", "xts-plain64", 64), ("aes", "xts-plain64", 32), ("aes", "xts-plain", 32),
    ("aes", "xts-essiv:sha256", 64), ("aes", "cbc-essiv:sha256", 32), ("aes", "cbc-plain64", 16),
    ("aes", "cbc-plain", 24),
]


@pytest.mark.parametrize("name,mode,key_bytes", SPECS, ids=["%s-%d" % (spec[1], spec[2]) for spec in SPECS])
@pytest.mark.parametrize("first_sector,length", [(0, 512), (7, 512 * 37), ((1 << 32) - 3, 512 * 6),
                                                 (123456, 1 << 20), (5, 512 * 3 + 256)])
def test_bulk_sector_encryption_is_the_per_sector_cipher(name, mode, key_bytes, first_sector, length):
    spec = luks.CipherSpec(name, mode, key_bytes)
    spec.validate("test")
    key = os.urandom(key_bytes)
    cipher = luks.SectorCipher(spec, key)
    plain = os.urandom(length)
    encrypted = cipher.encrypt(first_sector, plain)
    assert encrypted == reference(spec, key, first_sector, plain, False)
    assert cipher.decrypt(first_sector, encrypted) == plain
    assert cipher.decrypt(first_sector, plain) == reference(spec, key, first_sector, plain, True)
