"""``--server``: the CLI against a real server prints what it prints in process, plus names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

server_module = pytest.importorskip("pdplanner.service.server")
pytest.importorskip("pdplanner.client")

from pdplanner.service.cli import app  # noqa: E402

local = CliRunner(env={"PDPLANNER_SERVER": None})

EST = ["estimate", "--model", "llama-3.1-8b", "--gpu", "h100", "--isl", "1000", "--osl", "200"]
PLAN = ["plan", "--model", "llama-3.1-8b", "--gpu", "h100", "--gpus", "4", "--isl", "1000",
        "--osl", "200", "--ttft-ms", "500", "--tpot-ms", "30"]  # fmt: skip
SWEEP = ["sweep", "--model", "llama-3.1-8b", "--gpu", "h100", "--traffic", "1000:200",
         "--traffic", "2000:100", "--tpot-ms", "30", "--ttft-ms", "1000",
         "--gpus", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliRunner]:
    """A runner whose commands go to a server started in this process on a fresh SQLite file."""
    db = tmp_path_factory.mktemp("server") / "plans.db"
    running = server_module.start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{db}", log_level="WARNING"
    )
    try:
        yield CliRunner(env={"PDPLANNER_SERVER": f"127.0.0.1:{running.port}"})
    finally:
        running.stop(0)


def run(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def run_json(runner: CliRunner, *args: str) -> Any:
    return json.loads(run(runner, *args, "--json"))


def untimed(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("elapsed_ms", "name")}


@pytest.mark.parametrize(
    "flags",
    [
        ["--phase", "prefill", "--tp", "2", "--batch", "4"],
        ["--phase", "decode", "--tp", "1", "--batch", "32", "--context", "1500"],
        ["--mode", "agg", "--tp", "2", "--concurrency", "24", "--chunk-tokens", "1024"],
        ["--mode", "disagg", "--prefill-tp", "1", "--prefill-workers", "2", "--decode-tp", "2",
         "--decode-workers", "1", "--decode-batch", "48", "--kv-dtype", "fp8"],
        ["--mode", "disagg", "--prefill-tp", "1", "--prefill-workers", "1", "--decode-tp", "1",
         "--decode-workers", "1", "--decode-batch", "48", "--decode-gpu", "h200-sxm"],
    ],
)  # fmt: skip
def test_estimate_prints_the_same_json_and_table_against_a_server(
    remote: CliRunner, flags: list[str]
) -> None:
    assert run_json(remote, *EST, *flags) == run_json(local, *EST, *flags)
    assert run(remote, *EST, *flags) == run(local, *EST, *flags)


def test_an_input_file_gives_the_same_lines_against_a_server(
    remote: CliRunner, tmp_path: Path
) -> None:
    base = {"model": "llama-3.1-8b", "gpu": "h100", "isl": 1000, "osl": 200}
    lines = [{**base, "phase": "decode", "tp": 1, "batch": 8},
             {**base, "phase": "decode", "tp": 1, "batch": 0},
             {**base, "mode": "agg", "tp": 3, "concurrency": 4},
             {**base, "model": "nope", "mode": "agg", "tp": 1, "concurrency": 4}]  # fmt: skip
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    here = run(local, "estimate", "--input", str(path)).splitlines()
    there = run(remote, "estimate", "--input", str(path)).splitlines()
    assert there == here
    assert json.loads(there[1]) == {"error": "line 2: batch: must be at least 1, got 0"}


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--phase", "decode", "--tp", "3", "--batch", "1"],
         "error: --tp: 3 does not divide the 32 attention heads of llama-3.1-8b\n"),
        (["--phase", "decode", "--tp", "1", "--batch", "0"],
         "error: --batch: must be at least 1, got 0\n"),
        (["--mode", "disagg", "--prefill-tp", "1", "--prefill-workers", "0", "--decode-tp", "1",
          "--decode-workers", "1", "--decode-batch", "4"],
         "error: --prefill-workers: must be at least 1, got 0\n"),
        (["--phase", "decode", "--tp", "3", "--pp", "0", "--batch", "1"],
         "error: --pp: must be at least 1, got 0"
         " (1 more: --tp)\n"),
        (["--mode", "agg", "--tp", "1", "--pp", "2", "--concurrency", "0", "--chunk-tokens", "8"],
         "error: --pp: aggregated serving is modelled without pipeline parallelism (use 1)"
         " (2 more: --concurrency, --chunk-tokens)\n"),
        (["--mode", "disagg", "--prefill-tp", "1", "--prefill-workers", "0", "--decode-tp", "3",
          "--decode-workers", "1", "--decode-batch", "0"],
         "error: --prefill-workers: must be at least 1, got 0"
         " (2 more: --decode-tp, --decode-batch)\n"),
    ],
)  # fmt: skip
def test_a_bad_value_is_the_same_one_line_error_against_a_server(
    remote: CliRunner, flags: list[str], error: str
) -> None:
    for runner in (local, remote):
        result = runner.invoke(app, [*EST, *flags])
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", error)


def test_an_unknown_model_names_the_known_ones_against_a_server(remote: CliRunner) -> None:
    args = [*EST[:2], "llama-3.1-7b", *EST[3:], "--phase", "decode", "--tp", "1", "--batch", "1"]
    result = remote.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --model: unknown model 'llama-3.1-7b'; closest known:")
    assert "llama-3.1-70b" in result.stderr and len(result.stderr.splitlines()) == 1


def test_plan_against_a_server_stores_it_and_prints_its_name(remote: CliRunner) -> None:
    out = run_json(remote, *PLAN)
    assert out["name"].startswith("plans/")
    assert untimed(out) == untimed(run_json(local, *PLAN))
    text = run(remote, *PLAN)
    assert text.startswith("stored as plans/")
    assert "best deployment per mode" in text


def test_a_stored_plan_can_be_listed_fetched_and_deleted(remote: CliRunner) -> None:
    name = run_json(remote, *PLAN, "--mode", "agg")["name"]
    plan_id = name.removeprefix("plans/")
    listed = run_json(remote, "plans", "list", "--model", "llama-3.1-8b")
    assert name in [p["name"] for p in listed["plans"]]
    assert name in run(remote, "plans", "list")
    stored = run_json(remote, "plans", "get", plan_id)
    assert stored["name"] == name
    assert stored["request"]["limits"]["modes"] == ["agg"]
    assert stored["result"]["best"]["mode"] == "agg"
    assert run_json(remote, "plans", "get", name) == stored  # the full name works too
    assert name in run(remote, "plans", "get", plan_id)
    assert run(remote, "plans", "delete", plan_id) == f"deleted {name}\n"
    gone = remote.invoke(app, ["plans", "get", plan_id])
    assert (gone.exit_code, gone.stderr) == (1, f"error: plan {name} not found\n")


def test_plans_list_pages_with_a_token(remote: CliRunner) -> None:
    for tpot in ("25", "35"):
        run(remote, *PLAN[:-1], tpot)
    first = run_json(remote, "plans", "list", "--page-size", "1")
    assert len(first["plans"]) == 1 and first["next_page_token"]
    second = run_json(remote, "plans", "list", "--page-size", "1", "--page-token",
                      first["next_page_token"])  # fmt: skip
    assert second["plans"][0]["name"] != first["plans"][0]["name"]
    bad = remote.invoke(app, ["plans", "list", "--page-token", "garbage"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --page-token:")


def test_a_sweep_against_a_server_gives_the_same_rows_and_a_name(remote: CliRunner) -> None:
    there = run_json(remote, *SWEEP)
    here = run_json(local, *SWEEP)
    assert there["name"].startswith("sweeps/") and "name" not in here
    strip = [{**r, "result": untimed(r["result"])} for r in here["scenarios"]]
    assert [{**r, "result": untimed(r["result"])} for r in there["scenarios"]] == strip


def test_catalogs_from_a_server_match_the_built_in_ones(remote: CliRunner) -> None:
    assert run_json(remote, "models") == run_json(local, "models")
    assert run_json(remote, "gpus") == run_json(local, "gpus")


def test_an_unreachable_server_is_one_line_and_exit_1() -> None:
    runner = CliRunner(env={"PDPLANNER_SERVER": "127.0.0.1:1"})
    result = runner.invoke(app, [*EST, "--phase", "decode", "--tp", "1", "--batch", "1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --server 127.0.0.1:1: unavailable")
    assert len(result.stderr.splitlines()) == 1


# -- files at the edge: a config.json or GPU file is registered with the server, then used -------

TINY_LLAMA = {  # the architecture keys of a Llama-3.2-1B-shaped config.json
    "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "vocab_size": 128256, "tie_word_embeddings": True, "head_dim": 64,
}  # fmt: skip
GPU_FILE = """\
name: edge-gpu
flops_per_s: {bf16: 1307.0e12, fp8: 2615.0e12}
hbm_bytes: 192.0e9
hbm_bytes_per_s: 5.3e12
nvlink_bytes_per_s: 448.0e9
nvlink_domain_size: 8
scaleout_bytes_per_s: 50.0e9
"""


def _files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "edge-llama" / "config.json"
    model.parent.mkdir()
    model.write_text(json.dumps(TINY_LLAMA))
    gpu = tmp_path / "edge-gpu.yaml"
    gpu.write_text(GPU_FILE)
    return model, gpu


def test_model_and_gpu_files_are_registered_once_and_used_against_a_server(
    remote: CliRunner, tmp_path: Path
) -> None:
    model, gpu = _files(tmp_path)
    args = ["estimate", "--model", str(model), "--gpu", str(gpu), "--isl", "1000", "--osl",
            "200", "--phase", "decode", "--tp", "1", "--batch", "8"]  # fmt: skip
    here = run_json(local, *args)
    there = run_json(remote, *args)
    assert there == here and there["fits"]
    assert run_json(remote, *args) == there  # the second run finds its own registration
    assert [m["name"] for m in run_json(remote, "models")].count("edge-llama") == 1
    assert [g["name"] for g in run_json(remote, "gpus")].count("edge-gpu") == 1
    planned = run_json(remote, *PLAN[:2], str(model), *PLAN[3:])
    assert planned["name"].startswith("plans/") and planned["best"] is not None


def test_models_create_and_gpus_create_add_to_a_server_idempotently(
    remote: CliRunner, tmp_path: Path
) -> None:
    model, gpu = _files(tmp_path)
    create = ["models", "create", str(model), "--name", "my-llama", "--alias", "acme/My-Llama"]
    out = run_json(remote, *create)
    assert (out["name"], out["aliases"], out["num_layers"]) == ("my-llama", ["acme/My-Llama"], 16)
    assert run_json(remote, *create) == out  # the same file again: the same entry, no error
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY_LLAMA, "num_hidden_layers": 8}))
    taken = remote.invoke(app, ["models", "create", str(other), "--name", "my-llama"])
    assert taken.exit_code == 1 and "already exists" in taken.stderr
    assert len(taken.stderr.splitlines()) == 1
    created = run_json(remote, "gpus", "create", str(gpu), "--name", "my-gpu")
    assert created["name"] == "my-gpu" and created["hbm_bytes"] == 192e9
    assert "my-llama" in run(remote, "models")
    no_server = local.invoke(app, ["gpus", "create", str(gpu)])
    assert no_server.exit_code == 2 and no_server.stderr.startswith("error: --server:")
    for kind, path in (("models", model), ("gpus", gpu)):  # the RPC's model_id / gpu_id
        bad = remote.invoke(app, [kind, "create", str(path), "--name", "Bad Name!"])
        assert bad.exit_code == 2 and bad.stderr.startswith("error: --name: "), bad.stderr


def test_models_delete_and_gpus_delete_remove_custom_entries_and_refuse_other_names(
    remote: CliRunner, tmp_path: Path
) -> None:
    model, gpu = _files(tmp_path)
    run(remote, "models", "create", str(model), "--name", "gone-llama")
    run(remote, "gpus", "create", str(gpu), "--name", "gone-gpu")

    assert run(remote, "models", "delete", "gone-llama") == "deleted models/gone-llama\n"
    assert run(remote, "gpus", "delete", "gpus/gone-gpu") == "deleted gpus/gone-gpu\n"
    assert "gone-llama" not in [m["name"] for m in run_json(remote, "models")]
    assert "gone-gpu" not in [g["name"] for g in run_json(remote, "gpus")]

    refusals = {
        ("models", "gone-llama"): "error: model models/gone-llama not found\n",
        ("gpus", "gone-gpu"): "error: GPU gpus/gone-gpu not found\n",
        ("models", "llama-3.1-8b"): "error: model models/llama-3.1-8b is built in; only custom "
        "entries can be deleted\n",
        ("gpus", "h100-sxm"): "error: GPU gpus/h100-sxm is built in; only custom entries can "
        "be deleted\n",
    }
    for (group, name), error in refusals.items():
        result = remote.invoke(app, [group, "delete", name])
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", error)
    for group in ("models", "gpus"):
        result = local.invoke(app, [group, "delete", "anything"])
        assert result.exit_code == 2
        assert (
            result.stderr
            == "error: --server: is required for this command (or set PDPLANNER_SERVER)\n"
        )


def test_a_stored_sweep_can_be_listed_and_fetched_by_name(remote: CliRunner) -> None:
    swept = run_json(remote, *SWEEP)
    fetched = run_json(remote, "sweeps", "get", swept["name"])
    assert fetched == swept
    assert run_json(remote, "sweeps", "get", swept["name"].removeprefix("sweeps/")) == swept
    text = run(remote, "sweeps", "get", swept["name"])
    assert text.startswith(f"{swept['name']}: succeeded")
    listed = run_json(remote, "sweeps", "list")
    entry = next(s for s in listed["sweeps"] if s["name"] == swept["name"])
    assert (entry["state"], entry["done"], entry["total"]) == ("succeeded", 2, 2)
    assert swept["name"] in run(remote, "sweeps", "list")
