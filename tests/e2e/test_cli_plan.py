"""``pdplanner plan`` and ``pdplanner sweep`` in process: JSON contract, text, plot, mix files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pdplanner.service.cli import app
from pdplanner.service.cli.inputs import plan_request

search = pytest.importorskip("pdplanner.planner.search")

runner = CliRunner(env={"PDPLANNER_SERVER": None})  # in process, whatever the shell says
QUERY = ["--model", "llama-3.1-8b", "--gpu", "h100", "--gpus", "4", "--ttft-ms", "500",
         "--tpot-ms", "30"]  # fmt: skip
TRAFFIC = ["--isl", "1000", "--osl", "200"]
RESULT_KEYS = {"best", "best_agg", "best_disagg", "disagg_speedup", "pareto", "design_points",
               "elapsed_ms", "reason"}  # fmt: skip
DEPLOYMENT_KEYS = {"mode", "pools", "ttft_ms", "tpot_ms", "tokens_per_s_per_gpu",
                   "tokens_per_s_per_user", "requests_per_s", "gpus"}  # fmt: skip
POOL_KEYS = {"gpu", "tp", "pp", "ep", "batch", "workers"}


def plan_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["plan", *QUERY, *args, "--json"])
    assert result.exit_code == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def without_timing(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "elapsed_ms"}


def test_plan_json_has_the_bests_the_frontiers_and_the_search_size() -> None:
    out = plan_json(*TRAFFIC)
    assert set(out) >= RESULT_KEYS
    assert out["best"]["mode"] in ("agg", "disagg")
    agg, disagg = out["best_agg"], out["best_disagg"]
    assert set(agg) >= DEPLOYMENT_KEYS and set(disagg) >= DEPLOYMENT_KEYS
    assert set(agg["pools"]) == {"agg"}
    assert set(disagg["pools"]) == {"prefill", "decode"}
    assert set(disagg["pools"]["decode"]) >= POOL_KEYS
    assert "prefill_decode_gpu_ratio" in disagg
    assert out["disagg_speedup"] == pytest.approx(
        disagg["tokens_per_s_per_gpu"] / agg["tokens_per_s_per_gpu"], rel=1e-6
    )
    assert out["pareto"]["agg"] and out["pareto"]["disagg"]
    assert out["design_points"] > 0


def test_plan_json_is_what_the_planner_returns_for_the_same_request() -> None:
    out = plan_json(*TRAFFIC, "--percentile", "p90", "--max-tp", "4", "--dtype", "fp8")
    req = plan_request(
        model="llama-3.1-8b",
        gpu="h100",
        gpus=4,
        ttft_ms=500,
        tpot_ms=30,
        isl=1000,
        osl=200,
        percentile="p90",
        max_tp=4,
        dtype="fp8",
    )
    expected = json.loads(json.dumps(search.plan(req).to_dict()))
    assert without_timing(out) == without_timing(expected)


def test_mode_agg_searches_only_aggregated_serving() -> None:
    out = plan_json(*TRAFFIC, "--mode", "agg")
    assert out["best"]["mode"] == "agg"
    assert out["best_disagg"] is None and out["disagg_speedup"] is None
    assert out["pareto"]["disagg"] == []
    # the text has no row or speedup for the mode it did not search (it is not "infeasible")
    text = runner.invoke(app, ["plan", *QUERY, *TRAFFIC, "--mode", "agg"]).stdout
    assert "agg Pareto frontier" in text
    assert "disagg" not in text.split("best deployment per mode")[1]


def test_an_slo_nothing_meets_is_an_answer_with_the_reason_not_an_error() -> None:
    result = runner.invoke(app, ["plan", *QUERY[:-1], "0.1", *TRAFFIC])
    assert result.exit_code == 0, result.stderr
    assert "no configuration meets the SLO" in result.stdout
    out = plan_json(*TRAFFIC, "--tpot-ms", "0.1")
    assert out["best"] is None
    assert "TPOT" in out["reason"]


def test_text_output_shows_the_recommendation_and_both_modes() -> None:
    result = runner.invoke(app, ["plan", *QUERY, *TRAFFIC])
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith("best: ")
    for words in ("best deployment per mode", "disagg speedup over agg", "design points",
                  "agg Pareto frontier", "disagg Pareto frontier", "tok/s/GPU"):  # fmt: skip
        assert words in text


def test_a_csv_mix_plans_the_weighted_traffic(tmp_path: Path) -> None:
    mix = tmp_path / "mix.csv"
    mix.write_text("isl,osl,weight\n1000,200,3\n4000,500,1\n")
    out = plan_json("--mix", str(mix))
    req = plan_request(
        model="llama-3.1-8b", gpu="h100", gpus=4, ttft_ms=500, tpot_ms=30, mix=str(mix)
    )
    assert without_timing(out) == without_timing(json.loads(json.dumps(search.plan(req).to_dict())))


def test_a_json_mix_is_accepted_too(tmp_path: Path) -> None:
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps([{"isl": 1000, "osl": 200}, {"isl": 2000, "osl": 100, "weight": 2}]))
    assert plan_json("--mix", str(mix))["design_points"] > 0


@pytest.mark.parametrize(("suffix", "magic"), [("png", b"\x89PNG"), ("svg", b"<svg")])
def test_plot_draws_the_frontiers_to_png_or_svg(tmp_path: Path, suffix: str, magic: bytes) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / f"frontier.{suffix}"
    result = runner.invoke(app, ["plan", *QUERY, *TRAFFIC, "--plot", str(path)])
    assert result.exit_code == 0, result.stderr
    assert magic in path.read_bytes()[:400]


def test_an_unwritable_plot_path_is_refused_before_planning(tmp_path: Path) -> None:
    """A plot into a folder that does not exist, or that may not be written, is a bad command
    line: one line, exit 2, and no plan printed (or stored) first."""
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, ["plan", *QUERY, *TRAFFIC, "--plot", "/nonexistent/dir/f.png"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --plot: cannot write /nonexistent/dir/f.png: no folder")
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: nothing to refuse
        return
    denied = runner.invoke(app, ["plan", *QUERY, *TRAFFIC, "--plot", str(locked / "f.svg")])
    assert denied.exit_code == 2 and "is not writable" in denied.stderr and denied.stdout == ""


SWEEP = ["sweep", "--model", "llama-3.1-8b", "--gpu", "h100", "--traffic", "1000:200",
         "--traffic", "4000:200", "--tpot-ms", "30", "--tpot-ms", "15", "--ttft-ms", "1000",
         "--gpus", "4"]  # fmt: skip


def test_a_sweep_plans_every_scenario_of_the_grid_in_order() -> None:
    result = runner.invoke(app, [*SWEEP, "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["scenarios"]
    grid = [(r["isl"], r["osl"], r["tpot_ms"]) for r in rows]
    assert grid == [(1000, 200, 30), (1000, 200, 15), (4000, 200, 30), (4000, 200, 15)]
    for row in rows:
        assert row["model"] == "llama-3.1-8b" and row["gpus"] == 4 and row["ttft_ms"] == 1000
        assert set(row["result"]) >= RESULT_KEYS
    req = plan_request(
        model="llama-3.1-8b", gpu="h100", gpus=4, ttft_ms=1000, tpot_ms=15, isl=4000, osl=200
    )
    expected = json.loads(json.dumps(search.plan(req).to_dict()))
    assert without_timing(rows[3]["result"]) == without_timing(expected)


def test_a_sweep_scenario_the_planner_rejects_is_an_error_row_not_the_end() -> None:
    args = [*SWEEP[:5], "--gpu", "l40s", *SWEEP[5:], "--dtype", "fp4"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["scenarios"]
    assert len(rows) == 8
    assert all("error" in r and r["error"].startswith("--dtype:") for r in rows)


def test_a_sweep_prints_one_table_row_per_scenario() -> None:
    result = runner.invoke(app, SWEEP)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("llama-3.1-8b") == 4
    assert "1000/200" in result.stdout and "4000/200" in result.stdout
