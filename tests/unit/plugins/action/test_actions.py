# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The action plugins' run(): argument validation and path expansion, check mode, and every error path
becoming a clear failed result (never an exception out of run())."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from ansible_collections.vmforensics.memdump.plugins.action import memdump_collect, memdump_delete, memdump_verify
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as custody

DUMP_ID = 'a' * 32
DATA = b'TestGuestMagic\0'
SHA = hashlib.sha256(DATA).hexdigest()
RECORD = {'dump_id': DUMP_ID, 'vm': 'Web Server #2', 'state': 'completed', 'sha256': SHA, 'size_bytes': len(DATA),
          'format': 'elf', 'host': 'kvm01'}


def collect_args(evidence, **extra):
    args = {'evidence_dir': evidence, 'label': 'IR-1', 'vm': 'Web Server #2', 'dump_id': DUMP_ID, 'record': RECORD,
            'download': False}
    args.update(extra)
    return args


def test_collect_expands_paths_and_keeps_the_true_vm_name(run_action, signing, monkeypatch):
    monkeypatch.setenv('HOME', signing['home'])
    res = run_action(memdump_collect.ActionModule, collect_args('~/evidence', signing_key='~/.ssh/custody'))
    assert not res.get('failed'), res
    incident = os.path.join(signing['home'], 'evidence', 'IR-1')
    assert res['custody_log'] == os.path.join(incident, 'custody.jsonl') and res['signed']
    event = json.loads(open(res['custody_log']).read())
    assert event['vm'] == 'Web Server #2' and event['signature'].startswith('-----BEGIN SSH SIGNATURE-----')
    assert res['custody_head'] == {'label': 'IR-1', 'seq': 0, 'hash': hashlib.sha256(
        open(res['custody_log'], 'rb').read().rstrip(b'\n')).hexdigest()}


def test_collect_validates_its_arguments(run_action, tmp_path):
    res = run_action(memdump_collect.ActionModule, collect_args(str(tmp_path), retries='many'))
    assert res['failed'] and "retries" in res['msg'] and 'int' in res['msg']
    res = run_action(memdump_collect.ActionModule, collect_args(str(tmp_path), colect_url='http://x'))
    assert res['failed'] and 'colect_url' in res['msg']
    assert not os.listdir(str(tmp_path))


def test_collect_check_mode_writes_nothing(run_action, tmp_path):
    res = run_action(memdump_collect.ActionModule, collect_args(str(tmp_path / 'ev')), check_mode=True)
    assert res['changed'] and not res.get('failed') and not (tmp_path / 'ev').exists()


def test_collect_needs_collect_url_for_a_remote_host(run_action, tmp_path):
    res = run_action(memdump_collect.ActionModule, collect_args(str(tmp_path), download=True), connection='ssh')
    assert res['failed']
    assert 'set collect_url / memdump_acquire_collect_url (or MEMDUMP_COLLECT_URL) to the service\'s address as the ' \
           'controller reaches it' in res['msg']
    assert 'http://127.0.0.1:5001' in res['msg'] and not os.listdir(str(tmp_path))


def test_collect_unreachable_service_is_a_clear_failure(run_action, tmp_path, closed_url):
    res = run_action(memdump_collect.ActionModule, collect_args(str(tmp_path), download=True, collect_url=closed_url))
    assert res['failed'] and 'cannot reach the memdump service at %s' % closed_url in res['msg']
    assert 'check collect_url (or MEMDUMP_COLLECT_URL)' in res['msg'] and 'vm Web Server #2' in res['msg']


def test_collect_file_system_errors_name_the_file(run_action, tmp_path):
    blocker = tmp_path / 'ev'
    blocker.write_text('a file where the evidence directory should be')
    res = run_action(memdump_collect.ActionModule, collect_args(str(blocker)))
    assert res['failed'] and ('FileExistsError' in res['msg'] or 'NotADirectoryError' in res['msg']), res
    assert str(blocker) in res['msg'] and 're-run' in res['msg']
    assert 'Traceback' not in json.dumps(res) and 'exception' not in res


