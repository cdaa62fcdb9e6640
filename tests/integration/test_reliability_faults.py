"""Reliability (issue 8): faults under the real memdump service, real libvirtd and real QEMU guests.

- kill -9 of the service in the middle of a dump that lasts seconds, then a restart;
- the dump directory on a small tmpfs: refused by the free-space check, and running out anyway;
- libvirtd down and back (kills and restarts the stack's libvirtd: run this file alone or last).
"""
import os
import re
import signal
import socket
import stat
import subprocess
import time

import pytest

STACK_DIR = os.environ.get('MEMDUMP_STACK_DIR', '/tmp/memdump-stack')
LIBVIRT_SOCK = '/var/run/libvirt/libvirt-sock'
FINAL = ('completed', 'failed')


def libvirt_uri():
    return os.environ.get('MEMDUMP_TEST_LIBVIRT_URI', 'qemu:///system')


def virsh(*args, timeout=60):
    return subprocess.run(['virsh', '-c', libvirt_uri()] + list(args), capture_output=True, text=True,
                          timeout=timeout, check=False)


def wait_guest_not_dumping(vm, timeout=180):
    """Waits until no libvirt job runs on the guest (a dump by another test or an orphaned one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = virsh('domstate', '--reason', vm).stdout.strip()
        if state.startswith('running'):
            return state
        time.sleep(0.2)
    raise AssertionError('guest %s still not running after %ss: %s' % (vm, timeout, state))


def record(svc, dump_id):
    status, body = svc.api('GET', '/api/dumps/' + dump_id)
    assert status == 200, (status, body)
    return body


def wait_final(svc, dump_id, wait_until, timeout=180):
    def final():
        rec = record(svc, dump_id)
        return rec if rec['state'] in FINAL else None
    return wait_until(final, timeout, interval=0.1, what='dump %s to finish' % dump_id)


def files_in(path):
    found = []
    for root, _dirs, names in os.walk(path):
        found += [os.path.join(root, name) for name in names]
    return sorted(found)


# ---- kill -9 mid-dump ----------------------------------------------------------------------------

def test_kill_9_mid_dump_then_restart(paused_service, wait_until):
    large, tiny = os.environ['MEMDUMP_TEST_VM_LARGE'], os.environ['MEMDUMP_TEST_VM']
    wait_guest_not_dumping(large)
    # The real service, held once it has read 64 MiB of the large guest's 2 GiB stream: killed mid-dump for sure.
    svc = paused_service('mid_stream', extra_args=['--max-parallel', '1'], pause_bytes=64 << 20)
    try:
        status, body = svc.api('POST', '/api/dumps', {'vms': [large, tiny]})
        assert status == 202, body
        large_id, tiny_id = [d['dump_id'] for d in body['dumps']]
        svc.wait_paused()
        assert record(svc, large_id)['state'] == 'running'
        # What is in the dump dir mid-dump (temp file, FIFO) is private to the service's user already.
        uid = os.stat('/proc/%d' % svc.proc.pid).st_uid
        partial = {name: os.lstat(os.path.join(svc.dump_dir, name)) for name in os.listdir(svc.dump_dir)}
        assert partial, 'nothing in the dump dir while dumping'
        for name, st in partial.items():
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0 and st.st_uid == uid, (name, oct(st.st_mode), st.st_uid)
        assert record(svc, tiny_id)['state'] == 'queued'
        svc.stop(signal.SIGKILL)
        assert svc.proc.returncode == -signal.SIGKILL
        svc.start_unpaused()

        crashed = record(svc, large_id)
        assert crashed['state'] == 'failed' and crashed['error_code'] == 'interrupted', crashed
        assert 'interrupted by service restart' in crashed['message'], crashed
        assert crashed['dump_path'] is None and crashed['sha256'] is None, crashed
        assert crashed['finished_at'], crashed
        done = wait_final(svc, tiny_id, wait_until)
        assert done['state'] == 'completed', done
        # Only the completed image is left: nothing that could pass for an image of the crashed dump.
        wait_guest_not_dumping(large)
        assert files_in(svc.dump_dir) == [done['dump_path']], files_in(svc.dump_dir)
        assert os.path.getsize(done['dump_path']) == done['size_bytes']
        # The crash is in the log as one state change; the restart recovered without a traceback.
        log = svc.read_log()
        assert large_id in log and 'Traceback' not in log.split('interrupted by service restart')[-1], log[-4000:]
        # A new dump of the guest that was being dumped works again.
        status, body = svc.api('POST', '/api/dumps', {'vms': [large]})
        assert status == 202 and body['dumps'][0]['created'] is True, body
        assert body['dumps'][0]['dump_id'] != large_id
        again = wait_final(svc, body['dumps'][0]['dump_id'], wait_until)
        assert again['state'] == 'completed', again
    finally:
        wait_guest_not_dumping(large)


# ---- disk full -------------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """Factory: ``small_fs(size)`` mounts a tmpfs of that size (e.g. '64m'); unmounted afterwards."""
    mounts = []

    def mount(size):
        path = tmp_path / ('smallfs%d' % len(mounts))
        path.mkdir()
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0755' % size, 'memdump-rel', str(path)],
                       check=True, capture_output=True, timeout=30)
        mounts.append(str(path))
        return str(path)

    yield mount
    for path in mounts:
        subprocess.run(['umount', '-l', path], check=False, capture_output=True, timeout=30)


SPACE_WORDS = re.compile(r'space|disk|room|ENOSPC', re.I)


def test_free_space_check_refuses(memdump_service, small_fs, wait_until):
    mnt = small_fs('64m')
    dump_dir = os.path.join(mnt, 'dumps')
    svc = memdump_service(extra_args=['--dump-dir', dump_dir])
    tiny = os.environ['MEMDUMP_TEST_VM']
    status, body = svc.api('POST', '/api/dumps', {'vms': [tiny]})
    if status == 202:
        rec = wait_final(svc, body['dumps'][0]['dump_id'], wait_until, timeout=60)
        assert rec['state'] == 'failed', rec
        message = rec['message']
        assert rec['started_at'] is None or rec['paused_sec'] in (None, 0, 0.0), 'the guest was paused for nothing: %s' % rec
    else:
        assert 400 <= status < 600 and status != 500, (status, body)
        message = body['detail']
    assert SPACE_WORDS.search(message), 'unclear message: %r' % message
    assert files_in(dump_dir) == [], files_in(dump_dir)
    assert svc.api('GET', '/health')[0] == 200


def test_parallel_dumps_cannot_together_overfill_the_disk(memdump_service, small_fs, wait_until):
    """Issue 13: two 128 MiB guests dumped at once into 230 MiB. Each needs 192 MiB (memory + 64 MiB margin), so each
    alone passes a free-space check; with the space of the running dump reserved, the second is refused before its
    guest is paused, instead of both starting and the disk running full."""
    mnt = small_fs('230m')
    dump_dir = os.path.join(mnt, 'dumps')
    svc = memdump_service(extra_args=['--dump-dir', dump_dir, '--max-parallel', '2'])
    vms = [os.environ['MEMDUMP_TEST_VM'], os.environ['MEMDUMP_TEST_VM2']]
    for vm in vms:
        wait_guest_not_dumping(vm)
    status, body = svc.api('POST', '/api/dumps', {'vms': vms})
    assert status == 202, body
    records = [wait_final(svc, d['dump_id'], wait_until, timeout=120) for d in body['dumps']]
    assert sorted(r['state'] for r in records) == ['completed', 'failed'], records
    done, refused = sorted(records, key=lambda r: r['state'])
    mib = int(os.environ.get('MEMDUMP_TEST_VM_MIB', '128')) << 20
    assert refused['message'].startswith('not enough free space in %s: %d bytes needed (guest memory %d + margin %d), ' % (
        dump_dir, mib + (64 << 20), mib, 64 << 20)), refused['message']
    assert refused['message'].endswith('reserved by 1 running dump'), refused['message']
    assert refused['paused_sec'] is None, 'the refused guest was paused: %s' % refused
    assert files_in(dump_dir) == [done['dump_path']]
    print('reservation: %s' % refused['message'])


def fill_up(filler, mnt):
    """Grows the filler file until less than 8 MiB are free (the dump keeps writing meanwhile)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _attempt in range(50):
            vfs = os.statvfs(mnt)
            free = vfs.f_bavail * vfs.f_frsize
            if free < (8 << 20):
                return
            try:
                os.posix_fallocate(fd, os.fstat(fd).st_size, free - (4 << 20))
            except OSError:
                continue  # the dump took some of it meanwhile: measure again
    finally:
        os.close(fd)


