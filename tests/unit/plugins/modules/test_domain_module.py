# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain: the request checks, the (pure) plan, the shutdown wait, and the module run against the real libvirtd
(qemu:///system) with TCG domains that boot nothing."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re
import shutil
import subprocess
import tempfile
import uuid as uuid_module

import pytest

import components
from module_runner import run_module

from ansible_collections.kvm.storage.plugins.module_utils import _libvirt
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import LibvirtModuleError
from ansible_collections.kvm.storage.plugins.module_utils._domain import (
    DomainRequest,
    DomainState,
    definition_to_define,
    domain_argument_spec,
    plan_domain,
    wait_until_shut_off,
)
from ansible_collections.kvm.storage.plugins.modules import domain as domain_module

URI = 'qemu:///system'
XML = '''<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='user'><model type='virtio'/></interface>
  </devices>
</domain>'''
STORED = '''<domain type='qemu'><name>vm1</name><uuid>63b60cd9-4a9d-4d28-a508-53e08d9c2407</uuid>
  <memory unit='KiB'>65536</memory><vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='user'><mac address='52:54:00:f4:94:75'/><model type='virtio'/></interface></devices></domain>'''
ALIASES = {('x86_64', 'pc'): 'pc-i440fx-7.2'}


def params(**values):
    spec = domain_argument_spec()
    result = dict((key, option.get('default')) for key, option in spec.items())
    result.update(values)
    return result


def state_of(state='shutoff', xml=STORED, persistent=True, autostart=False):
    return DomainState('vm1', '63b60cd9-4a9d-4d28-a508-53e08d9c2407', state, persistent, autostart, xml,
                       machine_aliases=ALIASES)


def plan(domain_state, **values):
    return plan_domain(DomainRequest(params(**values)), domain_state)


# --------------------------------------------------------------------------- request and plan
@pytest.mark.parametrize('values, message', [
    (dict(name='vm2', xml=XML.format(name='vm1', memory=64)), "name is 'vm2' but xml defines domain 'vm1'"),
    (dict(xml='<pool type="dir"><name>p</name></pool>'), 'a domain definition has a <domain> root element, found <pool>'),
    (dict(xml='<domain><vcpu>1</vcpu></domain>'), 'the definition has no <name>'),
    (dict(xml='<domain><name>vm1</name'), 'xml is not well-formed XML'),
    (dict(xml="<domain><name>vm1</name><memory unit='parsec'>1</memory></domain>"), "unknown memory unit 'parsec'"),
    (dict(name='vm1', shutdown_timeout=-1), 'shutdown_timeout: expected a number of seconds >= 0'),
])
def test_bad_requests_are_refused_before_anything_is_read(values, message):
    with pytest.raises(LibvirtModuleError, match=re.escape(message)):
        DomainRequest(params(**values))


def test_the_name_option_names_a_definition_without_one():
    request = DomainRequest(params(name='vm1', xml='<domain type="qemu"><vcpu>1</vcpu></domain>'))
    assert request.name == 'vm1' and request.definition.find('name').text == 'vm1'


def test_a_missing_domain_is_defined_then_started_and_autostarted():
    result = plan(None, xml=XML.format(name='vm1', memory=64), state='running', autostart=True)
    assert result.kinds() == ['define', 'start', 'autostart'] and result.drift == []
    assert result.before == {'name': 'vm1', 'state': 'absent'} and result.after['state'] == 'running'


def test_a_missing_domain_without_xml_cannot_be_defined():
    with pytest.raises(LibvirtModuleError, match="domain 'vm1' is not defined on qemu:///system; give xml to define it"):
        plan(None, name='vm1', state='running', uri=URI)


def test_a_drift_is_reported_and_nothing_planned_unless_redefine():
    drifted = plan(state_of(), xml=XML.format(name='vm1', memory=96))
    assert drifted.actions == [] and drifted.drift == [dict(path='/domain/memory', requested='98304', actual='65536')]
    assert 'set redefine=true' in drifted.warnings[0] and drifted.before == drifted.after
    redefined = plan(state_of(), xml=XML.format(name='vm1', memory=96), redefine=True)
    assert redefined.kinds() == ['redefine'] and redefined.drift == drifted.drift
    assert '98304' in redefined.after['xml'] and '65536' in redefined.before['xml']


def test_redefining_a_running_domain_leaves_a_restart_pending():
    result = plan(state_of('running'), xml=XML.format(name='vm1', memory=96), redefine=True)
    assert result.kinds() == ['redefine'] and result.restart_pending and 'next started' in result.warnings[-1]


def test_a_running_domain_defined_as_requested_has_no_restart_pending():
    result = plan(state_of('running'), xml=XML.format(name='vm1', memory=64), state='running')
    assert result.actions == [] and result.drift == [] and not result.restart_pending and result.warnings == []


@pytest.mark.parametrize('current, values, kinds', [
    ('shutoff', dict(state='running'), ['start']),
    ('paused', dict(state='running'), ['resume']),
    ('running', dict(state='running'), []),
    ('running', dict(state='shutoff'), ['shutdown']),
    ('paused', dict(state='shutoff', force=True), ['destroy']),
    ('shutoff', dict(state='shutoff'), []),
    ('running', dict(state='present'), []),
    ('running', dict(state='absent'), ['shutdown', 'undefine']),
    ('shutoff', dict(state='absent'), ['undefine']),
    ('shutoff', dict(autostart=True), ['autostart']),
])
def test_state_transitions(current, values, kinds):
    assert plan(state_of(current), name='vm1', **values).kinds() == kinds


@pytest.mark.parametrize('found, message', [
    (dict(snapshots=2), "has 2 snapshot(s), whose records libvirt keeps with the definition; set undefine_flags: [snapshots_metadata]"),
    (dict(managed_save=True), 'has a managed save image; set undefine_flags: [managed_save]'),
])
def test_what_libvirt_would_not_undefine_the_domain_with_is_refused_before_the_shutdown(found, message):
    domain_state = state_of('running')
    for key, value in found.items():
        setattr(domain_state, key, value)
    with pytest.raises(LibvirtModuleError, match=re.escape(message) + '.*nothing was changed'):
        plan(domain_state, name='vm1', state='absent', force=True)
    flags = ['snapshots_metadata', 'managed_save']
    assert plan(domain_state, name='vm1', state='absent', force=True, undefine_flags=flags).kinds() == ['shutdown', 'undefine']


def test_a_paused_domain_is_not_destroyed_without_force():
    with pytest.raises(LibvirtModuleError, match='is paused and cannot shut down gracefully'):
        plan(state_of('paused'), name='vm1', state='shutoff')


def test_a_redefinition_keeps_the_uuid_and_the_generated_macs():
    request = DomainRequest(params(xml=XML.format(name='vm1', memory=96)))
    xml = definition_to_define(request, state_of())
    assert '<uuid>63b60cd9-4a9d-4d28-a508-53e08d9c2407</uuid>' in xml
    assert '<mac address="52:54:00:f4:94:75" />' in xml


class FakeDomain(object):
    def __init__(self, stops_after):
        self.polls = stops_after

    def name(self):
        return 'vm1'

    def isActive(self):
        self.polls -= 1
        return self.polls >= 0


class Clock(object):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_the_shutdown_wait_ends_when_the_guest_is_off_or_the_timeout_passes():
    clock = Clock()
    assert wait_until_shut_off(FakeDomain(3), 10, clock, clock.sleep) and clock.now == 1.5
    clock = Clock()
    assert not wait_until_shut_off(FakeDomain(1000), 10, clock, clock.sleep) and clock.now == 10


# --------------------------------------------------------------------------- the module against libvirtd
def virsh(*args, check=True):
    return subprocess.run(('virsh', '-c', URI) + args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


@pytest.fixture
def domain_name():
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    name = 'kvmstorage_it_domain_unit_%s' % uuid_module.uuid4().hex[:8]
    yield name
    virsh('destroy', name, check=False)
    virsh('undefine', name, '--nvram', '--snapshots-metadata', check=False)


def dumpxml(name):
    return virsh('dumpxml', '--inactive', name).stdout


def test_check_real_and_idempotent_runs_of_a_domain_without_macs(capsys, domain_name):
    args = dict(xml=XML.format(name=domain_name, memory=64), autostart=True)
    check = run_module(domain_module, capsys, check_mode=True, **args)
    assert virsh('dominfo', domain_name, check=False).returncode != 0  # check mode defined nothing
    real = run_module(domain_module, capsys, **args)
    assert check['changed'] and real['changed'] and check['actions'] == real['actions'] and check['diff'] == real['diff']
    assert real['domain']['name'] == domain_name and real['domain']['state'] == 'shutoff' and real['domain']['autostart']
    mac = re.search(r"<mac address='([^']+)'", dumpxml(domain_name)).group(1)
    # community.libvirt #186: an XML without MAC addresses is unchanged on the second run.
    again = run_module(domain_module, capsys, **args)
    assert not again['changed'] and again['actions'] == [] and again['drift'] == [] and 'warnings' not in again
    assert again['diff']['before'] == again['diff']['after'] and again['domain']['uuid'] == real['domain']['uuid']
    assert re.search(r"<mac address='([^']+)'", dumpxml(domain_name)).group(1) == mac


def test_a_changed_request_is_a_drift_until_redefine_and_the_mac_is_kept(capsys, domain_name):
    run_module(domain_module, capsys, xml=XML.format(name=domain_name, memory=64))
    mac = re.search(r"<mac address='([^']+)'", dumpxml(domain_name)).group(1)
    # community.libvirt #53: a change to an existing domain is not silently ignored.
    drifted = run_module(domain_module, capsys, xml=XML.format(name=domain_name, memory=96))
    assert not drifted['changed'] and drifted['drift'] == [dict(path='/domain/memory', requested='98304', actual='65536')]
    assert drifted['warnings'] and 'set redefine=true' in drifted['notes'][0] and "<memory unit='KiB'>65536</memory>" in dumpxml(domain_name)
    check = run_module(domain_module, capsys, check_mode=True, redefine=True, xml=XML.format(name=domain_name, memory=96))
    assert check['changed'] and "<memory unit='KiB'>65536</memory>" in dumpxml(domain_name)
    redefined = run_module(domain_module, capsys, redefine=True, xml=XML.format(name=domain_name, memory=96))
    assert redefined['changed'] and redefined['actions'] == check['actions'] and redefined['diff'] == check['diff']
    stored = dumpxml(domain_name)
    assert "<memory unit='KiB'>98304</memory>" in stored and mac in stored
    assert not run_module(domain_module, capsys, redefine=True, xml=XML.format(name=domain_name, memory=96))['changed']


def test_a_definition_changed_behind_the_modules_back_is_reported(capsys, domain_name, tmp_path):
    run_module(domain_module, capsys, xml=XML.format(name=domain_name, memory=64))
    (tmp_path / 'edited.xml').write_text(dumpxml(domain_name).replace("<vcpu placement='static'>1</vcpu>",
                                                                      "<vcpu placement='static'>2</vcpu>"))
    virsh('define', str(tmp_path / 'edited.xml'))
    result = run_module(domain_module, capsys, xml=XML.format(name=domain_name, memory=64))
    assert not result['changed'] and result['drift'] == [dict(path='/domain/vcpu', requested='1', actual='2')]


def test_a_refused_definition_leaves_the_previous_one(capsys, domain_name):
    run_module(domain_module, capsys, xml=XML.format(name=domain_name, memory=64))
    before = dumpxml(domain_name)
    bad = XML.format(name=domain_name, memory=96).replace("<vcpu>1</vcpu>", "<vcpu>1</vcpu><bogus/>")
    result = run_module(domain_module, capsys, redefine=True, xml=bad)
    assert result['failed'] and 'libvirt refused the definition of domain' in result['msg']
    assert not result['changed'] and dumpxml(domain_name) == before


def test_running_shutoff_and_absent(capsys, domain_name):
    args = dict(xml=XML.format(name=domain_name, memory=64))
    started = run_module(domain_module, capsys, state='running', **args)
    assert started['actions'] == ["define domain '%s'" % domain_name, "start domain '%s'" % domain_name]
    assert started['domain']['state'] == 'running'
    assert not run_module(domain_module, capsys, state='running', **args)['changed']
    # The guest boots nothing: it cannot answer the shutdown request.
    refused = run_module(domain_module, capsys, name=domain_name, state='shutoff', shutdown_timeout=1)
    assert refused['failed'] and 'did not shut down within 1 s' in refused['msg']
    assert virsh('domstate', domain_name).stdout.strip() == 'running'
    stopped = run_module(domain_module, capsys, name=domain_name, state='shutoff', shutdown_timeout=1, force=True)
    assert stopped['changed'] and stopped['domain']['state'] == 'shutoff'
    virsh('start', domain_name)
    gone = run_module(domain_module, capsys, name=domain_name, state='absent', shutdown_timeout=0, force=True)
    assert gone['changed'] and gone['domain'] == {} and virsh('dominfo', domain_name, check=False).returncode != 0
    assert not run_module(domain_module, capsys, name=domain_name, state='absent')['changed']


def test_a_new_domain_that_cannot_start_is_undefined_again(capsys, domain_name):
    xml = XML.format(name=domain_name, memory=64).replace(
        "<interface type='user'>", "<interface type='network'><source network='kvmstorage_it_domain_no_such_net'/>")
    result = run_module(domain_module, capsys, state='running', xml=xml)
    assert result['failed'] and "cannot start domain '%s'" % domain_name in result['msg']
    assert "undone: undefine domain '%s'" % domain_name in result['msg'] and not result['changed']
    assert virsh('dominfo', domain_name, check=False).returncode != 0


@pytest.fixture
def qemu_disk():
    """A qcow2 image libvirt (another user) can open: pytest's own temporary directories are private."""
    if shutil.which('qemu-img') is None:
        components.missing('qemu-img')
    work = tempfile.mkdtemp(prefix='kvmstorage_it_domain_unit_')
    os.chmod(work, 0o755)
    path = os.path.join(work, 'disk.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', path, '16M'], check=True)
    yield path
    shutil.rmtree(work)


def test_a_domain_with_snapshots_is_undefined_only_with_their_records(capsys, domain_name, qemu_disk):
    xml = XML.format(name=domain_name, memory=64).replace(
        '</devices>', "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
        "<target dev='vda' bus='virtio'/></disk></devices>" % qemu_disk)
    run_module(domain_module, capsys, xml=xml)
    virsh('snapshot-create-as', domain_name, 'before')
    refused = run_module(domain_module, capsys, name=domain_name, state='absent')
    assert refused['failed'] and 'set undefine_flags: [snapshots_metadata]' in refused['msg']
    assert virsh('dominfo', domain_name, check=False).returncode == 0
    gone = run_module(domain_module, capsys, name=domain_name, state='absent', undefine_flags=['snapshots_metadata'])
    assert gone['changed'] and virsh('dominfo', domain_name, check=False).returncode != 0
    assert os.path.exists(qemu_disk)  # the disk is kept


def test_an_efi_domain_runs_unchanged_and_its_variable_store_is_kept_unless_asked(capsys, domain_name):
    xml = XML.format(name=domain_name, memory=64).replace(
        "<os><type arch='x86_64' machine='pc'>hvm</type></os>",
        "<os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os><features><acpi/></features>")
    nvram = '/var/lib/libvirt/qemu/nvram/%s_VARS.fd' % domain_name
    try:
        assert run_module(domain_module, capsys, state='running', xml=xml)['changed']
        again = run_module(domain_module, capsys, state='running', xml=xml)
        assert not again['changed'] and again['drift'] == [] and not again['restart_pending']
        assert os.path.exists(nvram)
        gone = run_module(domain_module, capsys, name=domain_name, state='absent', shutdown_timeout=0, force=True)
        assert gone['changed'] and gone['domain'] == {} and os.path.exists(nvram)
    finally:
        if os.path.exists(nvram):
            os.remove(nvram)
