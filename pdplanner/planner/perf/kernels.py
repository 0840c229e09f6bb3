"""The op-level step model: one engine iteration of one worker, in Numba.

A step is what a serving engine runs in one iteration on one worker: some prompt tokens being
prefilled (``pf_seqs`` sequences of ``pf_new`` new tokens each, after ``pf_past`` tokens already in
the KV cache: a chunk of a chunked prefill) and ``dc_seqs`` sequences decoding one token each at a
mean context of ``dc_ctx`` tokens. Counts are per attention data-parallel rank.

For one GPU the step is the sum over its layers of
  GEMMs       QKV/MLA projections, output projection, dense FFN or MoE grouped GEMM, router, LM head
              (``opkernels.gemm_ms``: calibrated roofline with shape-dependent efficiency)
  attention   prefill (causal, with the chunk's past) and decode (KV-cache read) kernels
  comms       tensor-parallel all-reduces (NCCL's tree latency once a group spans nodes),
              expert-parallel dispatch/combine under attention DP (under TP attention one
              all-reduce sums the experts), pipeline send/recv
  other       norms, activations, residuals, rotary: memory-bound elementwise kernels; in MoE
              layers also the routing kernels (top-k, sort by expert, weighted combine)
GEMMs run in the request's dtype; attention runs in bf16 against the bf16 peak.

Pipeline parallelism: each of ``pp`` stages holds at most ``ceil(layers / pp)`` layers; the last
also runs the LM head. ``stage_ms`` is the busiest
stage's busy time for this step (what bounds throughput with ``pp`` micro-batches in flight);
``latency_ms`` is the time a token takes through all stages plus the engine's per-step host
overhead (what a user waits).

Small-batch MoE. At a few tokens per expert an MoE layer is bound by launches and latencies
rather than bytes: the grouped GEMM streams the active experts' weights with too few thread
blocks when the experts are sliced thin (``GROUPED_TILE_N``), the routing adds dependent kernels
(``MOE_GLUE_KERNELS``), and an all-reduce that leaves the NVLink domain pays NCCL's network
latency on every call (``NCCL_TREE_BASE_MS``). Evidence and check: the low-concurrency MoE rows
of shared/serving-runs (tests/unit/test_moe_decode_accuracy.py prints the errors).

Host time. ``latency_ms`` carries the engine's host time that the GPU does not hide: a fixed
``step_overhead_ms`` per iteration plus ``seq_overhead_ms`` per scheduled sequence (the engine's
per-request work each step; ``engines.yaml`` gives the evidence). A step that does not replay a
CUDA graph (one carrying prompt tokens, a decode batch past the largest captured graph, or any
step of an engine without decode graphs; ``issue_ms_per_layer``) is issued by the host layer by
layer while the GPU runs what it has been given, so each stage takes the longer of its GPU time
and ``eager_layer_host_ms`` per layer it holds (TensorRT-LLM's PyTorch backend: 0.8 ms, fitted
on its runs; the other engines' runs do not show one and leave it at 0). Kernels are priced with
``calibration.engine_calibration``: the tables' fit without the write-back of their L2 flush.

Not priced: DeepSeek-R1 fp8 on two 8 x H100 nodes at TP16 decodes one sequence in 31.2 ms in a
published measurement; these costs take the model from 9.9 to 12.0 ms. The rest is not explained
by a cost with a source here (candidates: the engine's per-step host work across nodes, such as
broadcasting each step's schedule to the second node; NCCL's measured small-message latency
above its own model), so it is left out rather than fitted to that one figure.

Every function takes only arrays and scalars: Numba freezes globals, so nothing here reads one
except the integer slot names from ``params``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from pdplanner.planner.perf.memory import EMBED_BYTES, STATE_BYTES
from pdplanner.planner.perf.opkernels import attn_decode_ms, attn_prefill_window_ms, gemm_ms
from pdplanner.planner.perf.params import (
    H_CUDA_GRAPHS,
    H_DECODE_ATTN_EFF,
    H_DISPATCH_BYTES,
    H_DOMAIN,
    H_EAGER_LAYER_MS,
    H_EP_ALLTOALL_FLOOR_MS,
    H_EXPERT_W_BYTES,
    H_GRAPH_MAX_BS,
    H_HBM_BW,
    H_KV_BYTES,
    H_LINK_BW,
    H_MOE_PAD_ALIGN,
    H_MOE_PAD_BELOW_TP,
    H_N_SM,
    H_PEAK,
    H_PEAK_BF16,
    H_PREFILL_ATTN_SPEEDUP,
    H_SCALEOUT_BW,
    H_SEQ_OVERHEAD_MS,
    H_STEP_OVERHEAD_MS,
    H_W_BYTES,
    M_ATTN_GATE,
    M_DENSE_LAYERS,
    M_EXPERTS,
    M_FFN,
    M_HEAD_DIM,
    M_HEADS,
    M_HIDDEN,
    M_INDEX_DIM,
    M_INDEX_HEADS,
    M_INDEX_TOPK,
    M_KV_HEADS,
    M_KV_LORA,
    M_LAYERS,
    M_LIN_CONV,
    M_LIN_K_DIM,
    M_LIN_K_HEADS,
    M_LIN_V_DIM,
    M_LIN_V_HEADS,
    M_LINEAR_LAYERS,
    M_MLA,
    M_MOE_FFN,
    M_NOPE,
    M_Q_LORA,
    M_ROPE,
    M_SHARED,
    M_TOPK,
    M_V_HEAD,
    M_VOCAB,
    M_WINDOW,
    M_WINDOW_LAYERS,
)

ACT_BYTES = 2.0  # activations travel and are stored in bf16
# Collective latencies (ms): NCCL / custom all-reduce on NVLink takes ~5-10 us for small messages,
# plus ~1.5 us per doubling of the group; across the scale-out network ~15 us base (send/recv;
# an expert-parallel all-to-all costs at least params.EP_ALLTOALL_FLOOR_MS instead).
NVLINK_LATENCY_MS = 0.006
SCALEOUT_LATENCY_MS = 0.015
HOP_LATENCY_MS = 0.0015
# An all-reduce whose group spans several NVLink domains (nodes) runs on NCCL over the scale-out
# network. NCCL's own cost model (NVIDIA/nccl, src/graph/tuning.cc: the baseLat and hwLat tables,
# in microseconds) prices a small one as a tree with the LL protocol: a fixed 6.8 us, plus, up and
# down the tree, one NVLink step of 0.6 us per further GPU of a node (x1.8 once the communicator
# spans nodes) and one network step of 5.0 us per doubling of the nodes. Two 8-GPU nodes: 32 us,
# every time, however small the message; the bandwidth term comes on top.
NCCL_TREE_BASE_MS = 0.0068
NCCL_NVLINK_STEP_MS = 0.0006 * 1.8
NCCL_NET_STEP_MS = 0.005
# Elementwise kernels (norms, activation, residual, rotary) reach ~70% of HBM bandwidth; each
# costs a launch of ~2 us when not captured in a CUDA graph, ~1 us inside one.
ELEMENTWISE_BW_EFFICIENCY = 0.7
ELEMENTWISE_KERNELS_PER_LAYER = 6.0
LAUNCH_MS_EAGER = 0.002
LAUNCH_MS_GRAPH = 0.001
EXPERT_WEIGHT_BW_EFFICIENCY = 0.85  # streaming one more expert's weights in a grouped GEMM
# A grouped (fused-MoE) GEMM streams the active experts' weights with one thread block per
# (expert, GROUPED_TILE_N output columns) tile: vLLM's fused_moe Triton kernel runs small
# batches with BLOCK_SIZE_N 32 (its default config when tokens <= experts) to 128 (fp8 with
# 128 x 128 block scales), 64 in most of its tuned configs. HBM stays busy only with at least
# one block per SM; at a few tokens per expert and narrow expert slices (wide expert TP) there
# are fewer blocks than SMs, and the stream slows in proportion.
GROUPED_TILE_N = 64.0
# Kernels of an MoE layer besides its GEMMs, each one more dependent launch on the layer's
# critical path: top-k selection over the router logits, sorting the (token, expert) pairs by
# expert for the grouped GEMM (vLLM's moe_align_block_size; SGLang and TensorRT-LLM have the same
# step) and the weighted sum of each token's top-k expert outputs.
MOE_GLUE_KERNELS = 3.0
ATTN_COMPUTE_EFFICIENCY = 0.5  # ceiling for compute-heavy decode attention (MLA, wide GQA groups)
# Gated DeltaNet (linear attention) kernels as vLLM runs them (vllm-project/vllm at 044990c,
# vllm/model_executor/layers/fla/ops/chunk.py, its copy of flash-linear-attention's
# chunk_gated_delta_rule_fwd): chunks of 64 tokens. Prefill launches the causal convolution, the
# decay/beta gating, the q and k L2 norms, then chunk_local_cumsum, chunk_scaled_dot_kkt_fwd,
# solve_tril, recompute_w_u_fwd, chunk_gated_delta_rule_fwd_h and chunk_fwd_o, and the gated
# RMSNorm (11 kernels); decode the convolution update, the gating, the fused recurrent rule and
# the norm (4). The recurrent state is kept in the model's dtype (bf16, memory.STATE_BYTES).
LINEAR_CHUNK = 64.0
LINEAR_PREFILL_KERNELS = 11.0
LINEAR_DECODE_KERNELS = 4.0

# breakdown columns
B_GEMM, B_ATTN, B_COMM, B_OTHER = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def link_for(group: float, hv: np.ndarray) -> tuple[float, float]:
    """Bandwidth (bytes/s) and base latency (ms) of a collective over ``group`` GPUs."""
    if group <= hv[H_DOMAIN]:
        return hv[H_LINK_BW], NVLINK_LATENCY_MS
    return min(hv[H_SCALEOUT_BW], hv[H_LINK_BW]), SCALEOUT_LATENCY_MS


@njit(cache=True, nogil=True)
def crossnode_allreduce_latency_ms(group: float, domain: float) -> float:
    """Fixed latency (ms) of an all-reduce over ``group`` GPUs spread evenly over
    ``ceil(group / domain)`` NVLink domains: NCCL's tree model (see ``NCCL_TREE_BASE_MS``)."""
    nodes = math.ceil(group / domain)
    per_node = group / nodes
    return NCCL_TREE_BASE_MS + 2.0 * (
        (per_node - 1.0) * NCCL_NVLINK_STEP_MS + math.log2(nodes) * NCCL_NET_STEP_MS
    )


