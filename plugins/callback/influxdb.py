# -*- coding: utf-8 -*-
# Copyright: contributors to the vmforensics.memdump collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: influxdb
type: notification
short_description: Records every memory dump and every run in InfluxDB
version_added: 0.1.0
author:
  - vmforensics maintainers (@vmforensics)
description:
  - Writes one point per dump record returned by the V(vmforensics.memdump.memdump_trigger),
    V(vmforensics.memdump.memdump_wait) and V(vmforensics.memdump.memdump_info) tasks of a run,
    and one point per run, to InfluxDB.
  - Dump points go to the measurement O(measurement) (default C(memdump)) with the tags C(host)
    (inventory host), C(vm), C(state), C(method) (C(memory-only) or C(live), if the service reports it), C(format)
    and C(label) and the fields C(dump_id),
    C(duration_sec), C(size_bytes), C(sha256), C(dump_path), C(message), C(progress), C(paused_sec)
    and C(service_host). Their timestamp is the dump's C(finished_at) (its C(started_at), then
    C(created_at), while unfinished), so sending a point again overwrites it instead of duplicating it.
  - The run point goes to C(<measurement>_run) (default C(memdump_run)) with the tag C(playbook) and
    the fields C(hosts), C(ok), C(changed), C(failed), C(unreachable) (numbers of hosts),
    C(duration_sec), C(dumps) and C(job_id) (the AWX job id, or the ansible-runner ident).
  - The head of the custody log that a task of this collection returns as C(custody_head)
    (V(vmforensics.memdump.memdump_collect), V(vmforensics.memdump.memdump_delete), V(vmforensics.memdump.memdump_verify))
    goes to the measurement C(memdump_custody), whatever O(measurement) is (V(vmforensics.memdump.memdump_verify)
    reads it there), with the tags C(label) (the log's incident label)
    and C(host) (inventory host) and the fields C(seq) (integer) and C(hash) (string), timestamped when the task
    returned it. This is a witness of the log's length kept where the controller cannot silently rewrite it.
  - A point InfluxDB refuses as bad (HTTP 400 or 422, for a malformed line or a field type conflict) is dropped with
    one warning (kept in a C(rejected-*) file in O(spool_dir), never sent again); other answers, 5xx and
    timeouts leave the points in the spool for the next run.
  - Points are buffered and sent once, when the run ends, within O(timeout) seconds whatever InfluxDB
    does. If that fails, one warning is shown and the points are written to a spool file in
    O(spool_dir); the next run sends the spool first. The run itself never fails because of this callback.
  - While the run goes on, a background thread asks InfluxDB's C(/ping) (again every O(timeout) seconds,
    at least 5, until it answers). If no probe got an answer by the end of the run, the points go to the
    spool at once instead of waiting O(timeout) for InfluxDB again.
  - Tasks with C(no_log) are never recorded. Credentials are never shown and never spooled.
  - This callback must be enabled, for example with C(callbacks_enabled = vmforensics.memdump.influxdb)
    in C(ansible.cfg) or E(ANSIBLE_CALLBACKS_ENABLED=vmforensics.memdump.influxdb) (as in AWX).
extends_documentation_fragment:
  - vmforensics.memdump.influxdb.callback
options:
  spool_dir:
    description:
      - Directory for the spool files of points that could not be sent (created with mode 0700).
      - The next run sends the spooled points first, to the InfluxDB it is configured to write to.
    type: path
    default: ~/.ansible/memdump-influxdb-spool
    env:
      - name: MEMDUMP_INFLUXDB_SPOOL_DIR
    ini:
      - section: callback_influxdb
        key: spool_dir
  spool_max_bytes:
    description:
      - Size cap of the spool in bytes. When it would be exceeded, the oldest points are dropped with a warning.
    type: int
    default: 10485760
    env:
      - name: MEMDUMP_INFLUXDB_SPOOL_MAX_BYTES
    ini:
      - section: callback_influxdb
        key: spool_max_bytes
