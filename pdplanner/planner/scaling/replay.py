"""Replaying a traffic series through a deployment whose workers come and go.

The seam between scaling and the serving simulation is one function, ``simulate``: it takes the
worker spans of a deployment (each worker's configuration and the times it accepts work) and the
request arrivals, and returns every request's TTFT and TPOT and when each worker finished
draining. ``draw_arrivals`` turns a traffic series into Poisson arrivals (a fixed rate within
each interval, lengths drawn from its mix) with a seed, so a schedule and the static deployments
it is compared with see the same requests.

The event simulation is the serving layer's engine loop, the one every estimate runs
(``serving.elastic.simulate_elastic``: workers join at their start and drain after they stop
accepting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.scaling.capacity import Shape
from pdplanner.planner.scaling.traffic import TrafficSeries, count_text
from pdplanner.planner.serving.elastic import WorkerSpan, simulate_elastic
from pdplanner.planner.serving.scheduler import SchedulerSettings
from pdplanner.planner.serving.simulate import MAX_REQUESTS, Trace

#: The most requests one replay may expect to draw (``requests_per_s x duration_s`` summed over
#: the series; the Poisson count drawn varies around it by its square root). Every drawn request
#: keeps its arrival, lengths and results in arrays through the replay, so memory grows with the
#: count, and time with the count and the workers: on the shared 2-core development machine
#: (load average about 1.7; ``/usr/bin/time -v pdplanner simulate``, Llama-3.1-8B on H100-SXM,
#: 2,000/200 tokens at 20 req/s, 4 prefill and 2 decode workers) 0.1, 0.5, 1 and 2 million
#: requests took 3.5, 8.5, 12 and 23 s with 0.20, 0.28, 0.37 and 0.55 GB peak resident memory
#: (about 10 s and 0.18 GB a million), while 200 prefill and 100 decode workers took 77 s for 1
#: million; a schedule replays three times (its own workers, the static peak and mean
#: deployments). Unbounded, an interval of 1e9 s at 5 req/s asked for a 37 GiB array and 4e6 s
#: ran for minutes in 3.8 GB. The bound is the engine loop's own bound on one run
#: (``serving.simulate.MAX_REQUESTS``), about twice the 1.03 million requests of the shipped
#: diurnal day (README, Elastic scaling).
MAX_REPLAY_REQUESTS = MAX_REQUESTS


#: The most request-rank pairs one replay takes: requests x worker ranks (every span of the
#: replay, launched or not, once per attention-DP rank: the engine loop simulates each rank).
#: The loop looks over its ranks for each request it places (the least loaded decode rank, the
#: next prefill worker in turn), so past the per-request cost (1.03 million requests of the
#: shipped diurnal day on 4-11 workers: 5-13 s) a replay costs about 0.2 us a pair on a 2-core
#: machine: 2,419 requests on 20,000 workers took 10.4 s, on 2,000 workers 1.0 s. A fixed
#: deployment of 100,000 workers each way under two million requests would run for about a
#: day; at the bound a replay's scans take about a minute.
MAX_REPLAY_WORK = 250_000_000


def check_replay_size(
    series: TrafficSeries,
    field: str | None = None,
    advice: str = "shorten the series or lower its rates",
) -> None:
    """Refuse, before anything is drawn, a series whose replay expects more than
    ``MAX_REPLAY_REQUESTS`` requests (``requests_per_s x duration_s`` summed over its
    intervals). The ``InvalidInputError`` names ``field`` (default: the interval whose running
    count passes the limit, ``series.intervals[k]``) and says where the count passes it."""
    total = 0.0
    crossed: int | None = None
    for k, iv in enumerate(series.intervals):
        total += iv.requests_per_s * iv.duration_s
        if crossed is None and total > MAX_REPLAY_REQUESTS:
            crossed = k
    if crossed is None:
        return
    start = series.intervals[crossed].start_s
    raise InvalidInputError(
        field if field is not None else f"series.intervals[{crossed}]",
        f"the replay expects {count_text(total)} requests (requests_per_s x duration_s summed over "
        f"the series), more than the {MAX_REPLAY_REQUESTS:,} one replay takes (passed in the "
        f"interval starting at {start:g} s); {advice}",
    )


def replay_ranks(spans: Sequence[Span]) -> int:
    """The worker ranks a replay of ``spans`` simulates: one per attention-DP rank of each."""
    return sum(s.shape.attention_dp for s in spans)


def check_replay_work(
    ranks: int, requests: int, field: str, advice: str = "replay fewer requests"
) -> None:
    """Refuse, before it runs, a replay of ``requests`` on ``ranks`` worker ranks
    (``replay_ranks``) past ``MAX_REPLAY_WORK`` request-rank pairs: ``InvalidInputError`` on
    ``field``."""
    if ranks * requests <= MAX_REPLAY_WORK:
        return
    raise InvalidInputError(
        field,
        f"a replay of {requests:,} requests on {ranks:,} worker ranks (attention-DP ranks "
        f"counted) takes {count_text(ranks * requests)} request-rank pairs, more than the "
        f"{MAX_REPLAY_WORK:,} one replay takes (its time grows with both); {advice}",
    )


@dataclass(frozen=True)
class Arrivals:
    """Requests in arrival order: time (s), class index, and each class's lengths."""

    t_s: np.ndarray
    cls: np.ndarray
    isl: np.ndarray  # per class
    osl: np.ndarray  # per class
    interval: np.ndarray  # index of the series interval each request arrived in


