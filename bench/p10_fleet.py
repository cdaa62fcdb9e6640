"""P10: a fleet of N hosts (default 50) with 2 VMs each: acquisition with collection, then a re-run of the
same incident, with the collection's playbook (vmforensics.memdump.acquire, collect=true) side by side with
what a responder would write by hand for the same job (bench/playbooks/by_hand_fleet.yml: `virsh dump`,
`sha256sum`, `fetch`). Wall time and controller CPU per host.

Each host is one memdump service on its own loopback address (127.0.10.1 .. 127.0.10.N) on its own copy of
the libvirt test-driver file, one inventory host per service (``ansible_connection: local``), so the figure
is the orchestration cost of a fleet: the test driver's images are 15 bytes (it also refuses
``--memory-only``, so the by-hand playbook runs a plain ``virsh dump``). Controller CPU is the CPU time of
the ansible-playbook process tree (modules included, since the hosts are local), not of the services.
"""

import os

import benchlib as b

LABEL = 'IR-BENCH-P10'


class FleetService(b.MemdumpService):
    """A memdump service listening on a loopback address of its own, as a host of a fleet would on its own."""

    def __init__(self, workdir, libvirt_uri, address):
        super(FleetService, self).__init__(workdir, libvirt_uri)
        self.address = address
        self.url = 'http://%s:%d' % (address, self.port)

    def command(self):
        cmd = super(FleetService, self).command()
        cmd[cmd.index('--listen') + 1] = '%s:%d' % (self.address, self.port)
        return cmd


def vm_names(i):
    return ['h%02d-web' % i, 'h%02d-db' % i]


def write_inventory(path, services, dump_dirs):
    with open(path, 'w') as f:
        f.write('all:\n  hosts:\n')
        for host, svc in services.items():
            f.write('    %s: {ansible_connection: local, memdump_service_url: "%s", memdump_acquire_collect_url: "%s", '
                    'memdump_vms: %s, bench_libvirt_uri: "%s", bench_dump_dir: "%s"}\n'
                    % (host, svc.url, svc.url, vm_names(int(host[1:])), svc.libvirt_uri, dump_dirs[host]))


def per_host(run, n):
    return {'wall': round(run['wall'], 3), 'cpu': round(run['cpu'], 3), 'wall_per_host': round(run['wall'] / n, 4),
            'cpu_per_host': round(run['cpu'] / n, 4), 'changed_hosts': run['changed_hosts']}


def changed_hosts(res):
    stats = (res['json'] or {}).get('stats', {})
    return len([h for h, s in stats.items() if s.get('changed')])


def virsh_retries(res):
    """Dump attempts the by-hand playbook had to repeat (virsh hung after a test-driver dump, see the playbook)."""
    retries = 0
    for play in (res['json'] or {}).get('plays', []):
        for task in play.get('tasks', []):
            if task['task']['name'] != 'Dump each VM':
                continue
            for host in task['hosts'].values():
                retries += sum(max(0, int(item.get('attempts', 1)) - 1) for item in host.get('results', []))
    return retries


def main():
    n = b.int_env('MEMDUMP_BENCH_P10_HOSTS', 50)
    reps = b.int_env('MEMDUMP_BENCH_P10_REPS', 2)
    forks = b.int_env('MEMDUMP_BENCH_P10_FORKS', 20)
    load_before = b.loadavg()
    work = b.workdir('p10')
    services, dump_dirs = {}, {}
    runs = {'collection': {'first': [], 'rerun': []}, 'by_hand': {'first': [], 'rerun': []}}
    try:
        for i in range(1, n + 1):
            host = 'h%02d' % i
            uri = b.test_driver_uri(os.path.join(work, '%s-node.xml' % host), vm_names(i))
            services[host] = FleetService(b.workdir('p10-' + host), uri, '127.0.10.%d' % i)
            services[host].start(wait=False)
            dump_dirs[host] = os.path.join(work, 'by-hand-dumps', host)
            os.makedirs(dump_dirs[host])
        for svc in services.values():
            svc.wait_healthy(timeout=300)
        inventory = os.path.join(work, 'inventory.yml')
        write_inventory(inventory, services, dump_dirs)
        acquire = os.path.join(b.REPO, 'playbooks', 'acquire.yml')
        by_hand = os.path.join(b.PLAYBOOKS, 'by_hand_fleet.yml')
        for rep in range(reps):
            label = '%s-%d' % (LABEL, rep)
            evidence = os.path.join(work, 'evidence-%d' % rep)
            variants = [
                ('collection', acquire, {'label': label, 'collect': True, 'evidence_dir': os.path.join(evidence, 'collection'),
                                         'memdump_hosts': 'all'}),
                ('by_hand', by_hand, {'bench_label': label, 'bench_evidence_dir': os.path.join(evidence, 'by-hand')}),
            ]
            # First runs of both, then re-runs of both: each re-run finds its own first run's state.
            for kind in ('first', 'rerun'):
                for name, playbook, extra in (variants if rep % 2 == 0 else variants[::-1]):
                    res = b.run_playbook(playbook, extra, inventory=inventory, args=['-f', str(forks)], timeout=1800)
                    if res['rc'] != 0:
                        raise RuntimeError('%s %s: %s' % (name, kind, b.playbook_failure(res)))
                    res['changed_hosts'] = changed_hosts(res)
                    row = per_host(res, n)
                    if name == 'by_hand':
                        row['virsh_retries'] = virsh_retries(res)
                    runs[name][kind].append(row)
                    b.log('P10 %-10s %-5s wall %.1f s (%.3f s/host), CPU %.1f s (%.3f s/host), changed hosts %d'
                          % (name, kind, row['wall'], row['wall_per_host'], row['cpu'], row['cpu_per_host'], row['changed_hosts']))
    finally:
        for svc in services.values():
            svc.stop()

    def med(name, kind, key):
        return b.summary([r[key] for r in runs[name][kind]], 4)
    figures = {name: {kind: {'wall_per_host': med(name, kind, 'wall_per_host'), 'cpu_per_host': med(name, kind, 'cpu_per_host'),
                             'wall': med(name, kind, 'wall'), 'changed_hosts': [r['changed_hosts'] for r in runs[name][kind]]}
                      for kind in ('first', 'rerun')} for name in runs}
    ratio = {kind: round(figures['collection'][kind]['cpu_per_host']['median'] / figures['by_hand'][kind]['cpu_per_host']['median'], 2)
             for kind in ('first', 'rerun')}
    b.write_result('P10', {
        'title': 'a fleet of %d hosts, 2 VMs each: acquisition with collection and a re-run' % n,
        'target': 'a re-run changes nothing on any host; wall time and controller CPU per host side by side with by hand',
        'met': all(c == 0 for c in figures['collection']['rerun']['changed_hosts']),
        'hosts': n, 'vms_per_host': 2, 'reps': reps, 'forks': forks, 'figures': figures,
        'cpu_ratio_collection_by_hand': ratio, 'runs': runs, 'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p10_fleet.py (MEMDUMP_BENCH_P10_HOSTS=%d, MEMDUMP_BENCH_P10_REPS=%d, '
                   'MEMDUMP_BENCH_P10_FORKS=%d)' % (n, reps, forks),
    })


if __name__ == '__main__':
    main()
