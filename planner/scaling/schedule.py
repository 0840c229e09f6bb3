"""``schedule``: an elastic scaling schedule for a traffic series, proved by replaying it.

1. Regimes: intervals whose mean ISL and mean OSL fall in the same octave share worker shapes.
   Each regime's shapes come from the search (``search.plan``) for the mix of its interval with
   the longest decode context, at the regime's peak rate, within the GPU limit (disaggregated
   serving). The search's layouts are kept; the decode batch becomes the largest whose TPOT
   meets the target at that context (the most requests/s per decode GPU the TPOT allows).
2. Counts: per interval, prefill workers ``ceil(rate / usable prompts/s per worker)`` and decode
   workers ``ceil(rate / requests/s per worker)`` (``capacity``), at least ``min_workers`` each.
   Above the GPU limit both pools shrink in proportion and the interval is a named violation.
3. Cooldown: a pool's count in an interval is the largest its demand reached in the last
   ``cooldown_s`` seconds (the intervals starting within the window), so it never scales down
   until the cooldown after its last peak has passed.
4. Events: a pool scaling up at interval ``j`` launches its new workers ``startup_s`` before the
   interval starts, so they serve when its load arrives; scale-downs stop the workers accepting at
   the interval's start and let them drain. A shape change between regimes launches the new
   shape's workers early in the same way and drains the old ones: that change needs a restart
   (a worker's layout and batch limit are fixed when its engine starts); a count change does not.
5. Proof: the series is replayed (``replay.simulate``, Poisson arrivals with a seed) through the
   schedule's workers, a static deployment sized for the peak and one sized for the mean rate.

GPU-hours count every worker from its launch (start-up time included) until it stops accepting,
within the series' horizon; the draining tail after that is not counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner import validate
from planner.catalog import GpuCatalog, ModelCatalog, default_gpus, default_models, load_engine
from planner.errors import InvalidInputError
from planner.perf.params import PerfContext
from planner.scaling.capacity import (
    Shape,
    decode_capacity,
    decode_context,
    decode_workers,
    largest_batch,
    prefill_capacity,
    prefill_wait_ms,
    prefill_workers,
)
from planner.scaling.replay import (
    ReplayResult,
    Span,
    draw_arrivals,
    simulate,
    static_spans,
)
from planner.scaling.traffic import Interval, TrafficSeries
from planner.search.recommend import plan
from planner.serving.kvtransfer import link_between_pools
from planner.serving.queueing import PERCENTILES
from planner.types import PlanRequest, Precision, SearchLimits, Slo, Workload


@dataclass(frozen=True)
class ScheduleRequest:
    """``pdplanner schedule``: plan worker counts and shapes over ``series``."""

    model: str
    gpu: str
    gpus: int  # the GPU limit, both pools together
    series: TrafficSeries
    slo: Slo
    decode_gpu: str | None = None
    startup_s: float = 300.0  # seconds from launching a worker until it serves
    cooldown_s: float = 900.0  # no scale-down until this long after the demand's last peak
    min_workers: int = 1  # per pool, in every interval
    price_per_gpu_hour: float | None = None
    precision: Precision = field(default_factory=Precision)
    engine: str = "vllm"
    simulate: bool = True  # replay the schedule and the static deployments
    seed: int = 0  # of the replay's arrivals
    # the traffic replayed, when it differs from what is planned for (a forecast's mean when
    # ``series`` is its upper quantile); None: ``series``
    replay_series: TrafficSeries | None = None


@dataclass(frozen=True)
class PoolCount:
    workers: int
    shape: Shape

    @property
    def gpus(self) -> int:
        return self.workers * self.shape.gpus_per_worker

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "gpus": self.gpus, "layout": self.shape.to_dict()}


@dataclass(frozen=True)
class IntervalPlan:
    start_s: float
    duration_s: float
    requests_per_s: float  # the rate planned for
    mean_isl: float
    mean_osl: float
    prefill: PoolCount
    decode: PoolCount
    predicted_ttft_ms: float  # at the SLO percentile
    predicted_tpot_ms: float
    prefill_utilisation: float
    decode_utilisation: float
    violation: str | None = None  # why this interval is predicted to miss the SLO
    simulated_slo_attainment: float | None = None

    @property
    def gpus(self) -> int:
        return self.prefill.gpus + self.decode.gpus

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "requests_per_s": self.requests_per_s,
            "mean_isl": self.mean_isl,
            "mean_osl": self.mean_osl,
            "mode": "disagg",
            "gpus": self.gpus,
            "prefill": self.prefill.to_dict(),
            "decode": self.decode.to_dict(),
            "prefill_decode_gpu_ratio": self.prefill.gpus / self.decode.gpus,
            "predicted_ttft_ms": _finite(self.predicted_ttft_ms),
            "predicted_tpot_ms": _finite(self.predicted_tpot_ms),
            "prefill_utilisation": self.prefill_utilisation,
            "decode_utilisation": self.decode_utilisation,
            "violation": self.violation,
            "simulated_slo_attainment": self.simulated_slo_attainment,
        }


@dataclass(frozen=True)
class ScalingEvent:
    """A change to a pool: issued at ``at_s``, effective (new workers serving, old ones no
    longer accepting) at ``effective_s``."""

    at_s: float
    effective_s: float
    pool: str  # "prefill" or "decode"
    action: str  # "scale_up", "scale_down" or "reconfigure"
    from_workers: int
    to_workers: int
    shape: Shape
    restart: bool  # the change starts engines with a new layout/batch limit
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_s": self.at_s,
            "effective_s": self.effective_s,
            "pool": self.pool,
            "action": self.action,
            "from_workers": self.from_workers,
            "to_workers": self.to_workers,
            "layout": self.shape.to_dict(),
            "restart": self.restart,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Violation:
    interval: int
    start_s: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"interval": self.interval, "start_s": self.start_s, "reason": self.reason}


@dataclass(frozen=True)
class StaticDeployment:
    prefill: PoolCount
    decode: PoolCount
    gpu_hours: float
    replay: ReplayResult | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefill": self.prefill.to_dict(),
            "decode": self.decode.to_dict(),
            "gpus": self.prefill.gpus + self.decode.gpus,
            "gpu_hours": self.gpu_hours,
            "simulation": self.replay.summary() if self.replay else None,
        }


@dataclass(frozen=True)
class ScheduleResult:
    intervals: tuple[IntervalPlan, ...]
    events: tuple[ScalingEvent, ...]
    violations: tuple[Violation, ...]
    gpu_hours: float
    peak_gpus_in_use: int  # launched workers' GPUs at the busiest moment (start-ups included)
    static_peak: StaticDeployment
    static_mean: StaticDeployment
    replay: ReplayResult | None
    price_per_gpu_hour: float | None
    prefill_spans: tuple[Span, ...] = field(repr=False, default=())
    decode_spans: tuple[Span, ...] = field(repr=False, default=())

    def totals(self) -> dict[str, Any]:
        price = self.price_per_gpu_hour

        def cost(hours: float) -> float | None:
            return hours * price if price is not None else None

        def att(r: ReplayResult | None) -> float | None:
            return r.attainment if r else None

        return {
            "gpu_hours": self.gpu_hours,
            "static_peak_gpu_hours": self.static_peak.gpu_hours,
            "static_mean_gpu_hours": self.static_mean.gpu_hours,
            "cost": cost(self.gpu_hours),
            "static_peak_cost": cost(self.static_peak.gpu_hours),
            "peak_gpus_in_use": self.peak_gpus_in_use,
            "slo_attainment": att(self.replay),
            "static_peak_slo_attainment": att(self.static_peak.replay),
            "static_mean_slo_attainment": att(self.static_mean.replay),
            "violations": [v.to_dict() for v in self.violations],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "intervals": [iv.to_dict() for iv in self.intervals],
            "events": [e.to_dict() for e in self.events],
            "totals": self.totals(),
            "simulation": self.replay.summary() if self.replay else None,
            "static_peak": self.static_peak.to_dict(),
            "static_mean": self.static_mean.to_dict(),
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def validate_request(req: ScheduleRequest) -> None:
    validate.integer(req.gpus, "gpus", 2, 1_000_000)
    validate.number(req.slo.ttft_ms, "slo.ttft_ms", 0.0, 1e9, lo_open=True)
    validate.number(req.slo.tpot_ms, "slo.tpot_ms", 0.0, 1e9, lo_open=True)
    if req.slo.percentile not in PERCENTILES:
        raise InvalidInputError(
            "slo.percentile", f"must be p50, p90 or p99, got {req.slo.percentile!r}"
        )
    validate.number(req.startup_s, "startup_s", 0.0, 86_400.0)
    validate.number(req.cooldown_s, "cooldown_s", 0.0, 86_400.0 * 7)
    validate.integer(req.min_workers, "min_workers", 1, 1_000_000)
    if req.price_per_gpu_hour is not None:
        validate.number(req.price_per_gpu_hour, "price_per_gpu_hour", 0.0, 1e6)
    if not req.series.intervals:
        raise InvalidInputError("trace", "the series is empty: give at least one interval")


def _octave(x: float) -> int:
    return round(math.log2(max(x, 1.0)))


def merge_mix(intervals: Sequence[Interval]) -> tuple[Workload, ...]:
    """The requests of several intervals as one mix (weights by their share of requests)."""
    count: dict[tuple[int, int], float] = defaultdict(float)
    for iv in intervals:
        n = max(iv.requests_per_s * iv.duration_s, 1e-9)
        for w in iv.mix:
            count[(w.isl, w.osl)] += n * w.weight
    total = sum(count.values())
    return tuple(Workload(i, o, c / total) for (i, o), c in count.items())


class _Planner:
    def __init__(self, req: ScheduleRequest, models: ModelCatalog, gpus: GpuCatalog) -> None:
        self.req = req
        self.models, self.gpus = models, gpus
        model = models.get(req.model, "model")
        gpu = gpus.get(req.gpu, "gpu")
        dgpu = gpus.get(req.decode_gpu, "decode_gpu") if req.decode_gpu else gpu
        engine = load_engine(req.engine, "engine")
        p = req.precision
        self.ctx = PerfContext.build(model, gpu, engine, p.dtype, p.kv_dtype)
        self.dctx = (
            self.ctx if dgpu is gpu else PerfContext.build(model, dgpu, engine, p.dtype, p.kv_dtype)
        )
        self.link = link_between_pools(gpu, dgpu, req.gpus)
        self._caps: dict[tuple[Shape, Shape, tuple[Workload, ...]], tuple[Any, Any]] = {}

    def shapes(self, intervals: Sequence[Interval]) -> tuple[Shape, Shape] | str:
        """Shapes for a regime, or why none meets the SLO."""
        req = self.req
        # the regime's longest decode context sets the decode batch the TPOT allows
        mix = max(intervals, key=lambda iv: decode_context(iv.mix)).mix
        peak = max(iv.requests_per_s for iv in intervals)
        base = PlanRequest(
            model=req.model,
            gpu=req.gpu,
            gpus=req.gpus,
            traffic=mix,
            slo=req.slo,
            decode_gpu=req.decode_gpu,
            precision=req.precision,
            engine=req.engine,
            limits=SearchLimits(modes=("disagg",)),
        )
        result = plan(
            PlanRequest(**{**base.__dict__, "rate_per_s": peak if peak > 0 else None}),
            self.models,
            self.gpus,
        )
        if result.best is None and peak > 0:  # the rate may be out of reach: take the fastest
            result = plan(base, self.models, self.gpus)
        if result.best is None:
            return result.reason or "no disaggregated deployment meets the SLO"
        pools = {p.role: p for p in result.best.pools}
        pre, dec = Shape.of(pools["prefill"]), Shape.of(pools["decode"])
        worst = max(decode_context(iv.mix) for iv in intervals)
        widest = Shape(**{**dec.__dict__, "batch": self.dctx.engine.max_batch})
        b = largest_batch(self.dctx, widest, worst, req.slo.tpot_ms)
        if b == 0:
            return (
                f"TPOT: no decode batch of {dec.label()} meets {req.slo.tpot_ms:g} ms at "
                f"context {worst:,.0f}"
            )
        return pre, Shape(**{**dec.__dict__, "batch": b})

    def still_serves(self, shapes: tuple[Shape, Shape], run: Sequence[Interval]) -> bool:
        """Whether these shapes meet the SLO for every mix of ``run`` (any count will do)."""
        pre, dec = shapes
        slo = self.req.slo
        for iv in run:
            pc = prefill_capacity(self.ctx, pre, iv.mix, slo.percentile, self.link)
            if not pc.compute_ttft_ms <= slo.ttft_ms:
                return False
        worst = max(decode_context(iv.mix) for iv in run)
        return largest_batch(self.dctx, dec, worst, slo.tpot_ms) == dec.batch

    def counts(
        self, iv: Interval, pre: Shape, dec: Shape
    ) -> tuple[int, int, float, float, float, float]:
        """Workers needed for ``iv`` and the per-worker capacities (prefill usable, prefill raw
        service ms, decode requests/s, compute TTFT)."""
        req = self.req
        key = (pre, dec, iv.mix)
        if key not in self._caps:
            self._caps[key] = (
                prefill_capacity(self.ctx, pre, iv.mix, req.slo.percentile, self.link),
                decode_capacity(self.dctx, dec, iv.mix),
            )
        pc, dc = self._caps[key]
        rate = iv.requests_per_s
        x = prefill_workers(rate, pc, pre.batch, req.slo.ttft_ms, PERCENTILES[req.slo.percentile])
        y = decode_workers(rate, dc, dec.batch, req.slo.percentile)
        return (
            max(x, req.min_workers),
            max(y, req.min_workers),
            pc.service_ms,
            dc.requests_per_s,
            pc.compute_ttft_ms,
            dc.tpot_ms,
        )


def _predict(
    rate: float,
    x: int,
    y: int,
    service_ms: float,
    compute_ms: float,
    batch: int,
    r_d: float,
    tpot_full: float,
    pct: float,
) -> tuple[float, float, float, float]:
    """Predicted TTFT at the percentile, TPOT, and each pool's utilisation."""
    r_p = batch / service_ms * 1e3 if service_ms > 0 and math.isfinite(service_ms) else 0.0
    rho_p = rate / (x * r_p) if r_p > 0 else math.inf
    rho_d = rate / (y * r_d) if r_d > 0 else math.inf
    ttft = compute_ms + prefill_wait_ms(rate, x, batch, service_ms, pct) if rho_p < 1 else math.inf
    tpot = tpot_full if rho_d <= 1 else math.inf
    return ttft, tpot, rho_p, rho_d


