# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible_collections.vmforensics.memdump.plugins.modules import memdump_info


def test_lists_all_and_filters(fake_service, run_module):
    a = fake_service.add('web01', 'completed', label='IR-1')
    b = fake_service.add('db01', 'failed', label='IR-1')
    c = fake_service.add('web01', 'running', label='IR-2')
    result = run_module(memdump_info, {'url': fake_service.url})
    assert result['changed'] is False
    assert [d['dump_id'] for d in result['dumps']] == [c['dump_id'], b['dump_id'], a['dump_id']]
    assert result['vms'] == {'web01': [c['dump_id'], a['dump_id']], 'db01': [b['dump_id']]}
    assert result['service']['status'] == 'ok' and result['service']['url'] == fake_service.url
    assert [d['dump_id'] for d in run_module(memdump_info, {'url': fake_service.url, 'vms': ['db01']})['dumps']] == [b['dump_id']]
    assert [d['dump_id'] for d in run_module(memdump_info, {'url': fake_service.url, 'label': 'IR-1',
                                                            'state': 'completed'})['dumps']] == [a['dump_id']]
    assert [d['dump_id'] for d in run_module(memdump_info, {'url': fake_service.url,
                                                            'dump_ids': [c['dump_id']]})['dumps']] == [c['dump_id']]


def test_check_mode(fake_service, run_module):
    fake_service.add('web01', 'completed')
    result = run_module(memdump_info, {'url': fake_service.url}, check_mode=True)
    assert len(result['dumps']) == 1 and result['changed'] is False


def test_unreachable_is_a_warning_unless_fail_on_unavailable(closed_url, run_module):
    result = run_module(memdump_info, {'url': closed_url})
    assert not result.get('failed')
    assert result['service']['status'] == 'unavailable' and closed_url in result['service']['error']
    assert result['dumps'] == []
    (warning,) = result.get('warnings', [])
    assert 'the memdump service at %s is unavailable' % closed_url in warning and 'refused' in warning.lower()
    result = run_module(memdump_info, {'url': closed_url, 'fail_on_unavailable': True})
    assert result['failed'] and 'the memdump service at %s is unavailable' % closed_url in result['msg']
    assert result['service']['status'] == 'unavailable'


def test_libvirt_down_still_lists_with_a_warning(fake_service, run_module):
    fake_service.health_status = 503
    fake_service.add('web01', 'completed')
    result = run_module(memdump_info, {'url': fake_service.url})
    assert result['service']['status'] == 'unavailable' and result['service']['libvirt']['connected'] is False
    assert len(result['dumps']) == 1
    (warning,) = result.get('warnings', [])
    assert fake_service.url in warning and 'can not reach libvirt: cannot connect to libvirt' in warning
    result = run_module(memdump_info, {'url': fake_service.url, 'fail_on_unavailable': True})
    assert result['failed'] and 'can not reach libvirt' in result['msg']


def test_healthy_service_gives_no_warning(fake_service, run_module):
    result = run_module(memdump_info, {'url': fake_service.url, 'fail_on_unavailable': True})
    assert not result.get('failed') and not result.get('warnings', [])


def test_follows_pages(fake_service, run_module):
    added = [fake_service.add('web01', 'completed') for dummy in range(5)]
    fake_service.page_size = 2
    result = run_module(memdump_info, {'url': fake_service.url, 'vms': ['web01']})
    assert [d['dump_id'] for d in result['dumps']] == [r['dump_id'] for r in reversed(added)]
    assert len([r for r in fake_service.requests if r[1] == '/api/dumps']) == 3


def test_core_service_and_list_answer(fake_service, run_module):
    fake_service.core_only = True
    fake_service.add('web01', 'completed')
    result = run_module(memdump_info, {'url': fake_service.url})
    assert result['service']['status'] == 'ok' and len(result['dumps']) == 1


def test_token_rejected_fails(fake_service, run_module):
    fake_service.token = 'tok'
    result = run_module(memdump_info, {'url': fake_service.url, 'token': 'wrong'})
    assert result['failed'] and 'set token or MEMDUMP_SERVICE_TOKEN' in result['msg']
    result = run_module(memdump_info, {'url': fake_service.url, 'token': 'tok'})
    assert result['service']['auth'] is True
