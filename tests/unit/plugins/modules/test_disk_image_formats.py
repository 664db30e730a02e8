# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image and disk_image_info with the formats other than raw and qcow2, and disks inside an OVA.

qemu-img makes the pre-existing images and checks what the module made; the plans are predicted from the
state read once (check mode) and must match what applying them gives.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import bz2
import gzip
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import (
    DiskImageError,
    DiskImageRequest,
    apply_plan,
    describe_image,
    plan_disk_image,
    read_state,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError
from ansible_collections.kvm.storage.plugins.modules import disk_image_info

MIB = 1 << 20

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="file1" ovf:href="first.vmdk"/>
    <File ovf:id="file2" ovf:href="second.vmdk"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:capacity="%d" ovf:diskId="vmdisk1" ovf:fileRef="file1"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="%d" ovf:diskId="vmdisk2" ovf:fileRef="file2"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
</Envelope>
"""


def qemu_img(*args):
    return subprocess.run(('qemu-img',) + args, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True).stdout


def qemu_info(path, fmt):
    return json.loads(qemu_img('info', '--output=json', '-f', fmt, str(path)))


def plan_for(**params):
    request = DiskImageRequest(**params)
    return request, plan_disk_image(request, *read_state(request))


def converge(**params):
    """Apply the plan, then plan again: returns (first plan, second plan)."""
    request, plan = plan_for(**params)
    apply_plan(plan, request)
    return plan, plan_for(**params)[1]


@pytest.fixture
def appliance(tmp_path):
    """An OVA with two stream-optimized disks of different content and size (made by qemu-img and tarfile)."""
    disks = []
    for name, size, pattern in (('first.vmdk', '3M', '0x11'), ('second.vmdk', '2M', '0x22')):
        source = tmp_path / (name + '.qcow2')
        qemu_img('create', '-q', '-f', 'qcow2', str(source), size)
        subprocess.run(('qemu-io', '-f', 'qcow2', '-c', 'write -P %s 512K 64K' % pattern, str(source)), check=True,
                       stdout=subprocess.PIPE)
        qemu_img('convert', '-f', 'qcow2', '-O', 'vmdk', '-o', 'subformat=streamOptimized', str(source),
                 str(tmp_path / name))
        disks.append(tmp_path / name)
    ovf = tmp_path / 'appliance.ovf'
    ovf.write_text(OVF % (3 * MIB, 2 * MIB))
    archive = tmp_path / 'appliance.ova'
    with tarfile.open(str(archive), 'w', format=tarfile.USTAR_FORMAT) as tar:
        for member in [ovf] + disks:
            tar.add(str(member), arcname=member.name)
    return archive, disks


# --------------------------------------------------------------------------- creation in every writable format
@pytest.mark.parametrize('fmt, options, qemu_check', [
    ('vmdk', {'subformat': 'streamOptimized'}, True),
    ('vmdk', {'subformat': 'monolithicSparse'}, True),
    ('vmdk', {'subformat': 'monolithicFlat'}, True),
    ('vdi', {'static': True}, True),
    ('vdi', {}, True),
    ('vpc', {'subformat': 'fixed'}, False),
    ('vpc', {}, False),
    ('vhdx', {'subformat': 'fixed'}, True),
    ('vhdx', {}, True),
    ('qed', {}, True),
    ('qcow', {}, False),
])
def test_created_image_is_what_qemu_img_reads_and_a_second_run_changes_nothing(tmp_path, fmt, options, qemu_check):
    path = str(tmp_path / ('disk.' + fmt))
    first, second = converge(path=path, fmt=fmt, size='3M', options=options)
    assert [action.kind for action in first.actions] == ['create']
    info = qemu_info(path, fmt)
    # The predicted virtual size (a VHD's CHS rounding included) is what qemu-img reads.
    assert first.after['virtual_size'] == info['virtual-size']
    assert second.actions == [] and second.before == second.after
    assert second.before['options'] == dict(second.before['options'], **first.after['options'])
    if qemu_check:
        qemu_img('check', '-f', fmt, path)


def test_vmdk_subformat_is_read_from_the_create_type(tmp_path):
    path = str(tmp_path / 'disk.vmdk')
    qemu_img('create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', path, '1M')
    plan = plan_for(path=path, fmt='vmdk', size='1M', options={'subformat': 'streamOptimized'})[1]
    assert plan.actions == [] and plan.before['options']['subformat'] == 'streamOptimized'
    with pytest.raises(DiskImageError, match="options.subformat is 'streamOptimized', requested 'monolithicSparse'"):
        plan_for(path=path, fmt='vmdk', size='1M', options={'subformat': 'monolithicSparse'})
    plan = plan_for(path=path, fmt='vmdk', size='1M', options={'subformat': 'monolithicSparse'}, force=True)[1]
    assert [action.kind for action in plan.actions] == ['create']


@pytest.mark.parametrize('fmt, made_with, requested, field', [
    ('vdi', 'static=on', {'static': False}, 'options.static'),
    ('vdi', 'static=off', {'static': True}, 'options.static'),
    ('vpc', 'subformat=fixed', {'subformat': 'dynamic'}, 'options.subformat'),
    ('vpc', 'subformat=dynamic', {'subformat': 'fixed'}, 'options.subformat'),
    ('vhdx', 'subformat=fixed', {'subformat': 'dynamic'}, 'options.subformat'),
    ('vhdx', 'block_size=1M', {'block_size': '2M'}, 'options.block_size'),
])
def test_layout_options_qemu_img_made_are_compared(tmp_path, fmt, made_with, requested, field):
    path = str(tmp_path / ('disk.' + fmt))
    qemu_img('create', '-q', '-f', fmt, '-o', made_with, path, '4M')
    with pytest.raises(DiskImageError, match=field):
        plan_for(path=path, fmt=fmt, options=requested)
    # The option the image was made with matches it (a fixed VHD included, which is probed as raw).
    name, value = made_with.split('=')
    plan = plan_for(path=path, fmt=fmt, options={name: value})[1]
    assert plan.actions == [] and plan.before['format'] == fmt


@pytest.mark.parametrize('fmt', ['vmdk', 'vdi', 'vpc', 'vhdx', 'qcow'])
def test_resize_of_a_format_that_cannot_resize_is_refused_when_planning(tmp_path, fmt):
    path = str(tmp_path / ('disk.' + fmt))
    qemu_img('create', '-q', '-f', fmt, path, '4M')
    with pytest.raises(DiskImageError, match='%s images cannot be resized' % fmt):
        plan_for(path=path, fmt=fmt, size='8M')
    with pytest.raises(DiskImageError, match='%s images cannot be resized' % fmt):
        plan_for(path=str(tmp_path / ('converted.' + fmt)), fmt=fmt, src=path, src_format=fmt, size='8M')


def test_vpc_size_is_rounded_to_its_geometry_and_then_matches(tmp_path):
    path = str(tmp_path / 'disk.vhd')
    qemu_img('create', '-q', '-f', 'vpc', path, '10M')
    actual = qemu_info(path, 'vpc')['virtual-size']
    assert actual != 10 * MIB
    plan = plan_for(path=path, fmt='vpc', size='10M')[1]
    assert plan.actions == []
    # force_size keeps the exact size: the same image no longer matches 10M.
    with pytest.raises(DiskImageError, match='cannot be resized'):
        plan_for(path=path, fmt='vpc', size='10M', options={'force_size': True})


# --------------------------------------------------------------------------- conversions
@pytest.mark.parametrize('fmt, options', [
    ('vmdk', {'subformat': 'streamOptimized'}), ('vmdk', {'subformat': 'twoGbMaxExtentSparse'}), ('vdi', {}),
    ('vpc', {}), ('vhdx', {}), ('qed', {}), ('qcow', {}),
])
def test_conversion_in_and_out_of_each_format_is_kept_on_the_second_run(tmp_path, fmt, options):
    source = str(tmp_path / 'source.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', source, '3M')
    subprocess.run(('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x33 1M 128K', source), check=True,
                   stdout=subprocess.PIPE)
    exported = str(tmp_path / ('exported.' + fmt))
    first, second = converge(path=exported, fmt=fmt, src=source, options=options)
    assert [action.kind for action in first.actions] == ['convert'] and second.actions == []
    assert first.after['virtual_size'] == qemu_info(exported, fmt)['virtual-size']
    back = str(tmp_path / 'back.qcow2')
    first, second = converge(path=back, fmt='qcow2', src=exported, src_format=fmt)
    assert [action.kind for action in first.actions] == ['convert'] and second.actions == []
    qemu_img('compare', '-f', 'qcow2', '-F', fmt, source, exported)
    qemu_img('compare', '-f', 'qcow2', '-F', 'qcow2', source, back)


@pytest.mark.parametrize('member, index', [('first.vmdk', 0), ('second.vmdk', 1), (1, 1), (0, 0)])
def test_src_member_converts_that_disk_of_the_ova(tmp_path, appliance, member, index):
    archive, disks = appliance
    path = str(tmp_path / 'imported.qcow2')
    first, second = converge(path=path, fmt='qcow2', src=str(archive), src_member=member)
    assert "member %r" % (member,) in first.actions[0].description
    assert second.actions == []
    qemu_img('compare', '-f', 'vmdk', '-F', 'qcow2', str(disks[index]), path)


@pytest.mark.parametrize('params, message', [
    (dict(src_member='first.vmdk'), r"missing parameter\(s\) required by 'src_member': src"),
    (dict(src='x.ova', src_member=-1), 'must not be negative'),
    (dict(src='x.ova', src_member=True), 'expected a member name or an index'),
    (dict(src='x.ova', src_member=''), 'expected a member name or an index'),
])
def test_src_member_requests_refused(tmp_path, params, message):
    with pytest.raises(DiskImageError, match=message):
        DiskImageRequest(path=str(tmp_path / 'out.qcow2'), fmt='qcow2', **params)


def test_missing_member_fails_when_planning(tmp_path, appliance):
    archive = appliance[0]
    with pytest.raises(ImageError, match='third.vmdk'):
        plan_for(path=str(tmp_path / 'out.qcow2'), fmt='qcow2', src=str(archive), src_member='third.vmdk')


# --------------------------------------------------------------------------- disk_image_info
def run_info(capsys, **args):
    args.update(_ansible_check_mode=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            disk_image_info.main()
    return json.loads(capsys.readouterr().out)


def test_info_lists_the_disks_of_an_ova_and_describes_the_selected_one(capsys, appliance):
    archive, disks = appliance
    result = run_info(capsys, path=str(archive), member=1, check=True, map=True)
    image = result['images'][0]
    assert [disk['name'] for disk in image['ova_disks']] == ['first.vmdk', 'second.vmdk']
    assert [disk['capacity'] for disk in image['ova_disks']] == [3 * MIB, 2 * MIB]
    assert image['filename'].endswith('appliance.ova/second.vmdk')
    assert image['virtual-size'] == qemu_info(disks[1], 'vmdk')['virtual-size']
    assert image['format-specific']['data']['create-type'] == 'streamOptimized'
    assert 'check' in image and image['map']


def test_info_of_an_ova_without_member_describes_its_first_disk(capsys, appliance):
    archive, disks = appliance
    image = run_info(capsys, path=str(archive))['images'][0]
    assert image['virtual-size'] == qemu_info(disks[0], 'vmdk')['virtual-size']
    assert len(image['ova_disks']) == 2


def test_info_of_plain_images_has_no_disk_list(tmp_path):
    path = str(tmp_path / 'disk.vhdx')
    qemu_img('create', '-q', '-f', 'vhdx', path, '2M')
    described = describe_image(path)
    assert described['format'] == 'vhdx' and 'ova_disks' not in described
    assert described['virtual-size'] == qemu_info(path, 'vhdx')['virtual-size']


def test_info_of_a_tar_without_disks_is_the_empty_list(tmp_path):
    archive = tmp_path / 'notes.tar'
    (tmp_path / 'readme.txt').write_text('no disks here')
    with tarfile.open(str(archive), 'w', format=tarfile.USTAR_FORMAT) as tar:
        tar.add(str(tmp_path / 'readme.txt'), arcname='readme.txt')
    assert describe_image(str(archive)) == {'filename': str(archive), 'exists': True, 'ova_disks': []}


# --------------------------------------------------------------------------- read-only formats as src
SAMPLES = os.path.join(os.path.dirname(__file__), '..', 'module_utils', 'diskimage')


def unpacked_sample(tmp_path, relative):
    """A sample image from the library's tests, decompressed into tmp_path when it is stored compressed."""
    source = os.path.join(SAMPLES, relative)
    opener = {'.bz2': bz2.open, '.gz': gzip.open}.get(os.path.splitext(source)[1])
    if opener is None:
        return source
    target = str(tmp_path / os.path.basename(os.path.splitext(source)[0]))
    with opener(source, 'rb') as packed, open(target, 'wb') as plain:
        shutil.copyfileobj(packed, plain)
    return target


@pytest.mark.parametrize('relative, fmt', [
    ('probe_samples/simple-pattern.cloop.bz2', 'cloop'),
    ('probe_samples/empty.bochs.bz2', 'bochs'),
    ('samples/dmg/hfsplus_zlib.dmg', 'dmg'),
])
@pytest.mark.parametrize('give_format', [True, False])
def test_read_only_formats_convert_as_src_probed_or_named(tmp_path, relative, fmt, give_format):
    source = unpacked_sample(tmp_path, relative)
    path = str(tmp_path / 'imported.qcow2')
    params = dict(path=path, fmt='qcow2', src=source, src_format=fmt if give_format else None)
    first, second = converge(**params)
    assert first.actions[0].args['src_format'] == fmt and second.actions == []
    qemu_img('compare', '-f', fmt, '-F', 'qcow2', source, path)


def test_parallels_made_by_qemu_img_converts_as_src(tmp_path):
    source = str(tmp_path / 'disk.hdd')
    qemu_img('create', '-q', '-f', 'parallels', source, '2M')
    subprocess.run(('qemu-io', '-f', 'parallels', '-c', 'write -P 0x44 1M 64K', source), check=True,
                   stdout=subprocess.PIPE)
    path = str(tmp_path / 'imported.vdi')
    first, second = converge(path=path, fmt='vdi', src=source)
    assert first.actions[0].args['src_format'] == 'parallels' and second.actions == []
    qemu_img('compare', '-f', 'parallels', '-F', 'vdi', source, path)


# --------------------------------------------------------------------------- multi-file vmdk
def test_multi_file_vmdk_is_replaced_and_removed_with_its_extent_files(tmp_path):
    path = str(tmp_path / 'disk.vmdk')
    first, second = converge(path=path, fmt='vmdk', size='1M', options={'subformat': 'monolithicFlat'})
    assert sorted(os.listdir(str(tmp_path))) == ['disk-flat.vmdk', 'disk.vmdk'] and second.actions == []
    # Replaced by a split image: the new extents have their final names, the old flat extent is gone.
    first, second = converge(path=path, fmt='vmdk', size='1M', options={'subformat': 'twoGbMaxExtentFlat'},
                             force=True)
    assert [action.kind for action in first.actions] == ['create'] and second.actions == []
    assert sorted(os.listdir(str(tmp_path))) == ['disk-f001.vmdk', 'disk.vmdk']
    qemu_img('check', '-f', 'vmdk', path)
    assert qemu_info(path, 'vmdk')['format-specific']['data']['create-type'] == 'twoGbMaxExtentFlat'
    # Replaced by a single-file image: the extent files of the old one are removed.
    converge(path=path, fmt='vmdk', size='1M', options={'subformat': 'monolithicSparse'}, force=True)
    assert os.listdir(str(tmp_path)) == ['disk.vmdk']
    converge(path=path, fmt='vmdk', size='1M', options={'subformat': 'twoGbMaxExtentSparse'}, force=True)
    request, plan = plan_for(path=path, state='absent')
    assert 'disk-s001.vmdk' in plan.actions[0].description
    apply_plan(plan, request)
    assert os.listdir(str(tmp_path)) == []


def test_extent_files_elsewhere_are_never_removed(tmp_path):
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    path = str(tmp_path / 'disk.vmdk')
    qemu_img('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', str(elsewhere / 'disk.vmdk'), '1M')
    descriptor = (elsewhere / 'disk.vmdk').read_text().replace('"disk-flat.vmdk"', '"elsewhere/disk-flat.vmdk"')
    (tmp_path / 'disk.vmdk').write_text(descriptor)
    request, plan = plan_for(path=path, state='absent')
    apply_plan(plan, request)
    assert sorted(os.listdir(str(elsewhere))) == ['disk-flat.vmdk', 'disk.vmdk']
    assert not os.path.exists(path)
