# -*- coding: utf-8 -*-
# Copyright: contributors to the vmforensics.memdump collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Stdout callback of the benchmarks only: the run as one JSON document on stdout.

ansible-core 2.19 has no ``json`` stdout callback (it lives in ansible.posix, which Galaxy cannot
fetch here). Same shape as ansible.posix.json: ``plays[].tasks[].task.duration.start/end`` (UTC
ISO 8601; ``end`` = when the controller received the last host's result) and
``plays[].tasks[].hosts.<host>`` (the result), plus ``stats``.
"""

from __future__ import annotations

import datetime
import json
import sys

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: bench_json
type: stdout
short_description: JSON output with task timings, for bench/ only
description:
  - Prints the whole run as one JSON document when it ends.
"""


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


class CallbackModule(CallbackBase):
    """Collects plays, tasks with timings and per-host results; prints them at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'stdout'
    CALLBACK_NAME = 'bench_json'

    def __init__(self, display=None):
        super().__init__(display)
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({'play': {'name': play.get_name()}, 'tasks': []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        if self.plays:
            self.plays[-1]['tasks'].append({'task': {'name': task.get_name(), 'duration': {'start': _now()}}, 'hosts': {}})

    def _record(self, result, **extra):
        if not self.plays or not self.plays[-1]['tasks']:
            return
        entry = self.plays[-1]['tasks'][-1]
        entry['task']['duration']['end'] = _now()
        try:
            data = json.loads(self._dump_results(result.result, keep_invocation=False))
        except (TypeError, ValueError):
            data = {'unserializable': True}
        data.update(extra)
        entry['hosts'][result.host.get_name()] = data

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        summary = {h: stats.summarize(h) for h in sorted(stats.processed.keys())}
        sys.stdout.write(json.dumps({'plays': self.plays, 'stats': summary}) + '\n')
        sys.stdout.flush()
