"""The Host header check: the service answers only requests addressed to one of its names.

The service's own rather than Starlette's TrustedHostMiddleware, because the Starlette releases that still run on
Python 3.9 (before 1.0) cut the header at its first ":": "127.0.0.1:80/x" passed and "[::1]:5001" was refused.
"""

import re
import typing as t

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# RFC 3986 host (a reg-name, or an IP literal in brackets) and an optional port; nothing else.
HOST_HEADER = re.compile(r"(?P<host>[a-z0-9._~%!$&'()*+,;=-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?", re.IGNORECASE)


class HostCheck:
    """ASGI middleware: 400 for a malformed Host header or one not in hosts ('*' anything, '*.example.org' a domain)."""

    def __init__(self, app: ASGIApp, hosts: t.Sequence[str]) -> None:
        self.app = app
        self.hosts = [host.lower() for host in hosts]

    def allows(self, header: str) -> bool:
        """Whether a request with this Host header may reach the app."""
        if "*" in self.hosts:
            return True
        match = HOST_HEADER.fullmatch(header)
        if match is None:
            return False
        host = match["host"].lower()
        return any(host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])) for pattern in self.hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.allows(Headers(scope=scope).get("host", "")):
            await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)
