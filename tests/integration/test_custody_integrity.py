"""Issue 24 (and 21's connection options): evidence that survives every failure, with the real service,
real ansible-playbook runs and the stack's InfluxDB. Everything talks to 127.0.0.1 only.

Deletion as a recorded transaction (a controller killed between intent and deletion, then a re-run), a
``~/`` signing key through the role, a verifier that says what it checked and refuses what it could not,
a cut tail found through witnesses, a torn line repaired by the recorded step, and VM names that are
not file names.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request

import pytest

from conftest import poll_until, stack_env

TOKEN = 'integrity-test-token'
LABEL = 'IR-INTEGRITY'


@pytest.fixture
def keys(tmp_path):
    """A signing key in ``<home>/.ssh`` (to be named ``~/.ssh/custody``) and its allowed-signers file."""
    home = tmp_path / 'home'
    (home / '.ssh').mkdir(parents=True)
    key = home / '.ssh' / 'custody'
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'custody@test', '-f', str(key)], check=True)
    allowed = tmp_path / 'allowed_signers'
    allowed.write_text('custody@test namespaces="memdump-custody" ' + (home / '.ssh' / 'custody.pub').read_text())
    return {'home': str(home), 'key': str(key), 'allowed': str(allowed)}


def acquire(run_playbook, svc, evidence, vms, keys, callback_env=None, **extra):
    extra_vars = {'memdump_hosts': 'localhost', 'label': LABEL, 'vms': vms, 'collect': True,
                  'evidence_dir': str(evidence), 'wait_timeout': 120, 'signing_key': '~/.ssh/custody'}
    extra_vars.update(extra)
    env = {'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token, 'HOME': keys['home']}
    env.update(callback_env or {})
    return run_playbook('vmforensics.memdump.acquire', extra_vars=extra_vars, env=env)


def verify(run_playbook, evidence, env=None, **extra):
    extra_vars = {'label': LABEL, 'evidence_dir': str(evidence)}
    extra_vars.update(extra)
    return run_playbook('vmforensics.memdump.verify', extra_vars=extra_vars, env=env)


VERIFY_TASK = 'Verify the images, the custody log\'s chain and its signatures'


def events_of(evidence):
    with open(os.path.join(str(evidence), LABEL, 'custody.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_deletion_with_a_home_relative_key_is_signed_and_recorded_before_it_happens(memdump_service, test_driver_uri,
                                                                                    run_playbook, tmp_path, keys):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=TOKEN)
    evidence = tmp_path / 'ev'
    res = acquire(run_playbook, svc, evidence, 'web01', keys, delete_after_collect=True)
    assert res.rc == 0, res.stdout + res.stderr
    events = events_of(evidence)
    assert [e['event'] for e in events] == ['acquired', 'collected', 'verified', 'deleting', 'deleted_from_host']
    assert all(e['signature'].startswith('-----BEGIN SSH SIGNATURE-----') for e in events)
    status, record = svc.api('GET', '/api/dumps/' + events[0]['dump_id'])
    assert record['file_deleted'] is True
    res = verify(run_playbook, evidence, allowed_signers=keys['allowed'])
    assert res.rc == 0, res.stdout
    checked = res.task_results(VERIFY_TASK)['checked']
    assert checked['signatures_verified'] == 5 and checked['signers'] == ['custody@test']
    assert checked['images_rehashed'] == 1 and checked['chain_events'] == 5


class HoldingProxy:
    """A loopback TCP proxy to the real service that passes everything but holds every DELETE request
    (never forwarded, never answered): the host's deletion is in flight when the controller dies."""

    def __init__(self, target_port):
        self.target = ('127.0.0.1', target_port)
        self.held = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.url = 'http://127.0.0.1:%d' % self.sock.getsockname()[1]
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, dummy = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client):
        request = client.recv(65536)
        if request.startswith(b'DELETE '):
            self.open.append(client)
            self.held.set()
            return
        upstream = socket.create_connection(self.target)
        try:
            upstream.sendall(request)
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self):
        self.sock.close()
        for client in self.open:
            client.close()


def kill_tree(proc):
    """SIGKILL for a process this test started and all its descendants (ansible-playbook's workers run in
    sessions of their own, so a process group would miss them), found by parent pid in /proc."""
    pids, frontier = [proc.pid], [proc.pid]
    while frontier:
        parent, frontier = frontier, []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % entry) as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in parent and int(entry) not in pids:
                pids.append(int(entry))
                frontier.append(int(entry))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


