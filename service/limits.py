"""Per-client concurrency: one client cannot hold every call slot of the server.

A client is its bearer token when it sends one (so many processes of one tenant share a
limit), else its address without the port (so a client cannot get more slots by opening more
connections). Past ``max_calls_per_client`` calls in progress, a client's new call fails at once
with RESOURCE_EXHAUSTED; other clients are unaffected. Health checks are not counted.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]

_EXEMPT = ("/grpc.health.v1.Health/",)


def client_key(metadata: Any, peer: str) -> str:
    """The key a call's client is counted under: its token's digest, else its address."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return "token:" + hashlib.sha256(value.encode()).hexdigest()[:16]
    host, _, _port = peer.rpartition(":")  # ipv4:1.2.3.4:5678, ipv6:[::1]:5678
    return "peer:" + (host or peer)


class ClientLimits(grpc.ServerInterceptor):
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

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_EXEMPT):
            return handler
        metadata = handler_call_details.invocation_metadata
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, metadata), **codec
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, metadata), **codec
            )
        return handler  # no client-streaming methods here to count

    def _refuse(self, context: grpc.ServicerContext) -> None:
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this client has {self.per_client} calls in progress, the most allowed; retry "
            "when one ends",
        )

    def _unary(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Any], metadata: Any
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            key = client_key(metadata, context.peer())
            if not self._enter(key):
                self._refuse(context)
            try:
                return behaviour(request, context)
            finally:
                self._leave(key)

        return call

    def _stream(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]], metadata: Any
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            key = client_key(metadata, context.peer())
            if not self._enter(key):
                self._refuse(context)
            try:
                yield from behaviour(request, context)
            finally:
                self._leave(key)

        return call
