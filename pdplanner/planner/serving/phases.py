"""Disaggregated workers: a prefill worker batching prompts, a decode worker holding sequences.

Vectorised over candidate configurations (arrays of tp, pp, ep, attention_dp, batch):

prefill  ``batch`` prompts of ``isl`` tokens (``prefix_hit`` of them already cached) per step,
         split over the attention-DP ranks. With pipeline parallelism a prompt passes every stage
         in turn, so its time to first token is the step's latency through all ``pp`` stages;
         the worker still finishes ``batch`` prompts every ``stage`` (``pp`` batches in flight,
         each in another stage) when every stage's KV cache holds ``pp`` batches of prompts (a
         stage keeps a prompt's KV until it leaves the pipeline); holding fewer, ``k`` batches
         in flight finish every pipeline latency. Only an engine that splits one prompt into
         micro-chunks that flow through the stages together
         (``EngineSpec.chunked_pipeline_prefill``, the study's chunked pipeline for long
         contexts) gets ``stage * (1 + (pp - 1) / m)`` with ``m`` micro-chunks of
         ``PREFILL_CHUNK_TOKENS``. Each step adds the engine's host overhead.
decode   ``batch`` sequences per worker at mean context ``context``; with ``pp`` stages the
         engine keeps ``pp`` micro-batches in flight, so a token waits for every stage (TPOT is the
         pipeline latency of one micro-batch) while the worker emits ``batch`` tokens per TPOT.
Memory: a prefill worker must hold its batch's prompts; a decode worker its sequences at their
mean context (what a full KV cache holds in steady state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numba import njit

from pdplanner.planner.perf.kernels import step_ms
from pdplanner.planner.perf.memory import kv_capacity_tokens, memory_bytes_per_gpu
from pdplanner.planner.perf.params import (
    H_CHUNKED_PP_PREFILL,
    H_STEP_OVERHEAD_MS,
    Layouts,
    PerfContext,
)

PREFILL_CHUNK_TOKENS = 8192.0  # micro-chunk size of a chunked pipeline


@njit(cache=True, nogil=True)
def prefill_many(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: np.ndarray,
    pp: np.ndarray,
    ep: np.ndarray,
    dp: np.ndarray,
    batch: np.ndarray,
    isl: float,
    prefix_hit: float,
    ttft_ms: np.ndarray,
    requests_per_s: np.ndarray,
    mem_bytes: np.ndarray,
    fits: np.ndarray,
    per_layer: np.ndarray,
) -> None:
    """Per candidate: compute time to first token, prompts/s per worker, memory, fit."""
    row = np.zeros(4)
    scratch = np.zeros(4)
    new = isl * (1.0 - prefix_hit)
    past = isl * prefix_hit
    for i in range(tp.shape[0]):
        # float(): one float64 specialisation of each kernel called below (math.ceil gives an
        # int, which would compile step_ms and its callees a second time)
        seqs = float(math.ceil(batch[i] / dp[i]))
        lat, stage = step_ms(
            mv, hv, cg, cp, cd, tp[i], pp[i], ep[i], dp[i], seqs, new, past, 0.0, 0.0, row, scratch
        )
        per_layer[i, :] = row
        overhead = hv[H_STEP_OVERHEAD_MS]
        if pp[i] > 1.0 and hv[H_CHUNKED_PP_PREFILL] > 0.5:
            m = max(pp[i], math.ceil(seqs * new / PREFILL_CHUNK_TOKENS))
            ttft_ms[i] = stage * (1.0 + (pp[i] - 1.0) / m) + overhead
        else:
            ttft_ms[i] = lat
        tokens = seqs * new
        mem_bytes[i] = memory_bytes_per_gpu(
            mv, hv, tp[i], pp[i], ep[i], dp[i], tokens, seqs, seqs * isl
        )
        cap = kv_capacity_tokens(mv, hv, tp[i], pp[i], ep[i], dp[i], tokens, seqs)
        fits[i] = cap >= seqs * isl
        # batches in flight: one per stage, as many as every stage's KV cache holds (a stage
        # keeps each prompt's KV until the prompt leaves the pipeline)
        flight = min(pp[i], math.floor(cap / (seqs * isl))) if seqs * isl > 0.0 else pp[i]
        if flight >= pp[i]:
            requests_per_s[i] = 1e3 * batch[i] / (stage + overhead)  # one batch per stage
        else:
            requests_per_s[i] = 1e3 * batch[i] * max(flight, 1.0) / (lat + overhead)


@njit(cache=True, nogil=True)
def decode_many(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: np.ndarray,
    pp: np.ndarray,
    ep: np.ndarray,
    dp: np.ndarray,
    batch: np.ndarray,
    context: float,
    tpot_ms: np.ndarray,
    tokens_per_s: np.ndarray,
    mem_bytes: np.ndarray,
    fits: np.ndarray,
    per_layer: np.ndarray,
) -> None:
    """Per candidate: time per output token, output tokens/s per worker, memory, fit."""
    row = np.zeros(4)
    scratch = np.zeros(4)
    for i in range(tp.shape[0]):
        seqs = float(math.ceil(batch[i] / dp[i]))  # per attention-DP rank; float: see above
        micro = float(math.ceil(seqs / pp[i]))
        lat, _ = step_ms(
            mv,
            hv,
            cg,
            cp,
            cd,
            tp[i],
            pp[i],
            ep[i],
            dp[i],
            0.0,
            0.0,
            0.0,
            micro,
            context,
            row,
            scratch,
        )
        per_layer[i, :] = row
        tpot_ms[i] = lat
        tokens_per_s[i] = 1e3 * batch[i] / lat
        mem_bytes[i] = memory_bytes_per_gpu(
            mv, hv, tp[i], pp[i], ep[i], dp[i], micro, micro, seqs * context
        )
        cap = kv_capacity_tokens(mv, hv, tp[i], pp[i], ep[i], dp[i], micro, micro)
        fits[i] = cap >= seqs * context


@njit(cache=True, nogil=True)
def decode_fits_many(
    mv: np.ndarray,
    hv: np.ndarray,
    tp: np.ndarray,
    pp: np.ndarray,
    ep: np.ndarray,
    dp: np.ndarray,
    batch: np.ndarray,
    context: float,
    fits: np.ndarray,
) -> None:
    """``decode_many``'s memory check alone (the same figures, without the step): whether each
    candidate's KV cache holds its sequences at ``context`` tokens."""
    for i in range(tp.shape[0]):
        seqs = float(math.ceil(batch[i] / dp[i]))
        micro = float(math.ceil(seqs / pp[i]))
        cap = kv_capacity_tokens(mv, hv, tp[i], pp[i], ep[i], dp[i], micro, micro)
        fits[i] = cap >= seqs * context


