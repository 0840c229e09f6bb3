"""The kernel primitives compute what their documented formulas say, and behave like kernels.

Each ``@njit`` kernel is compared with a plain-Python reference written straight from the formulas
in ``pdplanner/planner/perf/opkernels.py``'s docstring, on random shapes and random parameter
vectors drawn inside the calibration's bounds; then a few physical properties are checked on the
H100 fit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplanner.planner.perf import opkernels as ok
from pdplanner.planner.perf.calibration import (
    DECODE_PARAMS,
    GEMM_PARAMS,
    PREFILL_PARAMS,
    Calibration,
    Param,
    load_calibration,
)

H100_BF16_FLOPS_PER_S = 989e12
H100_FP8_FLOPS_PER_S = 1979e12
H100_HBM_BYTES_PER_S = 3.35e12
REL_TOL = 1e-9


# ----------------------------------------------------------------------------- references


def smoothmax_ref(a: float, b: float, s: float) -> float:
    return float((a**s + b**s) ** (1.0 / s))


def gemm_ref(
    m: float, n: float, k: float, elem_bytes: float, peak: float, hbm: float, cal: np.ndarray
) -> float:
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    p = [float(x) for x in (cal[:11] if elem_bytes >= 1.5 else cal[11:22])]
    t_launch, e_mma, e_mem, s, k_tile, n_narrow, narrow_exp, derate, t_derate, t_fill, t_ramp = p
    m_pad = math.ceil(m / 64) * 64
    t_mma = 1000 * 2 * m_pad * n * (k + k_tile) / (peak * e_mma)
    t_compute = t_mma * (1 + derate * t_mma / (t_mma + t_derate))
    nbytes = elem_bytes * (m * k + n * k) + 2 * m * n
    t_stream = 1000 * nbytes / (hbm * e_mem)
    t_memory = t_stream * (1 + (n_narrow / max(n, 768.0)) ** narrow_exp) + t_fill * (
        1 - math.exp(-t_stream / t_ramp)
    )
    return t_launch + smoothmax_ref(t_compute, t_memory, s)


def prefill_ref(
    batch: float,
    new: float,
    past: float,
    heads: float,
    qk: float,
    v: float,
    peak: float,
    cal: np.ndarray,
) -> float:
    if batch <= 0 or new <= 0 or heads <= 0:
        return 0.0
    past = max(past, 0.0)
    n_sm, t_launch, e_work, e_tile, l_tile, s = (float(x) for x in cal)
    pairs = new * (past + (new + 1) / 2)
    t_work = 1000 * 2 * batch * heads * (pairs + new * l_tile) * (qk + v) / (peak * e_work)
    t_tile = 1000 * 2 * 128 * (past + new + l_tile) * (qk + v) * n_sm / (peak * e_tile)
    return t_launch + smoothmax_ref(t_work, t_tile, s)


def decode_ref(
    batch: float,
    ctx: float,
    heads: float,
    kv_heads: float,
    head_dim: float,
    kv_tensors: float,
    kv_bytes: float,
    hbm: float,
    bw_eff: float,
    cal: np.ndarray,
) -> float:
    if batch <= 0 or kv_heads <= 0:
        return 0.0
    ctx = max(ctx, 0.0)
    n_sm, t_launch, e_hbm, u_few, few_exp, t_split, t_fill, t_ramp = (float(x) for x in cal)
    e = bw_eff if bw_eff > 0 else e_hbm
    streams = batch * kv_heads
    nbytes = streams * ctx * head_dim * kv_tensors * kv_bytes + 4 * batch * heads * head_dim
    t_stream = 1000 * nbytes / (hbm * e)
    t = t_launch + t_stream * (1 + (u_few / streams) ** few_exp)
    t += t_fill * (1 - math.exp(-t_stream / t_ramp))
    if streams < 0.8 * n_sm:
        t += t_split
    return t


# ----------------------------------------------------------------------------- strategies


def params_in(spec: tuple[Param, ...]) -> st.SearchStrategy[list[float]]:
    """Parameter vectors drawn log-uniformly inside the fit's bounds."""
    return st.tuples(*(st.floats(math.log(p.lo), math.log(p.hi)) for p in spec)).map(
        lambda logs: [math.exp(x) for x in logs]
    )