@njit(cache=True, nogil=True)
def allreduce_ms(nbytes: float, group: float, hv: np.ndarray) -> float:
    """Ring all-reduce: each GPU sends and receives 2 (g-1)/g of the buffer over the slowest link
    of the group; its fixed latency is the NVLink one inside a domain, NCCL's cross-node tree
    latency when the group spans domains."""
    if group <= 1.0 or nbytes <= 0.0:
        return 0.0
    bw, lat = link_for(group, hv)
    wire = 1e3 * 2.0 * (group - 1.0) / group * nbytes / bw
    if group > hv[H_DOMAIN]:
        return crossnode_allreduce_latency_ms(group, hv[H_DOMAIN]) + wire
    return lat + HOP_LATENCY_MS * math.log2(group) + wire


@njit(cache=True, nogil=True)
def alltoall_ms(nbytes_per_gpu: float, group: float, hv: np.ndarray) -> float:
    """Expert-parallel all-to-all (MoE dispatch or combine) where each GPU sends
    ``nbytes_per_gpu`` spread over the others (ms): the engines' fixed cost
    (``params.EP_ALLTOALL_FLOOR_MS``, or the link's latency if higher), 1.5 us per doubling of
    the group, and the transfer over the group's slowest link."""
    if group <= 1.0 or nbytes_per_gpu <= 0.0:
        return 0.0
    bw, lat = link_for(group, hv)
    lat = max(lat, hv[H_EP_ALLTOALL_FLOOR_MS])
    return (
        lat + HOP_LATENCY_MS * math.log2(group) + 1e3 * nbytes_per_gpu * (group - 1.0) / group / bw
    )


