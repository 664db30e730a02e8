# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a guest should see in an image: the sha256 of its guest-visible bytes, read twice, independently.

usage: python image_oracle.py IMAGE SCRATCH_DIR   (ansible_collections.kvm.storage importable from PYTHONPATH)

Reads IMAGE with the collection's image library, and with qemu-img convert -O raw into a temporary file in
SCRATCH_DIR; prints {"library": ..., "qemu_img": ..., "size": ...} as JSON. Exits 1 when they disagree.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import subprocess
import sys
import tempfile

from ansible_collections.kvm.storage.plugins.module_utils.diskimage import open_image

CHUNK = 1 << 20


def library_sha256(path):
    digest = hashlib.sha256()
    # a backing file named by absolute path is allowed in the image's own directory (external snapshot overlays)
    with open_image(path, force_share=True, allow_dirs=[os.path.dirname(os.path.abspath(path))]) as image:
        size = image.virtual_size
        offset = 0
        while offset < size:
            length = min(CHUNK, size - offset)
            digest.update(image.read(offset, length))
            offset += length
    return digest.hexdigest(), size


def qemu_img_sha256(path, scratch):
    handle, raw = tempfile.mkstemp(prefix="oracle.", suffix=".raw", dir=scratch)
    os.close(handle)
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", path, raw], check=True)
        digest = hashlib.sha256()
        with open(raw, "rb") as stream:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.unlink(raw)


def main(argv):
    library, size = library_sha256(argv[1])
    qemu_img = qemu_img_sha256(argv[1], argv[2])
    print(json.dumps({"library": library, "qemu_img": qemu_img, "size": size}))
    return 0 if library == qemu_img else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
