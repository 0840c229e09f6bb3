"""What one worker of a fixed configuration serves under a traffic mix, at the SLO.

A schedule keeps worker configurations (shapes) fixed and varies worker counts, so it needs each
worker's usable request rate for every interval's mix:

prefill  Each class ``k`` of the mix is priced at its own prompt length (``prefill_worker``):
         batch time ``t_k`` (time to first token of a full batch, plus the KV-transfer tail) and
         ``r_k`` prompts/s. The worker's rate is the weighted harmonic mean ``1 / sum(w_k / r_k)``;
         its compute TTFT is the classes' weighted percentile at the SLO's, plus the calibrated
         per-request overhead outside the engine (``simulate.REQUEST_OVERHEAD_MS``, as the
         replay charges it). Arrivals go to the prefill workers in turn and queue at each (as
         the engine loop routes them): Poisson traffic dealt out in turn reaches each of ``x``
         workers with Erlang-``x`` gaps (squared coefficient of variation ``1 / x``), so each
         worker is a G/G/1 queue at ``rate / x`` whose mean wait is Kingman's
         ``rho / (1 - rho) (1 / x + c_s^2) / 2 E[t]`` (``c_s^2`` of the batch times ``t`` over
         the mix; at ``x = 1`` the Pollaczek-Khinchine M/G/1 mean). As in the serving layer's
         queue (``queueing``), a request waits at all with probability ``rho`` and then an
         exponential time with the rest of that mean. A request of class ``k`` misses a TTFT
         target ``T`` when its wait exceeds ``T - c_k`` (``c_k`` its compute TTFT), so the
         pool's share of misses is ``sum_k w_k P(W > T - c_k)``; the TTFT at the SLO percentile
         is the ``T`` where that share is ``1 - p``. A worker can also send no more KV than its
         shard-holding GPUs' links carry.
decode   A worker holds ``batch`` sequences at the mix's mean decode context (long answers weigh
         more: ``E[osl (isl + osl / 2)] / E[osl]``), turning over
         ``batch / (TPOT * (E[osl] - 1))`` requests/s. TPOT must meet the target at that context.
         A request whose first token finds every slot of the pool taken waits for one, and that
         wait stretches its TPOT; so the pool's ``y * batch`` slots are sized as an M/M/c queue
         (Erlang C) whose probability of waiting stays below ``1 - p`` at the SLO percentile
         ``p``, with each request holding a slot for ``(E[osl] - 1) * TPOT``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving.kvtransfer import kv_bytes_per_request, sending_gpus, transfer
from pdplanner.planner.serving.phases import evaluate_decode
from pdplanner.planner.serving.queueing import PERCENTILES, erlang_c, max_slot_load
from pdplanner.planner.serving.simulate import REQUEST_OVERHEAD_MS
from pdplanner.planner.serving.workers import prefill_worker
from pdplanner.planner.types import Parallelism, Pool, Workload


@dataclass(frozen=True)
class Shape:
    """One worker configuration of a pool: GPU type, layout and batch limit; an aggregated
    worker also its chunked-prefill budget as the search chose it (``chunk_tokens``, tokens per
    iteration; 0: no chunked prefill; None: the engine scheduler's)."""

    role: str  # "prefill", "decode" or "agg"
    gpu: str
    tp: int
    pp: int
    ep: int
    attention_dp: int
    batch: int
    chunk_tokens: int | None = None

    @property
    def gpus_per_worker(self) -> int:
        return self.tp * self.pp * self.attention_dp

    @property
    def parallelism(self) -> Parallelism:
        return Parallelism(self.tp, self.pp, self.ep, self.attention_dp)

    @classmethod
    def of(cls, pool: Pool) -> Shape:
        # a searched aggregated pool without a chunk budget runs without chunked prefill
        chunk = (pool.chunk_tokens or 0) if pool.role == "agg" else None
        return cls(
            pool.role, pool.gpu, pool.tp, pool.pp, pool.ep, pool.attention_dp, pool.batch, chunk
        )

    def label(self) -> str:
        extra = (
            f" EP{self.ep} DP{self.attention_dp}" if self.ep > 1 or self.attention_dp > 1 else ""
        )
        chunk = ""
        if self.chunk_tokens is not None:
            chunk = f" chunk {self.chunk_tokens}" if self.chunk_tokens > 0 else " no chunking"
        return f"{self.gpu} TP{self.tp} PP{self.pp}{extra} batch {self.batch}{chunk}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "tp": self.tp,
            "pp": self.pp,
            "ep": self.ep,
            "attention_dp": self.attention_dp,
            "batch": self.batch,
            "gpus_per_worker": self.gpus_per_worker,
            **({} if self.chunk_tokens is None else {"chunk_tokens": self.chunk_tokens}),
        }


