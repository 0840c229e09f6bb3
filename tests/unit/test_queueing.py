"""``serving.queueing`` against plain-Python references (queueing_reference): the batch-slot
rule (Erlang C against its textbook sum, and the load at which an arriving request waits for a
slot with probability 1 - p, inverted from the textbook sum (small slot counts) and by
bisection on the exact recursion (the many-slot limit's accuracy)); and the prompt wait of
prefill workers dealt arrivals in turn against Lindley's recursion simulated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from queueing_reference import erlang_c_textbook, lindley_waits, slot_load_reference

from pdplanner.planner.serving.queueing import (
    DEALT_MAX_WORKERS,
    EXACT_SLOTS,
    erlang_c,
    lundberg_rate,
    max_slot_load,
    slot_shares,
    wait_ms,
    wait_ms_dealt,
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


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 32])
@pytest.mark.parametrize("rho", [0.2, 0.5, 0.9, 0.99])
def test_the_tail_rate_solves_lundbergs_equation(k: int, rho: float) -> None:
    t = lundberg_rate(float(k), rho)
    assert t > 0.0
    assert t == pytest.approx(k * np.log1p(t / (k * rho)), rel=1e-9)


def test_one_dealt_worker_is_md1() -> None:
    for rho in (0.1, 0.5, 0.9):
        for p in (0.0, 0.5, 0.9, 0.99):
            assert wait_ms_dealt(rho, 300.0, p, 1) == wait_ms(rho, 300.0, p)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9])
def test_dealt_waits_match_lindleys_recursion(k: int, rho: float) -> None:
    """Within 0.2 service times plus 10% of the simulated wait at p50, p90 and p99 (the module
    docstring's figures come from 4 million prompts; these from 200,000)."""
    sim = lindley_waits(k, rho, 200_000, seed=k * 100 + int(rho * 100))
    for p in (0.5, 0.9, 0.99):
        got, want = wait_ms_dealt(rho, 1.0, p, k), float(np.quantile(sim, p))
        print(f"E{k}/D/1 rho {rho} p{p * 100:g}: {got:.3f} vs simulated {want:.3f} (M/D/1 "
              f"{wait_ms(rho, 1.0, p):.3f})")  # fmt: skip
        assert abs(got - want) <= 0.2 + 0.1 * want
    mean = float(np.mean(sim))
    assert wait_ms_dealt(rho, 1.0, 0.0, k) == pytest.approx(mean, abs=0.05 + 0.1 * mean)


@pytest.mark.parametrize("k", [8, 16])
def test_larger_pools_are_priced_as_the_largest_modelled_one(k: int) -> None:
    """Beyond ``DEALT_MAX_WORKERS`` the wait is that of ``DEALT_MAX_WORKERS`` workers: above
    the simulated one (more regular arrivals wait less), never below it."""
    for rho in (0.5, 0.8, 0.9):
        sim = lindley_waits(k, rho, 100_000, seed=k + int(rho * 10))
        for p in (0.5, 0.9, 0.99):
            got = wait_ms_dealt(rho, 1.0, p, k)
            assert got == wait_ms_dealt(rho, 1.0, p, DEALT_MAX_WORKERS)
            assert got >= np.quantile(sim, p)


def test_dealing_waits_less_than_md1_and_less_with_more_workers() -> None:
    for rho in (0.3, 0.6, 0.9, 0.99):
        for p in (0.0, 0.5, 0.9, 0.99):
            waits = [wait_ms_dealt(rho, 100.0, p, k) for k in (1, 2, 3, 4)]
            assert all(b <= a + 1e-9 for a, b in itertools.pairwise(waits))
    assert wait_ms_dealt(1.0, 100.0, 0.5, 3) == np.inf
    assert wait_ms_dealt(0.0, 100.0, 0.99, 3) == 0.0
