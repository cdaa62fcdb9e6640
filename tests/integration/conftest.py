"""Fixtures for integration tests: the real memdump service and real ansible-playbook runs.

Requires the stack started by ``tests/stack/stack.sh up`` (``make test`` does it); its settings
arrive as ``MEMDUMP_TEST_*`` environment variables.
"""
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = os.environ.get('MEMDUMP_REPO') or os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def sha256_file(path):
    """Hex SHA-256 of a file, read in chunks (images are GiB-sized)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(4 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def stack_env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail('%s is not set: start the stack with tests/stack/stack.sh up and source its env file' % name)
    return value


class MemdumpService:
    """One memdump service process on a loopback port, with its own dump dir and state file."""

    program = ('-m', 'memdump_service')

    def __init__(self, workdir, libvirt_uri, token=None, extra_args=(), env=None):
        self.workdir = str(workdir)
        self.port = free_port()
        self.extra_args = list(extra_args)
        # With --tls-cert the service speaks HTTPS; the fixture's own calls skip verification.
        self.tls = '--tls-cert' in self.extra_args
        self.url = '%s://127.0.0.1:%d' % ('https' if self.tls else 'http', self.port)
        self.ssl_context = ssl._create_unverified_context() if self.tls else None  # pylint: disable=protected-access
        self.libvirt_uri = libvirt_uri
        self.dump_dir = os.path.join(self.workdir, 'dumps')
        self.state_file = os.path.join(self.workdir, 'state.sqlite')
        self.log_path = os.path.join(self.workdir, 'service.log')
        self.token = token
        self.token_file = None
        self.env = dict(env or {})
        self.proc = None
        if token:
            self.token_file = os.path.join(self.workdir, 'token')
            with open(self.token_file, 'w') as f:
                f.write(token + '\n')
            os.chmod(self.token_file, 0o600)

    def command(self):
        cmd = [sys.executable, *self.program, '--listen', '127.0.0.1:%d' % self.port,
               '--libvirt-uri', self.libvirt_uri, '--dump-dir', self.dump_dir, '--state-file', self.state_file]
        if self.token_file:
            cmd += ['--token-file', self.token_file]
        elif '--tokens-file' not in self.extra_args:
            cmd.append('--insecure-no-auth')  # loopback only: the service refuses to run without auth otherwise
        return cmd + self.extra_args

    def start(self, wait=True):
        env = dict(os.environ)
        env.update(self.env)
        log = open(self.log_path, 'ab')  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)  # pylint: disable=consider-using-with
        log.close()
        pidfile = os.path.join(os.environ.get('MEMDUMP_STACK_DIR', '/tmp/memdump-stack'), 'extra')
        os.makedirs(pidfile, exist_ok=True)
        # Registered so that `stack.sh down` stops it even if this test run is killed.
        with open(os.path.join(pidfile, 'service-%d.pid' % self.proc.pid), 'w') as f:
            f.write(str(self.proc.pid))
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError('memdump service exited with %s:\n%s' % (self.proc.returncode, self.read_log()))
            try:
                with urllib.request.urlopen(self.url + '/health', timeout=2, context=self.ssl_context):
                    return
            except urllib.error.HTTPError:
                return  # it answers (503 = libvirt unreachable, still up)
            except OSError:
                time.sleep(0.1)
        raise AssertionError('memdump service did not answer on %s within %ss:\n%s' % (self.url, timeout, self.read_log()))

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            pidfile = os.path.join(os.environ.get('MEMDUMP_STACK_DIR', '/tmp/memdump-stack'), 'extra',
                                   'service-%d.pid' % self.proc.pid)
            if os.path.exists(pidfile):
                os.unlink(pidfile)

    def restart(self):
        self.stop()
        return self.start()

    def read_log(self):
        try:
            with open(self.log_path, errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def api(self, method, path, body=None, token=None):
        """A plain HTTP call for assertions: returns (status, parsed JSON or raw bytes)."""
        return http_json(self.url, method, path, body, token or self.token, context=self.ssl_context)


class CoreServiceDouble(MemdumpService):
    """The test double of the seed's core service (tests/doubles/core_service.py): real dumps, the seed's API only."""

    program = (os.path.join(REPO, 'tests', 'doubles', 'core_service.py'),)


class PausedService(MemdumpService):
    """The real service held at one point of a dump's life until killed (tests/integration/paused_service.py)."""

    program = (os.path.join(REPO, 'tests', 'integration', 'paused_service.py'),)

    def __init__(self, workdir, libvirt_uri, point, token=None, extra_args=(), pause_bytes=8 << 20):
        self.pause_dir = os.path.join(str(workdir), 'pause')
        os.makedirs(self.pause_dir)
        super().__init__(workdir, libvirt_uri, token, extra_args,
                         env={'MEMDUMP_TEST_PAUSE_AT': point, 'MEMDUMP_TEST_PAUSE_DIR': self.pause_dir,
                              'MEMDUMP_TEST_PAUSE_BYTES': str(pause_bytes)})
        self.point = point

    def wait_paused(self, timeout=60):
        """Wait until the service holds at its point."""
        poll_until(lambda: os.path.exists(os.path.join(self.pause_dir, self.point)), timeout, interval=0.02,
                   what='the service to reach %s (log %s)' % (self.point, self.log_path))

    def start_unpaused(self):
        """The same service (dirs, state file) started again as it runs in production."""
        self.env['MEMDUMP_TEST_PAUSE_AT'] = ''
        return self.start()


