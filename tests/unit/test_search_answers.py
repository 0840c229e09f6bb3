"""``plan`` answers the question asked: the true best, a rate as a constraint, the GPUs owned,
prefill-only traffic, percentiles, the TP limit and the reasons when nothing fits."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdplanner.planner.catalog import default_gpus, default_models, load_engine
from pdplanner.planner.estimate import estimate, replay_request
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.search.aggsweep import R_TPOT, R_TTFT, ROW_COLUMNS, sweep_layout
from pdplanner.planner.search.enumerate import default_max_tp, layouts
from pdplanner.planner.search.recommend import AGG_CONCURRENCY, RATE_SEARCH_FACTOR, search
from pdplanner.planner.serving.mix import mix_cycle
from pdplanner.planner.serving.queueing import slot_load_table, split_percentile
from pdplanner.planner.serving.scheduler import scheduler_for
from pdplanner.planner.serving.simulate import REQUEST_OVERHEAD_MS, graphs_for, scheduler_vector
from pdplanner.planner.types import (
    Deployment,
    Mode,
    Percentile,
    PlanRequest,
    PlanResult,
    Precision,
    SearchLimits,
    ServingEstimate,
    Slo,
    Workload,
)

REF = PlanRequest(
    model="llama-3.1-70b",
    gpu="h100-sxm",
    gpus=16,
    traffic=(Workload(4000, 500),),
    slo=Slo(ttft_ms=1000.0, tpot_ms=20.0),
)


def describe(d: Deployment | None) -> str:
    if d is None:
        return "none"
    pools = ", ".join(
        f"{p.role} {p.gpu} TP{p.tp}xPP{p.pp}xEP{p.ep}xDP{p.attention_dp} b{p.batch} x{p.workers}"
        for p in d.pools
    )
    return (
        f"{d.mode} [{pools}] TTFT {d.ttft_ms:.0f} ms, TPOT {d.tpot_ms:.2f} ms, "
        f"{d.tokens_per_s_per_gpu:.1f} tok/s/GPU, {d.tokens_per_s_per_user:.1f} tok/s/user, "
        f"{d.requests_per_s:.2f} req/s on {d.gpus} GPUs"
    )


def best_replayed(req: PlanRequest) -> tuple[Deployment, ServingEstimate]:
    """The plan's best deployment for ``req`` and the engine loop's replay of it under Poisson
    arrivals at the rate the plan gives it (``estimate.replay_request``)."""
    best = search(req)[0].best
    assert best is not None
    sim = estimate(replay_request(req, best))
    assert isinstance(sim, ServingEstimate)
    return best, sim


def dominators(best: Deployment, points: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluated SLO-meeting points that beat ``best`` on one of (requests/s served,
    tokens/s/user, fewer GPUs) and lose on none."""
    p = np.concatenate(list(points.values()))
    tol = 1e-9
    rps, user, gpus = p[:, 0], p[:, 1], p[:, 2]
    b_rps, b_user = best.requests_per_s, best.tokens_per_s_per_user
    no_worse = (rps >= b_rps * (1 - tol)) & (user >= b_user * (1 - tol)) & (gpus <= best.gpus)
    better = (rps > b_rps * (1 + tol)) | (user > b_user * (1 + tol)) | (gpus < best.gpus)
    return p[no_worse & better]


# ------------------------------------------------------------------------------------------------
# 1. The best is never dominated; ties go to interactivity, then fewer GPUs


