# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad task input, table-driven (issue #15): every option of every module (argument specs read from the modules
themselves, suboptions and the file options included) is fed wrong types, values outside its choices, out-of-range
numbers, conflicting combinations (the spec's own mutually_exclusive, required_if...) and hostile strings (NUL
bytes; newlines and ``..`` in paths that lead nowhere). Each run is a real one (not check mode), in process, as
Ansible runs a module: it ends in fail_json with a message (no traceback, no other exception), and the test's
directory is unchanged, with nothing made beside it. Hostile strings in options that are not paths may be accepted,
but never with a traceback, and a run that fails changes nothing.

libvirt modules run against libvirt's in-process test driver (test:///default): nothing on the host is touched.
Every no_log option is listed in SECRET_OPTIONS, and every option whose name says it holds a secret is no_log.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import glob
import hashlib
import importlib
import os

import pytest

from module_runner import run_module

from ansible.module_utils.basic import FILE_COMMON_ARGUMENTS

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import HAS_LIBVIRT
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import create

import components

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
MODULE_NAMES = sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, 'plugins', 'modules', '*.py'))
                      if not os.path.basename(path).startswith('_'))
LIBVIRT_MODULES = ('domain', 'domain_disk', 'domain_disk_info', 'domain_snapshot', 'domain_snapshot_info',
                   'storage_pool', 'storage_pool_info')
# Every no_log option, by module (the secrets the issue names; pool auth options name libvirt secret objects, not
# secrets, and are no_log=False on purpose).
SECRET_OPTIONS = {'disk_image': {'encryption_passphrase', 'src_passphrase'}}
SECRET_WORDS = ('passphrase', 'password', 'secret', 'key', 'token')
# Options whose value is a file system path (besides type path): they get newlines and '..' leading nowhere.
PATH_OPTIONS = {'path', 'src', 'backing_file', 'source', 'cpuinfo_path', 'kvm_device', 'allow_dirs', 'target'}
# The paths a module writes or must read to write: such a path leading nowhere fails the task. The others may be
# reported on (disk_image_info: exists=false; hypervisor_info: a problem) or unused in the base input's state.
WRITE_PATHS = {('disk_image', 'path'), ('disk_image', 'src'), ('disk_image', 'backing_file'),
               ('cloud_init_seed', 'path'), ('lvm_volume_image', 'src')}
# Numbers out of range that the base input's state does not use (state=absent): accepted, never acted on.
UNUSED_NUMBERS = {('domain', 'shutdown_timeout'), ('domain_disk', 'boot_order'), ('domain_disk', 'detach_timeout')}


class _SpecCaught(Exception):
    pass


def module_spec(name):
    """The keywords module ``name`` gives AnsibleModule (its main() stopped right there)."""
    module = importlib.import_module('ansible_collections.kvm.storage.plugins.modules.' + name)
    caught = {}

    def capture(**kwargs):
        caught.update(kwargs)
        raise _SpecCaught()

    original = module.AnsibleModule
    module.AnsibleModule = capture
    try:
        module.main()
    except _SpecCaught:
        pass
    finally:
        module.AnsibleModule = original
    spec = dict(caught['argument_spec'])
    if caught.get('add_file_common_args'):
        spec.update((option, dict(type='path' if option == 'src' else 'str')) for option in FILE_COMMON_ARGUMENTS
                    if option not in spec and option in ('mode', 'owner', 'group', 'seuser', 'serole', 'selevel',
                                                         'setype', 'attributes'))
    return module, spec, caught


SPECS = dict((name, module_spec(name)) for name in MODULE_NAMES)


# --------------------------------------------------------------------------- valid task input to start from
def base_args(name, work):
    """Task input each module takes as valid, in ``work``; one option at a time is then spoiled."""
    image = os.path.join(work, 'existing.qcow2')
    missing = os.path.join(work, 'new')
    libvirt = dict(uri='test:///default')
    return {
        'cloud_init_seed': dict(path=os.path.join(work, 'seed.iso'), user_data={'hostname': 'a'}),
        'disk_image': dict(path=missing + '.qcow2', format='qcow2', size='1M'),
        'disk_image_info': dict(path=image),
        'domain': dict(name='kvmstorage_unit_badinput', state='absent', **libvirt),
        'domain_disk': dict(domain='test', target='vdz', source=image, state='absent', **libvirt),
        'domain_disk_info': dict(domain='test', **libvirt),
        'domain_snapshot': dict(domain='test', name='kvmstorage_unit_badinput', state='absent', **libvirt),
        'domain_snapshot_info': dict(domain='test', **libvirt),
        'hypervisor_info': dict(cpuinfo_path=os.path.join(work, 'cpuinfo'), kvm_device=os.path.join(work, 'kvm')),
        'lvm_volume_image': dict(vg='kvmstorage_unit_badinput_vg', lv='a', src=image, format='raw'),
        'lvm_volume_image_info': dict(vg='kvmstorage_unit_badinput_vg', lv='a'),
        'storage_pool': dict(name='kvmstorage_unit_badinput', state='absent', **libvirt),
        'storage_pool_info': dict(name='kvmstorage_unit_badinput', **libvirt),
        'virtualbox_machine_info': dict(path=os.path.join(work, 'machine.vbox')),
    }[name]


