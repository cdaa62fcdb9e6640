# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The custody log of an incident: append-only, hash-chained, SSHSIG-signed JSON lines; the manifest
generated from it; the safe evidence paths; the streaming download; and the verification.

For internal collection use only: this is not a public API and may change without notice. Used by the
controller-side action plugins memdump_collect, memdump_delete and memdump_verify.

Format (docs/runbook.md, "Verifying evidence"):

* ``<evidence_dir>/<label>/custody.jsonl``, one event per line, each line the canonical JSON of the
  event: ``json.dumps(event, sort_keys=True, separators=(',', ':'), ensure_ascii=False)`` in UTF-8,
  ending with ``\\n``.
* ``prev`` is the hex SHA-256 of the previous line's bytes without its ``\\n``; the first line's
  ``prev`` is 64 zeros (``GENESIS``). ``seq`` is the line's index, from 0.
* ``signature`` is the armored SSHSIG of ``ssh-keygen -Y sign -n memdump-custody`` over the payload:
  the canonical JSON of the event without the ``signature`` field (no trailing newline). An unsigned
  event has ``"signature": null``.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

NAMESPACE = 'memdump-custody'
GENESIS = '0' * 64
LOG_NAME = 'custody.jsonl'
LOCK_NAME = '.custody.lock'
MANIFEST_NAME = 'manifest.json'
EVENT_TYPES = ('acquired', 'collected', 'verified', 'deleted_from_host', 'reverified')
VM_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')
DUMP_ID_RE = re.compile(r'^[0-9a-f]{32}$')
SHA256_RE = re.compile(r'^[0-9a-f]{64}$')
LABEL_RE = re.compile(r'^[A-Za-z0-9._:@+-]{1,128}$')
# inventory_hostname names a directory too: no separators, no leading dot.
HOST_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,252}$')
EXTENSIONS = {'elf': 'elf', 'kdump-zlib': 'kdump', 'kdump-lzo': 'kdump', 'kdump-snappy': 'kdump', 'win-dmp': 'dmp',
              'qemu-migration': 'qevm'}
DEFAULT_METHOD = 'memory-only'
# Fields of the service's record carried into the custody events when present (context for the analyst).
CONTEXT_FIELDS = ('domain_xml', 'machine', 'qemu_version', 'libvirt_version')
CHUNK = 1 << 20
# Chunks in flight between the receiving and the writing thread (memory stays at this many MiB).
PIPELINE_CHUNKS = 8
# The writer forces data to disk every this many bytes, while receiving goes on, so the final
# fsync has little left and a large image does not pile up in the page cache.
SYNC_EVERY = 64 << 20
DIR_MODE = 0o700
IMAGE_MODE = 0o400
LOG_MODE = 0o600


class CustodyError(Exception):
    """A refusal or failure with a message a responder can act on."""


# -- time, JSON, hashing -------------------------------------------------------------------------

