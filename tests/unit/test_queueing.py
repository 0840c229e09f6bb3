"""``serving.queueing``'s batch-slot rule against plain-Python references: the load at which an
arriving request waits for a slot with probability 1 - p, inverted from Erlang C's textbook sum
(small slot counts) and by bisection on the exact recursion (the many-slot limit's accuracy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdplanner.planner.serving.queueing import (
    EXACT_SLOTS,
    erlang_c,
    max_slot_load,
    slot_shares,
)


def erlang_c_textbook(c: int, a: float) -> float:
    if a >= c:
        return 1.0
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def load_reference(c: int, p: float, wait: object = erlang_c_textbook) -> float:
    """The largest load with P(wait) <= 1 - p, by bisection on ``wait``."""
    lo, hi = 0.0, float(c)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if wait(c, mid) <= 1.0 - p:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("c", [1, 2, 3, 8, 16, 40])
def test_max_slot_load_inverts_erlang_c(c: int, p: float) -> None:
    a = max_slot_load(c, p)
    assert a == pytest.approx(load_reference(c, p), rel=1e-9, abs=1e-12)
    assert erlang_c_textbook(c, a) <= 1.0 - p + 1e-9


def test_one_slot_carries_the_share_of_time_it_may_be_busy() -> None:
    # M/M/1: an arrival waits with probability rho, so at p50 the slot is busy half the time
    for p in (0.5, 0.9, 0.99):
        assert max_slot_load(1, p) == pytest.approx(1.0 - p, rel=1e-9)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("c", [EXACT_SLOTS + 1, 1024, 4096])
def test_the_many_slot_limit_stays_within_a_quarter_percent_of_the_exact_load(
    c: int, p: float
) -> None:
    exact = load_reference(c, p, erlang_c)
    got = max_slot_load(c, p)
    print(f"{c} slots at p{p * 100:g}: {got:.2f} vs exact {exact:.2f}")
    assert abs(got - exact) / exact < 0.0025


def test_shares_grow_with_slots_and_fall_with_the_percentile() -> None:
    slots = np.array([1.0, 2.0, 8.0, 16.0, 65.0, 256.0, 512.0, 513.0, 1024.0, 4096.0])
    for p in (0.5, 0.9, 0.99):
        s = slot_shares(slots, p)
        assert np.all(np.diff(s) > 0.0) and np.all((s > 0.0) & (s < 1.0))
    assert np.all(slot_shares(slots, 0.99) < slot_shares(slots, 0.9))
    assert np.all(slot_shares(slots, 0.9) < slot_shares(slots, 0.5))
    # repeated and zero entries map to the same share / to nothing
    assert slot_shares(np.array([65.0, 0.0, 65.0]), 0.5).tolist() == pytest.approx(
        [max_slot_load(65, 0.5) / 65, 0.0, max_slot_load(65, 0.5) / 65]
    )
