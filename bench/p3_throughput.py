"""P3: the service's dump time (image hashed with SHA-256) against ``virsh dump --memory-only``,
same 1 GiB guest whose RAM is random bytes; both against ``dd`` of the same size to the same disk.

Variants, in a shuffled order in each repetition (seeded, so a run can be repeated; a fixed
rotation would always put the same variant behind the same predecessor, whose writeback it would
inherit), each preceded by ``sync`` and a pause:

* ``service``: POST /api/dumps, then long-poll until ``completed``: wall time seen by the client,
  which includes the SHA-256 (libvirt writes into a FIFO that the service drains, hashing and
  writing the image in one pass, moving it to disk in 8 MiB steps);
* ``virsh``: ``virsh dump --memory-only --format elf`` into the same directory (no hash; libvirt's
  iohelper writes the file and fdatasyncs it);
* ``virsh_then_sha256``: informative, the virsh time plus the SHA-256 of the finished file read
  back (what hashing afterwards would cost, page cache allowing);
* ``fifo_reader``: ``virsh dump`` into a FIFO drained by the service's own reader
  (``memdump_service.virt.FifoHasher``) without the HTTP and job layers: the service's overhead;
* ``fifo_reader_no_writeback``: the same with the streaming writeback switched off (the image
  sits in the page cache until one fsync at the end): what the streaming writeback buys;
* ``dd``: ``dd if=/dev/zero bs=1M`` of the image's size into the same directory;
* ``dd_fdatasync``: the same with ``conv=fdatasync`` (data on the disk, not in the page cache).

Each variant also records the machine's CPU time split (/proc/stat: user, system, iowait,
steal) and, where the kernel exposes it, how much free memory it reported to the hypervisor: these
show when the host, not the variant, set the pace.
"""

import hashlib
import os
import random
import subprocess
import time

import benchlib as b
from memdump_service import virt
# benchlib puts tests/integration (the shared conftest) on sys.path.
from conftest import sha256_file  # noqa: E402  pylint: disable=import-error

VARIANTS = ['service', 'virsh', 'fifo_reader', 'fifo_reader_no_writeback', 'dd', 'dd_fdatasync']
CPU_FIELDS = ('user', 'system', 'iowait', 'steal', 'reported_mib')
# Free memory the guest kernel handed back to the hypervisor (virtio-balloon free page reporting);
# touching such memory again costs a fault served by the host. Absent on most machines.
REPORTED_KIB = '/sys/module/page_reporting/parameters/reported_kib'


def cpu_times():
    """Machine-wide CPU seconds by kind (/proc/stat), and MiB of free memory reported to the host so far."""
    with open('/proc/stat') as f:
        values = [int(v) for v in f.readline().split()[1:]]
    hz = os.sysconf('SC_CLK_TCK')
    try:
        with open(REPORTED_KIB) as f:
            reported = int(f.read()) / 1024
    except (OSError, ValueError):
        reported = 0.0
    return {'user': (values[0] + values[1]) / hz, 'system': (values[2] + values[5] + values[6]) / hz,
            'iowait': values[4] / hz, 'steal': values[7] / hz, 'reported_mib': reported}


def timed(cmd):
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.monotonic() - started


class FifoHasherWithoutWriteback(virt.FifoHasher):
    """The service's reader with the streaming writeback off: the image stays in the page cache until one
    fsync at the end (the ``fifo_reader_no_writeback`` row: what the streaming writeback buys)."""

    def writeback(self, out_fd):
        moves = super().writeback(out_fd)
        moves.enabled = False
        return moves


def fifo_reader_dump(vm, out_dir, target, writeback=True):
    """virsh dump into a FIFO drained by the service's FifoHasher. Returns seconds."""
    fifo = os.path.join(out_dir, 'bench.fifo')
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo, 0o600)
    try:
        started = time.monotonic()
        hasher = (virt.FifoHasher if writeback else FifoHasherWithoutWriteback)(fifo, target)
        hasher.start()
        try:
            subprocess.run(b.VIRSH + ['dump', '--memory-only', '--format', 'elf', vm, fifo], check=True, capture_output=True, timeout=600)
        finally:
            hasher.finish()
        took = time.monotonic() - started
    finally:
        os.unlink(fifo)
    if hasher.error:
        raise RuntimeError('FifoHasher: %s' % hasher.error)
    return took


def page_cache_costs(out_dir, size, reps=3):
    """Seconds to write ``size`` bytes with dd into fresh page cache (a new file) and into page cache
    that is already allocated (the same file overwritten in place): the price of allocating memory here."""
    target = os.path.join(out_dir, 'bench-page-cache.img')
    dd = ['dd', 'if=/dev/zero', 'of=' + target, 'bs=1M', 'count=%d' % size, 'iflag=count_bytes', 'status=none']
    out = {'fresh': [], 'reused': []}
    try:
        for dummy in range(reps):
            if os.path.exists(target):
                os.unlink(target)
            os.sync()
            time.sleep(1)
            out['fresh'].append(timed(dd))
            out['reused'].append(timed(dd + ['conv=notrunc']))
    finally:
        if os.path.exists(target):
            os.unlink(target)
    return {k: b.summary(v, 3) for k, v in out.items()}


def sha256_rate(mib=256):
    """SHA-256 throughput of one core here, right now (MB/s), over data in memory."""
    data = os.urandom(mib << 20)
    started = time.monotonic()
    hashlib.sha256(data).hexdigest()
    return round(mib * 1.048576 / (time.monotonic() - started))