DELETE_PLAY = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: delete
      vmforensics.memdump.memdump_delete:
        url: "{{ url }}"
        token: "{{ token }}"
        request_timeout: 300
        dump_id: "{{ dump_id }}"
        vm: web01
        evidence_dir: "{{ evidence }}"
        label: IR-INTEGRITY
        allowed_signers: "{{ allowed }}"
        signing_key: ~/.ssh/custody
      register: r
'''


def test_a_controller_killed_between_intent_and_deletion_leaves_a_log_a_rerun_completes(
        memdump_service, test_driver_uri, run_playbook, tmp_path, keys):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=TOKEN)
    evidence = tmp_path / 'ev'
    assert acquire(run_playbook, svc, evidence, 'web01', keys).rc == 0
    dump_id = events_of(evidence)[0]['dump_id']
    proxy = HoldingProxy(svc.port)
    play = tmp_path / 'delete.yml'
    play.write_text(DELETE_PLAY)
    extra = {'url': proxy.url, 'token': TOKEN, 'dump_id': dump_id, 'evidence': str(evidence), 'allowed': keys['allowed']}
    env = dict(os.environ, HOME=keys['home'], ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_LOCAL_TEMP=str(tmp_path / 'ansible-tmp'))
    proc = subprocess.Popen(['ansible-playbook', '-i', 'localhost,', '-c', 'local', str(play), '-e', json.dumps(extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        assert proxy.held.wait(120), 'the deletion never reached the host'
        kill_tree(proc)  # the controller dies: ansible-playbook, its worker (the action plugin) and the module
    finally:
        kill_tree(proc)
        proxy.close()
    # The log says exactly what happened: the intent, no outcome; the image is still on the host.
    events = events_of(evidence)
    assert [e['event'] for e in events] == ['acquired', 'collected', 'verified', 'deleting']
    assert events[-1]['signatures_checked'] is True and events[-1]['image_rehashed'] is True
    status, record = svc.api('GET', '/api/dumps/' + dump_id)
    assert record['file_deleted'] is False
    res = verify(run_playbook, evidence, allowed_signers=keys['allowed'])
    assert res.rc == 0, res.stdout
    assert [(p['dump_id'], p['intent_seq']) for p in res.task_results(VERIFY_TASK)['pending_deletions']] == [(dump_id, 3)]
    manifest = json.loads((evidence / LABEL / 'manifest.json').read_text())
    assert manifest['entries'][0]['deletion'] == 'pending'
    # The re-run completes the same intent.
    res = run_playbook(DELETE_PLAY, extra_vars=dict(extra, url=svc.url), env={'HOME': keys['home']})
    assert res.rc == 0, res.stdout
    events = events_of(evidence)
    assert [e['event'] for e in events] == ['acquired', 'collected', 'verified', 'deleting', 'deleted_from_host']
    assert events[-1]['intent_seq'] == 3 and events[-1]['deleted_by_this_run'] is True
    status, record = svc.api('GET', '/api/dumps/' + dump_id)
    assert record['file_deleted'] is True
    assert json.loads((evidence / LABEL / 'manifest.json').read_text())['entries'][0]['deletion'] == 'deleted'


def test_verify_says_what_it_checked_and_refuses_what_it_could_not(memdump_service, test_driver_uri, run_playbook,
                                                                   tmp_path, keys):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01']), token=TOKEN)
    evidence = tmp_path / 'ev'
    assert acquire(run_playbook, svc, evidence, 'web01', keys).rc == 0
    # Signed events and no allowed signers: fails, even with allow_unsigned.
    res = verify(run_playbook, evidence, allow_unsigned=True)
    assert res.rc != 0 and '3 signed events were NOT checked' in res.stdout
    # Said out loud: passes, and the result and the reverified event say the signatures were not checked.
    res = verify(run_playbook, evidence, env={'HOME': keys['home']}, skip_signatures=True, signing_key='~/.ssh/custody')
    assert res.rc == 0, res.stdout
    result = res.task_results(VERIFY_TASK)
    assert result['signatures_checked'] is False and result['checked']['signatures_not_checked'] == 3
    assert 'signatures NOT checked' in result['msg']
    assert events_of(evidence)[-1]['event'] == 'reverified' and events_of(evidence)[-1]['signatures_checked'] is False
    # An empty log verifies nothing: it fails.
    empty = tmp_path / 'empty'
    (empty / LABEL).mkdir(parents=True)
    (empty / LABEL / 'custody.jsonl').write_bytes(b'')
    res = verify(run_playbook, empty, allow_unsigned=True, skip_signatures=True)
    assert res.rc != 0 and 'holds no event: there is nothing to verify' in res.stdout


def influx_query(url, q):
    with urllib.request.urlopen(url + '/query?' + urllib.parse.urlencode({'q': q}), timeout=10) as resp:
        return json.loads(resp.read())


def test_a_cut_tail_is_detected_through_the_witnesses(memdump_service, test_driver_uri, run_playbook, tmp_path, keys):
    influx = stack_env('MEMDUMP_TEST_INFLUXDB_URL')
    database = 'memdump_core_%d' % os.getpid()
    influx_query(influx, 'CREATE DATABASE "%s"' % database)
    try:
        svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']), token=TOKEN)
        evidence = tmp_path / 'ev'
        influx_env = {'MEMDUMP_INFLUXDB_URL': influx, 'MEMDUMP_INFLUXDB_DATABASE': database,
                      'MEMDUMP_COLLECT_TOKEN': TOKEN}
        # The acquisition with the InfluxDB callback on: it records each custody task's head (memdump_custody).
        res = acquire(run_playbook, svc, evidence, 'web01,db01', keys,
                      callback_env=dict(influx_env, ANSIBLE_CALLBACKS_ENABLED='vmforensics.memdump.influxdb',
                                        MEMDUMP_INFLUXDB_SPOOL_DIR=str(tmp_path / 'spool')))
        assert res.rc == 0, res.stdout
        written = influx_query(influx, 'SELECT * FROM "%s"."autogen"."memdump_custody"' % database)
        assert written['results'][0].get('series'), written
        res = verify(run_playbook, evidence, env=influx_env, allowed_signers=keys['allowed'], collect_url=svc.url)
        assert res.rc == 0, res.stdout
        witnesses = {w['witness']: w for w in res.task_results(VERIFY_TASK)['checked']['witnesses']}
        assert witnesses['influxdb']['reached'] and witnesses['influxdb']['heads'] >= 1, witnesses
        assert witnesses['service']['reached'] and witnesses['service']['heads'] == 2, witnesses
        # Cut off the last VM: its events and its image. The chain alone cannot tell.
        incident = evidence / LABEL
        log = (incident / 'custody.jsonl').read_bytes().split(b'\n')[:-1]
        last = json.loads(log[-1])
        keep = [line for line in log if json.loads(line)['dump_id'] != last['dump_id']]
        assert len(keep) == 3
        (incident / 'custody.jsonl').write_bytes(b''.join(line + b'\n' for line in keep))
        os.chmod(str(incident / last['evidence_file']), 0o600)
        os.unlink(str(incident / last['evidence_file']))
        subprocess.run([sys.executable, '-c', 'import sys, json; from ansible_collections.vmforensics.memdump.plugins.'
                        'plugin_utils import _custody_log as c; l = c.CustodyLog(sys.argv[1]); '
                        'c.atomic_write(l.manifest_path, c.manifest_bytes(l.events()))', str(incident)], check=True,
                       env=dict(os.environ, PYTHONPATH=os.path.join(os.environ['ANSIBLE_COLLECTIONS_PATH'])))
        assert verify(run_playbook, evidence, allowed_signers=keys['allowed']).rc == 0  # without witnesses: unseen
        res = verify(run_playbook, evidence, env=influx_env, allowed_signers=keys['allowed'], collect_url=svc.url)
        assert res.rc != 0
        assert 'InfluxDB at %s (host localhost) saw the custody log at event seq 5' % influx in res.stdout
        assert 'but the log has only 3 events: its tail was cut' in res.stdout
        assert 'the service at %s (dump %s, client ' % (svc.url, last['dump_id']) in res.stdout
        # A witness that cannot be reached is said, not silently skipped.
        res = verify(run_playbook, evidence, env=dict(influx_env, MEMDUMP_COLLECT_TOKEN='wrong'),
                     allowed_signers=keys['allowed'], collect_url=svc.url)
        service = [w for w in res.task_results(VERIFY_TASK)['checked']['witnesses'] if w['witness'] == 'service'][0]
        assert not service['reached'] and 'HTTP 401' in service['note']
    finally:
        influx_query(influx, 'DROP DATABASE "%s"' % database)


def test_a_torn_line_is_repaired_by_the_recorded_step(memdump_service, test_driver_uri, run_playbook, tmp_path, keys):
    svc = memdump_service(libvirt_uri=test_driver_uri(['web01', 'db01']), token=TOKEN)
    evidence = tmp_path / 'ev'
    assert acquire(run_playbook, svc, evidence, 'web01', keys).rc == 0
    with open(str(evidence / LABEL / 'custody.jsonl'), 'ab') as f:
        f.write(b'{"event":"acquired","dump_')  # what a crash mid-write leaves
    res = acquire(run_playbook, svc, evidence, 'db01', keys)
    assert res.rc != 0 and 'ends with an incomplete line' in res.stdout and 'repair_torn_line=true' in res.stdout
    res = verify(run_playbook, evidence, env={'HOME': keys['home']}, allowed_signers=keys['allowed'],
                 repair_torn_line=True, signing_key='~/.ssh/custody')
    assert res.rc == 0, res.stdout
    repaired = [e for e in events_of(evidence) if e['event'] == 'repaired']
    assert len(repaired) == 1 and repaired[0]['torn_bytes'] == 26 and repaired[0]['signature']
    assert (evidence / LABEL / repaired[0]['torn_file']).read_bytes() == b'{"event":"acquired","dump_'
    res = acquire(run_playbook, svc, evidence, 'db01', keys)
    assert res.rc == 0, res.stdout
    assert verify(run_playbook, evidence, allowed_signers=keys['allowed']).rc == 0


COLLECT_PLAY = '''
- hosts: localhost
  gather_facts: false
  tasks:
    - name: collect
      vmforensics.memdump.memdump_collect:
        collect_url: "{{ url }}"
        token: "{{ token }}"
        evidence_dir: "{{ evidence }}"
        label: IR-INTEGRITY
        vm: "{{ vm }}"
        dump_id: "{{ dump_id }}"
      register: r
