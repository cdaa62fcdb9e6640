"""A dead service never blocks libvirt (issue 24.6): the service is killed (SIGKILL) at every point of a dump's
life, memory-only and live, with the real libvirtd and a QEMU (TCG) guest of this file's own; after each kill the
host's libvirt answers within a bound, the restarted service says the dump was interrupted, nothing is left in the
dump dir, and the next dump of the guest completes.

The service runs as tests/integration/paused_service.py (fixture paused_service): the real service, held at the
point of the dump's life the test names until it is killed, so that every point is reached for sure.
"""
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import poll_until, stack_env

GUEST = 'memdump-service-kill'
GUEST_MIB = 128
# Random bytes QEMU's loader puts into the guest's RAM: they make the live stream (which skips zero pages) long
# enough to be killed in the middle of it.
BLOB_MIB = 48
VIRSH_BOUND = 15  # seconds `virsh list` may take after a kill (it answers in well under a second when all is well)
POINTS = ('call', 'first_read', 'mid_stream', 'end')
STACK_DIR = os.environ.get('MEMDUMP_STACK_DIR', '/tmp/memdump-stack')
LIBVIRTD_PID_FILE = os.path.join(STACK_DIR, 'libvirtd.pid')


def virsh(*args, timeout=VIRSH_BOUND):
    return subprocess.run(['virsh', '-c', stack_env('MEMDUMP_TEST_LIBVIRT_URI')] + list(args), capture_output=True, text=True,
                          timeout=timeout, check=False)


def libvirt_answers():
    """`virsh list` answers within VIRSH_BOUND seconds (a libvirtd thread blocked on a FIFO hangs it)."""
    started = time.monotonic()
    try:
        answer = virsh('list', '--all')
    except subprocess.TimeoutExpired:
        raise AssertionError('virsh list did not answer within %s s: libvirtd is blocked' % VIRSH_BOUND) from None
    assert answer.returncode == 0 and GUEST in answer.stdout, answer
    return time.monotonic() - started


def guest_idle():
    """No libvirt job runs on the guest and it runs (a failed memory-only dump resumes it)."""
    info = virsh('domjobinfo', GUEST).stdout
    state = virsh('domstate', GUEST).stdout.strip()
    return state == 'running' and ('None' in info or not info.strip())