def decode_context(mix: Sequence[Workload]) -> float:
    """Mean context a decode slot sees: ``E[osl (isl + osl / 2)] / E[osl]``."""
    w = np.array([m.weight for m in mix])
    isl = np.array([m.isl for m in mix], dtype=np.float64)
    osl = np.array([m.osl for m in mix], dtype=np.float64)
    return float(w @ (osl * (isl + osl / 2.0)) / (w @ osl))


@dataclass(frozen=True)
class PrefillCapacity:
    requests_per_s: float  # prompts/s per worker when always busy
    compute_ttft_ms: float  # overhead + batch time + KV tail at the SLO percentile's class
    service_ms: float  # worker time per batch (ms), the mix's mean
    link_requests_per_s: float  # most prompts/s per worker the KV links carry
    residual_ms: float = 0.0  # E[t^2] / E[t] of the batch times t over the mix (ms)
    class_ttft_ms: tuple[float, ...] = ()  # compute TTFT of each class of the mix
    class_share: tuple[float, ...] = ()  # each class's share of the requests

    def scaled(self, k: float) -> PrefillCapacity:
        """The same worker running ``k`` times slower (a latency correction)."""
        return PrefillCapacity(
            self.requests_per_s / k,
            self.compute_ttft_ms * k,
            self.service_ms * k,
            self.link_requests_per_s,
            self.residual_ms * k,
            tuple(c * k for c in self.class_ttft_ms),
            self.class_share,
        )


@dataclass(frozen=True)
class DecodeCapacity:
    requests_per_s: float  # per worker at full batch
    tpot_ms: float  # at full batch and the mix's mean decode context
    fits: bool  # the batch's KV cache fits at that context


def prefill_capacity(
    ctx: PerfContext,
    shape: Shape,
    mix: Sequence[Workload],
    percentile: str,
    link_bytes_per_s: float,
) -> PrefillCapacity:
    par, b = shape.parallelism, shape.batch
    share = np.array([m.weight for m in mix], dtype=np.float64)
    share = share / share.sum()
    lat, seconds_per_prompt, link_rate = [], 0.0, math.inf
    batch_ms = []
    for w, m in zip(share, mix, strict=True):
        pm = prefill_worker(ctx, par, b, m.isl)
        if not pm.fits or pm.rate_per_s <= 0:
            return PrefillCapacity(0.0, math.inf, math.inf, 0.0)
        tail, _ = transfer(
            ctx.mv,
            ctx.hv,
            float(m.isl),
            float(b),
            float(par.tp),
            float(par.pp),
            float(par.attention_dp),
            pm.step_ms,
            0.0,
            link_bytes_per_s,
        )
        lat.append(REQUEST_OVERHEAD_MS["disagg"] + pm.step_ms + tail)
        batch_ms.append(b / pm.rate_per_s * 1e3)
        seconds_per_prompt += w / pm.rate_per_s
        per_request = kv_bytes_per_request(ctx.mv, ctx.hv, float(m.isl))
        senders = sending_gpus(ctx.mv, float(par.tp), float(par.pp), float(par.attention_dp))
        link_rate = min(link_rate, senders * link_bytes_per_s / per_request)
    p = PERCENTILES[percentile]
    order = np.argsort(lat)
    cum = np.cumsum(share[order])
    pick = int(order[min(int((cum < p - 1e-12).sum()), len(lat) - 1)])
    rate = 1.0 / seconds_per_prompt
    t = np.array(batch_ms)
    residual = float(share @ (t * t) / (share @ t))
    return PrefillCapacity(
        rate,
        lat[pick],
        b / rate * 1e3,
        link_rate,
        residual,
        tuple(float(v) for v in lat),
        tuple(float(v) for v in share),
    )


