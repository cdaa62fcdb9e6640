# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the influxdb callback, driven with TaskResult-like objects (no InfluxDB needed)."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import threading
import time

import pytest

from ansible.plugins.loader import callback_loader

from ansible_collections.vmforensics.memdump.plugins.callback import influxdb as cbmod

PASSWORD = 'pw-unit-s3cret'
TOKEN = 'tok-unit-s3cret'


class FakeDisplay(object):
    verbosity = 0

    def __init__(self):
        self.warnings = []
        self.messages = []

    def warning(self, msg, *args, **kwargs):
        self.warnings.append(msg)

    def __getattr__(self, name):  # display, v, vv, vvv, debug, ...
        return lambda msg, *a, **kw: self.messages.append(msg)


class FakeTask(object):
    def __init__(self, action, no_log=False):
        self.action = action.rsplit('.', 1)[-1]
        self.resolved_action = action
        self.no_log = no_log


class FakeHost(object):
    def __init__(self, name):
        self.name = name

    def get_name(self):
        return self.name


class FakeResult(object):
    def __init__(self, action, result, host='hv01', no_log=False):
        self._task = FakeTask(action, no_log)
        self._host = FakeHost(host)
        self._result = result


class FakeStats(object):
    def __init__(self, summaries):
        self.processed = dict((h, 1) for h in summaries)
        self.summaries = summaries

    def summarize(self, host):
        base = dict(ok=0, changed=0, failures=0, unreachable=0, skipped=0, rescued=0, ignored=0)
        base.update(self.summaries[host])
        return base


def make_callback(tmp_path, **options):
    # A timeout a loaded machine's collector thread meets; the tests of the timeout itself give their own.
    opts = dict(url='http://127.0.0.1:9', database='unit', username='admin', password=PASSWORD, timeout=10,
                spool_dir=str(tmp_path / 'spool'))
    opts.update(options)
    display = FakeDisplay()
    cb = callback_loader.get('vmforensics.memdump.influxdb', display=display)
    assert cb is not None, 'callback not found by the plugin loader'
    cb.set_options(direct=opts)
    return cb, display


TRIGGER = {'changed': True, 'dumps': [{'vm': 'web01', 'dump_id': 'a' * 32, 'state': 'queued', 'created': True,
                                       'label': 'IR-1', 'format': 'elf'}]}
WAIT = {'changed': False, 'dumps': [{
    'vm': 'web01', 'dump_id': 'a' * 32, 'state': 'completed', 'label': 'IR-1', 'method': 'live', 'format': 'qemu-migration',
    'progress': 100.0,
    'message': 'done', 'started_at': '2026-11-25T22:50:01.000000Z', 'finished_at': '2026-11-25T22:50:03.500000Z',
    'duration_sec': 2.5, 'dump_path': '/var/lib/memdump/web01.elf', 'size_bytes': 134480867,
    'sha256': 'f' * 64, 'paused_sec': 0.4, 'host': 'hv01.example.com'}]}


def split_line(line):
    """(measurement+tags, fields, timestamp) of a simple line (no escaped spaces in the tests' values)."""
    head, rest = line.split(' ', 1)
    fields, ts = rest.rsplit(' ', 1)
    return head, fields, int(ts)


class Collector(http.server.BaseHTTPRequestHandler):
    requests = []
    pings = []
    status = 204

    def do_GET(self):  # noqa: N802
        Collector.pings.append(self.path)
        self.send_response(204 if self.path == '/ping' else 404)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0)).decode()
        Collector.requests.append((self.path, dict(self.headers), body))
        data = b''
        if Collector.status == 400:
            data = b'{"error":"partial write: field type conflict: input field size_bytes is type integer"}'
        elif Collector.status == 422:  # what InfluxDB 2.x answers for a type conflict
            data = b'{"code":"unprocessable entity","message":"failure writing points to database: partial write: field type conflict"}'
        elif Collector.status >= 500:
            data = b'{"error":"timeout"}'
        self.send_response(Collector.status)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def collector():
    Collector.requests = []
    Collector.pings = []
    Collector.status = 204
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield 'http://127.0.0.1:%d' % server.server_address[1], Collector.requests
    server.shutdown()
    server.server_close()


def closed_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_trigger_then_wait_is_one_point_at_finished_at(tmp_path):
    cb, dummy = make_callback(tmp_path)
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_trigger', TRIGGER))
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
    lines = cb.buffer.lines('memdump')
    assert len(lines) == 1
    head, fields, ts = split_line(lines[0])
    assert head == 'memdump,format=qemu-migration,host=hv01,label=IR-1,method=live,state=completed,vm=web01'
    assert 'dump_id="%s"' % ('a' * 32) in fields
    assert 'sha256="%s"' % ('f' * 64) in fields
    assert 'size_bytes=134480867i' in fields
    assert 'duration_sec=2.5' in fields and 'paused_sec=0.4' in fields
    assert 'service_host="hv01.example.com"' in fields
    assert ts == 1795647003500000000


