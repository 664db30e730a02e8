# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""domain_disk: sources parsed from options, disk XML built and normalised, matching, target allocation, the format
check, the (pure) plan, the live-detach wait, and the modules run against the real libvirtd (qemu:///system) with a
shut-off domain."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import shutil
import subprocess
import tempfile
import uuid as uuid_module

import pytest

import components

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils import _domain_disk, _libvirt
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import LibvirtModuleError, canonical_xml, parse_xml
from ansible_collections.kvm.storage.plugins.module_utils._domain_disk import (
    DiskRequest,
    DomainState,
    check_conflicts,
    choose_format,
    default_bus,
    detect_format,
    disk_view,
    domain_disk_argument_spec,
    find_disk,
    next_free_target,
    normalised_xml,
    parse_source,
    plan_domain_disk,
    render_view,
    source_key,
    target_index,
    target_name,
    wait_for_removal,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import create as create_image
from ansible_collections.kvm.storage.plugins.modules import domain_disk, domain_disk_info

URI = 'qemu:///system'


def xml_of(text):
    return canonical_xml(parse_xml(text))


# --------------------------------------------------------------------------- sources
@pytest.mark.parametrize('value, disk_type, expected', [
    ('/srv/images//a.qcow2', None, '<source file="/srv/images/a.qcow2"/>'),
    (dict(path='/dev/sdb'), 'block', '<source dev="/dev/sdb"/>'),
    (dict(pool='images', volume='a.qcow2'), None, '<source pool="images" volume="a.qcow2"/>'),
    (dict(pool='san', volume='unit:0:0:1', mode='direct'), 'volume', '<source mode="direct" pool="san" volume="unit:0:0:1"/>'),
    (dict(protocol='nbd', host='nbd.example.com:10810', name='export1'), None,
     '<source name="export1" protocol="nbd"><host name="nbd.example.com" port="10810"/></source>'),
    (dict(protocol='rbd', name='pool/image', host=['mon1', {'name': 'mon2', 'port': 6790}], port=6789,
          auth=dict(username='libvirt', secret_usage='client.libvirt')), 'network',
     '<source name="pool/image" protocol="rbd"><host name="mon1" port="6789"/><host name="mon2" port="6790"/>'
     '<auth username="libvirt"><secret type="ceph" usage="client.libvirt"/></auth></source>'),
    (dict(protocol='iscsi', name='iqn.2013-06.com.example:t/1', host='san', initiator='iqn.2013-06.com.example:i',
          auth=dict(username='u', secret_uuid='1fe18640-6d19-48a1-9d25-a3683dcdec29')), None,
     '<source name="iqn.2013-06.com.example:t/1" protocol="iscsi"><host name="san"/>'
     '<auth username="u"><secret type="iscsi" uuid="1fe18640-6d19-48a1-9d25-a3683dcdec29"/></auth>'
     '<initiator><iqn name="iqn.2013-06.com.example:i"/></initiator></source>'),
])
def test_sources_are_built_from_a_path_or_a_dict(value, disk_type, expected):
    source = parse_source(value, disk_type)
    assert canonical_xml(source.element()) == xml_of(expected)


def test_the_disk_type_follows_the_source(monkeypatch):
    assert parse_source('/srv/a.img').disk_type == 'file'
    assert parse_source(dict(pool='p', volume='v')).disk_type == 'volume'
    assert parse_source(dict(protocol='https', name='/a.iso', host='www')).disk_type == 'network'
    monkeypatch.setattr(_domain_disk, '_is_block_device', lambda path: path == '/dev/sdz')
    assert parse_source('/dev/sdz').disk_type == 'block'
    assert parse_source('/dev/sdz', local=False).disk_type == 'file'  # a remote host's paths are not looked at


@pytest.mark.parametrize('value, disk_type, message', [
    ('images/a.qcow2', None, 'is not an absolute path'),
    ('/srv/a.img', 'volume', 'type=volume does not take a path'),
    (dict(pool='p'), None, 'a pool volume needs volume'),
    (dict(pool='p', volume='v'), 'file', 'type=volume, not type=file'),
    (dict(path='/a', pool='p'), None, 'pool cannot be combined with path'),
    (dict(protocol='rbd', host='mon'), None, 'a rbd disk needs name (pool/image)'),
    (dict(protocol='http', name='/a.iso'), None, 'a http disk needs host'),
    (dict(protocol='smb', name='x', host='h'), None, "source.protocol: expected one of"),
    (dict(protocol='nbd', host='h:port'), None, 'the port after ":" must be a number'),
    (dict(protocol='nbd', host='h', initiator='iqn.x'), None, 'source.initiator applies to iscsi disks only'),
    (dict(protocol='rbd', name='p/i', auth=dict(username='u')), None, 'give one of secret_usage and secret_uuid'),
    (dict(protocol='ssh', name='/a', host='h', auth=dict(username='u', secret_usage='s')), None, 'give secret_type'),
    (dict(volume='v', pool='p', size=3), None, 'unknown key(s) size'),
    (dict(name='x'), None, 'give a path, or pool and volume, or protocol and name'),
    (42, None, 'expected a path or a dict'),
    (None, 'block', 'type=block needs a source'),
])
def test_bad_sources_are_refused_with_what_is_wrong(value, disk_type, message):
    with pytest.raises(LibvirtModuleError, match=message.replace('(', r'\(').replace(')', r'\)')):
        parse_source(value, disk_type)


# --------------------------------------------------------------------------- normalisation and views
LIVE_DISK = '''
<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2' cache='none'/>
  <source file='/srv/images/a.qcow2' index='2'/>
  <backingStore type='file' index='3'><format type='raw'/><source file='/srv/images/base.raw'/><backingStore/></backingStore>
  <target dev='vdb' bus='virtio'/>
  <serial> DATA01 </serial>
  <alias name='virtio-disk1'/>
  <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
</disk>'''

CONFIG_DISK = '''
<disk type="file" device="disk">
  <source file="/srv/images//a.qcow2"/>
  <target bus="virtio" dev="vdb"/>
  <driver cache="none" type="qcow2" name="qemu"/>
  <serial>DATA01</serial>
</disk>'''


def test_what_libvirt_adds_is_not_a_difference():
    assert normalised_xml(parse_xml(LIVE_DISK)) == normalised_xml(parse_xml(CONFIG_DISK))
    assert 'address' not in normalised_xml(parse_xml(LIVE_DISK)) and 'base.raw' not in normalised_xml(parse_xml(LIVE_DISK))


def test_what_the_task_sets_is_a_difference():
    other_cache = CONFIG_DISK.replace('cache="none"', 'cache="writeback"')
    assert normalised_xml(parse_xml(other_cache)) != normalised_xml(parse_xml(CONFIG_DISK))


def test_an_empty_cdrom_and_default_network_ports_compare_as_libvirt_stores_them():
    stored = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide' tray='open'/><readonly/></disk>"
    asked = "<disk type='file' device='cdrom'><driver name='qemu'/><target dev='hdc' bus='ide'/></disk>"
    assert normalised_xml(parse_xml(stored)) == normalised_xml(parse_xml(asked))
    stored = "<disk type='network'><source protocol='nbd'><host name='h' port='10809'/></source><target dev='vdc'/></disk>"
    asked = "<disk type='network' device='disk'><source protocol='nbd'><host name='h'/></source><target dev='vdc'/></disk>"
    assert normalised_xml(parse_xml(stored)) == normalised_xml(parse_xml(asked))
    rbd = "<disk type='network'><source protocol='rbd' name='p/i'><host name='m'/></source><target dev='vdc'/></disk>"
    assert 'port' not in normalised_xml(parse_xml(rbd))  # libvirt has no default port for rbd


def test_a_disk_view_has_the_managed_fields():
    view = disk_view(parse_xml(LIVE_DISK.replace("<serial> DATA01 </serial>", "<serial>DATA01</serial><boot order='2'/><shareable/>")))
    assert dict((key, value) for key, value in view.items() if key != 'xml') == dict(
        target='vdb', bus='virtio', device='disk', type='file', source='/srv/images/a.qcow2', format='qcow2', cache='none', io=None,
        discard=None, detect_zeroes=None, readonly=False, shareable=True, serial='DATA01', wwn=None, boot_order=2)
    cdrom = disk_view(parse_xml("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/></disk>"))
    assert cdrom['source'] is None and cdrom['format'] is None and cdrom['readonly'] is True


# --------------------------------------------------------------------------- targets and buses
def test_target_names_count_like_libvirt():
    assert [target_index(name) for name in ('vda', 'vdz', 'vdaa', 'vdab', 'sdba')] == [0, 25, 26, 27, 52]
    for index in (0, 1, 25, 26, 27, 51, 52, 701, 702):
        assert target_index(target_name('vd', index)) == index


def test_the_next_free_target_of_the_bus_is_chosen():
    assert next_free_target('virtio', ['vda', 'vdc', 'sda', 'hda']) == 'vdb'
    assert next_free_target('sata', ['vda', 'sda', 'sdb']) == 'sdc'
    assert next_free_target('usb', ['sda']) == 'sdb'  # scsi, sata and usb share the sd names
    assert next_free_target('ide', ['hda', 'hdb']) == 'hdc'
    assert next_free_target('fdc', []) == 'fda'
    assert next_free_target('virtio', ['vd' + chr(ord('a') + index) for index in range(26)]) == 'vdaa'
    with pytest.raises(LibvirtModuleError, match='no free ide target'):
        next_free_target('ide', ['hda', 'hdb', 'hdc', 'hdd'])


@pytest.mark.parametrize('device, target, machine, expected', [
    ('disk', None, 'pc-i440fx-7.2', 'virtio'), ('disk', 'sdb', 'pc', 'scsi'), ('disk', 'hdb', 'pc', 'ide'),
    ('cdrom', None, 'pc-i440fx-7.2', 'ide'), ('cdrom', None, 'pc-q35-7.2', 'sata'), ('floppy', None, 'pc', 'fdc'),
    ('lun', None, 'pc', 'scsi'),
])
def test_default_bus(device, target, machine, expected):
    assert default_bus(device, target, machine) == expected


# --------------------------------------------------------------------------- format
def test_the_detected_format_wins_and_a_different_given_one_is_an_error():
    assert choose_format(None, 'qcow2', '/a') == 'qcow2'
    assert choose_format('qcow2', 'qcow2', '/a') == 'qcow2'
    with pytest.raises(LibvirtModuleError, match='format=raw, but /a is a qcow2 image'):
        choose_format('raw', 'qcow2', '/a')
    assert choose_format('raw', None, 'nbd://h/') == 'raw'  # nothing to detect: the given format
    assert choose_format(None, None, 'nbd://h/', current='qcow2') == 'qcow2'


def test_a_raw_disk_is_never_switched_to_the_format_its_content_claims():
    with pytest.raises(LibvirtModuleError, match='attached as raw but its content now reads as a qcow2 image'):
        choose_format(None, 'qcow2', '/a', current='raw')


def test_formats_are_detected_by_the_library(tmp_path):
    create_image(str(tmp_path / 'a.qcow2'), 'qcow2', size=1 << 20)
    create_image(str(tmp_path / 'b.vmdk'), 'vmdk', size=1 << 20)
    (tmp_path / 'c.img').write_bytes(b'\0' * 4096)
    assert detect_format(parse_source(str(tmp_path / 'a.qcow2')), None, True) == ('qcow2', None)
    assert detect_format(parse_source(str(tmp_path / 'b.vmdk')), None, True)[0] == 'vmdk'
    assert detect_format(parse_source(str(tmp_path / 'c.img')), None, True) == ('raw', None)
    assert detect_format(parse_source(str(tmp_path / 'a.qcow2')), None, False) == (None, None)  # remote: not this host's file
    with pytest.raises(LibvirtModuleError, match='does not exist'):
        detect_format(parse_source(str(tmp_path / 'missing.qcow2')), None, True)
    with pytest.raises(LibvirtModuleError, match='is not a regular file'):
        detect_format(parse_source(str(tmp_path)), None, True)
    with pytest.raises(LibvirtModuleError, match='is not a block device'):
        detect_format(parse_source(str(tmp_path / 'c.img'), 'block'), None, True)


# --------------------------------------------------------------------------- the plan
def domain_xml(*disks, machine='pc-i440fx-7.2'):
    return parse_xml("<domain type='qemu'><name>d</name><os><type arch='x86_64' machine='%s'>hvm</type></os><devices>%s</devices>"
                     "</domain>" % (machine, ''.join(disks)))


def state_of(config_disks=(), live_disks=None, machine='pc-i440fx-7.2'):
    live = None if live_disks is None else domain_xml(*live_disks, machine=machine)
    return DomainState('d', live is not None, True, domain_xml(*config_disks, machine=machine), live)


def params(**values):
    result = dict((name, spec.get('default')) for name, spec in domain_disk_argument_spec().items())
    result.update(domain='d')
    result.update(values)
    return result


def plan(domain_state, **values):
    return plan_domain_disk(DiskRequest(params(**values), domain_state), domain_state)


def file_disk(path, target, fmt, bus='virtio', extra=''):
    return ("<disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='%s' bus='%s'/>%s"
            "<address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></disk>" % (fmt, path, target, bus, extra))


@pytest.fixture
def images(tmp_path):
    create_image(str(tmp_path / 'a.qcow2'), 'qcow2', size=1 << 20)
    (tmp_path / 'b.iso').write_bytes(b'\0' * 4096)
    return tmp_path


def test_a_new_disk_gets_the_next_target_its_detected_format_and_both_views_when_the_domain_runs(images):
    path = str(images / 'a.qcow2')
    result = plan(state_of([file_disk('/x.raw', 'vda', 'raw')], [file_disk('/x.raw', 'vda', 'raw')]), source=path)
    assert [(action.kind, action.view) for action in result.actions] == [('attach', 'live'), ('attach', 'persistent')]
    assert result.target == 'vdb'
    assert result.before == dict(live=None, persistent=None)
    wanted = xml_of("<disk type='file' device='disk'><driver type='qcow2'/><source file='%s'/><target dev='vdb' bus='virtio'/>"
                    "</disk>" % path)
    assert result.after == dict(live=wanted, persistent=wanted)
    assert render_view(result.before) == 'persistent: absent\nlive: absent\n'


def test_a_disk_as_requested_needs_nothing_and_unset_options_are_kept(images):
    path = str(images / 'a.qcow2')
    state = state_of([file_disk(path, 'vdb', 'qcow2', extra="<serial>S1</serial>")])
    result = plan(state, source=path)
    assert result.actions == [] and result.before == result.after and result.target == 'vdb'
    assert plan(state, target='vdb').actions == []


def test_a_changed_option_is_an_update_in_each_view(images):
    path = str(images / 'a.qcow2')
    state = state_of([file_disk(path, 'vdb', 'qcow2')], [file_disk(path, 'vdb', 'qcow2')])
    result = plan(state, target='vdb', detect_zeroes='on')
    assert [(action.kind, action.view) for action in result.actions] == [('update', 'live'), ('update', 'persistent')]
    assert 'detect_zeroes="on"' in result.after['live'] and 'detect_zeroes="on"' in result.after['persistent']
    only_config = plan(state, target='vdb', cache='none', readonly=True, live=False)
    assert [(action.kind, action.view) for action in only_config.actions] == [('update', 'persistent')]
    assert 'cache="none"' in only_config.after['persistent'] and '<readonly />' in only_config.after['persistent']


def test_a_wrongly_declared_format_is_corrected(images):
    path = str(images / 'a.qcow2')
    result = plan(state_of([file_disk(path, 'vdb', 'qcow')]), target='vdb')
    assert [action.kind for action in result.actions] == ['update'] and 'type="qcow2"' in result.after['persistent']


def test_a_bus_change_replaces_the_disk_in_the_definition_and_is_refused_live(images):
    path = str(images / 'a.qcow2')
    result = plan(state_of([file_disk(path, 'sdb', 'qcow2', bus='scsi')]), target='sdb', bus='sata')
    assert [action.kind for action in result.actions] == ['replace']
    with pytest.raises(LibvirtModuleError, match='cannot become a disk on bus sata while the domain runs'):
        plan(state_of([file_disk(path, 'sdb', 'qcow2', bus='scsi')], [file_disk(path, 'sdb', 'qcow2', bus='scsi')]),
             target='sdb', bus='sata')


def test_cdrom_media_are_inserted_changed_and_ejected(images):
    iso = str(images / 'b.iso')
    empty = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>"
    loaded = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='%s'/><target dev='hdc' bus='ide'/>"
              "<readonly/></disk>" % iso)
    insert = plan(state_of([empty], [empty]), target='hdc', source=iso)
    assert [action.description for action in insert.actions] == [
        "insert %s into cdrom hdc in the live definition of domain 'd'" % iso,
        "insert %s into cdrom hdc in the persistent definition of domain 'd'" % iso]
    assert plan(state_of([loaded], [loaded]), target='hdc', source=iso).actions == []
    eject = plan(state_of([loaded], [loaded]), target='hdc', source='')
    assert [action.description for action in eject.actions][0] == "eject the medium of cdrom hdc in the live definition of domain 'd'"
    assert eject.after['live'] == normalised_xml(parse_xml(empty))
    assert plan(state_of([empty]), target='hdc', source='').actions == []
    new_drive = plan(state_of([]), target='hdc', device='cdrom')
    assert [action.kind for action in new_drive.actions] == ['attach'] and '<readonly />' in new_drive.after['persistent']


def test_a_cdrom_task_without_source_keeps_the_medium_and_unset_options(images):
    iso = str(images / 'b.iso')
    loaded = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw' cache='none'/><source file='%s'/>"
              "<target dev='hdc' bus='ide'/><readonly/><boot order='1'/></disk>" % iso)
    state = state_of([loaded], [loaded])
    assert plan(state, target='hdc', device='cdrom').actions == []
    assert plan(state, target='hdc').actions == []
    persistent_only = plan(state, target='hdc', device='cdrom', io='threads', live=False)
    assert [action.description for action in persistent_only.actions] == [
        "update disk hdc in the persistent definition of domain 'd'"]
    assert iso in persistent_only.after['persistent'] and 'cache="none"' in persistent_only.after['persistent']
    assert '<boot order="1" />' in persistent_only.after['persistent']


