"""Reliability (issue 8): bad input and auth at the memdump service's HTTP API.

Schemathesis (property-based, from the service's own ``/openapi.json``) with and without the token,
explicit hostile inputs, and 401 on every ``/api`` route. The service runs on libvirt's test driver
so that nothing generated here dumps a real guest.
"""
import json
import os
import re
import subprocess
import sys
import urllib.parse

import httpx
import pytest

TOKEN = 'rel-Token-5c9d0e2f7a41b3'
VMS = ['web01', 'db01', 'app01']

# Checks that say "the service answered and its answer is what its schema promises".
ST_CHECKS = ('not_a_server_error,status_code_conformance,content_type_conformance,'
             'response_headers_conformance,response_schema_conformance')
ST_MAX_EXAMPLES = int(os.environ.get('MEMDUMP_RELIABILITY_ST_EXAMPLES', '30'))

# `wait` holds an answer up to 120 s; generated values are capped so that a run stays short.
ST_HOOKS = '''
import schemathesis


@schemathesis.hook
def map_query(context, query):
    if query and isinstance(query.get("wait"), (int, float)) and not isinstance(query.get("wait"), bool):
        if query["wait"] > 1:
            query["wait"] = 1
    return query
'''


_CLIENTS = {}


def request(svc, method, path, token=None, **kwargs):
    """One raw HTTP call (httpx): sends exactly the Authorization header given, nothing else."""
    headers = dict(kwargs.pop('headers', {}))
    if token is not None:
        headers['Authorization'] = 'Bearer ' + token
    if svc.url not in _CLIENTS:
        _CLIENTS[svc.url] = httpx.Client(base_url=svc.url, verify=False, timeout=60)
    return _CLIENTS[svc.url].request(method, path, headers=headers, **kwargs)


def assert_json_4xx(resp, what):
    assert 400 <= resp.status_code < 500, '%s: expected a 4xx, got %s %r' % (what, resp.status_code, resp.text[:500])
    assert resp.headers.get('content-type', '').startswith('application/json'), (what, resp.headers)
    body = resp.json()
    assert body.get('detail'), '%s: 4xx without a detail saying what is wrong: %r' % (what, body)
    return body


def wait_final(svc, dump_id, wait_until, timeout=30):
    def final():
        rec = request(svc, 'GET', '/api/dumps/' + dump_id, TOKEN).json()
        return rec if rec['state'] in ('completed', 'failed') else None
    return wait_until(final, timeout, what='dump %s to finish' % dump_id)


def assert_healthy(svc):
    resp = request(svc, 'GET', '/health')
    assert resp.status_code == 200, resp.text
    assert svc.proc.poll() is None, svc.read_log()


def run_schemathesis(svc, tmp_path, name, headers=()):
    """Runs the schemathesis CLI over the service's OpenAPI; returns (report dict, output text)."""
    hooks_dir = tmp_path / ('st-hooks-' + name)
    hooks_dir.mkdir()
    (hooks_dir / 'memdump_st_hooks.py').write_text(ST_HOOKS)
    report = tmp_path / ('st-%s.json' % name)
    cmd = [os.path.join(os.path.dirname(sys.executable), 'schemathesis'), 'run', svc.url + '/openapi.json',
           '--checks', ST_CHECKS, '--max-examples', str(ST_MAX_EXAMPLES), '--seed', '8',
           # One worker: CPython 3.11.7's parser is not thread-safe ("AST constructor recursion depth
           # mismatch" inside hypothesis when two workers build strategies at once).
           '--request-timeout', '30', '--no-shrink', '--workers', '1',
           '--report', 'json', '--report-json-path', str(report)]
    for header in headers:
        cmd += ['-H', header]
    env = dict(os.environ, SCHEMATHESIS_HOOKS='memdump_st_hooks', NO_COLOR='1',
               PYTHONPATH=str(hooks_dir) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False, cwd=str(tmp_path))
    output = proc.stdout + proc.stderr
    with open(report) as f:
        data = json.load(f)
    # For docs/reliability.md: how many inputs were tried.
    print('schemathesis %s: %s test cases generated, %s operations tested' % (
        name, data['test_cases']['generated'], data['operations']['tested']))
    return data, output


@pytest.fixture
def fuzz_service(memdump_service, test_driver_uri):
    return memdump_service(libvirt_uri=test_driver_uri(VMS), token=TOKEN, extra_args=['--openapi'])


