"""Token mixers and checkpoint bytes priced as they run and as they are stored.

Each expected figure is worked out here by hand from the model's published config.json
(tests/unit/configs/), not from the planner's own helpers: a sliding-window prompt chunk longer
than the window, a Gated DeltaNet layer's projections and recurrent state update, and gpt-oss's
MXFP4 experts with their block scales and biases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pdplanner.planner.catalog import load_engine, load_gpu, model_from_hf_config
from pdplanner.planner.perf import kernels as K
from pdplanner.planner.perf import memory as M
from pdplanner.planner.perf import opkernels as ok
from pdplanner.planner.perf.calibration import load_calibration
from pdplanner.planner.perf.params import PerfContext

CONFIGS = Path(__file__).parent / "configs"


def config(folder: str) -> dict:
    return json.loads((CONFIGS / folder / "config.json").read_text())


def context(cfg: dict, name: str, engine: str = "vllm") -> PerfContext:
    model = model_from_hf_config(cfg, name)
    return PerfContext.build(model, load_gpu("h100-sxm"), load_engine(engine), "bf16", "bf16")


def test_a_prompt_chunk_longer_than_the_window_attends_to_the_window_only() -> None:
    """gpt-oss-120b's sliding layers: an 8,192-token chunk with a 128-token window. Query j
    sees min(128, j + 1) keys, not the j + 1 of a causal chunk, and the last 128-row tile
    sees 128 + 128 keys, not 8,192."""
    cfg = config("gpt-oss-120b")
    window, heads, d = cfg["sliding_window"], cfg["num_attention_heads"], cfg["head_dim"]
    new = 8192
    pairs = sum(min(window, j + 1) for j in range(new))
    assert pairs == 128 * 129 // 2 + (new - 128) * 128
    cp = load_calibration("h100-sxm").attn_prefill
    peak = load_gpu("h100-sxm").bf16_flops_per_s
    work = 2 * heads * (pairs + new * cp[ok.P_L_TILE]) * 2 * d
    tile = 2 * 128 * (window + 128 + cp[ok.P_L_TILE]) * 2 * d * cp[ok.P_N_SM]
    t_work = 1e3 * work / (peak * cp[ok.P_E_WORK])
    t_tile = 1e3 * tile / (peak * cp[ok.P_E_TILE])
    s = cp[ok.P_OVERLAP]
    want = cp[ok.P_T_LAUNCH_MS] + (t_work**s + t_tile**s) ** (1 / s)
    got = ok.attn_prefill_window_ms(1.0, new, 0.0, window, heads, 8.0, d, d, peak, cp)
    causal = ok.attn_prefill_ms(1.0, new, 0.0, heads, 8.0, d, d, peak, cp)
    print(f"8192-token chunk, window 128: {got:.4f} ms (causal over the chunk: {causal:.4f} ms)")
    assert got == pytest.approx(want, rel=1e-12)
    assert got < causal / 10
    # a later chunk, past 4096: every query already sees a full window
    later = ok.attn_prefill_window_ms(1.0, new, 4096.0, window, heads, 8.0, d, d, peak, cp)
    t_work = 1e3 * 2 * heads * (new * window + new * cp[ok.P_L_TILE]) * 2 * d
    t_work /= peak * cp[ok.P_E_WORK]
    assert later == pytest.approx(
        cp[ok.P_T_LAUNCH_MS] + (t_work**s + t_tile**s) ** (1 / s), rel=1e-12
    )
    # a window wider than the chunk and its past changes nothing
    assert ok.attn_prefill_window_ms(
        1.0, 512.0, 100.0, 1e6, heads, 8.0, d, d, peak, cp
    ) == ok.attn_prefill_ms(1.0, 512.0, 100.0, heads, 8.0, d, d, peak, cp)


def test_gated_deltanet_is_priced_as_its_projections_and_state_update() -> None:
    """Qwen3-Next-80B-A3B's linear layers: hidden 2048, 16 key heads and 32 value heads of 128,
    a 4-wide convolution. GEMMs: q/k/v/z 2048 -> 2*16*128 + 2*32*128 = 12,288, beta/decay
    2048 -> 64, output 4096 -> 2048. Decode of 64 sequences reads and writes every value head's
    128 x 128 bf16 state and the convolution's last 3 inputs (8,192 channels)."""
    cfg = config("Qwen3-Next-80B-A3B-Instruct")
    ctx = context(cfg, "qwen3-next")
    cg = ctx.cal.gemm
    gpu = load_gpu("h100-sxm")
    h = cfg["hidden_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    conv = cfg["linear_conv_kernel_dim"]
    assert (2 * nk * dk + 2 * nv * dv, 2 * nv, nv * dv) == (12288, 64, 4096)
    bf16, bw = gpu.bf16_flops_per_s, gpu.hbm_bytes_per_s

    def projections(tokens: float) -> float:
        """q/k/v/z, beta/decay and output GEMMs of ``tokens`` tokens in bf16."""
        shapes = ((12288, h), (64, h), (h, 4096))
        return sum(float(ok.gemm_ms(tokens, n, k, 2.0, bf16, bw, cg)) for n, k in shapes)

    seqs = 64.0
    out = np.zeros(4)
    K.linear_attention_block(ctx.mv, ctx.hv, cg, 1.0, 0.0, 0.0, seqs, out)
    assert out[K.B_GEMM] == pytest.approx(projections(seqs), rel=1e-12)
    conv_dim = 2 * nk * dk + nv * dv  # 8192 channels: q, k, v
    state = nv * dk * dv * 2 + (conv - 1) * conv_dim * 2  # bytes per sequence
    per_token = 2 * (2 * conv_dim + 3 * nv * dv)  # convolution in/out, norm in/gate/out
    nbytes = seqs * (per_token + 2 * state)
    flops = seqs * nv * 7 * dk * dv
    want = 1e3 * max(nbytes / (0.7 * bw), flops / (0.5 * bf16)) + 4 * K.LAUNCH_MS_GRAPH
    print(f"Gated DeltaNet decode of 64 sequences: {out[K.B_ATTN]:.4f} ms (by hand {want:.4f})")
    assert out[K.B_ATTN] == pytest.approx(want, rel=1e-12)

    # prefill of one 4,096-token prompt: 64 chunks of 64 tokens through the chunked rule
    out[:] = 0.0
    K.linear_attention_block(ctx.mv, ctx.hv, cg, 1.0, 1.0, 4096.0, 0.0, out)
    c, tokens, chunks = 64, 4096, 64
    flops = nv * chunks * (6 * c * dk * dv + c * c * (6 * dk + 4 * dv) + 2 * c**3 / 3)
    nbytes = tokens * (per_token + 2 * (conv_dim + nv * dv)) + chunks * nv * 2 * dk * dv * 2
    want = 1e3 * max(flops / (0.5 * bf16), nbytes / (0.7 * bw)) + 11 * K.LAUNCH_MS_EAGER
    assert out[K.B_ATTN] == pytest.approx(want, rel=1e-12)
    assert out[K.B_GEMM] == pytest.approx(projections(tokens), rel=1e-12)
    # the mixer of a mean layer: 36 of 48 layers linear, whatever the past
    lead = (*ctx.kernel_args, 1.0)  # model, hardware, calibration tables; TP 1
    mixed, past, full = np.zeros(4), np.zeros(4), np.zeros(4)
    K.mixed_attention(*lead, 1.0, 4096.0, 0.0, 0.0, 0.0, mixed)
    K.mixed_attention(*lead, 1.0, 4096.0, 60000.0, 0.0, 0.0, past)
    K.attention_block(*lead, 1.0, 4096.0, 0.0, 0.0, 0.0, 0.0, full)
    assert mixed[K.B_ATTN] == pytest.approx(
        (36 * out[K.B_ATTN] + 12 * full[K.B_ATTN]) / 48, rel=1e-12
    )
    assert past[K.B_ATTN] - mixed[K.B_ATTN] > 0  # only the 12 full layers see the past


def test_mxfp4_experts_take_their_blocks_scales_and_biases() -> None:
    """gpt-oss-120b on one GPU: each of 128 experts in 36 layers stores gate/up (5,760 x 2,880)
    and down (2,880 x 2,880) as 90 blocks of 32 per row (16 bytes of values + 1 scale byte),
    plus bf16 biases of 5,760 + 2,880; attention, sinks, router and embeddings in bf16."""
    cfg = config("gpt-oss-120b")
    ctx = context(cfg, "gpt-oss-120b")
    h, width = cfg["hidden_size"], cfg["intermediate_size"]
    e, layers, vocab = cfg["num_local_experts"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    blocks = math.ceil(h / 32)
    assert blocks == math.ceil(width / 32) == 90
    expert = 2 * width * blocks * 17 + h * blocks * 17 + 2 * (2 * width + h)
    assert expert == 13_236_480
    attention = (h * (heads + 2 * kv) * d + heads * d * h + heads) * 2
    router = h * e * 2
    embeddings = 2 * vocab * h * 2  # input embedding and LM head, untied
    want = layers * (attention + router + e * expert) + embeddings
    got = M.weight_bytes_per_gpu(ctx.mv, ctx.hv, 1.0, 1.0, 1.0, 1.0)
    print(f"gpt-oss-120b weights on one GPU: {got / 2**30:.3f} GiB (by hand {want / 2**30:.3f})")
    assert got == pytest.approx(want, rel=1e-12)
