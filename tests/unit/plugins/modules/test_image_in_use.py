# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module that writes an image file refuses one another process holds (QEMU's locks, docs/security.md rule 8),
and names the running libvirt domains holding it where libvirt can tell (_libvirt.domains_holding, asked with a
stand-in connection here; the contention integration target asks the real libvirtd)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os

import pytest

from module_runner import run_module

from ansible_collections.kvm.storage.plugins.module_utils import _libvirt
from ansible_collections.kvm.storage.plugins.module_utils import _lvm_volume_image as lvi
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageInUseError
from ansible_collections.kvm.storage.plugins.modules import cloud_init_seed, disk_image

MIB = 1024 * 1024


class FakeDomain(object):
    def __init__(self, name, sources):
        self._name = name
        disks = ''.join("<disk type='file' device='disk'><source file='%s'/>"
                        "<backingStore type='file'><source file='%s.base'/></backingStore></disk>" % (source, source)
                        for source in sources)
        self.xml = "<domain><name>%s</name><devices>%s</devices></domain>" % (name, disks)

    def name(self):
        return self._name

    def XMLDesc(self, flags):  # pylint: disable=invalid-name
        return self.xml


class FakeConnection(object):
    def __init__(self, domains):
        self.domains = domains
        self.closed = False

    def listAllDomains(self, flags):  # pylint: disable=invalid-name
        return self.domains

    def close(self):
        self.closed = True


@pytest.fixture
def libvirt_domains(monkeypatch):
    """Running domains per URI as libvirt would list them: {uri: [FakeDomain]}; a URI not listed cannot connect."""
    domains = {}

    def open_connection(self):
        if self.uri not in domains:
            raise _libvirt.LibvirtModuleError('cannot connect to libvirt at %s' % self.uri)
        assert self.readonly
        self.conn = FakeConnection(domains[self.uri])
        return self.conn

    monkeypatch.setattr(_libvirt, 'HAS_LIBVIRT', True)
    monkeypatch.setattr(_libvirt.libvirt, 'import_now', object)
    monkeypatch.setattr(_libvirt.LibvirtConnection, '__init__',
                        lambda self, uri=_libvirt.DEFAULT_URI, readonly=False: (
                            setattr(self, 'uri', uri), setattr(self, 'readonly', readonly),
                            setattr(self, 'conn', None)) and None)
    monkeypatch.setattr(_libvirt.LibvirtConnection, 'open', open_connection)
    monkeypatch.setattr(_libvirt.LibvirtConnection, 'close', lambda self: None)
    monkeypatch.setattr(_libvirt.libvirt, 'VIR_CONNECT_LIST_DOMAINS_ACTIVE', 1, raising=False)
    monkeypatch.setattr(_libvirt.libvirt, 'libvirtError', RuntimeError, raising=False)
    return domains


def raw_file(path, size=MIB, fill=b'\1'):
    with open(str(path), 'wb') as stream:
        stream.write(fill * size)
    return str(path)


def qcow2_file(path):
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage import create
    create(str(path), 'qcow2', MIB)
    return str(path)


def digest(path):
    with open(path, 'rb') as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def test_the_domain_holding_an_image_is_found_by_its_source_or_backing_layer(tmp_path, libvirt_domains):
    image = raw_file(tmp_path / 'a.raw')
    link = tmp_path / 'link.raw'
    link.symlink_to(image)
    libvirt_domains['qemu:///system'] = [FakeDomain('other', [str(tmp_path / 'b.raw')]), FakeDomain('web', [str(link)])]
    libvirt_domains['qemu:///session'] = [FakeDomain('base-user', [str(tmp_path / 'x')])]
    assert _libvirt.domains_holding(image) == [('web', 'qemu:///system')]
    # a layer of a disk's backing chain is held too; the module's own connection is asked besides qemu:///system
    raw_file(tmp_path / 'x.base')
    assert _libvirt.domains_holding(str(tmp_path / 'x.base'), ('qemu:///system', 'qemu:///session')) \
        == [('base-user', 'qemu:///session')]
    assert _libvirt.holders_text(image) == "; libvirt: the running domain 'web' on qemu:///system has it as a disk"


def test_no_libvirt_no_lookup(tmp_path, monkeypatch):
    monkeypatch.setattr(_libvirt, 'HAS_LIBVIRT', False)
    assert _libvirt.domains_holding(raw_file(tmp_path / 'a.raw')) == [] and _libvirt.holders_text('x') == ''


def test_an_unreachable_libvirt_gives_the_lock_message_alone(tmp_path, libvirt_domains):
    assert _libvirt.domains_holding(raw_file(tmp_path / 'a.raw'), ('qemu:///system', 'test:///nowhere')) == []


