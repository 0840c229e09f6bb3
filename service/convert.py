"""Conversion between the planner's dataclasses, the ``pdplanner.v1`` messages and stored JSON.

Every direction lives here, so that a value survives any round trip unchanged:

    proto request  -> domain request    ``plan_request_from_proto``,
                                        ``estimate_request_from_proto``,
                                        ``sweep_scenarios_from_proto`` (the server)
    domain request -> proto request     ``plan_request_to_proto``, ``estimate_request_to_proto``
                                        (the CLI's ``--server`` mode)
    domain result  -> proto result      ``plan_result_to_proto``, ``estimate_to_proto``
    proto result   -> domain result     ``plan_result_from_proto``, ``estimate_from_proto``
    domain         <-> stored JSON      ``plan_request_to_dict`` / ``plan_request_from_dict``,
                                        ``PlanResult.to_dict`` / ``plan_result_from_dict``
    stored record  -> proto resource    ``plan_to_proto``, ``sweep_to_proto``
    catalog specs  <-> proto            ``model_to_proto`` / ``model_from_proto``, ``gpu_...``

Field names are the same in the dataclasses and the messages, so a planner ``InvalidInputError``
path (``slo.ttft_ms``, ``traffic[0].isl``, ``prefill.parallelism.tp``) is also the path of the
proto field. The proto-only checks (a required message or list missing, an ``_UNSPECIFIED`` or
unknown enum value, a non-finite number, a malformed resource name) raise ``InvalidInputError``
here with the same kind of path; ``service.errors`` turns both into ``BadRequest`` violations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, TypeVar, cast, overload

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from pdplanner.v1 import catalog_pb2, common_pb2, estimate_pb2, plan_pb2, sweep_pb2

from planner.catalog import (
    GpuSpec,
    ModelSpec,
    gpu_from_entry,
    gpu_to_entry,
    model_from_hf_config,
)
from planner.errors import InvalidInputError
from planner.types import (
    Deployment,
    EstimateRequest,
    LayerBreakdown,
    Mode,
    Parallelism,
    Percentile,
    Phase,
    PhaseEstimate,
    PlanRequest,
    PlanResult,
    Pool,
    PoolSpec,
    Precision,
    SearchLimits,
    ServingEstimate,
    Slo,
    Workload,
)
from storage.records import StoredPlan, StoredSweep, SweepState

Role = Literal["prefill", "decode", "agg"]
K = TypeVar("K")
V = TypeVar("V")

# -- enums ----------------------------------------------------------------------------------------

_MODES: Final[dict[Mode, common_pb2.Mode.ValueType]] = {
    "agg": common_pb2.MODE_AGG,
    "disagg": common_pb2.MODE_DISAGG,
}
_PHASES: Final[dict[Phase, common_pb2.Phase.ValueType]] = {
    "prefill": common_pb2.PHASE_PREFILL,
    "decode": common_pb2.PHASE_DECODE,
}
_PERCENTILES: Final[dict[Percentile, common_pb2.Percentile.ValueType]] = {
    "p50": common_pb2.PERCENTILE_P50,
    "p90": common_pb2.PERCENTILE_P90,
    "p99": common_pb2.PERCENTILE_P99,
}
_ROLES: Final[dict[Role, plan_pb2.PoolRole.ValueType]] = {
    "prefill": plan_pb2.POOL_ROLE_PREFILL,
    "decode": plan_pb2.POOL_ROLE_DECODE,
    "agg": plan_pb2.POOL_ROLE_AGG,
}
_ROLE_ORDER: Final[dict[str, int]] = {"prefill": 0, "decode": 1, "agg": 2}
_ATTENTION: Final[dict[str, catalog_pb2.AttentionKind.ValueType]] = {
    "gqa": catalog_pb2.ATTENTION_KIND_GQA,
    "mla": catalog_pb2.ATTENTION_KIND_MLA,
}
_SWEEP_STATES: Final[dict[SweepState, sweep_pb2.Sweep.State.ValueType]] = {
    "running": sweep_pb2.Sweep.STATE_RUNNING,
    "done": sweep_pb2.Sweep.STATE_SUCCEEDED,
    "failed": sweep_pb2.Sweep.STATE_FAILED,
}


def _inverse(table: Mapping[K, V]) -> dict[V, K]:
    return {v: k for k, v in table.items()}


_MODE_NAMES: Final = _inverse(_MODES)
_PHASE_NAMES: Final = _inverse(_PHASES)
_PERCENTILE_NAMES: Final = _inverse(_PERCENTILES)
_ROLE_NAMES: Final = _inverse(_ROLES)
_ATTENTION_NAMES: Final = _inverse(_ATTENTION)


def _enum_choice(
    value: int, names: Mapping[Any, str], proto_names: Sequence[str], path: str
) -> str:
    """The domain string of a proto enum value; ``_UNSPECIFIED`` and unknown ones are errors."""
    if value in names:
        return names[value]
    allowed = ", ".join(proto_names)
    if value == 0:
        raise InvalidInputError(path, f"is required: one of {allowed}")
    raise InvalidInputError(path, f"unknown value {value}; expected one of {allowed}")


def _mode(value: int, path: str) -> Mode:
    return cast(Mode, _enum_choice(value, _MODE_NAMES, ("MODE_AGG", "MODE_DISAGG"), path))


def _optional_mode(value: int, path: str) -> Mode | None:
    return None if value == common_pb2.MODE_UNSPECIFIED else _mode(value, path)


_PHASE_PROTO_NAMES: Final = ("PHASE_PREFILL", "PHASE_DECODE")


def _optional_phase(value: int, path: str) -> Phase | None:
    if value == common_pb2.PHASE_UNSPECIFIED:
        return None
    return cast(Phase, _enum_choice(value, _PHASE_NAMES, _PHASE_PROTO_NAMES, path))


def _percentile(value: int, path: str) -> Percentile:
    if value == common_pb2.PERCENTILE_UNSPECIFIED:
        return "p50"
    names = ("PERCENTILE_P50", "PERCENTILE_P90", "PERCENTILE_P99")
    return cast(Percentile, _enum_choice(value, _PERCENTILE_NAMES, names, path))


def _role(value: int, path: str) -> Role:
    names = ("POOL_ROLE_PREFILL", "POOL_ROLE_DECODE", "POOL_ROLE_AGG")
    return cast(Role, _enum_choice(value, _ROLE_NAMES, names, path))


# -- small checks ---------------------------------------------------------------------------------


def _finite(value: float, path: str) -> float:
    """Reject NaN and infinities, which no field accepts and no database stores."""
    if not math.isfinite(value):
        raise InvalidInputError(path, f"must be a finite number, got {value}")
    return value


def _required_text(value: str, path: str) -> str:
    if not value.strip():
        raise InvalidInputError(path, "is required")
    return value


MAX_REQUEST_ID_CHARS: Final = 128
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PLAN_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def request_id(value: str, path: str = "request_id") -> str | None:
    """The idempotency key of a mutating call, or None when the client sent none."""
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable() or value.strip() != value:
        raise InvalidInputError(
            path, f"must be at most {MAX_REQUEST_ID_CHARS} printable characters (a UUID is best)"
        )
    return value


def catalog_id(value: str, path: str) -> str:
    """A new catalog entry's id: letters, digits, '.', '_', '-'; at most 63 characters."""
    if not value:
        raise InvalidInputError(path, "is required")
    if not _ID_RE.fullmatch(value):
        raise InvalidInputError(
            path,
            "must be letters, digits, '.', '_' or '-', start with a letter or digit and have at "
            f"most 63 characters, got {value!r}",
        )
    return value


