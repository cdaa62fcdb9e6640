"""Shared pieces of the benchmarks in bench/: statistics, services, playbooks, a counting proxy.

Every benchmark uses the real components that the tests use: the memdump service started by the
integration tests' ``MemdumpService`` (tests/integration/conftest.py), for the seed-style rows the
test double of the seed's core service (``CoreServiceDouble``), libvirtd with the guests of
``tests/stack/stack.sh up`` and ``bench-up``, real ``ansible-playbook`` runs and InfluxDB.
Everything listens on and talks to 127.0.0.1 only.
"""

import datetime
import glob
import http.client
import http.server
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

REPO = os.environ.get('MEMDUMP_REPO') or os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
RESULTS = os.environ.get('MEMDUMP_BENCH_RESULTS') or os.path.join(REPO, 'bench', 'results')
PLAYBOOKS = os.path.join(REPO, 'bench', 'playbooks')
VIRSH = ['virsh', '-c', 'qemu:///system']

sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))
from conftest import CoreServiceDouble, MemdumpService, free_port, http_json  # noqa: E402  pylint: disable=wrong-import-position,import-error

# `timeout` (bench/run.sh) sends SIGTERM: unwind, so that `finally` stops services and lifts CPU caps.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def log(msg):
    print('[bench %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def env(name, default=None):
    value = os.environ.get(name)
    if value:
        return value
    if default is None:
        raise SystemExit('%s is not set: run bench/run.sh (it sources the stack env files)' % name)
    return default


def int_env(name, default):
    return int(os.environ.get(name) or default)


# ---------------------------------------------------------------------------------------------
# statistics

def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values, digits=4):
    """n, median, p95, min, max, spread (max - min) and the raw values."""
    values = [v for v in values if v is not None]
    if not values:
        return {'n': 0}
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0

    def r(v):
        return round(v, digits)
    return {'n': len(values), 'median': r(median), 'p95': r(percentile(values, 95)), 'p99': r(percentile(values, 99)),
            'min': r(ordered[0]), 'max': r(ordered[-1]), 'spread': r(ordered[-1] - ordered[0]),
            'values': [r(v) for v in values]}