@pytest.mark.parametrize('with_token', [True, False], ids=['with-token', 'without-token'])
def test_schemathesis_no_5xx_and_schema_conformance(fuzz_service, tmp_path, with_token):
    """Every route, generated valid and invalid input: no 5xx, every answer matches the OpenAPI."""
    headers = ['Authorization: Bearer ' + TOKEN] if with_token else []
    data, output = run_schemathesis(fuzz_service, tmp_path, 'token' if with_token else 'anon', headers)
    assert data['operations']['tested'] >= 5, output[-5000:]
    assert data['test_cases']['generated'] >= 5 * min(ST_MAX_EXAMPLES, 10), output[-5000:]
    assert not data['errors'], 'schemathesis itself failed:\n%s' % output[-12000:]
    # First the hard rule (no 5xx, service alive, no traceback), then conformance to the OpenAPI.
    server_errors = [f for f in data['failures'] if 'ServerError' in f['type']]
    assert not server_errors, 'the service answered 5xx:\n%s\n--- log tail ---\n%s' % (
        output[-12000:], fuzz_service.read_log()[-3000:])
    assert_healthy(fuzz_service)
    assert 'Traceback' not in fuzz_service.read_log(), fuzz_service.read_log()[-5000:]
    assert not data['failures'], 'answers that do not match the OpenAPI (%s):\n%s' % (
        ', '.join('%s %s x%s' % (f['code'], f['title'], f['count']) for f in data['failures']), output[-12000:])


BAD_NAMES = {
    'slash': 'a/b',
    'dotdot-slash': '../../../etc/passwd',
    'nul': 'web01\x00evil',
    'newline': 'web01\nINFO forged log line',
    'control': 'web\x1b[31m01',
    'del': 'web\x7f01',
    'long-4k': 'v' * 4096,
    'empty': '',
}


@pytest.fixture
def bad_input_service(memdump_service, test_driver_uri):
    return memdump_service(libvirt_uri=test_driver_uri(VMS + ['..']), token=TOKEN)


def test_bad_vm_names_are_refused(bad_input_service, tmp_path):
    svc = bad_input_service
    for what, name in BAD_NAMES.items():
        for key in ('vms', 'vm_ids'):
            resp = request(svc, 'POST', '/api/dumps', TOKEN, json={key: [name]})
            assert_json_4xx(resp, '%s name in %s' % (what, key))
            # Mixed with a good name, the whole request is refused (nothing half-done).
            resp = request(svc, 'POST', '/api/dumps', TOKEN, json={key: ['web01', name]})
            assert_json_4xx(resp, '%s name after a good one' % what)
    # The request was refused before anything was queued or written.
    resp = request(svc, 'GET', '/api/dumps', TOKEN)
    assert resp.status_code == 200 and resp.json()['dumps'] == [], resp.text
    assert not os.path.exists(tmp_path / 'etc'), 'a path outside the dump dir was created'
    assert_healthy(svc)


def test_dotdot_name_never_escapes_dump_dir(bad_input_service, wait_until):
    """'..' is a legal libvirt name (no '/'): either refused, or dumped under a sanitised file name."""
    svc = bad_input_service
    resp = request(svc, 'POST', '/api/dumps', TOKEN, json={'vms': ['..']})
    if resp.status_code != 202:
        assert_json_4xx(resp, "name '..'")
        return
    record = wait_final(svc, resp.json()['dumps'][0]['dump_id'], wait_until)
    if record['dump_path']:
        real = os.path.realpath(record['dump_path'])
        assert os.path.dirname(real) == os.path.realpath(svc.dump_dir), record
    for entry in os.listdir(svc.workdir):
        assert entry in ('dumps', 'state.sqlite', 'service.log', 'token') or entry.startswith('state.sqlite'), entry


BAD_BODIES = {
    'empty-list': {'vms': []},
    'duplicate-list': {'vms': ['web01', 'web01']},
    'duplicate-vm_ids': {'vm_ids': ['db01', 'app01', 'db01']},
    'no-vms': {'label': 'IR-1'},
    'vms-not-a-list': {'vms': 'web01'},
    'vms-of-numbers': {'vms': [1, 2]},
    'vms-null': {'vms': None},
    'nested-list': {'vms': [['web01']]},
    'unknown-format': {'vms': ['web01'], 'format': 'raw-please'},
    'format-number': {'vms': ['web01'], 'format': 7},
    'bad-label-chars': {'vms': ['web01'], 'label': 'IR/../42'},
    'label-nul': {'vms': ['web01'], 'label': 'IR\x0042'},
    'label-too-long': {'vms': ['web01'], 'label': 'L' * 129},
    'force-not-bool': {'vms': ['web01'], 'force': 'maybe'},
    'request-id-too-long': {'vms': ['web01'], 'request_id': 'r' * 129},
    'body-is-list': ['web01'],
    'body-is-string': 'web01',
    'body-is-null': None,
}


