"""The dump queue: reuse rules, parallel cap, persistence, restart recovery and change notification."""

import asyncio
import collections
import datetime
import logging
import os
import re
import socket
import threading
import time
import typing as t
import uuid

from memdump_service import audit
from memdump_service.config import Settings
from memdump_service.store import Store
from memdump_service.virt import AUTO, FORMATS, LIVE_FORMAT, DumpError, DumpJob, Libvirt, free_bytes, release_fifo, remove_quietly

LOG = logging.getLogger("memdump_service")

IN_FLIGHT = ("queued", "running")
FINISHED = ("completed", "failed")
PRIVATE = ("seq", "tmp_path", "downtime_restore_ms")
INTERRUPTED = "interrupted by service restart"
# How much further a streamed image may grow per check of the free space, once it is larger than the guest's memory
# (a live dump's stream re-sends the pages the guest dirties, so it can outgrow the memory).
GROW_STEP = 256 * 1024 * 1024
# Custody heads kept per dump: the list is append-only, so a client must not be able to grow it without bound.
MAX_CUSTODY_HEADS = 1000


def utcnow() -> datetime.datetime:
    """Now, in UTC."""
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment: datetime.datetime) -> str:
    """ISO 8601 UTC with Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime.datetime:
    """Inverse of iso()."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


def safe_name(vm: str) -> str:
    """A VM name reduced to characters that are safe in a file name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", vm).lstrip(".")[:64]
    return name or "vm"


def image_name(record: t.Mapping[str, t.Any], fmt: str, stamp: datetime.datetime) -> str:
    """An image's file name: the VM (made safe), the start time, the dump id and the format's extension."""
    return f"{safe_name(record['vm'])}_{stamp.strftime('%Y%m%dT%H%M%SZ')}_{record['dump_id']}.{FORMATS[fmt][1]}"


def requested(record: t.Mapping[str, t.Any]) -> t.Tuple[str, t.Optional[str]]:
    """The kind of image a record was asked for, (method, format), which the reuse rules compare; with method auto
    the format is the memory-only fallback's. A record written before the service kept the request is what was asked."""
    if record.get("method_requested") is None:
        return record["method"], record["format"]
    return record["method_requested"], record["format_requested"]


def shorten(text: str, limit: int = 64) -> str:
    """Client input echoed in a message, cut to a sane length."""
    return text if len(text) <= limit else text[:limit] + "..."


class RequestConflict(Exception):
    """A request_id was reused for a different request."""


