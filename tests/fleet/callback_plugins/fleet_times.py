# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback for tests/fleet/run.py: when every task started and ended on every host, as JSON lines."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: fleet_times
type: aggregate
short_description: Write when each task started and ended on each host to a file (tests/fleet/run.py)
description:
  - Appends one JSON line per event to the file named by the environment variable E(FLEET_TIMES), for
    a task's start (C(task)), its start on a host (C(start)), its result on a host (C(result), with the status,
    whether it changed, its message when it did not succeed, and the C(fleet_summary) fact of a summary task), and the
    play's recap (C(stats)). Times are C(time.time()), the clock of the ssh wrapper tests/fleet/bin/ssh.
  - Used by the fleet scenario only (C(make fleet)); not part of the collection.
'''

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Records task and host times of a play for the fleet report."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'fleet_times'
    CALLBACK_NEEDS_ENABLED = True

    def _write(self, event):
        event['time'] = time.time()
        with open(os.environ['FLEET_TIMES'], 'a') as handle:
            handle.write(json.dumps(event, sort_keys=True) + '\n')

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write({'event': 'task', 'task': task.get_name(), 'uuid': task._uuid})

    def v2_runner_on_start(self, host, task):
        self._write({'event': 'start', 'task': task.get_name(), 'uuid': task._uuid, 'host': host.get_name()})

    def _result(self, result, status):
        outcome = result._result
        event = {'event': 'result', 'task': result._task.get_name(), 'uuid': result._task._uuid,
                 'host': result._host.get_name(), 'status': status, 'changed': bool(outcome.get('changed'))}
        if status != 'ok':
            event['msg'] = str(outcome.get('msg', ''))[:2000]
        facts = outcome.get('ansible_facts') or {}
        if 'fleet_summary' in facts:
            event['fleet_summary'] = facts['fleet_summary']
        self._write(event)

    def v2_runner_on_ok(self, result):
        self._result(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result(result, 'failed')

    def v2_runner_on_unreachable(self, result):
        self._result(result, 'unreachable')

    def v2_runner_on_skipped(self, result):
        self._result(result, 'skipped')

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        self._write({'event': 'stats', 'hosts': dict((host, stats.summarize(host)) for host in hosts)})
