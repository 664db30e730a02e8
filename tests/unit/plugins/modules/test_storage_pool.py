# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""storage_pool: XML built from options for every pool type, the (pure) plan, and the module run
against the real libvirtd (qemu:///system) with dir pools in tmp_path."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess
import uuid as uuid_module

import pytest

import components

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _libvirt
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import LibvirtModuleError, canonical_xml, parse_xml
from ansible_collections.kvm.storage.plugins.module_utils._storage_pool import (
    PoolState,
    StoragePoolRequest,
    apply_plan,
    build_pool_element,
    normalise_mode,
    plan_storage_pool,
    render_view,
    storage_pool_argument_spec,
)
from ansible_collections.kvm.storage.plugins.modules import storage_pool, storage_pool_info

import examples_playbook

URI = 'qemu:///system'
POOL_UUID = '1fe18640-6d19-48a1-9d25-a3683dcdec29'


def xml_of(element):
    return canonical_xml(element)


# --------------------------------------------------------------------------- XML from options, every type
@pytest.mark.parametrize('pool_type, options, expected', [
    ('dir', dict(target='/srv/p/'),
     '<pool type="dir"><name>p</name><target><path>/srv/p</path></target></pool>'),
    ('dir', dict(target='/srv/p', mode='0750', owner='0', group='root'),
     '<pool type="dir"><name>p</name><target><path>/srv/p</path><permissions><group>0</group><mode>0750</mode>'
     '<owner>0</owner></permissions></target></pool>'),
    ('fs', dict(target='/srv/p', source=dict(device=['/dev/sdb1'], format='ext4')),
     '<pool type="fs"><name>p</name><source><device path="/dev/sdb1" /><format type="ext4" /></source>'
     '<target><path>/srv/p</path></target></pool>'),
    ('netfs', dict(target='/srv/p', source=dict(host=['nfs.example.com'], port=2049, dir='/export', format='nfs')),
     '<pool type="netfs"><name>p</name><source><dir path="/export" /><format type="nfs" />'
     '<host name="nfs.example.com" port="2049" /></source><target><path>/srv/p</path></target></pool>'),
    ('logical', dict(source=dict(name='vg', device=['/dev/sdc', '/dev/sdd'])),
     '<pool type="logical"><name>p</name><source><device path="/dev/sdc" /><device path="/dev/sdd" /><name>vg</name>'
     '</source></pool>'),
    ('disk', dict(target='/dev', source=dict(device=['/dev/sde'], format='gpt')),
     '<pool type="disk"><name>p</name><source><device path="/dev/sde" /><format type="gpt" /></source>'
     '<target><path>/dev</path></target></pool>'),
    ('iscsi', dict(target='/dev/disk/by-path',
                   source=dict(host=['san'], device=['iqn.2013-06.com.example:t'], initiator='iqn.2013-06.com.example:i',
                               auth=dict(type='chap', username='u', secret_usage='iscsi'))),
     '<pool type="iscsi"><name>p</name><source><auth type="chap" username="u"><secret usage="iscsi" /></auth>'
     '<device path="iqn.2013-06.com.example:t" /><host name="san" /><initiator><iqn name="iqn.2013-06.com.example:i" />'
     '</initiator></source><target><path>/dev/disk/by-path</path></target></pool>'),
    ('rbd', dict(source=dict(name='rbdpool', host=['mon1', 'mon2'], port=6789,
                             auth=dict(type='ceph', username='libvirt', secret_uuid=POOL_UUID))),
     '<pool type="rbd"><name>p</name><source><auth type="ceph" username="libvirt"><secret uuid="%s" /></auth>'
     '<host name="mon1" port="6789" /><host name="mon2" port="6789" /><name>rbdpool</name></source></pool>' % POOL_UUID),
])
def test_definition_built_from_options(pool_type, options, expected):
    built = xml_of(build_pool_element('p', pool_type, **options))
    assert built == xml_of(parse_xml(expected))


@pytest.mark.parametrize('pool_type, options, message', [
    ('dir', dict(), 'dir pools need target'),
    ('dir', dict(target='/srv/p', source=dict(device=['/dev/sdb'])), 'source.device does not apply to dir pools'),
    ('fs', dict(target='/srv/p'), 'fs pools need source.device'),
    ('fs', dict(target='/srv/p', source=dict(device=['/dev/a', '/dev/b'])), 'fs pools take one source.device, found 2'),
    ('netfs', dict(target='/srv/p', source=dict(host=['nfs'])), 'netfs pools need source.dir'),
    ('netfs', dict(target='/srv/p', source=dict(host=['a', 'b'], dir='/x')), 'netfs pools take one source.host'),
    ('disk', dict(source=dict(device=['/dev/sde'])), 'disk pools need target'),
    ('iscsi', dict(target='/dev/disk/by-path', source=dict(host=['san'])), 'iscsi pools need source.device'),
    ('rbd', dict(source=dict(name='x', host=['m']), target='/srv'), 'rbd pools have no target'),
    ('rbd', dict(source=dict(name='x', host=['m'], dir='/x')), 'source.dir does not apply to rbd pools'),
    ('logical', dict(mode='0700'), 'mode, owner and group are permissions of target'),
    ('dir', dict(target='/srv/p', mode='u+rwx'), 'mode: expected an octal mode'),
    ('dir', dict(target='/srv/p', mode='17777'), 'between 0000 and 7777'),
    ('dir', dict(target='/srv/p', owner='kvmstorage-no-such-user'), "no user named 'kvmstorage-no-such-user'"),
    ('netfs', dict(target='/srv/p', source=dict(dir='/x', port=1)), 'netfs pools need source.host'),
])
def test_incomplete_or_misplaced_options_are_refused(pool_type, options, message):
    with pytest.raises(LibvirtModuleError, match=message):
        build_pool_element('p', pool_type, **options)


def test_a_source_port_without_host_is_refused_by_the_spec(capsys):
    result = run_module(capsys, name='p', type='rbd', source=dict(name='x', port=6789))
    assert result['failed'] and result['msg'] == "missing parameter(s) required by 'port': host found in source"


@pytest.mark.parametrize('value, expected', [('0755', '0755'), ('755', '0755'), (0o700, '0700'), ('01777', '1777')])
def test_mode_is_spelled_as_libvirt_spells_it(value, expected):
    assert normalise_mode(value) == expected


# --------------------------------------------------------------------------- request
def params(**values):
    defaults = dict((name, spec.get('default')) for name, spec in storage_pool_argument_spec().items())
    defaults.update(values)
    return defaults


def test_xml_gives_the_name_and_must_agree_with_it():
    request = StoragePoolRequest(params(xml="<pool type='dir'><name>a</name><target><path>/a</path></target></pool>"))
    assert request.name == 'a' and request.type == 'dir'
    with pytest.raises(LibvirtModuleError, match="name is 'b' but xml defines pool 'a'"):
        StoragePoolRequest(params(name='b', xml="<pool type='dir'><name>a</name></pool>"))
    with pytest.raises(LibvirtModuleError, match='has no <name>'):
        StoragePoolRequest(params(xml="<pool type='dir'/>"))
    with pytest.raises(LibvirtModuleError, match="pool type 'vstorage' is not one of"):
        StoragePoolRequest(params(xml="<pool type='vstorage'><name>a</name></pool>"))


def test_definition_options_without_type_are_refused():
    with pytest.raises(LibvirtModuleError, match='target describe a pool definition: give type too'):
        StoragePoolRequest(params(name='a', target='/a'))


def test_absent_and_deleted_need_only_the_name():
    assert StoragePoolRequest(params(name='a', type='fs', state='absent')).definition is None


# --------------------------------------------------------------------------- plan (pure)
def pool_state(xml=None, active=False, persistent=True, autostart=False, live_xml=None, target_exists=True,
               storage_exists=None, contents=None):
    xml = xml or "<pool type='dir'><name>p</name><uuid>%s</uuid><target><path>/srv/p</path></target></pool>" % POOL_UUID
    element = parse_xml(xml)
    return PoolState('p', POOL_UUID, element.get('type'), active, persistent, autostart, xml, live_xml or xml,
                     target_exists=target_exists, storage_exists=storage_exists, contents=contents)


def plan(pool, directory=None, target_exists=None, **values):
    values.setdefault('name', 'p')
    return plan_storage_pool(StoragePoolRequest(params(**values)), pool, directory, target_exists)


DIR_POOL = dict(type='dir', target='/srv/p')


def test_a_new_pool_is_defined_built_started_and_autostarted():
    result = plan(None, state='active', build=True, autostart=True, **DIR_POOL)
    assert result.kinds() == ['define', 'build', 'start', 'autostart']
    assert result.changed
    assert result.before == {'name': 'p', 'state': 'absent'}
    assert result.after['state'] == 'active' and result.after['autostart'] is True
    assert result.after['xml'] == xml_of(parse_xml("<pool type='dir'><name>p</name><target><path>/srv/p</path></target></pool>"))


def test_present_defines_without_starting():
    assert plan(None, **DIR_POOL).kinds() == ['define']


def test_an_unknown_pool_without_a_definition_is_an_error():
    with pytest.raises(LibvirtModuleError, match="storage pool 'p' is not defined: give type"):
        plan(None, state='active')


@pytest.mark.parametrize('state_name, active', [('present', False), ('present', True), ('active', True), ('inactive', False)])
def test_a_pool_as_requested_needs_nothing(state_name, active):
    result = plan(pool_state(active=active), state=state_name, autostart=False, build=True, **DIR_POOL)
    assert result.kinds() == [] and not result.changed
    assert result.before == result.after
    assert render_view(result.before) == render_view(result.after)


def test_state_only_tasks_leave_the_definition_alone():
    assert plan(pool_state(), state='active').kinds() == ['start']
    assert plan(pool_state(active=True), state='inactive').kinds() == ['stop']


def test_drift_of_an_inactive_pool_is_redefined():
    result = plan(pool_state(), type='dir', target='/srv/q')
    assert result.kinds() == ['define']
    assert '/srv/p' in result.before['xml'] and '/srv/q' in result.after['xml']
    assert not result.restart_pending


def test_drift_of_an_active_pool_is_redefined_and_a_restart_is_pending():
    result = plan(pool_state(active=True), state='active', type='dir', target='/srv/q')
    assert result.kinds() == ['define']
    assert result.restart_pending and result.after['restart_pending']
    assert 'restart=true' in result.warnings[0]


def test_restart_applies_the_new_definition():
    result = plan(pool_state(active=True), state='active', restart=True, type='dir', target='/srv/q')
    assert result.kinds() == ['define', 'restart']
    assert not result.restart_pending


def test_a_pending_restart_from_an_earlier_run_is_reported_then_done_on_request():
    live = "<pool type='dir'><name>p</name><uuid>%s</uuid><target><path>/srv/old</path></target></pool>" % POOL_UUID
    state = pool_state(active=True, live_xml=live)
    waiting = plan(state, **DIR_POOL)
    assert waiting.kinds() == [] and waiting.restart_pending and waiting.warnings
    assert plan(state, restart=True, **DIR_POOL).kinds() == ['restart']


def test_undoing_a_change_made_behind_our_back_needs_no_restart():
    changed = "<pool type='dir'><name>p</name><uuid>%s</uuid><target><path>/srv/q</path></target></pool>" % POOL_UUID
    live = "<pool type='dir'><name>p</name><uuid>%s</uuid><target><path>/srv/p</path></target></pool>" % POOL_UUID
    result = plan(pool_state(xml=changed, live_xml=live, active=True), **DIR_POOL)
    assert result.kinds() == ['define'] and not result.restart_pending and not result.warnings


def test_another_uuid_is_an_error():
    with pytest.raises(LibvirtModuleError, match='exists with uuid %s, the task asks for uuid 0000' % POOL_UUID):
        plan(pool_state(), uuid='00000000-0000-0000-0000-000000000000', **DIR_POOL)


def test_a_transient_pool_is_made_persistent():
    assert plan(pool_state(active=True, persistent=False), state='active').kinds() == ['define']


def test_autostart_is_changed_only_when_given():
    assert plan(pool_state(autostart=True), **DIR_POOL).kinds() == []
    assert plan(pool_state(autostart=True), autostart=False, **DIR_POOL).kinds() == ['autostart']


def test_build_when_the_target_directory_is_missing_and_not_otherwise():
    assert plan(pool_state(target_exists=False), state='active', build=True, **DIR_POOL).kinds() == ['build', 'start']
    assert plan(pool_state(target_exists=True), state='active', build=True, **DIR_POOL).kinds() == ['start']
    with pytest.raises(LibvirtModuleError, match="storage pool 'p' cannot start: its target directory /srv/p does not exist; "
                                                 "create it, or set build=true to have it built; nothing was changed"):
        plan(pool_state(target_exists=False), state='active', **DIR_POOL)


def test_a_new_pool_whose_target_directory_is_missing_is_refused_before_it_is_defined_unless_built():
    with pytest.raises(LibvirtModuleError, match="storage pool 'p' cannot start: its target directory /srv/p does not exist"):
        plan(None, target_exists=False, state='active', **DIR_POOL)
    assert plan(None, target_exists=False, state='active', build=True, **DIR_POOL).kinds() == ['define', 'build', 'start']
    # Defining without starting needs no directory yet.
    assert plan(None, target_exists=False, **DIR_POOL).kinds() == ['define']
    # Pools whose target is not a directory libvirt builds are not concerned.
    assert plan(None, target_exists=False, state='active', type='iscsi', target='/dev/disk/by-path',
                source=dict(host=['san'], device=['iqn.2013-06.com.example:t'])).kinds() == ['define', 'start']


def test_a_redefinition_is_refused_when_its_restart_would_find_no_target_directory():
    with pytest.raises(LibvirtModuleError, match="storage pool 'p' cannot restart: its target directory /srv/q does not exist"):
        plan(pool_state(active=True), target_exists=False, state='active', restart=True, type='dir', target='/srv/q')
    built = plan(pool_state(active=True), target_exists=False, state='active', restart=True, build=True, type='dir', target='/srv/q')
    assert built.kinds() == ['define', 'restart'] and built.actions[1].args['build']
    assert built.actions[1].description == "restart storage pool 'p' to apply its new definition (stop it, build it (create /srv/q), start it)"
    # Without restart, the new definition waits for the next start: nothing to refuse yet.
    assert plan(pool_state(active=True), target_exists=False, state='active', type='dir', target='/srv/q').kinds() == ['define']
    # An inactive pool redefined to a missing directory and started: the new target is what counts.
    assert plan(pool_state(), target_exists=False, state='active', build=True, type='dir', target='/srv/q').kinds() == [
        'define', 'build', 'start']


def test_deleting_storage_that_is_not_empty_is_refused_before_the_pool_is_stopped():
    full = pool_state(active=True, storage_exists=True, contents=['a.qcow2', 'b.raw'])
    with pytest.raises(LibvirtModuleError, match="state=deleted: the storage of storage pool 'p' \\(/srv/p\\) is not empty: it holds "
                                                 "2 entries \\(a.qcow2, b.raw\\).*nothing was changed"):
        plan(full, state='deleted')
    assert plan(pool_state(active=True, storage_exists=True, contents=[]), state='deleted').kinds() == ['stop', 'delete']


def test_refresh_is_not_a_change_and_is_skipped_when_starting():
    refreshed = plan(pool_state(active=True), refresh=True, **DIR_POOL)
    assert refreshed.kinds() == ['refresh'] and not refreshed.changed
    assert plan(pool_state(), state='active', refresh=True, **DIR_POOL).kinds() == ['start']
    assert plan(pool_state(), refresh=True, **DIR_POOL).kinds() == []


def test_permissions_of_an_existing_target_directory_are_compared_on_the_directory():
    directory = {'path': '/srv/p', 'mode': '0755', 'owner': '0', 'group': '0'}
    # libvirt copied the directory's permissions into the definition: not a difference of the XML.
    xml = ("<pool type='dir'><name>p</name><target><path>/srv/p</path><permissions><mode>0755</mode>"
           "</permissions></target></pool>")
    result = plan(pool_state(xml=xml, active=True), directory, mode='0700', **DIR_POOL)
    assert result.kinds() == ['permissions']
    assert result.before['directory'] == '/srv/p mode=0755' and result.after['directory'] == '/srv/p mode=0700'
    assert not result.restart_pending
    same = plan(pool_state(xml=xml, active=True), dict(directory, mode='0700'), mode='0700', **DIR_POOL)
    assert same.kinds() == []


@pytest.mark.parametrize('active, persistent, kinds', [
    (True, True, ['stop', 'undefine']), (False, True, ['undefine']), (True, False, ['stop']),
])
def test_absent_stops_and_undefines(active, persistent, kinds):
    result = plan(pool_state(active=active, persistent=persistent), state='absent')
    assert result.kinds() == kinds
    assert result.after == {'name': 'p', 'state': 'absent'}
    assert plan(None, state='absent').kinds() == []


def test_deleted_stops_and_deletes_storage_that_exists():
    assert plan(pool_state(active=True, storage_exists=True), state='deleted').kinds() == ['stop', 'delete']
    assert plan(pool_state(storage_exists=False), state='deleted').kinds() == []
    missing = plan(None, state='deleted')
    assert missing.kinds() == [] and 'not defined' in missing.warnings[0]


def test_deleted_is_refused_where_libvirt_cannot_delete_or_the_pool_would_vanish():
    iscsi = "<pool type='iscsi'><name>p</name><target><path>/dev/disk/by-path</path></target></pool>"
    with pytest.raises(LibvirtModuleError, match='storage of iscsi pools cannot be deleted'):
        plan(pool_state(xml=iscsi), state='deleted')
    with pytest.raises(LibvirtModuleError, match='transient'):
        plan(pool_state(active=True, persistent=False, storage_exists=True), state='deleted')


# --------------------------------------------------------------------------- the module against libvirtd
def virsh(*args, check=True):
    return subprocess.run(('virsh', '-c', URI) + args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


@pytest.fixture
def pool_name():
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    name = 'kvmstorage_test_unit_%s' % uuid_module.uuid4().hex[:8]
    yield name
    virsh('pool-destroy', name, check=False)
    virsh('pool-undefine', name, check=False)


def run_module(capsys, check_mode=False, **args):
    args.update(_ansible_check_mode=check_mode, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            storage_pool.main()
    return json.loads(capsys.readouterr().out)


def test_check_mode_predicts_the_real_run_and_the_second_run_changes_nothing(tmp_path, capsys, pool_name):
    args = dict(name=pool_name, type='dir', target=str(tmp_path / 'pool'), mode='0750', build=True, state='active',
                autostart=True)
    check = run_module(capsys, check_mode=True, **args)
    assert virsh('pool-info', pool_name, check=False).returncode != 0  # check mode defined nothing
    real = run_module(capsys, **args)
    assert check['changed'] and real['changed']
    assert check['actions'] == real['actions'] and check['diff'] == real['diff']
    assert check['pool'] == {} and real['pool']['state'] == 'active' and real['pool']['autostart']
    assert oct(os.stat(str(tmp_path / 'pool')).st_mode & 0o7777) == '0o750'
    again = run_module(capsys, **args)
    assert not again['changed'] and again['actions'] == [] and again['diff']['before'] == again['diff']['after']


def test_drift_made_with_virsh_is_fixed(tmp_path, capsys, pool_name):
    (tmp_path / 'pool').mkdir()
    args = dict(name=pool_name, type='dir', target=str(tmp_path / 'pool'), state='inactive')
    run_module(capsys, **args)
    edited = virsh('pool-dumpxml', '--inactive', pool_name).stdout.replace(str(tmp_path / 'pool'), str(tmp_path / 'other'))
    (tmp_path / 'edited.xml').write_text(edited)
    virsh('pool-define', str(tmp_path / 'edited.xml'))
    fixed = run_module(capsys, **args)
    assert fixed['changed'] and fixed['actions'] == ["redefine storage pool '%s': its definition differs from the request" % pool_name]
    assert fixed['pool']['target'] == str(tmp_path / 'pool')
    assert not run_module(capsys, **args)['changed']


def test_an_unquoted_mode_is_applied_as_the_number_given_with_a_warning(tmp_path, capsys, pool_name):
    # YAML reads `mode: 711` as the decimal 711 (octal 01307): say so, as disk_image does
    args = dict(name=pool_name, type='dir', target=str(tmp_path / 'pool'), mode=711, build=True, state='inactive')
    result = run_module(capsys, check_mode=True, **args)
    # notes are the module's warnings (run_libvirt_module warns each)
    assert any('mode is the number 711' in note and "'0711'" in note for note in result['notes'])
    args['mode'] = '0711'
    quoted = run_module(capsys, check_mode=True, **args)
    assert not any('mode is the number' in note for note in quoted['notes'])


def pool_xml(name, inactive=False):
    """The pool's definition without the sizes libvirt recomputes."""
    result = virsh('pool-dumpxml', '--inactive', name) if inactive else virsh('pool-dumpxml', name)
    return '\n'.join(line for line in result.stdout.splitlines()
                     if not line.strip().startswith(('<capacity', '<allocation', '<available')))


def pool_state_of(name):
    info = virsh('pool-info', name, check=False)
    if info.returncode != 0:
        return None
    fields = dict(line.split(':', 1) for line in info.stdout.splitlines() if ':' in line)
    return dict((key.strip(), value.strip()) for key, value in fields.items() if key.strip() in ('State', 'Persistent', 'Autostart'))


def test_a_start_that_cannot_succeed_is_refused_before_the_pool_is_defined(tmp_path, capsys, pool_name):
    args = dict(name=pool_name, type='dir', target=str(tmp_path / 'missing'), state='active')
    check = run_module(capsys, check_mode=True, **args)
    result = run_module(capsys, **args)
    assert check['failed'] and result['failed'] and check['msg'] == result['msg']
    assert result['msg'] == ("storage pool '%s' cannot start: its target directory %s does not exist; create it, or set build=true "
                             "to have it built; nothing was changed" % (pool_name, tmp_path / 'missing'))
    assert not result.get('changed') and pool_state_of(pool_name) is None


def test_a_new_pool_that_fails_to_start_is_undefined_again(tmp_path, capsys, pool_name):
    # An fs pool on a device that does not exist: defined, then mount fails (deterministically) when it starts.
    (tmp_path / 'mnt').mkdir()
    device = '/dev/kvmstorage-test-none-%s' % pool_name[-8:]
    result = run_module(capsys, name=pool_name, type='fs', source=dict(device=[device]), target=str(tmp_path / 'mnt'), state='active',
                        autostart=True)
    assert result['failed'] and not result['changed'] and result['actions'] == []
    assert result['msg'].startswith("cannot start storage pool '%s': " % pool_name) and device in result['msg']
    assert result['msg'].endswith("; undone: undefine storage pool '%s'; storage pool '%s' is as it was before the task"
                                  % (pool_name, pool_name))
    assert pool_state_of(pool_name) is None


def test_a_redefinition_that_fails_to_restart_restores_the_previous_definition_and_starts_it_again(tmp_path, capsys, pool_name):
    (tmp_path / 'pool').mkdir()
    run_module(capsys, name=pool_name, type='dir', target=str(tmp_path / 'pool'), state='active')
    before = pool_xml(pool_name, inactive=True)
    device = '/dev/kvmstorage-test-none-%s' % pool_name[-8:]
    result = run_module(capsys, name=pool_name, type='fs', source=dict(device=[device]), target=str(tmp_path / 'pool'), state='active',
                        restart=True)
    assert result['failed'] and not result['changed'] and result['actions'] == []
    assert result['msg'].startswith("cannot start storage pool '%s': " % pool_name)
    assert ("undone: restore the previous definition of storage pool '{0}', start storage pool '{0}' again; storage pool '{0}' "
            "is as it was before the task".format(pool_name)) in result['msg']
    assert pool_state_of(pool_name)['State'] == 'running'
    assert pool_xml(pool_name, inactive=True) == before and "<pool type='dir'>" in pool_xml(pool_name)


def test_a_restart_onto_a_missing_directory_builds_it_between_the_stop_and_the_start(tmp_path, capsys, pool_name):
    (tmp_path / 'a').mkdir()
    run_module(capsys, name=pool_name, type='dir', target=str(tmp_path / 'a'), state='active')
    args = dict(name=pool_name, type='dir', target=str(tmp_path / 'b'), state='active', restart=True)
    refused = run_module(capsys, check_mode=True, **args)
    assert refused['failed'] and 'cannot restart: its target directory %s does not exist' % (tmp_path / 'b') in refused['msg']
    check = run_module(capsys, check_mode=True, build=True, **args)
    real = run_module(capsys, build=True, **args)
    assert check['actions'] == real['actions'] == [
        "redefine storage pool '%s': its definition differs from the request" % pool_name,
        "restart storage pool '%s' to apply its new definition (stop it, build it (create %s), start it)" % (pool_name, tmp_path / 'b')]
    assert real['pool']['state'] == 'active' and real['pool']['target'] == str(tmp_path / 'b') and not real['restart_pending']


def test_deleting_a_pool_that_holds_volumes_is_refused_before_it_is_stopped(tmp_path, capsys, pool_name):
    (tmp_path / 'pool').mkdir()
    run_module(capsys, name=pool_name, type='dir', target=str(tmp_path / 'pool'), state='active')
    (tmp_path / 'pool' / 'vm1.qcow2').write_bytes(b'')
    check = run_module(capsys, check_mode=True, name=pool_name, state='deleted')
    result = run_module(capsys, name=pool_name, state='deleted')
    assert check['failed'] and result['failed'] and check['msg'] == result['msg']
    assert "is not empty: it holds 1 entries (vm1.qcow2)" in result['msg'] and not result.get('changed')
    assert pool_state_of(pool_name)['State'] == 'running' and (tmp_path / 'pool' / 'vm1.qcow2').exists()
    (tmp_path / 'pool' / 'vm1.qcow2').unlink()
    deleted = run_module(capsys, name=pool_name, state='deleted')
    assert deleted['changed'] and not (tmp_path / 'pool').exists() and pool_state_of(pool_name)['State'] == 'inactive'


class FailingPool(object):
    """A pool whose steps after the first fail, and whose undo fails too: what cannot be undone is reported."""

    def __init__(self):
        self.calls = []

    def XMLDesc(self, flags):
        return "<pool type='dir'><name>p</name><target><path>/nonexistent/p</path></target></pool>"

    def create(self, flags):
        self.calls.append('create')
        raise FakeLibvirtError('VIR_ERR_INTERNAL_ERROR', 'cannot mount')

    def undefine(self):
        self.calls.append('undefine')
        raise FakeLibvirtError('VIR_ERR_OPERATION_INVALID', 'busy')


class FakeLibvirtError(_libvirt.libvirt.libvirtError if _libvirt.HAS_LIBVIRT else Exception):
    def __init__(self, code_name, message):
        Exception.__init__(self, message)
        self.code = getattr(_libvirt.libvirt, code_name)
        self.text = message

    def get_error_code(self):
        return self.code

    def get_error_message(self):
        return self.text


class FakeConnection(object):
    def __init__(self, pool):
        self.pool = pool

    def storagePoolDefineXML(self, xml, flags):
        self.pool.calls.append('define')
        return self.pool


def test_what_cannot_be_undone_is_reported_as_changed_with_its_actions():
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    request = StoragePoolRequest(params(name='p', state='active', autostart=True, **DIR_POOL))
    planned = plan_storage_pool(request, None, None, True)
    pool = FailingPool()
    with pytest.raises(LibvirtModuleError) as caught:
        apply_plan(FakeConnection(pool), planned, request, None)
    assert pool.calls == ['define', 'create', 'undefine']
    assert caught.value.result == dict(changed=True, actions=["define dir storage pool 'p'"])
    assert str(caught.value) == ("cannot start storage pool 'p': cannot mount; cannot undefine storage pool 'p': cannot undefine "
                                 "storage pool 'p': busy; done before the failure and left so: define dir storage pool 'p'")


def test_without_libvirt_python_the_module_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setattr(_libvirt, 'HAS_LIBVIRT', False)
    monkeypatch.setattr(_libvirt, 'LIBVIRT_IMPORT_ERROR', 'ImportError: No module named libvirt')
    result = run_module(capsys, name='kvmstorage_test_unit_never', state='absent')
    assert result['failed'] and 'libvirt-python' in result['msg']


# --------------------------------------------------------------------------- the EXAMPLES, as written
# Examples that name hardware or servers this host does not have run in check mode (which makes the same checks).
EXAMPLES_IN_CHECK_MODE = ('fast', 'shared', 'guests', 'ceph')


@pytest.fixture
def example_names(pool_name):
    prefix = pool_name + '_'
    yield prefix
    pools = virsh('pool-list', '--all', '--name').stdout.split()
    for name in pools:
        if name.startswith(prefix):
            virsh('pool-destroy', name, check=False)
            virsh('pool-undefine', name, check=False)


def test_the_examples_run_in_the_order_written(tmp_path, example_names):
    """storage_pool's and storage_pool_info's EXAMPLES, as written, but for the names of this host's objects."""
    prefix = example_names
    paths = {'/var/lib/libvirt/images': str(tmp_path / 'images'), '/srv/fast': str(tmp_path / 'fast'),
             '/var/lib/libvirt/shared': str(tmp_path / 'shared'), '/dev/vg_guests': '/dev/%svg' % prefix}
    # The file the XML example reads (files/pools/backup.xml beside the playbook).
    (tmp_path / 'files' / 'pools').mkdir(parents=True)
    (tmp_path / 'files' / 'pools' / 'backup.xml').write_text(
        "<pool type='dir'>\n  <name>%sbackup</name>\n  <target>\n    <path>%s</path>\n  </target>\n</pool>\n"
        % (prefix, tmp_path / 'backup'))

    tasks = []
    for task in examples_playbook.example_tasks(storage_pool) + examples_playbook.example_tasks(storage_pool_info):
        args = task.get('kvm.storage.storage_pool', task.get('kvm.storage.storage_pool_info'))
        if isinstance(args, dict):
            if args.get('name') in EXAMPLES_IN_CHECK_MODE:
                task['check_mode'] = True
            if 'name' in args:
                args['name'] = prefix + args['name']
            if args.get('target') in paths:
                args['target'] = paths[args['target']]
            if args.get('source', {}).get('name') == 'vg_guests':
                args['source']['name'] = prefix + 'vg'
        tasks.append(task)
    results = examples_playbook.run_examples(tasks, str(tmp_path), examples_playbook.collections_path(storage_pool))

    built = results['A directory pool, built, started now and whenever libvirt starts']
    assert built['changed'] and built['pool']['state'] == 'active' and built['pool']['autostart']
    assert oct(os.stat(str(tmp_path / 'images')).st_mode & 0o7777) == '0o711'
    from_xml = results['A pool from its whole XML definition (files/pools/backup.xml), its directory built, restarted if it changed']
    assert from_xml['changed'] and from_xml['pool']['state'] == 'active' and os.path.isdir(str(tmp_path / 'backup'))
    assert results['Rescan the volumes of an existing pool']['refreshed']
    assert not results['Remove a pool (its storage stays)']['changed']
    for name in ('An ext4 filesystem on a disk, mounted by libvirt', 'An NFS export, mounted on a directory made for it',
                 'An LVM volume group', 'A Ceph RBD pool'):
        assert results[name]['changed'] and results[name]['actions'], name
    assert results['Free bytes of the images pool']['pools'][0]['target'] == str(tmp_path / 'images')
    assert pool_state_of(prefix + 'images')['State'] == 'running' and pool_state_of(prefix + 'fast') is None
