"""The scaling kernels against plain-Python references: Erlang C by its textbook sum, and the
replay's event simulation against a direct re-telling of its rules with Python objects, on
random small deployments (workers joining and leaving, mixed classes, tight batches)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from planner.scaling.capacity import erlang_c
from planner.scaling.replaykernel import replay_disagg


def erlang_c_textbook(c: int, a: float) -> float:
    if a >= c:
        return 1.0
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize("c", [1, 2, 5, 17, 40])
def test_erlang_c_matches_the_textbook_formula(c: int) -> None:
    for a in np.linspace(0.01, c * 0.99, 13):
        assert erlang_c(c, float(a)) == pytest.approx(erlang_c_textbook(c, float(a)), rel=1e-9)
    assert erlang_c(c, float(c)) == 1.0
    assert erlang_c(c, 0.0) == 0.0


@dataclass
class PWorker:
    cfg: int
    on: float
    off: float
    members: list[int] = field(default_factory=list)
    end: float | None = None


@dataclass
class DWorker:
    cfg: int
    on: float
    off: float
    seqs: list[int] = field(default_factory=list)
    stepping: set[int] = field(default_factory=set)
    end: float | None = None


def replay_reference(
    t_arr,
    cls,
    isl_c,
    osl_c,
    p_spans,
    p_batch,
    p_ms,
    p_kv,
    d_spans,
    d_batch,
    d_ms0,
    d_ms1,
    d_ctx0,
    d_ctx1,
):  # type: ignore[no-untyped-def]
    n = len(t_arr)
    ttft, tpot = [math.inf] * n, [math.inf] * n
    first, gen = [0.0] * n, [0.0] * n
    pw = [PWorker(c, a, b) for c, a, b in p_spans]
    dw = [DWorker(c, a, b) for c, a, b in d_spans]
    queue: list[int] = []
    arrived = 0
    ready: list[tuple[float, int]] = []  # decode queue (ready time, request), by ready time
    t = 0.0
    while True:
        times = [t_arr[arrived]] if arrived < n else []
        times += [r for r, _ in ready[:1] if r > t]
        times += [w.end for w in pw if w.end is not None]
        times += [w.on for w in pw if w.end is None and w.on > t]
        times += [w.end for w in dw if w.end is not None]
        times += [w.on for w in dw if w.end is None and w.on > t]
        if not times:
            break
        t = min(times)
        while arrived < n and t_arr[arrived] <= t:
            queue.append(arrived)
            arrived += 1
        for w in pw:
            if w.end is not None and w.end <= t:
                for r in w.members:
                    at = w.end + p_kv[w.cfg][cls[r]] / 1e3
                    first[r], gen[r] = at, 1.0
                    ttft[r] = (at - t_arr[r]) * 1e3
                    if osl_c[cls[r]] <= 1:
                        tpot[r] = 0.0
                    else:
                        k = len(ready)
                        while k > 0 and ready[k - 1][0] > at:
                            k -= 1
                        ready.insert(k, (at, r))
                w.members, w.end = [], None
        for w in dw:
            if w.end is not None and w.end <= t:
                for r in list(w.seqs):
                    if r not in w.stepping:
                        continue
                    gen[r] += 1
                    if gen[r] >= osl_c[cls[r]]:
                        tpot[r] = (w.end - first[r]) * 1e3 / (osl_c[cls[r]] - 1)
                        w.seqs.remove(r)
                w.stepping, w.end = set(), None
        for w in pw:
            if not queue:
                break
            if w.end is None and w.on <= t < w.off:
                take = min(p_batch[w.cfg], len(queue))
                w.members, queue = queue[:take], queue[take:]
                dur = sum(p_ms[w.cfg][cls[r]][take - 1] for r in w.members) / take
                w.end = t + dur / 1e3
        while ready and ready[0][0] <= t:
            open_ = [
                (len(w.seqs), i)
                for i, w in enumerate(dw)
                if w.on <= t < w.off and len(w.seqs) < d_batch[w.cfg]
            ]
            if not open_:
                break
            w = dw[min(open_)[1]]
            w.seqs.append(ready.pop(0)[1])
        for w in dw:
            if w.end is None and w.seqs:
                w.stepping = set(w.seqs)
                m = len(w.seqs)
                ctx = sum(isl_c[cls[r]] + gen[r] for r in w.seqs) / m
                span = d_ctx1[w.cfg] - d_ctx0[w.cfg]
                f = (ctx - d_ctx0[w.cfg]) / span if span > 0 else 0.0
                lo, hi = d_ms0[w.cfg][m - 1], d_ms1[w.cfg][m - 1]
                w.end = t + max(lo + f * (hi - lo), 1e-6) / 1e3
    return ttft, tpot


@pytest.mark.parametrize("seed", range(8))
def test_replay_kernel_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(1, 60)), int(rng.integers(1, 4))
    t_arr = np.sort(rng.random(n) * 5.0)
    cls = rng.integers(0, classes, n).astype(np.int64)
    isl_c = rng.integers(100, 4000, classes).astype(np.float64)
    osl_c = rng.integers(1, 40, classes).astype(np.float64)
    cfg_p, cfg_d, bp, bd = 2, 2, 4, 6
    p_batch = rng.integers(1, bp + 1, cfg_p).astype(np.int64)
    p_ms = rng.uniform(20, 300, (cfg_p, classes, bp))
    p_kv = rng.uniform(0, 5, (cfg_p, classes))
    d_batch = rng.integers(1, bd + 1, cfg_d).astype(np.int64)
    d_ms0 = np.sort(rng.uniform(5, 30, (cfg_d, bd)), axis=1)
    d_ms1 = d_ms0 * rng.uniform(1.0, 2.0)
    d_ctx0, d_ctx1 = np.full(cfg_d, 100.0), np.full(cfg_d, 4040.0)

    def spans(k: int, cfgs: int) -> list[tuple[int, float, float]]:
        out = []
        for _ in range(k):
            on = float(rng.choice([0.0, rng.uniform(0, 4)]))
            off = float(rng.choice([math.inf, on + rng.uniform(0.5, 4)]))
            out.append((int(rng.integers(0, cfgs)), on, off))
        out.append((0, 0.0, math.inf))  # someone serves to the end
        return out

    ps, ds = spans(int(rng.integers(0, 4)), cfg_p), spans(int(rng.integers(0, 4)), cfg_d)
    ttft, tpot = np.zeros(n), np.zeros(n)
    replay_disagg(
        t_arr,
        cls,
        isl_c,
        osl_c,
        np.array([s[0] for s in ps], np.int64),
        np.array([s[1] for s in ps]),
        np.array([s[2] for s in ps]),
        p_batch,
        p_ms,
        p_kv,
        np.array([s[0] for s in ds], np.int64),
        np.array([s[1] for s in ds]),
        np.array([s[2] for s in ds]),
        d_batch,
        d_ms0,
        d_ms1,
        d_ctx0,
        d_ctx1,
        ttft,
        tpot,
        np.zeros(len(ps) + len(ds)),
    )
    ref_ttft, ref_tpot = replay_reference(
        t_arr,
        cls,
        isl_c,
        osl_c,
        ps,
        p_batch,
        p_ms,
        p_kv,
        ds,
        d_batch,
        d_ms0,
        d_ms1,
        d_ctx0,
        d_ctx1,
    )
    np.testing.assert_allclose(ttft, ref_ttft, rtol=1e-9)
    np.testing.assert_allclose(tpot, ref_tpot, rtol=1e-9)
    assert np.isfinite(ttft).all()  # a worker serves to the end: everyone is served


def test_replay_of_one_request_is_its_batch_time_then_its_steps() -> None:
    """One prompt into an empty deployment: TTFT is one batch plus the KV tail, TPOT the
    step time at one sequence (contexts equal, so no interpolation)."""
    ttft, tpot = np.zeros(1), np.zeros(1)
    replay_disagg(
        np.array([1.0]),
        np.zeros(1, np.int64),
        np.array([1000.0]),
        np.array([11.0]),
        np.zeros(1, np.int64),
        np.zeros(1),
        np.full(1, math.inf),
        np.ones(1, np.int64),
        np.full((1, 1, 1), 250.0),
        np.full((1, 1), 2.0),
        np.zeros(1, np.int64),
        np.zeros(1),
        np.full(1, math.inf),
        np.ones(1, np.int64),
        np.full((1, 1), 20.0),
        np.full((1, 1), 20.0),
        np.full(1, 10.0),
        np.full(1, 10.0),
        ttft,
        tpot,
        np.zeros(2),
    )
    assert ttft[0] == pytest.approx(252.0)
    assert tpot[0] == pytest.approx(20.0)


def mmc_wait_quantile_textbook(rate: float, c: int, mu: float, p: float) -> float:
    """The M/M/c waiting time at quantile p: P(W > t) = C exp(-(c mu - rate) t)."""
    a = rate / mu
    top = a**c / math.factorial(c) * c / (c - a)
    prob_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    if prob_wait <= 1 - p:
        return 0.0
    return math.log(prob_wait / (1 - p)) / (c * mu - rate)


@pytest.mark.parametrize("workers,batch", [(1, 1), (3, 1), (2, 4), (6, 2)])
def test_prefill_wait_matches_the_mmc_quantile(workers: int, batch: int) -> None:
    from planner.scaling.capacity import prefill_wait_ms

    service_ms = 400.0
    mu = 1e3 / service_ms
    for load in (0.1, 0.5, 0.8, 0.95):
        rate = load * workers * batch * mu
        for p in (0.5, 0.9, 0.99):
            expect = mmc_wait_quantile_textbook(rate, workers * batch, mu, p) * 1e3
            got = prefill_wait_ms(rate, workers, batch, service_ms, p)
            assert got == pytest.approx(expect, rel=1e-9, abs=1e-9)
    assert math.isinf(prefill_wait_ms(workers * batch * mu, workers, batch, service_ms, 0.9))
