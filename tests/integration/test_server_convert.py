"""``pdplanner.service.convert`` and ``pdplanner.planner.serialize``: every value survives every
round trip, domain <-> proto <-> stored JSON.

The CLI's ``--server`` mode prints what comes back through these conversions, so "the same output
in process and against a server" rests on them being exact. Random requests and results come from
hypothesis; real ones from the planner and the built-in catalogs.
"""

from __future__ import annotations

import json
import typing
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdplanner.planner import serialize
from pdplanner.planner.catalog import default_gpus, default_models, gpu_to_entry
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.estimate import estimate
from pdplanner.planner.search import plan
from pdplanner.planner.sweep import SweepGrid
from pdplanner.planner.types import (
    Deployment,
    EstimateRequest,
    LayerBreakdown,
    Parallelism,
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
from pdplanner.service import convert, resources
from pdplanner.service.convert.stored import FRONTIER_KEYS

ints = st.integers(min_value=1, max_value=2**31 - 1)
small = st.integers(min_value=1, max_value=64)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False)
names = st.sampled_from(["llama-3.1-70b", "meta-llama/Llama-3.1-8B", "h100_sxm", "x"])
modes = st.sampled_from(["agg", "disagg"])

parallelisms = st.builds(Parallelism, tp=small, pp=small, ep=small, attention_dp=small)
workloads = st.builds(Workload, isl=ints, osl=ints, weight=positive)
slos = st.builds(
    Slo,
    ttft_ms=floats,
    tpot_ms=floats,
    percentile=st.sampled_from(["p50", "p90", "p99"]),
    min_tokens_per_s_per_user=st.none() | floats,
)
limits = st.builds(
    SearchLimits,
    max_tp=st.none() | small,
    allow_pp=st.booleans(),
    allow_ep=st.booleans(),
    allow_attention_dp=st.booleans(),
    modes=st.sampled_from([("agg",), ("disagg",), ("agg", "disagg"), ("disagg", "agg")]),
)
precisions = st.builds(
    Precision,
    dtype=st.sampled_from(["bf16", "fp8", "fp4"]),
    kv_dtype=st.sampled_from(["bf16", "fp8"]),
)
plan_requests = st.builds(
    PlanRequest,
    model=names,
    gpu=names,
    gpus=ints,
    traffic=st.lists(workloads, min_size=1, max_size=4).map(tuple),
    slo=slos,
    decode_gpu=st.none() | names,
    prefill_gpus=st.none() | ints,
    decode_gpus=st.none() | ints,
    rate_per_s=st.none() | floats,
    prefix_hit=floats,
    precision=precisions,
    engine=st.sampled_from(["vllm", "sglang", "trtllm"]),
    limits=limits,
    memory_fraction=st.none() | floats,
)
pool_specs = st.builds(
    PoolSpec, parallelism=parallelisms, workers=ints, batch=ints, gpu=st.none() | names
)
estimate_requests = st.builds(
    EstimateRequest,
    model=names,
    gpu=names,
    isl=ints,
    osl=ints,
    precision=precisions,
    engine=st.sampled_from(["vllm", "sglang"]),
    phase=st.none() | st.sampled_from(["prefill", "decode"]),
    mode=st.none() | modes,
    parallelism=parallelisms,
    batch=st.none() | ints,
    context=st.none() | ints,
    concurrency=st.none() | ints,
    chunk_tokens=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
    prefill=st.none() | pool_specs,
    decode=st.none() | pool_specs,
    memory_fraction=st.none() | floats,
)


def pools_for(mode: str) -> st.SearchStrategy[tuple[Pool, ...]]:
    def pool(role: str) -> st.SearchStrategy[Pool]:
        return st.builds(
            Pool,
            role=st.just(role),
            gpu=names,
            tp=small,
            pp=small,
            ep=small,
            attention_dp=small,
            batch=ints,
            workers=ints,
            chunk_tokens=st.none() | ints if role == "agg" else st.none(),
        )

    if mode == "agg":
        return st.tuples(pool("agg"))
    return st.tuples(pool("prefill"), pool("decode"))