def test_disk_runs_full_during_dump(memdump_service, small_fs, wait_until):
    """The free-space check passes, then the space disappears under a 2 GiB dump."""
    large = os.environ['MEMDUMP_TEST_VM_LARGE']
    large_bytes = int(os.environ.get('MEMDUMP_TEST_VM_LARGE_MIB', '2048')) << 20
    mnt = small_fs('%dm' % ((large_bytes >> 20) + 200))  # guest + 64 MiB margin + room to spare
    dump_dir = os.path.join(mnt, 'dumps')
    svc = memdump_service(extra_args=['--dump-dir', dump_dir, '--max-parallel', '1'])
    wait_guest_not_dumping(large)
    filler = os.path.join(mnt, 'filler')
    try:
        status, body = svc.api('POST', '/api/dumps', {'vms': [large]})
        assert status == 202, body
        dump_id = body['dumps'][0]['dump_id']
        wait_until(lambda: record(svc, dump_id)['state'] != 'queued', 60, interval=0.01, what='the dump to start')
        # Take (almost) all the space that is left while the dump is writing into it.
        fill_up(filler, mnt)
        rec = wait_final(svc, dump_id, wait_until)
        if rec['state'] == 'completed':
            pytest.fail('the 2 GiB dump finished before the filesystem could be filled: %s' % rec)
        assert SPACE_WORDS.search(rec['message']), 'unclear message: %r' % rec['message']
        assert rec['dump_path'] is None and rec['sha256'] is None, rec
        wait_guest_not_dumping(large)
        assert files_in(dump_dir) == [], 'partial file left: %s' % files_in(dump_dir)
        assert svc.api('GET', '/health')[0] == 200
        assert 'Traceback' not in svc.read_log(), svc.read_log()[-4000:]
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
        wait_guest_not_dumping(large)


