# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import time

import pytest

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpConnectionError
from ansible_collections.vmforensics.memdump.plugins.modules import memdump_info, memdump_records, memdump_trigger, memdump_wait


def gets(svc):
    return [r[2] for r in svc.requests if r[0] == 'GET' and r[1] == '/api/dumps']


def health_requests(svc):
    return [r for r in svc.requests if r[1] == '/health']


def test_waits_for_trigger_records_with_long_poll(fake_service, run_module):
    fake_service.finish_on_long_poll = 0.3  # completes only once a request is held
    trig = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'})
    start = time.monotonic()
    del fake_service.requests[:]
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': trig['dumps'], 'wait_sleep': 30})
    took = time.monotonic() - start
    assert result['changed'] is False
    assert result['completed'] == ['web01', 'db01'] and result['failed_vms'] == [] and result['pending'] == []
    assert all(d['state'] == 'completed' and d['sha256'] and d['dump_path'] for d in result['dumps'])
    assert 0.25 < result['elapsed'] < 10 and took < 25  # noticed long before wait_sleep
    # /health once, one look, one held request: P2's three.
    assert [r[1] for r in fake_service.requests] == ['/api/dumps', '/health', '/api/dumps']
    assert 'marker' in gets(fake_service)[1] and 'wait' in gets(fake_service)[1]


def test_final_dumps_cost_one_request(fake_service, run_module):
    a = fake_service.add('web01', 'completed')
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a]})
    assert result['completed'] == ['web01'] and len(fake_service.requests) == 1 and not health_requests(fake_service)


def test_accepts_dump_ids_dict_list_of_ids_and_whole_result(fake_service, run_module):
    a = fake_service.add('web01', 'completed')
    b = fake_service.add('db01', 'completed')
    for dumps in ({'web01': a['dump_id'], 'db01': b['dump_id']}, [a['dump_id'], b['dump_id']],
                  {'dumps': [a, b], 'changed': True}):
        result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': dumps})
        assert sorted(result['completed']) == ['db01', 'web01'], dumps
        assert [d['dump_id'] for d in result['dumps']] == [a['dump_id'], b['dump_id']]


def test_vms_and_label_pick_newest_with_label(fake_service, run_module):
    fake_service.add('web01', 'completed', label='IR-1')
    newest = fake_service.add('web01', 'completed', label='IR-1')
    fake_service.add('web01', 'failed', label='IR-2')
    result = run_module(memdump_wait, {'url': fake_service.url, 'vms': ['web01'], 'label': 'IR-1'})
    assert result['dump_ids'] == {'web01': newest['dump_id']}
    result = run_module(memdump_wait, {'url': fake_service.url, 'vms': ['web01', 'app01'], 'label': 'IR-1'})
    assert result['failed'] and 'app01' in result['msg'] and 'IR-1' in result['msg']


def test_polling_fallback_against_core_service(fake_service, run_module):
    fake_service.core_only = True
    fake_service.finish_on_get = 3
    trig = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01']})
    asked_by_trigger = len(health_requests(fake_service))
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': trig['dump_ids'], 'wait_sleep': 0.1})
    assert result['completed'] == ['web01']
    queries = [q for q in gets(fake_service) if 'dump_id' in q]
    assert not any('wait' in q for q in queries)
    assert len(queries) == 3  # it polled until the third look found the dump completed
    assert len(health_requests(fake_service)) - asked_by_trigger == 1  # answered 404: no features


@pytest.mark.parametrize('health', ['no wait feature', 'not JSON'])
def test_polls_every_wait_sleep_unless_health_lists_wait(fake_service, run_module, health):
    if health == 'not JSON':
        fake_service.raw_answers[('GET', '/health')] = (200, b'<html>memdump</html>')
    else:
        fake_service.features = ['label', 'request_id']
    fake_service.finish_on_get = 4
    a = fake_service.add('web01', 'running')  # the answers carry a marker all the same
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a], 'wait_sleep': 0.2})
    assert result['completed'] == ['web01']
    queries = gets(fake_service)
    assert len(queries) == 4 and not any('wait' in q for q in queries)
    assert len(health_requests(fake_service)) == 1
    assert result['elapsed'] >= 0.55  # three sleeps of wait_sleep between the four looks