deployments = modes.flatmap(
    lambda mode: st.builds(
        Deployment,
        mode=st.just(mode),
        pools=pools_for(mode),
        ttft_ms=floats,
        tpot_ms=floats,
        tokens_per_s_per_gpu=floats,
        tokens_per_s_per_user=floats,
        requests_per_s=floats,
        gpus=ints,
        prefill_decode_gpu_ratio=st.none() | floats,
        kv_transfer_gb_per_s_per_gpu=st.none() | floats,
        prompt_tokens_per_s_per_gpu=st.none() | floats,
    )
)
plan_results = st.builds(
    PlanResult,
    best=st.none() | deployments,
    best_agg=st.none() | deployments,
    best_disagg=st.none() | deployments,
    disagg_speedup=st.none() | floats,
    pareto_agg=st.lists(deployments, max_size=3).map(tuple),
    pareto_disagg=st.lists(deployments, max_size=3).map(tuple),
    design_points=st.integers(min_value=0, max_value=2**62),
    elapsed_ms=floats,
    reason=st.none() | st.text(min_size=1),
    closest=st.none() | deployments,
    explanation=st.text(),
    rate_served=st.none() | st.booleans(),
    for_rate=st.none() | deployments,
    model=st.text(),
    gpu_basis=st.sampled_from(["", "calibrated", "datasheet-scaled"]),
)


@settings(max_examples=200, deadline=None)
@given(plan_requests)
def test_a_plan_request_survives_proto_and_stored_json(req: PlanRequest) -> None:
    assert convert.plan_request_from_proto(convert.plan_request_to_proto(req)) == req
    stored = json.loads(json.dumps(serialize.plan_request_to_json(req)))
    assert serialize.plan_request_from_json(stored) == req


@settings(max_examples=200, deadline=None)
@given(estimate_requests)
def test_an_estimate_request_survives_proto(req: EstimateRequest) -> None:
    assert convert.estimate_request_from_proto(convert.estimate_request_to_proto(req)) == req


@settings(max_examples=100, deadline=None)
@given(plan_results)
def test_a_plan_result_survives_proto_and_stored_json(result: PlanResult) -> None:
    assert convert.plan_result_from_proto(convert.plan_result_to_proto(result)) == result
    stored = json.loads(json.dumps(serialize.plan_result_to_json(result)))
    assert serialize.plan_result_from_json(stored) == result
    legacy = json.loads(json.dumps(result.to_dict()))  # records stored before schema_version
    assert serialize.plan_result_from_json(legacy) == result


def test_real_plan_results_survive_every_round_trip() -> None:
    mix = (Workload(2000, 200, 3.0), Workload(8000, 100))
    requests = [
        PlanRequest("llama-3.1-70b", "h100-sxm", 16, (Workload(4000, 500),), Slo(1000, 20)),
        PlanRequest("mixtral-8x7b", "h200-sxm", 8, mix, Slo(2000, 30, "p90"), "h100-sxm"),
        PlanRequest("llama-3.1-70b", "h100-sxm", 16, (Workload(4000, 500),), Slo(1000, 0.5)),
    ]
    for req in requests:
        result = plan(req)
        via_proto = convert.plan_result_from_proto(convert.plan_result_to_proto(result))
        via_json = serialize.plan_result_from_json(
            json.loads(json.dumps(serialize.plan_result_to_json(result)))
        )
        assert via_proto == result
        assert via_json == result
        assert via_json.to_dict() == result.to_dict()


def test_real_estimates_survive_proto() -> None:
    base = {"model": "llama-3.1-8b", "gpu": "h100-sxm", "isl": 2000, "osl": 200}
    requests = [
        EstimateRequest(**base, phase="prefill", batch=4),  # type: ignore[arg-type]
        EstimateRequest(**base, phase="decode", batch=32, context=3000),  # type: ignore[arg-type]
        EstimateRequest(**base, mode="agg", concurrency=24),  # type: ignore[arg-type]
        EstimateRequest(
            **base,  # type: ignore[arg-type]
            mode="disagg",
            prefill=PoolSpec(Parallelism(tp=2), workers=1, batch=1),
            decode=PoolSpec(Parallelism(tp=2), workers=1, batch=64),
        ),
    ]
    for req in requests:
        result = estimate(req)
        back = convert.estimate_from_proto(convert.estimate_to_proto(result))
        assert back == result
        assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(
            result.to_dict(), sort_keys=True
        )


def test_a_phase_estimate_with_a_reason_survives_proto() -> None:
    est = PhaseEstimate("decode", 1.5, LayerBreakdown(1.0, 0.25, 0.125, 0.0625), 90.5, False,
                        "weights need 141 GB per GPU", gpus=1)  # fmt: skip
    assert convert.estimate_from_proto(convert.estimate_to_proto(est)) == est
    details = {"x": [1, 2.0, 2.5, "a"], "y": {"z": True, "n": None}}
    serving = ServingEstimate("disagg", 1.0, 2.0, 3.0, 4.0, 5.0, 6, 7.0, True, details=details)
    back = convert.estimate_from_proto(convert.estimate_to_proto(serving))
    assert back == serving
    assert json.dumps(back.to_dict()) == json.dumps(serving.to_dict())  # 2.0 stays 2.0


