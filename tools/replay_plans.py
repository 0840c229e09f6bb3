"""Replay plans' best deployments through the engine loop at the rate each plan gives them.

    .venv/bin/python tools/replay_plans.py [--percentile p50 p99] [--mode agg disagg]

For each case below (or ``--case MODEL GPU GPUS ISL OSL TTFT_MS TPOT_MS``) and each mode, ``plan``
picks its best deployment; ``estimate`` then simulates it under Poisson arrivals at the rate the
plan says it serves (``estimate.replay_request``), and the two are printed side by side: TTFT
and TPOT at the SLO's percentile, requests/s planned and served. Served rates fall a few percent
short on long answers: the simulation's last requests are still decoding when the measured
window ends.
``tests/unit/test_search_answers.py`` asserts the reference case.
"""

from __future__ import annotations

import argparse

from pdplanner.planner.estimate import estimate, replay_request
from pdplanner.planner.search.recommend import search
from pdplanner.planner.types import (
    PlanRequest,
    SearchLimits,
    ServingEstimate,
    Slo,
    Workload,
)

CASES = [
    ("llama-3.1-70b", "h100-sxm", 16, 4000, 500, 1000.0, 20.0),  # the README's reference plan
    ("llama-3.1-8b", "h100-sxm", 2, 4000, 500, 1000.0, 20.0),
    ("qwen3-32b", "h100-sxm", 4, 2000, 500, 1000.0, 30.0),
    ("llama-3.1-70b", "h100-sxm", 8, 1000, 1000, 1000.0, 40.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--percentile", nargs="+", default=["p50", "p99"])
    ap.add_argument("--mode", nargs="+", default=["agg", "disagg"])
    ap.add_argument("--case", nargs=7, action="append", metavar="X")
    args = ap.parse_args()
    cases = [
        (m, g, int(n), int(i), int(o), float(t), float(p)) for m, g, n, i, o, t, p in args.case
    ] if args.case else CASES  # fmt: skip
    for model, gpu, gpus, isl, osl, ttft, tpot in cases:
        for mode in args.mode:
            for pct in args.percentile:
                req = PlanRequest(
                    model, gpu, gpus, (Workload(isl, osl),), Slo(ttft, tpot, pct),
                    limits=SearchLimits(modes=(mode,)),
                )  # fmt: skip
                best = search(req)[0].best
                head = f"{model} {gpus} x {gpu} {isl}/{osl} {mode} {pct}:"
                if best is None:
                    print(head, "no deployment meets the SLO")
                    continue
                sim = estimate(replay_request(req, best))
                assert isinstance(sim, ServingEstimate)
                workers = best.pools[0].workers if mode == "agg" else 1
                pools = " | ".join(
                    f"{p.role} TP{p.tp} PP{p.pp} EP{p.ep} DP{p.attention_dp} b{p.batch} "
                    f"x{p.workers}"
                    for p in best.pools
                )
                ttft_ms = sim.details["ttft_ms"][pct]
                tpot_ms = sim.details["tpot_ms"][pct]
                served = sim.requests_per_s * workers
                print(f"{head} {pools}")
                print(
                    f"  plan   TTFT {best.ttft_ms:7.0f} ms  TPOT {best.tpot_ms:6.2f} ms  "
                    f"{best.requests_per_s:6.2f} req/s"
                )
                print(
                    f"  replay TTFT {ttft_ms:7.0f} ms  TPOT {tpot_ms:6.2f} ms  {served:6.2f} req/s "
                    "served",
                    flush=True,
                )


if __name__ == "__main__":
    main()
