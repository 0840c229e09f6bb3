"""The step model against first principles (issue 2, "sanity tests from first principles").

Each test works out what physics says a step must cost (bytes over bandwidth, FLOPs over a peak,
elements times bytes) from the catalog's datasheet figures, and checks that the op-level model of
``pdplanner.planner.estimate`` lands there. The numbers compared are printed (run with ``-s``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pdplanner.planner.catalog import load_gpu, load_model
from pdplanner.planner.estimate import estimate
from pdplanner.planner.perf.calibration import read_tables
from pdplanner.planner.perf.kernels import expected_distinct
from pdplanner.planner.perf.params import QUANTIZED_GEMM_EFFICIENCY
from pdplanner.planner.types import (
    DEFAULT_ENGINE,
    EstimateRequest,
    Parallelism,
    PhaseEstimate,
    Precision,
)

GB = 1e9


def phase(
    model: str,
    gpu: str,
    phase_: str,
    batch: int,
    *,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    isl: int = 1024,
    osl: int = 128,
    context: int | None = None,
    dtype: str = "bf16",
    kv_dtype: str = "bf16",
    engine: str = DEFAULT_ENGINE,
    attention_dp: int = 1,
) -> PhaseEstimate:
    r = estimate(
        EstimateRequest(
            engine=engine,
            model=model,
            gpu=gpu,
            isl=isl,
            osl=osl,
            phase=phase_,
            batch=batch,
            context=context,
            parallelism=Parallelism(tp=tp, pp=pp, ep=ep, attention_dp=attention_dp),
            precision=Precision(dtype, kv_dtype),
        )
    )
    assert isinstance(r, PhaseEstimate)
    return r


def test_llama_8b_decode_at_batch_1_is_bound_by_reading_the_weights() -> None:
    """One token through Llama-3.1-8B reads all 16 GB of bf16 weights once. The step can be no
    faster than that at the datasheet bandwidth (3.35 TB/s), and should not be much slower than
    that at the bandwidth an H100 actually sustains (the calibration's measured copy bandwidth,
    about 3.0 TB/s): within 0.9x..1.6x of it. The GEMMs (the weight reads) dominate the layer."""
    m, gpu = load_model("llama-3.1-8b"), load_gpu("h100-sxm")
    r = phase("llama-3.1-8b", "h100-sxm", "decode", 1)
    weight_bytes = m.total_params * 2.0
    datasheet_ms = weight_bytes / gpu.hbm_bytes_per_s * 1e3
    copy_bytes_per_s = float(read_tables("h100-sxm").meta["copy_GBps_rw"]) * 1e9
    achievable_ms = weight_bytes / copy_bytes_per_s * 1e3
    layer = r.per_layer_ms
    layer_total = layer.gemm + layer.attention + layer.communication + layer.other
    gemm_share = layer.gemm / layer_total
    print(
        f"8B decode b=1: step {r.step_ms:.2f} ms; weights {weight_bytes / GB:.2f} GB read in "
        f"{datasheet_ms:.2f} ms at {gpu.hbm_bytes_per_s / 1e12:.2f} TB/s (ratio "
        f"{r.step_ms / datasheet_ms:.2f}), {achievable_ms:.2f} ms at measured "
        f"{copy_bytes_per_s / 1e12:.2f} TB/s (ratio {r.step_ms / achievable_ms:.2f}); "
        f"GEMM share of a layer {gemm_share:.0%}"
    )
    assert r.fits
    assert r.step_ms >= datasheet_ms  # nothing beats the datasheet bandwidth
    assert 0.9 <= r.step_ms / achievable_ms <= 1.6
    assert gemm_share >= 0.85
    assert layer.communication == 0.0  # one GPU


def test_fp8_weights_cut_decode_gemm_time() -> None:
    """Decode at batch 1 is a weight read: fp8 weights (half the bytes of bf16) cut the GEMM time
    to 0.45..0.8 of bf16 (not all the way to half: small GEMMs keep their fixed latencies)."""
    bf16 = phase("llama-3.1-70b", "h100-sxm", "decode", 1, tp=8)
    fp8 = phase("llama-3.1-70b", "h100-sxm", "decode", 1, tp=8, dtype="fp8")
    ratio = fp8.per_layer_ms.gemm / bf16.per_layer_ms.gemm
    print(
        f"70B TP8 decode b=1 GEMM per layer: bf16 {bf16.per_layer_ms.gemm * 1e3:.1f} us, "
        f"fp8 {fp8.per_layer_ms.gemm * 1e3:.1f} us (ratio {ratio:.2f})"
    )
    assert 0.45 <= ratio <= 0.8


@pytest.mark.parametrize("model", ["llama-3.1-8b", "llama-3.1-70b"])
def test_doubling_tp_halves_per_gpu_gemm_time_and_adds_all_reduce(model: str) -> None:
    """A large prefill (4 x 8192 tokens) is compute bound: each doubling of TP halves every GPU's
    share of the GEMM FLOPs (ratio 0.4..0.65) and adds two all-reduces per layer."""
    prev = None
    for tp in (1, 2, 4, 8):
        r = phase(model, "h100-sxm", "prefill", 4, tp=tp, isl=8192)
        layer = r.per_layer_ms
        line = (
            f"{model} prefill 4x8192 TP{tp}: GEMM {layer.gemm:.2f} ms/layer, "
            f"communication {layer.communication:.2f} ms/layer"
        )
        if prev is None:
            assert layer.communication == 0.0
        else:
            ratio = layer.gemm / prev.gemm
            line += f", GEMM ratio to TP{tp // 2} {ratio:.3f}"
            assert 0.4 <= ratio <= 0.65
            assert layer.communication > 0.0
        print(line)
        prev = layer


def test_all_reduce_time_follows_the_ring_formula() -> None:
    """At TP2 on NVLink a ring all-reduce moves 2 (g-1)/g = 1x the activation per GPU: two per
    layer of 32768 tokens x 8192 x 2 bytes = 537 MB at 450 GB/s, about 1.2 ms each."""
    r = phase("llama-3.1-70b", "h100-sxm", "prefill", 4, tp=2, isl=8192)
    act = 4 * 8192 * 8192 * 2.0
    wire_ms = 2 * act / 450e9 * 1e3
    print(
        f"70B TP2 prefill: communication {r.per_layer_ms.communication:.3f} ms/layer, "
        f"bytes over NVLink {wire_ms:.3f} ms"
    )
    assert wire_ms <= r.per_layer_ms.communication <= wire_ms * 1.02


@pytest.mark.parametrize(
    ("model", "gpu", "tp", "kv_dtype", "bytes_per_token"),
    [
        # 2 (K, V) x 8 KV heads x 128 dims x 32 layers x 2 bytes
        ("llama-3.1-8b", "h100-sxm", 1, "bf16", 2 * 8 * 128 * 32 * 2),
        # TP2 splits the 8 KV heads: 4 per GPU, 80 layers, fp8
        ("llama-3.1-70b", "h100-sxm", 2, "fp8", 2 * 4 * 128 * 80 * 1),
        # MLA caches one latent of 512 + 64 rope dims per layer, replicated on every TP rank
        ("deepseek-v3", "gb200-nvl72", 8, "fp8", (512 + 64) * 61 * 1),
    ],
)
def test_kv_memory_grows_linearly_with_context(
    model: str, gpu: str, tp: int, kv_dtype: str, bytes_per_token: int
) -> None:
    batch, step = 16, 4000
    mem = [
        phase(
            model,
            gpu,
            "decode",
            batch,
            tp=tp,
            ep=tp if "deepseek" in model else 1,
            context=step * k,
            dtype="fp8" if "deepseek" in model else "bf16",
            kv_dtype=kv_dtype,
        ).memory_gb_per_gpu
        for k in (1, 2, 3)
    ]
    d1, d2 = mem[1] - mem[0], mem[2] - mem[1]
    want = batch * step * bytes_per_token / GB
    print(
        f"{model} TP{tp} kv {kv_dtype}: memory at {step}/{2 * step}/{3 * step} tokens "
        f"{mem[0]:.3f}/{mem[1]:.3f}/{mem[2]:.3f} GB; steps {d1:.4f}, {d2:.4f} GB; "
        f"{batch} x {step} x {bytes_per_token} B = {want:.4f} GB"
    )
    assert d1 == pytest.approx(d2, rel=1e-9)
    assert d1 == pytest.approx(want, rel=1e-9)


def test_expected_distinct_experts_runs_from_top_k_to_all_experts() -> None:
    """One token hits exactly its top-k experts; many tokens hit every expert; in between the
    expectation matches a simulation of tokens each routed to k distinct random experts."""
    rng = np.random.default_rng(0)
    for name in ("qwen3-235b-a22b", "mixtral-8x7b", "deepseek-v3"):
        m = load_model(name)
        e, k = float(m.num_experts), float(m.experts_per_token)
        one, many = expected_distinct(e, k, 1.0), expected_distinct(e, k, 4096.0)
        sims = []
        for tokens in (2, 8, 32):
            hits = [
                len(
                    {
                        int(x)
                        for _ in range(tokens)
                        for x in rng.choice(m.num_experts, m.experts_per_token, replace=False)
                    }
                )
                for _ in range(400)
            ]
            sims.append((tokens, expected_distinct(e, k, float(tokens)), float(np.mean(hits))))
        print(
            f"{name}: {k:g} of {e:g} experts; 1 token -> {one:.3f}, 4096 tokens -> {many:.3f}; "
            + ", ".join(f"{t} tokens {f:.2f} (simulated {s:.2f})" for t, f, s in sims)
        )
        assert one == pytest.approx(k, rel=1e-12)
        assert many == pytest.approx(e, rel=1e-6)
        assert expected_distinct(e, k, 0.0) == 0.0
        for _, formula, simulated in sims:
            assert formula == pytest.approx(simulated, rel=0.03)


@pytest.mark.parametrize(
    ("model", "gpu", "tp", "dtype"),
    [
        ("mixtral-8x7b", "h100-sxm", 2, "bf16"),
        ("qwen3-235b-a22b", "b200", 8, "fp8"),
    ],
)
def test_moe_decode_time_grows_with_the_distinct_experts_hit(
    model: str, gpu: str, tp: int, dtype: str
) -> None:
    """At decode a MoE layer streams the weights of every expert some token routes to: batch
    1 -> 8 -> 64 hits more distinct experts, so the GEMM time rises, unlike a dense model whose
    weights are read once whatever the batch (Llama-3.1-8B: within a few percent)."""
    m = load_model(model)
    rows = []
    for b in (1, 8, 64):
        r = phase(model, gpu, "decode", b, tp=tp, dtype=dtype)
        distinct = expected_distinct(float(m.num_experts), float(m.experts_per_token), float(b))
        rows.append((b, distinct, r.per_layer_ms.gemm, r.step_ms))
    dense = [phase("llama-3.1-8b", "h100-sxm", "decode", b).per_layer_ms.gemm for b in (1, 8)]
    print(
        f"{model} TP{tp} {dtype} decode: "
        + "; ".join(
            f"b={b}: {d:.1f} experts, GEMM {g * 1e3:.1f} us/layer, step {s:.2f} ms"
            for b, d, g, s in rows
        )
        + f" | dense 8B GEMM b=1 {dense[0] * 1e3:.1f} us, b=8 {dense[1] * 1e3:.1f} us"
    )
    gemms = [g for _, _, g, _ in rows]
    assert gemms[0] < gemms[1] < gemms[2]
    assert rows[0][1] == pytest.approx(m.experts_per_token)
    moe_growth = gemms[1] / gemms[0]
    dense_growth = dense[1] / dense[0]
    assert dense_growth < 1.05
    assert moe_growth > dense_growth + 0.2


def test_fp8_prefill_is_faster_than_bf16() -> None:
    """A large prefill is compute bound. fp8 tensor cores are twice as fast on paper and a bare fp8
    GEMM about 1.72x a bf16 one on an H100 (kernel tables: 1,330 vs 780 TFLOP/s); an engine's
    quantized linear layers reach ``QUANTIZED_GEMM_EFFICIENCY`` (0.65) of that, fitted on the
    measured serving runs. So the GEMMs take about 0.55 / 0.65 = 0.84 of the bf16 time at this
    shape, and fp8 still wins."""
    bf16 = phase("llama-3.1-70b", "h100-sxm", "prefill", 4, tp=8, isl=8192)
    fp8 = phase("llama-3.1-70b", "h100-sxm", "prefill", 4, tp=8, isl=8192, dtype="fp8")
    ratio = fp8.per_layer_ms.gemm / bf16.per_layer_ms.gemm
    print(
        f"70B TP8 prefill 4x8192: step bf16 {bf16.step_ms:.0f} ms, fp8 {fp8.step_ms:.0f} ms; "
        f"GEMM per layer {bf16.per_layer_ms.gemm:.2f} vs {fp8.per_layer_ms.gemm:.2f} ms "
        f"(ratio {ratio:.2f})"
    )
    assert fp8.step_ms < 0.92 * bf16.step_ms
    assert 0.72 <= ratio <= 0.9


def test_prefill_gemm_time_matches_flops_over_measured_peak() -> None:
    """Llama-3.1-70B prefill of 32768 tokens on one GPU's TP8 share: 2 x tokens x params / 8
    FLOPs per step at the ~780 TFLOP/s an H100 sustains in bf16 (calibration meta)."""
    m = load_model("llama-3.1-70b")
    r = phase("llama-3.1-70b", "h100-sxm", "prefill", 4, tp=8, isl=8192)
    tokens = 4 * 8192
    layer_params = (m.total_params - 2 * m.vocab_size * m.hidden_size) / m.num_layers
    sustained = float(read_tables("h100-sxm").meta["bf16_8192_tflops"]) * 1e12
    want_ms = 2 * tokens * layer_params / 8 / sustained * 1e3
    print(
        f"70B TP8 prefill: GEMM {r.per_layer_ms.gemm:.2f} ms/layer, FLOPs at "
        f"{sustained / 1e12:.0f} TFLOP/s {want_ms:.2f} ms/layer"
    )
    assert 0.9 <= r.per_layer_ms.gemm / want_ms <= 1.3


def test_a_model_that_does_not_fit_says_the_weights_do_not_fit() -> None:
    """Llama-3.1-405B in bf16 needs 812 GB of weights; one 80 GB H100 cannot hold them."""
    r = phase("llama-3.1-405b", "h100-sxm", "decode", 1)
    print(f"405B bf16 on 1 H100: fits {r.fits}, {r.memory_gb_per_gpu:.0f} GB; reason: {r.reason}")
    assert r.fits is False
    assert r.memory_gb_per_gpu > 800
    assert r.reason is not None and "weights" in r.reason
    assert r.tokens_per_s_per_gpu == 0.0


def test_the_reported_largest_decode_batch_fits_and_one_more_does_not() -> None:
    base = EstimateRequest(
        "llama-3.1-70b",
        "h100-sxm",
        isl=4000,
        osl=500,
        phase="decode",
        batch=64,
        parallelism=Parallelism(tp=4),
    )
    first = estimate(base)
    assert isinstance(first, PhaseEstimate)
    largest = first.max_batch
    at = estimate(replace(base, batch=largest))
    over = estimate(replace(base, batch=largest + 1))
    print(
        f"llama-3.1-70b TP4 at 4250 tokens: KV holds {first.kv_capacity_tokens:,.0f} tokens, "
        f"largest batch {largest}; fits at {largest}: {at.fits}, at {largest + 1}: {over.fits}"
    )
    assert 50 < largest < 200
    assert at.fits and not over.fits


def test_one_prompt_on_pipeline_stages_pays_every_stage_in_turn() -> None:
    """Llama-3.1-70B, ISL 4000, TP1 PP4, one prompt: the prompt is not split across stages, so
    its time to first token is all 80 layers one after the other (80 x the per-layer figure),
    plus the LM head, three stage-to-stage sends and the engine's step overhead. Before this was
    fixed the model gave 388 ms, less than half the 80 layers' own sum (~880 ms)."""
    r = phase("llama-3.1-70b", "h100-sxm", "prefill", 1, pp=4, isl=4000, osl=500)
    pl = r.per_layer_ms
    layers_ms = 80 * (pl.gemm + pl.attention + pl.communication + pl.other)
    print(f"70B TP1 PP4 prefill of 4000 tokens: TTFT {r.step_ms:.1f} ms, 80 layers {layers_ms:.1f}")
    assert 850.0 <= layers_ms <= 920.0
    assert layers_ms <= r.step_ms <= layers_ms * 1.05
    # the same prompt on one stage costs the same layers: PP buys memory, not latency
    one = phase("llama-3.1-70b", "h100-sxm", "prefill", 1, pp=1, isl=4000, osl=500)
    assert abs(r.step_ms - one.step_ms) / one.step_ms < 0.02