@njit(cache=True, nogil=True)
def expected_distinct(n_experts: float, picks_per_token: float, tokens: float) -> float:
    """Expected number of distinct experts hit when ``tokens`` each route to ``picks_per_token``."""
    if tokens <= 0.0:
        return 0.0
    return n_experts * (1.0 - (1.0 - picks_per_token / n_experts) ** tokens)


@njit(cache=True, nogil=True)
def router_ms(tokens: float, n_experts: float, h: float, hv: np.ndarray) -> float:
    """The MoE router: a GEMM only ``n_experts`` wide, far narrower than any calibrated shape,
    priced as a launch plus reading the hidden states and gate weights and writing the logits
    (bf16 in, fp32 logits out), or its FLOPs at half the bf16 peak if those dominate."""
    nbytes = tokens * h * ACT_BYTES + n_experts * h * ACT_BYTES + tokens * n_experts * 4.0
    flops = 2.0 * tokens * n_experts * h
    return LAUNCH_MS_EAGER + 1e3 * max(
        nbytes / (hv[H_HBM_BW] * ELEMENTWISE_BW_EFFICIENCY),
        flops / (hv[H_PEAK_BF16] * ATTN_COMPUTE_EFFICIENCY),
    )


@njit(cache=True, nogil=True)
def grouped_gemm_ms(
    tokens: float, n_active: float, n: float, k: float, wb: float, hv: np.ndarray, cg: np.ndarray
) -> float:
    """A grouped GEMM over ``n_active`` experts sharing ``tokens`` rows: the larger of the
    compute of one GEMM over all rows, and one expert's GEMM plus streaming the other experts'
    weights from HBM, slowed when its ``n_active * ceil(n / GROUPED_TILE_N)`` thread blocks
    are fewer than the GPU's ``H_N_SM`` SMs."""
    if tokens <= 0.0 or n_active <= 0.0:
        return 0.0
    m_per = max(tokens / n_active, 1.0)
    one = gemm_ms(m_per, n, k, wb, hv[H_PEAK], hv[H_HBM_BW], cg)
    blocks = n_active * math.ceil(n / GROUPED_TILE_N)
    share = min(blocks / hv[H_N_SM], 1.0) if hv[H_N_SM] > 0.0 else 1.0
    more = (
        (n_active - 1.0) * n * k * wb / (hv[H_HBM_BW] * EXPERT_WEIGHT_BW_EFFICIENCY * share) * 1e3
    )
    return max(gemm_ms(tokens, n, k, wb, hv[H_PEAK], hv[H_HBM_BW], cg), one + more)


@njit(cache=True, nogil=True)
def padded_moe_rows(rows: float, local_experts: float, moe_tp: float, hv: np.ndarray) -> float:
    """Rows an MoE layer's grouped GEMMs compute for ``rows`` routed (token, expert) pairs on a
    GPU holding ``local_experts`` experts, the layer split ``moe_tp`` ways tensor-parallel: the
    routed rows, or, where the engine runs a grouped GEMM over a buffer sized for the worst case
    (``H_MOE_PAD_ALIGN`` > 0, MoE TP below ``H_MOE_PAD_BELOW_TP``), round_up(rows +
    local_experts x (align - 1), align) whatever the batch. vLLM 0.12's DeepGEMM MoE
    (fused_moe/deep_gemm_utils.py compute_aligned_M) sizes its contiguous buffer so and computes
    every block of it; its MoE TP is TP x DP without expert parallelism and 1 with it."""
    align = hv[H_MOE_PAD_ALIGN]
    if align <= 0.0 or moe_tp >= hv[H_MOE_PAD_BELOW_TP]:
        return rows
    return math.ceil((rows + local_experts * (align - 1.0)) / align) * align