def test_timeout_names_pending_vms_with_progress(fake_service, run_module):
    a = fake_service.add('web01', 'running', progress=42.5)
    b = fake_service.add('db01', 'completed')
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a, b], 'wait_timeout': 0.5})
    assert result['failed']
    assert 'timed out' in result['msg'] and 'web01 (running, 42.5%' in result['msg'] and 'db01' not in result['msg']
    assert fake_service.url in result['msg']
    assert result['pending'] == ['web01'] and result['completed'] == ['db01']


def test_wait_timeout_and_request_timeout(fake_service, run_module, monkeypatch):
    a = fake_service.add('web01', 'queued')
    monkeypatch.setenv('MEMDUMP_SERVICE_TIMEOUT', '5')
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a['dump_id']], 'wait_timeout': 0.3})
    assert result['failed'] and 'timed out' in result['msg'] and result['elapsed'] < 10
    assert 'wait_timeout=0.3' in result['msg']
    assert result['invocation']['module_args']['request_timeout'] == 5.0


@pytest.mark.parametrize('module', [memdump_info, memdump_records, memdump_trigger, memdump_wait])
def test_no_module_has_an_option_called_timeout(fake_service, run_module, module):
    result = run_module(module, {'url': fake_service.url, 'vms': ['web01'], 'timeout': 30})
    assert result['failed'] and 'Unsupported parameters' in result['msg'] and 'timeout' in result['msg']
    assert not fake_service.requests


def test_failed_dumps_named_with_reason_unless_allowed(fake_service, run_module):
    fake_service.fail_vms = {'nosuch': "VM 'nosuch' does not exist on test:///default"}
    fake_service.finish_after = 0.1
    trig = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'nosuch']})
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': trig['dumps']})
    assert result['failed']
    assert "nosuch (dump %s): VM 'nosuch' does not exist" % trig['dump_ids']['nosuch'] in result['msg']
    assert result['failed_vms'] == ['nosuch'] and result['completed'] == ['web01']
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': trig['dumps'], 'allow_failed': True})
    assert not result.get('failed') and result['failed_vms'] == ['nosuch']


def test_unknown_dump_id(fake_service, run_module):
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': {'web01': 'f' * 32}})
    assert result['failed'] and 'not known' in result['msg'] and 'f' * 32 in result['msg'] and 'web01' in result['msg']


def test_check_mode_returns_current_state_without_waiting(fake_service, run_module):
    a = fake_service.add('web01', 'running', progress=10.0)
    start = time.monotonic()
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a, {'vm': 'db01', 'dump_id': None}]},
                        check_mode=True)
    assert time.monotonic() - start < 3
    assert not result.get('failed') and result['pending'] == ['web01', 'db01']
    assert result['dumps'][0]['state'] == 'running'
    assert not any('wait' in q for q in gets(fake_service))


def test_connection_errors_are_retried_until_deadline(closed_url, run_module):
    start = time.monotonic()
    result = run_module(memdump_wait, {'url': closed_url, 'dumps': ['a' * 32], 'wait_timeout': 1, 'wait_sleep': 0.1})
    assert time.monotonic() - start >= 1
    assert result['failed'] and 'timed out' in result['msg'] and closed_url in result['msg']
    assert 'cannot reach the memdump service' in result['msg'] and result['pending'] == ['a' * 32]


def test_transient_error_during_wait_is_retried(fake_service, run_module, monkeypatch):
    a = fake_service.add('web01', 'running')
    real = memdump_wait.MemdumpModule.client.fget
    calls = {'n': 0}

    def flaky_client(module):
        client = real(module)
        if not getattr(client, 'flaky', False):
            orig = client.list_dumps

            def list_dumps(*args, **kwargs):
                calls['n'] += 1
                if calls['n'] in (2, 3):  # the first look works, then the connection drops twice
                    raise MemdumpConnectionError('connection reset')
                if calls['n'] == 4:
                    fake_service.set_state(a['dump_id'], 'completed')
                return orig(*args, **kwargs)
            client.list_dumps = list_dumps
            client.flaky = True
        return client

    monkeypatch.setattr(memdump_wait.MemdumpModule, 'client', property(flaky_client))
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a], 'wait_sleep': 0.1, 'wait_timeout': 30})
    assert result['completed'] == ['web01'] and calls['n'] == 4
