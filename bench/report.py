"""Machine facts, a load sampler, and docs/performance.md from bench/results/*.json.

    python bench/report.py machine    record the machine (results/machine.json)
    python bench/report.py sample     sample the load average every 5 s into results/load.txt
                                      (stops by itself after 40 minutes)
    python bench/report.py write      write docs/performance.md
"""

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import benchlib as b

DOC = os.path.join(b.REPO, 'docs', 'performance.md')
FIGURES = ['P1', 'P2', 'P3', 'P4', 'P5', 'P6', 'P7', 'P8', 'P9', 'P10']


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    except OSError:
        return ''


def read_first(path, prefix):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(':', 1)[1].strip() if ':' in line else line.split('=', 1)[1].strip().strip('"')
    except OSError:
        pass
    return ''


def machine():
    disk_src = sh(['df', '--output=source', b.RESULTS]).splitlines()[-1:] or ['?']
    dev = os.path.basename(disk_src[0])
    info = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'nproc': os.cpu_count(),
        'cpu': read_first('/proc/cpuinfo', 'model name'),
        'memory': '%.1f GiB' % (int(read_first('/proc/meminfo', 'MemTotal').split()[0]) / 1048576.0),
        'os': read_first('/etc/os-release', 'PRETTY_NAME='),
        'kernel': platform.release(),
        'disk': '%s, %s, rotational flag %s (virtual disk)' % (
            disk_src[0], sh(['lsblk', '-dno', 'SIZE', '/dev/' + dev]) or '?', sh(['lsblk', '-dno', 'ROTA', '/dev/' + dev]) or '?'),
        'disk_free': sh(['df', '-h', '--output=size,avail', b.RESULTS]).splitlines()[-1:],
        'python': platform.python_version(),
        'ansible_core': sh(['ansible', '--version']).splitlines()[:1],
        'libvirt': '; '.join(x.strip() for x in sh(b.VIRSH + ['version', '--daemon']).splitlines()
                             if x.startswith(('Running hypervisor', 'Running against daemon'))),
        'qemu': sh(['qemu-system-x86_64', '--version']).splitlines()[:1],
        'influxdb': sh(['influxd', 'version']),
        'load_at_start': b.loadavg(),
    }
    os.makedirs(b.RESULTS, exist_ok=True)
    with open(os.path.join(b.RESULTS, 'machine.json'), 'w') as f:
        json.dump(info, f, indent=1)


def sample():
    path = os.path.join(b.RESULTS, 'load.txt')
    end = time.monotonic() + 2400
    while time.monotonic() < end:
        with open(path, 'a') as f:
            f.write('%d %s\n' % (time.time(), ' '.join(str(x) for x in b.loadavg())))
        time.sleep(5)


