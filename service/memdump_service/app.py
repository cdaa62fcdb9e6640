"""The HTTP API (docs/api.md) on top of the JobManager."""

import contextlib
import hmac
import json
import logging
import os
import re
import typing as t

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from memdump_service import __version__
from memdump_service.config import Settings
from memdump_service.jobs import JobManager, RequestConflict, shorten
from memdump_service.virt import FORMATS, libvirt

LOG = logging.getLogger("memdump_service")

MAX_NAME = 255
MAX_VMS = 1000
MAX_WAIT = 120.0
LABEL_RE = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")
STATES = ("queued", "running", "completed", "failed")
FEATURES = ["wait", "label", "request_id", "file", "delete"]


class ErrorAnswer(BaseModel):
    """Every error answer of the API."""

    detail: str = Field(description="what is wrong and what to do")


ERROR_TEXT = {
    400: "invalid input", 401: "missing or invalid bearer token", 404: "no such dump", 409: "conflicts with the dump's state",
    410: "the image was deleted or is missing", 413: "request body too large", 415: "body is not JSON",
    416: "range not satisfiable", 422: "invalid parameter",
}


def error_responses(*codes: int) -> t.Dict[t.Union[int, str], t.Dict[str, t.Any]]:
    """OpenAPI declarations of a route's error answers (all JSON ``{"detail": str}``)."""
    return {code: {"model": ErrorAnswer, "description": ERROR_TEXT[code]} for code in codes}


def range_error(http_range: t.Optional[str], size: int) -> t.Optional[JSONResponse]:
    """A JSON answer for a Range header that the file response would refuse in plain text, else None.

    Starlette's FileResponse answers bad ranges itself, as text; its own parser decides here, so both agree.
    """
    parse = getattr(FileResponse, "_parse_range_header", None)
    if not http_range or parse is None:
        return None
    try:
        parse(http_range, size)
    except MalformedRangeHeader as exc:
        return error(400, f"malformed Range header {shorten(http_range)!r}: {exc.content}; use bytes=START-END")
    except RangeNotSatisfiable:
        return error(416, f"Range {shorten(http_range)!r} is outside the image of {size} bytes",
                     {"Content-Range": f"bytes */{size}"})
    return None


class BadRequest(Exception):
    """Invalid input; the message tells the client what is wrong."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DumpRequest(BaseModel):
    """Body of POST /api/dumps (documentation only: the body is validated by hand for clear messages)."""

    vms: t.List[str] = Field(default=None, description="libvirt domain names (or give them as vm_ids)")
    vm_ids: t.List[str] = Field(default=None, description="alias of vms")
    label: str = Field(default=None, description="incident label, 1-128 chars of [A-Za-z0-9._:@+-]")
    format: str = Field(default="elf", description="one of " + ", ".join(FORMATS))
    force: bool = Field(default=False, description="take a new dump even if one with this label completed")
    request_id: str = Field(default=None, description="client-chosen id that makes retries idempotent (max 128 chars)")


def check_text(value: t.Any, what: str, max_len: int) -> str:
    """A non-empty string without control characters, encodable as UTF-8."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise BadRequest(f"{what} must not be empty")
    if len(value) > max_len:
        raise BadRequest(f"{what} is {len(value)} characters long; at most {max_len} are allowed")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise BadRequest(f"{what} {value!r} contains NUL or control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{what} {value!r} is not valid Unicode") from exc
    return value


def check_vms(body: t.Mapping[str, t.Any]) -> t.List[str]:
    """The VM list of a POST body."""
    key = "vms" if body.get("vms") is not None else "vm_ids"
    vms = body.get(key)
    if vms is None:
        raise BadRequest('give the VMs to dump as "vms": ["vm1", ...] (or "vm_ids")')
    if not isinstance(vms, list):
        raise BadRequest(f'"{key}" must be a list of VM names, got {type(vms).__name__}')
    if not vms:
        raise BadRequest(f'"{key}" is empty: give at least one VM name')
    if len(vms) > MAX_VMS:
        raise BadRequest(f'"{key}" has {len(vms)} entries; at most {MAX_VMS} per request')
    seen = set()
    duplicates = []
    for vm in vms:
        check_text(vm, "VM name", MAX_NAME)
        if "/" in vm:
            raise BadRequest(f"VM name {vm!r} contains '/'")
        if vm in (".", ".."):
            raise BadRequest(f"VM name {vm!r} is not a valid name")
        if vm in seen:
            duplicates.append(vm)
        seen.add(vm)
    if duplicates:
        raise BadRequest(f'"{key}" lists VMs more than once: {", ".join(sorted(set(duplicates)))}')
    return vms