def test_collect_refuses_a_torn_log_and_names_the_repair(run_action, tmp_path):
    res = run_action(memdump_collect.ActionModule, collect_args(str(tmp_path)))
    with open(res['custody_log'], 'ab') as f:
        f.write(b'{"cut')
    res = run_action(memdump_collect.ActionModule, collect_args(str(tmp_path), vm='db01', dump_id='b' * 32,
                                                                record=dict(RECORD, vm='db01', dump_id='b' * 32)))
    assert res['failed'] and 'ends with an incomplete line' in res['msg'] and 'repair_torn_line: true' in res['msg']


# -- memdump_delete -------------------------------------------------------------------------------

class Host(object):
    """Stands in for the module run on the hypervisor: records what the plugin asks of it, answers as
    the module does (scripted per test)."""

    def __init__(self, answer=None):
        self.calls = []
        self.answer = answer or {'changed': True, 'deleted': True, 'dump': dict(RECORD, file_deleted=True)}

    def install(self, action):
        def execute(module_name, module_args, task_vars):
            self.calls.append((module_name, module_args, action._task.check_mode))
            return dict(self.answer)
        action._execute_module = execute


def collected(run_action, evidence, key=None):
    """A real collection record (acquired, collected by hand, verified) with the image on disk."""
    res = run_action(memdump_collect.ActionModule, collect_args(evidence, signing_key=key))
    incident = os.path.dirname(res['custody_log'])
    rel = 'hv01/Web%20Server%20%232_' + DUMP_ID + '.elf'
    os.makedirs(os.path.join(incident, 'hv01'), exist_ok=True)
    with open(os.path.join(incident, rel), 'wb') as f:
        f.write(DATA)
    ctx = {'operator': 'alice'}
    with custody.CustodyLog(incident, key) as log:
        log.append(dict(custody.base_event('verified', 'IR-1', 'hv01', 'Web Server #2', DUMP_ID, RECORD, ctx),
                        evidence_file=rel))
        log.write_manifest()
    return incident, rel


def delete_args(evidence, **extra):
    args = {'dump_id': DUMP_ID, 'vm': 'Web Server #2', 'evidence_dir': evidence, 'label': 'IR-1'}
    args.update(extra)
    return args


def kinds_of(incident):
    return [e['event'] for e in custody.CustodyLog(incident).events()]


def test_delete_records_intent_before_and_outcome_after(run_action, tmp_path, signing, monkeypatch):
    monkeypatch.setenv('HOME', signing['home'])
    incident, rel = collected(run_action, str(tmp_path / 'ev'), signing['key'])
    host = Host()
    seen = []

    def prepare(action):
        host.install(action)
        real = action._execute_module

        def execute(**kw):
            seen.append(kinds_of(incident))  # the log as the host deletes
            return real(**kw)
        action._execute_module = execute
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path / 'ev'), signing_key='~/.ssh/custody',
                                                              allowed_signers=signing['allowed']), prepare=prepare)
    assert not res.get('failed'), res
    assert seen == [['acquired', 'verified', 'deleting']]
    assert kinds_of(incident) == ['acquired', 'verified', 'deleting', 'deleted_from_host']
    events = custody.CustodyLog(incident).events()
    assert events[2]['signatures_checked'] is True and events[2]['signers'] == ['custody@test']
    assert events[3]['intent_seq'] == 2 and events[3]['signature'] and res['event'] == 3 and res['intent'] == 2
    assert res['checked']['images_rehashed'] == 1 and res['checked']['signatures_verified'] == 2
    # The module got the host-side options as the task gave them and the verified hash.
    assert host.calls[0][1] == {'dump_id': DUMP_ID, 'vm': 'Web Server #2', 'sha256': SHA}
    # Done is done: a re-run neither asks the host nor appends.
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path / 'ev')), prepare=host.install)
    assert not res['changed'] and len(host.calls) == 1 and 'already deleted' in res['msg']


