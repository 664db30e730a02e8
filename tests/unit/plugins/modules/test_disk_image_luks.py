# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image and disk_image_info with encrypted (LUKS) images: encryption_passphrase and src_passphrase.

qemu-img (with a secret object and --image-opts) is the oracle for what the module writes.  New images use a
short iter-time so that unlocking stays fast.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import shutil
import subprocess

import pytest
from qemu_tools import run

from ansible.module_utils.testing import patch_module_args

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import (
    DiskImageError,
    DiskImageRequest,
    apply_plan,
    plan_disk_image,
    read_state,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import UnsupportedFeature
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import luks as luks_format
from ansible_collections.kvm.storage.plugins.modules import disk_image, disk_image_info

MIB = 1 << 20
PASSPHRASE = 'correct horse battery staple'
FAST = {'iter-time': 10}


def luks_opts(path, passphrase=PASSPHRASE):
    """qemu-img arguments opening a LUKS image with its passphrase."""
    return ['--object', 'secret,id=sec0,data=%s' % passphrase, '--image-opts',
            'driver=luks,key-secret=sec0,file.filename=%s' % path]


def qemu_compare_plain_with_luks(plain, plain_fmt, encrypted, passphrase=PASSPHRASE):
    """Exit status of qemu-img compare between a plain image and a LUKS image (0: identical)."""
    return subprocess.run(['qemu-img', 'compare', '--object', 'secret,id=sec0,data=%s' % passphrase, '--image-opts',
                           'driver=%s,file.filename=%s' % (plain_fmt, plain),
                           'driver=luks,key-secret=sec0,file.filename=%s' % encrypted],
                          check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE).returncode


def plan_for(**params):
    request = DiskImageRequest(**params)
    return request, plan_disk_image(request, *read_state(request))


def converge(**params):
    """Apply the plan, then plan again: returns (first plan, second plan)."""
    request, plan = plan_for(**params)
    apply_plan(plan, request)
    return plan, plan_for(**params)[1]


def digest(path):
    with open(str(path), 'rb') as image:
        return hashlib.sha256(image.read()).hexdigest()


@pytest.fixture(scope='module')
def made_by_qemu(tmp_path_factory):
    """A 4 MiB qcow2 image with data at two places (written by qemu-io) and a LUKS image qemu-img converted
    from it, made once (qemu-img spends seconds calibrating PBKDF2); tests get copies."""
    directory = tmp_path_factory.mktemp('luks-templates')
    plain = directory / 'source.qcow2'
    run('qemu-img', 'create', '-f', 'qcow2', str(plain), '4M')
    run('qemu-io', '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0xa5 3M 512K', str(plain))
    encrypted_path = directory / 'made-by-qemu.luks'
    run('qemu-img', 'convert', '--object', 'secret,id=sec0,data=%s' % PASSPHRASE, '-O', 'luks',
        '-o', 'key-secret=sec0,iter-time=10', str(plain), str(encrypted_path))
    return plain, encrypted_path


@pytest.fixture
def source(tmp_path, made_by_qemu):
    path = tmp_path / 'source.qcow2'
    shutil.copyfile(str(made_by_qemu[0]), str(path))
    return path


@pytest.fixture
def encrypted(tmp_path, made_by_qemu):
    path = tmp_path / 'made-by-qemu.luks'
    shutil.copyfile(str(made_by_qemu[1]), str(path))
    return path


def test_create_luks_is_idempotent_and_qemu_img_unlocks_it(tmp_path):
    path = tmp_path / 'new.luks'
    first, second = converge(path=str(path), fmt='luks', size='4M', encryption_passphrase=PASSPHRASE,
                             options=dict(FAST, **{'cipher-alg': 'aes-256', 'cipher-mode': 'xts'}))
    assert [action.kind for action in first.actions] == ['create']
    assert second.actions == []
    info = json.loads(run('qemu-img', 'info', '--output=json', *luks_opts(path)))
    assert info['virtual-size'] == 4 * MIB
    # qemu-io with the passphrase can write and read back through the encryption.
    run('qemu-io', '--object', 'secret,id=sec0,data=%s' % PASSPHRASE, '--image-opts', '-c', 'write -P 0x11 0 64K',
        'driver=luks,key-secret=sec0,file.filename=%s' % path)
    out = run('qemu-io', '--object', 'secret,id=sec0,data=%s' % PASSPHRASE, '--image-opts',
              '-c', 'read -P 0x11 0 64K', 'driver=luks,key-secret=sec0,file.filename=%s' % path)
    assert 'Pattern verification failed' not in out


def test_convert_qcow2_to_luks_and_back(tmp_path, source):
    encrypted_path = tmp_path / 'converted.luks'
    first, second = converge(path=str(encrypted_path), fmt='luks', src=str(source), encryption_passphrase=PASSPHRASE,
                             options=FAST)
    assert [action.kind for action in first.actions] == ['convert']
    assert second.actions == []
    assert qemu_compare_plain_with_luks(source, 'qcow2', encrypted_path) == 0
    assert qemu_compare_plain_with_luks(source, 'qcow2', encrypted_path, passphrase='another') != 0

    plain_path = tmp_path / 'decrypted.qcow2'
    first, second = converge(path=str(plain_path), fmt='qcow2', src=str(encrypted_path), src_passphrase=PASSPHRASE)
    assert [action.kind for action in first.actions] == ['convert']
    assert second.actions == []
    run('qemu-img', 'compare', '-f', 'qcow2', '-F', 'qcow2', str(source), str(plain_path))


def test_luks_made_by_qemu_img_converts_to_luks_with_another_passphrase(tmp_path, source, encrypted):
    path = tmp_path / 'reencrypted.luks'
    converge(path=str(path), fmt='luks', src=str(encrypted), src_passphrase=PASSPHRASE,
             encryption_passphrase='second secret', options=FAST)
    assert qemu_compare_plain_with_luks(source, 'qcow2', path, passphrase='second secret') == 0


def test_existing_luks_without_passphrase_names_the_option(encrypted):
    with pytest.raises(DiskImageError, match='encryption_passphrase'):
        plan_for(path=str(encrypted), fmt='luks', size='4M')


def test_wrong_passphrase_fails_before_writing_anything(encrypted):
    before = digest(encrypted)
    with pytest.raises(DiskImageError, match='cannot unlock .* with encryption_passphrase') as caught:
        # A resize would be planned: the passphrase is checked first, in check mode too.
        plan_for(path=str(encrypted), fmt='luks', size='8M', encryption_passphrase='wrong one')
    assert 'wrong one' not in str(caught.value)
    assert digest(encrypted) == before


def test_encrypted_src_needs_src_passphrase_and_a_wrong_one_creates_nothing(tmp_path, source, encrypted):
    target = tmp_path / 'out.qcow2'
    with pytest.raises(DiskImageError, match='src_passphrase'):
        plan_for(path=str(target), fmt='qcow2', src=str(encrypted))
    with pytest.raises(DiskImageError, match='cannot unlock .* with src_passphrase'):
        plan_for(path=str(target), fmt='qcow2', src=str(encrypted), src_passphrase='nope')
    assert not target.exists()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ['made-by-qemu.luks', 'source.qcow2']


@pytest.mark.parametrize('params, message', [
    (dict(fmt='qcow2', size='1M', encryption_passphrase=PASSPHRASE), 'encryption_passphrase applies to luks'),
    (dict(fmt='luks', size='1M', encryption_passphrase=PASSPHRASE, options={'key-secret': 'x'}),
     'options.key-secret'),
    (dict(fmt='luks', size='1M', encryption_passphrase=''), 'must not be empty'),
    (dict(fmt='qcow2', size='1M', src_passphrase=PASSPHRASE), r"missing parameter\(s\) required by 'src_passphrase': src"),
])
def test_passphrase_requests_refused(tmp_path, params, message):
    with pytest.raises(DiskImageError, match=message):
        DiskImageRequest(path=str(tmp_path / 'x.img'), **params)


def test_removing_luks_needs_no_passphrase(encrypted):
    converge(path=str(encrypted), state='absent')
    assert not encrypted.exists()


def test_cipher_difference_is_reported_and_resize_keeps_content(tmp_path, source, encrypted):
    with pytest.raises(DiskImageError, match=r"options\.cipher-alg is 'aes-256', requested 'aes-128'"):
        plan_for(path=str(encrypted), fmt='luks', encryption_passphrase=PASSPHRASE, options={'cipher-alg': 'aes-128'})
    first, second = converge(path=str(encrypted), fmt='luks', size='6M', encryption_passphrase=PASSPHRASE)
    assert [action.kind for action in first.actions] == ['resize']
    assert second.actions == []
    info = json.loads(run('qemu-img', 'info', '--output=json', *luks_opts(encrypted)))
    assert info['virtual-size'] == 6 * MIB
    # The first 4 MiB are still the source's (qemu-img compare ignores the larger image's tail only when zero,
    # so compare the common part through a raw copy).
    raw = tmp_path / 'plain.raw'
    run('qemu-img', 'convert', '--object', 'secret,id=sec0,data=%s' % PASSPHRASE, '--image-opts',
        'driver=luks,key-secret=sec0,file.filename=%s' % encrypted, '-O', 'raw', str(raw))
    reference = tmp_path / 'reference.raw'
    run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', str(source), str(reference))
    with open(str(raw), 'rb') as got, open(str(reference), 'rb') as expected:
        assert got.read(4 * MIB) == expected.read()
        assert got.read() == bytes(2 * MIB)


def test_without_cryptography_the_library_error_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(luks_format, 'HAS_CRYPTOGRAPHY', False)
    with pytest.raises(UnsupportedFeature, match="'cryptography'"):
        converge(path=str(tmp_path / 'new.luks'), fmt='luks', size='1M', encryption_passphrase=PASSPHRASE,
                 options=FAST)
    assert list(tmp_path.iterdir()) == []


def run_module(module, capsys, **args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


def test_module_wrong_passphrase_is_a_clean_failure_without_the_secret(capsys, encrypted):
    result = run_module(disk_image, capsys, path=str(encrypted), format='luks', encryption_passphrase='hunter2-wrong')
    assert result['failed'] is True
    assert 'encryption_passphrase' in result['msg']
    assert 'hunter2-wrong' not in json.dumps(result)


def test_module_converts_to_luks_in_check_mode_then_for_real(capsys, tmp_path, source):
    target = tmp_path / 'module.luks'
    args = dict(path=str(target), format='luks', src=str(source), encryption_passphrase=PASSPHRASE,
                options=FAST, _ansible_diff=True)
    checked = run_module(disk_image, capsys, _ansible_check_mode=True, **args)
    assert checked['changed'] is True and not target.exists()
    done = run_module(disk_image, capsys, **args)
    assert done['changed'] is True and done['actions'] == checked['actions']
    assert done['image']['format'] == 'luks'
    assert PASSPHRASE not in json.dumps(done)
    again = run_module(disk_image, capsys, **args)
    assert again['changed'] is False
    assert qemu_compare_plain_with_luks(source, 'qcow2', target) == 0


def test_info_describes_luks_without_passphrase(capsys, encrypted):
    result = run_module(disk_image_info, capsys, path=str(encrypted), check=True, map=True)
    image = result['images'][0]
    expected = json.loads(run('qemu-img', 'info', '--output=json', '-f', 'luks', str(encrypted)))
    assert image['format'] == 'luks'
    assert image['virtual-size'] == expected['virtual-size']
    assert image['format-specific']['data']['cipher-alg'] == expected['format-specific']['data']['cipher-alg']
    assert 'check_note' in image
    assert sum(entry['length'] for entry in image['map']) == expected['virtual-size']


def test_conversion_to_luks_reports_every_encrypted_byte_as_written(tmp_path):
    """A fully allocated source: every sector of the LUKS payload is written (zeroes encrypted too)."""
    plain = tmp_path / 'full.raw'
    run('qemu-img', 'create', '-f', 'raw', '-o', 'preallocation=full', str(plain), '4M')
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0x5a 0 1M', str(plain))
    request, plan = plan_for(path=str(tmp_path / 'full.luks'), fmt='luks', src=str(plain), src_format='raw',
                             encryption_passphrase=PASSPHRASE, options=FAST)
    outcome = apply_plan(plan, request)
    assert outcome['conversion']['bytes_written'] == 4 * MIB, outcome
    assert outcome['bytes_written'] == 4 * MIB, outcome
    assert qemu_compare_plain_with_luks(plain, 'raw', tmp_path / 'full.luks') == 0