def test_an_eject_is_named_in_the_actions_even_with_other_changes(images):
    iso = str(images / 'b.iso')
    loaded = ("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='%s'/>"
              "<target dev='hdc' bus='ide'/><readonly/></disk>" % iso)
    result = plan(state_of([loaded]), target='hdc', source='', serial='CD1')
    assert [action.description for action in result.actions] == [
        "eject the medium of cdrom hdc and update its other options in the persistent definition of domain 'd'"]


def test_a_target_used_by_another_image_is_not_swapped_unless_asked(images):
    path = str(images / 'a.qcow2')
    other = str(images / 'b.iso')
    state = state_of([file_disk(path, 'vdb', 'qcow2', extra='<serial>S1</serial>')])
    with pytest.raises(LibvirtModuleError, match="target vdb of domain 'd' is disk %s in the persistent definition; refusing to "
                       "put %s in its place: set replace_source=true" % (path, other)):
        plan(state, target='vdb', source=other)
    swap = plan(state, target='vdb', source=other, replace_source=True)
    assert [action.description for action in swap.actions] == [
        "replace the source of disk vdb (%s) by %s in the persistent definition of domain 'd'" % (path, other)]
    assert 'S1' in swap.after['persistent'] and other in swap.after['persistent']
    assert plan(state, target='vdb', source=path).actions == []  # the same image is no swap


