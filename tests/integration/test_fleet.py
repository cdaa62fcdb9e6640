"""A fleet of hypervisors apart from the controller, deployed and used as a responder would (issues 20 and 22).

``tests/stack/stack.sh fleet-up`` boots Debian 11, 12 and 13 with systemd-nspawn, each in a network namespace of
its own (198.18.<release>.2, this machine at .1), with no route out: no package index is reachable from a host.
This machine is the controller: it deploys role vmforensics.memdump.memdump_service over SSH (the locked wheels
fetched here and brought along), with the service listening beyond loopback, TLS issued from a test CA, the host's
address as allowed host name and its port opened in the host's nftables firewall (policy drop). Then, per host,
a memory-only and a live dump are taken by the host-side modules and collected here over HTTPS.
"""
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import http_json, poll_until, sha256_file

TOKEN = 'fleet-token-0123456789abcdef0123'
PORT = 5001
SUITES = ['bullseye', 'bookworm', 'trixie']


def load_fleet():
    path = os.environ.get('MEMDUMP_FLEET_FILE')
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return {host['suite']: host for host in json.load(f)}


class Fleet:
    """The fleet's hosts (from fleet.json), SSH to them, and an inventory for ansible-playbook."""

    def __init__(self, hosts, key, workdir):
        self.hosts, self.key, self.workdir = hosts, key, workdir
        self.available = {suite: host for suite, host in hosts.items() if not host.get('unavailable')}
        self.ca = os.path.join(workdir, 'ca.crt')
        self.ca_key = os.path.join(workdir, 'ca.key')
        self.inventory = os.path.join(workdir, 'hosts.ini')
        lines = ['[libvirt_hosts]']
        lines += ['%s ansible_host=%s' % (h['name'], h['address']) for h in self.available.values()]
        lines += ['[libvirt_hosts:vars]', 'ansible_user=root', 'ansible_connection=ssh',
                  'ansible_ssh_private_key_file=%s' % key, 'ansible_python_interpreter=/usr/bin/python3',
                  "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"]
        with open(self.inventory, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def host(self, suite):
        host = self.hosts.get(suite)
        if host is None:
            pytest.skip('the fleet has no %s host (MEMDUMP_STACK_FLEET_SUITES)' % suite)
        if host.get('unavailable'):
            pytest.skip(host['unavailable'])
        return host

    def ssh(self, host, command, check=True, timeout=120):
        proc = subprocess.run(['ssh', '-q', '-i', self.key, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
                               '-o', 'UserKnownHostsFile=/dev/null', 'root@' + host['address'], command],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            assert proc.returncode == 0, '%s on %s: %s%s' % (command, host['name'], proc.stdout, proc.stderr)
        return proc

    def context(self):
        """TLS as a client that trusts the test CA only (the system's CAs do not know it)."""
        return ssl.create_default_context(cafile=self.ca)


def make_ca(workdir):
    ca, key = os.path.join(workdir, 'ca.crt'), os.path.join(workdir, 'ca.key')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
                    '-keyout', key, '-out', ca, '-days', '2', '-subj', '/CN=memdump fleet test CA',
                    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'],
                   check=True, capture_output=True)


def deploy_vars(fleet, **extra):
    values = {'memdump_service_listen_address': '0.0.0.0', 'memdump_service_port': PORT,
              'memdump_service_token': TOKEN, 'memdump_service_tls_ca_cert': fleet.ca,
              'memdump_service_tls_ca_key': fleet.ca_key,
              'memdump_service_wheel_cache': os.path.join(fleet.workdir, 'wheels')}
    values.update(extra)
    return values


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    if os.environ.get('MEMDUMP_FLEET_UNAVAILABLE'):
        pytest.skip(os.environ['MEMDUMP_FLEET_UNAVAILABLE'])
    hosts = load_fleet()
    if hosts is None:
        pytest.skip('no fleet: MEMDUMP_FLEET_FILE is not set (tests/stack/stack.sh fleet-up; make test brings it up)')
    workdir = str(tmp_path_factory.mktemp('fleet'))
    make_ca(workdir)
    return Fleet(hosts, os.environ['MEMDUMP_FLEET_SSH_KEY'], workdir)


def playbook(fleet, name, extra_vars, limit=None, stream=False):
    """ansible-playbook from this machine (the controller) over SSH; returns the process (Popen when stream)."""
    cmd = ['ansible-playbook', '-i', fleet.inventory, name, '-e', json.dumps(extra_vars)]
    if limit:
        cmd += ['--limit', limit]
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING='False', ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
               ANSIBLE_LOCAL_TEMP=os.path.join(fleet.workdir, 'ansible-tmp'), ANSIBLE_STDOUT_CALLBACK='default')
    if stream:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, check=False)


