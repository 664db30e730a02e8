# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image: reading the state, planning (pure) and applying, with real small images in tmp_path.

qemu-img makes the pre-existing images and checks what the module made.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import (
    DiskImageError,
    DiskImageRequest,
    apply_plan,
    plan_disk_image,
    read_state,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError, PolicyError
from ansible_collections.kvm.storage.plugins.modules import disk_image

MIB = 1 << 20


def qemu_img(*args):
    return subprocess.run(('qemu-img',) + args, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True).stdout


def qemu_info(path):
    return json.loads(qemu_img('info', '--output=json', str(path)))


def make_image(path, fmt, size, *extra):
    qemu_img('create', '-q', '-f', fmt, *(extra + (str(path), str(size))))
    return str(path)


def plan_for(**params):
    request = DiskImageRequest(**params)
    return request, plan_disk_image(request, *read_state(request))


def kinds(plan):
    return [action.kind for action in plan.actions]


# --------------------------------------------------------------------------- request validation
@pytest.mark.parametrize('size, expected', [
    (1048576, MIB), ('1M', MIB), ('1.5K', 1536), ('10G', 10 << 30), (2.0 * MIB, 2 * MIB),
])
def test_size_accepts_bytes_and_qemu_suffixes(size, expected):
    assert DiskImageRequest('/x', fmt='raw', size=size).size == expected


@pytest.mark.parametrize('size', ['ten', '+-1', '-', True, '1.5'])
def test_size_rejects_what_qemu_img_rejects(size):
    with pytest.raises(ImageError):
        DiskImageRequest('/x', fmt='raw', size=size)


def test_compat_is_compared_in_info_spelling():
    # YAML reads compat 0.10 as the float 0.1; v3 is qemu-img's alias of 1.1.
    assert DiskImageRequest('/x', fmt='qcow2', options={'compat': 0.1}).options['compat'] == '0.10'
    assert DiskImageRequest('/x', fmt='qcow2', options={'compat': 'v3', 'cluster_size': '64K'}).options == {
        'compat': '1.1', 'cluster_size': 65536}


@pytest.mark.parametrize('params, message', [
    (dict(), 'format is required'),
    (dict(fmt='qcow2', compress=True), 'compress is True but all of the following are missing: src'),
    (dict(fmt='qcow2', backing_format='raw'), r"missing parameter\(s\) required by 'backing_format': backing_file"),
    (dict(fmt='qcow2', options={'backing_file': 'b'}), 'backing_file'),
    (dict(fmt='qcow2', src='/x'), 'same file'),
])
def test_request_refuses_inconsistent_options(params, message):
    with pytest.raises(DiskImageError, match=message):
        DiskImageRequest('/x', **params)


# --------------------------------------------------------------------------- planning
def test_new_image_is_created_with_sector_rounded_size(tmp_path):
    path = str(tmp_path / 'new.raw')
    request, plan = plan_for(path=path, fmt='raw', size=1000)
    assert kinds(plan) == ['create']
    assert plan.before == {'path': path, 'state': 'absent'}
    assert plan.after['virtual_size'] == 1024 and plan.after['format'] == 'raw'
    apply_plan(plan, request)
    assert qemu_info(path)['virtual-size'] == 1024
    assert not plan_for(path=path, fmt='raw', size=1000)[1].changed


def test_new_image_without_size_or_source_is_refused(tmp_path):
    with pytest.raises(DiskImageError, match='size is required'):
        plan_for(path=str(tmp_path / 'x.qcow2'), fmt='qcow2')


def test_matching_image_plans_nothing_and_diff_is_equal(tmp_path):
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB, '-o', 'cluster_size=65536,lazy_refcounts=on')
    request, plan = plan_for(path=path, fmt='qcow2', size='1M', options={'lazy_refcounts': True, 'cluster_size': '64K'})
    assert plan.actions == []
    assert plan.before == plan.after
    assert plan.before['options']['lazy_refcounts'] is True


def test_grow_plans_a_resize_and_applies_it(tmp_path):
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB)
    request, plan = plan_for(path=path, fmt='qcow2', size='2M')
    assert kinds(plan) == ['resize']
    assert (plan.before['virtual_size'], plan.after['virtual_size']) == (MIB, 2 * MIB)
    apply_plan(plan, request)
    assert qemu_info(path)['virtual-size'] == 2 * MIB
    qemu_img('check', path)


def test_shrink_is_refused_unless_asked(tmp_path):
    path = make_image(tmp_path / 'a.raw', 'raw', 2 * MIB)
    with pytest.raises(DiskImageError, match='shrink=true'):
        plan_for(path=path, fmt='raw', size='1M')
    assert os.path.getsize(path) == 2 * MIB
    request, plan = plan_for(path=path, fmt='raw', size='1M', shrink=True)
    assert [(a.kind, a.args) for a in plan.actions] == [('resize', {'size': MIB, 'shrink': True, 'preallocation': None})]