def test_every_catalog_entry_survives_proto() -> None:
    for model in default_models().specs():
        back = convert.model_from_proto(convert.model_to_proto(model, custom=False))
        assert back == model and back.aliases == model.aliases
    for gpu in default_gpus().specs():
        back = convert.gpu_from_proto(convert.gpu_to_proto(gpu, custom=False))
        assert back == gpu and back.aliases == gpu.aliases
        # the datasheet size and the sources do not take part in ==; they travel all the same
        assert gpu_to_entry(back) == gpu_to_entry(gpu)


def test_an_integer_too_large_for_the_wire_is_an_error_on_its_field() -> None:
    req = PlanRequest("m", "g", 16, (Workload(4000, 2**40),), Slo(1000, 20))
    with pytest.raises(InvalidInputError) as err:
        convert.plan_request_to_proto(req)
    assert err.value.field == "traffic[0].osl"


def test_a_sweeps_memory_fraction_survives_proto_and_reaches_every_scenario() -> None:
    grid = SweepGrid(("llama-3.1-8b",), ("h100-sxm", "h200-sxm"), (Workload(1000, 100),),
                     (Slo(1000, 20),), gpus=8, memory_fraction=0.95)  # fmt: skip
    back = convert.sweep_grid_from_proto(convert.sweep_grid_to_proto(grid))
    assert back == grid
    assert [s.memory_fraction for s in back.scenarios()] == [0.95, 0.95]
    unset = convert.sweep_grid_from_proto(
        convert.sweep_grid_to_proto(replace(grid, memory_fraction=None))
    )
    assert unset.memory_fraction is None


@pytest.mark.parametrize(
    ("field", "index", "expected"),
    [
        ("model", 0, "models[0]"),
        ("gpu", 5, "gpu_types[1]"),
        ("slo.tpot_ms", 5, "slos[1].tpot_ms"),
        ("traffic[0].isl", 6, "traffic[1].isl"),
        ("precision.dtype", 7, "precision.dtype"),
        ("gpus", 3, "gpus"),
    ],
)
def test_a_scenario_field_maps_to_its_sweep_request_field(
    field: str, index: int, expected: str
) -> None:
    # shape: 2 models x 2 GPU types x 2 traffic points x 2 SLOs; index = ((m*2 + g)*2 + t)*2 + s
    grid = SweepGrid(("m0", "m1"), ("g0", "g1"), (Workload(1, 1), Workload(2, 2)),
                     (Slo(1, 1), Slo(2, 2)), gpus=8)  # fmt: skip
    assert grid.field_path(field, index) == expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [("plans/abc123", True), ("plans/", False), ("abc123", False), ("plans/a/b", False),
     ("sweeps/abc", False), ("plans/" + "a" * 129, False)],
)  # fmt: skip
def test_plan_names(name: str, ok: bool) -> None:
    if ok:
        assert resources.parse(name, "plans") == name.removeprefix("plans/")
    else:
        with pytest.raises(InvalidInputError) as err:
            resources.parse(name, "plans")
        assert err.value.field == "name"


def test_the_basic_plan_view_leaves_out_exactly_the_frontiers_of_a_stored_result() -> None:
    fields = typing.get_type_hints(PlanResult)
    frontiers = {name for name, tp in fields.items() if tp == tuple[Deployment, ...]}
    # version 1 stores them under their field names; unversioned rows under "pareto"
    assert set(FRONTIER_KEYS) == frontiers | {"pareto"}


def test_a_series_past_the_interval_limit_names_its_proto_path() -> None:
    from pdplanner.planner.scaling.traffic import MAX_INTERVALS
    from pdplanner.service.convert.scaling import series_from_intervals
    from pdplanner.v1 import common_pb2, scaling_pb2

    mix = [common_pb2.Workload(isl=100, osl=10)]
    intervals = [
        scaling_pb2.TrafficInterval(start_s=60.0 * k, duration_s=60.0, requests_per_s=1.0, mix=mix)
        for k in range(MAX_INTERVALS + 1)
    ]
    with pytest.raises(InvalidInputError) as e:
        series_from_intervals(intervals, "series.intervals")
    print(e.value)
    assert e.value.field == "series.intervals"
    assert f"more than {MAX_INTERVALS:,} intervals" in e.value.reason