def test_chunked_pipeline_prefill_is_an_explicit_engine_option() -> None:
    """An engine that splits one prompt into micro-chunks flowing through the stages together
    (the study's chunked pipeline) gets stage x (1 + (pp - 1) / chunks): at 64k tokens, 8 chunks of
    8192 on PP4, 11/8 of one stage's time instead of all four stages in turn."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf.params import PerfContext
    from pdplanner.planner.serving.phases import evaluate_prefill

    vllm = load_engine("vllm")
    assert not vllm.chunked_pipeline_prefill
    m, gpu = load_model("llama-3.1-70b"), load_gpu("h100-sxm")
    one = np.ones(1)
    lay = (one, 4 * one, one, one, one)
    plain = evaluate_prefill(PerfContext.build(m, gpu, vllm), *lay, 65536.0, 0.0)
    chunked_ctx = PerfContext.build(m, gpu, replace(vllm, chunked_pipeline_prefill=True))
    chunked = evaluate_prefill(chunked_ctx, *lay, 65536.0, 0.0)
    stage_ms = 1e3 / float(plain.rate[0]) - vllm.step_overhead_ms
    want = stage_ms * (1 + 3 / 8) + vllm.step_overhead_ms
    print(
        f"70B PP4 prefill of 65536 tokens: plain {plain.latency_ms[0]:.0f} ms, "
        f"chunked pipeline {chunked.latency_ms[0]:.0f} ms (stage {stage_ms:.0f} ms)"
    )
    assert abs(float(chunked.latency_ms[0]) - want) < 1e-6 * want
    assert float(plain.latency_ms[0]) > 3.5 * stage_ms
    # the pipeline's throughput is the same either way: one batch leaves every stage time
    assert float(plain.rate[0]) == float(chunked.rate[0])


def test_all_reduce_across_two_nodes_pays_nccl_tree_latency() -> None:
    """A 16-GPU all-reduce on H100 (8-GPU NVLink domains) spans two nodes. NCCL's own cost model
    (src/graph/tuning.cc) gives a small one, as a tree with the LL protocol, 6.8 us + 2 x (7
    NVLink steps of 0.6 us x 1.8 + 1 network step of 5.0 us) = 31.9 us before any byte moves;
    inside one node the latency stays the NVLink one (6 us + 1.5 us per doubling)."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf.kernels import allreduce_ms
    from pdplanner.planner.perf.params import PerfContext

    hv = PerfContext.build(load_model("deepseek-r1"), load_gpu("h100-sxm"), load_engine("vllm")).hv
    tiny = 1.0  # one byte: latency only
    two_nodes_us = 1e3 * allreduce_ms(tiny, 16.0, hv)
    one_node_us = 1e3 * allreduce_ms(tiny, 8.0, hv)
    print(f"1-byte all-reduce: 16 GPUs / 2 nodes {two_nodes_us:.2f} us, 8 GPUs {one_node_us:.2f}")
    assert abs(two_nodes_us - (6.8 + 2 * (7 * 0.6 * 1.8 + 5.0))) < 0.01
    assert abs(one_node_us - (6.0 + 1.5 * 3)) < 0.01


