"""libvirt access: one shared connection that reconnects after libvirtd restarts, and the dump itself."""

import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import re
import select
import shutil
import stat
import struct
import threading
import time
import typing as t
from xml.etree import ElementTree

try:
    import libvirt
except ImportError:  # pragma: no cover - the service reports it in /health and in every dump
    libvirt = None

LOG = logging.getLogger("memdump_service")

CHUNK = 4 * 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1024 * 1024
WRITEBACK_STEP = 8 * 1024 * 1024

# Our format names -> libvirt VIR_DOMAIN_CORE_DUMP_FORMAT_* values and image file suffixes. A live dump always writes
# QEMU's migration stream (magic QEVM: libvirt's raw format without VIR_DUMP_MEMORY_ONLY), named LIVE_FORMAT here.
FORMATS = {
    "elf": (0, "elf"),
    "kdump-zlib": (1, "kdump"),
    "kdump-lzo": (2, "kdump"),
    "kdump-snappy": (3, "kdump"),
    "win-dmp": (4, "dmp"),
    "qemu-migration": (0, "qevm"),
}
LIVE_FORMAT = "qemu-migration"
# memory-only: the guest is paused for the whole dump; live: it runs, paused only while QEMU sends the last dirty pages;
# auto: live where libvirt can migrate the guest, memory-only otherwise.
METHODS = ("memory-only", "live", "auto")
AUTO = "auto"
VIR_DUMP_LIVE = 1 << 1
VIR_DUMP_MEMORY_ONLY = 1 << 4
VIR_DOMAIN_JOB_STATS_COMPLETED = 1 << 0
VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED = 1 << 1
VIR_ERR_NO_SUPPORT = 3
VIR_ERR_INVALID_ARG = 8
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_OPERATION_INVALID = 55
VIR_DOMAIN_EVENT_ID_LIFECYCLE = 0
VIR_DOMAIN_EVENT_SUSPENDED = 3
VIR_DOMAIN_EVENT_RESUMED = 4
# How long a finished live dump waits for libvirt's Resumed event (libvirt resumes the guest before the dump call
# returns; the event may arrive a little later).
RESUMED_EVENT_WAIT = 2.0

STATE_NAMES = {0: "no state", 1: "running", 2: "blocked", 3: "paused", 4: "shutting down", 5: "shut off", 6: "crashed", 7: "suspended"}


# Machine-readable reasons of a failed dump (the record's error_code, docs/api.md): clients decide on these, never on
# the message's words.
ERROR_CODES = ("no_such_vm", "vm_not_running", "insufficient_space", "interrupted", "cancelled", "unsupported",
               "libvirt_unavailable", "libvirt_error", "live_timeout", "write_error", "stream_error", "internal_error")


class DumpError(Exception):
    """A dump failed; the message is meant for the client, code (one of ERROR_CODES) for programs."""

    def __init__(self, message: str, code: str = "libvirt_error") -> None:
        super().__init__(message)
        self.code = code


class LibvirtUnavailable(DumpError):
    """libvirt cannot be reached."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "libvirt_unavailable")


def _ignore_libvirt_errors(_ctx: t.Any, _err: t.Any) -> None:
    """libvirt prints every error to stderr by default; the service reports them itself."""


if libvirt is not None:
    libvirt.registerErrorHandler(_ignore_libvirt_errors, None)


_EVENT_LOOP: t.List[threading.Thread] = []
_EVENT_LOOP_LOCK = threading.Lock()


def start_event_loop() -> None:
    """libvirt's default event loop, in a daemon thread (once per process): connections opened afterwards deliver
    domain events, from which a live dump's pause is timed."""
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP or libvirt is None:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True)
        _EVENT_LOOP.append(thread)
        thread.start()


def _run_event_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError as exc:
            LOG.warning("libvirt's event loop failed (%s): pauses are taken from libvirt's job statistics until it recovers", exc)
            time.sleep(1.0)  # do not spin


