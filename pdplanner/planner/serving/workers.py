"""Typed wrappers: evaluate one prefill worker, decode worker or aggregated worker.

These call the vectorised phase kernels with one design point, or the engine-loop simulation
(``simulate``), and decode the answer; the search calls the kernels on whole arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pdplanner.planner.perf.memory import (
    kv_capacity_tokens,
    memory_breakdown,
    memory_bytes_per_gpu,
)
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving.phases import PhaseArrays, evaluate_decode, evaluate_prefill
from pdplanner.planner.serving.scheduler import SchedulerSettings
from pdplanner.planner.serving.simulate import ClosedLoop, Load, simulate_agg
from pdplanner.planner.serving.simulate import kv_capacity as kv_capacity_sim
from pdplanner.planner.types import LayerBreakdown, Parallelism


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
    load: str = "closed"  # the load model behind the figures: closed or poisson
    preemptions: int = 0  # requests preempted (vLLM) or retracted (SGLang) during the run
    simulated_requests: int = 0  # requests the run simulated, warm-up included


def agg_worker(
    ctx: PerfContext,
    par: Parallelism,
    load: Load,
    isl: np.ndarray,
    osl: np.ndarray,
    sched: SchedulerSettings,
    prefix_hit: float = 0.0,
    request_overhead_ms: float = 0.0,
) -> AggMetrics:
    """One aggregated worker under ``load`` (``simulate.simulate_agg``), with its memory."""
    dp = par.attention_dp
    users = (
        max(1, math.ceil(load.clients / dp)) if isinstance(load, ClosedLoop) else sched.max_num_seqs
    )
    step_tokens = float(sched.max_num_batched_tokens)
    if not sched.enable_chunked_prefill:
        step_tokens = max(step_tokens, float(isl.max()))
    logits = float(min(users, sched.max_num_seqs))
    mv, hv = ctx.mv, ctx.hv
    cap = kv_capacity_sim(ctx, par, sched, step_tokens, logits)
    run = simulate_agg(
        ctx, par, sched, load, isl, osl, prefix_hit=prefix_hit,
        request_overhead_ms=request_overhead_ms,
    )  # fmt: skip
    used_tokens = min(max(cap, 0.0), run.running * float(np.mean(isl + osl / 2.0)))
    mem = memory_bytes_per_gpu(mv, hv, par.tp, par.pp, par.ep, dp, step_tokens, logits, used_tokens)
    if not run.ok:
        need = float(isl.max() + osl.max())
        reason = (
            _fit_reason(ctx, par, need, "a single request", step_tokens, logits)
            if cap < need
            else run.reason
        )
        return AggMetrics(False, {}, {}, 0.0, 0.0, 0.0, 0.0, mem, reason, load.name)
    return AggMetrics(
        True,
        run.ttft_ms.to_dict(),
        run.tpot_ms.to_dict(),
        run.output_tokens_per_s,
        run.requests_per_s,
        run.running * dp,
        run.queued,
        mem,
        None,
        load.name,
        run.preemptions,
        run.simulated_requests,
    )
