# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can this host run KVM guests?  The CPU's virtualization flag, the KVM device (opened and asked for its API
version, as QEMU does first), and the nested virtualization parameter of the vendor's KVM module.

Standard library only: the checks run before any hypervisor package is installed."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os
import re
import stat

# KVM_GET_API_VERSION: _IO(KVMIO=0xAE, 0x00); the stable KVM API answers 12 (Linux's Documentation/virt/kvm/api.rst).
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12

# vmx: Intel VT-x, svm: AMD-V; the vendor module that serves each.
CPU_FLAGS = {'vmx': 'kvm_intel', 'svm': 'kvm_amd'}


def cpu_virtualization_flag(cpuinfo_path):
    """'vmx', 'svm' or None: the first of them on a ``flags`` line of ``cpuinfo_path``."""
    with open(cpuinfo_path, 'r') as handle:
        for line in handle:
            key, sep, value = line.partition(':')
            if sep and key.strip() == 'flags':
                flags = set(value.split())
                for flag in sorted(CPU_FLAGS):
                    if flag in flags:
                        return flag
    return None


def _ioctl_api_version(fd):
    import fcntl  # POSIX only, imported where it is used
    return fcntl.ioctl(fd, KVM_GET_API_VERSION)


def kvm_device_state(path, ioctl=None):
    """What the KVM device at ``path`` is and whether it answers: a dict with exists, character_device,
    readable, writable, api_version (None when not asked or not answered) and problem (None when usable).
    ``ioctl(fd)`` asks the API version (KVM_GET_API_VERSION by default)."""
    ioctl = ioctl or _ioctl_api_version
    state = dict(path=path, exists=False, character_device=False, readable=False, writable=False,
                 api_version=None, problem=None)
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            state['problem'] = '%s does not exist (kvm_intel or kvm_amd not loaded, or no KVM in this kernel)' % path
        else:
            state['problem'] = 'cannot look at %s: %s' % (path, exc.strerror)
        return state
    state['exists'] = True
    state['character_device'] = stat.S_ISCHR(st.st_mode)
    state['readable'] = os.access(path, os.R_OK)
    state['writable'] = os.access(path, os.W_OK)
    if not state['character_device']:
        state['problem'] = '%s is not a character device' % path
        return state
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, 'O_CLOEXEC', 0))
    except OSError as exc:
        state['problem'] = '%s cannot be opened for reading and writing: %s' % (path, exc.strerror)
        return state
    try:
        state['api_version'] = ioctl(fd)
    except (OSError, IOError) as exc:
        state['problem'] = '%s does not answer KVM_GET_API_VERSION: %s' % (path, exc.strerror)
        return state
    finally:
        os.close(fd)
    if state['api_version'] != KVM_API_VERSION:
        state['problem'] = '%s answers KVM API version %s, QEMU needs %d' % (
            path, state['api_version'], KVM_API_VERSION)
    return state


def nested_state(sys_module_path='/sys/module'):
    """The ``nested`` parameter of each loaded vendor module: {'kvm_intel': True/False/None, 'kvm_amd': ...}
    (None: the module is not loaded)."""
    result = {}
    for module in sorted(CPU_FLAGS.values()):
        try:
            with open(os.path.join(sys_module_path, module, 'parameters', 'nested'), 'r') as handle:
                value = handle.read().strip()
        except (IOError, OSError):
            result[module] = None
            continue
        result[module] = bool(re.match(r'^(1|y|Y)$', value))
    return result


def kvm_report(cpuinfo_path='/proc/cpuinfo', kvm_device='/dev/kvm', sys_module_path='/sys/module',
               ioctl=None):
    """The whole answer: usable, problems (each a sentence saying why not), cpu_flag, device, nested."""
    problems = []
    try:
        flag = cpu_virtualization_flag(cpuinfo_path)
    except (IOError, OSError) as exc:
        flag = None
        problems.append('cannot read %s: %s' % (cpuinfo_path, exc.strerror))
    else:
        if flag is None:
            problems.append('the CPU has no vmx or svm flag in %s (virtualization off in the firmware, or not '
                            'exposed to this virtual machine)' % cpuinfo_path)
    device = kvm_device_state(kvm_device, ioctl=ioctl)
    if device['problem']:
        problems.append(device['problem'])
    return dict(usable=not problems, problems=problems, cpu_flag=flag, vendor_module=CPU_FLAGS.get(flag),
                device=device, nested=nested_state(sys_module_path))


def hypervisor_argument_spec():
    return dict(
        require_kvm=dict(type='bool', default=False),
        warn=dict(type='bool', default=True),
        cpuinfo_path=dict(type='path', default='/proc/cpuinfo'),
        kvm_device=dict(type='path', default='/dev/kvm'),
    )


def run_hypervisor_info(params):
    """(result, warning or None, failure message or None) for the module's parameters."""
    report = kvm_report(cpuinfo_path=params['cpuinfo_path'], kvm_device=params['kvm_device'])
    result = dict(changed=False, kvm=report)
    if report['usable']:
        return result, None, None
    why = '; '.join(report['problems'])
    if params['require_kvm']:
        return result, None, 'KVM is required (require_kvm) but not usable: %s' % why
    if params['warn']:
        return result, 'KVM is not usable, guests will run under TCG emulation (slow): %s' % why, None
    return result, None, None