def check_options(body: t.Mapping[str, t.Any]) -> t.Tuple[t.Optional[str], str, bool, t.Optional[str]]:
    """label, format, force, request_id of a POST body."""
    label = body.get("label")
    if label is not None:
        check_text(label, "label", 128)
        if not LABEL_RE.match(label):
            raise BadRequest(f"label {label!r} may only contain letters, digits and . _ : @ + -")
    fmt = body.get("format")
    fmt = "elf" if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise BadRequest(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    force = body.get("force", False)
    force = False if force is None else force
    if not isinstance(force, bool):
        raise BadRequest(f"force must be true or false, got {force!r}")
    request_id = body.get("request_id")
    if request_id is not None:
        check_text(request_id, "request_id", 128)
    return label, fmt, force, request_id


async def read_json_body(request: Request, max_body: int) -> t.Dict[str, t.Any]:
    """The request body as a JSON object, with a clear 4xx otherwise."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise BadRequest(f"send the body as application/json, not {ctype}", 415)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_body:
        raise BadRequest(f"request body is larger than {max_body} bytes", 413)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body:
            raise BadRequest(f"request body is larger than {max_body} bytes", 413)
    if not raw.strip():
        raise BadRequest('request body is empty; send a JSON object like {"vms": ["vm1"]}')
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f'request body is not valid JSON ({exc}); send a JSON object like {{"vms": ["vm1"]}}') from exc
    if not isinstance(body, dict):
        raise BadRequest('request body must be a JSON object like {"vms": ["vm1"]}')
    return body


def error(status: int, detail: str, headers: t.Optional[t.Mapping[str, str]] = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(settings: Settings, manager: t.Optional[JobManager] = None) -> FastAPI:  # noqa: C901
    """The FastAPI application; the job manager starts and stops with the app's lifespan."""
    # pylint: disable=too-many-locals,too-many-statements,unused-variable
    settings.validate()
    token = settings.read_token()
    jobs = manager or JobManager(settings)
    core = settings.core_api_only

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> t.AsyncIterator[None]:
        jobs.start()
        LOG.info("memdump service %s: libvirt %s, dump dir %s, max parallel %d, auth %s, core API only %s", __version__,
                 settings.libvirt_uri, settings.dump_dir, settings.max_parallel, "on" if token else "off", core)
        yield
        jobs.stop()

    app = FastAPI(title="memdump service", version=__version__, lifespan=lifespan,
                  description="Memory dumps of libvirt guests. See docs/api.md of the vmforensics.memdump collection.")
    app.state.jobs = jobs

    @app.middleware("http")
    async def authenticate(request: Request, call_next: t.Callable) -> t.Any:
        path = request.url.path
        if token and (path == "/api" or path.startswith("/api/")):
            given = request.headers.get("authorization", "")
            scheme, _sep, value = given.partition(" ")
            presented = value.strip().encode("utf-8", "surrogateescape")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(presented, token.encode("utf-8"))):
                return error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_params(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "path", "body"))
            problems.append(f"{where}: {item.get('msg')}")
        return error(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        LOG.error("internal error on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
        return error(500, "internal error of the memdump service; see its log")

    @app.get("/health", responses={503: {"description": "libvirt is unreachable (same body, status unavailable)"}})
    def health() -> JSONResponse:
        info = jobs.virt.probe()
        info["memory_only"] = bool(info["connected"]) and str(info["driver"]).upper() != "TEST" and not settings.is_test_driver
        if libvirt is None:
            info["error"] = "libvirt-python is not installed"
        body = {
            "status": "ok" if info["connected"] else "unavailable",
            "version": __version__,
            "libvirt": info,
            "queue": jobs.counts(),
            "formats": ["elf"] if settings.is_test_driver else list(FORMATS),
            "features": [] if core else FEATURES,
            "auth": bool(token),
            "core_api_only": core,
        }
        return JSONResponse(body, status_code=200 if info["connected"] else 503)

    post_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": DumpRequest.model_json_schema()}}}}

    @app.post("/api/dumps", status_code=202, openapi_extra=post_doc, responses=error_responses(400, 401, 409, 413, 415, 422))
    async def create_dumps(request: Request) -> JSONResponse:
        body = await read_json_body(request, settings.max_body)
        vms = check_vms(body)
        if core:
            dumps, _marker = jobs.create(vms)
            return JSONResponse({"dumps": [{k: v for k, v in d.items() if k != "created"} for d in dumps]}, status_code=202)
        label, fmt, force, request_id = check_options(body)
        try:
            dumps, marker = jobs.create(vms, label=label, fmt=fmt, force=force, request_id=request_id)
        except RequestConflict as exc:
            return error(409, str(exc))
        return JSONResponse({"dumps": dumps, "marker": marker}, status_code=202)

    @app.get("/api/dumps", responses=error_responses(400, 401, 422))
    async def list_dumps(vm: t.List[str] = Query(default=[]), label: t.Optional[str] = None, state: t.Optional[str] = None,
                         dump_id: t.List[str] = Query(default=[]), wait: float = Query(default=0.0, ge=0, le=MAX_WAIT),
                         marker: t.Optional[int] = None) -> JSONResponse:
        if state is not None and state not in STATES:
            raise BadRequest(f"unknown state {shorten(state)!r}; use one of {', '.join(STATES)}")
        if not core and wait > 0 and marker is not None:
            await jobs.wait_for_change(marker, wait)
        current = jobs.marker
        dumps = jobs.list(vm, label, state, dump_id)
        per_vm: t.Dict[str, t.List[str]] = {}
        for item in dumps:
            per_vm.setdefault(item["vm"], []).append(item["dump_id"])
        body: t.Dict[str, t.Any] = {"dumps": dumps, "vms": per_vm}
        if not core:
            body["marker"] = current
        return JSONResponse(body)

    if core:
        return app

    @app.get("/api/dumps/{dump_id}", responses=error_responses(401, 404, 422))
    async def get_dump(dump_id: str, wait: float = Query(default=0.0, ge=0, le=MAX_WAIT), marker: t.Optional[int] = None) -> JSONResponse:
        if jobs.get(dump_id) is None:
            return error(404, f"dump {shorten(dump_id)} not found")
        if wait > 0 and marker is not None:
            await jobs.wait_for_change(marker, wait)
        current = jobs.marker
        record = jobs.get(dump_id)
        return JSONResponse(dict(record, marker=current))

    @app.get("/api/dumps/{dump_id}/file", response_class=FileResponse,
             responses={206: {"description": "the requested range"}, **error_responses(400, 401, 404, 409, 410, 416)})
    async def get_file(dump_id: str, request: Request) -> t.Any:
        record = jobs.get(dump_id)
        if record is None:
            return error(404, f"dump {shorten(dump_id)} not found")
        if record["file_deleted"]:
            return error(410, f"the image of dump {dump_id} was deleted")
        if record["state"] != "completed":
            return error(409, f"dump {dump_id} is {record['state']}; its image is available once it is completed")
        path = record["dump_path"]
        if not path or not os.path.isfile(path):
            return error(410, f"the image of dump {dump_id} is missing from {path}")
        refused = range_error(request.headers.get("range"), os.path.getsize(path))
        if refused is not None:
            return refused
        return FileResponse(path, media_type="application/octet-stream", filename=os.path.basename(path),
                            headers={"X-Memdump-SHA256": record["sha256"]})

    @app.delete("/api/dumps/{dump_id}", responses=error_responses(401, 404, 409))
    def delete_dump(dump_id: str) -> JSONResponse:
        status, result = jobs.delete(dump_id)
        if status != 200:
            return error(status, result)
        return JSONResponse(result)

    return app
