"""Per-client concurrency: one client cannot hold every call slot of the server.

A client is its bearer token when it sends one (so many processes of one tenant share a
limit), else its address without the port (so a client cannot get more slots by opening more
connections). Past ``max_calls_per_client`` calls in progress, a client's new call fails at once
with RESOURCE_EXHAUSTED; other clients are unaffected. Health checks are not counted.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc

from pdplanner.service.interceptors import MethodInterceptor, around_calls

if TYPE_CHECKING:
    from pdplanner.service.interceptors import Handler

_EXEMPT = ("/grpc.health.v1.Health/",)


def client_key(metadata: Any, peer: str) -> str:
    """The key a call's client is counted under: its token's digest, else its address."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return "token:" + hashlib.sha256(value.encode()).hexdigest()[:16]
    host, _, _port = peer.rpartition(":")  # ipv4:1.2.3.4:5678, ipv6:[::1]:5678
    return "peer:" + (host or peer)


class ClientLimits(MethodInterceptor):
    """Counts calls in progress per client; refuses a client's call past ``per_client``."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}

    def in_progress(self, key: str) -> int:
        with self._lock:
            return self._active.get(key, 0)

    def _enter(self, key: str) -> bool:
        with self._lock:
            count = self._active.get(key, 0)
            if count >= self.per_client:
                return False
            self._active[key] = count + 1
            return True

    def _leave(self, key: str) -> None:
        with self._lock:
            count = self._active[key] - 1
            if count:
                self._active[key] = count
            else:
                del self._active[key]  # the table holds active clients only

    def wrap(self, handler: Handler, call: grpc.HandlerCallDetails) -> Handler:
        if call.method.startswith(_EXEMPT):
            return handler
        if handler.unary_unary is None and handler.unary_stream is None:
            return handler  # no client-streaming methods here to count
        return around_calls(handler, partial(self._slot, call.invocation_metadata))

    @contextmanager
    def _slot(self, metadata: Any, _request: Any, context: grpc.ServicerContext) -> Iterator[None]:
        """One of the client's call slots, held while the call runs."""
        key = client_key(metadata, context.peer())
        if not self._enter(key):
            self._refuse(context)
        try:
            yield
        finally:
            self._leave(key)

    def _refuse(self, context: grpc.ServicerContext) -> None:
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this client has {self.per_client} calls in progress, the most allowed; retry "
            "when one ends",
        )