class PauseWatch:
    """The guest's pauses as libvirt announces them (lifecycle events Suspended .. Resumed), timed when they arrive.

    Measured against a guest that writes to its serial port without pause (bench P7, docs/performance.md), this span
    is the figure closest to the guest's pause; libvirt's downtime statistic of a live dump is smaller, as it ends when
    QEMU has sent the last pages, before libvirt resumes the guest.
    """

    def __init__(self, conn: t.Any, dom: t.Any) -> None:
        self._conn = conn
        self._changed = threading.Condition()
        self._suspended_at: t.Optional[float] = None
        # time.monotonic() of each Suspended event, and each pause (Suspended .. the Resumed after it), in order.
        self.suspended: t.List[float] = []
        self.pauses: t.List[float] = []
        try:
            self._callback_id: t.Optional[int] = conn.domainEventRegisterAny(dom, VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event, None)
        except libvirt.libvirtError as exc:
            LOG.warning("cannot watch the lifecycle events of VM '%s' (%s): its pause is taken from libvirt's job statistics",
                        dom.name(), exc)
            self._callback_id = None

    def _event(self, _conn: t.Any, _dom: t.Any, event: int, _detail: int, _opaque: t.Any) -> None:
        now = time.monotonic()
        with self._changed:
            if event == VIR_DOMAIN_EVENT_SUSPENDED and self._suspended_at is None:
                self._suspended_at = now
                self.suspended.append(now)
            elif event == VIR_DOMAIN_EVENT_RESUMED and self._suspended_at is not None:
                self.pauses.append(now - self._suspended_at)
                self._suspended_at = None
            self._changed.notify_all()

    def finish(self, expect_pause: bool = True) -> t.Optional[float]:
        """Seconds the guest was paused (a pause still open after RESUMED_EVENT_WAIT counts until now); None when no
        Suspended event came (events not delivered, or a guest paused before the dump). With expect_pause (the guest
        was running: the dump paused it), waits at most RESUMED_EVENT_WAIT for a Suspended event still on its way too."""
        with self._changed:
            self._changed.wait_for(lambda: (self.suspended or not expect_pause) and self._suspended_at is None, RESUMED_EVENT_WAIT)
            paused = sum(self.pauses) + (time.monotonic() - self._suspended_at if self._suspended_at is not None else 0.0)
            seen = bool(self.suspended)
        if self._callback_id is not None:
            try:
                self._conn.domainEventDeregisterAny(self._callback_id)
            except libvirt.libvirtError:
                pass  # a connection that broke took the registration with it
        return round(paused, 3) if seen else None


def version_string(number: int) -> str:
    """libvirt's 9000000 -> '9.0.0'."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def error_code(exc: BaseException) -> t.Optional[int]:
    """The libvirt error code of an exception, if it has one."""
    getter = getattr(exc, "get_error_code", None)
    return getter() if getter else None


def describes_emulator(domain_caps_xml: str) -> bool:
    """Whether libvirt's domain capabilities name an emulator binary (``<path>``, as QEMU's do). Drivers without a
    hypervisor behind them answer with no emulator (the test driver of libvirt 10 and later) or with
    VIR_ERR_NO_SUPPORT (older ones)."""
    try:
        root = ElementTree.fromstring(domain_caps_xml)
    except ElementTree.ParseError:
        return True  # an answer we cannot read is no statement: offer everything and let the dump itself speak
    path = root.find("path")
    return path is not None and bool((path.text or "").strip())


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a libvirt connection can do for dumps, as libvirt itself answers it (never inferred from the URI or
    the driver's name)."""

    # Memory-only dumps (VIR_DUMP_MEMORY_ONLY), live dumps, the kdump and win-dmp formats and job statistics
    # all come from the hypervisor (QEMU) behind a driver that describes one: libvirt answers
    # virConnectGetDomainCapabilities with an emulator there; the test driver answers VIR_ERR_NO_SUPPORT (libvirt
    # before 10) or domain capabilities that name no emulator (libvirt 10 and later).
    hypervisor: bool

    @property
    def memory_only(self) -> bool:
        """Whether the guest's memory alone can be dumped (else a plain dump, flags 0, is all there is)."""
        return self.hypervisor

    @property
    def live(self) -> bool:
        """Whether a live dump (QEMU's migration stream) can be taken."""
        return self.hypervisor

    @property
    def methods(self) -> t.List[str]:
        """The dump methods offered; without a hypervisor the default method stands for the plain dump, and auto
        always ends in it."""
        return list(METHODS) if self.hypervisor else [METHODS[0], AUTO]

    @property
    def formats(self) -> t.List[str]:
        """The formats offered."""
        return list(FORMATS) if self.hypervisor else ["elf"]


