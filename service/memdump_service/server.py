"""The HTTP server around the app: uvicorn with the service's own TLS context and connection limits.

Limits, because slow or silent clients must not starve the service: the soft limit of open files is
raised to the hard one; a new connection has --header-timeout seconds to send its request head; at
most --max-pending-connections connections may still be sending one (beyond it the oldest is
closed); beyond --max-connections open connections requests are answered 503. With TLS the handshake
has the same --header-timeout deadline.
"""

import asyncio
import collections
import functools
import logging
import resource
import ssl
import typing as t

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from memdump_service.config import ConfigError, Settings, split_listen

LOG = logging.getLogger("memdump_service")

# TLS 1.2 only with forward-secret AEAD suites; TLS 1.3 has nothing else.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# Descriptors kept for everything but client connections: libvirt, SQLite, images, FIFOs, the log.
RESERVED_FDS = 128
# uvicorn's default listen backlog.
BACKLOG = 2048


def tls_context(settings: Settings) -> t.Optional[ssl.SSLContext]:
    """The server's TLS context (None without --tls-cert); ConfigError names a file that cannot be used."""
    if not settings.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the TLS certificate {settings.tls_cert} with key {settings.tls_key}: {exc}") from exc
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the client CA file {settings.tls_client_ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            LOG.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_limits(settings: Settings, open_files: int) -> t.Tuple[int, int, int]:
    """(max connections, max pending connections, listen backlog) that fit into the open-files limit."""
    room = max(4, open_files - RESERVED_FDS)
    connections = min(settings.max_connections, room)
    pending = min(settings.max_pending_connections, max(1, connections // 2))
    # asyncio accepts up to backlog connections per loop tick before the protocol sees any of them (and closes the
    # oldest pending one): two ticks of them must fit beside the pending ones.
    backlog = min(BACKLOG, max(1, (room - pending) // 2))
    if (connections, pending) != (settings.max_connections, settings.max_pending_connections):
        LOG.warning("open-files limit %d: at most %d connections, %d of them pending, backlog %d (asked for %d and %d)",
                    open_files, connections, pending, backlog, settings.max_connections, settings.max_pending_connections)
    return connections, pending, backlog


def guarded_protocol(header_timeout: float, max_pending: int) -> t.Type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for the first request head and a cap on connections still sending one."""
    pending: "collections.OrderedDict[GuardedH11Protocol, None]" = collections.OrderedDict()

    class GuardedH11Protocol(H11Protocol):
        """Closes a connection that has not sent a whole request head in time, or the oldest such one when too many wait."""

        head_deadline: t.Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: t.Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.head_deadline = self.loop.call_later(header_timeout, self.drop_pending)
            pending[self] = None
            while len(pending) > max_pending:
                next(iter(pending)).drop_pending()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None:  # a whole request head arrived; uvicorn's keep-alive timeout covers what follows
                self.head_done()

        def connection_lost(self, exc: t.Optional[Exception]) -> None:
            self.head_done()
            super().connection_lost(exc)

        def head_done(self) -> None:
            """Leave the pending connections."""
            if self in pending:
                del pending[self]
                if self.head_deadline is not None:
                    self.head_deadline.cancel()

        def drop_pending(self) -> None:
            """Close a connection that is still sending its request head."""
            self.head_done()
            self.transport.close()

    return GuardedH11Protocol


def serve(settings: Settings, app: t.Any) -> None:
    """Run the app until interrupted."""
    context = tls_context(settings)
    open_files = raise_open_files_limit()
    connections, pending, backlog = connection_limits(settings, open_files)
    host, port = split_listen(settings.listen)
    LOG.info("listening on %s (%s), open files %d, at most %d connections (%d pending, %.0f s for a request head), "
             "%d held long-polls", settings.listen, "TLS" if context else "plain HTTP", open_files, connections, pending,
             settings.header_timeout, settings.max_waiters)
    config = uvicorn.Config(app, host=host, port=port, http=guarded_protocol(settings.header_timeout, pending),
                            limit_concurrency=connections, backlog=backlog, timeout_keep_alive=5, log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=10)
    # uvicorn builds a TLS context only from file names, with its own defaults: load the config, then hand it ours
    # (uvicorn 0.39, the newest on Python 3.9, has no ssl_context_factory).
    config.load()
    config.ssl = context
    server = uvicorn.Server(config)

    async def serve_with_limits() -> None:
        if context is not None:
            # uvicorn leaves asyncio's TLS handshake timeout at 60 s, and a connection in its handshake is not yet one
            # the protocol counts or times: give the handshake the same deadline as a request head.
            loop = asyncio.get_running_loop()
            loop.create_server = functools.partial(loop.create_server,  # type: ignore[method-assign]
                                                   ssl_handshake_timeout=settings.header_timeout)
        await server.serve()

    asyncio.run(serve_with_limits())
