"""Pareto frontier of (interactivity, throughput): both larger is better."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated by another (higher-or-equal x and y, one strictly),
    ordered by increasing x. Points with a NaN coordinate are ignored."""
    # x descending, ties by y descending (two stable sorts), so a tie never keeps the lower y
    by_y = np.argsort(-y, kind="mergesort")
    order = by_y[np.argsort(-x[by_y], kind="mergesort")]
    keep = np.empty(x.shape[0], np.int64)
    n = 0
    best_y = -np.inf
    for k in range(order.shape[0]):
        i = order[k]
        if np.isnan(x[i]) or np.isnan(y[i]):
            continue
        if y[i] > best_y:
            keep[n] = i
            n += 1
            best_y = y[i]
    return keep[:n][::-1].copy()