@njit(cache=True, nogil=True)
def attention_block(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    dc_ctx: float,
    window: float,
    out: np.ndarray,
    gemms: bool = True,
) -> None:
    """GEMM and attention time of one attention block on one GPU, added into ``out``; each
    query attends to at most ``window`` keys (0: no window). ``gemms`` False leaves the GEMMs out
    (``out[B_GEMM]`` gets 0; the attention time does not change)."""
    kv_bytes = hv[H_KV_BYTES]
    h = mv[M_HIDDEN]
    wb = hv[H_W_BYTES]
    peak, bw = hv[H_PEAK], hv[H_HBM_BW]
    tokens = pf_seqs * pf_new + dc_seqs
    heads = mv[M_HEADS] / tp
    speedup = hv[H_PREFILL_ATTN_SPEEDUP]
    gemm = 0.0
    attn = 0.0
    if mv[M_MLA] > 0.5:
        nope, rope, vh = mv[M_NOPE], mv[M_ROPE], mv[M_V_HEAD]
        lora, q_lora = mv[M_KV_LORA], mv[M_Q_LORA]
        # down-projections are small and replicated on every GPU of the group
        if gemms:
            if q_lora > 0.0:
                gemm += gemm_ms(tokens, q_lora, h, wb, peak, bw, cg)
                gemm += gemm_ms(tokens, heads * (nope + rope), q_lora, wb, peak, bw, cg)
            else:
                gemm += gemm_ms(tokens, heads * (nope + rope), h, wb, peak, bw, cg)
            gemm += gemm_ms(tokens, lora + rope, h, wb, peak, bw, cg)
        if pf_seqs > 0.0:
            # prefill up-projects the latent of every token it attends to, so each chunk of a
            # chunked prefill repeats the up-projection of everything before it
            if gemms:
                gemm += gemm_ms(
                    pf_seqs * (pf_new + pf_past), heads * (nope + vh), lora, wb, peak, bw, cg
                )
            attn += (
                attn_prefill_window_ms(
                    pf_seqs,
                    pf_new,
                    pf_past,
                    window,
                    heads,
                    heads,
                    nope + rope,
                    vh,
                    hv[H_PEAK_BF16],
                    cp,
                )
                / speedup
            )
        if dc_seqs > 0.0:
            # decode absorbs the up-projections into the query and output (per-head batched GEMMs)
            if gemms:
                gemm += gemm_ms(dc_seqs, heads * lora, nope, wb, peak, bw, cg)
                gemm += gemm_ms(dc_seqs, heads * vh, lora, wb, peak, bw, cg)
            mem = attn_decode_ms(
                dc_seqs,
                dc_ctx,
                heads,
                1.0,
                lora + rope,
                1.0,
                kv_bytes,
                bw,
                hv[H_DECODE_ATTN_EFF],
                cd,
            )
            flops = 2.0 * dc_seqs * dc_ctx * heads * (2.0 * lora + rope)
            attn += max(mem, 1e3 * flops / (hv[H_PEAK_BF16] * ATTN_COMPUTE_EFFICIENCY))
        if gemms:
            gemm += gemm_ms(tokens, h, heads * vh, wb, peak, bw, cg)
    else:
        d = mv[M_HEAD_DIM]
        # replicated when TP exceeds the KV heads; a float, as every argument of attn_*_ms, so
        # that they compile once (an int from math.ceil would add a second specialisation)
        kv_heads = float(math.ceil(mv[M_KV_HEADS] / tp))
        # the query projection also yields an output gate per head where the model has one
        q_heads = heads * (2.0 if mv[M_ATTN_GATE] > 0.5 else 1.0)
        if gemms:
            gemm += gemm_ms(tokens, (q_heads + 2.0 * kv_heads) * d, h, wb, peak, bw, cg)
        if pf_seqs > 0.0:
            attn += (
                attn_prefill_window_ms(
                    pf_seqs, pf_new, pf_past, window, heads, kv_heads, d, d, hv[H_PEAK_BF16], cp
                )
                / speedup
            )
        if dc_seqs > 0.0:
            mem = attn_decode_ms(
                dc_seqs, dc_ctx, heads, kv_heads, d, 2.0, kv_bytes, bw, hv[H_DECODE_ATTN_EFF], cd
            )
            flops = 4.0 * dc_seqs * dc_ctx * heads * d
            attn += max(mem, 1e3 * flops / (hv[H_PEAK_BF16] * ATTN_COMPUTE_EFFICIENCY))
        if gemms:
            gemm += gemm_ms(tokens, h, heads * d, wb, peak, bw, cg)
    out[B_GEMM] += gemm
    out[B_ATTN] += attn


@njit(cache=True, nogil=True)
def _add_scaled_attention(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    dc_ctx: float,
    window: float,
    share: float,
    out: np.ndarray,
    gemms: bool,
) -> None:
    """``attention_block`` added into ``out`` scaled by ``share`` (a fraction of the layers)."""
    args = (pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx, window)
    if share == 1.0:
        attention_block(mv, hv, cg, cp, cd, tp, *args, out, gemms)
        return
    g0, a0 = out[B_GEMM], out[B_ATTN]
    attention_block(mv, hv, cg, cp, cd, tp, *args, out, gemms)
    out[B_GEMM] = g0 + share * (out[B_GEMM] - g0)
    out[B_ATTN] = a0 + share * (out[B_ATTN] - a0)


@njit(cache=True, nogil=True)
def mixed_attention(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    dc_ctx: float,
    out: np.ndarray,
    gemms: bool = True,
) -> None:
    """The mean layer's token mixer, added into ``out``: full-attention layers over the whole
    context (DeepSeek sparse attention: over at most ``index_topk`` tokens, plus its indexer
    scoring every cached token in fp8), windowed layers with each query over at most the
    window (a prompt chunk longer than the window included), and linear-attention layers as
    they run (``linear_attention_block``). A top-k-capped prompt chunk is still priced causally
    over itself (an overestimate when the chunk is longer than ``index_topk``). ``gemms`` False
    leaves the GEMMs out (``out[B_ATTN]`` gets the same time; see ``step_fixed``)."""
    layers = mv[M_LAYERS]
    n_win, n_lin = mv[M_WINDOW_LAYERS], mv[M_LINEAR_LAYERS]
    n_full = layers - n_win - n_lin
    topk = mv[M_INDEX_TOPK]
    if n_full > 0.0:
        past, ctx = pf_past, dc_ctx
        if topk > 0.0:
            past, ctx = min(pf_past, topk), min(dc_ctx, topk)
        _add_scaled_attention(
            mv,
            hv,
            cg,
            cp,
            cd,
            tp,
            pf_seqs,
            pf_new,
            past,
            dc_seqs,
            ctx,
            0.0,
            n_full / layers,
            out,
            gemms,
        )
    if n_win > 0.0:
        w = mv[M_WINDOW]
        _add_scaled_attention(
            mv,
            hv,
            cg,
            cp,
            cd,
            tp,
            pf_seqs,
            pf_new,
            min(pf_past, w),
            dc_seqs,
            min(dc_ctx, w),
            w,
            n_win / layers,
            out,
            gemms,
        )
    if n_lin > 0.0:
        g0, a0 = out[B_GEMM], out[B_ATTN]
        linear_attention_block(mv, hv, cg, tp, pf_seqs, pf_new, dc_seqs, out, gemms)
        share = n_lin / layers
        out[B_GEMM] = g0 + share * (out[B_GEMM] - g0)
        out[B_ATTN] = a0 + share * (out[B_ATTN] - a0)
    if topk > 0.0:
        out[B_ATTN] += indexer_ms(mv, hv, pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx)