def test_unfinished_uses_started_at_and_ignores_other_actions(tmp_path):
    cb, dummy = make_callback(tmp_path)
    rec = dict(WAIT['dumps'][0], state='running', finished_at=None, duration_sec=None, sha256=None)
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_info', {'dumps': [rec]}))
    cb.v2_runner_on_ok(FakeResult('ansible.builtin.debug', {'dumps': [dict(rec, dump_id='b' * 32)]}))
    cb.v2_runner_on_ok(FakeResult('other.collection.memdump_info', {'dumps': [dict(rec, dump_id='c' * 32)]}))
    lines = cb.buffer.lines('memdump')
    assert len(lines) == 1
    head, fields, ts = split_line(lines[0])
    assert 'state=running' in head and 'sha256' not in fields
    assert ts == 1795647001000000000


def test_failed_task_and_loop_results_are_recorded(tmp_path):
    cb, dummy = make_callback(tmp_path)
    failed = {'failed': True, 'msg': 'timed out', 'dumps': [dict(WAIT['dumps'][0], dump_id='d' * 32, state='failed')]}
    cb.v2_runner_on_failed(FakeResult('vmforensics.memdump.memdump_wait', failed), ignore_errors=True)
    loop = {'results': [{'dumps': [dict(WAIT['dumps'][0], dump_id='e' * 32)]},
                        {'dumps': [dict(WAIT['dumps'][0], dump_id='f' * 32)]},
                        {'_ansible_no_log': True, 'dumps': [dict(WAIT['dumps'][0], dump_id='9' * 32)]}]}
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_info', loop, host='hv02'))
    assert len(cb.buffer) == 3


def test_no_log_tasks_are_never_recorded(tmp_path):
    cb, dummy = make_callback(tmp_path)
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT, no_log=True))
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', dict(WAIT, _ansible_no_log=True)))
    assert len(cb.buffer) == 0


def test_dead_influxdb_spools_once_with_one_warning_and_no_secrets(tmp_path):
    cb, display = make_callback(tmp_path, url='http://admin:%s@127.0.0.1:%d' % (PASSWORD, closed_port()),
                                token=TOKEN)
    cb.v2_playbook_on_start(type('PB', (), {'_file_name': '/x/site.yml'})())
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
    started = time.monotonic()
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 3, 'changed': 1}}))
    assert time.monotonic() - started < 2
    assert len(display.warnings) == 1, display.warnings
    assert 'spool' in display.warnings[0]
    files = cb.spool().files()
    assert len(files) == 1
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(files[0])).st_mode) == 0o700
    content = open(files[0]).read()
    assert content.count('\n') == 2  # one dump, one run
    assert 'memdump_run,playbook=site.yml' in content
    for text in [content] + display.warnings + display.messages:
        assert PASSWORD not in text and TOKEN not in text
    cb.v2_playbook_on_stats(FakeStats({}))  # a second stats event sends nothing more
    assert len(display.warnings) == 1


def test_next_run_sends_spool_first_then_clears_it(tmp_path, collector):
    url, requests = collector
    cb, dummy = make_callback(tmp_path, url='http://127.0.0.1:%d' % closed_port())
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert cb.spool_path
    cb2, display2 = make_callback(tmp_path, url=url)  # same spool_dir, InfluxDB answers now
    rec = dict(WAIT['dumps'][0], dump_id='b' * 32)
    cb2.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', {'dumps': [rec]}))
    cb2.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert display2.warnings == []
    assert len(requests) == 1
    path, headers, body = requests[0]
    assert path.startswith('/write?') and 'db=unit' in path and 'precision=ns' in path
    assert headers.get('Authorization', '').startswith('Basic ')
    lines = body.strip().split('\n')
    assert len(lines) == 4  # spooled dump + run, new dump + run
    assert 'a' * 32 in lines[0] and 'b' * 32 in lines[2]
    assert cb2.spool().files() == []


def test_hanging_influxdb_costs_at_most_the_timeout(tmp_path):
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(5)
    try:
        cb, display = make_callback(tmp_path, url='http://127.0.0.1:%d' % listener.getsockname()[1], timeout=1.5)
        cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
        started = time.monotonic()
        cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
        elapsed = time.monotonic() - started
        # One attempt (the kernel queued its connection; nobody answered it), not a retry per timeout.
        listener.setblocking(False)
        attempts = 0
        while True:
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break
            attempts += 1
    finally:
        listener.close()
    # Bounded by the timeout: the margin is for writing the spool on a machine busy with I/O (seen: 3.5 s).
    assert attempts == 1 and elapsed < 1.5 + 8.0, (attempts, elapsed)
    assert len(display.warnings) == 1
    assert len(cb.spool().files()) == 1


