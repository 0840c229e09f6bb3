"""Requests, proto <-> domain: plan, estimate and sweep requests and the parts they share.

``*_from_proto`` is the server's direction (proto-level omissions raise ``InvalidInputError``
with the field path); ``*_to_proto`` is the CLI's ``--server`` direction, with every default
spelled out so that nothing is guessed on the other side. Field names are the same in the
dataclasses and the messages, so a planner error path is also the proto field's path.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.sweep import MAX_SWEEP_SCENARIOS, SweepGrid
from pdplanner.planner.types import (
    DEFAULT_DTYPE,
    DEFAULT_ENGINE,
    EstimateRequest,
    Parallelism,
    PlanRequest,
    PoolSpec,
    Precision,
    SearchLimits,
    Slo,
    Workload,
)
from pdplanner.planner.validate import MAX_TRAFFIC_CLASSES, Violations
from pdplanner.service.convert.checks import (
    at_most,
    finite,
    finite_optional,
    i32,
    optional,
    required_text,
)
from pdplanner.service.convert.enums import MODE, PERCENTILE, PHASE
from pdplanner.v1 import common_pb2, estimate_pb2, plan_pb2, sweep_pb2

# -- shared parts ---------------------------------------------------------------------------------


def precision_from_proto(msg: common_pb2.Precision) -> Precision:
    """Empty strings mean the defaults (bf16)."""
    return Precision(dtype=msg.dtype or DEFAULT_DTYPE, kv_dtype=msg.kv_dtype or DEFAULT_DTYPE)


def precision_to_proto(p: Precision) -> common_pb2.Precision:
    return common_pb2.Precision(dtype=p.dtype, kv_dtype=p.kv_dtype)


def parallelism_from_proto(msg: common_pb2.Parallelism) -> Parallelism:
    """Unset degrees mean 1; an explicit 0 reaches the planner, which names the field."""
    return Parallelism(
        tp=optional(msg, "tp", 1),
        pp=optional(msg, "pp", 1),
        ep=optional(msg, "ep", 1),
        attention_dp=optional(msg, "attention_dp", 1),
    )


def parallelism_to_proto(p: Parallelism, path: str = "parallelism") -> common_pb2.Parallelism:
    return common_pb2.Parallelism(
        tp=i32(p.tp, f"{path}.tp"),
        pp=i32(p.pp, f"{path}.pp"),
        ep=i32(p.ep, f"{path}.ep"),
        attention_dp=i32(p.attention_dp, f"{path}.attention_dp"),
    )


def workload_from_proto(msg: common_pb2.Workload, path: str) -> Workload:
    weight = finite_optional(msg, "weight", f"{path}.weight", 1.0)
    return Workload(isl=msg.isl, osl=msg.osl, weight=weight)


def workload_to_proto(w: Workload, path: str) -> common_pb2.Workload:
    return common_pb2.Workload(
        isl=i32(w.isl, f"{path}.isl"), osl=i32(w.osl, f"{path}.osl"), weight=w.weight
    )


def slo_from_proto(msg: plan_pb2.Slo, path: str = "slo") -> Slo:
    return Slo(
        ttft_ms=finite(msg.ttft_ms, f"{path}.ttft_ms"),
        tpot_ms=finite(msg.tpot_ms, f"{path}.tpot_ms"),
        percentile=PERCENTILE.optional_from_proto(msg.percentile, f"{path}.percentile") or "p50",
        min_tokens_per_s_per_user=finite_optional(
            msg, "min_tokens_per_s_per_user", f"{path}.min_tokens_per_s_per_user"
        ),
    )


def slo_to_proto(s: Slo) -> plan_pb2.Slo:
    return plan_pb2.Slo(
        ttft_ms=s.ttft_ms,
        tpot_ms=s.tpot_ms,
        percentile=PERCENTILE.to_proto(s.percentile),
        min_tokens_per_s_per_user=s.min_tokens_per_s_per_user,
    )


def limits_from_proto(msg: plan_pb2.SearchLimits, path: str = "limits") -> SearchLimits:
    """Unset switches mean true; an empty mode list means both modes."""
    at_most(len(msg.modes), 8, f"{path}.modes")  # two modes; a few repeats are harmless
    modes = tuple(MODE.from_proto(m, f"{path}.modes[{i}]") for i, m in enumerate(msg.modes))
    return SearchLimits(
        max_tp=optional(msg, "max_tp"),
        allow_pp=optional(msg, "allow_pp", True),
        allow_ep=optional(msg, "allow_ep", True),
        allow_attention_dp=optional(msg, "allow_attention_dp", True),
        modes=modes or SearchLimits().modes,
    )


def limits_to_proto(s: SearchLimits) -> plan_pb2.SearchLimits:
    return plan_pb2.SearchLimits(
        max_tp=i32(s.max_tp, "limits.max_tp"),
        allow_pp=s.allow_pp,
        allow_ep=s.allow_ep,
        allow_attention_dp=s.allow_attention_dp,
        modes=[MODE.to_proto(m) for m in s.modes],
    )


# -- plan requests --------------------------------------------------------------------------------


def plan_request_from_proto(msg: plan_pb2.PlanRequest) -> PlanRequest:
    """The planner's request; every proto-level violation raises, together, with its path."""
    v = Violations()
    with v.check():
        required_text(msg.model, "model")
    with v.check():
        required_text(msg.gpu, "gpu")
    if not msg.traffic:
        v.add("traffic", "is required: at least one workload (isl, osl)")
    at_most(len(msg.traffic), MAX_TRAFFIC_CLASSES, "traffic")  # before reading any
    if not msg.HasField("slo"):
        v.add("slo", "is required: the ttft_ms and tpot_ms targets")
    traffic = v.value(
        lambda: tuple(workload_from_proto(w, f"traffic[{i}]") for i, w in enumerate(msg.traffic))
    )
    slo = v.value(lambda: slo_from_proto(msg.slo))
    rate = v.value(lambda: finite_optional(msg, "rate_per_s", "rate_per_s"))
    prefix_hit = v.value(lambda: finite(msg.prefix_hit, "prefix_hit"))
    limits = v.value(lambda: limits_from_proto(msg.limits))
    memory_fraction = v.value(lambda: finite_optional(msg, "memory_fraction", "memory_fraction"))
    v.raise_any()
    assert traffic is not None and slo is not None and prefix_hit is not None and limits
    return PlanRequest(
        model=msg.model,
        gpu=msg.gpu,
        gpus=msg.gpus,
        traffic=traffic,
        slo=slo,
        decode_gpu=msg.decode_gpu or None,
        prefill_gpus=optional(msg, "prefill_gpus"),
        decode_gpus=optional(msg, "decode_gpus"),
        rate_per_s=rate,
        prefix_hit=prefix_hit,
        precision=precision_from_proto(msg.precision),
        engine=msg.engine or DEFAULT_ENGINE,
        limits=limits,
        memory_fraction=memory_fraction,
        engine_args=engine_args_from_proto(msg.engine_args),
    )


