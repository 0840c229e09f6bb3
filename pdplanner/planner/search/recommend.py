"""``plan``: search aggregated and disaggregated deployments and recommend one.

1. Traffic: a mix is summarised by its weighted mean lengths for the phase models; the
   aggregated simulation replays the mix itself.
2. Disaggregated: every prefill layout x batch (``phases.prefill_phase``) and every decode layout
   x batch (``phases.decode_phase``) is evaluated in one kernel call each; a decode candidate
   whose KV cache does not hold its sequences is checked but not priced (no figure of it is
   used, and most of a large batch grid does not fit). A prefill candidate must
   meet the TTFT target after queueing: it may run only up to the utilisation at which its wait
   at the SLO percentile still fits (``queueing.max_utilisation``, one worker's M/D/1 queue,
   so a pool of several is sized with room to spare). The chosen deployment's TTFT is that of
   its ``x`` workers dealt prompts in turn (``queueing.wait_ms_dealt``), as routers and the
   engine loop deal them. Decode candidates meet the TPOT target (and the minimum
   tokens/s/user).
3. Rate matching: every decode candidate is paired with the prefill candidate and the whole
   worker counts (xPyD) that serve it best inside the GPU budgets (``ratematch.match``); the
   frontier and the recommendation are both made of these real deployments.
4. Aggregated: every layout x chunked-prefill budget (and no chunking) x concurrency runs the
   event simulation; its TTFT/TPOT at the SLO percentile decide feasibility.
   Aggregated workers use only the GPUs the budget holds: with a separate decode GPU type, each
   type alone within its own count. Prefill-only traffic (OSL 1) has no decode pool.
5. The best deployment (``choose``) serves the most requests/s within the budget, ties to the
   most tokens/s/user, then the fewest GPUs. A target rate is a constraint: the fewest GPUs that
   serve it, with every figure at that rate; when the budget does not serve it there is no best,
   and the fewest GPUs that would are searched past the budget. Frontiers are tokens/s/GPU
   against tokens/s/user.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from pdplanner.planner import validate
from pdplanner.planner.catalog import (
    GpuCatalog,
    ModelCatalog,
    ModelSpec,
    default_gpus,
    default_models,
    load_engine,
)
from pdplanner.planner.errors import SearchCancelled
from pdplanner.planner.perf.memory import capacity_bytes
from pdplanner.planner.perf.params import H_W_BYTES, PerfContext
from pdplanner.planner.search.aggsweep import AggPoints, sweep
from pdplanner.planner.search.enumerate import batch_grid, cross, layouts, on_captured_sizes
from pdplanner.planner.search.pareto import pareto_front
from pdplanner.planner.search.ratematch import Matches, match
from pdplanner.planner.serving.kvtransfer import (
    link_between_pools,
    prefill_transfers,
    worker_egress_bytes_per_s,
)
from pdplanner.planner.serving.mix import mix_cycle
from pdplanner.planner.serving.phases import PhaseArrays, evaluate_decode, evaluate_prefill
from pdplanner.planner.serving.queueing import (
    MAX_UTILISATION,
    PERCENTILES,
    slot_shares,
    split_percentile,
    usable_utilisation,
    wait_ms_dealt,
)
from pdplanner.planner.serving.scheduler import (
    SchedulerSettings,
    memory_fraction_for,
    scheduler_for,
)
from pdplanner.planner.serving.simulate import REQUEST_OVERHEAD_MS, graphs_for, scheduler_vector
from pdplanner.planner.types import Deployment, PlanRequest, PlanResult, Pool

PREFILL_BATCHES = list(range(1, 33))
# past the budget, a target rate is searched up to this many times the budget (and at most
# RATE_SEARCH_MAX_GPUS GPUs, four times the largest budget)
RATE_SEARCH_FACTOR = 16
RATE_SEARCH_MAX_GPUS = 4 * validate.MAX_GPUS
# rate matching runs in slices of decode candidates of about this many (prefill, decode, x)
# evaluations, checking the caller's deadline and cancellation between slices (~10 ms each)
MATCH_SLICE_EVALUATIONS = 2_000_000
# How plan judges its SLO (PlanResult.load)
PLAN_LOAD = (
    "poisson: random arrivals at the rate each deployment sustains with a free batch slot for an "
    "arriving request (Erlang C over a worker's slots); TTFT at the SLO percentile adds the wait "
    "of the prompt queue (agg: M/D/1 on a steady closed loop of the engine loop, read where the "
    "loop runs at the deployment's rate; disagg: the prefill pool, sized as one worker's M/D/1 "
    "queue, its prompts dealt to its workers in turn); the SLO's tail is split evenly between "
    "the slot and the prompt wait; agg TPOT is the decode step of the sequences the rate holds, "
    "stretched by the prompts' share of the worker and spread by how many prompts and "
    "neighbours a request meets, at most the loop's with every batch slot busy"
)
AGG_CONCURRENCY = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


def _validate(req: PlanRequest) -> None:
    """Every range check of ``req``, all run; raises ``InvalidFields`` when several fail."""
    v = validate.Violations()
    gpus = v.value(lambda: validate.integer(req.gpus, "gpus", 1, validate.MAX_GPUS))
    most = gpus if gpus is not None else validate.MAX_GPUS
    if req.prefill_gpus is not None:
        v.value(lambda: validate.integer(req.prefill_gpus, "prefill_gpus", 1, most))
    if req.decode_gpus is not None:
        v.value(lambda: validate.integer(req.decode_gpus, "decode_gpus", 1, most))
    if not req.traffic:
        v.add("traffic", "give isl and osl, or a mix of (isl, osl, weight)")
    if len(req.traffic) > validate.MAX_TRAFFIC_CLASSES:
        v.add(
            "traffic",
            f"at most {validate.MAX_TRAFFIC_CLASSES} classes, got {len(req.traffic):,}",
        )
    for i, w in enumerate(req.traffic):
        with v.check():
            validate.lengths(w.isl, w.osl, f"traffic[{i}].")
        with v.check():
            validate.number(w.weight, f"traffic[{i}].weight", 0.0, 1e12, lo_open=True)
    v.value(lambda: validate.number(req.slo.ttft_ms, "slo.ttft_ms", 0.0, 1e9, lo_open=True))
    v.value(lambda: validate.number(req.slo.tpot_ms, "slo.tpot_ms", 0.0, 1e9, lo_open=True))
    if req.slo.percentile not in PERCENTILES:
        v.add("slo.percentile", f"must be p50, p90 or p99, got {req.slo.percentile!r}")
    if req.slo.min_tokens_per_s_per_user is not None:
        v.value(
            lambda: validate.number(
                req.slo.min_tokens_per_s_per_user, "slo.min_tokens_per_s_per_user", 0.0, 1e9
            )
        )
    if req.rate_per_s is not None:
        v.value(lambda: validate.number(req.rate_per_s, "rate_per_s", 0.0, 1e9, lo_open=True))
    v.value(lambda: validate.number(req.prefix_hit, "prefix_hit", 0.0, 0.99))
    if req.limits.max_tp is not None:
        v.value(lambda: validate.integer(req.limits.max_tp, "limits.max_tp", 1, 4096))
    bad = [m for m in req.limits.modes if m not in ("agg", "disagg")]
    if bad or not req.limits.modes:
        v.add("limits.modes", "must be a non-empty subset of agg, disagg")
    v.raise_any()


def plan(
    req: PlanRequest,
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PlanResult:
    """Search the design space for ``req`` and recommend a deployment (``choose`` is the rule)."""
    return search(req, models, gpus, should_stop)[0]


def search(
    req: PlanRequest,
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[PlanResult, dict[str, np.ndarray]]:
    """``plan``, and every evaluated deployment that meets the SLO, per mode: an [n, 3] array of
    (requests/s served, tokens/s/user, GPUs) within the budget, in the recommendation's terms."""
    start = time.perf_counter()
    models = models or default_models()
    gpus = gpus or default_gpus()
    model = models.get(req.model, "model")
    gpu = gpus.get(req.gpu, "gpu")
    dgpu = gpus.get(req.decode_gpu, "decode_gpu") if req.decode_gpu else gpu
    engine = load_engine(req.engine, "engine")
    _validate(req)
    v = validate.Violations()
    for i, w in enumerate(req.traffic):
        with v.check():
            validate.within_context(model, w.isl, w.osl, f"traffic[{i}].")
    v.raise_any()
    stop = should_stop or (lambda: False)
    p = req.precision
    fraction = memory_fraction_for(engine, dict(req.engine_args), req.memory_fraction)
    ctx = PerfContext.build(model, gpu, engine, p.dtype, p.kv_dtype, fraction)
    dctx = (
        ctx
        if dgpu is gpu
        else PerfContext.build(model, dgpu, engine, p.dtype, p.kv_dtype, fraction)
    )
    sched = scheduler_for(engine, dict(req.engine_args))
    s = _Search(req, model, ctx, dctx, stop, sched)
    agg = s.run_agg_owned() if "agg" in req.limits.modes else _Side()
    disagg = s.run_disagg() if "disagg" in req.limits.modes else _Side()
    best = _pick(agg.best, disagg.best, s.rate)
    speedup = (
        disagg.best.tokens_per_s_per_gpu / agg.best.tokens_per_s_per_gpu
        if agg.best and disagg.best and agg.best.tokens_per_s_per_gpu > 0
        else None
    )
    reason, closest = None, None
    if best is None:
        reason, closest = s.why_nothing(agg, disagg)
    for_rate = _pick(agg.for_rate, disagg.for_rate, s.rate) if best is None else None
    result = PlanResult(
        best=best,
        best_agg=agg.best,
        best_disagg=disagg.best,
        disagg_speedup=speedup,
        pareto_agg=tuple(agg.pareto),
        pareto_disagg=tuple(disagg.pareto),
        design_points=s.design_points,
        elapsed_ms=(time.perf_counter() - start) * 1e3,
        reason=reason,
        closest=closest,
        explanation=s.explain(best, agg, disagg, speedup, for_rate),
        rate_served=(best is not None) if s.rate > 0 else None,
        for_rate=for_rate,
        model=model.summary(),
        gpu_basis="datasheet-scaled"
        if gpu.datasheet_scaled or dgpu.datasheet_scaled
        else "calibrated",
        load=PLAN_LOAD,
    )
    return result, {"agg": agg.meeting, "disagg": disagg.meeting}