@njit(cache=True, nogil=True)
def _miss(
    rate: float,
    workers: int,
    r_worker: float,
    service_ms: float,
    residual_ms: float,
    c: np.ndarray,
    w: np.ndarray,
    ttft_ms: float,
) -> float:
    late = 0.0
    for k in range(c.shape[0]):
        if c[k] > ttft_ms:
            late += w[k]
    if rate <= 0.0:
        return late
    if workers <= 0 or r_worker <= 0.0:
        return 1.0
    rho = rate / (workers * r_worker)
    if rho <= 0.0:  # a rate so small its load underflows (5e-324 req/s): no one waits
        return late
    if rho >= 1.0:
        return 1.0
    cs2 = max(residual_ms / service_ms - 1.0, 0.0)  # E[t^2] / E[t]^2 - 1
    mean = rho / (1.0 - rho) * (1.0 / workers + cs2) / 2.0 * service_ms
    theta = max(mean / rho, 1e-12)  # mean wait of those who wait
    out = late
    for k in range(c.shape[0]):
        if c[k] <= ttft_ms:
            out += w[k] * min(1.0, rho * math.exp(-(ttft_ms - c[k]) / theta))
    return out


@njit(cache=True, nogil=True)
def _ttft_at(
    rate: float,
    workers: int,
    r_worker: float,
    service_ms: float,
    residual_ms: float,
    c: np.ndarray,
    w: np.ndarray,
    p: float,
) -> float:
    args = (workers, r_worker, service_ms, residual_ms, c, w)
    if c.shape[0] == 0 or _miss(rate, *args, np.inf) >= 1.0:
        return np.inf
    lo, hi = 0.0, c.max() + 1.0
    while _miss(rate, *args, hi) > 1.0 - p:
        lo, hi = hi, hi * 2.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if _miss(rate, *args, mid) > 1.0 - p:
            lo = mid
        else:
            hi = mid
    return hi


def prefill_miss(rate: float, workers: int, cap: PrefillCapacity, ttft_ms: float) -> float:
    """Share of requests whose TTFT exceeds ``ttft_ms`` with ``workers`` prefill workers fed in
    turn at ``rate`` (1 at or past their capacity)."""
    return float(
        _miss(
            rate,
            workers,
            cap.requests_per_s,
            cap.service_ms,
            cap.residual_ms,
            np.asarray(cap.class_ttft_ms, dtype=np.float64),
            np.asarray(cap.class_share, dtype=np.float64),
            ttft_ms,
        )
    )


def prefill_ttft_ms(rate: float, workers: int, cap: PrefillCapacity, p: float) -> float:
    """TTFT at quantile ``p`` of ``workers`` prefill workers at ``rate`` (inf past capacity):
    where ``prefill_miss`` falls to ``1 - p``, by bisection."""
    return float(
        _ttft_at(
            rate,
            workers,
            cap.requests_per_s,
            cap.service_ms,
            cap.residual_ms,
            np.asarray(cap.class_ttft_ms, dtype=np.float64),
            np.asarray(cap.class_share, dtype=np.float64),
            p,
        )
    )


# ``prefill_workers``' answer when no count of workers meets the target
NO_WORKER_COUNT = 10**9
# Above this many decode slots ``decode_workers`` takes Erlang C's many-server limit
# (``queueing.max_slot_load``) instead of the exact recursion, which costs O(slots) a count: a
# million requests/s on 256-slot workers asked the recursion for 10^8 slots, some 80 counts in a
# row, and the schedule never returned.
EXACT_DECODE_SLOTS = 1 << 20