def test_delete_completes_an_intent_a_crash_left(run_action, tmp_path):
    incident, rel = collected(run_action, str(tmp_path / 'ev'))
    with custody.CustodyLog(incident) as log:
        ver = custody.by_dump(log.events())[DUMP_ID]['verified']
        log.append(custody.event_like('deleting', ver, {'operator': 'alice'}))  # then the controller died
    host = Host({'changed': False, 'deleted': False, 'dump': dict(RECORD, file_deleted=True)})  # the host had deleted
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path / 'ev'), allow_unsigned=True),
                     prepare=host.install)
    assert not res.get('failed'), res
    events = custody.CustodyLog(incident).events()
    assert [e['event'] for e in events] == ['acquired', 'verified', 'deleting', 'deleted_from_host']
    assert events[3]['intent_seq'] == 2 and events[3]['deleted_by_this_run'] is False


def test_delete_failure_on_the_host_is_recorded(run_action, tmp_path):
    incident, rel = collected(run_action, str(tmp_path / 'ev'))
    host = Host({'failed': True, 'msg': 'cannot reach the memdump service at http://127.0.0.1:1'})
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path / 'ev'), allow_unsigned=True),
                     prepare=host.install)
    assert res['failed'] and 'recorded as custody event seq 3 (delete_failed)' in res['msg']
    assert kinds_of(incident) == ['acquired', 'verified', 'deleting', 'delete_failed']


@pytest.mark.parametrize('spoil, expect', [
    (lambda inc, rel: open(os.path.join(inc, rel), 'ab').write(b'x'), r'does not verify.*changed'),
    (lambda inc, rel: os.unlink(os.path.join(inc, rel)), r'does not verify.*is missing'),
    (lambda inc, rel: open(os.path.join(inc, 'custody.jsonl'), 'ab').write(b'{"torn'), r'incomplete line'),
])
def test_delete_never_asks_the_host_without_a_verified_copy(run_action, tmp_path, spoil, expect):
    incident, rel = collected(run_action, str(tmp_path / 'ev'))
    spoil(incident, rel)
    host = Host()
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path / 'ev'), allow_unsigned=True),
                     prepare=host.install)
    assert res['failed'] and not host.calls, res
    assert re.search(expect, res['msg']), res['msg']


def test_delete_gates(run_action, tmp_path):
    host = Host()
    res = run_action(memdump_delete.ActionModule, {'dump_id': DUMP_ID}, prepare=host.install)
    assert res['failed'] and 'without evidence_dir' in res['msg'] and 'needs sha256' in res['msg']
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path)), prepare=host.install)
    assert res['failed'] and 'no custody log' in res['msg']
    res = run_action(memdump_delete.ActionModule, {'dump_id': DUMP_ID, 'evidence_dir': str(tmp_path)},
                     prepare=host.install)
    assert res['failed'] and 'label' in res['msg']
    run_action(memdump_collect.ActionModule, collect_args(str(tmp_path)))
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path), allow_unsigned=True), prepare=host.install)
    assert res['failed'] and 'has no verified collection' in res['msg']
    assert not host.calls
    # The bare module with a hash: the host is asked, nothing is recorded, and it says so.
    res = run_action(memdump_delete.ActionModule, {'dump_id': DUMP_ID, 'sha256': SHA}, prepare=host.install)
    assert not res.get('failed') and host.calls[-1][1] == {'dump_id': DUMP_ID, 'sha256': SHA}
    assert any('nothing records this deletion' in w for w in res['warnings'])


def test_delete_check_mode_records_nothing(run_action, tmp_path):
    incident, rel = collected(run_action, str(tmp_path / 'ev'))
    before = open(os.path.join(incident, 'custody.jsonl'), 'rb').read()
    host = Host()
    res = run_action(memdump_delete.ActionModule, delete_args(str(tmp_path / 'ev'), allow_unsigned=True),
                     check_mode=True, prepare=host.install)
    assert not res.get('failed') and host.calls[0][2] is True
    assert open(os.path.join(incident, 'custody.jsonl'), 'rb').read() == before


