"""P7 (issue 15): guest pause and wall time of live and memory-only dumps through the service, side by side.

Idle Linux guests of 1, 2 and 4 GiB (the stack's Debian kernel and busybox initramfs: a copy of the definition of
``stack.sh linux-up``'s guest with another name and memory size). Per dump: the service's ``paused_sec`` (libvirt's
downtime for live, the dump call for memory-only), its ``duration_sec``, the pause seen in libvirt's lifecycle events
(``virsh event --timestamp``: Suspended .. Resumed) and the image size.

    bash bench/run.sh P7      (or, with the stack's env sourced: python bench/p7_live.py)
"""

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import benchlib as b

METHODS = ['memory-only', 'live']
# idle: the guest only sleeps; writing: it rewrites 64 MiB of random bytes in tmpfs all the time.
LOADS = ['idle', 'writing']
sys.path.insert(0, os.path.join(b.REPO, 'tests'))
from libvirt_events import LifecycleWatch  # noqa: E402  pylint: disable=wrong-import-position,import-error


def start_linux_guest(template, name, mib, console, writing=False):
    """A copy of the stack's Linux guest with another name and memory size; returns once its init printed READY.
    ``writing``: its init keeps rewriting 64 MiB of random bytes in tmpfs (it dirties memory all the time)."""
    root = ET.fromstring(subprocess.check_output(b.VIRSH + ['dumpxml', '--inactive', template], text=True))
    root.find('name').text = name
    if writing:
        cmdline = root.find('./os/cmdline')
        cmdline.text = (cmdline.text or '') + ' memdump.writer=1'
    root.remove(root.find('uuid'))
    for tag in ('memory', 'currentMemory'):
        element = root.find(tag)
        if element is not None:
            element.text, element.attrib = str(mib * 1024), {'unit': 'KiB'}
    root.find('./devices/serial/source').set('path', console)
    xml_path = console + '.xml'
    with open(xml_path, 'w') as f:
        f.write(ET.tostring(root, encoding='unicode'))
    stop_guest(name)
    subprocess.check_call(b.VIRSH + ['define', xml_path], stdout=subprocess.DEVNULL)
    subprocess.check_call(b.VIRSH + ['start', name], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if os.path.exists(console) and b'READY MEMDUMP-LINUX-MARKER' in open(console, 'rb').read():
            return
        time.sleep(0.5)
    raise RuntimeError('guest %s did not print READY within 180 s; see %s' % (name, console))


def stop_guest(name):
    subprocess.call(b.VIRSH + ['destroy', name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.call(b.VIRSH + ['undefine', name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    uri = b.env('MEMDUMP_TEST_LIBVIRT_URI', 'qemu:///system')
    template = b.env('MEMDUMP_TEST_LINUX_VM')
    sizes = [int(x) for x in b.env('MEMDUMP_BENCH_P7_SIZES_MIB', '1024 2048 4096').split()]
    reps = b.int_env('MEMDUMP_BENCH_P7_REPS', 3)
    load_before = b.loadavg()
    svc = b.start_service('p7', uri)
    rows = []
    try:
        for mib, load in [(mib, load) for mib in sizes for load in LOADS]:
            vm = 'memdump-bench-linux-%d-%s' % (mib, load)
            start_linux_guest(template, vm, mib, os.path.join(b.workdir('p7-%d-%s' % (mib, load)), 'console.log'),
                              writing=load == 'writing')
            try:
                samples = {m: {'paused_sec': [], 'event_pause_sec': [], 'duration_sec': [], 'size_mib': []} for m in METHODS}
                for rep in range(reps):
                    for method in b.rotate(METHODS, rep):
                        watch = LifecycleWatch(uri, vm)
                        dump = b.post_dumps(svc.url, [vm], method=method)[0]
                        rec = b.wait_dump(svc.url, dump['dump_id'], timeout=600)
                        event_pause = sum(watch.pauses())
                        if rec['state'] != 'completed':
                            raise RuntimeError('%s dump of %s failed: %s' % (method, vm, rec.get('message')))
                        row = samples[method]
                        row['paused_sec'].append(rec['paused_sec'])
                        row['event_pause_sec'].append(event_pause)
                        row['duration_sec'].append(rec['duration_sec'])
                        row['size_mib'].append(rec['size_bytes'] / 1048576.0)
                        b.log('P7 %d MiB %s rep %d %-11s paused %.3f s (events %.3f s), took %.2f s, image %.0f MiB'
                              % (mib, load, rep, method, rec['paused_sec'], event_pause, rec['duration_sec'], row['size_mib'][-1]))
                        b.delete_dump(svc.url, dump['dump_id'])
                        time.sleep(1)
            finally:
                stop_guest(vm)
            rows.append({'ram_mib': mib, 'load': load, 'methods': {m: {k: b.summary(v, 3) for k, v in s.items()} for m, s in samples.items()}})
    finally:
        svc.stop()
    worst_live = max(r['methods']['live']['paused_sec']['max'] for r in rows)
    # The targets, at the largest size, for each load: live pause p50 <= 50 ms, and live / memory-only <= 0.01.
    largest = [r for r in rows if r['ram_mib'] == max(sizes)]
    ratios = {r['load']: r['methods']['live']['paused_sec']['median'] / r['methods']['memory-only']['paused_sec']['median']
              for r in largest}
    met = all(r['methods']['live']['paused_sec']['median'] <= 0.050 for r in largest) and all(x <= 0.01 for x in ratios.values())
    b.write_result('P7', {
        'title': 'guest pause and wall time: live vs memory-only, idle and writing Linux guests (TCG)',
        'target': 'at %d MiB: live pause p50 <= 0.050 s and live / memory-only pause <= 0.01, idle and writing' % max(sizes),
        'met': met,
        'ratios_at_largest': {k: round(v, 4) for k, v in ratios.items()},
        'worst_live_pause_sec': worst_live,
        'reps': reps,
        'rows': rows,
        'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p7_live.py (MEMDUMP_BENCH_P7_SIZES_MIB="%s", MEMDUMP_BENCH_P7_REPS=%d)' % (' '.join(map(str, sizes)), reps),
    })


if __name__ == '__main__':
    main()
