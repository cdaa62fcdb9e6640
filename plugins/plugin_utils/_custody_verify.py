# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Verification of an incident's evidence: the log's lines and chain, the signatures, the images, the
files on disk, the manifest, and the chain heads that witnesses saw.

For internal collection use only: this is not a public API and may change without notice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_log import (
    EVENT_TYPES, GENESIS, LOCK_NAME, LOG_NAME, MANIFEST_NAME, by_dump, canonical, manifest_bytes, payload_of,
    pending_deletion, sha256_file, sha256_hex)
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_sign import Verifier


class Report(object):
    """What one verification checked and found."""

    def __init__(self):
        self.problems = []
        self.warnings = []
        self.lines = []
        self.events = []
        self.unsigned = []
        self.signers = set()
        self.signatures_checked = 0
        self.signatures_unchecked = 0
        self.images = []
        self.witnesses = []
        self.pending_deletions = []
        self.torn = False

    @property
    def ok(self):
        return not self.problems

    @property
    def head(self):
        return sha256_hex(self.lines[-1]) if self.lines else None

    def as_result(self):
        return {'events': len(self.lines), 'head': self.head, 'head_seq': len(self.lines) - 1 if self.lines else None,
                'images': self.images, 'unsigned': self.unsigned, 'signers': sorted(self.signers),
                'problems': self.problems, 'pending_deletions': self.pending_deletions,
                'checked': {'chain_events': len(self.lines), 'signatures_verified': self.signatures_checked,
                            'signatures_not_checked': self.signatures_unchecked,
                            'signers': sorted(self.signers),
                            'images_rehashed': sum(1 for i in self.images if i.get('rehashed')),
                            'witnesses': self.witnesses}}


def read_lines(path, report):
    """The log's lines; a torn last line is a problem (and is not a line)."""
    with open(path, 'rb') as f:
        data = f.read()
    if data and not data.endswith(b'\n'):
        report.torn = True
        report.problems.append('custody.jsonl ends with an incomplete line (%d bytes after the last newline): a write '
                               'was cut, or the file was edited; if a full disk or a crash cut it, move it aside with '
                               'repair_torn_line: true (recorded as a "repaired" event)'
                               % (len(data) - data.rfind(b'\n') - 1))
        data = data[:data.rfind(b'\n') + 1]
    return data.split(b'\n')[:-1] if data else []


def check_chain(report, allowed_signers, allow_unsigned, skip_signatures):
    """Lines, seq, prev, event types and signatures."""
    prev = GENESIS
    workdir = tempfile.mkdtemp(prefix='memdump-verify-')
    verifier = Verifier(allowed_signers, workdir) if allowed_signers else None
    try:
        for index, line in enumerate(report.lines):
            where = 'event at line %d' % (index + 1)
            try:
                event = json.loads(line.decode('utf-8'))
                if not isinstance(event, dict):
                    raise ValueError('not an object')
            except ValueError:
                report.problems.append('%s is not a JSON event: the log was edited' % where)
                prev = sha256_hex(line)
                continue
            where = 'event at line %d (seq %s, %s, dump %s)' % (
                index + 1, event.get('seq'), event.get('event'), event.get('dump_id'))
            if canonical(event) != line:
                report.problems.append('%s is not in canonical form: the line was edited' % where)
            if event.get('seq') != index:
                report.problems.append('%s has seq %s at position %d: an event was removed, inserted or reordered'
                                       % (where, event.get('seq'), index))
            if event.get('prev') != prev:
                report.problems.append('%s does not chain to the line before it (prev %s, expected %s): an event '
                                       'before it was removed, reordered or edited' % (where, event.get('prev'), prev))
            if event.get('event') not in EVENT_TYPES:
                report.problems.append('%s has an unknown event type' % where)
            sig = event.get('signature')
            if not sig:
                report.unsigned.append(index)
                if not allow_unsigned:
                    report.problems.append('%s is not signed (allow_unsigned: true accepts unsigned events)' % where)
            elif verifier is not None:
                ok, who = verifier.verify(payload_of(event), sig)
                if ok:
                    report.signers.add(who)
                    report.signatures_checked += 1
                else:
                    report.problems.append('%s: %s: the event was edited or forged' % (where, who))
            else:
                report.signatures_unchecked += 1
            prev = sha256_hex(line)
            report.events.append(event)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if report.signatures_unchecked:
        text = ('%d signed events were NOT checked: no allowed_signers file was given'
                % report.signatures_unchecked)
        if skip_signatures:
            report.warnings.append(text + ' (skip_signatures: true)')
        else:
            report.problems.append(text + '; give allowed_signers, or skip_signatures: true to accept the log '
                                   'without checking them (the result then says so)')
    if report.unsigned and allow_unsigned:
        report.warnings.append('%d of %d events are not signed (seq %s)' % (
            len(report.unsigned), len(report.lines), ', '.join(str(s) for s in report.unsigned)))


