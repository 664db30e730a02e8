# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image as a new user meets it: what a task validates before it changes anything, what it reports when a
step fails after others succeeded, and the words of its actions, diffs and messages (issue #10)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import json
import os
import subprocess

import pytest

import module_runner
from qemu_tools import qemu_img

from ansible_collections.kvm.storage.plugins.module_utils import _disk_image
from ansible_collections.kvm.storage.plugins.module_utils._disk_image import DiskImageError, DiskImageRequest
from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
from ansible_collections.kvm.storage.plugins.modules import disk_image

MIB = 1 << 20


def qemu_info(path):
    return json.loads(qemu_img('info', '--output=json', str(path)))


def make_image(path, fmt, size, *extra):
    qemu_img('create', '-q', '-f', fmt, *(extra + (str(path), str(size))))
    return str(path)


def run_module(capsys, check_mode=False, **args):
    return module_runner.run_module(disk_image, capsys, check_mode, **args)


warnings_of = module_runner.warnings_of


# --------------------------------------------------------------------------- relative sizes
@pytest.mark.parametrize('fmt', ['raw', 'qcow2'])
def test_relative_size_grows_by_the_amount_like_qemu_img_resize(tmp_path, capsys, fmt):
    path = make_image(tmp_path / ('a.' + fmt), fmt, '5M')
    predicted = run_module(capsys, check_mode=True, path=path, format=fmt, size='+10M')
    assert predicted['changed'] and predicted['diff']['after']['virtual_size'] == 15 * MIB
    assert qemu_info(path)['virtual-size'] == 5 * MIB
    result = run_module(capsys, path=path, format=fmt, size='+10M')
    assert result['actions'] == predicted['actions'] == [
        'grow %s image %s from %d to %d bytes (size +10M)' % (fmt, path, 5 * MIB, 15 * MIB)]
    assert qemu_info(path)['virtual-size'] == 15 * MIB
    # Relative to the size the image has now: every run changes it, as qemu-img resize +10M does.
    assert run_module(capsys, path=path, format=fmt, size='+1M')['changed']
    assert qemu_info(path)['virtual-size'] == 16 * MIB


def test_relative_shrink_needs_shrink_and_rounds_like_qemu_img(tmp_path, capsys):
    path = make_image(tmp_path / 'a.raw', 'raw', '4M')
    refused = run_module(capsys, path=path, format='raw', size='-1M')
    assert refused['failed'] and 'shrink=true' in refused['msg'] and not refused.get('changed')
    assert qemu_info(path)['virtual-size'] == 4 * MIB
    result = run_module(capsys, path=path, format='raw', size='-1M', shrink=True)
    assert result['changed'] and qemu_info(path)['virtual-size'] == 3 * MIB
    # Less than a sector: qemu-img rounds the result up to whole sectors, which is the size the image has.
    assert not run_module(capsys, path=path, format='raw', size='-1', shrink=True)['changed']
    past_zero = run_module(capsys, path=path, format='raw', size='-3M', shrink=True)
    assert past_zero['failed'] and 'must be positive' in past_zero['msg']


@pytest.mark.parametrize('extra', [{}, {'src': 'SRC'}])
def test_relative_size_cannot_create_an_image(tmp_path, capsys, extra):
    src = make_image(tmp_path / 'src.raw', 'raw', MIB)
    args = dict(path=str(tmp_path / 'new.qcow2'), format='qcow2', size='+1G')
    args.update(dict((name, src) for name in extra))
    for check_mode in (True, False):
        result = run_module(capsys, check_mode=check_mode, **args)
        assert result['failed'] and 'relative' in result['msg'] and '+1G' in result['msg'], result
    assert not os.path.exists(args['path'])


def test_relative_size_is_refused_where_the_image_is_recreated(tmp_path):
    path = make_image(tmp_path / 'a.raw', 'raw', MIB)
    request = DiskImageRequest(path, fmt='qcow2', size='+1M', force=True)
    with pytest.raises(DiskImageError, match=r'\+1M is a relative size.*recreated'):
        _disk_image.plan_disk_image(request, *_disk_image.read_state(request))


# --------------------------------------------------------------------------- file attributes first
@pytest.mark.parametrize('attribute, value, message', [
    ('mode', 'u=banana', 'mode'),
    ('mode', '0999', 'mode'),
    ('mode', 0o17777, 'mode'),
    ('owner', 'kvmstorage-no-such-user', 'no user named'),
    ('group', 'kvmstorage-no-such-group', 'no group named'),
])
@pytest.mark.parametrize('existing', [False, True])
def test_bad_file_attributes_fail_before_the_image_is_touched(tmp_path, capsys, attribute, value, message, existing):
    path = str(tmp_path / 'a.qcow2')
    if existing:
        make_image(path, 'qcow2', MIB)
    args = dict(path=path, format='qcow2', size='2M')
    args[attribute] = value
    result = run_module(capsys, **args)
    assert result['failed'] and message in result['msg'] and not result.get('changed'), result
    if existing:
        assert qemu_info(path)['virtual-size'] == MIB
    else:
        assert not os.path.exists(path)


def test_unknown_owner_is_a_warning_in_check_mode(tmp_path, capsys):
    # As ansible.builtin.file: the user may come from an earlier task that check mode did not run.
    result = run_module(capsys, check_mode=True, path=str(tmp_path / 'a.raw'), format='raw', size=MIB,
                        owner='kvmstorage-no-such-user')
    assert 'failed' not in result and result['changed']
    assert any('kvmstorage-no-such-user' in warning for warning in warnings_of(result))


def test_unquoted_octal_mode_is_warned_about(tmp_path, capsys):
    path = str(tmp_path / 'a.raw')
    # YAML reads an unquoted 711 as the decimal number 711, which is 0o1307.
    result = run_module(capsys, path=path, format='raw', size=MIB, mode=711)
    assert result['changed']
    warning = [text for text in warnings_of(result) if text.startswith('mode')]
    assert warning and '711' in warning[0] and '01307' in warning[0] and "'0711'" in warning[0]
    assert os.stat(path).st_mode & 0o7777 == 0o1307
    quiet = run_module(capsys, path=path, format='raw', size=MIB, mode='0644')
    assert not [text for text in warnings_of(quiet) if text.startswith('mode')]


# --------------------------------------------------------------------------- words of actions, diffs and messages
def test_amend_actions_spell_values_as_qemu_img(tmp_path, capsys):
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB, '-o', 'lazy_refcounts=off')
    result = run_module(capsys, path=path, format='qcow2', options={'lazy_refcounts': True})
    assert result['actions'] == ['amend options of qcow2 image %s: lazy_refcounts off -> on' % path]
    assert 'True' not in result['actions'][0]