"""

EXAMPLES = r"""
# ansible.cfg
# [defaults]
# callbacks_enabled = vmforensics.memdump.influxdb
#
# [callback_influxdb]
# url = http://influxdb.example.com:8086
# database = forensics
# username = ansible
# timeout = 5

# Or in the environment (AWX: the job template's or the execution environment's variables):
# ANSIBLE_CALLBACKS_ENABLED=vmforensics.memdump.influxdb
# MEMDUMP_INFLUXDB_URL=http://influxdb.example.com:8086
# MEMDUMP_INFLUXDB_DATABASE=forensics
# MEMDUMP_INFLUXDB_USERNAME=ansible
# MEMDUMP_INFLUXDB_PASSWORD=...

# InfluxDB 2.x through its native API:
# MEMDUMP_INFLUXDB_URL=https://influxdb2.example.com:8086
# MEMDUMP_INFLUXDB_ORG=secops
# MEMDUMP_INFLUXDB_BUCKET=forensics
# MEMDUMP_INFLUXDB_TOKEN=...
"""

import atexit
import datetime
import fcntl
import json
import os
import threading
import time

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.callback import CallbackBase

from ansible_collections.vmforensics.memdump.plugins.module_utils._influxdb import (
    BAD_POINT_STATUSES,
    CUSTODY_MEASUREMENT,
    DEFAULT_MEASUREMENT,
    InfluxDBError,
    InfluxDBv1,
    line,
    ping,
    resolve_api,
    safe_url,
    write_v2,
)

MODULES = ('memdump_trigger', 'memdump_wait', 'memdump_info')
ACTIONS = frozenset(['vmforensics.memdump.%s' % m for m in MODULES])
# Tasks of this collection whose results may carry the custody log's head.
COLLECTION = 'vmforensics.memdump.'
SHA256_HEX = frozenset('0123456789abcdef')
TAGS = ('vm', 'state', 'method', 'format', 'label')
STRING_FIELDS = ('dump_id', 'sha256', 'dump_path', 'message')
FLOAT_FIELDS = ('duration_sec', 'progress', 'paused_sec')
SPOOL_SUFFIX = '.lp'
MIN_PROBE_INTERVAL = 5.0


def parse_time(value):
    """An aware UTC datetime from an ISO 8601 string, or None."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.strip().replace('Z', '+00:00'))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def point_time(record, seen_at):
    """finished_at, else started_at, else created_at, else when the callback saw the record."""
    for key in ('finished_at', 'started_at', 'created_at'):
        parsed = parse_time(record.get(key))
        if parsed is not None:
            return parsed
    return seen_at


def time_ns(moment):
    """Nanoseconds since the epoch of an aware datetime."""
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10 ** 9 + delta.microseconds * 1000


def dump_point(measurement, host, record, seen_at):
    """The line protocol of one dump record."""
    tags = dict(host=host)
    for tag in TAGS:
        if record.get(tag) not in (None, ''):
            tags[tag] = to_text(record[tag])
    fields = {}
    for field in STRING_FIELDS:
        if record.get(field) is not None:
            fields[field] = to_text(record[field])
    for field in FLOAT_FIELDS:
        value = record.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            fields[field] = float(value)
    size = record.get('size_bytes')
    if isinstance(size, int) and not isinstance(size, bool):
        fields['size_bytes'] = size
    if record.get('host'):
        fields['service_host'] = to_text(record['host'])
    return line(measurement, tags, fields, time_ns(point_time(record, seen_at)))


def custody_head_of(result):
    """The ``custody_head`` ``{label, seq, hash}`` of a task result, or None when it has none that is well formed."""
    head = result.get('custody_head') if isinstance(result, dict) else None
    if not isinstance(head, dict):
        return None
    label, seq, digest = head.get('label'), head.get('seq'), head.get('hash')
    if not isinstance(label, str) or not label or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return None
    if not isinstance(digest, str) or len(digest) != 64 or not SHA256_HEX.issuperset(digest):
        return None
    return {'label': label, 'seq': seq, 'hash': digest}