@pytest.fixture(scope='module')
def guest():
    """A transient 128 MiB TCG guest of this file's own (no other test dumps it)."""
    # QEMU runs as its own user: the loader's file must be readable to it. pytest's temp dirs are not, nor is TMPDIR
    # under /root (tests/run.sh's choice where /tmp is a tmpfs); the stack's directory is kept traversable for QEMU.
    base = pathlib.Path(tempfile.mkdtemp(prefix=GUEST + '-', dir=STACK_DIR))
    blob = base / 'blob.bin'
    blob.write_bytes(os.urandom(BLOB_MIB * 1024 * 1024))
    os.chmod(base, 0o755)
    os.chmod(blob, 0o644)
    xml = base / 'guest.xml'
    xml.write_text("""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%s</name><memory unit='MiB'>%d</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os><on_crash>destroy</on_crash>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/></devices>
  <qemu:commandline><qemu:arg value='-device'/><qemu:arg value='loader,file=%s,addr=0x04000000,force-raw=on'/></qemu:commandline>
</domain>
""" % (GUEST, GUEST_MIB, blob))
    virsh('destroy', GUEST)
    created = virsh('create', str(xml), timeout=120)
    assert created.returncode == 0, created
    try:
        yield GUEST
    finally:
        virsh('destroy', GUEST, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def record(svc, dump_id):
    status, body = svc.api('GET', '/api/dumps/' + dump_id)
    assert status == 200, (status, body)
    return body


def check_recovered(svc, dump_id, method, guest_name):
    """After the restart: the dump is failed as interrupted, nothing is left behind, libvirt answers, and a new
    dump of the guest (same method) completes."""
    crashed = record(svc, dump_id)
    assert crashed['state'] == 'failed' and crashed['error_code'] == 'interrupted', crashed
    assert 'interrupted by service restart' in crashed['message'] and crashed['dump_path'] is None, crashed
    assert sorted(os.listdir(svc.dump_dir)) == [], os.listdir(svc.dump_dir)
    libvirt_answers()
    poll_until(guest_idle, 60, interval=0.1, what='the guest to run without a libvirt job')
    status, body = svc.api('POST', '/api/dumps', {'vms': [guest_name], 'method': method})
    assert status == 202 and body['dumps'][0]['created'] is True, body

    def finished():
        rec = record(svc, body['dumps'][0]['dump_id'])
        return rec if rec['state'] in ('completed', 'failed') else None

    again = poll_until(finished, 120, interval=0.1, what='the next dump to finish')
    assert again['state'] == 'completed', again
    assert os.path.getsize(again['dump_path']) == again['size_bytes']


@pytest.mark.parametrize('method', ['memory-only', 'live'])
@pytest.mark.parametrize('point', POINTS)
def test_kill_9_at_every_point_of_a_dump_never_blocks_libvirt(paused_service, guest, method, point):
    poll_until(guest_idle, 60, interval=0.1, what='the guest to run without a libvirt job')
    downtime_before = virsh('migrate-getmaxdowntime', guest).stdout.strip()
    svc = paused_service(point)
    try:
        status, body = svc.api('POST', '/api/dumps', {'vms': [guest], 'method': method})
        assert status == 202, body
        dump_id = body['dumps'][0]['dump_id']
        svc.wait_paused()
        if point in ('first_read', 'mid_stream'):
            # libvirt is writing into the FIFO (and blocked on the full pipe) while the service reads no more.
            assert not guest_idle()
        svc.stop(signal.SIGKILL)
        assert svc.proc.returncode == -signal.SIGKILL
        took = libvirt_answers()
        started = time.monotonic()
        svc.start_unpaused()
        print('kill at %s (%s): virsh list %.3f s, restart to healthy %.3f s' % (point, method, took, time.monotonic() - started))
        # A live dump changes the guest's migration downtime limit for its run: the restart put it back.
        assert virsh('migrate-getmaxdowntime', guest).stdout.strip() == downtime_before
        check_recovered(svc, dump_id, method, guest)
    finally:
        svc.stop()
        poll_until(guest_idle, 60, interval=0.1, what='the guest to run without a libvirt job')


def libvirtd_threads_in_fifo_open():
    """Threads of the stack's libvirtd that wait in open() of a FIFO for its reader."""
    with open(LIBVIRTD_PID_FILE) as handle:
        pid = handle.read().strip()
    found = []
    for tid in os.listdir('/proc/%s/task' % pid):
        try:
            with open('/proc/%s/task/%s/wchan' % (pid, tid)) as handle:
                if handle.read().strip() in ('wait_for_partner', 'fifo_open'):
                    found.append(tid)
        except OSError:
            pass
    return found


def test_restart_releases_libvirt_blocked_opening_the_fifo_of_a_dead_service(paused_service, guest):
    """The case of the issue: the service died after asking for the dump, before libvirtd opened the FIFO for writing;
    libvirtd then waits in open() for a reader. The restarted service opens the FIFO's read end (which wakes it)
    before it removes the FIFO, so libvirt's call ends (what it wrote is discarded) and libvirt answers again.
    (A service that removes the FIFO first leaves libvirtd blocked until libvirtd is killed: never run this test
    against such a service on a libvirtd others use.)"""
    poll_until(guest_idle, 60, interval=0.1, what='the guest to run without a libvirt job')
    svc = paused_service('call')
    blocked = None
    try:
        status, body = svc.api('POST', '/api/dumps', {'vms': [guest]})
        assert status == 202, body
        dump_id = body['dumps'][0]['dump_id']
        svc.wait_paused()
        fifo = os.path.join(svc.dump_dir, '.%s.fifo' % dump_id)
        assert os.path.exists(fifo)
        svc.stop(signal.SIGKILL)
        # The dump call the dead service had sent: libvirtd opens the FIFO for writing and, with no reader, waits.
        blocked = subprocess.Popen(['virsh', '-c', stack_env('MEMDUMP_TEST_LIBVIRT_URI'), 'dump', '--memory-only', guest, fifo],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        poll_until(libvirtd_threads_in_fifo_open, 30, interval=0.05, what='libvirtd to wait in open() of the FIFO')
        svc.start_unpaused()
        try:
            blocked.communicate(timeout=VIRSH_BOUND)
        except subprocess.TimeoutExpired:
            raise AssertionError('libvirtd is still blocked on the FIFO after the restart') from None
        assert not libvirtd_threads_in_fifo_open()
        assert "released libvirt's writer of the interrupted dump" in svc.read_log()
        check_recovered(svc, dump_id, 'memory-only', guest)
    finally:
        if blocked is not None and blocked.poll() is None:
            # Never leave the shared libvirtd blocked: be the reader it waits for.
            try:
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            except OSError:
                pass
            blocked.wait(30)
        svc.stop()
