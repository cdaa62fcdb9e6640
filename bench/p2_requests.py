"""P2: HTTP requests a client makes per VM while waiting on a dump that lasts ~60 s.

Three clients run at the same time, each against its own service and guest (so no client sees
another's state changes), each through a counting proxy on loopback:

* ``memdump_wait``: memdump_trigger + memdump_wait (long-poll ``wait``/``marker``);
* ``seed_poll``: the same tasks against the test double of the seed's core service
  (tests/doubles/core_service.py, the seed's API): memdump_wait polls every 5 s, as the seed's client did;
* ``uri_until``: ansible.builtin.uri POST, then uri GET ``until`` with ``delay: 5``.

The dumps are made to last ~60 s by capping the CPU of each guest's QEMU emulator threads
(``virsh schedinfo --live emulator_quota``), which write the dump, steered from libvirt's job
progress every 2 s (``benchlib.DumpPacer``). Counted: the requests that reach the service from
the start of the wait task until it returns.
"""

import os
import subprocess
import time

import benchlib as b

VARIANTS = ['memdump_wait', 'seed_poll', 'uri_until']


def main():
    uri = b.env('MEMDUMP_TEST_LIBVIRT_URI', 'qemu:///system')
    guests = dict(zip(VARIANTS, [b.env('MEMDUMP_BENCH_VM_A'), b.env('MEMDUMP_BENCH_VM_B'), b.env('MEMDUMP_BENCH_VM_RANDOM')]))
    quota = b.int_env('MEMDUMP_BENCH_P2_QUOTA', 1000)
    load_before = b.loadavg()
    services = {v: b.start_core_service('p2-' + v, uri) if v == 'seed_poll' else b.start_service('p2-' + v, uri) for v in VARIANTS}
    proxies = {v: b.CountingProxy(services[v].url) for v in VARIANTS}
    outcome = {}
    procs = {}
    pacer = b.DumpPacer(guests.values(), b.int_env('MEMDUMP_BENCH_P2_SECONDS', 60), quota)
    try:
        for v in VARIANTS:
            b.set_emulator_quota(guests[v], quota)
        pacer.start()
        for v in VARIANTS:
            playbook = os.path.join(b.PLAYBOOKS, 'uri_until.yml' if v == 'uri_until' else 'memdump_wait.yml')
            cmd = b.playbook_cmd(playbook, {'memdump_url': proxies[v].url, 'bench_vms': [guests[v]], 'poll_interval': 5})
            procs[v] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,  # pylint: disable=consider-using-with
                                        env=b.playbook_env())
        b.log('P2: three playbooks waiting on ~60 s dumps (emulator quota %d us per 100 ms)' % quota)
        deadline = time.monotonic() + 600
        for v in VARIANTS:
            stdout, stderr = procs[v].communicate(timeout=max(1, deadline - time.monotonic()))
            out = b.parse_json_output(stdout)
            if procs[v].returncode != 0:
                raise RuntimeError(b.playbook_failure({'rc': procs[v].returncode, 'stdout': stdout, 'stderr': stderr}))
            dummy, started = b.task_result(out, 'Start the dumps')
            dump_id = (started['json'] if v == 'uri_until' else started)['dumps'][0]['dump_id']
            task, dummy = b.task_result(out, 'Wait for the dumps')
            t0, t1 = b.parse_iso(task['duration']['start']), b.parse_iso(task['duration']['end'])
            reqs = proxies[v].snapshot()
            waiting = [r for r in reqs if r['start'] >= t0 - 0.001]
            rec = b.find_dump(services[v].url, dump_id)
            outcome[v] = {'requests_while_waiting': len(waiting), 'requests_total': len(reqs),
                          'requests': ['%s %s -> %s (%.1f s)' % (r['method'], r['path'], r['status'], r['end'] - r['start'])
                                       for r in reqs],
                          'dump_sec': rec.get('duration_sec'), 'wait_task_sec': round(t1 - t0, 2), 'state': rec['state'],
                          'vm': guests[v]}
            b.log('P2 %-12s %d requests while waiting (%d in all), dump %.1f s' % (
                v, len(waiting), len(reqs), rec.get('duration_sec') or 0))
            b.delete_dump(services[v].url, dump_id)
    finally:
        pacer.stop()
        for v, proc in procs.items():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for v in VARIANTS:
            b.set_emulator_quota(guests[v], -1)
            proxies[v].close()
            services[v].stop()
    ours = outcome.get('memdump_wait', {}).get('requests_while_waiting')
    b.write_result('P2', {
        'title': 'HTTP requests per VM while waiting on a ~60 s dump',
        'target': '<= 3 requests per VM (memdump_wait)',
        'met': ours is not None and ours <= 3,
        'variants': outcome, 'emulator_quota_us': quota, 'pacer_log': pacer.log[-30:],
        'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p2_requests.py (MEMDUMP_BENCH_P2_QUOTA=%d)' % quota,
    })


if __name__ == '__main__':
    main()