def recap(output, host):
    """The PLAY RECAP counters of one host: {'ok': n, 'changed': n, ...}."""
    for line in output.splitlines():
        if line.startswith(host + ' ') and 'ok=' in line:
            return {k: int(v) for k, v in (item.split('=') for item in line.split(':', 1)[1].split())}
    raise AssertionError('no recap for %s in:\n%s' % (host, output[-3000:]))


@pytest.fixture(scope='module')
def deployed(fleet):
    """The service deployed once to every available host of the fleet (one run: wheels for each Python)."""
    if not fleet.available:
        pytest.skip('no host of the fleet could boot here: %s' % '; '.join(h['unavailable'] for h in fleet.hosts.values()))
    result = playbook(fleet, 'vmforensics.memdump.deploy_service', deploy_vars(fleet))
    return result


def test_a_fleet_host_has_no_way_out(fleet):
    for host in fleet.available.values():
        routes = fleet.ssh(host, 'ip -4 route show; ip route get 192.0.2.1 2>&1 || true').stdout
        assert 'default' not in routes and 'unreachable' in routes, (host['name'], routes)


@pytest.mark.parametrize('suite', SUITES)
def test_deploy_over_ssh_serves_tls_to_the_controller_only_by_its_names(fleet, deployed, suite):
    host = fleet.host(suite)
    output = deployed.stdout + deployed.stderr
    assert TOKEN not in output
    assert recap(output, host['name'])['failed'] == 0, output[-6000:]
    base = 'https://%s:%d' % (host['address'], PORT)

    # The controller reaches the host's address through the host's firewall and checks the certificate with the CA.
    status, health = http_json(base, 'GET', '/health', context=fleet.context())
    assert status == 200 and health['libvirt']['connected'], health
    status, listing = http_json(base, 'GET', '/api/dumps', token=TOKEN, context=fleet.context())
    assert status == 200, listing
    # A client that does not know the private CA is refused by TLS.
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(base + '/health', timeout=30, context=ssl.create_default_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError), refused.value
    # A name the host was not given is refused by the service (the certificate is still valid for the address).
    request = urllib.request.Request(base + '/health', headers={'Host': 'not-this-host.example'})
    with pytest.raises(urllib.error.HTTPError) as wrong_name:
        urllib.request.urlopen(request, timeout=30, context=fleet.context())
    assert wrong_name.value.code == 400 and b'Invalid host header' in wrong_name.value.read()

    # The role's rule in the host's nftables firewall (its input policy is drop), and the unit that keeps it.
    chain = fleet.ssh(host, 'nft -a list chain inet filter input').stdout
    assert 'policy drop' in chain and 'tcp dport %d accept comment "memdump-service"' % PORT in chain, chain
    assert fleet.ssh(host, 'systemctl is-enabled memdump-firewall.service').stdout.strip() == 'enabled'
    # The key is readable by the service's group only; the service runs as its own user.
    assert fleet.ssh(host, 'stat -c "%U %G %a" /etc/memdump/tls/server.key').stdout.split() == ['root', 'memdump', '640']
    pid = fleet.ssh(host, 'systemctl show -p MainPID --value memdump.service').stdout.strip()
    assert fleet.ssh(host, 'ps -o user= -p %s' % pid).stdout.strip() == 'memdump'


@pytest.mark.parametrize('suite', SUITES)
def test_a_second_deploy_changes_nothing(fleet, deployed, suite):
    host = fleet.host(suite)
    assert recap(deployed.stdout, host['name'])['failed'] == 0, deployed.stdout[-6000:]
    again = playbook(fleet, 'vmforensics.memdump.deploy_service', deploy_vars(fleet), limit=host['name'])
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-6000:]
    assert recap(output, host['name'])['changed'] == 0, output[-8000:]


HOST_CA = '/root/memdump-fleet-ca.pem'   # the CA where the host-side modules read it (a path on the hypervisor)