def parse_name(name: str, collection: str, path: str = "name") -> str:
    """The id in a resource name: ``parse_name("plans/ab", "plans") == "ab"``."""
    if not name:
        raise InvalidInputError(path, f"is required: a resource name '{collection}/{{id}}'")
    prefix = collection + "/"
    ident = name[len(prefix) :] if name.startswith(prefix) else ""
    if not _PLAN_ID_RE.fullmatch(ident):
        raise InvalidInputError(
            path, f"must be a resource name '{collection}/{{id}}', got {name!r}"
        )
    return ident


INT32_MAX: Final = 2**31 - 1


@overload
def _i32(value: int, path: str) -> int: ...
@overload
def _i32(value: None, path: str) -> None: ...
def _i32(value: int | None, path: str) -> int | None:
    """A domain integer bound for an int32 field; out of range is the field's error, not a crash."""
    if value is not None and not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise InvalidInputError(path, f"must be at most {INT32_MAX:,}, got {value:,}")
    return value


def page_size(value: int, default: int, maximum: int, path: str = "page_size") -> int:
    """AIP-158 page size: 0 means the default, larger than the maximum means the maximum."""
    if value < 0:
        raise InvalidInputError(path, f"must not be negative, got {value}")
    return default if value == 0 else min(value, maximum)


# -- requests: shared parts -----------------------------------------------------------------------


def precision_from_proto(msg: common_pb2.Precision) -> Precision:
    """Empty strings mean the defaults (bf16)."""
    return Precision(dtype=msg.dtype or "bf16", kv_dtype=msg.kv_dtype or "bf16")


def precision_to_proto(p: Precision) -> common_pb2.Precision:
    return common_pb2.Precision(dtype=p.dtype, kv_dtype=p.kv_dtype)


def parallelism_from_proto(msg: common_pb2.Parallelism) -> Parallelism:
    """Unset degrees mean 1; an explicit 0 reaches the planner, which names the field."""
    return Parallelism(
        tp=msg.tp if msg.HasField("tp") else 1,
        pp=msg.pp if msg.HasField("pp") else 1,
        ep=msg.ep if msg.HasField("ep") else 1,
        attention_dp=msg.attention_dp if msg.HasField("attention_dp") else 1,
    )


def parallelism_to_proto(p: Parallelism, path: str = "parallelism") -> common_pb2.Parallelism:
    return common_pb2.Parallelism(
        tp=_i32(p.tp, f"{path}.tp"),
        pp=_i32(p.pp, f"{path}.pp"),
        ep=_i32(p.ep, f"{path}.ep"),
        attention_dp=_i32(p.attention_dp, f"{path}.attention_dp"),
    )


def workload_from_proto(msg: common_pb2.Workload, path: str) -> Workload:
    weight = _finite(msg.weight, f"{path}.weight") if msg.HasField("weight") else 1.0
    return Workload(isl=msg.isl, osl=msg.osl, weight=weight)


def workload_to_proto(w: Workload, path: str) -> common_pb2.Workload:
    return common_pb2.Workload(
        isl=_i32(w.isl, f"{path}.isl"), osl=_i32(w.osl, f"{path}.osl"), weight=w.weight
    )


def slo_from_proto(msg: plan_pb2.Slo, path: str = "slo") -> Slo:
    min_tps = msg.min_tokens_per_s_per_user if msg.HasField("min_tokens_per_s_per_user") else None
    return Slo(
        ttft_ms=_finite(msg.ttft_ms, f"{path}.ttft_ms"),
        tpot_ms=_finite(msg.tpot_ms, f"{path}.tpot_ms"),
        percentile=_percentile(msg.percentile, f"{path}.percentile"),
        min_tokens_per_s_per_user=(
            None if min_tps is None else _finite(min_tps, f"{path}.min_tokens_per_s_per_user")
        ),
    )


def slo_to_proto(s: Slo) -> plan_pb2.Slo:
    return plan_pb2.Slo(
        ttft_ms=s.ttft_ms,
        tpot_ms=s.tpot_ms,
        percentile=_PERCENTILES[s.percentile],
        min_tokens_per_s_per_user=s.min_tokens_per_s_per_user,
    )


