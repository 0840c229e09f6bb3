"""The serving and sweep kernels against plain-Python references, on random inputs.

``tests/unit/test_kernel_references.py`` holds the references of the step model and of memory
(read from the catalog dataclasses, not the packed vectors); this file builds on them (imported,
not copied: ``tests/`` has no ``__init__.py``, so pytest puts this folder on ``sys.path``) for the
kernels above them:

* ``serving.phases.prefill_many`` / ``decode_many``: every output of every candidate, at 1e-9;
  ``decode_fits_many`` (the memory check alone) against the same reference.
* ``serving.kvtransfer.transfer`` / ``transfer_many``: the module docstring's equations, at 1e-9.
* ``serving.queueing.max_utilisation_many``: a two-level grid scan of the utilisation.

The engine-loop simulation and the aggregated sweep have theirs in
``test_engine_loop_references.py``.
"""

from __future__ import annotations

import math

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

from pdplanner.planner.catalog import ModelSpec
from pdplanner.planner.perf.params import Layouts
from pdplanner.planner.serving.kvtransfer import TRANSFER_LATENCY_MS, transfer, transfer_many
from pdplanner.planner.serving.phases import (
    PREFILL_CHUNK_TOKENS,
    decode_fits_many,
    decode_many,
    decode_phase,
    prefill_many,
)
from pdplanner.planner.serving.queueing import MAX_UTILISATION, max_utilisation_many

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
    mem = ref_memory_bytes(m, hw, tp, pp, ep, dp, seqs * new, seqs, seqs * isl)
    cap = ref_kv_capacity(m, hw, tp, pp, ep, dp, seqs * new, seqs)
    # a batch in each stage while every stage's KV cache holds them all; fewer in flight,
    # each takes the whole pipeline
    in_flight = min(pp, math.floor(cap / (seqs * isl)))
    if in_flight >= pp:
        rate = 1e3 * batch / (stage + overhead)  # one batch leaves the pipeline every stage
    else:
        rate = 1e3 * batch * max(in_flight, 1) / (lat + overhead)
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


@SETTINGS
@given(cand=candidates(), data=st.data(), context=st.floats(1.0, 131072.0))
def test_decode_fits_many_matches_reference_and_fitting_only_prices_just_those(
    cand, data, context
) -> None:
    """``decode_fits_many`` is ``decode_many``'s memory check; ``decode_phase(fitting_only=True)``
    gives the fitting candidates exactly ``decode_many``'s figures and the others NaN."""
    m, hw, tp, pp, ep, dp = cand
    c = ctx_for(m, hw)
    batch = data.draw(batches(tp.shape[0]))
    fits = np.zeros(tp.shape[0], np.bool_)
    decode_fits_many(c.mv, c.hv, tp, pp, ep, dp, batch, context, fits)
    for i in range(tp.shape[0]):
        seqs = math.ceil(batch[i] / dp[i])
        micro = math.ceil(seqs / pp[i])
        cap = ref_kv_capacity(m, hw, tp[i], pp[i], ep[i], dp[i], micro, micro)
        assert_fits(fits[i], cap, seqs * context)
    lay = Layouts(tp, pp, ep, dp)
    every = decode_phase(c, lay, batch, context)
    some = decode_phase(c, lay, batch, context, fitting_only=True)
    f = every.fits
    print(f"{int(f.sum())} of {f.shape[0]} candidates fit")
    assert np.array_equal(some.fits, f)
    assert np.array_equal(fits, f)
    for name in ("latency_ms", "rate", "memory_bytes", "per_layer_ms"):
        a, b = getattr(some, name), getattr(every, name)
        assert np.array_equal(a[f], b[f]), name
        assert np.isnan(a[~f]).all(), name


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