def test_a_live_swap_is_refused_before_anything_changes(images):
    path = str(images / 'a.qcow2')
    disk = file_disk(path, 'vdb', 'qcow2')
    with pytest.raises(LibvirtModuleError, match="the source of disk vdb of running domain 'd' cannot change live"):
        plan(state_of([disk], [disk]), target='vdb', source=str(images / 'b.iso'), replace_source=True)


@pytest.mark.parametrize('disk_extra, values, message', [
    ('', dict(io='native'), 'io=native needs cache=none or cache=directsync, but disk vda would have io=native (given) with '
                            'cache=default (kept)'),
    ('', dict(io='native', cache='writeback'), 'with cache=writeback (given)'),
    ("io='native' cache='none'", dict(cache='writeback'), 'disk vda would have io=native (kept) with cache=writeback (given)'),
])
def test_io_native_needs_a_cache_mode_without_host_cache_in_the_disk_produced(images, disk_extra, values, message):
    path = str(images / 'a.qcow2')
    disk = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2' %s/><source file='%s'/><target dev='vda' bus='virtio'/>"
            "</disk>" % (disk_extra, path))
    state = state_of([disk] if disk_extra else [])
    with pytest.raises(LibvirtModuleError, match=message.replace('(', r'\(').replace(')', r'\)')):
        plan(state, target='vda', source=path, **values)
    assert plan(state, target='vda', source=path, io='native', cache='directsync').actions