def limits_from_proto(msg: plan_pb2.SearchLimits, path: str = "limits") -> SearchLimits:
    """Unset switches mean true; an empty mode list means both modes."""
    modes = tuple(_mode(m, f"{path}.modes[{i}]") for i, m in enumerate(msg.modes))
    return SearchLimits(
        max_tp=msg.max_tp if msg.HasField("max_tp") else None,
        allow_pp=msg.allow_pp if msg.HasField("allow_pp") else True,
        allow_ep=msg.allow_ep if msg.HasField("allow_ep") else True,
        allow_attention_dp=msg.allow_attention_dp if msg.HasField("allow_attention_dp") else True,
        modes=modes or SearchLimits().modes,
    )


def limits_to_proto(s: SearchLimits) -> plan_pb2.SearchLimits:
    return plan_pb2.SearchLimits(
        max_tp=_i32(s.max_tp, "limits.max_tp"),
        allow_pp=s.allow_pp,
        allow_ep=s.allow_ep,
        allow_attention_dp=s.allow_attention_dp,
        modes=[_MODES[m] for m in s.modes],
    )


# -- plan requests --------------------------------------------------------------------------------


def plan_request_from_proto(msg: plan_pb2.PlanRequest) -> PlanRequest:
    """The planner's request; proto-level omissions raise ``InvalidInputError`` with the path."""
    _required_text(msg.model, "model")
    _required_text(msg.gpu, "gpu")
    if not msg.traffic:
        raise InvalidInputError("traffic", "is required: at least one workload (isl, osl)")
    if not msg.HasField("slo"):
        raise InvalidInputError("slo", "is required: the ttft_ms and tpot_ms targets")
    return PlanRequest(
        model=msg.model,
        gpu=msg.gpu,
        gpus=msg.gpus,
        traffic=tuple(workload_from_proto(w, f"traffic[{i}]") for i, w in enumerate(msg.traffic)),
        slo=slo_from_proto(msg.slo),
        decode_gpu=msg.decode_gpu or None,
        prefill_gpus=msg.prefill_gpus if msg.HasField("prefill_gpus") else None,
        decode_gpus=msg.decode_gpus if msg.HasField("decode_gpus") else None,
        rate_per_s=_finite(msg.rate_per_s, "rate_per_s") if msg.HasField("rate_per_s") else None,
        prefix_hit=_finite(msg.prefix_hit, "prefix_hit"),
        precision=precision_from_proto(msg.precision),
        engine=msg.engine or "vllm",
        limits=limits_from_proto(msg.limits),
        memory_fraction=_fraction(msg),
    )


def plan_request_to_proto(req: PlanRequest, request_id: str = "") -> plan_pb2.PlanRequest:
    """The message for a domain request (every default spelled out, so nothing is guessed)."""
    return plan_pb2.PlanRequest(
        request_id=request_id,
        model=req.model,
        gpu=req.gpu,
        decode_gpu=req.decode_gpu or "",
        gpus=_i32(req.gpus, "gpus"),
        prefill_gpus=_i32(req.prefill_gpus, "prefill_gpus"),
        decode_gpus=_i32(req.decode_gpus, "decode_gpus"),
        traffic=[workload_to_proto(w, f"traffic[{i}]") for i, w in enumerate(req.traffic)],
        rate_per_s=req.rate_per_s,
        prefix_hit=req.prefix_hit,
        slo=slo_to_proto(req.slo),
        precision=precision_to_proto(req.precision),
        engine=req.engine,
        limits=limits_to_proto(req.limits),
        memory_fraction=req.memory_fraction,
    )


def plan_request_to_dict(req: PlanRequest) -> dict[str, Any]:
    """The stored JSON form of a plan request: the dataclass fields, lists for tuples."""
    return {
        "model": req.model,
        "gpu": req.gpu,
        "decode_gpu": req.decode_gpu,
        "gpus": req.gpus,
        "prefill_gpus": req.prefill_gpus,
        "decode_gpus": req.decode_gpus,
        "traffic": [{"isl": w.isl, "osl": w.osl, "weight": w.weight} for w in req.traffic],
        "rate_per_s": req.rate_per_s,
        "prefix_hit": req.prefix_hit,
        "slo": {
            "ttft_ms": req.slo.ttft_ms,
            "tpot_ms": req.slo.tpot_ms,
            "percentile": req.slo.percentile,
            "min_tokens_per_s_per_user": req.slo.min_tokens_per_s_per_user,
        },
        "precision": {"dtype": req.precision.dtype, "kv_dtype": req.precision.kv_dtype},
        "engine": req.engine,
        "limits": {
            "max_tp": req.limits.max_tp,
            "allow_pp": req.limits.allow_pp,
            "allow_ep": req.limits.allow_ep,
            "allow_attention_dp": req.limits.allow_attention_dp,
            "modes": list(req.limits.modes),
        },
        "memory_fraction": req.memory_fraction,
    }


def plan_request_from_dict(d: Mapping[str, Any]) -> PlanRequest:
    """Inverse of ``plan_request_to_dict``; missing optional keys take the dataclass defaults."""
    slo = d["slo"]
    precision = d.get("precision") or {}
    limits = d.get("limits") or {}
    return PlanRequest(
        model=d["model"],
        gpu=d["gpu"],
        gpus=int(d["gpus"]),
        traffic=tuple(
            Workload(isl=int(w["isl"]), osl=int(w["osl"]), weight=float(w.get("weight", 1.0)))
            for w in d["traffic"]
        ),
        slo=Slo(
            ttft_ms=float(slo["ttft_ms"]),
            tpot_ms=float(slo["tpot_ms"]),
            percentile=slo.get("percentile", "p50"),
            min_tokens_per_s_per_user=_opt_float(slo.get("min_tokens_per_s_per_user")),
        ),
        decode_gpu=d.get("decode_gpu"),
        prefill_gpus=_opt_int(d.get("prefill_gpus")),
        decode_gpus=_opt_int(d.get("decode_gpus")),
        rate_per_s=_opt_float(d.get("rate_per_s")),
        prefix_hit=float(d.get("prefix_hit", 0.0)),
        precision=Precision(
            dtype=precision.get("dtype", "bf16"), kv_dtype=precision.get("kv_dtype", "bf16")
        ),
        engine=d.get("engine", "vllm"),
        limits=SearchLimits(
            max_tp=_opt_int(limits.get("max_tp")),
            allow_pp=bool(limits.get("allow_pp", True)),
            allow_ep=bool(limits.get("allow_ep", True)),
            allow_attention_dp=bool(limits.get("allow_attention_dp", True)),
            modes=tuple(limits.get("modes", SearchLimits().modes)),
        ),
        memory_fraction=_opt_float(d.get("memory_fraction")),
    )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# -- estimate requests ----------------------------------------------------------------------------


