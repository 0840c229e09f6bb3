"""Serving under load: the engine-loop simulation (``_loop``) behind typed wrappers.

Three load models say how requests reach the engines:

``ClosedLoop``  benchmark clients: ``clients`` each keep one request in flight and send the next
                the moment one ends, all starting together (``synchronised``; how benchmark
                clients run a concurrency sweep), fixed lengths cycling through the mix. The run
                sends ``requests_per_client`` x ``clients`` requests and its figures are the mean
                and percentiles over all of them: the waves that synchronised starts cause are
                part of the result, not averaged away by a warm-up.
``Poisson``     production traffic: open-loop arrivals at ``rate_per_s`` (exponential gaps, a
                fixed seed), lengths cycling through the mix; the first ``WARMUP_SHARE`` of the
                completions are left out of the figures (the engine starts empty).
``Trace``       replay: given arrival times and lengths, one result per request.

``simulate_agg`` runs aggregated workers (every attention-DP rank of every worker), and
``simulate_disagg`` a prefill pool feeding a decode pool. Both return a ``ServingRun``; its TTFT
adds ``request_overhead_ms`` (``REQUEST_OVERHEAD_MS`` is the calibrated one, which
``pdplanner.planner.estimate`` and ``replay_agg`` apply) for the time a request spends outside the
loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pdplanner.planner.perf.kernels import step_ms
from pdplanner.planner.perf.memory import kv_capacity_tokens
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving import _loop as L
from pdplanner.planner.serving.kvtransfer import transfer
from pdplanner.planner.serving.scheduler import KV_ADMISSION, SchedulerSettings
from pdplanner.planner.types import Parallelism

# How many requests a benchmark run sends per client. The source of the measured runs does not
# say; benchmark clients (SGLang bench_serving, genai-perf/aiperf, vLLM benchmark_serving) take a
# request count that users set to a multiple of the concurrency. Fitted on shared/serving-runs
# over {2, 4, 10} by tools/fit_serving.py: 10 on all rows and in 8 of 11 leave-one-out folds;
# AIConfigurator's genai-perf runner, which benchmarks such runs, sends 10 per client after 2 of
# warm-up (src/aiconfigurator/eval/benchmarks/genai_perf_runner.py).
REQUESTS_PER_CLIENT = 10.0
# Per-request time to first token outside the engine loop (HTTP, tokenisation, detokenisation;
# in disaggregated serving also the router, the KV handshake and the decode worker's first
# scheduling), fitted on the same runs with the same folds (tests/unit/test_serving_accuracy.py,
# "fitted on every run"; README: serving model): 75 ms agg since TensorRT-LLM's eager steps are
# priced with the host's issue time (100 ms from when quantized GEMMs were priced at the engines'
# efficiency, 150 ms before that, and 100 ms before the runs' token budgets and the overlap
# schedulers were simulated), 200 ms disagg.
REQUEST_OVERHEAD_MS = {"agg": 75.0, "disagg": 200.0}
WARMUP_SHARE = 0.1
POISSON_REQUESTS = 2000
# A Poisson run spans at least this many request lifetimes (a request at the full batch,
# ``_one_request_ms``): by Little's law a rate keeps rate x lifetime requests in flight, so 2000
# requests at hundreds of requests/s end before the batch ever fills (632 req/s on a deployment
# of 2,272 decode slots kept 1,025 running). With ten, the warm-up share (10%) covers about one
# lifetime of filling and the drain after the last arrival touches about a tenth of the run.
POISSON_LIFETIMES = 10.0
MAX_REQUESTS = 2_000_000


@dataclass(frozen=True)
class ClosedLoop:
    clients: int
    requests_per_client: float = REQUESTS_PER_CLIENT
    synchronised: bool = True
    name: Literal["closed"] = field(default="closed", init=False)


@dataclass(frozen=True)
class Poisson:
    """Open-loop arrivals at ``rate_per_s``: at least ``requests`` of them, more where the rate
    keeps more in flight (``POISSON_LIFETIMES``)."""

    rate_per_s: float
    requests: int = POISSON_REQUESTS
    seed: int = 0
    name: Literal["poisson"] = field(default="poisson", init=False)


@dataclass(frozen=True)
class Trace:
    """Arrival times (s, non-decreasing) and lengths of every request, aligned by index."""

    arrival_s: np.ndarray
    isl: np.ndarray
    osl: np.ndarray
    name: Literal["trace"] = field(default="trace", init=False)


Load = ClosedLoop | Poisson | Trace


@dataclass(frozen=True)
class Percentiles:
    mean: float
    p50: float
    p90: float
    p99: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99}


NO_PERCENTILES = Percentiles(0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ServingRun:
    """What a load model measures on a deployment. Times in ms; rates per deployment.

    ``ttft_ms_each`` / ``tpot_ms_each`` hold one value per request in input order (NaN where the
    request did not complete); the summaries cover the measured requests (see the load model).
    ``running`` is the mean number of running requests per worker rank that decodes (agg ranks,
    or decode ranks), ``queued`` the mean waiting for admission over the whole deployment.
    """

    ok: bool
    reason: str | None
    load: str
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    requests_per_s: float
    output_tokens_per_s: float
    running: float
    queued: float
    peak_running: float
    preemptions: int
    measured_requests: int
    duration_s: float
    ttft_ms_each: np.ndarray
    tpot_ms_each: np.ndarray

    @property
    def simulated_requests(self) -> int:
        """Every request of the run, warm-up included."""
        return int(self.ttft_ms_each.size)


@dataclass(frozen=True)
class Pool:
    """Identical workers of one layout; ``sched.max_num_seqs`` counts per attention-DP rank."""

    ctx: PerfContext
    par: Parallelism
    workers: int
    sched: SchedulerSettings


def kv_capacity(
    ctx: PerfContext, par: Parallelism, sched: SchedulerSettings, step_tokens: float, logits: float
) -> float:
    """KV tokens one attention-DP rank holds beside weights, workspace and the largest step
    (``pdplanner.planner.perf.memory.kv_capacity_tokens``: the device-reported capacity, the
    engine's memory rule and its memory fraction from the context); negative: no room. ``sched`` is
    accepted for the callers' symmetry; the memory fraction lives in ``ctx``."""
    del sched
    return float(
        kv_capacity_tokens(
            ctx.mv, ctx.hv, par.tp, par.pp, par.ep, par.attention_dp, step_tokens, logits
        )
    )


def _sched_vector(
    front: SchedulerSettings, back: SchedulerSettings, cap_f: float, cap_b: float
) -> np.ndarray:
    s = np.zeros(L.SCHED_SLOTS)
    s[L.S_BUDGET] = front.max_num_batched_tokens
    s[L.S_MAX_SEQS] = front.max_num_seqs
    s[L.S_CHUNKED] = float(front.enable_chunked_prefill)
    s[L.S_MIXED] = float(front.mixed_batches)
    s[L.S_OVERLAP] = float(front.async_scheduling)
    # one deployment, one admission rule: the decode pool's where there is one
    s[L.S_POLICY] = KV_ADMISSION.index(back.kv_admission)
    s[L.S_RATIO_INIT] = back.new_token_ratio
    s[L.S_RATIO_MIN] = back.min_new_token_ratio
    s[L.S_RATIO_DECAY] = back.new_token_ratio_decay
    s[L.S_CAP_FRONT] = cap_f
    s[L.S_CAP_BACK] = cap_b
    s[L.S_MAX_SEQS_BACK] = back.max_num_seqs
    s[L.S_BUDGET_BACK] = back.max_num_batched_tokens
    return s


def poisson_requests(load: Poisson, lifetime_ms: float) -> int:
    """Requests a Poisson run simulates: ``load.requests``, or enough arrivals to span
    ``POISSON_LIFETIMES`` request lifetimes of ``lifetime_ms``, at most ``MAX_REQUESTS``."""
    span = POISSON_LIFETIMES * load.rate_per_s * max(lifetime_ms, 0.0) / 1e3
    return int(min(MAX_REQUESTS, max(load.requests, math.ceil(span))))


def _requests(
    load: Load, isl: np.ndarray, osl: np.ndarray, lifetime_ms: float
) -> tuple[np.ndarray, ...]:
    """(arrival_ms, isl, osl, clients, first measured completion) of the run; ``lifetime_ms``
    sizes a Poisson run (``poisson_requests``)."""
    if isinstance(load, Trace):
        a = np.asarray(load.arrival_s, dtype=np.float64) * 1e3
        return (
            a.copy(),
            np.asarray(load.isl, np.float64),
            np.asarray(load.osl, np.float64),
            np.array(0),
            np.array(0),
        )
    if isinstance(load, ClosedLoop):
        n = min(MAX_REQUESTS, max(load.clients, round(load.clients * load.requests_per_client)))
        arrival = np.zeros(n)
        return arrival, np.resize(isl, n), np.resize(osl, n), np.array(load.clients), np.array(0)
    rng = np.random.default_rng(load.seed)
    n = poisson_requests(load, lifetime_ms)
    gaps = rng.exponential(1e3 / load.rate_per_s, n)
    arrival = np.cumsum(gaps) - gaps[0]
    return (
        arrival,
        np.resize(isl, n).astype(np.float64),
        np.resize(osl, n).astype(np.float64),
        np.array(0),
        np.array(int(WARMUP_SHARE * n)),
    )


def _stagger(load: Load, arrival: np.ndarray, spread_ms: float) -> None:
    if isinstance(load, ClosedLoop) and not load.synchronised:
        c = load.clients
        arrival[:c] = np.arange(c) * spread_ms / c


def _run(
    front_ctx: PerfContext,
    front_par: Parallelism,
    n_front: int,
    back_ctx: PerfContext,
    back_par: Parallelism,
    n_back: int,
    sched: np.ndarray,
    graphs: np.ndarray,
    load: Load,
    isl: np.ndarray,
    osl: np.ndarray,
    spread_ms: float,
    overhead_ms: float,
) -> ServingRun:
    arrival, r_isl, r_osl, clients_a, lo_a = _requests(load, isl, osl, spread_ms)
    clients, lo = int(clients_a), int(lo_a)
    _stagger(load, arrival, spread_ms)
    n = r_isl.shape[0]
    t_first = np.zeros(n)
    t_done = np.zeros(n)
    order = np.zeros(n, np.int64)
    stats = np.zeros(L.STAT_SLOTS)
    budget = max(sched[L.S_BUDGET], 1.0)
    chunks = math.ceil(float(r_isl.max()) / budget) + 1 if n else 1
    max_events = int(n * (chunks + 6) * 6 + 10_000)
    lay_f = np.array([front_par.tp, front_par.pp, front_par.ep, front_par.attention_dp], float)
    lay_b = np.array([back_par.tp, back_par.pp, back_par.ep, back_par.attention_dp], float)
    status = L.simulate_loop(
        *loop_pools(front_ctx, lay_f, back_ctx, lay_b),
        n_front,
        n_back,
        sched,
        graphs,
        clients,
        arrival,
        r_isl,
        r_osl,
        n,
        lo,
        max_events,
        t_first,
        t_done,
        order,
        stats,
    )
    done = order >= 0
    completed = int(done.sum())
    summary = np.zeros(8)
    m = L.summarise(arrival, t_first, t_done, r_osl, order, lo, n, summary)
    summary[0:4] += overhead_ms  # outside the engine loop: shifts every TTFT alike
    ok = status == L.OK and completed == n and m > 0
    reason = None
    if status == L.NO_FIT:
        reason = "a request cannot be admitted even on an empty worker: its KV does not fit"
    elif status == L.EVENT_LIMIT:
        reason = "the simulation did not finish within its event limit"
    fin = t_done >= 0
    ttft_each = np.where(fin, t_first - arrival + overhead_ms, np.nan)
    tpot_each = np.where(fin & (r_osl > 1), (t_done - t_first) / np.maximum(r_osl - 1, 1), np.nan)
    span = float(stats[L.T_SPAN])
    end = float(stats[L.T_END])
    start = float(arrival[order[lo]]) if completed > lo else 0.0
    per_rank = n_back if n_back > 0 else n_front
    running_slot = L.T_RUNNING_BACK if n_back > 0 else L.T_RUNNING
    t0 = float(arrival.min()) if n else 0.0
    measured_ms = max(end - t0, 1e-9)
    requests_per_s = 1e3 * completed / measured_ms if lo == 0 else 1e3 * m / max(end - start, 1e-9)
    tokens_per_s = 1e3 * float(stats[L.T_TOKENS]) / measured_ms
    if lo > 0 and completed > lo:
        # open loop: rates over the steady window, from the first measured completion to the
        # last arrival, so that neither the filling nor the drain after the arrivals end counts;
        # to the run's end where the measured completions start only after the last arrival
        # (an overload: the queue keeps the workers busy until it empties)
        w0, w1 = float(t_done[order[lo]]), float(arrival[-1])
        if w1 <= w0:
            w1 = end
        steady = fin & (t_done >= w0) & (t_done <= w1)
        if w1 > w0 and steady.any():
            requests_per_s = 1e3 * float(steady.sum()) / (w1 - w0)
            tokens_per_s = 1e3 * float(r_osl[steady].sum()) / (w1 - w0)
    return ServingRun(
        ok=ok,
        reason=reason,
        load=load.name,
        ttft_ms=Percentiles(*map(float, summary[0:4])) if m else NO_PERCENTILES,
        tpot_ms=Percentiles(*map(float, summary[4:8])) if m else NO_PERCENTILES,
        requests_per_s=requests_per_s,
        output_tokens_per_s=tokens_per_s,
        running=float(stats[running_slot]) / span / per_rank if span > 0 else 0.0,
        queued=float(stats[L.T_WAITING]) / span if span > 0 else 0.0,
        peak_running=float(stats[L.T_PEAK_RUNNING]),
        preemptions=int(stats[L.T_PREEMPTIONS]),
        measured_requests=m,
        duration_s=measured_ms / 1e3,
        ttft_ms_each=ttft_each,
        tpot_ms_each=tpot_each,
    )


LoopPools = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
]  # fmt: skip