def test_bad_bodies_are_refused(bad_input_service):
    svc = bad_input_service
    for what, body in BAD_BODIES.items():
        resp = request(svc, 'POST', '/api/dumps', TOKEN, content=json.dumps(body).encode(),
                       headers={'Content-Type': 'application/json'})
        assert_json_4xx(resp, what)
    raw_bodies = {
        'not-json': b'vms=web01',
        'truncated-json': b'{"vms": ["web01"',
        'non-utf8-json': b'{"vms": ["\xff\xfeweb01"]}',
        'non-utf8-garbage': bytes(range(128, 256)),
        'empty-body': b'',
        'nan': b'{"vms": ["web01"], "force": NaN}',
    }
    for what, raw in raw_bodies.items():
        resp = request(svc, 'POST', '/api/dumps', TOKEN, content=raw, headers={'Content-Type': 'application/json'})
        assert_json_4xx(resp, what)
    # Wrong content type (a form, plain text) with a body that is otherwise fine.
    for ctype in ('application/x-www-form-urlencoded', 'text/plain', 'multipart/form-data; boundary=x'):
        resp = request(svc, 'POST', '/api/dumps', TOKEN, content=b'{"vms": ["web01"]}', headers={'Content-Type': ctype})
        if resp.status_code == 202:
            pytest.fail('content type %s was accepted as JSON' % ctype)
        assert_json_4xx(resp, 'content type ' + ctype)
    resp = request(svc, 'GET', '/api/dumps', TOKEN)
    assert resp.json()['dumps'] == [], 'a refused request created dumps: %s' % resp.text
    assert_healthy(svc)


def test_huge_bodies_are_refused_and_service_survives(bad_input_service):
    svc = bad_input_service
    huge = {
        'one-4MiB-name': json.dumps({'vms': ['x' * (4 << 20)]}).encode(),
        '200k-duplicate-names': json.dumps({'vms': ['web01'] * 200000}).encode(),
        '5000-distinct-names': json.dumps({'vms': ['n%05d' % i for i in range(5000)]}).encode(),
        '8MiB-whitespace': b'{"vms": ["web01"]' + b' ' * (8 << 20) + b'x',
        '1MiB-deep-nesting': b'[' * (1 << 20),
        '4MiB-label': json.dumps({'vms': ['web01'], 'label': 'L' * (4 << 20)}).encode(),
    }
    for what, raw in huge.items():
        resp = request(svc, 'POST', '/api/dumps', TOKEN, content=raw, headers={'Content-Type': 'application/json'})
        assert 400 <= resp.status_code < 500, '%s: %s %s' % (what, resp.status_code, resp.text[:300])
        assert_healthy(svc)
    resp = request(svc, 'GET', '/api/dumps', TOKEN)
    assert resp.json()['dumps'] == [], resp.text[:1000]
    assert 'Traceback' not in svc.read_log(), svc.read_log()[-5000:]


def test_bad_query_and_path_input(bad_input_service):
    svc = bad_input_service
    for query in ('state=exploded', 'wait=-1', 'wait=121', 'wait=1e309', 'wait=abc', 'marker=abc', 'marker=1.5',
                  'wait=nan'):
        resp = request(svc, 'GET', '/api/dumps?' + query, TOKEN)
        assert_json_4xx(resp, 'GET /api/dumps?' + query)
    for query in ('vm=%00', 'vm=' + 'v' * 4096, 'label=' + urllib.parse.quote('IR/..'), 'dump_id=%ff%fe',
                  'vm=a&vm=a', 'vm=', 'unknown=1'):
        resp = request(svc, 'GET', '/api/dumps?' + query, TOKEN)
        assert resp.status_code < 500, (query, resp.status_code, resp.text[:300])
        assert resp.headers['content-type'].startswith('application/json'), query
    for dump_id in ('0' * 32, 'nope', '..%2F..%2Fetc%2Fpasswd', '%00', 'x' * 4096, '%ff'):
        for method, suffix in (('GET', ''), ('GET', '/file'), ('DELETE', '')):
            resp = request(svc, method, '/api/dumps/' + dump_id + suffix, TOKEN)
            assert resp.status_code in (404, 422, 400), (method, dump_id, suffix, resp.status_code, resp.text[:300])
    assert_healthy(svc)