def custody_point(host, head, at_ns):
    """The line protocol of one custody head seen in a task result."""
    return line(CUSTODY_MEASUREMENT, dict(label=head['label'], host=host), dict(seq=head['seq'], hash=head['hash']), at_ns)


def job_id_from_env(environ=None):
    """The AWX job id (JOB_ID, AWX_JOB_ID) or ansible-runner's ident, or None."""
    environ = os.environ if environ is None else environ
    for name in ('JOB_ID', 'AWX_JOB_ID', 'TOWER_JOB_ID'):
        if environ.get(name):
            return to_text(environ[name])
    # ansible-runner points AWX_ISOLATED_DATA_DIR at <private_data_dir>/artifacts/<ident>
    data_dir = environ.get('AWX_ISOLATED_DATA_DIR')
    if data_dir:
        return to_text(os.path.basename(os.path.normpath(data_dir)))
    return None


class DumpBuffer(object):
    """The dump records of one run, one per (inventory host, dump_id), newer results merged over older."""

    def __init__(self):
        self.records = {}
        self.order = []
        # (inventory host, head, nanoseconds when seen), each distinct head once.
        self.heads = []

    def add(self, host, record, seen_at=None):
        if not isinstance(record, dict) or not record.get('dump_id'):
            return False
        key = (host, to_text(record['dump_id']))
        merged = dict(self.records.get(key, {}).get('record', {}))
        merged.update((k, v) for k, v in record.items() if v is not None)
        if key not in self.records:
            self.order.append(key)
            self.records[key] = {'seen_at': seen_at or datetime.datetime.now(datetime.timezone.utc)}
        self.records[key]['record'] = merged
        return True

    def add_head(self, host, head):
        """Records a custody head once per host; True if it was new."""
        if head is None or any(seen_host == host and seen == head for seen_host, seen, dummy in self.heads):
            return False
        # Distinct timestamps: two heads of one log (one series) at the same instant would overwrite each other.
        at_ns = max([time.time_ns()] + [at + 1 for dummy, dummy2, at in self.heads])
        self.heads.append((host, head, at_ns))
        return True

    def add_result(self, host, result, dumps=True):
        """Records the ``dumps`` (with dumps) and the ``custody_head`` of a task result, also of each loop
        item. Returns how many."""
        count = 0
        if not isinstance(result, dict):
            return 0
        items = [result] + [item for item in result.get('results') or []
                            if isinstance(item, dict) and not item.get('_ansible_no_log')]
        for item in items:
            if dumps:
                for dump in item.get('dumps') or []:
                    count += self.add(host, dump)
            count += self.add_head(host, custody_head_of(item))
        return count

    def lines(self, measurement):
        dumps = [dump_point(measurement, host, self.records[(host, dump_id)]['record'], self.records[(host, dump_id)]['seen_at'])
                 for host, dump_id in self.order]
        return dumps + [custody_point(host, head, at_ns) for host, head, at_ns in self.heads]

    def __len__(self):
        return len(self.order) + len(self.heads)


def encode_spooled(lines):
    """One JSON string per line, ASCII only: no character of a point (a newline, U+2028, U+0085 in a
    VM name...) can split it into several when the spool is read back."""
    return ''.join(json.dumps(line, ensure_ascii=True) + '\n' for line in lines)


def decode_spooled(text):
    """The points of a spool file written by :func:`encode_spooled`; a line that is not one is skipped."""
    points = []
    for raw in text.split('\n'):
        if not raw.strip():
            continue
        try:
            point = json.loads(raw)
        except ValueError:
            continue
        if isinstance(point, str) and point.strip():
            points.append(point)
    return points


