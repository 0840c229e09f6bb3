"""Scaling messages <-> the planner's schedule and rate-matching types.

A schedule's answer travels as the JSON of ``ScheduleResult.to_dict`` (what ``pdplanner schedule
--json`` prints and what the store keeps); its keys are the proto's field names, so the message is
that JSON with the enum strings spelled as proto enum names (``disagg`` -> ``MODE_DISAGG``), and
back. The stored request is the request message's JSON (field names kept).

Traffic series errors name the proto field of the offending row: ``series.intervals[3].duration_s``
or ``series.intervals[3].mix[1].isl``; a forecast's settings are checked here as the planner
checks them (``forecast.check_horizon``, ``check_quantile``), so they are named under
``forecast.``, not as the planner's bare ``horizon``.
"""

from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

from google.protobuf import json_format

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.scaling.capacity import Shape
from pdplanner.planner.scaling.forecast import (
    ForecastSpec,
    Method,
    check_horizon,
    check_quantile,
)
from pdplanner.planner.scaling.ratematch import LengthPercentiles, RateMatchRequest, RateMatchResult
from pdplanner.planner.scaling.schedule import ScheduleRequest
from pdplanner.planner.scaling.traffic import TrafficSeries, from_rows
from pdplanner.planner.types import DEFAULT_ENGINE, Mode, Slo
from pdplanner.planner.validate import Violations
from pdplanner.service import resources
from pdplanner.service.convert.checks import finite, finite_optional, i32, optional
from pdplanner.service.convert.enums import MODE
from pdplanner.service.convert.requests import (
    engine_args_from_proto,
    engine_args_to_proto,
    precision_from_proto,
    precision_to_proto,
    slo_from_proto,
    slo_to_proto,
)
from pdplanner.service.convert.stored import timestamp
from pdplanner.storage.records import StoredSchedule
from pdplanner.v1 import scaling_pb2

_ROW = re.compile(r"^rows\[(\d+)\](\.(.*))?$")
_INTERVAL_KEYS = {"start_s", "duration_s", "requests_per_s"}
_ENUMS = {"mode": "MODE_", "pool": "POOL_ROLE_", "action": "SCALING_ACTION_"}
DEFAULT_STARTUP_S = 300.0
DEFAULT_COOLDOWN_S = 900.0
DEFAULT_QUANTILE = 0.9


def series_from_intervals(intervals: Any, path: str, *, allow_empty: bool = False) -> TrafficSeries:
    """A series from ``TrafficInterval`` messages; errors name ``{path}[i]`` (and ``.mix[j]``).

    Every interval without a mix is reported at once; then the series' own checks
    (``pdplanner.planner.scaling.traffic.from_rows``) report the first row they refuse."""
    rows: list[dict[str, Any]] = []
    where: list[tuple[int, int]] = []
    v = Violations()
    for i, iv in enumerate(intervals):
        if not iv.mix:
            v.add(f"{path}[{i}].mix", "is required: at least one (isl, osl)")
        for j, w in enumerate(iv.mix):
            rows.append(
                {
                    "start_s": iv.start_s,
                    "duration_s": iv.duration_s,
                    "requests_per_s": iv.requests_per_s,
                    "isl": w.isl,
                    "osl": w.osl,
                    "weight": w.weight
                    if w.HasField("weight")
                    else (1.0 if len(iv.mix) == 1 else None),
                }
            )
            where.append((i, j))
    v.raise_any()
    if not rows:
        if allow_empty:
            return TrafficSeries(())
        raise InvalidInputError(path, "is required: at least one interval")
    try:
        return from_rows(rows, "rows")
    except InvalidInputError as e:
        m = _ROW.match(e.field)
        if not m:
            raise InvalidInputError(path, e.reason) from None
        i, j = where[int(m.group(1))]
        key = m.group(3) or ""
        if key in _INTERVAL_KEYS or not key:
            field = f"{path}[{i}]" + (f".{key}" if key else "")
        else:
            field = f"{path}[{i}].mix[{j}].{key}"
        raise InvalidInputError(field, re.sub(r"rows\[(\d+)\]", "another row", e.reason)) from None


