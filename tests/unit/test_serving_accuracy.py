"""Serving predictions against measured engine runs (``shared/serving-runs/runs.csv``).

Every row with a recorded concurrency is simulated once as its benchmark ran it: a closed loop
of synchronised clients on the row's engine, layout and batch limit (``serving_runs.py`` lists
the assumptions). One free parameter per serving mode is calibrated, a fixed per-request
overhead on TTFT that the engine loop does not see (HTTP, tokenisation and detokenisation in
agg; in disagg also the router, the KV handshake and the decode worker's first scheduling); TPOT
has no free parameter here. It is fitted by cross-validation, leaving one engine, one model or
one system out, and the errors printed per group (engine x mode x GPU) are those of the
held-out folds.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest
from serving_runs import (
    RUNS,
    Run,
    abs_pct,
    decode_slots,
    layout,
    load_runs,
    predict,
    prefill_backlog_ms,
)

from pdplanner.planner.serving.simulate import (
    REQUEST_OVERHEAD_MS,
    REQUESTS_PER_CLIENT,
    ServingRun,
)

OVERHEAD_GRID_MS = (0.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0)

Pred = tuple[Run, ServingRun]


@pytest.fixture(scope="module")
def predictions() -> tuple[list[Pred], dict[str, int]]:
    if not RUNS.exists():
        pytest.skip(f"{RUNS} not present")
    out: list[Pred] = []
    skipped: dict[str, int] = defaultdict(int)
    for run in load_runs():
        p = predict(run, REQUESTS_PER_CLIENT)
        if isinstance(p, str) or not p.ok:
            why = p if isinstance(p, str) else p.reason or "not ok"
            skipped[f"{run.group}: {why[:70]}"] += 1
            continue
        out.append((run, p))
    return out, dict(skipped)


def ttft_err(run: Run, p: ServingRun, overhead_ms: float) -> float:
    return abs_pct(p.ttft_ms.mean + overhead_ms, run.ttft_ms)


def fit_overhead(train: list[Pred]) -> dict[str, float]:
    """Per mode: the overhead of the grid with the smallest mean abs. % TTFT error."""
    best = {}
    for mode in ("agg", "disagg"):
        rows = [(r, p) for r, p in train if r.mode == mode]
        if not rows:
            best[mode] = 0.0
            continue
        best[mode] = min(
            OVERHEAD_GRID_MS,
            key=lambda o: float(np.mean([ttft_err(r, p, o) for r, p in rows])),
        )
    return best


def held_out(preds: list[Pred], key: Callable[[Run], str]) -> tuple[dict[int, float], list[str]]:
    """TTFT abs. % error of every row when its ``key`` value is left out of the fit."""
    errs: dict[int, float] = {}
    notes = []
    for value in sorted({key(r) for r, _ in preds}):
        train = [(r, p) for r, p in preds if key(r) != value]
        test = [(r, p) for r, p in preds if key(r) == value]
        o = fit_overhead(train)
        notes.append(f"{value}: agg {o['agg']:g} ms, disagg {o['disagg']:g} ms")
        for r, p in test:
            errs[r.line] = ttft_err(r, p, o[r.mode])
    return errs, notes


def table(
    preds: list[Pred], ttft: dict[int, float]
) -> list[tuple[str, int, float, float, float, float]]:
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r, p in preds:
        groups[r.group].append((ttft[r.line], abs_pct(p.tpot_ms.mean, r.tpot_ms)))
    groups["all"] = [v for g in list(groups.values()) for v in g]
    out = []
    for g, v in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        t, q = [a for a, _ in v], [b for _, b in v]
        out.append(
            (
                g,
                len(v),
                statistics.median(t),
                statistics.mean(t),
                statistics.median(q),
                statistics.mean(q),
            )
        )
    return out


def print_table(title: str, rows: list[tuple[str, int, float, float, float, float]]) -> None:
    print(f"\n{title}")
    print("| group (engine mode GPU) | rows | TTFT median | TTFT mean | TPOT median | TPOT mean |")
    print("| --- | --- | --- | --- | --- | --- |")
    for g, n, tm, ta, qm, qa in rows:
        print(f"| {g} | {n} | {tm:.1f}% | {ta:.1f}% | {qm:.1f}% | {qa:.1f}% |")


def test_serving_errors_on_measured_runs_under_cross_validation(predictions) -> None:
    preds, skipped = predictions
    print(f"\n{len(preds)} runs simulated; not simulated:")
    for why, n in sorted(skipped.items()):
        print(f"  {n:3d} {why}")
    schemes = {
        "leave one engine out": lambda r: r.engine,
        "leave one model out": lambda r: r.model_family,
        "leave one system out": lambda r: r.system,
    }
    overall = {}
    for name, key in schemes.items():
        errs, notes = held_out(preds, key)
        print(f"\n{name}, fitted TTFT overhead per fold: " + "; ".join(notes))
        rows = table(preds, errs)
        print_table(f"held-out errors ({name})", rows)
        overall[name] = rows[-1]
    fitted = fit_overhead(preds)
    print(f"\nfitted on every run: agg {fitted['agg']:g} ms, disagg {fitted['disagg']:g} ms")
    worst = sorted(preds, key=lambda rp: -ttft_err(rp[0], rp[1], fitted[rp[0].mode]))[:8]
    print("worst TTFT rows (line: group model isl/osl concurrency: predicted / measured ms):")
    for r, p in worst:
        print(
            f"  {r.line}: {r.group} {r.model} {r.isl}/{r.osl} c={r.concurrency}: "
            f"TTFT {p.ttft_ms.mean + fitted[r.mode]:.0f} / {r.ttft_ms:.0f}, "
            f"TPOT {p.tpot_ms.mean:.2f} / {r.tpot_ms:.2f}"
        )
    # the serving layer once predicted TTFT 5-30x too low on these runs (issue 7's table); with
    # the runs' token budgets and the overlap schedulers the held-out TTFT errors came to about
    # 30% (median) and 38-40% (mean) in every scheme, and to 24-33% / 35-40% once quantized
    # GEMMs were priced at the engines' efficiency: they must not drift back up. TPOT came to
    # 11.9% (median) and 16.3% (mean) once steps were priced as engines run them, and to 7.2% /
    # 11.5% with the quantized GEMM efficiency, vLLM's padded fp8 MoE GEMMs and a bf16 LM head
    # (the efficiency held at 0.65; folds that refit it too gave 7.5% / 11.7% before the LM head,
    # tools/fit_serving.py); TensorRT-LLM's host issue time of eager steps took the folds to
    # 22.6-29.4% / 32.2-37.8% and TPOT to 6.7% / 11.0%; the expert-parallel all-to-all's fixed
    # cost took TPOT to 6.3% / 10.0% (10.5% before)
    for name, (_, n, tm, ta, qm, qa) in overall.items():
        assert n >= 700, name
        assert tm < 33.0, (name, tm)
        assert ta < 40.0, (name, ta)
        assert qm < 7.0, (name, qm)
        assert qa < 10.3, (name, qa)


def test_tensorrt_llm_steps_with_prompts_wait_for_the_host_to_issue_their_layers(
    predictions,
) -> None:
    """TensorRT-LLM's H100 rows at TP 8 (108): with the host's issue time of an eager step
    (``eager_layer_host_ms``) their TPOT came out at 7.1% mean error, 11.2% without it (too low
    by 10% on average, most at 128 clients of 1k-token prompts, where the measured TPOT at TP 8
    equals TP 4's). The rows at TP 1-2, whose steps take longer on the GPU than the host needs
    to issue them, do not move; TP 4's go from 8.8% to 9.1% (from 3.4% to 5.0% too high).
    Pricing an MoE layer under TP attention with one all-reduce instead of an all-to-all
    dispatch and combine (the engines' way) took 1 ms off each Qwen3-235B TP8 EP8 step: TP 8
    went from 7.1% to 8.5% (7.7% too low), TP 4 from 9.1% to 7.8% (2.5% too high). What TP 8
    still misses is at 128 clients and 1k-token prompts (0.73-0.84 of the measured), both
    models."""
    preds, _ = predictions
    by_tp: dict[int, list[Pred]] = defaultdict(list)
    for r, p in preds:
        if r.group == "trtllm agg h100_sxm":
            by_tp[layout(r.row, "")[0].tp].append((r, p))
    assert len(by_tp[8]) == 108
    for tp, rows in sorted(by_tp.items()):
        errs = [abs_pct(p.tpot_ms.mean, r.tpot_ms) for r, p in rows]
        signed = [(p.tpot_ms.mean - r.tpot_ms) / r.tpot_ms * 100 for r, p in rows]
        print(
            f"TP{tp}: {len(rows)} rows, TPOT mean abs. error {statistics.mean(errs):.1f}%, "
            f"signed {statistics.mean(signed):+.1f}%"
        )
    tp8 = [abs_pct(p.tpot_ms.mean, r.tpot_ms) for r, p in by_tp[8]]
    assert statistics.mean(tp8) < 9.0
    for tp in (1, 2):
        errs = [abs_pct(p.tpot_ms.mean, r.tpot_ms) for r, p in by_tp[tp]]
        assert statistics.mean(errs) < 5.5, tp


# A measured disagg TTFT above this many times (whole-backlog prefill + the fitted overhead) is
# flagged: the factor leaves room for the prefill rate the saturated SGLang rows imply (about
# 0.45 of the modelled one at 1k prompts, 0.65 at 8k; TensorRT-LLM's 0.8-1.4).
BACKLOG_FACTOR = 3.0


def test_disagg_rows_whose_ttft_prefill_cannot_explain(predictions) -> None:
    """Flag (without dropping) the disagg rows whose measured TTFT exceeds what prefill
    queueing can cause: a closed loop never has more than ``concurrency`` prompts waiting, so
    TTFT <= the time the prefill pool takes for all of them. Above that, the request waited for
    something else; with the decode pool exactly full (``decode_slots``) that is a decode slot on
    the worker the router picked (the client's first token comes from the decode worker). A
    deployment with one decode rank cannot pick a full rank while a slot is free, so every
    flagged row must have several."""
    preds, _ = predictions
    rows = [(r, p) for r, p in preds if r.mode == "disagg"]
    flagged = []
    for r, p in rows:
        ranks, slots = decode_slots(r)
        assert r.concurrency == slots, (r.line, r.concurrency, slots)
        backlog = prefill_backlog_ms(r)
        assert backlog is not None, r.line
        limit = BACKLOG_FACTOR * (backlog + REQUEST_OVERHEAD_MS["disagg"])
        if r.ttft_ms > limit:
            flagged.append((r, p, ranks, backlog))
    print(f"\n{len(flagged)} of {len(rows)} disagg rows measure a TTFT over {BACKLOG_FACTOR:g}x")
    print("the whole-backlog prefill time (kept in the error tables):")
    for r, p, ranks, backlog in flagged:
        decode_ms = (r.osl - 1) * r.tpot_ms
        print(
            f"  {r.line}: {r.group} {r.isl}/{r.osl} c={r.concurrency} on {ranks} decode ranks: "
            f"TTFT {r.ttft_ms:.0f} ms vs backlog {backlog:.0f} ms, "
            f"{r.ttft_ms / decode_ms:.2f} of a request's decode time; predicted "
            f"{p.ttft_ms.mean + REQUEST_OVERHEAD_MS['disagg']:.0f} ms"
        )
        assert ranks > 1, r.line
    assert flagged, "no flagged rows: the decode-slot finding no longer holds"
