# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import time

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpConnectionError
from ansible_collections.vmforensics.memdump.plugins.modules import memdump_trigger, memdump_wait


def gets(svc):
    return [r[2] for r in svc.requests if r[0] == 'GET' and r[1] == '/api/dumps']


def test_waits_for_trigger_records_with_long_poll(fake_service, run_module):
    fake_service.finish_on_long_poll = 0.3  # completes only once a request is held
    trig = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'})
    start = time.monotonic()
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': trig['dumps'], 'poll_interval': 30})
    took = time.monotonic() - start
    assert result['changed'] is False
    assert result['completed'] == ['web01', 'db01'] and result['failed_vms'] == [] and result['pending'] == []
    assert all(d['state'] == 'completed' and d['sha256'] and d['dump_path'] for d in result['dumps'])
    assert 0.25 < result['elapsed'] < 10 and took < 25  # noticed long before poll_interval
    assert any('marker' in q and 'wait' in q for q in gets(fake_service))


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
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': trig['dump_ids'], 'poll_interval': 0.1})
    assert result['completed'] == ['web01']
    queries = [q for q in gets(fake_service) if 'dump_id' in q]
    assert not any('wait' in q for q in queries)
    assert len(queries) == 3  # it polled until the third look found the dump completed


def test_service_that_ignores_wait_falls_back_to_interval(fake_service, run_module):
    fake_service.hold = False  # answers carry a marker but are never held
    fake_service.finish_on_get = 4
    trig = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01']})
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': trig['dumps'], 'poll_interval': 0.2})
    assert result['completed'] == ['web01']
    assert len([q for q in gets(fake_service) if 'dump_id' in q]) == 4
    assert result['elapsed'] >= 0.3  # it slept between the early answers instead of spinning


def test_timeout_names_pending_vms_with_progress(fake_service, run_module):
    a = fake_service.add('web01', 'running', progress=42.5)
    b = fake_service.add('db01', 'completed')
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a, b], 'timeout': 0.5})
    assert result['failed']
    assert 'timed out' in result['msg'] and 'web01 (running, 42.5%' in result['msg'] and 'db01' not in result['msg']
    assert fake_service.url in result['msg']
    assert result['pending'] == ['web01'] and result['completed'] == ['db01']


def test_wait_timeout_alias_and_request_timeout(fake_service, run_module):
    a = fake_service.add('web01', 'queued')
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a['dump_id']], 'wait_timeout': 0.3,
                                       'request_timeout': 5})
    assert result['failed'] and 'timed out' in result['msg'] and result['elapsed'] < 10


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
    result = run_module(memdump_wait, {'url': closed_url, 'dumps': ['a' * 32], 'timeout': 1, 'poll_interval': 0.1})
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
    result = run_module(memdump_wait, {'url': fake_service.url, 'dumps': [a], 'poll_interval': 0.1, 'timeout': 30})
    assert result['completed'] == ['web01'] and calls['n'] == 4
