"""The /api/dumps routes (docs/api.md) and the POST body model that validates and documents them."""

import json
import os
import re
import typing as t

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from memdump_service.audit import note
from memdump_service.auth import access, caller
from memdump_service.errors import AUTH_ERRORS, BadRequest, error, error_responses
from memdump_service.jobs import JobManager, RequestConflict, shorten
from memdump_service.rules import CONTROL_RE, LABEL_RE, VM_NAME_FORBIDDEN_RE, VM_NAME_MAX, VM_NAME_RESERVED, is_label
from memdump_service.virt import FORMATS, LIVE_FORMAT, METHODS

MAX_NAME = VM_NAME_MAX
MAX_VMS = 1000
MAX_TEXT = 128
MAX_WAIT = 120.0
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
STATES = ("queued", "running", "completed", "failed")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_SEQ = 2 ** 63 - 1

Model = t.TypeVar("Model", bound=BaseModel)

router = APIRouter()


def check_text(value: t.Any, what: str, max_len: int) -> str:
    """A non-empty string without control characters, encodable as UTF-8."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{what} is {len(value)} characters long; at most {max_len} are allowed")
    if CONTROL_RE.search(value):
        raise ValueError(f"{what} {value!r} contains NUL, control or line-break characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {value!r} is not valid Unicode") from exc
    return value


def check_flag(value: t.Any, what: str) -> bool:
    """A JSON boolean (null counts as false); pydantic alone would also take "yes" or 1."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {value!r}")
    return value


VmName = t.Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


class DumpRequest(BaseModel):
    """Body of POST /api/dumps."""

    # The before-validators check the raw JSON values first, so that a client reads what is wrong in the
    # service's own words; the field types and constraints are what the OpenAPI description shows.
    model_config = ConfigDict(extra="forbid")

    vms: t.Optional[t.List[VmName]] = Field(default=None, min_length=1, max_length=MAX_VMS,
                                            description="libvirt domain names, each at most once (or give them as vm_ids)")
    vm_ids: t.Optional[t.List[VmName]] = Field(default=None, min_length=1, max_length=MAX_VMS,
                                               description="the same as vms (used when vms is absent)")
    label: t.Optional[str] = Field(default=None, pattern=LABEL_RE.pattern, description="incident label, 1-128 chars of [A-Za-z0-9._:@+-]")
    method: str = Field(default="memory-only", description="memory-only (the guest is paused for the whole dump), live (it keeps "
                        "running; QEMU's migration stream) or auto (live where libvirt can migrate the guest, memory-only "
                        "otherwise; the record's method and method_reason say which and why)", json_schema_extra={"enum": list(METHODS)})
    format: t.Optional[str] = Field(default=None, description=f"image format (default elf; {LIVE_FORMAT}, the only one, for live; "
                                    "with auto, the format of a memory-only dump)", json_schema_extra={"enum": list(FORMATS)})
    force: bool = Field(default=False, description="take a new dump even if one with this label completed")
    request_id: t.Optional[str] = Field(default=None, min_length=1, max_length=MAX_TEXT,
                                        description="client-chosen id that makes retries idempotent")
    dry_run: bool = Field(default=False, description="answer (200) what would be reused or created, create nothing")

    @field_validator("vms", "vm_ids", mode="before")
    @classmethod
    def _check_vms(cls, value: t.Any, info: ValidationInfo) -> t.Any:
        if value is None:
            return None
        key = info.field_name
        if not isinstance(value, list):
            raise ValueError(f'"{key}" must be a list of VM names, got {type(value).__name__}')
        if not value:
            raise ValueError(f'"{key}" is empty: give at least one VM name')
        if len(value) > MAX_VMS:
            raise ValueError(f'"{key}" has {len(value)} entries; at most {MAX_VMS} per request')
        seen = set()
        duplicates = set()
        for vm in value:
            check_text(vm, "VM name", MAX_NAME)
            if VM_NAME_FORBIDDEN_RE.search(vm):
                raise ValueError(f"VM name {vm!r} contains '/'")
            if vm in VM_NAME_RESERVED:
                raise ValueError(f"VM name {vm!r} is not a valid name")
            if vm in seen:
                duplicates.add(vm)
            seen.add(vm)
        if duplicates:
            raise ValueError(f'"{key}" lists VMs more than once: {", ".join(sorted(duplicates))}')
        return value

    @field_validator("label", mode="before")
    @classmethod
    def _check_label(cls, value: t.Any) -> t.Any:
        if value is not None:
            check_text(value, "label", MAX_TEXT)
            if not is_label(value):
                raise ValueError(f"label {value!r} may only contain letters, digits and . _ : @ + -")
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _check_method(cls, value: t.Any) -> t.Any:
        if value is None:
            return "memory-only"
        if not isinstance(value, str) or value not in METHODS:
            raise ValueError(f"unknown method {shorten(str(value))!r}; use one of {', '.join(METHODS)}")
        return value

    @field_validator("format", mode="before")
    @classmethod
    def _check_format(cls, value: t.Any) -> t.Any:
        if value is None:
            return None
        if not isinstance(value, str) or value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; use one of {', '.join(FORMATS)}")
        return value

    @field_validator("force", "dry_run", mode="before")
    @classmethod
    def _check_flags(cls, value: t.Any, info: ValidationInfo) -> t.Any:
        return check_flag(value, str(info.field_name))

    @field_validator("request_id", mode="before")
    @classmethod
    def _check_request_id(cls, value: t.Any) -> t.Any:
        return None if value is None else check_text(value, "request_id", MAX_TEXT)

    @model_validator(mode="after")
    def _check_some_vms(self) -> "DumpRequest":
        if self.vms is None and self.vm_ids is None:
            raise ValueError('give the VMs to dump as "vms": ["vm1", ...] (or "vm_ids")')
        live = self.method == "live"
        if live and self.format not in (None, LIVE_FORMAT):
            raise ValueError(f"format {self.format} is for memory-only dumps; a live dump writes QEMU's migration stream "
                             f"(format {LIVE_FORMAT})")
        if not live and self.format == LIVE_FORMAT:
            raise ValueError(f'format {LIVE_FORMAT} is what a live dump writes: give "method": "live" (method {self.method} '
                             "takes the format of a memory-only dump)")
        self.format = self.format or (LIVE_FORMAT if live else "elf")
        return self

    @property
    def vm_names(self) -> t.List[str]:
        """The VMs to dump, from vms or vm_ids."""
        return self.vms if self.vms is not None else self.vm_ids or []