@njit(cache=True, nogil=True)
def linear_attention_block(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    tp: float,
    pf_seqs: float,
    pf_new: float,
    dc_seqs: float,
    out: np.ndarray,
    gemms: bool = True,
) -> None:
    """One Gated DeltaNet block (Qwen3-Next) on one GPU, its heads split over ``tp``, added into
    ``out``: GEMMs are the q/k/v/z input projection (2 key + 2 value dims), the beta/decay
    projection (2 per value head) and the output projection; attention time is its short causal
    convolution over q/k/v, the gated delta rule and the gated RMSNorm (``linear_mixer_ms``).
    Past tokens do not enter: the recurrence carries a fixed state. ``gemms`` False leaves the
    GEMMs out."""
    h, wb, peak, bw = mv[M_HIDDEN], hv[H_W_BYTES], hv[H_PEAK], hv[H_HBM_BW]
    key = mv[M_LIN_K_HEADS] * mv[M_LIN_K_DIM] / tp
    value = mv[M_LIN_V_HEADS] * mv[M_LIN_V_DIM] / tp
    tokens = pf_seqs * pf_new + dc_seqs
    if gemms:
        gemm = gemm_ms(tokens, 2.0 * key + 2.0 * value, h, wb, peak, bw, cg)
        gemm += gemm_ms(tokens, 2.0 * mv[M_LIN_V_HEADS] / tp, h, wb, peak, bw, cg)
        gemm += gemm_ms(tokens, h, value, wb, peak, bw, cg)
        out[B_GEMM] += gemm
    out[B_ATTN] += linear_mixer_ms(mv, hv, tp, pf_seqs, pf_new, dc_seqs)


@njit(cache=True, nogil=True)
def linear_mixer_ms(
    mv: np.ndarray, hv: np.ndarray, tp: float, pf_seqs: float, pf_new: float, dc_seqs: float
) -> float:
    """The non-GEMM kernels of a Gated DeltaNet block on one GPU (ms); see ``LINEAR_CHUNK``.

    Prefill runs the chunked gated delta rule: per value head and chunk of C tokens, the
    intra-chunk K K^T (2 C^2 dk), its triangular solve (2 C^3 / 3), the WY factors W and U
    (2 C^2 dk, 2 C^2 dv), the new values U - W S (2 C dk dv), the state update S += K^T V
    (2 C dk dv) and the output Q S + (Q K^T) V (2 C dk dv + 2 C^2 (dk + dv)) in tensor-core
    dot products; it writes and rereads one dk x dv state per chunk. Decode runs the recurrent
    rule per sequence: read and write the dk x dv state of every value head (bf16) once,
    7 dk dv FLOPs per head. Both also run the causal convolution over q/k/v (read and write
    each channel, decode also its ``conv - 1``-token state) and the gated RMSNorm (read the
    output and its gate, write the output). Each side is the larger of its FLOPs at
    ``ATTN_COMPUTE_EFFICIENCY`` of the bf16 peak and its bytes at ``ELEMENTWISE_BW_EFFICIENCY``
    of HBM, plus a launch per kernel."""
    heads = mv[M_LIN_V_HEADS] / tp
    dk, dv = mv[M_LIN_K_DIM], mv[M_LIN_V_DIM]
    conv_dim = (2.0 * mv[M_LIN_K_HEADS] * dk + mv[M_LIN_V_HEADS] * dv) / tp
    value = heads * dv
    c = LINEAR_CHUNK
    flops_s = ATTN_COMPUTE_EFFICIENCY * hv[H_PEAK_BF16]
    bytes_s = ELEMENTWISE_BW_EFFICIENCY * hv[H_HBM_BW]
    # convolution over q/k/v and gated RMSNorm, per token
    per_token_bytes = ACT_BYTES * (2.0 * conv_dim + 3.0 * value)
    t = 0.0
    if pf_seqs > 0.0 and pf_new > 0.0:
        tokens = pf_seqs * pf_new
        chunks = pf_seqs * math.ceil(pf_new / c)
        flops = heads * (
            tokens * (6.0 * dk * dv + c * (6.0 * dk + 4.0 * dv)) + chunks * 2.0 * c**3 / 3.0
        )
        qkv_bytes = tokens * ACT_BYTES * (conv_dim + value)  # the rule reads q, k, v, writes o
        state_bytes = chunks * heads * 2.0 * dk * dv * STATE_BYTES
        nbytes = tokens * per_token_bytes + qkv_bytes + state_bytes
        t += 1e3 * max(flops / flops_s, nbytes / bytes_s) + LINEAR_PREFILL_KERNELS * LAUNCH_MS_EAGER
    if dc_seqs > 0.0:
        flops = dc_seqs * heads * 7.0 * dk * dv
        state_bytes = dc_seqs * (
            heads * 2.0 * dk * dv * STATE_BYTES
            + 2.0 * (mv[M_LIN_CONV] - 1.0) * conv_dim * STATE_BYTES
        )
        nbytes = dc_seqs * per_token_bytes + state_bytes
        launch = LAUNCH_MS_GRAPH if hv[H_CUDA_GRAPHS] > 0.5 else LAUNCH_MS_EAGER
        t += 1e3 * max(flops / flops_s, nbytes / bytes_s) + LINEAR_DECODE_KERNELS * launch
    return t


@njit(cache=True, nogil=True)
def indexer_ms(
    mv: np.ndarray,
    hv: np.ndarray,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    dc_ctx: float,
) -> float:
    """DeepSeek sparse attention's indexer on one layer: every query token scores every cached
    token with ``index_heads`` fp8 heads of ``index_dim`` (replicated over TP), reading each
    cached key (fp8 + fp32 scale) once per sequence."""
    heads, dim = mv[M_INDEX_HEADS], mv[M_INDEX_DIM]
    pairs = pf_seqs * pf_new * (pf_past + 0.5 * pf_new) + dc_seqs * dc_ctx
    flops = 2.0 * pairs * heads * dim
    nbytes = (pf_seqs * (pf_past + pf_new) + dc_seqs * dc_ctx) * (dim + 4.0)
    return 1e3 * max(
        flops / (hv[H_PEAK] * ATTN_COMPUTE_EFFICIENCY),
        nbytes / (hv[H_HBM_BW] * hv[H_DECODE_ATTN_EFF]),
    )


