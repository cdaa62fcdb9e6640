"""P4: wall time of a 200-task playbook with the InfluxDB callback / without it, and with InfluxDB
down (connection refused) or not answering (a loopback socket that accepts and never replies).

The playbook (generated into bench/results/p4_200_tasks.yml): memdump_trigger of three VMs with a
label, memdump_wait, then 198 tasks of which every tenth is memdump_info (dump records for the
callback to turn into points: 20 tasks with records in all) and the rest ansible.builtin.debug; against a memdump service on
libvirt's test driver. Stdout callback: bench_json (it gives each task's end time). Besides the
wall time of each run (noisy on a shared machine), two steadier measures: the CPU time of the
whole ansible-playbook process tree (what the callback adds in work), and the "tail": from the
controller receiving the last task result to the process exit (where the callback sends, and
where a dead or hanging InfluxDB would cost time). The incident's dumps are created first (through
the API), so every run sees the same state; then the four variants, rotated in each repetition
(MEMDUMP_BENCH_P4_REPS, default 3). A run takes about 25 s on this 2-core machine (Ansible forks a
worker per task). The callback runs with its default timeout (5 s) unless MEMDUMP_BENCH_P4_TIMEOUT
is set; each run gets an empty spool directory.
"""

import os
import shutil

import benchlib as b

VARIANTS = ['none', 'up', 'down', 'hang']
DATABASE = 'memdump_bench'


def write_playbook(path, n_tasks=200):
    lines = ['---', '- name: A 200-task play (bench P4)', '  hosts: localhost', '  gather_facts: false',
             '  module_defaults:', '    group/vmforensics.memdump.memdump:', '      url: "{{ memdump_url }}"', '  tasks:',
             '    - name: T001 start the dumps', '      vmforensics.memdump.memdump_trigger:',
             '        vms: [web01, db01, app01]', '        label: IR-BENCH-P4', '      register: bench_trigger',
             '    - name: T002 wait for the dumps', '      vmforensics.memdump.memdump_wait:',
             '        dumps: "{{ bench_trigger.dumps }}"']
    for i in range(3, n_tasks + 1):
        if i % 10 == 0:
            lines += ['    - name: T%03d dump records' % i, '      vmforensics.memdump.memdump_info:', '        label: IR-BENCH-P4']
        else:
            lines += ['    - name: T%03d a step' % i, '      ansible.builtin.debug:', '        msg: step %d' % i]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def influx_query(url, q):
    import urllib.parse  # pylint: disable=import-outside-toplevel
    return b.api(url, 'POST', '/query?' + urllib.parse.urlencode({'q': q, 'db': DATABASE}))


def main():
    influx = b.env('MEMDUMP_TEST_INFLUXDB_URL')
    b.check_loopback(influx)
    reps = b.int_env('MEMDUMP_BENCH_P4_REPS', 3)
    timeout = os.environ.get('MEMDUMP_BENCH_P4_TIMEOUT')
    load_before = b.loadavg()
    influx_query(influx, 'DROP DATABASE %s' % DATABASE)
    influx_query(influx, 'CREATE DATABASE %s' % DATABASE)
    node = os.path.join(b.workdir('p4-node'), 'node.xml')
    svc = b.start_service('p4', b.test_driver_uri(node))
    playbook = os.path.join(b.RESULTS, 'p4_200_tasks.yml')
    write_playbook(playbook)
    hang_sock, hang_url = b.hanging_listener()
    urls = {'up': influx, 'down': b.dead_url(), 'hang': hang_url}
    allv = VARIANTS
    walls = {v: [] for v in allv}
    cpus = {v: [] for v in allv}
    tails = {v: [] for v in allv}
    warnings = {v: [] for v in allv}
    spool_root = os.path.join(b.RESULTS, 'work', 'p4-spool')
    try:
        for dump in b.post_dumps(svc.url, ['web01', 'db01', 'app01'], label='IR-BENCH-P4'):
            b.wait_dump(svc.url, dump['dump_id'], timeout=60)
        runs = [(v, rep) for rep in range(reps) for v in b.rotate(VARIANTS, rep)]
        for i, (variant, rep) in enumerate(runs):
            extra = {}
            if variant in urls:
                spool = os.path.join(spool_root, str(i))
                shutil.rmtree(spool, ignore_errors=True)
                extra.update({'ANSIBLE_CALLBACKS_ENABLED': 'vmforensics.memdump.influxdb', 'MEMDUMP_INFLUXDB_URL': urls[variant],
                              'MEMDUMP_INFLUXDB_API': 'v1', 'MEMDUMP_INFLUXDB_DATABASE': DATABASE,
                              'MEMDUMP_INFLUXDB_SPOOL_DIR': spool})
                if timeout:
                    extra['MEMDUMP_INFLUXDB_TIMEOUT'] = timeout
            res = b.run_playbook(playbook, {'memdump_url': svc.url}, env_extra=extra)
            if res['rc'] != 0:
                raise RuntimeError(b.playbook_failure(res))
            walls[variant].append(res['wall'])
            cpus[variant].append(res['cpu'])
            last = b.last_task_end(res['json'])
            tails[variant].append(res['ended'] - last if last else None)
            text = res['stdout'] + res['stderr']
            warnings[variant].append(len([ln for ln in text.splitlines() if 'WARNING' in ln and 'nflux' in ln]))
            b.log('P4 rep %d %-5s wall %.2f s, CPU %.2f s, tail %.2f s' % (
                rep, variant, res['wall'], res['cpu'], tails[variant][-1] or -1))
        status, body = influx_query(influx, 'SELECT count(dump_id) FROM memdump')
        points = body if status == 200 else {'status': status, 'body': str(body)[:300]}
    finally:
        hang_sock.close()
        svc.stop()
    stats = {v: b.summary(walls[v], 3) for v in allv}
    base = stats['none'].get('median')

    def ratio(v):
        return round(stats[v]['median'] / base, 3) if base and stats[v].get('median') else None
    ratios = {v: ratio(v) for v in ('up', 'down', 'hang')}
    paired = {v: b.summary([x / y for x, y in zip(walls[v], walls['none'])], 3) for v in ('up', 'down', 'hang')}
    b.write_result('P4', {
        'title': '200-task playbook: with the InfluxDB callback / without',
        'target': 'up <= 1.02; down or not answering <= 1.05',
        'met': bool(ratios['up'] and ratios['up'] <= 1.02 and ratios['down'] and ratios['down'] <= 1.05
                    and ratios['hang'] and ratios['hang'] <= 1.05),
        'ratios': ratios, 'paired_ratios': paired, 'walls': stats, 'warnings_per_run': warnings,
        'cpu': {v: b.summary(cpus[v], 3) for v in allv}, 'tail': {v: b.summary(tails[v], 3) for v in allv},
        'cpu_ratio_up': round(b.summary(cpus['up'])['median'] / b.summary(cpus['none'])['median'], 3) if cpus['none'] and cpus['up'] else None,
        'callback_timeout': timeout or 'default (5 s)', 'points_in_influxdb': points, 'reps': reps,
        'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p4_callback.py (MEMDUMP_BENCH_P4_REPS=%d%s)' % (
            reps, ', MEMDUMP_BENCH_P4_TIMEOUT=%s' % timeout if timeout else ''),
    })


if __name__ == '__main__':
    main()
