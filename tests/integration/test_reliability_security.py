"""Reliability (issue 8): secrets, TLS and file permissions, end to end.

- the service token and the InfluxDB credentials never appear in the service log, the output of
  ``ansible-playbook -vvv`` (human and JSON), module results, the Ansible log file or spool files;
- a service with a self-signed certificate: modules fail clearly with ``validate_certs: true`` and
  work with ``ca_path``;
- images are 0600 in a 0700 directory owned by the service's user, whatever the umask.

Issue 13 (service security):

- Host header tricks and odd request targets never reach evidence without a valid token (raw HTTP);
- 300 half-open connections do not starve ``/health``, also under a low open-files limit;
- TLS offers only TLS 1.2+ with AEAD suites; mutual TLS refuses clients without a certificate of the CA.
"""
import glob
import hashlib
import json
import os
import resource
import socket
import ssl
import stat
import subprocess
import threading
import time

import httpx
import pytest

from conftest import MemdumpService, free_port

SERVICE_TOKEN = 'svc-SECRET-tok-4b1d9a77e0'
WRONG_TOKEN = 'svc-WRONG-tok-91c2ffee03'
INFLUX_PASSWORD = 'influx-SECRET-pw-5e6f'
URL_PASSWORD = 'url-SECRET-pw-77aa'
SECRETS = (SERVICE_TOKEN, WRONG_TOKEN, INFLUX_PASSWORD, URL_PASSWORD)

SECRETS_PLAY = """
- name: Secrets must not leak
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/vmforensics.memdump.memdump:
      url: "{{ svc_url }}"
      token: "{{ svc_token }}"
  tasks:
    - name: trigger
      vmforensics.memdump.memdump_trigger:
        vms: [web01, db01]
        label: "{{ label }}"
      register: trigger
    - name: wait
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 60
        allow_failed: true
    - name: info
      vmforensics.memdump.memdump_info:
        label: "{{ label }}"
    - name: wrong token
      vmforensics.memdump.memdump_trigger:
        vms: [app01]
        token: "{{ wrong_token }}"
      ignore_errors: true
      register: wrong
    - name: bad name
      vmforensics.memdump.memdump_trigger:
        vms: ["web01/../../etc"]
      ignore_errors: true
    - name: records with the InfluxDB password
      vmforensics.memdump.memdump_records:
        url: "{{ influx_url }}"
        username: memdump
        password: "{{ influx_password }}"
        request_timeout: 3
      ignore_errors: true
    - name: records with a password written into the URL
      vmforensics.memdump.memdump_records:
        url: "http://memdump:{{ url_password }}@{{ influx_url | ansible.builtin.urlsplit('netloc') }}"
        request_timeout: 3
      ignore_errors: true
"""


def all_text_under(path):
    out = []
    for name in glob.glob(os.path.join(str(path), '**'), recursive=True):
        if os.path.isfile(name):
            with open(name, 'rb') as f:
                out.append((name, f.read().decode('utf-8', 'replace')))
    return out


def assert_no_secret(where, text):
    for secret in SECRETS:
        assert secret not in text, 'secret %r... found in %s' % (secret[:8], where)


