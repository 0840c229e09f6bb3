"""OpenTelemetry tracing of RPCs through the gRPC instrumentation, on when an exporter is set.

Tracing is off unless the environment names an exporter, in OpenTelemetry's own variables:

- ``OTEL_TRACES_EXPORTER=console``: spans printed to stdout (the SDK's console exporter);
- ``OTEL_TRACES_EXPORTER=otlp``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set: spans sent over OTLP/gRPC (needs the
  ``opentelemetry-exporter-otlp-proto-grpc`` package; the endpoint, headers and the rest come
  from the OTEL_EXPORTER_OTLP_* variables as that exporter reads them);
- ``OTEL_TRACES_EXPORTER=none`` or nothing set: off, and no interceptor is added.

``OTEL_SERVICE_NAME`` names the service (default ``pdplanner``). Each RPC becomes a server span
(``/pdplanner.v1.PlannerService/Plan``) with the gRPC semantic attributes, continuing the
caller's trace when the call carries W3C ``traceparent`` metadata.

Errors: ``TracingConfigError`` (a ``ValueError``) for an exporter name it does not know, or
``otlp`` without its package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import grpc
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Status, StatusCode

from pdplanner.service.interceptors import MethodInterceptor, around_calls, status_code

if TYPE_CHECKING:
    from pdplanner.service.interceptors import Handler


class TracingConfigError(ValueError):
    """An OTEL_* setting this server cannot honour."""


def exporter_from_env(env: Mapping[str, str] | None = None) -> SpanExporter | None:
    """The span exporter the environment asks for, None when tracing is off."""
    env = os.environ if env is None else env
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names:
        names = ["otlp"] if endpoint else []
    if not names or names == ["none"]:
        return None
    if len(names) > 1:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={','.join(names)}: name one exporter")
    if names[0] == "console":
        return ConsoleSpanExporter()
    if names[0] == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingConfigError(
                "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-grpc "
                "(pip install 'pdplanner[otlp]')"
            ) from None
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    raise TracingConfigError(f"OTEL_TRACES_EXPORTER={names[0]!r}: must be otlp, console or none")


def provider_from_env(env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider exporting as the environment says, None when tracing is off."""
    env = os.environ if env is None else env
    exporter = exporter_from_env(env)
    if exporter is None:
        return None
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "pdplanner"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def interceptors(provider: Any) -> list[grpc.ServerInterceptor]:
    """The gRPC instrumentation's server interceptor recording spans with ``provider``, then one
    that puts the call's final status on its span.

    The instrumentation sees ``abort`` and ``set_code`` but not ``abort_with_status``, which the
    servicer uses to send rich error details; without the second interceptor such a call's span
    would say OK.
    """
    from opentelemetry.instrumentation.grpc import server_interceptor

    spans: grpc.ServerInterceptor = server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return [spans, _StatusOnSpan()]


@contextmanager
def _status_marked(_request: Any, context: grpc.ServicerContext) -> Iterator[None]:
    """Put the call's status on its span once it ends (the instrumentation does not)."""
    try:
        yield
    finally:
        code = status_code(context)
        if code is not None and code != grpc.StatusCode.OK:
            span = trace.get_current_span()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            details = cast(Any, context).details()
            text = details.decode() if isinstance(details, bytes) else details
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {text or ''}".rstrip(": ")))


class _StatusOnSpan(MethodInterceptor):
    def wrap(self, handler: Handler, call: grpc.HandlerCallDetails) -> Handler:
        if handler.unary_unary is None and handler.unary_stream is None:
            return handler  # client-streaming calls (reflection) are left as they are
        return around_calls(handler, _status_marked)