def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def canonical(obj):
    """The canonical JSON bytes of a value (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=False).encode('utf-8')


def payload_of(event):
    """The signed bytes of an event: its canonical JSON without ``signature``."""
    return canonical(dict((k, v) for k, v in event.items() if k != 'signature'))


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, 'rb', buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()


# -- names and paths ---------------------------------------------------------------------------

def check_vm_name(vm):
    if not isinstance(vm, str) or not VM_NAME_RE.match(vm):
        raise CustodyError('VM name %r is refused: an evidence file name is built from it, so it must be 1-128 '
                           'characters of A-Z a-z 0-9 . _ - starting with a letter or digit' % (vm,))
    return vm


def check_dump_id(dump_id):
    if not isinstance(dump_id, str) or not DUMP_ID_RE.match(dump_id):
        raise CustodyError('dump id %r is refused: it must be 32 lowercase hex characters' % (dump_id,))
    return dump_id


def check_label(label):
    if not isinstance(label, str) or not LABEL_RE.match(label) or label in ('.', '..'):
        raise CustodyError('label %r is refused: 1-128 characters of A-Z a-z 0-9 . _ : @ + -' % (label,))
    return label


def check_host(host):
    if not isinstance(host, str) or not HOST_RE.match(host):
        raise CustodyError('host name %r is refused: it names an evidence directory' % (host,))
    return host


def evidence_relpath(host, vm, dump_id, fmt):
    """``<host>/<vm>_<dump id>.<ext>``, relative to the incident directory, from checked names only."""
    ext = EXTENSIONS.get(fmt)
    if ext is None:
        raise CustodyError('format %r is not one of %s' % (fmt, ', '.join(sorted(EXTENSIONS))))
    return '%s/%s_%s.%s' % (check_host(host), check_vm_name(vm), check_dump_id(dump_id), ext)


def incident_dir(evidence_dir, label):
    return os.path.join(os.path.abspath(evidence_dir), check_label(label))


def make_dir(path):
    """Creates a directory 0700 (parents too); an existing one is made 0700 if it is ours."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        raise CustodyError('%s is not a directory' % path)
    if (st.st_mode & 0o777) != DIR_MODE and st.st_uid == os.getuid():
        os.chmod(path, DIR_MODE)