def test_secrets_never_leak(tmp_path, memdump_service, test_driver_uri, run_playbook):
    """Two runs at -vvv, each with the InfluxDB write failing (so the callback warns and spools):
    a human one (default callback; InfluxDB URL with user info, nothing listening) and a JSON one
    (service token from the environment; real InfluxDB with auth, wrong password)."""
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01', 'app01']), token=SERVICE_TOKEN)
    auth_url = os.environ.get('MEMDUMP_TEST_INFLUXDB_AUTH_URL') or 'http://127.0.0.1:%d' % free_port()
    spool = tmp_path / 'spool'
    env = {'ANSIBLE_CALLBACKS_ENABLED': 'vmforensics.memdump.influxdb',
           'MEMDUMP_INFLUXDB_DATABASE': 'memdump_secrets', 'MEMDUMP_INFLUXDB_USERNAME': 'memdump',
           'MEMDUMP_INFLUXDB_PASSWORD': INFLUX_PASSWORD, 'MEMDUMP_INFLUXDB_SPOOL_DIR': str(spool),
           'MEMDUMP_INFLUXDB_TIMEOUT': '3', 'ANSIBLE_LOG_PATH': str(tmp_path / 'ansible.log')}
    extra = {'svc_url': svc.url, 'svc_token': SERVICE_TOKEN, 'wrong_token': WRONG_TOKEN, 'label': 'IR-sec-1',
             'influx_url': auth_url, 'influx_password': INFLUX_PASSWORD, 'url_password': URL_PASSWORD}
    # 1) what a person sees: the default stdout callback at -vvv
    human = run_playbook(SECRETS_PLAY, extra_vars=extra, args=('-vvv',),
                         env=dict(env, ANSIBLE_STDOUT_CALLBACK='ansible.builtin.default',
                                  MEMDUMP_INFLUXDB_URL='http://memdump:%s@127.0.0.1:%d' % (URL_PASSWORD, free_port())))
    assert human.rc == 0, human.stdout[-5000:] + human.stderr[-3000:]
    assert 'wrong token' in human.stdout and '401' in human.stdout, human.stdout[-3000:]
    assert 'vmforensics.memdump.influxdb' in human.stdout + human.stderr, 'the callback did not warn'
    # 2) what a machine sees: every module result as JSON, also at -vvv (service token by environment)
    machine = run_playbook(SECRETS_PLAY.replace('      token: "{{ svc_token }}"\n', ''), args=('-vvv',),
                           extra_vars=dict(extra, label='IR-sec-2'),
                           env=dict(env, MEMDUMP_SERVICE_TOKEN=SERVICE_TOKEN, MEMDUMP_INFLUXDB_URL=auth_url))
    assert machine.rc == 0, machine.stdout[-5000:] + machine.stderr[-3000:]
    wrong = machine.task_results('wrong token')
    assert wrong['failed'] and '401' in wrong['msg'], wrong
    # A module passes the service's 4xx on bad input through, saying what is wrong.
    bad = machine.task_results('bad name')
    assert bad['failed'] and 'HTTP 400' in bad['msg'] and 'web01/../../etc' in bad['msg'], bad
    done = machine.task_results('wait')
    assert sorted(done['completed'] + done['failed_vms']) == ['db01', 'web01'], done
    args = machine.task_results('trigger')['invocation']['module_args']
    assert args.get('token') in (None, 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'), args
    assert machine.task_results('records with the InfluxDB password')['failed']

    for name, res in (('-vvv human', human), ('-vvv json', machine)):
        assert_no_secret(name + ' stdout', res.stdout)
        assert_no_secret(name + ' stderr', res.stderr)
    assert_no_secret('module results', json.dumps(machine.json))
    assert_no_secret('ansible log', (tmp_path / 'ansible.log').read_text(errors='replace'))
    assert_no_secret('service log', svc.read_log())
    spooled = all_text_under(spool)
    assert spooled, 'the callback spooled nothing although InfluxDB could not take the points'
    for name, text in spooled:
        assert_no_secret('spool file ' + name, text)
        mode = stat.S_IMODE(os.stat(name).st_mode)
        assert mode & 0o077 == 0, '%s is mode %o' % (name, mode)
    assert stat.S_IMODE(os.stat(spool).st_mode) & 0o077 == 0


TLS_PLAY = """
- name: TLS
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/vmforensics.memdump.memdump:
      url: "{{ svc_url }}"
      token: "{{ svc_token }}"
%s
  tasks:
    - name: info
      vmforensics.memdump.memdump_info:
        label: IR-tls
      register: info
    - name: trigger
      vmforensics.memdump.memdump_trigger:
        vms: [web01]
        label: IR-tls
      register: trigger
    - name: wait
      vmforensics.memdump.memdump_wait:
        dumps: "{{ trigger.dumps }}"
        wait_timeout: 60
        allow_failed: true
"""


def test_tls_self_signed(memdump_service, test_driver_uri, self_signed_cert, run_playbook):
    cert, key = self_signed_cert
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=SERVICE_TOKEN,
                          extra_args=['--tls-cert', cert, '--tls-key', key])
    assert svc.url.startswith('https://')
    # The service really speaks TLS with that certificate.
    with httpx.Client(verify=ssl.create_default_context(cafile=cert)) as client:
        assert client.get(svc.url + '/health').status_code == 200
    with pytest.raises(httpx.ConnectError):
        with httpx.Client() as client:
            client.get(svc.url + '/health')
    extra = {'svc_url': svc.url, 'svc_token': SERVICE_TOKEN}

    # validate_certs true (the default): memdump_info says unavailable, memdump_trigger fails clearly.
    strict = run_playbook(TLS_PLAY % '', extra_vars=extra)
    assert strict.rc != 0
    service = strict.task_results('info')['service']
    assert service['status'] == 'unavailable' and 'certificate' in json.dumps(service).lower(), service
    res = strict.task_results('trigger')
    assert res['failed'], res
    msg = res['msg']
    assert 'certificate' in msg.lower() and svc.url in msg, msg
    status, body = svc.api('GET', '/api/dumps')
    assert status == 200 and body['dumps'] == [], body

    # ca_path: works end to end.
    trusted = run_playbook(TLS_PLAY % ('      ca_path: "%s"' % cert), extra_vars=extra)
    assert trusted.rc == 0, trusted.stdout[-5000:] + trusted.stderr[-2000:]
    assert trusted.task_results('info')['service']['status'] == 'ok'
    done = trusted.task_results('wait')
    assert done['completed'] + done['failed_vms'] == ['web01'], done
    assert SERVICE_TOKEN not in strict.stdout + trusted.stdout + svc.read_log()
    # The failure says what to do about it (not only "check url and that the service is running").
    assert 'ca_path' in msg or 'validate_certs' in msg, 'the message does not say what to do: %s' % msg


