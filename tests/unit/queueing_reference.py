"""Plain-Python references for ``serving.queueing``'s batch-slot rule, shared by the tests that
check it (test_queueing, test_scaling_references, test_engine_loop_references; ``tests/`` has no
``__init__.py``, so they import this module by name)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def erlang_c_textbook(c: int, a: float) -> float:
    """Erlang C by its textbook sum: the probability that an arrival waits in an M/M/c queue
    with ``c`` servers and ``a`` Erlangs of load."""
    if a >= c:
        return 1.0
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def slot_load_reference(
    c: int, p: float, wait: Callable[[int, float], float] = erlang_c_textbook
) -> float:
    """The most load on ``c`` slots with an arrival waiting at most ``1 - p`` of the time, by
    bisection on ``wait`` (Erlang C; the textbook sum unless told)."""
    lo, hi = 0.0, float(c)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if wait(c, mid) <= 1.0 - p else (lo, mid)
    return lo


def lindley_waits(k: int, rho: float, n: int, seed: int) -> list[float]:
    """Waits (in service times) of ``n`` prompts at a worker that a router deals every k-th
    arrival of a Poisson stream, served one at a time in one service time each (E_k/D/1), by
    Lindley's recursion w' = max(0, w + 1 - gap); the first tenth is dropped as warm-up."""
    rng = random.Random(seed)
    w, out = 0.0, []
    for _ in range(n):
        out.append(w)
        w = max(0.0, w + 1.0 - rng.gammavariate(k, 1.0 / (k * rho)))
    return out[n // 10 :]
