# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The custody log of an incident (append-only, hash-chained, SSHSIG-signed JSON lines), its events and
the manifest generated from it.

For internal collection use only: this is not a public API and may change without notice.

Format (docs/runbook.md, "The custody log"):

* ``<evidence_dir>/<label>/custody.jsonl``, one event per line, each line the canonical JSON of the
  event: ``json.dumps(event, sort_keys=True, separators=(',', ':'), ensure_ascii=False)`` in UTF-8,
  ending with ``\\n``.
* ``prev`` is the hex SHA-256 of the previous line's bytes without its ``\\n``; the first line's
  ``prev`` is 64 zeros (``GENESIS``). ``seq`` is the line's index, from 0. The hash of line ``seq``
  is the chain hash of that event; the hash of the last line is the chain head.
* ``signature`` is the armored SSHSIG of ``ssh-keygen -Y sign -n memdump-custody`` over the payload:
  the canonical JSON of the event without the ``signature`` field. An unsigned event has ``null``.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import tempfile

from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_lock import FileLock
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_names import CustodyError
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_sign import key_fingerprint, sign
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._elfcore import data_extents

GENESIS = '0' * 64
LOG_NAME = 'custody.jsonl'
LOCK_NAME = '.custody.lock'
MANIFEST_NAME = 'manifest.json'
# deleting: the intent, written before the host deletes; deleted_from_host / delete_failed: the outcome.
# repaired: a torn last line was moved aside by an explicit step (memdump_verify repair_torn_line).
# derived: an ELF core made from a collected live stream (memdump_convert); the stream stays the evidence.
EVENT_TYPES = ('acquired', 'collected', 'verified', 'deleting', 'deleted_from_host', 'delete_failed', 'reverified',
               'repaired', 'derived')
DEFAULT_METHOD = 'memory-only'
# Fields of the service's record carried into the custody events when present (context for the analyst).
CONTEXT_FIELDS = ('domain_xml', 'machine', 'qemu_version', 'libvirt_version')
CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
DIR_MODE = 0o700
LOG_MODE = 0o600


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
    """``(size, SHA-256)`` of the file at ``path``."""
    with open(path, 'rb', buffering=0) as f:
        return sha256_fd(f.fileno())


def sha256_fd(fd):
    """``(size, SHA-256)`` of an open file, read with pread from its start (so beside other preads of the
    same descriptor). Only its data is read: a hole (the unused guest memory of a sparse ELF) is hashed
    from zeros in memory."""
    digest = hashlib.sha256()
    size = os.fstat(fd).st_size
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    zeros = memoryview(_ZEROS)
    pos = 0
    for data, hole in data_extents(fd, 0, size) + [(size, size)]:
        while pos < data:
            step = min(CHUNK, data - pos)
            digest.update(zeros[:step])
            pos += step
        while pos < hole:
            count = _pread_into(fd, view[:min(CHUNK, hole - pos)], pos)
            if not count:       # the file shrank meanwhile: what was read is what is hashed
                return pos, digest.hexdigest()
            digest.update(view[:count])
            pos += count
    return pos, digest.hexdigest()


def _pread_into(fd, view, pos):
    if hasattr(os, 'preadv'):
        return os.preadv(fd, [view], pos)
    data = os.pread(fd, len(view), pos)
    view[:len(data)] = data
    return len(data)


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


def head_of(label, lines):
    """The chain head ``{label, seq, hash}`` of a log's lines, or None for an empty log."""
    if not lines:
        return None
    return {'label': label, 'seq': len(lines) - 1, 'hash': sha256_hex(lines[-1])}