def _fit_limit(x: int, gx: int, y: int, gy: int, limit: int, floor: int) -> tuple[int, int]:
    """Shrink (x, y) in proportion until both pools fit in ``limit`` GPUs."""
    if x * gx + y * gy <= limit:
        return x, y
    f = limit / (x * gx + y * gy)
    nx, ny = max(floor, math.floor(x * f)), max(floor, math.floor(y * f))
    while nx * gx + ny * gy > limit and (nx > floor or ny > floor):
        if nx * gx >= ny * gy and nx > floor:
            nx -= 1
        elif ny > floor:
            ny -= 1
        else:
            nx -= 1
    # hand back what rounding left over, to the pool further below its need
    while True:
        grew = False
        for pool in sorted(("x", "y"), key=lambda p: (nx / x) if p == "x" else (ny / y)):
            if pool == "x" and nx < x and (nx + 1) * gx + ny * gy <= limit:
                nx, grew = nx + 1, True
                break
            if pool == "y" and ny < y and nx * gx + (ny + 1) * gy <= limit:
                ny, grew = ny + 1, True
                break
        if not grew:
            return nx, ny


def _windowed_max(starts: np.ndarray, need: np.ndarray, window_s: float) -> np.ndarray:
    out = need.copy()
    for j in range(need.size):
        lo = np.searchsorted(starts, starts[j] - window_s, side="right")
        lo = min(lo, j)
        out[j] = need[lo : j + 1].max()
    return out


