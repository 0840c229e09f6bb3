"""The serving and sweep kernels against plain-Python references, on random inputs.

``tests/unit/test_kernel_references.py`` holds the references of the step model and of memory
(read from the catalog dataclasses, not the packed vectors); this file builds on them (imported,
not copied: ``tests/`` has no ``__init__.py``, so pytest puts this folder on ``sys.path``) for the
kernels above them:

* ``serving.phases.prefill_many`` / ``decode_many``: every output of every candidate, at 1e-9.
* ``serving.kvtransfer.transfer`` / ``transfer_many``: the module docstring's equations, at 1e-9.
* ``serving.queueing.max_utilisation_many``: a two-level grid scan of the utilisation.
* ``serving.aggregated.simulate_agg``: an independent simulation of the engine loop, written
  from the module docstring with request objects. It runs every iteration one at a time at the
  exact mean context; with ``skip_runs`` it integrates decode-only runs at the context of their
  midpoint as the kernel does, and must then agree at 1e-9. One iteration at a time it differs
  only by that integration (step time is not linear in the context), within a tolerance below.
  The step time itself is the compiled ``perf.kernels.step_ms`` for speed (a simulation takes
  thousands of steps); ``test_kernel_references`` compares it with its own reference.
* ``search.aggsweep.sweep_layout``: a Python loop over chunks and concurrencies calling the
  simulation kernel directly plus the documented M/D/1 TTFT adjustment, at 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_kernel_references import (
    Hw,
    close,
    ctx_for,
    pow2_upto,
    ref_kv_capacity,
    ref_memory_bytes,
    ref_step_ms,
    ref_wait_ms,
    setups,
)

from planner.catalog import ModelSpec, default_gpus, default_models, load_engine
from planner.perf import kernels as K
from planner.perf.memory import kv_capacity_tokens
from planner.perf.params import PerfContext
from planner.search.aggsweep import (
    R_CHUNK,
    R_REQUESTS_PER_S,
    R_TOKENS_PER_S,
    R_TPOT,
    R_TTFT,
    R_USERS,
    ROW_COLUMNS,
    sweep_layout,
)
from planner.serving import aggregated as A
from planner.serving.kvtransfer import TRANSFER_LATENCY_MS, transfer, transfer_many
from planner.serving.phases import PREFILL_CHUNK_TOKENS, decode_many, prefill_many
from planner.serving.queueing import MAX_UTILISATION, max_utilisation_many

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
FEW = settings(SETTINGS, max_examples=30)

# simulate_agg vs the same loop run one iteration at a time. Step time is nearly linear in the
# context over one decode run, so the kernel's midpoint integration is very close: over 2,000
# random cases in the ranges of ``sim_cases`` the worst relative difference of tokens/s, TTFT or
# TPOT was 3.1e-6 (9e-6 with prompts to 32k tokens, answers to 2,000, 64 clients). A scheduling
# difference (one iteration too many or too few, a wrong admission) moves them by 1e-3 or more.
SIM_REL = 1e-4


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


# ------------------------------------------------------------------------------------------------
# Random candidates: one model, GPU, precision and engine; several layouts and batches


def layouts_for(m: ModelSpec) -> st.SearchStrategy[tuple[float, float, float, float]]:
    """A parallelism valid for the model (the rules of ``test_kernel_references.setups``)."""

    @st.composite
    def one(draw) -> tuple[float, float, float, float]:
        tp = draw(st.sampled_from([t for t in pow2_upto(64) if m.num_heads % t == 0]))
        pp = draw(st.sampled_from([p for p in (1, 2, 3, 4, 8) if p <= m.num_layers]))
        dp, ep = 1, 1
        if m.is_moe:
            dp = draw(st.sampled_from([1, 2, 4, 8]))
            ep = draw(
                st.sampled_from(
                    [e for e in pow2_upto(tp * dp) if m.num_experts % e == 0 and (tp * dp) % e == 0]
                )
            )
        return float(tp), float(pp), float(ep), float(dp)

    return one()


@st.composite
def candidates(draw) -> tuple[ModelSpec, Hw, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    m, hw, *first = draw(setups())
    more = draw(st.lists(layouts_for(m), min_size=0, max_size=5))
    lay = np.array([first, *more], dtype=np.float64)
    return m, hw, lay[:, 0].copy(), lay[:, 1].copy(), lay[:, 2].copy(), lay[:, 3].copy()


def batches(n: int) -> st.SearchStrategy[np.ndarray]:
    return st.lists(st.integers(1, 512), min_size=n, max_size=n).map(
        lambda b: np.array(b, dtype=np.float64)
    )


def assert_fits(got: bool, cap: float, need: float) -> None:
    """``cap >= need``, unless the two are equal to rounding (kernel and reference may differ)."""
    if abs(cap - need) > 1e-9 * max(abs(cap), abs(need), 1.0):
        assert bool(got) == (cap >= need), (got, cap, need)


# ------------------------------------------------------------------------------------------------
# serving.phases


def ref_prefill(m, hw, cal, tp, pp, ep, dp, batch, isl, prefix_hit):
    """(ttft_ms, prompts/s per worker, bytes per GPU, KV capacity, KV tokens needed, per-layer
    row) of a prefill worker:
    ``batch`` prompts split over the DP ranks; with PP a prompt passes every stage in turn,
    unless the engine runs a chunked pipeline of 8192-token micro-chunks."""
    seqs = math.ceil(batch / dp)
    new, past = isl * (1 - prefix_hit), isl * prefix_hit
    lat, stage, row = ref_step_ms(m, hw, cal, tp, pp, ep, dp, seqs, new, past, 0.0, 0.0)
    overhead = hw.engine.step_overhead_ms
    if pp > 1 and hw.engine.chunked_pipeline_prefill:
        micro_chunks = max(pp, math.ceil(seqs * new / PREFILL_CHUNK_TOKENS))
        ttft = stage * (1 + (pp - 1) / micro_chunks) + overhead
    else:
        ttft = lat
    rate = 1e3 * batch / (stage + overhead)  # one batch leaves the pipeline every stage
    mem = ref_memory_bytes(m, hw, tp, pp, ep, dp, seqs * new, seqs, seqs * isl)
    cap = ref_kv_capacity(m, hw, tp, pp, ep, dp, seqs * new, seqs)
    return ttft, rate, mem, cap, seqs * isl, row


def ref_decode(m, hw, cal, tp, pp, ep, dp, batch, context):
    """(tpot_ms, tokens/s per worker, bytes per GPU, capacity, need, per-layer row): ``pp``
    micro-batches in flight, a token waits for every stage of its micro-batch."""
    seqs = math.ceil(batch / dp)
    micro = math.ceil(seqs / pp)
    lat, _, row = ref_step_ms(m, hw, cal, tp, pp, ep, dp, 0.0, 0.0, 0.0, micro, context)
    mem = ref_memory_bytes(m, hw, tp, pp, ep, dp, micro, micro, seqs * context)
    cap = ref_kv_capacity(m, hw, tp, pp, ep, dp, micro, micro)
    return lat, 1e3 * batch / lat, mem, cap, seqs * context, row


def phase_outputs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n, np.bool_), np.zeros((n, 4))


@SETTINGS
@given(
    cand=candidates(),
    data=st.data(),
    isl=st.integers(1, 32768),
    prefix_hit=st.sampled_from([0.0, 0.0, 0.25, 0.5, 0.9]),
)
def test_prefill_many_matches_reference(cand, data, isl, prefix_hit) -> None:
    m, hw, tp, pp, ep, dp = cand
    c = ctx_for(m, hw)
    batch = data.draw(batches(tp.shape[0]))
    ttft, rate, mem, fits, per = phase_outputs(tp.shape[0])
    cal = c.cal
    prefill_many(
        c.mv,
        c.hv,
        cal.gemm,
        cal.attn_prefill,
        cal.attn_decode,
        tp,
        pp,
        ep,
        dp,
        batch,
        float(isl),
        prefix_hit,
        ttft,
        rate,
        mem,
        fits,
        per,
    )
    for i in range(tp.shape[0]):
        r_ttft, r_rate, r_mem, r_cap, r_need, r_row = ref_prefill(
            m, hw, cal, tp[i], pp[i], ep[i], dp[i], batch[i], float(isl), prefix_hit
        )
        where = (m.name, hw.gpu.name, tp[i], pp[i], ep[i], dp[i], batch[i], isl, prefix_hit)
        assert close(ttft[i], r_ttft), (where, ttft[i], r_ttft)
        assert close(rate[i], r_rate), (where, rate[i], r_rate)
        assert close(mem[i], r_mem), (where, mem[i], r_mem)
        assert_fits(fits[i], r_cap, r_need)
        assert all(close(float(a), b) for a, b in zip(per[i], r_row, strict=True)), where


@SETTINGS
@given(cand=candidates(), data=st.data(), context=st.floats(1.0, 131072.0))
def test_decode_many_matches_reference(cand, data, context) -> None:
    m, hw, tp, pp, ep, dp = cand
    c = ctx_for(m, hw)
    batch = data.draw(batches(tp.shape[0]))
    tpot, rate, mem, fits, per = phase_outputs(tp.shape[0])
    cal = c.cal
    decode_many(
        c.mv,
        c.hv,
        cal.gemm,
        cal.attn_prefill,
        cal.attn_decode,
        tp,
        pp,
        ep,
        dp,
        batch,
        context,
        tpot,
        rate,
        mem,
        fits,
        per,
    )
    for i in range(tp.shape[0]):
        r_tpot, r_rate, r_mem, r_cap, r_need, r_row = ref_decode(
            m, hw, cal, tp[i], pp[i], ep[i], dp[i], batch[i], context
        )
        where = (m.name, hw.gpu.name, tp[i], pp[i], ep[i], dp[i], batch[i], context)
        assert close(tpot[i], r_tpot), (where, tpot[i], r_tpot)
        assert close(rate[i], r_rate), (where, rate[i], r_rate)
        assert close(mem[i], r_mem), (where, mem[i], r_mem)
        assert_fits(fits[i], r_cap, r_need)
        assert all(close(float(a), b) for a, b in zip(per[i], r_row, strict=True)), where


# ------------------------------------------------------------------------------------------------
# serving.kvtransfer


def ref_kv_bytes_per_request(m: ModelSpec, hw: Hw, isl: float) -> float:
    """isl tokens x the model's cache bytes per token at that context (full layers per token,
    windowed layers up to the window, linear state and indexer keys: ModelSpec's own rule)."""
    return isl * m.kv_bytes_per_token(hw.kvb, isl) if isl > 0 else 0.0


