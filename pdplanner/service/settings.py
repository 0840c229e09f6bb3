"""Server settings: defaults, then environment variables, then ``serve``'s arguments.

PDPLANNER_DATABASE_URL        database (default sqlite:///./pdplanner.db; see storage.config)
PDPLANNER_HOST                address to bind (default 127.0.0.1: this machine only; [::] for all)
PDPLANNER_MAX_WORKERS         threads running searches, Plan and Sweep (default 8); past them a
                              search fails at once with RESOURCE_EXHAUSTED
PDPLANNER_CHEAP_WORKERS       more threads for every other call (health, Get/List, Estimate,
                              Create/Delete), which searches cannot take (default 4)
PDPLANNER_MAX_CONCURRENT_RPCS calls in progress before RESOURCE_EXHAUSTED (default 64)
PDPLANNER_MAX_CALLS_PER_CLIENT calls one client (token, else address) may have in progress (16)
PDPLANNER_GRACE_S             seconds in-flight calls get to finish on shutdown (default 30)
PDPLANNER_LOG_LEVEL           DEBUG, INFO (default), WARNING, ...
PDPLANNER_AUTH                auto (default: on beyond loopback), on, off (service.security)
PDPLANNER_AUTH_TOKENS_FILE    file of ROLE:TOKEN lines (roles admin, read)
PDPLANNER_AUTH_TOKENS         ROLE:TOKEN entries separated by commas
PDPLANNER_TLS_CERT_FILE       PEM certificate chain: serve TLS (with PDPLANNER_TLS_KEY_FILE)
PDPLANNER_TLS_KEY_FILE        PEM private key of that certificate
PDPLANNER_TLS_CLIENT_CA_FILE  PEM CA bundle: clients must show a certificate it signed (mTLS)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``pdplanner.service.server`` needs to start; units are in the names."""

    host: str = "127.0.0.1"
    port: int = 50051
    database_url: str | None = None  # None: PDPLANNER_DATABASE_URL, else ./pdplanner.db
    max_workers: int = 8  # searches (Plan, Sweep) running at once
    #: Threads beyond ``max_workers`` that searches cannot occupy: cheap calls always find one.
    cheap_workers: int = 4
    max_concurrent_rpcs: int = 64
    #: Calls one client (token, else address) may have in progress (service.limits).
    max_calls_per_client: int = 16
    #: Largest request accepted: a request is a few kB, a HF config.json a few tens of kB.
    max_receive_message_bytes: int = 4 * MIB
    #: Largest response sent: a page of plans with their Pareto frontiers.
    max_send_message_bytes: int = 64 * MIB
    grace_s: float = 30.0
    #: A search stops when less than this is left of its call's deadline, to answer in time.
    deadline_margin_s: float = 0.02
    log_level: str = "INFO"
    migrate: bool = True  # apply database migrations on start
    warmup: bool = True  # compile the planner's kernels before reporting SERVING
    #: How often the store is probed; while it does not answer, the health service reports
    #: NOT_SERVING for pdplanner.v1.PlannerService (the server itself stays SERVING).
    store_probe_interval_s: float = 5.0
    auth: str = "auto"  # auto: on when bound beyond loopback
    auth_tokens_file: str | None = None
    auth_tokens: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_workers", "cheap_workers", "max_concurrent_rpcs", "max_calls_per_client",
                     "max_receive_message_bytes", "max_send_message_bytes"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.store_probe_interval_s <= 0:
            raise ValueError("store_probe_interval_s must be positive")
        if self.grace_s < 0 or self.deadline_margin_s < 0:
            raise ValueError("grace_s and deadline_margin_s must not be negative")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """Defaults, then ``PDPLANNER_*`` variables, then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = f"PDPLANNER_{f.name.upper()}"
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            default = getattr(defaults, f.name)
            kind = str if default is None else type(default)
            try:
                values[f.name] = _parse(raw, kind)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def _parse(raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw
