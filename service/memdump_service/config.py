"""Settings of the memdump service: command-line options with MEMDUMP_<OPTION> environment fallbacks."""

import argparse
import dataclasses
import ipaddress
import os
import socket
import typing as t

DEFAULT_LISTEN = "127.0.0.1:5001"
DEFAULT_URI = "qemu:///system"
DEFAULT_DUMP_DIR = "/var/lib/memdump/dumps"
DEFAULT_STATE_FILE = "/var/lib/memdump/state.sqlite3"
DEFAULT_MAX_PARALLEL = 2
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING = 256
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_WAITERS = 256
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")

HASH_MODES = ("fifo", "after")


class ConfigError(ValueError):
    """An option has a value the service cannot use."""


@dataclasses.dataclass
class Settings:
    """Everything the service needs to run; built by :func:`parse_args` or directly by tests."""

    dump_dir: str = DEFAULT_DUMP_DIR
    state_file: str = DEFAULT_STATE_FILE
    libvirt_uri: str = DEFAULT_URI
    listen: str = DEFAULT_LISTEN
    max_parallel: int = DEFAULT_MAX_PARALLEL
    # One bearer token (a client named "token-file" with every scope), or named clients with scopes (auth.py).
    token_file: t.Optional[str] = None
    tokens_file: t.Optional[str] = None
    # No authentication at all: refused unless the listener is loopback.
    insecure_no_auth: bool = False
    # Plain HTTP on a non-loopback address.
    insecure_listen: bool = False
    tls_cert: t.Optional[str] = None
    tls_key: t.Optional[str] = None
    # CA whose client certificates are required (mutual TLS).
    tls_client_ca: t.Optional[str] = None
    # Host header values accepted; empty: the defaults of hosts().
    allowed_hosts: t.List[str] = dataclasses.field(default_factory=list)
    # Serve /openapi.json and /docs (without auth).
    openapi: bool = False
    # Connections (uvicorn's limit_concurrency: beyond it requests get 503).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Connections that have not sent a whole request head yet; beyond it the oldest is closed.
    max_pending_connections: int = DEFAULT_MAX_PENDING
    # Seconds a new connection has to send its request head.
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    # Long-polls held at once; beyond it wait requests are answered at once.
    max_waiters: int = DEFAULT_MAX_WAITERS
    # Retention: remove collected images after this many days, or the oldest collected ones beyond max_bytes.
    retention_days: t.Optional[float] = None
    max_bytes: t.Optional[int] = None
    # Retention also removes images never marked collected (age counted from the dump's end).
    retention_uncollected: bool = False
    # Retention also counts collections confirmed by clients without the delete scope (an operator's host policy).
    retention_trusts_collect: bool = False
    # Seconds between retention runs (besides the one after each dump).
    retention_interval: float = 60.0
    log_level: str = "INFO"
    # How ELF images are hashed on a real hypervisor: "fifo" (libvirt writes into a FIFO that the service drains,
    # hashing and writing in one pass) or "after" (libvirt writes the file, the service reads it back to hash it;
    # for dump directories where a FIFO cannot be created or opened by libvirt/QEMU).
    hash_mode: str = "fifo"
    # Seconds between libvirt progress polls while a dump runs.
    progress_interval: float = 0.1
    # A live dump that has not finished after this many seconds is aborted (the guest dirties memory too fast).
    live_max_seconds: float = 120.0
    # The longest pause QEMU may plan for the last pages of a live dump (its migration downtime limit).
    live_max_downtime_ms: int = 50
    # Extra bytes required on top of the guest's memory by the free-space check.
    space_margin: int = 64 * 1024 * 1024
    # Largest accepted request body in bytes.
    max_body: int = 1024 * 1024
    # Seconds a dump's stream may stay silent after libvirt's call returned before the dump is given up.
    stream_idle_timeout: float = 30.0

    def validate(self) -> None:
        """Raise ConfigError when options do not fit together."""
        if self.max_parallel < 1:
            raise ConfigError("max-parallel must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls-cert and tls-key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls-client-ca needs TLS: give --tls-cert and --tls-key as well")
        if self.hash_mode not in HASH_MODES:
            raise ConfigError(f"hash-mode must be one of {', '.join(HASH_MODES)}")
        for name in ("max_connections", "max_pending_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        if self.max_waiters < 0:
            raise ConfigError("max-waiters must not be negative")
        if self.live_max_seconds <= 0 or self.live_max_downtime_ms < 1:
            raise ConfigError("live-max-seconds must be positive and live-max-downtime-ms at least 1")
        if self.header_timeout <= 0:
            raise ConfigError("header-timeout must be positive")
        if self.retention_days is not None and self.retention_days <= 0:
            raise ConfigError("retention-days must be positive")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError("max-bytes must be at least 1")
        if self.retention_interval <= 0 or self.progress_interval <= 0 or self.stream_idle_timeout <= 0:
            raise ConfigError("retention-interval, progress-interval and stream-idle-timeout must be positive")
        if self.space_margin < 0:
            raise ConfigError("space-margin must not be negative")
        if self.max_body < 1024:
            raise ConfigError("max-body must be at least 1024 bytes")
        self._check_exposure()

    def _check_exposure(self) -> None:
        """Refuse to run without auth or without TLS unless explicitly asked, and then only where it is safe."""
        host, _port = split_listen(self.listen)
        loopback = is_loopback(host)
        if self.token_file and self.tokens_file:
            raise ConfigError("give --tokens-file (named clients) or --token-file (one token), not both")
        if self.insecure_no_auth:
            if self.token_file or self.tokens_file:
                raise ConfigError("--insecure-no-auth contradicts --token-file/--tokens-file: drop one")
            if not loopback:
                raise ConfigError(f"--insecure-no-auth works only on a loopback listener (127.0.0.0/8, ::1, localhost), "
                                  f"not {host or 'all addresses'}: give --tokens-file or --token-file")
        elif not (self.token_file or self.tokens_file):
            raise ConfigError("no authentication configured: give --tokens-file FILE (named clients with scopes) or "
                              "--token-file FILE (one bearer token); --insecure-no-auth runs without it on a loopback listener")
        if not loopback and not self.tls_cert and not self.insecure_listen:
            raise ConfigError(f"listening on {host or 'all addresses'} (not loopback) needs TLS: give --tls-cert and --tls-key, "
                              "or --insecure-listen for plain HTTP on a trusted network")

    def hosts(self) -> t.List[str]:
        """The Host header values the service answers: allowed_hosts, or loopback names, the listen address and,
        on a listener that is not loopback, this host's names."""
        if self.allowed_hosts:
            return list(self.allowed_hosts)
        host, _port = split_listen(self.listen)
        names = list(LOOPBACK_HOSTS)
        if host not in WILDCARD_HOSTS:
            names.append(f"[{host}]" if ":" in host else host)
        if not is_loopback(host):
            names += [socket.gethostname(), socket.getfqdn()]
        return sorted({name.lower() for name in names})

    @property
    def auth(self) -> bool:
        """Whether requests need a token."""
        return not self.insecure_no_auth


def split_listen(listen: str) -> t.Tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT) into host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen must be HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); host names are not resolved."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser(environ: t.Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; defaults come from MEMDUMP_<OPTION> variables in environ."""

    def env(name: str, default: t.Any) -> t.Any:
        return environ.get("MEMDUMP_" + name, default)

    def flag(name: str) -> bool:
        return env(name, "").strip().lower() in ("1", "true", "yes", "on")

    def number(name: str, kind: t.Callable[[str], t.Any]) -> t.Any:
        value = env(name, None)
        return kind(value) if value else None

    parser = argparse.ArgumentParser(
        prog="memdump-service",
        description="Take memory dumps of libvirt guests behind an HTTP API. "
        "Every option can also be set by the environment variable MEMDUMP_<OPTION> (for example MEMDUMP_DUMP_DIR).",
    )
    parser.add_argument("--listen", default=env("LISTEN", DEFAULT_LISTEN), help="HOST:PORT to listen on (default %(default)s)")
    parser.add_argument("--libvirt-uri", default=env("LIBVIRT_URI", DEFAULT_URI), help="libvirt connection URI (default %(default)s)")
    parser.add_argument("--dump-dir", default=env("DUMP_DIR", DEFAULT_DUMP_DIR), help="directory for the images (default %(default)s)")
    parser.add_argument("--state-file", default=env("STATE_FILE", DEFAULT_STATE_FILE), help="SQLite job database (default %(default)s)")
    parser.add_argument("--max-parallel", type=int, default=int(env("MAX_PARALLEL", DEFAULT_MAX_PARALLEL)),
                        help="dumps running at once (default %(default)s)")
    parser.add_argument("--tokens-file", default=env("TOKENS_FILE", None),
                        help="JSON file of named clients with scopes (docs/api.md, Auth); re-read when it changes")
    parser.add_argument("--token-file", default=env("TOKEN_FILE", None),
                        help="file holding one bearer token with every scope (client name token-file)")
    parser.add_argument("--insecure-no-auth", action="store_true", default=flag("INSECURE_NO_AUTH"),
                        help="run without authentication (only on a loopback listener)")
    parser.add_argument("--insecure-listen", action="store_true", default=flag("INSECURE_LISTEN"),
                        help="allow plain HTTP on an address that is not loopback")
    parser.add_argument("--tls-cert", default=env("TLS_CERT", None), help="PEM certificate for HTTPS")
    parser.add_argument("--tls-key", default=env("TLS_KEY", None), help="PEM private key for HTTPS")
    parser.add_argument("--tls-client-ca", default=env("TLS_CLIENT_CA", None),
                        help="PEM CA file: require client certificates signed by it (mutual TLS)")
    parser.add_argument("--allowed-hosts", default=env("ALLOWED_HOSTS", ""),
                        help="comma-separated Host header values to answer (default: localhost, 127.0.0.1, [::1], the "
                        "listen address and, when it is not loopback, this host's name and FQDN; '*' for any)")
    parser.add_argument("--openapi", action="store_true", default=flag("OPENAPI"),
                        help="serve /openapi.json and /docs (without auth)")
    parser.add_argument("--max-connections", type=int, default=int(env("MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS)),
                        help="open connections beyond which requests are answered 503 (default %(default)s)")
    parser.add_argument("--max-pending-connections", type=int, default=int(env("MAX_PENDING_CONNECTIONS", DEFAULT_MAX_PENDING)),
                        help="connections still sending their first request head; beyond it the oldest is closed (default %(default)s)")
    parser.add_argument("--header-timeout", type=float, default=float(env("HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT)),
                        help="seconds a new connection has to send its request head (default %(default)s)")
    parser.add_argument("--max-waiters", type=int, default=int(env("MAX_WAITERS", DEFAULT_MAX_WAITERS)),
                        help="long-polls held at once; further wait requests are answered at once (default %(default)s)")
    parser.add_argument("--retention-days", type=float, default=number("RETENTION_DAYS", float),
                        help="remove an image this many days after it was marked collected")
    parser.add_argument("--max-bytes", type=int, default=number("MAX_BYTES", int),
                        help="remove the oldest collected images while the images take more than this many bytes")
    parser.add_argument("--retention-uncollected", action="store_true", default=flag("RETENTION_UNCOLLECTED"),
                        help="let retention also remove images never marked collected (age counted from the dump's end)")
    parser.add_argument("--retention-trusts-collect", action="store_true", default=flag("RETENTION_TRUSTS_COLLECT"),
                        help="let retention count a collection confirmed by a client without the delete scope (by default only "
                        "a client that may delete the image can allow retention to remove it)")
    parser.add_argument("--retention-interval", type=float, default=float(env("RETENTION_INTERVAL", 60)),
                        help="seconds between retention runs, besides the one after each dump and collection (default %(default)s)")
    parser.add_argument("--space-margin", type=int, default=int(env("SPACE_MARGIN", 64 * 1024 * 1024)),
                        help="bytes the dump dir keeps free beyond what the images need; a dump that would eat into it is "
                        "refused or stopped (default %(default)s)")
    parser.add_argument("--progress-interval", type=float, default=float(env("PROGRESS_INTERVAL", 0.1)),
                        help="seconds between libvirt progress polls while a dump runs (default %(default)s)")
    parser.add_argument("--stream-idle-timeout", type=float, default=float(env("STREAM_IDLE_TIMEOUT", 30)),
                        help="seconds a dump's stream may stay silent after libvirt's call returned (default %(default)s)")
    parser.add_argument("--max-body", type=int, default=int(env("MAX_BODY", 1024 * 1024)),
                        help="largest accepted request body in bytes (default %(default)s)")
    parser.add_argument("--hash-mode", choices=HASH_MODES, default=env("HASH_MODE", "fifo"),
                        help="how ELF images are hashed: fifo (stream through a FIFO, one pass) or after (hash the finished "
                        "file, one extra read; for a dump dir where libvirt/QEMU cannot create or open a FIFO) (default %(default)s)")
    parser.add_argument("--live-max-seconds", type=float, default=float(env("LIVE_MAX_SECONDS", 120)),
                        help="abort a live dump that has not finished after this many seconds (default %(default)s)")
    parser.add_argument("--live-max-downtime-ms", type=int, default=int(env("LIVE_MAX_DOWNTIME_MS", 50)),
                        help="longest pause of the guest QEMU may plan for the end of a live dump (default %(default)s)")
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"), help="logging level (default %(default)s)")
    return parser


def parse_args(argv: t.Optional[t.Sequence[str]] = None, environ: t.Optional[t.Mapping[str, str]] = None) -> Settings:
    """Build Settings from argv and the environment."""
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    settings = Settings(
        dump_dir=os.path.abspath(args.dump_dir),
        state_file=os.path.abspath(args.state_file),
        libvirt_uri=args.libvirt_uri,
        listen=args.listen,
        max_parallel=args.max_parallel,
        token_file=args.token_file or None,
        tokens_file=args.tokens_file or None,
        insecure_no_auth=args.insecure_no_auth,
        insecure_listen=args.insecure_listen,
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        tls_client_ca=args.tls_client_ca or None,
        allowed_hosts=[name.strip() for name in args.allowed_hosts.split(",") if name.strip()],
        openapi=args.openapi,
        max_connections=args.max_connections,
        max_pending_connections=args.max_pending_connections,
        header_timeout=args.header_timeout,
        max_waiters=args.max_waiters,
        retention_days=args.retention_days,
        max_bytes=args.max_bytes,
        retention_uncollected=args.retention_uncollected,
        retention_trusts_collect=args.retention_trusts_collect,
        retention_interval=args.retention_interval,
        space_margin=args.space_margin,
        progress_interval=args.progress_interval,
        stream_idle_timeout=args.stream_idle_timeout,
        max_body=args.max_body,
        log_level=args.log_level.upper(),
        hash_mode=args.hash_mode,
        live_max_seconds=args.live_max_seconds,
        live_max_downtime_ms=args.live_max_downtime_ms,
    )
    settings.validate()
    return settings
