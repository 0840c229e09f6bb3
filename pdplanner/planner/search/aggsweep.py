"""Sweeping aggregated workers: every chunk budget x concurrency of one layout, in Numba.

Each point runs the engine-loop simulation (``pdplanner.planner.serving._loop``) in a steady closed
loop. Its rate is the clients over a request's mean time in the system (Little's law), over
completions after the start's transient. (Completions counted per unit time, over a window
shorter than a cycle of every client, follow the start's estimated spread or the loop's waves:
the points past about 200 clients per rank claimed up to twice the rate the loop replays at,
Qwen3-235B fp8 on 8 H200s, TP2 ADP2 batch 768, 42.5 req/s planned, 21.0 served, TTFT 6.7 s.)

An attention-DP worker is simulated as one rank. Its other ranks run in lockstep with it (the
loop's lockstep groups) and are priced from the rank's own history (``_loop``'s missing ranks): a
step lasts as long as the slowest rank's, one of them bringing a prompt as often as the
simulated rank's steps did, and the MoE layers see from each of them the tokens of the rank's mean
decode-only step. Before, every rank was taken to carry the simulated rank's mix, so a rank's
decode steps were never held up by another rank's prompt: ``plan`` answered Qwen3-235B fp8 on 8
H200s (2000/500, TPOT 30 ms) with TP1 ADP8 batch 192 at a TPOT of 27.2 ms, which the engine loop
with all eight ranks replays at 44.7 ms.

For each chunked-prefill budget the concurrency grows along ``concurrency`` until the simulation
says it can only get worse: the KV cache or the batch limit no longer holds the clients (requests
queue for admission; that point is left out), time to first token passes ``ttft_stop_ms``, or a
single request does not fit.

The simulation is closed-loop and deterministic; the search judges deployments under random
(Poisson) arrivals. A closed loop of ``users`` clients keeps every batch slot busy, which random
arrivals at the same rate cannot sustain (the slots would never drain), so each point carries
the rate at which an arrival still finds a free slot: the loop's rate times
``queueing.max_slot_load`` of its slots over the slots, each request holding its slot for the
loop's time per request. Its time to first token adds the M/D/1 wait of a prompt queue whose
service time is one prompt's prefill step (alone on the worker: the other ranks bring no tokens
to the MoE layers) and whose utilisation ``rho`` is that rate times that time, and, with
probability 1 - ``rho``, the rest of the decode step in progress when the request arrives: half
the loop's mean TPOT. The loop's clients arrive as a step ends and never wait for it; without it
the plan's TTFT p50 came out 5-23 ms below its replay at the same rate, about half a step.

The loop's part of that TTFT is taken where the loop runs at the point's random-arrival rate: at
the clients whose closed loop serves that rate (Little's law, linear between the simulated
concurrencies), not at the point's own clients, whose loop is busier than the rate. The saturated
loop's TTFT already holds its prompts queueing behind each other, which the M/D/1 wait counts
again: Qwen3-32B on 8 H100s (ISL 8000, OSL 300, p90) planned TTFT 994 ms where the engine loop
replays the deployment at its rate at 447 ms; 539 ms since (``tools/replay_plans.py``).

TPOT is taken at that rate too, not from the loop at the point's own clients, every slot busy:
random arrivals at the rate hold fewer sequences (the clients whose loop serves it), and a
request's TPOT is the decode step of those over the share of the worker its prompts leave, with
a spread from how many prompts arrive during its life and how many requests decode beside it
(``queueing.random_arrival_tpot_ms``), never above the loop's with every slot busy. Random
arrivals make a request's time in the system longer than the loop's at the same rate, so they
hold more sequences than its clients (Little's law): the held count is scaled once by the ratio
of the two mean TPOTs, up to the slots. Without it, 2000-token answers on Llama-3.1-70B TP2
batch 256 (8 H200s, 300/2000) planned 49.9 ms where the replay, holding 212 sequences where the
loop's clients are 185, runs 57.6 ms: the decode step climbs from 46 to 52 ms between 185 and
200 sequences. The loop at the held clients alone is 5-10% below the replayed mean: evenly
spaced arrivals reproduce it (Qwen3-32B on 8 H100s, ISL 8000, OSL 300, 2.52 req/s: TPOT 15.2 ms
either way), Poisson arrivals at the same rate give a mean of 16.6 ms and a p90 of 22.5 ms
(``serving.simulate.replay_agg``). Taken with every slot busy, as before, the plan's TPOT was
8.7% (p90) to 20% (p50) above its replay in mean |log| over the frontier points of
``tools/replay_plans.py --frontier``, up to 3x, and asked 24 H100s for a rate that 16 serve
(Llama-3.1-70B, ISL 4000, OSL 500, 3 req/s at TPOT 20 ms p50: replayed at 17.6 ms).

A request's time to first token is the loop's plus both waits, so the SLO percentile ``p`` is
split between them (``queueing.split_percentile``): an arrival waits for a slot with probability
at most (1 - p) / 2, and the prompt wait is taken at 1 - (1 - p) / 2. Charging each wait at ``p``
alone let the slot wait take the whole tail: the engine loop replaying the reference plan's
aggregated deployment at its rate measured a median TTFT of 422 ms where the plan said 272 ms
(``tools/replay_plans.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numba import njit
from numba.typed import Dict

from pdplanner.planner.perf.kernels import step_ms
from pdplanner.planner.perf.memory import kv_capacity_tokens
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving import _loop as L
from pdplanner.planner.serving.queueing import (
    MAX_UTILISATION,
    random_arrival_tpot_ms,
    slot_load,
    slot_load_table,
    split_percentile,
    wait_ms,
)

# the standard normal's quantiles at the SLO percentiles p50, p90, p99 (by sweep_layout's slot)
NORMAL_QUANTILE = (0.0, 0.0, NormalDist().inv_cdf(0.9), NormalDist().inv_cdf(0.99))

# columns of the rows sweep_layout writes
R_CHUNK, R_USERS, R_TTFT, R_TPOT, R_TOKENS_PER_S, R_REQUESTS_PER_S = 0, 1, 2, 3, 4, 5
ROW_COLUMNS = 6


@njit(cache=True, nogil=True)
def _step_ms(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    lay: np.ndarray,
    prompts: float,
    new_tokens: float,
    past_tokens: float,
    decode_batch: float,
    context: float,
    row: np.ndarray,
    scratch: np.ndarray,
    moe_tokens: float = -1.0,
) -> float:
    """``step_ms`` of the layout ``lay`` = (tp, pp, ep, dp): one step (ms) of ``prompts``
    prompts of ``new_tokens`` (after ``past_tokens`` cached) and ``decode_batch`` sequences at
    ``context`` tokens; ``moe_tokens`` as in ``step_ms`` (negative: every rank alike)."""
    ms, _ = step_ms(
        mv, hv, cg, cp, cd, lay[0], lay[1], lay[2], lay[3],
        prompts, new_tokens, past_tokens, decode_batch, context, row, scratch, moe_tokens,
    )  # fmt: skip
    return ms


@njit(cache=True, nogil=True)
def _stall_share(rho: float, dp: float) -> float:
    """Share of one attention-DP rank's steps that a prompt holds up, when each of the worker's
    ``dp`` ranks prefills a share ``rho`` of the time. The ranks run in lockstep, each step as
    long as the slowest rank's, so a step stalls when any rank has a prompt in it:
    ``1 - (1 - rho)^dp`` (``rho`` itself at ``dp`` = 1). Priced with the rank's own prompts
    only, Qwen3-235B fp8 on 8 H200s (2000/500, TP2 ADP4 batch 384 at 12.8 req/s) planned TPOT
    28.7 ms, which the engine loop with all four ranks replays at 41.3 ms."""
    return 1.0 - math.pow(1.0 - rho, dp)


@njit(cache=True, nogil=True)
def _random_arrival_tpot(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    lay: np.ndarray,
    held: float,
    loop_tpot_ms: float,
    slots: float,
    stall: float,
    prompt_ms: float,
    context: float,
    osl: float,
    z: float,
    per_layer: np.ndarray,
    scratch: np.ndarray,
) -> float:
    """TPOT (ms) at the normal quantile ``z`` of one rank of layout ``lay`` under Poisson
    arrivals, whose closed loop at the rank's rate holds ``held`` clients at a mean TPOT of
    ``loop_tpot_ms`` (``queueing.random_arrival_tpot_ms``; module doc). ``stall``: the share
    of the rank's time that prompts of ``prompt_ms`` hold up its decode (``_stall_share``). Random
    arrivals stretch a request's time in the system from the loop's by their mean TPOT over the
    loop's, and so the sequences held (Little's law), at most ``slots``: the held count is
    corrected once by that ratio. ``context``: a decoding sequence's mean cached tokens;
    ``osl``: mean output tokens (above 1)."""

    def decode_ms(batch: float) -> float:
        return _step_ms(
            mv, hv, cg, cp, cd, lay, 0.0, 0.0, 0.0, batch, context, per_layer, scratch
        )  # fmt: skip

    free = 1.0 - stall
    if free <= 0.0:
        return math.inf
    # one step of Little's law towards the sequences random arrivals hold
    step = decode_ms(max(held, 1.0))
    stretch = step / free / loop_tpot_ms if loop_tpot_ms > 0.0 else 1.0
    n = min(slots, held * max(stretch, 1.0))
    if n != held:
        step = decode_ms(max(n, 1.0))
    # the step's slope over the batch's spread (padding to captured sizes included)
    half = max(2.0, math.sqrt(n))
    lo = max(n - half, 1.0)
    slope = (decode_ms(n + half) - decode_ms(lo)) / (n + half - lo)
    return random_arrival_tpot_ms(step, slope, n, stall, prompt_ms, osl, z)


@njit(cache=True, nogil=True)
def steady_closed_loop(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    lay: np.ndarray,
    sched: np.ndarray,
    graphs: np.ndarray,
    users: int,
    isl_cycle: np.ndarray,
    osl_cycle: np.ndarray,
    warm: int,
    measure: int,
    out: np.ndarray,
    fixed_terms: Dict | None = None,
) -> bool:
    """One attention-DP rank with ``users`` closed-loop clients whose first requests are spread
    over one request's duration (a steady state, not a benchmark's synchronised start); figures
    of completions ``warm``..``warm + measure``: out = [TTFT mean, p50, p90, p99, TPOT mean, p50,
    p90, p99, requests/s (Little's law: ``users`` over those requests' mean time from arrival to
    completion), tokens/s, admission-limited (1: the batch never held every client)].
    ``fixed_terms``: the simulation's table of step terms (``_loop.new_fixed_table``), shared by
    the points of one layout (None: a new one)."""
    n = users + warm + measure
    isl = np.empty(n)
    osl = np.empty(n)
    for i in range(n):
        isl[i] = isl_cycle[i % isl_cycle.shape[0]]
        osl[i] = osl_cycle[i % osl_cycle.shape[0]]
    row = np.zeros(4)
    scratch = np.zeros(4)
    mean_isl = isl_cycle.mean()
    mean_osl = osl_cycle.mean()
    batch = min(float(users), sched[L.S_MAX_SEQS])
    pf = _step_ms(mv, hv, cg, cp, cd, lay, 1.0, mean_isl, 0.0, 0.0, 0.0, row, scratch)
    context = mean_isl + 0.5 * mean_osl
    dc = _step_ms(mv, hv, cg, cp, cd, lay, 0.0, 0.0, 0.0, batch, context, row, scratch)
    spread = pf + mean_osl * dc
    arrival = np.zeros(n)
    for i in range(users):
        arrival[i] = i * spread / users
    t_first = np.zeros(n)
    t_done = np.zeros(n)
    order = np.zeros(n, np.int64)
    stats = np.zeros(L.STAT_SLOTS)
    budget = max(sched[L.S_BUDGET], 1.0)
    max_events = int(n * (math.ceil(isl_cycle.max() / budget) + 7) * 6 + 10_000)
    status = L.simulate_loop(
        mv,
        hv,
        cg,
        cp,
        cd,
        lay,
        hv,
        cg,
        cp,
        cd,
        lay,
        1,
        0,
        sched,
        graphs,
        users,
        arrival,
        isl,
        osl,
        warm + measure,
        warm,
        max_events,
        t_first,
        t_done,
        order,
        stats,
        None,
        None,
        fixed_terms,
    )
    out[:] = 0.0
    if status != L.OK:
        return False
    m = L.summarise(arrival, t_first, t_done, osl, order, warm, warm + measure, out)
    if m < 2:
        return False
    # Little's law: every client always has one request in flight, so the loop's rate is the
    # clients over a request's mean time in the system. (Completions counted over a window
    # shorter than a cycle of every client follow the start's spread or the waves instead:
    # TP8 with 256 clients of Qwen3-235B on H200 counted 12.8 req/s in the first wave and 8.5
    # in the next half cycle, where whole cycles give 10.7.)
    in_system = 0.0
    for k in range(warm, warm + measure):
        r = order[k]
        if r < 0:
            return False
        in_system += t_done[r] - arrival[r]
    if in_system <= 0.0:
        return False
    rps = 1e3 * users * measure / in_system
    out[8] = rps
    out[9] = rps * mean_osl
    out[10] = 1.0 if stats[L.T_PEAK_RUNNING] < users else 0.0
    return True


@njit(cache=True, nogil=True)
def _at(hist: np.ndarray, h: int, users: float, col: int) -> float:
    """Column ``col`` of the loop's history ``hist[:h]`` (rising clients in column 0) at
    ``users`` clients, linear between the simulated concurrencies, the ends held beyond."""
    if users <= hist[0, 0]:
        return float(hist[0, col])
    for i in range(1, h):
        if users <= hist[i, 0]:
            f = (users - hist[i - 1, 0]) / (hist[i, 0] - hist[i - 1, 0])
            return float(hist[i - 1, col] + f * (hist[i, col] - hist[i - 1, col]))
    return float(hist[h - 1, col])


@njit(cache=True, nogil=True)
def _clients_at(hist: np.ndarray, h: int, rate: float) -> float:
    """The clients whose closed loop runs at ``rate`` requests/s: the first crossing of the
    history's rates (column 1, from 0 at no clients), linear between the simulated
    concurrencies; the most simulated when none reaches it."""
    for i in range(1, h):
        if rate <= hist[i, 1]:
            lo, hi = hist[i - 1, 1], hist[i, 1]
            f = (rate - lo) / (hi - lo) if hi > lo else 1.0
            return float(hist[i - 1, 0] + f * (hist[i, 0] - hist[i - 1, 0]))
    return float(hist[h - 1, 0])


@njit(cache=True, nogil=True)
def sweep_layout(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    chunks: np.ndarray,
    concurrency: np.ndarray,
    isl_cycle: np.ndarray,
    osl_cycle: np.ndarray,
    prefix_hit: float,
    sched: np.ndarray,
    graphs: np.ndarray,
    ttft_stop_ms: float,
    percentile: float,
    slot_loads: np.ndarray,
    rows: np.ndarray,
) -> int:
    """Simulate one layout's points; write one row per point (per attention-DP rank figures
    scaled to the worker) and return how many. ``percentile`` is the SLO's (0.5, 0.9, 0.99),
    ``slot_loads`` is ``queueing.slot_load_table`` at ``split_percentile(percentile)``, the
    percentile each of a request's two waits meets (module doc);
    ``sched`` the engine's scheduler vector (``_loop`` slots), whose budget and chunking each
    entry of ``chunks`` replaces (0: no chunked prefill)."""
    out = np.zeros(11)
    n = 0
    max_isl = isl_cycle.max()
    need = max_isl + osl_cycle.max()
    slot = 1 if percentile <= 0.5 else 2 if percentile <= 0.9 else 3
    wait_p = split_percentile(percentile)
    mean_isl, mean_osl = isl_cycle.mean(), osl_cycle.mean()
    per_layer = np.zeros(4)
    scratch = np.zeros(4)
    lay = np.array([tp, pp, ep, dp])
    s = sched.copy()
    s[L.S_PREFIX_HIT] = prefix_hit
    fixed_terms = L.new_fixed_table()  # every point runs this layout on one worker
    max_batch = sched[L.S_MAX_SEQS]
    # the loop's figures at each concurrency of the current chunk budget, the origin first:
    # clients, requests/s, TTFT mean, TPOT mean
    hist = np.zeros((concurrency.shape[0] + 1, 4))
    # one prompt alone on the worker (its other attention-DP ranks bring no tokens to the MoE
    # layers): the service time of the prompt queue
    new, past = mean_isl * (1.0 - prefix_hit), mean_isl * prefix_hit
    context = mean_isl + 0.5 * mean_osl  # a decoding sequence's mean cached tokens
    prompt_ms = _step_ms(
        mv, hv, cg, cp, cd, lay, 1.0, new, past, 0.0, 0.0, per_layer, scratch, new
    )  # fmt: skip
    for c in range(chunks.shape[0]):
        chunk = chunks[c]
        s[L.S_BUDGET] = chunk if chunk > 0.0 else sched[L.S_BUDGET]
        s[L.S_CHUNKED] = 1.0 if chunk > 0.0 else 0.0
        step_tokens = chunk if chunk > 0.0 else max(max_isl, sched[L.S_BUDGET])
        h = 1
        for k in range(concurrency.shape[0]):
            users = max(1, math.ceil(concurrency[k] / dp))
            if users > 2 * max_batch:
                break
            cap = kv_capacity_tokens(
                mv, hv, tp, pp, ep, dp, step_tokens, float(min(users, max_batch))
            )
            if cap < need:
                break
            s[L.S_CAP_FRONT] = cap
            s[L.S_CAP_BACK] = cap
            # measured past the start's transient: half the clients' first requests (the rate
            # is then within 3% of whole cycles', test_engine_loop_references.py), or with
            # attention DP all of them (the missing ranks are priced from the rank's history)
            warm = users // 2 + 4 if dp <= 1.0 else users + 4
            measure = max(32, min(users, 128))
            if not steady_closed_loop(
                mv,
                hv,
                cg,
                cp,
                cd,
                lay,
                s,
                graphs,
                users,
                isl_cycle,
                osl_cycle,
                warm,
                measure,
                out,
                fixed_terms,
            ):
                break
            if out[10] > 0.5:
                # the batch never held every client: past KV saturation, where the loop moves
                # in waves of queued clients and no window short of many cycles gives its rate
                # (768 clients on 512 slots: 9.7-13.2 req/s over 128 completions, 11.4-11.7
                # over whole cycles)
                break
            # random arrivals: the rate at which an arrival finds one of the rank's slots free
            # within its share of the SLO's tail (the loop's clients keep all of them busy)
            slots = int(min(float(users), max_batch))
            rate = out[8] * slot_load(slots, wait_p, slot_loads) / slots
            rho = min(rate * prompt_ms / 1e3, MAX_UTILISATION)
            hist[h, 0], hist[h, 1], hist[h, 2], hist[h, 3] = users, out[8], out[0], out[4]
            if h == 1:
                hist[0, 2:] = hist[1, 2:]  # below one client: the first's figures
            h += 1
            # at that rate the worker holds the clients whose closed loop runs at it (Little's
            # law), fewer than its slots: the loop there gives the prompt's own time (module
            # doc). A random arrival that finds no prompt in service waits out the decode step
            # in progress, half a step on average (the loop's clients arrive as steps end).
            held = _clients_at(hist, h, rate)
            loop_tpot = _at(hist, h, held, 3)
            ttft = (
                _at(hist, h, held, 2)
                + (1.0 - rho) * 0.5 * loop_tpot
                + wait_ms(rho, prompt_ms, wait_p)
            )
            # TPOT under random arrivals at that rate (module doc), never above the loop's with
            # every slot busy
            tpot = out[4 + slot]
            if mean_osl > 1.0:
                tpot = min(
                    tpot,
                    _random_arrival_tpot(
                        mv, hv, cg, cp, cd, lay, held, loop_tpot, float(slots),
                        _stall_share(rho, dp), prompt_ms, context, mean_osl,
                        NORMAL_QUANTILE[slot], per_layer, scratch,
                    ),
                )  # fmt: skip
            rows[n, R_CHUNK] = chunk
            rows[n, R_USERS] = users * dp
            rows[n, R_TTFT] = ttft
            rows[n, R_TPOT] = tpot
            rows[n, R_TOKENS_PER_S] = rate * mean_osl * dp
            rows[n, R_REQUESTS_PER_S] = rate * dp
            n += 1
            if ttft > ttft_stop_ms:
                break  # far past the TTFT target: only worse
    return n


@dataclass(frozen=True)
class AggPoints:
    """The simulated points of one aggregated layout, in sweep order (per chunk budget, rising
    concurrency), arrays of ``n``; figures per worker (every attention-DP rank)."""

    chunk: np.ndarray  # chunked-prefill token budget (0: no chunked prefill)
    users: np.ndarray  # closed-loop clients of the worker
    ttft_ms: np.ndarray  # at the SLO percentile, slot and prompt-queue waits included
    tpot_ms: np.ndarray  # at the SLO percentile
    tokens_per_s: np.ndarray  # output tokens/s at requests_per_s
    requests_per_s: np.ndarray  # under random arrivals (module doc), below the loop's rate

    @property
    def n(self) -> int:
        return int(self.chunk.shape[0])


def sweep(
    ctx: PerfContext,
    layout: tuple[float, float, float, float],
    chunks: np.ndarray,
    concurrency: np.ndarray,
    isl_cycle: np.ndarray,
    osl_cycle: np.ndarray,
    prefix_hit: float,
    sched: np.ndarray,
    graphs: np.ndarray,
    ttft_stop_ms: float,
    percentile: float,
) -> AggPoints:
    """``sweep_layout`` of ``layout`` = (tp, pp, ep, attention_dp) on ``ctx``: every entry of
    ``chunks`` (token budgets, 0: no chunking) x rising ``concurrency`` until the stop rules.
    ``sched`` and ``graphs`` are the engine's scheduler vector and captured CUDA-graph batch
    sizes (``serving.simulate.scheduler_vector`` / ``graphs_for``), built once per search;
    ``percentile`` is the SLO's (0.5, 0.9, 0.99)."""
    rows = np.zeros((chunks.shape[0] * concurrency.shape[0], ROW_COLUMNS))
    n = sweep_layout(
        *ctx.worker_args(*layout),
        np.ascontiguousarray(chunks, np.float64),
        np.ascontiguousarray(concurrency, np.float64),
        isl_cycle,
        osl_cycle,
        float(prefix_hit),
        sched,
        graphs,
        float(ttft_stop_ms),
        float(percentile),
        slot_load_table(float(split_percentile(float(percentile)))),
        rows,
    )
    r = rows[:n]
    return AggPoints(
        r[:, R_CHUNK].copy(),
        r[:, R_USERS].copy(),
        r[:, R_TTFT].copy(),
        r[:, R_TPOT].copy(),
        r[:, R_TOKENS_PER_S].copy(),
        r[:, R_REQUESTS_PER_S].copy(),
    )
