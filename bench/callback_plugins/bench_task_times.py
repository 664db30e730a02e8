# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Callback for bench/bench.py: the wall time of every task, one JSON line each, to $BENCH_TASK_TIMES."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: bench_task_times
type: aggregate
short_description: Write each task's wall time to a file (bench/bench.py)
description:
  - Appends one JSON line per task result to the file named by the environment variable E(BENCH_TASK_TIMES)
    with the task name, its status and the seconds from the task's start to its result.
  - Used by C(make bench) only; not part of the collection.
'''

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Times each task from its start to its result."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_task_times'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._started = {}

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started[task._uuid] = time.monotonic()

    def _record(self, result, status):
        ended = time.monotonic()
        task = result._task
        started = self._started.get(task._uuid, ended)
        with open(os.environ["BENCH_TASK_TIMES"], "a") as handle:
            handle.write(json.dumps({
                "name": task.get_name(),
                "status": status,
                "changed": bool(result._result.get("changed")),
                "seconds": ended - started,
                "msg": str(result._result.get("msg", "")) if status != "ok" else "",
            }) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
