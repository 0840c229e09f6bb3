"""Queueing under random (Poisson) arrivals, derived from utilisation.

Prompt queue. Prompts arrive at a prefill worker and are served in batches of fixed duration
``service_ms``: an M/D/1 queue, whose mean wait is ``rho / (2 (1 - rho)) * service_ms``. Its
tail is taken as exponential beyond the probability ``rho`` of waiting at all, so the wait at
percentile p is ``(mean / rho) * ln(rho / (1 - p))`` when ``rho > 1 - p``, else zero.
``max_utilisation`` inverts this: the busiest a worker may run while its time to first token
still meets the target.

Prompts dealt round-robin. A router that deals prompts to ``k`` prefill workers in turn gives
each worker every k-th arrival of a Poisson stream: Erlang-k gaps, far more regular than
Poisson, so prompts wait much less than M/D/1 says. TensorRT-LLM's disaggregated server deals
so by default (``round_robin`` in its ``serve/router.py``), and so does the engine loop;
SGLang's gateway by default (``cache_aware``) sends a prompt that shares no cached prefix to
the worker with the smallest prefix tree, which for unrelated prompts of one length rotates
much the same way. ``wait_ms_dealt`` prices that E_k/D/1 queue (service S, utilisation rho)
with an exponential tail whose decay rate is exact and whose weight matches the mean:

* decay ``theta``: the positive root of ``theta S = k ln(1 + theta S / (k rho))``
  (``lundberg_rate``, the Cramer-Lundberg exponent of Lindley's recursion with deterministic
  service and Erlang-k gaps: P(wait > w) falls as exp(-theta w) for large w);
* mean: Kraemer and Langenbach-Belz's two-moment approximation for GI/G/1 with squared
  coefficients of variation 1/k (gaps) and 0 (service), ``rho / (1 - rho) / (2k) *
  exp(-2 (1 - rho) (1 - 1/k)^2 / (3 rho / k)) * S``; P(wait > w) = theta mean exp(-theta w);
* the wait is at least what the previous prompt leaves, ``(S - gap)^+``: that quantile is
  taken where it is larger (light load).

Against Lindley's recursion simulated over 4 million prompts (``tests/unit/test_queueing.py``
checks it on 200,000 with a plain-Python one), the p50/p90/p99 waits of k = 2, 3, 4 come out
within 0.2 S of the simulated at rho 0.3-0.95, p90 and p99 within 10% from rho 0.8, mostly a
little short (E_3/D/1 at rho 0.8: p50 0.25 / 0.28 S, p90 1.49 / 1.55 S, p99 3.28 / 3.34 S,
where M/D/1 says 1.18, 5.20 and 10.96 S). For k above 4 the two-moment mean falls short and
with it the tail's weight (k = 16 at rho 0.9: p90 0.36 S against 0.57 S simulated), so k is
held at ``DEALT_MAX_WORKERS`` = 4, which overstates the wait of larger pools (k = 8 at rho
0.8: p90 1.03 S against 0.51 S simulated).

Batch slots. A worker holds at most ``batch`` sequences; a request that finds every slot taken
waits for one, and a slot turns over only when a whole answer has been generated (seconds), so
any such wait breaks a TTFT target. The slots are sized as an M/M/c queue (Erlang C, the
conservative side of deterministic answer lengths): ``max_slot_load`` is the most load, in busy
slots, at which an arrival still finds a free slot with probability ``p`` (the SLO percentile),
the rule the scaling schedules size decode pools by (``scaling.capacity``). A closed loop of
``batch`` clients keeps every slot busy; under random arrivals at that loop's rate every slot
would be busy forever and the queue would grow without bound.

Decode under random arrivals (aggregated workers). A worker that interleaves prefill with decode
gives its decoding requests the time its prompts leave: at ``rho`` = arrival rate x one prompt's
prefill time, each decode step of ``d`` ms (the running batch's, decode only) stretches on
average to ``d / (1 - rho)``, and that is a request's mean TPOT. Around the mean, a request's
TPOT varies with two counts over its life, both driven by the Poisson arrivals
(``random_arrival_tpot_ms``): the prompts that arrive while it decodes (each adds one prompt's
prefill time to its span; every such prompt lengthens the span and lets more arrive, a branching
process whose total count has variance ``m / (1 - rho)^2`` for mean ``m``), and the requests
beside it in the batch (life-averaged over a window of its own length, an M/D/infinity count:
variance 2/3 of the mean held, each adding the step's slope per sequence). The two counts share
the prompts that arrive during its life, which sets their correlation to sqrt(3/8) (exact as rho
-> 0, kept for the branching count). A request also starts decoding as its own prefill ends,
with the prompts that queued meanwhile still to prefill (M/D/1's mean count in system, ``rho +
rho^2 / (2 (1 - rho))``, spread as a geometric count), each stretched by the arrivals during it:
they open its decode life, which matters most for short answers behind long prompts
(Llama-3.1-8B, 30000/50: 32 ms planned without them at p50, 58 replayed). The median is taken at
the mean, the upper percentiles as normal with the Cornish-Fisher term of the prompt count's
skew (a branching total's third cumulant, ``m (1 + 2 rho) / (1 - rho)^4``). Against the engine
loop under Poisson arrivals at the plan's rate (``serving.simulate.replay_agg``), over the 447
aggregated frontier points and bests of the eight ``tools/replay_plans.py --frontier`` cases at
p50 and p90 (the caller, ``search.aggsweep._random_arrival_tpot``, supplies the step, slope and
held count), the mean |log(plan / replay)| of TPOT is 0.041, plan / replay 0.86-1.22, and no
point said to meet its SLO misses it in replay by more than 5%, where the closed loop with every
slot busy, which the plan took before, was 0.132 above it over 291 points (up to 3x). The normal
percentiles fit the skew of short answers behind long prompts least: most of those requests find
no prompt queued, so their median is overstated (30000/50 at p50: 48.8 ms planned, 31.8
replayed).
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


# Prefill workers whose round-robin arrivals ``wait_ms_dealt`` prices as such; more workers are
# priced as this many (module docstring: the approximation's mean is optimistic beyond it).
DEALT_MAX_WORKERS = 4


@njit(cache=True, nogil=True)
def lundberg_rate(k: float, rho: float) -> float:
    """Decay rate (per service time) of the E_k/D/1 wait's tail: the positive root of
    ``t = k ln(1 + t / (k rho))`` (bisection; ``rho`` in (0, 1))."""
    lo, hi = 0.0, 1.0
    while k * math.log(1.0 + hi / (k * rho)) > hi:
        hi *= 2.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if k * math.log(1.0 + mid / (k * rho)) > mid:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@njit(cache=True, nogil=True)
def _erlang_cdf(k: int, rate: float, t: float) -> float:
    """P(Erlang(k, rate) <= t): P(Poisson(rate t) >= k)."""
    if t <= 0.0:
        return 0.0
    x = rate * t
    term, below = 1.0, 1.0
    for j in range(1, k):
        term *= x / j
        below += term
    return 1.0 - math.exp(-x) * below


@njit(cache=True, nogil=True)
def _leftover(k: int, rho: float, p: float) -> float:
    """Quantile ``p`` of what the previous prompt leaves, ``(1 - gap)^+`` service times, for
    Erlang-k gaps of mean ``1 / rho`` (bisection on the gap whose CDF is ``1 - p``)."""
    rate = k * rho
    if _erlang_cdf(k, rate, 1.0) <= 1.0 - p:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _erlang_cdf(k, rate, mid) > 1.0 - p:
            hi = mid
        else:
            lo = mid
    return 1.0 - 0.5 * (lo + hi)


@njit(cache=True, nogil=True)
def wait_ms_dealt(rho: float, service_ms: float, p: float, workers: int) -> float:
    """Queueing delay (ms) at quantile ``p`` (``p <= 0``: the mean) of one of ``workers``
    prefill workers that a router deals Poisson arrivals to in turn, each at utilisation
    ``rho`` with service ``service_ms`` (E_k/D/1, k = ``min(workers, DEALT_MAX_WORKERS)``;
    module docstring). One worker is ``wait_ms``'s M/D/1."""
    k = min(workers, DEALT_MAX_WORKERS)
    if k <= 1:
        return wait_ms(rho, service_ms, p)
    if rho <= 0.0:
        return 0.0
    if rho >= 1.0:
        return math.inf
    ca2 = 1.0 / k  # squared coefficient of variation of Erlang-k gaps
    klb = math.exp(-2.0 * (1.0 - rho) * (1.0 - ca2) ** 2 / (3.0 * rho * ca2))
    mean = rho / (1.0 - rho) * 0.5 * ca2 * klb  # in service times
    if p <= 0.0:
        return mean * service_ms
    theta = lundberg_rate(float(k), rho)
    weight = min(theta * mean, 1.0)
    tail = math.log(weight / (1.0 - p)) / theta if weight > 1.0 - p else 0.0
    return max(tail, _leftover(k, rho, p)) * service_ms


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


