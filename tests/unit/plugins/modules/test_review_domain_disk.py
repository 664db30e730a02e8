# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_disk when libvirt fails after a change was made: the actions reported are what the domain went through
(a replace that lost its disk is a detach), and a change made is never reported as changed=false."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import subprocess
import uuid as uuid_module

import pytest

import components

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _domain_disk, _libvirt
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import LibvirtModuleError, parse_xml
from ansible_collections.kvm.storage.plugins.module_utils._domain_disk import (
    DiskRequest,
    DomainState,
    apply_plan,
    domain_disk_argument_spec,
    plan_domain_disk,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import create as create_image
from ansible_collections.kvm.storage.plugins.modules import domain_disk

URI = 'qemu:///system'


def params(**values):
    result = dict((name, spec.get('default')) for name, spec in domain_disk_argument_spec().items())
    result.update(domain='d')
    result.update(values)
    return result


class AttachRefused(object):
    """A shut-off domain whose persistent definition takes detaches and refuses every attach."""

    def __init__(self):
        self.calls = []

    def detachDeviceFlags(self, xml, flags):
        self.calls.append('detach')

    def attachDeviceFlags(self, xml, flags):
        self.calls.append('attach')
        raise _libvirt.libvirt.libvirtError('no more available PCI slots (a refusal made for this test)')


def test_a_replace_that_cannot_put_the_old_disk_back_reports_the_detach_it_left(tmp_path):
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    path = str(tmp_path / 'a.qcow2')
    create_image(path, 'qcow2', size=1 << 20)
    disk = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/>"
            "<target dev='sdb' bus='scsi'/></disk>" % path)
    config = parse_xml("<domain type='qemu'><name>d</name><os><type arch='x86_64' machine='pc'>hvm</type></os>"
                       "<devices>%s</devices></domain>" % disk)
    state = DomainState('d', False, True, config, None)
    request = DiskRequest(params(target='sdb', bus='sata'), state)
    plan = plan_domain_disk(request, state)
    assert [action.kind for action in plan.actions] == ['replace']
    domain = AttachRefused()
    with pytest.raises(LibvirtModuleError) as caught:
        apply_plan(domain, plan, request)
    assert domain.calls == ['detach', 'attach', 'attach']
    # the disk is gone from the definition: what the task reports done is that detach, not a replace
    assert caught.value.result == dict(changed=True, actions=[
        "detach disk sdb from the persistent definition of domain 'd' (its replacement could not be attached)"])
    assert 'putting the old disk back failed too' in str(caught.value)


def virsh(*args, check=True):
    return subprocess.run(('virsh', '-c', URI) + args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


@pytest.fixture
def domain_name(tmp_path):
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    name = 'kvmstorage_ut_review_%s' % uuid_module.uuid4().hex[:8]
    (tmp_path / 'domain.xml').write_text(
        "<domain type='qemu'><name>%s</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>" % name)
    virsh('define', str(tmp_path / 'domain.xml'))
    yield name
    virsh('undefine', name, check=False)


class UnreadableAfterAChange(object):
    """The real domain, except that reading it fails once something was attached (the connection dropped)."""

    def __init__(self, domain):
        self.domain = domain
        self.attached = False

    def __getattr__(self, name):
        return getattr(self.domain, name)

    def attachDeviceFlags(self, xml, flags):
        self.domain.attachDeviceFlags(xml, flags)
        self.attached = True

    def XMLDesc(self, flags):
        if self.attached:
            _libvirt.libvirt.virResetLastError()
            raise _libvirt.libvirt.libvirtError('connection lost (a failure made for this test)')
        return self.domain.XMLDesc(flags)


def test_a_failure_to_read_the_domain_after_the_change_reports_the_change(tmp_path, capsys, domain_name, monkeypatch):
    path = str(tmp_path / 'a.qcow2')
    create_image(path, 'qcow2', size=1 << 20)
    real_lookup = _domain_disk.lookup_domain
    monkeypatch.setattr(_domain_disk, 'lookup_domain', lambda conn, name: UnreadableAfterAChange(real_lookup(conn, name)))
    args = dict(domain=domain_name, source=path, _ansible_check_mode=False, _ansible_diff=False)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            domain_disk.main()
    result = json.loads(capsys.readouterr().out)
    attach = "attach disk %s as vda to the persistent definition of domain '%s'" % (path, domain_name)
    assert result['failed'] and 'connection lost' in result['msg'], result
    assert result['changed'] and result['actions'] == [attach]
    assert path in virsh('dumpxml', '--inactive', domain_name).stdout


class ReleasingDomain(object):
    """A running domain whose guest releases a detached disk at once."""

    def __init__(self):
        self.detached = False

    def detachDeviceFlags(self, xml, flags):
        self.detached = True

    def isActive(self):
        return 1

    def XMLDesc(self, flags):
        return "<domain><devices/></domain>"


def test_a_null_detach_timeout_waits_the_default_instead_of_failing_after_the_detach(tmp_path):
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    disk = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/a.raw'/>"
            "<target dev='vdb' bus='virtio'/></disk>")
    definition = parse_xml("<domain type='qemu'><name>d</name><os><type arch='x86_64' machine='pc'>hvm</type></os>"
                           "<devices>%s</devices></domain>" % disk)
    state = DomainState('d', True, False, None, definition)
    request = DiskRequest(params(target='vdb', state='absent', persistent=False, detach_timeout=None), state)
    plan = plan_domain_disk(request, state)
    domain = ReleasingDomain()
    apply_plan(domain, plan, request)
    assert domain.detached