def put_ca_on_host(fleet, host):
    subprocess.run(['scp', '-q', '-i', fleet.key, '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
                    fleet.ca, 'root@%s:%s' % (host['address'], HOST_CA)], check=True, timeout=60)


def acquire(fleet, host, label, evidence, **extra):
    """The acquisition playbook: host-side modules on the hypervisor (loopback, TLS, the CA there), the collection on
    this machine over HTTPS to the host's address (the CA here): two endpoints, each with its own settings."""
    put_ca_on_host(fleet, host)
    extra_vars = {'memdump_hosts': host['name'], 'label': label, 'vms': host['vm'], 'collect': True,
                  'evidence_dir': str(evidence), 'wait_timeout': 300,
                  'memdump_service_url': 'https://127.0.0.1:%d' % PORT, 'memdump_service_token': TOKEN,
                  'memdump_acquire_service_ca_path': HOST_CA,
                  'memdump_acquire_collect_url': 'https://%s:%d' % (host['address'], PORT),
                  'memdump_acquire_collect_ca_path': fleet.ca}
    extra_vars.update(extra)
    result = playbook(fleet, 'vmforensics.memdump.acquire', extra_vars)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    with open(os.path.join(str(evidence), label, 'manifest.json')) as f:
        (entry,) = json.load(f)['entries']
    assert entry['collected'], entry
    image = os.path.join(str(evidence), label, entry['evidence_file'])
    assert sha256_file(image) == entry['sha256']
    with open(image, 'rb') as f:
        return entry, f.read(8)


@pytest.mark.parametrize('suite', SUITES)
def test_memory_only_and_live_dumps_are_taken_and_collected_over_https(fleet, deployed, suite, tmp_path):
    host = fleet.host(suite)
    assert recap(deployed.stdout, host['name'])['failed'] == 0, deployed.stdout[-6000:]
    entry, magic = acquire(fleet, host, 'IR-FLEET-%s-ELF' % suite.upper(), tmp_path / 'elf', method='memory-only')
    assert magic[:4] == b'\x7fELF' and entry['method'] == 'memory-only', entry
    entry, magic = acquire(fleet, host, 'IR-FLEET-%s-LIVE' % suite.upper(), tmp_path / 'live', method='live')
    assert magic[:4] == b'QEVM' and entry['method'] == 'live', entry

    # The status playbook checks the host's service with the private CA (host side), and says the incident is complete.
    status = playbook(fleet, 'vmforensics.memdump.status', {
        'memdump_hosts': host['name'], 'label': 'IR-FLEET-%s-LIVE' % suite.upper(), 'service_ca_path': HOST_CA,
        'memdump_service_url': 'https://127.0.0.1:%d' % PORT, 'memdump_service_token': TOKEN})
    assert status.returncode == 0, (status.stdout + status.stderr)[-6000:]
    assert '"complete": true' in status.stdout, status.stdout[-4000:]
    # Without the CA the same check is refused by TLS: the CA is what makes it pass.
    refused = playbook(fleet, 'vmforensics.memdump.status', {
        'memdump_hosts': host['name'], 'memdump_service_url': 'https://127.0.0.1:%d' % PORT, 'memdump_service_token': TOKEN})
    assert refused.returncode != 0 and 'CERTIFICATE_VERIFY_FAILED' in refused.stdout, refused.stdout[-4000:]


