# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image and disk_image_info: the paths a task names are the operator's word (trusted for that task);
absolute names in an image's own directory are accepted like relative ones; nothing else is."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess

import pytest

import module_runner
from qemu_tools import qemu_img

from ansible_collections.kvm.storage.plugins.modules import disk_image, disk_image_info

MIB = 1 << 20


def qemu_info(path):
    return json.loads(qemu_img('info', '--output=json', path))


def run(module, capsys, **args):
    return module_runner.run_module(module, capsys, **args)


@pytest.fixture
def dirs(tmp_path):
    """templates/debian-12-base.qcow2 (with data), images/ (the guests' directory, with its own base copy)."""
    templates = tmp_path / 'templates'
    images = tmp_path / 'images'
    templates.mkdir()
    images.mkdir()
    base = str(templates / 'debian-12-base.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', base, '2M')
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 64k', base], check=True, stdout=subprocess.PIPE)
    local_base = str(images / 'debian-12-base.qcow2')
    qemu_img('convert', '-O', 'qcow2', base, local_base)
    return dict(templates=templates, images=images, base=base, local_base=local_base)


@pytest.mark.parametrize('where', ['other-directory', 'same-directory', 'dotdot'])
def test_tutorial_overlay_with_an_absolute_backing_file_and_its_second_run(capsys, dirs, where):
    backing = {'other-directory': dirs['base'], 'same-directory': dirs['local_base'],
               'dotdot': '../templates/debian-12-base.qcow2'}[where]
    path = str(dirs['images'] / 'web01.qcow2')
    task = dict(path=path, format='qcow2', backing_file=backing)
    checked = run(disk_image, capsys, _ansible_check_mode=True, **task)
    assert checked['changed'] and not checked.get('failed'), checked
    first = run(disk_image, capsys, **task)
    assert first['changed'] and not first.get('failed'), first
    assert first['image']['backing-filename'] == backing
    assert qemu_info(path)['backing-filename'] == backing
    qemu_img('check', path)
    # Later runs of the same task re-read the overlay (its chain included) and change nothing.
    for check_mode in (True, False):
        again = run(disk_image, capsys, _ansible_check_mode=check_mode, **task)
        assert not again.get('failed') and again['changed'] is False, again
        assert again['image']['backing-filename'] == backing
    # A later task of the same kind that opens the whole chain (grow) works too.
    grown = run(disk_image, capsys, size='4M', **task)
    assert grown['changed'] and not grown.get('failed'), grown
    assert qemu_info(path)['virtual-size'] == 4 * MIB


def test_info_on_a_same_directory_chain_with_default_options(capsys, dirs):
    path = str(dirs['images'] / 'web01.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', '-b', dirs['local_base'], '-F', 'qcow2', path)
    result = run(disk_image_info, capsys, path=path, backing_chain=True, check=True, map=True)
    assert not result.get('failed'), result
    chain = result['images'][0]['backing-chain']
    assert [layer['filename'] for layer in chain] == [path, dirs['local_base']]


def test_info_trusts_the_files_the_task_lists_and_nothing_else(capsys, dirs):
    path = str(dirs['images'] / 'web01.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', '-b', dirs['base'], '-F', 'qcow2', path)
    refused = run(disk_image_info, capsys, path=path, backing_chain=True)
    assert refused.get('failed') and 'exception' not in refused and 'absolute' in refused['msg'], refused
    listed = run(disk_image_info, capsys, path=[path, dirs['base']], backing_chain=True)
    assert not listed.get('failed'), listed
    assert [layer['filename'] for layer in listed['images'][0]['backing-chain']] == [path, dirs['base']]


def test_an_image_naming_a_file_the_task_does_not_name_is_still_refused(capsys, dirs, tmp_path):
    """The task names web01.qcow2 and another backing file: the image's own backing name is not trusted."""
    secret = tmp_path / 'secret.raw'
    secret.write_bytes(b'not for guests' * 100)
    path = str(dirs['images'] / 'web01.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', '-u', '-b', str(secret), '-F', 'raw', path, '1M')
    before = os.stat(path).st_mtime_ns
    result = run(disk_image, capsys, path=path, format='qcow2', size='2M')
    assert result.get('failed') and 'exception' not in result, result
    assert str(secret) in result['msg']
    result = run(disk_image, capsys, path=path, format='qcow2', backing_file=dirs['base'], rebase='safe')
    assert result.get('failed') and str(secret) in result['msg'], result
    assert os.stat(path).st_mtime_ns == before


@pytest.mark.parametrize('task', [
    dict(size='2M'),                                   # resize opens the chain
    dict(snapshots=[{'name': 's1'}]),                  # so does an internal snapshot
    dict(backing_file='', rebase='safe'),              # and a safe rebase (it reads the old chain)
])
def test_check_mode_predicts_the_refusal_of_an_images_own_backing_name(capsys, dirs, tmp_path, task):
    secret = tmp_path / 'secret.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', secret, '1M')
    path = str(dirs['images'] / 'web01.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', '-b', secret, '-F', 'qcow2', path)
    before = os.stat(path).st_mtime_ns
    results = [run(disk_image, capsys, _ansible_check_mode=check_mode, path=path, format='qcow2', **task)
               for check_mode in (True, False)]
    for result in results:
        assert result.get('failed') and str(secret) in result['msg'] and 'exception' not in result, result
    assert results[0]['msg'] == results[1]['msg']
    assert os.stat(path).st_mtime_ns == before


def test_check_mode_predicts_the_refusal_of_a_sources_backing_name(capsys, dirs, tmp_path):
    secret = tmp_path / 'secret.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', secret, '1M')
    src = str(dirs['images'] / 'src.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', '-b', secret, '-F', 'qcow2', src)
    path = str(dirs['images'] / 'flat.qcow2')
    results = [run(disk_image, capsys, _ansible_check_mode=check_mode, path=path, format='qcow2', src=src)
               for check_mode in (True, False)]
    for result in results:
        assert result.get('failed') and str(secret) in result['msg'] and 'exception' not in result, result
    assert not os.path.exists(path)