def loop_pools(
    front: PerfContext, lay_f: np.ndarray, back: PerfContext, lay_b: np.ndarray
) -> LoopPools:
    """``_loop.simulate_loop``'s leading arguments: the front workers' ``(mv, hv, cg, cp, cd)``
    and layout ``lay_f`` = [tp, pp, ep, attention_dp], then the decode workers' ``(hv, cg, cp,
    cd)`` and layout ``lay_b`` (one model for both)."""
    return (*front.kernel_args, lay_f, *back.kernel_args[1:], lay_b)


def scheduler_vector(sched: SchedulerSettings) -> np.ndarray:
    """``sched`` as the kernel's vector for one aggregated pool (capacities left at 0)."""
    return _sched_vector(sched, sched, 0.0, 0.0)


def graphs_for(ctx: PerfContext, sched: SchedulerSettings) -> np.ndarray:
    """The captured decode batch sizes the kernel pads to (none without CUDA graphs)."""
    return _graphs(ctx, sched)


def _graphs(ctx: PerfContext, sched: SchedulerSettings) -> np.ndarray:
    if not ctx.engine.decode_cuda_graphs:
        return np.zeros(0)
    return np.array(sched.graphs_up_to(), dtype=np.float64)


def _one_request_ms(
    ctx: PerfContext, par: Parallelism, isl: float, osl: float, batch: float
) -> float:
    """Prefill of one prompt plus ``osl`` decode steps at ``batch``: a request's duration."""
    row, scratch = np.zeros(4), np.zeros(4)
    lead = ctx.worker_args(par.tp, par.pp, par.ep, par.attention_dp)
    pf, _ = step_ms(*lead, 1.0, isl, 0.0, 0.0, 0.0, row, scratch)
    dc, _ = step_ms(*lead, 0.0, 0.0, 0.0, batch, isl + osl / 2, row, scratch)
    return float(pf + osl * dc)


