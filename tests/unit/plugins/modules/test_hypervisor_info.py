# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""hypervisor_info: the CPU flag, the KVM device asked for its API version, nested state; a real Ansible warning
(or a failure with require_kvm) when KVM is not usable, with the reasons."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

import pytest

from ansible_collections.kvm.storage.plugins.module_utils import _hypervisor
from ansible_collections.kvm.storage.plugins.modules import hypervisor_info

from module_runner import run_module, warnings_of

INTEL = 'processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr vmx sse2\n\n'
AMD = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm lm\n\n'
NO_FLAG = 'processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme hypervisor\nvmx flags\t: vnmi\n\n'


def write(path, text):
    with open(str(path), 'w') as handle:
        handle.write(text)
    return str(path)


@pytest.mark.parametrize('text, flag', [(INTEL, 'vmx'), (AMD, 'svm'), (NO_FLAG, None)])
def test_cpu_flag_read_from_the_flags_line_only(tmp_path, text, flag):
    # "vmx flags" (a line of its own on recent kernels) is not the flags line: NO_FLAG has no vmx in "flags"
    assert _hypervisor.cpu_virtualization_flag(write(tmp_path / 'cpuinfo', text)) == flag


def test_missing_device_is_a_problem_named_with_its_path(tmp_path):
    state = _hypervisor.kvm_device_state(str(tmp_path / 'kvm'))
    assert not state['exists']
    assert state['problem'] == '%s does not exist (kvm_intel or kvm_amd not loaded, or no KVM in this kernel)' % (
        tmp_path / 'kvm')


def test_regular_file_is_not_a_kvm_device(tmp_path):
    state = _hypervisor.kvm_device_state(write(tmp_path / 'kvm', ''))
    assert state['exists'] and not state['character_device']
    assert state['problem'].endswith('is not a character device')


def test_character_device_that_does_not_answer_the_kvm_ioctl(tmp_path):
    # /dev/null is a character device anyone may open read-write; KVM_GET_API_VERSION fails on it (ENOTTY)
    state = _hypervisor.kvm_device_state('/dev/null')
    assert state['character_device'] and state['readable'] and state['writable']
    assert state['api_version'] is None
    assert state['problem'].startswith('/dev/null does not answer KVM_GET_API_VERSION')


def test_device_answering_another_api_version_is_refused():
    state = _hypervisor.kvm_device_state('/dev/null', ioctl=lambda fd: 11)
    assert state['api_version'] == 11
    assert state['problem'] == '/dev/null answers KVM API version 11, QEMU needs 12'


def test_device_answering_12_is_usable():
    state = _hypervisor.kvm_device_state('/dev/null', ioctl=lambda fd: 12)
    assert state['problem'] is None and state['api_version'] == 12


def test_real_kvm_device_answers_when_present():
    # the build machines have a /dev/kvm that answers (their guests crash later, inside KVM_RUN)
    if not os.path.exists('/dev/kvm'):
        pytest.fail('/dev/kvm is expected on the build machines')
    state = _hypervisor.kvm_device_state('/dev/kvm')
    assert state['api_version'] == 12, state


def test_nested_state_per_vendor_module(tmp_path):
    params = tmp_path / 'kvm_intel' / 'parameters'
    params.mkdir(parents=True)
    write(params / 'nested', 'Y\n')
    assert _hypervisor.nested_state(str(tmp_path)) == {'kvm_amd': None, 'kvm_intel': True}
    write(params / 'nested', '0\n')
    assert _hypervisor.nested_state(str(tmp_path)) == {'kvm_amd': None, 'kvm_intel': False}


def test_module_warns_with_every_reason(tmp_path, capsys):
    cpuinfo = write(tmp_path / 'cpuinfo', NO_FLAG)
    device = str(tmp_path / 'kvm')
    result = run_module(hypervisor_info, capsys, cpuinfo_path=cpuinfo, kvm_device=device)
    assert result['changed'] is False and 'failed' not in result
    assert result['kvm']['usable'] is False
    assert len(result['kvm']['problems']) == 2
    expected = 'KVM is not usable, guests will run under TCG emulation (slow): ' + '; '.join(result['kvm']['problems'])
    assert warnings_of(result) == [expected]
    assert cpuinfo in warnings_of(result)[0] and device in warnings_of(result)[0]


def test_module_fails_when_kvm_is_required(tmp_path, capsys):
    cpuinfo = write(tmp_path / 'cpuinfo', INTEL)
    result = run_module(hypervisor_info, capsys, cpuinfo_path=cpuinfo, kvm_device=str(tmp_path / 'kvm'),
                        require_kvm=True)
    assert result['failed'] is True
    assert result['msg'] == ('KVM is required (require_kvm) but not usable: %s does not exist (kvm_intel or '
                             'kvm_amd not loaded, or no KVM in this kernel)' % (tmp_path / 'kvm'))
    assert result['kvm']['cpu_flag'] == 'vmx' and result['kvm']['vendor_module'] == 'kvm_intel'


def test_module_quiet_with_warn_false(tmp_path, capsys):
    result = run_module(hypervisor_info, capsys, cpuinfo_path=write(tmp_path / 'cpuinfo', AMD),
                        kvm_device=str(tmp_path / 'kvm'), warn=False)
    assert 'warnings' not in result and result['kvm']['usable'] is False


def test_module_unreadable_cpuinfo_is_a_problem_not_a_traceback(tmp_path, capsys):
    result = run_module(hypervisor_info, capsys, cpuinfo_path=str(tmp_path / 'missing'), kvm_device='/dev/kvm')
    assert result['kvm']['problems'][0] == 'cannot read %s: No such file or directory' % (tmp_path / 'missing')


def test_module_usable_host_no_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_hypervisor, '_ioctl_api_version', lambda fd: 12)
    result = run_module(hypervisor_info, capsys, cpuinfo_path=write(tmp_path / 'cpuinfo', INTEL),
                        kvm_device='/dev/null')
    assert result['kvm']['usable'] is True and result['kvm']['problems'] == []
    assert 'warnings' not in result