def plan_request_to_proto(req: PlanRequest, request_id: str = "") -> plan_pb2.PlanRequest:
    """The message for a domain request (every default spelled out, so nothing is guessed)."""
    return plan_pb2.PlanRequest(
        request_id=request_id,
        model=req.model,
        gpu=req.gpu,
        decode_gpu=req.decode_gpu or "",
        gpus=i32(req.gpus, "gpus"),
        prefill_gpus=i32(req.prefill_gpus, "prefill_gpus"),
        decode_gpus=i32(req.decode_gpus, "decode_gpus"),
        traffic=[workload_to_proto(w, f"traffic[{i}]") for i, w in enumerate(req.traffic)],
        rate_per_s=req.rate_per_s,
        prefix_hit=req.prefix_hit,
        slo=slo_to_proto(req.slo),
        precision=precision_to_proto(req.precision),
        engine=req.engine,
        limits=limits_to_proto(req.limits),
        memory_fraction=req.memory_fraction,
        engine_args=engine_args_to_proto(req.engine_args),
    )


# -- engine arguments -----------------------------------------------------------------------------


def engine_args_from_proto(args: Any) -> tuple[tuple[str, str], ...]:
    """A ``map<string, string>`` as sorted (key, text) pairs; the planner checks keys and values
    (``engine_args.<key>``) as it resolves the scheduler."""
    return tuple(sorted((str(k), str(v)) for k, v in args.items()))


