# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Unit-test fixtures: a small in-process HTTP server that plays a crude, sometimes broken memdump service.

It applies none of the real service's rules (reuse, input validation): a POST starts one dump per VM
unless a test scripts the answer. Whether the modules follow the service's rules is tested against
the real service in tests/integration (test_trigger_reuse.py, test_modules.py). This fake is for
what the real service does not do on demand: dropped connections, answers without ``created`` or
``marker`` (a core-API service), wrong answers, dumps that never finish, 401, bodies that are not JSON,
``/health`` with or without features, paged answers.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from ansible.module_utils.common import warnings
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
        self.features = ['wait', 'label', 'request_id', 'dry_run']  # what /health lists
        self.methods = ['memory-only', 'live', 'auto']  # what /health lists; None: no such field
        self.core_only = False  # /health 404, answers without marker and created
        self.list_answer = False  # GET answers a bare list
        self.page_size = None  # GET answers pages of this many dumps with next_before
        self.raw_answers = {}  # (method, path) -> (status, raw body): scripted answers, e.g. not JSON
        self.reused = {}  # vm -> record that POST answers with created: false (scripted, not a rule)
        self.drop_posts = 0  # drop the connection after handling this many POSTs
        self.finish_after = None  # seconds after creation a dump completes (None: stays queued)
        self.finish_on_get = None  # the Nth GET naming dump ids completes every pending dump
        self.finish_on_long_poll = None  # seconds after the first held GET every pending dump completes
        self.dump_id_gets = 0
        self.fail_vms = {}  # vm -> failure message
        self.hold = True  # honour wait/marker
        self.health_status = 200
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
            return dict((k, record.get(k)) for k in CORE_FIELDS)
        out = dict(record)
        if created is not None:
            out['created'] = created
        return out

    def post(self, body):
        """A new dump per VM, or the scripted ``reused`` record; a dry run (if it is a feature) creates nothing.
        A method the service does not list is refused as the service's validation does (a service without
        ``methods`` ignores the field)."""
        method = body.get('method')
        if method is not None and self.methods is not None and not self.core_only and method not in self.methods:
            return 422, {'detail': [{'loc': ['body', 'method'], 'type': 'value_error',
                                     'msg': 'Value error, unknown method %r; use one of %s' % (method, ', '.join(self.methods))}]}
        dry_run = bool(body.get('dry_run')) and not self.core_only and 'dry_run' in self.features
        label = None if self.core_only else body.get('label')
        fmt = body.get('format') or 'elf'
        with self.cond:
            out, new = [], []
            for vm in body.get('vms') or body.get('vm_ids') or []:
                if vm in self.reused:
                    out.append(self.view(self.reused[vm], False))
                elif dry_run:
                    out.append({'vm': vm, 'dump_id': None, 'state': None, 'label': label, 'format': fmt, 'created': True})
                else:
                    record = self._record(vm, label, 'queued', fmt)
                    self.dumps.append(record)
                    new.append(record)
                    out.append(self.view(record, True))
            if new:
                self.marker += 1
            for record in new:
                self._schedule(record)
            answer = {'dumps': out}
            if not self.core_only:
                answer['marker'] = self.marker
            if dry_run:
                answer['dry_run'] = True
                return 200, answer
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
            next_before = None
            if self.page_size:
                if 'before' in query:
                    ids = [r['dump_id'] for r in found]
                    found = found[ids.index(query['before'][0]) + 1:]
                if len(found) > self.page_size:
                    found = found[:self.page_size]
                    next_before = found[-1]['dump_id']
            dumps = [self.view(r) for r in found]
            if self.list_answer or self.core_only:
                return 200, dumps
            vms = {}
            for r in dumps:
                vms.setdefault(r['vm'], []).append(r['dump_id'])
            answer = {'dumps': dumps, 'vms': vms, 'marker': self.marker}
            if self.page_size:
                answer['next_before'] = next_before
            return 200, answer


class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass

    def _send(self, status, body):
        self._send_raw(status, json.dumps(body).encode(), 'application/json')

    def _send_raw(self, status, raw, content_type):
        self.send_response(status)
        self.send_header('Content-Type', content_type)
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
        if (method, parsed.path) in svc.raw_answers:
            status, raw = svc.raw_answers[(method, parsed.path)]
            return self._send_raw(status, raw, 'text/html')
        if parsed.path == '/health':
            if svc.core_only:
                return self._send(404, {'detail': 'Not Found'})
            return self._send(svc.health_status, {
                'status': 'ok' if svc.health_status == 200 else 'unavailable', 'version': '0.1.0',
                'libvirt': {'uri': 'test:///default', 'connected': svc.health_status == 200,
                            'error': None if svc.health_status == 200 else 'cannot connect to libvirt at test:///default'},
                'queue': {'queued': 0, 'running': 0, 'max_parallel': 2}, 'formats': ['elf'],
                'features': svc.features, 'auth': bool(svc.token),
                **({} if svc.methods is None else {'methods': svc.methods})})
        if svc.token and self.headers.get('Authorization') != 'Bearer %s' % svc.token:
            return self._send(401, {'detail': 'missing or invalid bearer token'})
        if parsed.path == '/api/dumps' and method == 'POST':
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
        # Module warnings are collected per process: start each run without the last run's.
        warnings._global_warnings.clear()  # pylint: disable=protected-access
        args = dict(args)
        if check_mode:
            args['_ansible_check_mode'] = True
        with patch_module_args(args):
            with pytest.raises(SystemExit):
                module.main()
        result = json.loads(capsys.readouterr().out)
        # ansible-core 2.19 and later return warnings as structures: the tests read their text.
        if 'warnings' in result:
            result['warnings'] = [w['event']['msg'] if isinstance(w, dict) else w for w in result['warnings']]
        return result

    return run