def plan_schedule(
    req: ScheduleRequest, models: ModelCatalog | None = None, gpus: GpuCatalog | None = None
) -> ScheduleResult:
    """Plan the schedule for ``req``; raises ``InvalidInputError`` on bad input."""
    validate_request(req)
    pl = _Planner(req, models or default_models(), gpus or default_gpus())
    ivs = req.series.intervals
    n = len(ivs)
    pct = PERCENTILES[req.slo.percentile]
    # 1. regimes and their shapes: a run of intervals keeps the shapes in service while they
    # still meet the SLO for its mixes (a shape change is a restart), else takes its regime's
    keys = [(_octave(iv.mean_isl), _octave(iv.mean_osl)) for iv in ivs]
    members: dict[tuple[int, int], list[Interval]] = defaultdict(list)
    for k, iv in zip(keys, ivs, strict=True):
        members[k].append(iv)
    shapes: dict[tuple[int, int], tuple[Shape, Shape] | str] = {}
    regime_shape: list[tuple[Shape, Shape] | None] = []
    regime_issue: list[str | None] = []
    current: tuple[Shape, Shape] | None = None
    j0 = 0
    for j in range(1, n + 1):
        if j < n and keys[j] == keys[j0]:
            continue
        run = ivs[j0:j]
        issue = None
        if current is None or not pl.still_serves(current, run):
            if keys[j0] not in shapes:
                shapes[keys[j0]] = pl.shapes(members[keys[j0]])
            found = shapes[keys[j0]]
            if isinstance(found, str):
                issue = f"no deployment for this mix meets the SLO ({found})"
            else:
                current = found
        regime_shape.extend([current] * len(run))
        regime_issue.extend([issue] * len(run))
        j0 = j
    fallback = next((sh for sh in regime_shape if sh is not None), None)
    if fallback is None:
        first = next(iter(shapes.values()))
        raise InvalidInputError(
            "slo",
            f"no disaggregated deployment of {req.model} on {req.gpus} GPUs meets the SLO: {first}",
        )
    shape_of: list[tuple[Shape, Shape]] = [sh or fallback for sh in regime_shape]
    # 2. counts per interval
    starts = np.array([iv.start_s for iv in ivs])
    need_x, need_y = np.zeros(n, np.int64), np.zeros(n, np.int64)
    caps = []
    for j, iv in enumerate(ivs):
        x, y, service, r_d, compute, tpot = pl.counts(iv, *shape_of[j])
        need_x[j], need_y[j] = min(x, req.gpus), min(y, req.gpus)
        caps.append((service, r_d, compute, tpot))
    # 3. cooldown: hold the largest need of the window (within one shape)
    hold_x, hold_y = need_x.copy(), need_y.copy()
    j0 = 0
    for j in range(1, n + 1):
        if j == n or shape_of[j] != shape_of[j0]:
            hold_x[j0:j] = _windowed_max(starts[j0:j], need_x[j0:j], req.cooldown_s)
            hold_y[j0:j] = _windowed_max(starts[j0:j], need_y[j0:j], req.cooldown_s)
            j0 = j
    # 4. the GPU limit, predictions, violations
    plans: list[IntervalPlan] = []
    violations: list[Violation] = []
    for j, iv in enumerate(ivs):
        pre, dec = shape_of[j]
        gx, gy = pre.gpus_per_worker, dec.gpus_per_worker
        x, y = _fit_limit(int(hold_x[j]), gx, int(hold_y[j]), gy, req.gpus, req.min_workers)
        if x * gx + y * gy > req.gpus:  # even the minimum does not fit
            x, y = _fit_limit(int(hold_x[j]), gx, int(hold_y[j]), gy, req.gpus, 1)
        service, r_d, compute, tpot_full = caps[j]
        ttft, tpot, rho_p, rho_d = _predict(
            iv.requests_per_s, x, y, service, compute, pre.batch, r_d, tpot_full, pct
        )
        why = regime_issue[j]
        need_gpus = int(need_x[j]) * gx + int(need_y[j]) * gy
        if why is None and (x < need_x[j] or y < need_y[j]):
            why = (
                f"demand {iv.requests_per_s:.3g} req/s needs {need_gpus} GPUs "
                f"({need_x[j]} prefill x {gx} + {need_y[j]} decode x {gy}); the limit is "
                f"{req.gpus}"
            )
        if why is None and (ttft > req.slo.ttft_ms * (1 + 1e-9) or tpot > req.slo.tpot_ms):
            why = f"predicted TTFT {ttft:.0f} ms / TPOT {tpot:.1f} ms miss the SLO"
        if why:
            violations.append(Violation(j, iv.start_s, why))
        plans.append(
            IntervalPlan(
                iv.start_s,
                iv.duration_s,
                iv.requests_per_s,
                iv.mean_isl,
                iv.mean_osl,
                PoolCount(x, pre),
                PoolCount(y, dec),
                ttft,
                tpot,
                rho_p,
                rho_d,
                why,
            )
        )
    # 5. events and worker spans
    events: list[ScalingEvent] = []
    spans: dict[str, list[Span]] = {}
    for role in ("prefill", "decode"):
        counts = [getattr(p, role) for p in plans]
        ev, sp = _pool_timeline(role, counts, ivs, req.startup_s)
        events.extend(ev)
        spans[role] = sp
    events.sort(key=lambda e: (e.at_s, e.pool))
    end = req.series.end_s
    begin = req.series.start_s
    all_spans = spans["prefill"] + spans["decode"]
    gpu_hours = (
        sum(
            s.shape.gpus_per_worker * max(0.0, min(s.off_s, end) - max(s.launch_s, begin))
            for s in all_spans
        )
        / 3600.0
    )
    peak_in_use = _peak_in_use(all_spans)
    # 6. static deployments: the peak's shapes, sized for the peak and for the mean
    j_peak = int(np.argmax([iv.requests_per_s for iv in ivs]))
    sp_pre, sp_dec = shape_of[j_peak]
    peak_counts = [pl.counts(iv, sp_pre, sp_dec)[:2] for iv in ivs]
    px, py = max(c[0] for c in peak_counts), max(c[1] for c in peak_counts)
    px, py = _fit_limit(px, sp_pre.gpus_per_worker, py, sp_dec.gpus_per_worker, req.gpus, 1)
    horizon_h = (end - begin) / 3600.0
    total_requests = sum(iv.requests_per_s * iv.duration_s for iv in ivs)
    mean_iv = Interval(begin, end - begin, total_requests / (end - begin), merge_mix(ivs))
    mx, my = pl.counts(mean_iv, sp_pre, sp_dec)[:2]
    mx, my = _fit_limit(mx, sp_pre.gpus_per_worker, my, sp_dec.gpus_per_worker, req.gpus, 1)
    replay = peak_replay = mean_replay = None
    if req.simulate:
        arrivals = draw_arrivals(req.replay_series or req.series, req.seed)

        def replay_of(p: Sequence[Span], d: Sequence[Span]) -> ReplayResult:
            return simulate(
                p, d, arrivals, pl.ctx, pl.dctx, pl.link, req.slo.ttft_ms, req.slo.tpot_ms
            )

        replay = replay_of(spans["prefill"], spans["decode"])
        peak_replay = replay_of(*static_spans(sp_pre, px, sp_dec, py))
        mean_replay = replay_of(*static_spans(sp_pre, mx, sp_dec, my))
        by_iv = replay.attainment_by_interval(n)
        plans = [
            IntervalPlan(**{**p.__dict__, "simulated_slo_attainment": _finite_or_none(a)})
            for p, a in zip(plans, by_iv, strict=True)
        ]

    def static(x: int, y: int, r: ReplayResult | None) -> StaticDeployment:
        g = x * sp_pre.gpus_per_worker + y * sp_dec.gpus_per_worker
        return StaticDeployment(PoolCount(x, sp_pre), PoolCount(y, sp_dec), g * horizon_h, r)

    return ScheduleResult(
        tuple(plans),
        tuple(events),
        tuple(violations),
        gpu_hours,
        peak_in_use,
        static(px, py, peak_replay),
        static(mx, my, mean_replay),
        replay,
        req.price_per_gpu_hour,
        tuple(spans["prefill"]),
        tuple(spans["decode"]),
    )


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _pool_timeline(
    role: str, counts: Sequence[PoolCount], ivs: Sequence[Interval], startup_s: float
) -> tuple[list[ScalingEvent], list[Span]]:
    """Events and worker spans of one pool from its per-interval counts."""
    events: list[ScalingEvent] = []
    done: list[Span] = []
    live: list[tuple[float, float]] = []  # (launch, on) of workers accepting now
    shape = counts[0].shape
    for j, (pc, iv) in enumerate(zip(counts, ivs, strict=True)):
        t = iv.start_s
        launch = t - startup_s
        if j == 0:
            live = [(launch, t)] * pc.workers
            events.append(
                ScalingEvent(
                    launch, t, role, "scale_up", 0, pc.workers, pc.shape, True, "initial deployment"
                )
            )
            shape = pc.shape
            continue
        if pc.shape != shape:
            done.extend(Span(shape, a, b, t) for a, b in live)
            events.append(
                ScalingEvent(
                    launch,
                    t,
                    role,
                    "reconfigure",
                    len(live),
                    pc.workers,
                    pc.shape,
                    True,
                    f"the traffic mix changed (mean ISL {iv.mean_isl:,.0f}, OSL "
                    f"{iv.mean_osl:,.0f}): new layout {pc.shape.label()} replaces "
                    f"{shape.label()}; the old workers drain",
                )
            )
            live = [(launch, t)] * pc.workers
            shape = pc.shape
            continue
        if pc.workers > len(live):
            events.append(
                ScalingEvent(
                    launch,
                    t,
                    role,
                    "scale_up",
                    len(live),
                    pc.workers,
                    shape,
                    False,
                    f"{iv.requests_per_s:.3g} req/s from {t:g} s",
                )
            )
            live.extend([(launch, t)] * (pc.workers - len(live)))
        elif pc.workers < len(live):
            events.append(
                ScalingEvent(
                    t,
                    t,
                    role,
                    "scale_down",
                    len(live),
                    pc.workers,
                    shape,
                    False,
                    f"{iv.requests_per_s:.3g} req/s from {t:g} s; the stopped workers drain",
                )
            )
            for a, b in live[pc.workers :]:
                done.append(Span(shape, a, b, t))
            live = live[: pc.workers]
    done.extend(Span(shape, a, b, math.inf) for a, b in live)
    return events, done


