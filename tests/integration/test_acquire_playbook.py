"""`ansible-playbook vmforensics.memdump.acquire` against the real service and the stack's QEMU guests.

Run twice with the same label: the second run changes nothing, dumps nothing and downloads nothing;
the custody manifest's hashes match the collected images. A VM whose dump failed is retried.
One list of VMs for a fleet of two hosts (two services on two loopback addresses): each host acquires
its own; a VM on no host or on both fails the run naming it. Evidence goes only to an explicit directory.
"""
import json
import os
import urllib.parse
import urllib.request

import pytest

from conftest import MemdumpService, sha256_file, stack_env

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
        assert entry['host'] == 'localhost' and entry['vm_uuid']
        # The default, method auto: the guests can migrate, so their dumps are live, each with an ELF derived from it.
        assert (entry['method'], entry['method_requested'], entry['format']) == ('live', 'auto', 'qemu-migration'), entry
        assert entry['method_reason'] == 'auto: libvirt accepted a live dump (the guest can migrate)'
        assert entry['derived_file'] == entry['evidence_file'] + '.elf'
        assert entry['operator'] and entry['collection_version'] == '0.1.0'
        assert entry['started_at'] and entry['finished_at'] and entry['paused_sec'] is not None
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o400 and os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
        files[path] = (st.st_ino, st.st_mtime_ns)
    # The manifest is generated from the custody log: acquired, collected, verified per dump.
    with open(os.path.join(str(evidence), LABEL, 'custody.jsonl')) as f:
        events = [json.loads(line) for line in f]
    assert sorted(e['event'] for e in events) == sorted(['acquired', 'collected', 'verified', 'derived'] * 2)
    assert [e['seq'] for e in events] == list(range(8)) and events[0]['prev'] == '0' * 64
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
    assert len((evidence / LABEL / 'custody.jsonl').read_text().splitlines()) == 8

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

    # Named for this host (a per-host list): the service is asked to dump the typo and says why it cannot.
    first = acquire(run_playbook, svc, evidence, {'localhost': [vm, 'memdump-no-such-vm']}, label=label)
    assert first.rc != 0
    assert 'memdump-no-such-vm' in first.stdout
    # The VM that worked is shown with its evidence file, although the play fails for the other one.
    shown = first.role_task_results('Show what was acquired, per VM')['msg']
    assert shown['vms'][vm]['state'] == 'completed' and shown['vms'][vm]['dump'] == 'new'
    assert shown['evidence_files'][vm].startswith('localhost/' + vm)
    assert shown['custody_log'] == str(evidence / label / 'custody.jsonl')
    # A typo: the service's listing says there is no such VM (not its message text), so the advice is to
    # check the name, not to re-run as is.
    assert shown['vms']['memdump-no-such-vm']['reason'] == 'no_such_vm'
    failure = first.role_task_results('Fail for the VMs whose dump failed')['msg']
    assert 'no such VM on this host' in failure and 'check the name' in failure and 'memdump-no-such-vm' in failure
    assert 'to retry only' not in failure
    data = manifest(evidence, label)
    assert [e['vm'] for e in data['entries']] == [vm]

    second = acquire(run_playbook, svc, evidence, {'localhost': [vm, 'memdump-no-such-vm']}, label=label)
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


