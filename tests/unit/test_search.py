"""The design-space search: rate matching worked by hand, Pareto frontiers, ``plan`` end to end."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from pdplanner.planner.errors import InvalidInputError, SearchCancelled, UnknownEntryError
from pdplanner.planner.search import plan
from pdplanner.planner.search.pareto import pareto_front
from pdplanner.planner.search.ratematch import best_xpyd, continuous_tokens_per_gpu, match_all
from pdplanner.planner.types import Deployment, PlanRequest, PlanResult, SearchLimits, Slo, Workload

# ------------------------------------------------------------------------------------------------
# Rate matching by hand


def test_best_xpyd_hand_computed() -> None:
    # Prefill worker: 2 req/s on 2 GPUs. Decode worker: 1 req/s on 4 GPUs. Budget 16 GPUs.
    # For each x the best y is the fewest decode workers that absorb x * 2 req/s, capped by the
    # GPUs left:
    #   x=1 (2 GPUs): y <= 14/4 = 3, need ceil(2/1) = 2 -> 1P2D: min(2, 2) = 2 req/s on 10 GPUs
    #   x=2 (4 GPUs): y <= 12/4 = 3, need 4        -> 2P3D: min(4, 3) = 3 req/s on 16 GPUs
    #   x=3 (6 GPUs): y <= 10/4 = 2                -> 3P2D: min(6, 2) = 2 req/s
    #   x=4..6:       y <= 2, 2, 1                 ->        2, 2, 1 req/s
    #   x=7 (14 GPUs): no GPU left for a decode worker.
    # Best: 2P3D, 3 req/s on all 16 GPUs. (Continuous matching would give 16 / (2/2 + 4/1)
    # = 3.2 req/s; whole workers lose 6 %.)
    x, y, r = best_xpyd(2.0, 2.0, 1.0, 4.0, 16, 16, 16, 0.0)
    print(f"best_xpyd(r_p=2 on 2, r_d=1 on 4, 16 GPUs) = {x}P{y}D at {r} req/s")
    assert (x, y, r) == (2, 3, 3.0)
    osl = 500.0
    continuous = continuous_tokens_per_gpu(2.0, 2.0, 1.0, 4.0, osl)
    print(f"delivered {r * osl / 16:.2f} tok/s/GPU; continuous bound {continuous:.2f}")
    assert continuous == pytest.approx(3.2 * osl / 16)
    assert r * osl / 16 <= continuous


def test_best_xpyd_respects_per_pool_budgets() -> None:
    # Same workers, but the prefill pool may use at most 2 GPUs: x = 1, so 1P2D at 2 req/s
    # (10 GPUs); 1P3D would deliver no more (the prefill worker makes only 2 req/s).
    assert best_xpyd(2.0, 2.0, 1.0, 4.0, 16, 2, 16, 0.0) == (1, 2, 2.0)
    # A decode pool of at most 4 GPUs: one decode worker; 1P1D (1 req/s on 6 GPUs) is as good as
    # any larger prefill pool and uses the fewest GPUs.
    assert best_xpyd(2.0, 2.0, 1.0, 4.0, 16, 16, 4, 0.0) == (1, 1, 1.0)
    # Nothing fits when a prefill and a decode worker together exceed the budget.
    assert best_xpyd(2.0, 2.0, 1.0, 4.0, 5, 5, 5, 0.0) == (0, 0, -1.0)


def test_best_xpyd_with_a_target_rate_reaches_it() -> None:
    # Target 2 req/s with the workers above: 1P2D reaches it on 10 GPUs; no deployment reaching
    # 2 req/s uses fewer (1P1D makes 1 req/s on 6).
    x, y, r = best_xpyd(2.0, 2.0, 1.0, 4.0, 16, 16, 16, 2.0)
    print(f"target 2 req/s: {x}P{y}D at {r} req/s on {2 * x + 4 * y} GPUs")
    assert (x, y, r) == (1, 2, 2.0)
    # An unreachable target: the most the budget can deliver.
    assert best_xpyd(2.0, 2.0, 1.0, 4.0, 16, 16, 16, 50.0) == (2, 3, 3.0)


def test_match_all_hand_computed() -> None:
    # Prefill candidates: A = 2 req/s on 2 GPUs (1 req/s/GPU), B = 5 req/s on 8 GPUs.
    # Decode candidates:  C = 1 req/s on 4 GPUs, D = 6 req/s on 8 GPUs. Budget 16, osl 500.
    #
    # Decode C:  with A: 2P3D, 3 req/s on 16 GPUs (as in test_best_xpyd_hand_computed)
    #            with B: x=1 leaves 8 GPUs -> y=2: min(5, 2) = 2 req/s on 16; x=2 leaves none.
    #            -> A, 2P3D, 3 req/s (1500 tok/s, 93.75 tok/s/GPU).
    # Decode D:  with A: x=1: y=1, min(2, 6) = 2 on 10 GPUs; x=2: 4 on 12; x=3: 6 on 14;
    #                    x=4: min(8, 6) = 6 on 16 (no better); x=5 leaves 6 GPUs < 8.
    #                    -> 3P1D, 6 req/s on 14 GPUs
    #            with B: 1P1D: min(5, 6) = 5 req/s on 16 GPUs.
    #            -> A, 3P1D, 6 req/s (3000 tok/s, 214.3 tok/s/GPU: here whole workers match the
    #               continuous bound 500 / (2/2 + 8/6) exactly, since 3 x 2 = 6).
    # Work counted: per decode candidate, 16 // 2 + 16 // 8 = 10 prefill worker counts tried.
    r_p, g_p = np.array([2.0, 5.0]), np.array([2.0, 8.0])
    r_d, g_d = np.array([1.0, 6.0]), np.array([4.0, 8.0])
    ox, oy = np.zeros(2, np.int64), np.zeros(2, np.int64)
    orate, opre = np.zeros(2), np.zeros(2, np.int64)
    evaluated = match_all(r_p, g_p, r_d, g_d, 16, 16, 16, 0.0, ox, oy, orate, opre)
    print(
        f"match_all: prefill {opre.tolist()}, x {ox.tolist()}, y {oy.tolist()}, "
        f"rate {orate.tolist()}, "
        f"evaluated {evaluated}"
    )
    assert list(opre) == [0, 0]
    assert list(ox) == [2, 3] and list(oy) == [3, 1]
    assert list(orate) == [3.0, 6.0]
    assert evaluated == 20
    gpus = ox * g_p[opre] + oy * g_d
    tok_per_gpu = orate * 500.0 / gpus
    print(f"tokens/s/GPU {tok_per_gpu.round(2).tolist()}")
    assert list(gpus) == [16.0, 14.0]
    assert tok_per_gpu[1] == pytest.approx(continuous_tokens_per_gpu(2.0, 2.0, 6.0, 8.0, 500.0))


# ------------------------------------------------------------------------------------------------
# Pareto frontier by hand


def test_pareto_front_hand_example() -> None:
    # (tokens/s/user, tokens/s/GPU):
    #   a (1, 10)  kept: nothing has y >= 10
    #   b (2, 8)   dominated by d (3, 9)
    #   c (2.5, 7) dominated by d
    #   d (3, 9)   kept
    #   e (4, 3)   kept: the only point with x >= 4 and y >= 3 besides itself is none
    #   f (3.5, 2) dominated by e
    #   g (5, 1)   kept: the largest x
    #   h (nan, 50) ignored
    x = np.array([1.0, 2.0, 2.5, 3.0, 4.0, 3.5, 5.0, np.nan])
    y = np.array([10.0, 8.0, 7.0, 9.0, 3.0, 2.0, 1.0, 50.0])
    idx = list(pareto_front(x, y))
    print("frontier:", [(float(x[i]), float(y[i])) for i in idx])
    assert idx == [0, 3, 4, 6]  # a, d, e, g by increasing x


# ------------------------------------------------------------------------------------------------
# plan()

REF = PlanRequest(
    model="llama-3.1-70b",
    gpu="h100-sxm",
    gpus=16,
    traffic=(Workload(4000, 500),),
    slo=Slo(ttft_ms=1000.0, tpot_ms=20.0),
)


@pytest.fixture(scope="module")
def ref_plan() -> PlanResult:
    return plan(REF)


def describe(d: Deployment | None) -> str:
    if d is None:
        return "none"
    pools = ", ".join(f"{p.role} TP{p.tp}xPP{p.pp} b{p.batch} x{p.workers}" for p in d.pools)
    return (
        f"{d.mode} [{pools}] TTFT {d.ttft_ms:.0f} ms, TPOT {d.tpot_ms:.2f} ms, "
        f"{d.tokens_per_s_per_gpu:.1f} tok/s/GPU, {d.tokens_per_s_per_user:.1f} tok/s/user, "
        f"{d.requests_per_s:.2f} req/s on {d.gpus} GPUs"
    )


def test_reference_query_recommends_a_deployment_meeting_the_slo(ref_plan: PlanResult) -> None:
    r = ref_plan
    print(
        f"best: {describe(r.best)}\nagg: {describe(r.best_agg)}\ndisagg: {describe(r.best_disagg)}"
        f"\nspeedup {r.disagg_speedup}, design points {r.design_points:,}, {r.elapsed_ms:.0f} ms, "
        f"frontiers {len(r.pareto_agg)} agg / {len(r.pareto_disagg)} disagg"
    )
    assert r.best is not None and r.reason is None
    for d in (r.best, r.best_agg, r.best_disagg):
        assert d is not None
        assert d.ttft_ms <= REF.slo.ttft_ms and d.tpot_ms <= REF.slo.tpot_ms
        assert 1 <= d.gpus <= 16
        assert sum(p.gpus_per_worker * p.workers for p in d.pools) == d.gpus
        assert d.tokens_per_s_per_gpu == pytest.approx(d.requests_per_s * 500 / d.gpus, rel=0.02)
    assert r.best in (r.best_agg, r.best_disagg)
    assert r.best.requests_per_s == max(r.best_agg.requests_per_s, r.best_disagg.requests_per_s)
    assert r.disagg_speedup == pytest.approx(
        r.best_disagg.tokens_per_s_per_gpu / r.best_agg.tokens_per_s_per_gpu
    )
    assert r.best_disagg.prefill_decode_gpu_ratio is not None
    assert r.design_points > 0 and r.elapsed_ms > 0


@pytest.mark.parametrize("side", ["pareto_agg", "pareto_disagg"])
def test_reference_query_frontiers_are_sorted_and_undominated(
    ref_plan: PlanResult, side: str
) -> None:
    front = getattr(ref_plan, side)
    xs = [d.tokens_per_s_per_user for d in front]
    ys = [d.tokens_per_s_per_gpu for d in front]
    print(
        f"{side}: {len(front)} points, tok/s/user {xs[0]:.1f}..{xs[-1]:.1f}, "
        f"tok/s/GPU {ys[0]:.1f}..{ys[-1]:.1f}"
    )
    assert len(front) >= 3
    assert all(a < b for a, b in itertools.pairwise(xs))  # interactivity rises...
    assert all(a > b for a, b in itertools.pairwise(ys))  # ...as throughput falls
    assert all(d.mode == side.removeprefix("pareto_") for d in front)


def test_an_impossible_tpot_returns_no_best_with_the_binding_constraint() -> None:
    r = plan(dataclasses.replace(REF, slo=Slo(ttft_ms=1000.0, tpot_ms=0.5)))
    print(f"TPOT 0.5 ms: best {r.best}; reason: {r.reason}; closest: {describe(r.closest)}")
    assert r.best is None and r.best_agg is None and r.best_disagg is None
    assert r.disagg_speedup is None
    assert r.reason is not None and "TPOT" in r.reason
    assert r.closest is not None and r.closest.tpot_ms > 0.5
    assert r.closest.ttft_ms <= 1000.0  # TPOT binds, not TTFT


def test_an_impossible_ttft_names_ttft() -> None:
    r = plan(dataclasses.replace(REF, slo=Slo(ttft_ms=10.0, tpot_ms=20.0)))
    print(f"TTFT 10 ms: reason: {r.reason}; closest: {describe(r.closest)}")
    assert r.best is None and r.reason is not None and "TTFT" in r.reason
    assert "TPOT:" not in r.reason


def test_a_model_that_fits_on_no_gpu_count_says_so() -> None:
    r = plan(dataclasses.replace(REF, model="llama-3.1-405b", gpu="l40s", gpus=2))
    print(f"405B bf16 on 2 x L40S: reason: {r.reason}")
    assert r.best is None and r.closest is None
    assert r.reason is not None
    assert "fits on no layout" in r.reason and "l40s" in r.reason and "weights" in r.reason
    assert "its weights alone need 812 GB, more than 96 GB" in r.reason
    assert r.pareto_agg == () and r.pareto_disagg == ()


def test_weights_that_fit_without_room_for_a_request_say_what_is_missing() -> None:
    # 141 GB of Llama-3.1-70B bf16 weights fit in 2 x H100; what is missing is room for one
    # request's KV cache beside the engine's reserve (the message used to say "its weights
    # alone need 141 GB", less than the 170 GB at hand)
    r = plan(dataclasses.replace(REF, gpus=2))
    print(f"70B bf16 on 2 x H100: reason: {r.reason}")
    assert r.best is None and r.reason is not None
    assert "its weights take 141 of the 170 GB" in r.reason
    assert "KV cache of one 4,500-token request" in r.reason
    assert "weights alone need" not in r.reason


def test_a_single_gpu_budget_can_only_serve_aggregated() -> None:
    r = plan(dataclasses.replace(REF, model="llama-3.1-8b", gpus=1))
    print(f"8B on 1 GPU: best {describe(r.best)}")
    assert r.best is not None and r.best.mode == "agg" and r.best_disagg is None


def test_limiting_modes_searches_only_those() -> None:
    r = plan(dataclasses.replace(REF, limits=SearchLimits(modes=("agg",))))
    assert r.best_disagg is None and r.pareto_disagg == () and r.best is r.best_agg
    r = plan(dataclasses.replace(REF, limits=SearchLimits(modes=("disagg",))))
    assert r.best_agg is None and r.pareto_agg == () and r.best is r.best_disagg


def test_max_tp_limits_every_pool() -> None:
    r = plan(dataclasses.replace(REF, limits=SearchLimits(max_tp=4)))
    tps = [p.tp for d in (*r.pareto_agg, *r.pareto_disagg, r.best) if d for p in d.pools]
    print(f"max_tp 4: TPs used {sorted(set(tps))}; best {describe(r.best)}")
    assert tps and max(tps) <= 4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(traffic=(Workload(-1, 500),)), "traffic[0].isl"),
        (dict(traffic=(Workload(4000, 500), Workload(100_000_000, 10))), "traffic[1].isl"),
        (dict(traffic=(Workload(4000, 0),)), "traffic[0].osl"),
        (dict(traffic=(Workload(4000, 500, weight=0.0),)), "traffic[0].weight"),
        (dict(traffic=()), "traffic"),
        (dict(slo=Slo(ttft_ms=0.0, tpot_ms=20.0)), "slo.ttft_ms"),
        (dict(slo=Slo(ttft_ms=1000.0, tpot_ms=-1.0)), "slo.tpot_ms"),
        (dict(slo=Slo(ttft_ms=1000.0, tpot_ms=20.0, percentile="p95")), "slo.percentile"),  # type: ignore[arg-type]
        (dict(gpus=0), "gpus"),
        (dict(prefill_gpus=17), "prefill_gpus"),
        (dict(rate_per_s=-2.0), "rate_per_s"),
        (dict(prefix_hit=1.0), "prefix_hit"),
        (dict(limits=SearchLimits(max_tp=0)), "limits.max_tp"),
        (dict(limits=SearchLimits(modes=())), "limits.modes"),
        (dict(model="llama-9"), "model"),
        (dict(gpu="h1000"), "gpu"),
        (dict(engine="tgi"), "engine"),
    ],
)
def test_invalid_plan_inputs_name_the_field(change: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as exc:
        plan(dataclasses.replace(REF, **change))
    print(f"{change} -> {exc.value.field}: {exc.value.reason}")
    assert exc.value.field == field
    assert "\n" not in str(exc.value)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(UnknownEntryError) as exc:
        plan(dataclasses.replace(REF, model="llama-9"))
    assert "llama-3.1-70b" in exc.value.known and "llama-3.1-70b" in str(exc.value)


def test_should_stop_cancels_the_search() -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return True

    with pytest.raises(SearchCancelled):
        plan(REF, should_stop=stop)
    assert calls


def test_should_stop_after_some_work_cancels_midway() -> None:
    """A deadline that passes during the search stops it at the next check."""
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(SearchCancelled):
        plan(REF, should_stop=stop)
    print(f"cancelled at check {len(calls)}")
    assert len(calls) == 6


def test_a_mix_is_held_to_its_long_prompts_at_a_high_ttft_percentile() -> None:
    from pdplanner.planner.estimate import estimate
    from pdplanner.planner.types import EstimateRequest, Parallelism

    mix = (Workload(500, 200, 0.5), Workload(16000, 200, 0.5))
    req = PlanRequest(
        "llama-3.1-70b",
        "h100-sxm",
        16,
        mix,
        Slo(4000.0, 30.0, "p99"),
        limits=SearchLimits(modes=("disagg",)),
    )
    best = plan(req).best
    assert best is not None
    pre = next(p for p in best.pools if p.role == "prefill")
    par = Parallelism(pre.tp, pre.pp, pre.ep, pre.attention_dp)
    long_ttft = estimate(
        EstimateRequest(
            "llama-3.1-70b",
            "h100-sxm",
            16000,
            200,
            phase="prefill",
            batch=pre.batch,
            parallelism=par,
        )
    ).step_ms
    print(
        f"p99 plan: prefill TP{pre.tp} PP{pre.pp} batch {pre.batch}, TTFT {best.ttft_ms:.0f} ms; "
        f"a 16k prompt alone takes {long_ttft:.0f} ms on it"
    )
    assert best.ttft_ms >= long_ttft - 1e-6
    assert best.ttft_ms <= 4000.0


def test_engine_args_max_num_seqs_bounds_every_decode_and_agg_batch() -> None:
    """A request's max_num_seqs is the most sequences a decode or aggregated worker (per
    attention-DP rank) runs: the search neither prices larger decode batches nor reports an agg
    worker's clients beyond it as its batch (more clients queue, as the simulation had them)."""
    req = PlanRequest(
        "llama-3.1-8b", "h100-sxm", 2, (Workload(1000, 100),), Slo(1000.0, 30.0),
        engine_args=(("max_num_seqs", 16),),
    )  # fmt: skip
    r = plan(req)
    assert r.best_agg is not None and r.best_disagg is not None
    everything = [r.best_agg, r.best_disagg, *r.pareto_agg, *r.pareto_disagg]
    batches = [p.batch for d in everything for p in d.pools if p.role in ("agg", "decode")]
    print(f"\nagg/decode batches with max_num_seqs 16: {sorted(set(batches))}")
    assert batches and max(batches) <= 16
    # without the override the same search runs bigger batches
    free = plan(dataclasses.replace(req, engine_args=()))
    assert free.best_disagg is not None
    assert max(p.batch for p in free.best_disagg.pools if p.role == "decode") > 16


def test_max_num_seqs_bounds_each_attention_dp_rank() -> None:
    """With attention DP a pool's batch is the worker's; the limit holds per DP rank."""
    req = PlanRequest(
        "gpt-oss-120b", "h200-sxm", 16, (Workload(1000, 200),), Slo(2000.0, 50.0),
        engine_args=(("max_num_seqs", 16),),
    )  # fmt: skip
    r = plan(req)
    everything = [d for d in (r.best_agg, r.best_disagg) if d is not None]
    everything += [*r.pareto_agg, *r.pareto_disagg]
    pools = [p for d in everything for p in d.pools if p.role in ("agg", "decode")]
    with_dp = [p for p in pools if p.attention_dp > 1]
    print(f"\n{len(pools)} agg/decode pools, {len(with_dp)} with attention DP")
    assert with_dp, "the case needs attention-DP pools to test"
    assert all(-(-p.batch // p.attention_dp) <= 16 for p in pools)
    assert any(p.batch > 16 for p in with_dp)  # the worker's total may exceed one rank's