def wait_for(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_influxdb_that_never_answered_a_probe_costs_no_wait_at_the_end(tmp_path):
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(5)
    try:
        cb, display = make_callback(tmp_path, url='http://127.0.0.1:%d' % listener.getsockname()[1], timeout=2)
        cb.v2_playbook_on_start(type('PB', (), {'_file_name': '/x/site.yml'})())
        cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
        assert wait_for(cb.probe.known_dead)  # the run goes on meanwhile; here, the probe's 2 s pass
        started = time.monotonic()
        cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert elapsed < 1.0, elapsed  # not the 2 s timeout again
    assert len(display.warnings) == 1 and 'probe(s) during the run' in display.warnings[0], display.warnings
    files, lines = cb.spool().read()
    assert len(files) == 1 and len(lines) == 2


def test_probe_that_got_an_answer_lets_the_end_of_run_send(tmp_path, collector):
    url, requests = collector
    cb, display = make_callback(tmp_path, url=url)
    cb.v2_playbook_on_start(type('PB', (), {'_file_name': '/x/site.yml'})())
    assert wait_for(lambda: cb.probe.answered)
    assert Collector.pings == ['/ping']  # one probe, no more once InfluxDB answered
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert display.warnings == [] and len(requests) == 1 and cb.spool().files() == []


def test_spool_cap_drops_oldest_points_with_a_warning(tmp_path):
    cb, display = make_callback(tmp_path, url='http://127.0.0.1:%d' % closed_port(), spool_max_bytes=700)
    for i in range(6):
        cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait',
                                      {'dumps': [dict(WAIT['dumps'][0], dump_id='%032x' % i)]}))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert len(display.warnings) == 2
    assert 'full' in display.warnings[1]
    files, lines = cb.spool().read()
    assert sum(len(line) + 1 for line in lines) <= 700
    assert lines[-1].startswith('memdump_run')  # the newest points are kept


def test_run_point_counts_hosts_and_job_id(tmp_path, monkeypatch):
    monkeypatch.setenv('JOB_ID', '4242')
    cb, dummy = make_callback(tmp_path)
    line = cb.run_point(FakeStats({'a': {'ok': 2, 'changed': 1}, 'b': {'failures': 1}, 'c': {'unreachable': 1},
                                   'd': {'ok': 1}}))
    head, fields, dummy_ts = split_line(line)
    assert head == 'memdump_run'
    for expected in ('hosts=4i', 'ok=2i', 'changed=1i', 'failed=1i', 'unreachable=1i', 'job_id="4242"', 'dumps=0i'):
        assert expected in fields.split(','), (expected, fields)


def test_job_id_from_runner_ident():
    assert cbmod.job_id_from_env({'AWX_ISOLATED_DATA_DIR': '/runner/artifacts/ident-7/'}) == 'ident-7'
    assert cbmod.job_id_from_env({'AWX_JOB_ID': '9', 'AWX_ISOLATED_DATA_DIR': '/a/b'}) == '9'
    assert cbmod.job_id_from_env({}) is None


def test_internal_error_is_a_warning_not_an_exception(tmp_path, monkeypatch):
    cb, display = make_callback(tmp_path)
    monkeypatch.setattr(cb, 'flush', lambda lines: 1 / 0)
    cb.v2_playbook_on_stats(FakeStats({}))
    assert len(display.warnings) == 1
    assert 'could not record this run' in display.warnings[0]


def test_v2_api_selected_by_bucket_and_org(tmp_path, collector):
    url, requests = collector
    cb, display = make_callback(tmp_path, url=url, org='secops', bucket='forensics', token=TOKEN, username=None,
                                password=None)
    assert cb.settings['api'] == 'v2'
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert display.warnings == []
    path, headers, body = requests[0]
    assert path.startswith('/api/v2/write?')
    assert 'org=secops' in path and 'bucket=forensics' in path and 'precision=ns' in path
    assert headers.get('Authorization') == 'Token ' + TOKEN
    assert len(body.strip().split('\n')) == 2


