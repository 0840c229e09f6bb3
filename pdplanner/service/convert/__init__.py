"""Conversion between the planner's dataclasses and the ``pdplanner.v1`` messages, by topic:

    enums.py      proto enum values <-> the planner's strings, from the descriptors
    checks.py     wire-level checks: finite numbers, required text, ids, int32 range, page size
    requests.py   plan, estimate and sweep requests, both directions
    results.py    plan results and estimates, both directions
    catalog.py    catalog entries and the stored form of custom ones
    stored.py     stored records -> ``Plan`` and ``Sweep`` resources

Field names are the same in the dataclasses and the messages, so a planner ``InvalidInputError``
path (``slo.ttft_ms``, ``traffic[0].isl``, ``prefill.parallelism.tp``) is also the path of the
proto field; ``pdplanner.service.errors`` turns it into a ``BadRequest`` violation. The stored JSON
of requests and results is ``pdplanner.planner.serialize``'s, and resource names are
``pdplanner.service.resources``'.
"""

from pdplanner.service.convert.catalog import (
    custom_gpu_from_record,
    custom_gpu_record,
    custom_model_from_record,
    custom_model_record,
    gpu_entry_from_proto,
    gpu_from_proto,
    gpu_to_proto,
    model_from_proto,
    model_to_proto,
    struct_to_dict,
)
from pdplanner.service.convert.checks import catalog_id, page_size, request_id
from pdplanner.service.convert.requests import (
    estimate_request_from_proto,
    estimate_request_to_proto,
    plan_request_from_proto,
    plan_request_to_proto,
    sweep_grid_from_proto,
    sweep_grid_to_proto,
)
from pdplanner.service.convert.results import (
    estimate_from_proto,
    estimate_to_proto,
    plan_result_from_proto,
    plan_result_to_proto,
)
from pdplanner.service.convert.stored import (
    plan_to_proto,
    scenario_to_proto,
    sweep_request_to_dict,
    sweep_to_proto,
)

__all__ = [
    "catalog_id",
    "custom_gpu_from_record",
    "custom_gpu_record",
    "custom_model_from_record",
    "custom_model_record",
    "estimate_from_proto",
    "estimate_request_from_proto",
    "estimate_request_to_proto",
    "estimate_to_proto",
    "gpu_entry_from_proto",
    "gpu_from_proto",
    "gpu_to_proto",
    "model_from_proto",
    "model_to_proto",
    "page_size",
    "plan_request_from_proto",
    "plan_request_to_proto",
    "plan_result_from_proto",
    "plan_result_to_proto",
    "plan_to_proto",
    "request_id",
    "scenario_to_proto",
    "struct_to_dict",
    "sweep_grid_from_proto",
    "sweep_grid_to_proto",
    "sweep_request_to_dict",
    "sweep_to_proto",
]