sizes = st.floats(1.0, 65536.0)
small_sizes = st.floats(1.0, 256.0)
sm_counts = st.sampled_from([108.0, 132.0, 148.0])


@pytest.fixture(scope="module")
def h100() -> Calibration:
    return load_calibration("h100-sxm")


# ----------------------------------------------------------------------------- kernel == reference


@settings(max_examples=300, deadline=None)
@given(
    m=st.one_of(sizes, st.floats(0.0, 8.0)),
    n=sizes,
    k=sizes,
    elem_bytes=st.sampled_from([2.0, 1.0, 0.5625, 0.5]),
    peak=st.floats(1e14, 1e16),
    hbm=st.floats(5e11, 1e13),
    bf16=params_in(GEMM_PARAMS),
    fp8=params_in(GEMM_PARAMS),
)
def test_gemm_kernel_matches_reference(
    m: float,
    n: float,
    k: float,
    elem_bytes: float,
    peak: float,
    hbm: float,
    bf16: list[float],
    fp8: list[float],
) -> None:
    cal = np.array(bf16 + fp8)
    assert ok.gemm_ms(m, n, k, elem_bytes, peak, hbm, cal) == pytest.approx(
        gemm_ref(m, n, k, elem_bytes, peak, hbm, cal), rel=REL_TOL
    )


@settings(max_examples=300, deadline=None)
@given(
    batch=small_sizes,
    new=sizes,
    past=st.one_of(st.just(0.0), sizes),
    heads=small_sizes,
    kv_heads=small_sizes,
    qk=st.sampled_from([64.0, 128.0, 192.0, 256.0]),
    v=st.sampled_from([64.0, 128.0, 256.0]),
    peak=st.floats(1e14, 1e16),
    n_sm=sm_counts,
    p=params_in(PREFILL_PARAMS),
)
def test_attn_prefill_kernel_matches_reference(
    batch: float,
    new: float,
    past: float,
    heads: float,
    kv_heads: float,
    qk: float,
    v: float,
    peak: float,
    n_sm: float,
    p: list[float],
) -> None:
    cal = np.array([n_sm, *p])
    assert ok.attn_prefill_ms(batch, new, past, heads, kv_heads, qk, v, peak, cal) == (
        pytest.approx(prefill_ref(batch, new, past, heads, qk, v, peak, cal), rel=REL_TOL)
    )


@settings(max_examples=300, deadline=None)
@given(
    batch=small_sizes,
    ctx=st.one_of(st.just(0.0), sizes),
    heads=small_sizes,
    kv_heads=st.floats(1.0, 16.0),
    head_dim=st.sampled_from([64.0, 128.0, 576.0]),
    kv_tensors=st.sampled_from([1.0, 2.0]),
    kv_bytes=st.sampled_from([1.0, 2.0]),
    hbm=st.floats(5e11, 1e13),
    bw_eff=st.one_of(st.just(0.0), st.floats(0.3, 1.0)),
    n_sm=sm_counts,
    p=params_in(DECODE_PARAMS),
)
def test_attn_decode_kernel_matches_reference(
    batch: float,
    ctx: float,
    heads: float,
    kv_heads: float,
    head_dim: float,
    kv_tensors: float,
    kv_bytes: float,
    hbm: float,
    bw_eff: float,
    n_sm: float,
    p: list[float],
) -> None:
    cal = np.array([n_sm, *p])
    got = ok.attn_decode_ms(
        batch, ctx, heads, kv_heads, head_dim, kv_tensors, kv_bytes, hbm, bw_eff, cal
    )
    want = decode_ref(batch, ctx, heads, kv_heads, head_dim, kv_tensors, kv_bytes, hbm, bw_eff, cal)
    assert got == pytest.approx(want, rel=REL_TOL)


