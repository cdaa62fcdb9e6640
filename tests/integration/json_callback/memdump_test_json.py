# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
name: memdump_test_json
type: stdout
short_description: The whole run as one JSON document, for the integration tests only
description:
  - The output format of C(ansible.posix.json) (plays, tasks with per-host results, stats), which
    ansible-core does not ship (C(ansible.builtin.json) redirects to ansible.posix, and Galaxy is not
    reachable here). Used by tests/integration/conftest.py (ANSIBLE_CALLBACK_PLUGINS); not part of the collection's plugins.
author:
  - vmforensics maintainers (@vmforensics)
'''

import json

from ansible.module_utils.common.json import AnsibleJSONEncoder
from ansible.plugins.callback import CallbackBase


def _result_of(result):
    value = getattr(result, 'result', None)
    if not isinstance(value, dict):
        value = result._result  # pylint: disable=protected-access
    return dict(value)


def _task_of(result):
    return getattr(result, 'task', None) or result._task  # pylint: disable=protected-access


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'memdump_test_json'

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.results = []

    def v2_playbook_on_play_start(self, play):
        self.results.append({'play': {'name': play.get_name(), 'id': str(play._uuid)},  # pylint: disable=protected-access
                             'tasks': []})

    def _new_task(self, task):
        if not self.results:
            self.results.append({'play': {'name': '', 'id': ''}, 'tasks': []})
        self.results[-1]['tasks'].append({'task': {'name': task.get_name(), 'id': str(task._uuid)},  # pylint: disable=protected-access
                                          'hosts': {}})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._new_task(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._new_task(task)

    def _record(self, result, **extra):
        task = _task_of(result)
        if not self.results or not self.results[-1]['tasks'] or \
                self.results[-1]['tasks'][-1]['task']['id'] != str(task._uuid):  # pylint: disable=protected-access
            self._new_task(task)
        value = _result_of(result)
        value.update(extra)
        value['action'] = task.action
        self.results[-1]['tasks'][-1]['hosts'][result._host.get_name()] = value  # pylint: disable=protected-access

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        summary = {}
        for host in sorted(stats.processed.keys()):
            summary[host] = stats.summarize(host)
        self._display.display(json.dumps({'plays': self.results, 'stats': summary}, cls=AnsibleJSONEncoder,
                                         indent=2, sort_keys=True))