def draw_arrivals(series: TrafficSeries, seed: int = 0) -> Arrivals:
    """Poisson arrivals: in each interval, a Poisson count at its rate, placed uniformly (the
    order statistics of a Poisson process), each request's class drawn from the interval's mix.
    Raises ``InvalidInputError`` for a series over ``MAX_REPLAY_REQUESTS`` (``check_replay_size``)
    before drawing any."""
    check_replay_size(series)
    rng = np.random.default_rng(seed)
    classes: dict[tuple[int, int], int] = {}
    ts, cs, ivs = [], [], []
    for k, iv in enumerate(series.intervals):
        ids = np.array([classes.setdefault((w.isl, w.osl), len(classes)) for w in iv.mix])
        count = rng.poisson(iv.requests_per_s * iv.duration_s)
        if count == 0:
            continue
        ts.append(np.sort(iv.start_s + rng.random(count) * iv.duration_s))
        p = np.array([w.weight for w in iv.mix])
        cs.append(ids[rng.choice(len(ids), size=count, p=p / p.sum())])
        ivs.append(np.full(count, k, np.int64))
    lengths = sorted(classes, key=classes.__getitem__)
    empty = np.zeros(0)
    return Arrivals(
        np.concatenate(ts) if ts else empty,
        np.concatenate(cs).astype(np.int64) if cs else np.zeros(0, np.int64),
        np.array([a for a, _ in lengths], dtype=np.float64),
        np.array([b for _, b in lengths], dtype=np.float64),
        np.concatenate(ivs) if ivs else np.zeros(0, np.int64),
    )


@dataclass(frozen=True)
class Span:
    """One worker: its configuration, when it was launched, when it serves and stops accepting."""

    shape: Shape
    launch_s: float
    on_s: float
    off_s: float  # inf: still accepting at the end of the series


@dataclass(frozen=True)
class ReplayResult:
    ttft_ms: np.ndarray  # per request, arrival order (inf: never served)
    tpot_ms: np.ndarray
    interval: np.ndarray  # the interval each request arrived in
    ok: np.ndarray  # both targets met
    drained_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per span: last work

    @property
    def attainment(self) -> float:
        return float(self.ok.mean()) if self.ok.size else 1.0

    def summary(self) -> dict[str, Any]:
        def pct(a: np.ndarray, q: float) -> float | None:
            return float(np.percentile(a, q)) if a.size else None

        return {
            "requests": int(self.ok.size),
            "slo_attainment": self.attainment,
            "ttft_ms": {f"p{q}": pct(self.ttft_ms, q) for q in (50, 90, 99)},
            "tpot_ms": {f"p{q}": pct(self.tpot_ms, q) for q in (50, 90, 99)},
        }

    def attainment_by_interval(self, intervals: int) -> np.ndarray:
        """Share of each interval's requests meeting the SLO (NaN where none arrived)."""
        total = np.bincount(self.interval, minlength=intervals).astype(np.float64)
        good = np.bincount(self.interval, weights=self.ok, minlength=intervals)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, good / np.maximum(total, 1), np.nan)


def simulate(
    spans: Sequence[Span],
    arrivals: Arrivals,
    ctx: PerfContext,
    dctx: PerfContext,
    sched: SchedulerSettings,
    link_bytes_per_s: float,
    ttft_target_ms: float,
    tpot_target_ms: float,
    field: str = "workers",
    advice: str = "replay fewer requests",
) -> ReplayResult:
    """Per-request TTFT and TPOT of ``arrivals`` served by these workers (aggregated, prefill
    and decode spans in any order), through ``serving.elastic.simulate_elastic``: ``ctx`` is
    the performance context of aggregated and prefill workers, ``dctx`` of decode workers.
    Past ``MAX_REPLAY_WORK`` request-rank pairs it raises ``InvalidInputError`` on ``field``,
    with ``advice``, before anything runs."""
    check_replay_work(replay_ranks(spans), int(arrivals.t_s.size), field, advice)
    trace = Trace(arrivals.t_s, arrivals.isl[arrivals.cls], arrivals.osl[arrivals.cls])
    run = simulate_elastic(
        ctx,
        dctx,
        sched,
        [
            WorkerSpan(
                s.shape.role,  # type: ignore[arg-type]
                s.shape.parallelism,
                s.shape.batch,
                s.on_s,
                s.off_s,
                s.shape.chunk_tokens,
            )
            for s in spans
        ],
        trace,
        link_bytes_per_s,
    )
    ttft = np.nan_to_num(run.ttft_ms, nan=math.inf)
    tpot = np.nan_to_num(run.tpot_ms, nan=math.inf)
    ok = (ttft <= ttft_target_ms) & (tpot <= tpot_target_ms)
    return ReplayResult(ttft, tpot, arrivals.interval, ok, run.drained_s)


def static_spans(*pools: tuple[Shape, int]) -> list[Span]:
    """A fixed deployment (``(shape, workers)`` per pool) serving from time 0 to the end."""
    return [Span(shape, 0.0, 0.0, math.inf) for shape, count in pools for _ in range(count)]