# ---- libvirtd down ---------------------------------------------------------------------------------

def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def libvirt_socket_answers():
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(LIBVIRT_SOCK)
        except OSError:
            return False
    return True


def ensure_libvirtd(pidfile):
    """Starts libvirtd again unless the one named by pidfile is alive."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pid = 0
    if not pid or not pid_alive(pid):
        subprocess.run(['/usr/sbin/libvirtd', '-d', '-p', pidfile], check=True, capture_output=True, timeout=60)


def test_libvirtd_down_then_back(memdump_service, wait_until):
    """Stops the stack's libvirtd (guests keep running) and starts it again, whatever happens."""
    pidfile = os.path.join(STACK_DIR, 'libvirtd.pid')
    if not os.path.exists(pidfile) or not libvirt_uri().startswith('qemu:///system'):
        pytest.skip('libvirtd was not started by the test stack; not stopping a libvirtd we do not own')
    tiny = os.environ['MEMDUMP_TEST_VM']
    svc = memdump_service()
    assert svc.api('GET', '/health')[0] == 200
    with open(pidfile) as f:
        pid = int(f.read().strip())
    try:
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not pid_alive(pid), 30, interval=0.1, what='libvirtd to exit')
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 10, what='libvirtd to die')
        started = time.monotonic()

        def health_503():
            answer = svc.api('GET', '/health')
            return answer if answer[0] == 503 else None
        status, health = wait_until(health_503, 30, interval=0.2, what='/health to answer 503')
        print('503 after %.1fs' % (time.monotonic() - started))
        assert health['status'] == 'unavailable' and health['libvirt']['connected'] is False, health
        assert health['libvirt']['error'], health
        # A new dump fails with a clear message (refused at once, or failed record).
        status, body = svc.api('POST', '/api/dumps', {'vms': [tiny]})
        if status == 202:
            rec = wait_final(svc, body['dumps'][0]['dump_id'], wait_until, timeout=90)
            assert rec['state'] == 'failed', rec
            message = rec['message']
        else:
            assert status == 503, (status, body)
            message = body['detail']
        assert re.search(r'libvirt', message, re.I), 'unclear message: %r' % message
        assert svc.proc.poll() is None
    finally:
        ensure_libvirtd(pidfile)
        wait_until(libvirt_socket_answers, 60, interval=0.1, what='the libvirtd socket')
        wait_until(lambda: virsh('list', timeout=120).returncode == 0, 120, interval=1, what='virsh list')
    # The service reconnects by itself (no restart of the service).
    started = time.monotonic()
    wait_until(lambda: svc.api('GET', '/health')[0] == 200, 120, interval=0.5, what='/health back to 200')
    print('service recovered %.1fs after libvirtd answered' % (time.monotonic() - started))
    health = svc.api('GET', '/health')[1]
    assert health['libvirt']['connected'] is True, health
    assert virsh('domstate', tiny).stdout.strip() == 'running', 'the guest did not survive the libvirtd restart'
    status, body = svc.api('POST', '/api/dumps', {'vms': [tiny]})
    assert status == 202, body
    rec = wait_final(svc, body['dumps'][0]['dump_id'], wait_until, timeout=120)
    assert rec['state'] == 'completed', rec