@dataclass(frozen=True)
class PhaseArrays:
    """Evaluated candidates of one phase, aligned by index (arrays of ``n``)."""

    tp: np.ndarray
    pp: np.ndarray
    ep: np.ndarray
    dp: np.ndarray
    batch: np.ndarray
    latency_ms: np.ndarray  # compute time to first token (prefill) or TPOT (decode)
    rate: np.ndarray  # prompts/s (prefill) or output tokens/s (decode) per worker
    memory_bytes: np.ndarray  # per GPU
    fits: np.ndarray
    per_layer_ms: np.ndarray  # [n, 4]: gemm, attention, communication, other

    @property
    def layouts(self) -> Layouts:
        return Layouts(self.tp, self.pp, self.ep, self.dp)

    @cached_property
    def gpus(self) -> np.ndarray:
        """GPUs per worker: ``tp * pp * dp``."""
        gpus: np.ndarray = self.tp * self.pp * self.dp
        return gpus


def _empty(layouts: Layouts, batch: np.ndarray) -> PhaseArrays:
    n = layouts.n
    return PhaseArrays(
        *layouts.arrays,
        batch,
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
        np.zeros(n, np.bool_),
        np.zeros((n, 4)),
    )


def prefill_phase(
    ctx: PerfContext, layouts: Layouts, batch: np.ndarray, isl: float, prefix_hit: float
) -> PhaseArrays:
    """Prefill workers of every layout x batch (``batch[i]`` prompts of ``isl`` tokens per step,
    ``prefix_hit`` of them cached) in one ``prefill_many`` call."""
    r = _empty(layouts, batch)
    prefill_many(
        *ctx.kernel_args,
        *layouts.arrays,
        batch,
        isl,
        prefix_hit,
        r.latency_ms,
        r.rate,
        r.memory_bytes,
        r.fits,
        r.per_layer_ms,
    )
    return r


def decode_phase(
    ctx: PerfContext,
    layouts: Layouts,
    batch: np.ndarray,
    context: float,
    fitting_only: bool = False,
) -> PhaseArrays:
    """Decode workers of every layout x batch (``batch[i]`` sequences at a mean ``context``
    tokens) in one ``decode_many`` call. ``fitting_only`` prices the steps of the candidates
    whose memory holds their sequences only (``decode_fits_many`` first): the others keep
    ``fits`` False and NaN for every figure; the fitting ones are what ``decode_many`` gives."""
    if fitting_only:
        return _decode_fitting(ctx, layouts, batch, context)
    r = _empty(layouts, batch)
    decode_many(
        *ctx.kernel_args,
        *layouts.arrays,
        batch,
        context,
        r.latency_ms,
        r.rate,
        r.memory_bytes,
        r.fits,
        r.per_layer_ms,
    )
    return r


def evaluate_prefill(
    ctx: PerfContext,
    tp: np.ndarray,
    pp: np.ndarray,
    ep: np.ndarray,
    dp: np.ndarray,
    batch: np.ndarray,
    isl: float,
    prefix_hit: float,
) -> PhaseArrays:
    """``prefill_phase`` with the layout given as four arrays."""
    return prefill_phase(ctx, Layouts(tp, pp, ep, dp), batch, isl, prefix_hit)


def evaluate_decode(
    ctx: PerfContext,
    tp: np.ndarray,
    pp: np.ndarray,
    ep: np.ndarray,
    dp: np.ndarray,
    batch: np.ndarray,
    context: float,
    fitting_only: bool = False,
) -> PhaseArrays:
    """``decode_phase`` with the layout given as four arrays."""
    return decode_phase(ctx, Layouts(tp, pp, ep, dp), batch, context, fitting_only)


def _decode_fitting(
    ctx: PerfContext, layouts: Layouts, batch: np.ndarray, context: float
) -> PhaseArrays:
    n = layouts.n
    fits = np.zeros(n, np.bool_)
    decode_fits_many(ctx.mv, ctx.hv, *layouts.arrays, batch, context, fits)
    at = np.nonzero(fits)[0]
    some = decode_phase(ctx, layouts.take(at), batch[at], context)
    r = PhaseArrays(
        *layouts.arrays,
        batch,
        np.full(n, np.nan),
        np.full(n, np.nan),
        np.full(n, np.nan),
        np.zeros(n, np.bool_),
        np.full((n, 4), np.nan),
    )
    # the arrays are the result's own (a frozen dataclass fixes the fields, not their contents)
    r.latency_ms[at] = some.latency_ms
    r.rate[at] = some.rate
    r.memory_bytes[at] = some.memory_bytes
    r.fits[at] = some.fits
    r.per_layer_ms[at] = some.per_layer_ms
    return r
