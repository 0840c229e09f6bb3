"""``serving.queueing``'s batch-slot rule against plain-Python references (queueing_reference):
Erlang C against its textbook sum, and the load at which an arriving request waits for a slot
with probability 1 - p, inverted from the textbook sum (small slot counts) and by bisection on
the exact recursion (the many-slot limit's accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
from queueing_reference import erlang_c_textbook, slot_load_reference

from pdplanner.planner.serving.queueing import (
    EXACT_SLOTS,
    erlang_c,
    max_slot_load,
    slot_shares,
)


@pytest.mark.parametrize("c", [1, 2, 5, 17, 40])
def test_erlang_c_matches_the_textbook_formula(c: int) -> None:
    for a in np.linspace(0.01, c * 0.99, 13):
        assert erlang_c(c, float(a)) == pytest.approx(erlang_c_textbook(c, float(a)), rel=1e-9)
    assert erlang_c(c, float(c)) == 1.0
    assert erlang_c(c, 0.0) == 0.0


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("c", [1, 2, 3, 8, 16, 40])
def test_max_slot_load_inverts_erlang_c(c: int, p: float) -> None:
    a = max_slot_load(c, p)
    assert a == pytest.approx(slot_load_reference(c, p), rel=1e-9, abs=1e-12)
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
    exact = slot_load_reference(c, p, erlang_c)
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