def simulate_agg(
    ctx: PerfContext,
    par: Parallelism,
    sched: SchedulerSettings,
    load: Load,
    isl: np.ndarray,
    osl: np.ndarray,
    workers: int = 1,
    prefix_hit: float = 0.0,
    request_overhead_ms: float = 0.0,
) -> ServingRun:
    """``workers`` aggregated workers of layout ``par`` under ``load``; request lengths cycle
    through ``isl``/``osl`` (ignored for a ``Trace``). Clients and open-loop arrivals are spread
    over the ``workers x attention_dp`` ranks in turn."""
    ctx = ctx.with_graph_limit(sched.cuda_graph_max_bs)
    ranks = workers * par.attention_dp
    clients = load.clients if isinstance(load, ClosedLoop) else sched.max_num_seqs * ranks
    per_rank = max(1, math.ceil(clients / ranks))
    step_tokens = float(sched.max_num_batched_tokens)
    if not sched.enable_chunked_prefill:
        lengths = load.isl if isinstance(load, Trace) else isl
        step_tokens = max(step_tokens, float(np.max(lengths)))
    cap = kv_capacity(ctx, par, sched, step_tokens, float(min(per_rank, sched.max_num_seqs)))
    s = _sched_vector(sched, sched, cap, cap)
    s[L.S_PREFIX_HIT] = prefix_hit
    spread = _one_request_ms(
        ctx, par, float(np.mean(isl)), float(np.mean(osl)), float(min(per_rank, sched.max_num_seqs))
    )
    return _run(
        ctx, par, ranks, ctx, par, 0, s, _graphs(ctx, sched), load, isl, osl, spread,
        request_overhead_ms,
    )  # fmt: skip