def ref_senders(m: ModelSpec, tp: float, pp: float, dp: float) -> float:
    """GPUs holding distinct KV shards, per DP rank: min(tp, kv_heads) a stage (GQA), one (MLA)."""
    per_stage = 1 if m.attention == "mla" else min(tp, m.num_kv_heads)
    return per_stage * pp * dp


def ref_transfer(m, hw, isl, batch, tp, pp, dp, compute_ms, requests_per_s, link):
    """Layer-by-layer transfer overlapped with the prefill: TTFT pays the set-up plus the last
    layer's share, or all that remains when the compute ends, whichever is larger."""
    per_request = ref_kv_bytes_per_request(m, hw, isl)
    senders = ref_senders(m, tp, pp, dp)
    total_ms = 1e3 * per_request * batch / (senders * link)
    tail = max(total_ms - compute_ms, total_ms / m.num_layers)
    return TRANSFER_LATENCY_MS + tail, per_request * requests_per_s / senders


@SETTINGS
@given(
    cand=candidates(),
    data=st.data(),
    isl=st.integers(1, 131072),
    link=st.sampled_from([25e9, 50e9, 100e9, 450e9, 900e9]),
    rate=st.floats(0.0, 200.0),
)
def test_transfer_and_transfer_many_match_reference(cand, data, isl, link, rate) -> None:
    m, hw, tp, pp, _, dp = cand
    c = ctx_for(m, hw)
    n = tp.shape[0]
    batch = data.draw(batches(n))
    compute = np.array(data.draw(st.lists(st.floats(0.0, 5000.0), min_size=n, max_size=n)))
    tail, max_rate = np.zeros(n), np.zeros(n)
    transfer_many(c.mv, c.hv, float(isl), batch, tp, pp, dp, compute, link, tail, max_rate)
    for i in range(n):
        args = (float(isl), batch[i], tp[i], pp[i], dp[i], compute[i])
        got_tail, got_egress = transfer(c.mv, c.hv, *args, rate, link)
        want_tail, want_egress = ref_transfer(m, hw, *args, rate, link)
        assert close(got_tail, want_tail), (m.name, args, got_tail, want_tail)
        assert close(got_egress, want_egress), (m.name, args, got_egress, want_egress)
        assert close(tail[i], want_tail), (m.name, args, tail[i], want_tail)
        # the most requests/s before the shard holders saturate the link
        want_rate = (
            ref_senders(m, tp[i], pp[i], dp[i]) * link / ref_kv_bytes_per_request(m, hw, float(isl))
        )
        assert close(max_rate[i], want_rate), (m.name, args, max_rate[i], want_rate)
        # at that rate each shard holder sends exactly the link's bandwidth
        _, egress = transfer(c.mv, c.hv, *args, want_rate, link)
        assert close(egress, link)