def pool_spec_from_proto(msg: estimate_pb2.PoolSpec) -> PoolSpec:
    return PoolSpec(
        parallelism=parallelism_from_proto(msg.parallelism),
        workers=msg.workers if msg.HasField("workers") else 1,
        batch=msg.batch if msg.HasField("batch") else 1,
        gpu=msg.gpu or None,
    )


def pool_spec_to_proto(p: PoolSpec, path: str) -> estimate_pb2.PoolSpec:
    return estimate_pb2.PoolSpec(
        parallelism=parallelism_to_proto(p.parallelism, f"{path}.parallelism"),
        workers=_i32(p.workers, f"{path}.workers"),
        batch=_i32(p.batch, f"{path}.batch"),
        gpu=p.gpu or "",
    )


def _fraction(msg: estimate_pb2.EstimateRequest | plan_pb2.PlanRequest) -> float | None:
    """The optional memory_fraction of a request; the planner checks its range."""
    if not msg.HasField("memory_fraction"):
        return None
    return _finite(msg.memory_fraction, "memory_fraction")


def estimate_request_from_proto(msg: estimate_pb2.EstimateRequest) -> EstimateRequest:
    """The planner's request; the planner checks which of phase/mode is set and what it needs."""
    _required_text(msg.model, "model")
    _required_text(msg.gpu, "gpu")
    return EstimateRequest(
        model=msg.model,
        gpu=msg.gpu,
        isl=msg.isl,
        osl=msg.osl,
        precision=precision_from_proto(msg.precision),
        engine=msg.engine or "vllm",
        phase=_optional_phase(msg.phase, "phase"),
        mode=_optional_mode(msg.mode, "mode"),
        parallelism=parallelism_from_proto(msg.parallelism),
        batch=msg.batch if msg.HasField("batch") else None,
        context=msg.context if msg.HasField("context") else None,
        concurrency=msg.concurrency if msg.HasField("concurrency") else None,
        chunk_tokens=msg.chunk_tokens if msg.HasField("chunk_tokens") else None,
        prefill=pool_spec_from_proto(msg.prefill) if msg.HasField("prefill") else None,
        decode=pool_spec_from_proto(msg.decode) if msg.HasField("decode") else None,
        memory_fraction=_fraction(msg),
    )


def estimate_request_to_proto(req: EstimateRequest) -> estimate_pb2.EstimateRequest:
    return estimate_pb2.EstimateRequest(
        model=req.model,
        gpu=req.gpu,
        isl=_i32(req.isl, "isl"),
        osl=_i32(req.osl, "osl"),
        precision=precision_to_proto(req.precision),
        engine=req.engine,
        phase=_PHASES[req.phase] if req.phase is not None else common_pb2.PHASE_UNSPECIFIED,
        mode=_MODES[req.mode] if req.mode is not None else common_pb2.MODE_UNSPECIFIED,
        parallelism=parallelism_to_proto(req.parallelism),
        batch=_i32(req.batch, "batch"),
        context=_i32(req.context, "context"),
        concurrency=_i32(req.concurrency, "concurrency"),
        chunk_tokens=_i32(req.chunk_tokens, "chunk_tokens"),
        prefill=pool_spec_to_proto(req.prefill, "prefill") if req.prefill is not None else None,
        decode=pool_spec_to_proto(req.decode, "decode") if req.decode is not None else None,
        memory_fraction=req.memory_fraction,
    )


# -- plan results ---------------------------------------------------------------------------------


def pool_to_proto(p: Pool) -> plan_pb2.Pool:
    return plan_pb2.Pool(
        role=_ROLES[p.role],
        gpu=p.gpu,
        tp=p.tp,
        pp=p.pp,
        ep=p.ep,
        attention_dp=p.attention_dp,
        batch=p.batch,
        workers=p.workers,
        chunk_tokens=p.chunk_tokens,
    )


def pool_from_proto(msg: plan_pb2.Pool, path: str = "pool") -> Pool:
    return Pool(
        role=_role(msg.role, f"{path}.role"),
        gpu=msg.gpu,
        tp=msg.tp,
        pp=msg.pp,
        ep=msg.ep,
        attention_dp=msg.attention_dp,
        batch=msg.batch,
        workers=msg.workers,
        chunk_tokens=msg.chunk_tokens if msg.HasField("chunk_tokens") else None,
    )


def deployment_to_proto(d: Deployment) -> plan_pb2.Deployment:
    return plan_pb2.Deployment(
        mode=_MODES[d.mode],
        pools=[pool_to_proto(p) for p in d.pools],
        ttft_ms=d.ttft_ms,
        tpot_ms=d.tpot_ms,
        tokens_per_s_per_gpu=d.tokens_per_s_per_gpu,
        tokens_per_s_per_user=d.tokens_per_s_per_user,
        requests_per_s=d.requests_per_s,
        gpus=d.gpus,
        prefill_decode_gpu_ratio=d.prefill_decode_gpu_ratio,
        kv_transfer_gb_per_s_per_gpu=d.kv_transfer_gb_per_s_per_gpu,
        balanced_gpu_ratio=d.balanced_gpu_ratio,
        prompt_tokens_per_s_per_gpu=d.prompt_tokens_per_s_per_gpu,
    )


