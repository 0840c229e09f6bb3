"""``estimate``: evaluate one fixed configuration: a phase step, an agg worker or an xPyD set."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from pdplanner.planner import validate
from pdplanner.planner.catalog import (
    EngineSpec,
    GpuCatalog,
    GpuSpec,
    ModelCatalog,
    ModelSpec,
    default_gpus,
    default_models,
    load_engine,
)
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.perf.kernels import issue_ms_per_layer
from pdplanner.planner.perf.memory import derived_fraction
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving.disagg import evaluate_xpyd
from pdplanner.planner.serving.kvtransfer import link_between_pools
from pdplanner.planner.serving.scheduler import (
    MIN_BUDGET_TOKENS,
    EngineArg,
    SchedulerSettings,
    memory_fraction_for,
    scheduler_for,
)
from pdplanner.planner.serving.simulate import (
    REQUEST_OVERHEAD_MS,
    ClosedLoop,
    Load,
    Poisson,
    Pool,
    simulate_disagg,
)
from pdplanner.planner.serving.workers import (
    WorkerMetrics,
    agg_worker,
    decode_worker,
    kv_capacity,
    prefill_worker,
)
from pdplanner.planner.types import (
    Deployment,
    EstimateRequest,
    Parallelism,
    PhaseEstimate,
    PlanRequest,
    PoolSpec,
    ServingEstimate,
)

GB = 1e9
# An open-loop rate counts as sustained when the run's steady window completes at least this
# share of it. Below it the queue grows for as long as the run lasts, so its TTFT says how long
# the run was, not what the deployment does; the share leaves room for the Poisson count's own
# noise (about 2.5% at the fewest requests a run simulates, 2000 with a tenth for warm-up).
SUSTAINED_SHARE = 0.9


def estimate(
    req: EstimateRequest, models: ModelCatalog | None = None, gpus: GpuCatalog | None = None
) -> PhaseEstimate | ServingEstimate:
    """Evaluate ``req``.

    Every check of the request runs before anything is evaluated: one invalid field raises
    ``InvalidInputError`` naming its path, several raise them all at once as ``InvalidFields``.
    """
    checked = _check(req, models or default_models(), gpus or default_gpus())
    result: PhaseEstimate | ServingEstimate
    if req.phase is not None:
        result = _phase(req, checked)
    elif req.mode == "agg":
        result = _agg(req, checked)
    else:
        result = _disagg(req, checked)
    calibrated = all(c.gpu.model_basis == "calibrated" for c in checked.contexts)
    return replace(
        result,
        model=checked.model.summary(),
        gpu_basis="calibrated" if calibrated else "datasheet-scaled",
    )


def replay_request(plan: PlanRequest, d: Deployment) -> EstimateRequest:
    """The estimate that replays deployment ``d`` of ``plan`` through the engine loop under
    Poisson arrivals at the rate the plan says it serves: an aggregated deployment as one of its
    workers at its share of the rate, with the batch limit and chunk budget the plan set; a
    disaggregated one whole. ``estimate`` of it is what the engine would deliver at that rate
    (``requests_per_s`` per aggregated worker). Raises ``InvalidInputError`` on ``traffic`` for a
    mix of more than one class (an estimate takes one request shape)."""
    if len(plan.traffic) != 1:
        raise InvalidInputError("traffic", "a replay takes one traffic class, not a mix")
    w = plan.traffic[0]
    par = [Parallelism(p.tp, p.pp, p.ep, p.attention_dp) for p in d.pools]
    common: dict[str, Any] = {
        "precision": plan.precision,
        "engine": plan.engine,
        "memory_fraction": plan.memory_fraction,
    }
    # the batch limit is each pool's own, as the plan set it
    args = tuple((k, v) for k, v in plan.engine_args if k != "max_num_seqs")
    if d.mode == "agg":
        pool = d.pools[0]
        return EstimateRequest(
            plan.model, pool.gpu, w.isl, w.osl, mode="agg", parallelism=par[0],
            rate_per_s=d.requests_per_s / pool.workers, chunk_tokens=pool.chunk_tokens or 0,
            engine_args=(*args, ("max_num_seqs", pool.batch)), **common,
        )  # fmt: skip
    pre, dec = d.pools
    return EstimateRequest(
        plan.model, pre.gpu, w.isl, w.osl, mode="disagg", rate_per_s=d.requests_per_s,
        prefill=PoolSpec(par[0], pre.workers, pre.batch, pre.gpu),
        decode=PoolSpec(par[1], dec.workers, dec.batch, dec.gpu),
        engine_args=args, **common,
    )  # fmt: skip


@dataclass(frozen=True)
class _Checked:
    """A request that passed every check, with its names resolved.

    ``ctx`` is the request's GPU; ``prefill`` and ``decode`` are the pools' (disagg); ``load``
    and ``sched`` are set for a simulated load (agg; disagg given concurrency or rate_per_s).
    """

    model: ModelSpec
    ctx: PerfContext
    prefill: PerfContext | None = None
    decode: PerfContext | None = None
    load: Load | None = None
    sched: SchedulerSettings | None = None

    @property
    def contexts(self) -> tuple[PerfContext, ...]:
        return tuple(c for c in (self.ctx, self.prefill, self.decode) if c is not None)


def _check(req: EstimateRequest, models: ModelCatalog, gpus: GpuCatalog) -> _Checked:
    """Run every check of ``req`` and raise all that failed. A check that needs a value another
    check refused is skipped (a layout is range-checked, but not checked against a model whose
    name is unknown; a pool's GPU is not priced when the engine is unknown)."""
    v = validate.Violations()
    model = v.value(lambda: models.get(req.model, "model"))
    gpu = v.value(lambda: gpus.get(req.gpu, "gpu"))
    engine = v.value(lambda: load_engine(req.engine, "engine"))
    lengths_ok = False
    with v.check():
        validate.lengths(req.isl, req.osl)
        lengths_ok = True
    if lengths_ok and model is not None:
        with v.check():
            validate.within_context(model, req.isl, req.osl)
    one_kind = (req.phase is None) != (req.mode is None)
    if not one_kind:
        v.add("phase", "give exactly one of phase (prefill, decode) or mode (agg, disagg)")
    args = v.value(lambda: _engine_args(req))
    if args is not None and req.mode == "disagg" and "max_num_seqs" in args:
        # each pool's batch is its limit; one engine-wide value would be silently overridden
        v.add(
            "engine_args.max_num_seqs",
            "a disaggregated deployment's batch limits are its pools' batches: give "
            "prefill.batch and decode.batch instead",
        )
    kv_dtype = None if args is None else v.value(lambda: _kv_dtype(req, args))
    fraction: float | None = None
    fraction_ok = False
    if engine is not None and args is not None:
        with v.check():
            fraction = memory_fraction_for(engine, args, req.memory_fraction)
            fraction_ok = True

    def priced(on: GpuSpec | None) -> PerfContext | None:
        if model is None or on is None or engine is None or kv_dtype is None or not fraction_ok:
            return None
        return v.value(
            lambda: PerfContext.build(model, on, engine, req.precision.dtype, kv_dtype, fraction)
        )

    ctx = priced(gpu)
    pools: dict[str, PerfContext | None] = {}
    load: Load | None = None
    sched: SchedulerSettings | None = None
    if one_kind and req.phase is not None:
        with v.check():
            validate.parallelism(req.parallelism, model)
        if req.batch is None:
            v.add("batch", f"is required for a {req.phase} step")
        else:
            v.value(lambda: validate.integer(req.batch, "batch", 1, validate.MAX_BATCH))
        if req.phase == "decode":
            if req.context is not None or lengths_ok:
                # a context given outright must fit the model's; the derived one is checked
                # with the lengths above
                most = validate.MAX_TOKENS
                if req.context is not None and model is not None and model.max_context > 0:
                    most = model.max_context
                v.value(lambda: validate.integer(_context(req), "context", 1, most))
        elif req.phase != "prefill":
            v.add("phase", f"must be prefill or decode, got {req.phase!r}")
    elif one_kind and req.mode == "agg":
        with v.check():
            validate.parallelism(req.parallelism, model)
        pp = req.parallelism.pp
        if isinstance(pp, int) and pp > 1:
            # the engine-loop simulation has no pipeline micro-batches; it would price every
            # iteration at the full pipeline latency and understate throughput
            v.add(
                "parallelism.pp",
                "aggregated serving is modelled without pipeline parallelism (use 1)",
            )
        load = _load(req, v)
        sched = _scheduler(req, engine, args, v)
    elif one_kind and req.mode == "disagg":
        for name, pool in (("prefill", req.prefill), ("decode", req.decode)):
            if pool is None:
                v.add(name, f"the {name} pool is required for mode disagg")
                continue
            with v.check():  # every violation of the pool, as the trace replay checks it
                validate.pool(pool.parallelism, pool.workers, pool.batch, model, name)
            if pool.gpu is None:
                pools[name] = ctx
            else:
                pools[name] = priced(v.value(partial(gpus.get, pool.gpu, f"{name}.gpu")))
        if req.concurrency is not None or req.rate_per_s is not None:
            load = _load(req, v)
            sched = _scheduler(req, engine, args, v)
    elif one_kind:
        v.add("mode", f"must be agg or disagg, got {req.mode!r}")
    v.raise_any()
    assert model is not None and ctx is not None
    return _Checked(model, ctx, pools.get("prefill"), pools.get("decode"), load, sched)


def _engine_args(req: EstimateRequest) -> dict[str, EngineArg]:
    args: dict[str, EngineArg] = {}
    for key, value in req.engine_args:
        if key in args:
            raise InvalidInputError(f"engine_args.{key}", "is given twice")
        args[key] = value
    return args


def _kv_dtype(req: EstimateRequest, args: dict[str, EngineArg]) -> str:
    """The KV cache's dtype: ``engine_args.kv_cache_dtype`` when given, else (and for ``auto``)
    the request's."""
    value = str(args.get("kv_cache_dtype", "auto"))
    if value == "auto":
        return req.precision.kv_dtype
    if value not in ("bf16", "fp8"):
        raise InvalidInputError(
            "engine_args.kv_cache_dtype", f"must be auto, bf16 or fp8, got {value!r}"
        )
    return value


def _context(req: EstimateRequest) -> int:
    """A decode step's context in tokens: ``context``, else the middle of the output."""
    return req.context if req.context is not None else req.isl + req.osl // 2


def _scheduler(
    req: EstimateRequest,
    engine: EngineSpec | None,
    args: dict[str, EngineArg] | None,
    v: validate.Violations,
) -> SchedulerSettings | None:
    """The engine's scheduler with ``engine_args`` and the older ``chunk_tokens`` applied."""
    sched = None
    if engine is not None and args is not None:
        sched = v.value(lambda: scheduler_for(engine, args))
    if req.chunk_tokens is None:
        return sched
    chunk = v.value(lambda: _chunk_tokens(req.chunk_tokens))
    if sched is None or chunk is None:
        return None
    for key, given in (("max_num_batched_tokens", chunk), ("enable_chunked_prefill", chunk > 0)):
        if args is not None and key in args and getattr(sched, key) != given:
            # two settings of one knob: the older chunk_tokens and the engine's own name
            v.add(
                f"engine_args.{key}",
                f"is {getattr(sched, key)} but chunk_tokens ({chunk}) sets it to {given}; "
                "give one, or the same value",
            )
            return None
    if chunk == 0:
        return replace(sched, enable_chunked_prefill=False)
    return replace(sched, max_num_batched_tokens=chunk, enable_chunked_prefill=True)


def _chunk_tokens(value: object) -> int:
    chunk = validate.integer(value, "chunk_tokens", 0, validate.MAX_TOKENS)
    if 0 < chunk < MIN_BUDGET_TOKENS:
        raise InvalidInputError(
            "chunk_tokens", f"must be 0 (no chunking) or at least {MIN_BUDGET_TOKENS}, got {chunk}"
        )
    return chunk


def _load(req: EstimateRequest, v: validate.Violations) -> Load | None:
    """``concurrency`` means benchmark clients (closed loop), ``rate_per_s`` Poisson arrivals."""
    if req.concurrency is not None and req.rate_per_s is not None:
        v.add(
            "rate_per_s",
            "give a client count (closed loop) or an arrival rate (Poisson), not both",
        )
        return None
    if req.rate_per_s is not None:
        rate = v.value(
            lambda: validate.number(req.rate_per_s, "rate_per_s", 0.0, 1e6, lo_open=True)
        )
        return None if rate is None else Poisson(rate)
    if req.concurrency is None:
        v.add(
            "concurrency",
            f"is required for mode {req.mode} (benchmark clients), or give an arrival rate "
            "(Poisson)",
        )
        return None
    clients = v.value(lambda: validate.integer(req.concurrency, "concurrency", 1, 100_000))
    return None if clients is None else ClosedLoop(clients)


def _phase(req: EstimateRequest, checked: _Checked) -> PhaseEstimate:
    ctx, par = checked.ctx, req.parallelism
    assert req.batch is not None and req.phase is not None
    batch = req.batch
    seqs = math.ceil(batch / par.attention_dp)
    if req.phase == "prefill":
        m = prefill_worker(ctx, par, batch, req.isl)
        tokens = m.rate_per_s * req.isl / par.gpus  # prompts/s, pipelined with PP
        context = req.isl
        cap = kv_capacity(ctx, par, float(seqs * req.isl), float(seqs))
        issue = issue_ms_per_layer(ctx.hv, float(seqs), 0.0)
    else:
        context = _context(req)
        m = decode_worker(ctx, par, batch, float(context))
        tokens = m.rate_per_s / par.gpus
        micro = math.ceil(seqs / par.pp)
        cap = kv_capacity(ctx, par, float(micro), float(micro))
        issue = issue_ms_per_layer(ctx.hv, 0.0, float(micro))
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
        memory_fraction=_fraction(ctx, par),
        host_issue_ms=ctx.model.num_layers * issue,
    )