# correlation of a decoding request's two counts under Poisson arrivals (module docstring): the
# prompts arriving in its life (variance m) and its life-averaged batch (variance 2m/3) share
# the arrivals of its life, weighted 1/2 on average: (m / 2) / sqrt(m * 2m / 3). Exact without
# the branching (rho -> 0); kept as the correlation of the branching count too
TPOT_COUNTS_CORRELATION = math.sqrt(3.0 / 8.0)


@njit(cache=True, nogil=True)
def random_arrival_tpot_ms(
    step_ms: float,
    slope_ms: float,
    held: float,
    rho: float,
    prompt_ms: float,
    osl: float,
    z: float,
) -> float:
    """TPOT (ms) of an aggregated worker's requests under Poisson arrivals (module docstring), at
    the normal quantile ``z`` (0: the mean, 1.2816: p90, 2.3263: p99).

    ``step_ms``: the decode-only step of the ``held`` sequences the rate keeps running;
    ``slope_ms``: that step's growth per added sequence; ``rho``: the share of the worker's time
    its prompts take, each for ``prompt_ms`` (the arrival rate x ``prompt_ms``); ``osl``: output
    tokens per request (above 1). Infinite when prompts alone fill the worker (``rho >= 1``)."""
    if rho >= 1.0:
        return math.inf
    rate_per_s = rho * 1e3 / prompt_ms if prompt_ms > 0.0 else 0.0
    free = 1.0 - rho
    # a request starts decoding as its own prefill ends, leaving behind the prompts that queued
    # meanwhile (M/D/1: rho + rho^2 / (2 (1 - rho)) on average, spread as a geometric count);
    # their prefill, stretched by the arrivals during it, opens its decode life
    behind = rho + rho * rho / (2.0 * free)
    opening = prompt_ms / (free * (osl - 1.0))
    mean = step_ms / free + behind * opening
    sd_behind = math.sqrt(behind * (1.0 + behind)) * opening
    # prompts arriving in the request's life: a branching total started by m0 = rate x the
    # unstalled life, mean m0 / free, variance m0 / free^3, each adding prompt_ms over osl - 1
    life_s = (osl - 1.0) * step_ms / 1e3
    sd_prompts = prompt_ms * math.sqrt(rate_per_s * life_s) / (free**1.5 * (osl - 1.0))
    # the batch beside it, averaged over its life: variance 2/3 of the held count
    sd_batch = slope_ms * math.sqrt(2.0 * max(held, 0.0) / 3.0) / free
    sd = math.sqrt(
        sd_prompts * sd_prompts
        + sd_batch * sd_batch
        + 2.0 * TPOT_COUNTS_CORRELATION * sd_prompts * sd_batch
        + sd_behind * sd_behind
    )
    if z <= 0.0 or sd <= 0.0:
        return mean + z * sd
    # the prompt count's skew (third cumulant m0 (1 + 2 rho) / free^5 of the total progeny
    # started by m0 = rate x life arrivals) lengthens the upper tail: Cornish-Fisher
    each = prompt_ms / (osl - 1.0)
    third = each**3 * rate_per_s * life_s * (1.0 + 2.0 * rho) / free**5
    skew = third / sd**3
    return mean + (z + (z * z - 1.0) * skew / 6.0) * sd
