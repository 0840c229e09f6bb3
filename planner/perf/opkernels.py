"""Kernel-level latency primitives: GEMM, prefill attention, decode attention.

PLACEHOLDER roofline (to be replaced by the calibrated model); signatures are the contract.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def gemm_ms(m: float, n: float, k: float, elem_bytes: float, peak_flops_per_s: float,
            hbm_bytes_per_s: float, cal: np.ndarray) -> float:
    flops = 2.0 * m * n * k
    nbytes = (m * k + n * k) * elem_bytes + m * n * 2.0
    return 1e3 * max(flops / (peak_flops_per_s * 0.75), nbytes / (hbm_bytes_per_s * 0.8)) + 0.008


@njit(cache=True, nogil=True)
def attn_prefill_ms(batch: float, new_tokens: float, past_tokens: float, heads: float,
                    kv_heads: float, qk_dim: float, v_dim: float, peak_flops_per_s: float,
                    cal: np.ndarray) -> float:
    # causal: each new token attends to past + its own prefix
    pairs = new_tokens * (past_tokens + 0.5 * (new_tokens + 1.0))
    flops = 2.0 * batch * heads * pairs * (qk_dim + v_dim)
    return 1e3 * flops / (peak_flops_per_s * 0.4) + 0.01


@njit(cache=True, nogil=True)
def attn_decode_ms(batch: float, ctx: float, heads: float, kv_heads: float, head_dim: float,
                   kv_tensors: float, kv_elem_bytes: float, hbm_bytes_per_s: float,
                   bw_efficiency: float, cal: np.ndarray) -> float:
    nbytes = batch * ctx * kv_heads * head_dim * kv_tensors * kv_elem_bytes
    eff = bw_efficiency if bw_efficiency > 0 else 0.5
    return 1e3 * nbytes / (hbm_bytes_per_s * eff) + 0.01
