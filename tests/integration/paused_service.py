"""The real memdump service, held still at one point of a dump's life so that a test can kill it there.

Test-only: the shipped service has no such switch. MEMDUMP_TEST_PAUSE_AT names the point, MEMDUMP_TEST_PAUSE_DIR
the directory where a file of that name appears once the service is there (it then waits until it is killed):

  call        right before libvirt is asked to dump (the FIFO and its read end exist; libvirt knows nothing)
  first_read  libvirt opened the FIFO and wrote into it, the service has not read a byte
  mid_stream  the service read MEMDUMP_TEST_PAUSE_BYTES (default 8 MiB) of the stream and reads no more
  end         libvirt's call returned and the stream is read; the image is not yet renamed or recorded
"""
import os
import sys
import time

from memdump_service import cli, virt

POINT = os.environ.get('MEMDUMP_TEST_PAUSE_AT', '')
PAUSE_DIR = os.environ.get('MEMDUMP_TEST_PAUSE_DIR', '')
PAUSE_BYTES = int(os.environ.get('MEMDUMP_TEST_PAUSE_BYTES', str(8 * 1024 * 1024)))


def hold(point):
    """Say where the service is, then stay there until killed."""
    with open(os.path.join(PAUSE_DIR, point), 'w') as handle:
        handle.write(str(os.getpid()))
    while True:
        time.sleep(3600)


def patch():
    call_libvirt, read_chunk, publish = virt.DumpJob.call_libvirt, virt.FifoHasher.read_chunk, virt.DumpJob.publish

    def paused_call(job, dom, target, flags):
        if POINT == 'call':
            hold('call')
        return call_libvirt(job, dom, target, flags)

    def paused_read(hasher):
        if POINT == 'first_read' or (POINT == 'mid_stream' and hasher.size >= PAUSE_BYTES):
            hold(POINT)
        return read_chunk(hasher)

    def paused_publish(job):
        if POINT == 'end':
            hold('end')
        return publish(job)

    virt.DumpJob.call_libvirt = paused_call
    virt.FifoHasher.read_chunk = paused_read
    virt.DumpJob.publish = paused_publish


if __name__ == '__main__':
    if POINT:
        if POINT not in ('call', 'first_read', 'mid_stream', 'end') or not os.path.isdir(PAUSE_DIR):
            sys.exit('paused_service: give MEMDUMP_TEST_PAUSE_AT (call, first_read, mid_stream, end) and an existing '
                     'MEMDUMP_TEST_PAUSE_DIR')
        patch()
    sys.exit(cli.main(sys.argv[1:]))