@dataclass
class _Side:
    best: Deployment | None = None
    pareto: list[Deployment] = field(default_factory=list)
    closest: Deployment | None = None
    closest_gap: float = math.inf
    binding: list[str] = field(default_factory=list)  # every constraint that binds, in words
    compared: str = ""  # what the side searched, in words
    # every evaluated deployment meeting the SLO: (requests/s served, tokens/s/user, GPUs)
    meeting: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    # the fewest GPUs serving the rate, past the budget (aggregated: with the budget's layouts)
    for_rate: Deployment | None = None


class _Pairable(NamedTuple):
    """The prefill and decode candidates that can pair (``_Search._candidates``)."""

    pre: PhaseArrays  # prefill arrays, the KV transfer's tail and request overhead in latency_ms
    pi: np.ndarray  # usable, undominated prefill candidates (indices into pre)
    r_p: np.ndarray  # their usable req/s per worker
    g_p: np.ndarray  # their GPUs per worker
    di: np.ndarray  # decode candidates that fit (indices into the decode arrays)
    r_d: np.ndarray  # their req/s per worker under random arrivals
    g_d: np.ndarray  # their GPUs per worker


@dataclass(frozen=True)
class _DecodeSet:
    """Decode candidates (layouts x batches, in that order) and each one's worker rate."""

    arrays: PhaseArrays
    rate: np.ndarray  # req/s per worker under random arrivals (_Search._decode_rate); -1: no fit
    batches: int  # batches per layout


def choose(
    requests_per_s: np.ndarray,
    gpus: np.ndarray,
    tokens_per_s_per_user: np.ndarray,
    eligible: np.ndarray,
    target_rate: float,
) -> int:
    """The recommendation rule, the same for agg points, xPyD deployments and the final pick.

    Without a target rate: the most requests/s; ties go to the most tokens/s/user, then to the
    fewest GPUs. With one: among the deployments that serve it, the fewest GPUs, then the most
    tokens/s/user; when none serves it, the most requests/s as above (a miss: the caller says
    so). So the choice is never dominated by an eligible point in (requests/s served up to the
    target, tokens/s/user, GPUs). Returns -1 when none is eligible."""
    idx = np.nonzero(eligible)[0]
    if idx.size == 0:
        return -1
    if target_rate > 0:
        hits = idx[requests_per_s[idx] >= target_rate * (1.0 - 1e-9)]
        if hits.size:
            return int(hits[np.lexsort((-tokens_per_s_per_user[hits], gpus[hits]))[0]])
    return int(idx[np.lexsort((gpus[idx], -tokens_per_s_per_user[idx], -requests_per_s[idx]))[0]])