def _agg(req: EstimateRequest, checked: _Checked) -> ServingEstimate:
    ctx, par, load, sched = checked.ctx, req.parallelism, checked.load, checked.sched
    assert load is not None and sched is not None
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
            "load": _describe(load, m.simulated_requests),
            **_offered(load, m.requests_per_s),
            "headline": stat,
            "ttft_ms": m.ttft_ms,
            "tpot_ms": m.tpot_ms,
            "preemptions": m.preemptions,
            "scheduler": _sched_details(sched),
            "memory_fraction": _fraction(ctx, par),
            "memory_fraction_flag": ctx.engine.memory_fraction_flag,
        },
    )


def _describe(load: Load, simulated: int) -> str:
    if isinstance(load, ClosedLoop):
        return (
            f"closed: {load.clients} clients starting together, "
            f"{load.requests_per_client:g} requests each"
        )
    if isinstance(load, Poisson):
        return f"poisson: {load.rate_per_s:g} requests/s, {simulated} requests"
    return "trace"


def _offered(load: Load, completed_per_s: float) -> dict[str, Any]:
    """Under Poisson arrivals: the offered rate and whether the deployment keeps up with it
    (``SUSTAINED_SHARE``); nothing for a closed loop, which sends only as fast as it is served."""
    if not isinstance(load, Poisson):
        return {}
    return {
        "offered_requests_per_s": load.rate_per_s,
        "sustained": completed_per_s >= SUSTAINED_SHARE * load.rate_per_s,
    }