def test_a_boot_order_is_refused_where_the_definition_boots_by_os_boot_or_the_order_is_taken(images):
    path = str(images / 'a.qcow2')
    os_boot = state_of([])
    os_boot.config.find('os').append(parse_xml("<boot dev='hd'/>"))
    with pytest.raises(LibvirtModuleError, match=r"boot_order=1: the persistent definition of domain 'd' boots by <os><boot dev='hd'/>"):
        plan(os_boot, target='vdb', source=path, boot_order=1)
    taken = state_of(["<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/><boot order='1'/></disk>"])
    with pytest.raises(LibvirtModuleError, match="boot_order=1: boot order 1 is already used by disk hdc in the persistent definition"):
        plan(taken, target='vdb', source=path, boot_order=1)
    assert plan(taken, target='vdb', source=path, boot_order=2).actions


def test_a_wwn_off_the_ide_and_scsi_buses_is_refused(images):
    path = str(images / 'a.qcow2')
    with pytest.raises(LibvirtModuleError, match="wwn: libvirt gives a world wide name only to disks on the ide and scsi buses, "
                                                 "and disk vdb would be on bus virtio"):
        plan(state_of([]), target='vdb', source=path, wwn='5000c50015ea71ad')
    assert plan(state_of([]), target='sdb', source=path, wwn='5000c50015ea71ad').actions


