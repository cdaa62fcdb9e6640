# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.vmforensics.memdump.plugins.module_utils._client import (
    MemdumpAuthError,
    MemdumpClient,
    MemdumpConnectionError,
    MemdumpError,
    MemdumpHTTPError,
    dumps_of,
    marker_of,
)
from ansible_collections.vmforensics.memdump.plugins.module_utils._module import (
    CONNECTION_ARGSPEC,
    generate_argspec,
    wait_argspec,
)


def test_answers_list_or_dict():
    assert dumps_of([{'dump_id': 'a'}]) == [{'dump_id': 'a'}]
    assert dumps_of({'dumps': [], 'marker': 3}) == []
    assert marker_of({'dumps': [], 'marker': 3}) == 3
    assert marker_of([]) is None and marker_of({'dumps': []}) is None and marker_of({'marker': True}) is None
    with pytest.raises(MemdumpError, match='unexpected answer'):
        dumps_of({'detail': 'x'})


def test_list_and_create(fake_service):
    client = MemdumpClient(fake_service.url + '/')
    assert client.url == fake_service.url
    dumps, marker = client.create_dumps(['web01'], label='IR-1', fmt='elf', request_id='r1')
    assert dumps[0]['created'] is True and marker == 1
    found, marker2, raw = client.list_dumps(vms=['web01'], label='IR-1')
    assert [d['dump_id'] for d in found] == [dumps[0]['dump_id']] and marker2 == 1 and 'vms' in raw
    fake_service.list_answer = True
    found, marker3, raw = client.list_dumps(dump_ids=[dumps[0]['dump_id']])
    assert len(found) == 1 and marker3 is None and isinstance(raw, list)


def test_errors(fake_service, closed_url):
    with pytest.raises(MemdumpConnectionError) as e:
        MemdumpClient(closed_url, timeout=2).list_dumps()
    assert closed_url in str(e.value) and 'MEMDUMP_SERVICE_URL' in str(e.value)
    fake_service.token = 't'
    with pytest.raises(MemdumpAuthError, match='set token or MEMDUMP_SERVICE_TOKEN'):
        MemdumpClient(fake_service.url).list_dumps()
    assert MemdumpClient(fake_service.url, token='t').health()['auth'] is True
    with pytest.raises(MemdumpHTTPError) as e:
        MemdumpClient(fake_service.url, token='t').request('GET', '/nope')
    assert e.value.status == 404 and 'HTTP 404: Not Found' in str(e.value)


def test_health_503_is_returned(fake_service):
    fake_service.health_status = 503
    assert MemdumpClient(fake_service.url).health()['status'] == 'unavailable'


def test_argspecs():
    spec = generate_argspec(vms=dict(type='list'))
    assert set(spec) == set(CONNECTION_ARGSPEC) | {'vms'}
    assert spec['token']['no_log'] is True and spec['timeout']['aliases'] == ['request_timeout']
    spec = wait_argspec(timeout=dict(type='float', default=3600, aliases=['wait_timeout']))
    assert spec['timeout']['default'] == 3600 and spec['request_timeout']['default'] == 30
    assert 'aliases' not in spec['request_timeout']
    assert CONNECTION_ARGSPEC['timeout']['aliases'] == ['request_timeout']  # not mutated