def load(name):
    try:
        with open(os.path.join(b.RESULTS, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ms(x):
    return '—' if x is None else '%.0f ms' % (x * 1000) if x < 10 else '%.1f s' % x


def sec(x):
    return '—' if x is None else '%.2f s' % x


def dist(s, fmt=sec):
    """median / p95 / spread (min–max), n."""
    if not s or not s.get('n'):
        return 'not measured'
    return '%s / %s / %s–%s (n=%d)' % (fmt(s['median']), fmt(s['p95']), fmt(s['min']), fmt(s['max']), s['n'])


def verdict(r):
    if r is None:
        return 'not run'
    return 'met' if r.get('met') else '**not met**'


def p1_text(r):
    v = r['variants']
    ours, uri, seed, mod = (v.get(k, {}) for k in ('memdump_wait', 'uri_until', 'seed_poll', 'module_direct'))
    floor = r.get('python_exit_after_output', {})
    out = ['Latency = end of the wait task (the controller has the result) minus the dump\'s `finished_at`. '
           'Each cell: median / p95 / min–max (n).', '',
           '| client | latency | service answer after `finished_at` | answer → task end |', '|---|---|---|---|']
    names = {'memdump_wait': '`memdump_wait` (long-poll)', 'module_direct': '`memdump_wait` module process alone (no controller)',
             'seed_poll': 'seed-style polling every 5 s (`memdump_wait` vs the seed core-API test double)',
             'uri_until': '`uri` + `until`, `delay: 5`'}
    for k in ('memdump_wait', 'module_direct', 'seed_poll', 'uri_until'):
        if k in v:
            out.append('| %s | %s | %s | %s |' % (names[k], dist(v[k], ms), dist(v[k].get('answer'), ms), dist(v[k].get('after_answer'), ms)))
    out.append('')
    if ours.get('n') and uri.get('n'):
        out.append('memdump_wait against uri+until: %s vs %s median (%.0f× faster); discarded samples (wait task started after '
                   'the dump had finished): %s.' % (
                       ms(ours['median']), ms(uri['median']), uri['median'] / max(ours['median'], 1e-6),
                       ', '.join('%s %d' % (k, v[k].get('discarded', 0)) for k in v)))
    if floor:
        out += ['', 'Floor measured on the same machine: a Python process that imported `ansible.module_utils.basic` and '
                '`ansible.module_utils.urls` takes %s (median; p95 %s) from its last output to its exit with a normal exit, '
                '%s after `gc.freeze()` and %s with `os._exit()`. The memdump modules call `gc.freeze()` just before '
                '`exit_json`/`fail_json` (`MemdumpModule`): the interpreter\'s final garbage collection, most of the normal '
                'exit, then skips every object.'
                % (ms(floor['normal']['median']), ms(floor['normal']['p95']), ms((floor.get('gc_freeze') or {}).get('median')),
                   ms(floor['os_exit']['median']))]
    if not r.get('met') and ours.get('n'):
        out += ['', '**What limits it.** The service answers the long-poll within %s of `finished_at` (column 3): the wait '
                'itself is not the problem. The rest is process overhead after the module has its answer: the module process '
                'needs %s to exit (row 2, dominated by the Python interpreter finalizing the modules that '
                '`ansible.module_utils` imports: the floor above), then Ansible\'s worker hands the result to the controller. '
                'Under this machine\'s load (see "Conditions") every process waits for a CPU, which inflates both.'
                % (ms(ours.get('answer', {}).get('median')), ms(mod.get('median'))),
                '', '**What would lift it.** Run the benchmark on an otherwise idle machine; the controller share (answer → '
                'task end minus the module\'s exit) is Ansible\'s own per-task result handling and is the same for every '
                'module; ending the module with `os._exit()` would save the rest of the interpreter\'s exit (floor %s) at the '
                'cost of skipping its clean-up.' % ms(floor.get('os_exit', {}).get('median'))]
    if seed.get('n'):
        out += ['', 'Seed-style polling: %s median; uri+until: %s median. Both are bounded by the 5 s interval '
                '(expected uniformly 0–5 s plus overhead).' % (ms(seed['median']), ms(uri.get('median')))]
    out += ['', 'Dump durations (guest %s, emulator quota %s µs/100 ms): %s.' % (
        r.get('guest'), r.get('emulator_quota_us'), dist(r.get('dump_sec')))]
    return out


def p2_text(r):
    v = r['variants']
    out = ['| client | requests while waiting (per VM) | all requests | dump lasted | wait task |', '|---|---|---|---|---|']
    for k, name in (('memdump_wait', '`memdump_wait` (long-poll)'), ('seed_poll', 'seed-style polling every 5 s'),
                    ('uri_until', '`uri` + `until`, `delay: 5`')):
        if k in v:
            out.append('| %s | %d | %d | %s | %s |' % (
                name, v[k]['requests_while_waiting'], v[k]['requests_total'], sec(v[k]['dump_sec']), sec(v[k]['wait_task_sec'])))
    ours = v.get('memdump_wait')
    if ours:
        out += ['', 'Requests of the memdump_wait play (trigger, then wait), with how long each took: '
                + '; '.join('`%s`' % x for x in ours['requests'])]
    if ours and not r.get('met'):
        long_polls = len([x for x in ours['requests'] if 'wait=' in x])
        plain = ours['requests_while_waiting'] - long_polls
        out += ['', '**What limits it.** While waiting, memdump_wait made %d plain request(s) and %d long-poll(s); each '
                'long-poll is held at most 60 s (`MAX_SERVER_WAIT` in `plugins/module_utils/_client.py`) although the API '
                'allows `wait` up to 120 s, so a dump that outlasts the first long-poll costs one more request per 60 s.'
                % (plain, long_polls),
                '', '**What would lift it.** One plain look that also yields the marker, then long-polls of up to the 120 s '
                'the API allows: 2 requests for any dump up to 2 minutes.']
    return out


def p3_text(r):
    t = r['times']
    cpu = r.get('cpu') or {}
    reporting = r.get('free_page_reporting')
    head = 'machine CPU while it ran: system / iowait / steal' + (' / memory reported to the host' if reporting else '') + ' (median)'
    out = ['| variant | wall time median / p95 / min–max (n) | %s |' % head, '|---|---|---|']
    for k, name in (('service', 'service (POST → `completed`, SHA-256 included)'),
                    ('service_duration_sec', 'service: its own `duration_sec`'),
                    ('service_paused_sec', 'service: guest paused (`paused_sec`)'),
                    ('virsh', '`virsh dump --memory-only --format elf`'),
                    ('virsh_then_sha256', 'virsh, then SHA-256 of the file read back (two passes)'),
                    ('fifo_reader', "virsh into a FIFO drained by the service's `FifoHasher` (no HTTP or job layer)"),
                    ('fifo_reader_no_writeback', 'the same without the streaming writeback (one fsync at the end)'),
                    ('dd', '`dd if=/dev/zero bs=1M` same size'), ('dd_fdatasync', '`dd ... conv=fdatasync`')):
        if t.get(k, {}).get('n'):
            c = cpu.get(k)
            split = ''
            if c:
                split = ' / '.join(sec(c[f]['median']) for f in ('system', 'iowait', 'steal'))
                if reporting and c.get('reported_mib'):
                    split += ' / %.0f MiB' % c['reported_mib']['median']
            out.append('| %s | %s | %s |' % (name, dist(t[k]), split))
    out += ['', 'service / virsh: **%s** (ratio of medians); per-repetition ratio: %s. FifoHasher alone / virsh: %s; without the '
            'streaming writeback / virsh: %s; service / FifoHasher alone: %s. service / dd: %s, / dd with fdatasync: %s; '
            'virsh / dd with fdatasync: %s. Image: %s bytes; recorded SHA-256 equals the file\'s: %s.'
            % (r.get('ratio_of_medians'), dist(r.get('paired_ratio'), lambda x: '%.2f' % x), r.get('fifo_reader_over_virsh'),
               r.get('no_writeback_over_virsh'), r.get('service_over_fifo_reader'), r.get('service_over_dd'),
               r.get('service_over_dd_fdatasync'), r.get('virsh_over_dd_fdatasync'), r.get('image_bytes'),
               r.get('recorded_sha256_matches_file')),
            '', 'SHA-256 in memory on this machine while the benchmark ran (one core, before / after): %s MB/s. '
            'Order of the variants, shuffled per repetition: %s; a `sync` and a %s s pause before each.'
            % (' / '.join(str(x) for x in r.get('sha256_mb_per_s_before_after') or ['?']),
               '; '.join(', '.join(o) for o in r.get('orders') or []), r.get('pause_sec')),
            '', '**How the hash costs no second pass.** libvirt writes the image into a FIFO; the service reads it in one pass, '
            'hashes it and writes the file, and hands each completed 8 MiB step to the disk at once (`sync_file_range`, then '
            'drops it from the page cache), so when QEMU is done at most 16 MiB are left for the final fsync. `virsh dump` '
            "instead lets libvirt's iohelper fill the page cache and `fdatasync` the whole image at the end. The "
            '"without the streaming writeback" row is the same reader with one fsync at the end: the difference between '
            'the two rows is what the streaming writeback buys here; the SHA-256 itself (one core) overlaps with QEMU\'s writes.']
    pc = r.get('page_cache_write') or {}
    if pc.get('fresh') and pc.get('reused'):
        out += ['', 'Writing the image\'s size with `dd` into a new file (fresh page cache): %s; into the same file again, '
                'in place (page cache already allocated): %s.' % (dist(pc['fresh']), dist(pc['reused']))]
    if reporting:
        out += ['', '**Read with the machine in mind.** This virtual machine hands free memory back to its hypervisor '
                '(virtio-balloon free page reporting, last column). Filling 1 GiB of fresh page cache then costs host-served '
                'page faults, visible as system time: compare the two `dd` figures just above. Every variant that keeps the whole image in the page '
                'cache (virsh, dd, the reader without writeback) pays it; the streaming writeback keeps reusing a few MiB and '
                'does not. On a host without free page reporting that cost, and so most of the margin over virsh, is smaller; '
                'the design still avoids the final flush of the whole image.']
    if not r.get('met'):
        out += ['', '**What limits it.** The service\'s own work beyond the FifoHasher alone is the HTTP and job layer (ratio '
                'above); the rest is shared with virsh (QEMU writing 4 KiB at a time into the pipe) or is machine noise (CPU '
                'columns).']
    return out


def p4_text(r):
    w = r['walls']
    out = ['| variant | wall time median / p95 / min–max (n) | ratio to no callback | per-run ratio | InfluxDB warnings per run |',
           '|---|---|---|---|---|']
    names = {'none': 'no callback', 'up': 'callback, InfluxDB up', 'down': 'callback, InfluxDB down (refused)',
             'hang': 'callback, InfluxDB not answering'}
    for k in [x for x in ('none', 'up', 'down', 'hang') if x in w]:
        out.append('| %s | %s | %s | %s | %s |' % (
            names[k], dist(w.get(k)), r['ratios'].get(k, '1.000') if k != 'none' else '1',
            dist(r['paired_ratios'].get(k), lambda x: '%.3f' % x) if k != 'none' else '—', r['warnings_per_run'].get(k)))
    cpu, tail = r.get('cpu') or {}, r.get('tail') or {}
    if cpu:
        out += ['', 'Steadier measures, same runs (median / p95 / min–max):', '',
                '| variant | CPU time of the ansible-playbook process tree | tail: last task result → process exit |', '|---|---|---|']
        for k in [x for x in ('none', 'up', 'down', 'hang') if x in cpu]:
            out.append('| %s | %s | %s |' % (names[k], dist(cpu.get(k)), dist(tail.get(k))))
        est = tail_ratios(r)
        out += ['', 'CPU time with the callback (InfluxDB up) / without: %s. Ratio estimated from the tail (median wall '
                'time without the callback plus the extra tail of the variant, over the former), insensitive to the '
                'run-to-run noise: %s.' % (r.get('cpu_ratio_up'), ', '.join('%s %s' % (names[k], v) for k, v in est.items()))]
    out += ['', 'Callback timeout: %s. Points in InfluxDB after the runs (every run '
            'reports the same three dumps; a re-sent point overwrites, it does not duplicate): `%s`.' % (
                r.get('callback_timeout'), json.dumps(r.get('points_in_influxdb'))[:300])]
    out += ['', '**Why a lost InfluxDB costs nothing here.** The callback sends once, at the end of the run, bounded by its '
            'timeout. While the run goes on, a daemon thread asks InfluxDB\'s `/ping`; when no probe got an answer by the end '
            '(refused, or no answer within the timeout), the points go to the spool at once instead of waiting the timeout '
            'again. A run shorter than the timeout can still wait up to the timeout once.']
    if not r.get('met'):
        out += ['', '**What limits it.** Run-to-run noise of the wall time on this 2-core machine is of the order of the 2 %% '
                'budget or larger (see the min–max and per-run columns over a %s playbook): the CPU-time and tail columns, '
                'measured in the same runs, show what the callback itself costs.' % sec((w.get('none') or {}).get('median'))]
    return out


def tail_ratios(r):
    w, tail = r.get('walls') or {}, r.get('tail') or {}
    base, t0 = (w.get('none') or {}).get('median'), (tail.get('none') or {}).get('median')
    out = {}
    for k in ('up', 'down', 'hang'):
        tk = (tail.get(k) or {}).get('median')
        if base and t0 is not None and tk is not None:
            out[k] = round((base + tk - t0) / base, 3)
    return out


def p5_text(r):
    first = r['runs'].get('first') or {}
    out = ['%d hosts (one memdump service each on loopback, own test-driver file), %d VMs per host, forks = hosts.'
           % (r['hosts'], r['vms_per_host']), '',
           '| run | wall time | requests per host: trigger / wait | hosts changed |', '|---|---|---|---|',
           '| first run (creates the dumps) | %s | %s / %s | %s |' % (
               sec(first.get('wall')), first.get('max_trigger_requests'), first.get('max_wait_requests'), first.get('changed_hosts'))]
    for run in r['runs'].get('proxied', []):
        out.append('| re-run, through counting proxies | %s | %s / %s | %s |' % (
            sec(run['wall']), run['max_trigger_requests'], run['max_wait_requests'], run['changed_hosts']))
    for run in r['runs'].get('direct', []):
        out.append('| re-run, direct | %s | — | %s |' % (sec(run['wall']), run['changed_hosts']))
    ex = (r['runs'].get('proxied') or [{}])[-1].get('example_host', {})
    out += ['', 'Re-run wall time (direct): %s; trigger task %s, wait task %s. Requests of one host in a re-run: %s.'
            % (dist(r.get('rerun_wall_direct')), dist(r.get('rerun_trigger_task_sec')), dist(r.get('rerun_wait_task_sec')),
               '; '.join('`%s`' % x for x in ex.get('requests', [])))]
    if not r.get('met'):
        out += ['', '**What limits it.** The requests of one host are listed above: on a re-run memdump_trigger makes %s '
                'lookup request(s) before deciding that nothing is to be created (for example one for dumps in flight, '
                '`GET /api/dumps?vm=...`, and one for completed dumps under the label, `...&label=...&state=completed`); '
                'memdump_wait %s. Wall time is Ansible\'s per-task cost (two module runs per host), not the service (each '
                'answer takes milliseconds).' % (
                    ex.get('trigger'), 'needs its one look' if ex.get('wait') == 1 else 'makes %s' % ex.get('wait')),
                '', '**What would lift it.** One `GET /api/dumps?vm=...&label=...` without a state filter answers both '
                'questions (in-flight and completed records of those VMs under that label), or the POST alone: with a label '
                'and without `force` it already returns the completed dumps with `created: false`.']
    return out


def p6_text(r):
    out = ['| phase | p50 | p95 | p99 | max | requests/s | errors | service CPU per request | CPU share: service / load generator |',
           '|---|---|---|---|---|---|---|---|---|']
    for k, name in (('idle', 'no dump running, 1 request/s per client'), ('dumping', '**2 dumps running, 1 request/s per client**'),
                    ('dumping_5s', '2 dumps, 1 request per 5 s per client (informative)'),
                    ('dumping_closed_loop', '2 dumps, clients back-to-back (saturation, informative)')):
        p = r['phases'].get(k)
        if p and p.get('n'):
            out.append('| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %s | %s | %s ms | %s / %s |' % (
                name, p['median'], p['p95'], p['p99'], p['max'], p['requests_per_sec'], p['errors'],
                p.get('service_cpu_ms_per_request'), p.get('service_cpu_share'), p.get('load_generator_cpu_share')))
    d = r['phases'].get('dumping', {})
    out += ['', '%s clients, each a keep-alive connection sending `GET /api/dumps` every %s s for %s s. Dump states right after '
            'the loaded phases: %s; final: %s.' % (d.get('clients'), d.get('interval_sec'), d.get('seconds'),
                                                   r.get('dump_states_after_load'),
                                                   ', '.join('%s %s in %s' % (x['vm'], x['state'], sec(x['duration_sec'])) for x in r.get('dumps', [])))]
    if not r.get('met'):
        sat = r['phases'].get('dumping_closed_loop', {})
        dump, idle, slow = r['phases'].get('dumping', {}), r['phases'].get('idle', {}), r['phases'].get('dumping_5s', {})
        if (dump.get('service_cpu_share') or 0) < 0.8 and (sat.get('requests_per_sec') or 0) > 1.5 * (dump.get('requests_per_sec') or 1):
            why = ('Not the service\'s throughput: saturated, it answers %s requests/s (%s ms of CPU each), %.1f times '
                   'the %s requests/s offered, and in the loaded phase it used only %s of a CPU. The distribution has a '
                   'long tail instead: median %.1f ms but p95 %.1f ms, and the same without any dump (idle row: p99 %.1f '
                   'ms). Requests that wait 100-500 ms meet a service (or client) that is not running: on 2 cores shared '
                   'with QEMU, libvirtd, the load generator and other test suites (load average in "Conditions"), a '
                   'runnable process can wait that long for a CPU; at the seed\'s polling rate (one request per client '
                   'per 5 s) p99 is %.1f ms. The running dumps move the median (idle %.1f ms): their reader threads, '
                   'which read, hash and write 1 MiB chunks, and the progress thread share the service\'s interpreter '
                   '(GIL, the job lock) with the event loop.' % (
                       sat.get('requests_per_sec'), sat.get('service_cpu_ms_per_request'),
                       (sat.get('requests_per_sec') or 0) / (dump.get('requests_per_sec') or 1), dump.get('requests_per_sec'),
                       dump.get('service_cpu_share'), dump.get('median', 0),
                       dump.get('p95', 0), idle.get('p99', 0), slow.get('p99', 0), idle.get('median', 0)))
        else:
            why = ('Throughput: one service process spends %s ms of CPU per `GET /api/dumps`, so with the %s of a CPU it '
                   'got it saturates at %s requests/s; 200 clients asking once per second queue behind each other.'
                   % (sat.get('service_cpu_ms_per_request'), sat.get('service_cpu_share'), sat.get('requests_per_sec')))
        out += ['', '**What limits it.** ' + why,
                '', '**What would lift it.** A core for the service (on a real libvirt host the service does not share 2 cores '
                'with a test suite), and less work per status request so that each stall delays fewer requests: cache the '
                'serialized list between state changes (the change marker already says when it is stale), a pure ASGI auth '
                'check instead of an HTTP middleware, or several uvicorn workers (status is read-only). To find the stalls '
                'on a quiet machine: `py-spy dump` of the service during the loaded phase.']
    return out


def p7_text(r):
    def pause(m, key, what='median'):
        x = m.get(key, {}).get(what)
        return '–' if x is None else ms(x) if x < 1 else sec(x)
    out = ['Linux guests (Debian kernel, busybox initramfs), TCG: idle, writing (rewriting 64 MiB of random bytes in tmpfs '
           'all the time), and writing on a busy host (a busy loop per host CPU, plus one); %d dumps per method, size and load, '
           'alternating. `paused_sec` is the service\'s record: for live dumps the Suspended → Resumed span of libvirt\'s '
           'lifecycle events as the service receives them (`pause_source` `lifecycle_events`), for memory-only the dump call. '
           '"libvirt downtime" is libvirt\'s downtime statistic of the live dump (the service records it as '
           '`libvirt_downtime_sec`); "events" the same lifecycle span on a connection of the bench\'s own; "heartbeat" the '
           'guest\'s own pause: each guest writes to its second serial port without pause, the host times what arrives, and '
           'this is the gap around the pause. Medians, max in brackets.' % r['reps'],
           '', '| RAM | guest | method | paused_sec | libvirt downtime | events | heartbeat | wall | image MiB |',
           '|---|---|---|---|---|---|---|---|---|']
    for row in r['rows']:
        for method, m in sorted(row['methods'].items()):
            out.append('| %d MiB | %s | %s | %s (%s) | %s | %s (%s) | %s (%s) | %s | %.0f |' % (
                row['ram_mib'], row.get('load', 'idle'), method, pause(m, 'paused_sec'), pause(m, 'paused_sec', 'max'),
                pause(m, 'libvirt_downtime_sec'), pause(m, 'event_pause_sec'), pause(m, 'event_pause_sec', 'max'),
                pause(m, 'heartbeat_gap_sec'), pause(m, 'heartbeat_gap_sec', 'max'), sec(m['duration_sec']['median']),
                m['size_mib']['median']))
    out += ['', 'The live pause does not grow with RAM (only the pages dirtied during the last round are sent while the guest is '
            'stopped); the memory-only pause is the whole dump. The heartbeat gap is the guest\'s own view, plus the moment its '
            'writer needs to run again after the resume; the lifecycle events track it, libvirt\'s downtime statistic stays '
            'below it (it ends when QEMU has sent the last pages, before libvirt resumes the guest), which is why the service '
            'records the events\' span as `paused_sec` and keeps libvirt\'s figure beside it. On the busy host the reader of the '
            'stream gets less CPU; QEMU sizes the last round from the bandwidth it measured, so the copy takes longer while the '
            'pause stays small.']
    return out


def p8_text(r):
    return ['Command: `%s`; image %d bytes of %s, %d repetitions alternating.' % (r['command'], r['size_bytes'], r['guest'], r['reps']),
            '', '| | median MiB/s | min | max | peak RSS MiB |', '|---|---|---|---|---|',
            '| `curl -o` | %s | %s | %s | %s |' % (r['curl_mib_s']['median'], r['curl_mib_s']['min'], r['curl_mib_s']['max'], r['curl_peak_rss_mib']),
            '| memdump_collect download path | %s | %s | %s | %s |' % (
                r['plugin_mib_s']['median'], r['plugin_mib_s']['min'], r['plugin_mib_s']['max'], r['plugin_peak_rss_mib']),
            '', 'Ratio of medians: %s (target %s).' % (r['ratio'], r['target'])]


def p9_text(r):
    out = ['Guest %s (%d MiB, `pc`, Linux, idle), one live dump (%.1f MiB stream, %.1f s) and one memory-only ELF dump '
           '(%.1f MiB, %.1f s) of it. The derived ELF is %.1f MiB long and takes %.1f MiB of disk (zero pages are holes). '
           'Page cache dropped for the file before each read.' % (
               r['guest'], r['ram_mib'], r['stream_bytes'] / 1048576.0, r['live_dump_sec'], r['memory_only_elf_bytes'] / 1048576.0,
               r['memory_only_dump_sec'], r['derived_elf_bytes'] / 1048576.0, r['derived_elf_allocated_bytes'] / 1048576.0),
           '', '| conversion, MiB of stream per second | median | min | max |', '|---|---|---|---|']
    for key, label in (('convert_mib_s', 'converter, one pass'), ('convert_and_check_mib_s', 'converter + page check + both SHA-256s'),
                       ('disk_read_mib_s', 'disk sequential read of the stream (`dd iflag=direct`)'),
                       ('sha256_hashlib_mib_s', 'SHA-256 of the stream alone, Python hashlib in 1 MiB pieces'),
                       ('sha256sum_mib_s', 'SHA-256 of the stream alone, `sha256sum`')):
        if key in r:
            out.append('| %s | %s | %s | %s |' % (label, r[key]['median'], r[key]['min'], r[key]['max']))
    out += ['', 'Pages: %s.' % ', '.join('%s %s' % kv for kv in sorted(r['pages'].items())), '',
            '| Volatility 3 | derived ELF | live stream | memory-only ELF |', '|---|---|---|---|',
            '| open (stack the format layer, read one page), median of %d | %s | %s | %s |' % (
                r['reps'], sec(r['open_sec']['derived ELF']['median']), sec(r['open_sec']['live stream']['median']),
                sec(r['open_sec']['memory-only ELF']['median'])),
            '| `banners.Banners` to the kernel banner (found?) | %s (%s) | %s (%s) | %s (%s) |' % tuple(
                x for k in ('derived ELF', 'live stream', 'memory-only ELF')
                for x in (sec(r['banners'][k]['seconds']), 'yes' if r['banners'][k]['found'] else 'no'))]
    return out


def p10_text(r):
    out = ['%d hosts (one memdump service each on its own loopback address, libvirt test driver, 2 VMs), forks %d, %d '
           'repetitions alternating the variants: the orchestration cost of a fleet, not dump throughput (test-driver '
           'images are 15 bytes). "by hand" is bench/playbooks/by_hand_fleet.yml (`virsh dump`, `sha256sum`, `fetch`).'
           % (r['hosts'], r['forks'], r['reps']), '',
           '| variant | run | wall per host median | controller CPU per host median | whole run wall median | hosts changed |',
           '|---|---|---|---|---|---|']
    for name, title in (('collection', 'vmforensics.memdump.acquire, collect=true'), ('by_hand', 'by hand')):
        for kind in ('first', 'rerun'):
            f = r['figures'][name][kind]
            cells = (title, kind, sec(f['wall_per_host']['median']), sec(f['cpu_per_host']['median']),
                     sec(f['wall']['median']), ', '.join(str(c) for c in f['changed_hosts']))
            out.append('| %s | %s | %s | %s | %s | %s |' % cells)
    retries = sum(run.get('virsh_retries', 0) for kind in ('first', 'rerun') for run in r['runs']['by_hand'][kind])
    out += ['', 'Controller CPU, collection / by hand: first run %s, re-run %s. By hand, %d `virsh dump` attempts hung after '
            'the test driver\'s dump and were cut at 10 s and repeated (counted in its wall time).' % (
                r['cpu_ratio_collection_by_hand']['first'], r['cpu_ratio_collection_by_hand']['rerun'], retries)]
    return out


TEXT = {'P10': p10_text, 'P9': p9_text, 'P7': p7_text, 'P8': p8_text, 'P1': p1_text, 'P2': p2_text, 'P3': p3_text, 'P4': p4_text, 'P5': p5_text, 'P6': p6_text}


def headline(fid, r):
    if r is None:
        return 'not run'
    try:
        if fid == 'P1':
            v = r['variants']
            return 'p50 %s, p95 %s (uri+until: p50 %s)' % (ms(v['memdump_wait'].get('median')), ms(v['memdump_wait'].get('p95')),
                                                           ms(v['uri_until'].get('median')))
        if fid == 'P2':
            v = r['variants']
            return '%s (seed polling %s, uri+until %s), dump %s' % (v['memdump_wait']['requests_while_waiting'],
                                                                    v['seed_poll']['requests_while_waiting'],
                                                                    v['uri_until']['requests_while_waiting'],
                                                                    sec(v['memdump_wait']['dump_sec']))
        if fid == 'P3':
            return '%s (service %s, virsh %s, dd %s)' % (r['ratio_of_medians'], sec(r['times']['service']['median']),
                                                         sec(r['times']['virsh']['median']), sec(r['times']['dd']['median']))
        if fid == 'P4':
            est = tail_ratios(r)
            text = 'wall: up %s; down %s; not answering %s. From the end-of-run tail: up %s; down %s; not answering %s'
            return text % (r['ratios']['up'], r['ratios']['down'], r['ratios']['hang'], est.get('up'), est.get('down'), est.get('hang'))
        if fid == 'P5':
            return '%s request(s) per host per module; re-run %s (%d hosts)' % (
                r['worst_requests_per_host_per_module'], sec(r['rerun_wall_direct'].get('median')), r['hosts'])
        if fid == 'P7':
            return 'worst live pause %s; live / memory-only at the largest size: %s' % (
                ms(r['worst_live_pause_sec']), ', '.join('%s %s' % kv for kv in sorted(r.get('ratios_at_largest', {}).items())))
        if fid == 'P8':
            return '%s (plugin %s MiB/s, curl %s MiB/s; peak RSS %s MiB)' % (
                r['ratio'], r['plugin_mib_s']['median'], r['curl_mib_s']['median'], r['plugin_peak_rss_mib'])
        if fid == 'P9':
            return 'convert %s MiB/s vs disk %s MiB/s (%s) and SHA-256 alone %s MiB/s; open: derived ELF %s, stream %s, memory-only ELF %s' % (
                r['convert_mib_s']['median'], r['disk_read_mib_s']['median'], r['convert_vs_disk'],
                (r.get('sha256_hashlib_mib_s') or {}).get('median'),
                sec(r['open_sec']['derived ELF']['median']), sec(r['open_sec']['live stream']['median']),
                sec(r['open_sec']['memory-only ELF']['median']))
        if fid == 'P10':
            c, h = r['figures']['collection'], r['figures']['by_hand']
            return 'CPU per host %s (by hand %s), re-run %s (by hand %s); %d hosts' % (
                sec(c['first']['cpu_per_host']['median']), sec(h['first']['cpu_per_host']['median']),
                sec(c['rerun']['cpu_per_host']['median']), sec(h['rerun']['cpu_per_host']['median']), r['hosts'])
        if fid == 'P6':
            p = r['phases']['dumping']
            return 'p99 %.1f ms (p50 %.1f ms; idle p99 %.1f ms)' % (p['p99'], p['median'], r['phases']['idle']['p99'])
    except (KeyError, TypeError):
        return 'incomplete, see below'
    return ''


def earlier_doc():
    """The summary rows, sections, header and conditions of the docs/performance.md there is: a figure that this run did not
    measure keeps them (a partial run on a machine that no longer has the earlier results)."""
    try:
        with open(DOC, encoding='utf-8') as f:
            text = f.read()
    except OSError:
        return {}, {}, None
    rows = dict((line.split('|')[1].strip(), line) for line in text.splitlines() if line.startswith('| P'))
    sections = {}
    for part in text.split('\n## ')[1:]:
        head = part.split(':', 1)[0] if part.startswith('P') else part.split('\n', 1)[0]
        sections[head] = '## ' + part.rstrip('\n')
    return rows, sections, text.split('\n## Summary', 1)[0]


def write():
    m = load('machine.json') or {}
    earlier_rows, earlier_sections, earlier_header = earlier_doc()
    loads = []
    try:
        with open(os.path.join(b.RESULTS, 'load.txt')) as f:
            loads = [float(line.split()[1]) for line in f if line.strip()]
    except OSError:
        pass
    results = {fid: load('%s.json' % fid.lower()) for fid in FIGURES}
    out = ['# Performance', '',
           'Generated by `make bench` (`bash bench/run.sh`) on %s; do not edit by hand. Every figure compares the '
           'variants side by side in one run, alternating them, with the real components the tests use (libvirtd with TCG '
           'guests, the memdump service, `ansible-playbook`, InfluxDB 1.x), all on 127.0.0.1. A figure re-run alone '
           '(`bash bench/run.sh P3`) replaces only its section; each section says when it was taken.' % m.get('date', '?'), '',
           '## Summary', '', '| id | figure | target | measured | |', '|---|---|---|---|---|']
    titles = {'P1': 'completion → `memdump_wait` returns', 'P2': 'HTTP requests per VM while waiting on a ~60 s dump',
              'P3': 'service dump incl. SHA-256 / `virsh dump --memory-only` (1 GiB, random RAM)',
              'P4': '200-task playbook with InfluxDB callback / without', 'P5': 're-run of a finished incident, many hosts',
              'P6': 'status latency, 200 concurrent clients, 2 dumps running',
              'P7': 'guest pause, live / memory-only dumps (1, 2, 4 GiB, idle and writing Linux guests, quiet and busy host)',
              'P8': 'collection throughput, memdump_collect / `curl -o`',
              'P9': 'live dump → ELF conversion, and Volatility 3 on the derived ELF / stream / memory-only ELF (4.5 GiB guest)',
              'P10': 'a fleet of 50 hosts, 2 VMs each: acquisition with collection and a re-run, collection / by hand'}
    targets = {'P1': 'p50 ≤ 50 ms', 'P2': '≤ 3', 'P3': '≤ 1.10', 'P4': '≤ 1.02; down/not answering ≤ 1.05',
               'P5': '≤ 1 request per host per module', 'P6': 'p99 < 50 ms',
               'P7': 'live pause p50 ≤ 50 ms and live / memory-only ≤ 0.01 at 4 GiB', 'P8': '≥ 0.80, flat RSS',
               'P9': 'conversion ≥ disk sequential read; derived ELF opens as fast as a memory-only ELF',
               'P10': 'a re-run changes nothing; wall and controller CPU per host side by side'}
    # Figures this run did not measure keep what the document said of them, and then its header and conditions too
    # (they describe the run those figures come from); each section says when and where it was taken.
    kept = [fid for fid in FIGURES if results[fid] is None and fid in earlier_sections]
    if kept and earlier_header and 'Conditions' in earlier_sections:
        out[:4] = [earlier_header.rstrip('\n'), '']
    for fid in FIGURES:
        if fid in kept:
            out.append(earlier_rows.get(fid) or '| %s | %s | %s | see its section | |' % (fid, titles[fid], targets[fid]))
            continue
        out.append('| %s | %s | %s | %s | %s |' % (fid, titles[fid], targets[fid], headline(fid, results[fid]), verdict(results[fid])))
    conditions = ['', '## Conditions', '',
                  '- Machine: %s CPUs (%s), %s RAM, disk %s; %s, kernel %s.' % (
                      m.get('nproc'), m.get('cpu'), m.get('memory'), m.get('disk'), m.get('os'), m.get('kernel')),
                  '- Software: Python %s, %s, libvirt (%s), %s, %s.' % (
                      m.get('python'), ''.join(m.get('ansible_core') or []), m.get('libvirt'), ''.join(m.get('qemu') or []),
                      m.get('influxdb')),
                  '- Load: 1-minute load average %s at the start; during the run median %s, max %s (sampled every 5 s). %s'
                  % (m.get('load_at_start'), '%.1f' % sorted(loads)[len(loads) // 2] if loads else '?', '%.1f' % max(loads) if loads else '?',
                     # The benchmark's own guests and services load the 2 cores; well above that, something else was running.
                     'The load was above what the benchmark itself makes, so absolute times are noisy: read the medians, the spreads '
                     'and the ratios between variants measured in the same run.' if loads and sorted(loads)[len(loads) // 2] > 2.5 else
                     'Nothing but the benchmark ran; its own guests and services share the 2 cores, so read the ratios between '
                     'variants measured in the same run as well as the absolute times.'),
                  '- Guests: TCG (`type=\'qemu\'`), created by `tests/stack/stack.sh bench-up` and removed by `bench-down`: '
                  '`memdump-bench-random` (1 GiB, RAM filled from 1 MiB up with random bytes by QEMU\'s loader), '
                  '`memdump-bench-a`/`-b` (1 GiB), `memdump-bench-small` (256 MiB). Dumps that must last a given time are '
                  'slowed by capping the CPU of the guest\'s QEMU emulator threads, which write the dump (libvirt\'s cgroup '
                  '`emulator/cpu.cfs_quota_us`, what `virsh schedinfo --live emulator_quota=` sets; written directly because '
                  'libvirt holds the domain\'s job lock during a dump); the service still reads, hashes and stores the whole '
                  'stream.',
                  '- Statistics: median, p95 (nearest rank), min–max spread, n = samples.', '']
    out += ['', earlier_sections['Conditions'], ''] if kept and 'Conditions' in earlier_sections else conditions
    out += ['## Reproduce', '', '```', 'make bench            # = bash bench/run.sh: stack up if needed, bench-up, P1..P6, bench-down, this file',
            'bash bench/run.sh P3  # one figure (needs the stack and bench-up; run.sh does both)', '```', '']
    for fid in FIGURES:
        r = results[fid]
        if fid in kept:
            out += [earlier_sections[fid], '']
            continue
        out += ['## %s: %s' % (fid, titles[fid]), '', 'Target: %s. Result: %s.' % (targets[fid], verdict(r)), '']
        if r is None:
            out += ['Not measured in this run (a component was missing or the script failed; see bench/results/).', '']
            continue
        try:
            out += TEXT[fid](r)
        except (KeyError, TypeError, ZeroDivisionError) as e:
            out.append('Result incomplete (%s); raw data in bench/results/%s.json.' % (e, fid.lower()))
        out += ['', 'Taken %s on %s CPUs (%s); load average before/after: %s / %s. Command: `%s`.' % (
            r.get('taken_at'), m.get('nproc'), m.get('cpu'), r.get('load_before'), r.get('load_after'), r.get('command')), '']
    with open(DOC, 'w') as f:
        f.write('\n'.join(out).rstrip() + '\n')
    b.log('wrote %s' % DOC)


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else 'write'
    {'machine': machine, 'sample': sample, 'write': write}[what]()


if __name__ == '__main__':
    main()