@pytest.mark.parametrize('live_disk, values, message', [
    (None, dict(target='hdb', source='A'), 'QEMU cannot hot-plug a disk on bus ide'),
    (None, dict(target='sdb', bus='sata', source='A'), 'QEMU cannot hot-plug a disk on bus sata'),
    (None, dict(target='fda', device='floppy', source='A'), 'QEMU cannot hot-plug a floppy on bus fdc'),
    ("<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>", dict(target='hdc', state='absent'),
     'QEMU cannot hot-unplug a cdrom on bus ide'),
    ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='A'/><target dev='vdb' bus='virtio'/></disk>",
     dict(target='vdb', cache='none', serial='X'), "cannot change cache, serial of disk vdb of running domain 'd' live"),
])
def test_live_changes_qemu_or_libvirt_refuse_are_refused_in_the_plan(images, live_disk, values, message):
    path = str(images / 'a.qcow2')
    disks = [] if live_disk is None else [live_disk.replace("'A'", "'%s'" % path)]
    if values.get('source') == 'A':
        values['source'] = path
    with pytest.raises(LibvirtModuleError, match=message):
        plan(state_of(disks, disks), **values)
    assert plan(state_of(disks, disks), live=False, **values) is not None  # the persistent definition alone is fine


def test_a_cdrom_gets_a_sata_target_on_q35(images):
    result = plan(state_of([], machine='pc-q35-7.2'), device='cdrom', source=str(images / 'b.iso'))
    assert result.target == 'sda' and 'bus="sata"' in result.after['persistent']


def test_absent_detaches_where_the_disk_is(images):
    path = str(images / 'a.qcow2')
    result = plan(state_of([file_disk(path, 'vdb', 'qcow2')], []), source=path, state='absent')
    assert [(action.kind, action.view) for action in result.actions] == [('detach', 'persistent')]
    assert result.target == 'vdb' and result.after == dict(live=None, persistent=None)
    assert plan(state_of([]), target='vdb', state='absent').actions == []


def test_a_disk_is_found_by_its_source_through_path_spellings(images):
    path = str(images / 'a.qcow2')
    disks = [parse_xml(file_disk(path.replace('/a.qcow2', '//a.qcow2'), 'vdc', 'qcow2'))]
    assert find_disk(disks, source=parse_source(path)) is disks[0]
    assert source_key(parse_source(path)) == source_key(parse_source(path.replace('/a.qcow2', '/./a.qcow2')))
    with pytest.raises(LibvirtModuleError, match='has 2 disks with source'):
        find_disk(disks * 2, source=parse_source(path), domain='d')