# --------------------------------------------------------------------------- what is spoiled, and how
def wrong_types(option_spec):
    """Values of the wrong type for an option (Ansible's type checks refuse each)."""
    kind = option_spec.get('type', 'str')
    if kind == 'bool':
        return [('not a boolean', 'maybe'), ('a list for a boolean', [True])]
    if kind == 'int':
        return [('text for an integer', 'ten'), ('a fraction for an integer', 1.5), ('a dict for an integer', {'a': 1})]
    if kind == 'float':
        return [('text for a number', 'ten')]
    if kind == 'list':
        return [('a dict for a list', {'a': 1})]
    if kind == 'dict':
        return [('a list for a dict', ['a']), ('unparsable text for a dict', 'no dict here')]
    if kind in ('str', 'path') and option_spec.get('choices'):
        return [('a value outside the choices', 'not-one-of-the-choices'), ('a list for a choice', ['a', 'b'])]
    return []


def out_of_range(option, option_spec):
    """Numbers a module must refuse: negative and absurd sizes, counts and timeouts."""
    kind = option_spec.get('type', 'str')
    if kind == 'int':
        return [('a negative number', -1), ('a number beyond 64 bits', 2 ** 70)]
    if kind in ('str', 'raw') and option in ('size',):
        return [('a negative size', '-5Q'), ('a size beyond 64 bits', '99999999999999999999T'), ('a size with junk', '1M;rm')]
    return []


def hostile_strings(option, option_spec, work, writes=False):
    """(label, value, must_fail): NUL bytes anywhere (always refused); newlines and '..' in paths leading outside
    ``work`` or into a directory that does not exist (refused where the module writes, ``writes``)."""
    kind = option_spec.get('type', 'str')
    if kind not in ('str', 'path', 'raw') or option_spec.get('choices'):
        return []
    path_like = kind == 'path' or option in PATH_OPTIONS
    cases = [('a NUL byte', os.path.join(work, 'a\0b') if path_like else 'a\0b', True)]
    if path_like:
        escape = os.path.join(work, '..', os.path.basename(work) + '-escape', 'x.img')
        cases += [('a newline in a missing directory', os.path.join(work, 'no\nsuch', 'x.img'), writes),
                  ("'..' out of the directory", escape, writes)]
    else:
        cases += [('a newline', 'a\nb', False), ("'..'", '../../etc/passwd', False)]
    return cases


def spoil(args, option, value, suboption=None):
    spoiled = dict(args)
    if suboption is None:
        spoiled[option] = value
    else:
        parent = dict(spoiled.get(option) or {})
        parent[suboption] = value
        spoiled[option] = [parent] if option_is_list(option, spoiled) else parent
    return spoiled


def option_is_list(option, args):
    return isinstance(args.get(option), list)


def sample(option_spec, work):
    """A value of the right type (for combinations)."""
    kind = option_spec.get('type', 'str')
    if option_spec.get('choices'):
        return list(option_spec['choices'])[-1]
    return {'bool': True, 'int': 1, 'float': 1.0, 'list': ['x'], 'dict': {},
            'path': os.path.join(work, 'sample')}.get(kind, 'sample')


def conflicts(caught, spec, work):
    """(label, options to set, options to drop): combinations the module's own declarations refuse."""
    for group in caught.get('mutually_exclusive') or ():
        yield 'both of %s' % '/'.join(group), dict((option, sample(spec[option], work)) for option in group), ()
    for group in caught.get('required_together') or ():
        yield 'only %s of %s' % (group[0], '/'.join(group)), {group[0]: sample(spec[group[0]], work)}, group[1:]
    for rule in caught.get('required_if') or ():
        key, value, requirements = rule[:3]
        if len(rule) > 3 and rule[3]:
            continue    # any one of them: dropping all may still leave a valid base
        yield '%s=%s without %s' % (key, value, '/'.join(requirements)), {key: value}, requirements
    for key, requirements in (caught.get('required_by') or {}).items():
        requirements = [requirements] if isinstance(requirements, str) else requirements
        yield '%s without %s' % (key, '/'.join(requirements)), {key: sample(spec[key], work)}, requirements


