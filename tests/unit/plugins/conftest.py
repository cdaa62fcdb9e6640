# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit-test fixtures: a small in-process HTTP server that plays the memdump service's answers.

The real service is covered by the integration tests; this one follows docs/api.md closely enough
to drive the modules' real ``main()`` and can misbehave on purpose (drop a connection, answer with
only the core API, never finish a dump).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from ansible.module_utils.testing import patch_module_args

CORE_FIELDS = ('dump_id', 'vm', 'state', 'progress', 'message', 'started_at', 'finished_at', 'duration_sec', 'dump_path')


def now():
    return time.strftime('%Y-%m-%dT%H:%M:%S.000000Z', time.gmtime())


class FakeService(object):
    """State and behaviour switches of the fake memdump service."""

    def __init__(self):
        self.dumps = []  # newest last
        self.marker = 0
        self.cond = threading.Condition()
        self.requests = []  # (method, path, query, body)
        self.token = None
        self.core_only = False  # no marker, no created, list answers, no label reuse
        self.list_answer = False  # GET answers a bare list
        self.drop_posts = 0  # drop the connection after handling this many POSTs
        self.finish_after = None  # seconds after creation a dump completes (None: stays queued)
        self.finish_on_get = None  # the Nth GET naming dump ids completes every pending dump
        self.finish_on_long_poll = None  # seconds after the first held GET every pending dump completes
        self.dump_id_gets = 0
        self.fail_vms = {}  # vm -> failure message
        self.hold = True  # honour wait/marker
        self.health_status = 200
        self.by_request_id = {}
        self.url = None

    # -- state -----------------------------------------------------------------------------------

    def add(self, vm, state='completed', label=None, **extra):
        with self.cond:
            record = self._record(vm, label, state)
            record.update(extra)
            self.dumps.append(record)
            self.marker += 1
            return record

    def _record(self, vm, label, state='queued', fmt='elf'):
        record = {'dump_id': uuid.uuid4().hex, 'vm': vm, 'label': label, 'format': fmt, 'state': state,
                  'progress': 0.0, 'message': state, 'created_at': now(), 'started_at': None,
                  'finished_at': None, 'duration_sec': None, 'dump_path': None, 'size_bytes': None,
                  'sha256': None}
        if state in ('completed', 'failed'):
            self._finish(record, state)
        return record

    def _finish(self, record, state, message=None):
        record.update(state=state, started_at=record['started_at'] or now(), finished_at=now(), duration_sec=0.1,
                      message=message or state)
        if state == 'completed':
            record.update(progress=100.0, dump_path='/dumps/%s.elf' % record['dump_id'], size_bytes=15,
                          sha256='ab' * 32)

    def set_state(self, dump_id, state, message=None, progress=None):
        with self.cond:
            for record in self.dumps:
                if record['dump_id'] == dump_id:
                    if state in ('completed', 'failed'):
                        self._finish(record, state, message)
                    else:
                        record['state'] = state
                    if progress is not None:
                        record['progress'] = progress
            self.marker += 1
            self.cond.notify_all()

    def complete_pending(self):
        for record in list(self.dumps):
            if record['state'] in ('queued', 'running'):
                self.set_state(record['dump_id'], 'completed')

    def _schedule(self, record):
        if record['vm'] in self.fail_vms:
            delay, state, message = self.finish_after or 0.0, 'failed', self.fail_vms[record['vm']]
        elif self.finish_after is None:
            return
        else:
            delay, state, message = self.finish_after, 'completed', None
        timer = threading.Timer(delay, self.set_state, (record['dump_id'], state, message))
        timer.daemon = True
        timer.start()

    # -- API -------------------------------------------------------------------------------------

    def view(self, record, created=None):
        if self.core_only:
            out = dict((k, record.get(k)) for k in CORE_FIELDS)
        else:
            out = dict(record)
        if created is not None and not self.core_only:
            out['created'] = created
        return out

    def post(self, body):
        with self.cond:
            rid = body.get('request_id')
            if rid and not self.core_only and rid in self.by_request_id:
                return 202, {'dumps': [self.view(r, True) for r in self.by_request_id[rid]], 'marker': self.marker}
            label = None if self.core_only else body.get('label')
            out, new = [], []
            for vm in body.get('vms') or body.get('vm_ids') or []:
                mine = [r for r in reversed(self.dumps) if r['vm'] == vm]
                inflight = [r for r in mine if r['state'] in ('queued', 'running')]
                done = [r for r in mine if r['state'] == 'completed' and label and r['label'] == label]
                if inflight:
                    out.append(self.view(inflight[0], False))
                elif done and not body.get('force'):
                    out.append(self.view(done[0], False))
                else:
                    record = self._record(vm, label, 'queued', body.get('format') or 'elf')
                    self.dumps.append(record)
                    new.append(record)
                    out.append(self.view(record, True))
            if rid:
                self.by_request_id[rid] = new
            if new:
                self.marker += 1
            for record in new:
                self._schedule(record)
            answer = {'dumps': out}
            if not self.core_only:
                answer['marker'] = self.marker
            return 202, answer

    def get(self, query):
        wait = float(query.get('wait', ['0'])[0])
        marker = query.get('marker', [None])[0]
        if 'dump_id' in query:
            self.dump_id_gets += 1
            if self.dump_id_gets == self.finish_on_get:
                self.complete_pending()
        with self.cond:
            if wait > 0 and marker is not None and self.hold and not self.core_only:
                if self.finish_on_long_poll is not None:
                    timer = threading.Timer(self.finish_on_long_poll, self.complete_pending)
                    timer.daemon = True
                    timer.start()
                    self.finish_on_long_poll = None
                deadline = time.monotonic() + wait
                while self.marker == int(marker) and time.monotonic() < deadline:
                    self.cond.wait(deadline - time.monotonic())
            found = list(reversed(self.dumps))
            for key in ('vm', 'dump_id', 'label', 'state'):
                if key in query and not (self.core_only and key == 'label'):
                    found = [r for r in found if r.get(key) in query[key]]
            dumps = [self.view(r) for r in found]
            if self.list_answer or self.core_only:
                return 200, dumps
            vms = {}
            for r in dumps:
                vms.setdefault(r['vm'], []).append(r['dump_id'])
            return 200, {'dumps': dumps, 'vms': vms, 'marker': self.marker}


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass

    def _send(self, status, body):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self, method):
        svc = self.server.fake
        parsed = urlparse(self.path)
        query = parse_qs(parsed.query)
        length = int(self.headers.get('Content-Length') or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        svc.requests.append((method, parsed.path, query, body))
        if parsed.path == '/health':
            if svc.core_only:
                return self._send(404, {'detail': 'Not Found'})
            return self._send(svc.health_status, {
                'status': 'ok' if svc.health_status == 200 else 'unavailable', 'version': '0.1.0',
                'libvirt': {'uri': 'test:///default', 'connected': svc.health_status == 200, 'error': None},
                'queue': {'queued': 0, 'running': 0, 'max_parallel': 2}, 'formats': ['elf'],
                'features': ['wait', 'label', 'request_id'], 'auth': bool(svc.token)})
        if svc.token and self.headers.get('Authorization') != 'Bearer %s' % svc.token:
            return self._send(401, {'detail': 'missing or invalid bearer token'})
        if parsed.path == '/api/dumps' and method == 'POST':
            if body.get('label') == 'bad label':
                return self._send(422, {'detail': 'label must be 1-128 characters of [A-Za-z0-9._:@+-]'})
            status, answer = svc.post(body)
            if svc.drop_posts > 0:
                svc.drop_posts -= 1
                self.close_connection = True
                self.connection.shutdown(2)  # the client sees the connection drop, the dumps exist
                return None
            return self._send(status, answer)
        if parsed.path == '/api/dumps' and method == 'GET':
            status, answer = svc.get(query)
            return self._send(status, answer)
        return self._send(404, {'detail': 'Not Found'})

    def do_GET(self):  # pylint: disable=invalid-name
        self._handle('GET')

    def do_POST(self):  # pylint: disable=invalid-name
        self._handle('POST')


@pytest.fixture
def fake_service():
    server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.daemon_threads = True
    server.fake = FakeService()
    server.fake.url = 'http://127.0.0.1:%d' % server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05})
    thread.daemon = True
    thread.start()
    yield server.fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_url():
    """A URL on which nothing listens."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return 'http://127.0.0.1:%d' % port


@pytest.fixture
def run_module(capsys, monkeypatch):
    """``run_module(module, args, check_mode=False)`` runs ``module.main()``; returns the JSON result."""
    for name in ('MEMDUMP_SERVICE_URL', 'MEMDUMP_SERVICE_TOKEN', 'MEMDUMP_SERVICE_TIMEOUT'):
        monkeypatch.delenv(name, raising=False)

    def run(module, args, check_mode=False):
        args = dict(args)
        if check_mode:
            args['_ansible_check_mode'] = True
        with patch_module_args(args):
            with pytest.raises(SystemExit):
                module.main()
        out = capsys.readouterr().out
        return json.loads(out)

    return run