'''


def test_every_vm_name_the_service_accepts_is_collected(memdump_service, test_driver_uri, run_playbook, tmp_path):
    names = ['Web Server #2', '.hidden', 'naïve-ä', 'x' * 200]
    svc = memdump_service(libvirt_uri=test_driver_uri(names), token=TOKEN)
    status, answer = svc.api('POST', '/api/dumps', {'vms': names, 'label': LABEL})
    assert status == 202, answer
    ids = dict((d['vm'], d['dump_id']) for d in answer['dumps'])
    poll_until(lambda: all(svc.api('GET', '/api/dumps/' + i)[1]['state'] == 'completed' for i in ids.values()), 60,
               what='the dumps to complete')
    evidence = tmp_path / 'ev'
    files = set()
    for vm in names:
        res = run_playbook(COLLECT_PLAY, extra_vars={'url': svc.url, 'token': TOKEN, 'evidence': str(evidence),
                                                     'vm': vm, 'dump_id': ids[vm]})
        assert res.rc == 0, res.stdout
        result = res.task_results('collect')
        path = result['path']
        assert os.path.dirname(path) == str(evidence / LABEL / 'localhost') and os.path.isfile(path)
        assert not os.path.basename(path).startswith('.')
        files.add(path)
    assert len(files) == len(names)
    assert sorted({e['vm'] for e in events_of(evidence)}) == sorted(names)
    assert verify(run_playbook, evidence, allow_unsigned=True).rc == 0


def test_collect_needs_collect_url_for_a_host_that_is_not_the_controller(run_playbook, tmp_path):
    play = COLLECT_PLAY.replace('collect_url: "{{ url }}"', 'url: "{{ url }}"').replace(
        '- hosts: localhost', '- hosts: all\n  connection: ssh')
    extra = {'url': 'http://127.0.0.1:5001', 'token': TOKEN, 'evidence': str(tmp_path / 'ev'), 'vm': 'web01',
             'dump_id': 'a' * 32}
    res = run_playbook(play, inventory='hv01,', extra_vars=extra)
    assert res.rc != 0
    assert 'set collect_url / memdump_acquire_collect_url (or MEMDUMP_COLLECT_URL) to the service\'s address as the ' \
           'controller reaches it' in res.stdout
    assert not (tmp_path / 'ev').exists()
