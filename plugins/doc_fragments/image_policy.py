# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """Options of the image path policy shared by the disk image modules."""

    # Path policy for files named inside images (backing files, data files).
    DOCUMENTATION = r'''
options:
  allow_dirs:
    description:
      - More directories whose files may be opened when an image names them (a backing file, a qcow2 external data file).
      - By default only relative names resolved in the image's own directory are followed; absolute names, names
        containing C(..), protocol prefixes such as C(json:) and device nodes are refused.
      - Absolute names inside one of these directories are accepted too.
      - Images are untrusted input; list only directories that hold images you trust.
    type: list
    elements: path
    default: []
'''

    # Reading images that another process (a running guest) holds open for writing.
    FORCE_SHARE = r'''
options:
  force_share:
    description:
      - Read images even when another process, such as a running guest, holds a write lock on them
        (like C(qemu-img info -U)).
      - The result may then be inconsistent, because the image can change while it is read.
    type: bool
    default: false
'''
