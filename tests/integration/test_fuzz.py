"""Fuzzing every RPC's request message: no request may end in INTERNAL or UNKNOWN.

Hypothesis builds request messages field by field from their descriptors: numbers from the
ordinary (a few GPUs, an ISL of 4000) to the hostile (NaN, infinities, 5e-324, 1e308, int32
and int64 extremes), strings from catalog names to paths, page tokens and 5,000-character
runs, repeated fields up to a few dozen values, Structs with nested and non-finite values. Each
message goes to the RPC's handler with a real SQLite store, and whatever the handler raises is
mapped to the status a client would get (``pdplanner.service.errors.status_for``).

Searches are given a caller that stops them after a few checks, so a valid Plan or Sweep costs
milliseconds, not seconds: the fuzz looks for crashes, not answers.

``PDPLANNER_FUZZ_EXAMPLES`` sets the examples per RPC (default 1000; ``make fuzz`` runs 10,000).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdplanner.service import errors, exports, handlers, scaling_handlers
from pdplanner.service.catalogs import CatalogCache
from pdplanner.storage.migrate import upgrade
from pdplanner.storage.repository import SqlStore
from pdplanner.v1 import (
    catalog_pb2,
    common_pb2,
    estimate_pb2,
    export_pb2,
    plan_pb2,
    scaling_pb2,
    sweep_pb2,
)

EXAMPLES = int(os.environ.get("PDPLANNER_FUZZ_EXAMPLES", "1000"))
FD = pb_descriptor.FieldDescriptor

NAMES = ["llama-3.1-8b", "llama-3.1-70b", "deepseek-r1", "h100-sxm", "gb200-nvl72", "vllm",
         "plans/abc", "models/llama-3.1-8b", "gpus/h100-sxm", "sweeps/x", "h100-sxm"]  # fmt: skip
HOSTILE_TEXT = ["", " ", "..", "../../etc", "/etc/passwd", "m" * 5000, "\x00", "é" * 100,
                "plans/" + "x" * 300, "eyJ2IjoxfQ", "A" * 6000, "{}", "[[[[", "NaN"]  # fmt: skip
FLOATS = st.one_of(
    st.sampled_from(
        [
            0.0,
            -0.0,
            1.0,
            0.5,
            0.99,
            20.0,
            1000.0,
            4000.0,
            1e12,
            1e15,
            5e-324,
            1e-300,
            1e308,
            -1e308,
            math.nan,
            math.inf,
            -math.inf,
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
INT32 = st.one_of(
    st.sampled_from([0, 1, 2, 8, 16, 72, 500, 4000, -1, 2**31 - 1, -(2**31)]),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
INT64 = st.one_of(INT32, st.sampled_from([2**63 - 1, -(2**63)]))
TEXT = st.one_of(st.sampled_from(NAMES + HOSTILE_TEXT), st.text(max_size=40))


def _json_values(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.one_of(st.none(), st.booleans(), FLOATS, st.text(max_size=10))
    if depth <= 0:
        return leaf
    inner = _json_values(depth - 1)
    return st.one_of(leaf, st.lists(inner, max_size=3),
                     st.dictionaries(st.text(max_size=8), inner, max_size=3))  # fmt: skip


CONFIG_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "intermediate_size", "head_dim", "num_local_experts",
               "num_experts_per_tok", "kv_lora_rank", "text_config", "mlp_only_layers"]  # fmt: skip


@st.composite
def _struct(draw: st.DrawFn) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    keys = draw(st.lists(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=8)), max_size=8))
    for key in keys:
        value = draw(st.one_of(INT64.map(float), _json_values(2)))
        if isinstance(value, float) and not math.isfinite(value):
            s.fields[key].number_value = value  # Struct.update refuses nothing; set it directly
        else:
            s.update({key: value})
    return s


def _field_value(field: FD, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Struct":
            return _struct()
        return messages(field.message_type, depth + 1)
    if field.type == FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]),
                         st.integers(-5, 50))  # fmt: skip
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return FLOATS
    if field.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return INT32
    if field.type in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return INT64
    if field.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if field.type in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=20)
    if field.name == "config_json":
        return st.one_of(
            TEXT, _json_values(3).map(_dumps), st.just('{"a":' * 2000 + "1" + "}" * 2000)
        )
    return TEXT


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, allow_nan=True)


@st.composite
def messages(
    draw: st.DrawFn, descriptor: pb_descriptor.Descriptor, depth: int = 0, one_in: int = 2
) -> Message:
    """A message of ``descriptor``'s type with a random subset (each field one in ``one_in``)
    of its fields set."""
    from google.protobuf import message_factory

    msg = message_factory.GetMessageClass(descriptor)()
    if depth > 3:
        return msg
    for field in descriptor.fields:
        if draw(st.integers(0, one_in - 1)) != 0:
            continue
        entry = field.message_type if field.type == FD.TYPE_MESSAGE else None
        if entry is not None and entry.GetOptions().map_entry:  # map<K, V>
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            pairs = draw(
                st.lists(
                    st.tuples(_field_value(key_field, depth), _field_value(value_field, depth)),
                    max_size=6,
                )
            )
            target = getattr(msg, field.name)
            for key, value in pairs:
                if value_field.type == FD.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            values = draw(
                st.lists(_field_value(field, depth), max_size=draw(st.sampled_from([3, 40])))
            )
            target = getattr(msg, field.name)
            for value in values:
                if field.type == FD.TYPE_MESSAGE:
                    target.add().CopyFrom(value)
                else:
                    target.append(value)
        elif field.type == FD.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(draw(_field_value(field, depth)))
        else:
            setattr(msg, field.name, draw(_field_value(field, depth)))
    return msg


@st.composite
def near(draw: st.DrawFn, base: Message) -> Message:
    """``base`` (a valid request) with a few of its top-level fields replaced by random ones,
    or, one time in four, a wholly random message."""
    if draw(st.integers(0, 3)) == 0:
        return draw(messages(base.DESCRIPTOR))
    changes = draw(messages(base.DESCRIPTOR, one_in=5))
    out = type(base)()
    out.CopyFrom(base)
    for field, _ in changes.ListFields():
        out.ClearField(field.name)
    out.MergeFrom(changes)
    return out


CONFIG = {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
          "num_hidden_layers": 16, "num_key_value_heads": 8, "vocab_size": 128256}  # fmt: skip
WORKLOAD = common_pb2.Workload(isl=2000, osl=200)
SLO = plan_pb2.Slo(ttft_ms=1000, tpot_ms=30)
GPU = catalog_pb2.Gpu(flops_per_s=catalog_pb2.FlopsPerS(bf16=1e15), hbm_bytes=80e9,
                      hbm_bytes_per_s=3e12, nvlink_bytes_per_s=450e9, nvlink_domain_size=8,
                      scaleout_bytes_per_s=50e9)  # fmt: skip
BASES: dict[str, Message] = {
    "Plan": plan_pb2.PlanRequest(
        model="llama-3.1-8b", gpu="h100-sxm", gpus=8, traffic=[WORKLOAD], slo=SLO
    ),
    "Estimate": estimate_pb2.EstimateRequest(
        model="llama-3.1-8b",
        gpu="h100-sxm",
        isl=2000,
        osl=200,
        mode=common_pb2.MODE_AGG,
        parallelism=common_pb2.Parallelism(tp=1),
        concurrency=16,
    ),
    "Sweep": sweep_pb2.SweepRequest(
        models=["llama-3.1-8b"], gpu_types=["h100-sxm"], traffic=[WORKLOAD], slos=[SLO], gpus=8
    ),
    "CreateModel": catalog_pb2.CreateModelRequest(model_id="fuzzed", config_json=_dumps(CONFIG)),
    "CreateGpu": catalog_pb2.CreateGpuRequest(gpu_id="fuzzed-gpu", gpu=GPU),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlStore]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    upgrade(url)
    with SqlStore(url) as s:
        yield s


def _stopping_after(checks: int) -> Callable[[], bool]:
    count = [0]

    def stop() -> bool:
        count[0] += 1
        return count[0] > checks

    return stop


RPCS: list[tuple[str, Any, Callable[..., Any]]] = [
    ("Plan", plan_pb2.PlanRequest, handlers.plan),
    ("Estimate", estimate_pb2.EstimateRequest, handlers.estimate),
    ("GetPlan", plan_pb2.GetPlanRequest, handlers.get_plan),
    ("ListPlans", plan_pb2.ListPlansRequest, handlers.list_plans),
    ("DeletePlan", plan_pb2.DeletePlanRequest, handlers.delete_plan),
    ("Sweep", sweep_pb2.SweepRequest, handlers.sweep),
    ("GetSweep", sweep_pb2.GetSweepRequest, handlers.get_sweep),
    ("ListSweeps", sweep_pb2.ListSweepsRequest, handlers.list_sweeps),
    ("ListModels", catalog_pb2.ListModelsRequest, handlers.list_models),
    ("ListGpus", catalog_pb2.ListGpusRequest, handlers.list_gpus),
    ("CreateModel", catalog_pb2.CreateModelRequest, handlers.create_model),
    ("CreateGpu", catalog_pb2.CreateGpuRequest, handlers.create_gpu),
    ("DeleteModel", catalog_pb2.DeleteModelRequest, handlers.delete_model),
    ("DeleteGpu", catalog_pb2.DeleteGpuRequest, handlers.delete_gpu),
    ("PlanScaling", scaling_pb2.PlanScalingRequest, scaling_handlers.plan_scaling),
    ("GetSchedule", scaling_pb2.GetScheduleRequest, scaling_handlers.get_schedule),
    ("ListSchedules", scaling_pb2.ListSchedulesRequest, scaling_handlers.list_schedules),
    ("DeleteSchedule", scaling_pb2.DeleteScheduleRequest, scaling_handlers.delete_schedule),
    ("RateMatch", scaling_pb2.RateMatchRequest, scaling_handlers.rate_match),
    ("ExportPlan", export_pb2.ExportPlanRequest, exports.export_plan_rpc),
]


@pytest.mark.parametrize(("rpc", "message", "handler"), RPCS, ids=[r[0] for r in RPCS])
def test_no_request_ends_in_internal_or_unknown(
    store: SqlStore, rpc: str, message: Any, handler: Callable[..., Any]
) -> None:
    catalogs = CatalogCache(store)
    seen: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(near(BASES[rpc]) if rpc in BASES else messages(message.DESCRIPTOR))
    def check(request: Message) -> None:
        try:
            out = handler(request, store, catalogs, _stopping_after(3))
            if rpc == "Sweep":
                for _ in out:
                    pass
            code = grpc.StatusCode.OK
        except Exception as exc:
            code = errors.status_for(exc).code
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                f"{rpc}({request}) -> {code.name}: {type(exc).__name__}: {exc}"
            )
        seen[code.name] = seen.get(code.name, 0) + 1

    check()
    print(f"{rpc}: {seen}")
