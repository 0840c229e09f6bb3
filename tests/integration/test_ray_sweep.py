"""``sweep --ray``: a sweep fanned out to local Ray gives the in-process sweep's outcomes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from pdplanner.planner.sweep import ScenarioOutcome, SweepGrid, run_sweep
from pdplanner.planner.types import Slo, Workload
from pdplanner.service.cli import app
from pdplanner.service.raysweep import chunks, ray_sweep

ray = pytest.importorskip("ray")

GRID = SweepGrid(
    models=("llama-3.1-8b",),
    gpu_types=("h100-sxm", "a100-sxm"),
    traffic=(Workload(1000, 200), Workload(3000, 300)),
    slos=(Slo(ttft_ms=1000, tpot_ms=30), Slo(ttft_ms=1000, tpot_ms=-1.0)),
    gpus=4,
)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance with a single CPU for the module's tests."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _untimed(outcome: ScenarioOutcome) -> ScenarioOutcome:
    if outcome.result is None:
        return outcome
    return dataclasses.replace(outcome, result=dataclasses.replace(outcome.result, elapsed_ms=0.0))


def test_chunks_cover_every_scenario_once() -> None:
    for total, cpus in ((0, 4), (1, 4), (7, 1), (640, 16), (10, 100)):
        covered = [i for c in chunks(total, cpus) for i in c]
        assert covered == list(range(total))


def test_ray_sweep_gives_the_in_process_outcomes(local_ray: None) -> None:
    done: list[int] = []
    fanned = ray_sweep(GRID, "local", advance=lambda: done.append(1))
    in_process = list(run_sweep(GRID))
    assert len(fanned) == len(GRID) == 8 and len(done) == 8
    assert [o.index for o in fanned] == list(range(8))
    assert [_untimed(o) for o in fanned] == [_untimed(o) for o in in_process]
    assert any(o.error is not None for o in fanned)  # the negative TPOT target
    assert any(o.result is not None and o.result.best is not None for o in fanned)


def _rows(output: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(output)["scenarios"]
    for row in rows:
        if "result" in row:
            row["result"]["elapsed_ms"] = 0.0
    return rows


def test_cli_sweep_with_ray_prints_the_in_process_rows(local_ray: None) -> None:
    runner = CliRunner(env={"PDPLANNER_SERVER": None})
    args = ["sweep", "--model", "llama-3.1-8b", "--gpu", "h100", "--traffic", "1000:200",
            "--traffic", "2000:100", "--tpot-ms", "30", "--ttft-ms", "1000", "--gpus", "4",
            "--json"]  # fmt: skip
    fanned = runner.invoke(app, [*args, "--ray", "local"])
    in_process = runner.invoke(app, args)
    assert fanned.exit_code == 0, fanned.output
    assert in_process.exit_code == 0, in_process.output
    assert _rows(fanned.stdout) == _rows(in_process.stdout)


def test_ray_with_a_server_is_a_usage_error() -> None:
    runner = CliRunner(env={"PDPLANNER_SERVER": None})
    result = runner.invoke(app, ["sweep", "--ray", "local", "--server", "localhost:1",
                                 "--model", "llama-3.1-8b"])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --ray: fans out from this process; it cannot be used with --server"
    )
