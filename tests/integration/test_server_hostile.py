"""Hostile input gets a clean status naming the field, and nothing is stored for it.

Each case is one that once answered INTERNAL (or worse, stored something that broke later calls):
NaN and deep JSON in configs, integers past int32, absurd GPU figures, path-like calibration
names, huge names echoed back, bodies that are not messages, and a stored entry that no longer
converts. Custom entries can be deleted again; GetSweep pages its scenarios.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from rpc_requests import plan_request

from pdplanner.client import PlannerClient
from pdplanner.service import errors
from pdplanner.service.server import RunningServer
from pdplanner.storage.errors import UnavailableError
from pdplanner.storage.repository import SqlStore
from pdplanner.v1 import catalog_pb2, common_pb2, plan_pb2, planner_service_pb2_grpc, sweep_pb2

Stub = planner_service_pb2_grpc.PlannerServiceStub
CountRows = Callable[..., int]

CONFIG = {
    "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
    "num_hidden_layers": 16, "num_key_value_heads": 8, "vocab_size": 128256,
}  # fmt: skip


@pytest.fixture
def stub(server: RunningServer) -> Iterator[Stub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Stub(channel)


def failure(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def assert_invalid(error: grpc.RpcError, field: str) -> None:
    print(f"{error.code().name}: {error.details()[:160]}")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: "), error.details()[:200]


def create_model(stub: Stub, **fields: object) -> grpc.RpcError:
    request = catalog_pb2.CreateModelRequest(model_id="hostile")
    for key, value in fields.items():
        if key == "config":
            request.config.update(value)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    return failure(lambda: stub.CreateModel(request))


def test_hostile_model_configs_are_invalid_and_store_nothing(
    stub: Stub, count_rows: CountRows
) -> None:
    assert_invalid(create_model(stub, config_json='{"hidden_size": NaN}'), "config_json")
    nan_elsewhere = json.dumps({**CONFIG, "rope_theta": math.inf})
    assert_invalid(create_model(stub, config_json=nan_elsewhere), "config_json")
    deep = '{"a": ' * 100_000 + "1" + "}" * 100_000
    assert_invalid(create_model(stub, config_json=deep), "config_json")
    assert_invalid(create_model(stub, config={**CONFIG, "rope_theta": math.nan}),
                   "config.rope_theta")  # fmt: skip
    assert_invalid(create_model(stub, config={**CONFIG, "hidden_size": "wide"}),
                   "config.hidden_size")  # fmt: skip
    too_big = json.dumps({**CONFIG, "vocab_size": 2**31})
    assert_invalid(create_model(stub, config_json=too_big), "config_json.vocab_size")
    assert_invalid(create_model(stub, config={**CONFIG, "num_hidden_layers": 1e300}),
                   "config.num_hidden_layers")  # fmt: skip
    assert count_rows("custom_models") == 0
    assert stub.ListModels(catalog_pb2.ListModelsRequest()).models  # still answers


GOOD_GPU = catalog_pb2.Gpu(
    flops_per_s=catalog_pb2.FlopsPerS(bf16=1e15),
    hbm_bytes=80e9,
    hbm_bytes_per_s=3e12,
    nvlink_bytes_per_s=450e9,
    nvlink_domain_size=8,
    scaleout_bytes_per_s=50e9,
)


def create_gpu(stub: Stub, bf16: float | None = None, **changes: object) -> grpc.RpcError:
    gpu = catalog_pb2.Gpu()
    gpu.CopyFrom(GOOD_GPU)
    if bf16 is not None:
        gpu.flops_per_s.bf16 = bf16
    for key, value in changes.items():
        setattr(gpu, key, value)
    return failure(lambda: stub.CreateGpu(catalog_pb2.CreateGpuRequest(gpu_id="g-1", gpu=gpu)))


def test_gpu_figures_outside_physical_ranges_are_invalid(stub: Stub, count_rows: CountRows) -> None:
    assert_invalid(create_gpu(stub, bf16=5e-324), "gpu.flops_per_s.bf16")
    assert_invalid(create_gpu(stub, hbm_bytes=1e308), "gpu.hbm_bytes")
    assert_invalid(create_gpu(stub, bf16=1e-300, hbm_bytes_per_s=1e30), "gpu.flops_per_s.bf16")
    assert_invalid(create_gpu(stub, hbm_bytes_per_s=1e30), "gpu.hbm_bytes_per_s")
    assert_invalid(create_gpu(stub, nvlink_domain_size=2**31 - 1), "gpu.nvlink_domain_size")
    assert count_rows("custom_gpus") == 0


@pytest.mark.parametrize("name", ["..", "../../etc", "/etc", "/work", "h100-sxm/../h100-sxm"])
def test_calibration_names_come_from_the_known_list_only(stub: Stub, name: str) -> None:
    error = create_gpu(stub, calibration=name)
    assert_invalid(error, "gpu.calibration")
    assert "known: h100-sxm" in error.details()


def test_huge_names_are_echoed_short(stub: Stub) -> None:
    error = failure(lambda: stub.Plan(plan_request(model="m" * 5000), timeout=30))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    print(error.details())
    assert len(error.details()) < 300 and "5,000 characters" in error.details()
    error = failure(lambda: stub.GetPlan(plan_pb2.GetPlanRequest(name="plans/" + "x" * 6000)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details()) < 300


@pytest.mark.parametrize("method", ["GetPlan", "Plan", "ListModels", "CreateModel", "Sweep"])
def test_undecodable_bodies_are_invalid_arguments(server: RunningServer, method: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        path = f"/pdplanner.v1.PlannerService/{method}"
        if method == "Sweep":
            call = channel.unary_stream(path, request_serializer=None,
                                        response_deserializer=None)  # fmt: skip
            error = failure(lambda: list(call(b"\xff\xff\xff", timeout=10)))
        else:
            unary = channel.unary_unary(path, request_serializer=None,
                                        response_deserializer=None)  # fmt: skip
            error = failure(lambda: unary(b"\xff\xff\xff", timeout=10))
    print(f"{method}: {error.code().name} {error.details()}")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in error.details()


def test_unavailable_tells_the_client_nothing_of_the_database() -> None:
    driver_text = (
        'database unavailable: connection to server at "db.internal" (10.1.2.3), port 5432 '
        'failed: FATAL: password authentication failed for user "planner"'
    )
    status = errors.status_for(UnavailableError(driver_text))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.details == errors.STORE_UNAVAILABLE
    assert "10.1.2.3" not in status.details and "planner" not in status.details.split(";")[1]


def test_custom_models_and_gpus_can_be_deleted(stub: Stub, count_rows: CountRows) -> None:
    stub.CreateModel(
        catalog_pb2.CreateModelRequest(model_id="gone", config_json=json.dumps(CONFIG))
    )
    gpu = catalog_pb2.CreateGpuRequest(gpu_id="gone-gpu", gpu=GOOD_GPU)
    stub.CreateGpu(gpu)
    stub.DeleteModel(catalog_pb2.DeleteModelRequest(name="models/gone"))
    stub.DeleteGpu(catalog_pb2.DeleteGpuRequest(name="gpus/gone-gpu"))
    assert count_rows("custom_models") == 0 and count_rows("custom_gpus") == 0
    names = {m.name for m in stub.ListModels(catalog_pb2.ListModelsRequest()).models}
    assert "models/gone" not in names
    missing = failure(lambda: stub.Plan(plan_request(model="gone"), timeout=30))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    again = failure(lambda: stub.DeleteModel(catalog_pb2.DeleteModelRequest(name="models/gone")))
    assert again.code() == grpc.StatusCode.NOT_FOUND
    built_in = failure(lambda: stub.DeleteGpu(catalog_pb2.DeleteGpuRequest(name="gpus/h100-sxm")))
    assert built_in.code() == grpc.StatusCode.FAILED_PRECONDITION
    bad = failure(lambda: stub.DeleteModel(catalog_pb2.DeleteModelRequest(name="../x")))
    assert_invalid(bad, "name")
    # the name is free again
    stub.CreateGpu(gpu)
    assert count_rows("custom_gpus") == 1


def test_a_stored_entry_that_no_longer_converts_is_left_out(database_url: str, stub: Stub) -> None:
    """An entry stored before today's checks (vocab past int32) must not fail every listing."""
    with SqlStore(database_url) as store:
        store.create_custom_model("poison", {"hf_config": {**CONFIG, "vocab_size": 2**31},
                                             "aliases": [], "request_id": None})  # fmt: skip
    models = stub.ListModels(catalog_pb2.ListModelsRequest()).models
    assert models and "models/poison" not in {m.name for m in models}
    stub.DeleteModel(catalog_pb2.DeleteModelRequest(name="models/poison"))


