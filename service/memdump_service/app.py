"""The HTTP API (docs/api.md): the FastAPI application around the JobManager."""

import contextlib
import logging
import typing as t

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from memdump_service import __version__, domains, dumps, health
from memdump_service.audit import AuditMiddleware
from memdump_service.auth import credentials_of, guard
from memdump_service.config import Settings
from memdump_service.errors import BadRequest, error
from memdump_service.hostcheck import HostCheck
from memdump_service.jobs import JobManager

LOG = logging.getLogger("memdump_service")


def create_app(settings: Settings, manager: t.Optional[JobManager] = None) -> FastAPI:
    """The FastAPI application; the job manager starts and stops with the app's lifespan."""
    settings.validate()
    credentials = credentials_of(settings.token_file, settings.tokens_file)
    hosts = settings.hosts()
    jobs = manager or JobManager(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> t.AsyncIterator[None]:
        jobs.start()
        LOG.info("memdump service %s: libvirt %s, dump dir %s, max parallel %d, auth %s, hosts %s", __version__,
                 settings.libvirt_uri, settings.dump_dir, settings.max_parallel,
                 f"{credentials.path}: {credentials.describe()}" if credentials else "OFF (--insecure-no-auth)",
                 ", ".join(hosts))
        yield
        jobs.stop()

    # Deny by default: guard runs for every route and admits only what the matched route declares (auth.access).
    # The OpenAPI description and its browser view exist only with --openapi (they are public then).
    docs = {} if settings.openapi else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    app = FastAPI(title="memdump service", version=__version__, lifespan=lifespan, dependencies=[Depends(guard)],
                  description="Memory dumps of libvirt guests. See docs/api.md of the vmforensics.memdump collection.", **docs)
    app.state.jobs = jobs
    app.state.credentials = credentials
    app.add_middleware(AuditMiddleware)
    app.add_middleware(HostCheck, hosts=hosts)
    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(RequestValidationError, invalid_params)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.include_router(health.router)
    app.include_router(dumps.router)
    app.include_router(domains.router)
    return app


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
    """Starlette's own errors (unknown route, method not allowed) and the guard's 401/403/503, as JSON."""
    return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected: a generic 500 (never a traceback to the client); the log names the exception."""
    LOG.error("internal error on %s %s: %s", request.method, request.scope["path"], exc.__class__.__name__)
    return error(500, "internal error of the memdump service; see its log")
