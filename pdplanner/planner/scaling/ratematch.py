"""Runtime rate matching: how many prefill and decode workers the traffic of the moment needs.

A scheduler calls this every few seconds with what it observes (arrival rate, ISL and OSL as
means or as recent p50/p90/p99, the workers it runs, their measured TTFT and TPOT). The answer
uses the schedule's capacity model (``capacity``) for the running configurations, corrected by
observed / predicted latency:

0. Lengths: a mean is one class; percentiles become three classes at the p50, p90 and p99 with
   the probability mass nearest each (0.7, 0.245 and 0.055: the cuts fall midway between the
   levels 0.5, 0.9 and 0.99), ISL and OSL taken as independent (nine classes). The capacity model
   prices each class at its own length, so long prompts set the compute TTFT at the SLO
   percentile and weigh on the prefill rate as they do in the traffic.

1. Predict TTFT (at the SLO percentile) and TPOT for the current counts at the observed rate.
2. Corrections ``k_ttft = observed / predicted`` and ``k_tpot`` likewise (1 without an
   observation), clamped to [0.25, 4] so that one noisy reading cannot swing the pools wildly.
   A correction stretches the worker's batch time (prefill) or step time (decode): a worker that
   runs ``k`` times slower than modelled serves ``1 / k`` of the modelled rate.
3. Target counts: the fewest prefill workers whose corrected TTFT meets the target with the shared
   queue's wait, and the fewest decode workers whose slots keep the wait for one below the SLO
   percentile (Erlang C), each at least ``min_workers``; the decode batch limit is lowered in the
   model to the largest whose corrected TPOT meets the target.
4. Headroom: the extra rate the target deployment absorbs before either pool misses the SLO, as a
   fraction of the observed rate.

Everything runs on the configurations given; choosing new shapes is the schedule's job. Models and
GPUs resolve in the catalogs given (built-in and custom entries, as in Plan); performance contexts
are cached per (model, GPU, engine, precision, memory fraction), so a repeated call costs the
capacity model alone.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pdplanner.planner import validate
from pdplanner.planner.catalog import (
    GpuCatalog,
    GpuSpec,
    ModelCatalog,
    ModelSpec,
    default_gpus,
    default_models,
    load_engine,
)
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.scaling.capacity import (
    NO_WORKER_COUNT,
    DecodeCapacity,
    Shape,
    decode_context,
    decode_steps,
    decode_workers,
    prefill_capacity,
    prefill_miss,
    prefill_ttft_ms,
    prefill_workers,
)
from pdplanner.planner.serving.kvtransfer import link_between_pools
from pdplanner.planner.serving.queueing import PERCENTILES, erlang_c
from pdplanner.planner.types import Slo, Workload

CORRECTION_RANGE = (0.25, 4.0)
# probability mass each observed percentile stands for: cuts midway between 0.5, 0.9 and 0.99
PERCENTILE_MASS = {"p50": 0.7, "p90": 0.245, "p99": 0.055}


@dataclass(frozen=True)
class LengthPercentiles:
    """Recent percentiles of a length (tokens), non-decreasing."""

    p50: float
    p90: float
    p99: float


@dataclass(frozen=True)
class RateMatchRequest:
    model: str
    gpu: str
    slo: Slo
    requests_per_s: float  # observed arrival rate
    isl: float  # observed mean prompt tokens (unused with isl_percentiles)
    osl: float  # observed mean output tokens (unused with osl_percentiles)
    prefill: Shape
    prefill_workers: int  # running now
    decode: Shape
    decode_workers: int
    observed_ttft_ms: float | None = None  # at the SLO percentile
    observed_tpot_ms: float | None = None
    min_workers: int = 1
    precision_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    engine: str = "vllm"
    isl_percentiles: LengthPercentiles | None = None
    osl_percentiles: LengthPercentiles | None = None
    memory_fraction: float | None = None  # the engine's memory fraction; None: its default


@dataclass(frozen=True)
class RateMatchResult:
    prefill_workers: int
    decode_workers: int
    prefill_decode_gpu_ratio: float
    predicted_ttft_ms: float  # target counts, corrected
    predicted_tpot_ms: float
    current_predicted_ttft_ms: float  # current counts, before correction
    current_predicted_tpot_ms: float
    ttft_correction: float
    tpot_correction: float
    headroom: float  # extra rate the target deployment absorbs, as a fraction of the rate
    elapsed_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in self.__dict__.items()
        }


@functools.lru_cache(maxsize=64)
def _context(
    model: ModelSpec,
    gpu: GpuSpec,
    engine: str,
    dtype: str,
    kv_dtype: str,
    memory_fraction: float | None,
) -> PerfContext:
    return PerfContext.build(
        model, gpu, load_engine(engine, "engine"), dtype, kv_dtype, memory_fraction
    )


def _lengths(mean: float, pct: LengthPercentiles | None) -> list[tuple[int, float]]:
    """(tokens, share) classes of one length: the mean alone, or the percentiles' points."""
    if pct is None:
        return [(max(1, round(mean)), 1.0)]
    out: dict[int, float] = {}
    for name, mass in PERCENTILE_MASS.items():
        tokens = max(1, round(getattr(pct, name)))
        out[tokens] = out.get(tokens, 0.0) + mass
    return list(out.items())