def _peak_in_use(spans: Sequence[Span]) -> int:
    edges = sorted(
        [(s.launch_s, s.shape.gpus_per_worker) for s in spans]
        + [(s.off_s, -s.shape.gpus_per_worker) for s in spans if math.isfinite(s.off_s)],
        key=lambda e: (e[0], e[1]),
    )
    now = peak = 0
    for _, g in edges:
        now += g
        peak = max(peak, now)
    return peak


def shape_from_dict(role: str, layout: dict[str, Any]) -> Shape:
    """A worker shape from its JSON (``Shape.to_dict``)."""
    return Shape(
        role,
        str(layout["gpu"]),
        int(layout.get("tp", 1)),
        int(layout.get("pp", 1)),
        int(layout.get("ep", 1)),
        int(layout.get("attention_dp", 1)),
        int(layout["batch"]),
    )


def spans_of_intervals(
    intervals: Sequence[dict[str, Any]], series: TrafficSeries, startup_s: float
) -> tuple[list[Span], list[Span]]:
    """The worker spans of a schedule's intervals (its JSON), laid on ``series``' intervals
    (matched by position: the schedule's interval k serves the series' interval k)."""
    if len(intervals) != len(series.intervals):
        raise InvalidInputError(
            "trace",
            f"the schedule has {len(intervals)} intervals, the trace {len(series.intervals)}",
        )
    out = []
    for role in ("prefill", "decode"):
        counts = [
            PoolCount(int(iv[role]["workers"]), shape_from_dict(role, iv[role]["layout"]))
            for iv in intervals
        ]
        out.append(_pool_timeline(role, counts, series.intervals, startup_s)[1])
    return out[0], out[1]


def simulate_spans(
    req: ScheduleRequest,
    prefill: Sequence[Span],
    decode: Sequence[Span],
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
) -> ReplayResult:
    """Replay ``req.series`` (or ``req.replay_series``) through these workers."""
    validate_request(req)
    if not prefill or not decode:
        raise InvalidInputError("workers", "the deployment needs prefill and decode workers")
    pl = _Planner(req, models or default_models(), gpus or default_gpus())
    arrivals = draw_arrivals(req.replay_series or req.series, req.seed)
    return simulate(
        prefill, decode, arrivals, pl.ctx, pl.dctx, pl.link, req.slo.ttft_ms, req.slo.tpot_ms
    )