def _fewest(enough: Callable[[int], bool], lo: int) -> int:
    """The fewest workers ``x >= lo`` for which ``enough(x)`` holds, ``enough`` holding for every
    count past its first: counts double from ``lo`` until one holds, then bisect
    (``NO_WORKER_COUNT`` when none up to it does). O(log) calls however far the answer lies."""
    lo = min(lo, NO_WORKER_COUNT)
    if enough(lo):
        return lo
    step = 1
    while not enough(min(lo + step, NO_WORKER_COUNT)):
        if lo + step >= NO_WORKER_COUNT:
            return NO_WORKER_COUNT
        lo, step = lo + step, step * 2
    hi = min(lo + step, NO_WORKER_COUNT)  # enough(hi); not enough(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def prefill_workers(rate: float, cap: PrefillCapacity, ttft_ms: float, p: float) -> int:
    """Fewest prefill workers whose TTFT at quantile ``p`` meets ``ttft_ms`` (``NO_WORKER_COUNT``:
    none does, the compute alone misses it)."""
    if rate <= 0.0:
        return 0
    if cap.requests_per_s <= 0.0 or prefill_miss(0.0, 1, cap, ttft_ms) > 1.0 - p:
        return NO_WORKER_COUNT
    x = max(1, math.ceil(rate / min(cap.requests_per_s, cap.link_requests_per_s) - 1e-9))
    return _fewest(lambda n: prefill_miss(rate, n, cap, ttft_ms) <= 1.0 - p, x)


def decode_steps(ctx: PerfContext, shape: Shape, context: float) -> tuple[np.ndarray, np.ndarray]:
    """TPOT (ms) and KV fit of one decode worker holding 1..batch sequences at ``context``."""
    par = shape.parallelism
    n = np.arange(1, shape.batch + 1, dtype=np.float64)

    def col(v: int) -> np.ndarray:
        return np.full(n.shape, float(v))

    r = evaluate_decode(
        ctx, col(par.tp), col(par.pp), col(par.ep), col(par.attention_dp), n, context
    )
    return r.latency_ms, r.fits


def decode_capacity(ctx: PerfContext, shape: Shape, mix: Sequence[Workload]) -> DecodeCapacity:
    context = decode_context(mix)
    tpot, fits = decode_steps(ctx, shape, context)
    osl = sum(m.osl * m.weight for m in mix) / sum(m.weight for m in mix)
    steps = max(osl - 1.0, 1.0)
    t = float(tpot[-1])
    return DecodeCapacity(shape.batch / (t * steps) * 1e3, t, bool(fits[-1]))


def largest_batch(ctx: PerfContext, shape: Shape, context: float, tpot_ms: float) -> int:
    """The largest decode batch up to ``shape.batch`` whose TPOT meets ``tpot_ms`` and whose KV
    cache fits at ``context`` (0 when none does)."""
    tpot, fits = decode_steps(ctx, shape, context)
    ok = np.nonzero((tpot <= tpot_ms) & fits)[0]
    return int(ok[-1]) + 1 if ok.size else 0


def decode_workers(rate: float, cap: DecodeCapacity, batch: int, percentile: str) -> int:
    """Fewest decode workers whose slots make a wait for one rarer than ``1 - p``
    (``NO_WORKER_COUNT``: a worker carries no requests)."""
    if rate <= 0.0:
        return 0
    if cap.requests_per_s <= 0.0:
        return NO_WORKER_COUNT
    hold_s = batch / cap.requests_per_s  # seconds a request holds its slot
    offered = rate * hold_s
    y = max(1, math.ceil(rate / cap.requests_per_s - 1e-9))
    p = PERCENTILES[percentile]

    def enough(n: int) -> bool:
        slots = n * batch
        if slots <= EXACT_DECODE_SLOTS:
            return bool(erlang_c(slots, offered) <= 1.0 - p)
        return bool(max_slot_load(slots, p) >= offered)

    return _fewest(enough, y)
