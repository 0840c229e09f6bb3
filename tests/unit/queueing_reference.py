"""Plain-Python references for ``serving.queueing``'s batch-slot rule, shared by the tests that
check it (test_queueing, test_scaling_references, test_engine_loop_references; ``tests/`` has no
``__init__.py``, so they import this module by name)."""

from __future__ import annotations

import math
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
