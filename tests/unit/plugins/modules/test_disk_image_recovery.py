# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image when the image or the host does not cooperate: a grow out of space, damage a
repair cannot fix, a file that looks like an image of a version it cannot read."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import os
import subprocess

import pytest

import module_runner
from qemu_tools import qemu_img

from ansible_collections.kvm.storage.plugins.module_utils import _disk_image
from ansible_collections.kvm.storage.plugins.modules import disk_image

MIB = 1 << 20


def qemu_check(path):
    proc = subprocess.run(['qemu-img', 'check', '--output=json', str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}


def digest(path):
    with open(str(path), 'rb') as image:
        return hashlib.sha256(image.read()).hexdigest()


def run_module(capsys, check_mode=False, **args):
    return module_runner.run_module(disk_image, capsys, check_mode, **args)


@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
@pytest.mark.parametrize('preallocation', ['falloc', 'full'])
@pytest.mark.parametrize('space_known', [True, False], ids=['free-space-known', 'free-space-unknown'])
def test_grow_out_of_space_fails_in_words_and_leaves_the_image(small_fs, capsys, monkeypatch, fmt, preallocation,
                                                               space_known):
    path = small_fs / ('disk.' + fmt)
    qemu_img('create', '-q', '-f', fmt, path, '2M')
    before = digest(path)
    if not space_known:
        # the planner cannot tell: the grow runs out of space half-way and is taken back
        monkeypatch.setattr(_disk_image, 'free_space', lambda path: None)
    for check_mode in (True, False) if space_known else (False,):
        # known before anything is written: check mode predicts the refusal
        result = run_module(capsys, check_mode=check_mode, path=str(path), format=fmt, size='64M',
                            preallocation=preallocation)
        assert result.get('failed'), result
        assert 'no space left on' in result['msg'] and str(path) in result['msg'], result['msg']
        assert 'Errno' not in result['msg'] and 'exception' not in result
        assert result.get('changed', False) is False
    assert os.path.getsize(str(path)) == 2 * MIB or fmt == 'qcow2'
    assert digest(path) == before
    if fmt == 'qcow2':
        assert qemu_check(path)[0] == 0
    # the same task with a size that fits then works, and a second run changes nothing
    runs = [run_module(capsys, path=str(path), format=fmt, size='3M', preallocation=preallocation) for dummy in (1, 2)]
    assert [run.get('failed', False) for run in runs] == [False, False], runs
    assert [run['changed'] for run in runs] == [True, False]


def damage_beyond_repair(path):
    """A qcow2 image whose first L1 entry points far past the end of the file (an L2 table
    that does not exist): qemu-img check -r all fixes the leaks around it, not the entry."""
    qemu_img('create', '-q', '-f', 'qcow2', path, '4M')
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 300k', '-c', 'write -P 0x22 1M 64k', str(path)],
                   check=True, stdout=subprocess.PIPE)
    with open(str(path), 'r+b') as image:
        image.seek(40)      # l1_table_offset (qcow2 header)
        l1_table_offset = int.from_bytes(image.read(8), 'big')
        image.seek(l1_table_offset)
        image.write(((1 << 63) | (1 << 40)).to_bytes(8, 'big'))


def test_repair_that_leaves_corruption_fails_and_says_what_it_fixed(tmp_path, capsys):
    path = tmp_path / 'damaged.qcow2'
    damage_beyond_repair(path)
    twin = tmp_path / 'twin.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', twin, '1M')
    with open(str(path), 'rb') as source, open(str(twin), 'wb') as copy:
        copy.write(source.read())
    assert subprocess.run(['qemu-img', 'check', '-r', 'all', str(twin)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False).returncode == 2

    first = run_module(capsys, path=str(path), format='qcow2', repair='all')
    assert first.get('failed'), first
    assert first['changed'] is True and 'exception' not in first
    assert 'remain' in first['msg'] and '1 corruption' in first['msg'], first['msg']
    assert first['repair']['corruptions'] == 1 and first['repair']['leaks-fixed'] == 7, first['repair']
    assert first['actions'] and 'repair' in first['actions'][0]
    # the result agrees with qemu-img check: the corruption is still there
    code, found = qemu_check(path)
    assert code == 2 and found['corruptions'] == 1
    assert first['repair']['corruptions'] == found['corruptions']

    second = run_module(capsys, path=str(path), format='qcow2', repair='all')
    assert second.get('failed'), second
    assert second.get('changed', False) is False
    assert 'remain' in second['msg']


@pytest.mark.parametrize('version', [4, 7])
def test_qcow2_of_an_unsupported_version_is_named_never_raw_never_force(tmp_path, capsys, version):
    path = tmp_path / 'future.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', path, '1M')
    with open(str(path), 'r+b') as image:
        image.seek(4)
        image.write(version.to_bytes(4, 'big'))
    before = digest(path)
    for check_mode in (True, False):
        result = run_module(capsys, check_mode=check_mode, path=str(path), format='qcow2', size='1M')
        assert result.get('failed'), result
        assert 'unsupported qcow2 version %d' % version in result['msg'], result['msg']
        assert 'force' not in result['msg'] and "format is 'raw'" not in result['msg'] and 'exception' not in result
    assert digest(path) == before
