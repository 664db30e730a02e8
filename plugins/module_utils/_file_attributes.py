# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""File attributes (``mode``, ``owner``, ``group`` of the ansible.builtin.files fragment) of the files a module
writes: checked before anything changes, and set so that a failure comes back as an exception the module can
report together with what it had already done.

Private to this collection (the leading underscore): no compatibility promise.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import grp
import os
import pwd
import re
import stat

from ansible.module_utils.basic import AnsibleModule

MAX_MODE = 0o7777
# What _symbolic_mode_to_octal needs of the file's status to check a symbolic mode: a regular file of mode 0644.
_PROBE_STAT = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, 0))


class FileAttributeError(Exception):
    """A file attribute the task asks for that cannot be applied; the message says which and why."""


def int_mode_warning(mode):
    """The warning for a ``mode`` given as a number (YAML reads an unquoted ``711`` as the decimal 711), or None.

    The number is applied as it is, as ansible.builtin.file applies it; the warning says what it means in octal."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= MAX_MODE:
        return None
    digits = str(mode)
    meant = (" If you meant %s, quote it ('%s')." % (digits.zfill(4), digits.zfill(4))
             if len(digits) >= 3 and set(digits) <= set('01234567') else '')
    return ('mode is the number %d (an unquoted mode without a leading zero is read as a decimal number), which is '
            'applied as %s.%s Quote modes (for example \'0644\') so that they are read as octal.'
            % (mode, '%05o' % mode if mode > 0o777 else '%04o' % mode, meant))


def check_mode_syntax(mode):
    """Raise FileAttributeError unless ``mode`` is an octal number, an octal string or a symbolic mode."""
    if mode is None:
        return
    if isinstance(mode, bool):
        raise FileAttributeError('mode: expected an octal mode such as \'0644\' or a symbolic mode such as '
                                 '\'u=rw,g=r\', found %r' % (mode,))
    if isinstance(mode, int):
        number = mode
    else:
        try:
            number = int(str(mode), 8)
        except ValueError:
            try:
                AnsibleModule._symbolic_mode_to_octal(_PROBE_STAT, str(mode))  # pylint: disable=protected-access
            except Exception as exc:  # pylint: disable=broad-except
                raise FileAttributeError('mode: expected an octal mode such as \'0644\' or a symbolic mode such as '
                                         '\'u=rw,g=r\', found %r (%s)' % (mode, exc))
            return
    if not 0 <= number <= MAX_MODE:
        raise FileAttributeError('mode: expected permission bits between 0000 and 7777, found %r (%s in octal)'
                                 % (mode, '%o' % number if number >= 0 else number))


def _known(name, lookup):
    if isinstance(name, int) or str(name).isdigit():
        return True
    try:
        lookup(str(name))
    except KeyError:
        return False
    return True


def check_file_attributes(params, check_mode):
    """Check ``mode``, ``owner``, ``group`` and the syntax of ``attributes`` before anything is changed; returns
    warnings.

    A bad mode fails. An unknown owner or group fails a real run and is a warning in check mode, as with
    ansible.builtin.file (an earlier task of the play, not run in check mode, may create it)."""
    warnings = []
    check_mode_syntax(params.get('mode'))
    attributes = params.get('attributes')
    if attributes is not None and not re.match(r'\A[-+=]?[A-Za-z]*\Z', str(attributes)):
        # checked before anything is written: chattr would refuse it only after the image or seed was
        raise FileAttributeError("attributes: expected chattr flags such as '+i', '-a' or '=ae', found %r"
                                 % (attributes,))
    warning = int_mode_warning(params.get('mode'))
    if warning:
        warnings.append(warning)
    for option, lookup, what in (('owner', pwd.getpwnam, 'user'), ('group', grp.getgrnam, 'group')):
        name = params.get(option)
        if name is None or _known(name, lookup):
            continue
        message = '%s: no %s named %r on this host' % (option, what, name)
        if not check_mode:
            raise FileAttributeError(message)
        warnings.append('%s; check mode goes on as if an earlier task created it' % message)
    return warnings


def unknown_in_check_mode(params, check_mode):
    """Names of the options (owner, group) check mode cannot apply because they do not exist yet."""
    if not check_mode:
        return []
    return [option for option, lookup in (('owner', pwd.getpwnam), ('group', grp.getgrnam))
            if params.get(option) is not None and not _known(params[option], lookup)]


def set_file_attributes(module, file_args, changed, diff=None):
    """module.set_fs_attributes_if_different, with its failures raised as FileAttributeError instead of ending
    the module, so that the caller can say what the task had done before."""
    original = module.fail_json

    def raise_failure(msg='', **kwargs):
        detail = kwargs.get('details') or (str(kwargs.get('exception') or '').strip().splitlines() or [''])[-1]
        raise FileAttributeError('%s: %s%s' % (kwargs.get('path') or file_args.get('path'), msg,
                                               ' (%s)' % detail if detail else ''))

    module.fail_json = raise_failure
    try:
        return module.set_fs_attributes_if_different(file_args, changed, diff=diff)
    finally:
        module.fail_json = original