class Notifier:
    """Wakes asyncio waiters (in any event loop) from any thread; holds at most capacity of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._waiters: t.Set[t.Tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()

    def notify(self) -> None:
        """Wake every waiter."""
        with self._lock:
            waiters = list(self._waiters)
            self._waiters.clear()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # loop closed
                pass

    async def wait(self, unchanged: t.Callable[[], bool], timeout: float) -> None:
        """Return when notified or after timeout; at once if unchanged() is already false or capacity waiters are held
        (clients ask again, so a full house costs them a round trip, not an answer)."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        with self._lock:
            if len(self._waiters) >= self.capacity:
                return
            self._waiters.add(entry)
        try:
            if unchanged():
                await asyncio.wait_for(entry[1], timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class JobManager:  # pylint: disable=too-many-instance-attributes
    """All dump records (in memory, written through to SQLite) and the workers that run them."""

    def __init__(self, settings: Settings, virt: t.Optional[Libvirt] = None) -> None:
        self.settings = settings
        self.virt = virt or Libvirt(settings.libvirt_uri)
        self.host = socket.gethostname()
        self.store = Store(settings.state_file)
        self.notifier = Notifier(settings.max_waiters)
        self._lock = threading.RLock()
        self._records: t.Dict[str, t.Dict[str, t.Any]] = {}
        self._queue: t.Deque[str] = collections.deque()
        self._running: t.Set[str] = set()
        self._threads: t.List[threading.Thread] = []
        # Space each running dump was granted (guest memory + margin) and its job, which knows what it wrote so far.
        self._reserved: t.Dict[str, t.Tuple[int, DumpJob]] = {}
        self._wake_housekeeper = threading.Event()
        self._housekeeper: t.Optional[threading.Thread] = None
        self._seq = 0
        self._stopping = False
        self.marker = int(self.store.get_meta("marker", "0"))
        self._prepare_dump_dir()

    # ----- life cycle
    def _prepare_dump_dir(self) -> None:
        os.makedirs(self.settings.dump_dir, mode=0o700, exist_ok=True)
        os.chmod(self.settings.dump_dir, 0o700)

    def start(self) -> None:
        """Recover after a restart, then run what is queued."""
        with self._lock:
            for record in self.store.load():
                self._records[record["dump_id"]] = record
                self._seq = max(self._seq, record["seq"])
                if record["state"] == "running":
                    # A libvirtd thread may still wait for the FIFO's reader: release it before anything is removed.
                    discarded = release_fifo(self.fifo_path(record["dump_id"]))
                    if discarded:
                        LOG.info("dump %s vm=%s: released libvirt's writer of the interrupted dump (%d bytes discarded)",
                                 record["dump_id"], record["vm"], discarded)
                    remove_quietly(record.get("tmp_path"))
                    self._restore_downtime(record)
                    self._transition(record, state="failed", message=INTERRUPTED, error_code="interrupted", finished_at=iso(utcnow()),
                                     dump_path=None, downtime_restore_ms=None)
                elif record["state"] == "queued":
                    self._queue.append(record["dump_id"])
            self._sweep_partials()
            self._dispatch()
        if self.settings.retention_days is not None or self.settings.max_bytes is not None:
            self._housekeeper = threading.Thread(target=self._housekeep, name="memdump-retention", daemon=True)
            self._housekeeper.start()

    def _sweep_partials(self) -> None:
        """Nothing runs yet: every temp file or FIFO in the dump dir is left over from a crash."""
        for name in os.listdir(self.settings.dump_dir):
            path = os.path.join(self.settings.dump_dir, name)
            if name.startswith(".") and name.endswith(".fifo"):
                LOG.info("releasing and removing leftover FIFO %s", name)
                release_fifo(path)
            elif name.startswith(".") and name.endswith(".part"):
                LOG.info("removing leftover partial file %s", name)
                remove_quietly(path)

    def _restore_downtime(self, record: t.Mapping[str, t.Any]) -> None:
        """Put back the guest's migration downtime limit that an interrupted live dump had changed (a setting of its
        QEMU process that real migrations use too)."""
        previous = record.get("downtime_restore_ms")
        if previous is None:
            return
        try:
            self.virt.connection().lookupByName(record["vm"]).migrateSetMaxDowntime(int(previous), 0)
            LOG.info("dump %s vm=%s: migration downtime limit put back to %s ms", record["dump_id"], record["vm"], previous)
        except Exception as exc:  # pylint: disable=broad-exception-caught  # a hint for the operator, never a reason not to start
            LOG.warning("dump %s vm=%s: cannot put the migration downtime limit back to %s ms (virsh migrate-setmaxdowntime %s %s): %s",
                        record["dump_id"], record["vm"], previous, record["vm"], previous, exc)

    def fifo_path(self, dump_id: str) -> str:
        """Where libvirt streams a dump's image (in the dump dir, so that a restart finds it)."""
        return os.path.join(self.settings.dump_dir, f".{dump_id}.fifo")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop dispatching; wait a little for running dumps; close."""
        with self._lock:
            self._stopping = True
            threads = list(self._threads) + ([self._housekeeper] if self._housekeeper else [])
        self._wake_housekeeper.set()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.notifier.notify()
        self.virt.close()

    # ----- views
    @staticmethod
    def public(record: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
        """A record as clients see it."""
        return {key: value for key, value in record.items() if key not in PRIVATE}

    def get(self, dump_id: str) -> t.Optional[t.Dict[str, t.Any]]:
        """One record or None."""
        with self._lock:
            record = self._records.get(dump_id)
            return self.public(record) if record else None

    def list(self, vms: t.Sequence[str] = (), label: t.Optional[str] = None, state: t.Optional[str] = None,
             dump_ids: t.Sequence[str] = (), limit: t.Optional[int] = None,
             before: t.Optional[str] = None) -> t.Tuple[t.List[t.Dict[str, t.Any]], t.Optional[str]]:
        """One page of records, newest first, filtered: at most limit records older than the dump before
        (a known dump_id); and the dump_id to pass as before for the next page, None on the last page."""
        with self._lock:
            older_than = self._records[before]["seq"] if before is not None else None
            records = sorted(self._records.values(), key=lambda r: r["seq"], reverse=True)
            matching = [r for r in records
                        if (older_than is None or r["seq"] < older_than) and (not vms or r["vm"] in vms)
                        and (label is None or r["label"] == label) and (state is None or r["state"] == state)
                        and (not dump_ids or r["dump_id"] in dump_ids)]
            page = matching if limit is None else matching[:limit]
            next_before = page[-1]["dump_id"] if len(page) < len(matching) else None
            return [self.public(r) for r in page], next_before

    def counts(self) -> t.Dict[str, int]:
        """Queue sizes."""
        with self._lock:
            return {"queued": len(self._queue), "running": len(self._running), "max_parallel": self.settings.max_parallel}

    async def wait_for_change(self, marker: int, timeout: float) -> None:
        """Hold until the marker moves away from marker, or timeout."""
        await self.notifier.wait(lambda: self.marker == marker, timeout)

    # ----- changes
    def create(self, vms: t.Sequence[str], label: t.Optional[str] = None, fmt: str = "elf", force: bool = False,
               request_id: t.Optional[str] = None, dry_run: bool = False,
               method: str = "memory-only") -> t.Tuple[t.List[t.Dict[str, t.Any]], int]:
        """Apply the reuse rules per VM; returns records (with 'created') in request order and the marker.

        With dry_run nothing is created, queued or recorded: a VM that would get a new dump is answered
        with a record that has only vm, label, method and format (dump_id and state None).
        With method auto, fmt is the format of the memory-only dump it falls back to; the record's format stays None
        until the dump runs and libvirt has accepted or refused the live dump.
        """
        with self._lock:
            if request_id is not None:
                earlier = self.store.get_request(request_id)
                if earlier is not None:
                    if earlier[0] != list(vms):
                        raise RequestConflict(f"request_id {request_id!r} was already used for VMs {earlier[0]}; use a new request_id")
                    return [dict(self.public(self._records[item["dump_id"]]), created=item["created"]) for item in earlier[1]], self.marker
            reused = [(vm, self._reusable(vm, label, force, method, fmt)) for vm in vms]
            if dry_run:
                return [dict(self.public(record), created=False) if record is not None else
                        {"vm": vm, "dump_id": None, "state": None, "label": label, "method": method,
                         "format": None if method == AUTO else fmt, "created": True}
                        for vm, record in reused], self.marker
            results = [(record, False) if record is not None else (self._new_record(vm, label, fmt, method), True)
                       for vm, record in reused]
            if request_id is not None:
                self.store.save_request(request_id, list(vms), [{"dump_id": r["dump_id"], "created": c} for r, c in results])
            self._dispatch()
            return [dict(self.public(r), created=c) for r, c in results], self.marker

    def _reusable(self, vm: str, label: t.Optional[str], force: bool, method: str, fmt: str) -> t.Optional[t.Dict[str, t.Any]]:
        """The reuse rules: the dump a request for vm gets instead of a new one, or None. Only the kind of image asked
        for counts (label, method and format): an in-flight one always, a completed one unless force. A request that
        differs gets its own dump, which waits in the queue while another dump of the VM runs."""
        newest_done = None
        for record in self._records.values():
            if record["vm"] != vm or record["label"] != label or requested(record) != (method, fmt):
                continue
            if record["state"] in IN_FLIGHT:
                return record
            if (label is not None and not force and record["state"] == "completed"
                    and (newest_done is None or record["seq"] > newest_done["seq"])):
                newest_done = record
        return newest_done

    def _new_record(self, vm: str, label: t.Optional[str], fmt: str, method: str) -> t.Dict[str, t.Any]:
        self._seq += 1
        record = {
            "dump_id": uuid.uuid4().hex, "seq": self._seq, "vm": vm, "vm_uuid": None, "label": label, "method": method,
            "format": None if method == AUTO else fmt, "method_requested": method, "format_requested": fmt,
            "method_reason": None,
            "machine": None, "qemu_version": None, "libvirt_version": None, "domain_xml": None,
            "state": None, "progress": 0.0, "message": "", "created_at": iso(utcnow()), "started_at": None,
            "finished_at": None, "duration_sec": None, "dump_path": None, "tmp_path": None, "size_bytes": None,
            "sha256": None, "paused_sec": None, "pause_source": None, "libvirt_downtime_sec": None, "file_deleted": False,
            "host": self.host, "collected_at": None,
            "collected_by": None, "retention_confirmed_at": None, "retention_confirmed_by": None, "custody_heads": [],
            "error_code": None, "downtime_restore_ms": None,
        }
        self._records[record["dump_id"]] = record
        self._queue.append(record["dump_id"])
        self._transition(record, state="queued", message="waiting for a free dump slot")
        return record

    def _transition(self, record: t.Dict[str, t.Any], **changes: t.Any) -> None:
        """Apply a state change: persist, log one line, bump the marker, wake waiters. Caller holds the lock."""
        record.update(changes)
        if changes.get("finished_at") and record.get("started_at"):
            record["duration_sec"] = round((parse_iso(record["finished_at"]) - parse_iso(record["started_at"])).total_seconds(), 3)
        self.store.save(record)
        self.marker += 1
        self.store.set_meta("marker", str(self.marker))
        LOG.info("dump %s vm=%s label=%s state=%s message=%s", record["dump_id"], record["vm"], record["label"], record["state"],
                 record["message"])
        self.notifier.notify()

    def delete(self, dump_id: str) -> t.Tuple[int, t.Any]:
        """Cancel a queued dump or delete a finished one's file; (HTTP status, record or message)."""
        with self._lock:
            record = self._records.get(dump_id)
            if record is None:
                return 404, f"dump {shorten(dump_id)} not found"
            if record["state"] == "running":
                return 409, f"dump {dump_id} is running and cannot be cancelled (libvirt cannot abort a memory-only dump); wait for it to finish"
            if record["state"] == "queued":
                self._queue.remove(dump_id)
                self._transition(record, state="failed", message="cancelled by request", error_code="cancelled", finished_at=iso(utcnow()))
                return 200, self.public(record)
            if self._remove_image(record):
                LOG.info("dump %s vm=%s file deleted by request", dump_id, record["vm"])
            return 200, self.public(record)

    def _remove_image(self, record: t.Dict[str, t.Any]) -> bool:
        """Delete a finished dump's image (and any partial file), keeping the record; True if it was still there.
        Caller holds the lock."""
        for path in (record.get("dump_path"), record.get("tmp_path")):
            remove_quietly(path)
        if record["file_deleted"]:
            return False
        record.update(file_deleted=True, dump_path=None)
        self.store.save(record)
        return True

    def mark_collected(self, dump_id: str, sha256: str, client: str, may_delete: bool,
                       custody_head: t.Optional[t.Mapping[str, t.Any]] = None) -> t.Tuple[int, t.Any]:
        """Record that client holds a copy of a completed dump's image whose hash it verified, and the custody log's
        head it reports (appended to custody_heads); (HTTP status, record or message).

        Retention removes an image only once a client that may delete it (may_delete: it holds the delete scope, or
        the operator's --retention-trusts-collect) confirmed it; a report of any other client is recorded all the same.
        """
        with self._lock:
            record = self._records.get(dump_id)
            if record is None:
                return 404, f"dump {shorten(dump_id)} not found"
            if record["state"] != "completed":
                return 409, f"dump {dump_id} is {record['state']}; only the image of a completed dump can be collected"
            if sha256 != record["sha256"]:
                return 409, (f"sha256 {sha256} differs from the image's {record['sha256']}: the collected copy is not the image; "
                             "download it again")
            heads = list(record.get("custody_heads") or [])
            if custody_head is not None:
                known = [(head["label"], head["seq"], head["hash"]) for head in heads]
                if (custody_head["label"], custody_head["seq"], custody_head["hash"]) not in known:
                    if len(heads) >= MAX_CUSTODY_HEADS:
                        return 409, f"dump {dump_id} already holds {MAX_CUSTODY_HEADS} custody heads; no more are recorded"
                    heads.append({"label": custody_head["label"], "seq": custody_head["seq"], "hash": custody_head["hash"],
                                  "client": client, "at": iso(utcnow())})
            now = iso(utcnow())
            changes: t.Dict[str, t.Any] = {"custody_heads": heads}
            if record["collected_at"] is None:
                changes.update(collected_at=now, collected_by=client)
            if may_delete and record.get("retention_confirmed_at") is None:
                changes.update(retention_confirmed_at=now, retention_confirmed_by=client)
            if any(record.get(key) != value for key, value in changes.items()):
                record.update(changes)
                self.store.save(record)
                LOG.info("dump %s vm=%s collected by %s: the client verified sha256 %s%s%s", dump_id, record["vm"], client, sha256,
                         "" if may_delete else " (it cannot delete: retention still keeps the image)",
                         f", custody head {custody_head['label']} seq {custody_head['seq']}" if custody_head else "")
                audit.write("collected", dump_id=dump_id, vm=record["vm"], client=client, sha256=sha256, allows_removal=may_delete,
                            custody_head=dict(custody_head) if custody_head else None)
                self._wake_housekeeper.set()
            return 200, self.public(record)

    # ----- retention
    def _housekeep(self) -> None:
        """Retention every retention_interval seconds, and soon after each dump and each collection."""
        while True:
            self._wake_housekeeper.wait(self.settings.retention_interval)
            self._wake_housekeeper.clear()
            with self._lock:
                if self._stopping:
                    return
            try:
                self._apply_retention()
            except Exception:  # pylint: disable=broad-exception-caught
                LOG.exception("retention failed; it runs again in %s s", self.settings.retention_interval)

    def _apply_retention(self) -> None:
        """Remove the images that --retention-days and --max-bytes allow, oldest first: only those whose collection a
        client that may delete confirmed, unless --retention-uncollected. One log line and one audit line each, naming
        the client whose confirmation allowed the removal (or the option that did)."""
        days, max_bytes = self.settings.retention_days, self.settings.max_bytes
        with self._lock:
            kept = sorted((r for r in self._records.values() if r["state"] == "completed" and not r["file_deleted"]),
                          key=lambda r: r["seq"])
            total = sum(r["size_bytes"] or 0 for r in kept)
            cutoff = utcnow() - datetime.timedelta(days=days) if days is not None else None
            for record in kept:
                confirmed = record.get("retention_confirmed_at")
                if not (confirmed or self.settings.retention_uncollected):
                    continue
                since = confirmed or record["finished_at"]
                if cutoff is not None and since and parse_iso(since) < cutoff:
                    reason = f"{'collected' if confirmed else 'finished'} more than {days:g} days ago (--retention-days)"
                elif max_bytes is not None and total > max_bytes:
                    reason = f"the images take {total} bytes, more than --max-bytes {max_bytes}"
                else:
                    continue
                total -= record["size_bytes"] or 0
                path = record["dump_path"]
                self._remove_image(record)
                LOG.info("dump %s vm=%s image %s removed by retention: %s", record["dump_id"], record["vm"], path, reason)
                audit.write("retention", dump_id=record["dump_id"], vm=record["vm"], path=path, size_bytes=record["size_bytes"],
                            sha256=record["sha256"], collected_at=record["collected_at"], confirmed_by=record.get("retention_confirmed_by"),
                            confirmed_at=confirmed, allowed_by=("confirmation of " + record["retention_confirmed_by"]) if confirmed
                            else "--retention-uncollected", reason=reason)

    # ----- workers
    def _dispatch(self) -> None:
        with self._lock:
            while not self._stopping and self._queue and len(self._running) < self.settings.max_parallel:
                # libvirt runs one job per guest: a dump of a VM that is being dumped waits for its turn.
                busy = {self._records[other]["vm"] for other in self._running}
                dump_id = next((queued for queued in self._queue if self._records[queued]["vm"] not in busy), None)
                if dump_id is None:
                    return
                self._queue.remove(dump_id)
                record = self._records[dump_id]
                stamp = utcnow()
                # method auto tries a live dump first.
                name = image_name(record, record["format"] or LIVE_FORMAT, stamp)
                self._running.add(dump_id)
                self._transition(record, state="running", started_at=iso(stamp), progress=0.0, message="dumping memory",
                                 tmp_path=os.path.join(self.settings.dump_dir, f".{name}.part"))
                thread = threading.Thread(target=self._work, args=(dump_id, name), name=f"memdump-{dump_id[:8]}", daemon=True)
                self._threads = [th for th in self._threads if th.is_alive()] + [thread]
                thread.start()

    def _progress(self, record: t.Dict[str, t.Any], value: float) -> None:
        with self._lock:
            if record["state"] == "running":
                record["progress"] = round(value, 1)

    def _reserve(self, dump_id: str, job: DumpJob, memory: int) -> None:
        """Grant a starting dump guest memory + margin out of the dump dir's free space less what the running dumps
        were granted and have not written yet; DumpError (naming the bytes) when it does not fit."""
        margin = self.settings.space_margin
        needed = memory + margin
        with self._lock:
            free = free_bytes(self.settings.dump_dir)
            unwritten = [granted - other.bytes_written() for other_id, (granted, other) in self._reserved.items() if other_id != dump_id]
            holding = [amount for amount in unwritten if amount > 0]
            if free - sum(holding) < needed:
                also = f" of which {sum(holding)} are reserved by {len(holding)} running dump{'s' * (len(holding) > 1)}" if holding else ""
                raise DumpError(f"not enough free space in {self.settings.dump_dir}: {needed} bytes needed (guest memory {memory} "
                                f"+ margin {margin}), {free} free{also}", "insufficient_space")
            self._reserved[dump_id] = (needed, job)

    def _space(self, dump_id: str, total: int) -> None:
        """A streamed image is about to hold total bytes: past its grant (guest memory), grow the grant by what the dump
        dir holds beyond the margin (less what the other running dumps hold), at most GROW_STEP at a time; DumpError
        when not even the bytes about to be written fit, which stops the dump before the margin is reached."""
        margin = self.settings.space_margin
        with self._lock:
            granted, job = self._reserved.get(dump_id, (margin, None))
            if total <= granted - margin:
                return
            written = job.bytes_written() if job is not None else 0
            pending = max(0, total - written)
            free = free_bytes(self.settings.dump_dir)
            holding = sum(max(0, amount - other.bytes_written()) for other_id, (amount, other) in self._reserved.items()
                          if other_id != dump_id)
            available = free - holding - margin
            if available < pending:
                raise DumpError(f"the image reached {total} bytes, more than the guest's memory, and "
                                f"{self.settings.dump_dir} has {free} bytes free ({holding} of them reserved by other dumps): not "
                                f"enough for {pending} more bytes and the margin of {margin} (--space-margin); free space there, or "
                                "use method memory-only, whose image is about the size of the guest's memory", "insufficient_space")
            self._reserved[dump_id] = (written + min(max(pending, GROW_STEP), available) + margin, job)

    def _set_uuid(self, record: t.Dict[str, t.Any], value: t.Union[str, t.Mapping[str, t.Any]]) -> None:
        """The guest's UUID, or a mapping of it and its context (machine type, versions, domain XML)."""
        with self._lock:
            record.update(value if isinstance(value, dict) else {"vm_uuid": value})
            self.store.save(record)

    def _job(self, dump_id: str, name: str, method: str, fmt: str) -> DumpJob:
        with self._lock:
            record = self._records[dump_id]
            vm, tmp_path = record["vm"], record["tmp_path"]
        return DumpJob(self.virt, self.settings.dump_dir, vm, fmt, os.path.join(self.settings.dump_dir, name), tmp_path,
                       self.fifo_path(dump_id), self.settings.progress_interval, self.settings.hash_mode, method,
                       self.settings.live_max_seconds, self.settings.live_max_downtime_ms, self.settings.stream_idle_timeout)

    def _fall_back(self, dump_id: str, refused: str) -> t.Tuple[str, str]:
        """method auto after libvirt refused the live dump before the guest was touched: the record turns into a
        memory-only dump of the requested format; returns its image name and format."""
        with self._lock:
            record = self._records[dump_id]
            fmt = record["format_requested"] or "elf"
            name = image_name(record, fmt, parse_iso(record["started_at"]))
            reason = f"auto: libvirt refused a live dump, so the guest is paused for a memory-only dump: {refused}"
            LOG.info("dump %s vm=%s: %s", dump_id, record["vm"], reason)
            self._reserved.pop(dump_id, None)
            self._transition(record, method="memory-only", format=fmt, method_reason=reason, message="dumping memory (memory-only)",
                             tmp_path=os.path.join(self.settings.dump_dir, f".{name}.part"))
        return name, fmt

    def _work(self, dump_id: str, name: str) -> None:
        with self._lock:
            record = self._records[dump_id]
            vm, fmt, method = record["vm"], record["format"], record["method"]
            auto = method == AUTO
            if auto:
                method, fmt = "live", LIVE_FORMAT
                self._transition(record, method=method, format=fmt, message="dumping memory (live)")
        job = self._job(dump_id, name, method, fmt)

        def run(job: DumpJob) -> t.Tuple[str, int]:
            return job.run(lambda value: self._progress(record, value), lambda value: self._set_uuid(record, value),
                           lambda memory: self._reserve(dump_id, job, memory), lambda total: self._space(dump_id, total))

        outcome: t.Dict[str, t.Any]
        try:
            try:
                digest, size = run(job)
            except DumpError:
                if not auto or job.live_refused is None:
                    raise
                name, fmt = self._fall_back(dump_id, job.live_refused)
                job = self._job(dump_id, name, "memory-only", fmt)
                digest, size = run(job)
            if job.live:
                message = f"live dump completed: the guest kept running, paused {job.paused_sec} s for the last pages"
            elif job.memory_only:
                message = f"memory-only {fmt} dump completed"
            else:
                message = (f"full (not memory-only) {fmt} dump completed: libvirt at {self.settings.libvirt_uri} describes no "
                           "hypervisor that could take a memory-only dump")
            outcome = {"state": "completed", "progress": 100.0, "message": message, "dump_path": job.final_path, "size_bytes": size,
                       "sha256": digest, "error_code": None}
        except DumpError as exc:
            outcome = {"state": "failed", "message": str(exc), "error_code": exc.code}
        except Exception as exc:  # pylint: disable=broad-exception-caught
            LOG.exception("dump %s vm=%s: unexpected error", dump_id, vm)
            outcome = {"state": "failed", "message": f"internal error of the memdump service: {exc}", "error_code": "internal_error"}
        outcome.update(paused_sec=job.paused_sec, pause_source=job.pause_source, libvirt_downtime_sec=job.libvirt_downtime_sec)
        if auto and job.live:
            # A live dump that failed is not retried as memory-only, which would pause the guest: the responder decides.
            outcome["method_reason"] = ("auto: libvirt accepted a live dump (the guest can migrate)" if outcome["state"] == "completed"
                                        else "auto: the live dump failed (see message); it is not retried as memory-only")
        with self._lock:
            self._running.discard(dump_id)
            self._reserved.pop(dump_id, None)
            self._transition(record, finished_at=iso(utcnow()), tmp_path=None, downtime_restore_ms=None, **outcome)
            self._dispatch()
