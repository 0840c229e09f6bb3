"""Serving by workers that come and go: the engine loop with availability windows.

A deployment under a scaling schedule is a list of ``WorkerSpan``: one worker (a model replica
with all its attention-DP ranks) of one role and layout that accepts requests from ``join_s``
until ``leave_s`` and then drains: it finishes what it holds, its queue included, and is routed
nothing new. ``simulate_elastic`` replays a ``Trace`` (open-loop arrivals) through those workers
with the engine loop that every estimate uses (``_loop.simulate_loop`` with its per-worker
table): arrivals go to the accepting front workers (aggregated or prefill) in turn, prompts'
KV to the accepting decode worker holding the fewest requests; a request that finds no accepting
worker waits for the next to join. Aggregated and disaggregated spans may overlap in time (a
deployment switching modes drains the old workers while the new ones serve).

Per worker, as ``simulate.simulate_disagg`` and ``pdplanner.planner.estimate`` set them up:

* ``batch`` is the worker's limit split over its attention-DP ranks: a prefill worker's prompts
  per iteration (its token budget grows to hold that many mean prompts), a decode or aggregated
  worker's running sequences;
* ``chunk_tokens`` an aggregated worker's chunked-prefill budget as the search chose it (0: no
  chunked prefill, whole prompts; None: the engine scheduler's budget and setting);
* KV capacity per rank from ``pdplanner.planner.perf.memory`` for the largest step it runs;
* a prefill worker's KV-transfer tail (``kvtransfer.transfer``) at the trace's mean prompt.

TTFT adds the calibrated per-request overhead outside the engine loop
(``simulate.REQUEST_OVERHEAD_MS``): the disaggregated one for requests that arrive while a
prefill worker accepts, the aggregated one otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving import _loop as L
from pdplanner.planner.serving.kvtransfer import transfer
from pdplanner.planner.serving.scheduler import SchedulerSettings
from pdplanner.planner.serving.simulate import (
    REQUEST_OVERHEAD_MS,
    Trace,
    _graphs,
    _one_request_ms,
    _sched_vector,
    kv_capacity,
    loop_pools,
)
from pdplanner.planner.types import Parallelism

Role = Literal["agg", "prefill", "decode"]
_ROLE = {"agg": L.AGG, "prefill": L.PREFILL, "decode": L.DECODE}
# decode-only iterations are at least this long (ms): bounds the event count of a replay
_MIN_STEP_MS = 2.0


@dataclass(frozen=True)
class WorkerSpan:
    """One worker: role, layout, batch limit (per worker, all ranks) and its window (s)."""

    role: Role
    par: Parallelism
    batch: int
    join_s: float
    leave_s: float = math.inf
    chunk_tokens: int | None = None  # agg: chunked-prefill budget (0: none; None: the engine's)


@dataclass(frozen=True)
class ElasticRun:
    """Per request (trace order): TTFT and TPOT (ms; NaN where not served; TPOT 0 for one-token
    answers). Per span (input order): ``drained_s``, when it last held work (its join time if it
    never did)."""

    ok: bool
    reason: str | None
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    drained_s: np.ndarray


def with_chunk(sched: SchedulerSettings, chunk_tokens: int | None) -> SchedulerSettings:
    """``sched`` with an aggregated worker's chunked-prefill budget as the search sweeps it
    (``search.aggsweep``): ``chunk_tokens`` > 0 tokens per iteration with chunked prefill, 0
    whole prompts at the engine's budget, None ``sched`` as it is."""
    if chunk_tokens is None:
        return sched
    return replace(
        sched,
        max_num_batched_tokens=chunk_tokens if chunk_tokens > 0 else sched.max_num_batched_tokens,
        enable_chunked_prefill=chunk_tokens > 0,
    )


def _rank_sched(sched: SchedulerSettings, span: WorkerSpan, mean_isl: float) -> SchedulerSettings:
    seqs = max(1, math.ceil(span.batch / span.par.attention_dp))
    if span.role == "agg":
        return replace(with_chunk(sched, span.chunk_tokens), max_num_seqs=seqs)
    if span.role == "prefill":
        budget = max(sched.max_num_batched_tokens, math.ceil(seqs * mean_isl))
        return replace(sched, max_num_seqs=seqs, max_num_batched_tokens=budget)
    return replace(sched, max_num_seqs=seqs)


def _row(
    span: WorkerSpan,
    ctx: PerfContext,
    sched: SchedulerSettings,
    trace: Trace,
    link_bytes_per_s: float,
    cache: dict[tuple[Role, Parallelism, int, int | None], np.ndarray],
) -> np.ndarray:
    """The kernel's per-worker row of one rank of ``span`` (window left open)."""
    key = (span.role, span.par, span.batch, span.chunk_tokens)
    if key in cache:
        return cache[key]
    par = span.par
    mean_isl = float(np.mean(trace.isl)) if trace.isl.size else 1.0
    s = _rank_sched(sched, span, mean_isl)
    seqs = float(s.max_num_seqs)
    row = np.zeros(L.WORKER_SLOTS)
    row[L.W_ROLE] = _ROLE[span.role]
    row[L.W_TP], row[L.W_PP], row[L.W_EP], row[L.W_DP] = par.tp, par.pp, par.ep, par.attention_dp
    row[L.W_MAX_SEQS] = seqs
    row[L.W_BUDGET] = s.max_num_batched_tokens
    row[L.W_CHUNKED] = 1.0 if s.enable_chunked_prefill else 0.0
    if span.role == "decode":
        row[L.W_CAP] = kv_capacity(ctx, par, s, seqs, seqs)
    else:
        step = float(s.max_num_batched_tokens)
        if not s.enable_chunked_prefill and trace.isl.size:
            step = max(step, float(np.max(trace.isl)))
        row[L.W_CAP] = kv_capacity(ctx, par, s, step, seqs)
    if span.role == "prefill":
        prompt_ms = _one_request_ms(ctx, par, mean_isl, 0.0, 1.0)
        row[L.W_TRANSFER_MS], _ = transfer(
            ctx.mv,
            ctx.hv,
            mean_isl,
            1.0,
            float(par.tp),
            float(par.pp),
            float(par.attention_dp),
            prompt_ms,
            0.0,
            link_bytes_per_s,
        )
    cache[key] = row
    return row