def _pick(a: Deployment | None, b: Deployment | None, rate: float) -> Deployment | None:
    cands = [d for d in (a, b) if d is not None]
    i = choose(
        np.array([d.requests_per_s for d in cands]),
        np.array([d.gpus for d in cands]),
        np.array([d.tokens_per_s_per_user for d in cands]),
        np.ones(len(cands), np.bool_),
        rate,
    )
    return cands[i] if i >= 0 else None


def _pools_text(d: Deployment) -> str:
    return ", ".join(
        f"{p.role} {p.gpu} TP{p.tp}xPP{p.pp}"
        + (f"xEP{p.ep}xDP{p.attention_dp}" if p.ep > 1 or p.attention_dp > 1 else "")
        + f" batch {p.batch} x{p.workers}"
        for p in d.pools
    )


class _Search:
    def __init__(
        self,
        req: PlanRequest,
        model: ModelSpec,
        ctx: PerfContext,
        dctx: PerfContext,
        stop: Callable[[], bool],
        sched: SchedulerSettings,
    ) -> None:
        # decode batches past the scheduler's largest CUDA graph are priced as eager steps
        self.ctx = ctx.with_graph_limit(sched.cuda_graph_max_bs)
        self.dctx = dctx.with_graph_limit(sched.cuda_graph_max_bs)
        self.req, self.model = req, model
        self.sched = sched  # the engine's scheduler with the request's engine_args
        # the traffic: each class's share of requests and the weighted mean lengths
        self.share = np.array([w.weight for w in req.traffic], dtype=np.float64)
        self.share /= self.share.sum()
        isl = np.array([w.isl for w in req.traffic], dtype=np.float64)
        osl = np.array([w.osl for w in req.traffic], dtype=np.float64)
        self.isl = float(self.share @ isl)
        self.osl = float(self.share @ osl)
        # a decode slot holds a request for its osl steps, so long answers weigh more in the
        # mean context the slots see: E[osl (isl + osl / 2)] / E[osl]
        self.decode_context = float(self.share @ (osl * (isl + osl / 2.0)) / (self.share @ osl))
        self.pct = PERCENTILES[req.slo.percentile]
        # a request's TTFT carries two waits, for a batch slot and for its prompt's turn: each
        # gets half of the SLO's tail (queueing.split_percentile)
        self.wait_pct = float(split_percentile(self.pct))
        self.tpot_target = req.slo.tpot_ms
        if req.slo.min_tokens_per_s_per_user:
            self.tpot_target = min(self.tpot_target, 1e3 / req.slo.min_tokens_per_s_per_user)
        self.stop = stop
        self.design_points = 0
        self.budget = req.gpus
        self.budget_p = req.prefill_gpus or req.gpus
        self.budget_d = req.decode_gpus or req.gpus
        self.rate = req.rate_per_s or 0.0
        # embeddings, scoring, classification: the first token ends every request
        self.prefill_only = all(w.osl == 1 for w in req.traffic)
        self.best_prefill_ms = math.inf
        self.best_decode_ms = math.inf
        self.any_fit = False

    def _check(self) -> None:
        if self.stop():
            raise SearchCancelled("search stopped by its caller")

    # -- disaggregated -------------------------------------------------------------------------
    def _prefill(self, most_gpus: int | None = None) -> PhaseArrays:
        """Prefill candidates: every layout of at most ``most_gpus`` GPUs (default: what the
        budget leaves beside a decode worker) x every batch."""
        c = self.ctx
        most_gpus = most_gpus or min(self.budget_p, self.budget - 1) or 1
        lay = layouts(self.model, c.gpu, most_gpus, self.req.limits)
        points = cross(lay, PREFILL_BATCHES, per_dp_rank=True)
        traffic = self.req.traffic
        if len(traffic) == 1:
            r = evaluate_prefill(c, *points, self.isl, self.req.prefix_hit)
        else:
            r = self._prefill_mix(points)
        self.design_points += r.tp.shape[0]
        return r

    def _prefill_mix(self, points: tuple[np.ndarray, ...]) -> PhaseArrays:
        """A mix at the prefill pool: each class priced at its own length. A worker's prompt
        rate is the weighted harmonic mean of the classes' rates; its time to first token is the
        classes' weighted percentile at the SLO's (the long prompts set p90 and p99)."""
        tp, pp, ep, dp, b = points
        share = self.share
        per = []
        for w in self.req.traffic:
            self._check()
            per.append(
                evaluate_prefill(self.ctx, tp, pp, ep, dp, b, float(w.isl), self.req.prefix_hit)
            )
        lat = np.stack([p.latency_ms for p in per], axis=1)
        seconds_per_prompt = sum(s / p.rate for s, p in zip(share, per, strict=True))
        order = np.argsort(lat, axis=1)
        cum = np.cumsum(share[order], axis=1)
        pick = np.minimum((cum < self.pct - 1e-12).sum(axis=1), len(per) - 1)
        rows = np.arange(tp.shape[0])
        return replace(
            per[int(np.argmax(share))],
            latency_ms=lat[rows, order[rows, pick]],
            rate=1.0 / seconds_per_prompt,
            fits=np.logical_and.reduce([p.fits for p in per]),
            memory_bytes=np.max(np.stack([p.memory_bytes for p in per]), axis=0),
        )

    def _decode(self, most_gpus: int | None = None) -> _DecodeSet:
        """Decode candidates: every layout of at most ``most_gpus`` GPUs (default: what the
        budget leaves beside a prefill worker) x the captured batch sizes, with their rates."""
        c = self.dctx
        most_gpus = most_gpus or min(self.budget_d, self.budget - 1) or 1
        lay = layouts(self.model, c.gpu, most_gpus, self.req.limits)
        # every batch when the layouts are few; every batch to 64 then 6% steps otherwise; a
        # decode worker (each attention-DP rank) holds at most the scheduler's max_num_seqs,
        # the engine's or the request's engine_args
        most = min(c.engine.max_batch, self.sched.max_num_seqs)
        dense = most if lay.shape[0] <= 32 else 64
        # a batch between two captured CUDA-graph sizes runs (and is priced) as the larger
        # one, so the candidates are the captured sizes themselves up to the largest
        grid = on_captured_sizes(batch_grid(most, dense_up_to=dense), graphs_for(c, self.sched))
        grid = [b for b in grid if b <= most]
        # the search uses no figure of a candidate that does not fit: those are not priced
        points = cross(lay, grid, per_dp_rank=True)
        r = evaluate_decode(c, *points, self.decode_context, fitting_only=True)
        self.design_points += r.tp.shape[0]
        return _DecodeSet(r, self._decode_rate(r), len(grid))

    def run_disagg(self) -> _Side:
        side = _Side()
        side.compared = (
            f"disaggregated: prefill on {self.ctx.gpu.name} (at most {self.budget_p}), decode on "
            f"{self.dctx.gpu.name} (at most {self.budget_d}), {self.budget} GPUs in all"
        )
        if self.prefill_only:
            side.compared = "no disaggregated deployment (OSL 1: nothing to decode, no decode pool)"
            return side
        if self.budget < 2:
            side.binding.append("budget: disaggregated serving needs at least 2 GPUs")
            return side
        pre = self._prefill()
        self._check()
        dset = self._decode()
        self._check()
        dec = dset.arrays
        self.any_fit |= bool(pre.fits.any() and dec.fits.any())
        cands = self._candidates(pre, dset, self.budget, side)
        if cands is None:
            return side
        pre, pi, r_p, g_p, di, r_d, g_d = cands
        # every decode candidate gets its best prefill partner and whole-worker counts (xPyD)
        ox, oy, orate, opre = self._match(r_p, g_p, r_d, g_d, self.budget, self.budget_p,
                                          self.budget_d)  # fmt: skip
        ok = ox > 0
        if not ok.any():
            side.binding.append(
                f"budget: no prefill and decode workers fit in {self.budget} GPUs together"
            )
            return side
        gpus_used = ox * g_p[np.maximum(opre, 0)] + oy * g_d
        served = np.minimum(orate, self.rate) if self.rate > 0 else orate
        # TPOT at the rate served: the decode workers run the smallest batch of their layout
        # that carries it (without a target rate, the candidate's own batch)
        tpot = self._tpot_served(dset, di, np.where(ok, served / np.maximum(oy, 1), 0.0))
        tokens = np.where(ok, served * self.osl / np.maximum(gpus_used, 1), np.nan)
        user = 1e3 / tpot

        def deployment(j: int) -> Deployment:
            # the exact balance of the pair, in per-GPU rates: alpha = R_gen / R_ctx
            k = int(opre[j])
            balanced = float((r_d[j] / g_d[j]) / (r_p[k] / g_p[k]))
            return self._disagg_deployment(
                pre,
                int(pi[k]),
                dec,
                int(di[j]),
                int(ox[j]),
                int(oy[j]),
                float(orate[j]),
                float(tpot[j]),
                balanced,
            )

        side.pareto = [deployment(int(j)) for j in pareto_front(user, tokens)]
        meet = ok & (tpot <= self.tpot_target)
        if not meet.any():
            if not side.binding:
                side.binding.append(
                    f"budget: no decode worker meeting TPOT fits beside a prefill worker in "
                    f"{self.budget} GPUs"
                )
            j = int(np.argmin(np.where(ok, tpot, np.inf)))
            side.closest = deployment(j)
            side.closest_gap = float(tpot[j] / self.tpot_target)
            return side
        side.meeting = np.stack([served[meet], user[meet], gpus_used[meet]], axis=1)
        k = choose(orate, gpus_used, user, meet, self.rate)
        if self.rate > 0 and orate[k] < self.rate * (1.0 - 1e-9):
            side.binding.append(self._rate_miss(float(orate[k])))
            side.closest, side.closest_gap = deployment(k), float(self.rate / orate[k])
            side.for_rate = self._disagg_for_rate()
            return side
        side.best = deployment(k)
        return side

    def _candidates(
        self, pre: PhaseArrays, dset: _DecodeSet, budget: int, side: _Side | None
    ) -> _Pairable | None:
        """The prefill and decode candidates that can pair, within ``budget`` GPUs in both pools
        (which decides whether the KV cache travels over NVLink), dominated prefill ones left
        out. None when one pool has none; with ``side``, why is added to its binding
        constraints."""
        dec = dset.arrays
        # KV transfer: its non-overlapped tail joins the prefill's time to first token, and a
        # worker may not send faster than its shard-holding GPUs' links carry
        link_bytes_per_s = link_between_pools(self.ctx.gpu, self.dctx.gpu, budget)
        kv = prefill_transfers(
            self.ctx, self.isl, pre.layouts, pre.batch, pre.latency_ms, link_bytes_per_s
        )
        link_rate = kv.max_requests_per_s
        # and a request's time outside the engines (HTTP, tokenisation, the router's hand-off
        # between the pools): the same per-request overhead ``estimate`` adds to a
        # disaggregated deployment's TTFT, as the aggregated sweep adds the agg one
        pre = replace(pre, latency_ms=pre.latency_ms + kv.tail_ms + REQUEST_OVERHEAD_MS["disagg"])
        # prefill: usable rate after queueing within its share of the SLO's tail, less the
        # decode worker's admission (half a decode step, ``_disagg_deployment``) at the slowest
        # step a deployment meeting the TPOT target may run
        service = pre.batch / pre.rate * 1e3
        admit_ms = 0.5 * min(
            self.tpot_target, float(dec.latency_ms[dec.fits].max()) if dec.fits.any() else 0.0
        )
        util = usable_utilisation(
            pre.latency_ms, service, pre.fits, self.req.slo.ttft_ms - admit_ms, self.wait_pct
        )
        r_p_all = np.minimum(pre.rate * util, link_rate)
        p_ok = r_p_all > 0.0
        d_ok = dec.fits.copy()
        if side is not None:
            self._explain_pools(pre, dec, p_ok, d_ok, admit_ms, side)
        if not p_ok.any() or not d_ok.any():
            return None
        pi = np.nonzero(p_ok)[0]
        r_p, g_p = r_p_all[pi], pre.gpus[pi]
        di = np.nonzero(d_ok)[0]
        r_d, g_d = dset.rate[di], dec.gpus[di]
        # a prefill candidate is dominated by another of no more GPUs and a higher usable rate
        keep = _undominated(g_p, r_p)
        return _Pairable(pre, pi[keep], r_p[keep], g_p[keep], di, r_d, g_d)

    def _explain_pools(
        self,
        pre: PhaseArrays,
        dec: PhaseArrays,
        p_ok: np.ndarray,
        d_ok: np.ndarray,
        admit_ms: float,
        side: _Side,
    ) -> None:
        """Record the fastest prefill and decode steps and say why a pool has no candidate;
        ``admit_ms`` is the TTFT reserved for the decode worker's admission."""
        slo = self.req.slo
        if pre.fits.any():
            self.best_prefill_ms = float(pre.latency_ms[pre.fits].min())
        if dec.fits.any():
            self.best_decode_ms = float(dec.latency_ms[dec.fits].min())
        if not pre.fits.any():
            side.binding.append(f"memory: no prefill layout on {self.ctx.gpu.name} fits the model")
        elif not p_ok.any():
            side.binding.append(
                f"TTFT: the fastest prefill takes {self.best_prefill_ms + admit_ms:.0f} ms "
                "with its KV transfer, the request overhead and the decode worker's admission, "
                f"target {slo.ttft_ms:g} ms at {slo.percentile}"
            )
        if not d_ok.any():
            side.binding.append(f"memory: no decode layout on {self.dctx.gpu.name} fits the model")
        elif not (dec.latency_ms[d_ok] <= self.tpot_target).any():
            side.binding.append(
                f"TPOT: the fastest decode step takes {self.best_decode_ms:.1f} ms, target "
                f"{self.tpot_target:g} ms"
            )

    def _match(
        self,
        r_p: np.ndarray,
        g_p: np.ndarray,
        r_d: np.ndarray,
        g_d: np.ndarray,
        budget: int,
        budget_p: int,
        budget_d: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        m = r_d.shape[0]
        # evaluations per decode candidate: every prefill candidate's whole worker counts
        per_decode = float(np.maximum(1.0, min(budget, budget_p) // g_p).sum())
        step = max(1, int(MATCH_SLICE_EVALUATIONS // max(per_decode, 1.0)))
        parts: list[Matches] = []
        for lo in range(0, m, step):
            self._check()
            hi = min(m, lo + step)
            got = match(r_p, g_p, r_d[lo:hi], g_d[lo:hi], budget, budget_p, budget_d, self.rate)
            self.design_points += got.evaluated
            parts.append(got)
        self._check()
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        if len(parts) == 1:
            p = parts[0]
            return p.x, p.y, p.requests_per_s, p.prefill
        return (
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.requests_per_s for p in parts]),
            np.concatenate([p.prefill for p in parts]),
        )

    def _rate_miss(self, most: float) -> str:
        return (
            f"rate: {self.budget} GPUs serve at most {most:.2f} req/s within the SLO, "
            f"{self.rate:g} req/s offered"
        )

    def _decode_rate(self, dec: PhaseArrays) -> np.ndarray:
        """Requests/s each decode candidate's worker carries under random arrivals: its batch
        turned over once per answer, times the share of that rate at which an arriving request
        finds one of the worker's ``batch`` slots free within its share of the SLO's tail
        (``queueing.slot_shares`` at ``wait_pct``); -1 where the candidate does not fit."""
        steps = max(self.osl - 1.0, 1.0)
        full = dec.batch / (dec.latency_ms * steps) * 1e3
        return np.where(dec.fits, full * slot_shares(dec.batch, self.wait_pct), -1.0)

    def _tpot_served(self, dset: _DecodeSet, di: np.ndarray, per_worker: np.ndarray) -> np.ndarray:
        """TPOT of decode candidates ``di`` when each worker carries ``per_worker`` req/s: the
        step time of the smallest batch of the same layout (up to the candidate's own) whose
        rate reaches it. Without a target rate every candidate runs at its own batch."""
        dec = dset.arrays
        own = dec.latency_ms[di]
        if self.rate <= 0:
            return own
        n_b = dset.batches
        grid = dset.rate.reshape(-1, n_b)
        rows, col = di // n_b, di % n_b
        cols = np.arange(n_b)
        ok = (grid[rows] >= per_worker[:, None] * (1.0 - 1e-9)) & (cols[None, :] <= col[:, None])
        first = np.where(ok.any(axis=1), np.argmax(ok, axis=1), col)
        return dec.latency_ms[rows * n_b + first]

    def _disagg_for_rate(self) -> Deployment | None:
        """The fewest GPUs (past the budget, up to ``RATE_SEARCH_FACTOR`` times it) whose xPyD
        serves the target rate. Workers of any size up to that cap take part, also those too
        large to pair within the budget (a 32-GPU TP8 PP4 decode worker can need fewer GPUs in
        all than 8-GPU ones), and of the decode candidates those whose step meets the TPOT
        target at their own batch."""
        cap = min(RATE_SEARCH_FACTOR * self.budget, RATE_SEARCH_MAX_GPUS)
        pre = self._prefill(cap)
        self._check()
        dset = self._decode(cap)
        self._check()
        cands = self._candidates(pre, dset, cap, None)
        if cands is None:
            return None
        pre, pi, r_p, g_p, di, r_d, g_d = cands
        dec = dset.arrays
        m = dec.latency_ms[di] <= self.tpot_target
        dj, r_d, g_d = di[m], r_d[m], g_d[m]
        if dj.size == 0:
            return None
        # continuous bound R (g_p / r_p + g_d / r_d); whole workers add at most one of each
        lower = float((self.rate * (g_p[:, None] / r_p[:, None] + (g_d / r_d)[None, :])).min())
        if lower > cap:
            return None
        bound = int(min(cap, math.ceil(lower + g_p.max() + g_d.max())))
        ox, oy, orate, opre = self._match(r_p, g_p, r_d, g_d, bound, bound, bound)
        ok = ox > 0
        gpus_used = ox * g_p[np.maximum(opre, 0)] + oy * g_d
        # TPOT again at the load these worker counts carry
        tpot = self._tpot_served(dset, dj, np.minimum(orate, self.rate) / np.maximum(oy, 1))
        hits = ok & (orate >= self.rate * (1.0 - 1e-9)) & (tpot <= self.tpot_target)
        if not hits.any():
            return None
        user = 1e3 / tpot
        j = choose(orate, gpus_used, user, hits, self.rate)
        k = int(opre[j])
        return self._disagg_deployment(
            pre,
            int(pi[k]),
            dec,
            int(dj[j]),
            int(ox[j]),
            int(oy[j]),
            float(orate[j]),
            float(1e3 / user[j]),
            float((r_d[j] / g_d[j]) / (r_p[k] / g_p[k])),
        )

    def _disagg_deployment(
        self,
        pre: PhaseArrays,
        i: int,
        dec: PhaseArrays,
        j: int,
        x: int,
        y: int,
        capacity: float,
        tpot_ms: float,
        balanced_ratio: float,
    ) -> Deployment:
        """The xPyD deployment of prefill candidate ``i`` and decode candidate ``j``, at the
        target rate when one is set (at most ``capacity`` req/s), else at its capacity."""
        served = min(capacity, self.rate) if self.rate > 0 else capacity
        g_p, g_d = float(pre.gpus[i]), float(dec.gpus[j])
        service = float(pre.batch[i] / pre.rate[i] * 1e3)
        gpus = int(x * g_p + y * g_d)
        rho = min(served / (x * float(pre.rate[i])), MAX_UTILISATION)
        # the first token is the decode worker's: it admits the request at its next step
        # boundary, half a step on average after the KV arrives (the engine loop counts it
        # so). Without it, plans of long decode steps came out up to 18% below their replay
        # (Llama-3.1-70B on 8 x H200, 300/2000, p50: 269 ms planned, 295 ms replayed)
        ttft = (
            float(pre.latency_ms[i]) + wait_ms_dealt(rho, service, self.wait_pct, x) + 0.5 * tpot_ms
        )
        tp, pp, dp = float(pre.tp[i]), float(pre.pp[i]), float(pre.dp[i])
        kv = worker_egress_bytes_per_s(self.ctx, self.isl, tp, pp, dp, served / x) / 1e9
        pools = (
            Pool(
                "prefill",
                self.ctx.gpu.name,
                int(pre.tp[i]),
                int(pre.pp[i]),
                int(pre.ep[i]),
                int(pre.dp[i]),
                int(pre.batch[i]),
                x,
            ),
            Pool(
                "decode",
                self.dctx.gpu.name,
                int(dec.tp[j]),
                int(dec.pp[j]),
                int(dec.ep[j]),
                int(dec.dp[j]),
                int(dec.batch[j]),
                y,
            ),
        )
        return Deployment(
            mode="disagg",
            pools=pools,
            ttft_ms=ttft,
            tpot_ms=tpot_ms,
            tokens_per_s_per_gpu=served * self.osl / gpus,
            tokens_per_s_per_user=1e3 / tpot_ms,
            requests_per_s=served,
            gpus=gpus,
            prefill_decode_gpu_ratio=x * g_p / (y * g_d),
            balanced_gpu_ratio=balanced_ratio,
            kv_transfer_gb_per_s_per_gpu=kv,
            prompt_tokens_per_s_per_gpu=served * self.isl / gpus,
        )

    # -- aggregated ----------------------------------------------------------------------------
    def run_agg_owned(self) -> _Side:
        """Aggregated serving on the GPUs the budget holds: with one GPU type, all ``gpus``;
        with a separate decode type, each type alone within its own count (``prefill_gpus``
        of ``gpu``, ``decode_gpus`` of ``decode_gpu``); the better by the rule is the agg side."""
        if self.dctx is self.ctx:
            return self.run_agg(self.ctx, self.budget)
        sides = [self.run_agg(self.ctx, self.budget_p), self.run_agg(self.dctx, self.budget_d)]
        out = _Side()
        out.compared = " or ".join(s.compared for s in sides)
        out.pareto = sorted((d for s in sides for d in s.pareto), key=_user)
        keep = pareto_front(
            np.array([_user(d) for d in out.pareto]),
            np.array([d.tokens_per_s_per_gpu for d in out.pareto]),
        )
        out.pareto = [out.pareto[int(i)] for i in keep]
        out.best = _pick(sides[0].best, sides[1].best, self.rate)
        out.meeting = np.concatenate([s.meeting for s in sides])
        out.for_rate = _pick(sides[0].for_rate, sides[1].for_rate, self.rate)
        if out.best is None:
            near = min(sides, key=lambda s: s.closest_gap)
            out.closest, out.closest_gap = near.closest, near.closest_gap
            for s, c in zip(sides, (self.ctx, self.dctx), strict=True):
                out.binding += [f"on {c.gpu.name}, {b}" for b in s.binding]
        return out

    def run_agg(self, c: PerfContext, budget: int) -> _Side:
        side = _Side()
        side.compared = f"aggregated on {budget} x {c.gpu.name}"
        lay = layouts(self.model, c.gpu, budget, self.req.limits, allow_pp=False, ep_ends_only=True)
        isl_cycle, osl_cycle = mix_cycle(self.req.traffic)
        # the engine's chunked-prefill budget, a small budget that interleaves more finely, and
        # no chunking (which MLA models favour: each chunk repeats the latent up-projection);
        # large MoE layout spaces keep only the engine's budget and no chunking
        sched = self.sched
        step_tokens = sched.max_num_batched_tokens
        chunks = [step_tokens, 0] if lay.shape[0] > 24 else sorted({step_tokens, 2048, 0})
        sched_v = scheduler_vector(sched)
        graphs = graphs_for(c, sched)
        chunk_arr = np.array(chunks, dtype=np.float64)
        conc = np.array(AGG_CONCURRENCY, dtype=np.float64)
        found: list[AggPoints] = []
        owner: list[np.ndarray] = []
        # a request's time outside the engine loop (HTTP, tokenisation, detokenisation): the
        # same per-request overhead that ``estimate`` adds to an aggregated worker's TTFT
        overhead_ms = REQUEST_OVERHEAD_MS["agg"]
        for li in range(lay.shape[0]):
            self._check()
            got = sweep(
                c,
                (lay[li, 0], lay[li, 1], lay[li, 2], lay[li, 3]),
                chunk_arr,
                conc,
                isl_cycle,
                osl_cycle,
                self.req.prefix_hit,
                sched_v,
                graphs,
                4.0 * self.req.slo.ttft_ms - overhead_ms,
                self.pct,
            )
            found.append(replace(got, ttft_ms=got.ttft_ms + overhead_ms))
            owner.append(np.full(got.n, li))
        pts = AggPoints(
            *(
                np.concatenate([getattr(p, f) for p in found]) if found else np.zeros(0)
                for f in ("chunk", "users", "ttft_ms", "tpot_ms", "tokens_per_s", "requests_per_s")
            )
        )
        who = np.concatenate(owner) if owner else np.zeros(0, np.int64)
        self.design_points += pts.n
        if pts.n == 0:
            side.binding.append(
                f"memory: no aggregated layout on {budget} x {c.gpu.name} fits the model and "
                "one request"
            )
            return side
        self.any_fit = True
        g = lay[who, 0] * lay[who, 1] * lay[who, 3]
        rps = pts.requests_per_s
        group = who * 1e6 + pts.chunk  # one setup: a layout and a chunk budget
        workers = np.floor(budget / g)
        served = rps * workers
        ttft, tpot = pts.ttft_ms.copy(), pts.tpot_ms.copy()
        if self.rate > 0:
            # as many workers as the rate needs; each then carries rate / workers, and its
            # TTFT and TPOT are its setup's at that rate (between the concurrencies around it)
            need = np.maximum(1.0, np.ceil(self.rate / rps * (1.0 - 1e-12)))
            workers = np.minimum(workers, need)
            served = np.minimum(rps * workers, self.rate)
            ttft, tpot = _at_rate(group, rps, served / workers, ttft, tpot)
        if self.prefill_only:
            # one token per request, produced by the prefill: no decode interactivity
            user = np.zeros_like(tpot)
            per_gpu = served * self.osl / (g * workers)
            front_x = np.where(ttft > 0, 1e3 / np.maximum(ttft, 1e-12), 0.0)
        else:
            user = np.where(tpot > 0, 1e3 / np.maximum(tpot, 1e-12), 0.0)
            per_gpu = served * self.osl / (g * workers)
            front_x = user

        def deployment(i: int) -> Deployment:
            tp_, pp_, ep_, dp_ = (int(v) for v in lay[who[i]])
            chunk = int(pts.chunk[i])
            use = int(workers[i])
            pool = Pool(
                "agg",
                c.gpu.name,
                tp_,
                pp_,
                ep_,
                dp_,
                # the sequences a worker runs: its clients, up to the scheduler's max_num_seqs
                # on each attention-DP rank (more clients queue, as the simulation had them)
                min(int(pts.users[i]), self.sched.max_num_seqs * dp_),
                use,
                chunk if chunk > 0 else None,
            )
            gpus = int(g[i]) * use
            return Deployment(
                mode="agg",
                pools=(pool,),
                ttft_ms=float(ttft[i]),
                tpot_ms=float(tpot[i]),
                tokens_per_s_per_gpu=float(per_gpu[i]),
                tokens_per_s_per_user=float(user[i]),
                requests_per_s=float(served[i]),
                gpus=gpus,
                prompt_tokens_per_s_per_gpu=float(served[i]) * self.isl / gpus,
            )

        slo = self.req.slo
        ttft_ok = ttft <= slo.ttft_ms
        tpot_ok = (tpot <= self.tpot_target) | self.prefill_only
        on_front = np.nonzero(ttft_ok)[0] if ttft_ok.any() else np.arange(pts.n)
        front = pareto_front(front_x[on_front], per_gpu[on_front])
        side.pareto = [deployment(int(on_front[i])) for i in front]
        meets = ttft_ok & tpot_ok
        if not meets.any():
            gap = np.maximum(ttft / slo.ttft_ms, np.where(tpot_ok, 0.0, tpot / self.tpot_target))
            i = int(np.argmin(gap))
            side.closest, side.closest_gap = deployment(i), float(gap[i])
            if not ttft_ok.any():
                side.binding.append(
                    f"TTFT: the fastest aggregated point reaches {ttft.min():.0f} ms, target "
                    f"{slo.ttft_ms:g} ms at {slo.percentile}"
                )
            if not tpot_ok.any():
                side.binding.append(
                    f"TPOT: the fastest aggregated point reaches {tpot.min():.1f} ms, target "
                    f"{self.tpot_target:g} ms at {slo.percentile}"
                )
            if ttft_ok.any() and tpot_ok.any():
                side.binding.append(
                    "TTFT and TPOT together: no aggregated point meets both; the closest reaches "
                    f"TTFT {ttft[i]:.0f} ms and TPOT {tpot[i]:.1f} ms"
                )
            return side
        side.meeting = np.stack([served[meets], user[meets], (g * workers)[meets]], axis=1)
        k = choose(rps * workers, g * workers, user, meets, self.rate)
        if self.rate > 0 and rps[k] * workers[k] < self.rate * (1.0 - 1e-9):
            side.binding.append(self._rate_miss(float(rps[k] * workers[k])))
            side.closest = deployment(k)
            side.closest_gap = float(self.rate / (rps[k] * workers[k]))
            # past the budget: as many workers as the rate needs, at most RATE_SEARCH_FACTOR x
            # the budget, judged at the offered rate as above
            need = np.maximum(1.0, np.ceil(self.rate / rps * (1.0 - 1e-12)))
            ttft_at, tpot_at = _at_rate(group, rps, self.rate / need, pts.ttft_ms, pts.tpot_ms)
            total = g * need
            fits = (
                (ttft_at <= slo.ttft_ms)
                & ((tpot_at <= self.tpot_target) | self.prefill_only)
                & (total <= RATE_SEARCH_FACTOR * self.budget)
            )
            j = choose(rps * need, total, 1e3 / np.maximum(tpot_at, 1e-12), fits, self.rate)
            if j >= 0:
                workers[j], served[j] = need[j], self.rate
                ttft[j], tpot[j] = ttft_at[j], tpot_at[j]
                user[j] = 0.0 if self.prefill_only else 1e3 / max(tpot[j], 1e-12)
                per_gpu[j] = self.rate * self.osl / total[j]
                side.for_rate = deployment(j)
            return side
        side.best = deployment(k)
        return side

    def why_nothing(self, agg: _Side, disagg: _Side) -> tuple[str, Deployment | None]:
        if self.prefill_only and "agg" not in self.req.limits.modes:
            # nothing was priced, so nothing says whether the model fits: say what was asked
            return (
                "prefill-only traffic (OSL 1) has no decode pool, so there is no disaggregated "
                "deployment to search; search aggregated serving (mode agg or both)"
            ), None
        if not self.any_fit:
            weights = self.model.total_params * self.ctx.hv[H_W_BYTES] / 1e9
            held = self.budget * capacity_bytes(self.ctx.hv) / 1e9
            head = (
                f"{self.model.name} fits on no layout within {self.budget} x {self.ctx.gpu.name} "
                f"at {self.req.precision.dtype}: "
            )
            if weights > held:
                alone = f"its weights alone need {weights:.0f} GB, more than {held:.0f} GB"
                return head + alone, None
            longest = max(w.isl + w.osl for w in self.req.traffic)
            return (
                f"{head}its weights take {weights:.0f} of the {held:.0f} GB, and beside them the "
                f"engine's reserve (memory fraction, activations, CUDA graphs) leaves no layout "
                f"room for the KV cache of one {longest:,}-token request; `estimate` itemises a "
                f"layout's memory, and a higher memory fraction may fit"
            ), None
        parts = []
        for name, s in (("agg", agg), ("disagg", disagg)):
            if not s.binding:
                continue
            text = f"{name}: " + "; ".join(s.binding)
            if s.closest is not None:
                d = s.closest
                text += (
                    f" (closest miss: {_pools_text(d)}, TTFT {d.ttft_ms:.0f} ms, "
                    f"TPOT {d.tpot_ms:.1f} ms, {d.requests_per_s:.2f} req/s on {d.gpus} GPUs)"
                )
            parts.append(text)
        closest = min(
            (s for s in (agg, disagg) if s.closest is not None),
            key=lambda s: s.closest_gap,
            default=None,
        )
        return " | ".join(parts), closest.closest if closest else None

    def explain(
        self,
        best: Deployment | None,
        agg: _Side,
        disagg: _Side,
        speedup: float | None,
        for_rate: Deployment | None,
    ) -> str:
        """Why the best was chosen (or why none was), what each number is, what was compared."""
        req, slo = self.req, self.req.slo
        compared = "compared " + " with ".join(s.compared for s in (agg, disagg) if s.compared)
        if best is None:
            if self.rate > 0 and for_rate is not None:
                # past the budget the disaggregated search takes workers of any size; the
                # aggregated one keeps the budget's layouts
                within = (
                    f" with aggregated workers of at most {req.gpus} GPUs"
                    if for_rate.mode == "agg"
                    else ""
                )
                return (
                    f"{req.gpus} GPUs do not serve the offered {self.rate:g} req/s within the SLO; "
                    f"the fewest that do{within}: {for_rate.gpus} GPUs, {for_rate.mode} "
                    f"({_pools_text(for_rate)}) at TTFT {for_rate.ttft_ms:.0f} ms and TPOT "
                    f"{for_rate.tpot_ms:.1f} ms; {compared}"
                )
            if self.rate > 0 and any(s.closest for s in (agg, disagg)):
                return (
                    f"{req.gpus} GPUs do not serve the offered {self.rate:g} req/s within the "
                    f"SLO, nor do {RATE_SEARCH_FACTOR * req.gpus}; {compared}"
                )
            return f"no deployment meets the SLO within the GPU budget; {compared}"
        if self.rate > 0:
            what = f"serves the offered {self.rate:g} req/s"
        else:
            what = f"delivers {best.requests_per_s:.2f} req/s (the most within the budget)"
        pct = slo.percentile
        if self.prefill_only:
            figures = (
                f"{best.prompt_tokens_per_s_per_gpu or 0.0:.0f} prompt tokens/s/GPU; TTFT {pct} "
                f"{best.ttft_ms:.0f} ms (target {slo.ttft_ms:g}); prefill-only traffic "
                "(OSL 1): the first token ends each request, so there is no decode pool and no TPOT"
            )
        else:
            tpot_is = (
                "decode-pool step time, free of prefill interference, so the same at every "
                "percentile"
                if best.mode == "disagg"
                else f"the {pct} of requests' TPOT under random arrivals at this rate: the "
                "decode step of the sequences it holds, stretched by the prefills interleaved "
                "with it, at most the simulation's with every batch slot busy"
            )
            figures = (
                f"{best.tokens_per_s_per_gpu:.0f} output tokens/s/GPU and "
                f"{best.tokens_per_s_per_user:.1f} tokens/s/user; TTFT {pct} {best.ttft_ms:.0f} ms "
                f"(target {slo.ttft_ms:g}, queueing included), TPOT {pct} {best.tpot_ms:.1f} ms "
                f"(target {self.tpot_target:g}; {tpot_is})"
            )
        at = " at the offered rate" if self.rate > 0 else ""
        text = (
            f"{best.mode} serving ({_pools_text(best)}) {what} on {best.gpus} of {req.gpus} GPUs: "
            f"{figures}{at}; {compared}"
        )
        a, d = agg.best, disagg.best
        if speedup is not None and a is not None and d is not None:
            text += f"; disaggregation gives {speedup:.2f}x the tokens/s/GPU of aggregation"
            other = d if best is a else a
            if other.tokens_per_s_per_gpu > best.tokens_per_s_per_gpu:
                text += (
                    f", but the best {other.mode} deployment serves {other.requests_per_s:.2f} "
                    f"req/s on {other.gpus} GPUs"
                )
        elif best.mode == "disagg" and "agg" in req.limits.modes:
            text += "; no aggregated setup meets the SLO"
        elif best.mode == "agg" and "disagg" in req.limits.modes and not self.prefill_only:
            text += "; no disaggregated setup meets the SLO"
        return text


def _user(d: Deployment) -> float:
    return d.tokens_per_s_per_user if d.tpot_ms > 0 else 1e3 / max(d.ttft_ms, 1e-12)


def _first_carrying(group: np.ndarray, rate: np.ndarray, need: np.ndarray) -> np.ndarray:
    """For each row, the first row of its group (contiguous, rising concurrency), up to itself,
    whose ``rate`` reaches the row's ``need``; the row itself when none does."""
    n = group.shape[0]
    start = np.zeros(n, np.int64)
    new = np.ones(n, np.bool_)
    new[1:] = group[1:] != group[:-1]
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    span = int((np.arange(n) - start).max()) + 1 if n else 1
    cand = start[:, None] + np.arange(span)[None, :]
    inside = cand <= np.arange(n)[:, None]
    cand = np.minimum(cand, n - 1)
    ok = inside & (rate[cand] >= need[:, None] * (1.0 - 1e-9))
    return np.where(ok.any(axis=1), cand[np.arange(n), np.argmax(ok, axis=1)], np.arange(n))


def _at_rate(
    group: np.ndarray, rate: np.ndarray, need: np.ndarray, *cols: np.ndarray
) -> list[np.ndarray]:
    """``cols`` of each row where its group runs at the row's ``need`` requests/s: linear in
    rate between the first row carrying it (``_first_carrying``) and the row before it in the
    group, whose rate falls short; the carrying row's own values where it is the group's
    first or carries no more than ``need``. A worker given less than a point's rate holds
    fewer sequences than that point: read at the point itself, an aggregated worker's TPOT at
    the offered rate came out 11% above its replay (Llama-3.1-70B, 2 x TP8 on 16 H100s,
    4000/500, 1.5 req/s a worker: 19.5 ms planned at the next point up, 17.6 replayed)."""
    at = _first_carrying(group, rate, need)
    prev = np.maximum(at - 1, 0)
    # the row before the first carrying one falls short of the need by construction
    between = (at > 0) & (group[prev] == group[at]) & (rate[at] > need)
    f = np.where(between, (need - rate[prev]) / np.where(between, rate[at] - rate[prev], 1.0), 1.0)
    return [np.where(between, c[prev] + f * (c[at] - c[prev]), c[at]) for c in cols]


def _undominated(gpus: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Indices of candidates no other beats with at most as many GPUs and a higher rate."""
    order = np.lexsort((-rate, gpus))
    keep, best = [], -1.0
    for i in order:
        if rate[i] > best:
            keep.append(i)
            best = rate[i]
    return np.array(keep, dtype=np.int64)