def test_case1_deepseek_short_answers_pick_the_most_interactive_of_equal_deployments() -> None:
    req = PlanRequest(
        "deepseek-r1",
        "h200-sxm",
        16,
        (Workload(4096, 5),),
        Slo(ttft_ms=3000.0, tpot_ms=100.0),
        limits=SearchLimits(modes=("disagg",)),
        precision=dataclasses.replace(REF.precision, dtype="fp8"),
    )
    r, points = search(req)
    best = r.best
    print(f"best: {describe(best)}")
    assert best is not None
    pts = points["disagg"]
    same = pts[np.isclose(pts[:, 0], best.requests_per_s, rtol=1e-9)]
    print(
        f"{len(pts)} SLO-meeting deployments; {len(same)} at the best's {best.requests_per_s:.3f} "
        f"req/s, tokens/s/user {same[:, 1].min():.1f}..{same[:, 1].max():.1f}"
    )
    assert best.requests_per_s == pytest.approx(pts[:, 0].max(), rel=1e-12)
    assert best.tokens_per_s_per_user == pytest.approx(same[:, 1].max(), rel=1e-12)
    assert best.gpus == same[np.isclose(same[:, 1], same[:, 1].max(), rtol=1e-12), 2].min()
    assert len(dominators(best, points)) == 0
    # on the frontier drawn for the same search, nothing beats it on both axes at once
    for d in r.pareto_disagg:
        assert not (
            d.tokens_per_s_per_user > best.tokens_per_s_per_user * (1 + 1e-9)
            and d.tokens_per_s_per_gpu >= best.tokens_per_s_per_gpu * (1 - 1e-9)
        ), describe(d)


requests = st.builds(
    lambda model, gpu, gpus, isl, osl, ttft, tpot, rate: PlanRequest(
        model, gpu, gpus, (Workload(isl, osl),), Slo(ttft, tpot), rate_per_s=rate
    ),
    model=st.sampled_from(["llama-3.1-8b", "llama-3.1-70b"]),
    gpu=st.sampled_from(["h100-sxm", "h200-sxm"]),
    gpus=st.integers(2, 16),
    isl=st.integers(128, 8192),
    osl=st.integers(2, 1024),
    ttft=st.floats(300.0, 5000.0),
    tpot=st.floats(8.0, 80.0),
    rate=st.one_of(st.none(), st.floats(0.2, 40.0)),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests)
def test_case1_property_the_best_is_on_the_frontier_of_the_slo_meeting_points(
    req: PlanRequest,
) -> None:
    r, points = search(req)
    n = sum(len(p) for p in points.values())
    print(
        f"{req.model} {req.gpus}x{req.gpu} rate {req.rate_per_s}: {n} meeting; {describe(r.best)}"
    )
    if r.best is None:
        assert n == 0 or (req.rate_per_s is not None and r.rate_served is False)
        return
    assert r.best.ttft_ms <= req.slo.ttft_ms and r.best.tpot_ms <= req.slo.tpot_ms
    assert len(dominators(r.best, points)) == 0


# ------------------------------------------------------------------------------------------------
# 2. A target rate is a constraint


@pytest.fixture(scope="module")
def rate_20() -> PlanResult:
    return search(dataclasses.replace(REF, rate_per_s=20.0))[0]


def test_case2_a_rate_the_budget_cannot_serve_is_said_with_the_gpus_it_needs(
    rate_20: PlanResult,
) -> None:
    r = rate_20
    print(f"rate 20: served {r.rate_served}; reason: {r.reason}\nexplanation: {r.explanation}")
    print(f"closest: {describe(r.closest)}\nfor the rate: {describe(r.for_rate)}")
    assert r.rate_served is False and r.best is None
    assert r.reason is not None and "rate:" in r.reason and "20 req/s offered" in r.reason
    assert r.closest is not None and r.closest.requests_per_s < 20.0 and r.closest.gpus <= 16
    f = r.for_rate
    assert f is not None
    assert 16 < f.gpus <= RATE_SEARCH_FACTOR * 16
    assert f.requests_per_s == pytest.approx(20.0)
    assert f.ttft_ms <= 1000.0 and f.tpot_ms <= 20.0
    assert f.tokens_per_s_per_gpu == pytest.approx(20.0 * 500 / f.gpus)
    within = " with aggregated workers of at most 16 GPUs" if f.mode == "agg" else ""
    assert f"the fewest that do{within}: {f.gpus} GPUs" in r.explanation


