"""The audit trail: one JSON object per line on the logger ``memdump_service.audit``, for every request
to an evidence route (who, what, on which dump, with which result) and every image retention removed."""

import datetime
import json
import logging
import typing as t

from starlette.types import ASGIApp, Message, Receive, Scope, Send

AUDIT = logging.getLogger("memdump_service.audit")
# The trail is kept whatever --log-level says.
AUDIT.setLevel(logging.INFO)

# Where the route's guard leaves what the audit line of a request says about it (see auth.guard).
SCOPE_KEY = "memdump.audit"


def write(event: str, **fields: t.Any) -> None:
    """One audit line; ensure_ascii keeps client-chosen text on one line."""
    moment = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    AUDIT.info("%s", json.dumps({"time": moment, "event": event, **fields}))


def begin(scope: Scope, **fields: t.Any) -> t.Dict[str, t.Any]:
    """Mark the request as audited; the returned entry can still be completed by the route."""
    entry = dict(fields)
    scope[SCOPE_KEY] = entry
    return entry


def note(scope: Scope, **fields: t.Any) -> None:
    """Add what only the route knows (for example the dumps a POST created) to the request's audit line."""
    entry = scope.get(SCOPE_KEY)
    if entry is not None:
        entry.update(fields)


class AuditMiddleware:  # pylint: disable=too-few-public-methods
    """Writes the audit line of each audited request once its answer's status is known."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            entry = scope.get(SCOPE_KEY)
            if entry is not None:
                peer = scope.get("client")
                write("request", client=entry.pop("client", None), method=scope["method"], route=entry.pop("route", None),
                      dump_id=entry.pop("dump_id", None), status=status, remote=peer[0] if peer else None, **entry)
