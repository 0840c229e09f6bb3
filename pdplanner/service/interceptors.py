"""Acting around every call of a method, for the server's interceptors.

A gRPC ``ServerInterceptor`` is handed a method's handler, not its calls. To act when a call
starts and when it ends (count it, log it, limit it, mark its span, refuse it) it returns a
handler of the same kind whose behaviour runs the original one inside a context manager.
:func:`around_calls` builds that handler for the four kinds (a single or streamed request, a
single or streamed response), so that each interceptor states only what it does around a call;
:func:`on_end` is the ``around`` of those that report a call once it ended (metrics, call log).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

#: What runs around one call: ``around(request, context)`` is entered before the method's
#: behaviour and left once it returned or raised (for a streamed request, ``request`` is the
#: iterator of requests).
Around = Callable[[Any, grpc.ServicerContext], AbstractContextManager[object]]
_Unary = Callable[[Any, grpc.ServicerContext], Any]
_Stream = Callable[[Any, grpc.ServicerContext], Iterator[Any]]


class MethodInterceptor(grpc.ServerInterceptor):
    """A server interceptor that rewraps the handler of every method it is handed; a subclass
    says how in :meth:`wrap` (returning ``handler`` leaves a method as it is)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        return None if handler is None else self.wrap(handler, handler_call_details)

    @abstractmethod
    def wrap(self, handler: Handler, call: grpc.HandlerCallDetails) -> Handler:
        """The handler to serve ``call``'s method with (``call``: its name and metadata)."""


def around_calls(
    handler: Handler,
    around: Around,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """``handler`` with each of its calls run inside ``around``.

    A streamed response is left when its last message has been sent, when it fails, or when
    the client goes away. ``request_deserializer`` replaces the handler's for methods that take
    a single request (a stream of requests keeps its own).
    """
    single = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    streamed = {**single, "request_deserializer": handler.request_deserializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, around), **single)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_stream(handler.unary_stream, around), **single)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, around), **streamed
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _stream(handler.stream_stream, around), **streamed
        )
    return handler


def _unary(behaviour: _Unary, around: Around) -> _Unary:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        with around(request, context):
            return behaviour(request, context)

    return call


def _stream(behaviour: _Stream, around: Around) -> _Stream:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with around(request, context):
            yield from behaviour(request, context)

    return call


@dataclass(frozen=True)
class Ended:
    """How a call ended: its status ``code`` and how long it took (``seconds``, wall clock)."""

    code: grpc.StatusCode
    seconds: float


def status_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status code the call has set so far (None: none yet, which ends as OK)."""
    code: grpc.StatusCode | None = cast(Any, context).code()  # not in grpcio's stubs
    return code


def on_end(report: Callable[[Any, grpc.ServicerContext, Ended], None]) -> Around:
    """An ``around`` that calls ``report(request, context, ended)`` once a call ended. A call
    that raised without setting a code ends UNKNOWN (what grpcio answers), else OK."""

    @contextmanager
    def timed(request: Any, context: grpc.ServicerContext) -> Iterator[None]:
        started = time.perf_counter()
        failed = True
        try:
            yield
            failed = False
        finally:
            code = status_code(context)
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            report(request, context, Ended(code, time.perf_counter() - started))

    return timed
