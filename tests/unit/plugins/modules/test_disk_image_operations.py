# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image operations on existing images: snapshots, repair, commit, rebase, amend, preallocation.

Planning is checked on real small images made by qemu-img; qemu-img checks what applying did.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess
import sys

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import (
    DiskImageError,
    DiskImageRequest,
    apply_plan,
    plan_disk_image,
    read_state,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError
from ansible_collections.kvm.storage.plugins.modules import disk_image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'module_utils', 'diskimage'))
from qcow2_editing import Qcow2Editor  # noqa: E402 pylint: disable=wrong-import-position

MIB = 1 << 20


def qemu_img(*args):
    return subprocess.run(('qemu-img',) + tuple(str(a) for a in args), check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True).stdout


def qemu_io(path, *commands):
    args = ['qemu-io', '-f', 'qcow2']
    for command in commands:
        args += ['-c', command]
    subprocess.run(args + [str(path)], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def qemu_json(*args):
    proc = subprocess.run(('qemu-img',) + tuple(str(a) for a in args) + ('--output=json',), check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    return json.loads(proc.stdout)


def assert_clean(path):
    result = qemu_json('check', '-f', 'qcow2', path)
    assert not result.get('leaks') and not result.get('corruptions') and not result.get('check-errors'), result


def snapshot_names(path):
    return [snapshot['name'] for snapshot in qemu_json('info', '-f', 'qcow2', path).get('snapshots', [])]


def make_qcow2(path, size='4M', *options):
    qemu_img('create', '-q', '-f', 'qcow2', *(options + (path, size)))
    return str(path)


def make_overlay(tmp_path, name='top.qcow2', backing='base.qcow2'):
    qemu_img('create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', tmp_path / name)
    return str(tmp_path / name)


def plan_for(**params):
    request = DiskImageRequest(**params)
    return request, plan_disk_image(request, *read_state(request))


def kinds(plan):
    return [action.kind for action in plan.actions]


def digest(path, tmp_path):
    out = tmp_path / 'digest.raw'
    qemu_img('convert', '-O', 'raw', path, out)
    with open(str(out), 'rb') as image:
        content = image.read()
    out.unlink()
    return content


# --------------------------------------------------------------------------- snapshots
def test_snapshots_created_and_deleted_by_name(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2')
    qemu_img('snapshot', '-c', 'old', path)
    qemu_img('snapshot', '-c', 'keep', path)
    wanted = [{'name': 'old', 'state': 'absent'}, {'name': 'new'}, {'name': 'keep', 'state': 'present'}]
    request, plan = plan_for(path=path, fmt='qcow2', snapshots=wanted)
    assert [(a.kind, a.args['name']) for a in plan.actions] == [('snapshot_delete', 'old'), ('snapshot_create', 'new')]
    assert plan.before['snapshots'] == ['old', 'keep'] and plan.after['snapshots'] == ['keep', 'new']
    apply_plan(plan, request)
    assert snapshot_names(path) == ['keep', 'new']
    assert_clean(path)
    request, plan = plan_for(path=path, fmt='qcow2', snapshots=wanted)
    assert plan.actions == [] and plan.before == plan.after


def test_absent_snapshot_deletes_every_snapshot_of_that_name(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2')
    for attempt in ('first', 'second'):
        qemu_img('snapshot', '-c', 'twice', path)  # qemu-img allows duplicate names
        assert snapshot_names(path).count('twice') == (1 if attempt == 'first' else 2)
    request, plan = plan_for(path=path, fmt='qcow2', snapshots=[{'name': 'twice', 'state': 'absent'}])
    assert kinds(plan) == ['snapshot_delete', 'snapshot_delete']
    apply_plan(plan, request)
    assert snapshot_names(path) == []
    assert_clean(path)


def test_snapshot_of_a_new_image_is_taken_after_creation(tmp_path):
    path = str(tmp_path / 'new.qcow2')
    request, plan = plan_for(path=path, fmt='qcow2', size='1M', snapshots=[{'name': 'empty'}])
    assert kinds(plan) == ['create', 'snapshot_create'] and plan.after['snapshots'] == ['empty']
    apply_plan(plan, request)
    assert snapshot_names(path) == ['empty']


@pytest.mark.parametrize('fmt, snapshots, message', [
    ('raw', [{'name': 'a'}], 'raw images have no internal snapshots'),
    ('qcow2', [{'name': 'a'}, {'name': 'a', 'state': 'absent'}], 'both present and absent'),
    ('qcow2', [{'name': ''}], 'non-empty name'),
])
def test_snapshot_requests_refused(fmt, snapshots, message):
    with pytest.raises(DiskImageError, match=message):
        DiskImageRequest('/x', fmt=fmt, snapshots=snapshots)


# --------------------------------------------------------------------------- revert_to
def test_revert_applies_the_snapshot_only_when_the_disk_differs(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2')
    qemu_io(path, 'write -P 0x61 0 256k')
    qemu_img('snapshot', '-c', 'clean', path)
    expected = digest(path, tmp_path)
    request, plan = plan_for(path=path, fmt='qcow2', revert_to='clean')
    assert plan.actions == [] and plan.before['content_matches_snapshot'] is True
    qemu_io(path, 'write -P 0x62 64k 4k')
    qemu_img('resize', path, '6M')
    request, plan = plan_for(path=path, fmt='qcow2', revert_to='clean')
    assert [a.description for a in plan.actions] == [
        "revert %s to snapshot 'clean' (virtual size %d to %d bytes)" % (path, 6 * MIB, 4 * MIB)]
    assert (plan.before['content_matches_snapshot'], plan.after['content_matches_snapshot']) == (False, True)
    assert plan.after['virtual_size'] == 4 * MIB
    apply_plan(plan, request)
    assert digest(path, tmp_path) == expected
    assert snapshot_names(path) == ['clean']
    assert_clean(path)
    assert not plan_for(path=path, fmt='qcow2', revert_to='clean')[1].changed


def test_revert_then_grow_in_one_task(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2')
    qemu_img('snapshot', '-c', 'clean', path)
    qemu_io(path, 'write -P 0x63 0 64k')
    request, plan = plan_for(path=path, fmt='qcow2', revert_to='clean', size='8M')
    assert kinds(plan) == ['revert', 'resize']
    apply_plan(plan, request)
    assert qemu_json('info', path)['virtual-size'] == 8 * MIB
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'read -P 0 0 64k', path], check=True, stdout=subprocess.PIPE)
    assert not plan_for(path=path, fmt='qcow2', revert_to='clean', size='8M')[1].changed


def test_revert_to_a_missing_snapshot_fails(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2')
    with pytest.raises(ImageError, match="no snapshot named 'clean'"):
        plan_for(path=path, fmt='qcow2', revert_to='clean')
    with pytest.raises(DiskImageError, match='does not exist'):
        plan_for(path=str(tmp_path / 'new.qcow2'), fmt='qcow2', size='1M', revert_to='clean')
    with pytest.raises(DiskImageError, match='also listed absent'):
        DiskImageRequest(path, fmt='qcow2', revert_to='clean', snapshots=[{'name': 'clean', 'state': 'absent'}])


# --------------------------------------------------------------------------- repair
def leaky_image(tmp_path):
    path = make_qcow2(tmp_path / 'leaky.qcow2')
    qemu_io(path, 'write -P 0x11 0 128k')
    editor = Qcow2Editor(path)
    for cluster in (editor.append_cluster(), editor.append_cluster()):
        editor.set_refcount(cluster, 1)
    return path


@pytest.mark.parametrize('mode', ['leaks', 'all'])
def test_repair_frees_leaks_and_then_has_nothing_to_do(tmp_path, mode):
    path = leaky_image(tmp_path)
    request, plan = plan_for(path=path, fmt='qcow2', repair=mode)
    assert [a.description for a in plan.actions] == ['repair 2 leaked clusters of qcow2 image %s' % path]
    assert plan.before['consistency'] == {'leaks': 2, 'corruptions': 0}
    assert plan.after['consistency'] == {'leaks': 0, 'corruptions': 0}
    outcome = apply_plan(plan, request)
    assert outcome['repair']['leaks-fixed'] == 2
    assert_clean(path)
    request, plan = plan_for(path=path, fmt='qcow2', repair=mode)
    assert plan.actions == [] and plan.before == plan.after


def test_corruptions_need_repair_all(tmp_path):
    path = make_qcow2(tmp_path / 'dirty.qcow2', '4M', '-o', 'lazy_refcounts=on')
    # A crash with lazy refcounts leaves refcounts behind: qemu-img check counts corruptions.
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 128k', '-c', 'abort', path],
                   check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert qemu_json('check', '-f', 'qcow2', path).get('corruptions')
    with pytest.raises(DiskImageError, match='repair=all'):
        plan_for(path=path, fmt='qcow2', repair='leaks')
    request, plan = plan_for(path=path, fmt='qcow2', repair='all')
    assert kinds(plan) == ['repair']
    apply_plan(plan, request)
    assert_clean(path)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'read -P 0x5a 0 128k', path], check=True, stdout=subprocess.PIPE)
    assert not plan_for(path=path, fmt='qcow2', repair='all')[1].changed


def test_repair_of_a_raw_image_is_nothing_to_do(tmp_path):
    path = str(tmp_path / 'a.raw')
    qemu_img('create', '-q', '-f', 'raw', path, '1M')
    assert not plan_for(path=path, fmt='raw', repair='all')[1].changed


# --------------------------------------------------------------------------- commit
def test_commit_writes_the_overlay_into_its_backing_file(tmp_path):
    make_qcow2(tmp_path / 'base.qcow2')
    qemu_io(tmp_path / 'base.qcow2', 'write -P 0x11 0 1M')
    top = make_overlay(tmp_path)
    qemu_io(top, 'write -P 0x22 64k 128k', 'write -z 2M 64k')
    expected = digest(top, tmp_path)
    request, plan = plan_for(path=top, fmt='qcow2', commit=True)
    assert [a.description for a in plan.actions] == [
        'commit %d bytes of %s into its backing file base.qcow2' % (192 * 1024, top)]
    assert (plan.before['uncommitted_bytes'], plan.after['uncommitted_bytes']) == (192 * 1024, 0)
    outcome = apply_plan(plan, request)
    assert outcome['bytes_written'] > 0 and outcome['duration'] >= 0
    assert digest(str(tmp_path / 'base.qcow2'), tmp_path) == expected
    assert digest(top, tmp_path) == expected
    assert_clean(top)
    assert_clean(str(tmp_path / 'base.qcow2'))
    assert not plan_for(path=top, fmt='qcow2', commit=True)[1].changed


def test_commit_without_backing_file_is_refused(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2')
    with pytest.raises(DiskImageError, match='no backing file'):
        plan_for(path=path, fmt='qcow2', commit=True)


# --------------------------------------------------------------------------- rebase
def rebase_setup(tmp_path):
    make_qcow2(tmp_path / 'base.qcow2')
    qemu_io(tmp_path / 'base.qcow2', 'write -P 0x11 0 1M')
    make_qcow2(tmp_path / 'other.qcow2')
    qemu_io(tmp_path / 'other.qcow2', 'write -P 0x33 512k 1M')
    top = make_overlay(tmp_path)
    qemu_io(top, 'write -P 0x22 256k 64k')
    return top


def test_backing_change_without_rebase_is_refused_with_a_hint(tmp_path):
    top = rebase_setup(tmp_path)
    with pytest.raises(DiskImageError, match='rebase=safe'):
        plan_for(path=top, fmt='qcow2', backing_file='other.qcow2')


def test_safe_rebase_keeps_the_content(tmp_path):
    top = rebase_setup(tmp_path)
    expected = digest(top, tmp_path)
    request, plan = plan_for(path=top, fmt='qcow2', backing_file='other.qcow2', rebase='safe')
    assert [a.description for a in plan.actions] == [
        'rebase %s from base.qcow2 onto other.qcow2 (qcow2)' % top]
    assert (plan.before['backing_file'], plan.after['backing_file']) == ('base.qcow2', 'other.qcow2')
    apply_plan(plan, request)
    assert qemu_json('info', top)['backing-filename'] == 'other.qcow2'
    assert digest(top, tmp_path) == expected
    assert_clean(top)
    assert not plan_for(path=top, fmt='qcow2', backing_file='other.qcow2', rebase='safe')[1].changed


def test_unsafe_rebase_changes_only_the_name(tmp_path):
    top = rebase_setup(tmp_path)
    request, plan = plan_for(path=top, fmt='qcow2', backing_file='other.qcow2', rebase='unsafe')
    assert plan.actions[0].description.startswith('unsafe rebase')
    apply_plan(plan, request)
    assert qemu_json('map', top)[0]['depth'] == 1  # nothing copied into the overlay below 256k
    assert not plan_for(path=top, fmt='qcow2', backing_file='other.qcow2', rebase='unsafe')[1].changed


def test_empty_backing_file_with_rebase_flattens(tmp_path):
    top = rebase_setup(tmp_path)
    expected = digest(top, tmp_path)
    request, plan = plan_for(path=top, fmt='qcow2', backing_file='', rebase='safe')
    assert plan.actions[0].description == 'remove the backing file base.qcow2 of %s, copying its data into the image' % top
    assert plan.after['backing_file'] is None
    apply_plan(plan, request)
    assert 'backing-filename' not in qemu_json('info', top)
    assert digest(top, tmp_path) == expected
    assert not plan_for(path=top, fmt='qcow2', backing_file='', rebase='safe')[1].changed


@pytest.mark.parametrize('params, message', [
    (dict(backing_file=''), 'must not be empty'),
    (dict(rebase='safe'), r"missing parameter\(s\) required by 'rebase': backing_file"),
    (dict(rebase='safe', backing_file='b', src='/y'), r'parameters are mutually exclusive: rebase\|src'),
    (dict(commit=True, src='/y'), 'cannot be combined with src'),
    (dict(preallocation='full', options={'preallocation': 'off'}), 'options.preallocation'),
])
def test_inconsistent_operation_requests_refused(params, message):
    with pytest.raises(DiskImageError, match=message):
        DiskImageRequest('/x', fmt='qcow2', **params)


# --------------------------------------------------------------------------- amend
def test_amendable_options_are_amended_in_place(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2', '4M', '-o', 'compat=1.1,lazy_refcounts=off')
    qemu_io(path, 'write -P 0x44 0 64k')
    request, plan = plan_for(path=path, fmt='qcow2', options={'lazy_refcounts': True, 'refcount_bits': 64})
    assert kinds(plan) == ['amend']
    assert plan.actions[0].args['options'] == {'lazy_refcounts': True, 'refcount_bits': 64}
    assert plan.after['options']['lazy_refcounts'] is True and plan.after['options']['refcount_bits'] == 64
    apply_plan(plan, request)
    data = qemu_json('info', path)['format-specific']['data']
    assert data['lazy-refcounts'] is True and data['refcount-bits'] == 64
    assert_clean(path)
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'read -P 0x44 0 64k', path], check=True, stdout=subprocess.PIPE)
    assert not plan_for(path=path, fmt='qcow2', options={'lazy_refcounts': True, 'refcount_bits': 64})[1].changed


def test_compat_downgrade_is_amended(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2', '4M', '-o', 'compat=1.1')
    request, plan = plan_for(path=path, fmt='qcow2', options={'compat': '0.10'})
    assert kinds(plan) == ['amend']
    apply_plan(plan, request)
    assert qemu_json('info', path)['format-specific']['data']['compat'] == '0.10'
    assert_clean(path)


def test_lazy_refcounts_of_a_compat_010_image_are_off_and_amended_with_compat(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2', '4M', '-o', 'compat=0.10')
    wanted = {'compat': '1.1', 'lazy_refcounts': True}
    request, plan = plan_for(path=path, fmt='qcow2', options=wanted)
    assert plan.before['options']['lazy_refcounts'] is False
    assert plan.actions[0].args['options'] == wanted
    apply_plan(plan, request)
    data = qemu_json('info', path)['format-specific']['data']
    assert (data['compat'], data['lazy-refcounts']) == ('1.1', True)
    assert not plan_for(path=path, fmt='qcow2', options=wanted)[1].changed


def test_cluster_size_still_needs_force(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2')
    with pytest.raises(DiskImageError, match='options.cluster_size') as raised:
        plan_for(path=path, fmt='qcow2', options={'cluster_size': '128K', 'lazy_refcounts': True})
    assert 'lazy_refcounts' not in str(raised.value)


# --------------------------------------------------------------------------- preallocation
def test_preallocation_on_create_and_grow(tmp_path):
    path = str(tmp_path / 'a.raw')
    request, plan = plan_for(path=path, fmt='raw', size='1M', preallocation='full')
    assert plan.actions[0].description.endswith('with preallocation=full')
    apply_plan(plan, request)
    assert os.stat(path).st_blocks * 512 >= MIB
    request, plan = plan_for(path=path, fmt='raw', size='2M', preallocation='full')
    assert [(a.kind, a.args['preallocation']) for a in plan.actions] == [('resize', 'full')]
    apply_plan(plan, request)
    assert os.stat(path).st_blocks * 512 >= 2 * MIB
    assert not plan_for(path=path, fmt='raw', size='2M', preallocation='full')[1].changed


def test_qcow2_grow_with_metadata_preallocation(tmp_path):
    path = make_qcow2(tmp_path / 'a.qcow2', '1M')
    request, plan = plan_for(path=path, fmt='qcow2', size='8M', preallocation='metadata')
    apply_plan(plan, request)
    assert_clean(path)
    assert qemu_json('info', path)['virtual-size'] == 8 * MIB
    allocated = [e for e in qemu_json('map', '-f', 'qcow2', path) if e['start'] >= MIB]
    assert allocated and all(e['zero'] and 'offset' in e for e in allocated)


# --------------------------------------------------------------------------- the module: 4 passes
def run_module(capsys, check_mode=False, **args):
    args.update(_ansible_check_mode=check_mode, _ansible_diff=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            disk_image.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize('case', ['snapshots', 'repair', 'commit', 'rebase', 'amend', 'grow-preallocated', 'revert'])
def test_check_mode_predicts_the_real_run(tmp_path, capsys, case):
    args = dict(path=str(tmp_path / 'a.qcow2'), format='qcow2')
    if case == 'snapshots':
        make_qcow2(tmp_path / 'a.qcow2')
        qemu_img('snapshot', '-c', 'old', tmp_path / 'a.qcow2')
        args['snapshots'] = [{'name': 'new'}, {'name': 'old', 'state': 'absent'}]
    elif case == 'repair':
        args['path'] = leaky_image(tmp_path)
        args['repair'] = 'leaks'
    elif case in ('commit', 'rebase'):
        args['path'] = rebase_setup(tmp_path)
        if case == 'commit':
            args['commit'] = True
        else:
            args.update(backing_file='other.qcow2', rebase='safe')
    elif case == 'amend':
        make_qcow2(tmp_path / 'a.qcow2')
        args['options'] = {'lazy_refcounts': True}
    elif case == 'revert':
        make_qcow2(tmp_path / 'a.qcow2')
        qemu_img('snapshot', '-c', 'clean', tmp_path / 'a.qcow2')
        qemu_io(tmp_path / 'a.qcow2', 'write -P 0x64 0 64k')
        args['revert_to'] = 'clean'
    else:
        make_qcow2(tmp_path / 'a.qcow2', '1M')
        args.update(size='3M', preallocation='falloc')
    runs = [run_module(capsys, check_mode=check, **args) for check in (True, False, True, False)]
    for run in runs:
        assert 'failed' not in run, run
    assert [run['changed'] for run in runs] == [True, True, False, False]
    assert runs[0]['actions'] == runs[1]['actions']
    assert runs[0]['diff'] == runs[1]['diff']
    assert runs[0]['diff']['before'] != runs[0]['diff']['after']
    assert runs[2]['diff']['before'] == runs[2]['diff']['after'] == runs[1]['diff']['after']
    assert 'stats' not in runs[0] and 'stats' not in runs[2]
    assert runs[1]['stats']['duration'] >= 0 and runs[1]['stats']['bytes_written'] >= 0
    assert len(runs[1]['stats']['operations']) == len(runs[1]['actions'])
    assert runs[1]['stats']['operations'][0]['kind'] == {
        'snapshots': 'snapshot_delete', 'repair': 'repair', 'commit': 'commit', 'rebase': 'rebase',
        'amend': 'amend', 'grow-preallocated': 'resize', 'revert': 'revert'}[case]
    assert_clean(args['path'])


# --------------------------------------------------------------------------- conversion of a snapshot
def test_conversion_of_an_internal_snapshot(tmp_path):
    src = make_qcow2(tmp_path / 'src.qcow2')
    qemu_io(src, 'write -P 0x71 0 128k')
    qemu_img('snapshot', '-c', 'then', src)
    qemu_io(src, 'write -P 0x72 0 128k')
    qemu_img('resize', src, '6M')
    oracle = tmp_path / 'oracle.raw'
    qemu_img('convert', '-l', 'snapshot.name=then', '-O', 'raw', src, oracle)
    path = str(tmp_path / 'then.qcow2')
    with pytest.raises(DiskImageError, match="no snapshot named 'never'.*'then'"):
        plan_for(path=path, fmt='qcow2', src=src, src_snapshot='never')
    request, plan = plan_for(path=path, fmt='qcow2', src=src, src_snapshot='then')
    assert plan.actions[0].description.startswith("convert %s (qcow2) snapshot 'then' to qcow2 image" % src)
    apply_plan(plan, request)
    # the size the plan predicted is the size the conversion made
    assert qemu_json('info', path)['virtual-size'] == plan.after['virtual_size']
    qemu_img('compare', '-f', 'raw', '-F', 'qcow2', oracle, path)
    assert_clean(path)
    assert not plan_for(path=path, fmt='qcow2', src=src, src_snapshot='then')[1].changed
    with pytest.raises(DiskImageError, match=r"missing parameter\(s\) required by 'src_snapshot': src"):
        DiskImageRequest(path, fmt='qcow2', src_snapshot='then')