@pytest.mark.parametrize("modes", [("agg", "disagg"), ("agg",)])
def test_case2_the_gpus_named_for_a_rate_are_the_fewest(modes: tuple[Mode, ...]) -> None:
    # planning again with that many GPUs serves the rate on all of them; one fewer does not.
    # Past the budget the search takes workers too large for it: a 32-GPU TP8 PP4 decode worker
    # serves this rate on 56 GPUs where the 16-GPU budget's largest workers need 64.
    req = dataclasses.replace(REF, rate_per_s=20.0, limits=SearchLimits(modes=modes))
    need = search(req)[0].for_rate
    assert need is not None
    at = search(dataclasses.replace(req, gpus=need.gpus))[0]
    below = search(dataclasses.replace(req, gpus=need.gpus - 1))[0]
    print(f"{modes}: 20 req/s needs {need.gpus} GPUs; at {need.gpus}: {describe(at.best)}")
    assert at.rate_served is True and at.best is not None and at.best.gpus == need.gpus
    # with that many GPUs in the budget the search also sees decode layouts too large for the
    # first budget, so its best is at least as interactive as the deployment it named
    assert at.best.ttft_ms <= REF.slo.ttft_ms
    assert at.best.tpot_ms <= need.tpot_ms * (1.0 + 1e-9)
    assert below.rate_served is False and below.for_rate is not None
    assert below.for_rate.gpus == need.gpus


def test_case2_a_rate_the_budget_serves_is_served_with_the_fewest_gpus() -> None:
    r, points = search(dataclasses.replace(REF, rate_per_s=2.0))
    print(f"rate 2: {describe(r.best)}\n{r.explanation}")
    assert r.rate_served is True and r.best is not None and r.for_rate is None
    b = r.best
    assert b.requests_per_s == pytest.approx(2.0)
    assert b.tokens_per_s_per_gpu == pytest.approx(2.0 * 500 / b.gpus)
    serving = np.concatenate(list(points.values()))
    serving = serving[serving[:, 0] >= 2.0 * (1 - 1e-9)]
    assert b.gpus == serving[:, 2].min()
    assert "serves the offered 2 req/s" in r.explanation and "at the offered rate" in r.explanation


def test_case2_figures_are_at_the_offered_rate_not_at_capacity() -> None:
    # the same disagg deployment at a low offered rate waits less for prefill and decodes a
    # smaller batch than at its capacity
    cap = search(dataclasses.replace(REF, limits=SearchLimits(modes=("disagg",))))[0].best
    assert cap is not None
    low = search(
        dataclasses.replace(
            REF,
            gpus=cap.gpus,
            rate_per_s=cap.requests_per_s / 4,
            limits=SearchLimits(modes=("disagg",)),
        )
    )[0].best
    print(f"capacity: {describe(cap)}\nquarter rate: {describe(low)}")
    assert low is not None
    assert low.requests_per_s == pytest.approx(cap.requests_per_s / 4)
    assert low.tpot_ms <= cap.tpot_ms and low.ttft_ms <= cap.ttft_ms
    assert low.gpus <= cap.gpus


def test_case2_agg_is_judged_by_the_same_rule() -> None:
    agg_only = SearchLimits(modes=("agg",))
    served = search(dataclasses.replace(REF, rate_per_s=2.0, limits=agg_only))
    r, points = served
    print(f"agg rate 2: {describe(r.best)}")
    assert r.rate_served is True and r.best is not None
    assert r.best.requests_per_s == pytest.approx(2.0)
    assert r.best.gpus == points["agg"][points["agg"][:, 0] >= 2.0 * (1 - 1e-9), 2].min()
    miss = search(dataclasses.replace(REF, rate_per_s=20.0, limits=agg_only))[0]
    print(f"agg rate 20: {miss.reason}; for the rate: {describe(miss.for_rate)}")
    assert miss.rate_served is False and miss.best is None
    assert miss.for_rate is not None and miss.for_rate.gpus > 16
    assert miss.for_rate.requests_per_s == pytest.approx(20.0)


# ------------------------------------------------------------------------------------------------
# 3. Aggregated serving only on the GPUs the budget holds


