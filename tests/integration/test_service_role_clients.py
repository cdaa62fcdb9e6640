"""Role vmforensics.memdump.memdump_service with named clients (per-controller tokens with scopes).

The role runs for real (process mode, libvirt's test driver, as its default non-root user): the service
gets a tokens file holding only SHA-256 hashes, each client can do what its scopes allow, a token
removed from the inventory is refused on the next request without a restart, and ``state: absent``
removes it all again.
"""
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from conftest import free_port, http_json, stack_env

READER, ACQUIRER = 'reader-token-0123456789abcdef', 'acquirer-token-0123456789abcdef'

PLAY = '''
- hosts: localhost
  gather_facts: false
  roles:
    - role: vmforensics.memdump.memdump_service
'''


@pytest.fixture
def service_root():
    """Where the role installs the service: a directory the service's own user can reach (pytest's are root's, 0700)."""
    path = tempfile.mkdtemp(prefix='memdump-role-', dir='/var/tmp')
    os.chmod(path, 0o755)
    yield os.path.join(path, 'svc')
    shutil.rmtree(path, ignore_errors=True)


def process_user(pid):
    with open('/proc/%s/status' % pid) as f:
        uid = next(int(line.split()[1]) for line in f if line.startswith('Uid:'))
    return pwd.getpwuid(uid).pw_name


def role_vars(root, port, clients, **extra):
    stack = os.environ.get('MEMDUMP_STACK_DIR', '/tmp/memdump-stack')
    os.makedirs(os.path.join(stack, 'extra'), exist_ok=True)
    values = {
        'memdump_service_manager': 'process', 'memdump_service_install_dir': root + '/opt',
        'memdump_service_venv': root + '/opt/venv', 'memdump_service_config_dir': root + '/etc',
        'memdump_service_state_dir': root + '/state', 'memdump_service_dump_dir': root + '/state/dumps',
        'memdump_service_state_file': root + '/state/state.sqlite', 'memdump_service_log_file': root + '/log/service.log',
        # In the stack's extra/ directory: `stack.sh down` stops it if the test dies.
        'memdump_service_pid_file': os.path.join(stack, 'extra', 'role-clients-%d.pid' % port),
        'memdump_service_port': port, 'memdump_service_libvirt_uri': stack_env('MEMDUMP_TEST_DRIVER_URI'),
        'memdump_service_clients': clients,
    }
    values.update(extra)
    return values


