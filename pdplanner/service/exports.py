"""The ExportPlan RPC: a stored plan as the files that run it (``pdplanner.planner.export``).

The handler reads the stored plan, rebuilds its request and result from the stored JSON, and asks
the planner's exporter for the files of the asked format against the current catalogs (custom
models included), on hosts of ``gpus_per_node`` GPUs (unset: 4 for a GPU of a 72-GPU NVLink
rack, else 8). Errors: NOT_FOUND on
``name`` for an unknown plan; INVALID_ARGUMENT on ``format`` when it is unset, on
``gpus_per_node`` outside 1..72, on ``name`` when the plan has no chosen deployment or a worker's
GPUs do not split evenly over its hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pdplanner.planner import serialize
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.export import EXPORT_FORMATS, PlanExport, export_plan
from pdplanner.planner.validate import Violations, integer
from pdplanner.service import errors, resources
from pdplanner.service.catalogs import CatalogCache
from pdplanner.storage.errors import NotFoundError
from pdplanner.storage.repository import PlanStore
from pdplanner.v1 import export_pb2

#: ExportFormat values by the exporter's format names.
FORMATS: Final = {
    "vllm": export_pb2.EXPORT_FORMAT_VLLM,
    "sglang": export_pb2.EXPORT_FORMAT_SGLANG,
    "trtllm": export_pb2.EXPORT_FORMAT_TRTLLM,
    "dynamo": export_pb2.EXPORT_FORMAT_DYNAMO,
    "k8s": export_pb2.EXPORT_FORMAT_K8S,
}
assert set(FORMATS) == set(EXPORT_FORMATS)

#: The most GPUs one host may have: the largest NVLink domain sold, a GB200 NVL72 rack (72 GPUs,
#: the catalog's gb200-nvl72), launched as one node. Its compute trays hold 4 each, HGX hosts 8.
MAX_GPUS_PER_NODE = 72


def gpus_per_node(value: int | None) -> int | None:
    """GPUs per host for the exporter: ``value``, or None (the exporter's default for the plan's
    GPU: a tray of 4 in a 72-GPU NVLink rack, else an 8-GPU host).

    Raises ``InvalidInputError`` on ``gpus_per_node`` outside 1..``MAX_GPUS_PER_NODE``.
    """
    if value is None:
        return None
    return integer(value, "gpus_per_node", 1, MAX_GPUS_PER_NODE)


def format_from_proto(value: int) -> str:
    """The exporter's name of an ExportFormat; INVALID_ARGUMENT on ``format`` when unset."""
    for name, number in FORMATS.items():
        if number == value:
            return name
    raise InvalidInputError("format", f"must be one of {', '.join(FORMATS)} (EXPORT_FORMAT_*)")


def export_to_proto(export: PlanExport) -> export_pb2.ExportPlanResponse:
    return export_pb2.ExportPlanResponse(
        files=[
            export_pb2.ExportedFile(path=f.path, content=f.content, executable=f.executable)
            for f in export.files
        ],
        engine=export.engine,
        engine_version=export.engine_version,
        benchmark_command=export.benchmark_command,
        notes=list(export.notes),
    )


def export_from_proto(msg: export_pb2.ExportPlanResponse, fmt: str) -> PlanExport:
    from pdplanner.planner.export import ExportedFile

    return PlanExport(
        format=fmt,
        engine=msg.engine,
        engine_version=msg.engine_version,
        files=tuple(ExportedFile(f.path, f.content, f.executable) for f in msg.files),
        benchmark_command=msg.benchmark_command,
        notes=tuple(msg.notes),
    )


def export_stored_plan(
    store: PlanStore,
    catalogs: CatalogCache,
    name: str,
    fmt: str,
    per_node: int | None = None,
) -> PlanExport:
    """The export of the stored plan ``name`` (``plans/{id}``) in ``fmt``, on hosts of
    ``per_node`` GPUs."""
    ident = resources.parse(name, "plans")
    try:
        stored = store.get_plan(ident)
    except NotFoundError:
        raise errors.not_found("plan", ident, field="name") from None
    request = serialize.plan_request_from_json(stored.request)
    result = serialize.plan_result_from_json(stored.result)
    current = catalogs.current()
    return export_plan(
        request,
        result,
        fmt,
        resources.name("plans", ident),
        current.models,
        gpus_per_node=per_node,
        gpus=current.gpus,
    )


def export_plan_rpc(
    request: export_pb2.ExportPlanRequest,
    store: PlanStore,
    catalogs: CatalogCache,
    _: Callable[[], bool],
) -> export_pb2.ExportPlanResponse:
    """The files that run a stored plan's chosen deployment, in the asked format."""
    v = Violations()
    fmt = v.value(lambda: format_from_proto(request.format))
    given = request.gpus_per_node if request.HasField("gpus_per_node") else None
    per_node = v.value(lambda: gpus_per_node(given))
    v.raise_any()
    assert fmt is not None
    return export_to_proto(export_stored_plan(store, catalogs, request.name, fmt, per_node))