class Spool(object):
    """Line-protocol files of points not yet delivered, in a 0700 directory.

    Not tied to one destination: the next run sends them wherever it is configured to write.
    """

    def __init__(self, directory, max_bytes):
        self.directory = directory
        self.prefix = 'memdump-influxdb'
        self.max_bytes = max_bytes
        self._lock_fd = None

    def _ensure_dir(self):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def lock(self, wait):
        """Takes the spool's lock, waiting at most ``wait`` seconds. True if taken."""
        self._ensure_dir()
        fd = os.open(os.path.join(self.directory, self.prefix + '.lock'), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)

    def unlock(self):
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def files(self):
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(os.path.join(self.directory, n) for n in names
                      if n.startswith(self.prefix + '-') and n.endswith(SPOOL_SUFFIX))

    def read(self):
        """(files, lines) of the whole spool, oldest first."""
        files, lines = [], []
        for path in self.files():
            try:
                with open(path, encoding='utf-8') as f:
                    lines.extend(decode_spooled(f.read()))
                files.append(path)
            except (OSError, UnicodeDecodeError):
                continue
        return files, lines

    def size(self):
        total = 0
        for path in self.files():
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
        return total

    def store(self, lines, replaces=(), budget=None):
        """Writes lines to a new spool file (atomically, mode 0600) and removes ``replaces``.

        Keeps the newest lines within ``budget`` bytes (default: the cap); returns (path, dropped).
        """
        budget = self.max_bytes if budget is None else budget
        kept, size = [], 0
        for line in reversed(lines):
            size += len(line.encode('utf-8')) + 1
            if size > budget:
                break
            kept.append(line)
        kept.reverse()
        dropped = len(lines) - len(kept)
        self._ensure_dir()
        path = None
        if kept:
            path = os.path.join(self.directory, '%s-%020d-%d%s' % (self.prefix, time.time_ns(), os.getpid(), SPOOL_SUFFIX))
            tmp = path + '.tmp'
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                f.write(encode_spooled(kept))
            os.rename(tmp, path)
        self.remove(replaces)
        return path, dropped

    def keep_rejected(self, lines):
        """Writes points InfluxDB refused to a file that is never replayed; returns its path."""
        self._ensure_dir()
        path = os.path.join(self.directory, 'rejected-%020d-%d%s' % (time.time_ns(), os.getpid(), SPOOL_SUFFIX))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(encode_spooled(lines))
        return path

    @staticmethod
    def remove(paths):
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass


class LivenessProbe(object):
    """Pings InfluxDB in a daemon thread while the run goes on, until it answers once.

    A run whose InfluxDB never answered then spools its points at the end without waiting
    ``timeout`` for it a second time (docs/performance.md, P4).
    """

    def __init__(self, ping_once, interval):
        self.ping_once = ping_once  # raises when InfluxDB does not answer
        self.interval = interval
        self.answered = False
        self.failures = 0
        self.last_error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='memdump-influxdb-probe', daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.ping_once()
                self.answered = True
                return
            except Exception as err:  # pylint: disable=broad-except
                self.last_error = to_text(err)
                self.failures += 1
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()

    def known_dead(self):
        """True when at least one probe finished and none got an answer."""
        return not self.answered and self.failures > 0


