"""Serving metrics: the aggregated worker's event simulation and the xPyD disaggregated deployment.

The aggregated worker (``planner.serving.aggregated.simulate_agg``) must reduce to the phase
steps when alone, saturate as users are added, and queue when its KV cache is full. The
disaggregated deployment must deliver ``min(x * rate_p, y * rate_d)`` from the prefill and decode
workers' own figures, name its bottleneck, and charge the KV transfer to the time to first token.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from planner.catalog import load_engine, load_gpu, load_model
from planner.estimate import estimate
from planner.perf.memory import kv_capacity_tokens
from planner.perf.params import PerfContext
from planner.serving.kvtransfer import TRANSFER_LATENCY_MS
from planner.serving.workers import agg_worker, decode_worker, prefill_worker
from planner.types import (
    EstimateRequest,
    Parallelism,
    PhaseEstimate,
    PoolSpec,
    Precision,
    ServingEstimate,
)

MODEL, GPU, ISL, OSL = "llama-3.1-8b", "h100-sxm", 2000, 200


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
    """Alone on the worker, a request's TTFT is one prefill step of its prompt and its TPOT one
    decode step at batch 1 (at the mean context isl + osl/2): within 10 %."""
    pre = est(phase="prefill", batch=1)
    dec = est(phase="decode", batch=1)
    a = agg(1)
    print(
        f"agg c=1: TTFT {a.ttft_ms:.2f} ms vs prefill step {pre.step_ms:.2f} ms; "
        f"TPOT {a.tpot_ms:.3f} ms vs decode step {dec.step_ms:.3f} ms; "
        f"running {a.running_batch:.2f}"
    )
    assert a.ttft_ms == pytest.approx(pre.step_ms, rel=0.10)
    assert a.tpot_ms == pytest.approx(dec.step_ms, rel=0.10)
    assert a.running_batch == pytest.approx(1.0, rel=0.01)
    assert a.queued == 0.0
    # closed loop: one request every TTFT + (osl - 1) TPOT
    cycle_s = (a.ttft_ms + (OSL - 1) * a.tpot_ms) / 1e3
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
    ~400k tokens, ~180 requests of 2200 tokens. With 512 users the running batch stops there,
    the others wait for admission, and the time to first token grows by the wait. The worker
    still fits (fits False is only for weights plus one request)."""
    m = load_model(MODEL)
    ctx = PerfContext.build(m, load_gpu(GPU), load_engine("vllm"))
    chunk = load_engine("vllm").default_chunk_tokens
    below, above = agg(128), agg(512)
    cap = kv_capacity_tokens(ctx.mv, ctx.hv, 1.0, 1.0, 1.0, 1.0, float(chunk), 512.0)
    max_running = cap / (ISL + OSL)
    print(
        f"KV capacity {cap:,.0f} tokens = {max_running:.1f} requests of {ISL + OSL} tokens; "
        f"c=128: running {below.running_batch:.1f}, queued {below.queued:.1f}, "
        f"TTFT {below.ttft_ms:.0f} ms; c=512: running {above.running_batch:.1f}, "
        f"queued {above.queued:.1f}, TTFT {above.ttft_ms:.0f} ms"
    )
    assert below.queued == 0.0
    assert above.fits
    assert above.queued > 0.0
    assert above.running_batch <= max_running + 1
    assert above.running_batch >= 0.9 * max_running
    assert above.running_batch + above.queued == pytest.approx(512, rel=0.02)
    assert above.ttft_ms > 10 * below.ttft_ms


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
    assert rows[0].queued == 0.0 and rows[1].queued > 30
    assert rows[1].ttft_ms > 20 * rows[0].ttft_ms


def test_agg_reports_does_not_fit_only_when_the_weights_do_not() -> None:
    a = agg(4, model="llama-3.1-405b")
    print(f"405B bf16 agg on 1 H100: fits {a.fits}: {a.reason}")
    assert a.fits is False and "weights" in (a.reason or "")


