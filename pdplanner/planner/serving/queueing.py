"""Waiting at the prefill pool, derived from its utilisation.

Prompts arrive at a prefill worker and are served in batches of fixed duration ``service_ms``:
an M/D/1 queue, whose mean wait is ``rho / (2 (1 - rho)) * service_ms``. Its tail is taken as
exponential beyond the probability ``rho`` of waiting at all, so the wait at percentile p is
``(mean / rho) * ln(rho / (1 - p))`` when ``rho > 1 - p``, else zero. ``max_utilisation`` inverts
this: the busiest a worker may run while its time to first token still meets the target.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
MAX_UTILISATION = 0.999  # the busiest a queue is run: at 1 its wait is unbounded


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
