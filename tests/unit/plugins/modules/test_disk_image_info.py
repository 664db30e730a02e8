# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image_info: one entry per path, backing chains, checks, never a write."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.modules import disk_image_info

MIB = 1 << 20


def qemu_img(*args):
    return subprocess.run(('qemu-img',) + args, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True).stdout


def run_module(capsys, **args):
    args.update(_ansible_check_mode=True)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            disk_image_info.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def chain(tmp_path):
    base = str(tmp_path / 'base.raw')
    top = str(tmp_path / 'top.qcow2')
    qemu_img('create', '-q', '-f', 'raw', base, '1M')
    qemu_img('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', top)
    return base, top


def test_one_entry_per_path_in_order_with_qemu_img_fields(tmp_path, capsys, chain):
    base, top = chain
    missing = str(tmp_path / 'missing.qcow2')
    before = {path: os.stat(path).st_mtime_ns for path in chain}
    result = run_module(capsys, path=[top, missing, base])
    assert result['changed'] is False
    images = result['images']
    assert [image['exists'] for image in images] == [True, False, True]
    assert images[1] == {'filename': missing, 'exists': False}
    expected = json.loads(qemu_img('info', '--output=json', top))
    for key in ('format', 'virtual-size', 'backing-filename', 'backing-filename-format', 'cluster-size'):
        assert images[0][key] == expected[key]
    assert images[2]['format'] == 'raw'
    assert before == {path: os.stat(path).st_mtime_ns for path in chain}


def test_a_single_path_string_and_backing_chain(capsys, chain):
    base, top = chain
    images = run_module(capsys, path=top, backing_chain=True)['images']
    assert len(images) == 1
    assert [layer['format'] for layer in images[0]['backing-chain']] == ['qcow2', 'raw']


def test_check_results_and_a_note_for_formats_without_check(capsys, chain):
    base, top = chain
    images = run_module(capsys, path=[top, base], check=True)['images']
    assert images[0]['check']['check-errors'] == 0
    assert 'check' not in images[1] and images[1]['check_note']


def test_backing_outside_the_policy_is_an_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    base = str(tmp_path / 'a' / 'base.qcow2')
    top = str(tmp_path / 'b' / 'top.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', base, '1M')
    qemu_img('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top)
    result = run_module(capsys, path=top, backing_chain=True)
    assert result.get('failed') and 'exception' not in result, result
    result = run_module(capsys, path=top, backing_chain=True, allow_dirs=[str(tmp_path / 'a')])
    assert len(result['images'][0]['backing-chain']) == 2


def test_map_measure_and_snapshots_as_qemu_img_reports_them(capsys, chain):
    base, top = chain
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 64k 128k', '-c', 'write -z 512k 64k', top],
                   check=True, stdout=subprocess.PIPE)
    qemu_img('snapshot', '-c', 'first', top)
    before = os.stat(top).st_mtime_ns
    measure = {'out_format': 'qcow2', 'options': {'cluster_size': '128K'}}
    images = run_module(capsys, path=[top, base], map=True, measure=measure)['images']
    for image, path in zip(images, (top, base)):
        assert image['map'] == json.loads(qemu_img('map', '--output=json', path))
        assert image['measure'] == json.loads(qemu_img('measure', '--output=json', '-O', 'qcow2',
                                                       '-o', 'cluster_size=131072', path))
    assert images[0]['snapshots'] == json.loads(qemu_img('info', '--output=json', top))['snapshots']
    assert [snapshot['name'] for snapshot in images[0]['snapshots']] == ['first']
    assert 'snapshots' not in images[1]
    raw_measure = run_module(capsys, path=top, measure={'out_format': 'raw'})['images'][0]['measure']
    assert raw_measure == json.loads(qemu_img('measure', '--output=json', '-O', 'raw', top))
    assert os.stat(top).st_mtime_ns == before


