"""Issue 14: collection and chain of custody, with real ansible-playbook runs on the controller.

Against a hostile fake service (``HostileMemdumpService``: a fake of our own service only to play a
hostile or broken one), against the real service behind a proxy that cuts the connection, and the
acquire and verify playbooks end to end: tampering of every kind, concurrent runs, check mode, and
the shell recipe of docs/runbook.md run as it stands. Everything talks to 127.0.0.1 only.
"""
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO, sha256_file

DUMP_ID = '0123456789abcdef0123456789abcdef'
BODY = os.urandom(3 * 1024 * 1024 + 123)
TOKEN = 'custody-test-token'


class HostileMemdumpService:
    """A fake of our own service only to play a hostile or broken service: one dump, scripted lies."""

    def __init__(self, body=BODY, record_vm='web01', sha=None, extra=b'', content_length=True, record_dump_id=DUMP_ID):
        self.body, self.extra, self.content_length = body, extra, content_length
        self.record = {'dump_id': record_dump_id, 'vm': record_vm, 'vm_uuid': '6695eb01-f6a4-8304-79aa-000000000001',
                       'state': 'completed', 'format': 'elf', 'size_bytes': len(body),
                       'sha256': sha or hashlib.sha256(body).hexdigest(), 'paused_sec': 0.5, 'host': 'hostile',
                       'started_at': '2026-01-01T00:00:00Z', 'finished_at': '2026-01-01T00:00:01Z', 'duration_sec': 1.0,
                       'dump_path': '/var/lib/memdump/x.elf', 'file_deleted': False}
        self.requests = []
        svc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                svc.requests.append((self.path, self.headers.get('Range'), self.headers.get('Authorization')))
                if self.path.startswith('/api/dumps/%s/file' % DUMP_ID):
                    start = 0
                    m = re.match(r'bytes=(\d+)-', self.headers.get('Range') or '')
                    if m:
                        start = int(m.group(1))
                    data = svc.body[start:] + svc.extra
                    self.send_response(206 if m else 200)
                    if m:
                        self.send_header('Content-Range', 'bytes %d-%d/%d' % (start, len(svc.body) - 1, svc.record['size_bytes']))
                    self.send_header('X-Memdump-SHA256', svc.record['sha256'])
                    if svc.content_length:
                        self.send_header('Content-Length', str(len(data)))
                    else:
                        self.send_header('Connection', 'close')
                        self.close_connection = True
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if self.path.startswith('/api/dumps/'):
                    raw = json.dumps(svc.record).encode()
                    self.send_response(200)
                    self.send_header('Content-Type', 'application/json')
                    self.send_header('Content-Length', str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                self.send_error(404)

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class CuttingProxy:
    """A loopback TCP proxy that cuts the first ``cuts`` connections after ``after`` bytes of response."""

    def __init__(self, target_port, after, cuts=1):
        self.after, self.cuts, self.connections = after, cuts, 0
        self.target = ('127.0.0.1', target_port)
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.url = 'http://127.0.0.1:%d' % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, dummy = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client):
        upstream = socket.create_connection(self.target)
        request = client.recv(65536)
        upstream.sendall(request)
        cut = False
        if b'/file' in request.split(b'\r\n', 1)[0]:
            self.connections += 1
            cut = self.connections <= self.cuts
        sent = 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if cut and sent + len(data) >= self.after:
                    client.sendall(data[:self.after - sent])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def hostile():
    made = []

    def make(**kw):
        svc = HostileMemdumpService(**kw)
        made.append(svc)
        return svc
    yield make
    for svc in made:
        svc.close()


@pytest.fixture
def keys(tmp_path):
    """Two ed25519 keys: 'good' (in allowed_signers) and 'evil' (not); returns dict of paths."""
    out = {}
    for name in ('good', 'evil'):
        path = str(tmp_path / ('%s_ed25519' % name))
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', path], check=True)
        out[name] = path
    allowed = tmp_path / 'allowed_signers'
    with open(out['good'] + '.pub') as f:
        allowed.write_text('custody@test namespaces="memdump-custody" %s' % f.read())
    out['allowed'] = str(allowed)
    return out