def series_to_intervals(series: TrafficSeries) -> list[scaling_pb2.TrafficInterval]:
    from pdplanner.v1 import common_pb2

    return [
        scaling_pb2.TrafficInterval(
            start_s=iv.start_s,
            duration_s=iv.duration_s,
            requests_per_s=iv.requests_per_s,
            mix=[common_pb2.Workload(isl=w.isl, osl=w.osl, weight=w.weight) for w in iv.mix],
        )
        for iv in series.intervals
    ]


def _slo(msg: Any, v: Violations) -> Slo | None:
    if not msg.HasField("slo"):
        v.add("slo", "is required: ttft_ms and tpot_ms")
        return None
    return v.value(lambda: slo_from_proto(msg.slo))


def schedule_request_from_proto(
    msg: scaling_pb2.PlanScalingRequest,
) -> tuple[ScheduleRequest, ForecastSpec | None]:
    """The request, and the history to forecast when the traffic is one (then the request's
    series is empty until the caller puts the forecast in). Every proto-level violation raises,
    together, with its path; the planner's range checks follow."""
    v = Violations()
    kind = msg.WhichOneof("traffic")
    series: TrafficSeries | None = TrafficSeries(())
    history = None
    if kind is None:
        v.add("series", "is required: the traffic series, or a forecast")
    elif kind == "series":
        series = v.value(lambda: series_from_intervals(msg.series.intervals, "series.intervals"))
    else:
        history = _forecast_from_proto(msg.forecast, v)
    slo = _slo(msg, v)
    startup_s = v.value(lambda: finite_optional(msg, "startup_s", "startup_s", DEFAULT_STARTUP_S))
    cooldown_s = v.value(
        lambda: finite_optional(msg, "cooldown_s", "cooldown_s", DEFAULT_COOLDOWN_S)
    )
    price = v.value(lambda: finite_optional(msg, "price_per_gpu_hour", "price_per_gpu_hour"))
    memory_fraction = v.value(lambda: finite_optional(msg, "memory_fraction", "memory_fraction"))
    modes = _modes(msg.modes, v)
    v.raise_any()
    assert series is not None and slo is not None
    assert startup_s is not None and cooldown_s is not None
    req = ScheduleRequest(
        model=msg.model,
        gpu=msg.gpu,
        gpus=msg.gpus,
        series=series,
        slo=slo,
        decode_gpu=msg.decode_gpu or None,
        startup_s=startup_s,
        cooldown_s=cooldown_s,
        min_workers=optional(msg, "min_workers", 1),
        price_per_gpu_hour=price,
        precision=precision_from_proto(msg.precision),
        engine=msg.engine or DEFAULT_ENGINE,
        simulate=optional(msg, "simulate", True),
        seed=msg.seed,
        memory_fraction=memory_fraction,
        engine_args=engine_args_from_proto(msg.engine_args),
        modes=modes,
    )
    return req, history


def _modes(values: Any, v: Violations) -> tuple[Mode, ...]:
    """The modes asked for (both when none is); each entry must be set."""
    out: list[Mode] = []
    for i, value in enumerate(values):
        m = v.value(partial(MODE.from_proto, value, f"modes[{i}]"))
        if m is not None and m not in out:
            out.append(m)
    return tuple(out) or ("agg", "disagg")


def _forecast_from_proto(f: scaling_pb2.HistoryForecast, v: Violations) -> ForecastSpec | None:
    methods: dict[int, Method] = {0: "ets", 1: "ets", 2: "sarima"}
    method = methods.get(f.method)
    if method is None:
        v.add("forecast.method", f"unknown value {f.method}")
    history = v.value(lambda: series_from_intervals(f.history, "forecast.history"))
    quantile = v.value(
        lambda: finite_optional(f, "quantile", "forecast.quantile", DEFAULT_QUANTILE)
    )
    if quantile is not None:
        quantile = v.value(partial(check_quantile, quantile, "forecast.quantile"))
    horizon = v.value(partial(check_horizon, f.horizon, "forecast.horizon"))
    if method is None or history is None or quantile is None or horizon is None:
        return None
    return ForecastSpec(history, horizon, quantile, method)


