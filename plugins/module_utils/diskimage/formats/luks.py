# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LUKS1 encrypted images (QEMU's "luks" format).

Layout from the "LUKS On-Disk Format Specification" version 1.2.3 (cryptsetup):
a 592-byte big-endian partition header (magic ``LUKS\\xba\\xbe``, version 1,
cipher name and mode, hash spec, payload offset in sectors, master key length,
master key digest with its PBKDF2 salt and iteration count, UUID) holding 8 key
slots (state, PBKDF2 iterations and salt, key material offset in sectors,
anti-forensic stripes).  A key slot's key material is the master key split
into ``stripes`` stripes (AF-split with the hash's diffuse function),
encrypted with a key derived from the passphrase (PBKDF2); the payload (the
guest data) starts at the payload offset and is encrypted sector by sector
(512-byte sectors, the IV generated from the sector number counted from the
payload's start: plain, plain64 or essiv:HASH).

Behaviour follows QEMU 7.2 (crypto/block-luks.c, block/crypto.c): the
virtual size is the file size minus the payload offset; every sector is
data (block status reports all of it allocated, without host offsets: the
bytes on disk are not the guest's); ``qemu-img info`` shows the header
without needing the passphrase; a new image is created with slot 0 active,
the other slots inactive, key material aligned to 4 KiB, and the file
truncated to payload offset + size (it does not read as zeroes until written:
``has_zero_init`` is False, so convert writes zeroes explicitly).

The passphrase: open() takes it from the opener's ``key_secret`` attribute
(``chain.open_driver(..., key_secret=...)``; in the public API the
``key_secret`` keyword of ``open_image``, ``convert`` (for the source),
``compare`` and ``resize``); create() from the ``key-secret`` option, which
here carries the passphrase itself (qemu-img names a secret object there; a
``convert`` to luks opens its new target with it).  Without a passphrase the
image opens for info(), map() and shrinking only; reads and writes then raise
InvalidOptionError naming ``key_secret``.  The passphrase (str, UTF-8, or
bytes) is never stored, logged or put into a message; the master key lives in
the opened driver until close().

Ciphers: AES (128, 192, 256 bits) in xts, cbc or ecb mode, through the optional
``cryptography`` package (imported at load time, guarded: without it info()
still works and opening with a passphrase raises UnsupportedFeature naming the
package).  PBKDF2 and the AF merge/split use hashlib.  Twofish, serpent and
cast5 (which QEMU may use) are reported by info() and refused for data access.

Security (docs/security.md rule 5): the master key length, the stripes (exactly 4000,
as QEMU requires) and the PBKDF2 iteration counts are capped before anything
is derived or allocated; key material and payload offsets are checked against
the header size, each other and the file size.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import array
import hashlib
import hmac
import os
import struct
import sys
import time
import uuid as uuidlib

from .._io import ImageFile
from ..errors import CorruptImageError, FormatError, ImageError, InvalidOptionError, UnsupportedFeature
from .base import DATA, MAX_IO, Driver, Extent

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - depends on the host
    Cipher = algorithms = modes = None
    HAS_CRYPTOGRAPHY = False

SECTOR_SIZE = 512

# --- LUKS partition header (LUKS1 spec, section 2.4 "The partition header") ------
# magic, version, cipher-name, cipher-mode, hash-spec, payload-offset (sectors),
# key-bytes, mk-digest, mk-digest-salt, mk-digest-iter, uuid; 8 key slots follow.
LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS_VERSION = 1
PHDR = struct.Struct(">6sH32s32s32sII20s32sI40s")
# --- key slot (LUKS1 spec, section 2.4): active, iterations, salt,
# key-material-offset (sectors), stripes.
KEY_SLOT = struct.Struct(">II32sII")
NUM_KEY_SLOTS = 8
HEADER_SIZE = PHDR.size + NUM_KEY_SLOTS * KEY_SLOT.size    # 592
KEY_SLOT_ACTIVE = 0x00AC71F3
KEY_SLOT_INACTIVE = 0x0000DEAD
DIGEST_SIZE = 20
SALT_SIZE = 32
STRIPES = 4000
# Key material and the payload are aligned to 4 KiB (8 sectors), as QEMU and cryptsetup write them.
ALIGN_SECTORS = 8

# Caps on header-derived work and allocations (docs/security.md rule 5).
MAX_KEY_BYTES = 64                    # AES-256-XTS, the largest key QEMU uses
MAX_ITERATIONS = 1 << 26              # PBKDF2 rounds: minutes at most, never hours
MIN_ITERATIONS = 1000                 # QEMU's minimum for new images

# Creation defaults (qemu-img create -f luks).
DEFAULT_CIPHER_ALG = "aes-256"
DEFAULT_CIPHER_MODE = "xts"
DEFAULT_IVGEN_ALG = "plain64"
DEFAULT_HASH_ALG = "sha256"
DEFAULT_ITER_TIME = 2000              # milliseconds
CREATE_OPTIONS = ("key-secret", "cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg", "hash-alg",
                  "iter-time", "preallocation")

AES_KEY_BITS = (128, 192, 256)
CIPHER_MODES = ("xts", "cbc", "ecb")
IVGEN_ALGS = ("plain", "plain64", "essiv")
HASH_ALGS = ("sha1", "sha224", "sha256", "sha384", "sha512")
AES_BLOCK = 16


def _text(field):
    """A NUL-padded header string as text."""
    return field.split(b"\0", 1)[0].decode("ascii", "replace")


def _xor(left, right):
    return (int.from_bytes(left, "little") ^ int.from_bytes(right, "little")).to_bytes(len(left), "little")


def _diffuse(block, hash_name):
    """The AF diffuse function (LUKS1 spec, section 2.4): each digest-sized
    piece i becomes H(be32(i) || piece), the last piece truncated."""
    digest_size = hashlib.new(hash_name).digest_size
    pieces = []
    for index, start in enumerate(range(0, len(block), digest_size)):
        piece = block[start:start + digest_size]
        digest = hashlib.new(hash_name, struct.pack(">I", index) + piece).digest()
        pieces.append(digest[:len(piece)])
    return b"".join(pieces)


def af_merge(material, key_bytes, stripes, hash_name):
    """The master key from its AF-split key material (``stripes`` stripes)."""
    accumulated = bytes(key_bytes)
    for index in range(stripes - 1):
        stripe = material[index * key_bytes:(index + 1) * key_bytes]
        accumulated = _diffuse(_xor(accumulated, stripe), hash_name)
    return _xor(accumulated, material[(stripes - 1) * key_bytes:stripes * key_bytes])


def af_split(master_key, stripes, hash_name):
    """AF-split ``master_key`` into ``stripes`` stripes (random but the last)."""
    key_bytes = len(master_key)
    random_part = os.urandom(key_bytes * (stripes - 1))
    accumulated = bytes(key_bytes)
    for index in range(stripes - 1):
        stripe = random_part[index * key_bytes:(index + 1) * key_bytes]
        accumulated = _diffuse(_xor(accumulated, stripe), hash_name)
    return random_part + _xor(accumulated, master_key)


def _plain64_ivs(first_sector, count, width=64):
    """IVs of ``count`` sectors from ``first_sector``: the sector number,
    little-endian, truncated to ``width`` bits and zero-padded to 16 bytes."""
    mask = (1 << width) - 1
    numbers = array.array("Q", bytes(16 * count))
    numbers[0::2] = array.array("Q", [(first_sector + index) & mask for index in range(count)])
    if sys.byteorder != "little":
        numbers.byteswap()
    return numbers.tobytes()


def _require_cryptography(path):
    if not HAS_CRYPTOGRAPHY:
        raise UnsupportedFeature("reading or writing LUKS encrypted images requires the Python 'cryptography' "
                                 "package, which is not importable (install python3-cryptography or "
                                 "pip install cryptography)", path)


class CipherSpec:
    """A LUKS cipher: name, mode, IV generator (and its hash), key length."""

    def __init__(self, cipher_name, cipher_mode, key_bytes):
        self.cipher_name = cipher_name
        self.cipher_mode = cipher_mode
        self.mode, _sep, ivgen = cipher_mode.partition("-")
        self.ivgen_alg, _sep, self.ivgen_hash = ivgen.partition(":")
        self.key_bytes = key_bytes

    @property
    def key_bits(self):
        """Bits of the cipher key (XTS keys hold two cipher keys)."""
        return (self.key_bytes // 2 if self.mode == "xts" else self.key_bytes) * 8

    @property
    def cipher_alg(self):
        return "%s-%d" % (self.cipher_name, self.key_bits)

    def validate(self, path):
        """Refuse what this library cannot decrypt (UnsupportedFeature, naming it)."""
        if self.mode not in CIPHER_MODES:
            raise UnsupportedFeature("LUKS cipher mode %r is not supported (supported: %s)"
                                     % (self.mode, ", ".join(CIPHER_MODES)), path)
        if self.cipher_name != "aes" or self.key_bits not in AES_KEY_BITS:
            raise UnsupportedFeature("LUKS cipher %s (%d-byte key) is not supported (supported: aes-128, aes-192, "
                                     "aes-256)" % (self.cipher_alg, self.key_bytes), path)
        if self.mode == "xts" and self.key_bits == 192:
            raise UnsupportedFeature("LUKS cipher aes-192 in xts mode is not supported", path)
        if self.mode == "ecb":
            return  # no IV: whatever generator the header names (QEMU writes ecb-plain64) is unused
        if self.ivgen_alg not in IVGEN_ALGS:
            raise UnsupportedFeature("LUKS IV generator %r is not supported (supported: %s)"
                                     % (self.ivgen_alg, ", ".join(IVGEN_ALGS)), path)
        if self.ivgen_alg == "essiv":
            if self.ivgen_hash not in HASH_ALGS:
                raise UnsupportedFeature("LUKS essiv hash %r is not supported (supported: %s)"
                                         % (self.ivgen_hash, ", ".join(HASH_ALGS)), path)
            if hashlib.new(self.ivgen_hash).digest_size * 8 not in AES_KEY_BITS:
                raise UnsupportedFeature("LUKS essiv hash %s does not give an AES key" % self.ivgen_hash, path)
        elif self.ivgen_hash:
            raise UnsupportedFeature("LUKS IV generator %s takes no hash, found %r"
                                     % (self.ivgen_alg, self.ivgen_hash), path)


class SectorCipher:
    """Encrypts and decrypts runs of 512-byte sectors with one key (a LUKS
    payload, or a key slot's key material), the IV of each sector computed
    from its number.  Only built after CipherSpec.validate()."""

    def __init__(self, spec, key):
        self.spec = spec
        self._algorithm = algorithms.AES(key)
        self._essiv = None
        if spec.ivgen_alg == "essiv":
            self._essiv = Cipher(algorithms.AES(hashlib.new(spec.ivgen_hash, key).digest()), modes.ECB())
        # CBC in bulk: AES-ECB over many sectors at once (a cipher context per sector costs
        # more than the AES itself).  XTS stays per sector: done in bulk, its two XORs with the
        # tweaks cost more in Python (int conversions) than the contexts they would save.
        self._block_cipher = Cipher(self._algorithm, modes.ECB()) if spec.mode == "cbc" else None

    def _ivs(self, first_sector, count):
        if self.spec.ivgen_alg == "plain":
            return _plain64_ivs(first_sector, count, 32)
        ivs = _plain64_ivs(first_sector, count)
        if self._essiv is not None:
            encryptor = self._essiv.encryptor()
            ivs = encryptor.update(ivs) + encryptor.finalize()
        return ivs

    def _run(self, first_sector, data, decrypt):
        data = memoryview(data)
        if len(data) % AES_BLOCK:
            raise ImageError("LUKS: %d bytes cannot be %s (not a multiple of %d)"
                             % (len(data), "decrypted" if decrypt else "encrypted", AES_BLOCK))
        if self.spec.mode == "ecb":
            context = Cipher(self._algorithm, modes.ECB())
            context = context.decryptor() if decrypt else context.encryptor()
            return context.update(data) + context.finalize()
        whole = len(data) // SECTOR_SIZE
        if whole and self._block_cipher is not None:
            head = self._cbc(first_sector, data[:whole * SECTOR_SIZE], whole, decrypt)
            if whole * SECTOR_SIZE == len(data):
                return head
            return head + self._per_sector(first_sector + whole, data[whole * SECTOR_SIZE:], decrypt)
        return self._per_sector(first_sector, data, decrypt)

    def _per_sector(self, first_sector, data, decrypt):
        """One cipher context per sector (a partial last sector: key material of odd size)."""
        count = -(-len(data) // SECTOR_SIZE)
        ivs = self._ivs(first_sector, count)
        mode = modes.XTS if self.spec.mode == "xts" else modes.CBC
        out = []
        for index in range(count):
            context = Cipher(self._algorithm, mode(ivs[index * 16:index * 16 + 16]))
            context = context.decryptor() if decrypt else context.encryptor()
            out.append(context.update(data[index * SECTOR_SIZE:(index + 1) * SECTOR_SIZE]))
            out.append(context.finalize())
        return b"".join(out)

    def _cbc(self, first_sector, data, count, decrypt):
        """CBC of ``count`` whole sectors, each chained from its own IV.  Decryption is one ECB
        pass XORed with the previous ciphertext block; encryption goes block position by block
        position, all sectors at once (one ECB call per position instead of a context per sector)."""
        size = AES_BLOCK * count
        stride = SECTOR_SIZE // 8
        ivs = array.array("Q", self._ivs(first_sector, count))
        words = array.array("Q", bytes(data))
        if decrypt:
            context = self._block_cipher.decryptor()
            plain = context.update(bytes(data)) + context.finalize()
            previous = array.array("Q", bytes(len(data)))
            previous[2:] = words[:-2]
            previous[0::stride] = ivs[0::2]
            previous[1::stride] = ivs[1::2]
            return (int.from_bytes(plain, "little") ^ int.from_bytes(previous.tobytes(), "little")).to_bytes(
                len(data), "little")
        context = self._block_cipher.encryptor()
        chain = int.from_bytes(ivs.tobytes(), "little")
        lane = array.array("Q", bytes(size))
        for block in range(SECTOR_SIZE // AES_BLOCK):
            lane[0::2] = words[2 * block::stride]
            lane[1::2] = words[2 * block + 1::stride]
            encrypted = context.update((int.from_bytes(lane.tobytes(), "little") ^ chain).to_bytes(size, "little"))
            chain = int.from_bytes(encrypted, "little")
            done = array.array("Q", encrypted)
            words[2 * block::stride] = done[0::2]
            words[2 * block + 1::stride] = done[1::2]
        context.finalize()
        return words.tobytes()

    def decrypt(self, first_sector, data):
        return self._run(first_sector, data, True)

    def encrypt(self, first_sector, data):
        return self._run(first_sector, data, False)


class KeySlot:
    """One of the 8 key slots of the partition header."""

    def __init__(self, index, raw):
        self.index = index
        self.active, self.iterations, self.salt, self.key_offset, self.stripes = \
            KEY_SLOT.unpack_from(raw, PHDR.size + index * KEY_SLOT.size)

    @property
    def is_active(self):
        return self.active == KEY_SLOT_ACTIVE


class LuksHeader:
    """The LUKS1 partition header and its key slots."""

    def __init__(self, raw, path):
        if len(raw) < HEADER_SIZE:
            raise FormatError("LUKS header: file too short (%d bytes, expected at least %d)"
                              % (len(raw), HEADER_SIZE), path)
        (self.magic, self.version, cipher_name, cipher_mode, hash_spec, self.payload_offset, self.key_bytes,
         self.mk_digest, self.mk_digest_salt, self.mk_digest_iterations, uuid) = PHDR.unpack_from(raw, 0)
        self.cipher_name = _text(cipher_name)
        self.cipher_mode = _text(cipher_mode)
        self.hash_spec = _text(hash_spec)
        self.uuid = _text(uuid)
        self.slots = [KeySlot(index, raw) for index in range(NUM_KEY_SLOTS)]
        self.spec = CipherSpec(self.cipher_name, self.cipher_mode, self.key_bytes)

    @property
    def payload_bytes(self):
        return self.payload_offset * SECTOR_SIZE

    @property
    def split_key_bytes(self):
        return self.key_bytes * STRIPES

    def validate(self, path, file_size):
        """Magic -> version -> sizes and offsets (as QEMU's header check)."""
        if self.magic != LUKS_MAGIC:
            raise FormatError("LUKS header: magic expected %r, found %r" % (LUKS_MAGIC, self.magic), path)
        if self.version != LUKS_VERSION:
            raise UnsupportedFeature("LUKS header: version %d is not supported (only LUKS1, version 1)"
                                     % self.version, path)
        if not 1 <= self.key_bytes <= MAX_KEY_BYTES:
            raise FormatError("LUKS header: master key length %d bytes out of range (1 to %d)"
                              % (self.key_bytes, MAX_KEY_BYTES), path)
        header_sectors = -(-HEADER_SIZE // SECTOR_SIZE)
        if self.payload_offset < header_sectors:
            raise CorruptImageError("LUKS header: payload offset %d sectors lies inside the header (%d bytes)"
                                    % (self.payload_offset, HEADER_SIZE), path)
        if self.payload_bytes > file_size:
            raise CorruptImageError("LUKS header: payload offset 0x%x lies past the end of the file (%d bytes)"
                                    % (self.payload_bytes, file_size), path)
        split_sectors = -(-self.split_key_bytes // SECTOR_SIZE)
        for slot in self.slots:
            if slot.stripes != STRIPES:
                raise CorruptImageError("LUKS key slot %d: stripes %d, expected %d"
                                        % (slot.index, slot.stripes, STRIPES), path)
            if not slot.is_active:
                if slot.active != KEY_SLOT_INACTIVE:
                    raise CorruptImageError("LUKS key slot %d: state 0x%08x is neither active (0x%08x) nor "
                                            "inactive (0x%08x)" % (slot.index, slot.active, KEY_SLOT_ACTIVE,
                                                                   KEY_SLOT_INACTIVE), path)
                continue
            if slot.key_offset < header_sectors:
                raise CorruptImageError("LUKS key slot %d: key material at sector %d overlaps the header"
                                        % (slot.index, slot.key_offset), path)
            if slot.key_offset + split_sectors > self.payload_offset:
                raise CorruptImageError("LUKS key slot %d: key material at sector %d (%d sectors) overlaps the "
                                        "payload at sector %d" % (slot.index, slot.key_offset, split_sectors,
                                                                  self.payload_offset), path)
            for other in self.slots[:slot.index]:
                if other.is_active and other.key_offset < slot.key_offset + split_sectors and \
                        slot.key_offset < other.key_offset + split_sectors:
                    raise CorruptImageError("LUKS key slots %d and %d: key material overlaps (sectors %d and %d)"
                                            % (other.index, slot.index, other.key_offset, slot.key_offset), path)

    def format_specific(self):
        """The "format-specific" data of qemu-img info (header fields, never secrets)."""
        spec = self.spec
        data = {
            "cipher-alg": spec.cipher_alg,
            "cipher-mode": spec.mode,
            "ivgen-alg": spec.ivgen_alg,
            "hash-alg": self.hash_spec,
            "payload-offset": self.payload_bytes,
            "master-key-iters": self.mk_digest_iterations,
            "uuid": self.uuid,
            "slots": [],
        }
        if spec.ivgen_hash:
            data["ivgen-hash-alg"] = spec.ivgen_hash
        for slot in self.slots:
            entry = {"active": slot.is_active, "key-offset": slot.key_offset * SECTOR_SIZE}
            if slot.is_active:
                entry["iters"] = slot.iterations
                entry["stripes"] = slot.stripes
            data["slots"].append(entry)
        return data


def _passphrase_bytes(secret, path):
    if isinstance(secret, str):
        return secret.encode("utf-8")
    if isinstance(secret, (bytes, bytearray)):
        return bytes(secret)
    raise InvalidOptionError("the LUKS passphrase (key-secret) must be a string or bytes, found %s"
                             % type(secret).__name__, path)


def _check_hash(name, what, path):
    if name not in HASH_ALGS:
        raise UnsupportedFeature("LUKS %s %r is not supported (supported: %s)" % (what, name, ", ".join(HASH_ALGS)),
                                 path)


def _check_iterations(count, what, path):
    if not 1 <= count <= MAX_ITERATIONS:
        raise CorruptImageError("LUKS %s: %d PBKDF2 iterations, expected 1 to %d" % (what, count, MAX_ITERATIONS),
                                path)


class LuksDriver(Driver):
    format_name = "luks"
    can_create = True
    can_write = True
    # A new image's payload is not encrypted zeroes: convert must write zeroes.
    has_zero_init = False
    # ... and they are written like any data (encrypted): counted as bytes written.
    zeroes_written_as_data = True

    def __init__(self):
        super(LuksDriver, self).__init__()
        self._file = None
        self.header = None
        self._cipher = None

    # ------------------------------------------------------------------ probing
    @classmethod
    def probe(cls, header, filename):
        # QEMU: the magic with version 1 scores 100.
        if len(header) >= 8 and header[:6] == LUKS_MAGIC and struct.unpack_from(">H", header, 6)[0] == LUKS_VERSION:
            return 100
        return 0

    # --------------------------------------------------------------- lifecycle
    def _open_structures(self, opener):
        file_size = self._file.size()
        header = LuksHeader(self._file.pread(0, HEADER_SIZE), self.path)
        header.validate(self.path, file_size)
        self.header = header
        self.virtual_size = (file_size - header.payload_bytes) // SECTOR_SIZE * SECTOR_SIZE
        secret = getattr(opener, "key_secret", None)
        if secret is not None:
            self._unlock(_passphrase_bytes(secret, self.path))

    def _unlock(self, passphrase):
        """Find the master key from ``passphrase`` and the active key slots."""
        path = self.path
        _require_cryptography(path)
        h = self.header
        h.spec.validate(path)
        _check_hash(h.hash_spec, "hash", path)
        _check_iterations(h.mk_digest_iterations, "master key digest", path)
        file_size = self._file.size()
        active = [slot for slot in h.slots if slot.is_active]
        if not active:
            raise CorruptImageError("LUKS header: no active key slot", path)
        material_bytes = h.split_key_bytes
        # Whole cipher blocks (the last sector of key material may be partial).
        material_read = -(-material_bytes // AES_BLOCK) * AES_BLOCK
        for slot in active:
            _check_iterations(slot.iterations, "key slot %d" % slot.index, path)
            offset = slot.key_offset * SECTOR_SIZE
            if offset + material_read > file_size:
                raise CorruptImageError("LUKS key slot %d: key material at 0x%x (%d bytes) lies past the end of "
                                        "the file (%d bytes)" % (slot.index, offset, material_read, file_size), path)
            slot_key = hashlib.pbkdf2_hmac(h.hash_spec, passphrase, slot.salt, slot.iterations, h.key_bytes)
            material = self._file.pread_exact(offset, material_read, "LUKS key slot %d key material" % slot.index)
            try:
                split_key = SectorCipher(h.spec, slot_key).decrypt(0, material)
            except ValueError as exc:
                raise CorruptImageError("LUKS key slot %d: key material cannot be decrypted (%s)"
                                        % (slot.index, exc), path) from exc
            candidate = af_merge(split_key, h.key_bytes, STRIPES, h.hash_spec)
            digest = hashlib.pbkdf2_hmac(h.hash_spec, candidate, h.mk_digest_salt, h.mk_digest_iterations,
                                         DIGEST_SIZE)
            if hmac.compare_digest(digest, h.mk_digest):
                self._cipher = self._payload_cipher(candidate)
                return
        raise ImageError("Invalid password, cannot unlock any keyslot of the LUKS header (%d active)"
                         % len(active), path)

    def _payload_cipher(self, master_key):
        try:
            return SectorCipher(self.header.spec, master_key)
        except ValueError as exc:
            raise UnsupportedFeature("LUKS master key refused by the cipher %s: %s"
                                     % (self.header.spec.cipher_alg, exc), self.path) from exc

    def close(self):
        self._cipher = None
        self._close_file()
        super(LuksDriver, self).close()

    # ------------------------------------------------------------------ create
    @classmethod
    def create(cls, path, size, options=None, backing=None):
        options = dict(options or {})
        unknown = sorted(set(options) - set(CREATE_OPTIONS) - {"backing_file", "backing_fmt", "size"})
        if unknown:
            raise InvalidOptionError("invalid option(s) for luks images: %s (supported: %s)"
                                     % (", ".join(unknown), ", ".join(CREATE_OPTIONS)), path)
        if backing is not None or options.get("backing_file"):
            raise InvalidOptionError("luks images cannot have a backing file", path)
        if size is None:
            size = options.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidOptionError("invalid image size %r (expected a non-negative number of bytes)" % (size,),
                                     path)
        size = -(-size // SECTOR_SIZE) * SECTOR_SIZE
        if options.get("key-secret") is None:
            raise InvalidOptionError("Parameter 'key-secret' is required for cipher (the passphrase of the new "
                                     "LUKS image)", path)
        passphrase = _passphrase_bytes(options["key-secret"], path)
        preallocation = options.get("preallocation")
        if preallocation not in (None, False, "off"):
            raise InvalidOptionError("preallocation mode %r is not supported for luks (only off)"
                                     % (preallocation,), path)
        spec, hash_alg = cls._create_spec(options, path)
        iter_time = options.get("iter-time", DEFAULT_ITER_TIME)
        try:
            iter_time = int(iter_time)
        except (TypeError, ValueError) as exc:
            raise InvalidOptionError("option iter-time expects milliseconds, found %r" % (iter_time,), path) from exc
        if isinstance(options.get("iter-time"), bool) or not 1 <= iter_time <= 3600 * 1000:
            raise InvalidOptionError("option iter-time expects 1 to 3600000 milliseconds, found %r"
                                     % (options.get("iter-time"),), path)
        _require_cryptography(path)
        header, master_key_material = cls._new_header(spec, hash_alg, passphrase, iter_time)
        payload_bytes = header[1]
        image_file = ImageFile(path, create=True)
        try:
            image_file.pwrite(0, header[0])
            slot_offset, material = master_key_material
            image_file.pwrite(slot_offset, material)
            image_file.truncate(payload_bytes + size)
            image_file.flush()
        except BaseException:
            image_file.close()
            os.unlink(image_file.path)
            raise
        image_file.close()

    @classmethod
    def _create_spec(cls, options, path):
        cipher_alg = str(options.get("cipher-alg") or DEFAULT_CIPHER_ALG)
        mode = str(options.get("cipher-mode") or DEFAULT_CIPHER_MODE)
        ivgen_alg = str(options.get("ivgen-alg") or DEFAULT_IVGEN_ALG)
        ivgen_hash = options.get("ivgen-hash-alg")
        hash_alg = str(options.get("hash-alg") or DEFAULT_HASH_ALG)
        name, _sep, bits = cipher_alg.partition("-")
        if name != "aes" or bits not in ("128", "192", "256"):
            raise InvalidOptionError("option cipher-alg: %r is not supported (supported: aes-128, aes-192, aes-256)"
                                     % cipher_alg, path)
        if mode not in CIPHER_MODES:
            raise InvalidOptionError("option cipher-mode: %r is not supported (supported: %s)"
                                     % (mode, ", ".join(CIPHER_MODES)), path)
        if hash_alg not in HASH_ALGS:
            raise InvalidOptionError("option hash-alg: %r is not supported (supported: %s)"
                                     % (hash_alg, ", ".join(HASH_ALGS)), path)
        if ivgen_alg not in IVGEN_ALGS:
            raise InvalidOptionError("option ivgen-alg: %r is not supported (supported: %s)"
                                     % (ivgen_alg, ", ".join(IVGEN_ALGS)), path)
        if ivgen_alg == "essiv":
            ivgen_hash = str(ivgen_hash or DEFAULT_HASH_ALG)
            if ivgen_hash not in HASH_ALGS:
                raise InvalidOptionError("option ivgen-hash-alg: %r is not supported (supported: %s)"
                                         % (ivgen_hash, ", ".join(HASH_ALGS)), path)
            cipher_mode = "%s-essiv:%s" % (mode, ivgen_hash)
        elif ivgen_hash:
            raise InvalidOptionError("option ivgen-hash-alg is only used with ivgen-alg=essiv", path)
        else:
            cipher_mode = "%s-%s" % (mode, ivgen_alg)
        key_bytes = int(bits) // 8 * (2 if mode == "xts" else 1)
        if key_bytes * STRIPES % SECTOR_SIZE:
            # QEMU cannot decrypt key material that is not whole sectors (it aborts).
            raise InvalidOptionError("option cipher-alg: %s in %s mode gives key material of %d bytes, not whole "
                                     "sectors, which QEMU cannot read" % (cipher_alg, mode, key_bytes * STRIPES), path)
        spec = CipherSpec(name, cipher_mode, key_bytes)
        try:
            spec.validate(path)
        except UnsupportedFeature as exc:
            raise InvalidOptionError(str(exc), path) from exc
        return spec, hash_alg

    @staticmethod
    def _iterations_for(hash_alg, key_bytes, iter_time):
        """PBKDF2 iterations taking about ``iter_time`` ms of CPU time (as QEMU measures), at least 1000."""
        trial = 20000
        started = time.thread_time()
        hashlib.pbkdf2_hmac(hash_alg, b"passphrase", bytes(SALT_SIZE), trial, key_bytes)
        elapsed = max(time.thread_time() - started, 1e-4)
        return max(MIN_ITERATIONS, min(MAX_ITERATIONS, int(trial * iter_time / 1000.0 / elapsed)))

    @classmethod
    def _new_header(cls, spec, hash_alg, passphrase, iter_time):
        """((header bytes, payload offset in bytes), (slot 0 key material offset, encrypted key material))."""
        key_bytes = spec.key_bytes
        while True:
            master_key = os.urandom(key_bytes)
            # XTS refuses keys whose two halves are equal.
            if spec.mode != "xts" or master_key[:key_bytes // 2] != master_key[key_bytes // 2:]:
                break
        iterations = cls._iterations_for(hash_alg, key_bytes, iter_time)
        mk_iterations = max(MIN_ITERATIONS, iterations // 8)
        mk_salt = os.urandom(SALT_SIZE)
        mk_digest = hashlib.pbkdf2_hmac(hash_alg, master_key, mk_salt, mk_iterations, DIGEST_SIZE)
        split_sectors = -(-key_bytes * STRIPES // SECTOR_SIZE)
        stride = -(-split_sectors // ALIGN_SECTORS) * ALIGN_SECTORS
        first = -(-HEADER_SIZE // (ALIGN_SECTORS * SECTOR_SIZE)) * ALIGN_SECTORS
        payload_offset = -(-(first + (NUM_KEY_SLOTS - 1) * stride + split_sectors) // ALIGN_SECTORS) * ALIGN_SECTORS
        header = PHDR.pack(LUKS_MAGIC, LUKS_VERSION, spec.cipher_name.encode("ascii"),
                           spec.cipher_mode.encode("ascii"),
                           hash_alg.encode("ascii"), payload_offset, key_bytes, mk_digest, mk_salt, mk_iterations,
                           str(uuidlib.uuid4()).encode("ascii"))
        slot_salt = os.urandom(SALT_SIZE)
        for index in range(NUM_KEY_SLOTS):
            if index == 0:
                header += KEY_SLOT.pack(KEY_SLOT_ACTIVE, iterations, slot_salt, first, STRIPES)
            else:
                header += KEY_SLOT.pack(KEY_SLOT_INACTIVE, 0, bytes(SALT_SIZE), first + index * stride, STRIPES)
        slot_key = hashlib.pbkdf2_hmac(hash_alg, passphrase, slot_salt, iterations, key_bytes)
        split_key = af_split(master_key, STRIPES, hash_alg)
        padded = split_key + bytes(-len(split_key) % AES_BLOCK)
        material = SectorCipher(spec, slot_key).encrypt(0, padded)
        return (header, payload_offset * SECTOR_SIZE), (first * SECTOR_SIZE, material)

    # -------------------------------------------------------------------- data
    def _require_key(self, what):
        if self._cipher is None:
            _require_cryptography(self.path)
            raise InvalidOptionError("a passphrase (key_secret) is required to %s the encrypted LUKS payload"
                                     % what, self.path)

    def block_status(self, offset, length):
        if length <= 0:
            return []
        self._check_range(offset, length, "block status")
        # As QEMU: every sector is data; the host bytes are ciphertext, so no host offset.
        return [Extent(offset, length, DATA, None)]

    def _read_sectors(self, first_sector, count):
        """Plaintext of ``count`` whole sectors from ``first_sector`` (guest sector numbers)."""
        host = self.header.payload_bytes + first_sector * SECTOR_SIZE
        length = count * SECTOR_SIZE
        data = self._file.pread(host, length)
        if len(data) < length:
            raise CorruptImageError("LUKS payload: sectors %d+%d at host offset %d lie past the end of the file"
                                    % (first_sector, count, host), self.path)
        return self._cipher.decrypt(first_sector, data)

    def read(self, offset, length):
        self._check_range(offset, length, "read")
        if length == 0:
            return b""
        self._require_key("read")
        parts = []
        position = offset
        end = offset + length
        while position < end:
            first = position // SECTOR_SIZE
            chunk_end = min(end, (first * SECTOR_SIZE) + MAX_IO)
            last = -(-chunk_end // SECTOR_SIZE)
            plain = self._read_sectors(first, last - first)
            skip = position - first * SECTOR_SIZE
            parts.append(plain[skip:skip + chunk_end - position])
            position = chunk_end
        return b"".join(parts)

    def _write_sectors(self, first_sector, plain):
        self._file.pwrite(self.header.payload_bytes + first_sector * SECTOR_SIZE,
                          self._cipher.encrypt(first_sector, plain))

    def write(self, offset, data):
        self._check_writable()
        data = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        length = len(data)
        self._check_range(offset, length, "write")
        if length == 0:
            return
        self._require_key("write")
        position = 0
        while position < length:
            guest = offset + position
            first = guest // SECTOR_SIZE
            chunk = min(length - position, first * SECTOR_SIZE + MAX_IO - guest)
            last = -(-(guest + chunk) // SECTOR_SIZE)
            head = guest - first * SECTOR_SIZE
            tail = last * SECTOR_SIZE - (guest + chunk)
            piece = data[position:position + chunk]
            if head or tail:
                # Partial sectors: read, patch and re-encrypt them whole.
                count = last - first
                plain = bytearray(count * SECTOR_SIZE)
                if head:
                    plain[:SECTOR_SIZE] = self._read_sectors(first, 1)
                if tail and (count > 1 or not head):
                    plain[-SECTOR_SIZE:] = self._read_sectors(last - 1, 1)
                plain[head:head + chunk] = piece
                self._write_sectors(first, bytes(plain))
            else:
                self._write_sectors(first, bytes(piece))
            position += chunk

    def write_zeroes(self, offset, length, may_unmap=False):
        """Zeroes must be encrypted like any data (the file's own zeroes decrypt to noise)."""
        self._check_writable()
        self._check_range(offset, length, "write_zeroes")
        self._require_key("write")
        position = offset
        end = offset + length
        while position < end:
            chunk = min(end - position, MAX_IO - position % SECTOR_SIZE)
            self.write(position, bytes(chunk))
            position += chunk

    def resize(self, new_size, preallocation=None):
        """Truncate or extend the payload (as QEMU); a grown range gets
        encrypted zeroes, so that it reads as zeroes (needs the passphrase)."""
        self._check_writable()
        if preallocation not in (None, False, "off"):
            raise InvalidOptionError("preallocation mode %r is not supported for luks resize (only off)"
                                     % (preallocation,), self.path)
        if not isinstance(new_size, int) or new_size < 0 or new_size % SECTOR_SIZE:
            raise InvalidOptionError("new size %r is not a multiple of %d bytes" % (new_size, SECTOR_SIZE),
                                     self.path)
        old_size = self.virtual_size
        if new_size > old_size:
            self._require_key("grow")
        self._file.truncate(self.header.payload_bytes + new_size)
        self.virtual_size = new_size
        if new_size > old_size:
            self.write_zeroes(old_size, new_size - old_size)

    def flush(self):
        if self._file is not None and not self.readonly:
            self._file.flush()

    # ----------------------------------------------------------------- queries
    def info(self):
        return {
            "format-specific": {"type": "luks", "data": self.header.format_specific()},
            "encrypted": True,
        }
