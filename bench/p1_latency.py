"""P1: time from a dump's completion on the service to the waiting task returning.

Three clients wait on the same guest, alternating (A B C, B C A, ...):

* ``memdump_wait``: vmforensics.memdump.memdump_trigger + memdump_wait against the service
  (long-poll ``wait``/``marker``);
* ``seed_poll``: the same two tasks against the test double of the seed's core service
  (tests/doubles/core_service.py), so memdump_wait falls back to polling every 5 s, as the seed's
  client did;
* ``uri_until``: ansible.builtin.uri POST, then uri GET with ``until`` / ``delay: 5``;
* ``module_direct``: the memdump_wait module run as a process exactly as Ansible runs it on a host
  (``python -m ...memdump_wait args.json``), without the controller: its exit is when a host
  would hand its result back. This splits the playbook figure into module and Ansible shares.

Every client talks to the service through a counting proxy on loopback, which records when the
service's answer went out: ``answer`` latency = that moment minus ``finished_at``.

Latency = the wait task's end (``ansible.builtin.json`` callback, when the controller got the
result) minus the dump's ``finished_at`` (set by the service once the image is whole, hashed and
renamed). Same machine, same clock. A sample whose wait task started after the dump had already
finished says nothing about waiting and is discarded (counted in the result).
The guest's dump is slowed with ``virsh schedinfo`` (emulator CPU quota) to last a few seconds,
so that the wait task is always already waiting when the dump completes.
"""

import json
import os
import subprocess
import sys
import time

import benchlib as b

VARIANTS = ['memdump_wait', 'seed_poll', 'uri_until', 'module_direct']