class CallbackModule(CallbackBase):
    """Records memdump dumps and runs in InfluxDB; sends once at the end, spools on failure."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'notification'
    CALLBACK_NAME = 'vmforensics.memdump.influxdb'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super(CallbackModule, self).__init__(display=display)
        self.buffer = DumpBuffer()
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.playbook = None
        self.settings = {}
        self.finished = False
        self.disabled = False
        self.last_error = None
        self.spool_path = None
        self.probe = None
        self._atexit = False

    # -- settings ---------------------------------------------------------------------------------

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super(CallbackModule, self).set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        names = ('url', 'api', 'database', 'retention_policy', 'username', 'password', 'org', 'bucket', 'token',
                 'measurement', 'timeout', 'validate_certs', 'ca_path', 'spool_dir', 'spool_max_bytes')
        self.settings = dict((name, self.get_option(name)) for name in names)
        try:
            self.settings['timeout'] = max(0.1, float(self.settings['timeout']))
        except (TypeError, ValueError):
            self.settings['timeout'] = 5.0
        self.settings['measurement'] = self.settings['measurement'] or DEFAULT_MEASUREMENT
        self.settings['api'] = resolve_api(self.settings['api'] or 'auto', bucket=self.settings['bucket'],
                                           org=self.settings['org'])

    def destination(self):
        """Where points go, without credentials."""
        s = self.settings
        if s['api'] == 'v2':
            return 'v2 %s org=%s bucket=%s' % (safe_url(s['url']), s['org'], s['bucket'])
        rp = ' rp=%s' % s['retention_policy'] if s['retention_policy'] else ''
        return 'v1 %s db=%s%s' % (safe_url(s['url']), s['database'], rp)

    def spool(self):
        directory = os.path.expanduser(self.settings['spool_dir'] or '~/.ansible/memdump-influxdb-spool')
        return Spool(directory, int(self.settings['spool_max_bytes'] or 10485760))

    def scrub(self, text):
        """Removes the password, the token and URL user info from a message."""
        text = to_text(text)
        for secret in (self.settings.get('password'), self.settings.get('token')):
            if secret:
                text = text.replace(to_text(secret), '<hidden>')
        url = self.settings.get('url')
        if url and safe_url(url) != url:
            text = text.replace(url, safe_url(url))
        return text

    def warn(self, msg):
        self._display.warning('vmforensics.memdump.influxdb: %s' % self.scrub(msg))

    # -- events -----------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook):
        try:
            self.playbook = os.path.basename(to_text(getattr(playbook, '_file_name', '') or ''))
        except Exception:  # pylint: disable=broad-except
            self.playbook = None
        if self.disabled or self.probe is not None:
            return
        try:
            s = self.settings
            timeout = s['timeout']
            self.probe = LivenessProbe(lambda: ping(s['url'], timeout=timeout, validate_certs=s['validate_certs'],
                                                    ca_path=s['ca_path']),
                                       max(MIN_PROBE_INTERVAL, timeout))
            self.probe.start()
        except Exception as err:  # pylint: disable=broad-except
            self.probe = None
            self._display.vvv('vmforensics.memdump.influxdb: no liveness probe: %s' % self.scrub(err))

    def _record(self, result):
        if self.disabled:
            return
        try:
            task = result._task
            action = getattr(task, 'resolved_action', None) or task.action
            if not to_text(action).startswith(COLLECTION):
                return
            raw = result._result
            if task.no_log or (isinstance(raw, dict) and raw.get('_ansible_no_log')):
                return
            if self.buffer.add_result(result._host.get_name(), raw, dumps=action in ACTIONS) and not self._atexit:
                atexit.register(self._spool_unsent)
                self._atexit = True
        except Exception as err:  # pylint: disable=broad-except
            self._display.vvv('vmforensics.memdump.influxdb: could not record a result: %s' % self.scrub(err))

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result)

    def v2_playbook_on_stats(self, stats):
        if self.disabled or self.finished:
            return
        self.finished = True
        try:
            lines = self.buffer.lines(self.settings['measurement'])
            lines.append(self.run_point(stats))
            self.flush(lines)
        except Exception as err:  # pylint: disable=broad-except
            self.warn('could not record this run in InfluxDB: %s' % err)

    # -- points -----------------------------------------------------------------------------------

    def run_point(self, stats):
        counts = dict(hosts=0, ok=0, changed=0, failed=0, unreachable=0)
        for host in sorted(getattr(stats, 'processed', {}) or {}):
            summary = stats.summarize(host)
            counts['hosts'] += 1
            if summary.get('unreachable'):
                counts['unreachable'] += 1
            if summary.get('failures'):
                counts['failed'] += 1
            if not summary.get('unreachable') and not summary.get('failures'):
                counts['ok'] += 1
            if summary.get('changed'):
                counts['changed'] += 1
        fields = dict(counts, dumps=len(self.buffer.order),
                      duration_sec=float(round(time.monotonic() - self.started_monotonic, 3)), job_id=job_id_from_env())
        return line(self.settings['measurement'] + '_run', dict(playbook=self.playbook), fields, int(self.started * 1e9))

    # -- delivery ---------------------------------------------------------------------------------

    def send(self, lines, timeout):
        s = self.settings
        if s['api'] == 'v2':
            write_v2(s['url'], s['org'], s['bucket'], s['token'], lines, timeout=timeout,
                     validate_certs=s['validate_certs'], ca_path=s['ca_path'])
        else:
            InfluxDBv1(s['url'], s['database'], retention_policy=s['retention_policy'], username=s['username'],
                       password=s['password'], timeout=timeout, validate_certs=s['validate_certs'],
                       ca_path=s['ca_path']).write(lines, timeout=timeout)

    def send_bounded(self, lines, budget):
        """Sends in a daemon thread and waits at most ``budget`` seconds.

        Returns ``(None, None)`` on success, else ``(error text, HTTP status or None)``.
        """
        outcome = {}

        def target():
            try:
                self.send(lines, budget)
                outcome['ok'] = True
            except InfluxDBError as err:
                outcome['error'] = to_text(err)
                outcome['status'] = err.status
            except Exception as err:  # pylint: disable=broad-except
                outcome['error'] = '%s: %s' % (type(err).__name__, err)

        thread = threading.Thread(target=target, name='memdump-influxdb-send', daemon=True)
        thread.start()
        thread.join(budget)
        if outcome.get('ok'):
            return None, None
        if 'error' in outcome:
            return outcome['error'], outcome.get('status')
        return 'no answer from InfluxDB at %s within %.1fs' % (safe_url(self.settings['url']), budget), None

    def flush(self, lines):
        """Sends the spool and ``lines`` in one request within the timeout; spools them on failure."""
        timeout = self.settings['timeout']
        deadline = time.monotonic() + timeout
        spool = self.spool()
        try:
            locked = spool.lock(min(1.0, timeout / 4))
        except OSError as err:
            locked = False
            self._display.vvv('vmforensics.memdump.influxdb: spool lock failed: %s' % err)
        try:
            old_files, old_lines = spool.read() if locked else ([], [])
            all_lines = old_lines + list(lines)
            if not all_lines:
                return
            if self.probe is not None and self.probe.known_dead():
                error, status = ('no answer to %d probe(s) during the run, so no wait for it now; the last: %s'
                                 % (self.probe.failures, self.probe.last_error)), None
            else:
                error, status = self.send_bounded(all_lines, max(0.1, deadline - time.monotonic()))
            if error is None:
                spool.remove(old_files)
                if old_lines:
                    self._display.v('vmforensics.memdump.influxdb: delivered %d spooled points' % len(old_lines))
                return
            self.last_error = error
            if status in BAD_POINT_STATUSES:
                # InfluxDB wrote every valid point of the batch and refused the rest (field type conflict,
                # bad line; 400 from 1.x, 422 from 2.x): sending them again can never succeed, so they are
                # kept aside, not replayed.
                path = spool.keep_rejected(all_lines)
                spool.remove(old_files)
                self.spool_path = path
                self.warn('InfluxDB (%s) refused some of %d points: %s; InfluxDB kept the valid ones, all of them '
                          'were saved to %s, which is not sent again.' % (self.destination(), len(all_lines), error, path))
                return
            if locked:
                path, dropped = spool.store(all_lines, replaces=old_files)
            else:
                path, dropped = spool.store(list(lines), budget=max(0, spool.max_bytes - spool.size()))
            self.spool_path = path
            self.warn('could not send %d points to InfluxDB (%s): %s; they were written to the spool %s and '
                      'the next run sends them first.' % (len(all_lines), self.destination(), error, path))
            if dropped:
                self.warn('the spool %s is full (spool_max_bytes=%s): dropped the %d oldest points.'
                          % (spool.directory, spool.max_bytes, dropped))
        finally:
            if self.probe is not None:
                self.probe.stop()
            spool.unlock()
            self.buffer = DumpBuffer()

    def _spool_unsent(self):
        """At exit without a stats event (run interrupted): keep the buffered dump points in the spool."""
        try:
            if self.finished or self.disabled or not len(self.buffer):
                return
            self.finished = True
            spool = self.spool()
            spool.store(self.buffer.lines(self.settings['measurement']),
                        budget=max(0, spool.max_bytes - spool.size()))
        except Exception:  # pylint: disable=broad-except
            pass