def test_empty_work_costs_nothing(h100: Calibration) -> None:
    assert (
        ok.gemm_ms(0.0, 4096.0, 4096.0, 2.0, H100_BF16_FLOPS_PER_S, H100_HBM_BYTES_PER_S, h100.gemm)
        == 0.0
    )
    assert (
        ok.attn_prefill_ms(
            0.0, 512.0, 0.0, 32.0, 8.0, 128.0, 128.0, H100_BF16_FLOPS_PER_S, h100.attn_prefill
        )
        == 0.0
    )
    assert (
        ok.attn_decode_ms(
            0.0, 512.0, 32.0, 8.0, 128.0, 2.0, 2.0, H100_HBM_BYTES_PER_S, 0.0, h100.attn_decode
        )
        == 0.0
    )


def test_calibration_vectors_have_the_kernel_layout(h100: Calibration) -> None:
    assert h100.gemm.shape == (ok.GEMM_CAL_SIZE,)
    assert h100.attn_prefill.shape == (ok.PREFILL_CAL_SIZE,)
    assert h100.attn_decode.shape == (ok.DECODE_CAL_SIZE,)
    assert len(ok.GEMM_PARAM_NAMES) == len(GEMM_PARAMS) == ok.GEMM_NPARAMS
    assert len(ok.PREFILL_PARAM_NAMES) == len(PREFILL_PARAMS) + 1  # + n_sm
    assert len(ok.DECODE_PARAM_NAMES) == len(DECODE_PARAMS) + 1
    assert h100.attn_decode[ok.D_N_SM] == 132.0
    assert not h100.gemm.flags.writeable  # shared by every caller through the cache


# ----------------------------------------------------------------------------- physical sanity


def gemm_h100(m: float, n: float, k: float, dtype: str, cal: np.ndarray) -> float:
    eb, peak = (2.0, H100_BF16_FLOPS_PER_S) if dtype == "bf16" else (1.0, H100_FP8_FLOPS_PER_S)
    return float(ok.gemm_ms(m, n, k, eb, peak, H100_HBM_BYTES_PER_S, cal))


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
@pytest.mark.parametrize("n,k", [(768, 4096), (4096, 14336), (57344, 8192), (1000, 3000)])
def test_gemm_time_never_falls_as_tokens_grow(
    h100: Calibration, dtype: str, n: int, k: int
) -> None:
    ms = [gemm_h100(m, n, k, dtype, h100.gemm) for m in np.arange(1, 20000, 7.0)]
    assert np.all(np.diff(ms) >= 0.0)


def test_fp8_beats_bf16_on_large_gemms(h100: Calibration) -> None:
    for m, n, k in [(8192, 8192, 8192), (4096, 28672, 4096), (16384, 5120, 25600)]:
        bf16 = gemm_h100(m, n, k, "bf16", h100.gemm)
        fp8 = gemm_h100(m, n, k, "fp8", h100.gemm)
        assert fp8 < 0.75 * bf16, (m, n, k, bf16, fp8)


def test_small_gemms_are_bound_by_weight_reads(h100: Calibration) -> None:
    """At one token the time is about the weight bytes over HBM bandwidth, plus a launch."""
    n, k = 28672, 8192
    ms = gemm_h100(1, n, k, "bf16", h100.gemm)
    floor_ms = 1e3 * 2 * n * k / H100_HBM_BYTES_PER_S
    assert floor_ms < ms < 1.4 * floor_ms
    assert gemm_h100(1, n, k, "fp8", h100.gemm) < 0.6 * ms


def test_gemm_scales_with_the_gpu_peaks(h100: Calibration) -> None:
    """Another GPU reuses the efficiencies against its own, higher peaks."""
    m, n, k = 8192, 8192, 8192
    h100_ms = gemm_h100(m, n, k, "bf16", h100.gemm)
    faster = ok.gemm_ms(
        m, n, k, 2.0, 2.0 * H100_BF16_FLOPS_PER_S, 2.0 * H100_HBM_BYTES_PER_S, h100.gemm
    )
    assert 0.45 * h100_ms < faster < 0.6 * h100_ms


