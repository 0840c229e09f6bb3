"""``estimate``: evaluate one fixed configuration: a phase step, an agg worker or an xPyD set."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from planner import validate
from planner.catalog import (
    GpuCatalog,
    ModelCatalog,
    ModelSpec,
    default_gpus,
    default_models,
    load_engine,
)
from planner.errors import InvalidInputError
from planner.perf.params import PerfContext
from planner.serving.disagg import evaluate_xpyd
from planner.serving.kvtransfer import link_between_pools
from planner.serving.scheduler import (
    EngineArg,
    SchedulerSettings,
    memory_fraction_for,
    scheduler_for,
)
from planner.serving.simulate import (
    REQUEST_OVERHEAD_MS,
    ClosedLoop,
    Load,
    Poisson,
    Pool,
    simulate_disagg,
)
from planner.serving.workers import (
    WorkerMetrics,
    agg_worker,
    decode_worker,
    kv_capacity,
    prefill_worker,
)
from planner.types import EstimateRequest, PhaseEstimate, PoolSpec, ServingEstimate

GB = 1e9
MIN_CHUNK_TOKENS = 64  # engines need room for a decode batch next to the prompt chunk


def estimate(
    req: EstimateRequest, models: ModelCatalog | None = None, gpus: GpuCatalog | None = None
) -> PhaseEstimate | ServingEstimate:
    """Evaluate ``req``; invalid fields raise ``InvalidInputError`` naming the field."""
    models = models or default_models()
    gpus = gpus or default_gpus()
    model = models.get(req.model, "model")
    gpu = gpus.get(req.gpu, "gpu")
    engine = load_engine(req.engine, "engine")
    validate.lengths(req.isl, req.osl)
    if (req.phase is None) == (req.mode is None):
        raise InvalidInputError(
            "phase", "give exactly one of phase (prefill, decode) or mode (agg, disagg)"
        )
    args = _engine_args(req)
    kv_dtype = req.precision.kv_dtype
    if "kv_cache_dtype" in args:
        kv_dtype = str(args["kv_cache_dtype"])
        if kv_dtype == "auto":
            kv_dtype = req.precision.kv_dtype
        elif kv_dtype not in ("bf16", "fp8"):
            raise InvalidInputError(
                "engine_args.kv_cache_dtype", f"must be auto, bf16 or fp8, got {kv_dtype!r}"
            )
    fraction = memory_fraction_for(engine, args, req.memory_fraction)
    ctx = PerfContext.build(model, gpu, engine, req.precision.dtype, kv_dtype, fraction)
    result: PhaseEstimate | ServingEstimate
    if req.phase is not None:
        result = _phase(req, ctx, model)
    elif req.mode == "agg":
        result = _agg(req, ctx, model)
    elif req.mode == "disagg":
        result = _disagg(req, ctx, model, gpus)
    else:
        raise InvalidInputError("mode", f"must be agg or disagg, got {req.mode!r}")
    bases = {gpu.model_basis}
    for pool in (req.prefill, req.decode):
        if req.mode == "disagg" and pool is not None and pool.gpu is not None:
            bases.add(gpus.get(pool.gpu, "gpu").model_basis)
    basis = "datasheet-scaled" if "datasheet-scaled" in bases else "calibrated"
    return replace(result, model=model.summary(), gpu_basis=basis)


def _engine_args(req: EstimateRequest) -> dict[str, EngineArg]:
    args: dict[str, EngineArg] = {}
    for key, value in req.engine_args:
        if key in args:
            raise InvalidInputError(f"engine_args.{key}", "is given twice")
        args[key] = value
    return args


def _scheduler(req: EstimateRequest, ctx: PerfContext) -> SchedulerSettings:
    """The engine's scheduler with ``engine_args`` and the older ``chunk_tokens`` applied."""
    sched = scheduler_for(ctx.engine, _engine_args(req))
    if req.chunk_tokens is not None:
        chunk = validate.integer(req.chunk_tokens, "chunk_tokens", 0, validate.MAX_TOKENS)
        if 0 < chunk < MIN_CHUNK_TOKENS:
            raise InvalidInputError(
                "chunk_tokens",
                f"must be 0 (no chunking) or at least {MIN_CHUNK_TOKENS}, got {chunk}",
            )
        if chunk == 0:
            sched = replace(sched, enable_chunked_prefill=False)
        else:
            sched = replace(sched, max_num_batched_tokens=chunk, enable_chunked_prefill=True)
    return sched


