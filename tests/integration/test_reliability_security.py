"""Reliability (issue 8): secrets, TLS and file permissions, end to end.

- the service token and the InfluxDB credentials never appear in the service log, the output of
  ``ansible-playbook -vvv`` (human and JSON), module results, the Ansible log file or spool files;
- a service with a self-signed certificate: modules fail clearly with ``validate_certs: true`` and
  work with ``ca_path``;
- images are 0600 in a 0700 directory owned by the service's user, whatever the umask.
"""
import glob
import json
import os
import ssl
import stat

import httpx
import pytest

from conftest import free_port

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
