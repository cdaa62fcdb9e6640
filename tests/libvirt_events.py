"""The guest's pauses as libvirt announces them (``virsh event --loop --timestamp --event lifecycle``).

Used by service/tests/test_live.py and bench/p7_live.py to measure a dump's pause independently of
the job statistics that the service records.
"""
import datetime
import re
import subprocess
import time

EVENT_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\+0000: .*'lifecycle' .*: (Suspended|Resumed)")


class LifecycleWatch:
    """Starts watching a domain's lifecycle events; :meth:`pauses` stops and returns the pauses seen."""

    def __init__(self, uri, vm):
        self.proc = subprocess.Popen(['virsh', '-c', uri, 'event', '--loop', '--timestamp', '--event', 'lifecycle', vm],
                                     stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # virsh has registered for events

    def pauses(self):
        """Seconds between each Suspended and the Resumed after it, in order."""
        time.sleep(0.5)
        self.proc.terminate()
        out, _err = self.proc.communicate(timeout=10)
        spans, since = [], None
        for line in out.splitlines():
            found = EVENT_RE.match(line)
            if not found:
                continue
            stamp = datetime.datetime.strptime(found.group(1), '%Y-%m-%d %H:%M:%S.%f').timestamp()
            if found.group(2) == 'Suspended':
                since = stamp
            elif since is not None:
                spans.append(stamp - since)
                since = None
        return spans
