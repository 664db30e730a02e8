# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image with pool + volume.

- File-backed pools: a real dir pool of the real libvirtd (qemu:///system) in tmp_path.
- Volume API: the plan (pure), the libvirt test driver (test:///default: volumes created and deleted in memory,
  no upload), and a real disk pool on a loop device of the real libvirtd (libvirt runs parted) for uploads.
Every libvirt object is named with the prefix kvmstorage_it_dimg_ and removed by its fixture.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess

import pytest

import components
from qemu_tools import run

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _pool_volume
from ansible_collections.kvm.storage.plugins.module_utils._disk_image import DiskImageError
from ansible_collections.kvm.storage.plugins.module_utils._pool_volume import (
    VolumeRequest,
    plan_volume,
    volume_xml,
)
from ansible_collections.kvm.storage.plugins.modules import disk_image

try:
    import libvirt
except ImportError:  # the fixtures that need it say so (components.missing)
    libvirt = None

MIB = 1 << 20
PREFIX = 'kvmstorage_it_dimg_u'


def run_module(capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            disk_image.main()
    return json.loads(capsys.readouterr().out)


def four_passes(capsys, **args):
    """Check mode, real, idempotent check, idempotent real, all with diff: the four results."""
    results = []
    for check_mode in (True, False, True, False):
        results.append(run_module(capsys, _ansible_check_mode=check_mode, _ansible_diff=True, **args))
    for result in results:
        assert not result.get('failed'), result.get('msg')
    assert [result['changed'] for result in results] == [True, True, False, False]
    assert results[0]['actions'] == results[1]['actions'] and results[0]['diff'] == results[1]['diff']
    assert results[2]['actions'] == [] and results[3]['actions'] == []
    assert results[3]['diff']['before'] == results[3]['diff']['after']
    return results


def _ignore(context, error):
    """Keep libvirt from printing the errors the tests expect."""


@pytest.fixture
def system():
    if libvirt is None:
        components.missing('libvirt-python')
    libvirt.registerErrorHandler(_ignore, None)
    try:
        conn = libvirt.open('qemu:///system')
    except libvirt.libvirtError as exc:
        components.missing('libvirtd', exc)
    yield conn
    conn.close()


def _destroy(pool):
    try:
        if pool.isActive():
            pool.destroy()
        if pool.isPersistent():
            pool.undefine()
    except libvirt.libvirtError:
        pass


@pytest.fixture
def dir_pool(system, tmp_path):
    directory = tmp_path / 'pool'
    directory.mkdir()
    name = '%s_dir_%d' % (PREFIX, os.getpid())
    pool = system.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, directory), 0)
    try:
        pool.create(0)
        yield name, directory, pool
    finally:
        _destroy(pool)


