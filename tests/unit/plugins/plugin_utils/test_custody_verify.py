# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""verify_incident: what it checks, what it reports as checked, and witnesses."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as custody
from ansible_collections.vmforensics.memdump.plugins.plugin_utils._custody_verify import verify_incident

CTX = {'operator': 'alice', 'awx_job_id': None, 'controller': 'ctl', 'collection_version': '0.1.0'}


@pytest.fixture
def keys(tmp_path):
    key = str(tmp_path / 'k')
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'c@t', '-f', key], check=True)
    allowed = tmp_path / 'allowed'
    allowed.write_text('c@t namespaces="memdump-custody" ' + open(key + '.pub').read())
    return key, str(allowed)


def incident_with_image(tmp_path, key=None, vms=('web01',)):
    inc = str(tmp_path / 'IR-1')
    os.makedirs(os.path.join(inc, 'hv01'))
    with custody.CustodyLog(inc, key) as log:
        for n, vm in enumerate(vms):
            data = ('image of %s' % vm).encode()
            rel = 'hv01/%s_%s.elf' % (vm, str(n) * 32)
            with open(os.path.join(inc, rel), 'wb') as f:
                f.write(data)
            rec = {'sha256': custody.sha256_hex(data), 'size_bytes': len(data)}
            log.append(custody.acquired_event('IR-1', 'hv01', vm, str(n) * 32, rec, CTX))
            log.append(dict(custody.base_event('verified', 'IR-1', 'hv01', vm, str(n) * 32, rec, CTX), evidence_file=rel))
        log.write_manifest()
    return inc


def lines_of(inc):
    return open(os.path.join(inc, 'custody.jsonl'), 'rb').read().split(b'\n')[:-1]


def write_lines(inc, lines):
    with open(os.path.join(inc, 'custody.jsonl'), 'wb') as f:
        f.write(b''.join(line + b'\n' for line in lines))


def test_it_says_what_it_checked(tmp_path, keys):
    inc = incident_with_image(tmp_path, keys[0], vms=('web01', 'db01'))
    report = verify_incident(inc, keys[1])
    assert report.ok, report.problems
    checked = report.as_result()['checked']
    assert checked['chain_events'] == 4 and checked['signatures_verified'] == 4 and checked['signers'] == ['c@t']
    assert checked['images_rehashed'] == 2 and checked['signatures_not_checked'] == 0


def test_an_empty_log_fails(tmp_path):
    inc = str(tmp_path / 'IR-1')
    os.makedirs(inc)
    open(os.path.join(inc, 'custody.jsonl'), 'wb').close()
    report = verify_incident(inc, allow_unsigned=True, skip_signatures=True)
    assert not report.ok and 'holds no event: there is nothing to verify' in report.problems[0]


def test_signed_events_without_allowed_signers_fail_unless_skipped_and_then_it_says_so(tmp_path, keys):
    inc = incident_with_image(tmp_path, keys[0])
    report = verify_incident(inc, None, allow_unsigned=True)
    assert not report.ok and any('2 signed events were NOT checked' in p for p in report.problems)
    report = verify_incident(inc, None, allow_unsigned=True, skip_signatures=True)
    assert report.ok and report.as_result()['checked']['signatures_not_checked'] == 2
    assert any('NOT checked' in w and 'skip_signatures' in w for w in report.warnings)


def test_an_edited_and_rechained_event_with_its_old_signature_fails(tmp_path, keys):
    inc = incident_with_image(tmp_path, keys[0])
    lines = lines_of(inc)
    event = json.loads(lines[0])
    event['operator'] = 'mallory'
    first = custody.canonical(event)
    second = json.loads(lines[1])
    second['prev'] = custody.sha256_hex(first)  # the chain re-computed; the old signatures kept
    write_lines(inc, [first, custody.canonical(second)])
    custody.atomic_write(os.path.join(inc, 'manifest.json'), custody.manifest_bytes([event, second]))
    report = verify_incident(inc, keys[1])
    assert not report.ok
    assert [p for p in report.problems if 'signature does not match the event' in p and 'line 1' in p]
    assert [p for p in report.problems if 'signature does not match the event' in p and 'line 2' in p]
    # Without allowed signers it does not pass either: the signatures could not be checked.
    assert not verify_incident(inc, None, allow_unsigned=True).ok


def test_a_cut_tail_is_found_through_a_witness(tmp_path):
    inc = incident_with_image(tmp_path, vms=('web01', 'db01'))
    lines = lines_of(inc)
    head = {'label': 'IR-1', 'seq': 3, 'hash': custody.sha256_hex(lines[3]), 'source': 'the service'}
    assert verify_incident(inc, allow_unsigned=True, witness_heads=[head]).ok
    os.chmod(os.path.join(inc, 'hv01', 'db01_%s.elf' % ('1' * 32)), 0o600)
    os.unlink(os.path.join(inc, 'hv01', 'db01_%s.elf' % ('1' * 32)))
    write_lines(inc, lines[:2])  # the last VM's events and image cut off
    events = custody.CustodyLog(inc).events()
    custody.atomic_write(os.path.join(inc, 'manifest.json'), custody.manifest_bytes(events))
    assert verify_incident(inc, allow_unsigned=True).ok  # the log alone cannot tell
    report = verify_incident(inc, allow_unsigned=True, witness_heads=[head])
    assert report.problems == ['the service saw the custody log at event seq 3, but the log has only 2 events: its tail '
                               'was cut (events removed from the end)']
    rewritten = dict(head, seq=1, hash='0' * 64)
    assert 'the log was rewritten' in verify_incident(inc, allow_unsigned=True, witness_heads=[rewritten]).problems[0]
    other = dict(head, label='IR-2')
    assert verify_incident(inc, allow_unsigned=True, witness_heads=[other]).ok  # another incident's head


def test_a_deletion_without_outcome_is_reported(tmp_path):
    inc = incident_with_image(tmp_path)
    with custody.CustodyLog(inc) as log:
        ver = custody.by_dump(log.events())['0' * 32]['verified']
        log.append(custody.event_like('deleting', ver, CTX))
        log.write_manifest()
    report = verify_incident(inc, allow_unsigned=True)
    assert report.ok and any('has no recorded outcome' in w for w in report.warnings)
    assert json.load(open(os.path.join(inc, 'manifest.json')))['entries'][0]['deletion'] == 'pending'