# ------------------------------------------------------------------------------------------------
# serving.queueing


def ref_max_utilisation_bracket(
    compute: float, service: float, target: float, p: float
) -> tuple[float, float]:
    """Scan the utilisation on a grid of 1e-3, then of 1e-6 inside the last feasible cell:
    (the largest feasible grid point, the next grid point: infeasible, or 0.999)."""

    def ok(u: float) -> bool:
        return compute + ref_wait_ms(u, service, p) <= target

    lo, step = 0.0, 1e-3
    for _ in range(2):
        u = lo
        while u + step <= MAX_UTILISATION and ok(u + step):
            u += step
        lo = u
        if u + step > MAX_UTILISATION:
            return lo, MAX_UTILISATION
        if step < 1e-3:
            return lo, lo + step
        step = 1e-6
    raise AssertionError("unreachable")


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(
            st.floats(0.0, 2000.0),  # compute
            st.floats(1.0, 5000.0),  # service
            st.booleans(),  # ok
        ),
        min_size=1,
        max_size=6,
    ),
    target=st.floats(1.0, 4000.0),
    p=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
)
def test_max_utilisation_many_matches_a_grid_scan(rows, target, p) -> None:
    compute = np.array([r[0] for r in rows])
    service = np.array([r[1] for r in rows])
    ok = np.array([r[2] for r in rows], dtype=np.bool_)
    out = np.full(len(rows), -1.0)
    max_utilisation_many(compute, service, ok, target, p, out)
    for i in range(len(rows)):
        u = out[i]
        if not ok[i] or compute[i] > target:
            assert u == 0.0, (rows[i], u)
            continue
        lo, hi = ref_max_utilisation_bracket(compute[i], service[i], target, p)
        assert compute[i] + ref_wait_ms(u, service[i], p) <= target * (1 + 1e-9), (rows[i], u)
        if hi == MAX_UTILISATION and compute[i] + ref_wait_ms(hi, service[i], p) <= target:
            assert u == MAX_UTILISATION, (rows[i], u)
        else:
            # bisection to 2^-40 lands between the last feasible and first infeasible grid point
            assert lo - 1e-9 <= u <= hi + 1e-9, (rows[i], u, lo, hi)


