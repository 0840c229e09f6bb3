"""The ``PlannerService`` servicer: each RPC is a ``service.handlers`` function behind a wrapper.

The wrapper does what every call needs, once: it refuses calls before the server is ready
(UNAVAILABLE while the kernels compile or migrations run), gives the handler the store, the
catalogs and a ``should_stop`` that watches the call's deadline and the client, and ends the call
with the status of anything the handler raises (``service.errors.status_for``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from pdplanner.v1 import planner_service_pb2_grpc

from service import errors, exports, handlers, scaling_handlers
from service.catalogs import CatalogCache
from service.settings import ServerSettings
from storage.repository import PlanStore

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Req, PlanStore, CatalogCache, Callable[[], bool]], Resp]


def _unary(handler: Handler[Req, Resp]) -> Callable[..., Resp]:
    def method(self: Any, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return handler(request, self._store, self._catalogs, self._begin(context))
        except Exception as exc:  # every failure ends the call with a status, none the server
            self._abort(exc, context)
            raise  # not reached: abort_with_status raises

    method.__doc__ = handler.__doc__
    return method


def _stream(handler: Handler[Req, Iterator[Resp]]) -> Callable[..., Iterator[Resp]]:
    def method(self: Any, request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        try:
            yield from handler(request, self._store, self._catalogs, self._begin(context))
        except Exception as exc:
            self._abort(exc, context)
            raise

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
        self.deadline_margin_s = settings.deadline_margin_s

    def _should_stop(self, context: grpc.ServicerContext) -> Callable[[], bool]:
        """True once the client is gone or too little of the deadline is left to answer in."""
        margin = self.deadline_margin_s

        def stop() -> bool:
            if not context.is_active():
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

    Plan = _unary(handlers.plan)
    Estimate = _unary(handlers.estimate)
    GetPlan = _unary(handlers.get_plan)
    ExportPlan = _unary(exports.export_plan_rpc)
    ListPlans = _unary(handlers.list_plans)
    DeletePlan = _unary(handlers.delete_plan)
    Sweep = _stream(handlers.sweep)
    GetSweep = _unary(handlers.get_sweep)
    ListSweeps = _unary(handlers.list_sweeps)
    ListModels = _unary(handlers.list_models)
    ListGpus = _unary(handlers.list_gpus)
    CreateModel = _unary(handlers.create_model)
    CreateGpu = _unary(handlers.create_gpu)
    PlanScaling = _unary(scaling_handlers.plan_scaling)
    GetSchedule = _unary(scaling_handlers.get_schedule)
    ListSchedules = _unary(scaling_handlers.list_schedules)
    DeleteSchedule = _unary(scaling_handlers.delete_schedule)
    RateMatch = _unary(scaling_handlers.rate_match)