def test_forced_recreate_diff_compares_the_same_view(tmp_path, capsys):
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB, '-o', 'cluster_size=65536')
    args = dict(path=path, format='qcow2', size='1M', options={'cluster_size': '128K'}, force=True)
    predicted = run_module(capsys, check_mode=True, **args)
    result = run_module(capsys, **args)
    before, after = result['diff']['before']['options'], result['diff']['after']['options']
    # Only what changes differs: the defaults the new image gets are shown, not removed.
    assert sorted(before) == sorted(after)
    assert dict((name, value) for name, value in after.items() if before[name] != value) == {'cluster_size': 131072}
    assert predicted['diff'] == result['diff']
    args['force'] = False
    assert run_module(capsys, check_mode=True, **args)['diff']['after']['options'] == after


def test_lock_error_suggests_what_disk_image_can_do(tmp_path, capsys):
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB)
    with ImageFile(path, writable=True):
        result = run_module(capsys, path=path, format='qcow2', size='2M')
    assert result['failed'] and 'in use by another process' in result['msg']
    # disk_image has no force_share: the message says what the user of this module can do.
    assert 'force_share allows' not in result['msg'] and 'shut the guest down' in result['msg']
    assert qemu_info(path)['virtual-size'] == MIB


# --------------------------------------------------------------------------- a step fails after others succeeded
def deny_chown(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, 'Operation not permitted')
    monkeypatch.setattr(os, 'lchown', refuse)
    monkeypatch.setattr(os, 'chown', refuse)


