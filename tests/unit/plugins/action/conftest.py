# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs an action plugin's real ``run()`` with a real Task, PlayContext and connection plugin."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play_context import PlayContext
from ansible.playbook.task import Task
from ansible.plugins.loader import connection_loader
from ansible.template import Templar


@pytest.fixture
def run_action(monkeypatch):
    """``run_action(ActionModule, args, check_mode=False, connection='local', task_vars=None)``: the result dict."""
    for name in list(os.environ):
        if name.startswith('MEMDUMP_'):
            monkeypatch.delenv(name, raising=False)

    def run(cls, args, check_mode=False, connection='local', task_vars=None, prepare=None):
        task = Task()
        task.args = dict(args)
        task.check_mode = check_mode
        play_context = PlayContext()
        play_context.check_mode = check_mode
        conn = connection_loader.get(connection, play_context, os.devnull)
        loader = DataLoader()
        action = cls(task, conn, play_context, loader, Templar(loader=loader), None)
        action._load_name = 'vmforensics.memdump.' + cls.NAME  # set by the plugin loader in a real run
        if prepare:
            prepare(action)
        result = action.run(task_vars=dict({'inventory_hostname': 'hv01'}, **(task_vars or {})))
        json.dumps(result)  # what a task returns must serialise
        return result

    return run


@pytest.fixture
def signing(tmp_path):
    """An ed25519 key (no passphrase) in ``tmp_path/home/.ssh`` and an allowed-signers file for it."""
    home = tmp_path / 'home'
    (home / '.ssh').mkdir(parents=True)
    key = home / '.ssh' / 'custody'
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'custody@test', '-f', str(key)], check=True)
    allowed = tmp_path / 'allowed_signers'
    allowed.write_text('custody@test namespaces="memdump-custody" %s' % (home / '.ssh' / 'custody.pub').read_text())
    return {'home': str(home), 'key': str(key), 'allowed': str(allowed)}


class ScriptedService(object):
    """A fake of our own service, only to play versions this branch cannot run: one that publishes other
    rules in /health (or none), keeps custody heads or not. One completed dump; records every request."""

    def __init__(self, record, body, health):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.record, self.body, self.health, self.requests = dict(record), body, health, []
        svc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):  # pylint: disable=arguments-differ
                pass

            def _send(self, status, raw, ctype='application/json', headers=None):
                self.send_response(status)
                self.send_header('Content-Type', ctype)
                self.send_header('Content-Length', str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):  # pylint: disable=invalid-name
                svc.requests.append(('GET', self.path, None))
                if self.path == '/health':
                    return self._send(200, json.dumps(svc.health).encode())
                if self.path.endswith('/file'):
                    return self._send(200, svc.body, 'application/octet-stream',
                                      {'X-Memdump-SHA256': svc.record['sha256']})
                if self.path.startswith('/api/dumps/'):
                    return self._send(200, json.dumps(svc.record).encode())
                return self._send(404, b'{"detail": "Not Found"}')

            def do_POST(self):  # pylint: disable=invalid-name
                body = json.loads(self.rfile.read(int(self.headers.get('Content-Length') or 0)) or b'null')
                svc.requests.append(('POST', self.path, body))
                if self.path.endswith('/collected'):
                    svc.record['collected_at'] = '2026-12-05T00:00:00Z'
                    if body.get('custody_head'):
                        svc.record.setdefault('custody_heads', []).append(dict(body['custody_head'], client='t'))
                    return self._send(200, json.dumps(svc.record).encode())
                return self._send(404, b'{"detail": "Not Found"}')

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_service():
    made = []

    def make(record, body, health):
        svc = ScriptedService(record, body, health)
        made.append(svc)
        return svc
    yield make
    for svc in made:
        svc.close()