def _owned(r: PlanResult, counts: dict[str, int]) -> None:
    aggs = [d for d in (r.best_agg, *r.pareto_agg) if d is not None]
    assert aggs
    for d in aggs:
        for p in d.pools:
            assert p.gpu in counts
            assert p.gpus_per_worker * p.workers <= counts[p.gpu], describe(d)


def test_case3_agg_uses_each_gpu_type_within_its_own_count() -> None:
    req = dataclasses.replace(
        REF, gpu="h100-sxm", decode_gpu="h200-sxm", gpus=16, prefill_gpus=8, decode_gpus=8
    )
    r = search(req)[0]
    print(f"best agg: {describe(r.best_agg)}\nbest: {describe(r.best)}\n{r.explanation}")
    _owned(r, {"h100-sxm": 8, "h200-sxm": 8})
    assert "aggregated on 8 x h100-sxm or aggregated on 8 x h200-sxm" in r.explanation
    assert "prefill on h100-sxm (at most 8), decode on h200-sxm (at most 8)" in r.explanation


@pytest.mark.skipif(
    not {"h800", "h20"} <= set(default_gpus().names()),
    reason="h800 and h20 are not in the GPU catalog yet",
)
def test_case3_deepseek_on_16_h800_and_16_h20_never_plans_32_h800() -> None:
    req = PlanRequest(
        "deepseek-r1",
        "h800",
        32,
        (Workload(4096, 1024),),
        Slo(ttft_ms=2000.0, tpot_ms=50.0),
        decode_gpu="h20",
        prefill_gpus=16,
        decode_gpus=16,
        precision=dataclasses.replace(REF.precision, dtype="fp8"),
    )
    r = search(req)[0]
    print(f"best agg: {describe(r.best_agg)}\n{r.explanation}")
    _owned(r, {"h800": 16, "h20": 16})


# ------------------------------------------------------------------------------------------------
# 4. Prefill-only traffic


def test_case4_osl_1_has_no_decode_pool_and_counts_prompt_tokens() -> None:
    req = PlanRequest(
        "llama-3.1-8b", "h100-sxm", 8, (Workload(131071, 1),), Slo(ttft_ms=60000.0, tpot_ms=50.0)
    )
    r = search(req)[0]
    print(
        f"best: {describe(r.best)}; "
        f"prompt tok/s/GPU {r.best and r.best.prompt_tokens_per_s_per_gpu}"
    )
    print(r.explanation)
    assert r.best is not None and r.best_disagg is None and r.pareto_disagg == ()
    for d in (r.best, *r.pareto_agg):
        assert all(p.role == "agg" for p in d.pools)
    b = r.best
    assert b.requests_per_s > 0
    assert b.prompt_tokens_per_s_per_gpu == pytest.approx(b.requests_per_s * 131071 / b.gpus)
    assert b.tokens_per_s_per_gpu == pytest.approx(b.requests_per_s / b.gpus)
    assert "no decode pool" in r.explanation and "prompt tokens/s/GPU" in r.explanation


def test_case4_osl_1_searched_as_disagg_only_says_why_there_is_nothing() -> None:
    """Prefill-only traffic searched in disaggregated mode alone prices nothing: the answer says
    there is no decode pool to search, not that the model fits on no layout (it fits)."""
    req = PlanRequest(
        "llama-3.1-8b", "h100-sxm", 4, (Workload(2000, 1),), Slo(ttft_ms=500.0, tpot_ms=20.0),
        limits=SearchLimits(modes=("disagg",)),
    )  # fmt: skip
    r = search(req)[0]
    assert r.best is None and r.best_agg is None and r.best_disagg is None
    assert r.reason is not None and "no decode pool" in r.reason
    assert "fits on no layout" not in r.reason


# ------------------------------------------------------------------------------------------------
# 5. The percentile applies to TPOT as well as TTFT