def atomic_write(path, data, mode=0o600):
    """Writes bytes to path through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- signing -----------------------------------------------------------------------------------

def ssh_keygen():
    path = shutil.which('ssh-keygen')
    if not path:
        raise CustodyError('ssh-keygen is not installed on the controller (Debian/Ubuntu package openssh-client); '
                           'it signs and verifies the custody events')
    return path


def sign(payload, key_path):
    """The armored SSHSIG of payload with the OpenSSH private key at key_path (namespace memdump-custody)."""
    if not os.path.isfile(key_path):
        raise CustodyError('signing key %s does not exist' % key_path)
    proc = subprocess.run([ssh_keygen(), '-q', '-Y', 'sign', '-f', key_path, '-n', NAMESPACE],
                          input=payload, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    sig = proc.stdout.decode('ascii', 'replace')
    if proc.returncode != 0 or '-----BEGIN SSH SIGNATURE-----' not in sig:
        raise CustodyError('ssh-keygen -Y sign -f %s failed (rc %s): %s (the key must be an OpenSSH private key '
                           'without a passphrase, or loaded in ssh-agent)'
                           % (key_path, proc.returncode, proc.stderr.decode('utf-8', 'replace').strip()))
    return sig


def key_fingerprint(key_path):
    """``SHA256:...`` of the key (its .pub if present, else derived by ssh-keygen)."""
    proc = subprocess.run([ssh_keygen(), '-l', '-E', 'sha256', '-f', key_path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30, check=False)
    parts = proc.stdout.decode('utf-8', 'replace').split()
    return parts[1] if proc.returncode == 0 and len(parts) > 1 else None


def verify_signature(payload, signature, allowed_signers, workdir):
    """``(True, principal)`` if an allowed signer signed payload, else ``(False, reason)``."""
    sig_path = os.path.join(workdir, 'event.sig')
    with open(sig_path, 'w') as f:
        f.write(signature)
    proc = subprocess.run([ssh_keygen(), '-Y', 'find-principals', '-f', allowed_signers, '-s', sig_path],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    principals = proc.stdout.decode('utf-8', 'replace').split()
    if proc.returncode != 0 or not principals:
        return False, 'signed by a key that is not in %s' % allowed_signers
    proc = subprocess.run([ssh_keygen(), '-Y', 'verify', '-f', allowed_signers, '-I', principals[0], '-n', NAMESPACE,
                           '-s', sig_path], input=payload, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60, check=False)
    if proc.returncode != 0:
        return False, 'signature does not match the event (%s)' % proc.stderr.decode('utf-8', 'replace').strip()
    return True, principals[0]


class FileLock(object):
    """An exclusive flock on a (created, empty) file, as a context manager."""

    def __init__(self, path):
        self.path = path
        self._f = None

    def __enter__(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, LOG_MODE)
        self._f = os.fdopen(fd, 'r+')
        fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
        self._f.close()


# -- the log -----------------------------------------------------------------------------------

class CustodyLog(object):
    """The custody log of one incident directory. Use as a context manager: holds the flock."""

    def __init__(self, incident, signing_key=None, create=True):
        self.dir = incident
        self.path = os.path.join(incident, LOG_NAME)
        self.manifest_path = os.path.join(incident, MANIFEST_NAME)
        self.signing_key = signing_key or None
        self.create = create
        self._lock = None
        self._fingerprint = None
        self.appended = []

    def __enter__(self):
        if self.create:
            make_dir(self.dir)
        self._lock = open(os.path.join(self.dir, LOCK_NAME), 'a')  # pylint: disable=consider-using-with
        os.chmod(self._lock.name, LOG_MODE)
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def lines(self):
        """The raw lines (bytes, without newline)."""
        try:
            with open(self.path, 'rb') as f:
                data = f.read()
        except IOError as e:
            if e.errno == errno.ENOENT:
                return []
            raise
        if data and not data.endswith(b'\n'):
            raise CustodyError('%s ends with an incomplete line: it was cut or edited; run vmforensics.memdump.verify'
                               % self.path)
        return data.split(b'\n')[:-1] if data else []

    def events(self):
        out = []
        for number, line in enumerate(self.lines(), 1):
            try:
                out.append(json.loads(line.decode('utf-8')))
            except ValueError:
                raise CustodyError('line %d of %s is not JSON: the log was edited; run vmforensics.memdump.verify'
                                   % (number, self.path))
        return out

    def append(self, event):
        """Adds seq, prev and signature to event, appends its line (fsync) and returns it. Hold the lock."""
        if self._lock is None:
            raise CustodyError('the custody log must be locked to append')
        lines = self.lines()
        event = dict(event)
        event['seq'] = len(lines)
        event['prev'] = sha256_hex(lines[-1]) if lines else GENESIS
        event['signature'] = None
        if self.signing_key:
            if self._fingerprint is None:
                self._fingerprint = key_fingerprint(self.signing_key)
            event['signer'] = self._fingerprint
            event['signature'] = sign(payload_of(event), self.signing_key)
        else:
            event['signer'] = None
        line = canonical(event) + b'\n'
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.appended.append(event)
        return event

    def write_manifest(self, events=None):
        """Regenerates manifest.json from the log (atomic); returns True if its content changed."""
        data = manifest_bytes(self.events() if events is None else events)
        try:
            with open(self.manifest_path, 'rb') as f:
                if f.read() == data:
                    return False
        except IOError:
            pass
        atomic_write(self.manifest_path, data, 0o600)
        return True


# -- events and the manifest -----------------------------------------------------------------------

def base_event(kind, label, host, vm, dump_id, record, ctx):
    """The fields every event of one dump has. ``ctx``: operator, awx_job_id, controller, collection_version."""
    if kind not in EVENT_TYPES:
        raise CustodyError('unknown event type %s' % kind)
    record = record or {}
    event = {
        'event': kind,
        'time': utc_now(),
        'label': label,
        'host': host,
        'service_host': record.get('host'),
        'vm': vm,
        'vm_uuid': record.get('vm_uuid'),
        'dump_id': dump_id,
        'method': record.get('method') or DEFAULT_METHOD,
        'format': record.get('format') or 'elf',
        'size_bytes': record.get('size_bytes'),
        'sha256': record.get('sha256'),
        'paused_sec': record.get('paused_sec'),
        'operator': ctx.get('operator'),
        'awx_job_id': ctx.get('awx_job_id'),
        'controller': ctx.get('controller'),
        'collection_version': ctx.get('collection_version'),
    }
    return event


def acquired_event(label, host, vm, dump_id, record, ctx):
    event = base_event('acquired', label, host, vm, dump_id, record, ctx)
    for key in ('started_at', 'finished_at', 'duration_sec', 'dump_path', 'created_at'):
        event[key] = record.get(key)
    context = dict((k, record[k]) for k in CONTEXT_FIELDS if record.get(k) is not None)
    if context:
        event['context'] = context
    return event


def by_dump(events):
    """dump id -> {event type: last event of that type}."""
    out = {}
    for e in events:
        if isinstance(e, dict) and e.get('dump_id'):
            out.setdefault(e['dump_id'], {})[e.get('event')] = e
    return out


MANIFEST_ENTRY_FIELDS = ('label', 'host', 'service_host', 'vm', 'vm_uuid', 'dump_id', 'method', 'format', 'size_bytes',
                         'sha256', 'started_at', 'finished_at', 'duration_sec', 'paused_sec', 'dump_path')


def manifest_of(events):
    """The manifest (a dict) generated from the events: one entry per dump, in the order of its ``acquired`` event."""
    entries = []
    index = {}
    created_at = updated_at = None
    version = None
    label = None
    for e in events:
        kind, dump_id = e.get('event'), e.get('dump_id')
        if kind == 'reverified' or dump_id is None:
            continue
        label = label or e.get('label')
        version = version or e.get('collection_version')
        created_at = created_at or e.get('time')
        updated_at = e.get('time')
        if kind == 'acquired' and dump_id not in index:
            entry = dict((k, e.get(k)) for k in MANIFEST_ENTRY_FIELDS)
            entry.update({'collected': False, 'evidence_file': None, 'deleted_from_host': False,
                          'operator': e.get('operator'), 'awx_job_id': e.get('awx_job_id'),
                          'collection_version': e.get('collection_version'), 'recorded_at': e.get('time'),
                          'custody_seq': e.get('seq')})
            if e.get('context'):
                entry['context'] = e['context']
            index[dump_id] = entry
            entries.append(entry)
            continue
        entry = index.get(dump_id)
        if entry is None:
            continue
        if kind == 'verified':
            entry['collected'] = True
            entry['evidence_file'] = e.get('evidence_file')
            entry['collected_at'] = e.get('time')
        elif kind == 'deleted_from_host':
            entry['deleted_from_host'] = True
            entry['dump_path'] = None
    return {'label': label, 'created_at': created_at, 'updated_at': updated_at, 'collection': 'vmforensics.memdump',
            'collection_version': version, 'hash_algorithm': 'sha256', 'custody_log': LOG_NAME, 'entries': entries}


def manifest_bytes(events):
    return (json.dumps(manifest_of(events), indent=2, sort_keys=False, ensure_ascii=False) + '\n').encode('utf-8')


# -- download ------------------------------------------------------------------------------------

class DownloadError(CustodyError):
    pass


def download(open_file, dest, expected_size, expected_sha256, retries=5, retry_delay=1.0, sleep=time.sleep):
    """Streams an image to ``dest`` through ``dest + '.part'`` (same dir), resuming with Range.

    ``open_file(offset)`` returns a response (``read``/``readinto``, ``getcode()``, ``headers``, ``close``)
    or raises; a connection error is retried ``retries`` times (resuming where it stopped), anything
    else raises. The SHA-256 is computed while receiving; the ``.part`` gets its final name (0400) only
    when size and hash equal the expected ones and the service's ``X-Memdump-SHA256``. Returns a dict
    (sha256, size_bytes, resumes, seconds, bytes_received). Memory use is one chunk.
    """
    part = dest + '.part'
    digest = hashlib.sha256()
    offset = 0
    if os.path.exists(part):  # a leftover of a cut run: hash what is there and go on from its end
        with open(part, 'rb') as f:
            for chunk in iter(lambda: f.read(CHUNK), b''):
                digest.update(chunk)
                offset += len(chunk)
        if offset > expected_size:
            os.unlink(part)
            digest, offset = hashlib.sha256(), 0
    started = time.monotonic()
    resumes = 0
    received = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        os.ftruncate(fd, offset)
        sink = _Writer(fd, digest)
        try:
            while offset < expected_size:
                try:
                    resp = open_file(offset)
                except ConnectionErrorTypes as e:  # retried below
                    resp, err = None, e
                else:
                    err = None
                if resp is not None:
                    try:
                        offset, got, err = _receive(resp, sink, offset, expected_size, expected_sha256)
                        received += got
                    finally:
                        resp.close()
                if err is None:
                    break
                if resumes >= retries:
                    raise DownloadError('the download was cut at byte %d of %d and %d resumes did not finish it: %s'
                                        % (offset, expected_size, retries, err))
                resumes += 1
                sleep(retry_delay)
        finally:
            sink.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    if offset != expected_size:
        raise DownloadError('received %d bytes, the service announced %d' % (offset, expected_size))
    got_sha = digest.hexdigest()
    if got_sha != expected_sha256:
        os.unlink(part)
        raise DownloadError('SHA-256 of the received image is %s, the service recorded %s: the image was '
                            'changed in transit or on the host; nothing was kept' % (got_sha, expected_sha256))
    os.chmod(part, IMAGE_MODE)
    try:
        os.link(part, dest)  # unlike rename, never replaces an existing file
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise DownloadError('%s appeared during the download; it is never overwritten' % dest)
        raise
    os.unlink(part)
    return {'sha256': got_sha, 'size_bytes': offset, 'resumes': resumes, 'bytes_received': received,
            'seconds': round(time.monotonic() - started, 3)}


class _Cut(Exception):
    pass


try:
    from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpConnectionError
    ConnectionErrorTypes = (MemdumpConnectionError, _Cut)
except ImportError:  # pragma: no cover - used without the collection on the path
    ConnectionErrorTypes = (_Cut,)
ConnectionErrorTypes = ConnectionErrorTypes + (OSError,)


def _header(resp, name):
    headers = getattr(resp, 'headers', None)
    if headers is None and hasattr(resp, 'info'):
        headers = resp.info()
    return headers.get(name) if headers is not None else None


class _Writer(object):
    """Hashes and writes received chunks in a thread of its own, in order, so that receiving the next
    chunk overlaps hashing, writing and syncing this one (hashlib and os.write release the GIL)."""

    def __init__(self, fd, digest):
        self.fd = fd
        self.digest = digest
        self.error = None
        self._free = [bytearray(CHUNK) for dummy in range(PIPELINE_CHUNKS)]
        self._queue = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name='memdump-collect-writer', daemon=True)
        self._thread.start()

    def free_buffer(self):
        with self._cond:
            while not self._free and self.error is None:
                self._cond.wait()
            self._raise()
            return self._free.pop()

    def give_back(self, buf):
        with self._cond:
            self._free.append(buf)
            self._cond.notify_all()

    def put(self, buf, n):
        with self._cond:
            self._raise()
            self._queue.append((buf, n))
            self._cond.notify_all()

    def close(self):
        """Waits until every queued chunk is written; raises the writer's error, if any."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self._raise()

    def _raise(self):
        if self.error is not None:
            raise DownloadError('writing the image failed: %s' % self.error)

    def _run(self):
        unsynced = 0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                buf, n = self._queue.pop(0)
            try:
                view = memoryview(buf)[:n]
                self.digest.update(view)
                while view:
                    view = view[os.write(self.fd, view):]
                unsynced += n
                if unsynced >= SYNC_EVERY:
                    os.fdatasync(self.fd)
                    unsynced = 0
            except OSError as e:
                with self._cond:
                    self.error = e
                    self._cond.notify_all()
                return
            self.give_back(buf)


