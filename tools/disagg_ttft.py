"""What the measured disaggregated TTFTs say about their mechanism (issue 7), row set as a whole.

    .venv/bin/python tools/disagg_ttft.py [--prefill-peak 0.45]   # 3 minutes, 5 with the option

Prints, for the disagg rows of ``shared/serving-runs/runs.csv`` that have a concurrency:

1. decode slots: how many rows run their decode pool exactly full (concurrency = workers x
   attention-DP ranks x batch);
2. the throughput each closed loop implies, clients / (TTFT + decode time), against the prefill
   capacity the step model prices (ranks x one prompt per step), per engine, system and ISL;
3. the synchronised first wave: rows the simulator under-predicts when every client's request
   counts (``k = 10``, the calibrated requests per client) and when only the first, synchronised
   burst counts (``k = 1``, the largest share a synchronised start can have);
4. random DP-rank routing: each SGLang row with attention-DP decode ranks run as a closed network
   whose requests pick a decode rank at random (SGLang routes a disaggregated request to DP rank
   ``bootstrap_room % dp_size``, a random room id) and wait there for one of its ``batch`` slots;
   the mean wait is added to the simulated TTFT and the group errors compared;
5. with ``--prefill-peak S``: the group errors when the prefill pool's peak FLOP/s is scaled by
   ``S`` (decode untouched), a what-if for how much of the error a slower prefill step explains
   (not a calibration: one factor for every row, and not written into the model).

Times in ms; errors are mean abs. % with the fitted disagg overhead (``REQUEST_OVERHEAD_MS``).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
import statistics
import sys
from collections import defaultdict, deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import numpy as np
from serving_runs import (
    Run,
    _int,
    _layout,
    _sched,
    abs_pct,
    decode_slots,
    load_runs,
    predict,
)

from pdplanner.planner.catalog import default_gpus, default_models, load_engine
from pdplanner.planner.perf.params import H_PEAK, PerfContext
from pdplanner.planner.serving.simulate import (
    REQUEST_OVERHEAD_MS,
    REQUESTS_PER_CLIENT,
    ClosedLoop,
    Pool,
    _one_request_ms,
    simulate_disagg,
)

OVERHEAD = REQUEST_OVERHEAD_MS["disagg"]


def decode_ms(run: Run) -> float:
    return (run.osl - 1) * run.tpot_ms


def prefill_capacity_per_s(run: Run) -> float:
    """Prompts per second the prefill pool sustains at the modelled step, one prompt per rank."""
    model = default_models().get(run.model, "model")
    gpu = default_gpus().get(run.system, "gpu")
    kv = "fp8" if run.dtype in ("fp8", "fp4") else "bf16"
    ctx = PerfContext.build(model, gpu, load_engine(run.engine), run.dtype, kv)
    par, _ = _layout(run.row, "prefill_")
    ranks = _int(run.row, "prefill_num_workers") * par.attention_dp
    return ranks * 1e3 / _one_request_ms(ctx, par, float(run.isl), 0.0, 1.0)


def random_rank_wait_ms(
    ranks: int, batch: int, service_ms: float, ready_ms: float, rounds: int = 10, seed: int = 1
) -> float:
    """Mean wait for a decode slot in a closed loop of ``ranks x batch`` clients whose requests
    reach the decode pool ``ready_ms`` after they are sent, pick a rank uniformly at random and
    hold a slot for ``service_ms``; ``rounds`` requests per client, all sent together first."""
    rng = random.Random(seed)
    free = [batch] * ranks
    queues: list[deque[tuple[float, int]]] = [deque() for _ in range(ranks)]
    events: list[tuple[float, int, int, int]] = []  # (time, 0 ready / 1 done, client, rank)
    sent = [0] * (ranks * batch)
    waits: list[float] = []
    for client in range(ranks * batch):
        heapq.heappush(events, (ready_ms, 0, client, rng.randrange(ranks)))
    while events:
        t, kind, client, rank = heapq.heappop(events)
        if kind == 0:
            if free[rank] > 0:
                free[rank] -= 1
                waits.append(0.0)
                heapq.heappush(events, (t + service_ms, 1, client, rank))
            else:
                queues[rank].append((t, client))
            continue
        if queues[rank]:
            t0, nxt = queues[rank].popleft()
            waits.append(t - t0)
            heapq.heappush(events, (t + service_ms, 1, nxt, rank))
        else:
            free[rank] += 1
        sent[client] += 1
        if sent[client] < rounds:
            heapq.heappush(events, (t + ready_ms, 0, client, rng.randrange(ranks)))
    return statistics.mean(waits)


def slower_prefill_ttft_ms(run: Run, peak_scale: float) -> float | None:
    """The row's simulated mean TTFT (with the overhead) when its prefill pool's peak FLOP/s is
    scaled by ``peak_scale``; the rest as ``serving_runs.predict`` builds a disagg row."""
    model = default_models().get(run.model, "model")
    gpu = default_gpus().get(run.system, "gpu")
    kv = "fp8" if run.dtype in ("fp8", "fp4") else "bf16"
    ctx = PerfContext.build(model, gpu, load_engine(run.engine), run.dtype, kv)
    hv = ctx.hv.copy()
    hv[H_PEAK] *= peak_scale
    p_par, p_batch = _layout(run.row, "prefill_")
    d_par, d_batch = _layout(run.row, "decode_")
    p_sched = _sched(run.engine, p_batch)
    budget = max(p_sched.max_num_batched_tokens, p_batch * run.isl)
    p_sched = dataclasses.replace(p_sched, max_num_batched_tokens=budget)
    prefill = Pool(
        dataclasses.replace(ctx, hv=hv), p_par, _int(run.row, "prefill_num_workers"), p_sched
    )
    decode = Pool(ctx, d_par, _int(run.row, "decode_num_workers"), _sched(run.engine, d_batch))
    load = ClosedLoop(run.concurrency, REQUESTS_PER_CLIENT)
    isl, osl = np.array([float(run.isl)]), np.array([float(run.osl)])
    p = simulate_disagg(prefill, decode, load, isl, osl, gpu.scaleout_bytes_per_s)
    return p.ttft_ms.mean + OVERHEAD if p.ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefill-peak", type=float, default=None, help="what-if scale (section 5)")
    args = ap.parse_args()
    runs = [r for r in load_runs() if r.mode == "disagg"]
    full = sum(1 for r in runs if decode_slots(r)[1] == r.concurrency)
    print(f"1. decode pool exactly full (concurrency = decode slots): {full} of {len(runs)} rows")

    ratios: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        x = r.concurrency / ((r.ttft_ms + decode_ms(r)) / 1e3)
        ratios[f"{r.engine} {r.system} ISL {r.isl}"].append(x / prefill_capacity_per_s(r))
    print("2. implied throughput / modelled prefill capacity (a row cannot exceed its pool's")
    print("   real capacity, so the largest ratio bounds the real-to-modelled prefill rate below)")
    for key, v in sorted(ratios.items()):
        top = sorted(v)[-3:]
        print(f"   {key}: {len(v)} rows, largest three " + ", ".join(f"{t:.2f}" for t in top))

    pred10, pred1 = {}, {}
    for r in runs:
        p10, p1 = predict(r, 10.0), predict(r, 1.0)
        if isinstance(p10, str) or isinstance(p1, str) or not (p10.ok and p1.ok):
            continue
        pred10[r.line], pred1[r.line] = p10.ttft_ms.mean + OVERHEAD, p1.ttft_ms.mean + OVERHEAD
    done = [r for r in runs if r.line in pred10]
    under10 = sum(1 for r in done if pred10[r.line] < r.ttft_ms)
    under1 = sum(1 for r in done if pred1[r.line] < r.ttft_ms)
    print(
        f"3. of {len(done)} simulated rows, under-predicted with k = 10: {under10}; with only the"
    )
    print(f"   synchronised first wave (k = 1): {under1}")

    print("4. random DP-rank routing on SGLang rows with attention-DP decode (mean abs. % TTFT)")
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in done:
        if r.engine != "sglang":
            continue
        par, batch = _layout(r.row, "decode_")
        base = pred10[r.line]
        wait = 0.0
        if par.attention_dp > 1:
            wait = random_rank_wait_ms(par.attention_dp, batch, decode_ms(r), base)
        groups[r.group].append((abs_pct(base, r.ttft_ms), abs_pct(base + wait, r.ttft_ms)))
    for g, v in sorted(groups.items()):
        before = statistics.mean(a for a, _ in v)
        after = statistics.mean(b for _, b in v)
        print(f"   {g}: {len(v)} rows, {before:.1f}% as simulated, {after:.1f}% with random ranks")

    if args.prefill_peak is None:
        return
    print(f"5. prefill peak FLOP/s x {args.prefill_peak:g} (mean abs. % TTFT)")
    slow: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in done:
        t = slower_prefill_ttft_ms(r, args.prefill_peak)
        if t is not None:
            slow[r.group].append((abs_pct(pred10[r.line], r.ttft_ms), abs_pct(t, r.ttft_ms)))
    slow["all"] = [e for v in list(slow.values()) for e in v]
    for g, v in sorted(slow.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        before = statistics.mean(a for a, _ in v)
        after = statistics.mean(b for _, b in v)
        print(f"   {g}: {len(v)} rows, {before:.1f}% as simulated, {after:.1f}% scaled")


if __name__ == "__main__":
    main()