def check_sha256(value: t.Any, what: str) -> str:
    """64 hex digits, as lower case."""
    if not isinstance(value, str) or not SHA256_RE.match(value.lower()):
        raise ValueError(f"{what} must be 64 hex digits, got {shorten(str(value))!r}")
    return value.lower()


class CustodyHead(BaseModel):
    """The head of the client's custody log after it recorded the collection: the witness of its length."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(pattern=LABEL_RE.pattern, description="the incident label of the custody log")
    seq: int = Field(ge=0, le=MAX_SEQ, description="sequence number of the log's last event")
    hash: str = Field(pattern=SHA256_RE.pattern, description="hex chain hash of event seq")

    @field_validator("label", mode="before")
    @classmethod
    def _check_label(cls, value: t.Any) -> t.Any:
        if not isinstance(value, str) or not is_label(value):
            raise ValueError(f"custody_head.label must match {LABEL_RE.pattern}, got {shorten(str(value))!r}")
        return value

    @field_validator("seq", mode="before")
    @classmethod
    def _check_seq(cls, value: t.Any) -> t.Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
            raise ValueError(f"custody_head.seq must be a whole number from 0 to {MAX_SEQ}, got {shorten(str(value))!r}")
        return value

    @field_validator("hash", mode="before")
    @classmethod
    def _check_hash(cls, value: t.Any) -> t.Any:
        return check_sha256(value, "custody_head.hash")


class CollectedRequest(BaseModel):
    """Body of POST /api/dumps/{dump_id}/collected."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=SHA256_RE.pattern, description="hex SHA-256 of the copy the client collected and verified")
    custody_head: t.Optional[CustodyHead] = Field(default=None, description="the head of the client's custody log after it "
                                                  "recorded the collection (kept in the record's append-only custody_heads)")

    @field_validator("sha256", mode="before")
    @classmethod
    def _check_sha256(cls, value: t.Any) -> t.Any:
        return check_sha256(value, "sha256")

    @field_validator("custody_head", mode="before")
    @classmethod
    def _check_custody_head(cls, value: t.Any) -> t.Any:
        if value is not None and not isinstance(value, dict):
            raise ValueError('custody_head must be an object {"label": ..., "seq": ..., "hash": ...}')
        return value


