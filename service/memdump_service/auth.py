"""Who may call what: clients named in a tokens file (or the one client of a token file), each with scopes.

Every route declares what it needs with :func:`access`; the app-level dependency :func:`guard` decides
on the route that matched (never on a URL rebuilt from headers), so a route without a declaration is
refused to everyone. The tokens file is re-read when it changes, so that a token can be revoked
without a restart; a file that became unusable denies every request until it is fixed.
"""

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import typing as t

from fastapi import HTTPException, Request

from memdump_service import audit
from memdump_service.config import ConfigError

LOG = logging.getLogger("memdump_service")

SCOPES = ("read", "collect", "trigger", "delete")
PUBLIC = "public"
NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
CLIENT_KEYS = {"name", "token_sha256", "scopes"}
EMPTY_TOKEN_HASH = hashlib.sha256(b"").hexdigest()
TOKEN_FILE_CLIENT = "token-file"
UNAVAILABLE = "authentication is unavailable: the service's token file cannot be used; see the service log"

Endpoint = t.TypeVar("Endpoint", bound=t.Callable[..., t.Any])
# What each route needs, by endpoint function: one of SCOPES, or PUBLIC.
REQUIRED: t.Dict[t.Callable[..., t.Any], str] = {}


@dataclasses.dataclass(frozen=True)
class Client:
    """A caller of the API and what it may do."""

    name: str
    scopes: t.FrozenSet[str]


# Everyone, when the service runs with --insecure-no-auth.
ANONYMOUS = Client("anonymous", frozenset(SCOPES))
# Where guard leaves the calling client for the route.
CLIENT_KEY = "memdump.client"


def access(scope: str) -> t.Callable[[Endpoint], Endpoint]:
    """Declare what a route needs: a scope of SCOPES, or PUBLIC for no token at all."""
    if scope not in SCOPES + (PUBLIC,):
        raise ValueError(f"unknown scope {scope!r}")

    def declare(endpoint: Endpoint) -> Endpoint:
        REQUIRED[endpoint] = scope
        return endpoint

    return declare


class AuthUnavailable(Exception):
    """The token file changed into something unusable: every request is denied until it is fixed."""


def private_file_problem(path: str, info: os.stat_result) -> t.Optional[str]:
    """Why a file holding secrets must not be used, or None."""
    mode = info.st_mode & 0o777
    if info.st_mode & 0o066:
        return f"{path} is readable or writable by group or others (mode {mode:04o}); run chmod 600 {path}"
    if info.st_uid not in (os.geteuid(), 0):
        return f"{path} belongs to uid {info.st_uid}, not to the service's user (uid {os.geteuid()}) or root; run chown to fix it"
    return None


