"""Memory per GPU: weights, KV cache, activations and fixed workspace, in Numba.

  weights     every layer of the GPU's pipeline stage, sharded: attention and dense FFN by TP
              (MLA's small down-projections replicated), experts over EP and, within an expert,
              over the stage's remaining GPUs; embedding and LM head split by TP on the first and
              last stage.
  KV cache    per token per stage: K and V for the GPU's share of KV heads (replicated once TP
              exceeds the KV-head count), or MLA's compressed latent (replicated on every TP rank).
  activations the largest step's live tensors: hidden states, QKV, FFN intermediate and logits.
  workspace   CUDA context, NCCL buffers, CUDA graphs and allocator slack: a fixed 3 GB.
Engines leave headroom (vLLM's gpu_memory_utilization 0.9); the rest holds the KV cache.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from planner.perf.params import (
    H_HBM_BYTES,
    H_KV_BYTES,
    H_W_BYTES,
    M_DENSE_LAYERS,
    M_EXPERTS,
    M_FFN,
    M_HEAD_DIM,
    M_HEADS,
    M_HIDDEN,
    M_KV_HEADS,
    M_KV_LORA,
    M_LAYERS,
    M_MLA,
    M_MOE_FFN,
    M_NOPE,
    M_Q_LORA,
    M_ROPE,
    M_SHARED,
    M_TIED,
    M_V_HEAD,
    M_VOCAB,
)

USABLE_FRACTION = 0.9
WORKSPACE_BYTES = 3.0e9
ACT_BYTES = 2.0


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
        attn = h * (heads / tp + 2.0 * kv_heads) * d + heads / tp * d * h
    layers = mv[M_LAYERS]
    n_moe = layers - mv[M_DENSE_LAYERS] if mv[M_EXPERTS] > 0 else 0.0
    n_dense = layers - n_moe
    dense_ffn = 3.0 * h * mv[M_FFN] / tp
    moe_tp = tp * dp / ep
    expert = 3.0 * h * mv[M_MOE_FFN]
    moe_ffn = (
        (mv[M_EXPERTS] / ep) * expert / moe_tp + mv[M_SHARED] * expert / tp + h * mv[M_EXPERTS]
    )
    # the fullest stage holds ceil(layers / pp) layers
    per_stage_layers = (n_dense * (attn + dense_ffn) + n_moe * (attn + moe_ffn)) * (
        math.ceil(layers / pp) / layers
    )
    embed = mv[M_VOCAB] * h / tp
    embeds = embed * (1.0 if (mv[M_TIED] > 0.5 and pp == 1.0) else 2.0 if pp == 1.0 else 1.0)
    return (per_stage_layers + embeds) * hv[H_W_BYTES]


@njit(cache=True, nogil=True)
def kv_bytes_per_token(mv: np.ndarray, hv: np.ndarray, tp: float, pp: float) -> float:
    """KV-cache bytes one cached token occupies on one GPU of its stage."""
    if mv[M_MLA] > 0.5:
        per_layer = mv[M_KV_LORA] + mv[M_ROPE]
    else:
        per_layer = 2.0 * math.ceil(mv[M_KV_HEADS] / tp) * mv[M_HEAD_DIM]
    return per_layer * math.ceil(mv[M_LAYERS] / pp) * hv[H_KV_BYTES]


@njit(cache=True, nogil=True)
def activation_bytes(mv: np.ndarray, tp: float, step_tokens: float, logits: float) -> float:
    h = mv[M_HIDDEN]
    width = max(mv[M_FFN], mv[M_MOE_FFN] * (mv[M_SHARED] + 1.0))
    qkv = (mv[M_HEADS] + 2.0 * mv[M_KV_HEADS]) * mv[M_HEAD_DIM]
    per_token = 4.0 * h + (qkv + 3.0 * width) / tp
    return step_tokens * per_token * ACT_BYTES + logits * mv[M_VOCAB] / tp * 4.0


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
    """Everything but the KV cache: workspace, the stage's weights and the step's activations."""
    return (
        WORKSPACE_BYTES
        + weight_bytes_per_gpu(mv, hv, tp, pp, ep, dp)
        + activation_bytes(mv, tp, step_tokens, logits)
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
    """Tokens the KV cache of one attention-DP rank holds (negative: weights do not fit)."""
    free = hv[H_HBM_BYTES] * USABLE_FRACTION - resident_bytes(
        mv, hv, tp, pp, ep, dp, step_tokens, logits
    )
    return free / kv_bytes_per_token(mv, hv, tp, pp)


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
    """Bytes one GPU needs for this step with ``cached_tokens`` in its rank's KV cache."""
    return resident_bytes(
        mv, hv, tp, pp, ep, dp, step_tokens, logits
    ) + cached_tokens * kv_bytes_per_token(mv, hv, tp, pp)