def traffic_mix(req: RateMatchRequest) -> tuple[Workload, ...]:
    """The observed lengths as a mix (ISL and OSL independent)."""
    return tuple(
        Workload(i, o, wi * wo)
        for i, wi in _lengths(req.isl, req.isl_percentiles)
        for o, wo in _lengths(req.osl, req.osl_percentiles)
    )


def _validate_lengths(
    mean: float, pct: LengthPercentiles | None, name: str, v: validate.Violations
) -> None:
    if pct is None:
        with v.check():
            validate.number(mean, name, 1.0, validate.MAX_TOKENS)
        return
    last = 0.0
    for level in PERCENTILE_MASS:
        value = getattr(pct, level)
        with v.check():
            validate.number(value, f"{name}_percentiles.{level}", 1.0, validate.MAX_TOKENS)
            if value < last:
                raise InvalidInputError(
                    f"{name}_percentiles.{level}",
                    f"must be at least the lower percentile, {last:g}",
                )
        last = max(last, value)


def _validate(req: RateMatchRequest) -> None:
    """Range checks of a rate-match request; every violation is reported at once."""
    v = validate.Violations()
    with v.check():
        validate.number(req.requests_per_s, "requests_per_s", 0.0, 1e7)
    _validate_lengths(req.isl, req.isl_percentiles, "isl", v)
    _validate_lengths(req.osl, req.osl_percentiles, "osl", v)
    if req.memory_fraction is not None:
        with v.check():
            validate.number(req.memory_fraction, "memory_fraction", 0.0, 1.0, lo_open=True)
    with v.check():
        validate.number(req.slo.ttft_ms, "slo.ttft_ms", 0.0, 1e9, lo_open=True)
    with v.check():
        validate.number(req.slo.tpot_ms, "slo.tpot_ms", 0.0, 1e9, lo_open=True)
    if req.slo.percentile not in PERCENTILES:
        v.add("slo.percentile", f"must be p50, p90 or p99, got {req.slo.percentile!r}")
    integers = [
        (req.prefill_workers, "prefill_workers", 0),
        (req.decode_workers, "decode_workers", 0),
        (req.min_workers, "min_workers", 1),
    ]
    for value, field_name, lo in integers:
        with v.check():
            validate.integer(value, field_name, lo, 1_000_000)
    for name, shape in (("prefill", req.prefill), ("decode", req.decode)):
        for f in ("tp", "pp", "ep", "attention_dp", "batch"):
            with v.check():
                validate.integer(getattr(shape, f), f"{name}.{f}", 1, validate.MAX_BATCH)
    for f in ("observed_ttft_ms", "observed_tpot_ms"):
        observed = getattr(req, f)
        if observed is not None:
            with v.check():
                validate.number(observed, f, 0.0, 1e9, lo_open=True)
    v.raise_any()


def _clamp(k: float) -> float:
    return min(max(k, CORRECTION_RANGE[0]), CORRECTION_RANGE[1])


def _corrected(k: float, field: str) -> str:
    """How a correction from an observed latency entered a figure, in words ('' for none)."""
    return f" (x{k:.2f}, the correction from {field})" if k != 1.0 else ""


def _decode_tpot(tpot_by_batch: np.ndarray, running: float) -> float:
    i = min(max(math.ceil(running), 1), tpot_by_batch.size) - 1
    return float(tpot_by_batch[i])


