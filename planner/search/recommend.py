"""``plan``: search aggregated and disaggregated deployments and recommend one.

1. Traffic: a mix is summarised by its weighted mean lengths for the phase models; the
   aggregated simulation replays the mix itself.
2. Disaggregated: every prefill layout x batch (``phases.prefill_many``) and every decode layout x
   batch (``phases.decode_many``) is evaluated in one kernel call each. A prefill candidate must
   meet the TTFT target after queueing: it may run only up to the utilisation at which its wait
   at the SLO percentile still fits (``queueing.max_utilisation``). Decode candidates meet the
   TPOT target (and the minimum tokens/s/user).
3. Rate matching: every decode candidate is paired with the prefill candidate and the whole
   worker counts (xPyD) that serve it best inside the GPU budgets (``ratematch.match_all``); the
   frontier and the recommendation are both made of these real deployments.
4. Aggregated: every layout x chunked-prefill budget (and no chunking) x concurrency runs the
   event simulation; its TTFT/TPOT at the SLO percentile decide feasibility.
5. The best deployment maximises delivered requests/s within the budget (or, with a target rate,
   reaches it with the fewest GPUs); frontiers are tokens/s/GPU against tokens/s/user.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from planner import validate
from planner.catalog import (
    GpuCatalog,
    ModelCatalog,
    ModelSpec,
    default_gpus,
    default_models,
    load_engine,
)
from planner.errors import InvalidInputError, SearchCancelled
from planner.perf.params import H_W_BYTES, PerfContext
from planner.search.aggsweep import (
    R_CHUNK,
    R_REQUESTS_PER_S,
    R_TOKENS_PER_S,
    R_TPOT,
    R_TTFT,
    R_USERS,
    ROW_COLUMNS,
    sweep_layout,
)
from planner.search.enumerate import batch_grid, cross, layouts
from planner.search.pareto import pareto_front
from planner.search.ratematch import match_all
from planner.serving.kvtransfer import (
    egress_bytes_per_s,
    link_between_pools,
    transfer_many,
)
from planner.serving.mix import mix_cycle
from planner.serving.phases import PhaseArrays, evaluate_decode, evaluate_prefill
from planner.serving.queueing import MAX_UTILISATION, PERCENTILES, max_utilisation_many, wait_ms
from planner.types import Deployment, PlanRequest, PlanResult, Pool

PREFILL_BATCHES = list(range(1, 33))
AGG_CONCURRENCY = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


def _validate(req: PlanRequest) -> None:
    validate.integer(req.gpus, "gpus", 1, 1_000_000)
    if req.prefill_gpus is not None:
        validate.integer(req.prefill_gpus, "prefill_gpus", 1, req.gpus)
    if req.decode_gpus is not None:
        validate.integer(req.decode_gpus, "decode_gpus", 1, req.gpus)
    if not req.traffic:
        raise InvalidInputError("traffic", "give isl and osl, or a mix of (isl, osl, weight)")
    for i, w in enumerate(req.traffic):
        validate.lengths(w.isl, w.osl, f"traffic[{i}].")
        validate.number(w.weight, f"traffic[{i}].weight", 0.0, 1e12, lo_open=True)
    validate.number(req.slo.ttft_ms, "slo.ttft_ms", 0.0, 1e9, lo_open=True)
    validate.number(req.slo.tpot_ms, "slo.tpot_ms", 0.0, 1e9, lo_open=True)
    if req.slo.percentile not in PERCENTILES:
        raise InvalidInputError(
            "slo.percentile", f"must be p50, p90 or p99, got {req.slo.percentile!r}"
        )
    if req.slo.min_tokens_per_s_per_user is not None:
        validate.number(
            req.slo.min_tokens_per_s_per_user, "slo.min_tokens_per_s_per_user", 0.0, 1e9
        )
    if req.rate_per_s is not None:
        validate.number(req.rate_per_s, "rate_per_s", 0.0, 1e9, lo_open=True)
    validate.number(req.prefix_hit, "prefix_hit", 0.0, 0.99)
    if req.limits.max_tp is not None:
        validate.integer(req.limits.max_tp, "limits.max_tp", 1, 4096)
    bad = [m for m in req.limits.modes if m not in ("agg", "disagg")]
    if bad or not req.limits.modes:
        raise InvalidInputError("limits.modes", "must be a non-empty subset of agg, disagg")


def plan(
    req: PlanRequest,
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PlanResult:
    """Search the design space for ``req`` and recommend a deployment."""
    start = time.perf_counter()
    models = models or default_models()
    gpus = gpus or default_gpus()
    model = models.get(req.model, "model")
    gpu = gpus.get(req.gpu, "gpu")
    dgpu = gpus.get(req.decode_gpu, "decode_gpu") if req.decode_gpu else gpu
    engine = load_engine(req.engine, "engine")
    _validate(req)
    stop = should_stop or (lambda: False)
    ctx = PerfContext.build(model, gpu, engine, req.precision.dtype, req.precision.kv_dtype)
    dctx = (
        ctx
        if dgpu is gpu
        else PerfContext.build(model, dgpu, engine, req.precision.dtype, req.precision.kv_dtype)
    )
    s = _Search(req, model, ctx, dctx, stop)
    agg = s.run_agg() if "agg" in req.limits.modes else _Side()
    disagg = s.run_disagg() if "disagg" in req.limits.modes else _Side()
    best = _pick(agg.best, disagg.best, req.rate_per_s)
    speedup = (
        disagg.best.tokens_per_s_per_gpu / agg.best.tokens_per_s_per_gpu
        if agg.best and disagg.best and agg.best.tokens_per_s_per_gpu > 0
        else None
    )
    reason, closest = None, None
    if best is None:
        reason, closest = s.why_nothing(agg, disagg)
    return PlanResult(
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
        explanation=_explain(best, agg.best, disagg.best, speedup, req),
    )


@dataclass
class _Side:
    best: Deployment | None = None
    pareto: list[Deployment] = field(default_factory=list)
    closest: Deployment | None = None
    closest_gap: float = math.inf
    binding: str | None = None


def _choose(
    requests_per_s: np.ndarray,
    gpus: np.ndarray,
    tokens_per_s_per_gpu: np.ndarray,
    eligible: np.ndarray,
    target_rate: float,
) -> int:
    """The recommendation rule, the same for agg points, xPyD pairs and the final pick: with a
    target rate that an eligible deployment reaches, the fewest GPUs among those; otherwise the
    most requests/s; ties go to the most tokens/s/GPU. Returns -1 when none is eligible."""
    idx = np.nonzero(eligible)[0]
    if idx.size == 0:
        return -1
    if target_rate > 0:
        hits = idx[requests_per_s[idx] >= target_rate]
        if hits.size:
            return int(hits[np.lexsort((-tokens_per_s_per_gpu[hits], gpus[hits]))[0]])
    return int(idx[np.lexsort((-tokens_per_s_per_gpu[idx], -requests_per_s[idx]))[0]])


def _pick(
    agg: Deployment | None, disagg: Deployment | None, rate: float | None
) -> Deployment | None:
    cands = [d for d in (agg, disagg) if d is not None]
    i = _choose(
        np.array([d.requests_per_s for d in cands]),
        np.array([d.gpus for d in cands]),
        np.array([d.tokens_per_s_per_gpu for d in cands]),
        np.ones(len(cands), np.bool_),
        rate or 0.0,
    )
    return cands[i] if i >= 0 else None


def _explain(
    best: Deployment | None,
    agg: Deployment | None,
    disagg: Deployment | None,
    speedup: float | None,
    req: PlanRequest,
) -> str:
    if best is None:
        return "no deployment meets the SLO within the GPU budget"
    pools = ", ".join(
        f"{p.role} TP{p.tp}xPP{p.pp}"
        + (f"xEP{p.ep}xDP{p.attention_dp}" if p.ep > 1 or p.attention_dp > 1 else "")
        + f" batch {p.batch} x{p.workers}"
        for p in best.pools
    )
    text = (
        f"{best.mode} serving ({pools}) delivers {best.requests_per_s:.2f} req/s at "
        f"{best.tokens_per_s_per_gpu:.0f} tokens/s/GPU and {best.tokens_per_s_per_user:.1f} "
        f"tokens/s/user, meeting TTFT {req.slo.ttft_ms:g} ms and TPOT {req.slo.tpot_ms:g} ms "
        f"({req.slo.percentile}) on {best.gpus} of {req.gpus} GPUs"
    )
    if speedup is not None and agg is not None and disagg is not None:
        text += (
            f"; disaggregation gives {speedup:.2f}x the tokens/s/GPU of the best aggregated setup"
        )
        other = disagg if best is agg else agg
        if other.tokens_per_s_per_gpu > best.tokens_per_s_per_gpu:
            text += (
                f", but within {req.gpus} GPUs the best {other.mode} deployment delivers only "
                f"{other.requests_per_s:.2f} req/s on {other.gpus} GPUs"
            )
    elif best.mode == "disagg" and "agg" in req.limits.modes:
        text += "; no aggregated setup meets the SLO"
    elif best.mode == "agg" and "disagg" in req.limits.modes:
        text += "; no disaggregated setup meets the SLO"
    return text


class _Search:
    def __init__(
        self,
        req: PlanRequest,
        model: ModelSpec,
        ctx: PerfContext,
        dctx: PerfContext,
        stop: Callable[[], bool],
    ) -> None:
        self.req, self.model, self.ctx, self.dctx = req, model, ctx, dctx
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
        self.tpot_target = req.slo.tpot_ms
        if req.slo.min_tokens_per_s_per_user:
            self.tpot_target = min(self.tpot_target, 1e3 / req.slo.min_tokens_per_s_per_user)
        self.stop = stop
        self.design_points = 0
        self.budget = req.gpus
        self.budget_p = req.prefill_gpus or req.gpus
        self.budget_d = req.decode_gpus or req.gpus
        self.rate = req.rate_per_s or 0.0
        self.best_prefill_ms = math.inf
        self.best_decode_ms = math.inf
        self.any_fit = False

    def _check(self) -> None:
        if self.stop():
            raise SearchCancelled("search stopped by its caller")

    # -- disaggregated -------------------------------------------------------------------------
    def _prefill(self) -> PhaseArrays:
        c = self.ctx
        lay = layouts(self.model, c.gpu, min(self.budget_p, self.budget - 1) or 1, self.req.limits)
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
        per = [
            evaluate_prefill(self.ctx, tp, pp, ep, dp, b, float(w.isl), self.req.prefix_hit)
            for w in self.req.traffic
        ]
        lat = np.stack([p.latency_ms for p in per], axis=1)
        seconds_per_prompt = sum(s / p.rate for s, p in zip(share, per, strict=True))
        order = np.argsort(lat, axis=1)
        cum = np.cumsum(share[order], axis=1)
        pick = np.minimum((cum < self.pct - 1e-12).sum(axis=1), len(per) - 1)
        rows = np.arange(tp.shape[0])
        out = per[int(np.argmax(share))]
        out.latency_ms = lat[rows, order[rows, pick]]
        out.rate = 1.0 / seconds_per_prompt
        out.fits = np.logical_and.reduce([p.fits for p in per])
        out.memory_bytes = np.max(np.stack([p.memory_bytes for p in per]), axis=0)
        return out

    def _decode(self) -> PhaseArrays:
        c = self.dctx
        lay = layouts(self.model, c.gpu, min(self.budget_d, self.budget - 1) or 1, self.req.limits)
        # every batch when the layouts are few; every batch to 64 then 6% steps otherwise
        dense = c.engine.max_batch if lay.shape[0] <= 32 else 64
        grid = batch_grid(c.engine.max_batch, dense_up_to=dense)
        r = evaluate_decode(c, *cross(lay, grid, per_dp_rank=True), self.decode_context)
        self.design_points += r.tp.shape[0]
        return r

    def run_disagg(self) -> _Side:
        side = _Side()
        if self.budget < 2:
            side.binding = "disaggregated serving needs at least 2 GPUs"
            return side
        pre = self._prefill()
        self._check()
        dec = self._decode()
        self._check()
        self.any_fit |= bool(pre.fits.any() and dec.fits.any())
        if pre.fits.any():
            self.best_prefill_ms = float(pre.latency_ms[pre.fits].min())
        if dec.fits.any():
            self.best_decode_ms = float(dec.latency_ms[dec.fits].min())
        # KV transfer: its non-overlapped tail joins the prefill's time to first token, and a
        # worker may not send faster than its shard-holding GPUs' links carry
        link_bytes_per_s = link_between_pools(self.ctx.gpu, self.dctx.gpu, self.budget)
        n_pre = pre.tp.shape[0]
        tail, link_rate = np.zeros(n_pre), np.zeros(n_pre)
        transfer_many(
            self.ctx.mv,
            self.ctx.hv,
            self.isl,
            pre.batch,
            pre.tp,
            pre.pp,
            pre.dp,
            pre.latency_ms,
            link_bytes_per_s,
            tail,
            link_rate,
        )
        pre.latency_ms = pre.latency_ms + tail
        # prefill: usable rate after queueing at the SLO percentile
        service = pre.batch / pre.rate * 1e3
        util = np.zeros(n_pre)
        max_utilisation_many(
            pre.latency_ms, service, pre.fits, self.req.slo.ttft_ms, self.pct, util
        )
        r_p_all = np.minimum(pre.rate * util, link_rate)
        p_ok = r_p_all > 0.0
        if not p_ok.any():
            side.binding = (
                f"TTFT: the fastest prefill takes {self.best_prefill_ms:.0f} ms"
                if pre.fits.any()
                else "memory: no prefill layout fits the model"
            )
        d_ok = dec.fits.copy()
        if not d_ok.any():
            side.binding = side.binding or "memory: no decode layout fits the model"
            return side
        if not p_ok.any():
            return side
        pi = np.nonzero(p_ok)[0]
        r_p, g_p = r_p_all[pi], pre.gpus[pi]
        di = np.nonzero(d_ok)[0]
        steps = max(self.osl - 1.0, 1.0)
        r_d = dec.batch[di] / (dec.latency_ms[di] * steps) * 1e3
        g_d = dec.gpus[di]
        # a prefill candidate is dominated by another of no more GPUs and a higher usable rate
        keep = _undominated(g_p, r_p)
        pi, r_p, g_p = pi[keep], r_p[keep], g_p[keep]
        # every decode candidate gets its best prefill partner and whole-worker counts (xPyD)
        m = di.shape[0]
        ox, oy = np.zeros(m, np.int64), np.zeros(m, np.int64)
        orate, opre = np.zeros(m), np.zeros(m, np.int64)
        self.design_points += match_all(
            r_p,
            g_p,
            r_d,
            g_d,
            self.budget,
            self.budget_p,
            self.budget_d,
            self.rate,
            ox,
            oy,
            orate,
            opre,
        )
        self._check()
        ok = ox > 0
        if not ok.any():
            side.binding = (
                f"budget: no prefill and decode workers fit in {self.budget} GPUs together"
            )
            return side
        gpus_used = ox * g_p[np.maximum(opre, 0)] + oy * g_d
        tokens = np.where(ok, orate * self.osl / np.maximum(gpus_used, 1), np.nan)
        user = 1e3 / dec.latency_ms[di]

        def deployment(j: int) -> Deployment:
            # the exact balance of the pair, in per-GPU rates: alpha = R_gen / R_ctx
            k = int(opre[j])
            balanced = float((r_d[j] / g_d[j]) / (r_p[k] / g_p[k]))
            return self._disagg_deployment(
                pre, dec, int(pi[k]), int(di[j]), int(ox[j]), int(oy[j]), float(orate[j]), balanced
            )

        side.pareto = [deployment(int(j)) for j in pareto_front(user, tokens)]
        # recommendation: among decode candidates meeting TPOT
        meet = ok & (dec.latency_ms[di] <= self.tpot_target)
        if not meet.any():
            side.binding = f"TPOT: the fastest decode takes {self.best_decode_ms:.1f} ms"
            j = int(np.argmin(np.where(ok, dec.latency_ms[di], np.inf)))
            side.closest = deployment(j)
            side.closest_gap = float(dec.latency_ms[di][j] / self.tpot_target)
            return side
        side.best = deployment(_choose(orate, gpus_used, tokens, meet, self.rate))
        return side

    def _disagg_deployment(
        self,
        pre: PhaseArrays,
        dec: PhaseArrays,
        i: int,
        j: int,
        x: int,
        y: int,
        rate: float,
        balanced_ratio: float,
    ) -> Deployment:
        """The xPyD deployment of prefill candidate ``i`` and decode candidate ``j``."""
        g_p, g_d = float(pre.gpus[i]), float(dec.gpus[j])
        service = float(pre.batch[i] / pre.rate[i] * 1e3)
        gpus = int(x * g_p + y * g_d)
        rho = min(rate / (x * float(pre.rate[i])), MAX_UTILISATION)
        ttft = float(pre.latency_ms[i]) + wait_ms(rho, service, self.pct)
        tp, pp, dp = float(pre.tp[i]), float(pre.pp[i]), float(pre.dp[i])
        kv = egress_bytes_per_s(self.ctx.mv, self.ctx.hv, self.isl, tp, pp, dp, rate / x) / 1e9
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
            tpot_ms=float(dec.latency_ms[j]),
            tokens_per_s_per_gpu=rate * self.osl / gpus,
            tokens_per_s_per_user=1e3 / float(dec.latency_ms[j]),
            requests_per_s=rate,
            gpus=gpus,
            prefill_decode_gpu_ratio=x * g_p / (y * g_d),
            balanced_gpu_ratio=balanced_ratio,
            kv_transfer_gb_per_s_per_gpu=kv,
        )

    # -- aggregated ----------------------------------------------------------------------------
    def run_agg(self) -> _Side:
        side = _Side()
        c = self.ctx
        lay = layouts(
            self.model, c.gpu, self.budget, self.req.limits, allow_pp=False, full_ep_only=True
        )
        isl_cycle, osl_cycle = mix_cycle(self.req.traffic)
        # the engine's chunked-prefill budget, a small budget that interleaves more finely, and
        # no chunking (which MLA models favour: each chunk repeats the latent up-projection);
        # large MoE layout spaces keep only the engine's budget and no chunking
        chunks = (
            [c.engine.default_chunk_tokens, 0]
            if lay.shape[0] > 24
            else sorted({c.engine.default_chunk_tokens, 2048, 0})
        )
        chunk_arr = np.array(chunks, dtype=np.float64)
        conc = np.array(AGG_CONCURRENCY, dtype=np.float64)
        cols: list[np.ndarray] = []
        owner: list[np.ndarray] = []
        rows = np.zeros((chunk_arr.shape[0] * conc.shape[0], ROW_COLUMNS))
        for li in range(lay.shape[0]):
            tp, pp, ep, dp = (float(v) for v in lay[li])
            self._check()
            n = sweep_layout(
                c.mv,
                c.hv,
                c.cal.gemm,
                c.cal.attn_prefill,
                c.cal.attn_decode,
                tp,
                pp,
                ep,
                dp,
                chunk_arr,
                conc,
                isl_cycle,
                osl_cycle,
                self.req.prefix_hit,
                c.engine.max_batch,
                4.0 * self.req.slo.ttft_ms,
                self.pct,
                rows,
            )
            cols.append(rows[:n].copy())
            owner.append(np.full(n, li))
        pts = np.concatenate(cols) if cols else np.zeros((0, ROW_COLUMNS))
        who = np.concatenate(owner) if owner else np.zeros(0, np.int64)
        self.design_points += pts.shape[0]
        if pts.shape[0] == 0:
            side.binding = "memory: no aggregated layout fits the model and one request"
            return side
        self.any_fit = True
        g = lay[who, 0] * lay[who, 1] * lay[who, 3]
        workers = np.floor(self.budget / g)
        rps = pts[:, R_REQUESTS_PER_S]
        if self.rate > 0:
            workers = np.minimum(workers, np.maximum(1.0, np.ceil(self.rate / rps)))
        ttft, tpot = pts[:, R_TTFT], pts[:, R_TPOT]
        user = np.where(tpot > 0, 1e3 / np.maximum(tpot, 1e-12), 0.0)
        per_gpu = pts[:, R_TOKENS_PER_S] / g

        def deployment(i: int) -> Deployment:
            tp_, pp_, ep_, dp_ = (int(v) for v in lay[who[i]])
            chunk = int(pts[i, R_CHUNK])
            use = int(workers[i])
            pool = Pool(
                "agg",
                c.gpu.name,
                tp_,
                pp_,
                ep_,
                dp_,
                int(pts[i, R_USERS]),
                use,
                chunk if chunk > 0 else None,
            )
            return Deployment(
                mode="agg",
                pools=(pool,),
                ttft_ms=float(ttft[i]),
                tpot_ms=float(tpot[i]),
                tokens_per_s_per_gpu=float(per_gpu[i]),
                tokens_per_s_per_user=float(user[i]),
                requests_per_s=float(rps[i] * use),
                gpus=int(g[i]) * use,
            )

        ttft_ok = ttft <= self.req.slo.ttft_ms
        on_front = np.nonzero(ttft_ok)[0] if ttft_ok.any() else np.arange(pts.shape[0])
        front = pareto_front(user[on_front], per_gpu[on_front])
        side.pareto = [deployment(int(on_front[i])) for i in front]
        meets = ttft_ok & (tpot <= self.tpot_target)
        if meets.any():
            pick = _choose(rps * workers, g * workers, per_gpu, meets, self.rate)
            side.best = deployment(pick)
        else:
            gap = np.maximum(ttft / self.req.slo.ttft_ms, tpot / self.tpot_target)
            i = int(np.argmin(gap))
            side.closest, side.closest_gap = deployment(i), float(gap[i])
            which = "TTFT" if ttft[i] > self.req.slo.ttft_ms else "TPOT"
            side.binding = (
                f"{which}: the closest aggregated setup reaches TTFT {ttft[i]:.0f} ms, "
                f"TPOT {tpot[i]:.1f} ms"
            )
        return side

    def why_nothing(self, agg: _Side, disagg: _Side) -> tuple[str, Deployment | None]:
        if not self.any_fit:
            return (
                f"{self.model.name} fits on no layout within {self.budget} x {self.ctx.gpu.name} "
                f"at {self.req.precision.dtype}: its weights alone need "
                f"{self.model.total_params * self.ctx.hv[H_W_BYTES] / 1e9:.0f} GB"
            ), None
        parts = [
            f"{name}: {s.binding}" for name, s in (("agg", agg), ("disagg", disagg)) if s.binding
        ]
        closest = min(
            (s for s in (agg, disagg) if s.closest is not None),
            key=lambda s: s.closest_gap,
            default=None,
        )
        return (
            "no configuration meets the SLO; " + "; ".join(parts),
            closest.closest if closest else None,
        )


def _undominated(gpus: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Indices of candidates no other beats with at most as many GPUs and a higher rate."""
    order = np.lexsort((-rate, gpus))
    keep, best = [], -1.0
    for i in order:
        if rate[i] > best:
            keep.append(i)
            best = rate[i]
    return np.array(keep, dtype=np.int64)
