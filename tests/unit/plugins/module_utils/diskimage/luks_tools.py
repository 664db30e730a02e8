# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu-img/qemu-io on LUKS images: the passphrase given as qemu takes it,
a secret object named by key-secret (--object secret + --image-opts)."""

import hashlib

import qemu_tools

PASSPHRASE = "correct horse battery staple"
# Fast key derivation for tests (milliseconds of PBKDF2, qemu-img's iter-time).
FAST = "iter-time=10"


def secret_object(passphrase=PASSPHRASE):
    return "secret,id=sec0,data=%s" % passphrase.replace(",", ",,")


def image_opts(path):
    return "driver=luks,key-secret=sec0,file.filename=%s" % str(path).replace(",", ",,")


def qemu_img_create(path, size, options="", passphrase=PASSPHRASE):
    opts = "key-secret=sec0," + FAST + ("," + options if options else "")
    return qemu_tools.qemu_img("create", "-f", "luks", "--object", secret_object(passphrase), "-o", opts,
                               path, str(size))


def qemu_io(path, *commands, passphrase=PASSPHRASE):
    args = ["qemu-io", "--object", secret_object(passphrase), "--image-opts"]
    for command in commands:
        args += ["-c", command]
    args.append(image_opts(path))
    out = qemu_tools.run(*args)
    if "failed" in out.lower() or "error" in out.lower():
        raise AssertionError("qemu-io reported an error: %s" % out)
    return out


def qemu_raw(path, out, passphrase=PASSPHRASE):
    """qemu-img convert of the LUKS image to raw file ``out``."""
    qemu_tools.qemu_img("convert", "--object", secret_object(passphrase), "--image-opts", image_opts(path),
                        "-O", "raw", out)


def qemu_digest(path, tmp_path, passphrase=PASSPHRASE):
    """sha256 of the guest view as qemu-img convert -O raw decrypts it."""
    out = tmp_path / ("oracle-%s.raw" % hashlib.sha1(str(path).encode()).hexdigest()[:8])
    qemu_raw(path, out, passphrase)
    digest = qemu_tools.file_digest(out)
    out.unlink()
    return digest


def qemu_compare(path, raw, passphrase=PASSPHRASE):
    """qemu-img compare of the LUKS image with raw file ``raw`` (fails the test when they differ)."""
    qemu_tools.qemu_img("compare", "--object", secret_object(passphrase), "--image-opts", image_opts(path),
                        "driver=raw,file.filename=%s" % str(raw).replace(",", ",,"))
