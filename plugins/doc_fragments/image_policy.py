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
      - By default a name an image records is followed when its real path (symbolic links resolved) lies in the image's
        own directory (or below it), whether the name is relative or absolute; this is the layout libvirt makes, for
        example an external snapshot recording its backing file by absolute name in the same directory.
      - By default everything that leaves that directory is refused, that is absolute names elsewhere, names
        containing C(..), symbolic links leading out of the directory, protocol prefixes such as C(json:), and device
        nodes.
        Absolute names in the image's own directory are the only names a default policy accepts that earlier
        versions refused.
      - Files the task itself names (for example O(ignore:path), O(ignore:src) or O(ignore:backing_file), where the
        module has them) are the operator's word and trusted for that task; an image naming one of them may open it
        wherever it is, without this option. Nothing beside those exact files is trusted that way.
      - Names inside one of these directories, absolute or with C(..), are accepted too.
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
