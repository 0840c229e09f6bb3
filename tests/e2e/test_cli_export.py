"""``pdplanner export`` and the ExportPlan RPC against a real server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

server_module = pytest.importorskip("pdplanner.service.server")
client_module = pytest.importorskip("pdplanner.client")

from pdplanner.planner.export import EXPORT_FORMATS  # noqa: E402
from pdplanner.planner.export.build import PlanExport, commands  # noqa: E402
from pdplanner.planner.export.flags import check_command  # noqa: E402
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
