# -*- coding: utf-8 -*-
# Copyright (c) vmforensics maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""memdump_convert's run(): a collected live stream becomes a derived ELF recorded as a ``derived`` event,
which verify re-hashes; nothing is derived from a stream that is not the verified one."""

from __future__ import annotations

import hashlib
import json
import os

from ansible_collections.vmforensics.memdump.plugins.action import memdump_convert, memdump_verify
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_log as custody
from ansible_collections.vmforensics.memdump.tests.unit.plugins.plugin_utils.qevm_samples import StreamWriter, page_of

DUMP_ID = 'c' * 32
LABEL = 'IR-7'


def collected_stream(tmp_path, fmt='qemu-migration', content=None):
    """An incident whose custody log holds a verified live stream (written as QEMU writes one)."""
    data = content if content is not None else StreamWriter().page('pc.ram', 0x10000, page_of('low')).build()
    record = {'dump_id': DUMP_ID, 'vm': 'web01', 'state': 'completed', 'sha256': hashlib.sha256(data).hexdigest(),
              'size_bytes': len(data), 'format': fmt, 'method': 'live' if fmt == 'qemu-migration' else 'memory-only'}
    incident = tmp_path / 'ev' / LABEL
    (incident / 'hv01').mkdir(parents=True)
    rel = 'hv01/web01_%s.%s' % (DUMP_ID, 'qevm' if fmt == 'qemu-migration' else 'elf')
    (incident / rel).write_bytes(data)
    ctx = {'operator': 'alice'}
    with custody.CustodyLog(str(incident)) as log:
        log.append(custody.acquired_event(LABEL, 'hv01', 'web01', DUMP_ID, record, ctx))
        log.append(dict(custody.base_event('verified', LABEL, 'hv01', 'web01', DUMP_ID, record, ctx), evidence_file=rel))
        log.write_manifest()
    return incident, rel


def args(tmp_path):
    return {'evidence_dir': str(tmp_path / 'ev'), 'label': LABEL, 'dump_id': DUMP_ID}


def verify(run_action, tmp_path):
    return run_action(memdump_verify.ActionModule, {'evidence_dir': str(tmp_path / 'ev'), 'label': LABEL,
                                                    'allow_unsigned': True})


def test_a_live_stream_is_derived_recorded_and_verified(run_action, tmp_path):
    incident, rel = collected_stream(tmp_path)
    res = run_action(memdump_convert.ActionModule, args(tmp_path))
    assert not res.get('failed'), res
    assert res['changed'] and res['converted'] and res['derived_file'] == rel + '.elf'
    elf = incident / res['derived_file']
    assert oct(os.stat(str(elf)).st_mode & 0o777) == '0o400'
    events = custody.CustodyLog(str(incident)).events()
    derived = events[-1]
    assert derived['event'] == 'derived' and derived['source_file'] == rel
    assert derived['sha256'] == hashlib.sha256(elf.read_bytes()).hexdigest()
    assert derived['source_sha256'] == events[1]['sha256'] and derived['check']['ok'] is True
    assert derived['converter_version'] == res['report']['converter_version']
    manifest = json.loads((incident / 'manifest.json').read_text())
    assert manifest['entries'][0]['derived_file'] == rel + '.elf'
    assert not [n for n in os.listdir(str(incident / 'hv01')) if n.endswith('.part')]

    ver = verify(run_action, tmp_path)
    assert not ver.get('failed'), ver
    assert sorted(i['file'] for i in ver['images']) == [rel, rel + '.elf'] and ver['checked']['images_rehashed'] == 2

    again = run_action(memdump_convert.ActionModule, args(tmp_path))
    assert not again.get('failed') and not again['changed'] and not again['converted']


def test_verify_fails_on_a_changed_derived_file(run_action, tmp_path):
    incident, rel = collected_stream(tmp_path)
    run_action(memdump_convert.ActionModule, args(tmp_path))
    elf = str(incident / (rel + '.elf'))
    os.chmod(elf, 0o600)
    with open(elf, 'r+b') as f:
        f.seek(0x10000 + 4096 * 2)
        f.write(b'edited')
    ver = verify(run_action, tmp_path)
    assert ver['failed'] and '%s.elf (VM web01, dump %s) changed' % (rel, DUMP_ID) in ver['msg']
    again = run_action(memdump_convert.ActionModule, args(tmp_path))
    assert again['failed'] and 'is now different' in again['msg']


def test_nothing_is_derived_from_a_stream_that_is_not_the_verified_one(run_action, tmp_path):
    incident, rel = collected_stream(tmp_path)
    os.chmod(str(incident / rel), 0o600)
    (incident / rel).write_bytes(StreamWriter().page('pc.ram', 0x10000, page_of('swapped')).build())
    res = run_action(memdump_convert.ActionModule, args(tmp_path))
    assert res['failed'] and 'the custody log verified' in res['msg'] and 'nothing was derived' in res['msg']
    assert [e['event'] for e in custody.CustodyLog(str(incident)).events()] == ['acquired', 'verified']
    assert sorted(os.listdir(str(incident / 'hv01'))) == [os.path.basename(rel)]


def test_a_garbage_stream_is_a_clear_failure_and_leaves_nothing(run_action, tmp_path):
    incident, rel = collected_stream(tmp_path, content=b'QEVM\x00\x00\x00\x03' + b'\xff' * 64)
    res = run_action(memdump_convert.ActionModule, args(tmp_path))
    assert res['failed'] and 'converting %s failed' % rel in res['msg'] and 'Traceback' not in res['msg']
    assert sorted(os.listdir(str(incident / 'hv01'))) == [os.path.basename(rel)]


def test_an_elf_dump_needs_no_conversion_and_check_mode_writes_nothing(run_action, tmp_path):
    incident, dummy = collected_stream(tmp_path, fmt='elf', content=b'\x7fELF not really')
    res = run_action(memdump_convert.ActionModule, args(tmp_path))
    assert not res.get('failed') and not res['changed'] and res['derived_file'] is None
    assert 'not a live stream' in res['msg']
    tmp2 = tmp_path / 'second'
    tmp2.mkdir()
    incident, dummy = collected_stream(tmp2)
    res = run_action(memdump_convert.ActionModule, args(tmp2), check_mode=True)
    assert res['changed'] and not res['converted']
    assert [e['event'] for e in custody.CustodyLog(str(incident)).events()] == ['acquired', 'verified']


def test_convert_needs_a_verified_collection(run_action, tmp_path):
    res = run_action(memdump_convert.ActionModule, args(tmp_path))
    assert res['failed'] and 'no custody log' in res['msg']