def test_bad_range_headers(bad_input_service, wait_until):
    """The image download with hostile Range headers: 200/206/400/416, never 5xx, never wrong bytes."""
    svc = bad_input_service
    dump_id = request(svc, 'POST', '/api/dumps', TOKEN, json={'vms': ['web01']}).json()['dumps'][0]['dump_id']
    record = wait_final(svc, dump_id, wait_until)
    assert record['state'] == 'completed', record
    full = request(svc, 'GET', '/api/dumps/%s/file' % dump_id, TOKEN)
    assert full.status_code == 200 and len(full.content) == record['size_bytes'], full.status_code
    for rng in ('bytes=abc', 'bytes=5-2', 'bytes=999999999-', 'bytes=-0', 'bytes=0-1,3-4,' + ','.join(['1-1'] * 500),
                'items=0-1', 'bytes=' + '9' * 400 + '-', 'bytes=-999999999999', 'bytes=0-0'):
        resp = request(svc, 'GET', '/api/dumps/%s/file' % dump_id, TOKEN, headers={'Range': rng})
        # RFC 9110 lets a server ignore (200) or reject an invalid Range; a rejection is a JSON error here.
        assert resp.status_code in (200, 206, 400, 416), (rng, resp.status_code, resp.text[:300])
        if resp.status_code == 400:
            assert_json_4xx(resp, 'Range: ' + rng)
        if resp.status_code == 200:
            assert resp.content == full.content, rng
        if resp.status_code == 206:
            match = re.match(r'bytes (\d+)-(\d+)/(\d+)', resp.headers.get('content-range', ''))
            assert match, (rng, resp.headers)
            start, end = int(match.group(1)), int(match.group(2))
            assert resp.content == full.content[start:end + 1], rng
    assert_healthy(svc)


# ---- Auth -------------------------------------------------------------------------------------

def api_operations(svc):
    """Every (method, path) under /api from the service's own OpenAPI, plus the documented ones."""
    spec = request(svc, 'GET', '/openapi.json').json()
    ops = {(method.upper(), path) for path, item in spec['paths'].items() if path.startswith('/api')
           for method in item if method in ('get', 'post', 'put', 'patch', 'delete')}
    ops |= {('GET', '/api/dumps'), ('POST', '/api/dumps'), ('GET', '/api/dumps/{dump_id}'),
            ('GET', '/api/dumps/{dump_id}/file'), ('DELETE', '/api/dumps/{dump_id}')}
    return sorted(ops)


WRONG_AUTH = {
    'none': None,
    'empty-bearer': 'Bearer ',
    'wrong-token': 'Bearer wrong-' + TOKEN,
    'token-prefix': 'Bearer ' + TOKEN[:-1],
    'token-plus-char': 'Bearer ' + TOKEN + 'x',
    'token-with-newline': 'Bearer ' + TOKEN + '\n',
    'basic-scheme': 'Basic ' + TOKEN,
    'no-scheme': TOKEN,
    'other-case-token': 'Bearer ' + TOKEN.upper(),
    'non-ascii': 'Bearer ' + TOKEN + '\u00e9',
}


def test_auth_every_api_route_401(memdump_service, test_driver_uri):
    # DEBUG logging: not even the most verbose log may show a token, right or wrong.
    svc = memdump_service(libvirt_uri=test_driver_uri(VMS), token=TOKEN, extra_args=['--log-level', 'DEBUG', '--openapi'])
    dump_id = request(svc, 'POST', '/api/dumps', TOKEN, json={'vms': ['web01']}).json()['dumps'][0]['dump_id']
    ops = api_operations(svc)
    tried = 0
    for method, path in ops:
        url = path.replace('{dump_id}', dump_id)
        for what, header in WRONG_AUTH.items():
            headers = {}
            if header is not None:
                headers['Authorization'] = header.encode('utf-8') if not header.isascii() else header
            body = {'json': {'vms': ['db01']}} if method == 'POST' else {}
            try:
                resp = request(svc, method, url, headers=headers, **body)
            except (httpx.LocalProtocolError, ValueError):
                continue  # httpx refuses to send this header at all: nothing reached the service
            tried += 1
            assert resp.status_code == 401, (method, url, what, resp.status_code, resp.text[:300])
            assert resp.json() == {'detail': 'missing or invalid bearer token'}, (method, url, what, resp.text)
            assert TOKEN not in resp.text
        # Auth comes before validation: a bad body without a token is still 401, not 422.
        resp = request(svc, method, url, content=b'\xff', headers={'Content-Type': 'application/json'})
        assert resp.status_code == 401, (method, url, 'bad body without token', resp.status_code)
    print('auth: %d routes x wrong credentials = %d requests, all 401' % (len(ops), tried))
    assert len(ops) >= 5 and tried >= len(ops) * 8
    # Nothing was created by the refused POSTs; the right token still works; /health and /openapi.json are open.
    resp = request(svc, 'GET', '/api/dumps', TOKEN)
    assert resp.status_code == 200 and [d['vm'] for d in resp.json()['dumps']] == ['web01'], resp.text
    assert request(svc, 'GET', '/health').status_code == 200
    assert request(svc, 'GET', '/openapi.json').status_code == 200
    assert request(svc, 'GET', '/health').json().get('auth') is True
    log = svc.read_log()
    assert TOKEN not in log and 'wrong-' + TOKEN not in log and TOKEN[:-1] not in log