def explain(exc: ValidationError, model: t.Type[BaseModel]) -> str:
    """One message for every problem of a POST body: the validators' own words, unknown fields by name."""
    problems = []
    unknown = [str(item["loc"][0]) for item in exc.errors() if item["type"] == "extra_forbidden"]
    if unknown:
        names = ", ".join(repr(shorten(name)) for name in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        problems.append(f"unknown field{'s' if len(unknown) > 1 else ''} {names}; the body takes {', '.join(model.model_fields)}")
    for item in exc.errors():
        cause = item.get("ctx", {}).get("error")
        if item["type"] == "value_error" and cause is not None:
            problems.append(str(cause))
        elif item["type"] != "extra_forbidden":
            problems.append(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}")
    return "; ".join(problems)


def parse_body(model: t.Type[Model], body: t.Any) -> Model:
    """A POST body as the model; BadRequest (400) says what is wrong."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(explain(exc, model)) from None


async def read_json_body(request: Request, max_body: int, example: str) -> t.Dict[str, t.Any]:
    """The request body as a JSON object, with a clear 4xx otherwise (naming an example of a good body)."""
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
        raise BadRequest(f"request body is empty; send a JSON object like {example}")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON ({exc}); send a JSON object like {example}") from exc
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object like {example}")
    return body


def range_error(http_range: t.Optional[str], size: int) -> t.Optional[JSONResponse]:
    """A JSON answer for a Range header that the file response would refuse in plain text, else None.

    Starlette's FileResponse answers bad ranges itself, as text; its own parser decides here, so both agree.
    """
    parse = getattr(FileResponse, "_parse_range_header", None)
    if not http_range or parse is None:
        return None
    try:
        ranges = parse(http_range, size)
    except MalformedRangeHeader as exc:
        return error(400, f"malformed Range header {shorten(http_range)!r}: {exc.content}; use bytes=START-END")
    except RangeNotSatisfiable:
        return error(416, f"Range {shorten(http_range)!r} is outside the image of {size} bytes",
                     {"Content-Range": f"bytes */{size}"})
    if len(ranges) > 1:
        # One range per request: Starlette 0.49's multipart answer declares a Content-Length it does not send, and the
        # collection resumes a download with one open range (bytes=START-) anyway.
        return error(400, f"Range {shorten(http_range)!r} asks for {len(ranges)} ranges; ask for one: bytes=START-END "
                          "or bytes=START-")
    return None


def job_manager(request: Request) -> JobManager:
    """The app's JobManager (created with the app, see app.create_app)."""
    return request.app.state.jobs


WAIT = Query(default=0.0, ge=0, le=MAX_WAIT, description="hold the answer up to this many seconds while the marker is unchanged")
MARKER = Query(default=None, description="the marker of an earlier answer")


def json_body(model: t.Type[BaseModel]) -> t.Dict[str, t.Any]:
    """The OpenAPI request body of a route that reads and validates its body by hand (413/415/400 with clear messages)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# JobManager calls take a thread lock that dump workers hold while they write SQLite: async handlers
# hand them to the thread pool (sync handlers run there anyway), so that the event loop, which also
# holds the long-polls, never waits for that lock.
@router.post("/api/dumps", status_code=202, openapi_extra=json_body(DumpRequest),
             responses={200: {"description": "dry run: the dumps that would be reused or created; nothing was created"},
                        **error_responses(400, 409, 413, 415, *AUTH_ERRORS)})
@access("trigger")
async def create_dumps(request: Request, jobs: JobManager = Depends(job_manager)) -> JSONResponse:
    """Start (or reuse) one dump per VM; with dry_run, only say what that would do. Scope trigger."""
    order = parse_body(DumpRequest, await read_json_body(request, jobs.settings.max_body, '{"vms": ["vm1"]}'))
    try:
        dumps, marker = await run_in_threadpool(jobs.create, order.vm_names, label=order.label, fmt=order.format, force=order.force,
                                                request_id=order.request_id, dry_run=order.dry_run, method=order.method)
    except RequestConflict as exc:
        return error(409, str(exc))
    note(request.scope, dump_ids=[item["dump_id"] for item in dumps], vms=order.vm_names, dry_run=order.dry_run)
    if order.dry_run:
        return JSONResponse({"dumps": dumps, "marker": marker, "dry_run": True})
    return JSONResponse({"dumps": dumps, "marker": marker}, status_code=202)


@router.get("/api/dumps", responses=error_responses(400, 422, *AUTH_ERRORS))
@access("read")
async def list_dumps(jobs: JobManager = Depends(job_manager), vm: t.List[str] = Query(default=[]), label: t.Optional[str] = None,
                     state: t.Optional[str] = None, dump_id: t.List[str] = Query(default=[]),
                     limit: int = Query(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="at most this many records"),
                     before: t.Optional[str] = Query(default=None, description="only records older than this dump_id (next_before of "
                                                     "the previous page)"),
                     wait: float = WAIT, marker: t.Optional[int] = MARKER) -> JSONResponse:
    """Records, newest first, one page at a time. Scope read."""
    if state is not None and state not in STATES:
        raise BadRequest(f"unknown state {shorten(state)!r}; use one of {', '.join(STATES)}")
    if before is not None and await run_in_threadpool(jobs.get, before) is None:
        raise BadRequest(f"before: dump {shorten(before)} not found; pass next_before of an earlier answer")
    if wait > 0 and marker is not None:
        await jobs.wait_for_change(marker, wait)
    current = jobs.marker
    dumps, next_before = await run_in_threadpool(jobs.list, vm, label, state, dump_id, limit, before)
    per_vm: t.Dict[str, t.List[str]] = {}
    for item in dumps:
        per_vm.setdefault(item["vm"], []).append(item["dump_id"])
    return JSONResponse({"dumps": dumps, "vms": per_vm, "marker": current, "next_before": next_before})


@router.get("/api/dumps/{dump_id}", responses=error_responses(404, 422, *AUTH_ERRORS))
@access("read")
async def get_dump(dump_id: str, jobs: JobManager = Depends(job_manager), wait: float = WAIT,
                   marker: t.Optional[int] = MARKER) -> JSONResponse:
    """One record. Scope read."""
    if await run_in_threadpool(jobs.get, dump_id) is None:
        return error(404, f"dump {shorten(dump_id)} not found")
    if wait > 0 and marker is not None:
        await jobs.wait_for_change(marker, wait)
    current = jobs.marker
    record = await run_in_threadpool(jobs.get, dump_id)
    return JSONResponse(dict(record, marker=current))


@router.get("/api/dumps/{dump_id}/file", response_class=FileResponse,
            responses={206: {"description": "the requested range"}, **error_responses(400, 404, 409, 410, 416, *AUTH_ERRORS)})
@access("collect")
def get_file(dump_id: str, request: Request, jobs: JobManager = Depends(job_manager)) -> t.Any:
    """The image of a completed dump. Scope collect."""
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


@router.post("/api/dumps/{dump_id}/collected", openapi_extra=json_body(CollectedRequest),
             responses=error_responses(400, 404, 409, 413, 415, *AUTH_ERRORS))
@access("collect")
async def mark_collected(dump_id: str, request: Request, jobs: JobManager = Depends(job_manager)) -> JSONResponse:
    """Record that the client holds a verified copy of the image, and its custody log's head. Retention waits for
    this report from a client that may delete the image (scope delete). Scope collect."""
    order = parse_body(CollectedRequest, await read_json_body(request, jobs.settings.max_body, '{"sha256": "<64 hex digits>"}'))
    client = caller(request)
    may_delete = "delete" in client.scopes or jobs.settings.retention_trusts_collect
    head = order.custody_head.model_dump() if order.custody_head is not None else None
    status, result = await run_in_threadpool(jobs.mark_collected, dump_id, order.sha256, client.name, may_delete, head)
    note(request.scope, allows_removal=may_delete, custody_head=head)
    if status != 200:
        return error(status, result)
    return JSONResponse(result)


@router.delete("/api/dumps/{dump_id}", responses=error_responses(404, 409, *AUTH_ERRORS))
@access("delete")
def delete_dump(dump_id: str, jobs: JobManager = Depends(job_manager)) -> JSONResponse:
    """Cancel a queued dump or delete a finished one's image. Scope delete."""
    status, result = jobs.delete(dump_id)
    if status != 200:
        return error(status, result)
    return JSONResponse(result)