def _receive(resp, sink, offset, expected_size, expected_sha256):
    """Reads one response into fd; returns (new offset, bytes got, None or the error to resume after)."""
    status = resp.getcode() if hasattr(resp, 'getcode') else resp.status
    if offset and status != 206:
        raise DownloadError('the service answered HTTP %s to a Range request from byte %d (expected 206)' % (status, offset))
    if not offset and status not in (200, 206):
        raise DownloadError('the service answered HTTP %s for the file' % status)
    if offset:
        crange = _header(resp, 'Content-Range') or ''
        m = re.match(r'^bytes (\d+)-(\d+)/(\d+|\*)$', crange.strip())
        if not m or int(m.group(1)) != offset:
            raise DownloadError('the service answered Content-Range %r to a request from byte %d' % (crange, offset))
        if m.group(3) != '*' and int(m.group(3)) != expected_size:
            raise DownloadError('the service announces %s bytes in Content-Range, its record says %d'
                                % (m.group(3), expected_size))
    header_sha = (_header(resp, 'X-Memdump-SHA256') or '').strip().lower()
    if header_sha and header_sha != expected_sha256:
        raise DownloadError('the service sends X-Memdump-SHA256 %s, its record says %s' % (header_sha, expected_sha256))
    length = _header(resp, 'Content-Length')
    if length is not None and length.strip().isdigit() and offset + int(length) != expected_size:
        raise DownloadError('the service announces %s bytes from byte %d (Content-Length), its record says %d in all'
                            % (length.strip(), offset, expected_size))
    got = 0
    try:
        while True:
            buf = sink.free_buffer()
            n = resp.readinto(buf)
            if not n:
                sink.give_back(buf)
                break
            if offset + n > expected_size:
                sink.give_back(buf)
                raise DownloadError('the service sent more than the %d bytes it announced; nothing was kept'
                                    % expected_size)
            sink.put(buf, n)
            offset += n
            got += n
    except DownloadError:
        raise
    except Exception as e:  # pylint: disable=broad-except  # a cut connection (IncompleteRead, reset, timeout)
        return offset, got, e
    if offset < expected_size:
        return offset, got, _Cut('the connection ended at byte %d of %d' % (offset, expected_size))
    return offset, got, None