def engine_args_to_proto(args: tuple[tuple[str, Any], ...]) -> dict[str, str]:
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in args}


# -- estimate requests ----------------------------------------------------------------------------


def pool_spec_from_proto(msg: estimate_pb2.PoolSpec) -> PoolSpec:
    return PoolSpec(
        parallelism=parallelism_from_proto(msg.parallelism),
        workers=optional(msg, "workers", 1),
        batch=optional(msg, "batch", 1),
        gpu=msg.gpu or None,
    )


def pool_spec_to_proto(p: PoolSpec, path: str) -> estimate_pb2.PoolSpec:
    return estimate_pb2.PoolSpec(
        parallelism=parallelism_to_proto(p.parallelism, f"{path}.parallelism"),
        workers=i32(p.workers, f"{path}.workers"),
        batch=i32(p.batch, f"{path}.batch"),
        gpu=p.gpu or "",
    )


def estimate_request_from_proto(msg: estimate_pb2.EstimateRequest) -> EstimateRequest:
    """The planner's request; the planner checks which of phase/mode is set and what it needs."""
    v = Violations()
    with v.check():
        required_text(msg.model, "model")
    with v.check():
        required_text(msg.gpu, "gpu")
    phase = v.value(lambda: PHASE.optional_from_proto(msg.phase, "phase"))
    mode = v.value(lambda: MODE.optional_from_proto(msg.mode, "mode"))
    memory_fraction = v.value(lambda: finite_optional(msg, "memory_fraction", "memory_fraction"))
    rate = v.value(lambda: finite_optional(msg, "rate_per_s", "rate_per_s"))
    v.raise_any()
    return EstimateRequest(
        model=msg.model,
        gpu=msg.gpu,
        isl=msg.isl,
        osl=msg.osl,
        precision=precision_from_proto(msg.precision),
        engine=msg.engine or DEFAULT_ENGINE,
        phase=phase,
        mode=mode,
        parallelism=parallelism_from_proto(msg.parallelism),
        batch=optional(msg, "batch"),
        context=optional(msg, "context"),
        concurrency=optional(msg, "concurrency"),
        chunk_tokens=optional(msg, "chunk_tokens"),
        prefill=pool_spec_from_proto(msg.prefill) if msg.HasField("prefill") else None,
        decode=pool_spec_from_proto(msg.decode) if msg.HasField("decode") else None,
        memory_fraction=memory_fraction,
        rate_per_s=rate,
        engine_args=engine_args_from_proto(msg.engine_args),
    )


def estimate_request_to_proto(req: EstimateRequest) -> estimate_pb2.EstimateRequest:
    return estimate_pb2.EstimateRequest(
        model=req.model,
        gpu=req.gpu,
        isl=i32(req.isl, "isl"),
        osl=i32(req.osl, "osl"),
        precision=precision_to_proto(req.precision),
        engine=req.engine,
        phase=PHASE.to_proto(req.phase),
        mode=MODE.to_proto(req.mode),
        parallelism=parallelism_to_proto(req.parallelism),
        batch=i32(req.batch, "batch"),
        context=i32(req.context, "context"),
        concurrency=i32(req.concurrency, "concurrency"),
        chunk_tokens=i32(req.chunk_tokens, "chunk_tokens"),
        prefill=pool_spec_to_proto(req.prefill, "prefill") if req.prefill is not None else None,
        decode=pool_spec_to_proto(req.decode, "decode") if req.decode is not None else None,
        memory_fraction=req.memory_fraction,
        rate_per_s=req.rate_per_s,
        engine_args=engine_args_to_proto(req.engine_args),
    )