def test_case5_the_agg_sweep_reports_tpot_at_the_slo_percentile() -> None:
    # a 50/50 mix of 500- and 16000-token prompts: requests that decode beside a long prompt's
    # prefill see slower steps, so their TPOT spreads and p99 > p50 for the same setup
    ctx = PerfContext.build(
        default_models().get("llama-3.1-70b", "model"),
        default_gpus().get("h100-sxm", "gpu"),
        load_engine("vllm", "engine"),
    )
    isl, osl = mix_cycle((Workload(500, 200, 0.5), Workload(16000, 200, 0.5)))
    chunks, conc = np.array([2048.0, 0.0]), np.array([4.0, 16.0, 48.0])  # all held by the cache
    tpot = {}
    for p in (0.5, 0.99):
        rows = np.zeros((6, ROW_COLUMNS))
        sched = scheduler_for(ctx.engine)
        n = sweep_layout(
            ctx.mv, ctx.hv, ctx.cal.gemm, ctx.cal.attn_prefill, ctx.cal.attn_decode,
            8.0, 1.0, 1.0, 1.0, chunks, conc, isl, osl, 0.0, scheduler_vector(sched),
            graphs_for(ctx, sched), 1e9, p, slot_load_table(split_percentile(p)), rows,
        )  # fmt: skip
        assert n == 6
        tpot[p] = rows[:n, R_TPOT]
    print(f"TPOT p50 {tpot[0.5].round(2).tolist()}\nTPOT p99 {tpot[0.99].round(2).tolist()}")
    assert (tpot[0.99] >= tpot[0.5]).all() and (tpot[0.99] > tpot[0.5] * 1.01).any()


def test_case5_the_result_says_which_percentile_each_figure_is() -> None:
    p99 = search(dataclasses.replace(REF, slo=Slo(1000.0, 20.0, "p99")))[0]
    agg = search(
        dataclasses.replace(REF, slo=Slo(1000.0, 20.0, "p99"), limits=SearchLimits(modes=("agg",)))
    )[0]
    print(f"{p99.explanation}\n{agg.explanation}")
    assert p99.best is not None and p99.best.mode == "disagg"
    assert "TTFT p99" in p99.explanation and "TPOT p99" in p99.explanation
    assert "free of prefill interference, so the same at every percentile" in p99.explanation
    assert "TPOT p99" in agg.explanation and "the p99 of requests' TPOT" in agg.explanation


def test_case5_plan_and_estimate_count_the_same_agg_request_overhead() -> None:
    # an aggregated point's TTFT in plan is the engine-loop simulation of its sweep plus the
    # queueing wait, plus the per-request time outside the loop that ``estimate`` adds too
    req = PlanRequest(
        model="llama-3.1-8b",
        gpu="h100-sxm",
        gpus=1,
        traffic=(Workload(256, 64),),
        slo=Slo(ttft_ms=1e6, tpot_ms=1e3),
        limits=SearchLimits(modes=("agg",)),
    )
    best = search(req)[0].best
    assert best is not None and best.mode == "agg"
    pool = best.pools[0]
    ctx = PerfContext.build(
        default_models().get("llama-3.1-8b", "model"),
        default_gpus().get("h100-sxm", "gpu"),
        load_engine("vllm", "engine"),
    )
    sched = scheduler_for(ctx.engine)
    isl, osl = mix_cycle(req.traffic)
    # the sweep's concurrencies up to the best's: a point's TTFT is read off the loops below it
    conc = np.array([c for c in AGG_CONCURRENCY if c <= pool.batch], dtype=np.float64)
    rows = np.zeros((conc.shape[0], ROW_COLUMNS))
    n = sweep_layout(
        ctx.mv, ctx.hv, ctx.cal.gemm, ctx.cal.attn_prefill, ctx.cal.attn_decode,
        float(pool.tp), float(pool.pp), float(pool.ep), float(pool.attention_dp),
        np.array([float(pool.chunk_tokens or 0)]), conc, isl, osl,
        0.0, scheduler_vector(sched), graphs_for(ctx, sched), 1e9, 0.5,
        slot_load_table(split_percentile(0.5)), rows,
    )  # fmt: skip
    assert n == conc.shape[0] and conc[-1] == pool.batch
    print(
        f"plan's agg TTFT {best.ttft_ms:.2f} ms = sweep {rows[n - 1, R_TTFT]:.2f} ms + overhead "
        f"{REQUEST_OVERHEAD_MS['agg']:g} ms"
    )
    assert best.ttft_ms == pytest.approx(rows[n - 1, R_TTFT] + REQUEST_OVERHEAD_MS["agg"], rel=1e-9)


