"""Every way a call can fail, and what the caller is told: status code, message, error details.

A bad request is INVALID_ARGUMENT with a ``google.rpc.BadRequest`` whose field violation names the
path of the offending field in the request message, whichever layer caught it (proto conversion,
the catalog, the planner's validation). Missing things are NOT_FOUND, overload RESOURCE_EXHAUSTED,
a passed deadline DEADLINE_EXCEEDED with nothing stored. No request crashes the server.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rpc_requests import plan_request

from pdplanner.planner.search import plan as plan_in_process
from pdplanner.planner.types import PlanRequest, Slo, Workload
from pdplanner.service.server import RunningServer, start_server
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


@pytest.fixture
def stub(server: RunningServer) -> Iterator[Stub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Stub(channel)


def failure(call: Callable[[], object]) -> grpc.RpcError:
    """The error a call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


def resource_info(error: grpc.RpcError) -> error_details_pb2.ResourceInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ResourceInfo in the error details")


def assert_invalid(error: grpc.RpcError, field: str) -> str:
    """INVALID_ARGUMENT with exactly one violation, on ``field``; returns its description."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    found = violations(error)
    assert [f for f, _ in found] == [field], found
    print(f"{field}: {found[0][1]}")
    return found[0][1]


# -- INVALID_ARGUMENT: the field path of every kind of bad request ---------------------------------


def _plan_without_slo() -> plan_pb2.PlanRequest:
    request = plan_request()
    request.ClearField("slo")
    return request


def _plan_with(mutate: Callable[[plan_pb2.PlanRequest], None]) -> plan_pb2.PlanRequest:
    request = plan_request()
    mutate(request)
    return request


BAD_PLANS: list[tuple[str, Callable[[], plan_pb2.PlanRequest]]] = [
    ("model", lambda: plan_request(model="")),
    ("gpu", lambda: plan_request(gpu="  ")),
    ("gpus", lambda: plan_request(gpus=0)),
    ("slo", _plan_without_slo),
    ("traffic", lambda: _plan_with(lambda r: r.ClearField("traffic"))),
    ("traffic[1].isl", lambda: _plan_with(lambda r: r.traffic.add(isl=0, osl=10))),
    ("traffic[0].weight", lambda: _plan_with(lambda r: setattr(r.traffic[0], "weight", math.nan))),
    ("slo.ttft_ms", lambda: _plan_with(lambda r: setattr(r.slo, "ttft_ms", -1.0))),
    ("slo.tpot_ms", lambda: _plan_with(lambda r: setattr(r.slo, "tpot_ms", math.inf))),
    ("slo.percentile", lambda: _plan_with(lambda r: setattr(r.slo, "percentile", 42))),
    ("limits.modes[1]", lambda: _plan_with(lambda r: r.limits.modes.extend([1, 0]))),
    ("limits.max_tp", lambda: _plan_with(lambda r: setattr(r.limits, "max_tp", 0))),
    ("prefill_gpus", lambda: plan_request(prefill_gpus=17)),
    ("prefix_hit", lambda: plan_request(prefix_hit=1.5)),
    ("rate_per_s", lambda: plan_request(rate_per_s=-3.0)),
    ("precision.dtype", lambda: _plan_with(lambda r: setattr(r.precision, "dtype", "fp16"))),
    ("request_id", lambda: plan_request(request_id="x" * 129)),
]


@pytest.mark.parametrize(("field", "make"), BAD_PLANS, ids=[f for f, _ in BAD_PLANS])
def test_a_bad_plan_request_names_its_field(
    stub: Stub, count_rows: CountRows, field: str, make: Callable[[], plan_pb2.PlanRequest]
) -> None:
    assert_invalid(failure(lambda: stub.Plan(make(), timeout=30)), field)
    assert count_rows("plans") == 0


def test_every_violation_of_a_request_comes_back_not_only_the_first(stub: Stub) -> None:
    error = failure(lambda: stub.Plan(plan_pb2.PlanRequest(), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    print(found)
    assert [f for f, _ in found] == ["model", "gpu", "traffic", "slo"]
    bad_sweep = _sweep(slos=[plan_pb2.Slo(ttft_ms=math.nan, tpot_ms=math.inf)])
    bad_sweep.ClearField("models")
    error = failure(lambda: list(stub.Sweep(bad_sweep, timeout=30)))
    fields = [f for f, _ in violations(error)]
    assert fields == ["models", "slos[0].ttft_ms"], fields


def _estimate(**fields: object) -> estimate_pb2.EstimateRequest:
    request = estimate_pb2.EstimateRequest(model="llama-3.1-70b", gpu="h100-sxm", isl=4000, osl=500)
    for key, value in fields.items():
        if key in ("parallelism", "prefill", "decode"):
            getattr(request, key).CopyFrom(value)
        elif key == "engine_args":
            request.engine_args.update(value)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    return request


BAD_ESTIMATES: list[tuple[str, estimate_pb2.EstimateRequest]] = [
    ("phase", _estimate(batch=1)),  # neither phase nor mode
    ("batch", _estimate(phase=common_pb2.PHASE_PREFILL, batch=0)),
    ("isl", _estimate(phase=common_pb2.PHASE_PREFILL, batch=1, isl=-5)),
    (
        "parallelism.tp",
        _estimate(phase=common_pb2.PHASE_DECODE, batch=8, parallelism=common_pb2.Parallelism(tp=3)),
    ),
    (
        "parallelism.ep",
        _estimate(phase=common_pb2.PHASE_DECODE, batch=8, parallelism=common_pb2.Parallelism(ep=2)),
    ),
    ("mode", _estimate(mode=7)),
    ("concurrency", _estimate(mode=common_pb2.MODE_AGG)),
    ("rate_per_s", _estimate(mode=common_pb2.MODE_AGG, rate_per_s=-1.0)),
    ("rate_per_s", _estimate(mode=common_pb2.MODE_AGG, concurrency=4, rate_per_s=2.0)),
    (
        "engine_args.max_num_seqs",
        _estimate(mode=common_pb2.MODE_AGG, concurrency=4, engine_args={"max_num_seqs": "0"}),
    ),
    (
        "engine_args.block_size",
        _estimate(mode=common_pb2.MODE_AGG, concurrency=4, engine_args={"block_size": "16"}),
    ),
    (
        "decode.parallelism.tp",
        _estimate(
            mode=common_pb2.MODE_DISAGG,
            prefill=estimate_pb2.PoolSpec(parallelism=common_pb2.Parallelism(tp=4)),
            decode=estimate_pb2.PoolSpec(parallelism=common_pb2.Parallelism(tp=0)),
        ),
    ),
]


@pytest.mark.parametrize(("field", "request_"), BAD_ESTIMATES, ids=[f for f, _ in BAD_ESTIMATES])
def test_a_bad_estimate_request_names_its_field(
    stub: Stub, field: str, request_: estimate_pb2.EstimateRequest
) -> None:
    assert_invalid(failure(lambda: stub.Estimate(request_, timeout=30)), field)


def _pool(tp: int, workers: int, batch: int = 1, gpu: str = "") -> estimate_pb2.PoolSpec:
    parallelism = common_pb2.Parallelism(tp=tp)
    return estimate_pb2.PoolSpec(parallelism=parallelism, workers=workers, batch=batch, gpu=gpu)


SEVERAL_BAD_ESTIMATES: list[tuple[list[str], estimate_pb2.EstimateRequest]] = [
    # an unknown model: the layout is still range-checked, and the step's own fields
    (
        ["model", "parallelism.tp", "batch", "context"],
        _estimate(
            model="llama-9b",
            phase=common_pb2.PHASE_DECODE,
            batch=0,
            context=0,
            parallelism=common_pb2.Parallelism(tp=0),
        ),
    ),
    (
        ["parallelism.pp", "concurrency", "chunk_tokens"],
        _estimate(
            mode=common_pb2.MODE_AGG,
            parallelism=common_pb2.Parallelism(tp=4, pp=2),
            concurrency=0,
            chunk_tokens=8,
        ),
    ),
    (
        ["prefill.workers", "decode.parallelism.tp", "decode.batch", "decode.gpu"],
        _estimate(
            mode=common_pb2.MODE_DISAGG,
            prefill=_pool(4, workers=0),
            decode=_pool(3, workers=1, batch=0, gpu="h9"),
        ),
    ),
]


@pytest.mark.parametrize(
    ("fields", "request_"), SEVERAL_BAD_ESTIMATES, ids=["phase", "agg", "disagg"]
)
def test_every_violation_of_an_estimate_comes_back(
    stub: Stub, fields: list[str], request_: estimate_pb2.EstimateRequest
) -> None:
    error = failure(lambda: stub.Estimate(request_, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    print(found)
    assert [f for f, _ in found] == fields
    assert all(reason for _, reason in found)


def test_every_unknown_name_of_a_plan_comes_back(stub: Stub, count_rows: CountRows) -> None:
    request = plan_request(model="llama-9b", gpu="h9", decode_gpu="b9")
    error = failure(lambda: stub.Plan(request, timeout=30))
    found = violations(error)
    print(found)
    assert [f for f, _ in found] == ["model", "gpu", "decode_gpu"]
    assert found[0][1].startswith("unknown model 'llama-9b'")
    assert count_rows("plans") == 0


def test_bad_resource_names_and_pages_name_their_field(stub: Stub) -> None:
    assert_invalid(failure(lambda: stub.GetPlan(plan_pb2.GetPlanRequest(name=""))), "name")
    assert_invalid(
        failure(lambda: stub.GetPlan(plan_pb2.GetPlanRequest(name="sweeps/abc"))), "name"
    )
    assert_invalid(
        failure(lambda: stub.DeletePlan(plan_pb2.DeletePlanRequest(name="plans/a/b"))), "name"
    )
    assert_invalid(
        failure(lambda: stub.GetSweep(sweep_pb2.GetSweepRequest(name="plans/abc"))), "name"
    )
    assert_invalid(
        failure(lambda: stub.ListPlans(plan_pb2.ListPlansRequest(page_size=-1))), "page_size"
    )
    assert_invalid(
        failure(lambda: stub.ListPlans(plan_pb2.ListPlansRequest(page_token="not-a-token"))),
        "page_token",
    )
    assert_invalid(
        failure(lambda: stub.ListModels(catalog_pb2.ListModelsRequest(page_token="%%%"))),
        "page_token",
    )
    assert_invalid(
        failure(lambda: stub.ListGpus(catalog_pb2.ListGpusRequest(page_size=-2))), "page_size"
    )


def test_a_page_token_only_fits_the_listing_it_came_from(stub: Stub) -> None:
    for gpus in (8, 16):
        stub.Plan(plan_request(gpus=gpus), timeout=30)
    token = stub.ListPlans(plan_pb2.ListPlansRequest(page_size=1)).next_page_token
    assert token
    other = plan_pb2.ListPlansRequest(page_size=1, page_token=token, model="llama-3.1-8b")
    assert_invalid(failure(lambda: stub.ListPlans(other)), "page_token")


def test_a_request_id_reused_for_a_different_request_is_refused(
    stub: Stub, count_rows: CountRows
) -> None:
    request_id = str(uuid.uuid4())
    stub.Plan(plan_request(request_id=request_id), timeout=30)
    other = plan_request(request_id=request_id, gpus=8)
    assert_invalid(failure(lambda: stub.Plan(other, timeout=30)), "request_id")
    assert count_rows("plans") == 1


def _sweep(**fields: object) -> sweep_pb2.SweepRequest:
    request = sweep_pb2.SweepRequest(
        models=["llama-3.1-8b"],
        gpu_types=["h100-sxm"],
        traffic=[common_pb2.Workload(isl=1000, osl=100)],
        slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=50), plan_pb2.Slo(ttft_ms=500, tpot_ms=20)],
        gpus=8,
    )
    for key, value in fields.items():
        request.ClearField(key)  # type: ignore[arg-type]
        getattr(request, key).extend(value)
    return request


def test_a_bad_sweep_names_the_field_before_anything_is_stored(
    stub: Stub, count_rows: CountRows
) -> None:
    cases = [
        ("models", _sweep(models=[])),
        ("gpu_types[0]", _sweep(gpu_types=[""])),
        ("slos[1].tpot_ms", _sweep(slos=[plan_pb2.Slo(ttft_ms=1, tpot_ms=1),
                                         plan_pb2.Slo(ttft_ms=1, tpot_ms=math.nan)])),
        ("traffic[0].weight", _sweep(traffic=[common_pb2.Workload(isl=1, osl=1, weight=math.inf)])),
    ]  # fmt: skip
    for field, request in cases:
        assert_invalid(failure(lambda r=request: list(stub.Sweep(r, timeout=30))), field)
    unknown = failure(lambda: list(stub.Sweep(_sweep(models=["llama-3.1-8b", "gpt-9"]))))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert [f for f, _ in violations(unknown)] == ["models[1]"]
    assert count_rows("sweeps") == 0


CONFIG = {
    "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
    "num_hidden_layers": 16, "num_key_value_heads": 8, "vocab_size": 128256,
}  # fmt: skip


def test_a_bad_custom_model_names_its_field(stub: Stub, count_rows: CountRows) -> None:
    def create(**fields: object) -> grpc.RpcError:
        request = catalog_pb2.CreateModelRequest(model_id="custom-1")
        for key, value in fields.items():
            if key == "config":
                request.config.update(value)  # type: ignore[arg-type]
            elif key == "aliases":
                request.aliases.extend(value)  # type: ignore[arg-type]
            else:
                setattr(request, key, value)
        return failure(lambda: stub.CreateModel(request))

    assert_invalid(create(config_json=json.dumps(CONFIG), model_id=""), "model_id")
    assert_invalid(create(config_json=json.dumps(CONFIG), model_id="no spaces"), "model_id")
    assert_invalid(create(), "config")
    assert_invalid(create(config_json="{not json"), "config_json")
    assert_invalid(create(config_json="[1, 2]"), "config_json")
    no_hidden = {k: v for k, v in CONFIG.items() if k != "hidden_size"}
    assert_invalid(create(config=no_hidden), "config.hidden_size")
    assert_invalid(
        create(config={**CONFIG, "num_key_value_heads": 7}), "config.num_key_value_heads"
    )
    assert_invalid(create(config=CONFIG, aliases=["ok", ""]), "aliases[1]")
    assert count_rows("custom_models") == 0


def test_a_bad_custom_gpu_names_its_field(stub: Stub, count_rows: CountRows) -> None:
    good = catalog_pb2.Gpu(
        flops_per_s=catalog_pb2.FlopsPerS(bf16=1e15),
        hbm_bytes=80e9,
        hbm_bytes_per_s=3e12,
        nvlink_bytes_per_s=450e9,
        nvlink_domain_size=8,
        scaleout_bytes_per_s=50e9,
    )

    def create(gpu_id: str = "gpu-1", **changes: object) -> grpc.RpcError:
        gpu = catalog_pb2.Gpu()
        gpu.CopyFrom(good)
        for key, value in changes.items():
            if key == "bf16":
                gpu.flops_per_s.bf16 = value  # type: ignore[assignment]
            else:
                setattr(gpu, key, value)
        request = catalog_pb2.CreateGpuRequest(gpu_id=gpu_id, gpu=gpu)
        return failure(lambda: stub.CreateGpu(request))

    assert_invalid(create(gpu_id=""), "gpu_id")
    assert_invalid(create(hbm_bytes=0.0), "gpu.hbm_bytes")
    assert_invalid(create(nvlink_domain_size=-1), "gpu.nvlink_domain_size")
    assert_invalid(create(bf16=0.0), "gpu.flops_per_s.bf16")
    assert_invalid(create(hbm_bytes_per_s=math.nan), "gpu.hbm_bytes_per_s")
    assert_invalid(create(calibration="no-such-table"), "gpu.calibration")
    missing = failure(lambda: stub.CreateGpu(catalog_pb2.CreateGpuRequest(gpu_id="gpu-2")))
    assert_invalid(missing, "gpu")
    assert count_rows("custom_gpus") == 0


# -- NOT_FOUND and ALREADY_EXISTS -----------------------------------------------------------------


def test_unknown_catalog_names_are_not_found_and_name_the_field(stub: Stub) -> None:
    cases = [
        ("model", lambda: stub.Plan(plan_request(model="gpt-9"), timeout=30), "models/gpt-9"),
        ("gpu", lambda: stub.Plan(plan_request(gpu="tpu-v9"), timeout=30), "gpus/tpu-v9"),
        ("decode_gpu", lambda: stub.Plan(plan_request(decode_gpu="x1"), timeout=30), "gpus/x1"),
        ("engine", lambda: stub.Plan(plan_request(engine="tgi"), timeout=30), "engines/tgi"),
        ("gpu", lambda: stub.Estimate(_estimate(gpu="tpu-v9", phase=1, batch=1)), "gpus/tpu-v9"),
    ]
    for field, call, resource in cases:
        error = failure(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert [f for f, _ in violations(error)] == [field]
        assert resource_info(error).resource_name == resource
        print(error.details())
    assert "gpt-oss-120b" in failure(cases[0][1]).details()  # names the closest known ones


def test_a_file_path_is_not_a_model_name_over_grpc(stub: Stub) -> None:
    error = failure(lambda: stub.Plan(plan_request(model="/etc/hostname"), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert [f for f, _ in violations(error)] == ["model"]


def test_missing_plans_and_sweeps_are_not_found(stub: Stub) -> None:
    for call, resource in [
        (lambda: stub.GetPlan(plan_pb2.GetPlanRequest(name="plans/abc123")), "plans/abc123"),
        (lambda: stub.DeletePlan(plan_pb2.DeletePlanRequest(name="plans/abc123")), "plans/abc123"),
        (lambda: stub.GetSweep(sweep_pb2.GetSweepRequest(name="sweeps/s1")), "sweeps/s1"),
    ]:
        error = failure(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert resource_info(error).resource_name == resource
        assert [f for f, _ in violations(error)] == ["name"]


def test_a_taken_catalog_name_already_exists(stub: Stub, count_rows: CountRows) -> None:
    def create(model_id: str, *aliases: str) -> catalog_pb2.Model:
        request = catalog_pb2.CreateModelRequest(
            request_id=str(uuid.uuid4()), model_id=model_id, aliases=list(aliases)
        )
        request.config.update(CONFIG)
        return stub.CreateModel(request).model

    for args in (("llama-3.1-8b",), ("my-model", "meta-llama/Llama-3.1-8B"), ("Llama_3.1_8B",)):
        error = failure(lambda a=args: create(*a))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
    create("my-model")
    error = failure(lambda: create("my-model"))  # another call (request_id) with the same name
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert resource_info(error).resource_name == "models/my-model"
    assert count_rows("custom_models") == 1


# -- RESOURCE_EXHAUSTED ---------------------------------------------------------------------------


def test_calls_past_the_concurrency_limit_are_resource_exhausted(database_url: str) -> None:
    running = start_server(
        port=0, host="127.0.0.1", database_url=database_url, max_concurrent_rpcs=1
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            long_sweep = _sweep(
                models=["llama-3.1-70b"],
                slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=t) for t in range(10, 90)],
            )
            stream = stub.Sweep(long_sweep, timeout=120)
            assert next(stream).HasField("sweep")  # the sweep call is now in progress
            error = failure(lambda: stub.ListModels(catalog_pb2.ListModelsRequest()))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            print(error.details())
            stream.cancel()
            # once the sweep notices its caller left, the server takes calls again
            deadline = time.monotonic() + 30
            while True:
                try:
                    stub.ListModels(catalog_pb2.ListModelsRequest())
                    break
                except grpc.RpcError as again:
                    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline, "the cancelled sweep never ended"
                    time.sleep(0.05)
            sweeps = stub.GetSweep(
                sweep_pb2.GetSweepRequest(name=_only_sweep_name(database_url))
            ).sweep
            assert sweeps.state == sweep_pb2.Sweep.STATE_FAILED
            assert sweeps.progress.done < sweeps.progress.total
    finally:
        running.stop(0)


def _only_sweep_name(database_url: str) -> str:
    from pdplanner.storage.repository import SqlStore

    with SqlStore(database_url) as store:
        sweeps, _ = store.list_sweeps()
    assert len(sweeps) == 1
    return f"sweeps/{sweeps[0].id}"


def test_a_request_over_the_message_size_limit_is_resource_exhausted(
    stub: Stub, count_rows: CountRows
) -> None:
    huge = json.dumps({**CONFIG, "padding": "x" * (5 * 1024 * 1024)})
    request = catalog_pb2.CreateModelRequest(model_id="huge", config_json=huge)
    error = failure(lambda: stub.CreateModel(request))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    print(error.details())
    assert count_rows("custom_models") == 0


# -- DEADLINE_EXCEEDED ----------------------------------------------------------------------------

#: A search that takes a few hundred milliseconds: DeepSeek-R1 on a whole GB200 NVL72.
SLOW = {"model": "deepseek-r1", "gpu": "gb200-nvl72", "gpus": 72}


def test_a_search_past_its_deadline_stops_and_stores_nothing(
    stub: Stub, count_rows: CountRows, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.perf_counter()
    plan_in_process(
        PlanRequest(SLOW["model"], SLOW["gpu"], 72, (Workload(4000, 500),), Slo(1000, 20))
    )
    full_ms = (time.perf_counter() - started) * 1e3
    caplog.set_level(logging.INFO, logger="pdplanner.rpc")

    error = failure(lambda: stub.Plan(plan_request(**SLOW), timeout=0.05))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    record = _wait_for_rpc_log(caplog, "/pdplanner.v1.PlannerService/Plan")
    fields = record.fields  # type: ignore[attr-defined]
    print(f"full search {full_ms:.0f} ms; the call ended after {fields['duration_ms']:.0f} ms")
    assert fields["code"] in ("DEADLINE_EXCEEDED", "CANCELLED")
    assert fields["duration_ms"] < full_ms
    assert count_rows("plans") == 0


def test_a_sweep_past_its_deadline_keeps_what_finished_and_is_marked_failed(
    stub: Stub, database_url: str
) -> None:
    # 60 scenarios of a few hundred ms each: some finish within the second, never all of them
    request = _sweep(slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=t) for t in range(10, 70)])
    received = []
    error = failure(lambda: received.extend(stub.Sweep(request, timeout=1.0)))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    sweep = _eventually_failed(stub, _only_sweep_name(database_url))
    done = sweep.progress.done
    print(f"{done} of {sweep.progress.total} scenarios stored before the deadline")
    assert 0 < done < sweep.progress.total
    assert [s.index for s in sweep.scenarios] == list(range(done))


def _eventually_failed(stub: Stub, name: str) -> sweep_pb2.Sweep:
    deadline = time.monotonic() + 10
    while True:
        sweep = stub.GetSweep(sweep_pb2.GetSweepRequest(name=name)).sweep
        if sweep.state != sweep_pb2.Sweep.STATE_RUNNING or time.monotonic() > deadline:
            assert sweep.state == sweep_pb2.Sweep.STATE_FAILED
            return sweep
        time.sleep(0.05)


def _wait_for_rpc_log(caplog: pytest.LogCaptureFixture, method: str) -> logging.LogRecord:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in caplog.records:
            if getattr(record, "fields", {}).get("method") == method:
                return record
        time.sleep(0.02)
    raise AssertionError(f"no log line for {method}")


# -- INTERNAL -------------------------------------------------------------------------------------


def test_an_unexpected_failure_is_internal_and_the_server_carries_on(
    stub: Stub, count_rows: CountRows, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = threading.Event()

    def broken(*args: object, **kwargs: object) -> None:
        calls.set()
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("pdplanner.service.handlers.run_plan", broken)
    error = failure(lambda: stub.Plan(plan_request(), timeout=30))
    assert calls.is_set()
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "a bug" not in error.details()  # internals stay in the server log
    assert count_rows("plans") == 0
    monkeypatch.undo()
    assert stub.Plan(plan_request(), timeout=30).plan.name.startswith("plans/")


def test_the_planners_own_range_checks_return_every_violation_too(stub: Stub) -> None:
    request = plan_request(gpus=0, prefix_hit=1.5, rate_per_s=-3.0)
    error = failure(lambda: stub.Plan(request, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(error)
    print(found)
    assert [f for f, _ in found] == ["gpus", "rate_per_s", "prefix_hit"]
