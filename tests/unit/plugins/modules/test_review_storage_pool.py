# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""storage_pool when a step fails after others: nothing done is left unreported, and the rollback never claims to
have undone what it cannot undo (a filesystem an fs pool's build made)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess
import uuid as uuid_module

import pytest

import components

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _libvirt, _storage_pool
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import LibvirtModuleError
from ansible_collections.kvm.storage.plugins.module_utils._storage_pool import (
    StoragePoolRequest,
    apply_plan,
    plan_storage_pool,
    storage_pool_argument_spec,
)
from ansible_collections.kvm.storage.plugins.modules import storage_pool

URI = 'qemu:///system'


def params(**values):
    defaults = dict((name, spec.get('default')) for name, spec in storage_pool_argument_spec().items())
    defaults.update(values)
    return defaults


def virsh(*args, check=True):
    return subprocess.run(('virsh', '-c', URI) + args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


@pytest.fixture
def pool_name():
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    name = 'kvmstorage_ut_review_%s' % uuid_module.uuid4().hex[:8]
    yield name
    virsh('pool-destroy', name, check=False)
    virsh('pool-undefine', name, check=False)


def run_module(capsys, **args):
    args.update(_ansible_check_mode=False, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            storage_pool.main()
    return json.loads(capsys.readouterr().out)


class RefreshFails(object):
    """The real pool, except that libvirt refuses to refresh it."""

    def __init__(self, pool):
        self.pool = pool

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def refresh(self, flags):
        _libvirt.libvirt.virResetLastError()
        raise _libvirt.libvirt.libvirtError('cannot refresh (a refusal made for this test)')


def test_permissions_set_before_a_failed_refresh_are_set_back(tmp_path, capsys, pool_name, monkeypatch):
    directory = tmp_path / 'pool'
    directory.mkdir(mode=0o755)
    os.chmod(str(directory), 0o755)
    args = dict(name=pool_name, type='dir', target=str(directory), state='active')
    assert not run_module(capsys, **args).get('failed')
    real_lookup = _storage_pool.lookup_pool
    monkeypatch.setattr(_storage_pool, 'lookup_pool', lambda conn, name: RefreshFails(real_lookup(conn, name)))
    result = run_module(capsys, mode='0700', **args)
    assert result['failed'] and result['msg'].startswith("cannot refresh storage pool '%s'" % pool_name), result
    # the directory is as it was: the mode set before the refresh failed is set back, and said so
    assert oct(os.stat(str(directory)).st_mode & 0o7777) == '0o755'
    assert 'undone: set the permissions of %s back' % directory in result['msg']
    assert not result['changed'] and result['actions'] == []


class BuildingPool(object):
    """An fs pool whose build creates its target directory (and, as libvirt does with NO_OVERWRITE, a filesystem
    on its device when it has none) and whose start then fails."""

    def __init__(self, target):
        self.target = target
        self.calls = []

    def XMLDesc(self, flags):
        return ("<pool type='fs'><name>p</name><source><device path='/dev/vdz'/></source>"
                "<target><path>%s</path></target></pool>" % self.target)

    def build(self, flags):
        self.calls.append('build')
        os.mkdir(self.target)

    def create(self, flags):
        self.calls.append('create')
        _libvirt.libvirt.virResetLastError()
        raise _libvirt.libvirt.libvirtError('cannot mount (a refusal made for this test)')

    def undefine(self):
        self.calls.append('undefine')


class DefiningConnection(object):
    def __init__(self, pool):
        self.pool = pool

    def storagePoolDefineXML(self, xml, flags):
        self.pool.calls.append('define')
        return self.pool


def test_an_fs_pool_build_is_reported_kept_when_a_later_step_fails(tmp_path):
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    target = str(tmp_path / 'mnt')
    request = StoragePoolRequest(params(name='p', type='fs', source=dict(device=['/dev/vdz']), target=target, build=True,
                                        state='active'))
    planned = plan_storage_pool(request, None, None, False)
    assert [action.kind for action in planned.actions] == ['define', 'build', 'start']
    pool = BuildingPool(target)
    with pytest.raises(LibvirtModuleError) as caught:
        apply_plan(DefiningConnection(pool), planned, request, None)
    assert pool.calls == ['define', 'build', 'create', 'undefine']
    # the filesystem the build may have made on /dev/vdz is not taken back: never "as it was before the task"
    build = planned.actions[1].description
    assert caught.value.result == dict(changed=True, actions=[build])
    assert 'as it was before the task' not in str(caught.value)
    assert 'done before the failure and left so: %s' % build in str(caught.value)


LOGICAL_POOL = ("<pool type='logical'><name>p</name><uuid>1fe18640-6d19-48a1-9d25-a3683dcdec29</uuid><source><name>vg</name>"
                "<device path='/dev/vdz'/></source><target><path>/dev/vg</path></target></pool>")


def test_the_storage_of_an_inactive_logical_pool_is_not_deleted_unseen():
    # libvirt removes the volume group with vgremove -f, every logical volume in it included, and lists those
    # volumes only for an active pool: an inactive one is refused before anything changes.
    from ansible_collections.kvm.storage.plugins.module_utils._storage_pool import PoolState
    state = PoolState('p', '1fe18640-6d19-48a1-9d25-a3683dcdec29', 'logical', False, True, False, LOGICAL_POOL, LOGICAL_POOL,
                      storage_exists=True, contents=None)
    with pytest.raises(LibvirtModuleError, match="its volumes cannot be listed while it is inactive.*start it first"):
        plan_storage_pool(StoragePoolRequest(params(name='p', state='deleted')), state)
    active = PoolState('p', '1fe18640-6d19-48a1-9d25-a3683dcdec29', 'logical', True, True, False, LOGICAL_POOL, LOGICAL_POOL,
                       storage_exists=True, contents=[])
    assert plan_storage_pool(StoragePoolRequest(params(name='p', state='deleted')), active).kinds() == ['stop', 'delete']


class UnreadableAfterStart(object):
    """The real pool, except that reading it fails once it was started (the connection dropped)."""

    started = []

    def __init__(self, pool):
        self.pool = pool

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def create(self, flags):
        self.pool.create(flags)
        self.started.append(True)

    def info(self):
        if self.started:
            _libvirt.libvirt.virResetLastError()
            raise _libvirt.libvirt.libvirtError('connection lost (a failure made for this test)')
        return self.pool.info()


def test_a_failure_to_read_the_pool_after_the_change_reports_the_change(tmp_path, capsys, pool_name, monkeypatch):
    directory = tmp_path / 'pool'
    directory.mkdir()
    args = dict(name=pool_name, type='dir', target=str(directory))
    assert not run_module(capsys, **args).get('failed')
    real_lookup = _storage_pool.lookup_pool
    monkeypatch.setattr(UnreadableAfterStart, 'started', [])
    monkeypatch.setattr(_storage_pool, 'lookup_pool', lambda conn, name: UnreadableAfterStart(real_lookup(conn, name)))
    result = run_module(capsys, state='active', **args)
    assert result['failed'] and 'connection lost' in result['msg'], result
    assert result['changed'] and result['actions'] == ["start storage pool '%s'" % pool_name]
    assert 'State:          running' in virsh('pool-info', pool_name).stdout


class StepPool(object):
    """A new dir pool whose build creates its target directory; ``fail`` names the step libvirt refuses."""

    def __init__(self, target, fail):
        self.target = target
        self.fail = fail
        self.calls = []

    def _step(self, name):
        self.calls.append(name)
        if name == self.fail:
            _libvirt.libvirt.virResetLastError()
            raise _libvirt.libvirt.libvirtError('%s refused (a refusal made for this test)' % name)

    def XMLDesc(self, flags):
        return "<pool type='dir'><name>p</name><target><path>%s</path></target></pool>" % self.target

    def build(self, flags):
        self._step('build')
        os.mkdir(self.target)

    def create(self, flags):
        self._step('create')

    def destroy(self):
        self._step('destroy')

    def setAutostart(self, value):
        self._step('autostart' if value else 'no autostart')

    def undefine(self):
        self._step('undefine')


@pytest.mark.parametrize('fail, calls, undone', [
    ('build', ['define', 'build', 'undefine'], ["undefine storage pool 'p'"]),
    ('create', ['define', 'build', 'create', 'undefine'],
     ['remove the directory {target} the build created', "undefine storage pool 'p'"]),
    ('autostart', ['define', 'build', 'create', 'autostart', 'destroy', 'undefine'],
     ["stop storage pool 'p'", 'remove the directory {target} the build created', "undefine storage pool 'p'"]),
])
def test_a_new_pool_failing_at_each_step_is_taken_back_to_nothing(tmp_path, fail, calls, undone):
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    target = str(tmp_path / 'pool')
    request = StoragePoolRequest(params(name='p', type='dir', target=target, build=True, state='active', autostart=True))
    planned = plan_storage_pool(request, None, None, False)
    assert [action.kind for action in planned.actions] == ['define', 'build', 'start', 'autostart']
    pool = StepPool(target, fail)
    connection = DefiningConnection(pool)
    with pytest.raises(LibvirtModuleError) as caught:
        apply_plan(connection, planned, request, None)
    assert pool.calls == calls
    assert caught.value.result == dict(changed=False, actions=[])
    assert str(caught.value).endswith("; undone: %s; storage pool 'p' is as it was before the task"
                                      % ', '.join(step.format(target=target) for step in undone))
    assert not os.path.exists(target)


def test_a_rollback_never_removes_a_target_directory_that_holds_data(tmp_path):
    # The build created the directory, then something wrote into it before the start failed: the directory stays,
    # and the build is reported as left done.
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    target = str(tmp_path / 'pool')
    request = StoragePoolRequest(params(name='p', type='dir', target=target, build=True, state='active'))
    planned = plan_storage_pool(request, None, None, False)
    pool = StepPool(target, 'create')
    real_build = pool.build

    def build_then_written(flags):
        real_build(flags)
        with open(os.path.join(target, 'data.img'), 'wb') as data:
            data.write(b'x')

    pool.build = build_then_written
    with pytest.raises(LibvirtModuleError) as caught:
        apply_plan(DefiningConnection(pool), planned, request, None)
    assert os.path.exists(os.path.join(target, 'data.img'))
    assert caught.value.result['changed'] and caught.value.result['actions'] == [planned.actions[1].description]
    assert 'cannot remove the directory %s the build created' % target in str(caught.value)
