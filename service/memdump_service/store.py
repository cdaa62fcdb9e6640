"""SQLite persistence of dump records (thread-safe: one connection behind a lock)."""

import json
import os
import sqlite3
import threading
import typing as t

from memdump_service.config import ConfigError

COLUMNS = (
    "dump_id", "seq", "vm", "vm_uuid", "label", "method", "format", "state", "progress", "message",
    "created_at", "started_at", "finished_at", "duration_sec", "dump_path", "tmp_path",
    "size_bytes", "sha256", "paused_sec", "file_deleted", "host", "collected_at",
    "machine", "qemu_version", "libvirt_version", "domain_xml",
    "collected_by", "retention_confirmed_at", "retention_confirmed_by", "custody_heads", "error_code", "downtime_restore_ms",
    "method_requested", "format_requested", "method_reason", "pause_source", "libvirt_downtime_sec",
)
# Columns added after the first schema, added to databases written before they existed: what analysis tools need
# to know of the guest and the host at dump time (Volatility 3 needs the machine type for the PCI hole of QEMU
# images), who collected an image and whose confirmation lets retention remove it, the custody heads clients
# reported, why a dump failed, what was asked for (method auto decides the method and format when it runs), and where
# the recorded pause comes from. Column -> SQL type.
LATER_COLUMNS = {"machine": "TEXT", "qemu_version": "TEXT", "libvirt_version": "TEXT", "domain_xml": "TEXT", "collected_by": "TEXT",
                 "retention_confirmed_at": "TEXT", "retention_confirmed_by": "TEXT", "custody_heads": "TEXT", "error_code": "TEXT",
                 "downtime_restore_ms": "INTEGER", "method_requested": "TEXT", "format_requested": "TEXT", "method_reason": "TEXT",
                 "pause_source": "TEXT", "libvirt_downtime_sec": "REAL"}
# Stored as JSON text.
JSON_COLUMNS = ("custody_heads",)

SCHEMA = """
CREATE TABLE IF NOT EXISTS dumps (
    dump_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    vm TEXT NOT NULL,
    vm_uuid TEXT,
    label TEXT,
    method TEXT NOT NULL DEFAULT 'memory-only',
    format TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    duration_sec REAL,
    dump_path TEXT,
    tmp_path TEXT,
    size_bytes INTEGER,
    sha256 TEXT,
    paused_sec REAL,
    file_deleted INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL,
    collected_at TEXT,
    machine TEXT,
    qemu_version TEXT,
    libvirt_version TEXT,
    domain_xml TEXT,
    collected_by TEXT,
    retention_confirmed_at TEXT,
    retention_confirmed_by TEXT,
    custody_heads TEXT,
    error_code TEXT,
    downtime_restore_ms INTEGER,
    method_requested TEXT,
    format_requested TEXT,
    method_reason TEXT,
    pause_source TEXT,
    libvirt_downtime_sec REAL
);
CREATE INDEX IF NOT EXISTS dumps_vm ON dumps (vm, state);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    vms TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _owner_hint(path: str) -> str:
    """Why a state file the service cannot open is likely so: it belongs to another user (an earlier deployment)."""
    for candidate in (path, os.path.dirname(os.path.abspath(path))):
        try:
            owner = os.stat(candidate).st_uid
        except OSError:
            continue
        if owner != os.geteuid():
            return (f"; {candidate} belongs to uid {owner}, and the service runs as uid {os.geteuid()}: give it to the "
                    "service's user (chown -R), as the service role does")
        break
    return ""


class Store:
    """Dump records, request ids and the change marker in one SQLite file."""

    def __init__(self, path: str) -> None:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = self._open(path)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the state file {path}: {exc}{_owner_hint(path)}") from exc
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        """Connect and bring the schema of an older job database up to date."""
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        # Job databases written before collected_at or method existed (every dump then was memory-only).
        known = {row["name"] for row in db.execute("PRAGMA table_info(dumps)")}
        if "collected_at" not in known:
            db.execute("ALTER TABLE dumps ADD COLUMN collected_at TEXT")
        if "method" not in known:
            db.execute("ALTER TABLE dumps ADD COLUMN method TEXT NOT NULL DEFAULT 'memory-only'")
        for column, sql_type in LATER_COLUMNS.items():
            if column not in known:
                db.execute(f"ALTER TABLE dumps ADD COLUMN {column} {sql_type}")
        return db

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def load(self) -> t.List[t.Dict[str, t.Any]]:
        """Every record, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM dumps ORDER BY seq").fetchall()
        records = []
        for row in rows:
            record = dict(row)
            record["file_deleted"] = bool(record["file_deleted"])
            record["format"] = record["format"] or None  # an auto dump that has not run yet
            for column in JSON_COLUMNS:
                record[column] = json.loads(record[column]) if record[column] else []
            records.append(record)
        return records

    def save(self, record: t.Mapping[str, t.Any]) -> None:
        """Insert or replace one record."""
        values = [record.get(name) for name in COLUMNS]
        values[COLUMNS.index("file_deleted")] = int(bool(record.get("file_deleted")))
        # The column predates method auto, whose format is unknown until the dump runs.
        values[COLUMNS.index("format")] = record.get("format") or ""
        for column in JSON_COLUMNS:
            values[COLUMNS.index(column)] = json.dumps(record.get(column) or [])
        marks = ", ".join(["?"] * len(COLUMNS))
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO dumps ({', '.join(COLUMNS)}) VALUES ({marks})", values)

    def get_request(self, request_id: str) -> t.Optional[t.Tuple[t.List[str], t.List[t.Dict[str, t.Any]]]]:
        """The VM list and result (dump ids and created flags) of an earlier request_id."""
        with self._lock:
            row = self._db.execute("SELECT vms, result FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        return json.loads(row["vms"]), json.loads(row["result"])

    def save_request(self, request_id: str, vms: t.List[str], result: t.List[t.Dict[str, t.Any]]) -> None:
        """Remember what a request_id created."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO requests (request_id, vms, result) VALUES (?, ?, ?)",
                             (request_id, json.dumps(vms), json.dumps(result)))

    def get_meta(self, key: str, default: str) -> str:
        """A value of the meta table."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the meta table."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