def request_to_json(msg: Any) -> dict[str, Any]:
    """A request message as the JSON the store keeps (proto field names)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _clean(value: Any) -> Any:
    """JSON without nulls and non-finite numbers, enum strings as proto names."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if k in _ENUMS and isinstance(v, str):
                v = _ENUMS[k] + v.upper()
            out[k] = _clean(v)
        return out
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def schedule_result_to_proto(result: dict[str, Any]) -> scaling_pb2.ScheduleResult:
    """``ScheduleResult.to_dict()`` as its message."""
    return json_format.ParseDict(_clean(result), scaling_pb2.ScheduleResult())


def schedule_result_to_json(msg: scaling_pb2.ScheduleResult) -> dict[str, Any]:
    """A ``ScheduleResult`` message as the JSON of ``ScheduleResult.to_dict()``."""
    d = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _fill_absent(msg, d)
    out: dict[str, Any] = _plain_enums(d)
    return out


def _fill_absent(msg: Any, d: dict[str, Any]) -> None:
    """Write the fields the planner's JSON has as null (unset optionals and messages, an empty
    ``violation``), which MessageToDict leaves out or prints as defaults."""
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.message_type is not None and f.is_repeated:
            for m, dd in zip(value, d.get(f.name, []), strict=True):
                _fill_absent(m, dd)
        elif f.message_type is not None:
            if msg.HasField(f.name):
                _fill_absent(value, d[f.name])
            else:
                d[f.name] = None
        elif (f.has_presence and not msg.HasField(f.name)) or (f.name == "violation" and not value):
            d[f.name] = None


def _plain_enums(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (v.removeprefix(_ENUMS[k]).lower() if k in _ENUMS and isinstance(v, str)
                else _plain_enums(v))
            for k, v in value.items()
        }  # fmt: skip
    if isinstance(value, list):
        return [_plain_enums(v) for v in value]
    return value


def _shape(msg: scaling_pb2.WorkerLayout, role: str, default_gpu: str) -> Shape:
    def one(v: int) -> int:
        return v or 1

    if msg.HasField("chunk_tokens") and (role != "agg" or msg.chunk_tokens < 0):
        why = "must be at least 0" if role == "agg" else "is for aggregated workers only"
        raise InvalidInputError(f"{role}.chunk_tokens", why)

    return Shape(
        role,
        msg.gpu or default_gpu,
        one(msg.tp),
        one(msg.pp),
        one(msg.ep),
        one(msg.attention_dp),
        msg.batch,
        msg.chunk_tokens if msg.HasField("chunk_tokens") else None,
    )


def rate_match_request_from_proto(msg: scaling_pb2.RateMatchRequest, gpu: str) -> RateMatchRequest:
    """The request; ``gpu`` is the default GPU of a layout that names none. Every proto-level
    violation raises, together, with its path; the planner's range checks follow."""
    v = Violations()
    for role in ("prefill", "decode"):
        if not msg.HasField(role):
            v.add(role, "is required: the running workers' layout")
    slo = _slo(msg, v)
    rate = v.value(lambda: finite(msg.requests_per_s, "requests_per_s"))
    isl = v.value(lambda: finite(msg.isl, "isl"))
    osl = v.value(lambda: finite(msg.osl, "osl"))
    ttft = v.value(lambda: finite_optional(msg, "observed_ttft_ms", "observed_ttft_ms"))
    tpot = v.value(lambda: finite_optional(msg, "observed_tpot_ms", "observed_tpot_ms"))
    isl_p = v.value(lambda: _lengths(msg, "isl_percentiles"))
    osl_p = v.value(lambda: _lengths(msg, "osl_percentiles"))
    memory_fraction = v.value(lambda: finite_optional(msg, "memory_fraction", "memory_fraction"))
    v.raise_any()
    assert slo is not None and rate is not None and isl is not None and osl is not None
    prec = precision_from_proto(msg.precision)
    return RateMatchRequest(
        model=msg.model,
        gpu=gpu,
        slo=slo,
        requests_per_s=rate,
        isl=isl,
        osl=osl,
        prefill=_shape(msg.prefill, "prefill", gpu),
        prefill_workers=msg.prefill_workers,
        decode=_shape(msg.decode, "decode", gpu),
        decode_workers=msg.decode_workers,
        observed_ttft_ms=ttft,
        observed_tpot_ms=tpot,
        min_workers=optional(msg, "min_workers", 1),
        precision_dtype=prec.dtype,
        kv_dtype=prec.kv_dtype,
        engine=msg.engine or DEFAULT_ENGINE,
        isl_percentiles=isl_p,
        osl_percentiles=osl_p,
        memory_fraction=memory_fraction,
    )


