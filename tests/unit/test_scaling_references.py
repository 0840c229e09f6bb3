"""The scaling model against plain-Python references: the prefill pool's TTFT misses by a
re-telling of ``capacity``'s docstring. (Erlang C, which sizes the decode pools, is checked with
the rest of ``serving.queueing`` in test_queueing; the replay runs the serving layer's engine
loop, compared with its own reference in test_engine_loop_references.)"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplanner.planner.scaling.capacity import (
    EXACT_DECODE_SLOTS,
    NO_WORKER_COUNT,
    DecodeCapacity,
    PrefillCapacity,
    decode_workers,
    prefill_miss,
    prefill_ttft_ms,
    prefill_workers,
)
from pdplanner.planner.serving.queueing import erlang_c, max_slot_load


def miss_reference(rate, workers, lat, share, batch_ms, ttft_ms):  # type: ignore[no-untyped-def]
    """Share of requests over ``ttft_ms``: per worker (fed in turn) Kingman's G/G/1 mean wait
    with Erlang-``workers`` gaps, waiting with probability rho, exponential beyond."""
    es = sum(w * t for w, t in zip(share, batch_ms, strict=True))
    es2 = sum(w * t * t for w, t in zip(share, batch_ms, strict=True))
    r_worker = 1e3 / es  # prompts/s of one worker (batch 1)
    if rate <= 0:
        return sum(w for w, c in zip(share, lat, strict=True) if c > ttft_ms)
    rho = rate / (workers * r_worker)
    if rho >= 1:
        return 1.0
    cs2 = es2 / es**2 - 1
    mean = rho / (1 - rho) * (1 / workers + cs2) / 2 * es
    out = 0.0
    for w, c in zip(share, lat, strict=True):
        if c > ttft_ms:
            out += w
        elif mean > 0.0:  # no wait at all when the load is too small to queue
            out += w * min(1.0, rho * math.exp(-(ttft_ms - c) * rho / mean))
    return out


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    classes=st.lists(st.tuples(st.floats(20, 2000), st.floats(0.05, 1.0)), min_size=1, max_size=4),
    workers=st.integers(1, 12),
    load=st.floats(0.0, 0.999),
    target=st.floats(50, 5000),
)
def test_prefill_miss_matches_the_reference(classes, workers, load, target) -> None:
    """The prefill pool's share of TTFT misses against a re-telling of the capacity model's
    docstring (batch 1, so a class's batch time is its compute time)."""
    lat = [c for c, _ in classes]
    total = sum(w for _, w in classes)
    share = [w / total for _, w in classes]
    es = sum(w * t for w, t in zip(share, lat, strict=True))
    es2 = sum(w * t * t for w, t in zip(share, lat, strict=True))
    cap = PrefillCapacity(1e3 / es, max(lat), es, math.inf, es2 / es, tuple(lat), tuple(share))
    rate = load * workers * cap.requests_per_s
    got = prefill_miss(rate, workers, cap, target)
    want = miss_reference(rate, workers, lat, share, lat, target)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_prefill_ttft_percentile_inverts_the_miss_share() -> None:
    """The TTFT at p is where the share of misses falls to 1 - p; more workers, less wait;
    at capacity the TTFT is unbounded."""
    cap = PrefillCapacity(
        1e3 / 300.0, 700.0, 300.0, math.inf, (0.7 * 150**2 + 0.3 * 650**2) / 300.0,
        (150.0, 650.0), (0.7, 0.3),
    )  # fmt: skip
    rate = 2.5 * cap.requests_per_s
    for p in (0.5, 0.9, 0.99):
        t = prefill_ttft_ms(rate, 3, cap, p)
        assert prefill_miss(rate, 3, cap, t) == pytest.approx(1 - p, rel=1e-6)
    assert prefill_ttft_ms(rate, 6, cap, 0.99) < prefill_ttft_ms(rate, 3, cap, 0.99)
    assert math.isinf(prefill_ttft_ms(3 * cap.requests_per_s, 3, cap, 0.99))
    # alone in an empty pool, the p99 request is the slow class's compute time
    assert prefill_ttft_ms(0.0, 1, cap, 0.99) == pytest.approx(650.0, rel=1e-6)


MIXED = PrefillCapacity(
    1e3 / 300.0, 700.0, 300.0, math.inf, (0.7 * 150**2 + 0.3 * 650**2) / 300.0,
    (150.0, 650.0), (0.7, 0.3),
)  # fmt: skip


@pytest.mark.parametrize("rate", [0.5, 3.0, 40.0, 1e4, 1e7])
def test_prefill_workers_is_the_fewest_count_that_meets_the_target(rate: float) -> None:
    # counted one by one from the compute's lower bound, 10^7 prompts/s took seconds; the
    # count is now found by doubling and bisection, and must be the same fewest count
    x = prefill_workers(rate, MIXED, 2000.0, 0.99)
    assert prefill_miss(rate, x, MIXED, 2000.0) <= 0.01
    assert x == 1 or prefill_miss(rate, x - 1, MIXED, 2000.0) > 0.01
    print(f"{rate:g} prompts/s: {x} prefill workers")


def test_prefill_workers_says_when_no_count_meets_the_target() -> None:
    # the slow class alone takes 650 ms: no count of workers gives a p99 TTFT of 600 ms
    assert prefill_workers(3.0, MIXED, 600.0, 0.99) == NO_WORKER_COUNT


@pytest.mark.parametrize("rate", [0.2, 5.0, 300.0, 1e5, 1e7])
def test_decode_workers_is_the_fewest_count_whose_slots_rarely_all_fill(rate: float) -> None:
    # counted one by one, each count an O(slots) recursion, 10^7 req/s on 256-slot workers
    # (10^8 slots) never returned; past EXACT_DECODE_SLOTS the many-server limit decides
    cap, batch = DecodeCapacity(8.0, 20.0, True), 256
    y = decode_workers(rate, cap, batch, "p99")
    offered = rate * batch / cap.requests_per_s

    def enough(n: int) -> bool:
        if n * batch <= EXACT_DECODE_SLOTS:
            return erlang_c(n * batch, offered) <= 0.01
        return max_slot_load(n * batch, 0.99) >= offered

    assert enough(y) and (y == 1 or not enough(y - 1))
    assert y * batch >= offered
    print(f"{rate:g} req/s: {y} decode workers of {batch} slots for {offered:.4g} Erlangs")