@pytest.mark.parametrize('values, message', [
    (dict(source='/srv/x.qcow2', live=True), "live=true, but domain 'd' is not running"),
    (dict(source='/srv/x.qcow2', persistent=False), 'nothing to manage'),
    (dict(), 'give target, or source'),
    (dict(target='xyz'), "'xyz' is not a disk target name"),
    (dict(target='hdc', source='', format='raw'), 'an empty drive has none'),
    (dict(target='vdb'), 'disk vdb is not in the persistent definition'),
    (dict(target='vdb', source='/srv/x.qcow2', bus='scsi'), 'target vdb does not fit bus scsi'),
    (dict(target='vdb', source=dict(protocol='nbd', host='h')), 'give format for nbd://h/: the image library cannot read it'),
])
def test_requests_that_cannot_be_met_say_why(values, message):
    state = state_of([])
    with pytest.raises(LibvirtModuleError, match=message.replace('(', r'\(')):
        plan(state, **values)


# --------------------------------------------------------------------------- other running domains
class OtherDomain(object):
    def __init__(self, name, disk_xml):
        self._name = name
        self.disk_xml = disk_xml

    def UUIDString(self):
        return 'uuid-' + self._name

    def name(self):
        return self._name

    def XMLDesc(self, flags):
        return "<domain><devices>%s</devices></domain>" % self.disk_xml


class RunningDomains(object):
    def __init__(self, *domains):
        self.domains = domains

    def listAllDomains(self, flags):
        return list(self.domains)


@pytest.mark.parametrize('other_extra, ours, refused', [
    ('', dict(), True),
    ('<shareable/>', dict(), True),
    ('', dict(shareable=True), True),
    ('<shareable/>', dict(shareable=True), False),
    ('<readonly/>', dict(), False),
])
def test_storage_used_read_write_by_another_running_domain_is_refused_unless_both_share_it(images, other_extra, ours, refused):
    if _domain_disk.libvirt is None:
        components.missing('libvirt-python')
    path = str(images / 'a.qcow2')
    conn = RunningDomains(OtherDomain('d', ''), OtherDomain('other', file_disk(path.replace('/a.', '//a.'), 'vdc', 'qcow2', extra=other_extra)))
    domain = OtherDomain('d', '')
    state = state_of([])
    request = DiskRequest(params(source=path, **ours), state)
    result = plan_domain_disk(request, state)
    if refused:
        with pytest.raises(LibvirtModuleError, match="is attached read-write to running domain 'other' as vdc"):
            check_conflicts(conn, request, result, domain)
    else:
        check_conflicts(conn, request, result, domain)


# --------------------------------------------------------------------------- live detach wait
class FakeDomain(object):
    def __init__(self, released_after):
        self.polls = 0
        self.released_after = released_after

    def isActive(self):
        return 1

    def XMLDesc(self, flags):
        self.polls += 1
        disks = '' if self.polls > self.released_after else file_disk('/a', 'vdb', 'raw')
        return "<domain><devices>%s</devices></domain>" % disks


class FakeClock(object):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_a_live_detach_waits_until_the_guest_releases_the_disk():
    domain, clock = FakeDomain(released_after=3), FakeClock()
    wait_for_removal(domain, 'vdb', 30, "'d'", clock=clock, sleep=clock.sleep)
    assert domain.polls == 4 and clock.now == 1.5


def test_a_live_detach_the_guest_ignores_fails_after_the_timeout():
    domain, clock = FakeDomain(released_after=10 ** 6), FakeClock()
    with pytest.raises(LibvirtModuleError, match="disk vdb of running domain 'd' was not released by the guest within detach_timeout=5"):
        wait_for_removal(domain, 'vdb', 5, "'d'", clock=clock, sleep=clock.sleep)
    assert 5 <= clock.now < 6


