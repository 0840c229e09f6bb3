"""The ``PlannerService`` servicer: each RPC is a ``pdplanner.service.handlers`` function behind a
wrapper.

The wrapper does what every call needs, once: it refuses calls before the server is ready
(UNAVAILABLE while the kernels compile or migrations run), gives the handler the store, the
catalogs and a ``should_stop`` that watches the call's deadline, the client and the server's own
shutdown, and ends the call with the status of anything the handler raises
(``pdplanner.service.errors.status_for``).

Searches (Plan, Sweep) take one of ``max_workers`` search slots for their whole call; when all
are taken a new one fails at once with RESOURCE_EXHAUSTED instead of waiting on a thread. The
server runs ``max_workers + cheap_workers`` threads, so searches can never hold the threads
that health checks, Get/List, Estimate and Create/Delete calls run on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from pdplanner.service import errors, exports, handlers, scaling_handlers
from pdplanner.service.catalogs import CatalogCache
from pdplanner.service.settings import ServerSettings
from pdplanner.storage.repository import PlanStore
from pdplanner.v1 import planner_service_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Req, PlanStore, CatalogCache, Callable[[], bool]], Resp]


def _unary(handler: Handler[Req, Resp], search: bool = False) -> Callable[..., Resp]:
    def method(self: PlannerServicer, request: Req, context: grpc.ServicerContext) -> Resp:
        with self._call(context, search) as should_stop:
            return handler(request, self._store, self._catalogs, should_stop)

    method.__doc__ = handler.__doc__
    return method


def _stream(handler: Handler[Req, Iterator[Resp]], search: bool = False) -> Callable[..., Any]:
    def method(
        self: PlannerServicer, request: Req, context: grpc.ServicerContext
    ) -> Iterator[Resp]:
        with self._call(context, search) as should_stop:
            yield from handler(request, self._store, self._catalogs, should_stop)

    method.__doc__ = handler.__doc__
    return method


class PlannerServicer(planner_service_pb2_grpc.PlannerServiceServicer):
    """``pdplanner.v1.PlannerService`` over the planner and a ``PlanStore``.

    Calls before ``ready`` is set (kernels compiling, migrations running) fail with UNAVAILABLE.
    """

    def __init__(self, store: PlanStore, settings: ServerSettings) -> None:
        self._store = store
        self._catalogs = CatalogCache(store)
        self.ready = threading.Event()
        #: Set when the server's grace period is over: every search stops at its next check.
        self.stopping = threading.Event()
        self.deadline_margin_s = settings.deadline_margin_s
        self.search_slots = settings.max_workers
        self._searches = 0
        self._searches_lock = threading.Lock()

    def search_slots_free(self) -> int:
        """How many searches could start now (for tests and metrics)."""
        with self._searches_lock:
            return self.search_slots - self._searches

    @contextmanager
    def _call(self, context: grpc.ServicerContext, search: bool) -> Iterator[Callable[[], bool]]:
        """One call: a search slot held throughout when ``search``, the readiness check, and the
        status of anything raised (every failure ends the call with a status, none the server)."""
        slot = False
        try:
            slot = search and self._take_search_slot()
            yield self._begin(context)
        except Exception as exc:
            self._abort(exc, context)
            raise  # not reached: abort_with_status raises
        finally:
            if slot:
                self._release_search_slot()

    def _take_search_slot(self) -> bool:
        with self._searches_lock:
            if self._searches >= self.search_slots:
                raise errors.resource_exhausted(
                    f"all {self.search_slots} search slots are busy; retry with backoff"
                )
            self._searches += 1
        return True

    def _release_search_slot(self) -> None:
        with self._searches_lock:
            self._searches -= 1

    def _should_stop(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        """True once the client is gone, too little of the deadline is left to answer in, or the
        server's grace period on shutdown is over."""
        margin = self.deadline_margin_s
        stopping = self.stopping

        def stop() -> bool:
            if stopping.is_set() or not context.is_active():
                return True
            remaining = context.time_remaining()
            return remaining is not None and remaining < margin

        return stop

    def _begin(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        if not self.ready.is_set():
            raise errors.unavailable("the server is starting (compiling the planner's kernels)")
        return self._should_stop(context)

    def _abort(self, exc: Exception, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        passed = remaining is not None and remaining < self.deadline_margin_s
        context.abort_with_status(errors.status_for(exc, deadline_passed=passed))

    Plan = _unary(handlers.plan, search=True)
    Estimate = _unary(handlers.estimate)
    GetPlan = _unary(handlers.get_plan)
    ExportPlan = _unary(exports.export_plan_rpc)
    ListPlans = _unary(handlers.list_plans)
    DeletePlan = _unary(handlers.delete_plan)
    Sweep = _stream(handlers.sweep, search=True)
    GetSweep = _unary(handlers.get_sweep)
    ListSweeps = _unary(handlers.list_sweeps)
    ListModels = _unary(handlers.list_models)
    ListGpus = _unary(handlers.list_gpus)
    CreateModel = _unary(handlers.create_model)
    CreateGpu = _unary(handlers.create_gpu)
    PlanScaling = _unary(scaling_handlers.plan_scaling, search=True)
    GetSchedule = _unary(scaling_handlers.get_schedule)
    ListSchedules = _unary(scaling_handlers.list_schedules)
    DeleteSchedule = _unary(scaling_handlers.delete_schedule)
    RateMatch = _unary(scaling_handlers.rate_match)
    DeleteModel = _unary(handlers.delete_model)
    DeleteGpu = _unary(handlers.delete_gpu)
