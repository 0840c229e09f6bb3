"""``pdplanner schedule``, ``schedules`` and ``simulate``: the JSON keys, stored schedules, and a
bad trace named by its row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pdplanner.service.cli import app

local = CliRunner(env={"PDPLANNER_SERVER": None})
HEADER = "start_s,duration_s,requests_per_s,isl,osl,weight\n"


def trace_file(tmp_path: Path, rates: list[float], name: str = "trace.csv") -> str:
    rows = "".join(
        f"{300 * k},300,{r},1500,250,0.7\n{300 * k},300,{r},6000,400,0.3\n"
        for k, r in enumerate(rates)
    )
    path = tmp_path / name
    path.write_text(HEADER + rows)
    return str(path)


def schedule_args(trace: str) -> list[str]:
    return ["schedule", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--gpus", "64",
            "--trace", trace, "--ttft-ms", "1000", "--tpot-ms", "30", "--percentile", "p99",
            "--startup-s", "120", "--cooldown-s", "0"]  # fmt: skip


def run(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_schedule_json_has_the_intervals_events_and_totals(tmp_path: Path) -> None:
    out = json.loads(run(local, *schedule_args(trace_file(tmp_path, [2, 6, 6, 2])), "--json"))
    assert len(out["intervals"]) == 4
    first = out["intervals"][0]
    assert {"start_s", "mode", "prefill", "decode", "agg", "predicted_ttft_ms",
            "predicted_tpot_ms", "prefill_utilisation", "decode_utilisation", "agg_utilisation",
            "mode_reason"} <= set(first)  # fmt: skip
    for iv in out["intervals"]:  # each interval's pools are those of its mode
        pools = ("agg",) if iv["mode"] == "agg" else ("prefill", "decode")
        for pool in pools:
            assert {"workers", "layout"} <= set(iv[pool])
    assert out["events"] and {"at_s", "pool", "action", "restart"} <= set(out["events"][0])
    totals = out["totals"]
    keys = ("gpu_hours", "static_peak_gpu_hours", "slo_attainment", "static_peak_slo_attainment",
            "static_mean_slo_attainment", "violations")  # fmt: skip
    assert set(keys) <= set(totals)
    assert totals["gpu_hours"] < totals["static_peak_gpu_hours"]
    text = run(local, *schedule_args(trace_file(tmp_path, [2, 6, 6, 2])))
    assert "static (peak)" in text and "events" in text


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("", "error: --trace: the series is empty: give at least one interval\n"),
        ("300,300,2,1000,200,1\n0,300,2,1000,200,1\n",
         "error: --trace: trace[1].start_s: the series is not sorted: 0 comes after 300 "
         "(trace[0])\n"),
        ("0,300,-2,1000,200,1\n", "error: --trace: trace[0].requests_per_s: must be at least 0, "
         "got -2\n"),
        ("0,0,2,1000,200,1\n", "error: --trace: trace[0].duration_s: must be greater than 0 (an "
         "interval of zero length), got 0\n"),
    ],
)  # fmt: skip
def test_a_bad_trace_is_one_line_naming_the_row(tmp_path: Path, rows: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + rows)
    result = local.invoke(app, schedule_args(str(path)))
    assert (result.exit_code, result.stderr) == (2, message)


def test_a_missing_flag_is_named(tmp_path: Path) -> None:
    args = schedule_args(trace_file(tmp_path, [1]))
    args.remove("--gpus")
    args.remove("64")
    result = local.invoke(app, args)
    assert (result.exit_code, result.stderr) == (2, "error: --gpus: is required\n")


def test_every_missing_or_bad_flag_is_named(tmp_path: Path) -> None:
    args = schedule_args(trace_file(tmp_path, [1]))
    for flag in ("--gpus", "--ttft-ms"):
        del args[args.index(flag) : args.index(flag) + 2]
    result = local.invoke(app, args)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --gpus: is required (1 more: --ttft-ms)\n",
    )
    sim = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--trace",
           trace_file(tmp_path, [1]), "--ttft-ms", "1000", "--tpot-ms", "30", "--prefill-tp", "0",
           "--prefill-workers", "1", "--decode-workers", "1"]  # fmt: skip
    result = local.invoke(app, sim)
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --prefill-tp: must be at least 1, got 0 (1 more: --decode-batch)\n",
    )


def test_simulate_replays_a_fixed_deployment(tmp_path: Path) -> None:
    trace = trace_file(tmp_path, [2, 2, 8])
    common = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--trace", trace,
              "--ttft-ms", "1000", "--tpot-ms", "30", "--prefill-tp", "4", "--decode-tp", "4",
              "--decode-batch", "64", "--decode-workers", "2", "--json"]  # fmt: skip
    small = json.loads(run(local, *common, "--prefill-workers", "1"))
    big = json.loads(run(local, *common, "--prefill-workers", "4"))
    assert small["deployment"] == "1P2D" and small["requests"] == big["requests"] > 0
    assert big["slo_attainment"] > small["slo_attainment"]
    bad = local.invoke(app, [*common[:-1], "--prefill-workers", "0"])
    assert (bad.exit_code, bad.stderr) == (
        2,
        "error: --prefill-workers: must be at least 1, got 0\n",
    )


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliRunner]:
    server_module = pytest.importorskip("pdplanner.service.server")
    db = tmp_path_factory.mktemp("server") / "schedules.db"
    running = server_module.start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{db}", log_level="WARNING"
    )
    try:
        yield CliRunner(env={"PDPLANNER_SERVER": f"127.0.0.1:{running.port}"})
    finally:
        running.stop(0)


def test_a_schedule_is_stored_listed_replayed_and_deleted_on_a_server(
    remote: CliRunner, tmp_path: Path
) -> None:
    trace = trace_file(tmp_path, [2, 6, 6, 2])
    out: dict[str, Any] = json.loads(run(remote, *schedule_args(trace), "--json"))
    name = out["name"]
    assert name.startswith("schedules/")
    here = json.loads(run(local, *schedule_args(trace), "--json"))
    assert out["totals"] == here["totals"]  # the same answer in process and on the server
    listed = json.loads(run(remote, "schedules", "list", "--json"))
    assert name in [s["name"] for s in listed["schedules"]]
    stored = json.loads(run(remote, "schedules", "get", name, "--json"))
    assert stored["result"]["totals"] == out["totals"]
    sim = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--trace", trace,
           "--ttft-ms", "1000", "--tpot-ms", "30", "--schedule", name, "--startup-s", "120",
           "--json"]  # fmt: skip
    replay = json.loads(run(remote, *sim))
    assert replay["slo_attainment"] == pytest.approx(out["totals"]["slo_attainment"])
    assert run(remote, "schedules", "delete", name) == f"deleted {name}\n"
    gone = remote.invoke(app, ["schedules", "get", name])
    assert (gone.exit_code, gone.stderr) == (1, f"error: schedule {name} not found\n")


def test_schedule_from_a_history_plans_the_forecast(tmp_path: Path) -> None:
    import math

    rows = "".join(
        f"{900 * k},900,{4 + 3 * math.sin(2 * math.pi * k / 96):.4f},2000,250,1\n"
        for k in range(2 * 96)
    )
    history = tmp_path / "history.csv"
    history.write_text(HEADER + rows)
    args = schedule_args(str(history))
    args[args.index("--trace")] = "--history"
    out = json.loads(run(local, *args, "--horizon", "8", "--no-simulate", "--json"))
    starts = [iv["start_s"] for iv in out["intervals"]]
    assert starts == [900.0 * (192 + k) for k in range(8)]  # the day after the history
    truth = [4 + 3 * math.sin(2 * math.pi * (192 + k) / 96) for k in range(8)]
    planned = [iv["requests_per_s"] for iv in out["intervals"]]
    assert all(p >= t - 0.05 for p, t in zip(planned, truth, strict=True))  # the upper quantile
    assert out["totals"]["slo_attainment"] is None  # not replayed
    short = tmp_path / "short.csv"
    short.write_text(HEADER + "".join(rows.splitlines(keepends=True)[:50]))
    args[args.index(str(history))] = str(short)
    bad = local.invoke(app, args)
    assert bad.exit_code == 2
    assert bad.stderr.startswith("error: --history: needs at least two seasons")
