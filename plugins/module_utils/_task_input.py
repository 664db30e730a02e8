# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks of a task's input that every kvm.storage module makes before it acts.

Private to this collection (the leading underscore): no compatibility promise.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


def nul_byte_options(value, name=''):
    """The options (``a``, ``a.b``, ``a[0].b``) of ``value`` (the module's params) whose text holds a NUL byte."""
    if isinstance(value, str):
        return [name] if '\0' in value else []
    if isinstance(value, dict):
        found = []
        for key in sorted(value, key=str):
            if isinstance(key, str) and '\0' in key:
                found.append('%s%s' % (name + '.' if name else '', key.replace('\0', '\\0')))
            found.extend(nul_byte_options(value[key], '%s.%s' % (name, key) if name else str(key)))
        return found
    if isinstance(value, (list, tuple)):
        found = []
        for index, item in enumerate(value):
            found.extend(nul_byte_options(item, '%s[%d]' % (name, index)))
        return found
    return []


def refuse_nul_bytes(module):
    """fail_json when a text of the task's input holds a NUL byte: no file name, libvirt name, volume group or
    document can, and the operating system would refuse it later with a traceback (ValueError)."""
    options = nul_byte_options(module.params)
    if options:
        module.fail_json(msg='%s: a NUL byte is not allowed in %s' % (
            ', '.join(options), 'this option' if len(options) == 1 else 'these options'))