# --------------------------------------------------------------------------- the modules against libvirtd
def virsh(*args, check=True):
    return subprocess.run(('virsh', '-c', URI) + args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


@pytest.fixture
def domain_name(tmp_path):
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    name = 'kvmstorage_it_ddisk_unit_%s' % uuid_module.uuid4().hex[:8]
    (tmp_path / 'domain.xml').write_text(
        "<domain type='qemu'><name>%s</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices/></domain>" % name)
    virsh('define', str(tmp_path / 'domain.xml'))
    yield name
    virsh('undefine', name, check=False)


def run_module(module, capsys, check_mode=False, **args):
    args.update(_ansible_check_mode=check_mode, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


def test_check_mode_predicts_the_real_run_and_the_second_run_changes_nothing(images, capsys, domain_name):
    args = dict(domain=domain_name, source=str(images / 'a.qcow2'), cache='none', serial='UNIT1')
    check = run_module(domain_disk, capsys, check_mode=True, **args)
    assert 'a.qcow2' not in virsh('dumpxml', '--inactive', domain_name).stdout  # check mode attached nothing
    real = run_module(domain_disk, capsys, **args)
    assert check['changed'] and real['changed']
    assert check['actions'] == real['actions'] and check['diff'] == real['diff'] and check['disk'] == real['disk']
    assert real['target'] == 'vda' and real['disk']['format'] == 'qcow2' and real['disk']['serial'] == 'UNIT1'
    assert real['live_disk'] == {}
    again = run_module(domain_disk, capsys, **args)
    assert not again['changed'] and again['actions'] == [] and again['diff']['before'] == again['diff']['after']
    info = run_module(domain_disk_info, capsys, domain=domain_name)
    assert info['domain'] == dict(name=domain_name, active=False, persistent=True) and info['live_disks'] == []
    assert info['disks'] == [real['disk']]
    gone = run_module(domain_disk, capsys, domain=domain_name, target='vda', state='absent')
    assert gone['changed'] and gone['disk'] == {}
    assert run_module(domain_disk_info, capsys, domain=domain_name)['disks'] == []


@pytest.fixture
def running_domain(domain_name):
    virsh('start', domain_name)
    yield domain_name
    virsh('destroy', domain_name, check=False)


@pytest.fixture
def qemu_image():
    """A qcow2 image the qemu process (another user) can open: pytest's own temporary directories are private."""
    work = tempfile.mkdtemp(prefix='kvmstorage_it_ddisk_unit_')
    os.chmod(work, 0o755)
    path = os.path.join(work, 'a.qcow2')
    create_image(path, 'qcow2', size=1 << 20)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(work)


class PersistentStepFails(object):
    """The real domain, except that libvirt refuses attaching to its persistent definition (as it refuses, for example,
    a definition whose PCI slots are all taken): the step after the live hot-plug fails."""

    def __init__(self, domain):
        self.domain = domain

    def __getattr__(self, name):
        return getattr(self.domain, name)

    def attachDeviceFlags(self, xml, flags):
        if flags & _libvirt.libvirt.VIR_DOMAIN_AFFECT_CONFIG:
            _libvirt.libvirt.virResetLastError()
            raise _libvirt.libvirt.libvirtError('no more available PCI slots (a refusal made for this test)')
        return self.domain.attachDeviceFlags(xml, flags)


@pytest.mark.parametrize('target, undone', [('sda', True), ('vda', False)])
def test_a_failure_after_the_live_step_undoes_it_or_reports_it_done(qemu_image, capsys, running_domain, monkeypatch, target, undone):
    real_lookup = _domain_disk.lookup_domain
    monkeypatch.setattr(_domain_disk, 'lookup_domain', lambda conn, name: PersistentStepFails(real_lookup(conn, name)))
    path = qemu_image
    result = run_module(domain_disk, capsys, domain=running_domain, target=target, source=path, detach_timeout=1)
    live_attach = "attach disk %s as %s to the live definition of domain '%s'" % (path, target, running_domain)
    assert result['failed']
    assert result['msg'].startswith("cannot attach disk %s as %s to the persistent definition of domain '%s': no more available PCI "
                                    "slots" % (path, target, running_domain))
    live = virsh('dumpxml', running_domain).stdout
    if undone:  # QEMU releases a scsi disk by itself: the live attach is undone
        assert not result.get('changed') and result.get('actions', []) == []
        assert "what was done before (%s) was undone" % live_attach in result['msg']
        assert path not in live
    else:  # a virtio disk needs a guest OS to release it, and there is none: the live attach stays, and is reported
        assert result['changed'] and result['actions'] == [live_attach]
        assert 'done and not undone: %s; ' % live_attach in result['msg'] and 'detach_timeout=1' in result['msg']
        assert path in live
    assert path not in virsh('dumpxml', '--inactive', running_domain).stdout


def test_libvirt_refusals_name_what_was_being_done(images, capsys, domain_name):
    result = run_module(domain_disk, capsys, domain=domain_name, target='sdb', device='lun', source=str(images / 'a.qcow2'))
    assert result['failed']
    assert result['msg'].startswith("cannot attach lun %s as sdb to the persistent definition of domain '%s': " % (
        images / 'a.qcow2', domain_name))
    assert 'block' in result['msg']


def test_an_unknown_domain_is_a_clear_error(capsys):
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    for module in (domain_disk_info, domain_disk):
        result = run_module(module, capsys, domain='kvmstorage_it_ddisk_never', target='vdb')
        assert result['failed'] and result['msg'] == "domain 'kvmstorage_it_ddisk_never' is not defined on qemu:///system"


def test_without_libvirt_python_the_module_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setattr(_libvirt, 'HAS_LIBVIRT', False)
    monkeypatch.setattr(_libvirt, 'LIBVIRT_IMPORT_ERROR', 'ImportError: No module named libvirt')
    result = run_module(domain_disk, capsys, domain='kvmstorage_it_ddisk_never', target='vdb', state='absent')
    assert result['failed'] and 'libvirt-python' in result['msg']


# --------------------------------------------------------------------------- the EXAMPLES, as written
EXAMPLE_DOMAINS = ('web1', 'web2', 'node1', 'node2', 'db1', 'test1', 'dos1')


@pytest.fixture
def example_world(capsys):
    """What the EXAMPLES assume: the domains (shut off, machine pc; web1 with a system disk that boots first), the images,
    a dir pool 'images' holding tools.qcow2, and a block device (a loop device) for /dev/mapper/shared_lun."""
    if not _libvirt.HAS_LIBVIRT:
        components.missing('libvirt-python')
    if virsh('uri', check=False).returncode != 0:
        components.missing('libvirtd', 'virsh cannot connect to %s' % URI)
    tag = 'kvmstorage_it_ddisk_ex_%s' % uuid_module.uuid4().hex[:8]
    work = tempfile.mkdtemp(prefix=tag + '_')
    os.chmod(work, 0o755)
    names = dict((name, '%s_%s' % (tag, name)) for name in EXAMPLE_DOMAINS)
    names['images'] = tag + '_pool'
    loop = None
    try:
        os.mkdir(os.path.join(work, 'pool'))
        for name in ('web1-data.qcow2', 'web1-data2.qcow2', 'web2-data.qcow2', 'pool/tools.qcow2'):
            create_image(os.path.join(work, name), 'qcow2', size=1 << 20)
        for name in ('system.raw', 'debian-12.iso', 'boot.img', 'sata.img', 'stick.img', 'lun.raw'):
            with open(os.path.join(work, name), 'wb') as image:
                image.truncate(1 << 20)
        loop = subprocess.run(['losetup', '--find', '--show', os.path.join(work, 'lun.raw')], check=False, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True)
        if loop.returncode != 0:
            components.missing('loop device', loop.stderr.strip())
        loop = loop.stdout.strip()
        for name in EXAMPLE_DOMAINS:
            system = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s/system.raw'/>"
                      "<target dev='vda' bus='virtio'/><boot order='1'/></disk>" % work) if name == 'web1' else ''
            with open(os.path.join(work, name + '.xml'), 'w') as definition:
                definition.write("<domain type='qemu'><name>%s</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
                                 "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>%s</devices></domain>"
                                 % (names[name], system))
            virsh('define', os.path.join(work, name + '.xml'))
        virsh('pool-define-as', names['images'], 'dir', '--target', os.path.join(work, 'pool'))
        virsh('pool-start', names['images'])
        yield dict(names=names, work=work, loop=loop)
    finally:
        for name in EXAMPLE_DOMAINS:
            virsh('undefine', names[name], check=False)
        virsh('pool-destroy', names['images'], check=False)
        virsh('pool-undefine', names['images'], check=False)
        if loop:
            subprocess.run(['losetup', '-d', loop], check=False)
        shutil.rmtree(work)


def _example_value(value, world):
    """A value of an example with this test's names: domains, the pool, paths in the work directory, the local URI."""
    if isinstance(value, dict):
        return dict((key, _example_value(item, world)) for key, item in value.items())
    if isinstance(value, list):
        return [_example_value(item, world) for item in value]
    if not isinstance(value, str):
        return value
    if value in world['names']:
        return world['names'][value]
    if value == '/dev/mapper/shared_lun':
        return world['loop']
    if value.startswith('qemu+ssh://'):
        return URI
    for prefix in ('/var/lib/libvirt/images/', '/srv/floppies/', '/srv/'):
        if value.startswith(prefix):
            return os.path.join(world['work'], value[len(prefix):])
    return value


def test_the_examples_work_as_written_in_order_and_check_mode_predicts_them(example_world, capsys):
    """Every task of EXAMPLES, in order, with the domains shut off (the state the cdrom and sata examples ask for): check mode,
    then the real run, which must succeed and do what check mode said."""
    from jinja2.nativetypes import NativeEnvironment
    import yaml
    environment = NativeEnvironment()
    tasks = yaml.safe_load(domain_disk.EXAMPLES)
    assert tasks
    ran = 0
    for task in tasks:
        arguments = task['kvm.storage.domain_disk']
        for item in task.get('loop', [None]):
            def render(value):
                if isinstance(value, dict):
                    return dict((key, render(entry)) for key, entry in value.items())
                if isinstance(value, str) and '{{' in value:
                    return environment.from_string(value).render(item=item)
                return value
            args = _example_value(render(arguments), example_world)
            check = run_module(domain_disk, capsys, check_mode=True, **args)
            real = run_module(domain_disk, capsys, **args)
            assert not real.get('failed'), '%s (%s): %s' % (task['name'], item, real['msg'])
            assert not check.get('failed') and check['actions'] == real['actions'] and real['changed'], task['name']
            ran += 1
    assert ran == sum(len(task.get('loop', [None])) for task in tasks)
    web1 = virsh('dumpxml', '--inactive', example_world['names']['web1']).stdout
    assert "<target dev='hdc' bus='ide'/>" in web1 and 'debian-12.iso' not in web1  # inserted, then ejected
    assert "<boot order='2'/>" in web1 and 'web1-data' not in web1
