"""Fuzzing every RPC's request message: no request may end in INTERNAL or UNKNOWN.

Hypothesis builds request messages field by field from their descriptors: numbers from the
ordinary (a few GPUs, an ISL of 4000) to the hostile (NaN, infinities, 5e-324, 1e308, int32
and int64 extremes), strings from catalog names to paths, page tokens and 5,000-character
runs, repeated fields up to a few dozen values, Structs with nested and non-finite values. The
RPCs that take a valid request (Plan, Estimate, Sweep, CreateModel, CreateGpu, PlanScaling,
RateMatch) mostly get one with a few fields replaced, so the fuzz reaches past validation. Each
message goes to the RPC's handler with a real SQLite store (in memory, one for the module), and
whatever the handler raises is mapped to the status a client would get
(``pdplanner.service.errors.status_for``).

Searches are given a caller that stops them after 0, 1 or 3 checks, so a valid Plan or Sweep
costs milliseconds, not seconds: the fuzz looks for crashes, not answers.

``PDPLANNER_FUZZ_EXAMPLES`` sets the examples per RPC (default 3,000, about two minutes of one
core for the module; ``make fuzz`` runs 10,000). Under CI Hypothesis draws the same examples
every run (its ``ci`` profile); elsewhere each run draws new ones. ``pytest -s`` prints, per
RPC, calls per CPU second and the CPU time per call spent drawing and in the handler.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory, struct_pb2
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

EXAMPLES = int(os.environ.get("PDPLANNER_FUZZ_EXAMPLES", "3000"))
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


@functools.cache
def _json_values(depth: int) -> st.SearchStrategy[Any]:
    """JSON values nested up to ``depth`` lists or objects deep (built once per depth)."""
    leaf = st.one_of(st.none(), st.booleans(), FLOATS, st.text(max_size=10))
    if depth <= 0:
        return leaf
    inner = _json_values(depth - 1)
    return st.one_of(leaf, st.lists(inner, max_size=3),
                     st.dictionaries(st.text(max_size=8), inner, max_size=3))  # fmt: skip


CONFIG_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "intermediate_size", "head_dim", "num_local_experts",
               "num_experts_per_tok", "kv_lora_rank", "text_config", "mlp_only_layers"]  # fmt: skip
STRUCT_ENTRIES = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=8)),
        st.one_of(INT64.map(float), _json_values(2)),
    ),
    max_size=8,
)


@st.composite
def _struct(draw: st.DrawFn) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    for key, value in draw(STRUCT_ENTRIES):
        if isinstance(value, float) and not math.isfinite(value):
            s.fields[key].number_value = value  # Struct.update refuses nothing; set it directly
        else:
            s.update({key: value})
    return s


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


STRUCTS = _struct()
CONFIG_JSON = st.one_of(
    TEXT, _json_values(3).map(_dumps), st.just('{"a":' * 2000 + "1" + "}" * 2000)
)
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    **dict.fromkeys((FD.TYPE_DOUBLE, FD.TYPE_FLOAT), FLOATS),
    **dict.fromkeys((FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32), INT32),
    **dict.fromkeys((FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64), INT64),
    **dict.fromkeys((FD.TYPE_UINT32, FD.TYPE_FIXED32), st.integers(0, 2**32 - 1)),
    **dict.fromkeys((FD.TYPE_UINT64, FD.TYPE_FIXED64), st.integers(0, 2**64 - 1)),
    FD.TYPE_BOOL: st.booleans(),
    FD.TYPE_BYTES: st.binary(max_size=20),
}


def _field_value(field: FD, depth: int) -> st.SearchStrategy[Any]:
    """One value of ``field`` (a repeated field's element, a map entry's key or value)."""
    if field.type == FD.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Struct":
            return STRUCTS
        return messages(field.message_type, depth + 1)
    if field.type == FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]),
                         st.integers(-5, 50))  # fmt: skip
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    if field.name == "config_json":
        return CONFIG_JSON
    return TEXT


Setter = Callable[[Message, Any], None]


def _field(field: FD, depth: int) -> tuple[st.SearchStrategy[Any], Setter]:
    """What to set ``field`` to (a map's entries, a repeated field's values, up to 3 or up to
    40, or one value) and how to set it on a message."""
    entry = field.message_type if field.type == FD.TYPE_MESSAGE else None
    if entry is not None and entry.GetOptions().map_entry:  # map<K, V>
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        pairs = st.lists(
            st.tuples(_field_value(key_field, depth), _field_value(value_field, depth)),
            max_size=6,
        )

        def set_map(msg: Message, entries: list[tuple[Any, Any]]) -> None:
            target = getattr(msg, field.name)
            for key, value in entries:
                if value_field.type == FD.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value

        return pairs, set_map
    value = _field_value(field, depth)
    if field.is_repeated:

        def set_repeated(msg: Message, items: list[Any]) -> None:
            target = getattr(msg, field.name)
            for item in items:
                if field.type == FD.TYPE_MESSAGE:
                    target.add().CopyFrom(item)
                else:
                    target.append(item)

        return st.one_of(st.lists(value, max_size=3), st.lists(value, max_size=40)), set_repeated

    def set_one(msg: Message, item: Any) -> None:
        if field.type == FD.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(item)
        else:
            setattr(msg, field.name, item)

    return value, set_one


_MESSAGES: dict[tuple[str, int, int], st.SearchStrategy[Message]] = {}


def messages(
    descriptor: pb_descriptor.Descriptor, depth: int = 0, one_in: int = 2
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with a random subset of their fields set, each field
    one time in ``one_in``; nested messages below depth 3 are left empty.

    Each strategy is built once and kept: Hypothesis validates a strategy the first time it is
    drawn from, which for a freshly built nest of ``one_of`` and ``lists`` costs more than the
    draw itself."""
    key = (descriptor.full_name, depth, one_in)
    if key not in _MESSAGES:
        _MESSAGES[key] = _message(descriptor, depth, one_in)
    return _MESSAGES[key]