@njit(cache=True, nogil=True)
def dense_ffn_ms(
    tokens: float, width: float, shards: float, mv: np.ndarray, hv: np.ndarray, cg: np.ndarray
) -> float:
    """Gated FFN (gate+up fused, then down) of ``width`` split over ``shards`` GPUs."""
    if tokens <= 0.0 or width <= 0.0:
        return 0.0
    h, wb, peak, bw = mv[M_HIDDEN], hv[H_W_BYTES], hv[H_PEAK], hv[H_HBM_BW]
    w = width / shards
    return gemm_ms(tokens, 2.0 * w, h, wb, peak, bw, cg) + gemm_ms(tokens, h, w, wb, peak, bw, cg)


@njit(cache=True, nogil=True)
def ffn_ms(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    tp: float,
    ep: float,
    dp: float,
    tokens: float,
    prefill: bool,
    moe: bool,
    out: np.ndarray,
    moe_tokens: float,
) -> None:
    """The FFN half of a layer on one GPU (dense or MoE), with its communication and the
    layer's elementwise kernels; adds gemm/comm/other milliseconds into ``out``. ``tokens`` are
    this GPU's attention-DP rank's; an MoE layer's experts see ``moe_tokens`` tokens from all
    ranks of the stage (negative: ``tokens * dp``, every rank carrying the same mix)."""
    h = mv[M_HIDDEN]
    act = tokens * h * ACT_BYTES
    if moe:
        stage = tp * dp
        moe_tp = stage / ep
        e, topk, width = mv[M_EXPERTS], mv[M_TOPK], mv[M_MOE_FFN]
        stage_tokens = moe_tokens if moe_tokens >= 0.0 else tokens * dp
        out[B_GEMM] += router_ms(tokens, e, h, hv)
        active_local = max(expected_distinct(e, topk, stage_tokens) / ep, 1.0)
        rows = stage_tokens * topk / ep
        w = width / moe_tp
        wb = hv[H_EXPERT_W_BYTES]  # routed experts as the checkpoint stores them
        gemm_rows = padded_moe_rows(rows, e / ep, moe_tp, hv)
        out[B_GEMM] += grouped_gemm_ms(gemm_rows, active_local, 2.0 * w, h, wb, hv, cg)
        out[B_GEMM] += grouped_gemm_ms(gemm_rows, active_local, h, w, wb, hv, cg)
        out[B_GEMM] += dense_ffn_ms(tokens, mv[M_SHARED] * width, tp, mv, hv, cg)
        if dp > 1.0:
            # attention-DP ranks hold different tokens: dispatch them to the experts' owners
            # and combine the results (all-to-all over the EP group, if any), then reduce over
            # the expert TP group; a GPU's experts sum their top-k outputs per token before
            # that reduction. Tokens go out at the hardware vector's dispatch precision (fp8
            # where the layers compute quantized) and come back in bf16.
            routed = tokens / tp * topk * h
            comm = alltoall_ms(routed * hv[H_DISPATCH_BYTES], ep, hv)
            comm += alltoall_ms(routed * ACT_BYTES, ep, hv)
            comm += allreduce_ms(min(rows, stage_tokens) * h * ACT_BYTES, moe_tp, hv)
        else:
            # with TP attention every GPU of the stage already holds every token: each runs its
            # own experts' share on them and one all-reduce over the stage sums the partial
            # outputs, with no dispatch (vLLM without data parallelism, SGLang without an
            # all-to-all backend, TensorRT-LLM without attention DP)
            comm = allreduce_ms(act, tp, hv)
        ffn_width = (mv[M_SHARED] * width) / tp + rows * w / max(tokens, 1.0)
        glue = MOE_GLUE_KERNELS
    else:
        out[B_GEMM] += dense_ffn_ms(tokens, mv[M_FFN], tp, mv, hv, cg)
        comm = allreduce_ms(act, tp, hv)
        ffn_width = mv[M_FFN] / tp
        glue = 0.0
    out[B_COMM] += comm
    launch = LAUNCH_MS_GRAPH if (hv[H_CUDA_GRAPHS] > 0.5 and not prefill) else LAUNCH_MS_EAGER
    # two RMSNorms + residual adds read/write h per token; SiLU-and-mul reads 2w, writes w
    elem_bytes = tokens * ACT_BYTES * (6.0 * h + 3.0 * ffn_width)
    out[B_OTHER] += (ELEMENTWISE_KERNELS_PER_LAYER + glue) * launch + 1e3 * elem_bytes / (
        hv[H_HBM_BW] * ELEMENTWISE_BW_EFFICIENCY
    )


@njit(cache=True, nogil=True)
def layer_ms(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    ep: float,
    dp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    dc_ctx: float,
    moe: bool,
    out: np.ndarray,
) -> None:
    """One decoder layer on one GPU; adds gemm/attention/comm/other milliseconds into ``out``."""
    tokens = pf_seqs * pf_new + dc_seqs
    mixed_attention(mv, hv, cg, cp, cd, tp, pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx, out, True)
    # all-reduce after the attention output projection
    out[B_COMM] += allreduce_ms(tokens * mv[M_HIDDEN] * ACT_BYTES, tp, hv)
    ffn_ms(mv, hv, cg, tp, ep, dp, tokens, pf_seqs > 0.0, moe, out, -1.0)