def main():
    uri = b.env('MEMDUMP_TEST_LIBVIRT_URI', 'qemu:///system')
    vm = b.env('MEMDUMP_BENCH_VM_RANDOM')
    reps = b.int_env('MEMDUMP_BENCH_P3_REPS', 6)
    pause = float(b.env('MEMDUMP_BENCH_P3_PAUSE', '2'))
    shuffle = random.Random(b.int_env('MEMDUMP_BENCH_P3_SEED', 7))
    load_before = b.loadavg()
    b.set_emulator_quota(vm, -1)
    svc = b.start_service('p3', uri)
    out_dir = svc.dump_dir
    names = VARIANTS + ['virsh_then_sha256', 'service_duration_sec', 'service_paused_sec']
    times = {v: [] for v in names}
    cpu = {v: {k: [] for k in CPU_FIELDS} for v in VARIANTS}
    orders = []
    size = None
    checked = None
    page_cache = None
    rates = [sha256_rate()]
    try:
        # One dump first: the image size for dd, and a check that the recorded hash is the file's.
        first = b.post_dumps(svc.url, [vm])[0]
        rec = b.wait_dump(svc.url, first['dump_id'], timeout=600)
        if rec['state'] != 'completed':
            raise RuntimeError('service dump of %s failed: %s' % (vm, rec.get('message')))
        size = rec['size_bytes']
        checked = sha256_file(rec['dump_path']) == rec['sha256']
        b.delete_dump(svc.url, first['dump_id'])
        for rep in range(reps):
            order = list(VARIANTS)
            shuffle.shuffle(order)
            orders.append(order)
            for variant in order:
                os.sync()
                time.sleep(pause)
                target = os.path.join(out_dir, 'bench-%s.img' % variant)
                before = cpu_times()
                if variant == 'service':
                    started = time.monotonic()
                    dump = b.post_dumps(svc.url, [vm])[0]
                    rec = b.wait_dump(svc.url, dump['dump_id'], timeout=600)
                    took = time.monotonic() - started
                    if rec['state'] != 'completed':
                        raise RuntimeError('service dump failed: %s' % rec.get('message'))
                    times['service_duration_sec'].append(rec['duration_sec'])
                    times['service_paused_sec'].append(rec.get('paused_sec'))
                    b.delete_dump(svc.url, dump['dump_id'])
                elif variant == 'virsh':
                    took = timed(b.VIRSH + ['dump', '--memory-only', '--format', 'elf', vm, target])
                    started = time.monotonic()
                    sha256_file(target)
                    times['virsh_then_sha256'].append(took + time.monotonic() - started)
                elif variant.startswith('fifo_reader'):
                    took = fifo_reader_dump(vm, out_dir, target, writeback=variant == 'fifo_reader')
                else:
                    cmd = ['dd', 'if=/dev/zero', 'of=' + target, 'bs=1M', 'count=%d' % size, 'iflag=count_bytes', 'status=none']
                    took = timed(cmd + (['conv=fdatasync'] if variant == 'dd_fdatasync' else []))
                after = cpu_times()
                for k in CPU_FIELDS:
                    cpu[variant][k].append(after[k] - before[k])
                if os.path.exists(target):
                    os.unlink(target)
                times[variant].append(took)
                b.log('P3 rep %d %-24s %.2f s  (sys %.2f s, iowait %.2f s, steal %.2f s, reported %.0f MiB)'
                      % (rep, variant, took, cpu[variant]['system'][-1], cpu[variant]['iowait'][-1], cpu[variant]['steal'][-1],
                         cpu[variant]['reported_mib'][-1]))
        rates.append(sha256_rate())
        page_cache = page_cache_costs(out_dir, size)
    finally:
        svc.stop()
    stats = {k: b.summary(v, 3) for k, v in times.items()}
    paired = [s / v for s, v in zip(times['service'], times['virsh'])]

    def over(a, c):
        return round(stats[a]['median'] / stats[c]['median'], 3) if times[a] and times[c] else None
    ratio = over('service', 'virsh')
    b.write_result('P3', {
        'title': 'service dump (with SHA-256) / virsh dump --memory-only, 1 GiB random guest',
        'target': '<= 1.10',
        'met': ratio is not None and ratio <= 1.10,
        'ratio_of_medians': ratio,
        'paired_ratio': b.summary(paired, 3),
        'service_over_fifo_reader': over('service', 'fifo_reader'),
        'fifo_reader_over_virsh': over('fifo_reader', 'virsh'),
        'no_writeback_over_virsh': over('fifo_reader_no_writeback', 'virsh'),
        'service_over_dd': over('service', 'dd'),
        'service_over_dd_fdatasync': over('service', 'dd_fdatasync'),
        'virsh_over_dd': over('virsh', 'dd'),
        'virsh_over_dd_fdatasync': over('virsh', 'dd_fdatasync'),
        'times': stats, 'cpu': {v: {k: b.summary(x, 2) for k, x in c.items()} for v, c in cpu.items()},
        'orders': orders, 'pause_sec': pause, 'page_cache_write': page_cache, 'free_page_reporting': os.path.exists(REPORTED_KIB),
        'image_bytes': size, 'sha256_mb_per_s_before_after': rates, 'recorded_sha256_matches_file': checked,
        'guest': vm, 'guest_mib': int(b.env('MEMDUMP_BENCH_VM_RANDOM_MIB', '1024')), 'reps': reps,
        'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p3_throughput.py (MEMDUMP_BENCH_P3_REPS=%d)' % reps,
    })


if __name__ == '__main__':
    main()
