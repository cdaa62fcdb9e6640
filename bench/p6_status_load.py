"""P6: status latency under 200 concurrent clients while 2 dumps run.

One memdump service on the real hypervisor. Phases, each bounded in time:

1. ``idle``: 200 clients, no dump running;
2. ``dumping``: the same while two 1 GiB guests are being dumped (their QEMU emulator threads are
   capped with ``virsh schedinfo`` so that the dumps outlast the phase; the service still reads,
   hashes and writes both streams);
3. ``dumping_5s``: informative; the same clients polling every 5 s (the seed's poll interval),
   each request on a new connection;
4. ``dumping_closed_loop``: informative; 200 clients sending back-to-back (no pause), i.e. the
   service's saturation point on this machine, still while the dumps run.

For each phase the service's own CPU time per answered request is recorded (from /proc), which
bounds the request rate one service process can sustain.

A client is one keep-alive HTTP/1.1 connection to 127.0.0.1 sending ``GET /api/dumps`` (the
seed's status view) once per MEMDUMP_BENCH_P6_INTERVAL seconds (default 1, random start phase),
timing each request from send to the last byte of the answer. The load generator is one asyncio
process on the same 2-core machine, so its own scheduling delays are included.
"""

import asyncio
import random
import time
import urllib.parse

import benchlib as b


async def one_client(host, port, deadline, interval, latencies, errors):
    """Keep-alive when asking at least every 4 s (the service closes idle connections after 5 s);
    otherwise a new connection per request, its set-up included in the latency."""
    request = ('GET /api/dumps HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/json\r\n\r\n' % (host, port)).encode()
    keepalive = interval < 4
    conn = None
    try:
        if keepalive:
            conn = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        if interval:
            await asyncio.sleep(random.uniform(0, interval))
        while time.monotonic() < deadline:
            started = time.monotonic()
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            reader, writer = conn
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), 30)
            length = 0
            for line in head.split(b'\r\n'):
                if line.lower().startswith(b'content-length:'):
                    length = int(line.split(b':', 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 30)
            latencies.append(time.monotonic() - started)
            if not head.startswith(b'HTTP/1.1 200'):
                errors.append(head.split(b'\r\n', 1)[0].decode(errors='replace'))
            if not keepalive:
                writer.close()
                conn = None
            if interval:
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        errors.append('%s: %s' % (type(e).__name__, e))
    finally:
        if conn is not None:
            conn[1].close()


async def load(url, clients, seconds, interval):
    parts = urllib.parse.urlsplit(url)
    b.check_loopback(url)
    latencies, errors = [], []
    deadline = time.monotonic() + seconds
    tasks = [one_client(parts.hostname, parts.port, deadline, interval, latencies, errors) for dummy in range(clients)]
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 60)
    return latencies, errors


def phase(svc, clients, seconds, interval):
    started = time.monotonic()
    cpu0, own0 = b.cpu_seconds(svc.proc.pid), time.process_time()
    latencies, errors = asyncio.run(load(svc.url, clients, seconds, interval))
    took = time.monotonic() - started
    cpu, own = b.cpu_seconds(svc.proc.pid) - cpu0, time.process_time() - own0
    s = b.summary([x * 1000.0 for x in latencies], 2)
    s.pop('values', None)
    s.update({'errors': len(errors), 'error_examples': errors[:5], 'requests_per_sec': round(len(latencies) / took, 1),
              'clients': clients, 'seconds': seconds, 'interval_sec': interval,
              'service_cpu_ms_per_request': round(1000.0 * cpu / max(1, len(latencies)), 2),
              'service_cpu_share': round(cpu / took, 2), 'load_generator_cpu_share': round(own / took, 2)})
    return s


def main():
    uri = b.env('MEMDUMP_TEST_LIBVIRT_URI', 'qemu:///system')
    vms = [b.env('MEMDUMP_BENCH_VM_A'), b.env('MEMDUMP_BENCH_VM_B')]
    clients = b.int_env('MEMDUMP_BENCH_P6_CLIENTS', 200)
    seconds = b.int_env('MEMDUMP_BENCH_P6_SECONDS', 15)
    interval = float(b.env('MEMDUMP_BENCH_P6_INTERVAL', '1'))
    load_before = b.loadavg()
    svc = b.start_service('p6', uri)
    phases = {}
    dumps = []
    try:
        phases['idle'] = phase(svc, clients, seconds, interval)
        b.log('P6 idle: p99 %.1f ms' % phases['idle']['p99'])
        for vm in vms:
            b.set_emulator_quota(vm, 5000, 1000000)  # 0.5 % of a CPU: the dumps outlast the phases
        dumps = b.post_dumps(svc.url, vms)
        for d in dumps:
            b.wait_dump(svc.url, d['dump_id'], states=('running', 'completed', 'failed'), timeout=120)
        phases['dumping'] = phase(svc, clients, seconds, interval)
        b.log('P6 dumping: p99 %.1f ms' % phases['dumping']['p99'])
        phases['dumping_5s'] = phase(svc, clients, seconds, 5.0)
        b.log('P6 dumping, 5 s interval: p99 %.1f ms' % phases['dumping_5s']['p99'])
        phases['dumping_closed_loop'] = phase(svc, clients, 5, 0)
        b.log('P6 closed loop: p99 %.1f ms, %.0f req/s' % (phases['dumping_closed_loop']['p99'],
                                                           phases['dumping_closed_loop']['requests_per_sec']))
        running_after = [b.find_dump(svc.url, d['dump_id'])['state'] for d in dumps]
        for vm in vms:
            b.set_emulator_quota(vm, -1)
        final = [b.wait_dump(svc.url, d['dump_id'], timeout=300) for d in dumps]
    finally:
        for vm in vms:
            b.set_emulator_quota(vm, -1)
        svc.stop()
    p99 = phases.get('dumping', {}).get('p99')
    b.write_result('P6', {
        'title': 'status latency, %d concurrent clients, 2 dumps running' % clients,
        'target': 'p99 < 50 ms',
        'met': p99 is not None and p99 < 50 and all(s == 'running' for s in running_after),
        'phases': phases, 'dump_states_after_load': running_after,
        'dumps': [{'vm': r['vm'], 'state': r['state'], 'duration_sec': r.get('duration_sec'), 'size_bytes': r.get('size_bytes')}
                  for r in final],
        'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p6_status_load.py (MEMDUMP_BENCH_P6_CLIENTS=%d, MEMDUMP_BENCH_P6_SECONDS=%d, '
                   'MEMDUMP_BENCH_P6_INTERVAL=%g)' % (clients, seconds, interval),
    })


if __name__ == '__main__':
    main()
