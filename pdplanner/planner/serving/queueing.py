"""Queueing under random (Poisson) arrivals, derived from utilisation.

Prompt queue. Prompts arrive at a prefill worker and are served in batches of fixed duration
``service_ms``: an M/D/1 queue, whose mean wait is ``rho / (2 (1 - rho)) * service_ms``. Its
tail is taken as exponential beyond the probability ``rho`` of waiting at all, so the wait at
percentile p is ``(mean / rho) * ln(rho / (1 - p))`` when ``rho > 1 - p``, else zero.
``max_utilisation`` inverts this: the busiest a worker may run while its time to first token
still meets the target.

Batch slots. A worker holds at most ``batch`` sequences; a request that finds every slot taken
waits for one, and a slot turns over only when a whole answer has been generated (seconds), so
any such wait breaks a TTFT target. The slots are sized as an M/M/c queue (Erlang C, the
conservative side of deterministic answer lengths): ``max_slot_load`` is the most load, in busy
slots, at which an arrival still finds a free slot with probability ``p`` (the SLO percentile),
the rule the scaling schedules size decode pools by (``scaling.capacity``). A closed loop of
``batch`` clients keeps every slot busy; under random arrivals at that loop's rate every slot
would be busy forever and the queue would grow without bound.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
MAX_UTILISATION = 0.999  # the busiest a queue is run: at 1 its wait is unbounded
# Up to this many slots ``max_slot_load`` inverts Erlang C exactly (Erlang B's recursion is
# O(slots) per evaluation); above, it takes the Halfin-Whitt limit, which allows at most 0.25%
# more load than the exact inversion at 513 slots and less the more slots there are
# (tests/unit/test_queueing.py).
EXACT_SLOTS = 512


@njit(cache=True, nogil=True)
def wait_ms(rho: float, service_ms: float, p: float) -> float:
    """Queueing delay at quantile ``p`` (``p <= 0``: the mean) for utilisation ``rho``."""
    if rho <= 0.0:
        return 0.0
    if rho >= 1.0:
        return math.inf
    mean = rho / (2.0 * (1.0 - rho)) * service_ms
    if p <= 0.0:
        return mean
    if rho <= 1.0 - p:
        return 0.0
    return mean / rho * math.log(rho / (1.0 - p))


@njit(cache=True, nogil=True)
def max_utilisation(compute_ms: float, service_ms: float, target_ms: float, p: float) -> float:
    """Largest utilisation whose ``compute_ms + wait`` stays within ``target_ms`` (bisection)."""
    if compute_ms > target_ms:
        return 0.0
    lo, hi = 0.0, MAX_UTILISATION
    if compute_ms + wait_ms(hi, service_ms, p) <= target_ms:
        return hi
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if compute_ms + wait_ms(mid, service_ms, p) <= target_ms:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def max_utilisation_many(
    compute_ms: np.ndarray,
    service_ms: np.ndarray,
    ok: np.ndarray,
    target_ms: float,
    p: float,
    out: np.ndarray,
) -> None:
    """``max_utilisation`` for every candidate (0 where ``ok`` is False)."""
    for i in range(compute_ms.shape[0]):
        out[i] = max_utilisation(compute_ms[i], service_ms[i], target_ms, p) if ok[i] else 0.0


def usable_utilisation(
    compute_ms: np.ndarray, service_ms: np.ndarray, ok: np.ndarray, target_ms: float, p: float
) -> np.ndarray:
    """``max_utilisation_many``: per candidate (arrays of ``n``), the largest utilisation at
    which ``compute_ms`` plus the M/D/1 wait (service ``service_ms``) at percentile ``p`` stays
    within ``target_ms``; 0 where ``ok`` is False."""
    out = np.zeros(compute_ms.shape[0])
    max_utilisation_many(compute_ms, service_ms, ok, float(target_ms), float(p), out)
    return out


@njit(cache=True, nogil=True)
def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with ``servers`` servers and
    ``offered`` Erlangs of load (1 when ``offered >= servers``), by Erlang B's stable recursion."""
    if offered <= 0.0:
        return 0.0
    if offered >= servers:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return servers * b / (servers - offered * (1.0 - b))


