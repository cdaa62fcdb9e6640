"""A guest's pauses seen from outside the memdump service, to check the pause it records.

``LifecycleWatch``: libvirt's lifecycle events (Suspended .. Resumed) on a connection of the caller's own.
``Heartbeat``: a guest booted with ``memdump.heartbeat=1`` (tests/stack/stack.sh's Linux initramfs) writes to its
second serial port without pause; the host times what arrives, so a stop of the guest's vCPUs is a gap — the
guest's own pause, which neither libvirt figure is.

Used by service/tests/test_live.py and bench/p7_live.py.
"""
import socket
import threading
import time

import libvirt
from memdump_service.virt import PauseWatch, start_event_loop


class LifecycleWatch:
    """Starts watching a domain's lifecycle events on a connection of its own (registered when the constructor returns);
    :meth:`pauses` stops and returns the pauses seen. The bookkeeping is the service's PauseWatch; the connection, and
    so the events' delivery and timing, is the caller's."""

    def __init__(self, uri, vm):
        start_event_loop()  # once per process; the service in the same process shares it
        self.conn = libvirt.open(uri)
        self.watch = PauseWatch(self.conn, self.conn.lookupByName(vm))

    @property
    def suspended_at(self):
        """time.monotonic() of each Suspended event."""
        return self.watch.suspended

    def pauses(self):
        """Seconds between each Suspended and the Resumed after it, in order. The callers watch a dump that paused the
        guest: this waits (bounded) for its events still on their way."""
        self.watch.finish(expect_pause=True)
        self.conn.close()
        return list(self.watch.pauses)


class Heartbeat:
    """Times the bytes a heartbeat guest writes to the serial port behind the UNIX socket socket_path."""

    def __init__(self, socket_path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_path)
        self.lock = threading.Lock()
        self.arrivals = []  # time.monotonic() of each read
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            with self.lock:
                self.arrivals.append(now)

    def gap_around(self, moment):
        """Seconds without a byte around moment (from the last arrival before it to the first after it); None when
        moment is not between two arrivals."""
        with self.lock:
            before = [a for a in self.arrivals if a <= moment]
            after = [a for a in self.arrivals if a > moment]
        if not before or not after:
            return None
        return after[0] - before[-1]

    def forget_before(self, moment):
        """Drop the arrivals before moment (a long run reads millions)."""
        with self.lock:
            self.arrivals = [a for a in self.arrivals if a >= moment]

    def close(self):
        self.sock.close()