def test_image_files_0600_in_0700_dir_owned_by_service_user(memdump_service, wait_until):
    """Real QEMU dumps under a permissive umask (0): the modes come from the service, not the umask.
    (The temp file mid-dump is checked in test_reliability_faults.py::test_kill_9_mid_dump_then_restart.)"""
    vms = [os.environ['MEMDUMP_TEST_VM'], os.environ['MEMDUMP_TEST_VM2']]
    old = os.umask(0)
    try:
        svc = memdump_service()
    finally:
        os.umask(old)
    service_uid = os.stat('/proc/%d' % svc.proc.pid).st_uid
    status, body = svc.api('POST', '/api/dumps', {'vms': vms})
    assert status == 202, body

    def finished():
        recs = [svc.api('GET', '/api/dumps/' + d['dump_id'])[1] for d in body['dumps']]
        return recs if all(r['state'] in ('completed', 'failed') for r in recs) else None
    records = wait_until(finished, 120, interval=0.1, what='both dumps to finish')
    assert [r['state'] for r in records] == ['completed', 'completed'], records
    dir_st = os.stat(svc.dump_dir)
    assert stat.S_IMODE(dir_st.st_mode) == 0o700 and dir_st.st_uid == service_uid, oct(dir_st.st_mode)
    assert sorted(os.listdir(svc.dump_dir)) == sorted(os.path.basename(r['dump_path']) for r in records)
    for rec in records:
        st = os.stat(rec['dump_path'])
        assert os.path.dirname(rec['dump_path']) == svc.dump_dir
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == service_uid, (rec['dump_path'], oct(st.st_mode))
    # The job database holds evidence metadata (VM names, paths, hashes): private as well.
    assert stat.S_IMODE(os.stat(svc.state_file).st_mode) == 0o600, oct(os.stat(svc.state_file).st_mode)
    print('state files: %s' % {os.path.basename(p): oct(stat.S_IMODE(os.stat(p).st_mode))
                               for p in glob.glob(svc.state_file + '*')})


# ---- Issue 13 -------------------------------------------------------------------------------------

