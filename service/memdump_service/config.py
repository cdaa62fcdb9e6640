"""Settings of the memdump service: command-line options with MEMDUMP_<OPTION> environment fallbacks."""

import argparse
import dataclasses
import os
import typing as t

DEFAULT_LISTEN = "127.0.0.1:5001"
DEFAULT_URI = "qemu:///system"
DEFAULT_DUMP_DIR = "/var/lib/memdump/dumps"
DEFAULT_STATE_FILE = "/var/lib/memdump/state.sqlite3"
DEFAULT_MAX_PARALLEL = 2

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
    token_file: t.Optional[str] = None
    tls_cert: t.Optional[str] = None
    tls_key: t.Optional[str] = None
    log_level: str = "INFO"
    # How ELF images are hashed on a real hypervisor: "fifo" (libvirt writes into a FIFO that the service drains,
    # hashing and writing in one pass) or "after" (libvirt writes the file, the service reads it back to hash it).
    hash_mode: str = "fifo"
    # Seconds between libvirt progress polls while a dump runs.
    progress_interval: float = 0.1
    # Extra bytes required on top of the guest's memory by the free-space check.
    space_margin: int = 64 * 1024 * 1024
    # Largest accepted request body in bytes.
    max_body: int = 1024 * 1024

    def validate(self) -> None:
        """Raise ConfigError when options do not fit together."""
        if self.max_parallel < 1:
            raise ConfigError("max-parallel must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls-cert and tls-key must be given together")
        if self.hash_mode not in HASH_MODES:
            raise ConfigError(f"hash-mode must be one of {', '.join(HASH_MODES)}")
        split_listen(self.listen)

    def read_token(self) -> t.Optional[str]:
        """The bearer token from token_file, or None when auth is off."""
        if not self.token_file:
            return None
        try:
            with open(self.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {self.token_file}: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"token file {self.token_file} is empty")
        return token

    @property
    def is_test_driver(self) -> bool:
        """True for libvirt's test driver, which cannot take memory-only dumps."""
        return self.libvirt_uri.startswith("test:")


def split_listen(listen: str) -> t.Tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT) into host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen must be HOST:PORT, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def build_parser(environ: t.Mapping[str, str]) -> argparse.ArgumentParser:
    """The argument parser; defaults come from MEMDUMP_<OPTION> variables in environ."""

    def env(name: str, default: t.Any) -> t.Any:
        return environ.get("MEMDUMP_" + name, default)

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
    parser.add_argument("--token-file", default=env("TOKEN_FILE", None), help="file holding the bearer token required on /api routes")
    parser.add_argument("--tls-cert", default=env("TLS_CERT", None), help="PEM certificate for HTTPS")
    parser.add_argument("--tls-key", default=env("TLS_KEY", None), help="PEM private key for HTTPS")
    parser.add_argument("--hash-mode", choices=HASH_MODES, default=env("HASH_MODE", "fifo"),
                        help="how ELF images are hashed: fifo (stream through a FIFO, one pass) or after (hash the finished "
                        "file, one extra read) (default %(default)s)")
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
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        log_level=args.log_level.upper(),
        hash_mode=args.hash_mode,
    )
    settings.validate()
    return settings
