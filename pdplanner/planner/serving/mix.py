"""Replaying a traffic mix: the order in which the aggregated simulation draws request lengths.

A mix of (isl, osl, weight) classes becomes a cycle of ``length`` requests whose class counts
follow the weights (largest-remainder apportionment, each class at least once) and whose order
interleaves the classes as evenly as possible (smooth weighted round-robin), so that a short
measurement window sees the mix rather than a block of one class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pdplanner.planner.types import Workload


def mix_cycle(traffic: Sequence[Workload], length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(isl, osl) arrays of one replay cycle of ``traffic``."""
    weights = np.array([w.weight for w in traffic], dtype=np.float64)
    share = weights / weights.sum()
    length = max(length, len(traffic))
    quota = share * length
    counts = np.maximum(np.floor(quota).astype(np.int64), 1)
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if counts.sum() >= length:
            break
        counts[i] += 1
    # whole numbers throughout, so plain Python integers give the same order as floats would
    each = [int(c) for c in counts]
    credit = [0] * len(each)
    order = []
    total = sum(each)
    for _ in range(total):
        credit = [c + e for c, e in zip(credit, each, strict=True)]
        k = credit.index(max(credit))  # the first of the largest, as argmax
        credit[k] -= total
        order.append(k)
    isl = np.array([traffic[k].isl for k in order], dtype=np.float64)
    osl = np.array([traffic[k].osl for k in order], dtype=np.float64)
    return isl, osl