def test_create_then_chown_failure_leaves_no_image(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / 'a.qcow2')
    deny_chown(monkeypatch)
    result = run_module(capsys, path=path, format='qcow2', size=MIB, owner='nobody')
    assert result['failed'] and 'chown' in result['msg'] and not result.get('changed'), result
    assert not os.path.exists(path)


def test_recreate_then_chown_failure_reports_the_conversion(tmp_path, capsys, monkeypatch):
    src = make_image(tmp_path / 'src.raw', 'raw', 2 * MIB)
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB)
    deny_chown(monkeypatch)
    result = run_module(capsys, path=path, format='raw', src=src, force=True, owner='nobody')
    assert result['failed'] and 'chown' in result['msg'] and result['changed'], result
    assert result['actions'] == ['convert %s (raw) to raw image %s, replacing the existing qcow2 image' % (src, path)]
    assert qemu_info(path)['format'] == 'raw'


def test_resize_then_snapshot_failure_reports_the_resize(tmp_path, capsys, monkeypatch):
    path = make_image(tmp_path / 'a.qcow2', 'qcow2', MIB)

    def fail(*args, **kwargs):
        raise _disk_image.ImageError('simulated failure', path)

    monkeypatch.setattr(_disk_image, 'snapshot_create', fail)
    result = run_module(capsys, path=path, format='qcow2', size='2M', snapshots=[{'name': 'one'}])
    assert result['failed'] and 'simulated failure' in result['msg'] and result['changed'], result
    assert result['actions'] == ['grow qcow2 image %s from %d to %d bytes' % (path, MIB, 2 * MIB)]
    assert 'create snapshot' in result['msg']
    assert qemu_info(path)['virtual-size'] == 2 * MIB


def test_convert_then_resize_failure_removes_the_new_image(tmp_path, capsys, monkeypatch):
    src = make_image(tmp_path / 'src.raw', 'raw', MIB)
    path = str(tmp_path / 'a.qcow2')

    def fail(*args, **kwargs):
        raise _disk_image.ImageError('simulated failure', path)

    monkeypatch.setattr(_disk_image, 'image_resize', fail)
    result = run_module(capsys, path=path, format='qcow2', src=src, size='2M')
    assert result['failed'] and 'simulated failure' in result['msg'] and not result.get('changed'), result
    assert not os.path.exists(path)


def test_library_lock_error_keeps_its_advice_for_library_callers(tmp_path):
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import ImageInUseError
    path = make_image(tmp_path / 'a.raw', 'raw', MIB)
    with ImageFile(path, writable=True):
        with pytest.raises(ImageInUseError) as caught:
            ImageFile(path)
    assert str(caught.value).endswith('; force_share allows a read-only look') and caught.value.read_only_look
    assert 'force_share' not in caught.value.reason and caught.value.reason.startswith('%s is in use' % path)


# --------------------------------------------------------------------------- the repair example, as written
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


