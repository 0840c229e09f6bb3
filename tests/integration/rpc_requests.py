"""Requests the server tests send, built in one place."""

from __future__ import annotations

from pdplanner.v1 import common_pb2, plan_pb2


def plan_request(**fields: object) -> plan_pb2.PlanRequest:
    """The reference query (Llama-3.1-70B on 16 x H100, ISL 4000 / OSL 500, TTFT 1 s, TPOT 20 ms)
    with ``fields`` set on top."""
    request = plan_pb2.PlanRequest(
        model="llama-3.1-70b",
        gpu="h100-sxm",
        gpus=16,
        traffic=[common_pb2.Workload(isl=4000, osl=500)],
        slo=plan_pb2.Slo(ttft_ms=1000, tpot_ms=20),
    )
    for key, value in fields.items():
        setattr(request, key, value)
    return request
