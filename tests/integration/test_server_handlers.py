"""``pdplanner.service.handlers``: each RPC's behaviour, called as a plain function (no gRPC
context)."""

from __future__ import annotations

import pytest
from rpc_requests import plan_request

from pdplanner.planner import serialize
from pdplanner.planner.errors import SearchCancelled
from pdplanner.planner.sweep import ScenarioError
from pdplanner.planner.types import PlanRequest, Slo, Workload
from pdplanner.service import handlers
from pdplanner.service.catalogs import CatalogCache
from pdplanner.storage.errors import InvalidPageTokenError
from pdplanner.storage.repository import SqlStore
from pdplanner.v1 import catalog_pb2, common_pb2, plan_pb2, sweep_pb2


def never() -> bool:
    return False


def test_plan_and_get_plan_run_on_a_store_without_a_server(store: SqlStore) -> None:
    catalogs = CatalogCache(store)
    first = handlers.plan(plan_request(request_id="r-1"), store, catalogs, never).plan
    assert first.name.startswith("plans/") and first.result.HasField("best")
    again = handlers.plan(plan_request(request_id="r-1"), store, catalogs, never).plan
    assert again == first  # the request_id makes the retry a replay
    fetched = handlers.get_plan(plan_pb2.GetPlanRequest(name=first.name), store, catalogs, never)
    assert fetched.plan == first
    with pytest.raises(SearchCancelled):
        handlers.plan(plan_request(request_id="r-2"), store, catalogs, lambda: True)


def test_model_and_gpu_listings_page_with_one_token_format(store: SqlStore) -> None:
    catalogs = CatalogCache(store)
    page = handlers.list_models(catalog_pb2.ListModelsRequest(page_size=2), store, catalogs, never)
    assert len(page.models) == 2 and page.next_page_token
    rest = handlers.list_models(
        catalog_pb2.ListModelsRequest(page_token=page.next_page_token), store, catalogs, never
    )
    assert rest.models[0].name > page.models[-1].name
    with pytest.raises(InvalidPageTokenError):  # a models token does not page the GPUs
        handlers.list_gpus(
            catalog_pb2.ListGpusRequest(page_token=page.next_page_token), store, catalogs, never
        )


def test_a_sweep_streams_stores_and_lists_without_a_server(store: SqlStore) -> None:
    catalogs = CatalogCache(store)
    request = sweep_pb2.SweepRequest(
        models=["llama-3.1-8b"],
        gpu_types=["h100-sxm"],
        traffic=[common_pb2.Workload(isl=1000, osl=100)],
        slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=30), plan_pb2.Slo(ttft_ms=1000, tpot_ms=-1)],
        gpus=8,
    )
    events = list(handlers.sweep(request, store, catalogs, never))
    scenarios = [e.scenario for e in events if e.HasField("scenario")]
    assert [s.index for s in scenarios] == [0, 1]
    assert scenarios[0].HasField("result")
    assert scenarios[1].error == "slos[1].tpot_ms: must be greater than 0, got -1"
    assert [(e.field, e.reason) for e in scenarios[1].errors] == [
        ("slos[1].tpot_ms", "must be greater than 0, got -1")
    ]
    assert not scenarios[0].errors
    final = events[-1].sweep
    assert final.state == sweep_pb2.Sweep.STATE_SUCCEEDED
    listed = handlers.list_sweeps(sweep_pb2.ListSweepsRequest(), store, catalogs, never)
    assert [s.name for s in listed.sweeps] == [final.name]
    assert listed.sweeps[0].progress.done == 2 and not listed.sweeps[0].scenarios


def test_a_scenario_stored_before_structured_errors_reads_back_structured(store: SqlStore) -> None:
    catalogs = CatalogCache(store)
    scenario = serialize.plan_request_to_json(
        PlanRequest("llama-3.1-8b", "h100-sxm", 8, (Workload(1000, 100),), Slo(1000.0, 30.0))
    )
    sweep, _ = store.create_sweep(request_id=None, request={"gpus": 8}, total=2)
    # the text form rows had before: one "field: reason" string
    store.add_sweep_scenario(
        sweep.id, 0, scenario=scenario, error="slos[0].tpot_ms: must be greater than 0, got -1"
    )
    several = ScenarioError("slos[1].ttft_ms", "must be greater than 0, got -5", (("gpus", "x"),))
    store.add_sweep_scenario(
        sweep.id, 1, scenario=scenario, error=serialize.scenario_error_to_text(several)
    )
    got = handlers.get_sweep(
        sweep_pb2.GetSweepRequest(name=f"sweeps/{sweep.id}"), store, catalogs, never
    )
    old, new = got.sweep.scenarios
    assert [(e.field, e.reason) for e in old.errors] == [
        ("slos[0].tpot_ms", "must be greater than 0, got -1")
    ]
    assert old.error == "slos[0].tpot_ms: must be greater than 0, got -1"
    assert [(e.field, e.reason) for e in new.errors] == list(several.violations)
    assert new.error == "slos[1].ttft_ms: must be greater than 0, got -5; gpus: x"
