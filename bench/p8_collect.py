"""P8: collection throughput and peak RSS, memdump_collect's download code path vs `curl -o`.

One dump of a guest (bench-env's MEMDUMP_BENCH_VM_RANDOM, 1 GiB of random RAM; else the stack's
MEMDUMP_TEST_VM_LARGE) by the real service on loopback; then, alternating, REPS downloads of the same
image with `curl -o` and with the code the action plugin runs (MemdumpClient.open_file +
_custody.download: 1 MiB chunks, SHA-256 while receiving, .part + rename), each in its own process
so that its peak RSS (wait4 ru_maxrss) is its own. Target: plugin throughput >= 80 % of curl's.
"""
import os
import subprocess
import sys
import time

import benchlib as b
from conftest import MemdumpService  # noqa: E402  pylint: disable=import-error

TOKEN = 'bench-p8-token'
CHILD = r'''
import sys, time, json
sys.path.insert(0, sys.argv[1])
from ansible_collections.vmforensics.memdump.plugins.module_utils._client import MemdumpClient
from ansible_collections.vmforensics.memdump.plugins.plugin_utils import _custody_download as _custody
client = MemdumpClient(url=sys.argv[2], token=sys.argv[3], timeout=600)
t = time.monotonic()
stats = _custody.download(lambda offset: client.open_file(sys.argv[4], offset), sys.argv[5], int(sys.argv[6]), sys.argv[7])
print(json.dumps({"seconds": time.monotonic() - t, "sha256": stats["sha256"]}))
'''


def timed(cmd):
    """Runs cmd; returns (wall seconds, peak RSS MiB, stdout)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)  # pylint: disable=consider-using-with
    out = proc.stdout.read()
    dummy, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError('%s failed with %s' % (cmd[0], proc.returncode))
    return time.monotonic() - started, usage.ru_maxrss / 1024.0, out


def main():
    vm = os.environ.get('MEMDUMP_BENCH_VM_RANDOM') or b.env('MEMDUMP_TEST_VM_LARGE')
    reps = b.int_env('MEMDUMP_BENCH_P8_REPS', 3)
    work = b.workdir('p8')
    svc = MemdumpService(work, 'qemu:///system', token=TOKEN)
    svc.start()
    coll = b.collections_path()
    try:
        b.log('P8: dumping %s' % vm)
        status, answer = svc.api('POST', '/api/dumps', {'vms': [vm], 'label': 'BENCH-P8-%d' % int(time.time())})
        dump_id = answer['dumps'][0]['dump_id']
        rec = None
        for dummy in range(3000):
            status, rec = svc.api('GET', '/api/dumps/' + dump_id)
            if rec.get('state') in ('completed', 'failed'):
                break
            time.sleep(0.2)
        if rec.get('state') != 'completed':
            raise SystemExit('dump of %s did not complete: %s' % (vm, rec))
        size, sha = rec['size_bytes'], rec['sha256']
        url = '%s/api/dumps/%s/file' % (svc.url, dump_id)
        rows = {'curl': [], 'plugin': []}
        for rep in range(reps):
            for variant in b.rotate(['curl', 'plugin'], rep):
                dest = os.path.join(work, 'out-%s.bin' % variant)
                for path in (dest, dest + '.part'):
                    if os.path.exists(path):
                        os.chmod(path, 0o600)
                        os.unlink(path)
                if variant == 'curl':
                    wall, rss, dummy = timed(['curl', '-sSf', '-H', 'Authorization: Bearer ' + TOKEN, '-o', dest, url])
                else:
                    wall, rss, dummy = timed([sys.executable, '-c', CHILD, coll, svc.url, TOKEN, dump_id, dest, str(size), sha])
                if os.path.getsize(dest) != size:
                    raise SystemExit('%s wrote %d bytes, expected %d' % (variant, os.path.getsize(dest), size))
                rows[variant].append({'seconds': round(wall, 3), 'mib_s': round(size / 1048576.0 / wall, 1),
                                      'peak_rss_mib': round(rss, 1)})
                b.log('P8 rep %d %s: %.2f s, %.0f MiB/s, peak RSS %.1f MiB' % (rep, variant, wall, size / 1048576.0 / wall, rss))
                os.chmod(dest, 0o600)
                os.unlink(dest)
        curl = b.summary([r['mib_s'] for r in rows['curl']], 1)
        plugin = b.summary([r['mib_s'] for r in rows['plugin']], 1)
        ratio = round(plugin['median'] / curl['median'], 3)
        b.write_result('P8', {
            'title': 'collection throughput and peak RSS: memdump_collect download path vs curl -o',
            'guest': vm, 'size_bytes': size, 'reps': reps, 'rows': rows, 'curl_mib_s': curl, 'plugin_mib_s': plugin,
            'ratio': ratio, 'plugin_peak_rss_mib': max(r['peak_rss_mib'] for r in rows['plugin']),
            'curl_peak_rss_mib': max(r['peak_rss_mib'] for r in rows['curl']), 'target': 'ratio >= 0.80',
            'met': ratio >= 0.8, 'command': 'python bench/p8_collect.py (MEMDUMP_BENCH_P8_REPS=%d)' % reps})
    finally:
        svc.stop()


if __name__ == '__main__':
    main()
