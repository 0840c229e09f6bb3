"""Starting and stopping the gRPC server.

``serve`` is ``pdplanner serve``: it blocks until SIGTERM or SIGINT, then shuts down gracefully.
``start_server`` starts one in the background (port 0 picks a free port) for tests and benchmarks.

What a started server offers, and in what order it gets ready:

1. it listens at once, with the gRPC health service (``grpc.health.v1``) answering NOT_SERVING
   and server reflection (so ``grpcurl`` needs no .proto files); PlannerService calls fail with
   UNAVAILABLE until step 3;
2. it applies the database migrations and compiles the planner's kernels (``planner.warmup``);
3. it reports SERVING.

Limits: a thread pool of ``max_workers + cheap_workers`` runs calls, of which searches (Plan,
Sweep) may hold ``max_workers`` (``pdplanner.service.servicer``); past ``max_concurrent_rpcs`` calls
in progress, new ones fail at once with RESOURCE_EXHAUSTED; messages are capped both ways. Health
Watch streams run on threads of their own (``WATCH_THREADS``), never on those of the calls.
Each call is logged as one JSON line (method, status code, duration). Stopping reports
NOT_SERVING first, refuses new calls, gives in-flight calls ``grace_s`` to finish, then cancels
the calls left and tells every search still running to stop at its next check, and closes the
store.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pdplanner import planner
from pdplanner.service import metrics, reflection, security, tracing
from pdplanner.service.interceptors import Ended, MethodInterceptor, around_calls, on_end
from pdplanner.service.limits import ClientLimits
from pdplanner.service.metrics import MetricsEndpoint
from pdplanner.service.servicer import PlannerServicer
from pdplanner.service.settings import ServerSettings
from pdplanner.storage.config import database_url as resolve_database_url
from pdplanner.storage.repository import PlanStore, SqlStore
from pdplanner.v1 import planner_service_pb2, planner_service_pb2_grpc

log = logging.getLogger("pdplanner.server")
rpc_log = logging.getLogger("pdplanner.rpc")

SERVICE_NAME = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name
#: Calls logged at DEBUG rather than INFO: load balancers poll these.
_QUIET_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
if TYPE_CHECKING:
    from pdplanner.service.interceptors import Handler


# -- per-call logs --------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send pdplanner's logs to stderr as JSON lines (used by ``serve``, not by tests)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("pdplanner")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class CallLogInterceptor(MethodInterceptor):
    """Logs every call once it ends: method, status code, duration, peer and request_id."""

    def wrap(self, handler: Handler, call: grpc.HandlerCallDetails) -> Handler:
        decoded = around_calls(handler, _refusing_undecodable)
        return around_calls(
            decoded,
            on_end(partial(_log_call, call.method)),
            request_deserializer=_tolerant(handler.request_deserializer),
        )


#: Calls served on a thread pool of their own: a health Watch stream holds a thread for its
#: whole life, so on the call pool a few watchers could take every thread that Get/List calls
#: run on. grpc runs a method on the pool named by its behaviour's ``experimental_thread_pool``;
#: an interceptor wrapping the method would hide that attribute, so no interceptor wraps these
#: (they stay open to every caller, are not counted per client, and are neither logged nor
#: timed). grpc still counts each open stream against ``max_concurrent_rpcs``.
OWN_POOL_METHODS: Final = frozenset({"/grpc.health.v1.Health/Watch"})
#: Watch streams served at once; a watcher past them waits for its first answer until one ends.
WATCH_THREADS: Final = 16


def make_health_servicer() -> health.HealthServicer:
    """The gRPC health service, its Watch streams on ``WATCH_THREADS`` threads of their own.

    Its non-blocking mode (grpcio's default) would hold no thread at all, but it sends each
    status change while holding the servicer's lock and waits for the send to complete, which
    the thread that delivers completions may be unable to do: it runs a closing watcher's
    callback, which waits for that same lock. A server stopping (every status set to
    NOT_SERVING) while watchers went away then hung for good. The blocking mode only queues a
    change for each watcher's own thread."""
    return health.HealthServicer(
        experimental_non_blocking=False,
        experimental_thread_pool=futures.ThreadPoolExecutor(
            max_workers=WATCH_THREADS, thread_name_prefix="pdplanner-health-watch"
        ),
    )


class _ExceptOwnPool(grpc.ServerInterceptor):
    """``inner`` for every call but those of ``OWN_POOL_METHODS``, which pass untouched."""

    def __init__(self, inner: grpc.ServerInterceptor) -> None:
        self.inner = inner

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        if handler_call_details.method in OWN_POOL_METHODS:
            return continuation(handler_call_details)
        return self.inner.intercept_service(continuation, handler_call_details)


@dataclass(frozen=True)
class _Undecodable:
    """What a request body that does not parse becomes, so the call can answer INVALID_ARGUMENT
    (grpcio itself would answer INTERNAL "Exception deserializing request!")."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(body: bytes) -> Any:
        try:
            return deserializer(body)
        except Exception as exc:  # DecodeError, RecursionError: the body is the client's error
            return _Undecodable(type(exc).__name__)

    return parse


@contextmanager
def _refusing_undecodable(request: Any, context: grpc.ServicerContext) -> Iterator[None]:
    """Answer INVALID_ARGUMENT for a request body that did not parse (see ``_tolerant``)."""
    if isinstance(request, _Undecodable):
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request body is not a valid message of this method ({request.reason})",
        )
    yield


def _log_call(method: str, request: Any, context: grpc.ServicerContext, ended: Ended) -> None:
    fields: dict[str, Any] = {
        "event": "rpc",
        "method": method,
        "code": ended.code.name,
        "duration_ms": round(ended.seconds * 1e3, 3),
        "peer": context.peer(),
    }
    request_id = getattr(request, "request_id", "")
    if isinstance(request_id, str) and request_id:
        fields["request_id"] = request_id
    level = logging.DEBUG if method in _QUIET_METHODS else logging.INFO
    rpc_log.log(level, "rpc %s %s", method, ended.code.name, extra={"fields": fields})


# -- starting and stopping ------------------------------------------------------------------------


@dataclass
class RunningServer:
    """A started server. Unpacks as ``(server, port, stop)``.

    ``stop(grace_s=None)`` reports NOT_SERVING, refuses new calls, lets in-flight ones finish for
    ``grace_s`` seconds (default: the settings'), then closes the store; a second call is a no-op.
    """

    server: grpc.Server
    port: int
    servicer: PlannerServicer
    health: health.HealthServicer
    store: PlanStore
    settings: ServerSettings
    metrics_endpoint: MetricsEndpoint | None = None  # Prometheus /metrics, when served
    tracer_provider: Any = None  # OpenTelemetry provider, when an exporter is configured
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _probe_stop: threading.Event = field(default_factory=threading.Event)

    def probe_store(self) -> None:
        """Every ``store_probe_interval_s``, ask the store one small question; report
        pdplanner.v1.PlannerService NOT_SERVING while it does not answer, SERVING once it does."""
        serving = True
        while not self._probe_stop.wait(self.settings.store_probe_interval_s):
            try:
                self.store.custom_entries_version()
                ok = True
            except Exception as exc:  # UnavailableError, or anything the driver raises
                ok = False
                if serving:
                    log.warning("store unreachable: %s", exc,
                                extra={"fields": {"event": "store_unreachable"}})  # fmt: skip
            if ok != serving and not self._probe_stop.is_set():
                serving = ok
                self.health.set(
                    SERVICE_NAME,
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING,
                )
                if ok:
                    log.info("store reachable again", extra={"fields": {"event": "store_back"}})

    def __iter__(self) -> Iterator[Any]:
        return iter((self.server, self.port, self.stop))

    def stop(self, grace_s: float | None = None) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._probe_stop.set()
        grace = self.settings.grace_s if grace_s is None else grace_s
        log.info("stopping", extra={"fields": {"event": "stopping", "grace_s": grace}})
        self.health.enter_graceful_shutdown()
        done = self.server.stop(grace)
        done.wait(grace)
        # past the grace period grpc cancels the calls left; searches see it at their next check,
        # and this tells them too, so no thread outlives the server by more than one check
        self.servicer.stopping.set()
        done.wait()
        self.store.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        log.info("stopped", extra={"fields": {"event": "stopped"}})


def _set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, status)


def start_server(
    settings: ServerSettings | None = None,
    *,
    store: PlanStore | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    metrics_port: int | None = None,
    **overrides: Any,
) -> RunningServer:
    """Start a server and return once it is SERVING (migrated and warmed up).

    ``settings`` default to ``ServerSettings.from_env(**overrides)``; pass ``port=0`` for a free
    port (``RunningServer.port`` says which). ``store`` replaces the SQL store of
    ``settings.database_url``. ``interceptors`` run after the call logger (tests inject faults).
    ``metrics_port`` serves Prometheus metrics there (default ``PDPLANNER_METRICS_PORT``, else
    none; ``pdplanner.service.metrics``); tracing is on when OTEL_* names an exporter
    (``pdplanner.service.tracing``).
    """
    settings = settings or ServerSettings.from_env(**overrides)
    auth: list[grpc.ServerInterceptor] = []
    if security.auth_enabled(settings):
        tokens = security.load_tokens(settings)
        if not tokens:
            raise ValueError(
                f"authentication is on (PDPLANNER_AUTH={settings.auth}, binding "
                f"{settings.host}) but no token is configured: set PDPLANNER_AUTH_TOKENS_FILE "
                "or PDPLANNER_AUTH_TOKENS, or PDPLANNER_AUTH=off"
            )
        auth.append(security.BearerAuth(tokens))
    credentials = security.server_credentials(settings)
    url = resolve_database_url(settings.database_url)
    own_store = store is None
    plan_store = metrics.timed_store(SqlStore(url) if store is None else store)
    provider = tracing.provider_from_env()
    observers: list[grpc.ServerInterceptor] = [metrics.MetricsInterceptor()]
    if provider is not None:
        observers += tracing.interceptors(provider)
    health_servicer = make_health_servicer()
    _set_serving(health_servicer, False)
    servicer = PlannerServicer(plan_store, settings)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.max_workers + settings.cheap_workers,
            thread_name_prefix="pdplanner-rpc",
        ),
        interceptors=[
            _ExceptOwnPool(i)
            for i in (
                CallLogInterceptor(),
                *observers,
                *auth,
                ClientLimits(settings.max_calls_per_client),
                *interceptors,
            )
        ],
        options=[
            ("grpc.max_send_message_length", settings.max_send_message_bytes),
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    planner_service_pb2_grpc.add_PlannerServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    running = RunningServer(server, port, servicer, health_servicer, plan_store, settings)
    running.tracer_provider = provider
    if metrics_port is None:
        metrics_port = metrics.metrics_port_from_env()
    if metrics_port is not None:
        try:
            running.metrics_endpoint = metrics.start_endpoint(metrics_port)
        except OSError:
            running.stop(0)
            raise
    log.info("listening", extra={"fields": {"event": "listening", "port": port}})
    try:
        _prepare(settings, url if own_store else None)
    except BaseException:
        running.stop(0)
        raise
    servicer.ready.set()
    _set_serving(health_servicer, True)
    threading.Thread(target=running.probe_store, name="pdplanner-store-probe", daemon=True).start()
    log.info("serving", extra={"fields": {"event": "serving", "port": port}})
    return running


def _prepare(settings: ServerSettings, migrate_url: str | None) -> None:
    """Migrate the database (when the server owns its store) and compile the kernels."""
    if settings.migrate and migrate_url is not None:
        from pdplanner.storage.migrate import upgrade

        started = time.perf_counter()
        upgrade(migrate_url)
        log.info(
            "database migrated",
            extra={"fields": {"event": "migrated", "seconds": time.perf_counter() - started}},
        )
    if settings.warmup:
        seconds = planner.warmup()
        log.info("kernels ready", extra={"fields": {"event": "warmed_up", "seconds": seconds}})


def serve(
    port: int = 50051,
    database_url: str | None = None,
    metrics_port: int | None = None,
    **overrides: Any,
) -> None:
    """Serve until SIGTERM or SIGINT (``pdplanner serve``), then shut down gracefully.

    The first signal reports NOT_SERVING and lets in-flight calls finish for ``grace_s`` seconds;
    a second one stops at once. Other settings come from ``PDPLANNER_*`` variables and
    ``overrides`` (see ``pdplanner.service.settings``).
    """
    settings = ServerSettings.from_env(port=port, database_url=database_url, **overrides)
    configure_logging(settings.log_level)
    stop_requested = threading.Event()
    running: list[RunningServer] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set() and running:
            log.warning("second %s: stopping now", name)
            running[0].server.stop(0)
            return
        log.info("%s received", name, extra={"fields": {"event": "signal", "signal": name}})
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        running.append(start_server(settings, metrics_port=metrics_port))
        while not stop_requested.wait(timeout=1.0):
            pass
        running[0].stop(settings.grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
