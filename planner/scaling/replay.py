"""Replaying a traffic series through a deployment whose workers come and go.

The seam between scaling and the serving simulation is one function, ``simulate``: it takes the
worker spans of a deployment (each worker's configuration and the times it accepts work) and the
request arrivals, and returns every request's TTFT and TPOT. ``draw_arrivals`` turns a traffic
series into Poisson arrivals (a fixed rate within each interval, lengths drawn from its mix) with a
seed, so a schedule and the static deployments it is compared with see the same requests.

The event simulation itself is ``replaykernel.replay_disagg``; the tables it reads (batch and
step times per configuration) come from the same performance model the planner uses
(``phases.evaluate_prefill``/``evaluate_decode`` and the KV-transfer tail).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.perf.params import PerfContext
from planner.scaling.capacity import Shape
from planner.scaling.replaykernel import replay_disagg
from planner.scaling.traffic import TrafficSeries
from planner.serving.kvtransfer import transfer
from planner.serving.phases import evaluate_decode, evaluate_prefill


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
    order statistics of a Poisson process), each request's class drawn from the interval's mix."""
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


def _columns(s: Shape, like: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp, pp, ep, dp = (np.full(like.shape, float(v)) for v in (s.tp, s.pp, s.ep, s.attention_dp))
    return tp, pp, ep, dp


class Tables:
    """Batch and step times of each worker configuration for the classes of one replay."""

    def __init__(
        self,
        ctx: PerfContext,
        dctx: PerfContext,
        arrivals: Arrivals,
        link_bytes_per_s: float,
    ) -> None:
        self.ctx, self.dctx, self.arrivals, self.link = ctx, dctx, arrivals, link_bytes_per_s
        self.prefill: list[Shape] = []
        self.decode: list[Shape] = []

    def index(self, shape: Shape) -> int:
        pool = self.prefill if shape.role == "prefill" else self.decode
        if shape not in pool:
            pool.append(shape)
        return pool.index(shape)

    def prefill_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = self.arrivals
        bmax = max(s.batch for s in self.prefill)
        ms = np.full((len(self.prefill), max(a.isl.size, 1), bmax), math.inf)
        kv = np.zeros((len(self.prefill), max(a.isl.size, 1)))
        for i, s in enumerate(self.prefill):
            b = np.arange(1, s.batch + 1, dtype=np.float64)
            tp, pp, ep, dp = _columns(s, b)
            for c, isl in enumerate(a.isl):
                r = evaluate_prefill(self.ctx, tp, pp, ep, dp, b, float(isl), 0.0)
                ms[i, c, : s.batch] = r.latency_ms
                kv[i, c], _ = transfer(
                    self.ctx.mv,
                    self.ctx.hv,
                    float(isl),
                    float(s.batch),
                    float(s.tp),
                    float(s.pp),
                    float(s.attention_dp),
                    float(r.latency_ms[-1]),
                    0.0,
                    self.link,
                )
        return np.array([s.batch for s in self.prefill], np.int64), ms, kv

    def decode_arrays(self) -> tuple[np.ndarray, ...]:
        a = self.arrivals
        lo = float(a.isl.min()) if a.isl.size else 1.0
        hi = float((a.isl + a.osl).max()) if a.isl.size else 2.0
        bmax = max(s.batch for s in self.decode)
        ms0 = np.full((len(self.decode), bmax), math.inf)
        ms1 = np.full((len(self.decode), bmax), math.inf)
        for i, s in enumerate(self.decode):
            b = np.arange(1, s.batch + 1, dtype=np.float64)
            tp, pp, ep, dp = _columns(s, b)
            ms0[i, : s.batch] = evaluate_decode(self.dctx, tp, pp, ep, dp, b, lo).latency_ms
            ms1[i, : s.batch] = evaluate_decode(self.dctx, tp, pp, ep, dp, b, hi).latency_ms
        n = len(self.decode)
        return (
            np.array([s.batch for s in self.decode], np.int64),
            ms0,
            ms1,
            np.full(n, lo),
            np.full(n, max(hi, lo)),
        )


def simulate(
    prefill: Sequence[Span],
    decode: Sequence[Span],
    arrivals: Arrivals,
    ctx: PerfContext,
    dctx: PerfContext,
    link_bytes_per_s: float,
    ttft_target_ms: float,
    tpot_target_ms: float,
) -> ReplayResult:
    """Per-request TTFT and TPOT of ``arrivals`` served by these prefill and decode workers."""
    tables = Tables(ctx, dctx, arrivals, link_bytes_per_s)
    p_cfg = np.array([tables.index(s.shape) for s in prefill], np.int64)
    d_cfg = np.array([tables.index(s.shape) for s in decode], np.int64)
    p_batch, p_ms, p_kv = tables.prefill_arrays()
    d_batch, d_ms0, d_ms1, d_ctx0, d_ctx1 = tables.decode_arrays()
    n = arrivals.t_s.size
    ttft, tpot = np.zeros(n), np.zeros(n)
    busy = np.zeros(len(prefill) + len(decode))
    replay_disagg(
        arrivals.t_s,
        arrivals.cls,
        arrivals.isl,
        arrivals.osl,
        p_cfg,
        np.array([s.on_s for s in prefill]),
        np.array([s.off_s for s in prefill]),
        p_batch,
        p_ms,
        p_kv,
        d_cfg,
        np.array([s.on_s for s in decode]),
        np.array([s.off_s for s in decode]),
        d_batch,
        d_ms0,
        d_ms1,
        d_ctx0,
        d_ctx1,
        ttft,
        tpot,
        busy,
    )
    ok = (ttft <= ttft_target_ms) & (tpot <= tpot_target_ms)
    return ReplayResult(ttft, tpot, arrivals.interval, ok)


def static_spans(prefill: Shape, x: int, decode: Shape, y: int) -> tuple[list[Span], list[Span]]:
    """A fixed xPyD deployment serving from time 0 to the end."""
    return (
        [Span(prefill, 0.0, 0.0, math.inf) for _ in range(x)],
        [Span(decode, 0.0, 0.0, math.inf) for _ in range(y)],
    )
