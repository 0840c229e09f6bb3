"""Serving metrics: the aggregated worker's event simulation and the xPyD disaggregated deployment.

The aggregated worker (``pdplanner.planner.serving.simulate.simulate_agg``) must reduce to the phase
steps when alone, saturate as users are added, queue when its KV cache is full, keep its batch
at the engine's limit under any number of clients, and show waves and interference. The
disaggregated deployment must deliver ``min(x * rate_p, y * rate_d)`` from the prefill and decode
workers' own figures, name its bottleneck, and charge the KV transfer to the time to first token.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from pdplanner.planner.catalog import load_engine, load_gpu, load_model
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.estimate import estimate
from pdplanner.planner.perf import kernels as K
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving.kvtransfer import TRANSFER_LATENCY_MS
from pdplanner.planner.serving.scheduler import scheduler_for
from pdplanner.planner.serving.simulate import (
    MAX_REQUESTS,
    POISSON_REQUESTS,
    REQUEST_OVERHEAD_MS,
    ClosedLoop,
    Poisson,
    Pool,
    Trace,
    kv_capacity,
    poisson_requests,
    simulate_agg,
    simulate_disagg,
)
from pdplanner.planner.serving.workers import agg_worker, decode_worker, prefill_worker
from pdplanner.planner.types import (
    EstimateRequest,
    Parallelism,
    PhaseEstimate,
    PoolSpec,
    Precision,
    ServingEstimate,
)

MODEL, GPU, ISL, OSL = "llama-3.1-8b", "h100-sxm", 2000, 200
OVERHEAD = REQUEST_OVERHEAD_MS["agg"]


def est(**kw) -> PhaseEstimate | ServingEstimate:
    base = dict(model=MODEL, gpu=GPU, isl=ISL, osl=OSL)
    return estimate(EstimateRequest(**{**base, **kw}))


def agg(concurrency: int, **kw) -> ServingEstimate:
    r = est(mode="agg", concurrency=concurrency, **kw)
    assert isinstance(r, ServingEstimate)
    return r


# ------------------------------------------------------------------------------------------------
# Aggregated


def test_one_user_sees_a_prefill_step_then_batch_1_decode_steps() -> None:
    """Alone on the worker, a request's TTFT is one prefill step of its prompt (plus the
    calibrated per-request overhead outside the engine) and its TPOT one decode step at batch 1
    (at the mean context isl + osl/2): within 10 %."""
    pre = est(phase="prefill", batch=1)
    dec = est(phase="decode", batch=1)
    a = agg(1)
    print(
        f"agg c=1: TTFT {a.ttft_ms:.2f} ms vs prefill step {pre.step_ms:.2f} ms; "
        f"TPOT {a.tpot_ms:.3f} ms vs decode step {dec.step_ms:.3f} ms; "
        f"running {a.running_batch:.2f}"
    )
    assert a.ttft_ms - OVERHEAD == pytest.approx(pre.step_ms, rel=0.10)
    assert a.tpot_ms == pytest.approx(dec.step_ms, rel=0.10)
    assert a.running_batch == pytest.approx(1.0, rel=0.01)
    assert a.queued == 0.0
    # closed loop: one request every TTFT + (osl - 1) TPOT
    cycle_s = (a.ttft_ms - OVERHEAD + (OSL - 1) * a.tpot_ms) / 1e3
    assert a.requests_per_s == pytest.approx(1 / cycle_s, rel=0.02)
    assert a.tokens_per_s_per_user == pytest.approx(1e3 / a.tpot_ms)


def test_throughput_rises_with_concurrency_then_saturates() -> None:
    """More users fill the decode batch (throughput up, TPOT up) until the KV cache caps the
    running batch; past that point throughput stays flat and only the queue grows."""
    rows = [(c, agg(c)) for c in (1, 4, 16, 64, 128, 256, 512, 1024)]
    for c, a in rows:
        print(
            f"agg c={c:5d}: {a.tokens_per_s_per_gpu:7.0f} tok/s/GPU, TTFT {a.ttft_ms:9.1f} ms, "
            f"TPOT {a.tpot_ms:6.2f} ms, running {a.running_batch:6.1f}, queued {a.queued:6.1f}"
        )
    tput = [a.tokens_per_s_per_gpu for _, a in rows]
    rising = tput[:5]  # 1 .. 128 users, all admitted
    assert all(b > a for a, b in itertools.pairwise(rising))
    assert tput[1] > 3 * tput[0]  # batching 4 users is almost free at decode
    tpots = [a.tpot_ms for _, a in rows[:5]]
    assert all(b > a for a, b in itertools.pairwise(tpots))
    saturated = tput[5:]  # 256 .. 1024 users: the cache holds ~180
    assert max(saturated) / min(saturated) < 1.05
    assert tput[5] / tput[4] < 1.1


def test_when_the_kv_cache_cannot_hold_every_user_the_rest_queue() -> None:
    """8B on one H100: (0.9 x 80 GB - 3 GB workspace - 16 GB weights) / 128 KiB per token holds
    ~390k tokens, ~180 requests of 2200 tokens. Under TensorRT-LLM's whole-request reservation
    512 clients never run more than that, the others wait for admission, and the time to first
    token grows by the wait; 128 clients all run. The worker still fits (fits False is only for
    weights plus one request)."""
    m = load_model(MODEL)
    ctx = PerfContext.build(m, load_gpu(GPU), load_engine("trtllm"))
    sched = scheduler_for(ctx.engine)
    isl, osl = np.array([float(ISL)]), np.array([float(OSL)])
    below = simulate_agg(ctx, Parallelism(), sched, ClosedLoop(128), isl, osl)
    above = simulate_agg(ctx, Parallelism(), sched, ClosedLoop(512), isl, osl)
    cap = kv_capacity(ctx, Parallelism(), sched, float(max(ISL, 8192)), 512.0)
    max_running = cap / (ISL + OSL)
    print(
        f"KV capacity {cap:,.0f} tokens = {max_running:.1f} requests of {ISL + OSL} tokens; "
        f"c=128: peak running {below.peak_running:.0f}, mean {below.running:.1f}, "
        f"TTFT {below.ttft_ms.mean:.0f} ms; c=512: peak {above.peak_running:.0f}, "
        f"mean {above.running:.1f}, queued {above.queued:.1f}, TTFT {above.ttft_ms.mean:.0f} ms"
    )
    assert below.ok and above.ok
    assert below.peak_running == 128
    assert above.peak_running == math.floor(max_running)
    assert above.running >= 0.9 * max_running
    assert above.queued > 512 - max_running - 40
    assert above.ttft_ms.mean > 5 * below.ttft_ms.mean
    assert above.preemptions == 0  # reservation never evicts


def test_on_demand_admission_preempts_under_memory_pressure_and_reservation_does_not() -> None:
    """vLLM admits prompts by the blocks they need now; when the answers grow past the cache it
    preempts (recompute). 512 clients of 2000/200 tokens overfill an 8B worker's ~420k-token
    cache: vLLM preempts, TensorRT-LLM (whole-request reservation) never does, and SGLang's
    reservation by a decaying new-token ratio sits in between."""
    m = load_model(MODEL)
    isl, osl = np.array([float(ISL)]), np.array([float(OSL)])
    runs = {}
    for name in ("vllm", "sglang", "trtllm"):
        ctx = PerfContext.build(m, load_gpu(GPU), load_engine(name))
        runs[name] = simulate_agg(
            ctx, Parallelism(), scheduler_for(ctx.engine), ClosedLoop(512), isl, osl
        )
        r = runs[name]
        print(
            f"{name}: preemptions {r.preemptions}, mean running {r.running:.1f}, "
            f"TTFT {r.ttft_ms.mean:.0f} ms, TPOT {r.tpot_ms.mean:.2f} ms"
        )
    assert runs["trtllm"].preemptions == 0
    assert runs["vllm"].preemptions > 0
    # admitting by what is needed now runs more sequences at once than reserving whole requests;
    # compared on one engine, as each engine's memory rule gives it a KV cache of its own size
    ctx = PerfContext.build(m, load_gpu(GPU), load_engine("vllm"))
    reserve = replace(scheduler_for(ctx.engine), kv_admission="reserve")
    held = simulate_agg(ctx, Parallelism(), reserve, ClosedLoop(512), isl, osl)
    print(
        f"vllm reserving whole requests: preemptions {held.preemptions}, running {held.running:.1f}"
    )
    assert held.preemptions == 0
    assert runs["vllm"].running > held.running


def test_a_hundred_thousand_clients_keep_the_batch_at_the_engine_limit() -> None:
    """100,000 closed-loop clients on 8B TP1 (ISL 1000, OSL 100): the running batch is bounded
    by the engine's batch limit and the KV cache, never driven down by the queue (it once fell
    to 3 with TTFT of 8 hours)."""
    m = load_model(MODEL)
    ctx = PerfContext.build(m, load_gpu(GPU), load_engine("trtllm"))
    sched = scheduler_for(ctx.engine)
    isl, osl = np.array([1000.0]), np.array([100.0])
    r = simulate_agg(ctx, Parallelism(), sched, ClosedLoop(100_000, 1.0), isl, osl)
    cap = kv_capacity(
        ctx, Parallelism(), sched, float(sched.max_num_batched_tokens), float(sched.max_num_seqs)
    )
    limit = min(sched.max_num_seqs, math.floor(cap / 1100))
    print(
        f"100k clients: batch limit {sched.max_num_seqs}, KV holds {cap / 1100:.0f} requests; "
        f"peak running {r.peak_running:.0f}, mean running {r.running:.1f}, queued "
        f"{r.queued:,.0f}, TTFT {r.ttft_ms.mean / 1e3:,.0f} s, {r.requests_per_s:.1f} req/s"
    )
    assert r.ok
    assert r.peak_running == limit
    assert r.running >= 0.9 * limit


def test_tpot_percentiles_show_prefill_interference_under_poisson_load() -> None:
    """Under random arrivals a sequence decodes beside a varying number of prompt chunks, so its
    TPOT varies: p99 stands well above p50. A lone client sees no interference: p50 = p99."""
    m = load_model(MODEL)
    ctx = PerfContext.build(m, load_gpu(GPU), load_engine("vllm"))
    sched = scheduler_for(ctx.engine)
    isl, osl = np.array([float(ISL)]), np.array([float(OSL)])
    busy = simulate_agg(ctx, Parallelism(), sched, Poisson(8.0), isl, osl)
    alone = simulate_agg(ctx, Parallelism(), sched, ClosedLoop(1), isl, osl)
    print(f"Poisson 8 req/s: TPOT {busy.tpot_ms}; one client: TPOT {alone.tpot_ms}")
    assert busy.tpot_ms.p99 > 1.15 * busy.tpot_ms.p50
    assert busy.tpot_ms.p90 > busy.tpot_ms.p50
    assert alone.tpot_ms.p99 == pytest.approx(alone.tpot_ms.p50, rel=1e-9)


def test_poisson_run_spans_ten_request_lifetimes() -> None:
    """A Poisson run simulates its floor of requests, or ten lifetimes' worth of arrivals where
    the rate keeps more than a tenth of the floor in flight, never more than the cap."""
    assert poisson_requests(Poisson(1.0), 1_000.0) == POISSON_REQUESTS
    assert poisson_requests(Poisson(100.0), 5_000.0) == 5_000  # 10 x 100/s x 5 s
    assert poisson_requests(Poisson(100.0, requests=9_000), 5_000.0) == 9_000
    assert poisson_requests(Poisson(1e6), 60_000.0) == MAX_REQUESTS


def test_high_poisson_rate_reaches_its_steady_state() -> None:
    """At 30 req/s a request of 300 answer tokens lives about six seconds, so some 175 are in
    flight and 2000 requests would end within two lifetimes of filling: the run must outlast
    that. It completes the offered rate (within the Poisson noise), keeps its output tokens/s
    equal to requests/s x OSL, and holds the batch Little's law gives (rate x the measured time
    in the system)."""
    m = load_model(MODEL)
    ctx = PerfContext.build(m, load_gpu(GPU), load_engine("vllm"))
    sched = scheduler_for(ctx.engine)
    isl, osl = np.array([100.0]), np.array([300.0])
    r = simulate_agg(ctx, Parallelism(), sched, Poisson(30.0), isl, osl)
    lifetime_s = (r.ttft_ms.mean + 299.0 * r.tpot_ms.mean) / 1e3
    print(
        f"30 req/s: {r.simulated_requests} requests, {r.requests_per_s:.2f} req/s, running "
        f"{r.running:.1f}, lifetime {lifetime_s:.2f} s"
    )
    assert r.ok
    assert r.simulated_requests > POISSON_REQUESTS
    assert r.requests_per_s == pytest.approx(30.0, rel=0.05)
    assert r.output_tokens_per_s == pytest.approx(300.0 * r.requests_per_s, rel=1e-9)
    assert r.running == pytest.approx(30.0 * lifetime_s, rel=0.1)


def test_overloaded_poisson_estimate_says_it_does_not_keep_up() -> None:
    """1000 req/s of 2000-token prompts on one 8B worker: the worker completes its capacity, the
    queue grows through the run, and the estimate says so instead of a plain TTFT; a rate the
    worker serves is marked kept up. Tokens/s stay requests/s x OSL either way."""
    over = est(mode="agg", rate_per_s=1000.0)
    fine = est(mode="agg", rate_per_s=2.0)
    assert isinstance(over, ServingEstimate) and isinstance(fine, ServingEstimate)
    assert over.details["offered_requests_per_s"] == 1000.0
    assert over.details["sustained"] is False
    assert over.requests_per_s < 50.0
    assert over.tokens_per_s_per_gpu == pytest.approx(OSL * over.requests_per_s, rel=1e-9)
    assert fine.details["sustained"] is True
    assert fine.requests_per_s == pytest.approx(2.0, rel=0.1)
    assert "sustained" not in agg(8).details  # a closed loop sends only as fast as it is served


def test_synchronised_clients_move_in_waves() -> None:
    """64 clients starting together: their 64 x 2000 prompt tokens queue for the 8192-token
    budget, so the first wave's TTFT reaches many prefill steps (p99) and the run's mean stays
    far above the same clients' when their starts are spread out; later waves keep part of the
    lockstep (their median is above the spread start's too)."""
    m = load_model(MODEL)
    ctx = PerfContext.build(m, load_gpu(GPU), load_engine("vllm"))
    sched = scheduler_for(ctx.engine)
    isl, osl = np.array([float(ISL)]), np.array([float(OSL)])
    sync = simulate_agg(ctx, Parallelism(), sched, ClosedLoop(64), isl, osl)
    spread = simulate_agg(ctx, Parallelism(), sched, ClosedLoop(64, synchronised=False), isl, osl)
    print(f"64 clients: TTFT synchronised {sync.ttft_ms}, spread {spread.ttft_ms}")
    assert sync.ttft_ms.mean > 2 * spread.ttft_ms.mean
    assert sync.ttft_ms.p99 > 5 * sync.ttft_ms.p50
    assert sync.ttft_ms.p50 > spread.ttft_ms.p50


def test_an_overlap_scheduler_makes_a_request_arriving_mid_iteration_wait_one_step() -> None:
    """TensorRT-LLM's and SGLang's overlap schedulers form the next batch while the GPU runs the
    current one: a prompt that arrives while one request decodes joins one decode step later
    than under vLLM 0.12's synchronous scheduler; a prompt reaching an idle worker does not."""
    ctx = PerfContext.build(load_model(MODEL), load_gpu(GPU), load_engine("vllm"))
    sched = scheduler_for(ctx.engine)
    assert not sched.async_scheduling
    assert scheduler_for(load_engine("trtllm")).async_scheduling
    assert scheduler_for(load_engine("sglang")).async_scheduling
    trace = Trace(np.array([0.0, 0.5]), np.array([2000.0, 2000.0]), np.array([400.0, 50.0]))
    runs = {
        on: simulate_agg(
            ctx, Parallelism(), replace(sched, async_scheduling=on), trace, trace.isl, trace.osl
        )
        for on in (False, True)
    }
    sync, overlap = (runs[on].ttft_ms_each for on in (False, True))
    step = est(phase="decode", batch=1, context=2000 + 200).step_ms
    print(f"TTFT each: synchronous {sync.round(2)}, overlap {overlap.round(2)}; step {step:.2f}")
    assert overlap[0] == pytest.approx(sync[0], rel=1e-12)
    assert overlap[1] - sync[1] == pytest.approx(step, rel=0.10)


def test_long_prompts_queue_on_a_small_cache_and_report_fits() -> None:
    """Llama-3.1-70B on TP4 with 16k/2k requests: a handful fit; more users only queue."""
    rows = [
        agg(c, model="llama-3.1-70b", isl=16000, osl=2000, parallelism=Parallelism(tp=4))
        for c in (8, 64)
    ]
    for c, a in zip((8, 64), rows, strict=True):
        print(
            f"70B TP4 16k/2k c={c}: running {a.running_batch:.1f}, queued {a.queued:.1f}, "
            f"TTFT {a.ttft_ms:.0f} ms, {a.tokens_per_s_per_gpu:.0f} tok/s/GPU, fits {a.fits}"
        )
    assert all(a.fits for a in rows)
    assert rows[1].queued > 30
    assert rows[1].ttft_ms > 5 * rows[0].ttft_ms


def test_agg_reports_does_not_fit_only_when_the_weights_do_not() -> None:
    a = agg(4, model="llama-3.1-405b")
    print(f"405B bf16 agg on 1 H100: fits {a.fits}: {a.reason}")
    assert a.fits is False and "weights" in (a.reason or "")


def test_agg_worker_splits_users_over_attention_dp_ranks() -> None:
    """A MoE worker with 2 attention-DP ranks serves 2 x the requests of each rank."""
    m = load_model("qwen3-235b-a22b")
    ctx = PerfContext.build(m, load_gpu("b200"), load_engine("vllm"), "fp8", "fp8")
    sched = scheduler_for(ctx.engine)
    isl, osl = np.array([1000.0]), np.array([100.0])
    one = agg_worker(ctx, Parallelism(tp=4, ep=4, attention_dp=1), ClosedLoop(16), isl, osl, sched)
    two = agg_worker(ctx, Parallelism(tp=4, ep=8, attention_dp=2), ClosedLoop(32), isl, osl, sched)
    print(
        f"Qwen3-235B agg: dp1 c=16 running {one.running:.1f}, {one.requests_per_s:.2f} req/s; "
        f"dp2 c=32 running {two.running:.1f}, {two.requests_per_s:.2f} req/s"
    )
    assert one.ok and two.ok
    assert two.running == pytest.approx(2 * one.running, rel=0.05)
    assert two.requests_per_s > 1.5 * one.requests_per_s


def test_attention_dp_ranks_run_in_lockstep() -> None:
    """One worker of Qwen3-235B on 2 H200s, attention DP 2 (experts TP over both GPUs). Request
    A decodes 100 tokens on rank 0; request B, arriving 200 ms later, brings an 8,000-token
    prompt to rank 1. Every MoE layer is a collective over the two ranks, so while rank 1 runs
    B's prompt rank 0 waits for it: over A's 99 steps its time grows by that step less the
    decode step rank 0 ran meanwhile. Two
    separate single-GPU workers do not wait for each other. The prompt step itself is priced
    with the MoE seeing both ranks' tokens (B's prompt and A's one), not twice B's prompt."""
    m = load_model("qwen3-235b-a22b")
    ctx = PerfContext.build(m, load_gpu("h200-sxm"), load_engine("vllm"), "fp8", "fp8")
    sched = scheduler_for(ctx.engine)
    dp2 = Parallelism(tp=1, attention_dp=2)
    alone = Trace(np.array([0.0]), np.array([100.0]), np.array([100.0]))
    both = Trace(np.array([0.0, 0.2]), np.array([100.0, 8000.0]), np.array([100.0, 2.0]))
    a_alone = simulate_agg(ctx, dp2, sched, alone, alone.isl, alone.osl).tpot_ms_each[0]
    run = simulate_agg(ctx, dp2, sched, both, both.isl, both.osl)
    a_with_b = run.tpot_ms_each[0]
    # B's prompt step on its rank, with rank 0's one decoding token through the shared MoE
    row, scratch = np.zeros(4), np.zeros(4)
    args = ctx.worker_args(1, 1, 1, 2)
    prompt_ms, _ = K.step_ms(*args, 1.0, 8000.0, 0.0, 0.0, 0.0, row, scratch, 8001.0)
    symmetric_ms, _ = K.step_ms(*args, 1.0, 8000.0, 0.0, 0.0, 0.0, row, scratch)
    grow = (a_with_b - a_alone) * 99.0
    print(
        f"A's TPOT {a_alone:.2f} ms alone, {a_with_b:.2f} with B's prompt on the other rank "
        f"(+{grow:.0f} ms over 99 steps; B's prompt step {prompt_ms:.0f} ms, "
        f"{symmetric_ms:.0f} ms if both ranks had a prompt)"
    )
    assert prompt_ms < 0.8 * symmetric_ms
    assert grow == pytest.approx(prompt_ms - a_alone, rel=0.02)
    assert run.ttft_ms_each[1] < REQUEST_OVERHEAD_MS["agg"] + 1.2 * prompt_ms
    # two separate workers (attention DP 1 each, here one GPU each) do not wait for each other
    dp1 = Parallelism(tp=1)
    ctx1 = PerfContext.build(load_model("qwen3-32b"), load_gpu("h200-sxm"), ctx.engine, "fp8")
    solo = simulate_agg(ctx1, dp1, sched, alone, alone.isl, alone.osl, workers=2)
    pair = simulate_agg(ctx1, dp1, sched, both, both.isl, both.osl, workers=2)
    assert pair.tpot_ms_each[0] == pytest.approx(solo.tpot_ms_each[0], rel=1e-9)


def test_engine_args_override_the_scheduler_and_name_bad_keys() -> None:
    """A smaller token budget chunks prompts finer: the lone client's TTFT takes more steps."""
    wide = agg(1, engine_args=(("max_num_batched_tokens", 8192),))
    narrow = agg(1, engine_args=(("max_num_batched_tokens", 256),))
    print(f"TTFT with budget 8192: {wide.ttft_ms:.1f} ms, 256: {narrow.ttft_ms:.1f} ms")
    assert narrow.ttft_ms - OVERHEAD > 1.2 * (wide.ttft_ms - OVERHEAD)
    assert narrow.details["scheduler"]["max_num_batched_tokens"] == 256
    for args, field in (
        ((("max_num_seqs", 0),), "engine_args.max_num_seqs"),
        ((("kv_admission", "lru"),), "engine_args.kv_admission"),
        ((("block_size", 16),), "engine_args.block_size"),
        ((("gpu_memory_utilization", 1.5),), "engine_args.gpu_memory_utilization"),
        ((("kv_cache_dtype", "fp4"),), "engine_args.kv_cache_dtype"),
    ):
        with pytest.raises(InvalidInputError) as e:
            agg(1, engine_args=args)
        print(f"{args}: {e.value}")
        assert e.value.field == field


def test_the_engines_memory_knob_and_memory_fraction_are_one_setting() -> None:
    """vLLM's gpu_memory_utilization in engine_args sizes the KV cache exactly as memory_fraction
    does (one memory model for the phase estimate and the engine loop); both given must agree, and
    another engine's knob is refused."""

    def cap(**kw) -> float:
        r = est(phase="decode", batch=8, **kw)
        assert isinstance(r, PhaseEstimate)
        return r.kv_capacity_tokens

    by_knob = cap(engine_args=(("gpu_memory_utilization", "0.6"),))
    by_field = cap(memory_fraction=0.6)
    default = cap()
    print(f"KV tokens at 0.6: knob {by_knob:,.0f}, field {by_field:,.0f}; default {default:,.0f}")
    assert by_knob == by_field < default
    assert cap(memory_fraction=0.6, engine_args=(("gpu_memory_utilization", 0.6),)) == by_field
    low = agg(64, engine_args=(("gpu_memory_utilization", "0.6"),))
    assert low == agg(64, memory_fraction=0.6)
    for kw, field in (
        (
            dict(memory_fraction=0.8, engine_args=(("gpu_memory_utilization", 0.6),)),
            "engine_args.gpu_memory_utilization",
        ),
        (dict(engine_args=(("mem_fraction_static", 0.8),)), "engine_args.mem_fraction_static"),
    ):
        with pytest.raises(InvalidInputError) as e:
            agg(1, **kw)
        print(f"{kw}: {e.value}")
        assert e.value.field == field
        assert field != "engine_args.gpu_memory_utilization" or "memory_fraction" in str(e.value)
    sglang = cap(engine="sglang", engine_args=(("mem_fraction_static", 0.6),))
    assert sglang == cap(engine="sglang", memory_fraction=0.6)


def test_estimate_says_which_load_model_its_numbers_mean() -> None:
    closed = agg(8)
    poisson = est(mode="agg", rate_per_s=2.0)
    assert isinstance(poisson, ServingEstimate)
    print(f"closed: {closed.details['load']}; poisson: {poisson.details['load']}")
    assert closed.details["load"].startswith("closed") and closed.details["headline"] == "mean"
    assert poisson.details["load"].startswith("poisson") and poisson.details["headline"] == "p50"
    with pytest.raises(InvalidInputError) as e:
        est(mode="agg", concurrency=4, rate_per_s=2.0)
    assert e.value.field == "rate_per_s"


# ------------------------------------------------------------------------------------------------
# Disaggregated

D_MODEL, D_ISL, D_OSL = "llama-3.1-70b", 4000, 500
P_PAR, P_BATCH = Parallelism(tp=4), 2
D_PAR, D_BATCH = Parallelism(tp=4), 64


def disagg(x: int, y: int) -> ServingEstimate:
    r = estimate(
        EstimateRequest(
            model=D_MODEL,
            gpu=GPU,
            isl=D_ISL,
            osl=D_OSL,
            mode="disagg",
            prefill=PoolSpec(P_PAR, workers=x, batch=P_BATCH),
            decode=PoolSpec(D_PAR, workers=y, batch=D_BATCH),
        )
    )
    assert isinstance(r, ServingEstimate)
    return r


def test_disagg_refuses_an_engine_wide_batch_limit() -> None:
    """A disaggregated deployment's batch limits are its pools' batches: an engine-wide
    max_num_seqs would be overridden by them, so it is refused, naming both."""
    with pytest.raises(InvalidInputError) as e:
        estimate(
            EstimateRequest(
                model=D_MODEL, gpu=GPU, isl=D_ISL, osl=D_OSL, mode="disagg",
                prefill=PoolSpec(P_PAR, workers=1, batch=P_BATCH),
                decode=PoolSpec(D_PAR, workers=1, batch=D_BATCH), concurrency=16,
                engine_args=(("max_num_seqs", 4),),
            )
        )  # fmt: skip
    assert e.value.field == "engine_args.max_num_seqs"
    assert "decode.batch" in e.value.reason


def worker_rates() -> tuple[float, float, float, float]:
    """(prefill prompts/s per worker, decode requests/s per worker, prefill ms, TPOT ms)."""
    ctx = PerfContext.build(load_model(D_MODEL), load_gpu(GPU), load_engine("vllm"))
    pm = prefill_worker(ctx, P_PAR, P_BATCH, D_ISL)
    dm = decode_worker(ctx, D_PAR, D_BATCH, D_ISL + D_OSL // 2)
    # a decode worker turns over batch sequences every (osl - 1) steps (token 1 is prefill's)
    r_d = D_BATCH / (dm.step_ms * (D_OSL - 1)) * 1e3
    return pm.rate_per_s, r_d, pm.step_ms, dm.step_ms


@pytest.mark.parametrize(("x", "y"), [(1, 1), (1, 3), (3, 1), (2, 2), (4, 1)])
def test_disagg_delivers_the_smaller_of_the_pools_rates(x: int, y: int) -> None:
    r_p, r_d, _, _ = worker_rates()
    d = disagg(x, y)
    want = min(x * r_p, y * r_d)
    bottleneck = "prefill" if x * r_p < y * r_d else "decode"
    gpus = (x + y) * 4
    print(
        f"{x}P{y}D: {d.requests_per_s:.3f} req/s = min({x} x {r_p:.3f}, {y} x {r_d:.3f}) "
        f"= {want:.3f}; bottleneck {d.details['bottleneck']} (want {bottleneck}); "
        f"{d.tokens_per_s_per_gpu:.1f} tok/s/GPU on {d.gpus} GPUs; TTFT {d.ttft_ms:.0f} ms"
    )
    assert d.fits
    assert d.requests_per_s == pytest.approx(want, rel=1e-9)
    assert d.details["bottleneck"] == bottleneck
    assert d.gpus == gpus
    assert d.tokens_per_s_per_gpu == pytest.approx(want * D_OSL / gpus, rel=1e-9)


def test_decode_bound_disagg_keeps_the_full_batch_and_queues_prompts_lightly() -> None:
    """3P1D: the prefill pool runs below capacity (utilisation = rate / capacity), the decode
    worker holds its full batch at the decode step's TPOT, and TTFT is the prefill step plus a
    queueing wait plus the KV transfer tail and the request overhead: at utilisation 0.39 most
    prompts find the pool idle (the median waits nothing), the slowest tenth wait."""
    r_p, r_d, prefill_ms, tpot_ms = worker_rates()
    d = disagg(3, 1)
    rho = r_d / (3 * r_p)
    print(
        f"3P1D: utilisation {d.details['prefill_utilisation']:.3f} (want {rho:.3f}), TPOT "
        f"{d.tpot_ms:.2f} ms (decode step {tpot_ms:.2f}), TTFT {d.ttft_ms:.1f} ms = prefill "
        f"{prefill_ms:.1f} + wait + KV {d.kv_transfer_ms:.3f} ms; "
        f"p90 {d.details['ttft_ms']['p90']:.1f} ms"
    )
    assert d.details["prefill_utilisation"] == pytest.approx(rho, rel=1e-9)
    assert d.tpot_ms == pytest.approx(tpot_ms, rel=1e-9)
    assert d.running_batch == pytest.approx(D_BATCH)
    assert 0.1 < rho < 0.5
    overhead = REQUEST_OVERHEAD_MS["disagg"]
    assert d.details["request_overhead_ms"] == overhead
    assert d.ttft_ms == pytest.approx(prefill_ms + d.kv_transfer_ms + overhead, rel=1e-9)
    assert d.details["ttft_ms"]["p50"] == d.ttft_ms
    assert d.details["ttft_ms"]["p90"] > d.ttft_ms + 1.0
    assert d.details["ttft_ms"]["p99"] > d.details["ttft_ms"]["p90"]


def test_prefill_bound_disagg_runs_a_smaller_decode_batch_and_no_client_queue() -> None:
    """1P3D: three decode workers want more prompts than one prefill worker makes; they run
    below their batch (so TPOT falls below the full-batch step). The decode batch is a limit per
    worker, not a client count: without a stated load TTFT is the prefill step and the KV tail
    (it once read 19.8 s here from treating 3 x 64 sequences as waiting clients)."""
    _, _, prefill_ms, tpot_ms = worker_rates()
    d = disagg(1, 3)
    print(
        f"1P3D: running {d.running_batch:.1f} of {3 * D_BATCH}, TPOT {d.tpot_ms:.2f} ms "
        f"(full batch {tpot_ms:.2f}), TTFT {d.ttft_ms:.0f} ms (prefill step {prefill_ms:.0f})"
    )
    assert d.details["bottleneck"] == "prefill"
    assert d.tpot_ms < tpot_ms
    assert d.ttft_ms == pytest.approx(
        prefill_ms + (d.kv_transfer_ms or 0.0) + REQUEST_OVERHEAD_MS["disagg"], rel=1e-9
    )


def sim_disagg(clients: int, decode_batch: int, isl: int = D_ISL, osl: int = D_OSL, y: int = 3):
    ctx = PerfContext.build(load_model(D_MODEL), load_gpu(GPU), load_engine("vllm"))
    sched = scheduler_for(ctx.engine)
    prefill = Pool(ctx, P_PAR, 1, replace(sched, max_num_seqs=P_BATCH))
    decode = Pool(ctx, D_PAR, y, replace(sched, max_num_seqs=decode_batch))
    return simulate_disagg(
        prefill,
        decode,
        ClosedLoop(clients),
        np.array([float(isl)]),
        np.array([float(osl)]),
        load_gpu(GPU).scaleout_bytes_per_s,
    )


def test_disagg_decode_batch_and_client_concurrency_are_different_knobs() -> None:
    """1P3D under 48 benchmark clients: raising the decode workers' batch limit from 64 to 256
    changes nothing (the clients, not the limit, set how many requests are in flight), while
    more clients queue longer for the one prefill worker at the same request rate."""
    a, b = sim_disagg(48, 64), sim_disagg(48, 256)
    more = sim_disagg(96, 64)
    for name, r in (
        ("48 clients, batch 64", a),
        ("48 clients, batch 256", b),
        ("96 clients", more),
    ):
        print(
            f"{name}: TTFT {r.ttft_ms.mean:.0f} ms, TPOT {r.tpot_ms.mean:.2f} ms, "
            f"{r.requests_per_s:.2f} req/s, running per decode worker {r.running:.1f}"
        )
    assert a.ok and b.ok and more.ok
    assert b.ttft_ms.mean == pytest.approx(a.ttft_ms.mean, rel=1e-6)
    assert b.requests_per_s == pytest.approx(a.requests_per_s, rel=1e-6)
    assert a.running <= 48 / 3 + 1e-9
    assert more.ttft_ms.mean > 1.5 * a.ttft_ms.mean
    assert more.requests_per_s == pytest.approx(a.requests_per_s, rel=0.1)


def test_decode_kv_capacity_bounds_a_disagg_workers_batch() -> None:
    """32k-token prompts on TP4 70B decode workers: a batch limit of 256 is far beyond what the
    KV cache holds, so the running batch stops at the cache, not at the limit."""
    ctx = PerfContext.build(load_model(D_MODEL), load_gpu(GPU), load_engine("trtllm"))
    sched = replace(scheduler_for(ctx.engine), max_num_seqs=256)
    cap = kv_capacity(ctx, D_PAR, sched, 256.0, 256.0)
    holds = math.floor(cap / (32000 + 200))
    prefill = Pool(ctx, P_PAR, 2, replace(sched, max_num_seqs=1, max_num_batched_tokens=32000))
    decode = Pool(ctx, D_PAR, 1, sched)
    r = simulate_disagg(
        prefill, decode, ClosedLoop(64), np.array([32000.0]), np.array([200.0]),
        load_gpu(GPU).scaleout_bytes_per_s,
    )  # fmt: skip
    print(f"decode KV holds {holds} requests of 32.2k tokens; peak running {r.peak_running:.0f}")
    assert r.ok
    assert r.peak_running <= holds + 2  # the prefill workers' own batch of 1 each
    assert holds < 64


def test_kv_transfer_is_charged_to_ttft_and_its_bandwidth_follows_the_study() -> None:
    """Per request the KV cache is isl x 2 (K, V) x 8 KV heads x 128 x 80 layers x 2 bytes
    = 1.31 GB; each of the 4 prefill GPUs (TP4 <= 8 KV heads: all hold distinct shards) sends a
    quarter of it at the rate its worker serves. The transfer overlaps the prefill except its
    tail (at least one layer's share), which TTFT pays on top of a 50 us set-up."""
    r_p, r_d, _, _ = worker_rates()
    d = disagg(3, 1)
    per_request = D_ISL * 2 * 8 * 128 * 80 * 2.0
    per_worker_rate = min(3 * r_p, r_d) / 3
    egress = per_request * per_worker_rate / 4 / 1e9
    # 2 prompts per batch over 4 senders on the scale-out link (16 GPUs > one NVLink domain)
    one_layer_ms = per_request * P_BATCH / (4 * 50e9) * 1e3 / 80
    print(
        f"3P1D KV: {per_request / 1e9:.3f} GB/request, egress {d.kv_transfer_gb_per_s_per_gpu:.4f} "
        f"GB/s/GPU (want {egress:.4f}), tail {d.kv_transfer_ms:.4f} ms (>= one layer "
        f"{one_layer_ms:.4f} + {TRANSFER_LATENCY_MS} ms), "
        f"link {d.details['link_gb_per_s']:.0f} GB/s"
    )
    assert d.kv_transfer_gb_per_s_per_gpu == pytest.approx(egress, rel=1e-9)
    assert d.kv_transfer_ms > TRANSFER_LATENCY_MS
    assert d.kv_transfer_ms >= one_layer_ms + TRANSFER_LATENCY_MS - 1e-12
    assert d.details["kv_link_exceeded"] is False


def test_disagg_pools_inside_one_nvlink_domain_transfer_over_nvlink() -> None:
    """1P1D of TP4 workers (8 GPUs) fits one H100 NVLink domain: 450 GB/s instead of 50."""
    d = disagg(1, 1)
    print(f"1P1D: link {d.details['link_gb_per_s']:.0f} GB/s, KV tail {d.kv_transfer_ms:.4f} ms")
    assert d.details["link_gb_per_s"] == pytest.approx(450.0)


def test_disagg_with_a_pool_that_does_not_fit_reports_it() -> None:
    r = estimate(
        EstimateRequest(
            model=D_MODEL,
            gpu=GPU,
            isl=D_ISL,
            osl=D_OSL,
            mode="disagg",
            prefill=PoolSpec(Parallelism(tp=1), workers=1, batch=1),
            decode=PoolSpec(D_PAR, workers=1, batch=D_BATCH),
            precision=Precision("bf16"),
        )
    )
    print(f"70B prefill on 1 H100: fits {r.fits}: {r.reason}")
    assert isinstance(r, ServingEstimate)
    assert r.fits is False and r.reason is not None
    assert r.reason.startswith("prefill:") and "weights" in r.reason


def test_a_replayed_mix_keeps_its_weights_and_interleaves_its_classes() -> None:
    from pdplanner.planner.serving.mix import mix_cycle
    from pdplanner.planner.types import Workload

    isl, osl = mix_cycle([Workload(100, 10, 0.3), Workload(200, 20, 0.7)])
    share = float((isl == 100).mean())
    longest_run = max(len(run) for run in "".join("s" if v == 100 else "l" for v in isl).split("s"))
    print(
        f"64-request cycle: short share {share:.3f} (weight 0.3), longest run of the long class "
        f"{longest_run}"
    )
    assert len(isl) == 64 and abs(share - 0.3) <= 1 / 64
    assert np.all((osl == 10) == (isl == 100))
    assert longest_run <= 3  # interleaved, not one block per class
    rare, _ = mix_cycle([Workload(100, 10, 0.001), Workload(200, 20, 0.999)])
    assert (rare == 100).sum() == 1  # every class appears at least once


def test_a_prompt_of_hundreds_of_chunks_is_simulated_to_the_end() -> None:
    """One client, a 60k-token prompt in 256-token chunks (235 iterations a request) and a
    two-token answer: every request is TTFT plus one decode step and the run ends."""
    ctx = PerfContext.build(load_model("llama-3.1-8b"), load_gpu("h100-sxm"), load_engine("vllm"))
    sched = replace(scheduler_for(ctx.engine), max_num_batched_tokens=256)
    r = simulate_agg(
        ctx, Parallelism(), sched, ClosedLoop(1, 8.0), np.array([60000.0]), np.array([2.0])
    )
    cycle_ms = r.ttft_ms.mean + r.tpot_ms.mean
    print(
        f"TTFT {r.ttft_ms.mean:.1f} ms, TPOT {r.tpot_ms.mean:.2f} ms, {r.requests_per_s:.4f} req/s"
    )
    assert r.ok and r.measured_requests == 8
    assert r.requests_per_s == pytest.approx(1e3 / cycle_ms, rel=1e-6)


def test_plan_says_which_load_model_it_judged_under_and_takes_engine_args() -> None:
    from pdplanner.planner.search import plan
    from pdplanner.planner.types import PlanRequest, Slo, Workload

    req = PlanRequest(
        model=MODEL,
        gpu=GPU,
        gpus=2,
        traffic=(Workload(ISL, OSL),),
        slo=Slo(ttft_ms=2000.0, tpot_ms=50.0),
    )
    r = plan(req)
    print(f"plan load: {r.load}")
    assert r.load.startswith("poisson")
    assert r.to_dict()["load"] == r.load
    with pytest.raises(InvalidInputError) as e:
        plan(replace(req, engine_args=(("max_num_seqs", 0),)))
    assert e.value.field == "engine_args.max_num_seqs"
