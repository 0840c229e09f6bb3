"""Prometheus metrics on their own port; OpenTelemetry spans through the gRPC instrumentation."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from pdplanner.service import tracing
from pdplanner.service.server import RunningServer, start_server
from pdplanner.v1 import plan_pb2, planner_service_pb2_grpc
from tests.integration.rpc_requests import plan_request

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{tmp_path / 'p.db'}", metrics_port=0
    )
    yield running
    running.stop(0)


def test_metrics_port_counts_calls_errors_latency_searches_and_store(
    metered: RunningServer,
) -> None:
    assert metered.metrics_endpoint is not None
    port = metered.metrics_endpoint.port
    assert port != metered.port
    before = _scrape(port)
    with grpc.insecure_channel(f"127.0.0.1:{metered.port}") as channel:
        stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
        small = plan_request(model="llama-3.1-8b", gpus=4)
        planned = stub.Plan(small).plan
        with pytest.raises(grpc.RpcError):
            stub.GetPlan(plan_pb2.GetPlanRequest(name="plans/nosuchplan"))
    after = _scrape(port)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("pdplanner_rpc_calls_total", method="Plan", code="OK") == 1
    assert delta("pdplanner_rpc_calls_total", method="GetPlan", code="NOT_FOUND") == 1
    assert delta("pdplanner_rpc_errors_total", method="GetPlan", code="NOT_FOUND") == 1
    assert delta("pdplanner_rpc_errors_total", method="Plan", code="OK") == 0
    assert delta("pdplanner_rpc_duration_seconds_count", method="Plan") == 1
    assert delta("pdplanner_rpc_duration_seconds_sum", method="Plan") > 0
    assert delta("pdplanner_search_duration_seconds_count", kind="plan") == 1
    points = planned.result.design_points
    assert points > 0
    assert delta("pdplanner_design_points_total", kind="plan") == points
    assert delta("pdplanner_store_duration_seconds_count", operation="create_plan") == 1
    assert delta("pdplanner_store_duration_seconds_count", operation="get_plan") == 1


def test_no_metrics_port_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PDPLANNER_METRICS_PORT", raising=False)
    running = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{tmp_path / 'p.db'}", warmup=False
    )
    try:
        assert running.metrics_endpoint is None
        assert running.tracer_provider is None  # no OTEL_* exporter in the test environment
    finally:
        running.stop(0)


def test_rpcs_become_server_spans_that_continue_the_callers_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    running = start_server(
        port=0,
        host="127.0.0.1",
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        interceptors=tracing.interceptors(provider),
        warmup=False,
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.GetPlan(
                    plan_pb2.GetPlanRequest(name="plans/nosuchplan"),
                    metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")],
                )
    finally:
        running.stop(0)
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("/GetPlan")]
    assert len(spans) == 1
    span = spans[0]
    assert span.name == "/pdplanner.v1.PlannerService/GetPlan"
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.attributes is not None
    assert span.attributes["rpc.method"] == "GetPlan"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.status.status_code == StatusCode.ERROR


def test_tracing_is_on_only_when_the_environment_names_an_exporter() -> None:
    assert tracing.provider_from_env({}) is None
    assert tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    provider = tracing.provider_from_env(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "planner-a"}
    )
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "planner-a"
    provider.shutdown()
    with pytest.raises(tracing.TracingConfigError, match="must be otlp, console or none"):
        tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "jaeger"})


def test_a_configured_exporter_puts_a_provider_on_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    running = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{tmp_path / 'p.db'}", warmup=False
    )
    try:
        assert isinstance(running.tracer_provider, TracerProvider)
    finally:
        running.stop(0)


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received = threading.Event()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[_Collector, int]]:
    servicer = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_spans_reach_an_otlp_collector_over_grpc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collector: tuple[_Collector, int]
) -> None:
    """OTEL_TRACES_EXPORTER=otlp sends the RPCs' spans over OTLP/gRPC, as a collector receives
    them: the OTLP exporter and batch processor of the SDK, not an in-memory stand-in."""
    servicer, port = collector
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "planner-otlp-test")
    running = start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{tmp_path / 'p.db'}", warmup=False
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
            planned = stub.Plan(plan_request(model="llama-3.1-8b", gpus=4)).plan
            stub.GetPlan(plan_pb2.GetPlanRequest(name=planned.name))
    finally:
        running.stop(0)  # shuts the provider down, which flushes the batch processor
    assert servicer.received.wait(timeout=30), "no OTLP export reached the collector"
    spans = [
        (resource_spans.resource, span)
        for request in servicer.requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    names = sorted(span.name for _, span in spans)
    assert names == [
        "/pdplanner.v1.PlannerService/GetPlan",
        "/pdplanner.v1.PlannerService/Plan",
    ]
    for resource, span in spans:
        attributes = {a.key: a.value.string_value for a in resource.attributes}
        assert attributes["service.name"] == "planner-otlp-test"
        assert span.kind == trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
        assert span.status.code != trace_pb2.Status.StatusCode.STATUS_CODE_ERROR
