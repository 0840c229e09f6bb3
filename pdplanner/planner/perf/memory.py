"""Memory per GPU: weights, KV cache, the engine's workspace and its memory rule, in Numba.

  weights     every layer of the GPU's pipeline stage, sharded: attention (or linear attention)
              and dense FFN by TP (MLA's small down-projections replicated), experts over EP and,
              within an expert, over the stage's remaining GPUs; embedding and LM head split by TP
              on the first and last stage. Bytes per element as the checkpoint stores them
              (``H_W_BYTES`` for attention/dense/shared experts, ``H_EXPERT_W_BYTES`` for routed
              experts); embeddings and LM head in bf16 (quantized checkpoints keep them so).
  KV cache    per token per stage: K and V for the GPU's share of KV heads (replicated once TP
              exceeds the KV-head count), or MLA's compressed latent (replicated on every TP
              rank), on full-attention layers, plus a sparse-attention indexer's fp8 keys.
              Windowed layers hold at most ``window`` tokens per sequence: charged per token or
              a full window per sequence, whichever is less (both are upper bounds; exact for
              contexts within, resp. beyond, the window). Linear-attention layers hold a fixed
              state per sequence (bf16, heads sharded by TP).
  workspace   what the engine reserves besides weights and KV: activations of its profiled
              forward pass (``profile_tokens``, or the step itself if larger), its sampler's
              logits workspace (``sampler_seqs`` x vocab x bytes per logit; whichever is larger),
              non-torch memory, communication buffers when the worker spans GPUs, CUDA graphs.
  capacity    the bytes the device reports less the driver's reservation (``DRIVER_RESERVED_
              BYTES``), split by the engine's rule (pdplanner/planner/catalog/engines.py):
                total         KV = fraction x capacity - weights - activations - buffers (vLLM)
                total_static  KV = fraction x capacity - weights (SGLang)
                free          KV = fraction x (capacity - weights - workspace) (TensorRT-LLM)
              and never more than what is left after everything, CUDA graphs included.
Sources and measurements behind the engine figures are in
pdplanner/planner/catalog/data/engines.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from pdplanner.planner.perf.params import (
    H_COMM_BYTES,
    H_EXPERT_W_BYTES,
    H_GRAPH_BYTES,
    H_HBM_BYTES,
    H_KV_BYTES,
    H_MEM_FRACTION,
    H_MEM_RULE,
    H_NON_TORCH_BYTES,
    H_PROFILE_TOKENS,
    H_SAMPLER_BYTES_PER_VOCAB,
    H_W_BYTES,
    M_ATTN_GATE,
    M_DENSE_LAYERS,
    M_EXPERTS,
    M_FFN,
    M_HEAD_DIM,
    M_HEADS,
    M_HIDDEN,
    M_INDEX_DIM,
    M_INDEX_PARAMS,
    M_INDEX_TOPK,
    M_KV_HEADS,
    M_KV_LORA,
    M_LAYERS,
    M_LINEAR_LAYERS,
    M_LINEAR_PARAMS,
    M_LINEAR_STATE,
    M_MLA,
    M_MOE_FFN,
    M_NOPE,
    M_Q_LORA,
    M_ROPE,
    M_SHARED,
    M_SINKS,
    M_TIED,
    M_V_HEAD,
    M_VOCAB,
    M_WINDOW,
    M_WINDOW_LAYERS,
    PerfContext,
)

# nvidia-smi's total on an H100 SXM (81,559 MiB) less the total CUDA reports to engines
# (79.18 GiB, vLLM logs in llm-d-benchmark): memory the driver keeps. Assumed alike elsewhere.
DRIVER_RESERVED_BYTES = 81559 * 2**20 - 79.18 * 2**30
ACT_BYTES = 2.0
EMBED_BYTES = 2.0  # embeddings and LM head stay bf16
STATE_BYTES = 2.0  # linear-attention state (bf16)
INDEX_SCALE_BYTES = 4.0  # one fp32 scale per cached indexer key
NO_LIMIT = 1e15  # KV capacity in tokens when no layer's cache grows with the context


@njit(cache=True, nogil=True)
def weight_bytes_per_gpu(
    mv: np.ndarray, hv: np.ndarray, tp: float, pp: float, ep: float, dp: float
) -> float:
    h = mv[M_HIDDEN]
    heads = mv[M_HEADS]
    if mv[M_MLA] > 0.5:
        nope, rope, vh, lora, q_lora = (
            mv[M_NOPE],
            mv[M_ROPE],
            mv[M_V_HEAD],
            mv[M_KV_LORA],
            mv[M_Q_LORA],
        )
        replicated = h * (lora + rope) + (h * q_lora if q_lora > 0 else 0.0)
        q_up = (q_lora if q_lora > 0 else h) * heads * (nope + rope)
        sharded = q_up + lora * heads * (nope + vh) + heads * vh * h
        attn = replicated + sharded / tp
    else:
        d = mv[M_HEAD_DIM]
        kv_heads = math.ceil(mv[M_KV_HEADS] / tp)
        q_heads = heads * (2.0 if mv[M_ATTN_GATE] > 0.5 else 1.0)
        attn = h * (q_heads / tp + 2.0 * kv_heads) * d + heads / tp * d * h
    # sparse-attention indexer (replicated) and attention sinks (sharded with the heads)
    attn += mv[M_INDEX_PARAMS] + mv[M_SINKS] * heads / tp
    layers = mv[M_LAYERS]
    n_linear = mv[M_LINEAR_LAYERS]
    n_moe = layers - mv[M_DENSE_LAYERS] if mv[M_EXPERTS] > 0 else 0.0
    n_dense = layers - n_moe
    wb, eb = hv[H_W_BYTES], hv[H_EXPERT_W_BYTES]
    dense_ffn = 3.0 * h * mv[M_FFN] / tp * wb
    moe_tp = tp * dp / ep
    expert = 3.0 * h * mv[M_MOE_FFN]
    moe_ffn = (mv[M_EXPERTS] / ep) * expert / moe_tp * eb + (
        mv[M_SHARED] * expert / tp + h * mv[M_EXPERTS]
    ) * wb
    mixers = ((layers - n_linear) * attn + n_linear * mv[M_LINEAR_PARAMS] / tp) * wb
    # the fullest stage holds ceil(layers / pp) layers
    per_stage_layers = (mixers + n_dense * dense_ffn + n_moe * moe_ffn) * (
        math.ceil(layers / pp) / layers
    )
    embed = mv[M_VOCAB] * h / tp
    embeds = embed * (1.0 if (mv[M_TIED] > 0.5 and pp == 1.0) else 2.0 if pp == 1.0 else 1.0)
    return per_stage_layers + embeds * EMBED_BYTES


@njit(cache=True, nogil=True)
def _stage_share(mv: np.ndarray, pp: float) -> float:
    return math.ceil(mv[M_LAYERS] / pp) / mv[M_LAYERS]


@njit(cache=True, nogil=True)
def _kv_per_layer(mv: np.ndarray, hv: np.ndarray, tp: float) -> float:
    if mv[M_MLA] > 0.5:
        return (mv[M_KV_LORA] + mv[M_ROPE]) * hv[H_KV_BYTES]
    return 2.0 * math.ceil(mv[M_KV_HEADS] / tp) * mv[M_HEAD_DIM] * hv[H_KV_BYTES]


@njit(cache=True, nogil=True)
def kv_bytes_per_token(mv: np.ndarray, hv: np.ndarray, tp: float, pp: float) -> float:
    """KV-cache bytes one cached token occupies on one GPU of its stage, on the layers whose
    cache grows with the context (full attention, and the sparse-attention indexer's keys)."""
    full_layers = mv[M_LAYERS] - mv[M_WINDOW_LAYERS] - mv[M_LINEAR_LAYERS]
    per_token = full_layers * _kv_per_layer(mv, hv, tp)
    if mv[M_INDEX_TOPK] > 0:
        per_token += mv[M_LAYERS] * (mv[M_INDEX_DIM] + INDEX_SCALE_BYTES)
    return per_token * _stage_share(mv, pp)


@njit(cache=True, nogil=True)
def window_bytes_per_token(mv: np.ndarray, hv: np.ndarray, tp: float, pp: float) -> float:
    """KV bytes one token occupies on the windowed layers of one GPU of its stage, as long as
    its sequence is within the window (beyond it, a sequence holds ``window`` tokens there)."""
    return mv[M_WINDOW_LAYERS] * _kv_per_layer(mv, hv, tp) * _stage_share(mv, pp)


@njit(cache=True, nogil=True)
def linear_state_bytes(mv: np.ndarray, tp: float, pp: float) -> float:
    """Bytes one sequence's linear-attention state takes on one GPU of its stage (bf16, heads
    sharded by TP), whatever the sequence's length."""
    return mv[M_LINEAR_LAYERS] * mv[M_LINEAR_STATE] * STATE_BYTES / tp * _stage_share(mv, pp)


@njit(cache=True, nogil=True)
def seq_state_bytes(mv: np.ndarray, hv: np.ndarray, tp: float, pp: float) -> float:
    """The most one sequence holds beyond its growing KV: a full window on windowed layers and
    the linear-attention state."""
    return mv[M_WINDOW] * window_bytes_per_token(mv, hv, tp, pp) + linear_state_bytes(mv, tp, pp)


@njit(cache=True, nogil=True)
def cache_bytes(
    mv: np.ndarray, hv: np.ndarray, tp: float, pp: float, tokens: float, seqs: float
) -> float:
    """Bytes ``seqs`` sequences holding ``tokens`` cached tokens take on one GPU: growing KV per
    token, linear state per sequence, and on windowed layers the lesser of "every token" and
    "a full window per sequence" (each is an upper bound)."""
    window = min(
        tokens * window_bytes_per_token(mv, hv, tp, pp),
        seqs * mv[M_WINDOW] * window_bytes_per_token(mv, hv, tp, pp),
    )
    return (
        tokens * kv_bytes_per_token(mv, hv, tp, pp) + seqs * linear_state_bytes(mv, tp, pp) + window
    )


@njit(cache=True, nogil=True)
def activation_bytes(mv: np.ndarray, tp: float, step_tokens: float, logits: float) -> float:
    """Live tensors of a forward pass of ``step_tokens`` tokens producing ``logits`` logits."""
    h = mv[M_HIDDEN]
    width = max(mv[M_FFN], mv[M_MOE_FFN] * (mv[M_SHARED] + 1.0))
    qkv = (mv[M_HEADS] + 2.0 * mv[M_KV_HEADS]) * mv[M_HEAD_DIM]
    per_token = 4.0 * h + (qkv + 3.0 * width) / tp
    return step_tokens * per_token * ACT_BYTES + logits * mv[M_VOCAB] / tp * 4.0


@njit(cache=True, nogil=True)
def workspace_bytes(
    mv: np.ndarray,
    hv: np.ndarray,
    tp: float,
    pp: float,
    dp: float,
    step_tokens: float,
    logits: float,
) -> float:
    """The engine's reservation besides weights, KV and CUDA graphs: activations of its
    profiled forward pass or sampler (the larger), non-torch memory and, when the worker spans
    GPUs, communication buffers."""
    forward = activation_bytes(mv, tp, max(step_tokens, hv[H_PROFILE_TOKENS]), logits)
    sampler = hv[H_SAMPLER_BYTES_PER_VOCAB] * mv[M_VOCAB]
    comm = hv[H_COMM_BYTES] if tp * pp * dp > 1.0 else 0.0
    return max(forward, sampler) + hv[H_NON_TORCH_BYTES] + comm


@njit(cache=True, nogil=True)
def capacity_bytes(hv: np.ndarray) -> float:
    """The memory engines see: the device's reported total less the driver's reservation."""
    return hv[H_HBM_BYTES] - DRIVER_RESERVED_BYTES


MIB = float(2**20)


@njit(cache=True, nogil=True)
def derived_fraction(hv: np.ndarray, tp: float, pp: float, dp: float) -> float:
    """The memory fraction of one GPU: ``H_MEM_FRACTION`` when set (> 0), else SGLang's default
    mem_fraction_static, which it derives at start (sgl-project/sglang 0.5,
    python/sglang/srt/server_args.py ``_handle_gpu_memory_settings``): the device's memory less
    a reservation for activations and CUDA graphs, in MiB,

        reserved = 512 + 1.5 x max(chunked_prefill_size, 2048) + 2 x cuda_graph_max_bs
                   + tp_size x pp_size / 8 x 1024
                   [+ 3 x cuda_graph_max_bs x dp_size, + 1.5 x cuda_graph_max_bs x dp_size when
                    cuda_graph_max_bs > 300: with DP attention]
        at least 10 GiB on GPUs of more than 60 GiB; fraction = (memory - reserved) / memory,
        rounded to 3 digits,

    with chunked_prefill_size and cuda_graph_max_bs SGLang's defaults for the memory class
    (2048 below 35 GiB, 4096 below 60, 8192 below 160, 16384 above; CUDA graphs up to 8, 24 or
    80, 32 or 160, 256 or 512 (TP >= 4), 512), memory as nvidia-smi reports it. SGLang's
    tp_size is the whole attention group, ``tp x dp`` here. Examples: 0.835 on an H100 at TP 1,
    0.906 on an H200 at TP 2, 0.859 on a GB200 at TP 4 (0.811 at TP 1 with 4 DP-attention
    ranks). A launch that sets its own chunked_prefill_size or cuda_graph_max_bs makes SGLang
    derive another value: exports therefore write this one out (--mem-fraction-static)."""
    f = hv[H_MEM_FRACTION]
    if f > 0.0:
        return f
    # SGLang reads the device's memory as nvidia-smi reports it (get_nvgpu_memory_capacity)
    total = hv[H_HBM_BYTES] / MIB
    sg_tp = tp * dp
    if total < 20.0 * 1024.0:
        chunk, graph = 2048.0, 8.0
    elif total < 35.0 * 1024.0:
        chunk, graph = 2048.0, 24.0 if sg_tp < 4.0 else 80.0
    elif total < 60.0 * 1024.0:
        chunk, graph = 4096.0, 32.0 if sg_tp < 4.0 else 160.0
    elif total < 160.0 * 1024.0:
        chunk, graph = 8192.0, 256.0 if sg_tp < 4.0 else 512.0
    else:
        chunk, graph = 16384.0, 512.0
    reserved = 512.0 + 1.5 * max(chunk, 2048.0) + 2.0 * graph + sg_tp * pp / 8.0 * 1024.0
    if dp > 1.0:
        reserved += 3.0 * graph * dp
        if graph > 300.0:
            reserved += 1.5 * graph * dp
    if total > 60.0 * 1024.0:
        reserved = max(reserved, 10.0 * 1024.0)
    # a GPU smaller than the reservation gets none (SGLang would fail to start)
    return max(math.floor((total - reserved) / total * 1000.0 + 0.5) / 1000.0, 0.0)


@njit(cache=True, nogil=True)
def kv_budget_bytes(
    mv: np.ndarray,
    hv: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    step_tokens: float,
    logits: float,
) -> float:
    """Bytes the engine gives the KV cache on one GPU (negative: the weights do not fit)."""
    total = capacity_bytes(hv)
    f = derived_fraction(hv, tp, pp, dp)
    w = weight_bytes_per_gpu(mv, hv, tp, pp, ep, dp)
    ws = workspace_bytes(mv, hv, tp, pp, dp, step_tokens, logits)
    graphs = hv[H_GRAPH_BYTES]
    rule = hv[H_MEM_RULE]
    if rule < 0.5:
        budget = f * total - w - ws
    elif rule < 1.5:
        budget = f * total - w
    else:
        budget = f * (total - w - ws - graphs)
    return min(budget, total - w - ws - graphs)


@njit(cache=True, nogil=True)
def resident_bytes(
    mv: np.ndarray,
    hv: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    step_tokens: float,
    logits: float,
) -> float:
    """Everything but the KV cache: the stage's weights, the engine's workspace, CUDA graphs."""
    return (
        weight_bytes_per_gpu(mv, hv, tp, pp, ep, dp)
        + workspace_bytes(mv, hv, tp, pp, dp, step_tokens, logits)
        + hv[H_GRAPH_BYTES]
    )


@njit(cache=True, nogil=True)
def kv_capacity_tokens(
    mv: np.ndarray,
    hv: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    step_tokens: float,
    logits: float,
) -> float:
    """Tokens the KV cache of one attention-DP rank holds for ``logits`` sequences (negative:
    the weights, or the sequences' fixed state, do not fit). The inverse of ``cache_bytes``:
    windowed layers charged per token or per sequence, whichever holds more tokens."""
    budget = kv_budget_bytes(mv, hv, tp, pp, ep, dp, step_tokens, logits)
    free = budget - logits * linear_state_bytes(mv, tp, pp)
    grow = kv_bytes_per_token(mv, hv, tp, pp)
    win = window_bytes_per_token(mv, hv, tp, pp)
    per_token = grow + win  # windowed layers charged per token
    by_token = free / per_token if per_token > 0.0 else (NO_LIMIT if free >= 0.0 else -1.0)
    if win <= 0.0:
        return by_token
    rest = free - logits * mv[M_WINDOW] * win  # windowed layers charged a full window per sequence
    by_seq = rest / grow if grow > 0.0 else (NO_LIMIT if rest >= 0.0 else -1.0)
    return max(by_token, by_seq)


@njit(cache=True, nogil=True)
def memory_bytes_per_gpu(
    mv: np.ndarray,
    hv: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    step_tokens: float,
    logits: float,
    cached_tokens: float,
) -> float:
    """Bytes one GPU needs for this step with ``cached_tokens`` of ``logits`` sequences in its
    rank's KV cache."""
    return resident_bytes(mv, hv, tp, pp, ep, dp, step_tokens, logits) + cache_bytes(
        mv, hv, tp, pp, cached_tokens, logits
    )


@dataclass(frozen=True)
class MemoryBreakdown:
    """One GPU's memory in bytes, as the engine splits it (for messages and reports)."""

    capacity_bytes: float  # what the engine sees (device total less the driver's reservation)
    fraction: float  # the engine's memory fraction
    fraction_flag: str  # what the engine calls it
    rule: str
    weights_bytes: float
    workspace_bytes: float  # activations or sampler, non-torch memory, communication buffers
    cuda_graph_bytes: float
    kv_budget_bytes: float  # what the rule leaves for the KV cache (negative: does not fit)
    kv_bytes_per_token: float  # on the layers whose cache grows with the context
    window_bytes_per_token: float  # on windowed layers, up to window tokens per sequence
    window_tokens: float
    linear_state_bytes: float  # per sequence, whatever its length

    def cache_bytes(self, tokens: float, seqs: float) -> float:
        """Bytes ``seqs`` sequences holding ``tokens`` tokens take (as ``cache_bytes``)."""
        window = min(tokens, seqs * self.window_tokens) * self.window_bytes_per_token
        return tokens * self.kv_bytes_per_token + seqs * self.linear_state_bytes + window

    def describe(self) -> str:
        """``weights 72.7 GB, workspace 5.3 GB, CUDA graphs 0.5 GB; KV cache -1.5 GB ...``."""
        gb = 1e9
        rule = {
            "total": "fraction x capacity - weights - workspace",
            "total_static": "fraction x capacity - weights",
            "free": "fraction x (capacity - weights - workspace - CUDA graphs)",
        }[self.rule]
        return (
            f"weights {self.weights_bytes / gb:.1f} GB, workspace {self.workspace_bytes / gb:.1f}"
            f" GB, CUDA graphs {self.cuda_graph_bytes / gb:.1f} GB; KV cache "
            f"{self.kv_budget_bytes / gb:.1f} GB ({self.kv_bytes_per_token / 1e3:.1f} kB per "
            f"token) at {self.fraction_flag} {self.fraction:g} of {self.capacity_bytes / gb:.1f} "
            f"GB ({rule})"
        )


def memory_breakdown(
    ctx: PerfContext,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    step_tokens: float,
    logits: float,
) -> MemoryBreakdown:
    """The parts of one GPU's memory for a step of ``step_tokens`` tokens and ``logits``
    sequences (same arithmetic as the kernels above)."""
    mv, hv = ctx.mv, ctx.hv
    return MemoryBreakdown(
        capacity_bytes=float(capacity_bytes(hv)),
        fraction=float(derived_fraction(hv, tp, pp, dp)),
        fraction_flag=ctx.engine.memory_fraction_flag,
        rule=ctx.engine.memory_rule,
        weights_bytes=float(weight_bytes_per_gpu(mv, hv, tp, pp, ep, dp)),
        workspace_bytes=float(workspace_bytes(mv, hv, tp, pp, dp, step_tokens, logits)),
        cuda_graph_bytes=float(hv[H_GRAPH_BYTES]),
        kv_budget_bytes=float(kv_budget_bytes(mv, hv, tp, pp, ep, dp, step_tokens, logits)),
        kv_bytes_per_token=float(kv_bytes_per_token(mv, hv, tp, pp)),
        window_bytes_per_token=float(window_bytes_per_token(mv, hv, tp, pp)),
        window_tokens=float(mv[M_WINDOW]),
        linear_state_bytes=float(linear_state_bytes(mv, tp, pp)),
    )