def parse_clients(path: str, text: str) -> t.List[t.Tuple[bytes, Client]]:
    """The clients of a tokens file, ``{"clients": [{"name", "token_sha256", "scopes"}, ...]}``, with their token hashes."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"tokens file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"clients"} or not isinstance(data["clients"], list):
        raise ConfigError(f'tokens file {path} must be a JSON object {{"clients": [...]}} and nothing else')
    clients: t.List[t.Tuple[bytes, Client]] = []
    seen_names: t.Set[str] = set()
    seen_hashes: t.Set[str] = set()
    for number, entry in enumerate(data["clients"], 1):
        where = f"tokens file {path}, client {number}"
        if not isinstance(entry, dict) or set(entry) != CLIENT_KEYS:
            raise ConfigError(f"{where}: give exactly the keys {', '.join(sorted(CLIENT_KEYS))}")
        name, digest, scopes = entry["name"], entry["token_sha256"], entry["scopes"]
        if not isinstance(name, str) or not NAME_RE.match(name) or name in seen_names:
            raise ConfigError(f"{where}: name must be unique, 1-64 characters of [A-Za-z0-9._@-]")
        if not isinstance(digest, str) or not HASH_RE.match(digest.lower()) or digest.lower() == EMPTY_TOKEN_HASH:
            raise ConfigError(f"{where} ({name}): token_sha256 must be the 64 hex digits of sha256(token) of a non-empty token")
        if digest.lower() in seen_hashes:
            raise ConfigError(f"{where} ({name}): another client has the same token")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and s in SCOPES for s in scopes):
            raise ConfigError(f"{where} ({name}): scopes must be a non-empty list of {', '.join(SCOPES)}")
        seen_names.add(name)
        seen_hashes.add(digest.lower())
        clients.append((bytes.fromhex(digest), Client(name, frozenset(scopes))))
    return clients


class Credentials:
    """The clients of a tokens file (JSON, named clients with scopes) or of a token file (one token, every scope).

    Checked on each request with one stat(); re-read when the file's identity, size, times or mode change.
    """

    def __init__(self, path: str, single_token: bool) -> None:
        self.path = path
        self.single_token = single_token
        self._lock = threading.Lock()
        self._signature: t.Optional[t.Tuple[int, ...]] = None
        self._clients: t.List[t.Tuple[bytes, Client]] = []
        self._problem: t.Optional[str] = None
        self._load()
        if self._problem:
            raise ConfigError(self._problem)

    @staticmethod
    def signature(info: os.stat_result) -> t.Tuple[int, ...]:
        """What identifies one version of the file."""
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode, info.st_uid)

    def _load(self) -> None:
        """Read the file; on any problem there are no clients (fail closed) and _problem says why."""
        self._signature = None
        try:
            with open(self.path, encoding="utf-8") as handle:
                info = os.fstat(handle.fileno())
                self._signature = self.signature(info)
                problem = private_file_problem(self.path, info)
                if problem:
                    raise ConfigError(problem)
                text = handle.read()
            self._clients = self._parse(text)
            self._problem = None
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            self._clients = []
            self._problem = str(exc) if isinstance(exc, ConfigError) else f"cannot read token file {self.path}: {exc}"

    def describe(self) -> str:
        """The clients and their scopes, for the log."""
        return ", ".join(f"{client.name} ({' '.join(sorted(client.scopes))})" for _digest, client in self._clients) or "no clients"

    def _parse(self, text: str) -> t.List[t.Tuple[bytes, Client]]:
        if self.single_token:
            token = text.strip()
            if not token:
                raise ConfigError(f"token file {self.path} is empty")
            return [(hashlib.sha256(token.encode("utf-8")).digest(), Client(TOKEN_FILE_CLIENT, frozenset(SCOPES)))]
        return parse_clients(self.path, text)

    def _current(self) -> t.List[t.Tuple[bytes, Client]]:
        with self._lock:
            try:
                signature: t.Optional[t.Tuple[int, ...]] = self.signature(os.stat(self.path))
            except OSError:
                signature = None
            if signature != self._signature:
                self._load()
                if self._problem:
                    LOG.error("denying every request until the token file is fixed: %s", self._problem)
                else:
                    LOG.info("re-read %s: %s", self.path, self.describe())
            if self._problem:
                raise AuthUnavailable(self._problem)
            return self._clients

    def identify(self, token: bytes) -> t.Optional[Client]:
        """The client whose token this is, or None; every hash is compared, each in constant time."""
        digest = hashlib.sha256(token).digest()
        found = None
        for expected, client in self._current():
            if hmac.compare_digest(digest, expected) and found is None:
                found = client
        return found


def bearer_token(authorization: str) -> t.Optional[bytes]:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _sep, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip().encode("utf-8", "surrogateescape")


def authenticate(credentials: t.Optional[Credentials], authorization: str) -> Client:
    """The calling client; HTTPException 401 (no or an unknown token) or 503 (token file unusable)."""
    if credentials is None:
        return ANONYMOUS
    token = bearer_token(authorization)
    try:
        client = credentials.identify(token) if token is not None else None
    except AuthUnavailable:
        raise HTTPException(503, UNAVAILABLE) from None
    if client is None:
        raise HTTPException(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
    return client


async def guard(request: Request) -> None:
    """The app-level dependency of every route: admits the caller only to what the matched route declares."""
    needed = REQUIRED.get(request.scope.get("endpoint"))  # type: ignore[arg-type]
    if needed == PUBLIC:
        return
    entry = audit.begin(request.scope, client=None, route=getattr(request.scope.get("route"), "path", None),
                        dump_id=request.path_params.get("dump_id"))
    if needed is None:
        raise HTTPException(403, "this route declares no scope, so it is refused to everyone")
    client = authenticate(request.app.state.credentials, request.headers.get("authorization", ""))
    entry["client"] = client.name
    request.scope[CLIENT_KEY] = client
    if needed not in client.scopes:
        raise HTTPException(403, f"client {client.name!r} lacks the scope {needed!r} that {request.method} "
                                 f"{entry['route']} needs; it has {', '.join(sorted(client.scopes))}")


def caller(request: Request) -> Client:
    """The client guard admitted to this request."""
    return request.scope[CLIENT_KEY]


def credentials_of(token_file: t.Optional[str], tokens_file: t.Optional[str]) -> t.Optional[Credentials]:
    """The Credentials the options configure; None means no authentication."""
    if tokens_file:
        return Credentials(tokens_file, single_token=False)
    if token_file:
        return Credentials(token_file, single_token=True)
    return None
