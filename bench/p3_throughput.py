"""P3: the service's dump time (image hashed with SHA-256) against ``virsh dump --memory-only``,
same 1 GiB guest whose RAM is random bytes, alternating; both against ``dd`` of the same size to
the same disk.

Variants, rotated in each repetition, each preceded by ``sync`` and a short pause:

* ``service``: POST /api/dumps, then long-poll until ``completed``: wall time seen by the client,
  which includes the SHA-256 (the service hashes while libvirt writes into a FIFO: one pass);
* ``service_follow``: the same against a service started with ``--hash-mode follow`` (libvirt
  writes the image file itself; the service hashes it from the page cache right behind the writer);
* ``virsh``: ``virsh dump --memory-only --format elf`` into the same directory (no hash);
* ``virsh_then_fsync`` / ``virsh_then_sha256``: informative, the virsh time plus ``fsync`` of the
  file (the service makes its images durable before calling them completed), resp. plus ``sha256``
  of the finished file read back (what hashing afterwards would cost, page cache allowing);
* ``virsh_fifo_hash``: the service's design without the service: ``virsh dump`` into a FIFO that
  this script reads (4 MiB reads), hashes, writes to a file and fsyncs (default 64 KiB pipe
  buffer); ``virsh_fifo_hash_1m``: the same with the pipe buffer raised to 1 MiB (F_SETPIPE_SZ),
  as the service does;
* ``dd``: ``dd if=/dev/zero bs=1M`` of the image's size into the same directory;
* ``dd_fdatasync``: the same with ``conv=fdatasync`` (data on the disk, not in the page cache).
"""

import fcntl
import hashlib
import os
import subprocess
import threading
import time

import benchlib as b
# benchlib puts tests/integration (the shared conftest) on sys.path.
from conftest import sha256_file  # noqa: E402  pylint: disable=import-error

VARIANTS = ['service', 'virsh', 'service_follow', 'virsh_fifo_hash', 'virsh_fifo_hash_1m', 'dd', 'dd_fdatasync']


def timed(cmd):
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.monotonic() - started


def fifo_hash_dump(vm, out_dir, target, pipe_size=None):
    """virsh dump into a FIFO; a reader thread hashes, writes and fsyncs. Returns seconds.
    pipe_size: enlarge the FIFO's buffer (fcntl F_SETPIPE_SZ) from its 64 KiB default."""
    fifo = os.path.join(out_dir, 'bench.fifo')
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo, 0o600)
    outcome = {}

    def reader():
        digest = hashlib.sha256()
        with open(fifo, 'rb', buffering=0) as src, open(target, 'wb') as dst:
            if pipe_size:
                fcntl.fcntl(src.fileno(), 1031, pipe_size)  # F_SETPIPE_SZ
            for chunk in iter(lambda: src.read(4 << 20), b''):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        outcome['sha256'] = digest.hexdigest()

    started = time.monotonic()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        subprocess.run(b.VIRSH + ['dump', '--memory-only', '--format', 'elf', vm, fifo], check=True, capture_output=True, timeout=600)
    finally:
        thread.join(600)
        os.unlink(fifo)
    return time.monotonic() - started


def sha256_rate(mib=256):
    """SHA-256 throughput of one core here, right now (MB/s), over data in memory."""
    data = os.urandom(mib << 20)
    started = time.monotonic()
    hashlib.sha256(data).hexdigest()
    return round(mib * 1.048576 / (time.monotonic() - started))


