"""Every PlannerService RPC against an in-process server, on SQLite and on PostgreSQL.

The server runs the real planner and the real store (``database_url`` comes from the integration
conftest, one run per backend); the calls go over a real gRPC channel on localhost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from rpc_requests import plan_request as reference_request

from pdplanner.planner.search import plan as plan_in_process
from pdplanner.service import convert
from pdplanner.service.server import RunningServer
from pdplanner.v1 import (
    catalog_pb2,
    common_pb2,
    estimate_pb2,
    plan_pb2,
    planner_service_pb2_grpc,
    sweep_pb2,
)

Stub = planner_service_pb2_grpc.PlannerServiceStub
CountRows = Callable[..., int]

#: An HF config.json of a small Llama-style model (the shape of Llama-3.2-1B).
SMALL_LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}


@pytest.fixture
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> Stub:
    return Stub(channel)


# -- Plan -----------------------------------------------------------------------------------------


def test_plan_returns_the_stored_resource_with_the_in_process_result(stub: Stub) -> None:
    request = reference_request(request_id=str(uuid.uuid4()))
    plan = stub.Plan(request, timeout=60).plan

    assert plan.name.startswith("plans/")
    assert plan.create_time.seconds > 0
    # the request as stored: what was sent, with every default spelled out
    assert plan.request.request_id == request.request_id
    assert convert.plan_request_from_proto(plan.request) == convert.plan_request_from_proto(request)
    assert plan.request.engine == "vllm" and plan.request.precision.dtype == "bf16"
    assert plan.planner_version
    assert plan.search_ms > 0
    best = plan.result.best
    assert best.mode in (common_pb2.MODE_AGG, common_pb2.MODE_DISAGG)
    assert best.ttft_ms <= 1000 and best.tpot_ms <= 20
    assert best.gpus <= 16
    # the same search in process gives the same recommendation (only the timing differs)
    local = plan_in_process(convert.plan_request_from_proto(request))
    remote = convert.plan_result_from_proto(plan.result)
    assert remote.best == local.best
    assert remote.pareto_agg == local.pareto_agg
    assert remote.pareto_disagg == local.pareto_disagg
    assert remote.design_points == local.design_points


def test_an_slo_nothing_meets_is_a_plan_with_a_reason_not_an_error(stub: Stub) -> None:
    request = reference_request()
    request.slo.tpot_ms = 0.01
    plan = stub.Plan(request, timeout=60).plan
    assert not plan.result.HasField("best")
    assert plan.result.reason
    print("reason:", plan.result.reason)


def test_a_repeated_request_id_returns_the_first_plan_and_stores_one_row(
    stub: Stub, count_rows: CountRows
) -> None:
    request = reference_request(request_id="retry-" + uuid.uuid4().hex)
    first = stub.Plan(request, timeout=60).plan
    second = stub.Plan(request, timeout=60).plan
    assert second == first
    assert count_rows("plans") == 1


def test_plan_accepts_aliases_and_stores_canonical_names(stub: Stub) -> None:
    request = reference_request(model="meta-llama/Llama-3.1-70B", gpu="H100_SXM")
    plan = stub.Plan(request, timeout=60).plan
    assert plan.request.model == "meta-llama/Llama-3.1-70B"  # the request as sent
    listed = stub.ListPlans(plan_pb2.ListPlansRequest(model="llama-3.1-70b", gpu="h100-sxm"))
    assert [p.name for p in listed.plans] == [plan.name]


# -- GetPlan, ListPlans, DeletePlan ---------------------------------------------------------------


def test_get_plan_returns_what_plan_returned(stub: Stub) -> None:
    plan = stub.Plan(reference_request(), timeout=60).plan
    got = stub.GetPlan(plan_pb2.GetPlanRequest(name=plan.name)).plan
    assert got == plan


def test_list_plans_pages_newest_first_without_repeats(stub: Stub) -> None:
    names = [stub.Plan(reference_request(gpus=n), timeout=60).plan.name for n in (8, 9, 10, 11, 12)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = stub.ListPlans(plan_pb2.ListPlansRequest(page_size=2, page_token=token))
        assert len(page.plans) <= 2
        seen.extend(p.name for p in page.plans)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == names[::-1]
    assert pages == 3


def test_list_plans_leaves_the_frontiers_out_unless_asked_for_the_full_view(stub: Stub) -> None:
    plan = stub.Plan(reference_request(), timeout=60).plan
    assert plan.result.pareto_agg and plan.result.pareto_disagg

    (basic,) = stub.ListPlans(plan_pb2.ListPlansRequest()).plans
    (full,) = stub.ListPlans(plan_pb2.ListPlansRequest(view=plan_pb2.PLAN_VIEW_FULL)).plans

    assert full == plan
    assert not basic.result.pareto_agg and not basic.result.pareto_disagg
    without_frontiers = plan_pb2.Plan()
    without_frontiers.CopyFrom(plan)
    without_frontiers.result.ClearField("pareto_agg")
    without_frontiers.result.ClearField("pareto_disagg")
    assert basic == without_frontiers
    explicit = stub.ListPlans(plan_pb2.ListPlansRequest(view=plan_pb2.PLAN_VIEW_BASIC)).plans
    assert list(explicit) == [basic]


def test_list_plans_refuses_an_unknown_view(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListPlans(plan_pb2.ListPlansRequest(view=7))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "view" in (caught.value.details() or "")


def test_list_plans_filters_by_model_and_gpu(stub: Stub) -> None:
    a = stub.Plan(reference_request(), timeout=60).plan
    b = stub.Plan(reference_request(model="llama-3.1-8b", gpus=8), timeout=60).plan
    c = stub.Plan(reference_request(model="llama-3.1-8b", gpu="h200-sxm", gpus=8), timeout=60).plan

    def names(**filters: str) -> list[str]:
        page = stub.ListPlans(plan_pb2.ListPlansRequest(**filters))
        return [p.name for p in page.plans]

    assert names() == [c.name, b.name, a.name]
    assert names(model="llama-3.1-8b") == [c.name, b.name]
    assert names(gpu="h100-sxm") == [b.name, a.name]
    assert names(model="llama-3.1-8b", gpu="h200") == [c.name]
    assert names(model="qwen3-32b") == []


def test_delete_plan_removes_it(stub: Stub, count_rows: CountRows) -> None:
    plan = stub.Plan(reference_request(), timeout=60).plan
    stub.DeletePlan(plan_pb2.DeletePlanRequest(name=plan.name))
    assert count_rows("plans") == 0
    with pytest.raises(grpc.RpcError) as err:
        stub.GetPlan(plan_pb2.GetPlanRequest(name=plan.name))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- Estimate -------------------------------------------------------------------------------------


def test_estimate_phase_step(stub: Stub) -> None:
    request = estimate_pb2.EstimateRequest(
        model="llama-3.1-8b",
        gpu="h100-sxm",
        isl=1024,
        osl=128,
        phase=common_pb2.PHASE_DECODE,
        parallelism=common_pb2.Parallelism(tp=1),
        batch=1,
    )
    response = stub.Estimate(request)
    step = response.phase_estimate
    assert response.WhichOneof("estimate") == "phase_estimate"
    assert step.phase == common_pb2.PHASE_DECODE
    assert step.fits
    # batch 1 decode reads the 16 GB of weights from 3.35 TB/s HBM: a few milliseconds
    assert 4.0 < step.step_ms < 10.0, step.step_ms


def test_estimate_disagg_deployment_matches_in_process(stub: Stub) -> None:
    from pdplanner.planner.estimate import estimate as estimate_in_process

    request = estimate_pb2.EstimateRequest(
        model="llama-3.1-70b",
        gpu="h100-sxm",
        isl=4000,
        osl=500,
        mode=common_pb2.MODE_DISAGG,
        prefill=estimate_pb2.PoolSpec(parallelism=common_pb2.Parallelism(tp=4), workers=2, batch=1),
        decode=estimate_pb2.PoolSpec(parallelism=common_pb2.Parallelism(tp=8), workers=1, batch=64),
    )
    remote = convert.estimate_from_proto(stub.Estimate(request))
    local = estimate_in_process(convert.estimate_request_from_proto(request))
    assert remote == local
    assert remote.gpus == 16


# -- Sweep ----------------------------------------------------------------------------------------


def sweep_request(**overrides: object) -> sweep_pb2.SweepRequest:
    request = sweep_pb2.SweepRequest(
        request_id=str(uuid.uuid4()),
        models=["llama-3.1-8b", "llama-3.1-70b"],
        gpu_types=["h100-sxm"],
        traffic=[common_pb2.Workload(isl=4000, osl=500), common_pb2.Workload(isl=1000, osl=1000)],
        slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=20), plan_pb2.Slo(ttft_ms=1000, tpot_ms=50)],
        gpus=16,
    )
    for key, value in overrides.items():
        if isinstance(value, list):
            request.ClearField(key)  # type: ignore[arg-type]
            getattr(request, key).extend(value)
        else:
            setattr(request, key, value)
    return request


def test_sweep_streams_each_scenario_and_progress_then_stores_it(
    stub: Stub, count_rows: CountRows
) -> None:
    events = list(stub.Sweep(sweep_request(), timeout=120))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "sweep" and kinds[-1] == "sweep"
    assert kinds[1:-1] == ["scenario", "progress"] * 8
    opening, final = events[0].sweep, events[-1].sweep
    assert opening.state == sweep_pb2.Sweep.STATE_RUNNING
    assert final.state == sweep_pb2.Sweep.STATE_SUCCEEDED
    assert final.name == opening.name
    assert [e.progress.done for e in events if e.HasField("progress")] == list(range(1, 9))
    scenarios = [e.scenario for e in events if e.HasField("scenario")]
    assert [s.index for s in scenarios] == list(range(8))
    # model varies slowest, the SLO fastest
    assert [s.scenario.model for s in scenarios] == ["llama-3.1-8b"] * 4 + ["llama-3.1-70b"] * 4
    assert [s.scenario.slo.tpot_ms for s in scenarios] == [20, 50] * 4
    assert all(s.HasField("result") and not s.error for s in scenarios)

    stored = stub.GetSweep(sweep_pb2.GetSweepRequest(name=final.name)).sweep
    assert stored.state == sweep_pb2.Sweep.STATE_SUCCEEDED
    assert stored.progress.done == stored.progress.total == 8
    assert list(stored.scenarios) == scenarios
    assert count_rows("sweep_scenarios") == 8


def test_sweep_scenario_that_is_invalid_gets_an_error_not_a_failed_sweep(stub: Stub) -> None:
    # fp8 is valid on the H100 and invalid on the A100 (no fp8 tensor cores): half the grid fails
    request = sweep_request(models=["llama-3.1-8b"], gpu_types=["h100-sxm", "a100-sxm-80g"])
    request.precision.dtype = "fp8"  # the A100 has no fp8 tensor cores
    events = list(stub.Sweep(request, timeout=120))
    scenarios = [e.scenario for e in events if e.HasField("scenario")]
    assert events[-1].sweep.state == sweep_pb2.Sweep.STATE_SUCCEEDED
    h100 = [s for s in scenarios if s.scenario.gpu == "h100-sxm"]
    a100 = [s for s in scenarios if s.scenario.gpu == "a100-sxm-80g"]
    assert all(s.HasField("result") for s in h100)
    assert all(not s.HasField("result") and s.error.startswith("precision.dtype") for s in a100)
    print("scenario error:", a100[0].error)


def test_a_repeated_sweep_request_id_replays_the_stored_sweep(
    stub: Stub, count_rows: CountRows
) -> None:
    request = sweep_request()
    first = list(stub.Sweep(request, timeout=120))
    again = list(stub.Sweep(request, timeout=120))
    assert [e.scenario for e in again if e.HasField("scenario")] == [
        e.scenario for e in first if e.HasField("scenario")
    ]
    assert again[-1].sweep.name == first[-1].sweep.name
    assert count_rows("sweeps") == 1
    assert count_rows("sweep_scenarios") == 8


# -- catalogs -------------------------------------------------------------------------------------


def test_list_models_and_gpus_hold_the_built_in_catalogs(stub: Stub) -> None:
    models = stub.ListModels(catalog_pb2.ListModelsRequest()).models
    names = [m.name for m in models]
    assert names == sorted(names)
    assert {"models/llama-3.1-70b", "models/deepseek-r1"} <= set(names)
    r1 = next(m for m in models if m.name == "models/deepseek-r1")
    assert r1.attention == catalog_pb2.ATTENTION_KIND_MLA
    assert r1.num_experts == 256 and not r1.custom
    gpus = stub.ListGpus(catalog_pb2.ListGpusRequest()).gpus
    h100 = next(g for g in gpus if g.name == "gpus/h100-sxm")
    assert h100.hbm_bytes == 81559 * 2**20  # as the device reports it
    assert h100.flops_per_s.fp8 > 0 and h100.nvlink_domain_size == 8


def test_catalog_listings_page(stub: Stub) -> None:
    everything = [m.name for m in stub.ListModels(catalog_pb2.ListModelsRequest()).models]
    paged: list[str] = []
    token = ""
    while True:
        page = stub.ListModels(catalog_pb2.ListModelsRequest(page_size=3, page_token=token))
        paged.extend(m.name for m in page.models)
        token = page.next_page_token
        if not token:
            break
    assert paged == everything


def test_create_model_from_a_config_json_makes_it_plannable(stub: Stub) -> None:
    created = stub.CreateModel(
        catalog_pb2.CreateModelRequest(
            request_id=str(uuid.uuid4()),
            model_id="tiny-llama",
            config_json=json.dumps(SMALL_LLAMA_CONFIG),
            aliases=["acme/Tiny-Llama"],
        )
    ).model
    assert created.name == "models/tiny-llama"
    assert created.custom and created.num_layers == 16 and created.num_kv_heads == 8
    assert list(created.aliases) == ["acme/Tiny-Llama"]
    listed = {m.name: m for m in stub.ListModels(catalog_pb2.ListModelsRequest()).models}
    assert listed["models/tiny-llama"] == created

    plan = stub.Plan(reference_request(model="acme/Tiny-Llama", gpus=4), timeout=60).plan
    assert plan.result.HasField("best")


def test_create_model_accepts_the_config_as_a_struct(stub: Stub) -> None:
    request = catalog_pb2.CreateModelRequest(model_id="tiny-struct")
    request.config.update(SMALL_LLAMA_CONFIG)
    created = stub.CreateModel(request).model
    assert created.hidden_size == 2048 and created.tie_word_embeddings


def test_create_gpu_makes_it_plannable(stub: Stub) -> None:
    gpu = catalog_pb2.Gpu(
        flops_per_s=catalog_pb2.FlopsPerS(bf16=1200e12, fp8=2400e12),
        hbm_bytes=96e9,
        hbm_bytes_per_s=4.0e12,
        nvlink_bytes_per_s=450e9,
        nvlink_domain_size=8,
        scaleout_bytes_per_s=50e9,
        aliases=["acme-x1"],
    )
    created = stub.CreateGpu(
        catalog_pb2.CreateGpuRequest(request_id=str(uuid.uuid4()), gpu_id="acme-x", gpu=gpu)
    ).gpu
    assert created.name == "gpus/acme-x" and created.custom
    assert created.calibration == "h100-sxm"
    assert created.flops_per_s.fp4 == 0
    listed = {g.name: g for g in stub.ListGpus(catalog_pb2.ListGpusRequest()).gpus}
    assert listed["gpus/acme-x"] == created

    plan = stub.Plan(reference_request(gpu="acme-x1"), timeout=60).plan
    assert plan.result.best.pools[0].gpu == "acme-x"


def test_a_repeated_create_request_id_returns_the_first_entry(
    stub: Stub, count_rows: CountRows
) -> None:
    request = catalog_pb2.CreateModelRequest(
        request_id="create-" + uuid.uuid4().hex,
        model_id="tiny-again",
        config_json=json.dumps(SMALL_LLAMA_CONFIG),
    )
    first = stub.CreateModel(request).model
    assert stub.CreateModel(request).model == first
    assert count_rows("custom_models") == 1


# -- health and reflection ------------------------------------------------------------------------


def test_health_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "pdplanner.v1.PlannerService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_describes_the_planner_service(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {
        "pdplanner.v1.PlannerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("pdplanner.v1.PlannerService")
    assert {m.name for m in service.methods} == {
        "Plan", "Estimate", "GetPlan", "ExportPlan", "ListPlans", "DeletePlan", "Sweep", "GetSweep",
        "ListSweeps", "ListModels", "ListGpus", "CreateModel", "CreateGpu", "PlanScaling",
        "GetSchedule", "ListSchedules", "DeleteSchedule", "RateMatch", "DeleteModel", "DeleteGpu",
    }  # fmt: skip
    plan_request = pool.FindMessageTypeByName("pdplanner.v1.PlanRequest")
    assert plan_request.fields_by_name["slo"].message_type.full_name == "pdplanner.v1.Slo"
