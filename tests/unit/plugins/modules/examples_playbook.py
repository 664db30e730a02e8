# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's EXAMPLES block as a playbook, in the order written, with ansible-playbook.

The tasks are the module's own, read from its EXAMPLES; a test only changes what names this host's
objects (pool, domain and volume group names, paths moved into the test's directory, a remote uri made
local) through ``adapt(task)``, and may run in check mode the tasks that name hardware or servers the
test host does not have.  The collection under test is the checkout (conftest's import symlink).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import subprocess
import sys

import yaml


def collections_path(module):
    """The directory holding ansible_collections/kvm/storage for this checkout (where the module was imported from)."""
    path = os.path.abspath(module.__file__)
    for dummy in range(6):
        path = os.path.dirname(path)
    return path


def example_tasks(module):
    """The tasks of the module's EXAMPLES, in order."""
    tasks = yaml.safe_load(module.EXAMPLES)
    assert isinstance(tasks, list) and tasks, 'EXAMPLES of %s is not a list of tasks' % module.__name__
    return tasks


def run_examples(tasks, directory, collections):
    """Run ``tasks`` as one play on localhost; returns {task name: result} (the results of every task, registered)."""
    for number, task in enumerate(tasks):
        task.setdefault('register', 'example_%d' % number)
    show = {
        'name': 'Results of the examples',
        'ansible.builtin.copy': {
            'content': '{{ %s | to_json }}' % ('[' + ', '.join(task['register'] for task in tasks) + ']'),
            'dest': os.path.join(directory, 'example_results.json'),
            'mode': '0600',
        },
    }
    play = [{
        'name': 'The examples, in the order written',
        'hosts': 'localhost',
        'gather_facts': False,
        'vars': {'ansible_python_interpreter': sys.executable},
        'tasks': tasks + [show],
    }]
    playbook = os.path.join(directory, 'examples.yml')
    with open(playbook, 'w') as stream:
        yaml.safe_dump(play, stream, default_flow_style=False, sort_keys=False)
    environment = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR='1', ANSIBLE_RETRY_FILES_ENABLED='0',
                       ANSIBLE_LOCALHOST_WARNING='0', ANSIBLE_INVENTORY_UNPARSED_WARNING='0')
    program = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
    completed = subprocess.run([program, '-i', 'localhost,', '-c', 'local', playbook], cwd=directory, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert completed.returncode == 0, completed.stdout[-6000:]
    with open(os.path.join(directory, 'example_results.json')) as stream:
        results = json.load(stream)
    return dict((task['name'], result) for task, result in zip(tasks, results))
