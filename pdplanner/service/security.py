"""Who may call the server, and over what: bearer tokens with two roles, TLS and mutual TLS.

Tokens come from a file (``PDPLANNER_AUTH_TOKENS_FILE``, one ``ROLE:TOKEN`` a line, ``#``
comments) or a variable (``PDPLANNER_AUTH_TOKENS``, ``ROLE:TOKEN`` entries separated by commas).
Roles: ``admin`` may call everything; ``read`` may call what changes nothing (Estimate,
RateMatch, ExportPlan, Get*, List*) and gets PERMISSION_DENIED for Plan, Sweep, PlanScaling,
Create* and Delete*. A call without a token, or with one that matches none, is
UNAUTHENTICATED. Tokens are compared in constant time (as SHA-256 digests with
``hmac.compare_digest``, against every configured token). The gRPC health
and reflection services stay open: load balancers and ``grpcurl`` need them.

``PDPLANNER_AUTH`` is ``auto`` (default: on when the server binds beyond the loopback
interface), ``on`` or ``off``. A server whose auth is on but has no tokens refuses to start.

TLS: ``PDPLANNER_TLS_CERT_FILE`` and ``PDPLANNER_TLS_KEY_FILE`` (PEM) serve TLS; with
``PDPLANNER_TLS_CLIENT_CA_FILE`` too, clients must present a certificate that CA signed (mTLS).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc

from pdplanner.service.interceptors import MethodInterceptor, around_calls

if TYPE_CHECKING:
    from pdplanner.service.interceptors import Handler
    from pdplanner.service.settings import ServerSettings

ROLES: Final = ("admin", "read")
#: The methods a ``read`` token may call: those that change nothing.
READ_METHODS: Final = frozenset(
    {"Estimate", "GetPlan", "ExportPlan", "ListPlans", "GetSweep", "ListSweeps", "ListModels",
     "ListGpus", "GetSchedule", "ListSchedules", "RateMatch"}
)  # fmt: skip
#: Services open to every caller.
OPEN_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.v1")
#: Shortest token accepted: 128 bits as hex.
MIN_TOKEN_CHARS: Final = 32


@dataclass(frozen=True)
class Token:
    role: str
    digest: bytes  # SHA-256 of the token: compared, never the token itself

    def __repr__(self) -> str:  # never print a secret's digest in logs either
        return f"Token(role={self.role!r})"


def parse_tokens(text: str, source: str, separator: str = "\n") -> list[Token]:
    """``ROLE:TOKEN`` entries; ``ValueError`` naming ``source`` and the entry's number."""
    tokens: list[Token] = []
    for number, raw in enumerate(text.split(separator), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        role, sep, secret = entry.partition(":")
        if not sep or role not in ROLES:
            raise ValueError(f"{source} entry {number}: must be ROLE:TOKEN with ROLE admin or read")
        if len(secret) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"{source} entry {number}: a token needs at least {MIN_TOKEN_CHARS} characters"
            )
        tokens.append(Token(role, hashlib.sha256(secret.encode()).digest()))
    return tokens


def load_tokens(settings: ServerSettings) -> list[Token]:
    """The tokens of the settings' file and variable together."""
    tokens: list[Token] = []
    if settings.auth_tokens_file:
        path = Path(settings.auth_tokens_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"PDPLANNER_AUTH_TOKENS_FILE: cannot read {path}: {exc}") from None
        tokens += parse_tokens(text, "PDPLANNER_AUTH_TOKENS_FILE")
    if settings.auth_tokens:
        tokens += parse_tokens(settings.auth_tokens, "PDPLANNER_AUTH_TOKENS", separator=",")
    return tokens


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as ``PDPLANNER_HOST`` gives it) is reachable from this machine only."""
    bare = host.strip("[]").lower()
    return bare in ("localhost", "::1") or bare.startswith("127.")


def auth_enabled(settings: ServerSettings) -> bool:
    if settings.auth not in ("auto", "on", "off"):
        raise ValueError(f"PDPLANNER_AUTH must be auto, on or off, got {settings.auth!r}")
    return settings.auth == "on" or (settings.auth == "auto" and not is_loopback(settings.host))


class BearerAuth(MethodInterceptor):
    """Checks the ``authorization: Bearer TOKEN`` metadata of every call but health/reflection."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        if not tokens:
            raise ValueError("BearerAuth needs at least one token")
        self._tokens = tuple(tokens)

    def role(self, header: str | None) -> str | None:
        """The role of the token in an ``authorization`` header, or None."""
        if header is None or not header.startswith("Bearer "):
            return None
        digest = hashlib.sha256(header[len("Bearer ") :].strip().encode()).digest()
        found: str | None = None
        for token in self._tokens:  # every token, match or not: the time says nothing
            if hmac.compare_digest(digest, token.digest):
                found = token.role
        return found

    def wrap(self, handler: Handler, call: grpc.HandlerCallDetails) -> Handler:
        method: str = call.method
        if method.startswith(OPEN_PREFIXES):
            return handler
        header = None
        for key, value in call.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                header = value
        role = self.role(header)
        if role is None:
            reason = "a bearer token is required" if header is None else "unknown bearer token"
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, reason)
        if role != "admin" and method.rsplit("/", 1)[-1] not in READ_METHODS:
            return _refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"a {role} token may not call {method.rsplit('/', 1)[-1]}",
            )
        return handler


def _refusal(handler: Handler, code: grpc.StatusCode, reason: str) -> Handler:
    """A handler of the same kind as ``handler`` that ends every call with ``code``."""

    @contextmanager
    def refused(_request: Any, context: grpc.ServicerContext) -> Iterator[None]:
        context.abort(code, reason)  # raises: the method never runs
        yield

    return around_calls(handler, refused)


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files, or None for plaintext."""
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if not cert and not key:
        if ca:
            raise ValueError("PDPLANNER_TLS_CLIENT_CA_FILE needs a certificate and key file too")
        return None
    if not cert or not key:
        raise ValueError("TLS needs both PDPLANNER_TLS_CERT_FILE and PDPLANNER_TLS_KEY_FILE")
    chain = _read(cert, "PDPLANNER_TLS_CERT_FILE")
    return grpc.ssl_server_credentials(
        [(_read(key, "PDPLANNER_TLS_KEY_FILE"), chain)],
        root_certificates=_read(ca, "PDPLANNER_TLS_CLIENT_CA_FILE") if ca else None,
        require_client_auth=bool(ca),
    )


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{variable}: cannot read {path}: {exc}") from None