def decode_h100(batch: float, ctx: float, cal: np.ndarray, bw_eff: float = 0.0) -> float:
    return float(
        ok.attn_decode_ms(batch, ctx, 64.0, 8.0, 128.0, 2.0, 2.0, H100_HBM_BYTES_PER_S, bw_eff, cal)
    )


@pytest.mark.parametrize("batch,ctx", [(64, 8192), (128, 16384), (256, 4096)])
def test_decode_attention_is_linear_in_batch_times_context_when_large(
    h100: Calibration, batch: int, ctx: int
) -> None:
    base = decode_h100(batch, ctx, h100.attn_decode)
    assert decode_h100(2 * batch, ctx, h100.attn_decode) / base == pytest.approx(2.0, rel=0.05)
    assert decode_h100(batch, 2 * ctx, h100.attn_decode) / base == pytest.approx(2.0, rel=0.05)


def test_decode_attention_streams_near_the_calibrated_bandwidth(h100: Calibration) -> None:
    batch, ctx = 256, 16384
    nbytes = batch * ctx * 8 * 128 * 2 * 2
    achieved = nbytes / (decode_h100(batch, ctx, h100.attn_decode) * 1e-3)
    assert 0.85 * H100_HBM_BYTES_PER_S < achieved < H100_HBM_BYTES_PER_S


def test_decode_bandwidth_override_replaces_only_the_asymptotic_share(h100: Calibration) -> None:
    e_cal = float(h100.attn_decode[ok.D_E_HBM])
    assert decode_h100(64, 8192, h100.attn_decode, e_cal) == pytest.approx(
        decode_h100(64, 8192, h100.attn_decode), rel=1e-12
    )
    assert decode_h100(64, 8192, h100.attn_decode, 0.98) < decode_h100(64, 8192, h100.attn_decode)
    # the fixed latencies stay: a tiny decode costs about the same whatever the share
    assert decode_h100(1, 16, h100.attn_decode, 0.98) == pytest.approx(
        decode_h100(1, 16, h100.attn_decode), rel=0.02
    )


def test_mla_decode_reads_one_shared_latent(h100: Calibration) -> None:
    """kv_tensors=1 with the latent width reads less than GQA K and V of 8 heads of 128."""
    mla = ok.attn_decode_ms(
        128, 8192, 128, 1, 576, 1, 2, H100_HBM_BYTES_PER_S, 0.0, h100.attn_decode
    )
    gqa = decode_h100(128, 8192, h100.attn_decode)
    assert mla < 0.5 * gqa


def prefill_h100(new: float, past: float, cal: np.ndarray, batch: float = 1.0) -> float:
    return float(
        ok.attn_prefill_ms(batch, new, past, 64.0, 8.0, 128.0, 128.0, H100_BF16_FLOPS_PER_S, cal)
    )


def test_prefill_chunk_over_past_tokens_costs_more(h100: Calibration) -> None:
    for new in (256, 2048, 8192):
        alone = prefill_h100(new, 0, h100.attn_prefill)
        after = prefill_h100(new, 8192, h100.attn_prefill)
        assert after > 1.5 * alone


def test_chunked_prefill_costs_at_least_the_whole_prompt_and_not_much_more(
    h100: Calibration,
) -> None:
    whole = prefill_h100(16384, 0, h100.attn_prefill)
    chunks = sum(prefill_h100(2048, i * 2048, h100.attn_prefill) for i in range(8))
    assert whole < chunks < 1.25 * whole


def test_prefill_grows_quadratically_for_long_prompts(h100: Calibration) -> None:
    ratio = prefill_h100(32768, 0, h100.attn_prefill) / prefill_h100(16384, 0, h100.attn_prefill)
    assert ratio == pytest.approx(4.0, rel=0.1)