def run_module_direct(url, vm):
    """memdump_wait as a host runs it; returns (dump_id, start, exit) epoch times."""
    dump_id = b.post_dumps(url, [vm])[0]['dump_id']
    args = os.path.join(b.RESULTS, 'p1-args.json')
    with open(args, 'w') as f:
        json.dump({'ANSIBLE_MODULE_ARGS': {'url': url, 'dumps': [dump_id], 'wait_timeout': 600}}, f)
    run_env = dict(os.environ, PYTHONPATH=b.collections_path())
    start = time.time()
    proc = subprocess.run([sys.executable, '-m', 'ansible_collections.vmforensics.memdump.plugins.modules.memdump_wait', args],
                          capture_output=True, text=True, env=run_env, timeout=900, check=False)
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError('memdump_wait module rc=%s: %s %s' % (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    return dump_id, start, end, end - start


FLOOR_CODE = ('import sys, time; import ansible.module_utils.basic, ansible.module_utils.urls; '
              'sys.stdout.write(repr(time.time())); sys.stdout.flush()')


def exit_floor(reps=5):
    """How long a Python process that imported what a module imports takes to exit after its last
    output (interpreter finalization): a normal exit, after gc.freeze() (what the memdump modules
    do before exit_json), and with os._exit()."""
    out = {'normal': [], 'gc_freeze': [], 'os_exit': []}
    for dummy in range(reps):
        for kind, code in (('normal', FLOOR_CODE), ('gc_freeze', FLOOR_CODE + '; import gc; gc.freeze()'),
                           ('os_exit', FLOOR_CODE + '; import os; os._exit(0)')):
            proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=True)
            out[kind].append(time.time() - float(proc.stdout))
    return {k: b.summary(v, 3) for k, v in out.items()}


def one_run(variant, services, proxies, vm):
    key = 'core' if variant == 'seed_poll' else 'full'
    svc, proxy = services[key], proxies[key]
    proxy.reset()
    if variant == 'module_direct':
        dump_id, wait_start, wait_end, wall = run_module_direct(proxy.url, vm)
    else:
        playbook = os.path.join(b.PLAYBOOKS, 'uri_until.yml' if variant == 'uri_until' else 'memdump_wait.yml')
        res = b.run_playbook(playbook, {'memdump_url': proxy.url, 'bench_vms': [vm], 'poll_interval': 5})
        if res['rc'] != 0:
            raise RuntimeError(b.playbook_failure(res))
        dummy, started = b.task_result(res['json'], 'Start the dumps')
        dump_id = (started['json'] if variant == 'uri_until' else started)['dumps'][0]['dump_id']
        task, dummy = b.task_result(res['json'], 'Wait for the dumps')
        wait_start = b.parse_iso(task['duration']['start'])
        wait_end = b.parse_iso(task['duration']['end'])
        wall = res['wall']
    requests = proxy.snapshot()
    rec = b.find_dump(svc.url, dump_id)
    finished = b.parse_iso(rec['finished_at'])
    b.delete_dump(svc.url, dump_id)
    last_answer = max([r['end'] for r in requests if r['method'] == 'GET'] or [None])
    return {'variant': variant, 'latency': wait_end - finished, 'valid': wait_start < finished,
            'answer': (last_answer - finished) if last_answer else None,
            'after_answer': (wait_end - last_answer) if last_answer else None,
            'wait_gets': len([r for r in requests if r['method'] == 'GET' and 'dump' in r['path']]),
            'dump_sec': rec.get('duration_sec'), 'state': rec['state'], 'wall': wall}


def calibrate(svc, vm, quota):
    """Finds an emulator quota at which the guest's dump lasts 3-12 s (a few tries at most)."""
    duration = None
    for dummy in range(4):
        b.set_emulator_quota(vm, quota)
        dump = b.post_dumps(svc.url, [vm])[0]
        rec = b.wait_dump(svc.url, dump['dump_id'], timeout=300)
        b.delete_dump(svc.url, dump['dump_id'])
        duration = rec.get('duration_sec') or 0
        b.log('P1 calibration: quota %d us/100 ms -> dump %.1f s' % (quota, duration))
        if duration < 3:
            quota = max(1000, int(quota * duration / 6.0)) if duration > 0 else quota // 2
        elif duration > 12:
            quota = int(quota * duration / 6.0)
        else:
            break
    return quota, duration


def main():
    vm = b.env('MEMDUMP_BENCH_VM_SMALL')
    uri = b.env('MEMDUMP_TEST_LIBVIRT_URI', 'qemu:///system')
    reps = b.int_env('MEMDUMP_BENCH_P1_REPS', 8)
    load_before = b.loadavg()
    services = {'full': b.start_service('p1-full', uri), 'core': b.start_core_service('p1-core', uri)}
    proxies = {k: b.CountingProxy(v.url) for k, v in services.items()}
    samples = []
    try:
        quota, cal = calibrate(services['full'], vm, 3000)
        for rep in range(reps):
            for variant in b.rotate(VARIANTS, rep):
                s = one_run(variant, services, proxies, vm)
                b.log('P1 rep %d %-13s latency %.3f s, answer %.3f s (dump %.1f s, valid %s)' % (
                    rep, variant, s['latency'], s['answer'] if s['answer'] is not None else -1, s['dump_sec'] or 0, s['valid']))
                samples.append(s)
        floor = exit_floor()
    finally:
        b.set_emulator_quota(vm, -1)
        for proxy in proxies.values():
            proxy.close()
        for svc in services.values():
            svc.stop()
    per = {}
    for variant in VARIANTS:
        mine = [s for s in samples if s['variant'] == variant and s['valid']]
        per[variant] = b.summary([s['latency'] for s in mine])
        per[variant]['answer'] = b.summary([s['answer'] for s in mine])
        per[variant]['after_answer'] = b.summary([s['after_answer'] for s in mine])
        per[variant]['wait_gets'] = b.summary([s['wait_gets'] for s in mine])
        per[variant]['discarded'] = len([s for s in samples if s['variant'] == variant and not s['valid']])
    p50 = per['memdump_wait'].get('median')
    b.write_result('P1', {
        'title': 'completion -> memdump_wait returns',
        'target': 'p50 <= 50 ms (memdump_wait), against uri+until with delay: 5',
        'met': p50 is not None and p50 <= 0.050,
        'variants': per,
        'dump_sec': b.summary([s['dump_sec'] for s in samples]),
        'guest': vm, 'emulator_quota_us': quota, 'calibration_dump_sec': cal, 'reps': reps,
        'python_exit_after_output': floor, 'samples': samples, 'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p1_latency.py (MEMDUMP_BENCH_P1_REPS=%d)' % reps,
        'measured_at': time.time(),
    })


if __name__ == '__main__':
    main()
