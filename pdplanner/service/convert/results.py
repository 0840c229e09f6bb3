"""Results, domain <-> proto: plan results (deployments and their pools) and estimates.

``*_to_proto`` is the server's direction; ``*_from_proto`` the CLI's ``--server`` direction, so
that a command prints the same thing in process and against a server. A dataclass field and the
message field of the same name carry the same value; ``scalars_to``/``scalars_from`` copy those,
an ``optional`` message field (one with presence) coming back as None when unset. Only the fields
that differ (enums, nested messages, "" for a missing reason) are written out below.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from google.protobuf.message import Message

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.types import (
    Deployment,
    LayerBreakdown,
    PhaseEstimate,
    PlanResult,
    Pool,
    ServingEstimate,
)
from pdplanner.service.convert.checks import optional
from pdplanner.service.convert.enums import MODE, PHASE, POOL_ROLE
from pdplanner.v1 import estimate_pb2, plan_pb2


def _plain(cls: type, message: type[Message], *special: str) -> tuple[str, ...]:
    """The fields of dataclass ``cls`` that ``message`` has too, copied as they are (all but
    ``special``)."""
    on_wire = message.DESCRIPTOR.fields_by_name
    return tuple(
        f.name for f in dataclasses.fields(cls) if f.name in on_wire and f.name not in special
    )


def scalars_to(value: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The named fields of a dataclass, as keyword arguments of a message."""
    return {n: getattr(value, n) for n in names}


def scalars_from(msg: Message, names: tuple[str, ...]) -> dict[str, Any]:
    """The named fields of a message (None for an unset ``optional`` one), as dataclass kwargs."""
    fields = msg.DESCRIPTOR.fields_by_name
    return {n: optional(msg, n) if fields[n].has_presence else getattr(msg, n) for n in names}


_POOL = _plain(Pool, plan_pb2.Pool, "role")
_DEPLOYMENT = _plain(Deployment, plan_pb2.Deployment, "mode", "pools")
_LAYER = _plain(LayerBreakdown, estimate_pb2.LayerBreakdown)
_PHASE = _plain(PhaseEstimate, estimate_pb2.PhaseEstimate, "phase", "per_layer_ms", "reason")
_SERVING = _plain(ServingEstimate, estimate_pb2.ServingEstimate, "mode", "reason", "details")

# -- plan results ---------------------------------------------------------------------------------


def pool_to_proto(p: Pool) -> plan_pb2.Pool:
    return plan_pb2.Pool(role=POOL_ROLE.to_proto(p.role), **scalars_to(p, _POOL))


def pool_from_proto(msg: plan_pb2.Pool, path: str = "pool") -> Pool:
    return Pool(role=POOL_ROLE.from_proto(msg.role, f"{path}.role"), **scalars_from(msg, _POOL))


def deployment_to_proto(d: Deployment) -> plan_pb2.Deployment:
    return plan_pb2.Deployment(
        mode=MODE.to_proto(d.mode),
        pools=[pool_to_proto(p) for p in d.pools],
        **scalars_to(d, _DEPLOYMENT),
    )


def deployment_from_proto(msg: plan_pb2.Deployment, path: str = "deployment") -> Deployment:
    return Deployment(
        mode=MODE.from_proto(msg.mode, f"{path}.mode"),
        pools=tuple(pool_from_proto(p, f"{path}.pools[{i}]") for i, p in enumerate(msg.pools)),
        **scalars_from(msg, _DEPLOYMENT),
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
        load=r.load,
    )


def plan_result_from_proto(msg: plan_pb2.PlanResult) -> PlanResult:
    def dep(
        field: Literal["best", "best_agg", "best_disagg", "closest", "for_rate"],
    ) -> Deployment | None:
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
        rate_served=optional(msg, "rate_served"),
        for_rate=dep("for_rate"),
        model=msg.model,
        gpu_basis=msg.gpu_basis,
        load=msg.load,
    )


# -- estimates ------------------------------------------------------------------------------------


def estimate_to_proto(est: PhaseEstimate | ServingEstimate) -> estimate_pb2.EstimateResponse:
    if isinstance(est, PhaseEstimate):
        return estimate_pb2.EstimateResponse(
            phase_estimate=estimate_pb2.PhaseEstimate(
                phase=PHASE.to_proto(est.phase),
                per_layer_ms=estimate_pb2.LayerBreakdown(**scalars_to(est.per_layer_ms, _LAYER)),
                reason=est.reason or "",
                **scalars_to(est, _PHASE),
            )
        )
    return estimate_pb2.EstimateResponse(
        serving_estimate=estimate_pb2.ServingEstimate(
            mode=MODE.to_proto(est.mode),
            reason=est.reason or "",
            details_json=json.dumps(est.details, allow_nan=False) if est.details else "",
            **scalars_to(est, _SERVING),
        )
    )


def estimate_from_proto(msg: estimate_pb2.EstimateResponse) -> PhaseEstimate | ServingEstimate:
    which = msg.WhichOneof("estimate")
    if which == "phase_estimate":
        p = msg.phase_estimate
        return PhaseEstimate(
            phase=PHASE.from_proto(p.phase, "phase"),
            per_layer_ms=LayerBreakdown(**scalars_from(p.per_layer_ms, _LAYER)),
            reason=p.reason or None,
            **scalars_from(p, _PHASE),
        )
    if which == "serving_estimate":
        s = msg.serving_estimate
        return ServingEstimate(
            mode=MODE.from_proto(s.mode, "mode"),
            reason=s.reason or None,
            details=json.loads(s.details_json) if s.details_json else {},
            **scalars_from(s, _SERVING),
        )
    raise InvalidInputError("estimate", "the response holds no estimate")