# -- verification ----------------------------------------------------------------------------------

def verify_incident(incident, allowed_signers=None, allow_unsigned=False, hash_images=True):
    """Checks one incident directory. Returns a dict: ok, problems (list of str), warnings, events, head,
    images (list of dicts), unsigned (seqs)."""
    problems, warnings = [], []
    path = os.path.join(incident, LOG_NAME)
    result = {'ok': False, 'problems': problems, 'warnings': warnings, 'events': 0, 'head': None, 'images': [],
              'unsigned': [], 'signers': []}
    if not os.path.isfile(path):
        problems.append('%s does not exist' % path)
        return result
    with open(path, 'rb') as f:
        data = f.read()
    if data and not data.endswith(b'\n'):
        problems.append('custody.jsonl ends with an incomplete line (cut or edited)')
    lines = data.split(b'\n')
    if lines and lines[-1] == b'':
        lines.pop()
    events = []
    prev = GENESIS
    workdir = tempfile.mkdtemp(prefix='memdump-verify-')
    signers = set()
    try:
        for index, line in enumerate(lines):
            where = 'event at line %d' % (index + 1)
            try:
                event = json.loads(line.decode('utf-8'))
                if not isinstance(event, dict):
                    raise ValueError('not an object')
            except ValueError:
                problems.append('%s is not a JSON event: the log was edited' % where)
                prev = sha256_hex(line)
                continue
            where = 'event at line %d (seq %s, %s, dump %s)' % (
                index + 1, event.get('seq'), event.get('event'), event.get('dump_id'))
            if canonical(event) != line:
                problems.append('%s is not in canonical form: the line was edited' % where)
            if event.get('seq') != index:
                problems.append('%s has seq %s at position %d: an event was removed, inserted or reordered'
                                % (where, event.get('seq'), index))
            if event.get('prev') != prev:
                problems.append('%s does not chain to the line before it (prev %s, expected %s): an event before it '
                                'was removed, reordered or edited' % (where, event.get('prev'), prev))
            if event.get('event') not in EVENT_TYPES:
                problems.append('%s has an unknown event type' % where)
            sig = event.get('signature')
            if not sig:
                result['unsigned'].append(index)
                if not allow_unsigned:
                    problems.append('%s is not signed' % where)
            elif allowed_signers:
                ok, who = verify_signature(payload_of(event), sig, allowed_signers, workdir)
                if ok:
                    signers.add(who)
                else:
                    problems.append('%s: %s: the event was edited or forged' % (where, who))
            prev = sha256_hex(line)
            events.append(event)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result['events'] = len(lines)
    result['head'] = prev if lines else None
    result['signers'] = sorted(signers)
    if result['unsigned'] and allow_unsigned:
        warnings.append('%d of %d events are not signed (seq %s)' % (len(result['unsigned']), len(lines),
                                                                     ', '.join(str(s) for s in result['unsigned'])))
    if not allowed_signers and not allow_unsigned:
        problems.append('no allowed_signers file given: the signatures cannot be checked')

    # The images the log lists, and the files on disk.
    listed = {}
    for dump_id, kinds in by_dump(events).items():
        ver = kinds.get('verified')
        if ver is None:
            continue
        rel = ver.get('evidence_file') or ''
        if rel.startswith('/') or '..' in rel.split('/'):
            problems.append('dump %s: evidence_file %r climbs out of the incident directory' % (dump_id, rel))
            continue
        listed[rel] = ver
    for rel, ver in sorted(listed.items()):
        full = os.path.join(incident, rel)
        info = {'file': rel, 'vm': ver.get('vm'), 'dump_id': ver.get('dump_id'), 'sha256': ver.get('sha256'),
                'size_bytes': ver.get('size_bytes'), 'ok': False}
        result['images'].append(info)
        if not os.path.isfile(full):
            problems.append('image %s (VM %s, dump %s) is missing' % (rel, ver.get('vm'), ver.get('dump_id')))
            continue
        if hash_images:
            size, sha = sha256_file(full)
            if size != ver.get('size_bytes') or sha != ver.get('sha256'):
                problems.append('image %s (VM %s, dump %s) changed: %d bytes SHA-256 %s, the custody log says %s bytes '
                                'SHA-256 %s' % (rel, ver.get('vm'), ver.get('dump_id'), size, sha, ver.get('size_bytes'),
                                                ver.get('sha256')))
                continue
        info['ok'] = True
    known = set([LOG_NAME, MANIFEST_NAME, LOCK_NAME])
    for root, dirs, files in os.walk(incident):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), incident)
            if rel in known or rel in listed:
                continue
            if name.endswith('.part'):
                warnings.append('%s is an unfinished download (a run was interrupted); it is not evidence' % rel)
            elif name.startswith('.manifest.json.'):
                continue
            elif name.startswith('.') and name.endswith('.lock') and os.path.getsize(os.path.join(root, name)) == 0:
                continue  # an empty per-image lock of memdump_collect (also left by a download that failed)
            else:
                problems.append('%s is not listed in the custody log' % rel)
    # The manifest must be what the log generates.
    mpath = os.path.join(incident, MANIFEST_NAME)
    if os.path.exists(mpath):
        with open(mpath, 'rb') as f:
            if f.read() != manifest_bytes(events):
                problems.append('manifest.json differs from the one the custody log generates: it was edited '
                                '(regenerate it by re-running the acquisition, or read custody.jsonl)')
    else:
        warnings.append('manifest.json is missing (it is generated from custody.jsonl)')
    result['ok'] = not problems
    return result
