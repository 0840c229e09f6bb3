"""``pdplanner export`` and the ExportPlan RPC against a real server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

server_module = pytest.importorskip("pdplanner.service.server")
client_module = pytest.importorskip("pdplanner.client")

from pdplanner.planner.export import EXPORT_FORMATS, ExportedFile  # noqa: E402
from pdplanner.planner.export.build import PlanExport, commands  # noqa: E402
from pdplanner.planner.export.flags import check_command  # noqa: E402
from pdplanner.service import exports  # noqa: E402
from pdplanner.service.cli import app  # noqa: E402
from pdplanner.v1 import export_pb2  # noqa: E402

PLAN = ["plan", "--model", "llama-3.1-8b", "--gpu", "h100", "--gpus", "4", "--isl", "1000",
        "--osl", "200", "--ttft-ms", "500", "--tpot-ms", "30"]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CliRunner, str, str]]:
    """A runner against a server on a fresh SQLite file, the server's address and a stored plan."""
    db = tmp_path_factory.mktemp("server") / "plans.db"
    running = server_module.start_server(
        port=0, host="127.0.0.1", database_url=f"sqlite:///{db}", log_level="WARNING"
    )
    try:
        address = f"127.0.0.1:{running.port}"
        runner = CliRunner(env={"PDPLANNER_SERVER": address})
        planned = runner.invoke(app, PLAN)
        assert planned.exit_code == 0, planned.output
        name = planned.output.splitlines()[0].removeprefix("stored as ")
        assert name.startswith("plans/")
        yield runner, address, name
    finally:
        running.stop(0)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_writes_files_whose_commands_use_documented_flags(
    served: tuple[CliRunner, str, str], fmt: str, tmp_path: Path
) -> None:
    runner, _, name = served
    result = runner.invoke(app, ["export", name, "--format", fmt, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert "benchmark.sh" in written
    assert os.access(tmp_path / "benchmark.sh", os.X_OK)
    from pdplanner.planner.export import ExportedFile

    export = PlanExport(fmt, "", "", tuple(ExportedFile(k, v) for k, v in written.items()), "")
    lines = commands(export)
    assert any(line.startswith("vllm bench serve") for line in lines)
    for line in lines:
        check_command(line)


def test_export_prints_files_without_out(served: tuple[CliRunner, str, str]) -> None:
    runner, _, name = served
    result = runner.invoke(app, ["export", name.removeprefix("plans/"), "--format", "k8s"])
    assert result.exit_code == 0, result.output
    assert "# ==> deployment.yaml <==" in result.output
    assert "kind: Deployment" in result.output


def test_export_without_a_format_is_one_line_exit_2(served: tuple[CliRunner, str, str]) -> None:
    runner, _, name = served
    result = runner.invoke(app, ["export", name])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --format: must be one of vllm, sglang")


def test_export_of_an_unknown_plan_is_exit_1(served: tuple[CliRunner, str, str]) -> None:
    runner, _, _ = served
    result = runner.invoke(app, ["export", "plans/nosuchplan", "--format", "vllm"])
    assert result.exit_code == 1
    assert "nosuchplan" in result.output


def test_rpc_without_a_format_is_invalid_argument_on_format(
    served: tuple[CliRunner, str, str],
) -> None:
    _, address, name = served
    with client_module.PlannerClient(address) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.export_plan(name, export_pb2.EXPORT_FORMAT_UNSPECIFIED)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert client_module.field_violations(err.value)[0][0] == "format"
        response = client.export_plan(name, export_pb2.EXPORT_FORMAT_SGLANG)
    assert response.engine == "sglang" and response.engine_version == "0.5.3"
    assert [f.path for f in response.files] == ["launch.sh", "benchmark.sh"]


# Llama 3.1 405B in FP8 (about 405 GB of weights) fits 8 x 80 GB H100s only as one TP8 worker
# when pipeline parallelism is off: wider than a 4-GPU host, one 8-GPU host exactly.
TP8_PLAN = ["plan", "--model", "llama-3.1-405b", "--gpu", "h100", "--gpus", "8", "--dtype",
            "fp8", "--isl", "1000", "--osl", "200", "--ttft-ms", "5000", "--tpot-ms", "200",
            "--mode", "agg", "--no-pp", "--json"]  # fmt: skip


@pytest.fixture(scope="module")
def tp8_plan(served: tuple[CliRunner, str, str]) -> str:
    """The stored name of a plan whose one aggregated worker is TP8."""
    runner, _, _ = served
    planned = runner.invoke(app, TP8_PLAN)
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    pool = plan["best"]["pools"]["agg"]
    assert (pool["tp"], pool["pp"], pool["attention_dp"]) == (8, 1, 1)
    return str(plan["name"])


def test_gpus_per_node_4_makes_the_tp8_worker_two_node_over_rpc(
    served: tuple[CliRunner, str, str], tp8_plan: str
) -> None:
    _, address, _ = served
    with client_module.PlannerClient(address) as client:
        one_host = client.export_plan(tp8_plan, export_pb2.EXPORT_FORMAT_SGLANG)
        trays = client.export_plan(tp8_plan, export_pb2.EXPORT_FORMAT_SGLANG, gpus_per_node=4)
        with pytest.raises(grpc.RpcError) as err:
            client.export_plan(tp8_plan, export_pb2.EXPORT_FORMAT_UNSPECIFIED, gpus_per_node=73)
    assert not any("spans" in note for note in one_host.notes)
    assert "a agg worker spans 2 nodes of 4 GPUs: the files start it on each node" in trays.notes
    lines = commands(exports.export_from_proto(trays, "sglang"))
    given = check_command(next(line for line in lines if "--nnodes" in line))[1]
    assert given["--tp-size"] == "8" and given["--nnodes"] == "2"
    assert given["--node-rank"] == "$NODE_RANK"
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in client_module.field_violations(err.value)} == {"format", "gpus_per_node"}


def test_gpus_per_node_option_makes_the_tp8_worker_two_node(
    served: tuple[CliRunner, str, str], tp8_plan: str, tmp_path: Path
) -> None:
    runner, _, _ = served
    args = ["export", tp8_plan, "--format", "vllm", "--gpus-per-node", "4", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "note: a agg worker spans 2 nodes of 4 GPUs" in result.output
    lines = commands(PlanExport("vllm", "", "", (ExportedFile("launch.sh",
                                (tmp_path / "launch.sh").read_text()),), ""))  # fmt: skip
    serve = next(line for line in lines if line.startswith("vllm serve"))
    given = check_command(serve)[1]
    assert given["--tensor-parallel-size"] == "8"
    assert "ray start --head --port 6379" in lines


@pytest.mark.parametrize("value", ["0", "73"])
def test_gpus_per_node_out_of_range_is_one_line_exit_2(
    served: tuple[CliRunner, str, str], value: str
) -> None:
    runner, _, name = served
    result = runner.invoke(app, ["export", name, "--format", "vllm", "--gpus-per-node", value])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --gpus-per-node: must be")
    assert len(result.output.strip().splitlines()) == 1


def test_a_gpus_per_node_the_worker_does_not_split_over_names_that_flag(
    served: tuple[CliRunner, str, str], tp8_plan: str
) -> None:
    """8 GPUs on hosts of 3 need 3 hosts that cannot hold the same number of ranks each: the
    request's --gpus-per-node is at fault, and the error names it (the RPC's field too)."""
    runner, address, _ = served
    result = runner.invoke(app, ["export", tp8_plan, "--format", "vllm", "--gpus-per-node", "3"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --gpus-per-node: plans/")
    assert "does not split evenly over 3 nodes of 3 GPUs" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with client_module.PlannerClient(address) as client, pytest.raises(grpc.RpcError) as err:
        client.export_plan(tp8_plan, export_pb2.EXPORT_FORMAT_VLLM, gpus_per_node=3)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in client_module.field_violations(err.value)] == ["gpus_per_node"]