def test_format_difference_fails_without_force_and_recreates_with_it(tmp_path):
    path = make_image(tmp_path / 'a.img', 'raw', MIB)
    with pytest.raises(DiskImageError, match="format is 'raw', requested 'qcow2'.*force=true"):
        plan_for(path=path, fmt='qcow2')
    request, plan = plan_for(path=path, fmt='qcow2', force=True)
    # The recreated image keeps the virtual size it had when no size is given.
    assert [(a.kind, a.args) for a in plan.actions] == [('create', {'size': MIB})]
    assert plan.differences == [('format', 'raw', 'qcow2')]
    apply_plan(plan, request)
    assert qemu_info(path)['format'] == 'qcow2'
    assert not plan_for(path=path, fmt='qcow2', force=True)[1].changed


def test_reported_option_difference_needs_force(tmp_path):
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB, '-o', 'cluster_size=65536')
    with pytest.raises(DiskImageError, match='options.cluster_size'):
        plan_for(path=path, fmt='qcow2', options={'cluster_size': '128K'})
    # Creation-only options cannot be compared: they do not make a difference.
    assert not plan_for(path=path, fmt='qcow2', options={'preallocation': 'metadata'})[1].changed


def test_backing_format_is_detected_and_recorded(tmp_path):
    make_image(tmp_path / 'base.raw', 'raw', MIB)
    path = str(tmp_path / 'top.qcow2')
    request, plan = plan_for(path=path, fmt='qcow2', backing_file='base.raw')
    assert request.backing_format == 'raw'
    assert kinds(plan) == ['create']
    assert plan.after['virtual_size'] == MIB
    apply_plan(plan, request)
    described = qemu_info(path)
    assert (described['backing-filename'], described['backing-filename-format']) == ('base.raw', 'raw')
    assert not plan_for(path=path, fmt='qcow2', backing_file='base.raw')[1].changed
    # A backing format that is not the backing file's format is an error, not a difference to force.
    with pytest.raises(ImageError, match='base.raw'):
        plan_for(path=path, fmt='qcow2', backing_file='base.raw', backing_format='qcow2')


def test_absolute_backing_file_the_task_names_needs_no_allow_dirs(tmp_path):
    (tmp_path / 'elsewhere').mkdir()
    base = make_image(tmp_path / 'elsewhere' / 'base.qcow2', 'qcow2', MIB)
    (tmp_path / 'vm').mkdir()
    path = str(tmp_path / 'vm' / 'top.qcow2')
    # The task's own backing_file is the operator's word: trusted without allow_dirs.
    request, plan = plan_for(path=path, fmt='qcow2', backing_file=base)
    assert request.backing_format == 'qcow2' and kinds(plan) == ['create']
    # A backing file that is no image file is still refused, before anything is written.
    with pytest.raises(PolicyError, match='device node'):
        plan_for(path=path, fmt='qcow2', backing_file='/dev/null')
    assert os.listdir(str(tmp_path / 'vm')) == []


def test_missing_source_fails(tmp_path):
    with pytest.raises(ImageError):
        plan_for(path=str(tmp_path / 'out.qcow2'), fmt='qcow2', src=str(tmp_path / 'missing.raw'))
    assert not os.path.exists(str(tmp_path / 'out.qcow2'))


def test_convert_then_grow_and_existing_conversion_is_kept(tmp_path):
    src = make_image(tmp_path / 'src.raw', 'raw', MIB)
    with open(src, 'r+b') as image:
        image.write(b'kvm.storage' * 100)
    path = str(tmp_path / 'out.qcow2')
    request, plan = plan_for(path=path, fmt='qcow2', src=src, src_format='raw', size='2M')
    assert kinds(plan) == ['convert', 'resize']
    stats = apply_plan(plan, request)
    assert stats['bytes_written'] > 0 and stats['duration'] >= 0
    assert qemu_info(path)['virtual-size'] == 2 * MIB
    qemu_img('check', path)
    assert not plan_for(path=path, fmt='qcow2', src=src, size='2M')[1].changed
    # Without size, the existing image must have the source's virtual size.
    with pytest.raises(DiskImageError, match='virtual_size'):
        plan_for(path=path, fmt='qcow2', src=src)
    request, plan = plan_for(path=path, fmt='qcow2', src=src, force=True)
    assert kinds(plan) == ['convert']
    apply_plan(plan, request)
    qemu_img('compare', '-f', 'raw', '-F', 'qcow2', src, path)


def test_missing_directory_is_refused_when_planning(tmp_path):
    with pytest.raises(DiskImageError, match='does not exist'):
        plan_for(path=str(tmp_path / 'no' / 'a.raw'), fmt='raw', size=MIB)