class Libvirt:
    """A shared libvirt connection, reopened when it breaks (for example after a libvirtd restart)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._conn: t.Any = None
        self._caps: t.Optional[Capabilities] = None
        self.last_error: t.Optional[str] = None

    def capabilities(self, conn: t.Any = None) -> Capabilities:
        """What this connection can do (asked once per connection). Raises LibvirtUnavailable."""
        conn = conn or self.connection()
        with self._lock:
            if self._caps is not None and conn is self._conn:
                return self._caps
        try:
            caps = Capabilities(hypervisor=describes_emulator(conn.getDomainCapabilities()))
        except libvirt.libvirtError as exc:
            if error_code(exc) != VIR_ERR_NO_SUPPORT:
                # Any other answer (an emulator that cannot be probed right now) is no statement about the driver:
                # offer everything and let libvirt's answer to the dump itself speak; ask again next time.
                return Capabilities(hypervisor=True)
            caps = Capabilities(hypervisor=False)
        with self._lock:
            if conn is self._conn:
                self._caps = caps
        return caps

    def connection(self) -> t.Any:
        """An open connection; raises LibvirtUnavailable with a clear message."""
        if libvirt is None:
            raise LibvirtUnavailable("libvirt-python is not installed on the service host (pip install 'memdump-service[libvirt]')")
        with self._lock:
            if self._conn is not None:
                try:
                    alive = self._conn.isAlive()
                except libvirt.libvirtError:
                    alive = False
                if alive:
                    return self._conn
                self._drop_locked()
            start_event_loop()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                self.last_error = str(exc)
                raise LibvirtUnavailable(f"cannot connect to libvirt at {self.uri}: {exc}; is libvirtd running?") from exc
            self.last_error = None
            LOG.info("connected to libvirt at %s", self.uri)
            return self._conn

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        self._caps = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pylint: disable=broad-exception-caught
                pass

    def check(self, conn: t.Any) -> None:
        """Drop conn if it is no longer usable, so that the next call reconnects."""
        try:
            alive = conn.isAlive()
        except Exception:  # pylint: disable=broad-exception-caught
            alive = False
        if not alive:
            with self._lock:
                if self._conn is conn:
                    self._drop_locked()
                    LOG.warning("lost the libvirt connection to %s", self.uri)

    def probe(self) -> t.Dict[str, t.Any]:
        """Connectivity facts for /health; reconnects when needed."""
        info: t.Dict[str, t.Any] = {"uri": self.uri, "connected": False, "driver": None, "version": None, "error": None}
        for _attempt in range(2):
            try:
                conn = self.connection()
                info["version"] = version_string(conn.getLibVersion())
                info["driver"] = conn.getType()
                info["connected"] = True
                info["error"] = None
                return info
            except LibvirtUnavailable as exc:
                info["error"] = str(exc)
                return info
            except libvirt.libvirtError as exc:
                info["error"] = f"libvirt at {self.uri} does not answer: {exc}"
                self.check(conn)
        return info

    def describe_domains(self, limit: int = 20) -> str:
        """'the domains there are a, b, ...' (sorted, at most limit), for an error message."""
        try:
            names = sorted(dom.name() for dom in self.connection().listAllDomains())
        except (DumpError, Exception):  # pylint: disable=broad-exception-caught  # only a hint in a message
            return "the domains there could not be listed"
        if not names:
            return "libvirt there has no domains"
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return "the domains there are " + ", ".join(names[:limit]) + more

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._drop_locked()


def _load_sync_file_range() -> t.Optional[t.Callable[..., int]]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux/glibc: images are still fsynced once at the end
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE = _load_sync_file_range()
SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


class StreamingWriteback:
    """Moves a file that is being written sequentially to the disk while it grows.

    Without it, the whole image sits dirty in the page cache until the final fsync, which then writes
    all of it while nothing else happens (about as long again as the dump on this project's test
    machine), and a large guest's image evicts the host's page cache. Here each 8 MiB step is handed
    to writeback as soon as it is complete, the step before it is waited for and dropped from the
    cache, so the final fsync has at most two steps left: the classic streaming-write pattern.
    """

    def __init__(self, fd: int, step: int = WRITEBACK_STEP) -> None:
        self.fd = fd
        self.step = step
        self.done = 0  # bytes on the disk and out of the page cache
        # Only a regular file has page cache to move; anything else gets the final fsync alone.
        self.enabled = _SYNC_FILE_RANGE is not None and stat.S_ISREG(os.fstat(fd).st_mode)

    def _sync(self, offset: int, length: int, flags: int) -> None:
        if _SYNC_FILE_RANGE(self.fd, offset, length, flags) != 0:  # type: ignore[misc]
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOSYS, errno.ESPIPE, errno.EOPNOTSUPP):
                self.enabled = False  # file system without it: fall back to the final fsync
                return
            raise OSError(err, os.strerror(err))

    def advance(self, written: int) -> None:
        """``written`` bytes of the file are written; raises OSError when the disk reports an error."""
        while self.enabled and written - self.done >= 2 * self.step:
            self._sync(self.done + self.step, self.step, SYNC_FILE_RANGE_WRITE)
            self._sync(self.done, self.step, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)
            if self.enabled:
                try:
                    os.posix_fadvise(self.fd, self.done, self.step, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass  # advice only: the pages stay cached, nothing is lost
            self.done += self.step


class FifoHasher:  # pylint: disable=too-many-instance-attributes
    """Drains a FIFO that libvirt writes into, hashing and writing to out_path in one pass.

    The read end is opened at once, without waiting for a writer (O_NONBLOCK), before libvirt is asked to
    dump: libvirt's open() of the FIFO for writing then never waits for a reader, and when the service dies
    at any moment the kernel closes the read end, so libvirt's writes fail (EPIPE) and the dump fails
    instead of a libvirtd thread staying blocked in open(). finish() ends a reader whose writer never came
    (libvirt failed before it opened the FIFO) and gives up on a writer that stays silent after the dump
    call returned. space(total bytes) is asked before the image grows past what was granted; when it
    raises DumpError the image stops growing (the stream is still drained) and on_stop() is called once.
    """

    def __init__(self, fifo_path: str, out_path: str, idle_timeout: float = 30.0,
                 space: t.Optional[t.Callable[[int], None]] = None, on_stop: t.Optional[t.Callable[[], None]] = None) -> None:
        self.fifo_path = fifo_path
        self.out_path = out_path
        self.idle_timeout = idle_timeout
        self.space = space
        self.on_stop = on_stop
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: t.Optional[str] = None
        self.error_code = "stream_error"
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memdump-fifo", daemon=True)
        self.fifo_fd = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            self.out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            os.close(self.fifo_fd)
            raise
        try:
            fcntl.fcntl(self.fifo_fd, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default 64 KiB pipe works, only slower

    def start(self) -> None:
        """Start the reader thread."""
        self._thread.start()

    def read_chunk(self) -> bytes:
        """The next piece of the stream (b"" once the writer closed); BlockingIOError when there is none yet."""
        return os.read(self.fifo_fd, CHUNK)

    def _run(self) -> None:
        try:
            writeback = self.writeback(self.out_fd)
            idle_since = time.monotonic()
            while True:
                # Linux reports neither data nor hang-up on a FIFO whose writer has not come yet: select waits.
                ready, _w, _x = select.select([self.fifo_fd], [], [], 0.5)
                if not ready:
                    if self._closing.is_set() and time.monotonic() - idle_since > self.idle_timeout:
                        self._fail("the dump stream stalled after libvirt returned")
                        return
                    continue
                try:
                    chunk = self.read_chunk()
                except BlockingIOError:
                    continue
                if not chunk:
                    return  # the writer closed: the end of the stream
                idle_since = time.monotonic()
                self._consume(chunk, writeback)
        except OSError as exc:
            self._fail(f"dump stream failed: {exc.strerror}")
        finally:
            os.close(self.fifo_fd)
            try:
                if self.error is None:
                    os.fsync(self.out_fd)
            except OSError as exc:
                self._fail(f"cannot write {self.out_path}: {exc.strerror}", "write_error")
            os.close(self.out_fd)

    def _fail(self, message: str, code: str = "stream_error") -> None:
        if self.error is None:
            self.error, self.error_code = message, code

    def _consume(self, chunk: bytes, writeback: StreamingWriteback) -> None:
        self.sha256.update(chunk)
        self.size += len(chunk)
        if self.error is not None:
            return  # keep draining so that libvirt is never blocked on a full pipe
        try:
            if self.space is not None:
                self.space(self.size)
            view = memoryview(chunk)
            while view:
                written = os.write(self.out_fd, view)
                view = view[written:]
            writeback.advance(self.size)
        except DumpError as exc:
            self._fail(str(exc), exc.code)
            if self.on_stop is not None:
                self.on_stop()
        except OSError as exc:
            self._fail(f"cannot write {self.out_path}: {exc.strerror}", "write_error")

    def writeback(self, out_fd: int) -> StreamingWriteback:
        """What moves the image to the disk while it grows."""
        return StreamingWriteback(out_fd)

    def finish(self) -> None:
        """Wait for the reader after the dump call returned (successfully or not)."""
        self._closing.set()
        while self._thread.is_alive():
            try:
                # A writer that comes and goes is a hang-up: it ends a reader whose writer never came (libvirt failed
                # before it opened the FIFO); while libvirt's writer is still open it changes nothing.
                os.close(os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as exc:
                if exc.errno not in (errno.ENXIO, errno.ENOENT):
                    raise
            self._thread.join(0.05)


def release_fifo(path: str, wait_for_writer: float = 1.0, drain: float = 5.0) -> int:
    """Release a FIFO that an interrupted dump left behind, then remove it; returns the bytes discarded.

    A libvirtd thread may be blocked opening it for writing (the service died after asking for the dump, before
    libvirt opened the FIFO): opening the read end wakes it. The FIFO is unlinked while the read end is held, so
    no later opener can block on it either; what a writer still sends is read and discarded for at most drain
    seconds, then closing the read end makes its next write fail (EPIPE), which ends libvirt's dump job.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        LOG.warning("cannot open the leftover FIFO %s to release a writer: %s", path, exc.strerror)
        remove_quietly(path)
        return 0
    discarded = 0
    try:
        remove_quietly(path)
        started = time.monotonic()
        seen_writer = False
        while True:
            elapsed = time.monotonic() - started
            if elapsed > drain or (not seen_writer and elapsed > wait_for_writer):
                break
            ready, _w, _x = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break  # the writer closed
            seen_writer = True
            discarded += len(chunk)
    finally:
        os.close(fd)
    return discarded