# -- sweep requests -------------------------------------------------------------------------------


def sweep_grid_from_proto(msg: sweep_pb2.SweepRequest) -> SweepGrid:
    """The grid models x gpu_types x traffic x slos of a SweepRequest (every violation at once)."""
    axes = {"models": msg.models, "gpu_types": msg.gpu_types, "traffic": msg.traffic,
            "slos": msg.slos}  # fmt: skip
    # the size from the axis lengths, before any value is read or any scenario made
    total = math.prod(len(values) for values in axes.values())
    if total > MAX_SWEEP_SCENARIOS:
        shape = " x ".join(f"{len(values):,} {key}" for key, values in axes.items())
        raise InvalidInputError(
            "models",
            f"the grid models x gpu_types x traffic x slos ({shape}) has {total:,} scenarios; "
            f"at most {MAX_SWEEP_SCENARIOS:,} are allowed",
        )
    v = Violations()
    for key, values in axes.items():
        if not values:
            v.add(key, "is required: at least one value")
    for key, names in (("models", msg.models), ("gpu_types", msg.gpu_types)):
        for i, name in enumerate(names):
            with v.check():
                required_text(name, f"{key}[{i}]")
    traffic = [v.value(partial(workload_from_proto, w, f"traffic[{i}]"))
               for i, w in enumerate(msg.traffic)]  # fmt: skip
    slos = [v.value(partial(slo_from_proto, s, f"slos[{i}]")) for i, s in enumerate(msg.slos)]
    rate = v.value(lambda: finite_optional(msg, "rate_per_s", "rate_per_s"))
    prefix_hit = v.value(lambda: finite(msg.prefix_hit, "prefix_hit"))
    limits = v.value(lambda: limits_from_proto(msg.limits))
    memory_fraction = v.value(lambda: finite_optional(msg, "memory_fraction", "memory_fraction"))
    v.raise_any()
    return SweepGrid(
        models=tuple(msg.models),
        gpu_types=tuple(msg.gpu_types),
        traffic=tuple(w for w in traffic if w is not None),
        slos=tuple(s for s in slos if s is not None),
        gpus=msg.gpus,
        prefill_gpus=optional(msg, "prefill_gpus"),
        decode_gpus=optional(msg, "decode_gpus"),
        rate_per_s=rate,
        prefix_hit=prefix_hit or 0.0,
        precision=precision_from_proto(msg.precision),
        engine=msg.engine or DEFAULT_ENGINE,
        limits=limits or SearchLimits(),
        memory_fraction=memory_fraction,
    )


def sweep_grid_to_proto(grid: SweepGrid) -> sweep_pb2.SweepRequest:
    """The SweepRequest of a grid (the client adds the request_id)."""
    return sweep_pb2.SweepRequest(
        models=grid.models,
        gpu_types=grid.gpu_types,
        traffic=[workload_to_proto(w, f"traffic[{i}]") for i, w in enumerate(grid.traffic)],
        slos=[slo_to_proto(s) for s in grid.slos],
        gpus=i32(grid.gpus, "gpus"),
        prefill_gpus=i32(grid.prefill_gpus, "prefill_gpus"),
        decode_gpus=i32(grid.decode_gpus, "decode_gpus"),
        rate_per_s=grid.rate_per_s,
        prefix_hit=grid.prefix_hit,
        precision=precision_to_proto(grid.precision),
        engine=grid.engine,
        limits=limits_to_proto(grid.limits),
        memory_fraction=grid.memory_fraction,
    )