def test_convert_onto_a_backing_file_keeps_only_the_difference(tmp_path):
    base = make_image(tmp_path / 'base.qcow2', 'qcow2', MIB)
    qemu_img('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', str(tmp_path / 'top.qcow2'))
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 64k', base], check=True, stdout=subprocess.PIPE)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x22 128k 64k', str(tmp_path / 'top.qcow2')],
                   check=True, stdout=subprocess.PIPE)
    path = str(tmp_path / 'copy.qcow2')
    request, plan = plan_for(path=path, fmt='qcow2', src=str(tmp_path / 'top.qcow2'), backing_file='base.qcow2')
    assert request.backing_format == 'qcow2' and kinds(plan) == ['convert']
    apply_plan(plan, request)
    described = qemu_info(path)
    assert (described['backing-filename'], described['backing-filename-format']) == ('base.qcow2', 'qcow2')
    qemu_img('compare', str(tmp_path / 'top.qcow2'), path)
    allocated = json.loads(qemu_img('map', '--output=json', path))
    assert [(m['start'], m['length']) for m in allocated if m['data'] and m['depth'] == 0] == [(128 * 1024, 64 * 1024)]
    assert not plan_for(path=path, fmt='qcow2', src=str(tmp_path / 'top.qcow2'), backing_file='base.qcow2')[1].changed


def test_absent_removes_only_an_existing_image(tmp_path):
    path = make_image(tmp_path / 'a.raw', 'raw', MIB)
    request, plan = plan_for(path=path, state='absent')
    assert kinds(plan) == ['remove'] and plan.after == {'path': path, 'state': 'absent'}
    apply_plan(plan, request)
    assert not os.path.exists(path)
    assert not plan_for(path=path, state='absent')[1].changed


def test_absent_removes_an_image_that_cannot_be_read(tmp_path):
    path = make_image(tmp_path / 'broken.qcow2', 'qcow2', MIB)
    with open(path, 'r+b') as image:
        image.seek(40)  # qcow2 header: l1_table_offset, now far past the end of the file
        image.write((1 << 40).to_bytes(8, 'big'))
    with pytest.raises(ImageError):
        plan_for(path=path, fmt='qcow2')
    request, plan = plan_for(path=path, state='absent')
    assert [action.description for action in plan.actions] == ['remove unreadable image %s' % path]
    apply_plan(plan, request)
    assert not os.path.exists(path)


def test_path_that_is_not_a_regular_file_is_refused(tmp_path):
    with pytest.raises(DiskImageError, match='not a regular file'):
        plan_for(path=str(tmp_path), fmt='raw', size=MIB)


# --------------------------------------------------------------------------- the module: check mode predicts the real run
def run_module(capsys, check_mode=False, **args):
    args.update(_ansible_check_mode=check_mode, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            disk_image.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize('case', ['create', 'create-mode', 'overlay', 'convert', 'grow', 'mode', 'recreate'])
def test_check_mode_predicts_the_real_run(tmp_path, capsys, case):
    base = make_image(tmp_path / 'base.qcow2', 'qcow2', MIB)
    path = str(tmp_path / 'image')
    args = dict(path=path, format='qcow2', size='1M')
    if case == 'overlay':
        args = dict(path=path, format='qcow2', backing_file='base.qcow2')
    elif case == 'convert':
        args = dict(path=path, format='raw', src=base, src_format='qcow2')
    elif case == 'create-mode':
        args['mode'] = '0640'
    elif case == 'grow':
        make_image(path, 'qcow2', MIB)
        args['size'] = '3M'
    elif case == 'mode':
        make_image(path, 'qcow2', MIB)
        os.chmod(path, 0o644)
        args['mode'] = '0600'
    elif case == 'recreate':
        make_image(path, 'raw', MIB)
        args['force'] = True
    runs = [run_module(capsys, check_mode=check, **args) for check in (True, False, True, False)]
    for run in runs:
        assert 'failed' not in run, run
    assert [run['changed'] for run in runs] == [True, True, False, False]
    assert runs[0]['actions'] == runs[1]['actions']
    assert runs[0]['diff'] == runs[1]['diff']
    assert runs[2]['diff']['before'] == runs[2]['diff']['after']
    assert runs[1]['image']['format'] == args['format']
    if case == 'mode':
        assert runs[1]['actions'] == ['set file attributes of %s' % path]
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    if case == 'create-mode':
        assert runs[1]['diff']['after']['mode'] == '0640'
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)


def test_module_failure_is_a_message_without_traceback(tmp_path, capsys):
    path = make_image(tmp_path / 'a.raw', 'raw', 2 * MIB)
    result = run_module(capsys, path=path, format='raw', size='1M')
    assert result['failed'] and 'shrink=true' in result['msg'] and 'exception' not in result
    assert os.path.getsize(path) == 2 * MIB
    result = run_module(capsys, path=str(tmp_path / 'b.qcow2'), format='qcow2', src=str(tmp_path / 'none'))
    assert result['failed'] and 'exception' not in result
    assert not os.path.exists(str(tmp_path / 'b.qcow2'))