def test_disk_image_names_the_domain_holding_the_image(tmp_path, capsys, libvirt_domains):
    path = raw_file(tmp_path / 'a.raw')
    libvirt_domains['qemu:///system'] = [FakeDomain('web1', [path])]
    with ImageFile(path, writable=True):
        result = run_module(disk_image, capsys, path=path, format='raw', size='2M')
    assert result['failed'] and 'in use by another process' in result['msg']
    assert "the running domain 'web1' on qemu:///system has it as a disk" in result['msg']
    assert os.path.getsize(path) == MIB


def test_lvm_volume_image_names_the_domain_holding_the_image(tmp_path, libvirt_domains):
    path = raw_file(tmp_path / 'a.raw')
    libvirt_domains['qemu:///system'] = [FakeDomain('db', [path])]
    with ImageFile(path, writable=True):
        with pytest.raises(ImageInUseError) as caught:
            ImageFile(path, writable=True)
    text = lvi.failure_text(caught.value)
    assert "in use by another process" in text and "'db' on qemu:///system" in text
    assert text.endswith('lvm_volume_image does not open images in use: shut the guest down (or let the other '
                         'process finish) and run the task again')


@pytest.mark.parametrize('state', ['present', 'absent'])
@pytest.mark.parametrize('check_mode', [False, True])
def test_cloud_init_seed_refuses_a_seed_in_use(tmp_path, capsys, libvirt_domains, state, check_mode):
    path = str(tmp_path / 'seed.iso')
    assert not run_module(cloud_init_seed, capsys, path=path, user_data={'hostname': 'a'}).get('failed')
    before = digest(path)
    libvirt_domains['qemu:///system'] = [FakeDomain('guest1', [path])]
    # A guest's read-only CD-ROM: it reads, and does not share writes (QEMU's perm and shared sets).
    with ImageFile(path):
        args = dict(user_data={'hostname': 'b'}) if state == 'present' else dict(state='absent')
        result = run_module(cloud_init_seed, capsys, check_mode=check_mode, path=path, **args)
    assert result['failed'] and 'in use by another process' in result['msg'], result
    assert "'guest1' on qemu:///system" in result['msg'] and 'cloud_init_seed does not replace or remove' in result['msg']
    assert digest(path) == before and sorted(os.listdir(str(tmp_path))) == ['seed.iso']


def test_cloud_init_seed_replaces_a_seed_nobody_holds(tmp_path, capsys):
    path = str(tmp_path / 'seed.iso')
    run_module(cloud_init_seed, capsys, path=path, user_data={'hostname': 'a'})
    os.chmod(path, 0o444)
    result = run_module(cloud_init_seed, capsys, path=path, user_data={'hostname': 'b'})
    assert result['changed'] and not result.get('failed'), result


def test_the_image_replaced_stays_locked_until_its_replacement_takes_its_place(tmp_path, capsys, monkeypatch):
    from ansible_collections.kvm.storage.plugins.module_utils import _disk_image
    src = raw_file(tmp_path / 'src.raw', fill=b'\2')
    path = qcow2_file(tmp_path / 'a.img')
    build = _disk_image._build
    seen = []

    def build_and_look(request, action, target):
        with pytest.raises(ImageInUseError):
            ImageFile(path)
        seen.append(target)
        return build(request, action, target)

    monkeypatch.setattr(_disk_image, '_build', build_and_look)
    result = run_module(disk_image, capsys, path=path, format='raw', src=src, force=True)
    assert result['changed'] and seen and seen[0] != path, result
    assert digest(path) == digest(src)
    ImageFile(path, writable=True).close()


def test_a_holder_that_came_after_the_plan_refuses_the_replacement(tmp_path, capsys, monkeypatch):
    from ansible_collections.kvm.storage.plugins.module_utils import _disk_image
    src = raw_file(tmp_path / 'src.raw', fill=b'\2')
    path = qcow2_file(tmp_path / 'a.img')
    before = digest(path)
    holders = []
    check_chains_open = _disk_image.check_chains_open

    def guest_starts(*args):
        check_chains_open(*args)
        holders.append(ImageFile(path, writable=True))

    monkeypatch.setattr(_disk_image, 'check_chains_open', guest_starts)
    try:
        result = run_module(disk_image, capsys, path=path, format='raw', src=src, force=True)
    finally:
        for holder in holders:
            holder.close()
    assert result['failed'] and 'in use by another process' in result['msg'] and not result.get('changed'), result
    assert digest(path) == before and sorted(os.listdir(str(tmp_path))) == ['a.img', 'src.raw']