def check_images(report, incident, only_dump=None):
    """Re-hashes the images the log lists (of one dump with only_dump)."""
    listed = {}
    for dump_id, kinds in by_dump(report.events).items():
        ver = kinds.get('verified')
        if ver is None or (only_dump and dump_id != only_dump):
            continue
        rel = ver.get('evidence_file') or ''
        if not rel or rel.startswith('/') or '..' in rel.split('/'):
            report.problems.append('dump %s: evidence_file %r climbs out of the incident directory' % (dump_id, rel))
            continue
        listed[rel] = ver
    for rel, ver in sorted(listed.items()):
        full = os.path.join(incident, rel)
        info = {'file': rel, 'vm': ver.get('vm'), 'dump_id': ver.get('dump_id'), 'sha256': ver.get('sha256'),
                'size_bytes': ver.get('size_bytes'), 'ok': False, 'rehashed': False}
        report.images.append(info)
        if not os.path.isfile(full):
            report.problems.append('image %s (VM %s, dump %s) is missing' % (rel, ver.get('vm'), ver.get('dump_id')))
            continue
        size, sha = sha256_file(full)
        info['rehashed'] = True
        if size != ver.get('size_bytes') or sha != ver.get('sha256'):
            report.problems.append('image %s (VM %s, dump %s) changed: %d bytes SHA-256 %s, the custody log says %s '
                                   'bytes SHA-256 %s' % (rel, ver.get('vm'), ver.get('dump_id'), size, sha,
                                                         ver.get('size_bytes'), ver.get('sha256')))
            continue
        info['ok'] = True
    return listed


def check_files(report, incident, listed):
    """Files the log does not list; the manifest against the one the log generates."""
    known = set([LOG_NAME, MANIFEST_NAME, LOCK_NAME])
    known.update(e.get('torn_file') for e in report.events if e.get('event') == 'repaired' and e.get('torn_file'))
    for root, dirs, files in os.walk(incident):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), incident)
            if rel in known or rel in listed:
                continue
            if name.endswith('.part'):
                report.warnings.append('%s is an unfinished download (a run was interrupted; the next run resumes it); '
                                       'it is not evidence' % rel)
            elif name.startswith('.manifest.json.'):
                continue
            elif name.startswith('.') and name.endswith('.lock') and os.path.getsize(os.path.join(root, name)) == 0:
                continue  # an empty per-image lock of memdump_collect
            else:
                report.problems.append('%s is not listed in the custody log' % rel)
    mpath = os.path.join(incident, MANIFEST_NAME)
    if os.path.exists(mpath):
        with open(mpath, 'rb') as f:
            if f.read() != manifest_bytes(report.events):
                report.problems.append('manifest.json differs from the one the custody log generates: it was edited '
                                       '(regenerate it by re-running the acquisition, or read custody.jsonl)')
    else:
        report.warnings.append('manifest.json is missing (it is generated from custody.jsonl)')


def check_witnesses(report, label, heads):
    """Compares the log with the chain heads witnesses saw: ``heads`` is a list of
    ``{source, label, seq, hash[, at]}``. A head beyond the log's end means its tail was cut; a head
    whose hash differs means the log was rewritten."""
    for head in heads:
        if head.get('label') != label:
            continue
        seq, want = head.get('seq'), head.get('hash')
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(want, str):
            report.warnings.append('%s keeps a malformed custody head %r: ignored' % (head.get('source'), head))
            continue
        seen = ' (at %s)' % head['at'] if head.get('at') else ''
        if seq >= len(report.lines):
            report.problems.append('%s saw the custody log at event seq %d%s, but the log has only %d events: its tail '
                                   'was cut (events removed from the end)'
                                   % (head.get('source'), seq, seen, len(report.lines)))
        elif sha256_hex(report.lines[seq]) != want:
            report.problems.append('%s saw event seq %d with chain hash %s%s, the log has %s there: the log was '
                                   'rewritten' % (head.get('source'), seq, want, seen,
                                                  sha256_hex(report.lines[seq])))


def verify_incident(incident, allowed_signers=None, allow_unsigned=False, skip_signatures=False, witness_heads=(),
                    only_dump=None, label=None):
    """Checks one incident directory and returns a :class:`Report`.

    With ``only_dump`` (the gate before a deletion) the chain and the signatures of the whole log are
    checked, but only that dump's image is re-hashed, and files and manifest are not looked at."""
    report = Report()
    path = os.path.join(incident, LOG_NAME)
    if not os.path.isfile(path):
        report.problems.append('%s does not exist' % path)
        return report
    report.lines = read_lines(path, report)
    if not report.lines:
        report.problems.append('%s holds no event: there is nothing to verify' % path)
        return report
    check_chain(report, allowed_signers, allow_unsigned, skip_signatures)
    listed = check_images(report, incident, only_dump)
    if only_dump is None:
        check_files(report, incident, listed)
        for dump_id, kinds in sorted(by_dump(report.events).items()):
            if pending_deletion(kinds):
                d = kinds['deleting']
                report.pending_deletions.append({'dump_id': dump_id, 'vm': d.get('vm'), 'host': d.get('host'),
                                                 'intent_seq': d.get('seq'), 'time': d.get('time')})
                report.warnings.append('the deletion of dump %s (VM %s) from host %s was started at %s and has no '
                                       'recorded outcome: re-run memdump_delete (delete_after_collect) to complete it'
                                       % (dump_id, d.get('vm'), d.get('host'), d.get('time')))
    check_witnesses(report, label or os.path.basename(os.path.normpath(incident)), witness_heads)
    return report