def table():
    """Every case: (module, option path, label, how to build the task input from the base, must_fail)."""
    cases = []
    for name in MODULE_NAMES:
        _module, spec, caught = SPECS[name]
        for option, option_spec in sorted(spec.items()):
            entries = [(option, None, option_spec)]
            for suboption, sub_spec in sorted((option_spec.get('options') or {}).items()):
                entries.append((option, suboption, sub_spec))
            for parent, child, entry_spec in entries:
                where = parent if child is None else '%s.%s' % (parent, child)
                leaf = child or parent
                for label, value in wrong_types(entry_spec):
                    cases.append((name, where, label, ('set', parent, child, value), True))
                for label, value in out_of_range(leaf, entry_spec):
                    cases.append((name, where, label, ('set', parent, child, value), (name, where) not in UNUSED_NUMBERS))
                for label, value, must_fail in hostile_strings(leaf, entry_spec, '{work}', (name, where) in WRITE_PATHS):
                    cases.append((name, where, label, ('set', parent, child, value), must_fail))
        for label, given, dropped in conflicts(caught, spec, '{work}'):
            cases.append((name, '+'.join(sorted(given)), label, ('combine', given, tuple(dropped)), True))
    return cases


CASES = table()


def materialise(value, work):
    if isinstance(value, str):
        return value.replace('{work}', work)
    if isinstance(value, list):
        return [materialise(item, work) for item in value]
    if isinstance(value, dict):
        return dict((key, materialise(item, work)) for key, item in value.items())
    return value


def snapshot(directory):
    """Every entry under ``directory`` with its size, mode and content digest."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as stream:
                    digest = hashlib.sha256(stream.read()).hexdigest()
            state[os.path.relpath(path, directory)] = (st.st_size, st.st_mode, st.st_mtime_ns, digest)
    return state


@pytest.fixture
def work(tmp_path):
    work = str(tmp_path / 'work')
    os.mkdir(work)
    create(os.path.join(work, 'existing.qcow2'), 'qcow2', 1024 * 1024)
    with open(os.path.join(work, 'cpuinfo'), 'w') as stream:
        stream.write('flags\t\t: fpu vme\n')
    return work


def _ids(case):
    return '%s:%s:%s' % (case[0], case[1], case[2])


@pytest.mark.parametrize('case', CASES, ids=[_ids(case) for case in CASES])
def test_bad_input_fails_cleanly_and_changes_nothing(case, work, capsys):
    name, where, label, how, must_fail = case
    if name in LIBVIRT_MODULES and not HAS_LIBVIRT:
        components.missing('libvirt-python', 'the libvirt modules run on test:///default')
    module = SPECS[name][0]
    args = base_args(name, work)
    if how[0] == 'set':
        _kind, parent, child, value = how
        value = materialise(value, work)
        if child is None:
            args[parent] = value
        else:
            parent_spec = SPECS[name][1][parent]
            element = dict(args.get(parent) or {}) if not isinstance(args.get(parent), list) else dict(args[parent][0])
            for sub, sub_spec in (parent_spec.get('options') or {}).items():
                if sub_spec.get('required') and sub not in element:
                    element[sub] = sample(sub_spec, work)
            element[child] = value
            args[parent] = [element] if parent_spec.get('type') == 'list' else element
    else:
        _kind, given, dropped = how
        args.update(materialise(given, work))
        for option in dropped:
            args.pop(option, None)
    escape = os.path.join(os.path.dirname(work), os.path.basename(work) + '-escape')
    around = sorted(os.listdir(os.path.dirname(work)))
    before = snapshot(work)

    result = run_module(module, capsys, **args)

    after = snapshot(work)
    assert 'Traceback' not in str(result.get('exception', '')), result
    assert not os.path.exists(escape) and sorted(os.listdir(os.path.dirname(work))) == around
    if must_fail:
        assert result.get('failed') is True, '%s %s (%s) was accepted: %r' % (name, where, label, result)
    if result.get('failed'):
        assert isinstance(result.get('msg'), str) and result['msg'].strip(), result
        assert after == before, '%s %s (%s) failed but changed %s' % (name, where, label, work)


def test_the_table_covers_every_option_of_every_module():
    covered = set((case[0], case[1]) for case in CASES)
    for name in MODULE_NAMES:
        spec = SPECS[name][1]
        for option, option_spec in spec.items():
            if wrong_types(option_spec) or out_of_range(option, option_spec) or hostile_strings(option, option_spec, '/w'):
                assert (name, option) in covered
        # a free text or raw option gets at least a NUL byte; a typed one a wrong type
        assert all((name, option) in covered for option, option_spec in spec.items()
                   if option_spec.get('type', 'str') != 'raw'), name
    assert len(CASES) >= 300


def test_every_secret_option_is_no_log_and_listed():
    for name in MODULE_NAMES:
        spec = SPECS[name][1]
        suboptions = [(sub, sub_spec) for _option, option_spec in spec.items()
                      for sub, sub_spec in (option_spec.get('options') or {}).items()]
        options = list(spec.items()) + suboptions
        no_log = set(option for option, option_spec in options if option_spec.get('no_log'))
        assert no_log == SECRET_OPTIONS.get(name, set()), name
        for option, option_spec in options:
            if any(word in option for word in SECRET_WORDS):
                # a secret's name: no_log, or an explicit no_log=False (a reference to a secret, never the secret)
                assert 'no_log' in option_spec, '%s: %s' % (name, option)