def deployment_from_proto(msg: plan_pb2.Deployment, path: str = "deployment") -> Deployment:
    return Deployment(
        mode=_mode(msg.mode, f"{path}.mode"),
        pools=tuple(pool_from_proto(p, f"{path}.pools[{i}]") for i, p in enumerate(msg.pools)),
        ttft_ms=msg.ttft_ms,
        tpot_ms=msg.tpot_ms,
        tokens_per_s_per_gpu=msg.tokens_per_s_per_gpu,
        tokens_per_s_per_user=msg.tokens_per_s_per_user,
        requests_per_s=msg.requests_per_s,
        gpus=msg.gpus,
        prefill_decode_gpu_ratio=(
            msg.prefill_decode_gpu_ratio if msg.HasField("prefill_decode_gpu_ratio") else None
        ),
        kv_transfer_gb_per_s_per_gpu=(
            msg.kv_transfer_gb_per_s_per_gpu
            if msg.HasField("kv_transfer_gb_per_s_per_gpu")
            else None
        ),
        balanced_gpu_ratio=(msg.balanced_gpu_ratio if msg.HasField("balanced_gpu_ratio") else None),
        prompt_tokens_per_s_per_gpu=(
            msg.prompt_tokens_per_s_per_gpu if msg.HasField("prompt_tokens_per_s_per_gpu") else None
        ),
    )


def plan_result_to_proto(r: PlanResult) -> plan_pb2.PlanResult:
    def dep(d: Deployment | None) -> plan_pb2.Deployment | None:
        return None if d is None else deployment_to_proto(d)

    return plan_pb2.PlanResult(
        best=dep(r.best),
        best_agg=dep(r.best_agg),
        best_disagg=dep(r.best_disagg),
        disagg_speedup=r.disagg_speedup,
        pareto_agg=[deployment_to_proto(d) for d in r.pareto_agg],
        pareto_disagg=[deployment_to_proto(d) for d in r.pareto_disagg],
        design_points=r.design_points,
        elapsed_ms=r.elapsed_ms,
        reason=r.reason or "",
        closest=dep(r.closest),
        explanation=r.explanation,
        rate_served=r.rate_served,
        for_rate=dep(r.for_rate),
        model=r.model,
        gpu_basis=r.gpu_basis,
    )


def plan_result_from_proto(msg: plan_pb2.PlanResult) -> PlanResult:
    def dep(
        field: Literal["best", "best_agg", "best_disagg", "closest", "for_rate"],
    ) -> Deployment | None:
        return deployment_from_proto(getattr(msg, field), field) if msg.HasField(field) else None

    return PlanResult(
        best=dep("best"),
        best_agg=dep("best_agg"),
        best_disagg=dep("best_disagg"),
        disagg_speedup=msg.disagg_speedup if msg.HasField("disagg_speedup") else None,
        pareto_agg=tuple(
            deployment_from_proto(d, f"pareto_agg[{i}]") for i, d in enumerate(msg.pareto_agg)
        ),
        pareto_disagg=tuple(
            deployment_from_proto(d, f"pareto_disagg[{i}]") for i, d in enumerate(msg.pareto_disagg)
        ),
        design_points=msg.design_points,
        elapsed_ms=msg.elapsed_ms,
        reason=msg.reason or None,
        closest=dep("closest"),
        explanation=msg.explanation,
        rate_served=msg.rate_served if msg.HasField("rate_served") else None,
        for_rate=dep("for_rate"),
        model=msg.model,
        gpu_basis=msg.gpu_basis,
    )


def deployment_from_dict(d: Mapping[str, Any]) -> Deployment:
    """Inverse of ``Deployment.to_dict`` (pools keyed by role; absent optional keys are None).

    Pools come back prefill, decode, agg: JSONB does not keep the order of an object's keys.
    """
    pools = sorted(d.get("pools", {}).items(), key=lambda kv: _ROLE_ORDER.get(kv[0], 99))
    return Deployment(
        mode=d["mode"],
        pools=tuple(
            Pool(
                role=cast(Role, role),
                gpu=p["gpu"],
                tp=int(p["tp"]),
                pp=int(p["pp"]),
                ep=int(p["ep"]),
                attention_dp=int(p["attention_dp"]),
                batch=int(p["batch"]),
                workers=int(p["workers"]),
                chunk_tokens=_opt_int(p.get("chunk_tokens")),
            )
            for role, p in pools
        ),
        ttft_ms=float(d["ttft_ms"]),
        tpot_ms=float(d["tpot_ms"]),
        tokens_per_s_per_gpu=float(d["tokens_per_s_per_gpu"]),
        tokens_per_s_per_user=float(d["tokens_per_s_per_user"]),
        requests_per_s=float(d["requests_per_s"]),
        gpus=int(d["gpus"]),
        prefill_decode_gpu_ratio=_opt_float(d.get("prefill_decode_gpu_ratio")),
        kv_transfer_gb_per_s_per_gpu=_opt_float(d.get("kv_transfer_gb_per_s_per_gpu")),
        balanced_gpu_ratio=_opt_float(d.get("balanced_gpu_ratio")),
        prompt_tokens_per_s_per_gpu=_opt_float(d.get("prompt_tokens_per_s_per_gpu")),
    )


def plan_result_from_dict(d: Mapping[str, Any]) -> PlanResult:
    """Inverse of ``PlanResult.to_dict`` (the stored and ``pdplanner plan --json`` form)."""

    def dep(key: str) -> Deployment | None:
        value = d.get(key)
        return None if value is None else deployment_from_dict(value)

    pareto = d.get("pareto") or {}
    return PlanResult(
        best=dep("best"),
        best_agg=dep("best_agg"),
        best_disagg=dep("best_disagg"),
        disagg_speedup=_opt_float(d.get("disagg_speedup")),
        pareto_agg=tuple(deployment_from_dict(x) for x in pareto.get("agg", ())),
        pareto_disagg=tuple(deployment_from_dict(x) for x in pareto.get("disagg", ())),
        design_points=int(d.get("design_points", 0)),
        elapsed_ms=float(d.get("elapsed_ms", 0.0)),
        reason=d.get("reason"),
        closest=dep("closest"),
        explanation=d.get("explanation", ""),
        rate_served=d.get("rate_served"),
        for_rate=dep("for_rate"),
        model=d.get("model", ""),
        gpu_basis=d.get("gpu_basis", ""),
    )