@pytest.mark.parametrize('status, api', [(400, 'v1'), (422, 'v1'), (400, 'v2'), (422, 'v2')])
def test_refused_points_are_kept_aside_not_replayed(tmp_path, collector, status, api):
    url, dummy = collector
    Collector.status = status
    extra = dict(org='secops', bucket='forensics', token=TOKEN, username=None, password=None) if api == 'v2' else {}
    cb, display = make_callback(tmp_path, url=url, api=api, **extra)
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert len(display.warnings) == 1 and 'field type conflict' in display.warnings[0]
    assert cb.spool().files() == []  # nothing to replay: InfluxDB can never accept these
    rejected = [n for n in os.listdir(cb.spool().directory) if n.startswith('rejected-')]
    assert len(rejected) == 1
    with open(os.path.join(cb.spool().directory, rejected[0])) as f:
        assert 'a' * 32 in f.read()


@pytest.mark.parametrize('separator', ['\n', '\r', '\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\x85', '\u2028', '\u2029'])
def test_a_line_separator_in_a_field_cannot_split_or_forge_spooled_points(tmp_path, separator):
    # A VM name that carries a line separator and what looks like a second, forged point after it.
    forged = 'memdump,host=hv01,vm=db01 state="completed" 1'
    record = dict(WAIT['dumps'][0], vm='web01' + separator + forged, message='x' + separator + forged)
    cb, display = make_callback(tmp_path, url='http://127.0.0.1:%d' % closed_port())
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', {'changed': False, 'dumps': [record]}))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    sent = cb.spool().read()[1]
    assert len(sent) == 2  # one dump, one run: never a third, forged one
    assert not any(line.startswith('memdump,host=hv01,vm=db01') for line in sent)
    assert separator not in open(cb.spool().files()[0], encoding='utf-8').read().rstrip('\n').replace('\n', '')


@pytest.mark.parametrize('status', [401, 403, 404, 429, 500, 503])
def test_answers_that_do_not_blame_the_points_keep_them_for_the_next_run(tmp_path, collector, status):
    url, requests = collector
    Collector.status = status
    cb, display = make_callback(tmp_path, url=url)
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_wait', WAIT))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert len(display.warnings) == 1 and 'HTTP %d' % status in display.warnings[0]
    assert len(cb.spool().read()[1]) == 2
    # The next run sends them (and its own) once InfluxDB accepts.
    Collector.status = 204
    cb2, display2 = make_callback(tmp_path, url=url)
    cb2.v2_playbook_on_stats(FakeStats({}))
    assert display2.warnings == [] and cb2.spool().files() == []
    assert len(requests[-1][2].strip().split('\n')) == 3


HEAD = {'label': 'IR-24', 'seq': 12, 'hash': 'c' * 64}


def test_custody_heads_become_custody_points(tmp_path, collector):
    url, requests = collector
    # The custody measurement is fixed (memdump_verify reads it there), whatever the dump measurement is.
    cb, display = make_callback(tmp_path, url=url, measurement='forensics')
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_collect', {'changed': True, 'custody_head': HEAD}))
    # The same head again (a verify run right after) is written once; a loop's items each count.
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_verify', {'changed': False, 'custody_head': HEAD}))
    later = dict(HEAD, seq=13, hash='d' * 64)
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_delete', {'results': [{'custody_head': later}]}))
    # Not from this collection, no_log, or not a head: ignored.
    cb.v2_runner_on_ok(FakeResult('ansible.builtin.set_fact', {'custody_head': dict(HEAD, seq=99)}))
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_collect', {'custody_head': dict(HEAD, seq=98)}, no_log=True))
    cb.v2_runner_on_ok(FakeResult('vmforensics.memdump.memdump_collect', {'custody_head': dict(HEAD, seq='97')}))
    cb.v2_playbook_on_stats(FakeStats({'hv01': {'ok': 1}}))
    assert display.warnings == []
    lines = requests[0][2].strip().split('\n')
    custody = [split_line(item) for item in lines if item.startswith('memdump_custody,')]
    assert [(head, fields) for head, fields, dummy in custody] == [
        ('memdump_custody,host=hv01,label=IR-24', 'hash="%s",seq=12i' % ('c' * 64)),
        ('memdump_custody,host=hv01,label=IR-24', 'hash="%s",seq=13i' % ('d' * 64))]
    assert custody[0][2] < custody[1][2]  # distinct times: one series, neither overwrites the other
    run = [item for item in lines if item.startswith('forensics_run')][0]
    assert 'dumps=0i' in run


def test_custody_point_is_one_escaped_line():
    """Tags escaped, seq an integer field, hash a string field, the given time (the integration test reads it back)."""
    at = 1764892800123456789
    text = cbmod.custody_point('hv 01,x', HEAD, at)
    assert text == 'memdump_custody,host=hv\\ 01\\,x,label=IR-24 hash="%s",seq=12i %d' % ('c' * 64, at)
