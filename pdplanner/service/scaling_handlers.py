"""The scaling RPCs as plain functions of (request, store, catalogs, should_stop), like
``pdplanner.service.handlers``: PlanScaling, GetSchedule, ListSchedules, DeleteSchedule and
RateMatch.

PlanScaling converts the request, forecasts the traffic when it is a history (planning for the
forecast's upper quantile, replaying its mean), plans and replays the schedule, stores it once per
request_id and returns the stored resource. RateMatch stores nothing and reads the store only for
a model or GPU that is not built in, so that it answers within a millisecond.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Final

from pdplanner import planner
from pdplanner.planner.catalog import default_gpus, default_models
from pdplanner.planner.errors import SearchCancelled
from pdplanner.planner.scaling.forecast import forecast
from pdplanner.planner.scaling.ratematch import rate_match as run_rate_match
from pdplanner.planner.scaling.schedule import plan_schedule
from pdplanner.planner.validate import Violations
from pdplanner.service import convert, errors
from pdplanner.service.catalogs import CatalogCache
from pdplanner.service.convert import scaling as sc
from pdplanner.service.handlers import ShouldStop, _by_name
from pdplanner.storage.records import StoredSchedule
from pdplanner.storage.repository import PlanStore
from pdplanner.v1 import scaling_pb2

LIST_SCHEDULES_DEFAULT: Final = 50
LIST_SCHEDULES_MAX: Final = 100


def plan_scaling(
    request: scaling_pb2.PlanScalingRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    should_stop: ShouldStop,
) -> scaling_pb2.PlanScalingResponse:
    """Plan, replay and store a scaling schedule (once per request_id)."""
    request_id = convert.request_id(request.request_id)
    req, history = sc.schedule_request_from_proto(request)
    stored_request = sc.request_to_json(request)
    stored_request.pop("request_id", None)
    if request_id is not None:
        existing = store.find_schedule_by_request_id(request_id)
        if existing is not None:
            return scaling_pb2.PlanScalingResponse(schedule=_same(existing, stored_request))
    current = catalogs.current()
    model, gpu = current.deployment(req.model, req.gpu, req.decode_gpu)
    if history is not None:
        fc = forecast(history.history, history.horizon, history.quantile, history.method)
        req = dataclasses.replace(req, series=fc.upper, replay_series=fc.mean)
    result = plan_schedule(req, current.models, current.gpus, should_stop)
    if should_stop():
        raise SearchCancelled("the call ended before the schedule could be stored")
    totals = result.totals()
    stored = store.create_schedule(
        request_id=request_id,
        model=model.name,
        gpu=gpu.name,
        planner_version=planner.__version__,
        gpu_hours=result.gpu_hours,
        slo_attainment=totals["slo_attainment"],
        violations=len(result.violations),
        request=stored_request,
        result=result.to_dict(),
    )
    return scaling_pb2.PlanScalingResponse(schedule=_same(stored, stored_request))


def _same(stored: StoredSchedule, request: dict[str, object]) -> scaling_pb2.Schedule:
    if stored.request != request:
        raise errors.invalid_argument(
            "request_id", "was used before by a call with a different request"
        )
    return sc.schedule_to_proto(stored)


def get_schedule(
    request: scaling_pb2.GetScheduleRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> scaling_pb2.GetScheduleResponse:
    """One stored schedule by name."""
    stored = _by_name("schedule", "schedules", request.name, store.get_schedule)
    return scaling_pb2.GetScheduleResponse(schedule=sc.schedule_to_proto(stored))


def list_schedules(
    request: scaling_pb2.ListSchedulesRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    _: ShouldStop,
) -> scaling_pb2.ListSchedulesResponse:
    """A page of stored schedules, newest first; the model filter accepts aliases."""
    size = convert.page_size(request.page_size, LIST_SCHEDULES_DEFAULT, LIST_SCHEDULES_MAX)
    model = None
    if request.model:
        spec = catalogs.current().models.find(request.model)
        model = spec.name if spec is not None else request.model
    rows, token = store.list_schedules(
        model=model, page_size=size, page_token=request.page_token or None
    )
    return scaling_pb2.ListSchedulesResponse(
        schedules=[sc.schedule_to_proto(s) for s in rows], next_page_token=token or ""
    )


def delete_schedule(
    request: scaling_pb2.DeleteScheduleRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    _: ShouldStop,
) -> scaling_pb2.DeleteScheduleResponse:
    """Delete one stored schedule by name."""
    _by_name("schedule", "schedules", request.name, store.delete_schedule)
    return scaling_pb2.DeleteScheduleResponse()


def rate_match(
    request: scaling_pb2.RateMatchRequest, store: PlanStore, catalogs: CatalogCache, _: ShouldStop
) -> scaling_pb2.RateMatchResponse:
    """Target worker counts for the observed traffic. Built-in models and GPUs resolve without
    touching the store; a name they do not know is looked up among the stored custom entries
    (as in Plan), so the common call stays within a millisecond."""
    v = Violations()
    gpu = request.prefill.gpu or request.decode.gpu
    if not gpu:
        v.add("prefill.gpu", "is required: the GPU type of the workers")
    models, gpus = default_models(), default_gpus()
    names = [n for n in (request.prefill.gpu, request.decode.gpu) if n]
    if models.find(request.model) is None or any(gpus.find(n) is None for n in names):
        current = catalogs.current()
        models, gpus = current.models, current.gpus
    for role in ("prefill", "decode"):
        name = getattr(request, role).gpu
        if name:
            v.value(partial(gpus.get, name, f"{role}.gpu"))
    req = v.value(lambda: sc.rate_match_request_from_proto(request, gpu))
    v.raise_any()
    assert req is not None
    return sc.rate_match_to_proto(run_rate_match(req, models, gpus))