def test_grouped_gemm_with_fewer_thread_blocks_than_sms_streams_slower() -> None:
    """DeepSeek-R1 at TP16 and one sequence: 8 routed experts, each's gate+up slice 2 x 2048 / 16
    = 256 columns wide: 8 x 256 / 64 = 32 thread blocks for the 132 SMs of the calibrated H100,
    so the other 7 experts' weights stream at 32/132 of the rate they would with every SM busy.
    The down projection (7168 columns) has blocks enough and streams at the full rate."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf import kernels as K
    from pdplanner.planner.perf.opkernels import gemm_ms
    from pdplanner.planner.perf.params import H_HBM_BW, H_PEAK, H_W_BYTES, PerfContext

    ctx = PerfContext.build(
        load_model("deepseek-r1"), load_gpu("h100-sxm"), load_engine("vllm"), "fp8", "bf16"
    )
    hv, cg = ctx.hv, ctx.cal.gemm
    wb, bw = hv[H_W_BYTES], hv[H_HBM_BW]
    one = gemm_ms(1.0, 256.0, 7168.0, wb, hv[H_PEAK], bw, cg)
    got = K.grouped_gemm_ms(8.0, 8.0, 256.0, 7168.0, wb, hv, cg)
    stream = 7 * 256 * 7168 * wb / (bw * K.EXPERT_WEIGHT_BW_EFFICIENCY) * 1e3
    print(f"gate+up grouped GEMM: {got * 1e3:.1f} us (one expert {one * 1e3:.1f} us)")
    assert abs(got - (one + stream * 132 / 32)) < 1e-9
    down = K.grouped_gemm_ms(8.0, 8.0, 7168.0, 128.0, wb, hv, cg)
    one_down = gemm_ms(1.0, 7168.0, 128.0, wb, hv[H_PEAK], bw, cg)
    full = 7 * 7168 * 128 * wb / (bw * K.EXPERT_WEIGHT_BW_EFFICIENCY) * 1e3
    assert abs(down - (one_down + full)) < 1e-9


def test_deepseek_r1_on_two_h100_nodes_pays_cross_node_latency_and_moe_routing() -> None:
    """DeepSeek-R1 fp8, TP16 over two 8 x H100 nodes, one sequence decoding: each layer runs two
    all-reduces over both nodes (after attention, after the MoE), each at NCCL's 31.9 us tree
    latency plus its 14 kB over 50 GB/s; each of the 58 MoE layers launches 3 routing kernels
    (top-k, sort by expert, combine) besides its GEMMs. A published measurement of this setup is
    31.2 ms per token; the model gives ~12 ms (9.9 ms before these costs), the rest is not a cost
    the step model prices (see ``pdplanner.planner.perf.kernels``, "Not priced")."""
    r = phase("deepseek-r1", "h100-sxm", "decode", 1, tp=16, isl=1000, osl=1000, dtype="fp8")
    wire_us = 1e3 * 1e3 * 2 * 15 / 16 * 7168 * 2 / 50e9
    nccl_us = 6.8 + 2 * (7 * 0.6 * 1.8 + 5.0)
    comm_us = 1e3 * r.per_layer_ms.communication
    print(
        f"DeepSeek-R1 TP16 on 2 x 8 H100, batch 1: TPOT {r.step_ms:.2f} ms, communication "
        f"{comm_us:.1f} us/layer (2 all-reduces of {nccl_us + wire_us:.1f} us), measured 31.2 ms"
    )
    assert abs(comm_us - 2 * (nccl_us + wire_us)) < 0.01
    assert 11.0 <= r.step_ms <= 14.0


def test_moe_under_tp_attention_is_summed_by_an_all_reduce_and_dispatched_only_under_dp() -> None:
    """DeepSeek-V3 decoding 8 sequences on GB200. With TP attention (TP8 EP8) every GPU holds every
    token, so each runs its own experts on all of them and one all-reduce sums the outputs:
    every layer, dense or MoE, pays two all-reduces of 8 x 7168 bf16 values and no all-to-all
    (TensorRT-LLM's DeepSeek-V3 and Qwen3-MoE layers call the experts with reduce_results=False
    and all-reduce after them unless attention DP is on). With attention DP (DP8 EP8, one
    sequence per rank) the ranks hold different tokens: each MoE layer dispatches its token's 8
    picks in fp8 and combines them in bf16 (two all-to-alls), and no layer all-reduces."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf.kernels import NVLINK_LATENCY_MS, allreduce_ms, alltoall_ms
    from pdplanner.planner.perf.params import EP_ALLTOALL_FLOOR_MS, PerfContext

    model = load_model("deepseek-v3")
    hv = PerfContext.build(model, load_gpu("gb200-nvl72"), load_engine("trtllm"), "fp8").hv
    h = model.hidden_size
    tp = phase("deepseek-v3", "gb200-nvl72", "decode", 8, tp=8, ep=8, dtype="fp8",
               engine="trtllm")  # fmt: skip
    dp = phase("deepseek-v3", "gb200-nvl72", "decode", 8, ep=8, attention_dp=8, dtype="fp8",
               engine="trtllm")  # fmt: skip
    two_all_reduces_ms = 2 * allreduce_ms(8 * h * 2.0, 8.0, hv)
    moe_share = model.num_moe_layers / model.num_layers
    dispatch_combine_ms = moe_share * (
        alltoall_ms(1 * 8 * h * 1.0, 8.0, hv) + alltoall_ms(1 * 8 * h * 2.0, 8.0, hv)
    )
    print(
        f"communication per layer: TP8 EP8 {1e3 * tp.per_layer_ms.communication:.2f} us "
        f"(2 all-reduces {1e3 * two_all_reduces_ms:.2f}), DP8 EP8 "
        f"{1e3 * dp.per_layer_ms.communication:.2f} us "
        f"(all-to-alls {1e3 * dispatch_combine_ms:.2f})"
    )
    assert tp.per_layer_ms.communication == pytest.approx(two_all_reduces_ms, rel=1e-9)
    assert dp.per_layer_ms.communication == pytest.approx(dispatch_combine_ms, rel=1e-9)
    # each all-to-all costs at least the engines' fixed cost, far above the link's latency
    assert dp.per_layer_ms.communication >= moe_share * 2 * EP_ALLTOALL_FLOOR_MS
    assert EP_ALLTOALL_FLOOR_MS > 2 * NVLINK_LATENCY_MS


