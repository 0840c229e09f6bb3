"""``pdplanner.planner.sweep`` (one grid, one runner, structured scenario errors),
``pdplanner.planner.serialize`` (the stored JSON, versioned and apart from ``--json``) and name
look-ups that never read files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pdplanner.planner import serialize
from pdplanner.planner.catalog import default_models
from pdplanner.planner.errors import SearchCancelled, UnknownEntryError
from pdplanner.planner.search import plan
from pdplanner.planner.sweep import ScenarioError, SweepGrid, run_sweep
from pdplanner.planner.types import PlanRequest, Slo, Workload

GRID = SweepGrid(
    models=("llama-3.1-8b",),
    gpu_types=("h100-sxm", "h200-sxm"),
    traffic=(Workload(2000, 200),),
    slos=(Slo(1000, 30), Slo(1000, -1.0)),
    gpus=8,
)


def test_a_sweep_yields_one_outcome_per_scenario_in_grid_order() -> None:
    outcomes = list(run_sweep(GRID))
    assert [o.index for o in outcomes] == [0, 1, 2, 3] == list(range(len(GRID)))
    assert [o.request.gpu for o in outcomes] == ["h100-sxm", "h100-sxm", "h200-sxm", "h200-sxm"]
    first = outcomes[0].result
    assert first is not None
    assert dataclasses.replace(first, elapsed_ms=0) == dataclasses.replace(
        plan(outcomes[0].request), elapsed_ms=0
    )
    bad = outcomes[3]
    assert bad.result is None
    assert bad.error == ScenarioError("slos[1].tpot_ms", "must be greater than 0, got -1")
    assert str(bad.error) == "slos[1].tpot_ms: must be greater than 0, got -1"


def test_a_sweep_skips_what_is_done_and_stops_when_asked() -> None:
    assert [o.index for o in run_sweep(GRID, skip={0, 1, 3})] == [2]
    with pytest.raises(SearchCancelled):
        next(run_sweep(GRID, should_stop=lambda: True))


def test_an_unknown_name_fails_the_sweep_before_planning() -> None:
    grid = SweepGrid(("llama-3.1-8b", "nope"), ("h100-sxm",), (Workload(1, 1),), (Slo(1, 1),), 8)
    with pytest.raises(UnknownEntryError) as err:
        next(run_sweep(grid))
    assert err.value.field == "models[1]"


def test_stored_json_is_versioned_and_not_the_cli_json() -> None:
    req = PlanRequest("llama-3.1-8b", "h100-sxm", 8, (Workload(4000, 500),), Slo(1000, 20))
    result = plan(req)
    stored = json.loads(json.dumps(serialize.plan_result_to_json(result)))
    assert stored["schema_version"] == serialize.SCHEMA_VERSION
    assert stored != result.to_dict()  # the CLI may reshape --json without touching the database
    assert serialize.plan_result_from_json(stored) == result
    assert serialize.plan_request_from_json(serialize.plan_request_to_json(req)) == req
    with pytest.raises(serialize.StoredFormatError):
        serialize.plan_result_from_json({**stored, "schema_version": 99})


def test_the_model_summary_gpu_basis_and_memory_fraction_are_stored_and_old_rows_read() -> None:
    req = PlanRequest("llama-3.1-8b", "h100-sxm", 8, (Workload(4000, 500),), Slo(1000, 20),
                      memory_fraction=0.95)  # fmt: skip
    result = plan(req)
    assert result.model.startswith("llama-3.1-8b") and result.gpu_basis == "calibrated"
    stored_req = json.loads(json.dumps(serialize.plan_request_to_json(req)))
    stored = json.loads(json.dumps(serialize.plan_result_to_json(result)))
    assert stored_req["memory_fraction"] == 0.95
    assert (stored["model"], stored["gpu_basis"]) == (result.model, "calibrated")
    assert serialize.plan_request_from_json(stored_req) == req
    assert serialize.plan_result_from_json(stored) == result
    # a version-1 row written before these fields existed reads with their defaults
    old_req = {k: v for k, v in stored_req.items() if k != "memory_fraction"}
    assert serialize.plan_request_from_json(old_req).memory_fraction is None
    old = {k: v for k, v in stored.items() if k not in ("model", "gpu_basis")}
    back = serialize.plan_result_from_json(old)
    assert (back.model, back.gpu_basis) == ("", "")
    assert dataclasses.replace(back, model=result.model, gpu_basis="calibrated") == result


def test_a_catalog_name_never_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    with pytest.raises(UnknownEntryError):
        default_models().get(str(path))
    with pytest.raises(UnknownEntryError):
        plan(PlanRequest(str(path), "h100-sxm", 8, (Workload(100, 10),), Slo(1000, 20)))


def test_a_scenario_error_names_every_invalid_field_by_its_grid_path() -> None:
    grid = dataclasses.replace(GRID, gpu_types=("h100-sxm",), slos=(Slo(-5.0, -1.0),))
    [outcome] = run_sweep(grid)
    assert outcome.error is not None
    assert outcome.error.violations == (
        ("slos[0].ttft_ms", "must be greater than 0, got -5"),
        ("slos[0].tpot_ms", "must be greater than 0, got -1"),
    )
    assert outcome.error == ScenarioError.of(outcome.error.violations)
    assert str(outcome.error) == (
        "slos[0].ttft_ms: must be greater than 0, got -5; "
        "slos[0].tpot_ms: must be greater than 0, got -1"
    )


def test_a_stored_scenario_error_keeps_its_fields_and_old_rows_stay_readable() -> None:
    error = ScenarioError("slos[0].ttft_ms", "must be positive", (("gpus", "a: b; c"),))
    text = serialize.scenario_error_to_text(error)
    assert json.loads(text)["schema_version"] == serialize.SCHEMA_VERSION
    assert serialize.scenario_error_from_text(text) == error
    # rows written before the structured form hold one "field: reason" string
    old = serialize.scenario_error_from_text("slos[1].tpot_ms: must be greater than 0, got -1")
    assert old == ScenarioError("slos[1].tpot_ms", "must be greater than 0, got -1")
    assert serialize.scenario_error_from_text("no field here") == ScenarioError("", "no field here")
    for unreadable in ('{"schema_version": 1}', '{"schema_version": 9, "violations": []}', "{x"):
        with pytest.raises(serialize.StoredFormatError):
            serialize.scenario_error_from_text(unreadable)