def raw_request(port, method, target, host=None, token=None, body=None, extra=b''):
    """One request sent byte for byte (no client library fixing the Host header); returns the status code."""
    head = b'%s %s HTTP/1.1\r\n' % (method.encode(), target.encode('latin-1'))
    if host is not None:
        head += b'Host: ' + host.encode('latin-1') + b'\r\n'
    if token is not None:
        head += b'Authorization: Bearer ' + token.encode() + b'\r\n'
    data = json.dumps(body).encode() if body is not None else b''
    if body is not None:
        head += b'Content-Type: application/json\r\n'
    head += b'Content-Length: %d\r\nConnection: close\r\n' % len(data) + extra + b'\r\n'
    with socket.create_connection(('127.0.0.1', port), timeout=30) as sock:
        sock.sendall(head + data)
        answer = b''
        while b'\r\n' not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b' ', 2)[1]) if answer.startswith(b'HTTP/1.1 ') else None


def tokens_file(path, clients):
    """A 0600 tokens file for {name: scopes}; returns {name: token}."""
    tokens = {name: 'tok-%s-%s' % (name, os.urandom(8).hex()) for name in clients}
    with open(path, 'w') as f:
        json.dump({'clients': [{'name': name, 'token_sha256': hashlib.sha256(tokens[name].encode()).hexdigest(),
                                'scopes': scopes} for name, scopes in clients.items()]}, f)
    os.chmod(path, 0o600)
    return tokens


HOSTS = ['x?', 'x#', 'x/y', 'x?/api/dumps', 'x#/api/dumps', '127.0.0.1?', '127.0.0.1#', '127.0.0.1/api/dumps',
         '127.0.0.1:%(port)d/x', '127.0.0.1:%(port)d?', '127.0.0.1:x', '[::1', 'evil.example', '127.0.0.1@evil',
         '127.0.0.1 evil', '', '..', '%%2F', None]
# The first two reach the route; the others are odd spellings of it that must not.
TARGETS = ['%(path)s', '%(path)s?', '//%(path_tail)s', '%(path)s#x', 'http://127.0.0.1%(path)s', 'http://evil%(path)s',
           '/health/..%(path)s', '%(path_upper)s']


def test_host_and_target_tricks_never_reach_evidence_without_a_token(memdump_service, test_driver_uri, tmp_path):
    """Every route x Host tricks (x?, x#, x/y, ...) x request-target tricks, without a token, with a wrong one, with a
    read-only one and with an all-scopes one: an odd Host is refused (400) whatever the token, no token or a wrong one
    is never admitted (401), a missing scope is named (403); nothing was created or deleted."""
    path = str(tmp_path / 'tokens.json')
    tokens = tokens_file(path, {'admin': ['read', 'collect', 'trigger', 'delete'], 'reader': ['read']})
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']), extra_args=['--tokens-file', path])
    dump_id = svc.api('POST', '/api/dumps', {'vms': ['web01']}, token=tokens['admin'])[1]['dumps'][0]['dump_id']
    record = poll_record(svc, dump_id, tokens['admin'])
    before = svc.api('GET', '/api/dumps', token=tokens['admin'])[1]['dumps']
    files = sorted(os.listdir(svc.dump_dir))
    routes = [('GET', '/api/dumps', None, True), ('GET', '/api/dumps/' + dump_id, None, True),
              ('GET', '/api/dumps/%s/file' % dump_id, None, False),
              ('POST', '/api/dumps/%s/collected' % dump_id, {'sha256': record['sha256']}, False),
              ('POST', '/api/dumps', {'vms': ['db01']}, False), ('DELETE', '/api/dumps/' + dump_id, None, False)]
    good_host = '127.0.0.1:%d' % svc.port
    statuses = {}
    for method, route, payload, readable in routes:
        fields = {'path': route, 'path_tail': route.lstrip('/'), 'path_upper': route.upper(), 'port': svc.port}
        for host in HOSTS + [good_host]:
            for target in TARGETS:
                for who in (None, 'wrong', 'reader', 'admin'):
                    if who == 'admin' and host == good_host:
                        continue  # a valid request: it would change evidence, as it may
                    token = {'wrong': 'wrong-' + tokens['admin']}.get(who, tokens.get(who))
                    code = raw_request(svc.port, method, target % fields, None if host is None else host % fields, token, payload)
                    statuses[code] = statuses.get(code, 0) + 1
                    what = (method, target % fields, host, who, code)
                    plain = target in TARGETS[:2]
                    if host != good_host:
                        assert code == 400, what
                    elif who in (None, 'wrong'):
                        assert code == 401 if plain else code in (400, 401, 404, 405), what
                    elif plain:
                        assert code == (200 if readable else 403), what
                    else:  # an odd spelling is no route, or another (unknown) dump: never a way around the scope
                        assert code in (400, 404, 405) or (code == 403 and not readable), what
    print('host/target tricks: %d raw requests, statuses %s' % (sum(statuses.values()), statuses))
    assert sum(statuses.values()) >= len(routes) * len(HOSTS) * len(TARGETS) * 4
    assert svc.api('GET', '/api/dumps', token=tokens['admin'])[1]['dumps'] == before
    assert sorted(os.listdir(svc.dump_dir)) == files
    log = svc.read_log()
    audit = [json.loads(line.split('memdump_service.audit: ', 1)[1]) for line in log.splitlines() if 'memdump_service.audit: ' in line]
    assert {a['client'] for a in audit} == {None, 'reader', 'admin'} and {a['remote'] for a in audit} == {'127.0.0.1'}
    assert {a['status'] for a in audit if a['client'] is None} == {401}
    assert not any(token in log for token in tokens.values())


