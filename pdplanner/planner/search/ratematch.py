"""Rate matching: how many prefill and decode workers, and what they deliver together.

Continuous form (the study's appendix B): a prefill configuration serves ``r_p`` requests/s per
worker of ``g_p`` GPUs; a decode configuration ``r_d`` per worker of ``g_d`` GPUs. Serving R
requests/s takes ``R (g_p / r_p + g_d / r_d)`` GPUs, so output tokens/s per GPU are
``osl / (g_p / r_p + g_d / r_d)`` and the prefill:decode GPU ratio is
``(g_p / r_p) / (g_d / r_d)`` (= R_gen / R_ctx in the study's per-GPU rates).

Integer form (xPyD): whole workers within GPU budgets; the deployment delivers
``min(x r_p, y r_d)`` requests/s. ``best_xpyd`` tries every x and the largest y that fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def continuous_tokens_per_gpu(r_p: float, g_p: float, r_d: float, g_d: float, osl: float) -> float:
    return osl / (g_p / r_p + g_d / r_d)


@njit(cache=True, nogil=True)
def _workers_for(rate: float, per_worker: float) -> int:
    """Fewest workers of ``per_worker`` req/s that carry ``rate`` (exact multiples stay exact)."""
    return max(int(np.ceil(rate / per_worker * (1.0 - 1e-12))), 1)


@njit(cache=True, nogil=True)
def best_xpyd(
    r_p: float,
    g_p: float,
    r_d: float,
    g_d: float,
    budget: int,
    budget_p: int,
    budget_d: int,
    target_rate: float,
) -> tuple[int, int, float]:
    """(x, y, delivered requests/s) for whole workers within the budgets.

    Without a target (``target_rate <= 0``): the most requests/s, then the fewest GPUs. With one:
    the fewest GPUs that deliver it, or, when nothing does, the most requests/s."""
    best_x, best_y, best_r, best_g = 0, 0, -1.0, 0.0
    reached = False
    x = 1
    while x * g_p <= min(budget, budget_p):
        y_max = int(min(budget - x * g_p, budget_d) // g_d)
        if y_max < 1:
            break
        # no more decode workers than the prefill pool can feed (or the target needs)
        want = x * r_p
        if target_rate > 0.0:
            want = min(want, target_rate)
        y = min(y_max, _workers_for(want, r_d))
        r = min(x * r_p, y * r_d)
        g = x * g_p + y * g_d
        hits = target_rate > 0.0 and r >= target_rate * (1.0 - 1e-12)
        if hits:
            better = not reached or g < best_g or (g == best_g and r > best_r)
        elif reached:
            better = False
        else:
            better = r > best_r * (1.0 + 1e-12) or (abs(r - best_r) <= 1e-12 * r and g < best_g)
        if better:
            best_x, best_y, best_r, best_g = x, y, r, g
            reached = reached or hits
        x += 1
    return best_x, best_y, best_r


@njit(cache=True, nogil=True)
def match_all(
    r_p: np.ndarray,
    g_p: np.ndarray,
    r_d: np.ndarray,
    g_d: np.ndarray,
    budget: int,
    budget_p: int,
    budget_d: int,
    target_rate: float,
    out_x: np.ndarray,
    out_y: np.ndarray,
    out_rate: np.ndarray,
    out_prefill: np.ndarray,
) -> int:
    """For each decode candidate j, the prefill candidate and xPyD that serve it best.

    Returns the number of (prefill, decode, x) combinations evaluated."""
    evaluated = 0
    for j in range(r_d.shape[0]):
        best_val, best_i, best_hits = -1.0, -1, False
        bx, by, br = 0, 0, 0.0
        for i in range(r_p.shape[0]):
            x, y, r = best_xpyd(
                r_p[i], g_p[i], r_d[j], g_d[j], budget, budget_p, budget_d, target_rate
            )
            evaluated += max(1, int(min(budget, budget_p) // g_p[i]))
            if x == 0:
                continue
            gpus = x * g_p[i] + y * g_d[j]
            # reaching the target (best_xpyd's tolerance) beats missing it; among those that
            # reach it the fewest GPUs win, among the rest the most requests/s, then the fewest
            # GPUs (compared apart: a single score of 1e18 - gpus cannot tell 56 GPUs from 64,
            # doubles near 1e18 being 128 apart)
            hits = target_rate > 0.0 and r >= target_rate * (1.0 - 1e-12)
            val = -gpus if hits else r * 1e6 - gpus
            if best_i < 0 or (hits and not best_hits) or (hits == best_hits and val > best_val):
                best_val, best_i, best_hits, bx, by, br = val, i, hits, x, y, r
        out_prefill[j] = best_i
        out_x[j] = bx
        out_y[j] = by
        out_rate[j] = br
    return evaluated


@dataclass(frozen=True)
class Matches:
    """Per decode candidate (arrays of ``m``): its best prefill partner and xPyD.

    ``prefill`` indexes the prefill candidates (-1 and ``x == 0``: none fits beside it),
    ``x``/``y`` are whole prefill/decode workers, ``requests_per_s`` what they deliver together;
    ``evaluated`` counts the (prefill, decode, x) combinations tried."""

    x: np.ndarray
    y: np.ndarray
    requests_per_s: np.ndarray
    prefill: np.ndarray
    evaluated: int


def match(
    r_p: np.ndarray,
    g_p: np.ndarray,
    r_d: np.ndarray,
    g_d: np.ndarray,
    budget: int,
    budget_p: int,
    budget_d: int,
    target_rate: float,
) -> Matches:
    """``match_all``: prefill candidates of ``r_p`` req/s per worker of ``g_p`` GPUs against
    decode candidates of ``r_d`` / ``g_d``, whole workers within ``budget`` GPUs in all (at most
    ``budget_p`` prefill, ``budget_d`` decode); ``target_rate`` req/s, 0 for none (the rule of
    ``best_xpyd``)."""
    m = r_d.shape[0]
    x, y = np.zeros(m, np.int64), np.zeros(m, np.int64)
    rate, pre = np.zeros(m), np.zeros(m, np.int64)
    evaluated = match_all(
        r_p, g_p, r_d, g_d, int(budget), int(budget_p), int(budget_d), float(target_rate),
        x, y, rate, pre,
    )  # fmt: skip
    return Matches(x, y, rate, pre, int(evaluated))
