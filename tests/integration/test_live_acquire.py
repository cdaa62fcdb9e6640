"""`ansible-playbook vmforensics.memdump.acquire -e method=live` against the real service and the stack's Linux guest.

The live image is collected into the custody log like any other, InfluxDB gets its method and pause, the Grafana
panel "Guest pause by method" shows it, and the reuse rules keep live and memory-only dumps of one label apart.
A kill -9 of the service mid live dump leaves a failed record, no partial file and a running guest.
"""
import json
import os
import signal
import subprocess
import urllib.parse
import urllib.request

import pytest

from conftest import sha256_file, stack_env

LABEL = 'IR-INTEG-LIVE-1'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not os.environ.get('MEMDUMP_TEST_LINUX_VM'),
                                reason='MEMDUMP_TEST_LINUX_VM unset (run tests/stack/stack.sh up or linux-up)')


def influx_select(url, db, query):
    params = urllib.parse.urlencode({'db': db, 'q': query})
    with urllib.request.urlopen(url + '/query?' + params, timeout=10) as resp:
        return json.loads(resp.read())['results'][0].get('series', [])


def pause_panel_query():
    with open(os.path.join(REPO, 'docs', 'grafana', 'memdump.json')) as f:
        panels = json.load(f)['panels']
    (panel,) = [p for p in panels if p['title'] == 'Guest pause by method']
    return panel['targets'][0]['query'].replace('$timeFilter', 'time > now() - 1h').replace('$__interval', '1m')


def test_live_acquire_collects_records_and_keeps_methods_apart(memdump_service, run_playbook, tmp_path):
    vm = stack_env('MEMDUMP_TEST_LINUX_VM')
    influx_url = stack_env('MEMDUMP_TEST_INFLUXDB_URL')
    database = 'memdump_integ_live'
    with urllib.request.urlopen(influx_url + '/query', data=urllib.parse.urlencode({'q': 'CREATE DATABASE %s' % database}).encode(),
                                timeout=10):
        pass
    svc = memdump_service(token='integ-live-token')
    evidence = tmp_path / 'evidence'
    env = {'MEMDUMP_SERVICE_URL': svc.url, 'MEMDUMP_SERVICE_TOKEN': svc.token,
           'ANSIBLE_CALLBACKS_ENABLED': 'vmforensics.memdump.influxdb', 'MEMDUMP_INFLUXDB_URL': influx_url,
           'MEMDUMP_INFLUXDB_DATABASE': database, 'MEMDUMP_INFLUXDB_SPOOL_DIR': str(tmp_path / 'spool')}

    def acquire(**extra):
        extra_vars = {'memdump_hosts': 'localhost', 'label': LABEL, 'vms': vm, 'collect': True, 'evidence_dir': str(evidence),
                      'wait_timeout': 300}
        extra_vars.update(extra)
        return run_playbook('vmforensics.memdump.acquire', extra_vars=extra_vars, env=env)

    live = acquire(method='live')
    assert live.rc == 0, live.stdout + live.stderr
    with open(os.path.join(str(evidence), LABEL, 'manifest.json')) as f:
        (entry,) = json.load(f)['entries']
    assert (entry['method'], entry['format']) == ('live', 'qemu-migration')
    path = os.path.join(str(evidence), LABEL, entry['evidence_file'])
    assert path.endswith('.qevm') and sha256_file(path) == entry['sha256']
    with open(path, 'rb') as f:
        assert f.read(4) == b'QEVM'
    assert 0 <= entry['paused_sec'] < 1.0
    # The role converted the stream on the controller: an ELF core next to it, checked and recorded as derived.
    assert entry['derived_file'] == entry['evidence_file'] + '.elf'
    with open(os.path.join(str(evidence), LABEL, entry['derived_file']), 'rb') as f:
        assert f.read(4) == b'\x7fELF'
    with open(os.path.join(str(evidence), LABEL, 'custody.jsonl')) as f:
        (derived,) = [e for e in map(json.loads, f) if e['event'] == 'derived']
    assert derived['source_sha256'] == entry['sha256'] and derived['check']['ok'] is True
    assert sha256_file(os.path.join(str(evidence), LABEL, entry['derived_file'])) == entry['derived_sha256'] == derived['sha256']

    # InfluxDB: the point is tagged with the method and carries the pause; the panel groups by it.
    series = influx_select(influx_url, database, 'SELECT "paused_sec" FROM "memdump" WHERE "label" = \'%s\' AND "method" = \'live\''
                           % LABEL)
    assert series and series[0]['values'][-1][1] == entry['paused_sec'], series
    panel = influx_select(influx_url, database, pause_panel_query())
    assert any(s.get('tags', {}).get('method') == 'live' for s in panel), panel

    # The same label and method again: nothing new. Another method: a new dump (a different kind of image).
    again = acquire(method='live')
    assert again.rc == 0 and again.stats['localhost']['changed'] == 0, again.stdout + again.stderr
    elf = acquire(method='memory-only')
    assert elf.rc == 0, elf.stdout + elf.stderr
    status, listing = svc.api('GET', '/api/dumps?label=' + LABEL)
    kinds = sorted((d['method'], d['format']) for d in listing['dumps'])
    assert status == 200 and kinds == [('live', 'qemu-migration'), ('memory-only', 'elf')]


def test_kill_9_mid_live_dump_then_restart(memdump_service, wait_until):
    vm = stack_env('MEMDUMP_TEST_LINUX_VM')
    svc = memdump_service()

    def virsh(*args):
        return subprocess.run(['virsh', '-c', 'qemu:///system'] + list(args), capture_output=True, text=True, timeout=60, check=True)

    # QEMU's writer (the emulator thread) held to 2 % of a CPU makes the live dump last seconds; set before the dump,
    # since libvirt holds the domain's job lock while it runs.
    virsh('schedinfo', vm, '--live', 'emulator_period=100000', 'emulator_quota=2000')
    try:
        status, body = svc.api('POST', '/api/dumps', {'vms': [vm], 'method': 'live'})
        assert status == 202, body
        dump_id = body['dumps'][0]['dump_id']
        wait_until(lambda: svc.api('GET', '/api/dumps/' + dump_id)[1]['progress'] > 0, 60, interval=0.05,
                   what='the live dump to make progress')
        svc.stop(signal.SIGKILL)
        svc.start()
        crashed = svc.api('GET', '/api/dumps/' + dump_id)[1]
        assert crashed['state'] == 'failed' and crashed['message'] == 'interrupted by service restart', crashed
        assert crashed['dump_path'] is None and os.listdir(svc.dump_dir) == []
        # The guest ran throughout; QEMU's dump job ends once nobody reads the stream.
        wait_until(lambda: 'None' in virsh('domjobinfo', vm).stdout, 60, interval=0.2, what='the orphaned dump job to end')
        assert virsh('domstate', vm).stdout.strip() == 'running'
    finally:
        virsh('schedinfo', vm, '--live', 'emulator_quota=-1')
        # The killed service could not put QEMU's downtime limit back (docs/api.md, Live dumps): QEMU's default.
        virsh('migrate-setmaxdowntime', vm, '300')
    status, body = svc.api('POST', '/api/dumps', {'vms': [vm], 'method': 'live'})
    assert status == 202, body
    new_id = body['dumps'][0]['dump_id']
    wait_until(lambda: svc.api('GET', '/api/dumps/' + new_id)[1]['state'] in ('completed', 'failed'), 120, interval=0.1,
               what='a new live dump')
    again = svc.api('GET', '/api/dumps/' + new_id)[1]
    assert again['state'] == 'completed', again