# -- estimates ------------------------------------------------------------------------------------


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct (e.g. a config.json sent as one) as a dict; integral numbers come back as ints.

    A Struct holds every number as a double; config.json integers (layer counts, sizes) are what
    the readers expect, and no config value is an integral float whose type matters.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return cast(dict[str, Any], plain(json_format.MessageToDict(s)))


def estimate_to_proto(est: PhaseEstimate | ServingEstimate) -> estimate_pb2.EstimateResponse:
    if isinstance(est, PhaseEstimate):
        layer = est.per_layer_ms
        return estimate_pb2.EstimateResponse(
            phase_estimate=estimate_pb2.PhaseEstimate(
                phase=_PHASES[est.phase],
                step_ms=est.step_ms,
                per_layer_ms=estimate_pb2.LayerBreakdown(
                    gemm=layer.gemm,
                    attention=layer.attention,
                    communication=layer.communication,
                    other=layer.other,
                ),
                memory_gb_per_gpu=est.memory_gb_per_gpu,
                fits=est.fits,
                reason=est.reason or "",
                gpus=est.gpus,
                tokens_per_s_per_gpu=est.tokens_per_s_per_gpu,
                kv_capacity_tokens=est.kv_capacity_tokens,
                max_batch=est.max_batch,
                model=est.model,
                gpu_basis=est.gpu_basis,
            )
        )
    return estimate_pb2.EstimateResponse(
        serving_estimate=estimate_pb2.ServingEstimate(
            mode=_MODES[est.mode],
            ttft_ms=est.ttft_ms,
            tpot_ms=est.tpot_ms,
            tokens_per_s_per_gpu=est.tokens_per_s_per_gpu,
            tokens_per_s_per_user=est.tokens_per_s_per_user,
            requests_per_s=est.requests_per_s,
            gpus=est.gpus,
            memory_gb_per_gpu=est.memory_gb_per_gpu,
            fits=est.fits,
            reason=est.reason or "",
            running_batch=est.running_batch,
            queued=est.queued,
            kv_transfer_gb_per_s_per_gpu=est.kv_transfer_gb_per_s_per_gpu,
            kv_transfer_ms=est.kv_transfer_ms,
            details_json=json.dumps(est.details, allow_nan=False) if est.details else "",
            model=est.model,
            gpu_basis=est.gpu_basis,
        )
    )


def estimate_from_proto(msg: estimate_pb2.EstimateResponse) -> PhaseEstimate | ServingEstimate:
    which = msg.WhichOneof("estimate")
    if which == "phase_estimate":
        p = msg.phase_estimate
        layer = p.per_layer_ms
        return PhaseEstimate(
            phase=cast(Phase, _enum_choice(p.phase, _PHASE_NAMES, _PHASE_PROTO_NAMES, "phase")),
            step_ms=p.step_ms,
            per_layer_ms=LayerBreakdown(
                gemm=layer.gemm,
                attention=layer.attention,
                communication=layer.communication,
                other=layer.other,
            ),
            memory_gb_per_gpu=p.memory_gb_per_gpu,
            fits=p.fits,
            reason=p.reason or None,
            gpus=p.gpus,
            tokens_per_s_per_gpu=p.tokens_per_s_per_gpu,
            kv_capacity_tokens=p.kv_capacity_tokens,
            max_batch=p.max_batch,
            model=p.model,
            gpu_basis=p.gpu_basis,
        )
    if which == "serving_estimate":
        s = msg.serving_estimate

        return ServingEstimate(
            mode=_mode(s.mode, "mode"),
            ttft_ms=s.ttft_ms,
            tpot_ms=s.tpot_ms,
            tokens_per_s_per_gpu=s.tokens_per_s_per_gpu,
            tokens_per_s_per_user=s.tokens_per_s_per_user,
            requests_per_s=s.requests_per_s,
            gpus=s.gpus,
            memory_gb_per_gpu=s.memory_gb_per_gpu,
            fits=s.fits,
            reason=s.reason or None,
            running_batch=s.running_batch if s.HasField("running_batch") else None,
            queued=s.queued if s.HasField("queued") else None,
            kv_transfer_gb_per_s_per_gpu=(
                s.kv_transfer_gb_per_s_per_gpu
                if s.HasField("kv_transfer_gb_per_s_per_gpu")
                else None
            ),
            kv_transfer_ms=s.kv_transfer_ms if s.HasField("kv_transfer_ms") else None,
            details=json.loads(s.details_json) if s.details_json else {},
            model=s.model,
            gpu_basis=s.gpu_basis,
        )
    raise InvalidInputError("estimate", "the response holds no estimate")


# -- stored resources -----------------------------------------------------------------------------


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def plan_name(plan_id: str) -> str:
    return f"plans/{plan_id}"


def sweep_name(sweep_id: str) -> str:
    return f"sweeps/{sweep_id}"


def plan_to_proto(stored: StoredPlan) -> plan_pb2.Plan:
    """The ``Plan`` resource of a stored plan (request and result as the planner gave them)."""
    request = plan_request_to_proto(
        plan_request_from_dict(stored.request), request_id=stored.request_id or ""
    )
    return plan_pb2.Plan(
        name=plan_name(stored.id),
        create_time=_timestamp(stored.created_at),
        request=request,
        result=plan_result_to_proto(plan_result_from_dict(stored.result)),
        planner_version=stored.planner_version,
        search_ms=stored.search_ms,
    )