def _disagg_at(spans: Sequence[WorkerSpan], t_s: np.ndarray) -> np.ndarray:
    """Whether a prefill worker accepts at each time of ``t_s`` (sorted)."""
    out = np.zeros(t_s.shape, np.bool_)
    for s in spans:
        if s.role == "prefill":
            lo, hi = np.searchsorted(t_s, [s.join_s, s.leave_s], side="left")
            out[lo:hi] = True
    return out


def simulate_elastic(
    front: PerfContext,
    back: PerfContext,
    sched: SchedulerSettings,
    spans: Sequence[WorkerSpan],
    trace: Trace,
    link_bytes_per_s: float,
    request_overhead_ms: dict[str, float] | None = None,
) -> ElasticRun:
    """Replay ``trace`` through ``spans``. ``front`` is the performance context of the
    aggregated and prefill workers, ``back`` of the decode workers; ``sched`` the engine's
    scheduler (every worker runs the same engine; its ``max_num_seqs`` is replaced by each
    span's ``batch``); ``link_bytes_per_s`` the per-GPU bandwidth between prefill and decode
    workers. Raises ``ValueError`` without a front worker, or with prefill workers and no decode
    worker."""
    overhead = REQUEST_OVERHEAD_MS if request_overhead_ms is None else request_overhead_ms
    front = front.with_graph_limit(sched.cuda_graph_max_bs)
    back = back.with_graph_limit(sched.cuda_graph_max_bs)
    fronts = [i for i, s in enumerate(spans) if s.role != "decode"]
    backs = [i for i, s in enumerate(spans) if s.role == "decode"]
    if not fronts:
        raise ValueError("no aggregated or prefill worker")
    if backs == [] and any(spans[i].role == "prefill" for i in fronts):
        raise ValueError("prefill workers without a decode worker")
    cache: dict[tuple[Role, Parallelism, int, int | None], np.ndarray] = {}
    rows, owner = [], []
    for i in fronts + backs:
        s = spans[i]
        row = _row(s, front if s.role != "decode" else back, sched, trace, link_bytes_per_s, cache)
        for _ in range(s.par.attention_dp):
            r = row.copy()
            r[L.W_ON_MS], r[L.W_OFF_MS] = s.join_s * 1e3, s.leave_s * 1e3
            rows.append(r)
            owner.append(i)
    table = np.array(rows)
    n_front = sum(spans[i].par.attention_dp for i in fronts)
    n_back = len(rows) - n_front
    arrival = np.asarray(trace.arrival_s, np.float64) * 1e3
    isl = np.asarray(trace.isl, np.float64)
    osl = np.asarray(trace.osl, np.float64)
    n = isl.shape[0]
    # the engine's scheduler; capacities, limits and transfer times come from the table
    s_vec = _sched_vector(sched, sched, 0.0, 0.0)
    t_first, t_done = np.zeros(n), np.zeros(n)
    order, stats = np.zeros(n, np.int64), np.zeros(L.STAT_SLOTS)
    drained = np.zeros(len(rows))
    least = min(float(r[L.W_BUDGET]) for r in rows)
    chunks = math.ceil(float(isl.max()) / max(least, 1.0)) + 1 if n else 1
    end_ms = float(arrival.max()) if n else 0.0
    stepping_ms = sum(
        max(0.0, min(r[L.W_OFF_MS], end_ms) - max(r[L.W_ON_MS], 0.0)) + 3.6e6
        for r in rows[n_front:] or rows
    )
    max_events = int(n * (chunks + 6) * 6 + stepping_ms / _MIN_STEP_MS + 10_000)
    status = L.simulate_loop(
        *loop_pools(front, np.zeros(4), back, np.zeros(4)),  # layouts: the per-worker table
        n_front,
        n_back,
        s_vec,
        _graphs(back if n_back else front, sched),
        0,
        arrival.copy(),
        isl,
        osl,
        n,
        0,
        max_events,
        t_first,
        t_done,
        order,
        stats,
        table,
        drained,
    )
    fin = t_done >= 0
    disagg = _disagg_at(spans, arrival / 1e3) if n_back else np.zeros(n, np.bool_)
    extra = np.where(disagg, overhead["disagg"], overhead["agg"])
    ttft = np.where(fin, t_first - arrival + extra, np.nan)
    tpot = np.where(fin, (t_done - t_first) / np.maximum(osl - 1.0, 1.0), np.nan)
    per_span = np.array([s.join_s for s in spans], np.float64)
    for k, i in enumerate(owner):
        if drained[k] > 0.0:
            per_span[i] = max(per_span[i], drained[k] / 1e3)
    reason = None
    if status == L.NO_FIT:
        reason = "a request finds no worker: its KV does not fit, or no accepting worker joins"
    elif status == L.EVENT_LIMIT:
        reason = "the simulation did not finish within its event limit"
    return ElasticRun(status == L.OK and bool(fin.all()), reason, ttft, tpot, per_span)