def _lengths(msg: scaling_pb2.RateMatchRequest, name: str) -> LengthPercentiles | None:
    if not msg.HasField(name):  # type: ignore[arg-type]
        return None
    p = getattr(msg, name)
    return LengthPercentiles(
        finite(p.p50, f"{name}.p50"), finite(p.p90, f"{name}.p90"), finite(p.p99, f"{name}.p99")
    )


def rate_match_to_proto(r: RateMatchResult) -> scaling_pb2.RateMatchResponse:
    def opt(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return scaling_pb2.RateMatchResponse(
        prefill_workers=i32(r.prefill_workers, "prefill_workers"),
        decode_workers=i32(r.decode_workers, "decode_workers"),
        prefill_decode_gpu_ratio=r.prefill_decode_gpu_ratio,
        predicted_ttft_ms=opt(r.predicted_ttft_ms),
        predicted_tpot_ms=opt(r.predicted_tpot_ms),
        current_predicted_ttft_ms=opt(r.current_predicted_ttft_ms),
        current_predicted_tpot_ms=opt(r.current_predicted_tpot_ms),
        ttft_correction=r.ttft_correction,
        tpot_correction=r.tpot_correction,
        headroom=opt(r.headroom),
        elapsed_ms=r.elapsed_ms,
    )


def schedule_to_proto(stored: StoredSchedule) -> scaling_pb2.Schedule:
    """The ``Schedule`` resource of a stored schedule."""
    return scaling_pb2.Schedule(
        name=resources.name("schedules", stored.id),
        create_time=timestamp(stored.created_at),
        request=json_format.ParseDict(stored.request, scaling_pb2.PlanScalingRequest()),
        result=schedule_result_to_proto(stored.result),
        planner_version=stored.planner_version,
    )


def schedule_request_to_proto(
    req: ScheduleRequest, history: ForecastSpec | None = None
) -> scaling_pb2.PlanScalingRequest:
    """The message of a schedule request (the history to forecast instead of its series)."""

    msg = scaling_pb2.PlanScalingRequest(
        model=req.model,
        gpu=req.gpu,
        decode_gpu=req.decode_gpu or "",
        gpus=req.gpus,
        slo=slo_to_proto(req.slo),
        startup_s=req.startup_s,
        cooldown_s=req.cooldown_s,
        min_workers=req.min_workers,
        precision=precision_to_proto(req.precision),
        engine=req.engine,
        simulate=req.simulate,
        seed=req.seed,
        engine_args=engine_args_to_proto(req.engine_args),
    )
    if req.price_per_gpu_hour is not None:
        msg.price_per_gpu_hour = req.price_per_gpu_hour
    if req.memory_fraction is not None:
        msg.memory_fraction = req.memory_fraction
    if set(req.modes) != {"agg", "disagg"}:
        msg.modes.extend(MODE.to_proto(m) for m in req.modes)
    if history is None:
        msg.series.intervals.extend(series_to_intervals(req.series))
    else:
        method = {"ets": 1, "sarima": 2}[history.method]
        msg.forecast.CopyFrom(
            scaling_pb2.HistoryForecast(
                history=series_to_intervals(history.history),
                horizon=history.horizon,
                quantile=history.quantile,
                method=method,  # type: ignore[arg-type]
            )
        )
    return msg
