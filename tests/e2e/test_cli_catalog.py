"""``pdplanner models`` and ``pdplanner gpus``: the catalogs as tables or JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pdplanner.planner.catalog import default_gpus, default_models, gpu_from_entry
from pdplanner.service.cli import app

runner = CliRunner(env={"PDPLANNER_SERVER": None})  # in process, whatever the shell says


def test_models_json_lists_every_catalog_model_with_its_parameter_counts() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [m["name"] for m in out] == default_models().names()
    r1 = next(m for m in out if m["name"] == "deepseek-r1")
    assert r1["attention"] == "mla" and r1["num_experts"] == 256
    assert r1["active_params"] < r1["total_params"]
    assert "deepseek-ai/DeepSeek-R1" in r1["aliases"]


def test_gpus_json_is_the_catalog_file_format_and_reads_back() -> None:
    result = runner.invoke(app, ["gpus", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert [g["name"] for g in out] == default_gpus().names()
    assert [gpu_from_entry(g) for g in out] == default_gpus().specs()


def test_the_tables_name_every_model_and_gpu() -> None:
    models = runner.invoke(app, ["models"])
    gpus = runner.invoke(app, ["gpus"])
    assert models.exit_code == gpus.exit_code == 0
    for name in default_models().names():
        assert name in models.stdout
    for name in default_gpus().names():
        assert name in gpus.stdout
    assert "256 (top 8, +1 shared)" in models.stdout  # DeepSeek's experts
