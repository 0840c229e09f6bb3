"""Prometheus metrics of the server, served on their own HTTP port (``/metrics``).

Set ``PDPLANNER_METRICS_PORT`` (or ``pdplanner serve --metrics-port``) to serve them; unset, none
are served (they are still counted, which costs microseconds a call). Every pdplanner series is in
``REGISTRY`` (not prometheus-client's global one, so nothing else of the process leaks in):

- ``pdplanner_rpc_calls_total`` (counter; method, code): finished calls by status code
- ``pdplanner_rpc_errors_total`` (counter; method, code): calls that ended other than OK
- ``pdplanner_rpc_duration_seconds`` (histogram; method): call latency (a stream: until its end)
- ``pdplanner_search_duration_seconds`` (histogram; kind ``plan``/``sweep``): one plan search
- ``pdplanner_search_design_points`` (histogram; kind): design points of one search
- ``pdplanner_design_points_total`` (counter; kind): design points of every search
- ``pdplanner_store_duration_seconds`` (histogram; operation): one repository call

``method`` is the RPC's short name (``Plan``, ``GetPlan``); health checks and reflection are
counted too (``Check``, ``ServerReflectionInfo``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from pdplanner.service.interceptors import Ended, MethodInterceptor, around_calls, on_end
from pdplanner.storage.repository import PlanStore

if TYPE_CHECKING:
    from pdplanner.service.interceptors import Handler

METRICS_PORT_ENV: Final = "PDPLANNER_METRICS_PORT"

REGISTRY: Final = CollectorRegistry(auto_describe=True)

#: Seconds: from sub-millisecond reads to multi-minute sweeps.
_LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                           1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # fmt: skip
_POINT_BUCKETS: Final = (10.0, 100.0, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)

RPC_CALLS: Final = Counter(
    "pdplanner_rpc_calls", "Finished RPCs by method and status code.", ("method", "code"),
    registry=REGISTRY,
)  # fmt: skip
RPC_ERRORS: Final = Counter(
    "pdplanner_rpc_errors", "RPCs that ended with a status other than OK.", ("method", "code"),
    registry=REGISTRY,
)  # fmt: skip
RPC_DURATION: Final = Histogram(
    "pdplanner_rpc_duration_seconds", "RPC latency in seconds (a stream: until its end).",
    ("method",), buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
SEARCH_DURATION: Final = Histogram(
    "pdplanner_search_duration_seconds", "Duration of one plan search in seconds.", ("kind",),
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
SEARCH_POINTS: Final = Histogram(
    "pdplanner_search_design_points", "Design points evaluated by one plan search.", ("kind",),
    buckets=_POINT_BUCKETS, registry=REGISTRY,
)  # fmt: skip
DESIGN_POINTS: Final = Counter(
    "pdplanner_design_points", "Design points evaluated by all searches.", ("kind",),
    registry=REGISTRY,
)  # fmt: skip
STORE_DURATION: Final = Histogram(
    "pdplanner_store_duration_seconds", "Latency of one repository call in seconds.",
    ("operation",), buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip


def observe_search(kind: str, seconds: float, design_points: int) -> None:
    """Count one finished search (``kind``: ``plan`` or ``sweep``)."""
    SEARCH_DURATION.labels(kind).observe(seconds)
    SEARCH_POINTS.labels(kind).observe(design_points)
    DESIGN_POINTS.labels(kind).inc(design_points)


# -- RPCs -----------------------------------------------------------------------------------------


class MetricsInterceptor(MethodInterceptor):
    """Counts every call and its latency once it ends, by method and status code."""

    def wrap(self, handler: Handler, call: grpc.HandlerCallDetails) -> Handler:
        name = call.method.rsplit("/", 1)[-1]
        return around_calls(handler, on_end(partial(_record, name)))


def _record(method: str, _request: Any, _context: grpc.ServicerContext, ended: Ended) -> None:
    RPC_CALLS.labels(method, ended.code.name).inc()
    if ended.code != grpc.StatusCode.OK:
        RPC_ERRORS.labels(method, ended.code.name).inc()
    RPC_DURATION.labels(method).observe(ended.seconds)


# -- the store ------------------------------------------------------------------------------------


class TimedStore:
    """A ``PlanStore`` that times every repository call (``pdplanner_store_duration_seconds``)."""

    def __init__(self, inner: PlanStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        histogram = STORE_DURATION.labels(name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        return timed


def timed_store(store: PlanStore) -> PlanStore:
    """``store`` with every call timed."""
    return cast(PlanStore, TimedStore(store))


# -- the HTTP endpoint ----------------------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP server; ``stop()`` closes it."""

    port: int
    _server: Any
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def metrics_port_from_env() -> int | None:
    """``PDPLANNER_METRICS_PORT`` as a port (0: a free one), None when unset."""
    raw = os.environ.get(METRICS_PORT_ENV, "")
    if not raw:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{METRICS_PORT_ENV}={raw!r} is not a port number") from None
    if not 0 <= port < 65536:
        raise ValueError(f"{METRICS_PORT_ENV}={raw!r} is not in 0..65535")
    return port


def start_endpoint(port: int, host: str = "") -> MetricsEndpoint:
    """Serve ``REGISTRY`` on ``http://host:port/metrics`` (port 0: a free port)."""
    try:
        server, thread = start_http_server(port, addr=host or "0.0.0.0", registry=REGISTRY)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from None
    return MetricsEndpoint(server.server_port, server, thread)