# ------------------------------------------------------------------------------------------------
# serving.aggregated: an independent step-by-step simulation


@dataclass
class Request:
    isl: float
    osl: float
    arrived_ms: float
    counted: bool  # sent after the start (the initial population is never measured)
    state: str = "waiting"  # waiting -> prefill (admitted) -> decode
    prefilled: float = 0.0  # prompt tokens in the KV cache (cached prefix included)
    generated: float = 0.0  # output tokens emitted
    first_token_ms: float = 0.0


@dataclass
class SimResult:
    ttft_ms: list[float]
    tpot_ms: list[float]
    tokens_per_s: float
    requests_per_s: float
    running: float
    queued: float
    iterations: int


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default)."""
    s = sorted(values)
    pos = q / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


StepFn = Callable[[float, float, float, float, float], float]


def ref_simulate_agg(
    step: StepFn,
    users: int,
    isl_cycle: list[float],
    osl_cycle: list[float],
    prefix_hit: float,
    chunk: float,
    kv_capacity: float,
    max_batch: int,
    warm: int,
    measure: int,
    skip_runs: bool = False,
) -> SimResult | None:
    """Closed-loop continuous batching on one attention-DP rank (None: nothing can run).

    ``step(pf_seqs, pf_new_mean, pf_past_mean, dc_seqs, dc_ctx_mean)`` is one iteration's ms.
    With ``skip_runs`` a decode-only iteration is repeated up to the next completion at once,
    timed at the mean context of the run's midpoint (the kernel's shortcut); otherwise every
    iteration is its own step at its exact mean context.
    """
    sent = 0

    def new_request(now: float, counted: bool) -> Request:
        nonlocal sent
        k = sent % len(isl_cycle)
        sent += 1
        isl = float(isl_cycle[k])
        return Request(
            isl, float(osl_cycle[k]), now, counted, prefilled=math.floor(isl * prefix_hit)
        )

    def admitted() -> list[Request]:
        return [r for r in clients if r.state != "waiting"]

    def fits(r: Request) -> bool:
        held = admitted()
        return sum(a.isl + a.osl for a in held) + r.isl + r.osl <= kv_capacity and (
            len(held) < max_batch
        )

    # staggered start: client i is i/users of the way through its answer (when it fits at once)
    clients: list[Request] = []
    for i in range(users):
        r = new_request(0.0, False)
        if r.osl > 1 and fits(r):
            r.state, r.prefilled = "decode", r.isl
            r.generated = 1 + math.floor(i * (r.osl - 1) / users)
        clients.append(r)

    t = tokens = 0.0
    t0 = tokens0 = busy_running = busy_queued = 0.0
    completions = iterations = 0
    ttfts: list[float] = []
    tpots: list[float] = []
    while len(ttfts) < measure:
        iterations += 1
        assert iterations < 2_000_000, "reference simulation does not end"
        # FCFS admission: the oldest waiting request, while it fits (ties: lowest client index)
        while True:
            waiting = sorted(
                (r for r in clients if r.state == "waiting"), key=lambda r: r.arrived_ms
            )
            if not waiting or not fits(waiting[0]):
                break
            waiting[0].state = "prefill"
        waiting = [r for r in clients if r.state == "waiting"]
        decoding = [r for r in clients if r.state == "decode"]
        prefilling = sorted(
            (r for r in clients if r.state == "prefill"), key=lambda r: r.arrived_ms
        )
        if not decoding and not prefilling:
            return None
        # this iteration's work: one token per decoding sequence, prompt chunks oldest first
        dc_seqs = len(decoding)
        chunks: list[tuple[Request, float]] = []
        if prefilling:
            if chunk > 0:
                budget = chunk - dc_seqs
            else:  # no chunking: a prefill-only iteration of every admitted prompt
                budget, dc_seqs = math.inf, 0
            for r in prefilling:
                if budget <= 0:
                    break
                take = min(r.isl - r.prefilled, budget)
                chunks.append((r, take))
                budget -= take
        ctx = sum(r.isl + r.generated for r in decoding) / len(decoding) if decoding else 0.0
        repeat = 1.0
        if skip_runs and not chunks:
            repeat = max(min(r.osl - r.generated for r in decoding), 1.0)
            ctx += 0.5 * (repeat - 1)
        n_pf = float(len(chunks))
        new = sum(take for _, take in chunks) / n_pf if chunks else 0.0
        past = sum(r.prefilled for r, _ in chunks) / n_pf if chunks else 0.0
        dt = step(n_pf, new, past, float(dc_seqs), ctx) * repeat
        t += dt
        busy_running += dt * (len(decoding) + len(prefilling))
        busy_queued += dt * len(waiting)
        if dc_seqs:
            for r in decoding:
                r.generated += repeat
            tokens += dc_seqs * repeat
        for r, take in chunks:
            r.prefilled += take
            if r.prefilled >= r.isl:  # the prompt's last chunk emits the first token
                r.state, r.generated, r.first_token_ms = "decode", 1.0, t
                tokens += 1
        # completions, in client order; each client sends its next request at once
        for i, r in enumerate(clients):
            if r.state != "decode" or r.generated < r.osl:
                continue
            completions += 1
            if r.counted and completions > warm and len(ttfts) < measure:
                ttfts.append(r.first_token_ms - r.arrived_ms)
                tpots.append((t - r.first_token_ms) / (r.osl - 1) if r.osl > 1 else 0.0)
            if completions == warm:  # the measurement window opens
                t0, tokens0, busy_running, busy_queued = t, tokens, 0.0, 0.0
            clients[i] = new_request(t, True)
    span = t - t0
    if span <= 0:
        return None
    tokens_per_s = 1e3 * (tokens - tokens0) / span
    return SimResult(
        ttfts,
        tpots,
        tokens_per_s,
        tokens_per_s / (sum(osl_cycle) / len(osl_cycle)),
        busy_running / span,
        busy_queued / span,
        iterations,
    )


def kernel_step(c: PerfContext, tp: float, pp: float, ep: float, dp: float) -> StepFn:
    row, scratch = np.zeros(4), np.zeros(4)
    cal = c.cal

    def step(pf_seqs: float, new: float, past: float, dc_seqs: float, ctx: float) -> float:
        lat, _ = K.step_ms(
            c.mv,
            c.hv,
            cal.gemm,
            cal.attn_prefill,
            cal.attn_decode,
            tp,
            pp,
            ep,
            dp,
            pf_seqs,
            new,
            past,
            dc_seqs,
            ctx,
            row,
            scratch,
        )
        return float(lat)

    return step


@dataclass(frozen=True)
class SimCase:
    m: ModelSpec
    hw: Hw
    layout: tuple[float, float, float, float]
    users: int
    isl: list[float]
    osl: list[float]
    prefix_hit: float
    chunk: float
    kv_capacity: float
    max_batch: int
    warm: int
    measure: int

    def label(self) -> str:
        tp, pp, ep, dp = self.layout
        cap = "inf" if self.kv_capacity > 1e11 else f"{self.kv_capacity:.0f}"
        return (
            f"{self.m.name} {self.hw.gpu.name} tp{tp:g}pp{pp:g}ep{ep:g}dp{dp:g} "
            f"users={self.users} isl={self.isl} osl={self.osl} hit={self.prefix_hit} "
            f"chunk={self.chunk:g} cap={cap} max_batch={self.max_batch} "
            f"warm={self.warm} measure={self.measure}"
        )


@st.composite
def sim_cases(draw) -> SimCase:
    m, hw, *layout = draw(setups())
    users = draw(st.integers(1, 12))
    # prompts of at most 8 chunks: the kernel gives up after 200 events per completion, which
    # cuts the measurement short when a prompt takes more than about 200 chunks
    n_mix = draw(st.integers(1, 3))
    isl = [float(draw(st.integers(16, 2000))) for _ in range(n_mix)]
    # now and then a one-token answer (finished by its prefill step)
    osl = [
        1.0 if draw(st.integers(0, 9)) == 0 else float(draw(st.integers(2, 200)))
        for _ in range(n_mix)
    ]
    need = max(i + o for i, o in zip(isl, osl, strict=True))
    # no memory pressure, or a cache holding only some of the clients (requests queue)
    pressure = draw(st.booleans())
    cap = need * draw(st.floats(1.0, max(1.0, users - 0.5))) if pressure else 1e12
    max_batch = draw(st.sampled_from([1024, 1024, draw(st.integers(1, 12))]))
    return SimCase(
        m,
        hw,
        (layout[0], layout[1], layout[2], layout[3]),
        users,
        isl,
        osl,
        draw(st.sampled_from([0.0, 0.0, 0.5])),
        float(draw(st.sampled_from([0, 256, 2048]))),
        cap,
        max_batch,
        draw(st.integers(users // 2, users + 8)),
        draw(st.integers(8, 40)),
    )


def run_kernel(case: SimCase, c: PerfContext) -> np.ndarray:
    out = np.full(A.AGG_SLOTS, -1.0)
    cal = c.cal
    A.simulate_agg(
        c.mv,
        c.hv,
        cal.gemm,
        cal.attn_prefill,
        cal.attn_decode,
        *case.layout,
        case.users,
        np.array(case.isl),
        np.array(case.osl),
        case.prefix_hit,
        case.chunk,
        case.kv_capacity,
        case.max_batch,
        case.warm,
        case.measure,
        out,
    )
    return out


def run_reference(case: SimCase, c: PerfContext, skip_runs: bool) -> SimResult | None:
    return ref_simulate_agg(
        kernel_step(c, *case.layout),
        case.users,
        case.isl,
        case.osl,
        case.prefix_hit,
        case.chunk,
        case.kv_capacity,
        case.max_batch,
        case.warm,
        case.measure,
        skip_runs,
    )


def sim_metrics(r: SimResult) -> dict[int, float]:
    mean = sum(r.ttft_ms) / len(r.ttft_ms), sum(r.tpot_ms) / len(r.tpot_ms)
    return {
        A.A_TTFT_MEAN: mean[0],
        A.A_TTFT_P50: percentile(r.ttft_ms, 50),
        A.A_TTFT_P90: percentile(r.ttft_ms, 90),
        A.A_TTFT_P99: percentile(r.ttft_ms, 99),
        A.A_TPOT_MEAN: mean[1],
        A.A_TPOT_P50: percentile(r.tpot_ms, 50),
        A.A_TPOT_P90: percentile(r.tpot_ms, 90),
        A.A_TPOT_P99: percentile(r.tpot_ms, 99),
        A.A_TOKENS_PER_S: r.tokens_per_s,
        A.A_REQUESTS_PER_S: r.requests_per_s,
        A.A_RUNNING: r.running,
        A.A_QUEUED: r.queued,
    }


@FEW
@given(case=sim_cases())
def test_simulate_agg_equals_the_reference_with_the_same_decode_run_integration(case) -> None:
    """With the kernel's shortcut the reference must reproduce it to rounding, every output."""
    c = ctx_for(case.m, case.hw)
    out = run_kernel(case, c)
    ref = run_reference(case, c, skip_runs=True)
    if ref is None:
        assert out[A.A_OK] == 0.0, case.label()
        return
    assert out[A.A_OK] == 1.0, case.label()
    for slot, want in sim_metrics(ref).items():
        assert math.isclose(out[slot], want, rel_tol=1e-9, abs_tol=1e-9), (
            case.label(),
            slot,
            out[slot],
            want,
        )


