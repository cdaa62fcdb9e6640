# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""memdump_trigger against the fake service: one request, the answer trusted, broken answers handled.

The reuse rules themselves are the service's; tests/integration/test_trigger_reuse.py checks the
module against the real service.
"""

from __future__ import annotations

import json
import uuid

from ansible_collections.vmforensics.memdump.plugins.modules import memdump_trigger


def posts(svc):
    return [r[3] for r in svc.requests if r[0] == 'POST']


def test_posts_once_and_returns_records(fake_service, run_module):
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01', 'web01'], 'label': 'IR-1'})
    assert result['changed'] is True
    assert [d['vm'] for d in result['dumps']] == ['web01', 'db01']
    assert all(d['created'] and d['state'] == 'queued' and d['label'] == 'IR-1' for d in result['dumps'])
    assert result['dump_ids'] == dict((d['vm'], d['dump_id']) for d in result['dumps'])
    assert result['created'] == ['web01', 'db01']
    # One request: method auto goes as it is (a re-run of an incident costs one request per host)
    assert [r[:2] for r in fake_service.requests] == [('POST', '/api/dumps')]
    (body,) = posts(fake_service)
    assert body['vms'] == ['web01', 'db01'] and body['label'] == 'IR-1' and body['force'] is False
    assert 'dry_run' not in body
    assert str(uuid.UUID(body['request_id'])) == body['request_id'] == result['request_id']


def test_created_comes_from_the_answer(fake_service, run_module):
    # A completed dump with the label is listed, but only the service's answer decides: here it starts a new one.
    listed = fake_service.add('db01', 'completed', label='IR-1')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1',
                                          'force': True, 'format': 'kdump-zlib'})
    assert result['changed'] is True and result['created'] == ['web01', 'db01']
    assert result['dump_ids']['db01'] != listed['dump_id']
    (body,) = posts(fake_service)
    assert body['vms'] == ['web01', 'db01'] and body['force'] is True and body['format'] == 'kdump-zlib'
    # Now the service answers with existing dumps (created: false) for both.
    fake_service.reused = {'web01': fake_service.dumps[-2], 'db01': listed}
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'})
    assert result['changed'] is False and result['created'] == []
    assert result['dump_ids']['db01'] == listed['dump_id'] and result['dumps'][1]['created'] is False
    assert result['request_id'] is None  # it started nothing
    assert len(posts(fake_service)) == 2


def test_answer_without_created_counts_as_created(fake_service, run_module):
    fake_service.core_only = True
    for dummy in range(2):  # such a service starts a dump per request, so every run is a change
        result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'IR-1'})
        assert result['changed'] is True and result['dumps'][0]['created'] is True
        assert result['request_id'] is not None
    assert len(posts(fake_service)) == 2


def test_check_mode_asks_for_a_dry_run(fake_service, run_module):
    done = fake_service.add('db01', 'completed', label='IR-1')
    fake_service.reused = {'db01': done}
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'},
                        check_mode=True)
    assert result['changed'] is True and result['created'] == ['web01']
    assert result['dump_ids'] == {'web01': None, 'db01': done['dump_id']}
    assert result['request_id'] is None
    (body,) = posts(fake_service)
    assert body['dry_run'] is True and 'request_id' not in body
    assert len(fake_service.dumps) == 1  # nothing created
    fake_service.reused['web01'] = fake_service.add('web01', 'running', label='IR-1')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'},
                        check_mode=True)
    assert result['changed'] is False


def test_check_mode_without_dry_run_feature_sends_nothing(fake_service, run_module):
    fake_service.features = ['wait', 'label', 'request_id']  # this service would ignore dry_run and dump
    fake_service.add('db01', 'completed', label='IR-1')  # the service might reuse it; only a dry run could tell
    for core_only in (False, True):  # /health without the feature, and no /health at all (404)
        fake_service.core_only = core_only
        result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'},
                            check_mode=True)
        assert result['changed'] is True and result['created'] == ['web01', 'db01']
        assert result['dump_ids'] == {'web01': None, 'db01': None}
    assert not posts(fake_service) and len(fake_service.dumps) == 1


def test_dropped_connection_retries_with_same_request_id(fake_service, run_module, monkeypatch):
    monkeypatch.setattr(memdump_trigger, 'POST_RETRY_DELAY', 0.01)
    fake_service.drop_posts = 1
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01'], 'label': 'IR-1'})
    assert result['changed'] is True
    bodies = posts(fake_service)
    assert len(bodies) == 2
    assert bodies[0]['request_id'] == bodies[1]['request_id'] == result['request_id']
    # The result is the retry's answer (the fake has no request_id memory: that is the service's job).
    assert sorted(result['dump_ids'].values()) == sorted(d['dump_id'] for d in fake_service.dumps[2:])


def test_answer_missing_a_vm_fails_naming_it(fake_service, run_module):
    fake_service.raw_answers[('POST', '/api/dumps')] = (202, json.dumps({'dumps': [{'vm': 'web01', 'dump_id': 'a' * 32}]}).encode())
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01', 'db01']})
    assert result['failed'] and 'did not return a dump for VM db01' in result['msg']
    assert fake_service.url in result['msg'] and 'request_id' in result['msg']


def test_answer_not_json_fails(fake_service, run_module):
    fake_service.raw_answers[('POST', '/api/dumps')] = (202, b'<html>accepted</html>')
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01']})
    assert result['failed'] and 'not JSON' in result['msg'] and result['status'] == 202
    assert result['url'] == fake_service.url + '/api/dumps'


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
    assert result['status'] == 401
    monkeypatch.setenv('MEMDUMP_SERVICE_TOKEN', 's3cret')
    monkeypatch.setenv('MEMDUMP_SERVICE_URL', fake_service.url)
    monkeypatch.setenv('MEMDUMP_SERVICE_TIMEOUT', '7')
    result = run_module(memdump_trigger, {'vms': ['web01']})
    assert result['changed'] is True
    assert result['invocation']['module_args']['request_timeout'] == 7.0
    assert 's3cret' not in repr(result)


def test_http_error_carries_status_and_detail(fake_service, run_module):
    detail = {'detail': 'label must be 1-128 characters of [A-Za-z0-9._:@+-]'}
    fake_service.raw_answers[('POST', '/api/dumps')] = (400, json.dumps(detail).encode())
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'bad label'})
    assert result['failed']
    assert 'HTTP 400' in result['msg'] and 'label must be 1-128 characters' in result['msg']
    assert result['status'] == 400


def test_method_auto_is_the_default(fake_service, run_module):
    run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01']})
    run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['db01'], 'method': 'live'})
    run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['app01'], 'method': 'memory-only', 'format': 'kdump-zlib'})
    default, live, memory_only = posts(fake_service)
    assert default['method'] == 'auto' and 'format' not in default
    assert live['method'] == 'live' and 'format' not in live
    assert 'method' not in memory_only and memory_only['format'] == 'kdump-zlib'  # the service's default


def test_auto_on_a_service_without_it_sends_no_method(fake_service, run_module):
    """The service's default (memory-only) is what auto ends in where the service cannot tell: an older memdump
    service refuses auto, gets the request again without a method, and a warning names it; a service with only
    the core API ignores the field."""
    fake_service.methods = ['memory-only', 'live']
    older = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'format': 'kdump-zlib'})
    assert older['changed'] is True and older['created'] == ['web01']
    assert [w for w in older.get('warnings', []) if 'offers no method auto' in w and fake_service.url in w]
    refused, again = posts(fake_service)
    assert refused['method'] == 'auto' and 'method' not in again and again['format'] == 'kdump-zlib'
    assert again['request_id'] == refused['request_id'] == older['request_id']
    assert len(fake_service.dumps) == 1
    fake_service.methods, fake_service.core_only = None, True
    core = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['db01']})
    assert core['changed'] is True and not core.get('warnings')
    assert len(posts(fake_service)) == 3


def test_a_refusal_that_is_not_about_the_method_is_not_sent_again(fake_service, run_module):
    detail = {'detail': [{'loc': ['body', 'label'], 'msg': 'label must be 1-128 characters', 'type': 'value_error'}]}
    fake_service.raw_answers[('POST', '/api/dumps')] = (422, json.dumps(detail).encode())
    result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'label': 'IR-1'})
    assert result['failed'] and 'label must be 1-128 characters' in result['msg']
    assert [r[:2] for r in fake_service.requests] == [('POST', '/api/dumps')]


def test_live_refused_before_sending_when_the_service_does_not_offer_it(fake_service, run_module):
    for methods, core_only in ((['memory-only'], False), (None, False), (None, True)):  # older service, no /health
        fake_service.methods, fake_service.core_only = methods, core_only
        result = run_module(memdump_trigger, {'url': fake_service.url, 'vms': ['web01'], 'method': 'live'})
        assert result['failed'] is True
        assert 'does not offer live dumps' in result['msg'] and 'use method memory-only' in result['msg']
    assert not posts(fake_service)