def test_named_clients_get_their_scopes_and_revocation_needs_no_restart(run_playbook, service_root):
    root, port = service_root, free_port()
    url = 'http://127.0.0.1:%d' % port
    clients = [{'name': 'ir-reader', 'token': READER, 'scopes': ['read']},
               {'name': 'ctl-awx', 'token': ACQUIRER, 'scopes': ['read', 'collect', 'trigger']}]
    first = run_playbook(PLAY, extra_vars=role_vars(root, port, clients))
    try:
        assert first.rc == 0, first.stdout + first.stderr
        where = first.role_task_results('Show where the service runs and where its files are')['msg']
        assert where['token_file'] == root + '/etc/clients.json (ir-reader, ctl-awx)'
        for secret in (READER, ACQUIRER):
            assert secret not in first.stdout
        tokens_file = root + '/etc/clients.json'
        assert stat.S_IMODE(os.stat(tokens_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(root + '/log/service.log').st_mode) == 0o600
        with open(tokens_file) as f:
            text = f.read()
        assert READER not in text and ACQUIRER not in text
        scopes = {c['name']: c['scopes'] for c in json.loads(text)['clients']}
        assert scopes == {'ir-reader': ['read'], 'ctl-awx': ['read', 'collect', 'trigger']}

        assert http_json(url, 'GET', '/api/dumps', token=READER)[0] == 200
        status, answer = http_json(url, 'POST', '/api/dumps', {'vms': ['web01']}, token=READER)
        assert status == 403 and 'trigger' in answer['detail']
        assert http_json(url, 'POST', '/api/dumps', {'vms': ['web01'], 'dry_run': True}, token=ACQUIRER)[0] == 200
        assert http_json(url, 'GET', '/api/dumps', token='not-a-client')[0] == 401

        pid_file = role_vars(root, port, [])['memdump_service_pid_file']
        with open(pid_file) as f:
            pid = f.read().strip()
        assert process_user(pid) == 'memdump'
        second = run_playbook(PLAY, extra_vars=role_vars(root, port, clients[1:]))
        assert second.rc == 0, second.stdout + second.stderr
        assert http_json(url, 'GET', '/api/dumps', token=READER)[0] == 401
        assert http_json(url, 'GET', '/api/dumps', token=ACQUIRER)[0] == 200
        with open(pid_file) as f:
            assert f.read().strip() == pid  # revoked without a restart
    finally:
        gone = run_playbook(PLAY, extra_vars=role_vars(root, port, clients, memdump_service_state='absent'))
    assert gone.rc == 0, gone.stdout + gone.stderr
    assert not os.path.exists(root + '/etc') and not os.path.exists(root + '/opt')


def test_a_listener_on_the_network_without_tls_is_refused_before_anything_is_installed(run_playbook, service_root):
    root, port = service_root, free_port()
    result = run_playbook(PLAY, extra_vars=role_vars(root, port, [], memdump_service_listen_address='0.0.0.0'))
    assert result.rc != 0
    assert 'memdump_service_tls_cert' in result.stdout and '--insecure-listen' in result.stdout
    assert not os.path.exists(root)


def test_the_dump_directory_on_the_root_file_system_is_refused_when_asked(run_playbook, service_root):
    root, port = service_root, free_port()
    target = subprocess.run(['findmnt', '--noheadings', '--output', 'TARGET', '--target', os.path.dirname(root)],
                            capture_output=True, text=True, check=True).stdout.strip()
    result = run_playbook(PLAY, extra_vars=role_vars(root, port, [], memdump_service_dump_dir_own_filesystem=True))
    try:
        if target == '/':
            assert result.rc != 0
            assert 'is on the root file system: mount a file system of its own' in result.stdout
        else:
            assert result.rc == 0, result.stdout
            assert 'is on its own file system (%s)' % target in result.stdout
    finally:
        run_playbook(PLAY, extra_vars=role_vars(root, port, [], memdump_service_state='absent'))


def test_a_user_libvirt_refuses_fails_the_deployment_and_says_what_to_do(run_playbook, service_root):
    # The stack's libvirtd runs without a system bus, so polkit cannot admit group libvirt: only root gets in.
    if os.path.exists('/run/dbus/system_bus_socket'):
        pytest.skip('a system bus runs here: polkit may admit group libvirt')
    root, port = service_root, free_port()
    extra = {'memdump_service_libvirt_uri': stack_env('MEMDUMP_TEST_LIBVIRT_URI')}
    try:
        refused = run_playbook(PLAY, extra_vars=role_vars(root, port, [], **extra))
        assert refused.rc != 0
        msg = refused.role_task_results("Fail when the service's user is refused by libvirt")['msg']
        assert 'runs as user memdump' in msg and 'refuses it' in msg and 'memdump_service_user: root' in msg, msg
        as_root = run_playbook(PLAY, extra_vars=role_vars(root, port, [], memdump_service_user='root',
                                                          memdump_service_group='root', **extra))
        assert as_root.rc == 0, as_root.stdout
        status, health = http_json('http://127.0.0.1:%d' % port, 'GET', '/health')
        assert status == 200 and health['libvirt']['connected'], health
    finally:
        run_playbook(PLAY, extra_vars=role_vars(root, port, [], memdump_service_state='absent'))


def test_a_host_without_libvirt_bindings_is_refused_before_anything_changes(run_playbook, service_root, tmp_path):
    """A real Python without the libvirt bindings (a venv without system site packages) and no package installation."""
    root, port = service_root, free_port()
    bare = tmp_path / 'bare-python'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(bare)], check=True)
    result = run_playbook(PLAY, extra_vars=role_vars(root, port, [], memdump_service_python=str(bare / 'bin' / 'python'),
                                                     memdump_service_install_packages=False))
    assert result.rc != 0
    msg = result.role_task_results("Check the host's Python, init system and distribution")['msg']
    assert 'has no libvirt bindings' in msg and 'python3-libvirt' in msg and 'Nothing was changed on the host' in msg, msg
    assert not os.path.exists(root)


def test_no_python_at_the_given_path_is_refused_before_anything_changes(run_playbook, service_root):
    root, port = service_root, free_port()
    result = run_playbook(PLAY, extra_vars=role_vars(root, port, [], memdump_service_python='/nonexistent/python3'))
    assert result.rc != 0
    msg = result.role_task_results("Check the host's Python, init system and distribution")['msg']
    assert 'there is no working Python at /nonexistent/python3' in msg, msg
    assert not os.path.exists(root)