def test_simulate_agg_is_close_to_a_step_by_step_simulation() -> None:
    """Every iteration simulated one at a time at its exact mean context: the kernel's
    decode-run integration (context at the run's midpoint) moves the figures by under SIM_REL."""
    worst: dict[str, tuple[float, str]] = {}

    @FEW
    @given(case=sim_cases())
    def check(case: SimCase) -> None:
        c = ctx_for(case.m, case.hw)
        out = run_kernel(case, c)
        ref = run_reference(case, c, skip_runs=False)
        if ref is None:
            assert out[A.A_OK] == 0.0, case.label()
            return
        assert out[A.A_OK] == 1.0, case.label()
        want = sim_metrics(ref)
        for name, slot in (
            ("tokens/s", A.A_TOKENS_PER_S),
            ("requests/s", A.A_REQUESTS_PER_S),
            ("mean TTFT", A.A_TTFT_MEAN),
            ("mean TPOT", A.A_TPOT_MEAN),
        ):
            d = rel_diff(float(out[slot]), want[slot])
            if d >= worst.get(name, (-1.0, ""))[0]:
                worst[name] = (d, case.label())
            assert d <= SIM_REL, (name, case.label(), out[slot], want[slot], d)

    check()
    print("simulate_agg vs a step-by-step simulation, worst relative differences:")
    for name, (d, label) in worst.items():
        print(f"  {name}: {d:.2e} ({label})")