# -- memdump_verify -------------------------------------------------------------------------------

def test_verify_says_what_it_checked_and_fails_on_unchecked_signatures(run_action, tmp_path, signing, monkeypatch):
    monkeypatch.setenv('HOME', signing['home'])
    incident, rel = collected(run_action, str(tmp_path / 'ev'), signing['key'])
    args = {'evidence_dir': str(tmp_path / 'ev'), 'label': 'IR-1'}
    res = run_action(memdump_verify.ActionModule, args)
    assert res['failed'] and '2 signed events were NOT checked' in res['msg']
    res = run_action(memdump_verify.ActionModule, dict(args, skip_signatures=True, signing_key='~/.ssh/custody'))
    assert not res.get('failed'), res
    assert 'signatures NOT checked (2 signed events, skip_signatures)' in res['msg'] and not res['signatures_checked']
    assert 'witnesses: none' in res['msg'] and any('no witness was asked' in w for w in res['warnings'])
    reverified = custody.CustodyLog(incident).events()[-1]
    assert reverified['event'] == 'reverified' and reverified['signatures_checked'] is False
    res = run_action(memdump_verify.ActionModule, dict(args, allowed_signers='~/../allowed_signers'))
    assert not res.get('failed'), res
    assert res['checked']['signatures_verified'] == 3 and res['checked']['images_rehashed'] == 1
    assert res['custody_head']['seq'] == 2 and res['custody_head']['label'] == 'IR-1'


def test_verify_repairs_a_torn_line_only_when_asked(run_action, tmp_path):
    incident, rel = collected(run_action, str(tmp_path / 'ev'))
    with open(os.path.join(incident, 'custody.jsonl'), 'ab') as f:
        f.write(b'{"torn')
    args = {'evidence_dir': str(tmp_path / 'ev'), 'label': 'IR-1', 'allow_unsigned': True}
    res = run_action(memdump_verify.ActionModule, args)
    assert res['failed'] and 'incomplete line' in res['msg'] and 'repair_torn_line: true' in res['msg']
    res = run_action(memdump_verify.ActionModule, dict(args, repair_torn_line=True), check_mode=True)
    assert res['failed']  # check mode repairs nothing
    res = run_action(memdump_verify.ActionModule, dict(args, repair_torn_line=True))
    assert not res.get('failed') and res['changed'] and res['repaired'] == 2, res
    event = custody.CustodyLog(incident).events()[2]
    assert event['event'] == 'repaired' and event['torn_bytes'] == 6
    assert open(os.path.join(incident, event['torn_file']), 'rb').read() == b'{"torn'


def test_verify_reports_an_unreachable_witness(run_action, tmp_path, closed_url):
    collected(run_action, str(tmp_path / 'ev'))
    res = run_action(memdump_verify.ActionModule, {'evidence_dir': str(tmp_path / 'ev'), 'label': 'IR-1',
                                                   'allow_unsigned': True, 'collect_url': closed_url,
                                                   'influxdb': {'url': closed_url}})
    assert not res.get('failed'), res
    reached = dict((w['witness'], w['reached']) for w in res['checked']['witnesses'])
    assert reached == {'service': False, 'influxdb': False}
    assert len([w for w in res['warnings'] if 'was not reached' in w]) == 2


def test_verify_of_a_missing_incident_is_a_clear_failure(run_action, tmp_path):
    res = run_action(memdump_verify.ActionModule, {'evidence_dir': str(tmp_path), 'label': 'IR-9'})
    assert res['failed'] and 'no evidence of IR-9' in res['msg']
    res = run_action(memdump_verify.ActionModule, {'evidence_dir': str(tmp_path), 'label': '../x'})
    assert res['failed'] and "label '../x' is refused" in res['msg']
