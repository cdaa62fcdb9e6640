"""`ansible-playbook vmforensics.memdump.acquire` against the real service and the stack's QEMU guests.

Run twice with the same label: the second run changes nothing, dumps nothing and downloads nothing;
the custody manifest's hashes match the collected images. A VM whose dump failed is retried.
"""
import json
import os
import urllib.parse
import urllib.request

from conftest import sha256_file, stack_env

LABEL = 'IR-INTEG-ACQUIRE-1'


def acquire(run_playbook, svc, evidence, vms, label=LABEL, env=None, **extra):
    extra_vars = {'memdump_hosts': 'localhost', 'label': label, 'vms': vms, 'collect': True,
                  'evidence_dir': str(evidence), 'wait_timeout': 300}
    extra_vars.update(extra)
    # Connection from the environment, as an AWX credential injects it.
    run_env = {'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token}
    run_env.update(env or {})
    return run_playbook('vmforensics.memdump.acquire', extra_vars=extra_vars, env=run_env)


def influx_env(tmp_path, database):
    url = stack_env('MEMDUMP_TEST_INFLUXDB_URL')
    data = urllib.parse.urlencode({'q': 'CREATE DATABASE %s' % database}).encode()
    with urllib.request.urlopen(url + '/query', data=data, timeout=10):
        pass
    return {'ANSIBLE_CALLBACKS_ENABLED': 'vmforensics.memdump.influxdb', 'MEMDUMP_INFLUXDB_URL': url,
            'MEMDUMP_INFLUXDB_DATABASE': database, 'MEMDUMP_INFLUXDB_SPOOL_DIR': str(tmp_path / 'spool')}


def manifest(evidence, label=LABEL):
    with open(os.path.join(str(evidence), label, 'manifest.json')) as f:
        return json.load(f)


def test_acquire_twice_same_label_changes_and_downloads_nothing(memdump_service, run_playbook, tmp_path):
    vms = [stack_env('MEMDUMP_TEST_VM'), stack_env('MEMDUMP_TEST_VM2')]
    svc = memdump_service(token='integ-acquire-token')
    evidence = tmp_path / 'evidence'

    influx = influx_env(tmp_path, 'memdump_integ_acquire')
    first = acquire(run_playbook, svc, evidence, ','.join(vms), env=influx)
    assert first.rc == 0, first.stdout + first.stderr
    assert first.stats['localhost']['changed'] > 0

    data = manifest(evidence)
    assert data['label'] == LABEL
    assert sorted(e['vm'] for e in data['entries']) == sorted(vms)
    # The custody log carries what the analyst needs besides the image, as the service recorded it.
    with open(os.path.join(str(evidence), LABEL, 'custody.jsonl')) as f:
        acquired = [json.loads(line) for line in f if '"event":"acquired"' in line]
    assert sorted(e['vm'] for e in acquired) == sorted(vms)
    for event in acquired:
        assert event['context']['machine'].startswith('pc') and event['context']['qemu_version']
        assert '<name>%s</name>' % event['vm'] in event['context']['domain_xml']
    files = {}
    for entry in data['entries']:
        path = os.path.join(str(evidence), LABEL, entry['evidence_file'])
        assert sha256_file(path) == entry['sha256']
        assert os.path.getsize(path) == entry['size_bytes']
        assert entry['host'] == 'localhost' and entry['vm_uuid'] and entry['format'] == 'elf'
        assert entry['operator'] and entry['collection_version'] == '0.1.0'
        assert entry['started_at'] and entry['finished_at'] and entry['paused_sec'] is not None
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o400 and os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        files[path] = (st.st_ino, st.st_mtime_ns)
    # The manifest is generated from the custody log: acquired, collected, verified per dump.
    with open(os.path.join(str(evidence), LABEL, 'custody.jsonl')) as f:
        events = [json.loads(line) for line in f]
    assert sorted(e['event'] for e in events) == sorted(['acquired', 'collected', 'verified'] * 2)
    assert [e['seq'] for e in events] == list(range(6)) and events[0]['prev'] == '0' * 64
    status, listing = svc.api('GET', '/api/dumps?label=' + LABEL)
    assert status == 200 and len(listing['dumps']) == 2
    manifest_before = (evidence / LABEL / 'manifest.json').read_bytes()

    second = acquire(run_playbook, svc, evidence, ','.join(vms))
    assert second.rc == 0, second.stdout + second.stderr
    assert second.stats['localhost']['changed'] == 0, second.stdout
    assert second.stats['localhost']['failures'] == 0
    # No new dump on the service, no file downloaded again, the manifest byte for byte the same.
    status, listing = svc.api('GET', '/api/dumps?label=' + LABEL)
    assert status == 200 and len(listing['dumps']) == 2
    for path, ident in files.items():
        st = os.stat(path)
        assert (st.st_ino, st.st_mtime_ns) == ident, path
    assert (evidence / LABEL / 'manifest.json').read_bytes() == manifest_before
    assert len((evidence / LABEL / 'custody.jsonl').read_text().splitlines()) == 6

    # The status and report playbooks show this incident.
    status = run_playbook('vmforensics.memdump.status', extra_vars={'memdump_hosts': 'localhost', 'label': LABEL},
                          env={'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token})
    assert status.rc == 0, status.stdout + status.stderr
    shown = status.task_results('Show the dumps per state')['msg']
    assert sorted(shown['completed']) == sorted(vms) and shown['pending'] == [] and shown['complete'] in (True, 'True')
    report = run_playbook('vmforensics.memdump.report', extra_vars={'label': LABEL}, env=influx)
    assert report.rc == 0, report.stdout + report.stderr
    records = report.task_results('Read the records from InfluxDB')['records']
    assert sorted({r['vm'] for r in records}) == sorted(vms)


def test_failed_vm_is_retried_and_recorded_once(memdump_service, run_playbook, tmp_path):
    vm = stack_env('MEMDUMP_TEST_VM')
    svc = memdump_service(token='integ-acquire-token')
    evidence = tmp_path / 'evidence'
    label = 'IR-INTEG-ACQUIRE-RETRY'

    first = acquire(run_playbook, svc, evidence, [vm, 'memdump-no-such-vm'], label=label)
    assert first.rc != 0
    assert 'memdump-no-such-vm' in first.stdout
    # The VM that worked is shown with its evidence file, although the play fails for the other one.
    shown = first.role_task_results('Show what was acquired, per VM')['msg']
    assert shown['vms'][vm]['state'] == 'completed' and shown['vms'][vm]['dump'] == 'new'
    assert shown['vms'][vm]['evidence_file'].startswith(str(evidence / label / 'localhost' / vm))
    assert shown['custody_log'] == str(evidence / label / 'custody.jsonl')
    # A typo: the advice is to check the name against the domains the service sees, not to re-run as is.
    failure = first.role_task_results('Fail for the VMs whose dump failed')['msg']
    assert 'no such VM on this host' in failure and 'check the name' in failure and vm in failure
    assert 'to retry only' not in failure
    data = manifest(evidence, label)
    assert [e['vm'] for e in data['entries']] == [vm]

    second = acquire(run_playbook, svc, evidence, [vm, 'memdump-no-such-vm'], label=label)
    assert second.rc != 0
    status, listing = svc.api('GET', '/api/dumps?label=' + label)
    assert status == 200
    by_vm = {}
    for d in listing['dumps']:
        by_vm.setdefault(d['vm'], []).append(d)
    assert len(by_vm[vm]) == 1                      # the completed dump was reused
    assert len(by_vm['memdump-no-such-vm']) == 2    # the failed one was tried again
    assert [e['vm'] for e in manifest(evidence, label)['entries']] == [vm]


def test_force_then_delete_removes_every_collected_image_of_the_label(memdump_service, run_playbook, tmp_path):
    svc = memdump_service(libvirt_uri=stack_env('MEMDUMP_TEST_DRIVER_URI'), token='integ-acquire-token')
    evidence, label = tmp_path / 'evidence', 'IR-INTEG-FORCE-DELETE'
    first = acquire(run_playbook, svc, evidence, ['web01'], label=label)
    assert first.rc == 0, first.stdout
    second = acquire(run_playbook, svc, evidence, ['web01'], label=label, force=True, delete_after_collect=True)
    assert second.rc == 0, second.stdout
    status, listing = svc.api('GET', '/api/dumps?label=' + label)
    assert len(listing['dumps']) == 2                       # force took a second dump
    assert all(d['file_deleted'] for d in listing['dumps'])  # and both images are gone from the host
    said = second.role_task_results('Say which images were deleted from the host and which remain there')['msg']
    assert sorted(said['deleted_from_host'].split(', ')) == sorted('web01 %s' % d['dump_id'] for d in listing['dumps'])
    assert said['remain_on_host'] == 'none'


def test_delete_without_collect_fails_and_says_why(memdump_service, run_playbook, tmp_path):
    svc = memdump_service(libvirt_uri=stack_env('MEMDUMP_TEST_DRIVER_URI'), token='integ-acquire-token')
    result = acquire(run_playbook, svc, tmp_path / 'evidence', ['web01'], label='IR-INTEG-DELETE-ONLY', collect=False,
                     delete_after_collect=True)
    assert result.rc != 0
    assert 'needs collect=true' in result.stdout
    status, listing = svc.api('GET', '/api/dumps?label=IR-INTEG-DELETE-ONLY')
    assert listing['dumps'] == []  # refused before anything was dumped
