"""Stored records (``pdplanner.storage.records``) as the API's resources: ``Plan`` and ``Sweep``.

The request and result JSON inside a record is ``pdplanner.planner.serialize``'s stored form; the
stored form of a sweep request is the message's own JSON (proto field names), kept to recognise a
retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from google.protobuf import json_format, timestamp_pb2

from pdplanner.planner import serialize
from pdplanner.service import resources
from pdplanner.service.convert.enums import SWEEP_STATE
from pdplanner.service.convert.requests import plan_request_to_proto
from pdplanner.service.convert.results import plan_result_to_proto
from pdplanner.storage.records import StoredPlan, StoredScenario, StoredSweep
from pdplanner.v1 import plan_pb2, sweep_pb2

#: Where a stored result (``pdplanner.planner.serialize``) keeps its Pareto frontiers: the two
# fields of
#: version 1, and the ``pareto`` object of unversioned records. ``PLAN_VIEW_BASIC`` leaves them
#: out, and a result read without them decodes with empty frontiers.
FRONTIER_KEYS: Final = ("pareto_agg", "pareto_disagg", "pareto")
_NO_FRONTIERS: Final[dict[str, list[Any]]] = {"pareto_agg": [], "pareto_disagg": []}


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def plan_to_proto(stored: StoredPlan, *, with_frontiers: bool = True) -> plan_pb2.Plan:
    """The ``Plan`` resource of a stored plan (request and result as the planner gave them).

    ``with_frontiers=False`` is for a plan read without its ``FRONTIER_KEYS``: its frontiers
    are empty."""
    request = plan_request_to_proto(
        serialize.plan_request_from_json(stored.request), request_id=stored.request_id or ""
    )
    result = stored.result if with_frontiers else {**stored.result, **_NO_FRONTIERS}
    return plan_pb2.Plan(
        name=resources.name("plans", stored.id),
        create_time=timestamp(stored.created_at),
        request=request,
        result=plan_result_to_proto(serialize.plan_result_from_json(result)),
        planner_version=stored.planner_version,
        search_ms=stored.search_ms,
    )


def sweep_request_to_dict(msg: sweep_pb2.SweepRequest) -> dict[str, Any]:
    """The stored JSON form of a sweep request: the message's JSON with proto field names."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def sweep_request_from_dict(d: Mapping[str, Any]) -> sweep_pb2.SweepRequest:
    return json_format.ParseDict(dict(d), sweep_pb2.SweepRequest())


def scenario_to_proto(s: StoredScenario) -> sweep_pb2.SweepScenarioResult:
    """One stored scenario (request, and result or error) as its message."""
    result = None if s.result is None else serialize.plan_result_from_json(s.result)
    error = None if s.error is None else serialize.scenario_error_from_text(s.error)
    return sweep_pb2.SweepScenarioResult(
        index=s.index,
        scenario=plan_request_to_proto(serialize.plan_request_from_json(s.scenario)),
        result=None if result is None else plan_result_to_proto(result),
        error="" if error is None else str(error),
        errors=[
            sweep_pb2.ScenarioFieldError(field=f, reason=r)
            for f, r in (() if error is None else error.violations)
        ],
    )


def sweep_to_proto(stored: StoredSweep, *, with_scenarios: bool = True) -> sweep_pb2.Sweep:
    return sweep_pb2.Sweep(
        name=resources.name("sweeps", stored.id),
        create_time=timestamp(stored.created_at),
        request=sweep_request_from_dict(stored.request),
        state=SWEEP_STATE.to_proto(stored.state),
        progress=sweep_pb2.SweepProgress(done=stored.done, total=stored.total),
        scenarios=[scenario_to_proto(s) for s in (stored.scenarios if with_scenarios else ())],
    )
