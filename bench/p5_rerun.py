"""P5: re-running an incident that already finished (same label) on many hosts: HTTP requests per
host per module, and wall time.

Hosts are simulated by N memdump services on loopback ports, each on its own copy of the libvirt
test-driver file (MEMDUMP_BENCH_P5_HOSTS, default 8), one inventory host per service
(``ansible_connection: local``). The play is bench/playbooks/memdump_wait.yml (memdump_trigger
with ``label`` + memdump_wait) with ``forks`` = N. A first run creates the dumps; then re-runs
alternate between going through one counting proxy per service (requests counted) and going
straight to the services (wall time without the proxy).
"""

import os

import benchlib as b

LABEL = 'IR-BENCH-P5'
VMS = ['web01', 'db01', 'app01']


def count(proxies, wait_start):
    per_host = {}
    for host, proxy in proxies.items():
        reqs = proxy.snapshot()
        per_host[host] = {'trigger': len([r for r in reqs if r['start'] < wait_start]),
                          'wait': len([r for r in reqs if r['start'] >= wait_start]),
                          'requests': ['%s %s' % (r['method'], r['path']) for r in reqs]}
    return per_host


def main():
    n = b.int_env('MEMDUMP_BENCH_P5_HOSTS', 8)
    reps = b.int_env('MEMDUMP_BENCH_P5_REPS', 2)
    load_before = b.loadavg()
    work = b.workdir('p5')
    services, proxies = {}, {}
    results = {'first': None, 'proxied': [], 'direct': []}
    try:
        for i in range(1, n + 1):
            host = 'h%02d' % i
            uri = b.test_driver_uri(os.path.join(work, '%s-node.xml' % host), VMS)
            services[host] = b.MemdumpService(b.workdir('p5-' + host), uri)
            services[host].start(wait=False)
        for svc in services.values():
            svc.wait_healthy(timeout=120)
        proxies = {h: b.CountingProxy(s.url) for h, s in services.items()}
        inventory = os.path.join(work, 'inventory.yml')
        with open(inventory, 'w') as f:
            f.write('all:\n  hosts:\n')
            for host in services:
                f.write('    %s: {ansible_connection: local, memdump_url: "%s", memdump_direct_url: "%s"}\n'
                        % (host, proxies[host].url, services[host].url))
        playbook = os.path.join(b.PLAYBOOKS, 'memdump_wait.yml')
        runs = [('first', 'memdump_url')] + [v for dummy in range(reps) for v in (('proxied', 'memdump_url'), ('direct', 'memdump_direct_url'))]
        for kind, key in runs:
            for proxy in proxies.values():
                proxy.reset()
            res = b.run_playbook(playbook, {'bench_url_key': key, 'bench_vms': VMS, 'bench_label': LABEL},
                                 inventory=inventory, args=['-f', str(n)])
            if res['rc'] != 0:
                raise RuntimeError(b.playbook_failure(res))
            trig_task, dummy = b.task_result(res['json'], 'Start the dumps', 'h01')
            wait_task, dummy = b.task_result(res['json'], 'Wait for the dumps', 'h01')
            stats = res['json'].get('stats', {})
            run = {'wall': round(res['wall'], 3),
                   'changed_hosts': len([h for h, s in stats.items() if s.get('changed')]),
                   'trigger_task_sec': round(b.parse_iso(trig_task['duration']['end']) - b.parse_iso(trig_task['duration']['start']), 3),
                   'wait_task_sec': round(b.parse_iso(wait_task['duration']['end']) - b.parse_iso(wait_task['duration']['start']), 3)}
            if key == 'memdump_url':
                per_host = count(proxies, b.parse_iso(wait_task['duration']['start']))
                run['max_trigger_requests'] = max(p['trigger'] for p in per_host.values())
                run['max_wait_requests'] = max(p['wait'] for p in per_host.values())
                run['example_host'] = per_host['h01']
            b.log('P5 %-7s wall %.2f s, changed hosts %d%s' % (kind, run['wall'], run['changed_hosts'],
                  ', requests/host trigger %d wait %d' % (run['max_trigger_requests'], run['max_wait_requests'])
                  if 'max_trigger_requests' in run else ''))
            if kind == 'first':
                results['first'] = run
            else:
                results[kind].append(run)
    finally:
        for proxy in proxies.values():
            proxy.close()
        for svc in services.values():
            svc.stop()
    prox = results['proxied']
    worst = max([r['max_trigger_requests'] for r in prox] + [r['max_wait_requests'] for r in prox] or [None])
    b.write_result('P5', {
        'title': 're-run of a finished incident (same label), %d hosts' % n,
        'target': '<= 1 request per host per module',
        'met': worst is not None and worst <= 1 and all(r['changed_hosts'] == 0 for r in prox + results['direct']),
        'hosts': n, 'vms_per_host': len(VMS), 'reps': reps,
        'worst_requests_per_host_per_module': worst,
        'rerun_wall_direct': b.summary([r['wall'] for r in results['direct']], 3),
        'rerun_wall_proxied': b.summary([r['wall'] for r in prox], 3),
        'rerun_trigger_task_sec': b.summary([r['trigger_task_sec'] for r in results['direct']], 3),
        'rerun_wait_task_sec': b.summary([r['wait_task_sec'] for r in results['direct']], 3),
        'runs': results, 'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p5_rerun.py (MEMDUMP_BENCH_P5_HOSTS=%d, MEMDUMP_BENCH_P5_REPS=%d)' % (n, reps),
    })


if __name__ == '__main__':
    main()
