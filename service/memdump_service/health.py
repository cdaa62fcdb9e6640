"""GET /health: liveness, libvirt, queue and what the service offers (no auth)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from memdump_service import __version__
from memdump_service.auth import PUBLIC, access
from memdump_service.virt import FORMATS, METHODS, libvirt

# Optional API features; clients decide from this list, for example whether to long-poll ("wait").
FEATURES = ["wait", "label", "request_id", "file", "delete", "dry_run", "collected"]

router = APIRouter()


@router.get("/health", responses={503: {"description": "libvirt is unreachable (same body, status unavailable)"}})
@access(PUBLIC)
def health(request: Request) -> JSONResponse:
    """Whether the service can reach libvirt, its queue, formats and features."""
    jobs, settings = request.app.state.jobs, request.app.state.jobs.settings
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
        # libvirt's test driver takes neither memory-only nor live dumps; the default method stands for its full dump.
        "methods": ["memory-only"] if settings.is_test_driver else list(METHODS),
        "features": FEATURES,
        "auth": settings.auth,
    }
    return JSONResponse(body, status_code=200 if info["connected"] else 503)
