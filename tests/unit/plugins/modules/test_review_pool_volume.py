# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image with pool + volume when a step fails after another succeeded: what was done is reported (changed and
the actions), and a file-backed pool is refreshed so that libvirt sees the file as the failed task left it."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os

import pytest

import components
from qemu_tools import run

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _disk_image, _pool_volume
from ansible_collections.kvm.storage.plugins.module_utils._pool_volume import volume_xml
from ansible_collections.kvm.storage.plugins.modules import disk_image

try:
    import libvirt
except ImportError:  # the fixtures that need it say so (components.missing)
    libvirt = None

MIB = 1 << 20
PREFIX = 'kvmstorage_ut_review_'


def run_module(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            disk_image.main()
    return json.loads(capsys.readouterr().out)


def _ignore(context, error):
    """Keep libvirt from printing the errors the tests expect."""


def _destroy(pool):
    try:
        if pool.isActive():
            pool.destroy()
        if pool.isPersistent():
            pool.undefine()
    except libvirt.libvirtError:
        pass


@pytest.fixture
def test_driver_pool():
    """A logical pool of libvirt's test driver (a volume-API pool; the test driver has no upload)."""
    if libvirt is None:
        components.missing('libvirt-python')
    libvirt.registerErrorHandler(_ignore, None)
    conn = libvirt.open('test:///default')
    name = PREFIX + 'lv'
    pool = conn.storagePoolCreateXML("<pool type='logical'><name>%s</name><source><name>%s</name></source>"
                                     "<target><path>/dev/%s</path></target></pool>" % (name, name, name), 0)
    yield name, pool
    _destroy(pool)
    conn.close()


@pytest.fixture
def dir_pool(tmp_path):
    if libvirt is None:
        components.missing('libvirt-python')
    libvirt.registerErrorHandler(_ignore, None)
    try:
        conn = libvirt.open('qemu:///system')
    except libvirt.libvirtError as exc:
        components.missing('libvirtd', exc)
    directory = tmp_path / 'pool'
    directory.mkdir()
    name = '%sdir_%d' % (PREFIX, os.getpid())
    pool = conn.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, directory), 0)
    try:
        pool.create(0)
        yield name, directory, pool
    finally:
        _destroy(pool)
        conn.close()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / 'source.qcow2'
    run('qemu-img', 'create', '-q', '-f', 'qcow2', str(path), '3M')
    return path


def test_a_volume_deleted_before_a_failed_upload_is_reported_as_changed(capsys, test_driver_pool, source):
    name, pool = test_driver_pool
    pool.createXML(volume_xml('small', MIB), 0)
    result = run_module(capsys, pool=name, volume='small', src=str(source), force=True, uri='test:///default')
    assert result['failed'] and result['msg'].startswith('cannot upload %s into volume ' % source), result
    # the old volume is gone (force discarded it), the new one was removed again: the deletion stays done
    assert pool.listAllVolumes() == []
    assert result['changed'] and result['actions'] == ['delete volume %s/small (%d bytes, too small)' % (name, MIB)]
    assert 'done before the failure: delete volume %s/small' % name in result['msg']


def test_a_half_uploaded_volume_that_cannot_be_removed_is_reported(capsys, test_driver_pool, source, monkeypatch):
    name, pool = test_driver_pool
    real_delete = libvirt.virStorageVol.delete

    def refuse(volume, flags=0):
        raise libvirt.libvirtError('volume is busy (a refusal made for this test)')

    monkeypatch.setattr(libvirt.virStorageVol, 'delete', refuse)
    result = run_module(capsys, pool=name, volume='imported', src=str(source), uri='test:///default')
    monkeypatch.setattr(libvirt.virStorageVol, 'delete', real_delete)
    assert result['failed'] and result['msg'].startswith('cannot upload %s into volume ' % source), result
    assert [volume.name() for volume in pool.listAllVolumes()] == ['imported']
    assert result['changed'] and result['actions'] == ['create volume %s/imported of %d bytes' % (name, 3 * MIB)]
    assert 'cannot remove the volume it created' in result['msg'] and 'volume is busy' in result['msg']


def test_a_file_pool_is_refreshed_after_a_failed_step_that_followed_a_change(capsys, dir_pool, monkeypatch):
    name, directory, pool = dir_pool
    path = str(directory / 'vm.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', path, '1M')
    pool.refresh(0)
    refreshed = []
    real_refresh = _pool_volume.refresh_pool

    def spy(target):
        refreshed.append(target.name)
        real_refresh(target)

    def fail(*args, **kwargs):
        raise _disk_image.ImageError('simulated failure', path)

    monkeypatch.setattr(_pool_volume, 'refresh_pool', spy)
    monkeypatch.setattr(_disk_image, 'snapshot_create', fail)
    result = run_module(capsys, pool=name, volume='vm.qcow2', format='qcow2', size='2M', snapshots=[{'name': 'one'}])
    assert result['failed'] and 'simulated failure' in result['msg'] and result['changed'], result
    # libvirt was told that the file changed (its pool's numbers are reread), as after a task that succeeded
    assert refreshed == [name]
    assert pool.storageVolLookupByName('vm.qcow2').info()[1] == 2 * MIB
    # a failure that changed nothing needs no refresh
    result = run_module(capsys, pool=name, volume='vm.qcow2', format='qcow2', snapshots=[{'name': 'one'}])
    assert result['failed'] and not result.get('changed') and refreshed == [name]


def test_a_failure_to_read_a_new_volume_back_reports_its_creation(capsys, test_driver_pool, monkeypatch):
    name, pool = test_driver_pool

    def unreadable(target, volume):
        raise _pool_volume.LibvirtModuleError('cannot read volume (a failure made for this test)')

    monkeypatch.setattr(_pool_volume, 'describe_volume', unreadable)
    result = run_module(capsys, pool=name, volume='data', size='2M', uri='test:///default')
    assert result['failed'] and 'a failure made for this test' in result['msg'], result
    assert result['changed'] and result['actions'] == ['create volume %s/data of %d bytes' % (name, 2 * MIB)]
    assert [volume.name() for volume in pool.listAllVolumes()] == ['data']


def test_a_failed_refresh_after_a_file_pool_change_reports_the_change(capsys, dir_pool, monkeypatch):
    name, directory, pool = dir_pool

    def refuse(target):
        raise _pool_volume.LibvirtModuleError('cannot refresh storage pool (a refusal made for this test)')

    monkeypatch.setattr(_pool_volume, 'refresh_pool', refuse)
    result = run_module(capsys, pool=name, volume='new.raw', format='raw', size='1M')
    assert result['failed'] and 'a refusal made for this test' in result['msg'], result
    assert result['changed'] and result['actions'] == ['create raw image %s of %d bytes' % (directory / 'new.raw', MIB)]
    assert (directory / 'new.raw').exists()
