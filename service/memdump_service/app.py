"""The HTTP API (docs/api.md): the FastAPI application around the JobManager."""

import contextlib
import hmac
import logging
import typing as t

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from memdump_service import __version__, dumps, health
from memdump_service.config import Settings
from memdump_service.errors import BadRequest, error
from memdump_service.jobs import JobManager

LOG = logging.getLogger("memdump_service")


def create_app(settings: Settings, manager: t.Optional[JobManager] = None) -> FastAPI:
    """The FastAPI application; the job manager starts and stops with the app's lifespan."""
    settings.validate()
    token = settings.read_token()
    jobs = manager or JobManager(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> t.AsyncIterator[None]:
        jobs.start()
        LOG.info("memdump service %s: libvirt %s, dump dir %s, max parallel %d, auth %s", __version__,
                 settings.libvirt_uri, settings.dump_dir, settings.max_parallel, "on" if token else "off")
        yield
        jobs.stop()

    app = FastAPI(title="memdump service", version=__version__, lifespan=lifespan,
                  description="Memory dumps of libvirt guests. See docs/api.md of the vmforensics.memdump collection.")
    app.state.jobs = jobs
    app.state.auth = bool(token)
    app.middleware("http")(bearer_token_check(token))
    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(RequestValidationError, invalid_params)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.include_router(health.router)
    app.include_router(dumps.router)
    return app


def bearer_token_check(token: t.Optional[str]) -> t.Callable[..., t.Awaitable[t.Any]]:
    """Middleware that refuses /api requests without the bearer token (none when token is None)."""
    expected = token.encode("utf-8") if token else None

    async def authenticate(request: Request, call_next: t.Callable[[Request], t.Awaitable[t.Any]]) -> t.Any:
        path = request.url.path
        if expected is not None and (path == "/api" or path.startswith("/api/")):
            scheme, _sep, value = request.headers.get("authorization", "").partition(" ")
            presented = value.strip().encode("utf-8", "surrogateescape")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(presented, expected)):
                return error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    return authenticate


async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
    """Invalid input found by the service's own checks."""
    return error(exc.status, str(exc))


async def invalid_params(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """Query or path parameters that FastAPI could not convert (422, with a string detail like every error)."""
    problems = []
    for item in exc.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "path", "body"))
        problems.append(f"{where}: {item.get('msg')}")
    return error(422, "invalid request: " + "; ".join(problems))


async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, method not allowed) as JSON."""
    return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: a generic 500 (never a traceback to the client); the log names the exception."""
    LOG.error("internal error on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
    return error(500, "internal error of the memdump service; see its log")