def simulate_disagg(
    prefill: Pool,
    decode: Pool,
    load: Load,
    isl: np.ndarray,
    osl: np.ndarray,
    link_bytes_per_s: float,
    prefix_hit: float = 0.0,
    request_overhead_ms: float = 0.0,
) -> ServingRun:
    """A prefill pool feeding a decode pool under ``load``; each prompt's KV crosses a link of
    ``link_bytes_per_s`` per GPU (``kvtransfer.transfer``; its non-overlapped tail delays the
    first token)."""
    p, d = prefill.par, decode.par
    pc = prefill.ctx.with_graph_limit(prefill.sched.cuda_graph_max_bs)
    dc = decode.ctx.with_graph_limit(decode.sched.cuda_graph_max_bs)
    mean_isl = float(np.mean(isl if not isinstance(load, Trace) else load.isl))
    cap_f = kv_capacity(
        pc,
        p,
        prefill.sched,
        float(prefill.sched.max_num_batched_tokens),
        float(prefill.sched.max_num_seqs),
    )
    cap_b = kv_capacity(
        dc, d, decode.sched, float(decode.sched.max_num_seqs), float(decode.sched.max_num_seqs)
    )
    s = _sched_vector(prefill.sched, decode.sched, cap_f, cap_b)
    # prefill workers reserve prompts only; their admission follows the decode rule's family
    prompt_ms = _one_request_ms(pc, p, mean_isl, 0.0, 1.0)
    kv_ms, _ = transfer(
        pc.mv,
        pc.hv,
        mean_isl,
        1.0,
        float(p.tp),
        float(p.pp),
        float(p.attention_dp),
        prompt_ms,
        0.0,
        link_bytes_per_s,
    )
    s[L.S_TRANSFER_MS] = kv_ms
    s[L.S_PREFIX_HIT] = prefix_hit
    spread = _one_request_ms(dc, d, mean_isl, float(np.mean(osl)), float(decode.sched.max_num_seqs))
    return _run(
        pc,
        p,
        prefill.workers * p.attention_dp,
        dc,
        d,
        decode.workers * d.attention_dp,
        s,
        _graphs(dc, decode.sched),
        load,
        isl,
        osl,
        spread,
        request_overhead_ms,
    )


def replay_agg(
    ctx: PerfContext,
    par: Parallelism,
    sched: SchedulerSettings,
    arrival_s: np.ndarray,
    isl: np.ndarray,
    osl: np.ndarray,
    workers: int = 1,
    request_overhead_ms: float = REQUEST_OVERHEAD_MS["agg"],
) -> ServingRun:
    """Trace replay on ``workers`` aggregated workers: per-request TTFT/TPOT in
    ``ttft_ms_each``/``tpot_ms_each`` (input order); TTFT includes the calibrated per-request
    overhead unless ``request_overhead_ms`` says otherwise."""
    trace = Trace(
        np.asarray(arrival_s, np.float64), np.asarray(isl, np.float64), np.asarray(osl, np.float64)
    )
    return simulate_agg(
        ctx,
        par,
        sched,
        trace,
        trace.isl,
        trace.osl,
        workers,
        request_overhead_ms=request_overhead_ms,
    )
