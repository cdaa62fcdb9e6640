# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpConnectionError
from ansible_collections.vmforensics.memdump.plugins.module_utils._wait import DumpWaiter, WaitTimeout, describe_pending


class Clock(object):
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def rec(dump_id, state, vm=None, progress=0.0):
    return {'dump_id': dump_id, 'vm': vm or dump_id, 'state': state, 'progress': progress}


def test_long_poll_when_marker_present():
    clock = Clock()
    calls = []
    answers = [([rec('a', 'queued')], 1), ([rec('a', 'running')], 2), ([rec('a', 'completed')], 3)]

    def fetch(ids, wait, marker):
        calls.append((wait, marker))
        clock.now += 0.5 if wait else 0.0  # the service holds the request
        return answers.pop(0)

    waiter = DumpWaiter(fetch, timeout=600, poll_interval=5, clock=clock, sleep=clock.sleep)
    records, elapsed = waiter.wait(['a'])
    assert records['a']['state'] == 'completed'
    assert calls == [(None, None), (60.0, 1), (60.0, 2)]
    assert clock.sleeps == [] and elapsed == 1.0


def test_interval_polling_without_marker():
    clock = Clock()
    answers = [([rec('a', 'running')], None)] * 3 + [([rec('a', 'completed')], None)]
    waiter = DumpWaiter(lambda ids, wait, marker: answers.pop(0), timeout=600, poll_interval=5, clock=clock,
                        sleep=clock.sleep)
    waiter.wait(['a'])
    assert clock.sleeps == [5, 5, 5]


def test_timeout_names_pending_with_progress():
    clock = Clock()
    waiter = DumpWaiter(lambda ids, wait, marker: ([rec('a', 'running', 'web01', 12.5), rec('b', 'completed')], None),
                        timeout=12, poll_interval=5, clock=clock, sleep=clock.sleep)
    with pytest.raises(WaitTimeout) as e:
        waiter.wait(['a', 'b'], url='http://svc')
    assert 'web01 (running, 12.5%, dump a)' in e.value.msg and 'http://svc' in e.value.msg
    assert 'b (' not in e.value.msg and e.value.elapsed == 12
    assert clock.sleeps == [5, 5, 2]  # never sleeps past the deadline


def test_connection_errors_retried_until_deadline():
    clock = Clock()
    outcomes = [MemdumpConnectionError('down'), MemdumpConnectionError('down'), ([rec('a', 'completed')], None)]

    def fetch(ids, wait, marker):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    waiter = DumpWaiter(fetch, timeout=60, poll_interval=1, clock=clock, sleep=clock.sleep)
    records, dummy = waiter.wait(['a'])
    assert records['a']['state'] == 'completed'

    def down(ids, wait, marker):
        raise MemdumpConnectionError('connection refused')
    with pytest.raises(WaitTimeout) as e:
        DumpWaiter(down, timeout=3, poll_interval=1, clock=clock, sleep=clock.sleep).wait(['a'])
    assert 'connection refused' in e.value.msg and 'a (unknown' in e.value.msg


def test_describe_pending():
    assert describe_pending({'vm': 'x', 'state': 'queued'}) == 'x (queued)'


def test_marker_without_hold_sleeps_instead_of_spinning():
    clock = Clock()
    answers = [([rec('a', 'running')], 7)] * 3 + [([rec('a', 'completed')], 8)]
    waiter = DumpWaiter(lambda ids, wait, marker: answers.pop(0), timeout=600, poll_interval=2, clock=clock,
                        sleep=clock.sleep)
    waiter.wait(['a'])
    assert clock.sleeps == [2, 2]  # the two long-polls that came back at once with nothing changed


def test_marker_without_hold_on_a_slow_link_still_sleeps():
    clock = Clock()
    answers = [([rec('a', 'running')], 7)] * 3 + [([rec('a', 'completed')], 8)]

    def fetch(ids, wait, marker):
        clock.now += 0.25  # every answer takes a quarter second, held or not
        return answers.pop(0)

    DumpWaiter(fetch, timeout=600, poll_interval=2, clock=clock, sleep=clock.sleep).wait(['a'])
    assert clock.sleeps == [1.75, 1.75]  # one poll interval from request to request


def test_on_first_sees_the_first_answer_once():
    seen = []
    answers = [([rec('a', 'running')], None), ([rec('a', 'completed')], None)]
    clock = Clock()
    DumpWaiter(lambda ids, wait, marker: answers.pop(0), timeout=60, poll_interval=1, clock=clock,
               sleep=clock.sleep).wait(['a'], on_first=seen.append)
    assert seen == [[rec('a', 'running')]]

    def reject(found):
        raise ValueError('unknown')
    with pytest.raises(ValueError):
        DumpWaiter(lambda ids, wait, marker: ([], None), timeout=60, poll_interval=1, clock=clock,
                   sleep=clock.sleep).wait(['a'], on_first=reject)
