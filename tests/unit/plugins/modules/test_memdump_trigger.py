# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import uuid

from ansible_collections.vmforensics.memdump.plugins.modules import memdump_trigger


def posts(svc):
    return [r[3] for r in svc.requests if r[0] == 'POST']


def test_creates_dumps_and_returns_records(fake_service, run_module):
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01', 'web01'], 'label': 'IR-1'})
    assert result['changed'] is True
    assert [d['vm'] for d in result['dumps']] == ['web01', 'db01']
    assert all(d['created'] and d['state'] == 'queued' and d['label'] == 'IR-1' for d in result['dumps'])
    assert result['dump_ids'] == dict((d['vm'], d['dump_id']) for d in result['dumps'])
    assert result['created'] == ['web01', 'db01']
    (body,) = posts(fake_service)
    assert body['vms'] == ['web01', 'db01'] and body['label'] == 'IR-1' and body['force'] is False
    assert str(uuid.UUID(body['request_id'])) == body['request_id'] == result['request_id']


def test_same_label_after_completion_is_not_changed(fake_service, run_module):
    done = fake_service.add('web01', 'completed', label='IR-1')
    fake_service.add('web01', 'completed', label='IR-other')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'IR-1'})
    assert result['changed'] is False
    assert result['dump_ids'] == {'web01': done['dump_id']}
    assert result['dumps'][0]['created'] is False
    assert result['request_id'] is None
    assert not posts(fake_service)


def test_in_flight_dump_is_reused_even_with_force(fake_service, run_module):
    running = fake_service.add('web01', 'running', label='IR-1')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'IR-2', 'force': True})
    assert result['changed'] is False
    assert result['dump_ids'] == {'web01': running['dump_id']}


def test_failed_dump_is_dumped_again_and_force_redumps(fake_service, run_module):
    fake_service.add('web01', 'failed', label='IR-1')
    fake_service.add('db01', 'completed', label='IR-1')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'})
    assert result['changed'] is True
    assert result['created'] == ['web01']
    assert posts(fake_service)[0]['vms'] == ['web01']
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['db01'], 'label': 'IR-1', 'force': True,
                                          'format': 'kdump-zlib'})
    assert result['changed'] is True and result['dumps'][0]['format'] == 'kdump-zlib'


def test_check_mode_predicts_without_posting(fake_service, run_module):
    done = fake_service.add('db01', 'completed', label='IR-1')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'},
                        check_mode=True)
    assert result['changed'] is True
    assert result['created'] == ['web01']
    assert result['dump_ids'] == {'web01': None, 'db01': done['dump_id']}
    assert not posts(fake_service)
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['db01'], 'label': 'IR-1'}, check_mode=True)
    assert result['changed'] is False


def test_dropped_connection_retries_with_same_request_id(fake_service, run_module, monkeypatch):
    monkeypatch.setattr(memdump_trigger, 'POST_RETRY_DELAY', 0.01)
    fake_service.drop_posts = 1
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'})
    assert result['changed'] is True
    bodies = posts(fake_service)
    assert len(bodies) == 2
    assert bodies[0]['request_id'] == bodies[1]['request_id'] == result['request_id']
    assert len(fake_service.dumps) == 2  # the retry created nothing more
    assert sorted(result['dump_ids'].values()) == sorted(d['dump_id'] for d in fake_service.dumps)


def test_core_api_only_service(fake_service, run_module):
    fake_service.core_only = True
    old = fake_service.add('web01', 'completed')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'IR-1'})
    # No labels on a core service: a completed dump is not this incident's; created is inferred.
    assert result['changed'] is True
    assert result['dumps'][0]['created'] is True and result['dump_ids']['web01'] != old['dump_id']
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'IR-1'})
    assert result['changed'] is False  # in flight: reused, inferred from the earlier GET


def test_unreachable_names_url(closed_url, run_module, monkeypatch):
    monkeypatch.setattr(memdump_trigger, 'POST_RETRY_DELAY', 0.01)
    result = run_module(memdump_trigger, {'url': closed_url, 'vms': ['web01']})
    assert result['failed']
    assert closed_url in result['msg'] and 'cannot reach the memdump service' in result['msg']
    assert 'refused' in result['msg'].lower()


def test_token_missing_and_env_fallbacks(fake_service, run_module, monkeypatch):
    fake_service.token = 's3cret'
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01']})
    assert result['failed'] and 'set token or MEMDUMP_SERVICE_TOKEN' in result['msg'] and '401' in result['msg']
    monkeypatch.setenv('MEMDUMP_SERVICE_TOKEN', 's3cret')
    monkeypatch.setenv('MEMDUMP_SERVICE_URL', fake_service.url)
    monkeypatch.setenv('MEMDUMP_SERVICE_TIMEOUT', '7')
    result = run_module(memdump_trigger, {'vms': ['web01']})
    assert result['changed'] is True
    assert 's3cret' not in repr(result)


def test_http_error_carries_status_and_detail(fake_service, run_module):
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'bad label'})
    assert result['failed']
    assert 'HTTP 422' in result['msg'] and 'label must be 1-128 characters' in result['msg']
    assert result['status'] == 422
