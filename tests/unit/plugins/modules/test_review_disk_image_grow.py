# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image steps that fail half-way and cannot be taken back: a grow whose undo fails (every file of the image is
still put back where it can be), a multi-file replacement that fails after moving extent files into place, a removal
or replacement that leaves extent files.  The task names what stays and says the image changed (never changed=false)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os

import pytest

import module_runner
from qemu_tools import qemu_img

from ansible_collections.kvm.storage.plugins.module_utils import _disk_image
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import _io
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageError, NoSpaceError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.ops import resize as resize_module
from ansible_collections.kvm.storage.plugins.modules import disk_image

MIB = 1 << 20


class FakeFile(object):
    def __init__(self, name, fails):
        self.name = name
        self.fails = fails
        self.calls = []

    def start_undo(self):
        self.calls.append('start')

    def undo(self):
        self.calls.append('undo')
        if self.fails:
            raise OSError(errno.EIO, 'Input/output error')

    def stop_undo(self):
        self.calls.append('stop')


class FakeDriver(object):
    path = '/images/a.qcow2'

    def __init__(self, files):
        self.files = files

    def host_files(self):
        return self.files

    def resize(self, new_size, preallocation=None):
        raise NoSpaceError('cannot write: no space left', self.path)


def test_every_file_is_put_back_even_when_putting_back_another_fails():
    files = [FakeFile('image', fails=True), FakeFile('data file', fails=False)]
    with pytest.raises(ImageError) as caught:
        resize_module._grow(FakeDriver(files), MIB, 2 * MIB, 'full')
    assert [item.calls for item in files] == [['start', 'undo', 'stop'], ['start', 'undo', 'stop']]
    assert 'putting the image back failed too' in str(caught.value) and 'Input/output error' in str(caught.value)
    assert getattr(caught.value, 'image_changed', False)


def test_a_grow_that_cannot_be_taken_back_is_reported_as_a_change(small_fs, capsys, monkeypatch):
    path = str(small_fs / 'disk.raw')
    qemu_img('create', '-q', '-f', 'raw', path, '2M')
    monkeypatch.setattr(_disk_image, 'free_space', lambda path: None)   # the grow runs out of space half-way

    def broken_undo(image_file):
        raise OSError(errno.EIO, 'Input/output error')

    monkeypatch.setattr(_io.ImageFile, 'undo', broken_undo)
    result = module_runner.run_module(disk_image, capsys, False, path=path, format='raw', size='64M', preallocation='full')
    assert result['failed'] and 'putting the image back failed too' in result['msg'], result
    grow = 'grow raw image %s from %d to %d bytes with preallocation=full' % (path, 2 * MIB, 64 * MIB)
    assert result['changed'] and result['actions'] == [grow + ' (failed half-way, not taken back)'], result


def test_a_multi_file_replacement_that_fails_after_moving_extents_says_what_it_left(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / 'a.vmdk')
    qemu_img('create', '-q', '-f', 'qcow2', path, '1M')
    real_rename = _disk_image.os.rename

    def rename(source, destination):
        if destination == path:   # the descriptor, moved last
            raise OSError(5, 'Input/output error')
        real_rename(source, destination)

    monkeypatch.setattr(_disk_image.os, 'rename', rename)
    result = module_runner.run_module(disk_image, capsys, False, path=path, format='vmdk', size='1M', force=True,
                                      options={'subformat': 'monolithicFlat'})
    extent = str(tmp_path / 'a-flat.vmdk')
    assert result['failed'] and 'Input/output error' in result['msg'], result
    assert os.path.exists(extent) and 'the files moved into place before the failure stay: %s' % extent in result['msg']
    assert result['changed'] and len(result['actions']) == 1
    assert result['actions'][0].endswith(' (failed half-way, not taken back)')
    assert [name for name in os.listdir(str(tmp_path)) if name.startswith('.')] == []   # no staging left


def test_a_removal_that_fails_after_the_descriptor_is_gone_reports_the_change(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / 'b.vmdk')
    qemu_img('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', path, '1M')
    extent = str(tmp_path / 'b-flat.vmdk')
    assert os.path.exists(extent)
    real_unlink = _disk_image.os.unlink

    def unlink(name, **kwargs):
        if name == extent:
            raise OSError(16, 'Device or resource busy')
        real_unlink(name, **kwargs)

    monkeypatch.setattr(_disk_image.os, 'unlink', unlink)
    result = module_runner.run_module(disk_image, capsys, False, path=path, state='absent')
    assert result['failed'] and 'Device or resource busy' in result['msg'], result
    assert not os.path.exists(path) and os.path.exists(extent)
    assert result['changed'] and result['actions'][0].startswith('remove vmdk image %s' % path)
    assert extent in result['msg']


def test_a_replacement_whose_old_extents_cannot_be_removed_reports_the_change(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / 'c.vmdk')
    qemu_img('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', path, '1M')
    extent = str(tmp_path / 'c-flat.vmdk')
    real_unlink = _disk_image.os.unlink

    def unlink(name, **kwargs):
        if name == extent:
            raise OSError(16, 'Device or resource busy')
        real_unlink(name, **kwargs)

    monkeypatch.setattr(_disk_image.os, 'unlink', unlink)
    result = module_runner.run_module(disk_image, capsys, False, path=path, format='raw', size='1M', force=True)
    assert result['failed'] and 'Device or resource busy' in result['msg'] and extent in result['msg'], result
    assert result['changed'] and len(result['actions']) == 1
    assert os.path.exists(extent)