def test_agg_worker_splits_users_over_attention_dp_ranks() -> None:
    """A MoE worker with 2 attention-DP ranks serves 2 x the requests of each rank."""
    m = load_model("qwen3-235b-a22b")
    ctx = PerfContext.build(m, load_gpu("b200"), load_engine("vllm"), "fp8", "fp8")
    isl, osl = np.array([1000]), np.array([100])
    one = agg_worker(ctx, Parallelism(tp=4, ep=4, attention_dp=1), 16, isl, osl, 8192)
    two = agg_worker(ctx, Parallelism(tp=4, ep=8, attention_dp=2), 32, isl, osl, 8192)
    print(
        f"Qwen3-235B agg: dp1 c=16 running {one.running:.1f}, {one.requests_per_s:.2f} req/s; "
        f"dp2 c=32 running {two.running:.1f}, {two.requests_per_s:.2f} req/s"
    )
    assert one.ok and two.ok
    assert one.running == pytest.approx(16, rel=0.02)
    assert two.running == pytest.approx(32, rel=0.02)


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
    queueing wait plus the KV transfer tail: at utilisation 0.39 most prompts find the pool idle
    (the median waits nothing), the slowest tenth wait."""
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
    assert d.ttft_ms == pytest.approx(prefill_ms + d.kv_transfer_ms, rel=1e-9)
    assert d.details["ttft_ms"]["p50"] == d.ttft_ms
    assert d.details["ttft_ms"]["p90"] > d.ttft_ms + 1.0
    assert d.details["ttft_ms"]["p99"] > d.details["ttft_ms"]["p90"]


def test_prefill_bound_disagg_runs_a_smaller_decode_batch_and_long_ttft() -> None:
    """1P3D: three decode workers want more prompts than one prefill worker makes; they run
    below their batch (so TPOT falls below the full-batch step) and requests wait for prefill."""
    _, _, prefill_ms, tpot_ms = worker_rates()
    d = disagg(1, 3)
    print(
        f"1P3D: running {d.running_batch:.1f} of {3 * D_BATCH}, TPOT {d.tpot_ms:.2f} ms "
        f"(full batch {tpot_ms:.2f}), TTFT {d.ttft_ms:.0f} ms (prefill step {prefill_ms:.0f})"
    )
    assert d.details["bottleneck"] == "prefill"
    assert d.details["prefill_utilisation"] == 1.0
    assert d.tpot_ms < tpot_ms
    assert d.ttft_ms > 10 * prefill_ms


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
    from planner.serving.mix import mix_cycle
    from planner.types import Workload

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


def test_a_prompt_of_hundreds_of_chunks_is_simulated_to_the_end_of_the_window() -> None:
    """One client, a 60k-token prompt in 256-token chunks (235 events a request) and a two-token
    answer: every request is TTFT plus one decode step, so the token rate must be exactly
    2 / (TTFT + TPOT); an event limit that cut the run short used to lose 1.6%."""
    from planner.catalog import load_engine, load_gpu, load_model
    from planner.perf.params import PerfContext
    from planner.serving.aggregated import (
        A_TOKENS_PER_S,
        A_TPOT_MEAN,
        A_TTFT_MEAN,
        AGG_SLOTS,
        simulate_agg,
    )

    ctx = PerfContext.build(load_model("llama-3.1-8b"), load_gpu("h100-sxm"), load_engine("vllm"))
    c = ctx.cal
    out = np.zeros(AGG_SLOTS)
    simulate_agg(
        ctx.mv,
        ctx.hv,
        c.gemm,
        c.attn_prefill,
        c.attn_decode,
        1.0,
        1.0,
        1.0,
        1.0,
        1,
        np.array([60000.0]),
        np.array([2.0]),
        0.0,
        256.0,
        1e12,
        1024,
        9,
        64,
        out,
    )
    expected = 2e3 / (out[A_TTFT_MEAN] + out[A_TPOT_MEAN])
    print(f"tokens/s {out[A_TOKENS_PER_S]:.5f}, expected {expected:.5f}")
    assert out[A_TOKENS_PER_S] == pytest.approx(expected, rel=1e-6)
