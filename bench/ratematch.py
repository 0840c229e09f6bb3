"""RateMatch latency: the runtime answer against the full search, measured in the same run.

    python -m bench.ratematch [--calls 2000] [--out FILE]

The query: Llama-3.1-70B on H100-SXM, 8 req/s at ISL 2,500 / OSL 300, prefill TP4 batch 1 x 3,
decode TP4 batch 128 x 2, observed TTFT 600 ms and TPOT 22 ms, SLO TTFT 1000 ms / TPOT 30 ms at
p99. Each call varies the observed rate and lengths a little (so no cache can answer it). Two
figures: ``pdplanner.planner.scaling.ratematch.rate_match`` alone, and the server's RateMatch
handler (``pdplanner.service.scaling_handlers.rate_match``: request message in, response message
out, everything the server does for the call but gRPC's own transport). The baseline is
``pdplanner.planner.search.plan`` for the same traffic at the same rate on 64 GPUs (what a scheduler
would otherwise call), warm.

Printed JSON: p50/p99/mean latency (ms) of each, and the ratio of the p50s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from pdplanner.planner.scaling.capacity import Shape
from pdplanner.planner.scaling.ratematch import RateMatchRequest, rate_match
from pdplanner.planner.search import plan
from pdplanner.planner.types import PlanRequest, Slo, Workload
from pdplanner.service.scaling_handlers import rate_match as rate_match_handler
from pdplanner.v1 import common_pb2, plan_pb2, scaling_pb2

SLO = Slo(1000, 30, "p99")
REQUEST = RateMatchRequest(
    model="llama-3.1-70b",
    gpu="h100-sxm",
    slo=SLO,
    requests_per_s=8.0,
    isl=2500,
    osl=300,
    prefill=Shape("prefill", "h100-sxm", 4, 1, 1, 1, 1),
    prefill_workers=3,
    decode=Shape("decode", "h100-sxm", 4, 1, 1, 1, 128),
    decode_workers=2,
    observed_ttft_ms=600.0,
    observed_tpot_ms=22.0,
)


def _message(rate: float) -> scaling_pb2.RateMatchRequest:
    return scaling_pb2.RateMatchRequest(
        model=REQUEST.model,
        slo=plan_pb2.Slo(ttft_ms=1000, tpot_ms=30, percentile=common_pb2.PERCENTILE_P99),
        requests_per_s=rate,
        isl=2500,
        osl=300,
        prefill=scaling_pb2.WorkerLayout(gpu="h100-sxm", tp=4, batch=1),
        prefill_workers=3,
        decode=scaling_pb2.WorkerLayout(gpu="h100-sxm", tp=4, batch=128),
        decode_workers=2,
        observed_ttft_ms=600.0,
        observed_tpot_ms=22.0,
    )


def stats(ms: list[float]) -> dict[str, float]:
    return {
        "calls": len(ms),
        "p50_ms": round(statistics.median(ms), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--baseline-calls", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rate_match(REQUEST)  # warm: compile or load the kernels, build the contexts
    ms = []
    for _ in range(args.calls):
        req = dataclasses.replace(
            REQUEST,
            requests_per_s=float(rng.uniform(4, 12)),
            isl=float(rng.uniform(2000, 3000)),
            osl=float(rng.uniform(250, 350)),
        )
        t = time.perf_counter()
        rate_match(req)
        ms.append((time.perf_counter() - t) * 1e3)
    base_req = PlanRequest(
        model="llama-3.1-70b",
        gpu="h100-sxm",
        gpus=64,
        traffic=(Workload(2500, 300),),
        slo=SLO,
        rate_per_s=8.0,
    )
    handler_ms = []
    msgs = [_message(float(rng.uniform(4, 12))) for _ in range(args.calls)]
    rate_match_handler(msgs[0], None, None, lambda: False)  # type: ignore[arg-type]
    for msg in msgs:
        t = time.perf_counter()
        rate_match_handler(msg, None, None, lambda: False)  # type: ignore[arg-type]
        handler_ms.append((time.perf_counter() - t) * 1e3)
    plan(base_req)  # warm
    base = []
    for _ in range(args.baseline_calls):
        t = time.perf_counter()
        plan(base_req)
        base.append((time.perf_counter() - t) * 1e3)
    out: dict[str, Any] = {
        "benchmark": "ratematch",
        "machine": platform.platform(),
        "rate_match": stats(ms),
        "rpc_handler": stats(handler_ms),
        "baseline_plan_search": stats(base),
    }
    out["plan_p50_over_rate_match_p50"] = round(
        out["baseline_plan_search"]["p50_ms"] / out["rate_match"]["p50_ms"], 1
    )
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