@pytest.mark.parametrize('check_mode', [True, False])
def test_repair_example_and_its_debug_run_in_check_mode_and_for_real(tmp_path, check_mode):
    """The EXAMPLES' repair and the debug task after it, run by ansible-playbook as written (path replaced)."""
    import shutil
    import sys
    import yaml
    playbook_bin = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
    if not os.path.exists(playbook_bin):
        playbook_bin = shutil.which('ansible-playbook')
    tasks = yaml.safe_load(disk_image.EXAMPLES)
    names = [task['name'] for task in tasks]
    start = names.index('Free leaked clusters')
    example = tasks[start:start + 2]
    assert example[1]['name'].startswith('Show what the repair found')
    path = make_image(tmp_path / 'base.qcow2', 'qcow2', MIB)
    example[0]['kvm.storage.disk_image']['path'] = path
    (tmp_path / 'collections' / 'ansible_collections' / 'kvm').mkdir(parents=True)
    os.symlink(ROOT, str(tmp_path / 'collections' / 'ansible_collections' / 'kvm' / 'storage'))
    with open(str(tmp_path / 'play.yml'), 'w') as play:
        yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False,
                         'vars': {'ansible_python_interpreter': sys.executable}, 'tasks': example}], play)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / 'collections'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'), ANSIBLE_HOME=str(tmp_path / 'home'))
    proc = subprocess.run([playbook_bin, '-c', 'local', '-i', 'localhost,', str(tmp_path / 'play.yml')]
                          + (['--check'] if check_mode else []), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode == 0 and 'failed=0' in proc.stdout, proc.stdout
    assert '<< error' not in proc.stdout and 'has no attribute' not in proc.stdout, proc.stdout


def test_volume_api_pools_refuse_a_relative_size_instead_of_dropping_its_sign():
    from ansible_collections.kvm.storage.plugins.module_utils._pool_volume import VolumeRequest
    params = dict(pool='lvm', volume='vm1-root', state='present', format='raw', size='+10G')
    with pytest.raises(_disk_image.ImageError, match=r"'\+10G'.*relative"):
        VolumeRequest(params, 'logical')
    assert VolumeRequest(dict(params, size='10G'), 'logical').size == 10 << 30


# --------------------------------------------------------------------------- constraints declared with the spec
@pytest.mark.parametrize('args, message', [
    (dict(format='qcow2', size='1M', src_format='raw'), "missing parameter(s) required by 'src_format': src"),
    (dict(format='qcow2', size='1M', src_member=0), "missing parameter(s) required by 'src_member': src"),
    (dict(format='qcow2', size='1M', src_snapshot='s'), "missing parameter(s) required by 'src_snapshot': src"),
    (dict(format='qcow2', size='1M', src_passphrase='Zx9-never-in-a-message'), "missing parameter(s) required by 'src_passphrase': src"),
    (dict(format='qcow2', size='1M', backing_format='raw'), "missing parameter(s) required by 'backing_format': backing_file"),
    (dict(format='qcow2', size='1M', rebase='safe'), "missing parameter(s) required by 'rebase': backing_file"),
    (dict(format='qcow2', size='1M', compress=True), 'compress is True but all of the following are missing: src'),
    (dict(format='qcow2', src='/nonexistent.raw', rebase='safe', backing_file='b'), 'parameters are mutually exclusive: rebase|src'),
    (dict(format='qcow2', src='/nonexistent.raw', revert_to='s'), 'parameters are mutually exclusive: revert_to|src'),
    # Declared with the spec, the constraints hold whatever the state.
    (dict(state='absent', src_format='raw'), "missing parameter(s) required by 'src_format': src"),
])
def test_option_constraints_are_checked_by_ansible_before_anything_is_done(tmp_path, capsys, args, message):
    path = tmp_path / 'a.qcow2'
    result = run_module(capsys, path=str(path), **args)
    assert result['failed'] and result['msg'] == message and not path.exists()
    assert 'changed' not in result or not result['changed']


@pytest.mark.parametrize('params, message', [
    (dict(src_format='raw'), "missing parameter(s) required by 'src_format': src"),
    (dict(format='qcow2', src='/s.raw', rebase='safe', backing_file='b'), 'parameters are mutually exclusive: rebase|src'),
    (dict(format='qcow2', compress=True), 'compress is True but all of the following are missing: src'),
])
def test_requests_built_without_ansible_check_the_same_declarations(params, message):
    fmt = params.pop('format', 'qcow2')
    with pytest.raises(DiskImageError) as caught:
        DiskImageRequest('/x.qcow2', fmt=fmt, **params)
    assert str(caught.value) == message


def test_commit_false_goes_with_src_unlike_a_declared_mutual_exclusion():
    # commit is a bool: only commit=true is refused with src (mutually_exclusive would count commit=false too).
    assert DiskImageRequest('/x.qcow2', fmt='qcow2', src='/s.raw', commit=False).src == '/s.raw'
    with pytest.raises(DiskImageError, match='commit applies to an existing overlay: it cannot be combined with src'):
        DiskImageRequest('/x.qcow2', fmt='qcow2', src='/s.raw', commit=True)
