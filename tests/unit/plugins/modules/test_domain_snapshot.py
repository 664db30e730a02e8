# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_snapshot: snapshot XML built from options, the snapshot tree, the (pure) plans of every state,
the messages naming the libvirt version, the revert rule against real qcow2 images (qemu-img / qemu-io),
and the module run against the real libvirtd (qemu:///system) with shut-off domains in tmp_path."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import shutil
import subprocess
import tempfile
from xml.etree import ElementTree

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _domain_snapshot as backend, _libvirt
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import LibvirtModuleError, libvirt
from ansible_collections.kvm.storage.plugins.module_utils._domain_snapshot import (
    DomainDisk,
    DomainSnapshots,
    SnapshotRecord,
    SnapshotRequest,
    children_map,
    derived_overlay,
    descendants,
    disks_at_snapshot,
    domain_snapshot_argument_spec,
    plan_domain_snapshot,
    render_view,
    snapshot_call,
    snapshot_info,
    tree_order,
    version_text,
)
from ansible_collections.kvm.storage.plugins.modules import domain_snapshot, domain_snapshot_info

import examples_playbook

URI = 'qemu:///system'
LIBVIRT_9_0 = 9000000
PREFIX = 'kvmstorage_it_dsnap_'


def ask(**params):
    """A SnapshotRequest from module parameters, defaults filled in as AnsibleModule does."""
    full = dict((key, spec.get('default')) for key, spec in domain_snapshot_argument_spec().items())
    full.update(domain='vm', name='snap', uri=URI)
    full.update(params)
    return SnapshotRequest(full)


def qcow2_disk(target, path=None):
    return DomainDisk(target, source=path or '/nonexistent/%s.qcow2' % target, driver_format='qcow2')


def domain(state='shutoff', disks=None, snapshots=(), lib_version=LIBVIRT_9_0, guest_agent=False):
    if disks is None:
        disks = [qcow2_disk('vda'), qcow2_disk('vdb')]
    return DomainSnapshots('vm', state, disks, list(snapshots), lib_version, URI, guest_agent=guest_agent)


def record(name, parent=None, created=0, current=False, memory='no', memory_file=None, disks=None, state='shutoff', **kwargs):
    if disks is None:
        disks = [{'name': 'vda', 'snapshot': 'internal', 'file': None, 'format': None}]
    return SnapshotRecord(name, parent=parent, creation_time=created, current=current, memory=memory,
                          memory_file=memory_file, disks=disks, state=state, **kwargs)


def external_record(name, parent=None, created=0, current=False, memory='no', memory_file=None, state='disk-snapshot'):
    return record(name, parent, created, current, memory=memory, memory_file=memory_file, state=state,
                  disks=[{'name': 'vda', 'snapshot': 'external', 'file': '/i/vda.%s' % name, 'format': 'qcow2'}])


def flags_of(plan):
    return plan.actions[0].args['flags']


def xml_of(plan):
    return ElementTree.fromstring(plan.actions[0].args['xml'])


# --------------------------------------------------------------------------- versions and messages
@pytest.mark.parametrize('number, text', [(9000000, '9.0.0'), (9009000, '9.9.0'), (10010002, '10.10.2'), (8000, '0.8.0')])
def test_libvirt_version_numbers_are_decoded(number, text):
    assert version_text(number) == text


class FakeLibvirtError(libvirt.libvirtError):
    """A libvirtError with a given code (the real one reads the code from libvirt's last error)."""

    def __init__(self, code_name, message):
        libvirt.libvirtError.__init__(self, message)
        self.code = getattr(libvirt, code_name)
        self.text = message

    def get_error_code(self):
        return self.code

    def get_error_message(self):
        return self.text


def raising(code_name, message):
    def function(*args):
        raise FakeLibvirtError(code_name, message)
    return function


@pytest.mark.parametrize('code_name', ['VIR_ERR_OPERATION_UNSUPPORTED', 'VIR_ERR_CONFIG_UNSUPPORTED', 'VIR_ERR_NO_SUPPORT',
                                       'VIR_ERR_ARGUMENT_UNSUPPORTED'])
def test_an_unsupported_operation_names_the_libvirt_version_and_the_hint(code_name):
    with pytest.raises(LibvirtModuleError) as caught:
        snapshot_call('cannot delete snapshot x', 9000000, URI, raising(code_name, 'not supported yet'), hint='try this')
    assert str(caught.value) == ('cannot delete snapshot x: libvirt 9.0.0 (the daemon at qemu:///system) cannot do this: '
                                 'not supported yet; try this')


def test_other_libvirt_errors_say_what_was_done_without_a_version():
    with pytest.raises(LibvirtModuleError) as caught:
        snapshot_call('cannot create snapshot x', 9000000, URI, raising('VIR_ERR_INVALID_ARG', 'bad'))
    assert str(caught.value) == 'cannot create snapshot x: bad'


# --------------------------------------------------------------------------- the tree
def test_the_tree_is_depth_first_with_siblings_in_creation_order():
    snapshots = dict((r.name, r) for r in [
        record('root', created=1), record('late', 'root', created=9), record('early', 'root', created=2),
        record('leaf', 'early', created=3), record('other-root', created=5), record('orphan', 'gone', created=0)])
    assert children_map(snapshots)[None] == ['orphan', 'root', 'other-root']
    assert children_map(snapshots)['root'] == ['early', 'late']
    assert tree_order(snapshots) == [('orphan', 0), ('root', 0), ('early', 1), ('leaf', 2), ('late', 1), ('other-root', 0)]
    assert descendants(snapshots, 'root') == ['early', 'leaf', 'late']
    assert descendants(snapshots, 'leaf') == []


def test_snapshot_info_reports_the_tree_and_what_is_where():
    snapshots = dict((r.name, r) for r in [
        record('a', created=1795424311, description='first'),
        external_record('b', 'a', created=1795424400, current=True, memory='external', memory_file='/i/b.mem', state='running')])
    info = snapshot_info(snapshots['a'], snapshots)
    assert info['children'] == ['b'] and info['descendants'] == 1 and info['parent'] is None
    assert info['creation_date'] == '2026-11-23T08:58:31Z' and info['kind'] == 'internal' and not info['external']
    info = snapshot_info(snapshots['b'], snapshots)
    assert info['current'] and info['external'] and not info['disk_only'] and info['kind'] == 'external'
    assert info['memory'] == {'snapshot': 'external', 'file': '/i/b.mem'}
    assert info['disks'] == [{'name': 'vda', 'snapshot': 'external', 'file': '/i/vda.b', 'format': 'qcow2'}]


SNAPSHOT_XML = '''<domainsnapshot>
  <name>s4</name><description>with memory</description><state>running</state>
  <parent><name>s3</name></parent><creationTime>1795424316</creationTime>
  <memory snapshot='external' file='/i/s4.mem'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'><driver type='qcow2'/><source file='/i/a.s4'/></disk>
    <disk name='vdb' snapshot='no'/>
  </disks>
  <domain type='qemu'><name>vm</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/a.qcow2'/><target dev='vda'/></disk>
    <disk type='file' device='cdrom'><source file='/i/cd.iso'/><target dev='sda'/><readonly/></disk>
  </devices></domain>
</domainsnapshot>'''


def test_a_snapshot_definition_is_read_as_libvirt_writes_it():
    parsed = SnapshotRecord.from_xml(SNAPSHOT_XML, current=True)
    assert (parsed.name, parsed.parent, parsed.description, parsed.state, parsed.creation_time) == (
        's4', 's3', 'with memory', 'running', 1795424316)
    assert (parsed.memory, parsed.memory_file, parsed.kind, parsed.external) == ('external', '/i/s4.mem', 'external', True)
    assert parsed.disks == [{'name': 'vda', 'snapshot': 'external', 'file': '/i/a.s4', 'format': 'qcow2'},
                            {'name': 'vdb', 'snapshot': 'no', 'file': None, 'format': None}]
    assert parsed.domain_disks['vda'].source == '/i/a.qcow2' and parsed.domain_disks['sda'].readonly


# --------------------------------------------------------------------------- requests
@pytest.mark.parametrize('params, message', [
    (dict(state='absent', description='x'), 'description: only with state=present'),
    (dict(state='revert', disk_only=True, quiesce=True), 'disk_only, quiesce: only with state=present'),
    (dict(children=True), 'children: only with state=absent'),
    (dict(state='revert', metadata_only=True), 'metadata_only: only with state=absent'),
    (dict(domain_state='paused'), 'domain_state: only with state=revert'),
    (dict(state='absent', revert_always=True), 'revert_always: only with state=revert'),
    (dict(memory='/i/m', external=False), 'does not go with external=false'),
    (dict(memory='/i/m', disk_only=True), 'memory and disk_only=true are mutually exclusive'),
    (dict(disks=[dict(name='vda', snapshot=None, file=None), dict(name='vda', snapshot='no', file=None)]), 'given more than once'),
    (dict(disks=[dict(name='vda', snapshot='internal', file='/i/o')]), 'only an external snapshot of it uses'),
    (dict(name='a/b'), 'a snapshot name cannot contain "/"'),
    (dict(memory='m.mem'), "memory: libvirt needs an absolute path, found 'm.mem'"),
    (dict(disks=[dict(name='vda', snapshot=None, file='o.qcow2')]), "disks\\[vda\\].file: libvirt needs an absolute path"),
])
def test_options_that_do_not_go_together_are_refused(params, message):
    with pytest.raises(LibvirtModuleError, match=message):
        ask(**params)


def test_memory_or_an_overlay_file_implies_an_external_snapshot():
    assert ask(memory='/i/m').external is True
    assert ask(disks=[dict(name='vda', snapshot=None, file='/i/o')]).external is True
    assert ask().external is None


# --------------------------------------------------------------------------- create
def test_an_internal_snapshot_of_a_shut_off_domain_takes_every_qcow2_disk_without_memory():
    plan = plan_domain_snapshot(ask(description='before upgrade'), domain())
    assert plan.kinds() == ['create'] and flags_of(plan) == ['VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC']
    element = xml_of(plan)
    assert element.findtext('name') == 'snap' and element.findtext('description') == 'before upgrade'
    assert element.find('memory').attrib == {'snapshot': 'no'}
    assert [disk.attrib for disk in element.findall('disks/disk')] == [
        {'name': 'vda', 'snapshot': 'internal'}, {'name': 'vdb', 'snapshot': 'internal'}]
    assert plan.before['snapshots'] == [] and plan.after['current'] == 'snap'
    assert plan.after['snapshots'] == ['- snap (shutoff, internal): before upgrade']


def test_an_internal_snapshot_of_a_running_domain_holds_its_memory_and_becomes_the_child_of_the_current_one():
    plan = plan_domain_snapshot(ask(), domain('running', snapshots=[record('base', current=True)]))
    assert xml_of(plan).find('memory').attrib == {'snapshot': 'internal'}
    assert plan.after['snapshots'] == ['- base (shutoff, internal)', '  - snap (running, internal, with memory)']
    assert plan.after['current'] == 'snap' and plan.before['current'] == 'base'


def test_cdroms_read_only_and_empty_disks_are_left_out_unless_named():
    disks = [qcow2_disk('vda'), DomainDisk('sda', device='cdrom', source='/i/cd.iso', driver_format='raw', readonly=True),
             DomainDisk('vdc', source='/i/ro.qcow2', driver_format='qcow2', readonly=True), DomainDisk('hdc', device='cdrom')]
    plan = plan_domain_snapshot(ask(), domain(disks=disks))
    assert [(d.get('name'), d.get('snapshot')) for d in xml_of(plan).findall('disks/disk')] == [
        ('vda', 'internal'), ('sda', 'no'), ('vdc', 'no'), ('hdc', 'no')]
    plan = plan_domain_snapshot(ask(disks=[dict(name='/i/ro.qcow2', snapshot='internal', file=None)]), domain(disks=disks))
    assert [d.get('snapshot') for d in xml_of(plan).findall('disks/disk')] == ['internal', 'no', 'internal', 'no']


def test_an_external_disk_only_snapshot_of_a_running_domain_names_overlays_as_libvirt_does(tmp_path):
    disks = [qcow2_disk('vda', str(tmp_path / 'a.qcow2')), qcow2_disk('vdb', str(tmp_path / 'b'))]
    plan = plan_domain_snapshot(ask(external=True, disk_only=True, disks=[dict(name='vdb', snapshot=None, file=str(tmp_path / 'o'))]),
                                domain('running', disks=disks))
    assert flags_of(plan) == ['VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC', 'VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY']
    element = xml_of(plan)
    assert element.find('memory').attrib == {'snapshot': 'no'}
    described = [(d.get('name'), d.get('snapshot'), d.get('type'), d.find('source').get('file'), d.find('driver').get('type'))
                 for d in element.findall('disks/disk')]
    assert described == [('vda', 'external', 'file', str(tmp_path / 'a.snap'), 'qcow2'),
                         ('vdb', 'external', 'file', str(tmp_path / 'o'), 'qcow2')]
    assert plan.after['snapshots'] == ['- snap (disk-snapshot, external, vda -> %s, vdb -> %s)' % (tmp_path / 'a.snap', tmp_path / 'o')]


def test_an_external_snapshot_with_memory_saves_it_in_the_file_given(tmp_path):
    plan = plan_domain_snapshot(ask(memory=str(tmp_path / 'm'), live=True, disks=[dict(name='vdb', snapshot='no', file=None)]),
                                domain('paused', disks=[qcow2_disk('vda', str(tmp_path / 'a.img')), qcow2_disk('vdb')]))
    assert flags_of(plan) == ['VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC', 'VIR_DOMAIN_SNAPSHOT_CREATE_LIVE']
    assert xml_of(plan).find('memory').attrib == {'snapshot': 'external', 'file': str(tmp_path / 'm')}
    assert plan.after['snapshots'] == ['- snap (paused, external, memory in %s, vda -> %s, vdb not snapshotted)' % (
        tmp_path / 'm', tmp_path / 'a.snap')]


def test_an_external_snapshot_of_a_shut_off_domain_is_disk_only():
    plan = plan_domain_snapshot(ask(external=True), domain())
    assert flags_of(plan) == ['VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC', 'VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY']


def test_quiesce_asks_libvirt_to_freeze_the_guest_when_it_has_an_agent():
    plan = plan_domain_snapshot(ask(external=True, disk_only=True, quiesce=True), domain('running', guest_agent=True))
    assert 'VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE' in flags_of(plan)


@pytest.mark.parametrize('params, state, message', [
    (dict(external=True, disk_only=True, quiesce=True), 'running', 'has no guest agent channel \\(org.qemu.guest_agent.0\\)'),
    (dict(quiesce=True), 'running', 'quiesce needs a disk-only external snapshot'),
    (dict(external=True, disk_only=True, quiesce=True), 'shutoff', 'is shut off; only the file systems of a running guest'),
    (dict(memory='/nonexistent/m'), 'shutoff', 'it has no memory state to save'),
    (dict(external=True), 'running', 'give that file as memory, or take a disk-only snapshot'),
    (dict(disk_only=True), 'running', 'disk-only snapshots of a running domain .* only as external'),
    (dict(live=True, external=True, disk_only=True), 'running', 'live applies to external snapshots with memory'),
    (dict(disks=[dict(name='vdz', snapshot='no', file=None)]), 'shutoff', "domain 'vm' has no disk vdz \\(its disks: vda"),
    (dict(external=True, disks=[dict(name='vda', snapshot='no', file=None), dict(name='vdb', snapshot='no', file=None)]),
     'shutoff', 'would take no disk'),
    (dict(disks=[dict(name='vda', snapshot='external', file=None)]), 'shutoff',
     'mixes internal and external disk snapshots \\(vda=external, vdb=internal\\)'),
    (dict(external=True, disk_only=True, disks=[dict(name='vda', snapshot=None, file='/i/o'), dict(name='vdb', snapshot=None, file='/i/o')]),
     'running', 'the same overlay file'),
])
def test_snapshots_libvirt_cannot_take_are_refused_with_what_to_do(params, state, message):
    with pytest.raises(LibvirtModuleError, match=message):
        plan_domain_snapshot(ask(**params), domain(state))


def test_internal_snapshots_leave_out_only_disks_whose_definition_allows_it():
    disks = [qcow2_disk('vda'), qcow2_disk('vdb'), DomainDisk('vdc', source='/i/c.qcow2', driver_format='qcow2', snapshot='no')]
    plan = plan_domain_snapshot(ask(disks=[dict(name='vdc', snapshot='no', file=None)]), domain(disks=disks))
    assert [d.get('snapshot') for d in xml_of(plan).findall('disks/disk')] == ['internal', 'internal', 'no']
    with pytest.raises(LibvirtModuleError, match='disk vdb .* libvirt takes an internal snapshot of every writable disk'):
        plan_domain_snapshot(ask(disks=[dict(name='vdb', snapshot='no', file=None)]), domain(disks=disks))
    plan = plan_domain_snapshot(ask(external=True, disks=[dict(name='vdb', snapshot='no', file=None)]), domain(disks=disks))
    assert [d.get('snapshot') for d in xml_of(plan).findall('disks/disk')] == ['external', 'no', 'no']


def test_internal_snapshots_need_qcow2_disks():
    disks = [qcow2_disk('vda'), DomainDisk('vdb', source='/i/raw.img', driver_format='raw')]
    with pytest.raises(LibvirtModuleError, match='disk vdb .* is a raw image: internal snapshots need qcow2 disks'):
        plan_domain_snapshot(ask(), domain(disks=disks))
    assert plan_domain_snapshot(ask(external=True), domain(disks=disks)).kinds() == ['create']


def test_an_existing_overlay_or_memory_file_is_refused(tmp_path):
    (tmp_path / 'a.snap').write_bytes(b'')
    (tmp_path / 'm').write_bytes(b'')
    disks = [qcow2_disk('vda', str(tmp_path / 'a.qcow2'))]
    with pytest.raises(LibvirtModuleError, match='overlay file .*a.snap for disk vda exists already'):
        plan_domain_snapshot(ask(external=True), domain(disks=disks))
    with pytest.raises(LibvirtModuleError, match='memory: .* exists already'):
        plan_domain_snapshot(ask(memory=str(tmp_path / 'm'), disks=[dict(name='vda', snapshot=None, file=str(tmp_path / 'o'))]),
                             domain('running', disks=disks))


def test_disks_without_a_file_of_their_own_need_an_overlay_named():
    disks = [DomainDisk('vda', disk_type='volume', source='vm-disk', driver_format='qcow2')]
    with pytest.raises(LibvirtModuleError, match='is a volume disk: libvirt names overlay files only for file disks'):
        plan_domain_snapshot(ask(external=True), domain(disks=disks))


@pytest.mark.parametrize('path, expected', [
    ('/i/vm.qcow2', '/i/vm.snap'), ('/i/vm', '/i/vm.snap'), ('/i.d/vm', '/i.d/vm.snap'), ('/i/vm.a.b', '/i/vm.a.snap'),
    ('/i/.hidden', '/i/.snap'),
])
def test_overlay_names_follow_libvirts_rule(path, expected):
    assert derived_overlay(path, 'snap') == expected


# --------------------------------------------------------------------------- an existing snapshot
def test_an_existing_snapshot_is_ok_and_a_new_description_is_redefined():
    existing = domain(snapshots=[record('snap', current=True, description='old')])
    assert plan_domain_snapshot(ask(), existing).actions == []
    assert plan_domain_snapshot(ask(description='old', external=False), existing).actions == []
    plan = plan_domain_snapshot(ask(description='new'), existing)
    assert plan.kinds() == ['redefine'] and plan.actions[0].args['description'] == 'new'
    assert plan.before['snapshots'] == ['- snap (shutoff, internal): old'] and plan.after['snapshots'] == ['- snap (shutoff, internal): new']


@pytest.mark.parametrize('params, message', [
    (dict(external=True), 'it is internal, the task asks for an external snapshot'),
    (dict(memory='/i/m'), 'its memory state is no, the task asks for /i/m'),
    (dict(disks=[dict(name='vda', snapshot='no', file=None)]), 'disk vda is snapshotted as internal, the task asks for no'),
])
def test_an_existing_snapshot_that_differs_in_what_cannot_change_is_an_error(params, message):
    with pytest.raises(LibvirtModuleError, match="snapshot 'snap' of domain 'vm' exists and differs .*" + message):
        plan_domain_snapshot(ask(**params), domain(snapshots=[record('snap')]))


def test_an_existing_snapshot_with_memory_is_not_disk_only():
    existing = domain('running', snapshots=[record('snap', memory='internal', state='running')])
    with pytest.raises(LibvirtModuleError, match='it holds the memory state'):
        plan_domain_snapshot(ask(disk_only=True), existing)


# --------------------------------------------------------------------------- revert
def never_compared(path, name):
    raise AssertionError('the disks are compared only for a shut-off domain at its current snapshot')


def test_reverting_to_an_external_snapshot_before_libvirt_9_9_names_both_versions():
    existing = domain(snapshots=[external_record('snap', memory='external', memory_file='/i/m', state='running')])
    with pytest.raises(LibvirtModuleError) as caught:
        plan_domain_snapshot(ask(state='revert'), existing, never_compared)
    assert str(caught.value) == (
        "cannot revert domain 'vm' to snapshot 'snap': libvirt 9.0.0 (the daemon at qemu:///system) cannot do this: snapshot "
        "'snap' is external (memory in /i/m, vda overlay /i/vda.snap) and reverting to external snapshots needs libvirt 9.9.0 or later")
    newer = domain('running', snapshots=[external_record('snap', state='running')], lib_version=9009000)
    assert plan_domain_snapshot(ask(state='revert'), newer, never_compared).kinds() == ['revert']


def test_reverting_to_a_snapshot_that_does_not_exist_lists_the_snapshots():
    with pytest.raises(LibvirtModuleError, match="domain 'vm' has no snapshot 'snap' to revert to \\(its snapshots: a, b\\)"):
        plan_domain_snapshot(ask(state='revert'), domain(snapshots=[record('b'), record('a')]), never_compared)


@pytest.mark.parametrize('snapshot_state, domain_state, option, expected_target, flags', [
    ('running', 'shutoff', 'snapshot', 'running', []),
    ('running', 'running', 'paused', 'paused', ['VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED']),
    ('shutoff', 'running', 'snapshot', 'shutoff', []),
    ('shutoff', 'shutoff', 'running', 'running', ['VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING']),
    ('disk-snapshot', 'running', 'snapshot', 'shutoff', []),
])
def test_a_revert_leaves_the_domain_in_the_state_asked(snapshot_state, domain_state, option, expected_target, flags):
    existing = domain(domain_state, snapshots=[record('snap', current=True, state=snapshot_state)])
    plan = plan_domain_snapshot(ask(state='revert', domain_state=option), existing, lambda path, name: {'identical': False})
    assert plan.kinds() == ['revert'] and flags_of(plan) == flags
    assert plan.after['state'] == expected_target and plan.after['current'] == 'snap'


def test_a_running_domain_at_its_current_snapshot_is_not_reverted_unless_asked_always():
    existing = domain('running', snapshots=[record('snap', current=True, state='running', memory='internal')])
    plan = plan_domain_snapshot(ask(state='revert'), existing, never_compared)
    assert plan.actions == [] and plan.before == plan.after
    plan = plan_domain_snapshot(ask(state='revert', revert_always=True, force=True), existing, never_compared)
    assert plan.kinds() == ['revert'] and flags_of(plan) == ['VIR_DOMAIN_SNAPSHOT_REVERT_FORCE']


def test_a_shut_off_domain_is_reverted_when_a_disk_no_longer_holds_the_snapshot():
    at_snapshot = {'/i/vda.qcow2': True, '/i/vdb.qcow2': True}
    compared = []

    def compare(path, name):
        compared.append((path, name))
        return {'identical': at_snapshot[path]}

    then = dict((t, qcow2_disk(t, '/i/%s.qcow2' % t)) for t in ('vda', 'vdb'))
    snap = record('snap', current=True, domain_disks_at_snapshot=then,
                  disks=[{'name': t, 'snapshot': 'internal', 'file': None, 'format': None} for t in ('vda', 'vdb')])
    existing = domain(disks=list(then.values()), snapshots=[snap])
    assert plan_domain_snapshot(ask(state='revert'), existing, compare).actions == []
    assert compared == [('/i/vda.qcow2', 'snap'), ('/i/vdb.qcow2', 'snap')]
    at_snapshot['/i/vdb.qcow2'] = False
    assert plan_domain_snapshot(ask(state='revert'), existing, compare).kinds() == ['revert']
    # The domain moved on to other files (an overlay): not at the snapshot, whatever the images say.
    moved = domain(disks=[qcow2_disk('vda', '/i/vda.other'), then['vdb']], snapshots=[snap])
    assert plan_domain_snapshot(ask(state='revert'), moved, lambda path, name: {'identical': True}).kinds() == ['revert']
    # Not the current snapshot: reverted without looking at the images.
    other = domain(disks=list(then.values()), snapshots=[record('snap', domain_disks_at_snapshot=then), record('x', current=True)])
    assert plan_domain_snapshot(ask(state='revert'), other, never_compared).kinds() == ['revert']


def qemu(*args):
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def test_the_revert_rule_reads_the_real_images(tmp_path):
    image = str(tmp_path / 'vda.qcow2')
    qemu('qemu-img', 'create', '-q', '-f', 'qcow2', image, '4M')
    qemu('qemu-io', '-c', 'write -P 0xaa 0 64k', image)
    qemu('qemu-img', 'snapshot', '-c', 'snap', image)
    disk = qcow2_disk('vda', image)
    snap = record('snap', current=True, domain_disks_at_snapshot={'vda': disk})
    existing = domain(disks=[disk], snapshots=[snap])
    assert disks_at_snapshot(existing, snap, backend._image_compare)
    qemu('qemu-io', '-c', 'write -P 0x55 0 4k', image)
    assert not disks_at_snapshot(existing, snap, backend._image_compare)
    qemu('qemu-img', 'snapshot', '-a', 'snap', image)
    assert disks_at_snapshot(existing, snap, backend._image_compare)
    assert not disks_at_snapshot(domain(disks=[qcow2_disk('vda', str(tmp_path / 'missing'))], snapshots=[snap]), snap,
                                 backend._image_compare)


# --------------------------------------------------------------------------- delete
def tree():
    return [record('a', created=1), record('b', 'a', created=2), record('c', 'b', created=3, current=True), record('d', 'a', created=4)]


def test_deleting_a_snapshot_that_does_not_exist_changes_nothing():
    plan = plan_domain_snapshot(ask(state='absent', name='zz'), domain(snapshots=tree()))
    assert plan.actions == [] and plan.before == plan.after


def test_deleting_a_snapshot_moves_its_children_to_its_parent():
    plan = plan_domain_snapshot(ask(state='absent', name='b'), domain(snapshots=tree()))
    assert plan.actions[0].args['removed'] == ['b'] and plan.after['current'] == 'c'
    assert plan.after['snapshots'] == ['- a (shutoff, internal)', '  - c (shutoff, internal)', '  - d (shutoff, internal)']


def test_deleting_the_current_snapshot_makes_its_parent_current():
    plan = plan_domain_snapshot(ask(state='absent', name='c'), domain(snapshots=tree()))
    assert plan.after['current'] == 'b'


def test_deleting_with_children_removes_the_subtree():
    plan = plan_domain_snapshot(ask(state='absent', name='b', children=True), domain(snapshots=tree()))
    assert plan.actions[0].args['removed'] == ['b', 'c'] and plan.after['current'] == 'a'
    assert plan.after['snapshots'] == ['- a (shutoff, internal)', '  - d (shutoff, internal)']
    assert plan.actions[0].description == "delete snapshot 'b' and its 1 descendants of domain 'vm'"


def test_deleting_children_only_keeps_the_snapshot_and_makes_it_current():
    plan = plan_domain_snapshot(ask(state='absent', name='a', children_only=True), domain(snapshots=tree()))
    assert plan.actions[0].args['removed'] == ['b', 'c', 'd'] and plan.after['current'] == 'a'
    assert plan.after['snapshots'] == ['- a (shutoff, internal)']
    leaf = plan_domain_snapshot(ask(state='absent', name='d', children_only=True), domain(snapshots=tree()))
    assert leaf.actions == []


def test_external_snapshots_with_children_are_refused_naming_the_version_and_metadata_only_is_allowed():
    snapshots = [external_record('e1', created=1), external_record('e2', 'e1', created=2, current=True)]
    with pytest.raises(LibvirtModuleError, match="libvirt 9.0.0 .* external snapshot 'e1' has children \\(e2\\).*metadata_only=true"):
        plan_domain_snapshot(ask(state='absent', name='e1'), domain('running', snapshots=snapshots))
    with pytest.raises(LibvirtModuleError, match='libvirt 9.0.0 .* one at a time, never with their children'):
        plan_domain_snapshot(ask(state='absent', name='e1', children=True), domain('running', snapshots=snapshots))
    with pytest.raises(LibvirtModuleError, match='libvirt 8.10.0 .* deleting external snapshots \\(e2\\) needs libvirt 9.0.0'):
        plan_domain_snapshot(ask(state='absent', name='e2'), domain('running', snapshots=snapshots, lib_version=8010000))
    plan = plan_domain_snapshot(ask(state='absent', name='e1', children=True, metadata_only=True), domain('running', snapshots=snapshots))
    assert plan.actions[0].args['removed'] == ['e1', 'e2'] and plan.after['snapshots'] == [] and plan.after['current'] is None
    assert plan.kinds() == ['delete'] and plan.actions[0].description.endswith('(metadata only: their files stay)')
    assert plan_domain_snapshot(ask(state='absent', name='e2'), domain('running', snapshots=snapshots)).kinds() == ['delete']


def test_children_only_over_one_external_child_is_refused_before_anything_is_done():
    # libvirt (qemuSnapshotDeleteValidate) refuses children/children_only whenever a descendant is external,
    # one external child included: the plan refuses it too, so check mode predicts the refusal.
    snapshots = [record('i1', created=1), external_record('x1', 'i1', created=2, current=True)]
    with pytest.raises(LibvirtModuleError, match="cannot delete snapshot 'i1' of domain 'vm': libvirt 9.0.0 .*cannot do this: "
                                                 "libvirt deletes external snapshots \\(x1\\) one at a time"):
        plan_domain_snapshot(ask(state='absent', name='i1', children_only=True), domain(snapshots=snapshots))
    with pytest.raises(LibvirtModuleError, match='one at a time'):
        plan_domain_snapshot(ask(state='absent', name='i1', children=True), domain(snapshots=snapshots))
    forget = plan_domain_snapshot(ask(state='absent', name='i1', children_only=True, metadata_only=True), domain(snapshots=snapshots))
    assert forget.actions[0].args['removed'] == ['x1']


def test_an_external_snapshot_on_an_internal_parent_is_refused_when_libvirt_would_merge_it():
    # libvirt merges the current external snapshot into its parent, and refuses when that parent is internal.
    snapshots = [record('i1', created=1), external_record('x1', 'i1', created=2, current=True)]
    with pytest.raises(LibvirtModuleError, match="cannot delete snapshot 'x1' .*libvirt 9.0.0 .*cannot do this: external snapshot 'x1' "
                                                 "is the current one and its parent i1 is internal.*metadata_only=true"):
        plan_domain_snapshot(ask(state='absent', name='x1'), domain(snapshots=snapshots))
    # Not current: libvirt only removes its overlay, whatever the parent.
    leaf = [record('i1', created=1, current=True), external_record('x1', 'i1', created=2)]
    assert plan_domain_snapshot(ask(state='absent', name='x1'), domain(snapshots=leaf)).kinds() == ['delete']
    # A disk the internal parent left out has no parent for that disk.
    left_out = record('i1', created=1, disks=[{'name': 'vda', 'snapshot': 'no', 'file': None, 'format': None},
                                              {'name': 'vdb', 'snapshot': 'internal', 'file': None, 'format': None}])
    assert plan_domain_snapshot(ask(state='absent', name='x1'), domain(snapshots=[
        left_out, external_record('x1', 'i1', created=2, current=True)])).kinds() == ['delete']


def test_children_is_not_passed_to_libvirt_for_a_snapshot_without_descendants():
    # libvirt refuses the CHILDREN flag on any external snapshot, even one without children.
    plan = plan_domain_snapshot(ask(state='absent', name='x1', children=True),
                                domain(snapshots=[external_record('x1', current=True)]))
    assert plan.actions[0].args['removed'] == ['x1'] and plan.actions[0].args['flags'] == []
    plan = plan_domain_snapshot(ask(state='absent', name='a', children=True), domain(snapshots=tree()))
    assert plan.actions[0].args['flags'] == ['VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN']
    plan = plan_domain_snapshot(ask(state='absent', name='a', children_only=True, metadata_only=True), domain(snapshots=tree()))
    assert plan.actions[0].args['flags'] == ['VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY', 'VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY']


def test_an_overlay_or_memory_file_in_a_missing_directory_is_refused(tmp_path):
    missing = str(tmp_path / 'nowhere' / 'vda.qcow2')
    plan = plan_domain_snapshot(ask(external=True, disks=[{'name': 'vda', 'file': missing}, {'name': 'vdb', 'snapshot': 'no'}]), domain())
    with pytest.raises(LibvirtModuleError, match="the directory of the overlay file %s for disk vda does not exist" % missing):
        backend.check_plan_files(plan)
    memory = str(tmp_path / 'nowhere' / 'm')
    plan = plan_domain_snapshot(ask(memory=memory, disks=[{'name': 'vda', 'file': str(tmp_path / 'o')}, {'name': 'vdb', 'snapshot': 'no'}]),
                                domain('running'))
    with pytest.raises(LibvirtModuleError, match='memory: the directory of %s does not exist' % memory):
        backend.check_plan_files(plan)
    (tmp_path / 'nowhere').mkdir()
    backend.check_plan_files(plan)


def test_the_rendered_view_names_domain_state_current_and_tree():
    view = plan_domain_snapshot(ask(state='absent', name='zz'), domain('running', snapshots=tree())).before
    assert render_view(view) == ('domain: vm\nstate: running\ncurrent snapshot: c\nsnapshots:\n  - a (shutoff, internal)\n'
                                 '    - b (shutoff, internal)\n      - c (shutoff, internal)\n    - d (shutoff, internal)\n')
    assert render_view(plan_domain_snapshot(ask(), domain()).before).endswith('current snapshot: (none)\nsnapshots: (none)\n')


# --------------------------------------------------------------------------- the modules against the real libvirtd
def virsh(*args, **kwargs):
    return subprocess.run(['virsh', '-c', URI] + list(args), capture_output=True, text=True, check=kwargs.get('check', True))


DOMAIN_XML = '''<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{dir}/disk.img.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{dir}/data'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>'''


@pytest.fixture
def shut_off_domain(tmp_path, request):
    name = PREFIX + 'unit_' + request.node.name[-20:].replace('[', '_').replace(']', '_')
    for image in ('disk.img.qcow2', 'data'):
        qemu('qemu-img', 'create', '-q', '-f', 'qcow2', str(tmp_path / image), '4M')
    (tmp_path / 'domain.xml').write_text(DOMAIN_XML.format(name=name, dir=tmp_path))
    virsh('define', str(tmp_path / 'domain.xml'))
    try:
        yield name
    finally:
        virsh('destroy', name, check=False)
        virsh('undefine', name, '--snapshots-metadata', check=False)


def run_module(module, capsys, check_mode=False, **args):
    args.update(_ansible_check_mode=check_mode, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


def test_libvirt_names_overlays_as_the_module_predicts(tmp_path, shut_off_domain):
    # libvirt names them itself when the snapshot definition gives no file: the oracle for derived_overlay.
    virsh('snapshot-create-as', shut_off_domain, 'x1', '--disk-only')
    sources = virsh('domblklist', shut_off_domain).stdout
    assert derived_overlay(str(tmp_path / 'disk.img.qcow2'), 'x1') in sources
    assert derived_overlay(str(tmp_path / 'data'), 'x1') in sources


def test_the_description_of_an_external_snapshot_is_changed_by_redefining_it(shut_off_domain, capsys):
    virsh('snapshot-create-as', shut_off_domain, 'x1', '--disk-only', '--description', 'old')
    args = dict(domain=shut_off_domain, name='x1', description='new', external=True)
    check = run_module(domain_snapshot, capsys, check_mode=True, **args)
    assert '<description>old</description>' in virsh('snapshot-dumpxml', shut_off_domain, 'x1').stdout
    real = run_module(domain_snapshot, capsys, **args)
    assert check['changed'] and real['changed'] and check['diff'] == real['diff']
    assert real['actions'] == ["change the description of snapshot 'x1' of domain '%s'" % shut_off_domain]
    assert '<description>new</description>' in virsh('snapshot-dumpxml', shut_off_domain, 'x1').stdout
    assert real['current'] == 'x1' and real['snapshot']['description'] == 'new' and real['snapshot']['external']
    assert not run_module(domain_snapshot, capsys, **args)['changed']


def test_the_module_creates_reverts_and_deletes_and_check_mode_predicts_it(tmp_path, shut_off_domain, capsys):
    args = dict(domain=shut_off_domain, name='s1', description='first')
    check = run_module(domain_snapshot, capsys, check_mode=True, **args)
    assert virsh('snapshot-list', shut_off_domain, '--name').stdout.strip() == ''
    real = run_module(domain_snapshot, capsys, **args)
    assert check['changed'] and real['changed'] and check['actions'] == real['actions'] and check['diff'] == real['diff']
    assert check['snapshot'] == {} and real['snapshot']['description'] == 'first' and real['current'] == 's1'
    assert 's1' in qemu('qemu-img', 'snapshot', '-l', str(tmp_path / 'data'))
    again = run_module(domain_snapshot, capsys, **args)
    assert not again['changed'] and again['diff']['before'] == real['diff']['after']

    qemu('qemu-io', '-c', 'write -P 0x55 0 4k', str(tmp_path / 'data'))
    revert = run_module(domain_snapshot, capsys, domain=shut_off_domain, name='s1', state='revert')
    assert revert['changed'] and revert['lib_version'] == version_text(libvirt.open(URI).getLibVersion())
    qemu('qemu-io', '-r', '-c', 'read -P 0 0 4k', str(tmp_path / 'data'))
    assert not run_module(domain_snapshot, capsys, domain=shut_off_domain, name='s1', state='revert')['changed']

    info = run_module(domain_snapshot_info, capsys, domain=shut_off_domain)
    assert [s['name'] for s in info['snapshots']] == ['s1'] and info['current'] == 's1' and info['roots'] == ['s1']
    assert info['tree'] == ['- s1 (shutoff, internal): first']

    gone = run_module(domain_snapshot, capsys, domain=shut_off_domain, name='s1', state='absent')
    assert gone['changed'] and gone['snapshot'] == {} and gone['current'] is None
    assert 's1' not in qemu('qemu-img', 'snapshot', '-l', str(tmp_path / 'data'))


def test_module_errors_are_messages_not_tracebacks(shut_off_domain, capsys):
    # One wording across the libvirt modules (_libvirt.domain_not_defined_message), naming the connection.
    unknown = "domain '%snever_defined' is not defined on %s" % (PREFIX, URI)
    result = run_module(domain_snapshot, capsys, domain=PREFIX + 'never_defined', name='s1')
    assert result['failed'] and result['msg'] == unknown
    result = run_module(domain_snapshot, capsys, check_mode=True, domain=PREFIX + 'never_defined', name='s1', state='absent')
    assert result['failed'] and result['msg'] == unknown
    result = run_module(domain_snapshot_info, capsys, domain=PREFIX + 'never_defined')
    assert result['failed'] and result['msg'] == unknown
    result = run_module(domain_snapshot_info, capsys, domain=shut_off_domain, name='nope')
    assert not result.get('failed') and result['snapshots'] == [] and result['current'] is None


def test_without_libvirt_python_the_module_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setattr(_libvirt, 'HAS_LIBVIRT', False)
    result = run_module(domain_snapshot, capsys, domain='x', name='y')
    assert result['failed'] and 'libvirt-python' in result['msg']


@pytest.mark.parametrize('domain_state, current, identical, revert_always, reason', [
    ('shutoff', 'other', True, False, 'no, the current snapshot is other'),
    ('running', 'snap', True, False, 'no, the domain is running, the revert leaves it shutoff'),
    ('shutoff', 'snap', False, False, 'no, the disks no longer hold what the snapshot holds'),
    ('shutoff', 'snap', True, True, 'yes, reverted again (revert_always)'),
])
def test_a_reverts_diff_says_why_the_domain_is_not_at_the_snapshot(domain_state, current, identical, revert_always, reason):
    then = {'vda': qcow2_disk('vda')}
    snapshots = [record('snap', current=current == 'snap', domain_disks_at_snapshot=then), record('other', current=current == 'other')]
    plan = plan_domain_snapshot(ask(state='revert', revert_always=revert_always), domain(domain_state, disks=[then['vda']], snapshots=snapshots),
                                lambda path, name: {'identical': identical})
    assert plan.kinds() == ['revert']
    assert render_view(plan.before).splitlines()[3] == 'at snapshot snap: ' + reason
    assert render_view(plan.after).splitlines()[3] == 'at snapshot snap: yes'


def snapshot_tree(domain_name):
    return virsh('snapshot-list', domain_name, '--tree').stdout


def test_a_deletion_libvirt_refuses_is_refused_in_check_mode_and_for_real_leaving_the_snapshots(shut_off_domain, capsys):
    # libvirt merges a current external snapshot into its parent, and refuses when the parent is internal: the module
    # knows it, so check mode predicts the refusal, and the real run fails the same way before asking libvirt.
    virsh('snapshot-create-as', shut_off_domain, 'i1')
    virsh('snapshot-create-as', shut_off_domain, 'x1', '--disk-only')
    before = snapshot_tree(shut_off_domain)
    version = version_text(libvirt.open(URI).getLibVersion())
    check = run_module(domain_snapshot, capsys, check_mode=True, domain=shut_off_domain, name='x1', state='absent')
    result = run_module(domain_snapshot, capsys, domain=shut_off_domain, name='x1', state='absent')
    assert check.get('failed') and result.get('failed') and check['msg'] == result['msg']
    assert result['msg'].startswith("cannot delete snapshot 'x1' of domain '%s': libvirt %s (the daemon at %s) cannot do this: "
                                    % (shut_off_domain, version, URI))
    assert "its parent 'i1' is internal" in result['msg'] or 'its parent i1 is internal' in result['msg']
    assert result['msg'].endswith("; metadata_only=true removes only libvirt's record of it and leaves its files")
    assert snapshot_tree(shut_off_domain) == before
    # libvirt itself refuses it too (the prediction is libvirt's rule, not a guess).
    assert virsh('snapshot-delete', shut_off_domain, 'x1', check=False).returncode != 0
    forgotten = run_module(domain_snapshot, capsys, domain=shut_off_domain, name='x1', state='absent', metadata_only=True)
    assert forgotten['changed'] and forgotten['current'] == 'i1'


def test_children_only_over_an_external_child_is_refused_in_check_mode_as_libvirt_refuses_it(shut_off_domain, capsys):
    virsh('snapshot-create-as', shut_off_domain, 'e1', '--disk-only')
    virsh('snapshot-create-as', shut_off_domain, 'e2', '--disk-only')
    before = snapshot_tree(shut_off_domain)
    args = dict(domain=shut_off_domain, name='e1', state='absent', children_only=True)
    check = run_module(domain_snapshot, capsys, check_mode=True, **args)
    result = run_module(domain_snapshot, capsys, **args)
    assert check.get('failed') and result.get('failed') and check['msg'] == result['msg']
    assert 'libvirt deletes external snapshots (e2) one at a time' in result['msg']
    assert snapshot_tree(shut_off_domain) == before
    assert virsh('snapshot-delete', shut_off_domain, 'e1', '--children-only', check=False).returncode != 0


def test_a_create_that_fails_on_its_second_disk_leaves_the_domain_as_it_was(tmp_path, shut_off_domain, capsys):
    # The overlay of vda is made first, then qemu-img cannot open vdb's image (removed behind libvirt's back):
    # the snapshot is atomic, libvirt removes the first overlay, and the task fails with nothing changed.
    (tmp_path / 'data').unlink()
    blocks = virsh('domblklist', shut_off_domain).stdout
    args = dict(domain=shut_off_domain, name='x1', external=True,
                disks=[dict(name='vda', file=str(tmp_path / 'vda.x1')), dict(name='vdb', file=str(tmp_path / 'vdb.x1'))])
    check = run_module(domain_snapshot, capsys, check_mode=True, **args)
    assert check['changed'] and len(check['actions']) == 1
    result = run_module(domain_snapshot, capsys, **args)
    assert result.get('failed') and not result.get('changed')
    assert result['msg'].startswith("cannot create snapshot 'x1' of domain '%s': " % shut_off_domain)
    assert virsh('snapshot-list', shut_off_domain, '--name').stdout.strip() == ''
    assert virsh('domblklist', shut_off_domain).stdout == blocks
    assert not (tmp_path / 'vda.x1').exists() and not (tmp_path / 'vdb.x1').exists()


def test_an_overlay_in_a_missing_directory_is_refused_in_check_mode_too(tmp_path, shut_off_domain, capsys):
    args = dict(domain=shut_off_domain, name='x1', external=True,
                disks=[dict(name='vda', file=str(tmp_path / 'no' / 'vda.x1')), dict(name='vdb', snapshot='no')])
    check = run_module(domain_snapshot, capsys, check_mode=True, **args)
    result = run_module(domain_snapshot, capsys, **args)
    assert check.get('failed') and result.get('failed') and check['msg'] == result['msg']
    assert 'the directory of the overlay file %s for disk vda does not exist' % (tmp_path / 'no' / 'vda.x1') in result['msg']
    assert virsh('snapshot-list', shut_off_domain, '--name').stdout.strip() == ''


# --------------------------------------------------------------------------- the EXAMPLES, as written
EXAMPLE_DOMAIN_XML = '''<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{vda}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{vdb}'/><target dev='vdb' bus='virtio'/></disk>
    {channel}
  </devices>
</domain>'''
GUEST_AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


@pytest.fixture
def example_domains(request):
    """web1, db1 (with a guest agent channel) and test1 (with a snapshot 'clean'), as the examples presume, running,
    their images in a directory of their own the qemu process can read (tmp_path's parents are private to root)."""
    prefix = PREFIX + 'ex_%s_' % os.urandom(3).hex()
    directory = tempfile.mkdtemp(prefix=prefix)
    os.chmod(directory, 0o755)
    names = dict((short, prefix + short) for short in ('web1', 'db1', 'test1'))
    disks = {'web1': ('web1-vda.qcow2', 'web1-vdb.qcow2'), 'db1': ('db1-system.qcow2', 'db1-data.qcow2'),
             'test1': ('test1-vda.qcow2', 'test1-vdb.qcow2')}
    try:
        for short, name in names.items():
            paths = [os.path.join(directory, image) for image in disks[short]]
            for path in paths:
                qemu('qemu-img', 'create', '-q', '-f', 'qcow2', path, '4M')
            xml = os.path.join(directory, short + '.xml')
            with open(xml, 'w') as stream:
                stream.write(EXAMPLE_DOMAIN_XML.format(name=name, vda=paths[0], vdb=paths[1], channel=GUEST_AGENT if short == 'db1' else ''))
            virsh('define', xml)
        virsh('snapshot-create-as', names['test1'], 'clean')
        for name in names.values():
            virsh('start', name)
        yield directory, names
    finally:
        for name in names.values():
            virsh('destroy', name, check=False)
            virsh('undefine', name, '--snapshots-metadata', check=False)
        shutil.rmtree(directory, ignore_errors=True)


def test_the_examples_run_in_the_order_written(tmp_path, example_domains):
    """domain_snapshot's and domain_snapshot_info's EXAMPLES, as written, but for the names and paths of this host's
    objects; the quiesce example in check mode (the test domain has no guest OS, hence no agent to answer)."""
    directory, names = example_domains
    tasks = []
    for task in examples_playbook.example_tasks(domain_snapshot) + examples_playbook.example_tasks(domain_snapshot_info):
        args = task.get('kvm.storage.domain_snapshot', task.get('kvm.storage.domain_snapshot_info'))
        if isinstance(args, dict):
            if args.get('quiesce'):
                task['check_mode'] = True
            args['domain'] = names[args['domain']]
            if 'uri' in args:
                args['uri'] = URI
            if 'memory' in args:
                args['memory'] = args['memory'].replace('/var/lib/libvirt/images', directory)
            for disk in args.get('disks', []):
                for key in ('name', 'file'):
                    if key in disk:
                        disk[key] = disk[key].replace('/var/lib/libvirt/images', directory)
        tasks.append(task)
    results = examples_playbook.run_examples(tasks, str(tmp_path), examples_playbook.collections_path(domain_snapshot))

    web1 = names['web1']
    assert results['Internal snapshot of a running or shut-off domain (qcow2 disks), with a description']['changed']
    assert results['Revert to a snapshot and leave the domain paused']['domain_state'] == 'paused'
    assert results['Reset a test machine to its snapshot every time, even if libvirt deems it risky']['changed']
    assert not results['Delete only the descendants of a snapshot']['changed']
    assert results['Delete a snapshot and every snapshot taken from it since']['changed']
    nightly = results['External disk-only snapshot, overlays named by libvirt beside the disks, the second disk left out']
    assert nightly['snapshot']['disks'][0]['file'] == os.path.join(directory, 'web1-vda.nightly')
    assert results["External disk-only snapshot with the guest's file systems frozen, overlay files given"]['changed']
    memory = results['External snapshot of a running domain with its memory, the guest kept running meanwhile']
    assert memory['snapshot']['memory']['file'] == os.path.join(directory, 'web1-with-memory.mem')
    assert results['Forget an external snapshot, keeping its files']['changed']
    assert virsh('snapshot-list', web1, '--name').stdout.split() == ['with-memory']
    assert virsh('snapshot-list', names['db1'], '--name').stdout.split() == []
    assert results['The snapshots of a domain']['current'] == 'with-memory'
    assert results['One snapshot, on another host']['snapshots'] == []
