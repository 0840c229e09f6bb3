"""Replay plans' best deployments through the engine loop at the rate each plan gives them.

    .venv/bin/python tools/replay_plans.py [--percentile p50 p99] [--mode agg disagg]
    .venv/bin/python tools/replay_plans.py --frontier [--percentile p50 p90] [--mode agg]

For each case below (or ``--case MODEL GPU GPUS ISL OSL TTFT_MS TPOT_MS``) and each mode, ``plan``
picks its best deployment; ``estimate`` then simulates it under Poisson arrivals at the rate the
plan says it serves (``estimate.replay_request``), and the two are printed side by side: TTFT
and TPOT at the SLO's percentile, requests/s planned and served. Served rates fall a few percent
short on long answers: the simulation's last requests are still decoding when the measured
window ends.

``--frontier`` replays every deployment on the mode's Pareto frontier as well as the best, and
prints per case the ratios plan / replay of TTFT and TPOT (median, least, most), then over all
points the mean absolute log ratio and how many points the plan says meet the SLO where the
replay misses it by more than 5%.
``tests/unit/test_search_answers.py`` asserts the reference case.
"""

from __future__ import annotations

import argparse

import numpy as np

from pdplanner.planner.estimate import estimate, replay_request
from pdplanner.planner.search.recommend import search
from pdplanner.planner.types import (
    Deployment,
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
# --frontier adds long prompts, short answers and long answers
FRONTIER_CASES = [
    *CASES,
    ("qwen3-32b", "h100-sxm", 8, 8000, 300, 1000.0, 30.0),
    ("llama-3.1-8b", "h100-sxm", 1, 1000, 200, 500.0, 15.0),
    ("qwen3-32b", "h200-sxm", 8, 16000, 1000, 3000.0, 40.0),
    ("llama-3.1-70b", "h200-sxm", 8, 300, 2000, 500.0, 50.0),
]


def _replay(req: PlanRequest, d: Deployment, pct: str) -> tuple[float, float, float]:
    """TTFT and TPOT (ms) at ``pct`` and requests/s served, of ``d`` replayed at its rate."""
    sim = estimate(replay_request(req, d))
    assert isinstance(sim, ServingEstimate)
    workers = d.pools[0].workers if d.mode == "agg" else 1
    return (
        sim.details["ttft_ms"][pct],
        sim.details["tpot_ms"][pct],
        sim.requests_per_s * workers,
    )


def best_side_by_side(req: PlanRequest, head: str, pct: str) -> None:
    best = search(req)[0].best
    if best is None:
        print(head, "no deployment meets the SLO")
        return
    ttft_ms, tpot_ms, served = _replay(req, best, pct)
    pools = " | ".join(
        f"{p.role} TP{p.tp} PP{p.pp} EP{p.ep} DP{p.attention_dp} b{p.batch} x{p.workers}"
        for p in best.pools
    )
    print(f"{head} {pools}")
    print(
        f"  plan   TTFT {best.ttft_ms:7.0f} ms  TPOT {best.tpot_ms:6.2f} ms  "
        f"{best.requests_per_s:6.2f} req/s"
    )
    print(
        f"  replay TTFT {ttft_ms:7.0f} ms  TPOT {tpot_ms:6.2f} ms  {served:6.2f} req/s served",
        flush=True,
    )


def frontier_ratios(req: PlanRequest, head: str, pct: str) -> tuple[list, list, int]:
    """Plan / replay ratios of TTFT and TPOT over the frontier and the best; the count of
    points the plan says meet the SLO that the replay misses by more than 5%."""
    res = search(req)[0]
    mode = req.limits.modes[0]
    front = res.pareto_agg if mode == "agg" else res.pareto_disagg
    points = [*front, *([res.best] if res.best else [])]
    slo = req.slo
    ttft, tpot, missed = [], [], 0
    for d in points:
        t, p, _ = _replay(req, d, pct)
        ttft.append(d.ttft_ms / t)
        tpot.append(d.tpot_ms / p)
        meets = d.ttft_ms <= slo.ttft_ms and d.tpot_ms <= slo.tpot_ms
        missed += meets and (t > 1.05 * slo.ttft_ms or p > 1.05 * slo.tpot_ms)
    if not points:
        print(head, "nothing planned")
        return ttft, tpot, missed
    best = f"best ratio {ttft[-1]:.2f} / {tpot[-1]:.2f}" if res.best else "no best"
    print(
        f"{head} {len(points)} points, TTFT ratio median {np.median(ttft):.2f} "
        f"[{min(ttft):.2f}, {max(ttft):.2f}], TPOT ratio median {np.median(tpot):.2f} "
        f"[{min(tpot):.2f}, {max(tpot):.2f}]; {best}",
        flush=True,
    )
    return ttft, tpot, missed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--percentile", nargs="+", default=["p50", "p99"])
    ap.add_argument("--mode", nargs="+", default=["agg", "disagg"])
    ap.add_argument("--case", nargs=7, action="append", metavar="X")
    ap.add_argument("--frontier", action="store_true", help="replay every frontier point too")
    args = ap.parse_args()
    cases = [
        (m, g, int(n), int(i), int(o), float(t), float(p)) for m, g, n, i, o, t, p in args.case
    ] if args.case else FRONTIER_CASES if args.frontier else CASES  # fmt: skip
    all_ttft, all_tpot, missed = [], [], 0
    for model, gpu, gpus, isl, osl, ttft, tpot in cases:
        for mode in args.mode:
            for pct in args.percentile:
                req = PlanRequest(
                    model, gpu, gpus, (Workload(isl, osl),), Slo(ttft, tpot, pct),
                    limits=SearchLimits(modes=(mode,)),
                )  # fmt: skip
                head = f"{model} {gpus} x {gpu} {isl}/{osl} {mode} {pct}:"
                if not args.frontier:
                    best_side_by_side(req, head, pct)
                    continue
                t, p, m = frontier_ratios(req, head, pct)
                all_ttft += t
                all_tpot += p
                missed += m
    if args.frontier and all_ttft:
        lt, lp = np.abs(np.log(all_ttft)), np.abs(np.log(all_tpot))
        print(
            f"all {len(all_ttft)} points: mean |log(plan / replay)| TTFT {lt.mean():.3f}, "
            f"TPOT {lp.mean():.3f}; said to meet the SLO and missed it in replay: {missed}"
        )


if __name__ == "__main__":
    main()
