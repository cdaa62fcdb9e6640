"""Test double of the seed's core memdump service, for client tests and benchmarks; not product code.

It offers only what the seed's service offered: ``POST /api/dumps`` (``{"vms": [...]}`` or
``{"vm_ids": [...]}``; other body fields are ignored) answering ``202 {"dumps": [...]}``, and
``GET /api/dumps`` (filters ``vm``, ``state``, ``dump_id``) answering ``{"dumps": [...], "vms": {...}}``,
records with the seed's fields only. No ``marker``, ``wait``, ``created``, labels, formats, request
ids, file download or DELETE; ``/health`` answers ``{"status": "ok", "features": []}``. With
``--token-file``, ``/api`` routes need the bearer token, as on the real service; without it,
``--insecure-no-auth`` must be given (loopback only), as there.

The dumps are real: the service's own JobManager takes them through libvirt, so a client tested
against this double gets real images; only the API is cut down to the seed's.

    python tests/doubles/core_service.py --listen 127.0.0.1:PORT --libvirt-uri URI \
        --dump-dir DIR --state-file FILE (--token-file FILE | --insecure-no-auth)

Needs the memdump service installed (``pip install -e 'service[libvirt]'``).
"""

import argparse
import http.server
import json
import logging
import os
import signal
import sys
import typing as t
import urllib.parse

from fastapi import HTTPException

from memdump_service.auth import Credentials, authenticate, credentials_of
from memdump_service.config import ConfigError, Settings, split_listen
from memdump_service.dumps import DumpRequest, parse_body
from memdump_service.errors import BadRequest
from memdump_service.jobs import JobManager

SEED_FIELDS = ("dump_id", "vm", "state", "progress", "dump_path", "started_at", "finished_at", "duration_sec", "message")
MAX_BODY = 1024 * 1024


def seed_record(record: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """A dump record with the seed's fields only."""
    return {key: record[key] for key in SEED_FIELDS}


class CoreServer(http.server.ThreadingHTTPServer):
    """The HTTP server, holding the job manager and the credentials for its handlers."""

    daemon_threads = True

    def __init__(self, address: t.Tuple[str, int], jobs: JobManager, credentials: t.Optional[Credentials]) -> None:
        super().__init__(address, CoreHandler)
        self.jobs = jobs
        self.credentials = credentials


class CoreHandler(http.server.BaseHTTPRequestHandler):
    """The seed's routes; the request lines go to stderr (the log), query strings included."""

    server: CoreServer
    server_version = "memdump-core-service-double"

    def answer(self, status: int, body: t.Any, headers: t.Optional[t.Mapping[str, str]] = None) -> None:
        """One JSON answer."""
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def authorized(self, path: str) -> bool:
        """False (after answering 401) for an /api path (of the request line) without the right token, when one is required."""
        if not (path == "/api" or path.startswith("/api/")):
            return True
        try:
            authenticate(self.server.credentials, self.headers.get("Authorization", ""))
        except HTTPException as exc:
            self.answer(exc.status_code, {"detail": exc.detail}, exc.headers)
            return False
        return True

    def route(self) -> t.Tuple[str, t.Dict[str, t.List[str]]]:
        """Path and query of the request."""
        url = urllib.parse.urlsplit(self.path)
        return url.path, urllib.parse.parse_qs(url.query, keep_blank_values=True)

    def do_GET(self) -> None:
        path, query = self.route()
        if not self.authorized(path):
            return
        if path == "/health":
            self.answer(200, {"status": "ok", "features": []})
        elif path == "/api/dumps":
            states = query.get("state") or [None]
            dumps, _next = self.server.jobs.list(query.get("vm", []), None, states[0], query.get("dump_id", []))
            per_vm: t.Dict[str, t.List[str]] = {}
            for record in dumps:
                per_vm.setdefault(record["vm"], []).append(record["dump_id"])
            self.answer(200, {"dumps": [seed_record(record) for record in dumps], "vms": per_vm})
        else:
            self.answer(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        path, _query = self.route()
        if not self.authorized(path):
            return
        if path != "/api/dumps":
            self.answer(404, {"detail": "Not Found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise BadRequest(f"request body is larger than {MAX_BODY} bytes", 413)
            body = json.loads(self.rfile.read(length).decode("utf-8"))
            if not isinstance(body, dict):
                raise BadRequest('request body must be a JSON object like {"vms": ["vm1"]}')
            # The seed read only the VM list: every other field is ignored, as it was there.
            order = parse_body(DumpRequest, {key: body[key] for key in ("vms", "vm_ids") if key in body})
        except BadRequest as exc:
            self.answer(exc.status, {"detail": str(exc)})
            return
        except ValueError as exc:  # not a number, not UTF-8, not JSON
            self.answer(400, {"detail": f"request body is not valid JSON: {exc}"})
            return
        dumps, _marker = self.server.jobs.create(order.vm_names)
        self.answer(202, {"dumps": [seed_record(record) for record in dumps]})

    def do_DELETE(self) -> None:
        """No route of the seed's takes DELETE, PUT or PATCH."""
        path, _query = self.route()
        if self.authorized(path):
            self.answer(404, {"detail": "Not Found"})

    do_PUT = do_PATCH = do_DELETE


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description="Test double of the seed's core memdump service (real dumps, seed API only).")
    parser.add_argument("--listen", default="127.0.0.1:5001", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--libvirt-uri", required=True)
    parser.add_argument("--dump-dir", required=True)
    parser.add_argument("--state-file", required=True)
    parser.add_argument("--token-file", help="file holding the bearer token required on /api routes")
    parser.add_argument("--insecure-no-auth", action="store_true", help="no token (loopback only)")
    args = parser.parse_args(argv)
    settings = Settings(dump_dir=os.path.abspath(args.dump_dir), state_file=os.path.abspath(args.state_file),
                        libvirt_uri=args.libvirt_uri, listen=args.listen, token_file=args.token_file,
                        insecure_no_auth=args.insecure_no_auth)
    try:
        settings.validate()
        credentials = credentials_of(settings.token_file, None)
    except ConfigError as exc:
        parser.error(str(exc))
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    jobs = JobManager(settings)
    server = CoreServer(split_listen(settings.listen), jobs, credentials)
    # serve_forever() runs in this thread, so shutdown() cannot be called from here: unwind instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    jobs.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        jobs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