@njit(cache=True, nogil=True)
def step_ms(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    dc_ctx: float,
    per_layer: np.ndarray,
    scratch: np.ndarray,
    moe_tokens: float = -1.0,
) -> tuple[float, float]:
    """One engine step of one worker: returns (latency_ms, stage_ms); fills ``per_layer`` with
    the mean decoder layer's [gemm, attention, communication, other] milliseconds on one GPU.
    The arguments are one attention-DP rank's; ``moe_tokens`` is the tokens the MoE layers see
    from all ranks of the stage (negative: ``dp`` times this rank's, every rank alike)."""
    per_layer[:] = 0.0
    tokens = pf_seqs * pf_new + dc_seqs
    # every layer has the same attention block; only the FFN differs between dense and MoE layers
    mixed_attention(
        mv, hv, cg, cp, cd, tp, pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx, per_layer, True
    )
    per_layer[B_COMM] += allreduce_ms(tokens * mv[M_HIDDEN] * ACT_BYTES, tp, hv)
    _mean_ffn(mv, hv, cg, tp, ep, dp, tokens, pf_seqs > 0.0, per_layer, scratch, moe_tokens)
    head, p2p, host, issue = _head_p2p_host(mv, hv, cg, tp, pp, dp, pf_seqs, pf_new, dc_seqs)
    return _step_total(mv[M_LAYERS], pp, per_layer, head, p2p, host, issue)


@njit(cache=True, nogil=True)
def _layer_counts(mv: np.ndarray) -> tuple[float, float, float]:
    """(layers, dense-FFN layers, MoE layers) of the model."""
    layers = mv[M_LAYERS]
    n_moe = 0.0
    if mv[M_EXPERTS] > 0.0:
        n_moe = layers - mv[M_DENSE_LAYERS]
    return layers, layers - n_moe, n_moe


@njit(cache=True, nogil=True)
def _mean_ffn(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    tp: float,
    ep: float,
    dp: float,
    tokens: float,
    prefill: bool,
    per_layer: np.ndarray,
    scratch: np.ndarray,
    moe_tokens: float,
) -> tuple[float, float]:
    """Adds the mean layer's FFN (dense and MoE layers weighted by their counts) into
    ``per_layer``; returns what the dense and the MoE FFN added to its attention slot
    (``moe_tokens``: as in ``ffn_ms``)."""
    layers, n_dense, n_moe = _layer_counts(mv)
    attn_dense = attn_moe = 0.0
    if n_dense > 0.0:
        scratch[:] = 0.0
        ffn_ms(mv, hv, cg, tp, ep, dp, tokens, prefill, False, scratch, moe_tokens)
        add = scratch * (n_dense / layers)
        per_layer += add
        attn_dense = add[B_ATTN]
    if n_moe > 0.0:
        scratch[:] = 0.0
        ffn_ms(mv, hv, cg, tp, ep, dp, tokens, prefill, True, scratch, moe_tokens)
        add = scratch * (n_moe / layers)
        per_layer += add
        attn_moe = add[B_ATTN]
    return attn_dense, attn_moe


@njit(cache=True, nogil=True)
def _head_p2p_host(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    tp: float,
    pp: float,
    dp: float,
    pf_seqs: float,
    pf_new: float,
    dc_seqs: float,
) -> tuple[float, float, float, float]:
    """``step_ms``'s LM head, one pipeline hop, host time and the host's issue time per layer
    (ms, ``issue_ms_per_layer``)."""
    # LM head on the last stage: logits for each decoding sequence and each prompt's last token;
    # a bf16 GEMM whatever the precision (quantized checkpoints and engines keep it unquantized,
    # as memory.EMBED_BYTES sizes it)
    logits = pf_seqs + dc_seqs
    head = gemm_ms(
        logits, mv[M_VOCAB] / tp, mv[M_HIDDEN], EMBED_BYTES, hv[H_PEAK_BF16], hv[H_HBM_BW], cg
    )
    tokens = pf_seqs * pf_new + dc_seqs
    p2p = 0.0
    if pp > 1.0:
        bw, lat = link_for(tp * dp * pp, hv)
        p2p = lat + 1e3 * tokens * mv[M_HIDDEN] * ACT_BYTES / tp / bw
    host = hv[H_STEP_OVERHEAD_MS] + hv[H_SEQ_OVERHEAD_MS] * (pf_seqs + dc_seqs)
    return head, p2p, host, issue_ms_per_layer(hv, pf_seqs, dc_seqs)


@njit(cache=True, nogil=True)
def issue_ms_per_layer(hv: np.ndarray, pf_seqs: float, dc_seqs: float) -> float:
    """The host's time to issue one decoder layer of a step (ms): ``H_EAGER_LAYER_MS`` for a
    step that runs eagerly (one carrying prompt tokens, or a decode step larger than the largest
    captured CUDA graph, ``H_GRAPH_MAX_BS``; every step of an engine without decode graphs), 0
    for a graph replay."""
    eager = pf_seqs > 0.0 or hv[H_CUDA_GRAPHS] < 0.5 or dc_seqs > hv[H_GRAPH_MAX_BS]
    return hv[H_EAGER_LAYER_MS] if eager else 0.0


@njit(cache=True, nogil=True)
def _step_total(
    layers: float,
    pp: float,
    per_layer: np.ndarray,
    head: float,
    p2p: float,
    host: float,
    issue: float,
) -> tuple[float, float]:
    """``step_ms``'s (latency_ms, stage_ms) from the mean layer ``per_layer`` and the rest.
    ``issue`` (ms per layer, 0 for a CUDA-graph replay) is the host's time to launch a layer's
    kernels: the GPU runs them as they come, so a stage's layers take the longer of their GPU
    time and their host's issue time, not the sum; the LM head runs after the last layer."""
    layers_total = layers * (per_layer[0] + per_layer[1] + per_layer[2] + per_layer[3])
    # the busiest stage: one holding ceil(layers / pp) layers, or the last one, which carries
    # the LM head beside its share of the layers
    per_stage = math.ceil(layers / pp)
    full = max(layers_total * per_stage / layers, per_stage * issue)
    last = max(layers_total / pp, layers / pp * issue) + head
    stage = max(full, last) + p2p
    latency = max(layers_total, layers * issue) + head + (pp - 1.0) * p2p + host
    return latency, stage


