"""GET /api/vms: the libvirt domains of this host, so that an acquisition given one list of VMs for a whole
fleet asks each host which of them it runs (docs/api.md)."""

import typing as t

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from memdump_service.auth import access
from memdump_service.dumps import job_manager
from memdump_service.errors import AUTH_ERRORS, ErrorAnswer, error, error_responses
from memdump_service.jobs import JobManager
from memdump_service.virt import STATE_NAMES, VIR_ERR_NO_DOMAIN, DumpError, error_code, libvirt

router = APIRouter()


def describe(dom: t.Any) -> t.Dict[str, t.Any]:
    """One domain as the API shows it; ``active`` is libvirt's own answer (a dump needs an active domain)."""
    state, _reason = dom.state()
    return {"name": dom.name(), "state": STATE_NAMES.get(state, "unknown"), "uuid": dom.UUIDString(), "active": bool(dom.isActive())}


def list_domains(jobs: JobManager) -> t.List[t.Dict[str, t.Any]]:
    """Every domain of the service's libvirt, sorted by name; raises DumpError when libvirt cannot be asked."""
    conn = jobs.virt.connection()
    try:
        domains = conn.listAllDomains()
    except libvirt.libvirtError as exc:
        jobs.virt.check(conn)  # a broken connection is reopened by the next call
        raise DumpError(f"libvirt at {jobs.virt.uri} cannot list its domains: {exc}") from exc
    found = []
    for dom in domains:
        try:
            found.append(describe(dom))
        except libvirt.libvirtError as exc:
            if error_code(exc) != VIR_ERR_NO_DOMAIN:
                raise DumpError(f"libvirt at {jobs.virt.uri} cannot describe domain {dom.name()!r}: {exc}") from exc
            # Undefined between the listing and the question: it is not there any more.
    return sorted(found, key=lambda item: item["name"])


@router.get("/api/vms", responses={**error_responses(*AUTH_ERRORS), 502: {"model": ErrorAnswer, "description": "libvirt cannot be asked"}})
@access("read")
def list_vms(jobs: JobManager = Depends(job_manager)) -> JSONResponse:
    """The domains libvirt knows on this host, with their state and UUID. Scope read."""
    try:
        return JSONResponse({"vms": list_domains(jobs)})
    except DumpError as exc:
        # 502, not 503: 503 means the service's own token file is unusable (AUTH_ERRORS).
        return error(502, f"{exc}; the service cannot say which VMs this host runs")