def poll_record(svc, dump_id, token, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        record = svc.api('GET', '/api/dumps/' + dump_id, token=token)[1]
        if record['state'] in ('completed', 'failed') or time.monotonic() > deadline:
            assert record['state'] == 'completed', record
            return record
        time.sleep(0.05)


class LimitedService(MemdumpService):
    """A memdump service started under a lower limit of open files (soft, hard)."""

    def __init__(self, *args, nofile, **kwargs):
        super().__init__(*args, **kwargs)
        self.program = ('-c', 'import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); '
                              'runpy.run_module("memdump_service", run_name="__main__")' % nofile)


@pytest.fixture
def own_service(tmp_path):
    """Factory: ``own_service(cls, libvirt_uri, wait=True, **kwargs)`` starts a service of a MemdumpService subclass
    (or with start(wait=False), for services the fixture's plain health probe cannot reach); stopped afterwards."""
    started = []

    def start(cls, libvirt_uri, wait=True, **kwargs):
        workdir = tmp_path / ('own%d' % len(started))
        workdir.mkdir()
        svc = cls(workdir, libvirt_uri, **kwargs)
        started.append(svc)
        return svc.start(wait=wait)

    yield start
    for svc in started:
        svc.stop()


def closed_by_peer(sock):
    """True once the service closed this connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b''
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_all_closed(socks, timeout):
    """How many of socks the service has not closed when it has closed them all, or when timeout seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        still_open = sum(not closed_by_peer(sock) for sock in socks)
        if not still_open or time.monotonic() > deadline:
            return still_open
        time.sleep(0.1)


@pytest.mark.parametrize('nofile', ['soft-256', 'soft-and-hard-256'])
def test_half_open_connections_do_not_starve_health(own_service, test_driver_uri, nofile):
    """300 connections that send half a request head and stop: /health answers at once, the oldest pending ones are
    closed when more than --max-pending-connections wait, the rest after --header-timeout; no 'Too many open files'."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = (256, hard) if nofile == 'soft-256' else (256, 256)
    svc = own_service(LimitedService, test_driver_uri(['web01']), extra_args=['--header-timeout', '3'], nofile=limits)
    with open('/proc/%d/limits' % svc.proc.pid) as f:
        soft_now = [int(line.split()[3]) for line in f if line.startswith('Max open files')][0]
    assert soft_now == limits[1], 'the service did not raise its soft limit to the hard one'
    socks = []
    try:
        started = time.monotonic()
        for _number in range(300):
            # Under the tight limit the listen backlog is small: the kernel makes some connects retry their SYN.
            sock = socket.create_connection(('127.0.0.1', svc.port), timeout=30)
            sock.sendall(b'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n')
            socks.append(sock)
        opened = time.monotonic() - started
        time.sleep(0.5)
        latencies = []
        for _attempt in range(10):
            begin = time.monotonic()
            status, body = svc.api('GET', '/health')
            latencies.append(time.monotonic() - begin)
            assert status == 200 and body['status'] == 'ok', (status, body)
        evicted = sum(closed_by_peer(sock) for sock in socks)
        # Closed once the header timeout (3 s) has passed: wait for that (bounded) rather than sleep a fixed time.
        still_open = wait_all_closed(socks, 3 + 15)
    finally:
        for sock in socks:
            sock.close()
    print('%s: 300 half-open connections opened in %.3f s; /health max %.3f s, median %.3f s; %d closed as the oldest '
          'pending, %d still open after the header timeout' % (nofile, opened, max(latencies), sorted(latencies)[5], evicted, still_open))
    assert max(latencies) < 2, latencies
    assert evicted >= 300 - (256 if nofile == 'soft-256' else 64), evicted
    assert still_open == 0
    assert svc.api('GET', '/health')[0] == 200
    assert 'Too many open files' not in svc.read_log(), svc.read_log()[-3000:]


def tls_handshake(port, ciphers, versions, cert=None):
    """(TLS version, cipher) a client restricted to ciphers and (min, max) versions gets, or None when refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers(ciphers + ':@SECLEVEL=0')  # the probe itself must be able to offer old suites
    context.minimum_version, context.maximum_version = versions
    if cert:
        context.load_cert_chain(*cert)
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
            with context.wrap_socket(sock) as tls:
                return tls.version(), tls.cipher()[0]
    except (ssl.SSLError, OSError):
        return None


@pytest.fixture
def permissive_tls_server(self_signed_cert):
    """A TLS server that takes anything (TLS 1.0+, every suite): the control that shows the probes can connect at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed_cert)
    context.set_ciphers('ALL:@SECLEVEL=0')
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    listener = socket.create_server(('127.0.0.1', 0))

    def serve():
        while True:
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


V = ssl.TLSVersion
TLS_ACCEPTED = [('ECDHE-RSA-AES128-GCM-SHA256', (V.TLSv1_2, V.TLSv1_2)), ('ECDHE-RSA-AES256-GCM-SHA384', (V.TLSv1_2, V.TLSv1_2)),
                ('ECDHE-RSA-CHACHA20-POLY1305', (V.TLSv1_2, V.TLSv1_2)), ('DEFAULT', (V.TLSv1_3, V.TLSv1_3))]
TLS_REFUSED = [('ECDHE-RSA-AES128-SHA', (V.TLSv1_2, V.TLSv1_2)), ('ECDHE-RSA-AES256-SHA', (V.TLSv1_2, V.TLSv1_2)),
               ('AES128-SHA', (V.TLSv1_2, V.TLSv1_2)), ('AES256-SHA', (V.TLSv1_2, V.TLSv1_2)),
               ('ECDHE-RSA-AES128-SHA256', (V.TLSv1_2, V.TLSv1_2)), ('AES128-SHA256', (V.TLSv1_2, V.TLSv1_2)),
               ('AES128-GCM-SHA256', (V.TLSv1_2, V.TLSv1_2)), ('ALL', (V.MINIMUM_SUPPORTED, V.TLSv1_1))]


@pytest.mark.filterwarnings('ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning')
def test_tls_offers_only_aead_suites_on_tls12_and_later(memdump_service, test_driver_uri, self_signed_cert, permissive_tls_server):
    cert, key = self_signed_cert
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=SERVICE_TOKEN, extra_args=['--tls-cert', cert, '--tls-key', key])
    for ciphers, versions in TLS_REFUSED:
        assert tls_handshake(permissive_tls_server, ciphers, versions), 'the probe cannot offer %s at all' % ciphers
        assert tls_handshake(svc.port, ciphers, versions) is None, 'the service accepted %s %s' % (ciphers, versions)
    for ciphers, versions in TLS_ACCEPTED:
        got = tls_handshake(svc.port, ciphers, versions)
        assert got and got[0] == ('TLSv1.3' if versions[0] == V.TLSv1_3 else 'TLSv1.2'), (ciphers, got)
    print('TLS: refused %s; accepted %s' % ([c for c, _v in TLS_REFUSED], [tls_handshake(svc.port, c, v) for c, v in TLS_ACCEPTED]))


def test_a_tls_handshake_that_never_comes_is_closed_after_the_header_timeout(memdump_service, test_driver_uri, self_signed_cert):
    """Connections that open TCP to the TLS listener and send nothing: closed after --header-timeout (asyncio's own
    handshake timeout, which uvicorn does not set, is 60 s); /health over TLS answers meanwhile."""
    cert, key = self_signed_cert
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=SERVICE_TOKEN,
                          extra_args=['--tls-cert', cert, '--tls-key', key, '--header-timeout', '2'])
    socks = [socket.create_connection(('127.0.0.1', svc.port), timeout=10) for _number in range(50)]
    try:
        time.sleep(0.5)
        assert svc.api('GET', '/health')[0] == 200
        assert not any(closed_by_peer(sock) for sock in socks)
        still_open = wait_all_closed(socks, 2 + 15)
    finally:
        for sock in socks:
            sock.close()
    assert still_open == 0, '%d of 50 silent TLS connections still open after the header timeout' % still_open


def openssl(*args):
    subprocess.run(['openssl'] + list(args), check=True, capture_output=True, timeout=60)


def make_client_cert(tmp_path, name):
    """A CA and a client certificate signed by it: returns (ca_path, (cert_path, key_path))."""
    ca, ca_key = tmp_path / (name + '-ca.pem'), tmp_path / (name + '-ca.key')
    cert, key, csr = tmp_path / (name + '.pem'), tmp_path / (name + '.key'), tmp_path / (name + '.csr')
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=%s-ca' % name, '-keyout', str(ca_key), '-out', str(ca))
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=%s' % name, '-keyout', str(key), '-out', str(csr))
    openssl('x509', '-req', '-in', str(csr), '-CA', str(ca), '-CAkey', str(ca_key), '-CAcreateserial', '-days', '2', '-out', str(cert))
    return str(ca), (str(cert), str(key))


def test_mutual_tls_requires_a_client_certificate_of_the_ca(own_service, test_driver_uri, self_signed_cert, tmp_path):
    cert, key = self_signed_cert
    ca, client = make_client_cert(tmp_path, 'ir-client')
    _other_ca, stranger = make_client_cert(tmp_path, 'stranger')
    svc = own_service(MemdumpService, test_driver_uri(['web01']), wait=False, token=SERVICE_TOKEN,
                      extra_args=['--tls-cert', cert, '--tls-key', key, '--tls-client-ca', ca])

    def client_for(pair):
        context = ssl.create_default_context(cafile=cert)
        if pair:
            context.load_cert_chain(*pair)
        return httpx.Client(verify=context, timeout=10)

    deadline = time.monotonic() + 30
    while True:
        try:
            with client_for(client) as web:
                assert web.get(svc.url + '/health').status_code == 200
                answer = web.get(svc.url + '/api/dumps', headers={'Authorization': 'Bearer ' + SERVICE_TOKEN})
                assert answer.status_code == 200 and answer.json()['dumps'] == []
            break
        except httpx.TransportError:
            assert svc.proc.poll() is None and time.monotonic() < deadline, svc.read_log()
            time.sleep(0.1)
    for pair in (None, stranger):
        with pytest.raises(httpx.TransportError):
            with client_for(pair) as web:
                web.get(svc.url + '/health')
        assert tls_handshake(svc.port, 'DEFAULT', (V.TLSv1_2, V.TLSv1_2), pair) is None
