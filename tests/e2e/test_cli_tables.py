"""Tables read on an 80-column terminal: names and numbers wrap, none is cut to ``…``."""

from __future__ import annotations

import pytest
from rich.console import Console, RenderableType
from typer.testing import CliRunner

from pdplanner.planner.search import plan
from pdplanner.planner.sweep import SweepGrid, run_sweep
from pdplanner.planner.types import PlanRequest, Slo, Workload
from pdplanner.service.cli import app
from pdplanner.service.cli import format as fmt
from pdplanner.service.cli.sweep import outcome_row

REQ = PlanRequest("llama-3.1-8b", "h100-sxm", 8, (Workload(4000, 500),), Slo(1000, 20))


def render(renderable: RenderableType, width: int = 80) -> str:
    console = Console(width=width, record=True, highlight=False, color_system=None)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def assert_nothing_cut(text: str, width: int = 80) -> None:
    print(text)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width


@pytest.fixture(scope="module")
def stored() -> fmt.StoredPlan:
    name = "plans/0f3c2a9b8e7d4c1fa6b5e4d3c2b1a098"  # as long as a server's names
    return fmt.StoredPlan(name, "2026-11-30T10:00:00Z", REQ, plan(REQ), "0.1.0", 1234.5)


def test_plans_list_at_80_columns_keeps_whole_names_and_numbers(stored: fmt.StoredPlan) -> None:
    text = render(fmt.plans_table([stored, stored]))
    assert_nothing_cut(text)
    assert "plans/" in text


def test_a_plan_at_80_columns_keeps_its_pools_whole(stored: fmt.StoredPlan) -> None:
    assert_nothing_cut(render(fmt.plan_summary(stored.result, stored.name)))


def test_a_sweep_at_80_columns_keeps_its_numbers_whole() -> None:
    grid = SweepGrid(("llama-3.1-8b",), ("h100-sxm",), (Workload(4000, 500),),
                     (Slo(1000, 20), Slo(1000, -1.0)), gpus=8)  # fmt: skip
    rows = [outcome_row(o) for o in run_sweep(grid)]
    assert "error" in rows[1]  # a negative TPOT target is the scenario's error
    assert_nothing_cut(render(fmt.sweep_table(rows)))


def test_an_estimate_that_does_not_fit_prints_dashes_and_the_reason() -> None:
    runner = CliRunner(env={"PDPLANNER_SERVER": None, "COLUMNS": "80"})
    args = ["estimate", "--model", "llama-3.1-70b", "--gpu", "h100", "--isl", "1000", "--osl",
            "200", "--phase", "decode", "--tp", "1", "--batch", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    print(result.stdout)
    step = next(line for line in result.stdout.splitlines() if "step (ms)" in line)
    assert step.rstrip(" │").endswith("-") and "0.000" not in step
    assert "no: " in result.stdout  # the reason it does not fit
