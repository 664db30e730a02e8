# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the sha256 and the virtual size of what a guest sees in an image, read with the collection's image library.

usage: python library_sha256.py IMAGE   (ansible_collections.kvm.storage importable from PYTHONPATH)
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os.path
import sys

from ansible_collections.kvm.storage.plugins.module_utils.diskimage import open_image

CHUNK = 1 << 20


def guest_sha256(path):
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


def main(argv):
    digest, size = guest_sha256(argv[1])
    print("%s %d" % (digest, size))


if __name__ == "__main__":
    main(sys.argv)
