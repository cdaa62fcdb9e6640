# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json

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
from ansible_collections.vmforensics.memdump.plugins.module_utils._module import CONNECTION_ARGSPEC, generate_argspec


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
    dumps = client.create_dumps(['web01'], label='IR-1', fmt='elf', request_id='r1')
    assert dumps[0]['created'] is True
    assert fake_service.requests[-1][3] == {'vms': ['web01'], 'force': False, 'label': 'IR-1', 'format': 'elf',
                                            'request_id': 'r1'}
    client.create_dumps(['web01'], dry_run=True)
    assert fake_service.requests[-1][3] == {'vms': ['web01'], 'force': False, 'dry_run': True}
    found, marker = client.list_dumps(vms=['web01'], label='IR-1')
    assert [d['dump_id'] for d in found] == [dumps[0]['dump_id']] and marker == 1
    fake_service.list_answer = True
    found, marker = client.list_dumps(dump_ids=[dumps[0]['dump_id']])
    assert len(found) == 1 and marker is None


def test_list_all_dumps_follows_next_before(fake_service):
    added = [fake_service.add('vm%d' % i) for i in range(5)]
    newest_first = [r['dump_id'] for r in reversed(added)]
    client = MemdumpClient(fake_service.url)
    assert [d['dump_id'] for d in client.list_all_dumps()] == newest_first
    assert len(fake_service.requests) == 1  # no paging: one request
    fake_service.page_size = 2
    assert [d['dump_id'] for d in client.list_all_dumps()] == newest_first
    befores = [q.get('before') for dummy, dummy2, q, dummy3 in fake_service.requests[1:]]
    assert befores == [None, [newest_first[1]], [newest_first[3]]]


def test_list_all_dumps_stops_at_a_page_pointing_at_itself(fake_service):
    page = {'dumps': [{'dump_id': 'x'}], 'next_before': 'x'}
    fake_service.raw_answers[('GET', '/api/dumps')] = (200, json.dumps(page).encode())
    assert MemdumpClient(fake_service.url).list_all_dumps() == [{'dump_id': 'x'}, {'dump_id': 'x'}]
    assert len(fake_service.requests) == 2


def test_features(fake_service, closed_url):
    client = MemdumpClient(fake_service.url)
    assert client.features() == frozenset(['wait', 'label', 'request_id', 'dry_run'])
    fake_service.health_status = 503  # libvirt down: the answer still lists them
    assert 'wait' in client.features()
    fake_service.raw_answers[('GET', '/health')] = (200, b'<html>memdump</html>')
    assert client.features() == frozenset()
    fake_service.raw_answers[('GET', '/health')] = (500, b'oops')
    assert client.features() == frozenset()
    fake_service.core_only = True
    del fake_service.raw_answers[('GET', '/health')]
    assert client.features() == frozenset()  # 404: a service without /health
    with pytest.raises(MemdumpConnectionError):
        MemdumpClient(closed_url, timeout=2).features()


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
    fake_service.raw_answers[('GET', '/api/dumps')] = (200, b'<html>proxy login</html>')
    with pytest.raises(MemdumpError, match='not JSON'):
        MemdumpClient(fake_service.url, token='t').list_dumps()


def test_health_503_is_returned(fake_service):
    fake_service.health_status = 503
    assert MemdumpClient(fake_service.url).health()['status'] == 'unavailable'


def test_argspec():
    spec = generate_argspec(vms=dict(type='list'))
    assert set(spec) == set(CONNECTION_ARGSPEC) | {'vms'}
    assert spec['token']['no_log'] is True
    assert spec['request_timeout']['default'] == 30 and 'aliases' not in spec['request_timeout']
    assert spec['request_timeout']['fallback'][1] == ['MEMDUMP_SERVICE_TIMEOUT']
    spec['request_timeout']['default'] = 1
    assert CONNECTION_ARGSPEC['request_timeout']['default'] == 30  # not mutated


class _Recorder(object):
    """Two loopback servers: a hostile memdump service that redirects every request elsewhere, and the
    other host, which records the Authorization headers that reach it."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        seen = self.seen = []

        class Elsewhere(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                seen.append(self.headers.get('Authorization'))
                self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.end_headers()
                self.wfile.write(b'{"dumps": []}')

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.elsewhere = ThreadingHTTPServer(('127.0.0.2', 0), Elsewhere)
        target = 'http://127.0.0.2:%d' % self.elsewhere.server_address[1]

        class Redirecting(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(302)
                self.send_header('Location', target + self.path)
                self.send_header('Content-Length', '0')
                self.end_headers()

            do_POST = do_DELETE = do_GET

            def log_message(self, *args):
                pass

        self.service = ThreadingHTTPServer(('127.0.0.1', 0), Redirecting)
        self.url = 'http://127.0.0.1:%d' % self.service.server_address[1]
        for server in (self.elsewhere, self.service):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self):
        for server in (self.elsewhere, self.service):
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize('call', ['list', 'create', 'file'])
def test_a_redirect_is_refused_and_the_token_never_leaves(call):
    servers = _Recorder()
    try:
        client = MemdumpClient(servers.url, token='secret-token')
        with pytest.raises(MemdumpHTTPError) as caught:
            if call == 'list':
                client.list_dumps(vms=['web01'])
            elif call == 'create':
                client.create_dumps(['web01'])
            else:
                client.open_file('a' * 32, offset=10)
        assert caught.value.status == 302
        assert 'not followed' in caught.value.msg and '127.0.0.2' in caught.value.msg
        assert servers.seen == []
    finally:
        servers.close()