def _fraction(ctx: PerfContext, par: Parallelism) -> float:
    """The memory fraction the engine sizes its KV cache at on this layout: the request's, else
    the engine's default (SGLang's derived per GPU and layout, ``memory.derived_fraction``)."""
    return float(derived_fraction(ctx.hv, par.tp, par.pp, par.attention_dp))


def _disagg_fractions(pools: tuple[PoolSpec, PoolSpec, PerfContext, PerfContext]) -> dict[str, Any]:
    p, d, p_ctx, d_ctx = pools
    return {
        "memory_fraction": {
            "prefill": _fraction(p_ctx, p.parallelism),
            "decode": _fraction(d_ctx, d.parallelism),
        },
        "memory_fraction_flag": p_ctx.engine.memory_fraction_flag,
    }


def _sched_details(s: SchedulerSettings) -> dict[str, Any]:
    return {
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "max_num_seqs": s.max_num_seqs,
        "enable_chunked_prefill": s.enable_chunked_prefill,
        "mixed_batches": s.mixed_batches,
        "kv_admission": s.kv_admission,
        "cuda_graph_max_bs": s.cuda_graph_max_bs,
    }


def _disagg(req: EstimateRequest, checked: _Checked) -> ServingEstimate:
    p, d, p_ctx, d_ctx = req.prefill, req.decode, checked.prefill, checked.decode
    assert p is not None and d is not None and p_ctx is not None and d_ctx is not None
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
        assert checked.load is not None and checked.sched is not None
        pools = (p, d, p_ctx, d_ctx)
        return _disagg_under_load(req, pools, checked.load, checked.sched, total_gpus, mem, link)
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
    # a request's time outside the engines, as under load (REQUEST_OVERHEAD_MS)
    overhead = REQUEST_OVERHEAD_MS["disagg"]
    return ServingEstimate(
        mode="disagg",
        ttft_ms=r.ttft_ms + overhead,
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
            "ttft_ms": {name: ms + overhead for name, ms in r.ttft_ms_at.items()},
            "request_overhead_ms": overhead,
            **_disagg_fractions((p, d, p_ctx, d_ctx)),
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
    pools: tuple[PoolSpec, PoolSpec, PerfContext, PerfContext],
    load: Load,
    sched: SchedulerSettings,
    total_gpus: int,
    mem_gb: float,
    link: float,
) -> ServingEstimate:
    """The engine-loop simulation of the two pools; ``batch`` is each pool's per-worker limit
    (split over its attention-DP ranks), the clients or the rate come from the load."""
    p, d, p_ctx, d_ctx = pools
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
            "load": _describe(load, run.simulated_requests),
            **_offered(load, run.requests_per_s),
            "headline": stat,
            "ttft_ms": run.ttft_ms.to_dict(),
            "tpot_ms": run.tpot_ms.to_dict(),
            "preemptions": run.preemptions,
            "scheduler": _sched_details(d_sched),
            "link_gb_per_s": link / GB,
            **_disagg_fractions(pools),
        },
    )
