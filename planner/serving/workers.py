"""Typed wrappers: evaluate one prefill worker, decode worker or aggregated worker.

These call the vectorised kernels with one design point and decode the answer; the search calls
the kernels directly on whole arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.perf.memory import (
    kv_capacity_tokens,
    memory_breakdown,
    memory_bytes_per_gpu,
)
from planner.perf.params import PerfContext
from planner.serving.aggregated import (
    A_OK,
    A_QUEUED,
    A_REQUESTS_PER_S,
    A_RUNNING,
    A_TOKENS_PER_S,
    AGG_SLOTS,
    simulate_agg,
)
from planner.serving.phases import PhaseArrays, evaluate_decode, evaluate_prefill
from planner.types import LayerBreakdown, Parallelism


@dataclass(frozen=True)
class WorkerMetrics:
    """One worker's steady state. For prefill: ``step_ms`` is the time to first token of a batch
    and ``rate_per_s`` prompts/s; for decode: ``step_ms`` is TPOT and ``rate_per_s`` tokens/s."""

    step_ms: float
    rate_per_s: float
    per_layer_ms: LayerBreakdown
    memory_bytes_per_gpu: float
    fits: bool
    reason: str | None


def _arrays(
    par: Parallelism, batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One design point as the 1-element arrays the phase kernels take."""
    tp, pp, ep, dp, b = (
        np.array([float(v)]) for v in (par.tp, par.pp, par.ep, par.attention_dp, batch)
    )
    return tp, pp, ep, dp, b


def kv_capacity(ctx: PerfContext, par: Parallelism, step_tokens: float, logits: float) -> float:
    """Tokens one attention-DP rank's KV cache holds beside the weights and a step of
    ``step_tokens`` tokens producing ``logits`` logits (negative: the weights do not fit)."""
    return float(
        kv_capacity_tokens(
            ctx.mv, ctx.hv, par.tp, par.pp, par.ep, par.attention_dp, step_tokens, logits
        )
    )


def _fit_reason(
    ctx: PerfContext,
    par: Parallelism,
    needed_tokens: float,
    what: str,
    step_tokens: float,
    seqs: float,
) -> str:
    """Why a step does not fit, with the numbers: weights, workspace, KV, fraction, capacity."""
    b = memory_breakdown(ctx, par.tp, par.pp, par.ep, par.attention_dp, step_tokens, seqs)
    where = f"on {ctx.gpu.name}: {b.describe()}"
    if b.kv_budget_bytes <= 0:
        return (
            f"does not fit {where}; use more GPUs per worker (tp/pp/ep), a smaller dtype or a "
            f"higher {b.fraction_flag}"
        )
    need = b.cache_bytes(needed_tokens, seqs)
    return (
        f"the KV cache cannot hold {what} ({needed_tokens:,.0f} tokens, {need / 1e9:.1f} GB per "
        f"attention-DP rank) {where}; lower the batch or add GPUs"
    )


def _single(r: PhaseArrays, reason: str | None) -> WorkerMetrics:
    ok = bool(r.fits[0])
    return WorkerMetrics(
        float(r.latency_ms[0]),
        float(r.rate[0]),
        LayerBreakdown(*map(float, r.per_layer_ms[0])),
        float(r.memory_bytes[0]),
        ok,
        None if ok else reason,
    )


def prefill_worker(
    ctx: PerfContext, par: Parallelism, batch: int, isl: int, prefix_hit: float = 0.0
) -> WorkerMetrics:
    r = evaluate_prefill(ctx, *_arrays(par, batch), float(isl), prefix_hit)
    seqs = math.ceil(batch / par.attention_dp)
    why = (
        None
        if r.fits[0]
        else _fit_reason(
            ctx, par, seqs * isl, f"{seqs} prompts of {isl} tokens", float(seqs * isl), seqs
        )
    )
    return _single(r, why)


def decode_worker(ctx: PerfContext, par: Parallelism, batch: int, context: float) -> WorkerMetrics:
    r = evaluate_decode(ctx, *_arrays(par, batch), float(context))
    seqs = math.ceil(batch / par.attention_dp)
    why = (
        None
        if r.fits[0]
        else _fit_reason(
            ctx,
            par,
            seqs * context,
            f"{seqs} sequences at {context:,.0f} tokens",
            float(math.ceil(seqs / par.pp)),
            math.ceil(seqs / par.pp),
        )
    )
    return _single(r, why)


@dataclass(frozen=True)
class AggMetrics:
    ok: bool  # False: not even one request fits next to the weights
    ttft_ms: dict[str, float]  # mean, p50, p90, p99
    tpot_ms: dict[str, float]
    tokens_per_s: float  # per worker
    requests_per_s: float  # per worker
    running: float  # mean sequences in the running batch (whole worker)
    queued: float  # mean requests waiting for admission (whole worker)
    memory_bytes_per_gpu: float
    reason: str | None


def agg_worker(
    ctx: PerfContext,
    par: Parallelism,
    concurrency: int,
    isl: np.ndarray,
    osl: np.ndarray,
    chunk_tokens: int,
    prefix_hit: float = 0.0,
) -> AggMetrics:
    """Closed-loop aggregated worker with ``concurrency`` clients split over its DP ranks."""
    dp = par.attention_dp
    users = max(1, math.ceil(concurrency / dp))
    # the largest step: a full chunk, or without chunking the longest prompt at once
    step_tokens = float(chunk_tokens if chunk_tokens > 0 else isl.max())
    mv, hv = ctx.mv, ctx.hv
    cap = kv_capacity_tokens(mv, hv, par.tp, par.pp, par.ep, dp, step_tokens, float(users))
    out = np.zeros(AGG_SLOTS)
    c = ctx.cal
    # a longer window than the search's sweep: one estimate can afford it
    warm = users + 8
    measure = max(64, 2 * users)
    simulate_agg(
        mv,
        hv,
        c.gemm,
        c.attn_prefill,
        c.attn_decode,
        float(par.tp),
        float(par.pp),
        float(par.ep),
        float(dp),
        users,
        isl.astype(np.float64),
        osl.astype(np.float64),
        prefix_hit,
        float(chunk_tokens),
        cap,
        ctx.engine.max_batch,
        warm,
        measure,
        out,
    )
    used_tokens = min(max(cap, 0.0), users * float(np.mean(isl + osl / 2.0)))
    mem = memory_bytes_per_gpu(
        mv, hv, par.tp, par.pp, par.ep, dp, step_tokens, float(users), used_tokens
    )
    if out[A_OK] < 0.5:
        need = float(isl.max() + osl.max())
        return AggMetrics(
            False,
            {},
            {},
            0.0,
            0.0,
            0.0,
            0.0,
            mem,
            _fit_reason(ctx, par, need, "a single request", step_tokens, float(users)),
        )
    keys = ("mean", "p50", "p90", "p99")
    return AggMetrics(
        True,
        dict(zip(keys, map(float, out[0:4]), strict=True)),
        dict(zip(keys, map(float, out[4:8]), strict=True)),
        float(out[A_TOKENS_PER_S]) * dp,
        float(out[A_REQUESTS_PER_S]) * dp,
        float(out[A_RUNNING]) * dp,
        float(out[A_QUEUED]) * dp,
        mem,
        None,
    )