COLLECT = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: collect
      vmforensics.memdump.memdump_collect:
        url: "{{ url }}"
        token: "{{ token | default(omit) }}"
        evidence_dir: "{{ evidence }}"
        label: "{{ label | default('IR-H') }}"
        host: hv01
        vm: "{{ vm }}"
        dump_id: "{{ dump_id }}"
        retry_delay: 0.05
        signing_key: "{{ key | default(omit) }}"
      register: r
'''


def collect(run_playbook, url, evidence, vm='web01', dump_id=DUMP_ID, **extra):
    extra_vars = dict(url=url, evidence=str(evidence), vm=vm, dump_id=dump_id, **extra)
    return run_playbook(COLLECT, extra_vars=extra_vars)


def files_under(path):
    return sorted(os.path.relpath(os.path.join(r, f), str(path)) for r, d, fs in os.walk(str(path)) for f in fs)


def test_hostile_names_and_bodies_are_refused(hostile, run_playbook, tmp_path):
    evidence = tmp_path / 'ev'
    # A name that would climb out is encoded into one file name inside the incident; the log keeps the true name.
    svc = hostile(record_vm='../../../../tmp/x')
    res = collect(run_playbook, svc.url, evidence, vm='../../../../tmp/x')
    assert res.rc == 0, res.stdout
    assert res.task_results('collect')['evidence_file'] == 'hv01/%%2E.%%2F..%%2F..%%2F..%%2Ftmp%%2Fx_%s.elf' % DUMP_ID
    assert (evidence / 'IR-H' / 'hv01' / ('%%2E.%%2F..%%2F..%%2F..%%2Ftmp%%2Fx_%s.elf' % DUMP_ID)).read_bytes() == BODY
    assert {json.loads(line)['vm'] for line in (evidence / 'IR-H' / 'custody.jsonl').read_text().splitlines()} == {
        '../../../../tmp/x'}
    shutil.rmtree(str(evidence))
    # A record that names another VM (one that climbs out, one of another incident) fails; nothing is written.
    for lie in ('../../../../tmp/x', '../../IR-0/hv02/web01', 'db01'):
        svc = hostile(record_vm=lie)
        res = collect(run_playbook, svc.url, evidence)
        assert res.rc != 0, res.stdout
        assert 'names VM %r, but VM \'web01\' was asked for' % lie in res.stdout, res.stdout
        assert not evidence.exists()
        assert not [p for p in svc.requests if '/file' in p[0]]
    svc = hostile(record_dump_id='f' * 32)
    res = collect(run_playbook, svc.url, evidence)
    assert res.rc != 0 and 'answered the record of dump' in res.stdout
    # A wrong hash: nothing kept (no final file, no .part); the acquired event only.
    svc = hostile(sha='0' * 64)
    res = collect(run_playbook, svc.url, evidence)
    assert res.rc != 0 and 'SHA-256 of the received image is %s' % hashlib.sha256(BODY).hexdigest() in res.stdout
    assert files_under(evidence / 'IR-H') == ['.custody.lock', 'custody.jsonl', 'hv01/.web01_%s.elf.lock' % DUMP_ID,
                                              'manifest.json']
    # A body longer than announced (Content-Length says more; or no Content-Length and more bytes).
    shutil.rmtree(str(evidence))
    svc = hostile(extra=b'EXTRA')
    res = collect(run_playbook, svc.url, evidence)
    assert res.rc != 0 and 'Content-Length' in res.stdout, res.stdout
    svc = hostile(extra=b'EXTRA', content_length=False)
    res = collect(run_playbook, svc.url, evidence)
    assert res.rc != 0 and 'sent more than the %d bytes it announced' % len(BODY) in res.stdout, res.stdout
    assert not os.path.exists(str(evidence / 'IR-H' / 'hv01' / ('web01_%s.elf' % DUMP_ID)))
    # A body shorter than announced: resumed until the retries run out, then fails.
    svc = hostile(content_length=False)
    svc.body_full = svc.body
    svc.body = BODY[:1000]
    svc.record['size_bytes'] = len(BODY)
    svc.record['sha256'] = hashlib.sha256(BODY).hexdigest()
    res = collect(run_playbook, svc.url, evidence)
    assert res.rc != 0 and 'resumes did not finish it' in res.stdout, res.stdout
    # An honest answer now works, the token went only to the service, modes are 0400 / 0700.
    shutil.rmtree(str(evidence))
    svc = hostile()
    res = collect(run_playbook, svc.url, evidence, token=TOKEN)
    assert res.rc == 0, res.stdout
    image = evidence / 'IR-H' / 'hv01' / ('web01_%s.elf' % DUMP_ID)
    assert image.read_bytes() == BODY
    assert oct(image.stat().st_mode & 0o777) == '0o400'
    assert oct((evidence / 'IR-H' / 'hv01').stat().st_mode & 0o777) == '0o700'
    assert oct((evidence / 'IR-H').stat().st_mode & 0o777) == '0o700'
    # /health needs no token and gets none; every other request carries this one.
    assert all(auth == 'Bearer ' + TOKEN for path, dummy, auth in svc.requests if path != '/health')
    assert all(auth is None for path, dummy, auth in svc.requests if path == '/health')
    # An existing different file is never overwritten.
    os.chmod(str(image), 0o600)
    image.write_bytes(b'x' + BODY[1:])
    res = collect(run_playbook, svc.url, evidence, label='IR-H')
    assert res.rc != 0 and 'never overwritten' in res.stdout
    assert image.read_bytes()[:1] == b'x'


def test_cut_connection_resumes_with_range(memdump_service, test_driver_uri, run_playbook, tmp_path, keys):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=TOKEN)
    status, answer = svc.api('POST', '/api/dumps', {'vms': ['web01'], 'label': 'IR-CUT'})
    dump_id = answer['dumps'][0]['dump_id']
    for dummy in range(300):
        status, rec = svc.api('GET', '/api/dumps/' + dump_id)
        if rec['state'] in ('completed', 'failed'):
            break
        threading.Event().wait(0.1)
    assert rec['state'] == 'completed', rec
    proxy = CuttingProxy(svc.port, after=rec['size_bytes'] // 3, cuts=2)
    try:
        evidence = tmp_path / 'ev'
        res = collect(run_playbook, proxy.url, evidence, dump_id=dump_id, token=TOKEN, label='IR-CUT', key=keys['good'])
    finally:
        proxy.close()
    assert res.rc == 0, res.stdout
    r = res.task_results('collect')
    assert r['resumes'] == 2 and r['downloaded'] and r['sha256'] == rec['sha256']
    assert sha256_file(r['path']) == rec['sha256']
    assert [e['event'] for e in r['events']] == ['acquired', 'collected', 'verified']
    # The service learns that the image is safe on the controller (its retention may now remove it).
    assert r['marked_collected'] is True
    status, after = svc.api('GET', '/api/dumps/' + dump_id)
    assert after['collected_at']


def acquire(run_playbook, svc, evidence, vms, label, inventory='localhost,', host='localhost', **extra):
    extra_vars = {'memdump_hosts': host, 'label': label, 'vms': vms, 'collect': True, 'evidence_dir': str(evidence),
                  'wait_timeout': 120}
    extra_vars.update(extra)
    return run_playbook('vmforensics.memdump.acquire', extra_vars=extra_vars, inventory=inventory,
                        env={'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token})


def verify(run_playbook, evidence, label, allowed, **extra):
    extra_vars = {'label': label, 'evidence_dir': str(evidence), 'allowed_signers': allowed}
    extra_vars.update(extra)
    return run_playbook('vmforensics.memdump.verify', extra_vars=extra_vars)


def recipe():
    with open(os.path.join(REPO, 'docs', 'runbook.md')) as f:
        text = f.read()
    block = text.split('<!-- custody-recipe -->', 1)[1].split('<!-- /custody-recipe -->', 1)[0]
    return block.split('```sh\n', 1)[1].rsplit('```', 1)[0]


def run_recipe(incident, allowed):
    return subprocess.run(['bash', '-c', recipe()], cwd=str(incident), env=dict(os.environ, ALLOWED=allowed),
                          capture_output=True, text=True, timeout=300, check=False)


def rewrite_line(line, key, **changes):
    """An event edited and, with key, re-signed (a forgery with a key that is not allowed)."""
    event = json.loads(line)
    event.update(changes)
    if key:
        payload = json.dumps(dict((k, v) for k, v in event.items() if k != 'signature'), sort_keys=True,
                             separators=(',', ':'), ensure_ascii=False).encode()
        event['signature'] = subprocess.run(['ssh-keygen', '-q', '-Y', 'sign', '-f', key, '-n', 'memdump-custody'],
                                            input=payload, capture_output=True, check=True).stdout.decode()
    return json.dumps(event, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode()


def test_acquire_verify_tamper_recipe(memdump_service, test_driver_uri, run_playbook, tmp_path, keys):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']), token=TOKEN)
    evidence = tmp_path / 'ev'
    label = 'IR-CUSTODY-1'
    # Deletion without collection is refused with the reason.
    res = acquire(run_playbook, svc, evidence, 'web01', label, collect=False, delete_after_collect=True)
    assert res.rc != 0 and 'needs collect=true' in res.stdout and not evidence.exists()
    # Check mode writes nothing.
    res = run_playbook('vmforensics.memdump.acquire', check=True, extra_vars={
        'memdump_hosts': 'localhost', 'label': label, 'vms': 'web01,db01', 'collect': True, 'evidence_dir': str(evidence)},
        env={'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token})
    assert res.rc == 0, res.stdout
    assert not evidence.exists()

    res = acquire(run_playbook, svc, evidence, 'web01,db01', label, signing_key=keys['good'], delete_after_collect=True)
    assert res.rc == 0, res.stdout + res.stderr
    incident = evidence / label
    events = [json.loads(line) for line in (incident / 'custody.jsonl').read_text().splitlines()]
    assert sorted(e['event'] for e in events) == sorted(['acquired', 'collected', 'verified', 'deleting',
                                                         'deleted_from_host'] * 2)
    # Each deletion: its intent before, its outcome after, naming the intent.
    for dump_id in {e['dump_id'] for e in events}:
        kinds = {e['event']: e for e in events if e['dump_id'] == dump_id}
        assert kinds['verified']['seq'] < kinds['deleting']['seq'] < kinds['deleted_from_host']['seq']
        assert kinds['deleted_from_host']['intent_seq'] == kinds['deleting']['seq']
        assert kinds['deleting']['image_rehashed'] is True and kinds['deleting']['signatures_checked'] is False
    for e in events:
        assert e['signature'].startswith('-----BEGIN SSH SIGNATURE-----')
        assert e['operator'] and e['controller'] and e['host'] == 'localhost' and e['service_host']
        assert e['vm'] in ('web01', 'db01') and e['vm_uuid'] and e['method'] == 'memory-only' and e['format'] == 'elf'
        assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$', e['time']) and e['paused_sec'] is not None
    assert events[0]['prev'] == '0' * 64
    shown = res.role_task_results('Say which images were deleted from the host and which remain there')['msg']
    assert shown['remain_on_host'] == 'none' and shown['deleted_from_host'].count(' ') == 3
    manifest = json.loads((incident / 'manifest.json').read_text())
    assert all(m['collected'] and m['deleted_from_host'] for m in manifest['entries'])

    ok = verify(run_playbook, evidence, label, keys['allowed'])
    assert ok.rc == 0, ok.stdout
    # Re-running the acquisition keeps it passing, and appends nothing.
    before = (incident / 'custody.jsonl').read_bytes()
    again = acquire(run_playbook, svc, evidence, 'web01,db01', label, signing_key=keys['good'])
    assert again.rc == 0 and (incident / 'custody.jsonl').read_bytes() == before, again.stdout
    # reverified events, signed; still verifies, and the literal recipe of docs/runbook.md agrees.
    ok = verify(run_playbook, evidence, label, keys['allowed'], signing_key=keys['good'])
    assert ok.rc == 0 and len(ok.task_results('Verify the images, the custody log\'s chain and its signatures')['reverified']) == 2
    assert verify(run_playbook, evidence, label, keys['allowed']).rc == 0
    out = run_recipe(incident, keys['allowed'])
    assert out.returncode == 0 and 'evidence verifies' in out.stdout, out.stdout + out.stderr

    lines = (incident / 'custody.jsonl').read_bytes().split(b'\n')[:-1]
    image = sorted(str(p) for p in incident.glob('localhost/web01_*.elf'))[0]
    image_rel = os.path.relpath(image, str(incident))

    def tampered(name, change, expect):
        copy = tmp_path / ('t-' + name)
        shutil.copytree(str(evidence), str(copy))
        change(copy / label)
        res = verify(run_playbook, copy, label, keys['allowed'])
        assert res.rc != 0, (name, res.stdout)
        assert re.search(expect, res.stdout), (name, expect, res.stdout)
        rec = run_recipe(copy / label, keys['allowed'])
        return rec

    def write_lines(inc, new):
        (inc / 'custody.jsonl').write_bytes(b'\n'.join(new) + b'\n')

    def flip_byte(inc):
        path = inc / image_rel
        os.chmod(str(path), 0o600)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))

    rec = tampered('byte', flip_byte, r'image %s \(VM web01, dump [0-9a-f]{32}\) changed' % re.escape(image_rel))
    assert rec.returncode != 0 and 'FAILED' in rec.stdout + rec.stderr
    rec = tampered('removed', lambda inc: write_lines(inc, lines[:2] + lines[3:]),
                   r'event at line 3 \(seq 3, .*\) has seq 3 at position 2')
    assert rec.returncode != 0 and 'chain broken' in rec.stdout + rec.stderr
    tampered('reordered', lambda inc: write_lines(inc, [lines[1], lines[0]] + lines[2:]),
             r'event at line 1 \(seq 1, .*\) .*does not chain')
    rec = tampered('edited', lambda inc: write_lines(inc, lines[:1] + [rewrite_line(lines[1], None, operator='mallory')] + lines[2:]),
                   r'event at line 2 .*signature does not match the event.*edited or forged')
    assert 'line 2: BAD signature' in rec.stdout
    rec = tampered('forged', lambda inc: write_lines(inc, lines[:-1] + [rewrite_line(lines[-1], keys['evil'], operator='mallory')]),
                   r'event at line %d .*signed by a key that is not in .*edited or forged' % len(lines))
    assert 'line %d: unsigned or not signed by an allowed signer' % len(lines) in rec.stdout
    tampered('missing', lambda inc: os.unlink(str(inc / image_rel)), r'image %s \(VM web01, .*\) is missing' % re.escape(image_rel))
    tampered('unlisted', lambda inc: (inc / 'localhost' / 'extra.elf').write_bytes(b'x'),
             r'localhost/extra.elf is not listed in the custody log')
    tampered('manifest', lambda inc: (inc / 'manifest.json').write_text('{}\n'), r'manifest.json differs')
    tampered('unsigned', lambda inc: write_lines(inc, lines + [rewrite_line(lines[-1], None, signature=None)]),
             r'is not signed')


def test_concurrent_runs_on_one_label_keep_both(memdump_service, test_driver_uri, run_playbook, tmp_path, keys):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01', 'app01', 'mail01']), token=TOKEN)
    evidence = tmp_path / 'ev'
    label = 'IR-CONCURRENT'
    results = {}

    def run(host, vms):
        results[host] = acquire(run_playbook, svc, evidence, vms, label, inventory='%s,' % host, host=host,
                                signing_key=keys['good'], ansible_connection='local')
    threads = [threading.Thread(target=run, args=('hva', 'web01,db01')), threading.Thread(target=run, args=('hvb', 'app01,mail01'))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for host, res in results.items():
        assert res.rc == 0, (host, res.stdout + res.stderr)
    events = [json.loads(line) for line in (evidence / label / 'custody.jsonl').read_text().splitlines()]
    assert sorted({(e['host'], e['vm']) for e in events}) == [('hva', 'db01'), ('hva', 'web01'), ('hvb', 'app01'), ('hvb', 'mail01')]
    assert len(events) == 12 and [e['seq'] for e in events] == list(range(12))
    res = verify(run_playbook, evidence, label, keys['allowed'])
    assert res.rc == 0, res.stdout
    assert len(json.loads((evidence / label / 'manifest.json').read_text())['entries']) == 4