def _load(req: EstimateRequest) -> Load:
    """``concurrency`` means benchmark clients (closed loop), ``rate_per_s`` Poisson arrivals."""
    if req.concurrency is not None and req.rate_per_s is not None:
        raise InvalidInputError(
            "rate_per_s", "give concurrency (closed loop) or rate_per_s (Poisson), not both"
        )
    if req.rate_per_s is not None:
        rate = validate.number(req.rate_per_s, "rate_per_s", 0.0, 1e6, lo_open=True)
        return Poisson(rate)
    if req.concurrency is None:
        raise InvalidInputError(
            "concurrency",
            f"is required for mode {req.mode} (benchmark clients), or give rate_per_s (Poisson)",
        )
    return ClosedLoop(validate.integer(req.concurrency, "concurrency", 1, 100_000))


def _phase(req: EstimateRequest, ctx: PerfContext, model: ModelSpec) -> PhaseEstimate:
    par = req.parallelism
    validate.parallelism(par, model)
    if req.batch is None:
        raise InvalidInputError("batch", f"is required for a {req.phase} step")
    batch = validate.integer(req.batch, "batch", 1, validate.MAX_BATCH)
    seqs = math.ceil(batch / par.attention_dp)
    if req.phase == "prefill":
        m = prefill_worker(ctx, par, batch, req.isl)
        tokens = m.rate_per_s * req.isl / par.gpus  # prompts/s, pipelined with PP
        context = req.isl
        cap = kv_capacity(ctx, par, float(seqs * req.isl), float(seqs))
    elif req.phase == "decode":
        context = req.context if req.context is not None else req.isl + req.osl // 2
        validate.integer(context, "context", 1, validate.MAX_TOKENS)
        m = decode_worker(ctx, par, batch, float(context))
        tokens = m.rate_per_s / par.gpus
        micro = math.ceil(seqs / par.pp)
        cap = kv_capacity(ctx, par, float(micro), float(micro))
    else:
        raise InvalidInputError("phase", f"must be prefill or decode, got {req.phase!r}")
    # activations are taken at the requested batch, so this is exact at that batch and close
    # for others
    max_batch = int(cap // context) * par.attention_dp if cap > 0 else 0
    return PhaseEstimate(
        phase=req.phase,
        step_ms=m.step_ms,
        per_layer_ms=m.per_layer_ms,
        memory_gb_per_gpu=m.memory_bytes_per_gpu / GB,
        fits=m.fits,
        reason=m.reason,
        gpus=par.gpus,
        tokens_per_s_per_gpu=tokens if m.fits else 0.0,
        kv_capacity_tokens=cap,
        max_batch=max_batch,
    )


def _agg(req: EstimateRequest, ctx: PerfContext, model: ModelSpec) -> ServingEstimate:
    par = req.parallelism
    validate.parallelism(par, model)
    if par.pp > 1:
        # the engine-loop simulation has no pipeline micro-batches; it would price every
        # iteration at the full pipeline latency and understate throughput
        raise InvalidInputError(
            "parallelism.pp", "aggregated serving is modelled without pipeline parallelism (use 1)"
        )
    load = _load(req)
    sched = _scheduler(req, ctx)
    m = agg_worker(
        ctx, par, load, np.array([float(req.isl)]), np.array([float(req.osl)]), sched,
        request_overhead_ms=REQUEST_OVERHEAD_MS["agg"],
    )  # fmt: skip
    if not m.ok:
        return ServingEstimate(
            "agg", 0.0, 0.0, 0.0, 0.0, 0.0, par.gpus, m.memory_bytes_per_gpu / GB, False, m.reason
        )
    # a benchmark reports means over its requests; production latency is read at the median
    stat = "mean" if load.name == "closed" else "p50"
    tpot = m.tpot_ms[stat]
    return ServingEstimate(
        mode="agg",
        ttft_ms=m.ttft_ms[stat],
        tpot_ms=tpot,
        tokens_per_s_per_gpu=m.tokens_per_s / par.gpus,
        tokens_per_s_per_user=1e3 / tpot if tpot > 0 else 0.0,
        requests_per_s=m.requests_per_s,
        gpus=par.gpus,
        memory_gb_per_gpu=m.memory_bytes_per_gpu / GB,
        fits=True,
        running_batch=m.running,
        queued=m.queued,
        details={
            "load": _describe(load),
            "headline": stat,
            "ttft_ms": m.ttft_ms,
            "tpot_ms": m.tpot_ms,
            "preemptions": m.preemptions,
            "scheduler": _sched_details(sched),
        },
    )


def _describe(load: Load) -> str:
    if isinstance(load, ClosedLoop):
        return (
            f"closed: {load.clients} clients starting together, "
            f"{load.requests_per_client:g} requests each"
        )
    if isinstance(load, Poisson):
        return f"poisson: {load.rate_per_s:g} requests/s, {load.requests} requests"
    return "trace"


def _sched_details(s: SchedulerSettings) -> dict[str, Any]:
    return {
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "max_num_seqs": s.max_num_seqs,
        "enable_chunked_prefill": s.enable_chunked_prefill,
        "mixed_batches": s.mixed_batches,
        "kv_admission": s.kv_admission,
        "cuda_graph_max_bs": s.cuda_graph_max_bs,
    }


def _pool(pool: PoolSpec | None, name: str, model: ModelSpec) -> PoolSpec:
    if pool is None:
        raise InvalidInputError(name, f"the {name} pool is required for mode disagg")
    validate.parallelism(pool.parallelism, model, f"{name}.parallelism")
    validate.integer(pool.workers, f"{name}.workers", 1, 100_000)
    validate.integer(pool.batch, f"{name}.batch", 1, validate.MAX_BATCH)
    return pool


def _disagg(
    req: EstimateRequest, ctx: PerfContext, model: ModelSpec, gpus: GpuCatalog
) -> ServingEstimate:
    p = _pool(req.prefill, "prefill", model)
    d = _pool(req.decode, "decode", model)
    fraction = memory_fraction_for(ctx.engine, _engine_args(req), req.memory_fraction)
    p_ctx = (
        ctx
        if p.gpu is None
        else PerfContext.build(
            model,
            gpus.get(p.gpu, "prefill.gpu"),
            ctx.engine,
            ctx.dtype,
            ctx.kv_dtype,
            fraction,
        )
    )
    d_ctx = (
        ctx
        if d.gpu is None
        else PerfContext.build(
            model,
            gpus.get(d.gpu, "decode.gpu"),
            ctx.engine,
            ctx.dtype,
            ctx.kv_dtype,
            fraction,
        )
    )
    pm = prefill_worker(p_ctx, p.parallelism, p.batch, req.isl)
    context = float(req.isl + req.osl // 2)

    def decode_at(b: float) -> WorkerMetrics:
        return decode_worker(d_ctx, d.parallelism, int(b), context)

    dm = decode_at(d.batch)
    total_gpus = p.workers * p.parallelism.gpus + d.workers * d.parallelism.gpus
    mem = max(pm.memory_bytes_per_gpu, dm.memory_bytes_per_gpu) / GB
    if not pm.fits or not dm.fits:
        reason = f"prefill: {pm.reason}" if not pm.fits else f"decode: {dm.reason}"
        return ServingEstimate("disagg", 0.0, 0.0, 0.0, 0.0, 0.0, total_gpus, mem, False, reason)
    link = link_between_pools(p_ctx.gpu, d_ctx.gpu, total_gpus)
    if req.concurrency is not None or req.rate_per_s is not None:
        return _disagg_under_load(req, p, d, p_ctx, d_ctx, total_gpus, mem, link)
    r = evaluate_xpyd(
        pm,
        p.batch,
        p.parallelism.tp,
        p.parallelism.pp,
        p.parallelism.attention_dp,
        p.workers,
        decode_at,
        d.batch,
        d.workers,
        req.isl,
        req.osl,
        p_ctx.mv,
        p_ctx.hv,
        link,
    )
    return ServingEstimate(
        mode="disagg",
        ttft_ms=r.ttft_ms,
        tpot_ms=r.tpot_ms,
        tokens_per_s_per_gpu=r.output_tokens_per_s / total_gpus,
        tokens_per_s_per_user=1e3 / r.tpot_ms,
        requests_per_s=r.requests_per_s,
        gpus=total_gpus,
        memory_gb_per_gpu=mem,
        fits=True,
        running_batch=r.running_per_decode_worker * d.workers,
        kv_transfer_gb_per_s_per_gpu=r.kv_egress_bytes_per_s_per_gpu / GB,
        kv_transfer_ms=r.kv_transfer_ms,
        details={
            "ttft_ms": r.ttft_ms_at,
            "bottleneck": r.bottleneck,
            "prefill_utilisation": r.prefill_utilisation,
            "prefill_ttft_compute_ms": pm.step_ms,
            "link_gb_per_s": r.link_bytes_per_s / GB,
            "kv_link_exceeded": r.kv_egress_bytes_per_s_per_gpu > r.link_bytes_per_s,
            "load": "steady state at the rate the deployment sustains (no client queue; give "
            "concurrency or rate_per_s to simulate one)",
        },
    )


def _disagg_under_load(
    req: EstimateRequest,
    p: PoolSpec,
    d: PoolSpec,
    p_ctx: PerfContext,
    d_ctx: PerfContext,
    total_gpus: int,
    mem_gb: float,
    link: float,
) -> ServingEstimate:
    """The engine-loop simulation of the two pools; ``batch`` is each pool's per-worker limit
    (split over its attention-DP ranks), the clients or the rate come from the load."""
    load = _load(req)
    sched = _scheduler(req, d_ctx)
    p_seqs = math.ceil(p.batch / p.parallelism.attention_dp)
    d_seqs = math.ceil(d.batch / d.parallelism.attention_dp)
    p_sched = replace(
        sched,
        max_num_seqs=p_seqs,
        max_num_batched_tokens=max(sched.max_num_batched_tokens, p_seqs * req.isl),
    )
    d_sched = replace(sched, max_num_seqs=d_seqs)
    run = simulate_disagg(
        Pool(p_ctx, p.parallelism, p.workers, p_sched),
        Pool(d_ctx, d.parallelism, d.workers, d_sched),
        load,
        np.array([float(req.isl)]),
        np.array([float(req.osl)]),
        link,
        request_overhead_ms=REQUEST_OVERHEAD_MS["disagg"],
    )
    if not run.ok:
        return ServingEstimate(
            "disagg", 0.0, 0.0, 0.0, 0.0, 0.0, total_gpus, mem_gb, False, run.reason
        )
    stat = "mean" if load.name == "closed" else "p50"
    ttft = getattr(run.ttft_ms, stat)
    tpot = getattr(run.tpot_ms, stat)
    return ServingEstimate(
        mode="disagg",
        ttft_ms=ttft,
        tpot_ms=tpot,
        tokens_per_s_per_gpu=run.output_tokens_per_s / total_gpus,
        tokens_per_s_per_user=1e3 / tpot if tpot > 0 else 0.0,
        requests_per_s=run.requests_per_s,
        gpus=total_gpus,
        memory_gb_per_gpu=mem_gb,
        fits=True,
        running_batch=run.running * d.parallelism.attention_dp * d.workers,
        queued=run.queued,
        details={
            "load": _describe(load),
            "headline": stat,
            "ttft_ms": run.ttft_ms.to_dict(),
            "tpot_ms": run.tpot_ms.to_dict(),
            "preemptions": run.preemptions,
            "scheduler": _sched_details(d_sched),
            "link_gb_per_s": link / GB,
        },
    )
