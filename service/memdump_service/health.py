"""GET /health: liveness, libvirt, queue, what the service offers and the rules it enforces (no auth)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from memdump_service import __version__, rules
from memdump_service.auth import PUBLIC, access
from memdump_service.virt import FORMATS, METHODS, LibvirtUnavailable, libvirt

# Optional API features; clients decide from this list, for example whether to long-poll ("wait"), whether the
# collected report takes the custody log's head ("custody_heads") and whether failed dumps carry "error_code".
FEATURES = ["wait", "label", "request_id", "file", "delete", "dry_run", "collected", "custody_heads", "error_code", "rules"]

router = APIRouter()


@router.get("/health", responses={503: {"description": "libvirt is unreachable (same body, status unavailable)"}})
@access(PUBLIC)
def health(request: Request) -> JSONResponse:
    """Whether the service can reach libvirt, its queue, methods, formats, features and rules."""
    jobs = request.app.state.jobs
    info = jobs.virt.probe()
    caps = None
    if info["connected"]:
        try:
            caps = jobs.virt.capabilities()
        except LibvirtUnavailable:
            caps = None
    info["memory_only"] = bool(caps and caps.memory_only)
    if libvirt is None:
        info["error"] = "libvirt-python is not installed"
    body = {
        "status": "ok" if info["connected"] else "unavailable",
        "version": __version__,
        "libvirt": info,
        "queue": jobs.counts(),
        # What libvirt says this connection can do; everything the service knows while libvirt is unreachable.
        "formats": caps.formats if caps else list(FORMATS),
        "methods": caps.methods if caps else list(METHODS),
        "features": FEATURES,
        "rules": rules.published(),
        "auth": jobs.settings.auth,
    }
    return JSONResponse(body, status_code=200 if info["connected"] else 503)