@pytest.mark.parametrize("percentile", ["p50", "p99"])
@pytest.mark.parametrize("mode", ["agg", "disagg"])
def test_case5_the_best_deployment_meets_its_slo_when_random_arrivals_come_at_its_rate(
    mode: Mode, percentile: Percentile
) -> None:
    # The plan judges its SLO under Poisson arrivals (PLAN_LOAD). A rate that fills every batch
    # slot (a closed loop's) would leave no slot free for random arrivals and the queue would
    # grow without bound: the reference plan's 6.53 req/s disagg deployment replayed so gave a
    # median TTFT of 5 s, its agg one 10.7 s. The rate each deployment is said to serve must be
    # one the engine loop serves within the SLO at the SLO's percentile.
    slo = dataclasses.replace(REF.slo, percentile=percentile)
    req = dataclasses.replace(REF, slo=slo, limits=SearchLimits(modes=(mode,)))
    best, sim = best_replayed(req)
    assert best.mode == mode
    ttft = sim.details["ttft_ms"][percentile]
    tpot = sim.details["tpot_ms"][percentile]
    served = sim.requests_per_s * (best.pools[0].workers if mode == "agg" else 1)
    print(
        f"{describe(best)}; replayed at that rate: TTFT {percentile} {ttft:.0f} ms, TPOT "
        f"{percentile} {tpot:.2f} ms, {served:.2f} req/s served, {sim.queued:.1f} queued"
    )
    assert ttft <= slo.ttft_ms
    assert tpot <= slo.tpot_ms * 1.02
    assert served >= 0.93 * best.requests_per_s


def test_case5_a_long_prompts_agg_ttft_is_not_its_queue_counted_twice() -> None:
    # An aggregated point's TTFT is the loop's plus the Poisson waits. Read off the loop at the
    # point's own clients, busier than the rate it is said to carry, the loop's prompts already
    # queued behind each other and the M/D/1 wait counted it again: 8000-token prompts on
    # Qwen3-32B planned a p90 TTFT of 994 ms that the engine loop replays at 447 ms.
    req = PlanRequest(
        model="qwen3-32b",
        gpu="h100-sxm",
        gpus=8,
        traffic=(Workload(8000, 300),),
        slo=Slo(ttft_ms=1000.0, tpot_ms=30.0, percentile="p90"),
        limits=SearchLimits(modes=("agg",)),
    )
    best, sim = best_replayed(req)
    ttft, tpot = sim.details["ttft_ms"]["p90"], sim.details["tpot_ms"]["p90"]
    print(f"{describe(best)}; replayed at that rate: TTFT p90 {ttft:.0f} ms, TPOT p90 {tpot:.2f}")
    assert 0.9 * ttft <= best.ttft_ms <= 1.3 * ttft
    assert 0.9 * tpot <= best.tpot_ms <= 1.1 * tpot


def test_case5_a_long_prompt_short_answer_agg_tpot_counts_the_prompts_its_prefill_left_queued() -> (
    None
):
    # A request starts decoding as its own prefill ends, with the prompts that queued meanwhile
    # still to prefill: with 30000-token prompts and 50-token answers they make most of its
    # TPOT. Without them the plan said 32.3 ms at p50 where the replay gives 58.9 ms, and 47.6
    # at p90 where it gives 101 (TP1 batch 12 x 2 at 1.3 req/s; TP2 batch 16 at 0.94).
    req = PlanRequest(
        model="llama-3.1-8b",
        gpu="h100-sxm",
        gpus=2,
        traffic=(Workload(30000, 50),),
        slo=Slo(ttft_ms=5000.0, tpot_ms=50.0, percentile="p90"),
        limits=SearchLimits(modes=("agg",)),
    )
    best, sim = best_replayed(req)
    tpot = sim.details["tpot_ms"]["p90"]
    print(f"{describe(best)}; replayed at that rate: TPOT p90 {tpot:.2f} ms")
    assert tpot <= req.slo.tpot_ms
    assert 0.95 * tpot <= best.tpot_ms <= 1.3 * tpot