@pytest.fixture
def paused_service(tmp_path):
    """Factory: ``paused_service(point, extra_args=(), pause_bytes=8 MiB)`` starts the real service on the stack's
    QEMU, held at point (call, first_read, mid_stream: after pause_bytes, end) of the first dump that reaches it."""
    started = []

    def start(point, extra_args=(), pause_bytes=8 << 20):
        workdir = tmp_path / ('paused%d' % len(started))
        workdir.mkdir()
        svc = PausedService(workdir, stack_env('MEMDUMP_TEST_LIBVIRT_URI'), point, extra_args=extra_args, pause_bytes=pause_bytes)
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


def http_json(url, method, path, body=None, token=None, timeout=60, context=None):
    """One HTTP call to a memdump service: returns (status, parsed JSON or raw bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header('Content-Type', 'application/json')
    if token:
        req.add_header('Authorization', 'Bearer ' + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


@pytest.fixture
def memdump_service(tmp_path):
    """Factory: ``memdump_service(libvirt_uri=None, token=None, extra_args=())`` starts a service.

    The default libvirt URI is the real QEMU hypervisor of the stack.
    """
    started = []

    def start(libvirt_uri=None, token=None, extra_args=(), env=None, name='svc'):
        workdir = tmp_path / ('%s%d' % (name, len(started)))
        workdir.mkdir()
        svc = MemdumpService(workdir, libvirt_uri or stack_env('MEMDUMP_TEST_LIBVIRT_URI'), token, extra_args, env)
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture
def core_service(tmp_path):
    """Factory: ``core_service(libvirt_uri=None, token=None)`` starts the test double of the seed's core
    service (no marker, wait, created, labels; ``"features": []``), on the stack's QEMU by default."""
    started = []

    def start(libvirt_uri=None, token=None):
        workdir = tmp_path / ('core%d' % len(started))
        workdir.mkdir()
        svc = CoreServiceDouble(workdir, libvirt_uri or stack_env('MEMDUMP_TEST_LIBVIRT_URI'), token)
        started.append(svc)
        return svc.start()

    yield start
    for svc in started:
        svc.stop()


