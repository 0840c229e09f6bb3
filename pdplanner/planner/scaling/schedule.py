"""``schedule``: an elastic scaling schedule for a traffic series, proved by replaying it.

1. Regimes: intervals whose mean ISL and mean OSL fall in the same octave share worker shapes.
   Each regime's shapes come from the search (``search.plan``) for the mix of its interval with
   the longest decode context, at the regime's peak rate, within the GPU limit: disaggregated
   shapes (per pool, of the layouts of the search's recommendation and its Pareto frontier, the
   one needing the fewest GPU-seconds over the regime's intervals by the counts of step 2; the
   decode batch becomes the largest whose TPOT meets the target at that context, the most
   requests/s per decode GPU the TPOT allows) and the best aggregated shape (the search's
   layout, concurrency and chunked-prefill budget; ``AggOption`` says how its rate is found).
   A run of intervals keeps the shapes in service while they still meet the SLO for its mixes
   and need fewer GPU-seconds than its regime's own shapes plus their start-up (a shape change
   is a restart).
2. Counts: per interval, prefill workers ``ceil(rate / usable prompts/s per worker)`` and decode
   workers ``ceil(rate / requests/s per worker)`` (``capacity``), or aggregated workers
   ``ceil(rate / requests/s per worker)``; at least ``min_workers`` per pool in use.
3. Mode: each interval is served aggregated or disaggregated, whichever costs fewer GPU-hours over
   the series: a shortest path over the intervals (two states) whose step costs an interval's
   GPUs times its length, plus, at a switch, the new workers' start-up time (they run beside
   the old ones). A mode that cannot meet the SLO, or needs more than the GPU limit, costs more
   than any that can. Ties keep disaggregated serving.
4. Cooldown: a pool's count in an interval is the largest its demand reached in the last
   ``cooldown_s`` seconds (the intervals starting within the window, same mode and shapes), so it
   never scales down until the cooldown after its last peak has passed.
5. The GPU limit: above it the pools shrink (in proportion) and the interval is a named
   violation.
6. Events: a pool scaling up at interval ``j`` launches its new workers ``startup_s`` before the
   interval starts, so they serve when its load arrives; scale-downs stop the workers accepting at
   the interval's start and let them drain. A shape or mode change launches the new workers early
   in the same way and drains the old ones: that change needs a restart (a worker's layout and
   batch limit are fixed when its engine starts); a count change does not.
7. Proof: the series is replayed (``replay.simulate``: the serving layer's engine loop, Poisson
   arrivals with a seed) through the schedule's workers, a static deployment sized for the peak
   and one sized for the mean rate.

GPU-hours count every worker from its launch (start-up time included) until it has drained (the
replay says when its last request left; without a replay, until it stops accepting), within the
series' horizon. Where workers starting up, serving and draining together hold more GPUs than
the limit (a shape or mode change whose old and new workers overlap), the moment is a named
violation of its interval.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdplanner.planner import validate
from pdplanner.planner.catalog import (
    GpuCatalog,
    ModelCatalog,
    default_gpus,
    default_models,
    load_engine,
)
from pdplanner.planner.errors import InvalidInputError, SearchCancelled
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.scaling.capacity import (
    NO_WORKER_COUNT,
    DecodeCapacity,
    PrefillCapacity,
    Shape,
    decode_capacity,
    decode_context,
    decode_workers,
    largest_batch,
    prefill_capacity,
    prefill_ttft_ms,
    prefill_workers,
)
from pdplanner.planner.scaling.replay import (
    Arrivals,
    ReplayResult,
    Span,
    check_replay_size,
    check_replay_work,
    draw_arrivals,
    replay_ranks,
    simulate,
    static_spans,
)
from pdplanner.planner.scaling.traffic import Interval, TrafficSeries
from pdplanner.planner.search.recommend import plan
from pdplanner.planner.serving.elastic import with_chunk
from pdplanner.planner.serving.kvtransfer import link_between_pools
from pdplanner.planner.serving.mix import mix_cycle
from pdplanner.planner.serving.queueing import PERCENTILES
from pdplanner.planner.serving.scheduler import memory_fraction_for, scheduler_for
from pdplanner.planner.serving.simulate import REQUEST_OVERHEAD_MS, Poisson, simulate_agg
from pdplanner.planner.serving.workers import decode_worker, prefill_worker
from pdplanner.planner.types import Mode, PlanRequest, Precision, SearchLimits, Slo, Workload


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
    # the engine's memory fraction (as in ``PlanRequest``); None: the engine's default
    memory_fraction: float | None = None
    # engine scheduler overrides (``pdplanner.planner.serving.scheduler``), as in ``PlanRequest``
    engine_args: tuple[tuple[str, int | float | bool | str], ...] = ()
    modes: tuple[Mode, ...] = ("agg", "disagg")  # the serving modes intervals may use


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
    """One interval: disaggregated (``prefill`` and ``decode`` pools) or aggregated (``agg``)."""

    start_s: float
    duration_s: float
    requests_per_s: float  # the rate planned for
    mean_isl: float
    mean_osl: float
    prefill: PoolCount | None
    decode: PoolCount | None
    predicted_ttft_ms: float  # at the SLO percentile
    predicted_tpot_ms: float
    prefill_utilisation: float
    decode_utilisation: float
    violation: str | None = None  # why this interval is predicted to miss the SLO
    simulated_slo_attainment: float | None = None
    agg: PoolCount | None = None
    agg_utilisation: float = 0.0
    # the other mode's GPUs for this interval (None: it cannot meet the SLO), and why this one
    alternative_gpus: int | None = None
    mode_reason: str = ""

    @property
    def mode(self) -> Mode:
        return "agg" if self.agg is not None else "disagg"

    @property
    def pools(self) -> tuple[PoolCount, ...]:
        return tuple(p for p in (self.prefill, self.decode, self.agg) if p is not None)

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    def to_dict(self) -> dict[str, Any]:
        ratio = (
            self.prefill.gpus / self.decode.gpus
            if self.prefill is not None and self.decode is not None
            else 0.0
        )
        return {
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "requests_per_s": self.requests_per_s,
            "mean_isl": self.mean_isl,
            "mean_osl": self.mean_osl,
            "mode": self.mode,
            "gpus": self.gpus,
            "prefill": self.prefill.to_dict() if self.prefill else None,
            "decode": self.decode.to_dict() if self.decode else None,
            "agg": self.agg.to_dict() if self.agg else None,
            "prefill_decode_gpu_ratio": ratio,
            "predicted_ttft_ms": _finite(self.predicted_ttft_ms),
            "predicted_tpot_ms": _finite(self.predicted_tpot_ms),
            "prefill_utilisation": self.prefill_utilisation,
            "decode_utilisation": self.decode_utilisation,
            "agg_utilisation": self.agg_utilisation,
            "alternative_gpus": self.alternative_gpus,
            "mode_reason": self.mode_reason,
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
    """A fixed deployment over the whole series: prefill and decode pools, or one agg pool."""

    prefill: PoolCount | None
    decode: PoolCount | None
    gpu_hours: float
    replay: ReplayResult | None
    agg: PoolCount | None = None

    @property
    def pools(self) -> tuple[PoolCount, ...]:
        return tuple(p for p in (self.prefill, self.decode, self.agg) if p is not None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefill": self.prefill.to_dict() if self.prefill else None,
            "decode": self.decode.to_dict() if self.decode else None,
            "agg": self.agg.to_dict() if self.agg else None,
            "gpus": sum(p.gpus for p in self.pools),
            "gpu_hours": self.gpu_hours,
            "simulation": self.replay.summary() if self.replay else None,
        }


@dataclass(frozen=True)
class ScheduleResult:
    intervals: tuple[IntervalPlan, ...]
    events: tuple[ScalingEvent, ...]
    violations: tuple[Violation, ...]
    gpu_hours: float
    peak_gpus_in_use: int  # workers' GPUs at the busiest moment (start-ups and drains included)
    static_peak: StaticDeployment
    static_mean: StaticDeployment
    replay: ReplayResult | None
    price_per_gpu_hour: float | None
    spans: tuple[Span, ...] = field(repr=False, default=())
    draining_gpu_hours: float = 0.0  # of gpu_hours, workers draining after they stopped accepting

    def spans_of(self, role: str) -> tuple[Span, ...]:
        return tuple(s for s in self.spans if s.shape.role == role)

    def totals(self) -> dict[str, Any]:
        price = self.price_per_gpu_hour

        def cost(hours: float) -> float | None:
            return hours * price if price is not None else None

        def att(r: ReplayResult | None) -> float | None:
            return r.attainment if r else None

        return {
            "gpu_hours": self.gpu_hours,
            "draining_gpu_hours": self.draining_gpu_hours,
            "static_peak_gpu_hours": self.static_peak.gpu_hours,
            "static_mean_gpu_hours": self.static_mean.gpu_hours,
            "cost": cost(self.gpu_hours),
            "static_peak_cost": cost(self.static_peak.gpu_hours),
            "peak_gpus_in_use": self.peak_gpus_in_use,
            "slo_attainment": att(self.replay),
            "static_peak_slo_attainment": att(self.static_peak.replay),
            "static_mean_slo_attainment": att(self.static_mean.replay),
            "agg_intervals": sum(1 for iv in self.intervals if iv.mode == "agg"),
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
    """Range checks of a schedule request; every violation is reported at once. A request that
    replays (``simulate``) must expect at most ``replay.MAX_REPLAY_REQUESTS`` requests: over it,
    the interval of ``series`` where the count passes the limit is named
    (``series.intervals[k]``), or ``forecast.horizon`` when ``replay_series`` (a forecast's
    mean) is what is replayed."""
    v = validate.Violations()
    with v.check():
        validate.integer(req.gpus, "gpus", 2, 1_000_000)
    with v.check():
        validate.number(req.slo.ttft_ms, "slo.ttft_ms", 0.0, 1e9, lo_open=True)
    with v.check():
        validate.number(req.slo.tpot_ms, "slo.tpot_ms", 0.0, 1e9, lo_open=True)
    if req.slo.percentile not in PERCENTILES:
        v.add("slo.percentile", f"must be p50, p90 or p99, got {req.slo.percentile!r}")
    with v.check():
        validate.number(req.startup_s, "startup_s", 0.0, 86_400.0)
    with v.check():
        validate.number(req.cooldown_s, "cooldown_s", 0.0, 86_400.0 * 7)
    with v.check():
        validate.integer(req.min_workers, "min_workers", 1, 1_000_000)
    with v.check():  # NumPy's generators take no negative seed
        validate.integer(req.seed, "seed", 0, 2**63 - 1)
    if req.price_per_gpu_hour is not None:
        with v.check():
            validate.number(req.price_per_gpu_hour, "price_per_gpu_hour", 0.0, 1e6)
    if not req.series.intervals:
        v.add("trace", "the series is empty: give at least one interval")
    if req.simulate:  # refused before any request is drawn (replay.MAX_REPLAY_REQUESTS)
        with v.check():
            if req.replay_series is None:
                check_replay_size(req.series)
            else:  # a forecast's mean: its length is the horizon asked for
                check_replay_size(req.replay_series, "forecast.horizon", "forecast fewer intervals")
    if not req.modes or any(m not in ("agg", "disagg") for m in req.modes):
        v.add("modes", f"must name agg and/or disagg, got {list(req.modes)}")
    if req.memory_fraction is not None:
        with v.check():
            validate.number(req.memory_fraction, "memory_fraction", 0.0, 1.0, lo_open=True)
    v.raise_any()


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


@dataclass(frozen=True)
class AggOption:
    """A regime's aggregated workers: the search's layout and concurrency (``shape.batch``), and
    the most requests/s one of them serves at the SLO under Poisson arrivals in the engine loop
    (``simulate.simulate_agg``, as the replay runs it), with its TTFT and TPOT there."""

    shape: Shape
    requests_per_s: float  # per worker at the SLO
    ttft_ms: float  # at the SLO percentile, at that rate
    tpot_ms: float


# Poisson requests per simulation when an aggregated worker's rate at the SLO is sought, and
# the bisection's steps (the rate to within 2**-AGG_RATE_STEPS of the search's)
AGG_RATE_REQUESTS = 2000
AGG_RATE_STEPS = 8


# what a schedule too large to replay is told (``replay.MAX_REPLAY_WORK``)
_REPLAY_ADVICE = "plan without the replay (simulate false), or shorten the series"


class _Planner:
    def __init__(
        self,
        req: ScheduleRequest,
        models: ModelCatalog,
        gpus: GpuCatalog,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.req = req
        self.models, self.gpus = models, gpus
        self.should_stop = should_stop
        model = models.get(req.model, "model")
        # every class of every interval must fit the model's context (the first that does not)
        for series in (req.series, req.replay_series):
            for i, iv in enumerate(series.intervals if series is not None else ()):
                for k, w in enumerate(iv.mix):
                    validate.within_context(model, w.isl, w.osl, f"series.intervals[{i}].mix[{k}].")
        gpu = gpus.get(req.gpu, "gpu")
        dgpu = gpus.get(req.decode_gpu, "decode_gpu") if req.decode_gpu else gpu
        engine = load_engine(req.engine, "engine")
        args = _engine_args(req)
        fraction = memory_fraction_for(engine, args, req.memory_fraction)
        self.sched = scheduler_for(engine, args)
        p = req.precision
        # decode batches past the scheduler's largest CUDA graph are priced as eager steps
        limit = self.sched.cuda_graph_max_bs
        self.ctx = PerfContext.build(model, gpu, engine, p.dtype, p.kv_dtype, fraction)
        self.ctx = self.ctx.with_graph_limit(limit)
        self.dctx = (
            self.ctx
            if dgpu is gpu
            else PerfContext.build(
                model, dgpu, engine, p.dtype, p.kv_dtype, fraction
            ).with_graph_limit(limit)
        )
        self.link = link_between_pools(gpu, dgpu, req.gpus)
        self._pcaps: dict[tuple[Shape, tuple[Workload, ...]], PrefillCapacity] = {}
        self._dcaps: dict[tuple[Shape, tuple[Workload, ...]], DecodeCapacity] = {}

    def _search(self, intervals: Sequence[Interval], mode: Mode) -> Any:
        """``search.plan`` of one mode for the regime's longest-context mix at its peak rate
        (the fastest deployment when the rate is out of reach)."""
        req = self.req
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
            limits=SearchLimits(modes=(mode,)),
            memory_fraction=req.memory_fraction,
            engine_args=req.engine_args,
        )
        result = plan(
            dataclasses.replace(base, rate_per_s=peak if peak > 0 else None),
            self.models,
            self.gpus,
            self.should_stop,
        )
        if result.best is None and peak > 0:  # the rate may be out of reach: take the fastest
            result = plan(base, self.models, self.gpus, self.should_stop)
        return result

    def replay(
        self,
        spans: Sequence[Span],
        arrivals: Arrivals,
        field: str = "simulate",
        advice: str = _REPLAY_ADVICE,
    ) -> ReplayResult:
        """The engine-loop replay of ``spans`` against ``arrivals`` (``replay.simulate``) under
        this request's model, GPUs, scheduler, link and SLO; one too large to run is refused on
        ``field`` with ``advice`` (``replay.MAX_REPLAY_WORK``)."""
        return simulate(
            spans,
            arrivals,
            self.ctx,
            self.dctx,
            self.sched,
            self.link,
            self.req.slo.ttft_ms,
            self.req.slo.tpot_ms,
            field,
            advice,
        )

    def check(self) -> None:
        """Raise ``SearchCancelled`` once the caller has asked to stop (deadline, client gone)."""
        if self.should_stop is not None and self.should_stop():
            raise SearchCancelled("the call ended while its schedule was being planned")

    def shapes(self, intervals: Sequence[Interval]) -> tuple[Shape, Shape] | str:
        """Disaggregated shapes for a regime, or why none meets the SLO.

        The candidates are the layouts of the search's recommended deployment and of its
        disaggregated Pareto frontier; the search ranks them by its own load model at one mix
        and rate, so the schedule picks, per pool, the candidate that needs the fewest
        GPU-seconds over the regime's intervals by the capacity model that counts the workers
        (ties keep the search's order, the recommended deployment first)."""
        req = self.req
        result = self._search(intervals, "disagg")
        if result.best is None:
            return result.reason or "no disaggregated deployment meets the SLO"
        pres: list[Shape] = []
        decs: list[Shape] = []
        for d in (result.best, *result.pareto_disagg):
            for p in d.pools:
                sh = Shape.of(p)
                into = pres if p.role == "prefill" else decs
                if sh not in into:
                    into.append(sh)
        worst = max(decode_context(iv.mix) for iv in intervals)
        widened = []
        for dec in decs:
            widest = Shape(**{**dec.__dict__, "batch": self.dctx.engine.max_batch})
            b = largest_batch(self.dctx, widest, worst, req.slo.tpot_ms)
            if b > 0:
                widened.append(Shape(**{**dec.__dict__, "batch": b}))
        if not widened:
            best_dec = Shape.of(next(p for p in result.best.pools if p.role == "decode"))
            return (
                f"TPOT: no decode batch of {best_dec.label()} meets {req.slo.tpot_ms:g} ms at "
                f"context {worst:,.0f}"
            )
        pre = min(pres, key=lambda sh: self._pool_seconds(sh, intervals))
        dec = min(widened, key=lambda sh: self._pool_seconds(sh, intervals))
        return pre, dec

    def _pool_seconds(self, shape: Shape, intervals: Sequence[Interval]) -> float:
        """GPU-seconds of one pool of ``shape`` workers serving ``intervals`` (inf where a
        worker of it cannot meet the SLO)."""
        req = self.req
        p = PERCENTILES[req.slo.percentile]
        total = 0.0
        for iv in intervals:
            if shape.role == "prefill":
                pc = self._prefill_cap(shape, iv.mix)
                k = prefill_workers(iv.requests_per_s, pc, req.slo.ttft_ms, p)
            else:
                dc = self._decode_cap(shape, iv.mix)
                k = decode_workers(iv.requests_per_s, dc, shape.batch, req.slo.percentile)
            if k >= NO_WORKER_COUNT:
                return math.inf
            total += max(k, req.min_workers) * shape.gpus_per_worker * iv.duration_s
        return total

    def _prefill_cap(self, shape: Shape, mix: tuple[Workload, ...]) -> PrefillCapacity:
        key = (shape, mix)
        if key not in self._pcaps:
            self._pcaps[key] = prefill_capacity(
                self.ctx, shape, mix, self.req.slo.percentile, self.link
            )
        return self._pcaps[key]

    def _decode_cap(self, shape: Shape, mix: tuple[Workload, ...]) -> DecodeCapacity:
        key = (shape, mix)
        if key not in self._dcaps:
            self._dcaps[key] = decode_capacity(self.dctx, shape, mix)
        return self._dcaps[key]

    def agg_option(self, intervals: Sequence[Interval]) -> AggOption | str:
        """The aggregated option for a regime, or why none meets the SLO. The search picks the
        layout and concurrency; the rate one worker serves at the SLO comes from the engine
        loop under Poisson arrivals (bisection up to 1.5 x the search's per-worker rate), the
        load model the replay applies."""
        result = self._search(intervals, "agg")
        best = result.best
        if best is None:
            return result.reason or "no aggregated deployment meets the SLO"
        pool = best.pools[0]
        shape = Shape.of(pool)
        mix = max(intervals, key=lambda iv: decode_context(iv.mix)).mix
        isl, osl = mix_cycle(mix)
        # the searched chunked-prefill budget, as the replay's workers run it
        sched = dataclasses.replace(
            with_chunk(self.sched, shape.chunk_tokens),
            max_num_seqs=max(1, math.ceil(shape.batch / shape.attention_dp)),
        )
        pct = self.req.slo.percentile
        ctx = self.ctx if pool.gpu == self.ctx.gpu.name else self.dctx

        def run(rate: float) -> tuple[bool, float, float]:
            r = simulate_agg(
                ctx,
                shape.parallelism,
                sched,
                Poisson(rate, AGG_RATE_REQUESTS, self.req.seed),
                isl,
                osl,
                request_overhead_ms=REQUEST_OVERHEAD_MS["agg"],
            )
            ttft, tpot = getattr(r.ttft_ms, pct), getattr(r.tpot_ms, pct)
            return (
                r.ok and ttft <= self.req.slo.ttft_ms and tpot <= self.req.slo.tpot_ms,
                ttft,
                tpot,
            )

        lo, hi = 0.0, 1.5 * best.requests_per_s / pool.workers
        at = (math.inf, math.inf)
        for _ in range(AGG_RATE_STEPS):
            mid = 0.5 * (lo + hi)
            ok, ttft, tpot = run(mid)
            if ok:
                lo, at = mid, (ttft, tpot)
            else:
                hi = mid
        if lo <= 0.0:
            return (
                f"{shape.label()} misses the SLO under Poisson arrivals at any rate above "
                f"{hi:.3g} req/s"
            )
        return AggOption(dataclasses.replace(shape, role="agg"), lo, *at)

    def still_serves(self, shapes: tuple[Shape, Shape], run: Sequence[Interval]) -> bool:
        """Whether these shapes meet the SLO for every mix of ``run`` (any count will do)."""
        pre, dec = shapes
        slo = self.req.slo
        for iv in run:
            pc = self._prefill_cap(pre, iv.mix)
            if not pc.compute_ttft_ms <= slo.ttft_ms:
                return False
        worst = max(decode_context(iv.mix) for iv in run)
        return largest_batch(self.dctx, dec, worst, slo.tpot_ms) == dec.batch

    def run_cost(
        self, shapes: tuple[Shape, Shape] | None, run: Sequence[Interval], first: bool = False
    ) -> float:
        """GPU-seconds of ``run`` served by ``shapes`` (with ``first``, plus the start-up of
        the first interval's workers: what a change of shapes costs)."""
        if shapes is None:
            return math.inf
        pre, dec = shapes
        total = 0.0
        for k, iv in enumerate(run):
            x, y = self.counts(iv, pre, dec)[:2]
            g = x * pre.gpus_per_worker + y * dec.gpus_per_worker
            total += g * iv.duration_s + (g * self.req.startup_s if first and k == 0 else 0.0)
        return total

    def counts(
        self, iv: Interval, pre: Shape, dec: Shape
    ) -> tuple[int, int, PrefillCapacity, DecodeCapacity]:
        """Workers needed for ``iv`` and the per-worker capacities."""
        req = self.req
        pc, dc = self._prefill_cap(pre, iv.mix), self._decode_cap(dec, iv.mix)
        rate = iv.requests_per_s
        x = prefill_workers(rate, pc, req.slo.ttft_ms, PERCENTILES[req.slo.percentile])
        y = decode_workers(rate, dc, dec.batch, req.slo.percentile)
        return max(x, req.min_workers), max(y, req.min_workers), pc, dc

    def agg_count(self, iv: Interval, opt: AggOption) -> int:
        """Aggregated workers needed for ``iv``: each carries at most the search's rate."""
        rate = iv.requests_per_s
        z = math.ceil(rate / opt.requests_per_s - 1e-9) if rate > 0 else 0
        return max(z, self.req.min_workers)


def _engine_args(req: ScheduleRequest) -> dict[str, int | float | bool | str]:
    out: dict[str, int | float | bool | str] = {}
    for key, value in req.engine_args:
        if key in out:
            raise InvalidInputError(f"engine_args.{key}", "is given twice")
        out[key] = value
    return out


def _predict(
    rate: float, x: int, y: int, pc: PrefillCapacity, dc: DecodeCapacity, pct: float
) -> tuple[float, float, float, float]:
    """Predicted TTFT at the percentile, TPOT, and each pool's utilisation."""
    r_p, r_d = pc.requests_per_s, dc.requests_per_s
    rho_p = rate / (x * r_p) if r_p > 0 else math.inf
    rho_d = rate / (y * r_d) if r_d > 0 else math.inf
    ttft = prefill_ttft_ms(rate, x, pc, pct)
    tpot = dc.tpot_ms if rho_d <= 1 else math.inf
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


def _choose_modes(
    cost: np.ndarray, switch: np.ndarray, usable: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per interval 0 (disagg) or 1 (agg) minimising the summed ``cost[j, m]`` plus
    ``switch[j, m]`` wherever interval ``j`` enters mode ``m`` from the other (a shortest path
    over two states; ties keep disagg). ``usable[j, m]`` False: the mode cannot serve ``j``
    (it is taken only where neither can). Returns the modes and, per interval, the cost of
    the path through the other mode (inf where unusable) for the output's comparison."""
    n = cost.shape[0]
    big = 1e30
    c = np.where(usable, cost, big)
    if not usable.any(axis=1).all():
        c = np.where(usable.any(axis=1, keepdims=True), c, cost)
    best = c[0].copy()
    back = np.zeros((n, 2), np.int64)
    for j in range(1, n):
        nxt = np.zeros(2)
        for m in (0, 1):
            stay = best[m]
            move = best[1 - m] + switch[j, m]
            back[j, m] = m if stay <= move else 1 - m
            nxt[m] = min(stay, move) + c[j, m]
        best = nxt
    modes = np.zeros(n, np.int64)
    modes[-1] = 0 if best[0] <= best[1] else 1
    for j in range(n - 1, 0, -1):
        modes[j - 1] = back[j, modes[j]]
    return modes, c


def plan_schedule(
    req: ScheduleRequest,
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScheduleResult:
    """Plan the schedule for ``req``; raises ``InvalidInputError`` on bad input and
    ``SearchCancelled`` when ``should_stop`` turns true: it is asked inside every search, between
    regimes and intervals and before each replay (one replay runs to its end)."""
    validate_request(req)
    pl = _Planner(req, models or default_models(), gpus or default_gpus(), should_stop)
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
    disagg_on = "disagg" in req.modes
    j0 = 0
    for j in range(1, n + 1):
        if j < n and keys[j] == keys[j0]:
            continue
        run = ivs[j0:j]
        pl.check()
        issue = None if disagg_on else "disaggregated serving is not among the modes asked for"
        if disagg_on:
            if keys[j0] not in shapes:
                shapes[keys[j0]] = pl.shapes(members[keys[j0]])
            found = shapes[keys[j0]]
            keep = current is not None and pl.still_serves(current, run)
            if isinstance(found, str):
                if not keep:
                    issue = f"no deployment for this mix meets the SLO ({found})"
            elif not keep or pl.run_cost(found, run, first=True) < pl.run_cost(current, run):
                current = found
        regime_shape.extend([current if disagg_on else None] * len(run))
        regime_issue.extend([issue] * len(run))
        j0 = j
    aggs: dict[tuple[int, int], AggOption | str] = {}
    if "agg" in req.modes:
        for k in members:
            aggs[k] = pl.agg_option(members[k])
    agg_of = [opt if isinstance(opt := aggs.get(k), AggOption) else None for k in keys]
    fallback = next((sh for sh in regime_shape if sh is not None), None)
    if fallback is None and not any(agg_of):
        first = next(iter(shapes.values()), None) or next(iter(aggs.values()), "")
        raise InvalidInputError(
            "slo",
            f"no deployment of {req.model} on {req.gpus} GPUs meets the SLO: {first}",
        )
    # 2. counts per interval, each mode
    starts = np.array([iv.start_s for iv in ivs])
    dur = np.array([iv.duration_s for iv in ivs])
    need_x, need_y, need_z = (np.zeros(n, np.int64) for _ in range(3))
    # the same before the limit caps them, for the messages (NO_WORKER_COUNT: no count does)
    want_x, want_y, want_z = (np.zeros(n, np.int64) for _ in range(3))
    gpus_mode = np.zeros((n, 2))
    usable = np.zeros((n, 2), np.bool_)
    caps: list[tuple[PrefillCapacity, DecodeCapacity] | None] = []
    for j, iv in enumerate(ivs):
        pl.check()
        sh = regime_shape[j] or fallback
        if sh is not None:
            x, y, pc, dc = pl.counts(iv, *sh)
            want_x[j], want_y[j] = x, y
            need_x[j], need_y[j] = min(x, req.gpus), min(y, req.gpus)
            gpus_mode[j, 0] = x * sh[0].gpus_per_worker + y * sh[1].gpus_per_worker
            usable[j, 0] = regime_shape[j] is not None
            caps.append((pc, dc))
        else:
            caps.append(None)
        opt = agg_of[j]
        if opt is not None:
            want_z[j] = pl.agg_count(iv, opt)
            need_z[j] = min(int(want_z[j]), req.gpus)
            gpus_mode[j, 1] = pl.agg_count(iv, opt) * opt.shape.gpus_per_worker
            usable[j, 1] = True
    # 3. the mode per interval: fewest GPU-hours, a switch costing the new workers' start-up
    over = np.maximum(gpus_mode - req.gpus, 0.0)
    cost = gpus_mode * dur[:, None] + over * 1e12
    switch = gpus_mode * req.startup_s
    modes, _ = _choose_modes(cost, switch, usable)
    # 4. cooldown: hold the largest need of the window (within one mode and its shapes)
    key_of = [
        ("agg", agg_of[j]) if modes[j] == 1 else ("disagg", regime_shape[j] or fallback)
        for j in range(n)
    ]
    hold_x, hold_y, hold_z = need_x.copy(), need_y.copy(), need_z.copy()
    j0 = 0
    for j in range(1, n + 1):
        if j == n or key_of[j] != key_of[j0]:
            for need, hold in ((need_x, hold_x), (need_y, hold_y), (need_z, hold_z)):
                hold[j0:j] = _windowed_max(starts[j0:j], need[j0:j], req.cooldown_s)
            j0 = j
    # 5. the GPU limit, predictions, violations
    plans: list[IntervalPlan] = []
    violations: list[Violation] = []
    for j, iv in enumerate(ivs):
        other = 1 - int(modes[j])
        alt = int(gpus_mode[j, other]) if usable[j, other] else None
        if modes[j] == 1:
            plans.append(
                _agg_interval(
                    j, iv, agg_of[j], int(hold_z[j]), int(want_z[j]), req, alt, violations
                )
            )
            continue
        pre, dec = regime_shape[j] or fallback  # type: ignore[misc]
        gx, gy = pre.gpus_per_worker, dec.gpus_per_worker
        x, y = _fit_limit(int(hold_x[j]), gx, int(hold_y[j]), gy, req.gpus, req.min_workers)
        if x * gx + y * gy > req.gpus:  # even the minimum does not fit
            x, y = _fit_limit(int(hold_x[j]), gx, int(hold_y[j]), gy, req.gpus, 1)
        cap_j = caps[j]
        assert cap_j is not None
        ttft, tpot, rho_p, rho_d = _predict(iv.requests_per_s, x, y, *cap_j, pct)
        why = regime_issue[j]
        need_gpus = int(need_x[j]) * gx + int(need_y[j]) * gy
        if why is None and (x < need_x[j] or y < need_y[j]):
            wx, wy = int(want_x[j]), int(want_y[j])
            if max(wx, wy) >= NO_WORKER_COUNT:
                why = (
                    f"demand {iv.requests_per_s:.3g} req/s: no count of "
                    f"{'prefill' if wx >= NO_WORKER_COUNT else 'decode'} workers meets the SLO"
                )
            else:
                why = (
                    f"demand {iv.requests_per_s:.3g} req/s needs {wx * gx + wy * gy} GPUs "
                    f"({wx} prefill x {gx} + {wy} decode x {gy}); the limit is {req.gpus}"
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
                alternative_gpus=alt,
                mode_reason=_mode_reason("disagg", need_gpus, alt),
            )
        )
    # 6. events and worker spans
    events: list[ScalingEvent] = []
    spans: list[Span] = []
    for role in ("prefill", "decode", "agg"):
        counts = [getattr(p, role) for p in plans]
        if not any(counts):
            continue
        ev, sp = _pool_timeline(role, counts, ivs, req.startup_s)
        events.extend(ev)
        spans.extend(sp)
    events.sort(key=lambda e: (e.at_s, e.pool))
    end = req.series.end_s
    begin = req.series.start_s
    # 7. static deployments: the peak interval's mode and shapes, sized for the peak and mean
    j_peak = int(np.argmax([iv.requests_per_s for iv in ivs]))
    horizon_h = (end - begin) / 3600.0
    total_requests = sum(iv.requests_per_s * iv.duration_s for iv in ivs)
    mean_iv = Interval(begin, end - begin, total_requests / (end - begin), merge_mix(ivs))
    if modes[j_peak] == 1:
        opt = agg_of[j_peak]
        assert opt is not None
        ga = opt.shape.gpus_per_worker
        pz = min(max(pl.agg_count(iv, opt) for iv in ivs), max(1, req.gpus // ga))
        mz = min(pl.agg_count(mean_iv, opt), max(1, req.gpus // ga))
        peak_pools: tuple[tuple[Shape, int], ...] = ((opt.shape, pz),)
        mean_pools: tuple[tuple[Shape, int], ...] = ((opt.shape, mz),)
    else:
        sp_pre, sp_dec = regime_shape[j_peak] or fallback  # type: ignore[misc]
        peak_counts = [pl.counts(iv, sp_pre, sp_dec)[:2] for iv in ivs]
        px, py = max(c[0] for c in peak_counts), max(c[1] for c in peak_counts)
        px, py = _fit_limit(px, sp_pre.gpus_per_worker, py, sp_dec.gpus_per_worker, req.gpus, 1)
        mx, my = pl.counts(mean_iv, sp_pre, sp_dec)[:2]
        mx, my = _fit_limit(mx, sp_pre.gpus_per_worker, my, sp_dec.gpus_per_worker, req.gpus, 1)
        peak_pools = ((sp_pre, px), (sp_dec, py))
        mean_pools = ((sp_pre, mx), (sp_dec, my))
    replay = peak_replay = mean_replay = None
    if req.simulate:
        arrivals = draw_arrivals(req.replay_series or req.series, req.seed)

        replayed = (spans, static_spans(*peak_pools), static_spans(*mean_pools))
        for sp in replayed:  # each refused before any runs (each replay checks itself too)
            check_replay_work(replay_ranks(sp), int(arrivals.t_s.size), "simulate", _REPLAY_ADVICE)

        def replay_of(sp: Sequence[Span]) -> ReplayResult:
            pl.check()
            return pl.replay(sp, arrivals)

        replay, peak_replay, mean_replay = (replay_of(sp) for sp in replayed)
        by_iv = replay.attainment_by_interval(n)
        plans = [
            dataclasses.replace(p, simulated_slo_attainment=_finite_or_none(a))
            for p, a in zip(plans, by_iv, strict=True)
        ]
    drained = replay.drained_s if replay is not None else None
    lives = _lifetimes(spans, drained)
    gpu_hours, draining_hours = _gpu_hours(spans, lives, begin, end)
    peak_in_use, crowded = _in_use(spans, lives, req.gpus)
    for t0, t1, held in crowded:
        j = max(0, int(np.searchsorted(starts, t0, side="right")) - 1)
        violations.append(
            Violation(
                j,
                ivs[j].start_s,
                f"workers starting up, serving and draining together hold {held} GPUs from "
                f"{t0:g} s to {t1:g} s; the limit is {req.gpus}",
            )
        )
    violations.sort(key=lambda v: (v.interval, v.reason))

    def static(pools: tuple[tuple[Shape, int], ...], r: ReplayResult | None) -> StaticDeployment:
        by_role = {shape.role: PoolCount(k, shape) for shape, k in pools}
        g = sum(k * shape.gpus_per_worker for shape, k in pools)
        return StaticDeployment(
            by_role.get("prefill"), by_role.get("decode"), g * horizon_h, r, by_role.get("agg")
        )

    return ScheduleResult(
        tuple(plans),
        tuple(events),
        tuple(violations),
        gpu_hours,
        peak_in_use,
        static(peak_pools, peak_replay),
        static(mean_pools, mean_replay),
        replay,
        req.price_per_gpu_hour,
        tuple(spans),
        draining_hours,
    )


def _mode_reason(mode: Mode, gpus: int, alternative: int | None) -> str:
    other = "aggregated" if mode == "disagg" else "disaggregated"
    if alternative is None:
        return f"{other} serving cannot meet the SLO here"
    if alternative > gpus:
        return f"{gpus} GPUs against {alternative} {other}"
    if alternative == gpus:
        return f"{gpus} GPUs either way"
    return f"{gpus} GPUs against {alternative} {other}: kept to avoid restarts around it"


def _agg_interval(
    j: int,
    iv: Interval,
    opt: AggOption | None,
    held: int,
    wanted: int,
    req: ScheduleRequest,
    alternative: int | None,
    violations: list[Violation],
) -> IntervalPlan:
    """``held`` workers the cooldown keeps (at most the limit), ``wanted`` the interval's own
    need before the limit."""
    assert opt is not None
    ga = opt.shape.gpus_per_worker
    z = min(held, max(1, req.gpus // ga))
    rho = iv.requests_per_s / (z * opt.requests_per_s)
    ttft, tpot = (opt.ttft_ms, opt.tpot_ms) if rho <= 1.0 + 1e-9 else (math.inf, math.inf)
    why = None
    if z < held or z * ga > req.gpus:
        if held > wanted:
            why = (
                f"the cooldown holds {held} aggregated workers x {ga} GPUs from a recent peak "
                f"(this interval's {iv.requests_per_s:.3g} req/s needs {wanted}); the limit is "
                f"{req.gpus}"
            )
        else:
            why = (
                f"demand {iv.requests_per_s:.3g} req/s needs {wanted} aggregated workers x {ga} "
                f"GPUs; the limit is {req.gpus}"
            )
    if why:
        violations.append(Violation(j, iv.start_s, why))
    return IntervalPlan(
        iv.start_s,
        iv.duration_s,
        iv.requests_per_s,
        iv.mean_isl,
        iv.mean_osl,
        None,
        None,
        ttft,
        tpot,
        0.0,
        0.0,
        why,
        agg=PoolCount(z, opt.shape),
        agg_utilisation=rho,
        alternative_gpus=alternative,
        mode_reason=_mode_reason("agg", z * ga, alternative),
    )


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _pool_timeline(
    role: str, counts: Sequence[PoolCount | None], ivs: Sequence[Interval], startup_s: float
) -> tuple[list[ScalingEvent], list[Span]]:
    """Events and worker spans of one pool from its per-interval counts (None: not in use)."""
    events: list[ScalingEvent] = []
    done: list[Span] = []
    live: list[tuple[float, float]] = []  # (launch, on) of workers accepting now
    shape: Shape | None = None
    for j, (pc, iv) in enumerate(zip(counts, ivs, strict=True)):
        t = iv.start_s
        launch = t - startup_s
        want = pc.workers if pc is not None else 0
        if pc is not None and want > 0 and pc.shape != shape:
            if shape is None and not events:
                action, restart, why = "scale_up", True, "initial deployment"
                if j > 0:
                    action = "reconfigure"
                    why = (
                        f"{role} workers {pc.shape.label()} take over from {t:g} s: the serving "
                        "mode changes"
                    )
            elif shape is None:
                action, restart = "reconfigure", True
                why = (
                    f"{role} workers {pc.shape.label()} return from {t:g} s: the serving mode "
                    "changes"
                )
            else:
                action, restart = "reconfigure", True
                why = (
                    f"the traffic mix changed (mean ISL {iv.mean_isl:,.0f}, OSL "
                    f"{iv.mean_osl:,.0f}): new layout {pc.shape.label()} replaces "
                    f"{shape.label()}; the old workers drain"
                )
            if shape is not None:
                done.extend(Span(shape, a, b, t) for a, b in live)
            events.append(
                ScalingEvent(launch, t, role, action, len(live), want, pc.shape, restart, why)
            )
            live = [(launch, t)] * want
            shape = pc.shape
            continue
        if shape is None:
            continue
        if want > len(live):
            events.append(
                ScalingEvent(
                    launch,
                    t,
                    role,
                    "scale_up",
                    len(live),
                    want,
                    shape,
                    False,
                    f"{iv.requests_per_s:.3g} req/s from {t:g} s",
                )
            )
            live.extend([(launch, t)] * (want - len(live)))
        elif want < len(live):
            reason = (
                f"{iv.requests_per_s:.3g} req/s from {t:g} s; the stopped workers drain"
                if want > 0
                else f"the serving mode changes at {t:g} s; the {role} workers drain"
            )
            events.append(
                ScalingEvent(t, t, role, "scale_down", len(live), want, shape, False, reason)
            )
            for a, b in live[want:]:
                done.append(Span(shape, a, b, t))
            live = live[:want]
            if want == 0:
                shape = None
    if shape is not None:
        done.extend(Span(shape, a, b, math.inf) for a, b in live)
    return events, done


def _lifetimes(spans: Sequence[Span], drained: np.ndarray | None) -> list[tuple[float, float]]:
    """Each span's (launch, end) in s: it holds its GPUs until it has drained (as replayed;
    without a replay, until it stops accepting)."""
    out = []
    for k, s in enumerate(spans):
        stop = s.off_s
        if drained is not None and math.isfinite(stop):
            stop = max(stop, float(drained[k]))
        out.append((s.launch_s, stop))
    return out


def _gpu_hours(
    spans: Sequence[Span], lives: Sequence[tuple[float, float]], begin: float, end: float
) -> tuple[float, float]:
    """GPU-hours within [begin, end], and of them those of workers draining."""
    total = draining = 0.0
    for s, (a, b) in zip(spans, lives, strict=True):
        g = s.shape.gpus_per_worker
        total += g * max(0.0, min(b, end) - max(a, begin))
        if math.isfinite(s.off_s):
            draining += g * max(0.0, min(b, end) - max(s.off_s, begin))
    return total / 3600.0, draining / 3600.0


def _in_use(
    spans: Sequence[Span], lives: Sequence[tuple[float, float]], limit: int
) -> tuple[int, list[tuple[float, float, int]]]:
    """The most GPUs held at once, and the stretches (start, end, most GPUs) above ``limit``."""
    edges = sorted(
        [(a, s.shape.gpus_per_worker) for s, (a, _) in zip(spans, lives, strict=True)]
        + [
            (b, -s.shape.gpus_per_worker)
            for s, (_, b) in zip(spans, lives, strict=True)
            if math.isfinite(b)
        ],
        key=lambda e: (e[0], e[1]),
    )
    now = peak = 0
    crowded: list[tuple[float, float, int]] = []
    since: float | None = None
    most = 0
    for t, g in edges:
        now += g
        peak = max(peak, now)
        if now > limit:
            if since is None:
                since, most = t, now
            most = max(most, now)
        elif since is not None:
            crowded.append((since, t, most))
            since = None
    if since is not None:
        crowded.append((since, math.inf, most))
    return peak, crowded


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
        None if layout.get("chunk_tokens") is None else int(layout["chunk_tokens"]),
    )


def spans_of_intervals(
    intervals: Sequence[dict[str, Any]], series: TrafficSeries, startup_s: float
) -> list[Span]:
    """The worker spans of a schedule's intervals (its JSON), laid on ``series``' intervals
    (matched by position: the schedule's interval k serves the series' interval k)."""
    if len(intervals) != len(series.intervals):
        raise InvalidInputError(
            "trace",
            f"the schedule has {len(intervals)} intervals, the trace {len(series.intervals)}",
        )
    out: list[Span] = []
    for role in ("prefill", "decode", "agg"):
        counts = [
            PoolCount(int(iv[role]["workers"]), shape_from_dict(role, iv[role]["layout"]))
            if iv.get(role)
            else None
            for iv in intervals
        ]
        if any(counts):
            out.extend(_pool_timeline(role, counts, series.intervals, startup_s)[1])
    return out


def simulate_spans(
    req: ScheduleRequest,
    spans: Sequence[Span],
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
) -> ReplayResult:
    """Replay ``req.series`` (or ``req.replay_series``) through these workers."""
    validate_request(req)
    roles = {s.shape.role for s in spans}
    if not roles - {"decode"} or ("prefill" in roles and "decode" not in roles):
        raise InvalidInputError(
            "workers", "the deployment needs aggregated workers, or prefill and decode workers"
        )
    pl = _Planner(req, models or default_models(), gpus or default_gpus())
    arrivals = draw_arrivals(req.replay_series or req.series, req.seed)
    return pl.replay(spans, arrivals, "schedule", "replay a shorter trace")


def simulate_xpyd(
    req: ScheduleRequest,
    prefill: tuple[Shape, int],
    decode: tuple[Shape, int],
    models: ModelCatalog | None = None,
    gpus: GpuCatalog | None = None,
) -> ReplayResult:
    """Replay ``req.series`` through a fixed disaggregated deployment, ``(shape, workers)`` of
    its prefill and of its decode pool, every worker serving from the start to the end.

    The pools are checked before anything is replayed, with the checks and the messages of
    ``estimate`` in mode disagg: each pool's layout against the model and its worker and batch
    limits (``validate.pool``: ``prefill.parallelism.tp``, ``decode.batch``, ...), then each
    worker's memory on its GPU as the estimate prices it: a prefill batch of the series'
    longest prompts (``workers.prefill_worker``) and a decode batch at the longest mean decode
    context of an interval (``workers.decode_worker`` at ``capacity.decode_context``, the
    context the schedule sizes decode batches at). A worker that does not fit raises
    ``InvalidInputError`` on ``prefill`` or ``decode`` with the estimate's reason: a replay on
    workers that can hold no request would only measure that none is served."""
    validate_request(req)
    pl = _Planner(req, models or default_models(), gpus or default_gpus())
    (pre, x), (dec, y) = prefill, decode
    v = validate.Violations()
    for (shape, workers), role in ((prefill, "prefill"), (decode, "decode")):
        with v.check():
            validate.pool(shape.parallelism, workers, shape.batch, pl.ctx.model, role)
    v.raise_any()
    series = req.replay_series or req.series
    longest = max(w.isl for iv in series.intervals for w in iv.mix)
    context = max(decode_context(iv.mix) for iv in series.intervals)
    for role, m in (
        ("prefill", prefill_worker(pl.ctx, pre.parallelism, pre.batch, longest)),
        ("decode", decode_worker(pl.dctx, dec.parallelism, dec.batch, context)),
    ):
        if not m.fits:
            v.add(role, m.reason or "does not fit")
    v.raise_any()
    larger = "prefill" if x * pre.attention_dp >= y * dec.attention_dp else "decode"
    return pl.replay(
        static_spans((pre, x), (dec, y)),
        draw_arrivals(series, req.seed),
        f"{larger}.workers",
        "replay fewer workers or requests",
    )