def parse_iso(text):
    """ISO 8601 UTC (with Z or +00:00) to epoch seconds."""
    text = text.strip().replace('Z', '+00:00')
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf('SC_CLK_TCK'))


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def write_result(figure, data):
    os.makedirs(RESULTS, exist_ok=True)
    data.setdefault('id', figure)
    data.setdefault('taken_at', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))
    path = os.path.join(RESULTS, '%s.json' % figure.lower())
    with open(path, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
    log('wrote %s' % path)


def rotate(items, rep):
    """The order of the variants in repetition rep: A B C, B C A, C A B, ..."""
    k = rep % len(items)
    return items[k:] + items[:k]


# ---------------------------------------------------------------------------------------------
# services and HTTP

def workdir(name):
    path = os.path.join(RESULTS, 'work', name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def check_loopback(url):
    host = urllib.parse.urlsplit(url).hostname
    if host not in ('127.0.0.1', '::1', 'localhost'):
        raise SystemExit('benchmarks only talk to loopback, not %s' % url)


def start_service(name, libvirt_uri, extra_args=()):
    """A memdump service on a free loopback port, in bench/results/work/<name>."""
    svc = MemdumpService(workdir(name), libvirt_uri, extra_args=list(extra_args))
    svc.start()
    return svc


def start_core_service(name, libvirt_uri):
    """The test double of the seed's core service (tests/doubles/core_service.py) on a free loopback port,
    in bench/results/work/<name>: real dumps, the seed's API only (no marker, no long-poll, no DELETE)."""
    svc = CoreServiceDouble(workdir(name), libvirt_uri)
    svc.start()
    return svc


def api(url, method, path, body=None, timeout=180):
    """One HTTP call: returns (status, parsed JSON or raw bytes)."""
    check_loopback(url)
    return http_json(url, method, path, body, timeout=timeout)


def find_dump(url, dump_id):
    """A dump record through the core API (works on the core-service double too)."""
    status, body = api(url, 'GET', '/api/dumps')
    if status != 200:
        raise RuntimeError('GET /api/dumps on %s answered %s: %s' % (url, status, body))
    for rec in body.get('dumps', []):
        if rec.get('dump_id') == dump_id:
            return rec
    raise RuntimeError('dump %s not listed by %s' % (dump_id, url))


def wait_dump(url, dump_id, states=('completed', 'failed'), timeout=600):
    """Waits (long-polling when the service supports it) until the dump is in one of states."""
    deadline = time.monotonic() + timeout
    marker = None
    while time.monotonic() < deadline:
        path = '/api/dumps/%s' % dump_id
        if marker is not None:
            path += '?wait=%d&marker=%d' % (min(60, max(1, deadline - time.monotonic())), marker)
        status, rec = api(url, 'GET', path)
        if status != 200:
            raise RuntimeError('GET %s answered %s: %s' % (path, status, rec))
        if rec.get('state') in states:
            return rec
        if rec.get('marker') is None:
            time.sleep(0.05)
        marker = rec.get('marker')
    raise RuntimeError('dump %s on %s not in %s after %ss' % (dump_id, url, states, timeout))


def post_dumps(url, vms, **extra):
    body = dict(extra, vms=list(vms))
    status, answer = api(url, 'POST', '/api/dumps', body)
    if status not in (200, 201, 202):
        raise RuntimeError('POST /api/dumps on %s answered %s: %s' % (url, status, answer))
    return answer['dumps']


def delete_dump(url, dump_id):
    api(url, 'DELETE', '/api/dumps/%s' % dump_id)


# ---------------------------------------------------------------------------------------------
# libvirt

def test_driver_uri(path, names=('web01', 'db01', 'app01'), memory_kib=131072):
    """Writes a libvirt test-driver node file with one running domain per name; returns its URI."""
    domains = ''.join("<domain type='test'><name>%s</name><uuid>6695eb01-f6a4-8304-79aa-%012x</uuid>"
                      "<os><type>hvm</type></os><memory>%d</memory></domain>\n" % (name, i + 1, memory_kib)
                      for i, name in enumerate(names))
    with open(path, 'w') as f:
        f.write("<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n%s</node>\n" % domains)
    return 'test://' + os.path.abspath(path)


def set_emulator_quota(vm, quota_us, period_us=100000):
    """Caps the CPU of the guest's QEMU emulator threads (which write the dump) to quota_us per
    period_us (100 ms); -1 lifts the cap. A 1 GiB memory-only dump lasts ~60-90 s at 1000 (1 %) here.

    Writes libvirt's cgroup of the guest directly when it can: during a dump libvirt holds the
    domain's job lock and ``virsh schedinfo`` would wait for it (and time out after 30 s)."""
    paths = glob.glob('/sys/fs/cgroup/cpu/machine/qemu-*-%s.libvirt-qemu/emulator/cpu.cfs_quota_us' % vm)
    if len(paths) == 1:
        with open(os.path.join(os.path.dirname(paths[0]), 'cpu.cfs_period_us'), 'w') as f:
            f.write(str(period_us))
        with open(paths[0], 'w') as f:
            f.write(str(quota_us))
        return
    subprocess.run(VIRSH + ['schedinfo', vm, '--live', 'emulator_period=%d' % period_us, 'emulator_quota=%d' % quota_us],
                   check=True, capture_output=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# ansible-playbook

def collections_path():
    root = os.path.join(RESULTS, 'collections')
    ns = os.path.join(root, 'ansible_collections', 'vmforensics')
    os.makedirs(ns, exist_ok=True)
    link = os.path.join(ns, 'memdump')
    if not os.path.islink(link):
        os.symlink(REPO, link)
    return root


def playbook_env(extra=None):
    run_env = dict(os.environ)
    tmp = os.path.join(RESULTS, 'ansible-tmp')
    os.makedirs(tmp, exist_ok=True)
    run_env.update({'ANSIBLE_COLLECTIONS_PATH': collections_path(), 'ANSIBLE_HOST_KEY_CHECKING': 'False',
                    'ANSIBLE_PYTHON_INTERPRETER': sys.executable, 'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_FORCE_COLOR': '0',
                    'ANSIBLE_LOCAL_TEMP': tmp, 'ANSIBLE_RETRY_FILES_ENABLED': 'False',
                    'ANSIBLE_CALLBACK_PLUGINS': os.path.join(REPO, 'bench', 'callback_plugins'),
                    'ANSIBLE_STDOUT_CALLBACK': 'bench_json'})
    run_env.pop('ANSIBLE_CALLBACKS_ENABLED', None)
    run_env.update(extra or {})
    return run_env


def playbook_cmd(playbook, extra_vars=None, inventory='localhost,', args=()):
    cmd = ['ansible-playbook', '-i', inventory, '-c', 'local', playbook]
    if extra_vars:
        cmd += ['-e', json.dumps(extra_vars)]
    return cmd + list(args)


def parse_json_output(stdout):
    try:
        return json.loads(stdout[stdout.index('{'):]) if '{' in stdout else None
    except ValueError:
        return None


def run_playbook(playbook, extra_vars=None, env_extra=None, inventory='localhost,', args=(), timeout=900):
    """Runs ansible-playbook; returns dict(rc, wall, json, stdout, stderr)."""
    cmd = playbook_cmd(playbook, extra_vars, inventory, args)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=playbook_env(env_extra), timeout=timeout, check=False)
    wall = time.monotonic() - started
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {'rc': proc.returncode, 'wall': wall, 'cpu': cpu, 'ended': ended, 'json': parse_json_output(proc.stdout),
            'stdout': proc.stdout, 'stderr': proc.stderr, 'cmd': cmd}


def last_task_end(out):
    """Epoch time at which the controller received the last task result of the run."""
    ends = [parse_iso(t['task']['duration']['end']) for play in (out or {}).get('plays', []) for t in play['tasks']
            if 'end' in t['task']['duration']]
    return max(ends) if ends else None


def task_result(out, name, host='localhost'):
    """(task dict, host result) of the named task in an ansible.builtin.json output."""
    for play in (out or {}).get('plays', []):
        for task in play.get('tasks', []):
            if task['task']['name'] == name and host in task['hosts']:
                return task['task'], task['hosts'][host]
    raise RuntimeError('task %r did not run on %s' % (name, host))


def playbook_failure(res):
    return 'ansible-playbook rc=%s\n%s\n%s' % (res['rc'], res['stdout'][-3000:], res['stderr'][-2000:])


# ---------------------------------------------------------------------------------------------
# a counting reverse proxy (loopback), to count the HTTP requests a client makes

class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'memdump-bench-proxy'

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def _forward(self):
        proxy = self.server.counting_proxy
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else None
        started = time.time()
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=300)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ('connection', 'keep-alive')}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, resp_headers = resp.status, resp.getheaders()
        finally:
            conn.close()
        proxy.record(self.command, self.path, status, started, time.time())
        self.send_response(status)
        for k, v in resp_headers:
            if k.lower() not in ('connection', 'keep-alive', 'transfer-encoding', 'content-length', 'server', 'date'):
                self.send_header(k, v)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = _forward