class PlaybookResult:
    def __init__(self, proc, json_out):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.json = json_out

    def task_results(self, task_name, host='localhost'):
        """The result dict of the named task on host (the last one if it ran more than once)."""
        found = None
        for play in (self.json or {}).get('plays', []):
            for task in play.get('tasks', []):
                if task['task']['name'] == task_name and host in task['hosts']:
                    found = task['hosts'][host]
        if found is None:
            raise AssertionError('task %r did not run on %s; output:\n%s\n%s' % (task_name, host, self.stdout, self.stderr))
        return found

    def role_task_results(self, name, host='localhost'):
        """The result of the task whose name ends with name (a role's tasks carry the role's name as a prefix)."""
        for play in (self.json or {}).get('plays', []):
            for task in play.get('tasks', []):
                if task['task']['name'].endswith(name) and host in task['hosts']:
                    return task['hosts'][host]
        raise AssertionError('no task %r on %s; output:\n%s\n%s' % (name, host, self.stdout, self.stderr))

    @property
    def stats(self):
        return (self.json or {}).get('stats', {})


@pytest.fixture
def run_playbook(tmp_path):
    """Runs real ansible-playbook with the json stdout callback; returns a PlaybookResult.

    ``run_playbook(playbook_path_or_yaml_text, extra_vars=None, env=None, args=())``
    """
    counter = [0]

    def run(playbook, extra_vars=None, env=None, args=(), check=False, inventory='localhost,'):
        counter[0] += 1
        if '\n' in playbook:
            path = tmp_path / ('play%d.yml' % counter[0])
            path.write_text(playbook)
            playbook = str(path)
        cmd = ['ansible-playbook', '-i', inventory, '-c', 'local', playbook]
        if extra_vars:
            cmd += ['-e', json.dumps(extra_vars)]
        if check:
            cmd.append('--check')
        cmd += list(args)
        run_env = dict(os.environ)
        # ansible-core ships no json callback (ansible.builtin.json redirects to ansible.posix, which
        # Galaxy-less machines lack): a test-only one with the same output lives in json_callback/.
        run_env.update({'ANSIBLE_STDOUT_CALLBACK': 'memdump_test_json', 'ANSIBLE_HOST_KEY_CHECKING': 'False',
                        'ANSIBLE_CALLBACK_PLUGINS': os.path.join(os.path.dirname(os.path.abspath(__file__)), 'json_callback'),
                        'ANSIBLE_PYTHON_INTERPRETER': sys.executable, 'ANSIBLE_NOCOLOR': '1',
                        'ANSIBLE_LOCAL_TEMP': str(tmp_path / 'ansible-tmp')})
        run_env.update(env or {})
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env, timeout=900, check=False)
        try:
            out = json.loads(proc.stdout[proc.stdout.index('{'):]) if '{' in proc.stdout else None
        except ValueError:
            out = None
        return PlaybookResult(proc, out)

    return run


# --- Helpers for the reliability tests (issue 8); generic enough for any test. ---

def poll_until(predicate, timeout, interval=0.05, what='condition'):
    """Calls predicate until it returns something truthy (returned) or timeout seconds pass (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError('timed out after %ss waiting for %s' % (timeout, what))
        time.sleep(interval)


@pytest.fixture
def wait_until():
    """``wait_until(predicate, timeout, interval=0.05, what='...')``: poll until truthy, else fail."""
    return poll_until


@pytest.fixture
def test_driver_uri(tmp_path):
    """Factory: ``test_driver_uri(names, memory_kib=131072)`` writes a libvirt test-driver node file
    with one running domain per name and returns its ``test:///...`` URI."""
    counter = [0]

    def make(names, memory_kib=131072):
        counter[0] += 1
        domains = ''.join(
            "<domain type='test'><name>%s</name><uuid>6695eb01-f6a4-8304-79aa-%012x</uuid>"
            "<os><type>hvm</type></os><memory>%d</memory></domain>\n" % (name, index + 1, memory_kib)
            for index, name in enumerate(names))
        path = tmp_path / ('test-node-%d.xml' % counter[0])
        path.write_text("<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n%s</node>\n" % domains)
        return 'test://' + str(path)

    return make


@pytest.fixture
def self_signed_cert(tmp_path):
    """A self-signed certificate for 127.0.0.1 and localhost: returns (cert_path, key_path)."""
    cert, key = tmp_path / 'tls-cert.pem', tmp_path / 'tls-key.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
                    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
                    '-keyout', str(key), '-out', str(cert)], check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return str(cert), str(key)
