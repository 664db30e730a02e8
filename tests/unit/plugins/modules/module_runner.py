# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's main() in the test process as Ansible would run it on a host: one run, one result."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

import pytest

from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args


def run_module(module, capsys, check_mode=False, **args):
    """The result dict ``module.main()`` prints for ``args`` (diff mode on; ``_ansible_check_mode`` in ``args``
    wins over ``check_mode``)."""
    # Each run is a process of its own on a real host: no warning carried over from an earlier run.
    warnings._global_warnings.clear()  # pylint: disable=protected-access
    args.setdefault('_ansible_check_mode', check_mode)
    args.setdefault('_ansible_diff', True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


def warnings_of(result):
    """The texts of a result's warnings (ansible-core 2.19 returns them as structured events)."""
    return [warning['event']['msg'] if isinstance(warning, dict) else warning for warning in result.get('warnings', [])]