def test_measure_of_an_unsupported_format_is_an_error(capsys, chain):
    base, top = chain
    result = run_module(capsys, path=top, measure={'out_format': 'vmdk'})
    assert result.get('failed') and 'vmdk' in result['msg'] and 'exception' not in result


def test_one_rule_per_path_missing_is_no_error_unreadable_fails_with_every_entry(tmp_path, capsys, chain):
    base, top = chain
    missing = str(tmp_path / 'missing.qcow2')
    directory = str(tmp_path / 'a-directory')
    os.mkdir(directory)
    result = run_module(capsys, path=[top, directory, missing, base])
    # The directory fails the task, but every path is still described, each on its own.
    assert result['failed'] and directory in result['msg'] and 'exception' not in result, result
    images = result['images']
    assert [image['filename'] for image in images] == [top, directory, missing, base]
    assert [image['exists'] for image in images] == [True, True, False, True]
    assert 'is a directory' in images[1]['error'] and 'format' not in images[1]
    assert images[2] == {'filename': missing, 'exists': False}
    assert images[0]['format'] == 'qcow2' and images[3]['format'] == 'raw'
    assert not any('error' in image for image in (images[0], images[2], images[3]))


# --------------------------------------------------------------------------- compare (qemu-img compare)
def qemu_img_compare(*args):
    """qemu-img compare's exit status and its message ("Images are identical." or "Content mismatch at offset N!")."""
    proc = subprocess.run(('qemu-img', 'compare') + args, check=False, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    return proc.returncode, proc.stdout.strip()


def test_compare_a_flattened_copy_with_its_overlay(tmp_path, capsys, chain):
    base, top = chain
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 192k 4k', top], check=True, stdout=subprocess.PIPE)
    flat = str(tmp_path / 'flat.qcow2')
    qemu_img('convert', '-f', 'qcow2', '-O', 'qcow2', top, flat)
    assert qemu_img_compare(flat, top) == (0, 'Images are identical.')
    before = {path: os.stat(path).st_mtime_ns for path in (base, top, flat)}
    result = run_module(capsys, path=flat, compare={'path': top})
    assert result['images'][0]['compare'] == {'path': top, 'identical': True, 'first_difference': None}
    assert before == {path: os.stat(path).st_mtime_ns for path in (base, top, flat)}


def test_compare_reports_the_offset_qemu_img_reports(tmp_path, capsys, chain):
    base, top = chain
    other = str(tmp_path / 'other.raw')
    qemu_img('create', '-q', '-f', 'raw', other, '1M')
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x01 300k 1k', top], check=True, stdout=subprocess.PIPE)
    status, message = qemu_img_compare(top, other)
    assert status == 1 and message == 'Content mismatch at offset 307200!'
    result = run_module(capsys, path=top, compare={'path': other, 'format': 'raw'})
    assert result['images'][0]['compare'] == {'path': other, 'identical': False, 'first_difference': 307200}


def test_compare_strict_sizes(tmp_path, capsys):
    small = str(tmp_path / 'small.raw')
    large = str(tmp_path / 'large.raw')
    qemu_img('create', '-q', '-f', 'raw', small, '1M')
    qemu_img('create', '-q', '-f', 'raw', large, '2M')
    assert qemu_img_compare(small, large)[0] == 0
    assert qemu_img_compare('-s', small, large)[0] == 1
    lenient = run_module(capsys, path=small, compare={'path': large})
    assert lenient['images'][0]['compare']['identical'] is True
    strict = run_module(capsys, path=small, compare={'path': large, 'strict': True})
    assert strict['images'][0]['compare'] == {'path': large, 'identical': False, 'first_difference': MIB}


def test_compare_with_a_missing_image_is_that_image_s_error(tmp_path, capsys, chain):
    base, top = chain
    missing = str(tmp_path / 'missing.qcow2')
    result = run_module(capsys, path=top, compare={'path': missing})
    assert result['failed'] is True
    assert 'compare' not in result['images'][0]
    assert missing in result['images'][0]['error'] and 'Traceback' not in result['msg']