@pytest.mark.parametrize(
    ("model", "gpu", "gpus", "isl", "osl", "tpot_ms", "rate"),
    [
        # taken with every slot busy the TPOT was 22% above the replay's: 24 GPUs for a rate
        # that 16 serve
        ("llama-3.1-70b", "h100-sxm", 16, 4000, 500, 20.0, 3.0),
        # 2000-token answers on TP2 batch 256: random arrivals hold more sequences than the
        # closed loop at their rate, across a step in the decode step's cost (46 -> 52 ms from
        # 185 to 200 sequences); without the held count's correction the plan said 49.9 ms
        # where the replay runs 57.6
        ("llama-3.1-70b", "h200-sxm", 8, 300, 2000, 50.0, 0.0),
    ],
)
def test_case5_agg_tpot_is_what_random_arrivals_at_the_plans_rate_see(
    model: str, gpu: str, gpus: int, isl: int, osl: int, tpot_ms: float, rate: float
) -> None:
    req = PlanRequest(
        model=model,
        gpu=gpu,
        gpus=gpus,
        traffic=(Workload(isl, osl),),
        slo=Slo(ttft_ms=1000.0, tpot_ms=tpot_ms),
        limits=SearchLimits(modes=("agg",)),
        rate_per_s=rate or None,
    )
    best, sim = best_replayed(req)
    assert best.gpus <= gpus
    tpot = sim.details["tpot_ms"]["p50"]
    print(f"{describe(best)}; replayed at that rate: TPOT p50 {tpot:.2f} ms")
    assert 0.95 * tpot <= best.tpot_ms <= 1.1 * tpot
    assert tpot <= 1.02 * tpot_ms


def test_case5_a_disagg_ttft_waits_for_the_decode_workers_step() -> None:
    # The first token is the decode worker's: it admits a request at its next step boundary,
    # half a step on average after the KV arrives, as the engine loop counts it. Without that
    # wait, long decode steps (TPOT near 50 ms) put the plan 9% below its replay: 269 ms
    # planned, 295 ms replayed.
    req = PlanRequest(
        model="llama-3.1-70b",
        gpu="h200-sxm",
        gpus=8,
        traffic=(Workload(300, 2000),),
        slo=Slo(ttft_ms=500.0, tpot_ms=50.0),
        limits=SearchLimits(modes=("disagg",)),
    )
    best, sim = best_replayed(req)
    ttft = sim.details["ttft_ms"]["p50"]
    print(f"{describe(best)}; replayed at that rate: TTFT p50 {ttft:.0f} ms")
    assert 0.97 * ttft <= best.ttft_ms <= 1.15 * ttft
    assert best.ttft_ms <= req.slo.ttft_ms


# Qwen3-235B fp8 on 8 H200s: the aggregated frontier is attention-DP layouts up to 768 a worker
MOE_DP = PlanRequest(
    model="qwen3-235b-a22b",
    gpu="h200-sxm",
    gpus=8,
    traffic=(Workload(2000, 500),),
    slo=Slo(ttft_ms=1000.0, tpot_ms=30.0),
    precision=Precision("fp8"),
    limits=SearchLimits(modes=("agg",)),
)


@functools.cache
def moe_dp_plan() -> PlanResult:
    return search(MOE_DP)[0]


def replayed(d: Deployment) -> tuple[float, float, float]:
    """(TTFT p50, TPOT p50, requests/s served) of ``d`` replayed by the engine loop with every
    attention-DP rank, under Poisson arrivals at the rate ``MOE_DP``'s plan gives it."""
    sim = estimate(replay_request(MOE_DP, d))
    assert isinstance(sim, ServingEstimate)
    served = sim.requests_per_s * d.pools[0].workers
    return sim.details["ttft_ms"]["p50"], sim.details["tpot_ms"]["p50"], served


