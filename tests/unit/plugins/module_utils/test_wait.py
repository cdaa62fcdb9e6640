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


class Health(object):
    """A fake ``holds_requests``: answers in turn (an exception is raised), counting the calls."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def waiter(fetch, health, clock, wait_timeout=600, wait_sleep=5):
    return DumpWaiter(fetch, health, wait_timeout=wait_timeout, wait_sleep=wait_sleep, clock=clock, sleep=clock.sleep)


def test_long_polls_when_the_service_holds_requests():
    clock = Clock()
    calls = []
    answers = [([rec('a', 'queued')], 1), ([rec('a', 'running')], 2), ([rec('a', 'completed')], 3)]

    def fetch(ids, wait, marker):
        calls.append((wait, marker))
        clock.now += 0.5 if wait else 0.0  # the service holds the request
        return answers.pop(0)

    health = Health(True)
    records, elapsed = waiter(fetch, health, clock).wait(['a'])
    assert records['a']['state'] == 'completed'
    assert calls == [(None, None), (60.0, 1), (60.0, 2)]
    assert health.calls == 1 and clock.sleeps == [] and elapsed == 1.0


def test_a_hold_that_expires_is_followed_by_the_next_at_once():
    clock = Clock()
    calls = []
    # Nothing changes for two holds of 60 s, then the dump completes during the third.
    answers = [([rec('a', 'running')], 4), ([rec('a', 'running')], 4), ([rec('a', 'running')], 4),
               ([rec('a', 'completed')], 5)]

    def fetch(ids, wait, marker):
        calls.append(wait)
        clock.now += 60.0 if wait else 0.0
        return answers.pop(0)

    records, elapsed = waiter(fetch, Health(True), clock, wait_sleep=300).wait(['a'])
    assert records['a']['state'] == 'completed'
    assert calls == [None, 60.0, 60.0, 60.0]
    assert clock.sleeps == [] and elapsed == 180.0  # no wait_sleep after a hold, however long wait_sleep is


def test_polls_every_wait_sleep_when_the_service_does_not_hold():
    clock = Clock()
    calls = []
    # The answers carry a marker, but /health does not list "wait": never ask the service to hold.
    answers = [([rec('a', 'running')], 7)] * 3 + [([rec('a', 'completed')], 8)]

    def fetch(ids, wait, marker):
        calls.append((wait, marker))
        return answers.pop(0)

    health = Health(False)
    waiter(fetch, health, clock).wait(['a'])
    assert calls == [(None, None)] * 4
    assert clock.sleeps == [5, 5, 5] and health.calls == 1


def test_long_polls_need_a_marker():
    clock = Clock()
    calls = []
    answers = [([rec('a', 'running')], None)] * 2 + [([rec('a', 'completed')], None)]

    def fetch(ids, wait, marker):
        calls.append(wait)
        return answers.pop(0)

    waiter(fetch, Health(True), clock).wait(['a'])
    assert calls == [None, None, None] and clock.sleeps == [5, 5]


def test_final_dumps_cost_one_request_and_no_health():
    clock = Clock()
    health = Health(True)
    records, dummy = waiter(lambda ids, wait, marker: ([rec('a', 'completed')], 3), health, clock).wait(['a'])
    assert records['a']['state'] == 'completed' and health.calls == 0


def test_health_connection_error_is_retried():
    clock = Clock()
    calls = []
    answers = [([rec('a', 'running')], 1), ([rec('a', 'completed')], 2)]

    def fetch(ids, wait, marker):
        calls.append(wait)
        return answers.pop(0)

    health = Health(MemdumpConnectionError('down'), True)
    waiter(fetch, health, clock, wait_sleep=2).wait(['a'])
    assert health.calls == 2 and clock.sleeps == [2] and calls == [None, 60.0]
    with pytest.raises(WaitTimeout) as e:
        waiter(lambda ids, wait, marker: ([rec('a', 'running')], 1), Health(MemdumpConnectionError('refused')), clock,
               wait_timeout=3, wait_sleep=1).wait(['a'])
    assert 'refused' in e.value.msg and 'a (running' in e.value.msg


def test_hold_never_outlasts_the_deadline():
    clock = Clock()
    calls = []

    def fetch(ids, wait, marker):
        calls.append(wait)
        clock.now += wait or 0.0
        return [rec('a', 'running')], 1

    with pytest.raises(WaitTimeout):
        waiter(fetch, Health(True), clock, wait_timeout=100).wait(['a'])
    assert calls == [None, 60.0, 40.0]


def test_timeout_names_pending_with_progress():
    clock = Clock()
    w = waiter(lambda ids, wait, marker: ([rec('a', 'running', 'web01', 12.5), rec('b', 'completed')], None),
               Health(False), clock, wait_timeout=12)
    with pytest.raises(WaitTimeout) as e:
        w.wait(['a', 'b'], url='http://svc')
    assert 'web01 (running, 12.5%, dump a)' in e.value.msg and 'http://svc' in e.value.msg
    assert 'wait_timeout=12' in e.value.msg
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

    records, dummy = waiter(fetch, Health(False), clock, wait_timeout=60, wait_sleep=1).wait(['a'])
    assert records['a']['state'] == 'completed' and clock.sleeps == [1, 1]

    def down(ids, wait, marker):
        raise MemdumpConnectionError('connection refused')
    with pytest.raises(WaitTimeout) as e:
        waiter(down, Health(False), clock, wait_timeout=3, wait_sleep=1).wait(['a'])
    assert 'connection refused' in e.value.msg and 'a (unknown' in e.value.msg


def test_describe_pending():
    assert describe_pending({'vm': 'x', 'state': 'queued'}) == 'x (queued)'


def test_on_first_sees_the_first_answer_once():
    seen = []
    answers = [([rec('a', 'running')], None), ([rec('a', 'completed')], None)]
    clock = Clock()
    waiter(lambda ids, wait, marker: answers.pop(0), Health(False), clock, wait_timeout=60,
           wait_sleep=1).wait(['a'], on_first=seen.append)
    assert seen == [[rec('a', 'running')]]

    def reject(found):
        raise ValueError('unknown')
    with pytest.raises(ValueError):
        waiter(lambda ids, wait, marker: ([], None), Health(False), clock, wait_timeout=60,
               wait_sleep=1).wait(['a'], on_first=reject)