def sweep_request_to_dict(msg: sweep_pb2.SweepRequest) -> dict[str, Any]:
    """The stored JSON form of a sweep request: the message's JSON with proto field names."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def sweep_request_from_dict(d: Mapping[str, Any]) -> sweep_pb2.SweepRequest:
    return json_format.ParseDict(dict(d), sweep_pb2.SweepRequest())


def scenario_to_proto(
    index: int,
    scenario: Mapping[str, Any],
    result: Mapping[str, Any] | None,
    error: str | None,
) -> sweep_pb2.SweepScenarioResult:
    """One stored scenario (request dict, result dict or error) as its message."""
    return sweep_pb2.SweepScenarioResult(
        index=index,
        scenario=plan_request_to_proto(plan_request_from_dict(scenario)),
        result=None if result is None else plan_result_to_proto(plan_result_from_dict(result)),
        error=error or "",
    )


def sweep_to_proto(stored: StoredSweep, *, with_scenarios: bool = True) -> sweep_pb2.Sweep:
    return sweep_pb2.Sweep(
        name=sweep_name(stored.id),
        create_time=_timestamp(stored.created_at),
        request=sweep_request_from_dict(stored.request),
        state=_SWEEP_STATES[stored.state],
        progress=sweep_pb2.SweepProgress(done=stored.done, total=stored.total),
        scenarios=[
            scenario_to_proto(s.index, s.scenario, s.result, s.error)
            for s in (stored.scenarios if with_scenarios else ())
        ],
    )


def sweep_scenarios_from_proto(msg: sweep_pb2.SweepRequest) -> list[PlanRequest]:
    """The grid models x gpu_types x traffic x slos, SLO varying fastest, as plan requests."""
    axes = {"models": msg.models, "gpu_types": msg.gpu_types, "traffic": msg.traffic,
            "slos": msg.slos}  # fmt: skip
    for key, values in axes.items():
        if not values:
            raise InvalidInputError(key, "is required: at least one value")
    for key in ("models", "gpu_types"):
        for i, name in enumerate(cast(Sequence[str], axes[key])):
            _required_text(name, f"{key}[{i}]")
    traffic = [workload_from_proto(w, f"traffic[{i}]") for i, w in enumerate(msg.traffic)]
    slos = [slo_from_proto(s, f"slos[{i}]") for i, s in enumerate(msg.slos)]
    limits = limits_from_proto(msg.limits)
    precision = precision_from_proto(msg.precision)
    rate = _finite(msg.rate_per_s, "rate_per_s") if msg.HasField("rate_per_s") else None
    prefix_hit = _finite(msg.prefix_hit, "prefix_hit")
    return [
        PlanRequest(
            model=model,
            gpu=gpu,
            gpus=msg.gpus,
            traffic=(workload,),
            slo=slo,
            prefill_gpus=msg.prefill_gpus if msg.HasField("prefill_gpus") else None,
            decode_gpus=msg.decode_gpus if msg.HasField("decode_gpus") else None,
            rate_per_s=rate,
            prefix_hit=prefix_hit,
            precision=precision,
            engine=msg.engine or "vllm",
            limits=limits,
        )
        for model in msg.models
        for gpu in msg.gpu_types
        for workload in traffic
        for slo in slos
    ]


def sweep_field(scenario_field: str, index: int, shape: tuple[int, int, int, int]) -> str:
    """The SweepRequest path of scenario ``index``'s field: ``slo.tpot_ms`` -> ``slos[2].tpot_ms``.

    ``shape`` is (models, gpu_types, traffic, slos); fields shared by all scenarios keep their path.
    """
    _, n_gpus, n_traffic, n_slos = shape
    s = index % n_slos
    t = (index // n_slos) % n_traffic
    g = (index // (n_slos * n_traffic)) % n_gpus
    m = index // (n_slos * n_traffic * n_gpus)
    head, dot, rest = scenario_field.partition(".")
    tail = dot + rest
    if head == "model":
        return f"models[{m}]{tail}"
    if head == "gpu":
        return f"gpu_types[{g}]{tail}"
    if head == "slo":
        return f"slos[{s}]{tail}"
    if head.startswith("traffic"):
        return f"traffic[{t}]{tail}"
    return scenario_field


# -- catalog entries ------------------------------------------------------------------------------


def model_to_proto(spec: ModelSpec, *, custom: bool) -> catalog_pb2.Model:
    return catalog_pb2.Model(
        name=f"models/{spec.name}",
        aliases=list(spec.aliases),
        custom=custom,
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        tie_word_embeddings=spec.tie_word_embeddings,
        attention=_ATTENTION[spec.attention],
        num_experts=spec.num_experts,
        experts_per_token=spec.experts_per_token,
        moe_intermediate_size=spec.moe_intermediate_size,
        num_shared_experts=spec.num_shared_experts,
        num_dense_layers=spec.num_dense_layers,
        q_lora_rank=spec.q_lora_rank,
        kv_lora_rank=spec.kv_lora_rank,
        qk_nope_head_dim=spec.qk_nope_head_dim,
        qk_rope_head_dim=spec.qk_rope_head_dim,
        v_head_dim=spec.v_head_dim,
        total_params=spec.total_params,
        active_params=spec.active_params,
        **{k: getattr(spec, k) for k in _MODEL_VARIANT_FIELDS},
    )


# ModelSpec fields carried one to one on the wire: attention variants and weight storage.
_MODEL_VARIANT_FIELDS = (
    "sliding_window",
    "num_window_layers",
    "attention_sinks",
    "attn_output_gate",
    "num_linear_layers",
    "linear_layer_params",
    "linear_state_elements",
    "index_topk",
    "index_head_dim",
    "index_n_heads",
    "index_params_per_layer",
    "dense_weight_bytes",
    "expert_weight_bytes",
    "quantization",
)


def model_from_proto(msg: catalog_pb2.Model) -> ModelSpec:
    """The catalog spec of a ``Model`` message (``total_params``/``active_params`` are derived)."""
    names = ("ATTENTION_KIND_GQA", "ATTENTION_KIND_MLA")
    return ModelSpec(
        name=msg.name.removeprefix("models/"),
        num_layers=msg.num_layers,
        hidden_size=msg.hidden_size,
        num_heads=msg.num_heads,
        num_kv_heads=msg.num_kv_heads,
        head_dim=msg.head_dim,
        intermediate_size=msg.intermediate_size,
        vocab_size=msg.vocab_size,
        tie_word_embeddings=msg.tie_word_embeddings,
        attention=cast(
            Literal["gqa", "mla"], _enum_choice(msg.attention, _ATTENTION_NAMES, names, "attention")
        ),
        num_experts=msg.num_experts,
        experts_per_token=msg.experts_per_token,
        moe_intermediate_size=msg.moe_intermediate_size,
        num_shared_experts=msg.num_shared_experts,
        num_dense_layers=msg.num_dense_layers,
        q_lora_rank=msg.q_lora_rank,
        kv_lora_rank=msg.kv_lora_rank,
        qk_nope_head_dim=msg.qk_nope_head_dim,
        qk_rope_head_dim=msg.qk_rope_head_dim,
        v_head_dim=msg.v_head_dim,
        aliases=tuple(msg.aliases),
        **{k: getattr(msg, k) for k in _MODEL_VARIANT_FIELDS},
    )


def gpu_to_proto(spec: GpuSpec, *, custom: bool) -> catalog_pb2.Gpu:
    return catalog_pb2.Gpu(
        name=f"gpus/{spec.name}",
        aliases=list(spec.aliases),
        custom=custom,
        flops_per_s=catalog_pb2.FlopsPerS(
            bf16=spec.bf16_flops_per_s, fp8=spec.fp8_flops_per_s, fp4=spec.fp4_flops_per_s
        ),
        hbm_bytes=spec.hbm_bytes,
        hbm_bytes_per_s=spec.hbm_bytes_per_s,
        nvlink_bytes_per_s=spec.nvlink_bytes_per_s,
        nvlink_domain_size=spec.nvlink_domain_size,
        scaleout_bytes_per_s=spec.scaleout_bytes_per_s,
        calibration=spec.calibration,
        hbm_datasheet_bytes=spec.hbm_datasheet_bytes,
        hbm_reported=spec.hbm_reported,
        source=spec.source,
    )


def gpu_from_proto(msg: catalog_pb2.Gpu) -> GpuSpec:
    return GpuSpec(
        name=msg.name.removeprefix("gpus/"),
        bf16_flops_per_s=msg.flops_per_s.bf16,
        fp8_flops_per_s=msg.flops_per_s.fp8,
        fp4_flops_per_s=msg.flops_per_s.fp4,
        hbm_bytes=msg.hbm_bytes,
        hbm_bytes_per_s=msg.hbm_bytes_per_s,
        nvlink_bytes_per_s=msg.nvlink_bytes_per_s,
        nvlink_domain_size=msg.nvlink_domain_size,
        scaleout_bytes_per_s=msg.scaleout_bytes_per_s,
        calibration=msg.calibration or "h100-sxm",
        aliases=tuple(msg.aliases),
        hbm_datasheet_bytes=msg.hbm_datasheet_bytes,
        hbm_reported=msg.hbm_reported,
        source=msg.source,
    )


def gpu_entry_from_proto(msg: catalog_pb2.Gpu, gpu_id: str) -> dict[str, Any]:
    """The GPU data-file entry (``gpu_from_entry``'s input) of a CreateGpu request's ``gpu``.

    The entry's keys are the message's field names, so the catalog's checks name proto paths when
    given ``field_path="gpu"`` (``gpu.hbm_bytes``, ``gpu.flops_per_s.bf16``).
    """
    flops = {"bf16": msg.flops_per_s.bf16}
    flops.update({d: v for d, v in (("fp8", msg.flops_per_s.fp8), ("fp4", msg.flops_per_s.fp4))
                  if v})  # fmt: skip
    entry: dict[str, Any] = {
        "name": gpu_id,
        "aliases": list(msg.aliases),
        "flops_per_s": flops,
        "hbm_bytes": msg.hbm_bytes,
        "hbm_bytes_per_s": msg.hbm_bytes_per_s,
        "nvlink_bytes_per_s": msg.nvlink_bytes_per_s,
        "nvlink_domain_size": msg.nvlink_domain_size,
        "scaleout_bytes_per_s": msg.scaleout_bytes_per_s,
    }
    if msg.calibration:
        entry["calibration"] = msg.calibration
    for key in ("hbm_bytes", "hbm_bytes_per_s", "nvlink_bytes_per_s", "scaleout_bytes_per_s"):
        _finite(entry[key], f"gpu.{key}")
    for dtype, value in flops.items():
        _finite(value, f"gpu.flops_per_s.{dtype}")
    return entry


# -- custom catalog entries as stored ------------------------------------------------------------
#
# A custom model is stored as {"hf_config": <config.json dict>, "aliases": [...], "request_id": ...}
# and a custom GPU as {"entry": <GPU data-file entry>, "request_id": ...}; the request_id lets a
# retried Create call recognise its own earlier success.


def custom_model_record(
    config: Mapping[str, Any], aliases: Sequence[str], request_id: str | None
) -> dict[str, Any]:
    """The stored form of a custom model."""
    return {"hf_config": dict(config), "aliases": list(aliases), "request_id": request_id}


def custom_model_from_record(name: str, spec: Mapping[str, Any]) -> ModelSpec:
    """The catalog spec of a stored custom model."""
    model = model_from_hf_config(spec["hf_config"], name, f"custom model {name}")
    return dataclasses.replace(model, aliases=tuple(spec.get("aliases") or ()))


def custom_gpu_record(gpu: GpuSpec, request_id: str | None) -> dict[str, Any]:
    """The stored form of a custom GPU."""
    return {"entry": gpu_to_entry(gpu), "request_id": request_id}


def custom_gpu_from_record(spec: Mapping[str, Any]) -> GpuSpec:
    """The catalog spec of a stored custom GPU."""
    entry = spec["entry"]
    return gpu_from_entry(entry, f"custom GPU {entry.get('name')}")
