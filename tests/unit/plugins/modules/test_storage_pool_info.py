# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""storage_pool_info: one pool or all of them, as libvirtd (qemu:///system) reports them; never a change."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import subprocess
import uuid as uuid_module

import pytest

import components

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _libvirt
from ansible_collections.kvm.storage.plugins.modules import storage_pool_info

URI = 'qemu:///system'


def virsh(*args, check=True):
    return subprocess.run(('virsh', '-c', URI) + args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


def run_module(capsys, **args):
    args.update(_ansible_check_mode=False)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            storage_pool_info.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def pools(tmp_path):
    """An active and an inactive dir pool, made with virsh."""
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    tag = uuid_module.uuid4().hex[:8]
    names = ['kvmstorage_test_unit_info_a_%s' % tag, 'kvmstorage_test_unit_info_b_%s' % tag]
    for name in names:
        (tmp_path / name).mkdir()
        virsh('pool-define-as', name, 'dir', '--target', str(tmp_path / name))
    (tmp_path / names[0] / 'disk.img').write_bytes(b'\0' * 4096)
    virsh('pool-start', names[0])
    yield names
    for name in names:
        virsh('pool-destroy', name, check=False)
        virsh('pool-undefine', name, check=False)


def test_one_pool_with_its_state_volumes_and_definition(capsys, tmp_path, pools):
    result = run_module(capsys, name=pools[0])
    assert result['changed'] is False
    assert len(result['pools']) == 1
    pool = result['pools'][0]
    uuid = virsh('pool-uuid', pools[0]).stdout.strip()
    assert (pool['name'], pool['uuid'], pool['type'], pool['state']) == (pools[0], uuid, 'dir', 'active')
    assert (pool['persistent'], pool['autostart']) == (True, False)
    assert pool['target'] == str(tmp_path / pools[0])
    assert pool['volumes'] == ['disk.img']
    assert pool['capacity'] >= pool['available'] > 0
    assert "<name>%s</name>" % pools[0] in pool['xml']


def test_all_pools_sorted_by_name(capsys, pools):
    listed = [pool for pool in run_module(capsys)['pools'] if pool['name'] in pools]
    assert [pool['name'] for pool in listed] == sorted(pools)
    assert [pool['state'] for pool in listed] == ['active', 'inactive']
    assert listed[1]['volumes'] == []


def test_an_unknown_pool_is_an_empty_list(capsys, pools):
    assert run_module(capsys, name='kvmstorage_test_unit_no_such_pool')['pools'] == []