def test_tokens_are_dispatched_at_the_precision_the_experts_compute_in() -> None:
    """gpt-oss-120b stores its experts in MXFP4. Deployed in bf16 (activations not quantized) its
    tokens travel to the experts in bf16, deployed in fp8 in fp8; either way they come back in
    bf16. DP8 EP8 on GB200, one sequence per rank."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf.kernels import alltoall_ms
    from pdplanner.planner.perf.params import H_DISPATCH_BYTES, PerfContext

    model = load_model("gpt-oss-120b")
    h = model.hidden_size
    topk = model.experts_per_token
    moe_share = model.num_moe_layers / model.num_layers
    for dtype, sent in (("bf16", 2.0), ("fp8", 1.0)):
        hv = PerfContext.build(model, load_gpu("gb200-nvl72"), load_engine("trtllm"), dtype).hv
        assert hv[H_DISPATCH_BYTES] == sent, dtype
        dp = phase("gpt-oss-120b", "gb200-nvl72", "decode", 8, ep=8, attention_dp=8, dtype=dtype,
                   engine="trtllm")  # fmt: skip
        expected = moe_share * (
            alltoall_ms(topk * h * sent, 8.0, hv) + alltoall_ms(topk * h * 2.0, 8.0, hv)
        )
        assert dp.per_layer_ms.communication == pytest.approx(expected, rel=1e-9), dtype


def test_engine_kernels_drop_only_the_l2_flush_write_back() -> None:
    """The step model prices kernels as the tables' fit without its fill terms (the write-back
    of the dirty L2 the benchmark's flush leaves): every other parameter is the fitted one, and a
    GEMM streaming more than one L2 of weights (Qwen3-32B's gate+up at TP2, 262 MB in bf16) runs
    faster by nearly the whole fitted fill, a tiny one by a fraction of it."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf import opkernels as ok
    from pdplanner.planner.perf.calibration import engine_calibration, load_calibration
    from pdplanner.planner.perf.params import PerfContext

    fitted, engine = load_calibration("h100-sxm"), engine_calibration("h100-sxm")
    fills = [ok.GEMM_BF16 + ok.G_FILL_MS, ok.GEMM_FP8 + ok.G_FILL_MS]
    keep = [i for i in range(ok.GEMM_CAL_SIZE) if i not in fills]
    np.testing.assert_array_equal(engine.gemm[keep], fitted.gemm[keep])
    assert all(engine.gemm[i] == 0.0 and fitted.gemm[i] > 0.0 for i in fills)
    np.testing.assert_array_equal(engine.attn_prefill, fitted.attn_prefill)
    decode_keep = [i for i in range(ok.DECODE_CAL_SIZE) if i != ok.D_FILL_MS]
    np.testing.assert_array_equal(engine.attn_decode[decode_keep], fitted.attn_decode[decode_keep])
    assert engine.attn_decode[ok.D_FILL_MS] == 0.0

    ctx = PerfContext.build(load_model("qwen3-32b"), load_gpu("h100-sxm"), load_engine("vllm"))
    assert ctx.cal is engine
    fill = fitted.gemm[ok.GEMM_BF16 + ok.G_FILL_MS]
    for n, k, lo in ((25600, 5120, 0.9), (1280, 5120, 0.0)):
        table = ok.gemm_ms(16.0, n, k, 2.0, 989e12, 3.35e12, fitted.gemm)
        step = ok.gemm_ms(16.0, n, k, 2.0, 989e12, 3.35e12, engine.gemm)
        print(
            f"{n}x{k} bf16, 16 tokens: tables {table * 1e3:.1f} us, in a step {step * 1e3:.1f} us"
        )
        assert lo * fill <= table - step <= fill


def test_host_time_per_sequence_adds_to_the_step_latency_not_to_the_stage() -> None:
    """vLLM spends host time per scheduled sequence in every step (``seq_overhead_ms``, 50 us):
    a decode step of 128 sequences takes 128 x 50 us = 6.4 ms longer than its GPU work, one of 8
    sequences 0.4 ms; the busiest stage's GPU time, which bounds a pipeline, does not change."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf.params import PerfContext
    from pdplanner.planner.perf.step import step_time

    vllm = load_engine("vllm")
    assert vllm.seq_overhead_ms == 0.05
    m, gpu = load_model("qwen3-32b"), load_gpu("h100-sxm")
    with_host = PerfContext.build(m, gpu, vllm)
    gpu_only = PerfContext.build(m, gpu, replace(vllm, seq_overhead_ms=0.0))
    for seqs in (8.0, 128.0):
        a = step_time(with_host, Parallelism(tp=8), dc_seqs=seqs, dc_ctx=1100.0)
        b = step_time(gpu_only, Parallelism(tp=8), dc_seqs=seqs, dc_ctx=1100.0)
        assert abs((a.latency_ms - b.latency_ms) - 0.05 * seqs) < 1e-9
        assert a.stage_ms == b.stage_ms
    # a prompt chunk's sequences count too: one per prompt, not one per token
    a = step_time(with_host, Parallelism(tp=8), pf_seqs=4.0, pf_new=2048.0)
    b = step_time(gpu_only, Parallelism(tp=8), pf_seqs=4.0, pf_new=2048.0)
    assert abs((a.latency_ms - b.latency_ms) - 0.05 * 4.0) < 1e-9


def test_vllm_fp8_moe_decode_is_priced_over_deepgemm_worst_case_buffer() -> None:
    """vLLM 0.12 runs fp8 MoE layers on Hopper through DeepGEMM over round_up(tokens x top-k +
    local experts x 127, 128) rows at any batch (engines.yaml ``moe_padded_rows``): Qwen3-235B
    at TP2 on an H200 computes 16,384 rows per layer at batch 4 and 16,640 at batch 48, so the
    decode step is flat in the batch and far slower than SGLang's (routed rows only) at the
    same layout; at TP8 vLLM leaves the path, and bf16 never takes it."""

    def step(engine: str, dtype: str, tp: int, batch: int) -> PhaseEstimate:
        return phase(
            "qwen3-235b-a22b",
            "h200-sxm",
            "decode",
            batch,
            tp=tp,
            isl=4000,
            dtype=dtype,
            kv_dtype="fp8",
            engine=engine,
        )

    v4, v48 = step("vllm", "fp8", 2, 4).step_ms, step("vllm", "fp8", 2, 48).step_ms
    s4 = step("sglang", "fp8", 2, 4).step_ms
    print(
        f"Qwen3-235B TP2 fp8 decode on H200: vLLM {v4:.1f} ms (batch 4), {v48:.1f} ms (48); "
        f"SGLang {s4:.1f} ms (batch 4)"
    )
    assert v48 < 1.15 * v4  # flat: the buffer, not the batch, sets the work
    assert v4 > 2.0 * s4
    # no faster than the buffer's gate/up and down GEMMs at the fp8 peak x the efficiency
    m = load_model("qwen3-235b-a22b")
    flops = 2 * 16384 * 3 * m.hidden_size * m.moe_intermediate_size / 2 * m.num_layers
    peak = load_gpu("h200-sxm").fp8_flops_per_s * QUANTIZED_GEMM_EFFICIENCY
    assert v4 > flops / peak * 1e3
    for dtype, tp in (("fp8", 8), ("bf16", 2)):
        vllm, sglang = step("vllm", dtype, tp, 4), step("sglang", dtype, tp, 4)
        assert vllm.per_layer_ms.gemm == pytest.approx(sglang.per_layer_ms.gemm, rel=1e-9)


def _moe_gemm_ms(model: str, engine: str, par: Parallelism) -> float:
    """GEMM ms per layer of an fp8 decode step at batch 64 on an H200, at layout ``par``."""
    return phase(
        model, "h200-sxm", "decode", 64, tp=par.tp, ep=par.ep, attention_dp=par.attention_dp,
        isl=2000, osl=200, dtype="fp8", kv_dtype="fp8", engine=engine,
    ).per_layer_ms.gemm  # fmt: skip


@pytest.mark.parametrize(
    ("par", "padded"),
    [
        (Parallelism(tp=2), True),
        (Parallelism(tp=8, ep=8), True),  # expert parallel: MoE TP 1, vLLM keeps DeepGEMM
        (Parallelism(tp=1, attention_dp=8), False),  # MoE TP 8: vLLM turns DeepGEMM off
        (Parallelism(tp=8), False),
    ],
)
def test_vllm_padded_moe_rows_follow_the_moe_tp(par: Parallelism, padded: bool) -> None:
    """vLLM leaves DeepGEMM at an MoE TP of 8 or more (TP x DP without expert parallelism, 1
    with it): DeepSeek-V3 fp8 on an H200 pays the worst-case buffer exactly where it keeps it."""
    vllm = _moe_gemm_ms("deepseek-v3", "vllm", par)
    sglang = _moe_gemm_ms("deepseek-v3", "sglang", par)
    print(f"DeepSeek-V3 {par}: GEMM per layer vLLM {vllm:.3f} ms, SGLang {sglang:.3f} ms")
    if padded:
        assert vllm > 1.2 * sglang
    else:
        assert vllm == pytest.approx(sglang, rel=1e-9)


@pytest.mark.parametrize(
    "model", ["gpt-oss-120b", "kimi-k2.5", "llama-4-maverick", "mixtral-8x7b", "llama-4-scout"]
)
def test_vllm_prices_experts_that_are_not_block_fp8_over_routed_rows(model: str) -> None:
    """MXFP4, int4, per-channel and per-tensor FP8 experts do not take vLLM's DeepGEMM path:
    at fp8 their MoE GEMMs cost what SGLang's do."""
    par = Parallelism(tp=4)
    assert _moe_gemm_ms(model, "vllm", par) == pytest.approx(
        _moe_gemm_ms(model, "sglang", par), rel=1e-9
    )


def test_an_eager_step_takes_at_least_the_hosts_time_to_issue_its_layers() -> None:
    """TensorRT-LLM runs a step that carries prompt tokens without CUDA graphs: its host issues
    every layer's kernels (``eager_layer_host_ms``, 0.8 ms), and the GPU runs them as they come.
    Qwen3-32B's 64 layers take 51.2 ms to issue. A 1k-token prompt at TP 8 (22 ms of GPU work)
    therefore takes the issue time, and so does one at TP 4: more GPUs do not shorten it. An
    8k-token prompt at TP 1 is GPU-bound and keeps its GPU time. A decode step replays a graph
    and keeps its GPU time whatever the engine's issue time."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf.params import PerfContext
    from pdplanner.planner.perf.step import step_time

    trt = load_engine("trtllm")
    assert trt.eager_layer_host_ms == 0.8
    m, gpu = load_model("qwen3-32b"), load_gpu("h100-sxm")
    eager = PerfContext.build(m, gpu, trt, "fp8", "fp8")
    graphs = PerfContext.build(m, gpu, replace(trt, eager_layer_host_ms=0.0), "fp8", "fp8")
    issue = m.num_layers * 0.8
    host = trt.step_overhead_ms + trt.seq_overhead_ms
    for tp in (4, 8):
        a = step_time(eager, Parallelism(tp=tp), pf_seqs=1.0, pf_new=1024.0)
        b = step_time(graphs, Parallelism(tp=tp), pf_seqs=1.0, pf_new=1024.0)
        print(f"TP{tp} 1k prompt: GPU {b.latency_ms:.1f} ms, with issue {a.latency_ms:.1f} ms")
        assert b.latency_ms - host < issue
        # the issue time, then the LM head (reading its bf16 weights: about 0.1 ms)
        assert issue < a.latency_ms - host < issue + 0.5
        assert a.stage_ms == pytest.approx(a.latency_ms - host, rel=1e-9)
    a = step_time(eager, Parallelism(tp=1), pf_seqs=1.0, pf_new=8192.0)
    b = step_time(graphs, Parallelism(tp=1), pf_seqs=1.0, pf_new=8192.0)
    assert b.latency_ms - host > issue
    assert a.latency_ms == b.latency_ms
    a = step_time(eager, Parallelism(tp=8), dc_seqs=8.0, dc_ctx=1100.0)
    b = step_time(graphs, Parallelism(tp=8), dc_seqs=8.0, dc_ctx=1100.0)
    assert a.latency_ms == b.latency_ms < issue
    # without decode graphs a decode step is eager too
    no_graphs = PerfContext.build(m, gpu, replace(trt, decode_cuda_graphs=False), "fp8", "fp8")
    c = step_time(no_graphs, Parallelism(tp=8), dc_seqs=8.0, dc_ctx=1100.0)
    assert 0.0 < c.latency_ms - (issue + trt.step_overhead_ms + 8 * trt.seq_overhead_ms) < 0.5


def test_a_decode_batch_past_the_largest_cuda_graph_is_issued_eagerly() -> None:
    """TensorRT-LLM captures decode graphs up to 128 sequences by default (engines.yaml); a
    decode step of 129 runs eagerly and takes at least the host's issue time, 64 x 0.8 ms for
    Qwen3-32B, where one of 128 replays its graph at its GPU time. A scheduler that captures up
    to 256 (``with_graph_limit``, as an engine argument sets it) replays 129 again."""
    from pdplanner.planner.catalog import load_engine
    from pdplanner.planner.perf.params import PerfContext
    from pdplanner.planner.perf.step import step_time
    from pdplanner.planner.serving.scheduler import scheduler_for

    trt = load_engine("trtllm")
    assert scheduler_for(trt).cuda_graph_max_bs == 128
    m, gpu = load_model("qwen3-32b"), load_gpu("h100-sxm")
    ctx = PerfContext.build(m, gpu, trt, "fp8", "fp8")
    issue = m.num_layers * trt.eager_layer_host_ms
    at = step_time(ctx, Parallelism(tp=8), dc_seqs=128.0, dc_ctx=1100.0)
    past = step_time(ctx, Parallelism(tp=8), dc_seqs=129.0, dc_ctx=1100.0)
    print(f"decode 128: {at.latency_ms:.1f} ms, 129: {past.latency_ms:.1f} ms")
    assert at.latency_ms < issue < past.latency_ms
    wider = step_time(ctx.with_graph_limit(256), Parallelism(tp=8), dc_seqs=129.0, dc_ctx=1100.0)
    assert wider.latency_ms < issue
    assert wider.latency_ms == pytest.approx(at.latency_ms, rel=0.05)
    # an engine without an issue time is unchanged past its graphs
    vllm = PerfContext.build(m, gpu, load_engine("vllm"), "fp8", "fp8").with_graph_limit(64)
    a = step_time(vllm, Parallelism(tp=8), dc_seqs=65.0, dc_ctx=1100.0)
    b = step_time(vllm.with_graph_limit(512), Parallelism(tp=8), dc_seqs=65.0, dc_ctx=1100.0)
    assert a.latency_ms == b.latency_ms