def test_get_sweep_pages_its_scenarios(server: RunningServer, stub: Stub) -> None:
    request = sweep_pb2.SweepRequest(
        request_id=str(uuid.uuid4()),
        models=["llama-3.1-8b"],
        gpu_types=["h100-sxm"],
        traffic=[common_pb2.Workload(isl=2000, osl=200)],
        slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=10 + 5 * i) for i in range(5)],
        gpus=8,
    )
    events = list(stub.Sweep(request, timeout=300))
    name = events[-1].sweep.name
    indices: list[int] = []
    token = ""
    first_token = ""
    pages = 0
    while True:
        page = stub.GetSweep(sweep_pb2.GetSweepRequest(name=name, page_size=2, page_token=token))
        indices.extend(s.index for s in page.sweep.scenarios)
        assert len(page.sweep.scenarios) <= 2
        pages += 1
        token = page.next_page_token
        first_token = first_token or token
        if not token:
            break
    assert indices == [0, 1, 2, 3, 4] and pages == 3
    whole = PlannerClient(f"127.0.0.1:{server.port}")
    try:
        assert [s.index for s in whole.get_sweep(name).scenarios] == indices
    finally:
        whole.close()
    # a token is good for the sweep it was issued for only
    other = sweep_pb2.GetSweepRequest(name="sweeps/other", page_token=first_token)
    assert_invalid(failure(lambda: stub.GetSweep(other)), "page_token")


def test_the_custom_catalog_is_capped(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdplanner.service import handlers
    from pdplanner.service.catalogs import CatalogCache
    from pdplanner.service.errors import RpcFailure

    monkeypatch.setattr(handlers, "MAX_CUSTOM_ENTRIES", 2)
    catalogs = CatalogCache(store)

    def create(gpu_id: str) -> None:
        request = catalog_pb2.CreateGpuRequest(gpu_id=gpu_id, gpu=GOOD_GPU)
        handlers.create_gpu(request, store, catalogs, lambda: False)

    create("cap-1")
    create("cap-2")
    with pytest.raises(RpcFailure) as refused:
        create("cap-3")
    assert refused.value.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    store.delete_custom_gpu("cap-1")
    create("cap-3")  # room again
