"""Compile (or load from Numba's on-disk cache) every kernel before a server reports SERVING.

``STEPS`` holds one small query per kernel family, in the order ``warmup`` runs them; every RPC
that calls a kernel (Estimate, Plan, Sweep, RateMatch, PlanScaling) is covered by one of them, so
no request compiles. ``bench.kernel_compile`` times the same steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from pdplanner.planner.types import (
    EstimateRequest,
    Parallelism,
    PlanRequest,
    PoolSpec,
    Slo,
    Workload,
)

_BASE: Final = EstimateRequest("llama-3.1-8b", "h100-sxm", isl=256, osl=16)
_POOL: Final = PoolSpec(Parallelism(), workers=1, batch=4)


def _estimate(req: EstimateRequest) -> None:
    from pdplanner.planner.estimate import estimate

    estimate(req)


def _plan() -> None:
    from pdplanner.planner.search import plan

    plan(PlanRequest("mixtral-8x7b", "h100-sxm", 4, (Workload(256, 16),), Slo(1000.0, 50.0)))


def _rate_match() -> None:
    from pdplanner.planner.scaling.capacity import Shape
    from pdplanner.planner.scaling.ratematch import RateMatchRequest, rate_match

    prefill = Shape("prefill", "h100-sxm", 1, 1, 1, 1, 1)
    decode = Shape("decode", "h100-sxm", 1, 1, 1, 1, 8)
    rate_match(
        RateMatchRequest(
            model="llama-3.1-8b",
            gpu="h100-sxm",
            slo=Slo(1000.0, 50.0),
            requests_per_s=1.0,
            isl=256,
            osl=16,
            prefill=prefill,
            prefill_workers=1,
            decode=decode,
            decode_workers=1,
        )
    )


def _schedule() -> None:
    from pdplanner.planner.scaling.schedule import ScheduleRequest, plan_schedule
    from pdplanner.planner.scaling.traffic import Interval, TrafficSeries

    mix = (Workload(256, 16),)
    series = TrafficSeries(tuple(Interval(k * 60.0, 60.0, 0.5, mix) for k in range(2)))
    plan_schedule(ScheduleRequest("llama-3.1-8b", "h100-sxm", 4, series, Slo(1000.0, 50.0)))


STEPS: Final[dict[str, Callable[[], None]]] = {
    "estimate_prefill": lambda: _estimate(replace(_BASE, phase="prefill", batch=1)),
    "estimate_decode": lambda: _estimate(replace(_BASE, phase="decode", batch=1)),
    "estimate_agg": lambda: _estimate(replace(_BASE, mode="agg", concurrency=2)),
    "estimate_disagg": lambda: _estimate(
        replace(_BASE, mode="disagg", prefill=_POOL, decode=_POOL)
    ),
    "plan": _plan,
    "rate_match": _rate_match,
    "schedule": _schedule,
}


def warmup() -> float:
    """Run every step of ``STEPS``; returns the seconds it took."""
    start = time.perf_counter()
    for step in STEPS.values():
        step()
    return time.perf_counter() - start
