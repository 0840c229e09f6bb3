"""Compile (or load from Numba's on-disk cache) every kernel before a server reports SERVING."""

from __future__ import annotations

import time

from planner.types import EstimateRequest, Parallelism, PlanRequest, PoolSpec, Slo, Workload


def warmup() -> float:
    """Run one small query through every kernel family; returns the seconds it took."""
    from planner.estimate import estimate
    from planner.search import plan

    start = time.perf_counter()
    base = {"model": "llama-3.1-8b", "gpu": "h100-sxm", "isl": 256, "osl": 16}
    estimate(EstimateRequest(**base, phase="prefill", batch=1))  # type: ignore[arg-type]
    estimate(EstimateRequest(**base, phase="decode", batch=1))  # type: ignore[arg-type]
    estimate(EstimateRequest(**base, mode="agg", concurrency=2))  # type: ignore[arg-type]
    estimate(EstimateRequest(**base, mode="disagg",  # type: ignore[arg-type]
                             prefill=PoolSpec(Parallelism(), 1, 1), decode=PoolSpec(Parallelism(), 1, 4)))
    plan(PlanRequest("mixtral-8x7b", "h100-sxm", 4, (Workload(256, 16),), Slo(1000.0, 50.0)))
    return time.perf_counter() - start