def main():
    uri = b.env('MEMDUMP_TEST_LIBVIRT_URI', 'qemu:///system')
    vm = b.env('MEMDUMP_BENCH_VM_RANDOM')
    reps = b.int_env('MEMDUMP_BENCH_P3_REPS', 4)
    load_before = b.loadavg()
    b.set_emulator_quota(vm, -1)
    svc = b.start_service('p3', uri)
    follow = b.start_service('p3-follow', uri, ['--hash-mode', 'follow'])
    services = {'service': svc, 'service_follow': follow}
    out_dir = svc.dump_dir
    times = {v: [] for v in VARIANTS + ['virsh_then_fsync', 'virsh_then_sha256', 'service_duration_sec', 'service_follow_duration_sec']}
    size = None
    checked = None
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
            for variant in b.rotate(VARIANTS, rep):
                os.sync()
                time.sleep(1)
                target = os.path.join(out_dir, 'bench-%s.img' % variant)
                if variant in services:
                    url = services[variant].url
                    started = time.monotonic()
                    dump = b.post_dumps(url, [vm])[0]
                    rec = b.wait_dump(url, dump['dump_id'], timeout=600)
                    took = time.monotonic() - started
                    if rec['state'] != 'completed':
                        raise RuntimeError('%s dump failed: %s' % (variant, rec.get('message')))
                    times[variant + '_duration_sec'].append(rec['duration_sec'])
                    b.delete_dump(url, dump['dump_id'])
                elif variant == 'virsh':
                    took = timed(b.VIRSH + ['dump', '--memory-only', '--format', 'elf', vm, target])
                    started = time.monotonic()
                    with open(target, 'rb') as f:
                        os.fsync(f.fileno())
                    times['virsh_then_fsync'].append(took + time.monotonic() - started)
                    started = time.monotonic()
                    sha256_file(target)
                    times['virsh_then_sha256'].append(took + time.monotonic() - started)
                elif variant.startswith('virsh_fifo_hash'):
                    took = fifo_hash_dump(vm, out_dir, target, 1 << 20 if variant.endswith('_1m') else None)
                else:
                    cmd = ['dd', 'if=/dev/zero', 'of=' + target, 'bs=1M', 'count=%d' % size, 'iflag=count_bytes', 'status=none']
                    took = timed(cmd + (['conv=fdatasync'] if variant == 'dd_fdatasync' else []))
                if os.path.exists(target):
                    os.unlink(target)
                times[variant].append(took)
                b.log('P3 rep %d %-13s %.2f s' % (rep, variant, took))
        rates.append(sha256_rate())
    finally:
        svc.stop()
        follow.stop()
    stats = {k: b.summary(v, 3) for k, v in times.items()}
    paired = [s / v for s, v in zip(times['service'], times['virsh'])]
    ratio = stats['service']['median'] / stats['virsh']['median'] if times['virsh'] and times['service'] else None
    b.write_result('P3', {
        'title': 'service dump (with SHA-256) / virsh dump --memory-only, 1 GiB random guest',
        'target': '<= 1.10',
        'met': ratio is not None and ratio <= 1.10,
        'ratio_of_medians': round(ratio, 3) if ratio else None,
        'paired_ratio': b.summary(paired, 3),
        'follow_ratio_of_medians': round(stats['service_follow']['median'] / stats['virsh']['median'], 3)
        if times['service_follow'] and times['virsh'] else None,
        'service_over_dd': round(stats['service']['median'] / stats['dd']['median'], 3) if times['dd'] else None,
        'service_over_dd_fdatasync': round(stats['service']['median'] / stats['dd_fdatasync']['median'], 3) if times['dd'] else None,
        'virsh_over_dd': round(stats['virsh']['median'] / stats['dd']['median'], 3) if times['dd'] else None,
        'times': stats, 'image_bytes': size, 'sha256_mb_per_s_before_after': rates, 'recorded_sha256_matches_file': checked,
        'guest': vm, 'guest_mib': int(b.env('MEMDUMP_BENCH_VM_RANDOM_MIB', '1024')), 'reps': reps,
        'load_before': load_before, 'load_after': b.loadavg(),
        'command': 'python bench/p3_throughput.py (MEMDUMP_BENCH_P3_REPS=%d)' % reps,
    })


if __name__ == '__main__':
    main()