def test_simulate_agg_reports_not_ok_when_a_request_can_never_be_admitted() -> None:
    """A request larger than the whole cache, alone (nothing fits) or behind a small one that
    runs first (head-of-line: once the small one finishes nothing can run)."""
    m = default_models().get("llama-3.1-8b")
    hw = Hw(default_gpus().get("h100-sxm"), load_engine("vllm"), "bf16", "bf16")
    c = ctx_for(m, hw)
    for isl, osl in (([5000.0], [100.0]), ([100.0, 5000.0], [50.0, 100.0])):
        for chunk in (0.0, 256.0):
            case = SimCase(m, hw, (1.0, 1.0, 1.0, 1.0), 2, isl, osl, 0.0, chunk, 3000.0, 1024, 2, 8)
            out = run_kernel(case, c)
            assert run_reference(case, c, skip_runs=False) is None
            assert run_reference(case, c, skip_runs=True) is None
            assert out[A.A_OK] == 0.0 and not out[: A.A_OK].any(), (case.label(), list(out))
            print(f"simulate_agg not ok, as the reference: {case.label()}")


# ------------------------------------------------------------------------------------------------
# search.aggsweep


def ref_sweep_layout(
    m, hw, c, tp, pp, ep, dp, chunks, concurrency, isl, osl, hit, max_batch, stop_ms, pct
) -> list[list[float]]:
    """Each chunk budget: grow the concurrency until a request does not fit, the cache holds no
    more clients (requests queued), or TTFT passes the stop; TTFT adds the M/D/1 wait of a
    prompt queue served by one mean prompt's prefill step at the rate the point sustains."""
    prompt_ms, _, _ = ref_step_ms(
        m, hw, c.cal, tp, pp, ep, dp, 1.0, isl.mean() * (1 - hit), isl.mean() * hit, 0.0, 0.0
    )
    slot = {0.5: A.A_TTFT_P50, 0.9: A.A_TTFT_P90, 0.99: A.A_TTFT_P99}[pct] - A.A_TTFT_MEAN
    need = isl.max() + osl.max()
    rows = []
    cal = c.cal
    for chunk in chunks:
        for conc in concurrency:
            users = max(1, math.ceil(conc / dp))
            if users > 2 * max_batch:
                break
            step_tokens = chunk if chunk > 0 else isl.max()
            cap = kv_capacity_tokens(c.mv, c.hv, tp, pp, ep, dp, step_tokens, float(users))
            if cap < need:
                break
            warm, measure = min(users // 2 + 4, 64), max(32, min(users, 128))
            out = np.zeros(A.AGG_SLOTS)
            A.simulate_agg(
                c.mv,
                c.hv,
                cal.gemm,
                cal.attn_prefill,
                cal.attn_decode,
                tp,
                pp,
                ep,
                dp,
                users,
                isl,
                osl,
                hit,
                chunk,
                cap,
                max_batch,
                warm,
                measure,
                out,
            )
            if out[A.A_OK] < 0.5:
                break
            rho = min(out[A.A_REQUESTS_PER_S] * prompt_ms / 1e3, MAX_UTILISATION)
            ttft = out[A.A_TTFT_MEAN] + ref_wait_ms(rho, prompt_ms, pct)
            rows.append(
                [
                    chunk,
                    users * dp,
                    ttft,
                    out[A.A_TPOT_MEAN + slot],
                    out[A.A_TOKENS_PER_S] * dp,
                    out[A.A_REQUESTS_PER_S] * dp,
                ]
            )
            if out[A.A_QUEUED] > 0.5 or ttft > stop_ms:
                break
    return rows


@FEW
@given(
    s=setups(),
    isl=st.lists(st.integers(16, 16384), min_size=1, max_size=3),
    data=st.data(),
    chunks=st.lists(st.sampled_from([0, 256, 2048, 8192]), min_size=1, max_size=3, unique=True),
    hit=st.sampled_from([0.0, 0.0, 0.5]),
    max_batch=st.sampled_from([4, 16, 1024]),
    stop_ms=st.sampled_from([50.0, 500.0, 1e9]),
    pct=st.sampled_from([0.5, 0.9, 0.99]),
)
def test_sweep_layout_matches_simulations_plus_queueing(
    s, isl, data, chunks, hit, max_batch, stop_ms, pct
) -> None:
    m, hw, tp, pp, ep, dp = s
    c = ctx_for(m, hw)
    osl_a = np.array(
        data.draw(st.lists(st.integers(2, 400), min_size=len(isl), max_size=len(isl))), float
    )
    isl_a = np.array(isl, dtype=np.float64)
    chunk_a = np.array(chunks, dtype=np.float64)
    conc = np.array([1, 2, 4, 8, 16, 32, 64], dtype=np.float64)
    rows = np.zeros((chunk_a.shape[0] * conc.shape[0], ROW_COLUMNS))
    cal = c.cal
    n = sweep_layout(
        c.mv,
        c.hv,
        cal.gemm,
        cal.attn_prefill,
        cal.attn_decode,
        tp,
        pp,
        ep,
        dp,
        chunk_a,
        conc,
        isl_a,
        osl_a,
        hit,
        max_batch,
        stop_ms,
        pct,
        rows,
    )
    want = ref_sweep_layout(
        m, hw, c, tp, pp, ep, dp, chunk_a, conc, isl_a, osl_a, hit, max_batch, stop_ms, pct
    )
    print(f"sweep_layout {m.name} {hw.gpu.name} tp{tp:g} pp{pp:g} dp{dp:g}: {n} rows")
    assert n == len(want), (n, len(want))
    for got, ref in zip(rows[:n], want, strict=True):
        for col in (R_CHUNK, R_USERS, R_TTFT, R_TPOT, R_TOKENS_PER_S, R_REQUESTS_PER_S):
            assert close(float(got[col]), ref[col]), (col, list(got), ref)