class CountingProxy:
    """Forwards every request from 127.0.0.1:<port> to upstream and records method, path, times."""

    def __init__(self, upstream_url):
        check_loopback(upstream_url)
        parts = urllib.parse.urlsplit(upstream_url)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.requests = []
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _ProxyHandler)
        self.server.daemon_threads = True
        self.server.counting_proxy = self
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def record(self, method, path, status, started, ended):
        with self._lock:
            self.requests.append({'method': method, 'path': path, 'status': status, 'start': started, 'end': ended})

    def reset(self):
        with self._lock:
            self.requests = []

    def snapshot(self):
        with self._lock:
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def hanging_listener():
    """A loopback TCP socket that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen(256)
    return sock, 'http://127.0.0.1:%d' % sock.getsockname()[1]


def dead_url():
    """A loopback URL where nothing listens (connection refused)."""
    return 'http://127.0.0.1:%d' % free_port()


class DumpPacer(threading.Thread):
    """Steers the emulator CPU cap of guests so that each one's running dump ends about `seconds`
    after it began (a proportional controller on libvirt's job progress, every 2 s)."""

    def __init__(self, vms, seconds, start_quota=1000, limit=900):
        super().__init__(daemon=True)
        self.vms, self.seconds, self.limit = list(vms), float(seconds), limit
        self.quota = {vm: start_quota for vm in self.vms}
        self.stop_event = threading.Event()
        self.log = []

    def run(self):
        import libvirt  # pylint: disable=import-outside-toplevel,import-error
        conn = libvirt.open('qemu:///system')
        doms = {vm: conn.lookupByName(vm) for vm in self.vms}
        last = {}
        seen = set()
        done = set()
        end = time.monotonic() + self.limit
        try:
            while not self.stop_event.wait(2) and time.monotonic() < end and len(done) < len(self.vms):
                for vm, dom in doms.items():
                    if vm in done:
                        continue
                    try:
                        st = dom.jobStats()
                    except libvirt.libvirtError:
                        st = {}
                    if not st.get('memory_total'):
                        if vm in seen:
                            done.add(vm)
                        continue
                    seen.add(vm)
                    now, processed, total = time.monotonic(), st.get('memory_processed', 0), st['memory_total']
                    elapsed = st.get('time_elapsed', 0) / 1000.0
                    left = self.seconds - elapsed
                    if left <= 2:
                        if self.quota[vm] != -1:
                            self.quota[vm] = -1
                            set_emulator_quota(vm, -1)
                    elif vm in last and now > last[vm][0] and processed > last[vm][1]:
                        rate = (processed - last[vm][1]) / (now - last[vm][0])
                        need = (total - processed) / left
                        quota = int(min(100000, max(1000, self.quota[vm] * need / rate)))
                        if abs(quota - self.quota[vm]) > 0.1 * self.quota[vm]:
                            self.quota[vm] = quota
                            set_emulator_quota(vm, quota)
                    last[vm] = (now, processed)
                    self.log.append((vm, round(elapsed, 1), round(100.0 * processed / total, 1), self.quota[vm]))
        finally:
            conn.close()

    def stop(self):
        self.stop_event.set()
        self.join(10)