# slots of ``step_fixed``: the mean layer's GEMM, communication and other time after the FFN,
# what the dense and the MoE FFN add to its attention slot, the LM head, a pipeline hop, host time
# and the host's issue time per layer of an eager step
F_GEMM, F_COMM, F_OTHER, F_ATTN_DENSE, F_ATTN_MOE, F_HEAD, F_P2P, F_HOST = 0, 1, 2, 3, 4, 5, 6, 7
F_ISSUE = 8
FIXED_SLOTS = 9


@njit(cache=True, nogil=True)
def step_fixed(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    per_layer: np.ndarray,
    scratch: np.ndarray,
    fixed: np.ndarray,
    moe_tokens: float = -1.0,
) -> None:
    """The terms of ``step_ms`` that the decode context does not enter, into ``fixed``
    ([FIXED_SLOTS], ms, ``F_*`` slots), for ``step_ms_fixed``: an engine loop pricing many steps
    of one batch at different contexts computes them once. Every term is the one ``step_ms``
    computes, in the same order, so the pair gives ``step_ms``'s result to the bit."""
    per_layer[:] = 0.0
    tokens = pf_seqs * pf_new + dc_seqs
    # the GEMM slot of the token mixer does not depend on the context (its attention slot,
    # priced here at a placeholder context, is left out)
    mixed_attention(mv, hv, cg, cp, cd, tp, pf_seqs, pf_new, pf_past, dc_seqs, 1.0, per_layer, True)
    per_layer[B_COMM] += allreduce_ms(tokens * mv[M_HIDDEN] * ACT_BYTES, tp, hv)
    attn_dense, attn_moe = _mean_ffn(
        mv, hv, cg, tp, ep, dp, tokens, pf_seqs > 0.0, per_layer, scratch, moe_tokens
    )
    fixed[F_ATTN_DENSE] = attn_dense
    fixed[F_ATTN_MOE] = attn_moe
    fixed[F_GEMM] = per_layer[B_GEMM]
    fixed[F_COMM] = per_layer[B_COMM]
    fixed[F_OTHER] = per_layer[B_OTHER]
    head, p2p, host, issue = _head_p2p_host(mv, hv, cg, tp, pp, dp, pf_seqs, pf_new, dc_seqs)
    fixed[F_HEAD] = head
    fixed[F_P2P] = p2p
    fixed[F_HOST] = host
    fixed[F_ISSUE] = issue


@njit(cache=True, nogil=True)
def step_fixed_key(
    mv: np.ndarray,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    moe_tokens: float = -1.0,
) -> tuple[float, float, float, float, float, float]:
    """What ``step_fixed`` depends on besides the model, hardware and layout: steps of equal
    keys have equal ``fixed`` terms. (prefill or not, tokens through the GEMMs, sequences given
    logits and host work, decoding sequences, for MLA the prefill's up-projected tokens, and the
    tokens the MoE layers see from the whole stage as given; the first three as ``step_ms``
    computes them, the next two because MLA's GEMMs see them.)"""
    tokens = pf_seqs * pf_new + dc_seqs
    up = pf_seqs * (pf_new + pf_past) if mv[M_MLA] > 0.5 and pf_seqs > 0.0 else 0.0
    return (1.0 if pf_seqs > 0.0 else 0.0, tokens, pf_seqs + dc_seqs, dc_seqs, up, moe_tokens)


@njit(cache=True, nogil=True)
def step_ms_fixed(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc_seqs: float,
    dc_ctx: float,
    fixed: np.ndarray,
    per_layer: np.ndarray,
) -> tuple[float, float]:
    """``step_ms`` (latency_ms, stage_ms; ``per_layer`` filled) of the step whose other terms
    ``step_fixed`` wrote into ``fixed`` for the same arguments: only the attention is priced,
    at ``dc_ctx``. Equal to ``step_ms`` to the bit."""
    per_layer[:] = 0.0
    mixed_attention(
        mv, hv, cg, cp, cd, tp, pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx, per_layer, False
    )
    layers, n_dense, n_moe = _layer_counts(mv)
    if n_dense > 0.0:
        per_layer[B_ATTN] += fixed[F_ATTN_DENSE]
    if n_moe > 0.0:
        per_layer[B_ATTN] += fixed[F_ATTN_MOE]
    per_layer[B_GEMM] = fixed[F_GEMM]
    per_layer[B_COMM] = fixed[F_COMM]
    per_layer[B_OTHER] = fixed[F_OTHER]
    return _step_total(
        layers, pp, per_layer, fixed[F_HEAD], fixed[F_P2P], fixed[F_HOST], fixed[F_ISSUE]
    )


@njit(cache=True, nogil=True)
def step_ms_many(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: np.ndarray,
    pp: np.ndarray,
    ep: np.ndarray,
    dp: np.ndarray,
    pf_seqs: np.ndarray,
    pf_new: np.ndarray,
    pf_past: np.ndarray,
    dc_seqs: np.ndarray,
    dc_ctx: np.ndarray,
    latency: np.ndarray,
    stage: np.ndarray,
    per_layer: np.ndarray,
) -> None:
    """``step_ms`` over arrays of design points (outputs written in place)."""
    row = np.zeros(4)
    scratch = np.zeros(4)
    for i in range(tp.shape[0]):
        lat, st = step_ms(
            mv,
            hv,
            cg,
            cp,
            cd,
            tp[i],
            pp[i],
            ep[i],
            dp[i],
            pf_seqs[i],
            pf_new[i],
            pf_past[i],
            dc_seqs[i],
            dc_ctx[i],
            row,
            scratch,
        )
        latency[i] = lat
        stage[i] = st
        per_layer[i, :] = row