@pytest.fixture
def disk_pool(system, tmp_path):
    """A GPT-labelled disk pool on a 48 MiB loop device (partitions scanned); yields (name, loop device, pool)."""
    backing = tmp_path / ('%s_disk.img' % PREFIX)
    with open(str(backing), 'wb') as image:
        # Not zeroes: what a volume is not explicitly given must not read as zeroes by chance.
        for dummy in range(48):
            image.write(b'\xff' * MIB)
    try:
        device = subprocess.run(['losetup', '-P', '-f', '--show', str(backing)], check=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        components.missing('loop device', exc)
    name = '%s_disk_%d' % (PREFIX, os.getpid())
    pool = None
    try:
        pool = system.storagePoolDefineXML(
            "<pool type='disk'><name>%s</name><source><device path='%s'/><format type='gpt'/></source>"
            "<target><path>/dev</path></target></pool>" % (name, device), 0)
        pool.build(libvirt.VIR_STORAGE_POOL_BUILD_OVERWRITE)
        pool.create(0)
        yield name, device, pool
    finally:
        if pool is not None:
            _destroy(pool)
        subprocess.run(['losetup', '-d', device], check=False)


@pytest.fixture
def test_driver_pool():
    """A logical pool of libvirt's test driver; the open connection keeps the in-memory state for the module."""
    if libvirt is None:
        components.missing('libvirt-python')
    libvirt.registerErrorHandler(_ignore, None)
    conn = libvirt.open('test:///default')
    name = '%s_lv' % PREFIX
    pool = conn.storagePoolCreateXML("<pool type='logical'><name>%s</name><source><name>%s</name></source>"
                                     "<target><path>/dev/%s</path></target></pool>" % (name, name, name), 0)
    yield name, pool
    _destroy(pool)
    conn.close()


@pytest.fixture
def source(tmp_path):
    """A 3 MiB qcow2 image with data at 0 (1 MiB) and at 2 MiB (512 KiB)."""
    path = tmp_path / 'source.qcow2'
    run('qemu-img', 'create', '-q', '-f', 'qcow2', str(path), '3M')
    run('qemu-io', '-c', 'write -q -P 0x5a 0 1M', '-c', 'write -q -P 0xa5 2M 512K', str(path))
    return path


# --------------------------------------------------------------------------- plan (pure)
def request(**params):
    params.setdefault('pool', 'vg')
    params.setdefault('volume', 'root')
    return VolumeRequest(params, 'a logical pool')


def described(capacity):
    return {'name': 'root', 'pool': 'vg', 'path': '/dev/vg/root', 'capacity': capacity}


def test_plan_creates_a_missing_volume_and_uploads_src():
    plan = plan_volume(request(src='/images/a.vmdk'), None, {'format': 'vmdk', 'virtual-size': 3 * MIB + 1})
    assert [action.kind for action in plan.actions] == ['create', 'upload']
    assert plan.actions[0].args['capacity'] == 3 * MIB + 512
    assert plan.before['state'] == 'absent' and plan.after == dict(plan.before, state='present', capacity=3 * MIB + 512)


def test_plan_keeps_a_volume_large_enough_without_comparing_content():
    plan = plan_volume(request(src='/images/a.vmdk'), described(4 * MIB), {'format': 'vmdk', 'virtual-size': 3 * MIB})
    assert plan.actions == [] and plan.before == plan.after


def test_plan_grows_a_small_volume_without_src():
    plan = plan_volume(request(size='8M'), described(4 * MIB))
    assert [(action.kind, action.args) for action in plan.actions] == [('resize', {'capacity': 8 * MIB})]
    assert plan.after['capacity'] == 8 * MIB


def test_plan_refuses_a_small_volume_with_src_unless_forced():
    src_info = {'format': 'qcow2', 'virtual-size': 8 * MIB}
    with pytest.raises(DiskImageError, match='force=true'):
        plan_volume(request(src='/images/a.qcow2'), described(4 * MIB), src_info)
    plan = plan_volume(request(src='/images/a.qcow2', force=True), described(4 * MIB), src_info)
    assert [action.kind for action in plan.actions] == ['delete', 'create', 'upload']


def test_plan_refuses_a_size_below_the_source():
    with pytest.raises(DiskImageError, match='smaller than the virtual size of src'):
        plan_volume(request(src='/images/a.qcow2', size='1M'), None, {'format': 'qcow2', 'virtual-size': 2 * MIB})


def test_plan_without_size_or_src_needs_an_existing_volume():
    assert plan_volume(request(), described(MIB)).actions == []
    with pytest.raises(DiskImageError, match='size is required'):
        plan_volume(request(), None)


def test_plan_absent():
    assert plan_volume(request(state='absent'), None).actions == []
    assert [action.kind for action in plan_volume(request(state='absent'), described(MIB)).actions] == ['delete']


@pytest.mark.parametrize('params, message', [
    (dict(size='1M', format='qcow2'), 'format must be raw'),
    (dict(size='1M', backing_file='base'), 'backing_file: not supported for volumes of a logical pool'),
    (dict(size='1M', options={'cluster_size': 65536}), 'options: not supported'),
    (dict(size='1M', mode='0600'), 'mode: not supported'),
    (dict(size='1M', shrink=True), 'shrink: not supported'),
    (dict(size='1M', src_format='raw'), r"missing parameter\(s\) required by 'src_format': src"),
    (dict(size='1M', volume='../etc'), 'one file name'),
])
def test_volume_api_requests_refused(params, message):
    with pytest.raises(DiskImageError, match=message):
        request(**params)


def test_volume_xml_names_capacity_and_allocation_only():
    assert volume_xml('a&b', 512) == "<volume><name>a&amp;b</name><capacity unit=\"bytes\">512</capacity></volume>"
    assert volume_xml('a', 512, 0).endswith('<capacity unit="bytes">512</capacity><allocation unit="bytes">0</allocation></volume>')


# --------------------------------------------------------------------------- libvirt test driver (volume API)
def test_test_driver_volume_created_and_deleted(capsys, test_driver_pool):
    name, pool = test_driver_pool
    args = dict(pool=name, volume='data', size='2M', uri='test:///default')
    results = four_passes(capsys, **args)
    assert results[1]['actions'] == ['create volume %s/data of %d bytes' % (name, 2 * MIB)]
    assert results[1]['path'] == '/dev/%s/data' % name
    assert pool.storageVolLookupByName('data').info()[1] == 2 * MIB
    assert results[3]['volume']['capacity'] == 2 * MIB
    results = four_passes(capsys, pool=name, volume='data', state='absent', uri='test:///default')
    assert results[1]['volume'] == {}
    assert [volume.name() for volume in pool.listAllVolumes()] == []


def test_test_driver_resize_refusal_is_a_clean_failure(capsys, test_driver_pool):
    name, pool = test_driver_pool
    pool.createXML(volume_xml('small', MIB), 0)
    result = run_module(capsys, pool=name, volume='small', size='2M', uri='test:///default')
    assert result['failed'] and result['msg'].startswith('cannot grow volume %s/small: ' % name)


def test_failed_upload_removes_the_volume_it_created(capsys, test_driver_pool, source):
    name, pool = test_driver_pool
    # The test driver has no virStorageVolUpload: the upload fails after the volume was created.
    result = run_module(capsys, pool=name, volume='imported', src=str(source), uri='test:///default')
    assert result['failed'] and result['msg'].startswith('cannot upload %s into volume ' % source)
    assert 'Traceback' not in result.get('exception', '')
    assert pool.listAllVolumes() == []


def test_local_connection_detection(system, monkeypatch):
    assert _pool_volume.is_local_connection(system, 'qemu:///system')
    assert _pool_volume.is_local_connection(system, 'qemu+ssh://root@localhost/system')
    # libvirtd runs here: its host name is ours.
    assert _pool_volume.is_local_connection(system, 'qemu+ssh://root@hv.example.com/system')
    monkeypatch.setattr(_pool_volume.socket, 'gethostname', lambda: 'kvmstorage-it-dimg-elsewhere')
    assert not _pool_volume.is_local_connection(system, 'qemu+ssh://root@hv.example.com/system')


# --------------------------------------------------------------------------- real libvirtd
def test_missing_and_inactive_pools_are_refused(capsys, system, dir_pool):
    result = run_module(capsys, pool='%s_missing' % PREFIX, volume='a.raw', format='raw', size='1M')
    assert result['failed'] and 'does not exist' in result['msg']
    name, directory, pool = dir_pool
    pool.destroy()
    result = run_module(capsys, pool=name, volume='a.raw', format='raw', size='1M')
    assert result['failed'] and 'is not active' in result['msg']
    assert list(directory.iterdir()) == []


def test_dir_pool_volume_created_converted_resized_and_listed(capsys, dir_pool, source):
    name, directory, pool = dir_pool
    results = four_passes(capsys, pool=name, volume='vm.qcow2', src=str(source), format='qcow2')
    path = str(directory / 'vm.qcow2')
    assert results[1]['path'] == path and results[1]['volume']['path'] == path
    assert results[1]['volume']['format'] == 'qcow2' and results[1]['volume']['capacity'] == 3 * MIB
    # The pool was refreshed: libvirt lists the new volume.
    assert pool.storageVolLookupByName('vm.qcow2').path() == path
    run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2', str(source), path)
    results = four_passes(capsys, pool=name, volume='vm.qcow2', src=str(source), format='qcow2', size='5M')
    assert pool.storageVolLookupByName('vm.qcow2').info()[1] == 5 * MIB
    four_passes(capsys, pool=name, volume='vm.qcow2', state='absent')
    assert [volume.name() for volume in pool.listAllVolumes()] == []
    assert list(directory.iterdir()) == []


def test_dir_pool_file_made_behind_libvirts_back_is_listed(capsys, dir_pool):
    name, directory, pool = dir_pool
    run('qemu-img', 'create', '-q', '-f', 'raw', str(directory / 'outside.raw'), '1M')
    result = run_module(capsys, pool=name, volume='outside.raw', format='raw', size='1M')
    assert not result['changed'] and result['volume']['capacity'] == MIB
    assert pool.storageVolLookupByName('outside.raw').path() == str(directory / 'outside.raw')


def test_dir_pool_check_mode_leaves_the_pool_alone(capsys, dir_pool):
    name, directory, pool = dir_pool
    result = run_module(capsys, pool=name, volume='new.raw', format='raw', size='1M', _ansible_check_mode=True)
    assert result['changed'] and result['volume'] == {} and result['path'] == str(directory / 'new.raw')
    assert list(directory.iterdir()) == [] and pool.listAllVolumes() == []


def test_disk_pool_upload_converts_to_raw_and_zeroes_the_rest(capsys, disk_pool, source, tmp_path):
    name, device, pool = disk_pool
    volume = '%sp1' % os.path.basename(device)
    # The loop device holds 0xff bytes: holes and the tail past src must be written as zeroes.
    results = four_passes(capsys, pool=name, volume=volume, src=str(source))
    uploaded = results[1]
    assert uploaded['actions'][0] == 'create volume %s/%s of %d bytes' % (name, volume, 3 * MIB)
    assert uploaded['path'] == '%sp1' % device and uploaded['volume']['type'] == 'block'
    capacity = uploaded['volume']['capacity']
    assert capacity >= 3 * MIB
    assert uploaded['upload']['bytes_sent'] + uploaded['upload']['holes_sent'] == capacity
    # Only data was read (1.5 MiB), the rest went as holes.
    assert uploaded['upload']['bytes_read'] == 3 * MIB // 2
    reference = tmp_path / 'reference.raw'
    run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', str(source), str(reference))
    with open(uploaded['path'], 'rb') as partition, open(str(reference), 'rb') as expected:
        assert partition.read(3 * MIB) == expected.read()
        assert partition.read(capacity - 3 * MIB) == bytes(capacity - 3 * MIB)
    assert [vol.name() for vol in pool.listAllVolumes()] == [volume]


def test_disk_pool_refuses_a_qcow2_volume(capsys, disk_pool, source):
    name, device, pool = disk_pool
    result = run_module(capsys, pool=name, volume='%sp1' % os.path.basename(device), src=str(source), format='qcow2')
    assert result['failed'] and 'format must be raw' in result['msg']
    assert pool.listAllVolumes() == []


def test_disk_pool_upload_without_sparse_streams_sends_zeroes(capsys, disk_pool, source, monkeypatch):
    monkeypatch.setattr(_pool_volume, '_sparse_flag', lambda: 0)
    name, device, pool = disk_pool
    result = run_module(capsys, pool=name, volume='%sp1' % os.path.basename(device), src=str(source))
    assert result['changed'] and result['upload']['holes_sent'] == 0
    assert result['upload']['bytes_sent'] == result['volume']['capacity']
    run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw', str(source), result['path'])


def test_disk_pool_upload_of_an_encrypted_source(capsys, disk_pool, source, tmp_path):
    name, device, pool = disk_pool
    encrypted = tmp_path / 'source.luks'
    run('qemu-img', 'convert', '--object', 'secret,id=sec0,data=pool secret', '-O', 'luks',
        '-o', 'key-secret=sec0,iter-time=10', str(source), str(encrypted))
    volume = '%sp1' % os.path.basename(device)
    result = run_module(capsys, pool=name, volume=volume, src=str(encrypted))
    assert result['failed'] and 'src_passphrase' in result['msg'] and pool.listAllVolumes() == []
    result = run_module(capsys, pool=name, volume=volume, src=str(encrypted), src_passphrase='wrong')
    assert result['failed'] and 'cannot unlock' in result['msg'] and pool.listAllVolumes() == []
    result = run_module(capsys, pool=name, volume=volume, src=str(encrypted), src_passphrase='pool secret')
    assert result['changed'] and 'pool secret' not in json.dumps(result)
    run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw', str(source), result['path'])


def test_libvirt_python_is_needed_only_with_pool(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(disk_image, 'HAS_LIBVIRT', False)
    result = run_module(capsys, pool='default', volume='a.qcow2', format='qcow2', size='1M')
    assert result['failed'] and 'libvirt-python' in result['msg']
    result = run_module(capsys, path=str(tmp_path / 'a.qcow2'), format='qcow2', size='1M')
    assert result['changed'] and (tmp_path / 'a.qcow2').exists()


@pytest.mark.parametrize('args, message', [
    (dict(path='/tmp/x.raw', pool='default', volume='x.raw'), 'mutually exclusive'),
    (dict(pool='default'), 'parameters are required together'),
    (dict(format='raw', size='1M'), 'one of the following is required'),
])
def test_path_or_pool_and_volume(capsys, args, message):
    result = run_module(capsys, **args)
    assert result['failed'] and message in result['msg']


def test_remote_dir_pool_goes_through_the_volume_api(capsys, dir_pool, source, monkeypatch):
    """A dir pool of another host: its directory is not reachable here, libvirt creates, fills and deletes the file.
    (The remote host is simulated: libvirt's host name differs from ours.)"""
    monkeypatch.setattr(_pool_volume, 'is_local_connection', lambda conn, uri: False)
    name, directory, pool = dir_pool
    results = four_passes(capsys, pool=name, volume='remote.img', src=str(source))
    assert [action.split(' ')[0] for action in results[1]['actions']] == ['create', 'upload']
    assert results[1]['path'] == str(directory / 'remote.img') and results[1]['volume']['format'] == 'raw'
    run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'raw', str(source), results[1]['path'])
    # Holes stay holes in a file: only the data was allocated.
    assert os.stat(results[1]['path']).st_blocks * 512 <= 2 * MIB
    result = run_module(capsys, pool=name, volume='other.qcow2', format='qcow2', size='1M')
    assert result['failed'] and 'remote host' in result['msg']
    four_passes(capsys, pool=name, volume='remote.img', state='absent')
    assert pool.listAllVolumes() == [] and list(directory.iterdir()) == []