def hash_file(path: str) -> t.Tuple[str, int]:
    """SHA-256 and size of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096


def is_flattened(path: str) -> bool:
    """True for makedumpfile's "flattened" format, which QEMU writes for kdump formats into a pipe."""
    with open(path, "rb") as handle:
        return handle.read(len(FLAT_SIGNATURE)) == FLAT_SIGNATURE


def unflatten(src: str, dst: str) -> None:
    """Rearrange a flattened kdump stream into a regular kdump file (what makedumpfile -R does)."""
    with open(src, "rb") as stream, open(dst, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        stream.seek(FLAT_HEADER_SIZE)
        while True:
            header = stream.read(16)
            if len(header) < 16:
                raise DumpError("the flattened kdump stream from QEMU ends early")
            offset, size = struct.unpack(">qq", header)
            if offset < 0:
                break
            out.seek(offset)
            while size > 0:
                chunk = stream.read(min(size, CHUNK))
                if not chunk:
                    raise DumpError("the flattened kdump stream from QEMU ends early")
                out.write(chunk)
                size -= len(chunk)
        out.flush()
        os.fsync(out.fileno())


def free_bytes(path: str) -> int:
    """Bytes free for the service's user on the file system of path."""
    return shutil.disk_usage(path).free


def guest_context(conn: t.Any, dom: t.Any) -> t.Dict[str, t.Optional[str]]:
    """What an analyst needs besides the image: the domain XML at dump time, its machine type, the
    hypervisor's and libvirt's versions. A part libvirt cannot give stays None (the dump goes on)."""
    def ask(call: t.Callable[[], t.Any]) -> t.Any:
        try:
            return call()
        except Exception:  # pylint: disable=broad-exception-caught  # context, never a reason to fail a dump
            return None
    xml = ask(dom.XMLDesc)
    machine = None
    if xml:
        match = re.search(r"<type[^>]*\smachine=['\"]([^'\"]+)['\"]", xml)
        machine = match.group(1) if match else None
    hypervisor = ask(conn.getVersion)
    library = ask(conn.getLibVersion)
    return {"domain_xml": xml, "machine": machine, "qemu_version": version_string(hypervisor) if hypervisor else None,
            "libvirt_version": version_string(library) if library else None}


def remove_quietly(path: t.Optional[str]) -> None:
    """Remove a file if it exists."""
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            LOG.warning("cannot remove %s: %s", path, exc.strerror)


class DumpJob:  # pylint: disable=too-many-instance-attributes
    """One dump: look the guest up, reserve space, dump (memory-only or live) into a temp file, hash, rename."""

    def __init__(self, virt: Libvirt, dump_dir: str, vm: str, fmt: str, final_path: str, tmp_path: str, fifo_path: str,
                 progress_interval: float = 0.1, hash_mode: str = "fifo", method: str = "memory-only",
                 live_max_seconds: float = 120.0, live_max_downtime_ms: int = 50, stream_idle_timeout: float = 30.0) -> None:
        self.virt = virt
        self.stream_idle_timeout = stream_idle_timeout
        self.live = method == "live"
        self.live_max_seconds = live_max_seconds
        self.live_max_downtime_ms = live_max_downtime_ms
        self.timed_out = False
        self.dump_dir = dump_dir
        self.vm = vm
        self.fmt = fmt
        self.final_path = final_path
        self.tmp_path = tmp_path
        self.fifo_path = fifo_path
        self.progress_interval = progress_interval
        self.vm_uuid: t.Optional[str] = None
        self.memory_only = False
        self.paused_sec: t.Optional[float] = None
        # Where paused_sec comes from, and libvirt's downtime statistic of a live dump (which excludes the resume).
        self.pause_source: t.Optional[str] = None
        self.libvirt_downtime_sec: t.Optional[float] = None
        # libvirt's words when it refused a live dump before a byte of the stream was written (a migration blocker):
        # the guest was not paused, and method auto falls back to memory-only.
        self.live_refused: t.Optional[str] = None
        self.used_fifo = False
        self.hash_mode = hash_mode
        # Where libvirt writes when no FIFO is used (kdump formats arrive "flattened" and are rearranged).
        self.raw_path = tmp_path[:-len(".part")] + ".raw.part" if tmp_path.endswith(".part") else tmp_path + ".raw"

    def run(self, on_progress: t.Callable[[float], None], on_uuid: t.Callable[[str], None],
            reserve: t.Callable[[int], None], space: t.Optional[t.Callable[[int], None]] = None) -> t.Tuple[str, int]:
        """Dump; returns (sha256, size) of the image now at final_path. Raises DumpError (with its error code).

        reserve(guest memory in bytes) is called before the guest is paused; it raises DumpError when the space is
        lacking. space(image bytes so far) is asked while a streamed image grows; DumpError stops the dump.
        """
        conn = self.virt.connection()
        try:
            conn.getLibVersion()
        except libvirt.libvirtError:
            # A connection that broke since it was last used (libvirtd restarted): reconnect once.
            self.virt.check(conn)
            conn = self.virt.connection()
        try:
            return self._run(conn, on_progress, on_uuid, reserve, space)
        except libvirt.libvirtError as exc:
            self.virt.check(conn)
            message, code = self._explain(exc)
            if self.live and code in ("libvirt_error", "unsupported") and self.bytes_written() == 0:
                self.live_refused = str(exc)
            raise DumpError(message, code) from exc
        except OSError as exc:
            raise DumpError(f"dump of VM '{self.vm}' failed: {exc}", "write_error") from exc
        finally:
            remove_quietly(self.fifo_path if self.used_fifo else None)
            remove_quietly(self.raw_path)
            if not os.path.exists(self.final_path):
                remove_quietly(self.tmp_path)

    def _explain(self, exc: BaseException) -> t.Tuple[str, str]:
        """The client's message and the error code of a libvirt error."""
        code = error_code(exc)
        text = str(exc)
        if code == VIR_ERR_NO_DOMAIN:
            # A typo is the usual cause: name what there is, so that the responder can correct it.
            return f"VM '{self.vm}' does not exist on {self.virt.uri}; check the name: {self.virt.describe_domains()}", "no_such_vm"
        if code == VIR_ERR_OPERATION_INVALID and "not running" in text:
            return f"VM '{self.vm}' is not running (it stopped before or during the dump): {text}", "vm_not_running"
        if self.timed_out:
            return (f"live dump of VM '{self.vm}' aborted after --live-max-seconds {self.live_max_seconds:g}: the guest dirties "
                    f"its memory faster than it can be written within a pause of --live-max-downtime-ms "
                    f"{self.live_max_downtime_ms}; use method memory-only, which pauses the guest for the whole dump"), "live_timeout"
        if code == VIR_ERR_INVALID_ARG and "unsupported flags" in text:
            return f"libvirt at {self.virt.uri} cannot take this kind of dump of VM '{self.vm}': {text}", "unsupported"
        if self.live:
            # Migration blockers (host devices, some disk setups) land here, in libvirt's words.
            return (f"libvirt cannot take a live dump of VM '{self.vm}': {text}; method memory-only pauses the guest instead",
                    "libvirt_error")
        if self.fmt != "elf" and any(word in text.lower() for word in ("dumpformat", "unsupported", "not supported")):
            return f"format {self.fmt} is not supported by this host's hypervisor: {text}", "unsupported"
        return f"libvirt failed to dump VM '{self.vm}': {text}", "libvirt_error"

    def bytes_written(self) -> int:
        """Bytes the dump's temp files hold now (space it no longer needs reserved)."""
        written = 0
        for path in (self.tmp_path, self.raw_path):
            try:
                written += os.path.getsize(path)
            except OSError:
                pass
        return written

    def call_libvirt(self, dom: t.Any, target: str, flags: int) -> None:
        """libvirt's dump call: returns when the dump is written (or raises libvirtError)."""
        dom.coreDumpWithFormat(target, FORMATS[self.fmt][0], flags)

    def _stop_live(self, dom: t.Any) -> None:
        """Abort a live dump whose image may not grow further (a memory-only one cannot be aborted: it is drained)."""
        if self.live:
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                LOG.warning("cannot abort the live dump of VM '%s': %s", self.vm, exc)

    def _run(self, conn: t.Any, on_progress: t.Callable[[float], None],  # pylint: disable=too-many-branches,too-many-statements
             on_uuid: t.Callable[[str], None], reserve: t.Callable[[int], None], space: t.Optional[t.Callable[[int], None]]) -> t.Tuple[str, int]:
        dom = conn.lookupByName(self.vm)
        self.vm_uuid = dom.UUIDString()
        on_uuid(dict(guest_context(conn, dom), vm_uuid=self.vm_uuid))
        state = dom.state()[0]
        if state not in (1, 3):  # running, paused
            raise DumpError(f"VM '{self.vm}' is {STATE_NAMES.get(state, 'not running')}; only a running VM's memory can be dumped",
                            "vm_not_running")
        caps = self.virt.capabilities(conn)
        if self.live and not caps.live:
            self.live_refused = (f"libvirt at {self.virt.uri} describes no hypervisor that could take a live dump "
                                 "(virConnectGetDomainCapabilities names no emulator)")
            raise DumpError(f"libvirt at {self.virt.uri} cannot take live dumps (it describes no hypervisor: "
                            "virConnectGetDomainCapabilities is not supported there); use method memory-only", "unsupported")
        if self.fmt not in caps.formats:
            raise DumpError(f"libvirt at {self.virt.uri} offers only the formats {', '.join(caps.formats)}, not {self.fmt}", "unsupported")
        reserve(dom.info()[1] * 1024)
        self.memory_only = caps.memory_only and not self.live
        flags = VIR_DUMP_LIVE if self.live else VIR_DUMP_MEMORY_ONLY if self.memory_only else 0
        self.used_fifo = (self.live or self.memory_only and self.fmt == "elf") and self.hash_mode == "fifo"
        hasher: t.Any = None
        if self.used_fifo:
            remove_quietly(self.fifo_path)
            try:
                os.mkfifo(self.fifo_path, 0o600)
            except OSError as exc:
                raise DumpError(f"cannot create the FIFO {self.fifo_path}: {exc.strerror}; where the dump directory cannot hold "
                                "FIFOs, run the service with --hash-mode after", "write_error") from exc
            try:
                # Holds the FIFO's read end from here on, before libvirt is asked to open it for writing.
                hasher = FifoHasher(self.fifo_path, self.tmp_path, self.stream_idle_timeout, space=space, on_stop=lambda: self._stop_live(dom))
            except OSError as exc:
                raise DumpError(f"cannot open the FIFO {self.fifo_path} or the image file {self.tmp_path}: {exc.strerror}",
                                "write_error") from exc
            hasher.start()
            target = self.fifo_path
        else:
            target = self.raw_path
            # libvirtd creates a missing file as root, mode 0600, which a service running as its own user could not
            # read back; a file that exists keeps its owner, so create it first.
            remove_quietly(self.raw_path)
            try:
                os.close(os.open(self.raw_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                raise DumpError(f"cannot create the image file {self.raw_path}: {exc.strerror}", "write_error") from exc
        stop = threading.Event()
        poller = threading.Thread(target=self._poll, args=(dom, stop, on_progress), name="memdump-progress", daemon=True)
        poller.start()
        # QEMU's downtime limit is a setting of the guest's QEMU process that later migrations also use: put it back.
        previous_downtime_ms = dom.migrateGetMaxDowntime(0) if self.live else None
        if previous_downtime_ms is not None:
            # Recorded first, so that a restart after a crash can put it back too.
            on_uuid({"downtime_restore_ms": previous_downtime_ms})
        pauses = PauseWatch(conn, dom) if self.live else None
        dumped = False
        started = time.monotonic()
        try:
            if previous_downtime_ms is not None:
                dom.migrateSetMaxDowntime(self.live_max_downtime_ms, 0)
            self.call_libvirt(dom, target, flags)
            dumped = True
        except libvirt.libvirtError:
            if hasher is not None:
                hasher.finish()
                if hasher.error_code == "insufficient_space":
                    # The abort that stopped a growing live stream is why libvirt failed: say the cause.
                    raise DumpError(f"dump of VM '{self.vm}' stopped: {hasher.error}", hasher.error_code) from None
            raise
        finally:
            if not self.live:
                # A memory-only dump pauses the guest for the whole call, also when it fails.
                self.paused_sec, self.pause_source = round(time.monotonic() - started, 3), "dump_call"
            stop.set()
            if hasher is not None:
                hasher.finish()
            poller.join()
            if previous_downtime_ms is not None:
                try:
                    dom.migrateSetMaxDowntime(previous_downtime_ms, 0)
                except libvirt.libvirtError as exc:
                    LOG.warning("cannot restore the migration downtime limit %s ms of VM '%s': %s", previous_downtime_ms, self.vm, exc)
            # A completed live dump of a running guest paused it: its Suspended event may still be on its way.
            event_pause = pauses.finish(expect_pause=dumped and state == 1) if pauses is not None else None
        if self.live:
            self.libvirt_downtime_sec = self._live_downtime(dom)
            if event_pause is not None:
                self.paused_sec, self.pause_source = event_pause, "lifecycle_events"
            elif self.libvirt_downtime_sec is not None:
                self.paused_sec, self.pause_source = self.libvirt_downtime_sec, "libvirt_downtime"
        if isinstance(hasher, FifoHasher):
            if hasher.error:
                raise DumpError(f"dump of VM '{self.vm}' failed: {hasher.error}", hasher.error_code)
            digest, size = hasher.sha256.hexdigest(), hasher.size
        else:
            try:
                if self.fmt.startswith("kdump") and is_flattened(self.raw_path):
                    unflatten(self.raw_path, self.tmp_path)
                    remove_quietly(self.raw_path)
                else:
                    with open(self.raw_path, "rb+") as handle:
                        os.fsync(handle.fileno())
                    os.rename(self.raw_path, self.tmp_path)
                digest, size = hash_file(self.tmp_path)
            except OSError as exc:
                raise DumpError(f"cannot read back the image {self.tmp_path}: {exc.strerror}", "write_error") from exc
        self.publish()
        return digest, size

    def _live_downtime(self, dom: t.Any) -> t.Optional[float]:
        """libvirt's downtime statistic of a live dump: seconds from QEMU stopping the guest to the last page sent (the
        resume comes after it); None when libvirt cannot say (the image is complete either way: a statistics call
        never decides its fate)."""
        try:
            # The stats stay for others (virsh domjobinfo --completed) to read as well.
            downtime_ms = self.job_stats(dom, VIR_DOMAIN_JOB_STATS_COMPLETED | VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED).get("downtime")
        except Exception as exc:  # pylint: disable=broad-exception-caught
            LOG.warning("live dump of VM '%s' completed, but libvirt's job statistics are unavailable (%s): its pause is "
                        "not known", self.vm, exc)
            return None
        return None if downtime_ms is None else downtime_ms / 1000

    @staticmethod
    def job_stats(dom: t.Any, flags: int = 0) -> t.Dict[str, t.Any]:
        """libvirt's statistics of the domain's current (or, with flags, completed) job."""
        return dom.jobStats(flags)

    def publish(self) -> None:
        """Give the finished temp file its final name, durably."""
        try:
            os.chmod(self.tmp_path, 0o600)
            os.rename(self.tmp_path, self.final_path)
            dir_fd = os.open(self.dump_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise DumpError(f"cannot finish the image {self.final_path}: {exc.strerror}", "write_error") from exc

    def _poll(self, dom: t.Any, stop: threading.Event, on_progress: t.Callable[[float], None]) -> None:
        deadline = time.monotonic() + self.live_max_seconds
        while not stop.wait(self.progress_interval):
            if self.live and not self.timed_out and time.monotonic() > deadline:
                # A guest that dirties memory faster than the disk takes would keep a live dump going forever.
                self.timed_out = True
                try:
                    dom.abortJob()
                except libvirt.libvirtError as exc:
                    LOG.warning("cannot abort the live dump of VM '%s': %s", self.vm, exc)
            try:
                stats = self.job_stats(dom)
            except libvirt.libvirtError as exc:
                if error_code(exc) == VIR_ERR_NO_SUPPORT:
                    return
                continue
            total = stats.get("memory_total") or 0
            # A live dump skips zero pages (processed stays small); what is left to send says how far it is.
            processed = total - stats.get("memory_remaining", total) if self.live else stats.get("memory_processed") or 0
            if total > 0 and not stop.is_set():
                on_progress(min(99.9, max(0.0, 100.0 * processed / total)))