def test_collect_without_evidence_dir_fails_before_dumping_and_says_what_to_set(memdump_service, run_playbook, tmp_path):
    svc = memdump_service(libvirt_uri=stack_env('MEMDUMP_TEST_DRIVER_URI'), token='integ-acquire-token')
    home = tmp_path / 'home'
    home.mkdir()
    extra = {'memdump_hosts': 'localhost', 'label': 'IR-INTEG-NO-EVIDENCE', 'vms': ['web01'], 'collect': True}
    result = run_playbook('vmforensics.memdump.acquire', extra_vars=extra,
                          env={'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token, 'HOME': str(home)})
    assert result.rc != 0
    failure = result.role_task_results('Require an explicit evidence directory for what is written on the controller')['msg']
    assert 'memdump_acquire_evidence_dir' in failure and '-e evidence_dir=' in failure and 'persistent storage' in failure
    status, listing = svc.api('GET', '/api/dumps?label=IR-INTEG-NO-EVIDENCE')
    assert status == 200 and listing['dumps'] == []   # refused before anything was dumped
    assert not (home / 'memdump-evidence').exists()     # and no evidence directory made under $HOME


def test_delete_after_collect_is_refused_without_an_evidence_dir(memdump_service, run_playbook):
    svc = memdump_service(libvirt_uri=stack_env('MEMDUMP_TEST_DRIVER_URI'), token='integ-acquire-token')
    extra = {'memdump_hosts': 'localhost', 'label': 'IR-INTEG-DELETE-NO-EVIDENCE', 'vms': ['web01'], 'collect': True,
             'delete_after_collect': True, 'evidence_dir': ''}   # an AWX survey's empty answer
    result = run_playbook('vmforensics.memdump.acquire', extra_vars=extra,
                          env={'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token})
    assert result.rc != 0
    failure = result.role_task_results('Require an explicit evidence directory for what is written on the controller')['msg']
    assert 'delete_after_collect is refused' in failure and 'memdump_acquire_evidence_dir' in failure
    status, listing = svc.api('GET', '/api/dumps?label=IR-INTEG-DELETE-NO-EVIDENCE')
    assert status == 200 and listing['dumps'] == []


# --- A fleet of two hosts: two services on two loopback addresses, each on its own libvirt test-driver node. ---

class ServiceOn(MemdumpService):
    """A memdump service listening on a given loopback address (one hypervisor of the fleet)."""

    def __init__(self, address, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.address = address
        self.url = 'http://%s:%d' % (address, self.port)

    def command(self):
        cmd = super().command()
        cmd[cmd.index('--listen') + 1] = '%s:%d' % (self.address, self.port)
        return cmd


FLEET_VMS = {'hv01': ['web01', 'twin01'], 'hv02': ['db01', 'twin01']}


@pytest.fixture
def fleet(tmp_path, test_driver_uri):
    """hv01 (127.0.0.2) runs web01 and twin01, hv02 (127.0.0.3) runs db01 and another twin01; returns
    ({host: service}, inventory path)."""
    services = {}
    inventory = ['all:', '  hosts:']
    for index, (host, vms) in enumerate(sorted(FLEET_VMS.items())):
        workdir = tmp_path / host
        workdir.mkdir()
        svc = ServiceOn('127.0.0.%d' % (index + 2), workdir, test_driver_uri(vms), token='fleet-token-%s' % host)
        services[host] = svc.start()
        inventory += ['    %s:' % host, '      ansible_connection: local', '      memdump_service_url: %s' % svc.url,
                      '      memdump_service_token: %s' % svc.token]
    path = tmp_path / 'fleet.yml'
    path.write_text('\n'.join(inventory) + '\n')
    yield services, str(path)
    for svc in services.values():
        svc.stop()


def fleet_acquire(run_playbook, inventory, evidence, label, **extra):
    extra_vars = {'memdump_hosts': 'all', 'label': label, 'collect': True, 'evidence_dir': str(evidence), 'wait_timeout': 120}
    extra_vars.update(extra)
    return run_playbook('vmforensics.memdump.acquire', extra_vars=extra_vars, inventory=inventory)


def dumped(svc, label):
    status, listing = svc.api('GET', '/api/dumps?label=' + label)
    assert status == 200
    return sorted(d['vm'] for d in listing['dumps'])


def test_fleet_wide_vms_are_acquired_each_on_the_host_that_runs_it(fleet, run_playbook, tmp_path):
    services, inventory = fleet
    evidence, label = tmp_path / 'evidence', 'IR-INTEG-FLEET-1'
    result = fleet_acquire(run_playbook, inventory, evidence, label, vms='web01, db01')   # as an AWX survey gives it
    assert result.rc == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert dumped(services['hv01'], label) == ['web01'] and dumped(services['hv02'], label) == ['db01']
    entries = manifest(evidence, label)['entries']
    assert sorted((e['host'], e['vm']) for e in entries) == [('hv01', 'web01'), ('hv02', 'db01')]
    for entry in entries:
        assert sha256_file(os.path.join(str(evidence), label, entry['evidence_file'])) == entry['sha256']
    found = result.role_task_results('Say where each VM of the fleet-wide list was found', host='hv01')['msg']
    assert found['acquired_on'] == {'web01': 'hv01', 'db01': 'hv02'} and found['on_no_host'] == []


def test_fleet_vm_on_no_host_fails_the_run_naming_it_after_the_others_were_acquired(fleet, run_playbook, tmp_path):
    services, inventory = fleet
    evidence, label = tmp_path / 'evidence', 'IR-INTEG-FLEET-MISSING'
    result = fleet_acquire(run_playbook, inventory, evidence, label, vms=['web01', 'ghost01'])
    assert result.rc != 0
    failure = result.role_task_results('Fail for the VMs of the fleet-wide list found on no host or on several', host='hv01')
    assert failure.get('failed') is True
    assert 'ghost01: found on no host of the play (asked: hv01, hv02)' in failure['msg']
    # Nobody tried to dump it anywhere; the VM that exists was acquired and recorded.
    assert dumped(services['hv01'], label) == ['web01'] and dumped(services['hv02'], label) == []
    assert [e['vm'] for e in manifest(evidence, label)['entries']] == ['web01']


def test_fleet_vm_on_two_hosts_is_reported_and_dumped_on_neither(fleet, run_playbook, tmp_path):
    services, inventory = fleet
    evidence, label = tmp_path / 'evidence', 'IR-INTEG-FLEET-TWIN'
    result = fleet_acquire(run_playbook, inventory, evidence, label, vms='twin01,db01')
    assert result.rc != 0
    found = result.role_task_results('Say where each VM of the fleet-wide list was found', host='hv01')['msg']
    assert sorted(h['host'] for h in found['on_several_hosts_not_acquired']['twin01']) == ['hv01', 'hv02']
    failure = result.role_task_results('Fail for the VMs of the fleet-wide list found on no host or on several', host='hv01')['msg']
    assert 'twin01: on 2 hosts, hv01 (running' in failure and 'hv02 (running' in failure and '"vms": {"hv01": ["twin01"]}' in failure
    assert dumped(services['hv01'], label) == [] and dumped(services['hv02'], label) == ['db01']

    # The responder names the host with the per-host mapping: only that host's twin01 is dumped.
    chosen = fleet_acquire(run_playbook, inventory, evidence, label, vms={'hv01': ['twin01']})
    assert chosen.rc == 0, chosen.stdout[-6000:]
    assert dumped(services['hv01'], label) == ['twin01'] and dumped(services['hv02'], label) == ['db01']


def test_host_variable_memdump_vms_still_names_the_vms_per_host(fleet, run_playbook, tmp_path):
    services, inventory = fleet
    with open(inventory, 'a') as f:
        f.write('  vars:\n    memdump_vms: [web01]\n')   # hv02 has no web01: the per-host list is not a fleet-wide one
    evidence, label = tmp_path / 'evidence', 'IR-INTEG-FLEET-HOSTVAR'
    result = fleet_acquire(run_playbook, inventory, evidence, label)
    assert result.rc != 0
    assert dumped(services['hv01'], label) == ['web01'] and dumped(services['hv02'], label) == ['web01']
    failure = result.role_task_results('Fail for the VMs whose dump failed', host='hv02')['msg']
    assert failure.startswith('hv02: ') and 'web01: no such VM on this host' in failure