@njit(cache=True, nogil=True)
def _halfin_whitt_wait(beta: float) -> float:
    """Erlang C's many-server limit at ``beta = (c - a) / sqrt(a)``: 1 / (1 + beta Phi / phi)."""
    phi = math.exp(-0.5 * beta * beta) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + math.erf(beta / math.sqrt(2.0)))
    return 1.0 / (1.0 + beta * cdf / phi)


@njit(cache=True, nogil=True)
def split_percentile(p: float) -> float:
    """The percentile each of two waits must meet for their sum to meet ``p``: half the tail
    each. With P(slot wait > 0) <= (1 - p) / 2 and P(prompt wait > w) <= (1 - p) / 2, the union
    bound gives P(slot wait + prompt wait > w) <= 1 - p. Meeting ``p`` on each wait alone does
    not: a request served without waiting for a slot (probability as low as ``p``) must then
    meet the target at the top of its own distribution."""
    return 1.0 - 0.5 * (1.0 - p)


@njit(cache=True, nogil=True)
def max_slot_load(servers: int, p: float) -> float:
    """Most offered load (busy slots, Erlangs) on ``servers`` slots at which an arrival waits
    for a slot with probability at most ``1 - p`` (Erlang C; ``p`` in (0, 1)): exact up to
    ``EXACT_SLOTS`` slots, the Halfin-Whitt limit above. 0 for no slots."""
    if servers <= 0:
        return 0.0
    allowed = 1.0 - p
    if servers <= EXACT_SLOTS:
        lo, hi = 0.0, float(servers)
        for _ in range(48):  # to servers x 2^-48 Erlangs
            mid = 0.5 * (lo + hi)
            if erlang_c(servers, mid) <= allowed:
                lo = mid
            else:
                hi = mid
        return lo
    # the staffing margin beta at which the limit's waiting probability is ``allowed``
    b_lo, b_hi = 0.0, 10.0
    for _ in range(60):
        mid = 0.5 * (b_lo + b_hi)
        if _halfin_whitt_wait(mid) > allowed:
            b_lo = mid
        else:
            b_hi = mid
    beta = b_hi
    root = 0.5 * (-beta + math.sqrt(beta * beta + 4.0 * servers))  # c - a = beta sqrt(a)
    return root * root


@njit(cache=True, nogil=True)
def _fill_slot_loads(p: float, out: np.ndarray) -> None:
    for c in range(out.shape[0]):
        out[c] = max_slot_load(c, p)


@functools.lru_cache(maxsize=8)
def slot_load_table(p: float) -> np.ndarray:
    """``max_slot_load(c, p)`` for ``c`` = 0..``EXACT_SLOTS`` (the exact inversions; built once
    per percentile and process, a few ms). Do not modify it: it is shared."""
    out = np.zeros(EXACT_SLOTS + 1)
    _fill_slot_loads(float(p), out)
    return out


@njit(cache=True, nogil=True)
def slot_load(servers: int, p: float, table: np.ndarray) -> float:
    """``max_slot_load(servers, p)``, from ``table`` (``slot_load_table(p)``) where it has it."""
    if 0 <= servers < table.shape[0]:
        return float(table[servers])
    return max_slot_load(servers, p)


def slot_shares(slots: np.ndarray, p: float) -> np.ndarray:
    """Per entry of ``slots`` (batch slots of one worker or rank), ``max_slot_load / slots``:
    the share of its full-batch request rate a worker carries under random arrivals while an
    arrival finds a free slot at percentile ``p``. 0 where ``slots`` < 1."""
    s = np.floor(np.asarray(slots, dtype=np.float64) + 1e-9)
    table = slot_load_table(float(p))
    out = np.zeros(s.shape[0])
    small = (s >= 1.0) & (s < table.shape[0])
    idx = s[small].astype(np.int64)
    out[small] = table[idx] / idx
    large = s >= table.shape[0]
    if large.any():
        values, where = np.unique(s[large], return_inverse=True)
        loads = np.array([max_slot_load(int(v), float(p)) for v in values])
        out[large] = (loads / values)[where.reshape(-1)]
    return out