def rate_match(
    req: RateMatchRequest, models: ModelCatalog | None = None, gpus: GpuCatalog | None = None
) -> RateMatchResult:
    """Target worker counts for the observed traffic; raises ``InvalidInputError``. ``models``
    and ``gpus`` default to the built-in catalogs."""
    start = time.perf_counter()
    _validate(req)
    models = models or default_models()
    gpus = gpus or default_gpus()
    model = models.get(req.model, "model")
    # the observed means must fit the model's context (a single request beyond it is refused)
    validate.within_context(model, math.ceil(req.isl), math.ceil(req.osl))
    prec = (req.engine, req.precision_dtype, req.kv_dtype, req.memory_fraction)
    ctx = _context(model, gpus.get(req.prefill.gpu, "prefill.gpu"), *prec)
    dctx = _context(model, gpus.get(req.decode.gpu, "decode.gpu"), *prec)
    validate.parallelism(req.prefill.parallelism, ctx.model, "prefill")
    validate.parallelism(req.decode.parallelism, dctx.model, "decode")
    mix = traffic_mix(req)
    osl = sum(m.osl * m.weight for m in mix)
    link = link_between_pools(ctx.gpu, dctx.gpu, 1 << 30)
    p = PERCENTILES[req.slo.percentile]
    rate = req.requests_per_s
    pc = prefill_capacity(ctx, req.prefill, mix, req.slo.percentile, link)
    if pc.requests_per_s <= 0:
        longest = max(m.isl for m in mix)
        raise InvalidInputError(
            "prefill", f"{req.prefill.label()} does not fit a {longest}-token prompt"
        )
    tpot_b, fits = decode_steps(dctx, req.decode, decode_context(mix))
    steps = max(osl - 1.0, 1.0)
    # 1. the model's view of the current deployment
    x0, y0 = req.prefill_workers, req.decode_workers
    ttft0 = prefill_ttft_ms(rate, x0, pc, p) if x0 > 0 else math.inf
    running0 = min(float(req.decode.batch), rate * steps * float(tpot_b[-1]) / 1e3 / max(y0, 1))
    tpot0 = _decode_tpot(tpot_b, running0)
    # 2. corrections
    k_t = (
        _clamp(req.observed_ttft_ms / ttft0)
        if req.observed_ttft_ms and math.isfinite(ttft0)
        else 1.0
    )
    k_d = _clamp(req.observed_tpot_ms / tpot0) if req.observed_tpot_ms else 1.0
    pcc = pc.scaled(k_t)
    ok = np.nonzero((tpot_b * k_d <= req.slo.tpot_ms) & fits)[0]
    if not ok.size:
        raise InvalidInputError(
            "slo.tpot_ms",
            f"no batch of {req.decode.label()} meets TPOT {req.slo.tpot_ms:g} ms: one sequence "
            f"takes {float(tpot_b[0]) * k_d:.1f} ms a step{_corrected(k_d, 'observed_tpot_ms')}",
        )
    batch = int(ok[-1]) + 1
    t_full = float(tpot_b[batch - 1]) * k_d
    dcc = DecodeCapacity(batch / (t_full * steps) * 1e3, t_full, bool(fits[batch - 1]))
    # 3. target counts; a rate beyond what the planner's largest budget could serve even at
    # full utilisation is refused before the queue searches, whose cost grows with the workers
    least = (
        rate / pcc.requests_per_s * req.prefill.gpus_per_worker
        + (rate / dcc.requests_per_s if dcc.requests_per_s > 0 else math.inf)
        * req.decode.gpus_per_worker
    )
    if least > validate.MAX_GPUS:
        raise InvalidInputError(
            "requests_per_s",
            f"{rate:g} req/s needs at least {least:,.0f} GPUs of these layouts at full "
            f"utilisation, more than the planner's limit of {validate.MAX_GPUS:,}",
        )
    x = prefill_workers(rate, pcc, req.slo.ttft_ms, p)
    if x >= NO_WORKER_COUNT:
        alone = prefill_ttft_ms(0.0, 1, pcc, p)
        raise InvalidInputError(
            "slo.ttft_ms",
            f"no count of {req.prefill.label()} prefill workers meets TTFT "
            f"{req.slo.ttft_ms:g} ms at {req.slo.percentile}: a prompt that never queues takes "
            f"{alone:,.0f} ms{_corrected(k_t, 'observed_ttft_ms')}",
        )
    y = decode_workers(rate, dcc, batch, req.slo.percentile)
    x, y = max(x, req.min_workers), max(y, req.min_workers)
    ttft = prefill_ttft_ms(rate, x, pcc, p)
    running = min(float(batch), rate * steps * t_full / 1e3 / y)
    tpot = _decode_tpot(tpot_b, running) * k_d
    # 4. headroom: the largest rate both pools still serve at the SLO, by bisection below the
    # rate at which either pool is always busy (its links included), past which none is served;
    # it depends on the target deployment, not on the observed rate
    cap_p = x * min(pcc.requests_per_s, pcc.link_requests_per_s)
    cap_d = y * dcc.requests_per_s
    lo, hi = rate, max(min(cap_p, cap_d), rate)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        ok_p = mid < cap_p and prefill_miss(mid, x, pcc, req.slo.ttft_ms) <= 1.0 - p
        ok_d = mid < cap_d and erlang_c(y * batch, mid * batch / dcc.requests_per_s) <= 1.0 - p
        if ok_p and ok_d:
            lo = mid
        else:
            hi = mid
    headroom = (lo / rate - 1.0) if rate > 0 else math.inf
    ratio = x * req.prefill.gpus_per_worker / (y * req.decode.gpus_per_worker)
    return RateMatchResult(
        x,
        y,
        ratio,
        ttft,
        tpot,
        ttft0,
        tpot0,
        k_t,
        k_d,
        headroom,
        (time.perf_counter() - start) * 1e3,
    )