def test_a_redeploy_waits_for_the_running_dump(fleet, deployed):
    """The guest's QEMU is stopped (SIGSTOP), so a dump of it stays running until the test lets it go on."""
    host = fleet.host('bookworm')
    assert recap(deployed.stdout, host['name'])['failed'] == 0, deployed.stdout[-6000:]
    base, context = 'https://%s:%d' % (host['address'], PORT), fleet.context()
    qemu = fleet.ssh(host, 'cat /run/libvirt/qemu/%s.pid' % host['vm']).stdout.strip()
    main_pid = fleet.ssh(host, 'systemctl show -p MainPID --value memdump.service').stdout.strip()
    fleet.ssh(host, 'kill -STOP %s' % qemu)
    proc = None
    try:
        status, body = http_json(base, 'POST', '/api/dumps', {'vms': [host['vm']], 'label': 'IR-FLEET-REDEPLOY', 'force': True},
                                 token=TOKEN, context=context)
        assert status == 202, body
        dump_id = body['dumps'][0]['dump_id']
        poll_until(lambda: http_json(base, 'GET', '/health', context=context)[1]['queue']['running'] == 1, 60,
                   interval=0.5, what='the dump running')

        # A change that needs a restart; the role must wait and say so.
        proc = playbook(fleet, 'vmforensics.memdump.deploy_service', deploy_vars(fleet, memdump_service_max_parallel=3),
                        limit=host['name'], stream=True)
        seen = []
        deadline = time.monotonic() + 600
        for line in proc.stdout:
            seen.append(line)
            if 'waiting up to' in line and 'before it is restarted' in line:
                break
            assert time.monotonic() < deadline, ''.join(seen[-50:])
        else:
            pytest.fail('the redeploy ended without waiting for the running dump:\n' + ''.join(seen[-80:]))
        # It waits: the service that runs the dump is the same process, the dump still runs.
        assert fleet.ssh(host, 'systemctl show -p MainPID --value memdump.service').stdout.strip() == main_pid
        status, record = http_json(base, 'GET', '/api/dumps/' + dump_id, token=TOKEN, context=context)
        assert status == 200 and record['state'] == 'running', record
    finally:
        fleet.ssh(host, 'kill -CONT %s' % qemu, check=False)
    rest = proc.communicate(timeout=600)[0]
    output = ''.join(seen) + rest
    assert proc.returncode == 0, output[-6000:]
    assert recap(output, host['name'])['changed'] > 0
    # The dump finished whole; only then was the service restarted (a new process with the new setting).
    status, record = http_json(base, 'GET', '/api/dumps/' + dump_id, token=TOKEN, context=context)
    assert status == 200 and record['state'] == 'completed' and record['sha256'], record
    assert fleet.ssh(host, 'systemctl show -p MainPID --value memdump.service').stdout.strip() != main_pid
    assert 'MEMDUMP_MAX_PARALLEL=3' in fleet.ssh(host, 'cat /etc/memdump/memdump.env').stdout
    # Put the fleet back as the other tests expect it.
    back = playbook(fleet, 'vmforensics.memdump.deploy_service', deploy_vars(fleet), limit=host['name'])
    assert back.returncode == 0, (back.stdout + back.stderr)[-6000:]


def test_removal_refuses_to_interrupt_a_running_dump(fleet, deployed, tmp_path):
    """state=absent with a short drain timeout while a dump cannot finish (its QEMU stopped): refused, nothing removed."""
    host = fleet.host('trixie')
    assert recap(deployed.stdout, host['name'])['failed'] == 0, deployed.stdout[-6000:]
    base, context = 'https://%s:%d' % (host['address'], PORT), fleet.context()
    qemu = fleet.ssh(host, 'cat /run/libvirt/qemu/%s.pid' % host['vm']).stdout.strip()
    fleet.ssh(host, 'kill -STOP %s' % qemu)
    try:
        status, body = http_json(base, 'POST', '/api/dumps', {'vms': [host['vm']], 'label': 'IR-FLEET-ABSENT', 'force': True},
                                 token=TOKEN, context=context)
        assert status == 202, body
        dump_id = body['dumps'][0]['dump_id']
        poll_until(lambda: http_json(base, 'GET', '/health', context=context)[1]['queue']['running'] == 1, 60,
                   interval=0.5, what='the dump running')
        gone = playbook(fleet, 'vmforensics.memdump.deploy_service',
                        deploy_vars(fleet, memdump_service_state='absent', memdump_service_drain_timeout=10), limit=host['name'])
        output = gone.stdout + gone.stderr
        assert gone.returncode != 0, output[-6000:]
        assert 'still has 1 dump(s) running' in output and 'Nothing was removed' in output, output[-6000:]
        assert fleet.ssh(host, 'systemctl is-active memdump.service').stdout.strip() == 'active'
        assert fleet.ssh(host, 'test -f /etc/memdump/memdump.env && test -x /opt/memdump/venv/bin/python', check=False).returncode == 0
    finally:
        fleet.ssh(host, 'kill -CONT %s' % qemu, check=False)
    poll_until(lambda: http_json(base, 'GET', '/api/dumps/' + dump_id, token=TOKEN, context=context)[1]['state'] == 'completed',
               120, interval=0.5, what='the dump completed')