def test_case5_an_attention_dp_best_meets_its_slo_with_its_ranks_in_lockstep() -> None:
    # The sweep simulates one rank of a worker; the engines run a worker's attention-DP ranks in
    # lockstep, so one rank's prompt holds up the others' decode steps. Priced as if every rank
    # carried the simulated rank's mix, the plan answered TP1 ADP8 batch 192 at a TPOT of
    # 27.2 ms, replayed at 44.7 ms with all eight ranks.
    best = moe_dp_plan().best
    assert best is not None
    ttft, tpot, served = replayed(best)
    print(
        f"{describe(best)}; replayed: TTFT p50 {ttft:.0f} ms, TPOT p50 {tpot:.2f} ms, "
        f"{served:.2f} req/s served"
    )
    assert tpot <= MOE_DP.slo.tpot_ms * 1.02
    assert ttft <= MOE_DP.slo.ttft_ms
    assert served >= 0.93 * best.requests_per_s


def test_case5_the_agg_frontiers_largest_rate_is_served() -> None:
    # The sweep measured a closed loop's rate over completions inside its clients' first wave,
    # spaced by the start's estimated spread: past about 200 clients a rank its frontier
    # claimed twice what the loop serves (TP2 ADP2 batch 768: 42.5 req/s planned, 21.0 served,
    # TTFT 6.7 s). Served rates fall a few percent short anyway: the replay's last requests
    # are still decoding when its window ends.
    top = max(moe_dp_plan().pareto_agg, key=lambda d: d.requests_per_s)
    ttft, tpot, served = replayed(top)
    print(
        f"{describe(top)}; replayed: TTFT p50 {ttft:.0f} ms, TPOT p50 {tpot:.2f} ms, "
        f"{served:.2f} req/s served"
    )
    assert served >= 0.85 * top.requests_per_s
    assert ttft <= 1.5 * top.ttft_ms
    assert tpot <= 1.25 * top.tpot_ms


# ------------------------------------------------------------------------------------------------
# 6. The TP limit: the NVLink domain by default


def test_case6_default_max_tp_is_the_nvlink_domain() -> None:
    gpus, models = default_gpus(), default_models()
    h100 = gpus.get("h100-sxm", "gpu")
    lay = layouts(models.get("llama-3.1-70b", "model"), h100, 16, SearchLimits())
    print(f"h100 NVLink domain {h100.nvlink_domain_size}; TPs {sorted(set(lay[:, 0].tolist()))}")
    assert default_max_tp(h100) == h100.nvlink_domain_size == 8
    assert lay[:, 0].max() == 8 and (lay[:, 0] * lay[:, 3]).max() <= 8
    wide = layouts(models.get("llama-3.1-70b", "model"), h100, 16, SearchLimits(max_tp=16))
    assert wide[:, 0].max() == 16


# ------------------------------------------------------------------------------------------------
# 7. No feasible plan: every binding constraint, per mode, once


def test_case7_nothing_feasible_names_every_constraint_once_per_mode() -> None:
    r = search(dataclasses.replace(REF, slo=Slo(ttft_ms=10.0, tpot_ms=0.5)))[0]
    print(f"reason: {r.reason}")
    assert r.best is None and r.reason is not None
    assert "no configuration meets the SLO" not in r.reason
    agg, disagg = r.reason.split(" | ")
    assert agg.startswith("agg: ") and disagg.startswith("disagg: ")
    for part in (agg, disagg):
        assert "TTFT:" in part and "TPOT:" in part
        assert part.count("TTFT:") == 1 and part.count("TPOT:") == 1
    assert "the fastest prefill takes" in disagg and "target 10 ms" in disagg
    assert "the fastest decode step takes" in disagg and "target 0.5 ms" in disagg
    assert "closest miss" in agg
