"""Compile (or load from Numba's on-disk cache) every kernel before a server reports SERVING."""

from __future__ import annotations

import time
from dataclasses import replace

from planner.types import EstimateRequest, Parallelism, PlanRequest, PoolSpec, Slo, Workload


def warmup() -> float:
    """Run one small query through every kernel family; returns the seconds it took."""
    from planner.estimate import estimate
    from planner.search import plan

    start = time.perf_counter()
    base = EstimateRequest("llama-3.1-8b", "h100-sxm", isl=256, osl=16)
    estimate(replace(base, phase="prefill", batch=1))
    estimate(replace(base, phase="decode", batch=1))
    estimate(replace(base, mode="agg", concurrency=2))
    pool = PoolSpec(Parallelism(), workers=1, batch=4)
    estimate(replace(base, mode="disagg", prefill=pool, decode=pool))
    plan(PlanRequest("mixtral-8x7b", "h100-sxm", 4, (Workload(256, 16),), Slo(1000.0, 50.0)))
    return time.perf_counter() - start
