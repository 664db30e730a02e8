# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """The libvirt connection option shared by the libvirt modules."""

    DOCUMENTATION = r'''
options:
  uri:
    description:
      - libvirt connection URI, for example V(qemu:///system), V(qemu:///session) or V(qemu+ssh://root@host/system).
      - The connection is opened from the managed host.
    type: str
    default: qemu:///system
requirements:
  - libvirt-python (the C(libvirt) Python module) on the managed host
'''