class TornLineError(CustodyError):
    """The log ends with an incomplete line (a write cut by a full disk or a crash)."""


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
        elif not os.path.isdir(self.dir):
            raise CustodyError('%s does not exist: no evidence was collected for this label there' % self.dir)
        self._lock = FileLock(os.path.join(self.dir, LOCK_NAME)).__enter__()
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            self._lock.__exit__(*exc)
            self._lock = None

    def raw(self):
        try:
            with open(self.path, 'rb') as f:
                return f.read()
        except IOError as e:
            if e.errno == errno.ENOENT:
                return b''
            raise

    def lines(self):
        """The raw lines (bytes, without newline); a torn last line raises TornLineError."""
        data = self.raw()
        if data and not data.endswith(b'\n'):
            raise TornLineError(
                '%s ends with an incomplete line (%d bytes after the last newline: a write was cut, for example by a '
                'full disk): nothing more is written to it until the line is moved aside by the explicit, recorded step '
                'vmforensics.memdump.memdump_verify with repair_torn_line: true (playbook verify: -e repair_torn_line=true)'
                % (self.path, len(data) - data.rfind(b'\n') - 1))
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

    def head(self, label):
        return head_of(label, self.lines())

    def append(self, event):
        """Adds seq, prev, signer and signature to event, appends its line (fsync) and returns it.

        A write that does not complete (a full disk, an I/O error) is undone (the file is cut back to
        its previous length) and raises, so the log never keeps half a line it made itself."""
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
        self._write_line(line)
        self.appended.append(event)
        return event

    def _write_line(self, line):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    n = os.write(fd, view)
                    if n <= 0:  # pragma: no cover - os.write raises rather than return 0 on a regular file
                        raise OSError(errno.EIO, 'write returned %d' % n)
                    view = view[n:]
                os.fsync(fd)
            except OSError as e:
                try:
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                    undone = 'the partial line was removed, the log is as before'
                except OSError as e2:
                    undone = ('removing the partial line failed too (%s): the next run reports a torn last line; '
                              'repair it with memdump_verify repair_torn_line: true' % e2)
                raise CustodyError('writing a custody event to %s failed: %s; %s. Free space or fix the file system, '
                                   'then re-run' % (self.path, e, undone))
        finally:
            os.close(fd)

    def repair_torn_line(self, event_of):
        """Moves a torn last line aside to ``custody.jsonl.torn-<time>`` and appends the event
        ``event_of(info)`` recording it. Returns the event, or None when the log is not torn."""
        data = self.raw()
        if not data or data.endswith(b'\n'):
            return None
        cut = data.rfind(b'\n') + 1
        torn = data[cut:]
        name = '%s.torn-%s' % (LOG_NAME, utc_now().replace(':', ''))
        atomic_write(os.path.join(self.dir, name), torn, 0o400)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, cut)
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.append(event_of({'torn_file': name, 'torn_bytes': len(torn), 'torn_sha256': sha256_hex(torn),
                                     'torn_at_byte': cut}))

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
    return {
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


def acquired_event(label, host, vm, dump_id, record, ctx):
    event = base_event('acquired', label, host, vm, dump_id, record, ctx)
    # method_requested and method_reason: what was asked (auto) and why the service took the method it did;
    # pause_source and libvirt_downtime_sec: where paused_sec comes from, and libvirt's own (shorter) figure.
    for key in ('started_at', 'finished_at', 'duration_sec', 'dump_path', 'created_at', 'method_requested', 'method_reason',
                'pause_source', 'libvirt_downtime_sec'):
        event[key] = record.get(key)
    context = dict((k, record[k]) for k in CONTEXT_FIELDS if record.get(k) is not None)
    if context:
        event['context'] = context
    return event


def event_like(kind, earlier, ctx, **fields):
    """An event of one dump carrying the dump's fields of an earlier event (``verified``, ``deleting``)."""
    record = {'host': earlier.get('service_host'), 'vm_uuid': earlier.get('vm_uuid'), 'method': earlier.get('method'),
              'format': earlier.get('format'), 'size_bytes': earlier.get('size_bytes'), 'sha256': earlier.get('sha256'),
              'paused_sec': earlier.get('paused_sec')}
    event = base_event(kind, earlier.get('label'), earlier.get('host'), earlier.get('vm'), earlier.get('dump_id'),
                       record, ctx)
    event.update(fields)
    return event


def by_dump(events):
    """dump id -> {event type: last event of that type}."""
    out = {}
    for e in events:
        if isinstance(e, dict) and e.get('dump_id'):
            out.setdefault(e['dump_id'], {})[e.get('event')] = e
    return out


def pending_deletion(kinds):
    """Whether a dump's last deletion intent has no outcome yet (a run stopped between the two)."""
    deleting = kinds.get('deleting')
    if deleting is None:
        return False
    outcomes = [kinds[k]['seq'] for k in ('deleted_from_host', 'delete_failed') if k in kinds]
    return not outcomes or max(outcomes) < deleting['seq']


MANIFEST_ENTRY_FIELDS = ('label', 'host', 'service_host', 'vm', 'vm_uuid', 'dump_id', 'method', 'method_requested', 'method_reason',
                         'format', 'size_bytes', 'sha256', 'started_at', 'finished_at', 'duration_sec', 'paused_sec', 'dump_path')


def manifest_of(events):
    """The manifest (a dict) generated from the events: one entry per dump, in the order of its ``acquired`` event."""
    entries = []
    index = {}
    created_at = updated_at = None
    version = None
    label = None
    for e in events:
        kind, dump_id = e.get('event'), e.get('dump_id')
        if kind in ('reverified', 'repaired') or dump_id is None:
            continue
        label = label or e.get('label')
        version = version or e.get('collection_version')
        created_at = created_at or e.get('time')
        updated_at = e.get('time')
        if kind == 'acquired' and dump_id not in index:
            entry = dict((k, e.get(k)) for k in MANIFEST_ENTRY_FIELDS)
            entry.update({'collected': False, 'evidence_file': None, 'derived_file': None, 'derived_sha256': None,
                          'deleted_from_host': False, 'deletion': None,
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
        elif kind == 'derived':
            entry['derived_file'] = e.get('evidence_file')
            entry['derived_sha256'] = e.get('sha256')
        elif kind == 'deleting':
            entry['deletion'] = 'pending'
        elif kind == 'delete_failed':
            entry['deletion'] = 'failed'
        elif kind == 'deleted_from_host':
            entry['deletion'] = 'deleted'
            entry['deleted_from_host'] = True
            entry['dump_path'] = None
    return {'label': label, 'created_at': created_at, 'updated_at': updated_at, 'collection': 'vmforensics.memdump',
            'collection_version': version, 'hash_algorithm': 'sha256', 'custody_log': LOG_NAME, 'entries': entries}


def manifest_bytes(events):
    return (json.dumps(manifest_of(events), indent=2, sort_keys=False, ensure_ascii=False) + '\n').encode('utf-8')
