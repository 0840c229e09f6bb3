"""Kernel-level latency primitives: GEMM, prefill attention and decode attention.

Method
------
Each primitive prices one GPU kernel from the work it does (FLOPs and bytes moved) against the
GPU's two ceilings, the dense tensor-core rate ``peak_flops_per_s`` and the HBM bandwidth
``hbm_bytes_per_s``. Datasheet ceilings are never reached, and how close a kernel gets depends on
its shape, so every primitive has a small set of parameters, each with a physical meaning:

* efficiencies: the share of a ceiling that a large, well-shaped kernel sustains;
* shape terms: tile padding, per-tile fixed work (prologue, epilogue, softmax bookkeeping), the
  longest single tile (the critical path when there are too few tiles to fill the SMs), too few
  independent streams to keep HBM busy;
* fixed latencies in milliseconds: launch and teardown, a second "combine" pass, the ramp of
  HBM bandwidth over the first microseconds of a transfer.

The parameters are fitted on measured tables (``pdplanner/planner/perf/data/<gpu>/``, see
``pdplanner/planner/perf/calibration.py``) by least squares on the logarithm of the time, so that
every row counts by its relative error. Efficiencies are shares of the peaks passed in, and
latencies are absolute, so a GPU without its own tables reuses another GPU's parameters with its
own peaks. The SM count (``N_SM`` slots) is that of the GPU the tables were measured on.

GEMM, ``y[M,N] = x[M,K] @ W[N,K]^T`` (cuBLAS)::

    m_pad     = ceil(M / 64) * 64                          tile padding along the token rows
    t_mma     = 2 m_pad N (K + k_tile) / (peak * e_mma)    k_tile: per-tile prologue/epilogue work
    t_compute = t_mma * (1 + derate * t_mma / (t_mma + t_derate))
                                    long compute-bound kernels run at lower (power-capped) clocks
    bytes     = elem_bytes (M K + N K) + 2 M N              operands once, bf16 output
    t_stream  = bytes / (hbm * e_mem)
    t_memory  = t_stream * (1 + (n_narrow / max(N, 768))^narrow_exp)  few output columns: few
                                    CTAs stream W (not extrapolated below the tables' 768)
              + t_fill * (1 - exp(-t_stream / t_ramp))     HBM bandwidth ramps up
    t         = t_launch + smoothmax_s(t_compute, t_memory)

with ``smoothmax_s(a, b) = (a^s + b^s)^(1/s)``: compute and memory overlap, but not perfectly near
the ridge point. bf16 and fp8 each have their own parameters; elem_bytes < 1.5 (fp8, fp4) uses
the fp8 set, against whichever peak the caller passes (fp4 against the fp4 peak).

Prefill attention (FlashAttention-2, causal), per sequence ``new`` query tokens over ``past``
cached tokens plus their own causal prefix::

    pairs  = new * (past + (new + 1) / 2)                   (query, key) pairs that are computed
    t_work = 2 B H (pairs + new * l_tile) (d_qk + d_v) / (peak * e_work)
                                    l_tile: per-query-row fixed work, in key positions
    t_tile = 2 * 128 * (past + new + l_tile) (d_qk + d_v) * n_sm / (peak * e_tile)
                                    the last 128-row query tile sees every key, on one SM
    t      = t_launch + smoothmax_s(t_work, t_tile)

Attention is compute bound here; the KV heads only change memory traffic, which is hidden.
With a sliding window of ``w`` keys per query (``attn_prefill_window_ms``) the same parameters
price the pairs the window leaves, ``pairs = c past + c (c + 1) / 2 + (new - c) w`` with
``c = clip(w - past, 0, new)`` the queries still within the window, and the last tile sees at
most ``min(past + new, w + min(new, 128))`` keys.

Decode attention, one query token per sequence over ``ctx`` cached tokens::

    streams  = B * kv_heads                      independent (sequence, KV head) streams
    bytes    = streams * ctx * head_dim * kv_tensors * kv_elem_bytes  +  4 B H head_dim (q and o)
    t_stream = bytes / (hbm * e_hbm)             e_hbm: calibrated, or the caller's bw_efficiency
    t        = t_launch + t_stream * (1 + (u_few / streams)^few_exp)
             + t_fill * (1 - exp(-t_stream / t_ramp))
             + t_split * [streams < 0.8 n_sm]    too few streams: the KV is split across CTAs and
                                                 a second kernel combines the partial results

The formulas are written once (the ``*_formula_ms`` functions, plain arithmetic that works on
NumPy arrays and on scalars, marked ``register_jitable``): the calibration calls them from Python,
vectorised over a table, and the ``@njit`` kernels below compile the same code for scalars.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from numba.extending import register_jitable

# ---------------------------------------------------------------------------------------------
# Parameter layout of the calibration vectors (``Calibration.gemm`` / ``attn_prefill`` /
# ``attn_decode``). Names carry units: *_ms milliseconds, e_* shares of a ceiling.

GEMM_PARAM_NAMES: tuple[str, ...] = (
    "t_launch_ms",  # fixed cost of a launch
    "e_mma",  # share of the tensor-core peak in the K loop
    "e_mem",  # share of HBM bandwidth when streaming operands
    "overlap_s",  # sharpness of the compute/memory smooth maximum
    "k_tile",  # per-tile fixed work, in K elements
    "n_narrow",  # output width at which streaming runs at half speed
    "narrow_exp",  # how fast the narrow-N penalty fades
    "derate",  # clock derating of long compute-bound kernels (fraction)
    "t_derate_ms",  # kernel length at which half the derating applies
    "t_fill_ms",  # extra time of the HBM ramp
    "t_ramp_ms",  # streaming time over which the ramp completes
)
G_T_LAUNCH_MS, G_E_MMA, G_E_MEM, G_OVERLAP, G_K_TILE, G_N_NARROW, G_NARROW_EXP = 0, 1, 2, 3, 4, 5, 6
G_DERATE, G_DERATE_MS, G_FILL_MS, G_RAMP_MS = 7, 8, 9, 10
GEMM_NPARAMS = 11
GEMM_BF16 = 0  # offset of the bf16 set in the gemm vector
GEMM_FP8 = GEMM_NPARAMS  # offset of the fp8 set (also used for fp4)
GEMM_CAL_SIZE = 2 * GEMM_NPARAMS

PREFILL_PARAM_NAMES: tuple[str, ...] = (
    "n_sm",  # SMs of the measured GPU (not fitted)
    "t_launch_ms",
    "e_work",  # share of the tensor-core peak over all tiles
    "e_tile",  # share of one SM's peak that a single tile reaches
    "l_tile",  # per-query-row fixed work, in key positions
    "overlap_s",
)
P_N_SM, P_T_LAUNCH_MS, P_E_WORK, P_E_TILE, P_L_TILE, P_OVERLAP = 0, 1, 2, 3, 4, 5
PREFILL_CAL_SIZE = 6

DECODE_PARAM_NAMES: tuple[str, ...] = (
    "n_sm",  # SMs of the measured GPU (not fitted)
    "t_launch_ms",
    "e_hbm",  # asymptotic share of HBM bandwidth
    "u_few",  # streams at which the few-streams penalty doubles the streaming time
    "few_exp",
    "t_split_ms",  # combine pass when the KV is split across CTAs
    "t_fill_ms",
    "t_ramp_ms",
)
D_N_SM, D_T_LAUNCH_MS, D_E_HBM, D_U_FEW, D_FEW_EXP, D_SPLIT_MS, D_FILL_MS, D_RAMP_MS = range(8)
DECODE_CAL_SIZE = 8

GEMM_TILE_M = 64.0  # rows (tokens) of the smallest GEMM tile
GEMM_OUT_BYTES = 2.0  # GEMM output is bf16
ATTN_Q_TILE = 128.0  # query rows of one attention tile
NARROW_N_FLOOR = 768.0  # narrowest GEMM output width in the calibration tables
SPLIT_OCCUPANCY = 0.8  # below this many streams per SM the decode kernel splits the KV
QO_BYTES = 4.0  # decode: bf16 query read plus bf16 output written, per head and dimension

# The formulas take floats (kernels) or NumPy arrays (the fit, vectorised over a table).
Real = Any


@register_jitable
def smoothmax(a: Real, b: Real, s: Real) -> Real:
    """``(a^s + b^s)^(1/s)`` for non-negative ``a``, ``b``, scaled to avoid overflow."""
    hi = np.maximum(np.maximum(a, b), 1e-300)
    lo = np.minimum(a, b)
    return hi * (1.0 + (lo / hi) ** s) ** (1.0 / s)  # the larger term's ratio is 1


@register_jitable
def gemm_formula_ms(
    m: Real,
    n: Real,
    k: Real,
    elem_bytes: Real,
    peak_flops_per_s: Real,
    hbm_bytes_per_s: Real,
    p: np.ndarray,
) -> Real:
    """GEMM time (ms) for one parameter set ``p`` (``GEMM_NPARAMS`` values); see module doc."""
    m_pad = np.ceil(m / GEMM_TILE_M) * GEMM_TILE_M
    t_mma_ms = 2e3 * m_pad * n * (k + p[G_K_TILE]) / (peak_flops_per_s * p[G_E_MMA])
    t_compute_ms = t_mma_ms * (1.0 + p[G_DERATE] * t_mma_ms / (t_mma_ms + p[G_DERATE_MS]))
    nbytes = elem_bytes * (m * k + n * k) + GEMM_OUT_BYTES * m * n
    t_stream_ms = 1e3 * nbytes / (hbm_bytes_per_s * p[G_E_MEM])
    # the tables' narrowest output is 768 columns; below it cuBLAS splits K to keep the SMs
    # streaming, so the penalty is held at its value there rather than extrapolated
    narrow = (p[G_N_NARROW] / np.maximum(n, NARROW_N_FLOOR)) ** p[G_NARROW_EXP]
    ramp_ms = p[G_FILL_MS] * (1.0 - np.exp(-t_stream_ms / p[G_RAMP_MS]))
    t_memory_ms = t_stream_ms * (1.0 + narrow) + ramp_ms
    return p[G_T_LAUNCH_MS] + smoothmax(t_compute_ms, t_memory_ms, p[G_OVERLAP])


@register_jitable
def _prefill_time_ms(
    batch: Real,
    new_tokens: Real,
    pairs: Real,
    tile_keys: Real,
    heads: Real,
    dims: Real,
    peak_flops_per_s: Real,
    p: np.ndarray,
) -> Real:
    """Prefill attention time (ms) of ``pairs`` (query, key) pairs per head and sequence whose
    longest 128-row query tile sees ``tile_keys`` keys (see the module doc)."""
    work = 2.0 * batch * heads * (pairs + new_tokens * p[P_L_TILE]) * dims
    t_work_ms = 1e3 * work / (peak_flops_per_s * p[P_E_WORK])
    tile = 2.0 * ATTN_Q_TILE * (tile_keys + p[P_L_TILE]) * dims
    t_tile_ms = 1e3 * tile * p[P_N_SM] / (peak_flops_per_s * p[P_E_TILE])
    return p[P_T_LAUNCH_MS] + smoothmax(t_work_ms, t_tile_ms, p[P_OVERLAP])


@register_jitable
def prefill_formula_ms(
    batch: Real,
    new_tokens: Real,
    past_tokens: Real,
    heads: Real,
    qk_dim: Real,
    v_dim: Real,
    peak_flops_per_s: Real,
    p: np.ndarray,
) -> Real:
    """Causal prefill attention time (ms) for parameters ``p`` (``PREFILL_CAL_SIZE`` values)."""
    pairs = new_tokens * (past_tokens + 0.5 * (new_tokens + 1.0))
    return _prefill_time_ms(
        batch,
        new_tokens,
        pairs,
        past_tokens + new_tokens,
        heads,
        qk_dim + v_dim,
        peak_flops_per_s,
        p,
    )


@register_jitable
def window_pairs(new_tokens: Real, past_tokens: Real, window: Real) -> Real:
    """(query, key) pairs of a chunk of ``new_tokens`` queries after ``past_tokens`` cached
    tokens when each query sees at most ``window`` keys (itself included): the query at
    position i sees min(window, i + 1). The first ``causal = clip(window - past, 0, new)``
    queries still see their whole prefix; the rest see exactly ``window`` keys."""
    causal = np.minimum(np.maximum(window - past_tokens, 0.0), new_tokens)
    return causal * past_tokens + 0.5 * causal * (causal + 1.0) + (new_tokens - causal) * window


@register_jitable
def window_prefill_formula_ms(
    batch: Real,
    new_tokens: Real,
    past_tokens: Real,
    window: Real,
    heads: Real,
    qk_dim: Real,
    v_dim: Real,
    peak_flops_per_s: Real,
    p: np.ndarray,
) -> Real:
    """Sliding-window prefill attention time (ms): the causal kernel's parameters ``p`` on the
    pairs a window leaves (``window_pairs``); the longest query tile sees at most the window
    plus its own 128 rows. Equals ``prefill_formula_ms`` when the window covers the chunk."""
    pairs = window_pairs(new_tokens, past_tokens, window)
    tile_keys = np.minimum(past_tokens + new_tokens, window + np.minimum(new_tokens, ATTN_Q_TILE))
    return _prefill_time_ms(
        batch, new_tokens, pairs, tile_keys, heads, qk_dim + v_dim, peak_flops_per_s, p
    )


@register_jitable
def decode_formula_ms(
    batch: Real,
    ctx: Real,
    heads: Real,
    kv_heads: Real,
    head_dim: Real,
    kv_tensors: Real,
    kv_elem_bytes: Real,
    hbm_bytes_per_s: Real,
    e_hbm: Real,
    p: np.ndarray,
) -> Real:
    """Decode attention time (ms) at HBM share ``e_hbm`` for parameters ``p``."""
    streams = batch * kv_heads
    nbytes = (
        streams * ctx * head_dim * kv_tensors * kv_elem_bytes + QO_BYTES * batch * heads * head_dim
    )
    t_stream_ms = 1e3 * nbytes / (hbm_bytes_per_s * e_hbm)
    few = (p[D_U_FEW] / streams) ** p[D_FEW_EXP]
    split = 1.0 * (streams < SPLIT_OCCUPANCY * p[D_N_SM])
    return (
        p[D_T_LAUNCH_MS]
        + t_stream_ms * (1.0 + few)
        + p[D_FILL_MS] * (1.0 - np.exp(-t_stream_ms / p[D_RAMP_MS]))
        + split * p[D_SPLIT_MS]
    )


@njit(cache=True, nogil=True)
def gemm_ms(
    m: float,
    n: float,
    k: float,
    elem_bytes: float,
    peak_flops_per_s: float,
    hbm_bytes_per_s: float,
    cal: np.ndarray,
) -> float:
    """Time (ms) of ``y[m,n] = x[m,k] @ W[n,k]^T`` with ``elem_bytes`` per operand element.

    ``cal`` is ``Calibration.gemm``: the bf16 parameter set, then the fp8 set, which also serves
    fp4 (``elem_bytes`` < 1.5) against the peak the caller passes. Empty GEMMs cost nothing.
    """
    if m <= 0.0 or n <= 0.0 or k <= 0.0:
        return 0.0
    off = GEMM_BF16 if elem_bytes >= 1.5 else GEMM_FP8
    return gemm_formula_ms(
        m, n, k, elem_bytes, peak_flops_per_s, hbm_bytes_per_s, cal[off : off + GEMM_NPARAMS]
    )


@njit(cache=True, nogil=True)
def attn_prefill_ms(
    batch: float,
    new_tokens: float,
    past_tokens: float,
    heads: float,
    kv_heads: float,
    qk_dim: float,
    v_dim: float,
    peak_flops_per_s: float,
    cal: np.ndarray,
) -> float:
    """Time (ms) of causal bf16 attention of ``new_tokens`` query tokens per sequence against
    ``past_tokens`` cached tokens plus their own prefix (``past_tokens`` > 0: one chunk of a
    chunked prefill), as the measured FlashAttention-2 kernels run it. ``cal`` is
    ``Calibration.attn_prefill``. ``kv_heads`` does not enter: the kernel is compute bound."""
    if batch <= 0.0 or new_tokens <= 0.0 or heads <= 0.0:
        return 0.0
    return prefill_formula_ms(
        batch, new_tokens, max(past_tokens, 0.0), heads, qk_dim, v_dim, peak_flops_per_s, cal
    )


@njit(cache=True, nogil=True)
def attn_prefill_window_ms(
    batch: float,
    new_tokens: float,
    past_tokens: float,
    window: float,
    heads: float,
    kv_heads: float,
    qk_dim: float,
    v_dim: float,
    peak_flops_per_s: float,
    cal: np.ndarray,
) -> float:
    """``attn_prefill_ms`` when each query attends to at most ``window`` keys (sliding-window
    or chunked local attention); ``window`` <= 0 means no window. A chunk longer than the window
    is priced per query over the keys it sees, not causally over the whole chunk."""
    if window <= 0.0:
        return attn_prefill_ms(
            batch, new_tokens, past_tokens, heads, kv_heads, qk_dim, v_dim, peak_flops_per_s, cal
        )
    if batch <= 0.0 or new_tokens <= 0.0 or heads <= 0.0:
        return 0.0
    return window_prefill_formula_ms(
        batch,
        new_tokens,
        max(past_tokens, 0.0),
        window,
        heads,
        qk_dim,
        v_dim,
        peak_flops_per_s,
        cal,
    )


@njit(cache=True, nogil=True)
def attn_decode_ms(
    batch: float,
    ctx: float,
    heads: float,
    kv_heads: float,
    head_dim: float,
    kv_tensors: float,
    kv_elem_bytes: float,
    hbm_bytes_per_s: float,
    bw_efficiency: float,
    cal: np.ndarray,
) -> float:
    """Time (ms) of one decode step's attention: one query token per sequence over ``ctx``
    cached tokens. ``kv_tensors`` is 2 for separate K and V (GQA) or 1 for MLA's shared latent
    (``head_dim`` = kv_lora_rank + rope dim, ``kv_heads`` = 1). ``bw_efficiency`` <= 0 uses the
    calibrated HBM share; > 0 replaces it (an engine's faster kernel) while keeping the
    calibrated latencies and shape terms. ``cal`` is ``Calibration.attn_decode``."""
    if batch <= 0.0 or kv_heads <= 0.0:
        return 0.0
    e_hbm = bw_efficiency if bw_efficiency > 0.0 else cal[D_E_HBM]
    return decode_formula_ms(
        batch,
        max(ctx, 0.0),
        heads,
        kv_heads,
        head_dim,
        kv_tensors,
        kv_elem_bytes,
        hbm_bytes_per_s,
        e_hbm,
        cal,
    )