def _message(
    descriptor: pb_descriptor.Descriptor, depth: int, one_in: int
) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.builds(cls)
    fields = [_field(field, depth) for field in descriptor.fields]
    # Which fields are set: one byte per field, drawn together (a draw per field costs more than
    # most values). Bytes are uniform; a field is set when its byte is one_in - 1 modulo one_in,
    # so the all-zero bytes a failure shrinks towards set no field.
    chosen = st.binary(min_size=len(fields), max_size=len(fields))

    @st.composite
    def draw_message(draw: st.DrawFn) -> Message:
        msg = cls()
        for (value, setter), byte in zip(fields, draw(chosen), strict=True):
            if byte % one_in == one_in - 1:
                setter(msg, draw(value))
        return msg

    return draw_message()


NEAR_CHOICE = st.integers(0, 3)


@st.composite
def near(draw: st.DrawFn, base: Message) -> Message:
    """``base`` (a valid request) with a few of its top-level fields replaced by random ones,
    or, one time in four, a wholly random message."""
    if draw(NEAR_CHOICE) == 0:
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
    "PlanScaling": scaling_pb2.PlanScalingRequest(
        model="llama-3.1-8b",
        gpu="h100-sxm",
        gpus=8,
        slo=SLO,
        series=scaling_pb2.TrafficSeries(
            intervals=[
                scaling_pb2.TrafficInterval(
                    start_s=300.0 * k, duration_s=300.0, requests_per_s=rate, mix=[WORKLOAD]
                )
                for k, rate in enumerate([2.0, 6.0])
            ]
        ),
        startup_s=120,
    ),
    "RateMatch": scaling_pb2.RateMatchRequest(
        model="llama-3.1-8b",
        slo=SLO,
        requests_per_s=8,
        isl=2000,
        osl=200,
        prefill=scaling_pb2.WorkerLayout(gpu="h100-sxm", tp=1, batch=1),
        prefill_workers=2,
        decode=scaling_pb2.WorkerLayout(gpu="h100-sxm", tp=1, batch=64),
        decode_workers=1,
        observed_tpot_ms=25,
    ),
}


@pytest.fixture(scope="module")
def store() -> Iterator[SqlStore]:
    """One migrated SQLite database in memory for the whole module: the same engine and schema
    as a file, without a sync to disk on every commit (a Sweep commits once per scenario).
    ``keeper`` holds the shared in-memory database open until the module is done."""
    name = f"fuzz-{uuid.uuid4().hex}"
    keeper = sqlite3.connect(f"file:{name}?mode=memory&cache=shared", uri=True)
    url = f"sqlite:///file:{name}?mode=memory&cache=shared&uri=true"
    try:
        upgrade(url)
        with SqlStore(url) as s:
            yield s
    finally:
        keeper.close()


def _stopping_after(checks: int) -> Callable[[], bool]:
    count = [0]

    def stop() -> bool:
        count[0] += 1
        return count[0] > checks

    return stop


# How many times a search may ask whether to stop before it is told to: 0 is a call whose
# deadline has passed before the search begins, 3 lets an aggregated search price three layouts
# (~20 ms each on a 2-core machine), which is where a hostile number reaches the kernels.
CHECKS = st.sampled_from([0, 1, 3])


def call(
    rpc: str, handler: Callable[..., Any], request: Message, store: SqlStore,
    catalogs: CatalogCache, checks: int,
) -> tuple[grpc.StatusCode, Exception | None]:  # fmt: skip
    """Call ``handler`` (the RPC named ``rpc``) on ``request`` as the server would, a search
    stopped after ``checks`` checks; the status a client would get and what the handler raised."""
    try:
        out = handler(request, store, catalogs, _stopping_after(checks))
        if rpc == "Sweep":  # a stream: the work is done as it is read
            for _ in out:
                pass
    except Exception as exc:
        return errors.status_for(exc).code, exc
    return grpc.StatusCode.OK, None


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
    in_handler = [0.0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(near(BASES[rpc]) if rpc in BASES else messages(message.DESCRIPTOR), CHECKS)
    def check(request: Message, checks: int) -> None:
        started = time.process_time()
        code, exc = call(rpc, handler, request, store, catalogs, checks)
        in_handler[0] += time.process_time() - started
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
            f"{rpc}({request}) -> {code.name}: {type(exc).__name__}: {exc}"
        )
        seen[code.name] = seen.get(code.name, 0) + 1

    started = time.process_time()
    check()
    cpu, calls = time.process_time() - started, sum(seen.values())
    # where the time goes (``pytest -s``): Hypothesis (drawing, bookkeeping) and the handler
    print(f"{rpc}: {calls} calls, {calls / cpu:.0f}/s CPU; per call "
          f"{(cpu - in_handler[0]) / calls * 1e3:.2f} ms drawing, "
          f"{in_handler[0] / calls * 1e3:.2f} ms in the handler; {seen}")  # fmt: skip
