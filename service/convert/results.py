"""Results, domain <-> proto: plan results (deployments and their pools) and estimates.

``*_to_proto`` is the server's direction; ``*_from_proto`` the CLI's ``--server`` direction, so
that a command prints the same thing in process and against a server.
"""

from __future__ import annotations

import json
from typing import Literal

from pdplanner.v1 import estimate_pb2, plan_pb2

from planner.errors import InvalidInputError
from planner.types import (
    Deployment,
    LayerBreakdown,
    PhaseEstimate,
    PlanResult,
    Pool,
    ServingEstimate,
)
from service.convert.enums import MODE, PHASE, POOL_ROLE
from service.convert.requests import optional

# -- plan results ---------------------------------------------------------------------------------


def pool_to_proto(p: Pool) -> plan_pb2.Pool:
    return plan_pb2.Pool(
        role=POOL_ROLE.to_proto(p.role),
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
        role=POOL_ROLE.from_proto(msg.role, f"{path}.role"),
        gpu=msg.gpu,
        tp=msg.tp,
        pp=msg.pp,
        ep=msg.ep,
        attention_dp=msg.attention_dp,
        batch=msg.batch,
        workers=msg.workers,
        chunk_tokens=optional(msg, "chunk_tokens"),
    )


def deployment_to_proto(d: Deployment) -> plan_pb2.Deployment:
    return plan_pb2.Deployment(
        mode=MODE.to_proto(d.mode),
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
    )


def deployment_from_proto(msg: plan_pb2.Deployment, path: str = "deployment") -> Deployment:
    return Deployment(
        mode=MODE.from_proto(msg.mode, f"{path}.mode"),
        pools=tuple(pool_from_proto(p, f"{path}.pools[{i}]") for i, p in enumerate(msg.pools)),
        ttft_ms=msg.ttft_ms,
        tpot_ms=msg.tpot_ms,
        tokens_per_s_per_gpu=msg.tokens_per_s_per_gpu,
        tokens_per_s_per_user=msg.tokens_per_s_per_user,
        requests_per_s=msg.requests_per_s,
        gpus=msg.gpus,
        prefill_decode_gpu_ratio=optional(msg, "prefill_decode_gpu_ratio"),
        kv_transfer_gb_per_s_per_gpu=optional(msg, "kv_transfer_gb_per_s_per_gpu"),
        balanced_gpu_ratio=optional(msg, "balanced_gpu_ratio"),
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
    )


def plan_result_from_proto(msg: plan_pb2.PlanResult) -> PlanResult:
    def dep(field: Literal["best", "best_agg", "best_disagg", "closest"]) -> Deployment | None:
        return deployment_from_proto(getattr(msg, field), field) if msg.HasField(field) else None

    def frontier(field: Literal["pareto_agg", "pareto_disagg"]) -> tuple[Deployment, ...]:
        points = getattr(msg, field)
        return tuple(deployment_from_proto(d, f"{field}[{i}]") for i, d in enumerate(points))

    return PlanResult(
        best=dep("best"),
        best_agg=dep("best_agg"),
        best_disagg=dep("best_disagg"),
        disagg_speedup=optional(msg, "disagg_speedup"),
        pareto_agg=frontier("pareto_agg"),
        pareto_disagg=frontier("pareto_disagg"),
        design_points=msg.design_points,
        elapsed_ms=msg.elapsed_ms,
        reason=msg.reason or None,
        closest=dep("closest"),
        explanation=msg.explanation,
    )


# -- estimates ------------------------------------------------------------------------------------


def _layer_to_proto(layer: LayerBreakdown) -> estimate_pb2.LayerBreakdown:
    return estimate_pb2.LayerBreakdown(
        gemm=layer.gemm,
        attention=layer.attention,
        communication=layer.communication,
        other=layer.other,
    )


def _layer_from_proto(msg: estimate_pb2.LayerBreakdown) -> LayerBreakdown:
    return LayerBreakdown(
        gemm=msg.gemm, attention=msg.attention, communication=msg.communication, other=msg.other
    )


def estimate_to_proto(est: PhaseEstimate | ServingEstimate) -> estimate_pb2.EstimateResponse:
    if isinstance(est, PhaseEstimate):
        return estimate_pb2.EstimateResponse(
            phase_estimate=estimate_pb2.PhaseEstimate(
                phase=PHASE.to_proto(est.phase),
                step_ms=est.step_ms,
                per_layer_ms=_layer_to_proto(est.per_layer_ms),
                memory_gb_per_gpu=est.memory_gb_per_gpu,
                fits=est.fits,
                reason=est.reason or "",
                gpus=est.gpus,
                tokens_per_s_per_gpu=est.tokens_per_s_per_gpu,
                kv_capacity_tokens=est.kv_capacity_tokens,
                max_batch=est.max_batch,
            )
        )
    return estimate_pb2.EstimateResponse(
        serving_estimate=estimate_pb2.ServingEstimate(
            mode=MODE.to_proto(est.mode),
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
        )
    )


def estimate_from_proto(msg: estimate_pb2.EstimateResponse) -> PhaseEstimate | ServingEstimate:
    which = msg.WhichOneof("estimate")
    if which == "phase_estimate":
        p = msg.phase_estimate
        return PhaseEstimate(
            phase=PHASE.from_proto(p.phase, "phase"),
            step_ms=p.step_ms,
            per_layer_ms=_layer_from_proto(p.per_layer_ms),
            memory_gb_per_gpu=p.memory_gb_per_gpu,
            fits=p.fits,
            reason=p.reason or None,
            gpus=p.gpus,
            tokens_per_s_per_gpu=p.tokens_per_s_per_gpu,
            kv_capacity_tokens=p.kv_capacity_tokens,
            max_batch=p.max_batch,
        )
    if which == "serving_estimate":
        s = msg.serving_estimate
        return ServingEstimate(
            mode=MODE.from_proto(s.mode, "mode"),
            ttft_ms=s.ttft_ms,
            tpot_ms=s.tpot_ms,
            tokens_per_s_per_gpu=s.tokens_per_s_per_gpu,
            tokens_per_s_per_user=s.tokens_per_s_per_user,
            requests_per_s=s.requests_per_s,
            gpus=s.gpus,
            memory_gb_per_gpu=s.memory_gb_per_gpu,
            fits=s.fits,
            reason=s.reason or None,
            running_batch=optional(s, "running_batch"),
            queued=optional(s, "queued"),
            kv_transfer_gb_per_s_per_gpu=optional(s, "kv_transfer_gb_per_s_per_gpu"),
            kv_transfer_ms=optional(s, "kv_transfer_ms"),
            details=json.loads(s.details_json) if s.details_json else {},
        )
    raise InvalidInputError("estimate", "the response holds no estimate")
