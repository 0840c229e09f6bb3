"""The container's entry point (deploy/entrypoint.sh) and health check, run as the image runs
them, against PostgreSQL: it waits for the database, migrates it, serves, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from pdplanner.v1 import common_pb2, plan_pb2, planner_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
START_TIMEOUT_S = 240.0  # a cold kernel compile on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    """The image's environment: the venv's `pdplanner` on PATH, the database and port given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDPLANNER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(PDPLANNER_DATABASE_URL=database_url, PDPLANNER_PORT=str(port), **extra)
    return env


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("empty_database_url", ["postgresql"], indirect=True)
def test_the_entrypoint_migrates_postgresql_serves_and_stops_on_sigterm(
    empty_database_url: str,
) -> None:
    port = free_port()
    assert healthcheck(port).returncode == 1  # nothing listens yet
    server = subprocess.Popen(
        [str(ENTRYPOINT)], env=container_env(empty_database_url, port),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (check := healthcheck(port)).returncode != 0:
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, check.stderr
            time.sleep(0.5)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
            request = plan_pb2.PlanRequest(
                request_id="entrypoint-test", model="llama-3.1-8b", gpu="h100-sxm", gpus=2,
                traffic=[common_pb2.Workload(isl=1000, osl=200)],
                slo=plan_pb2.Slo(ttft_ms=1000, tpot_ms=50),
            )  # fmt: skip
            name = stub.Plan(request, timeout=120).plan.name
            listed = stub.ListPlans(plan_pb2.ListPlansRequest(), timeout=30).plans
            assert [p.name for p in listed] == [name]  # stored in this PostgreSQL schema
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
        assert server.returncode == 0, err
        assert "is up to date (revision" in out  # the entry point's `pdplanner db upgrade`
        assert '"event": "serving"' in err and '"event": "migrated"' not in err  # not twice
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_the_entrypoint_gives_up_on_an_unreachable_database() -> None:
    refused = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    result = subprocess.run(
        [str(ENTRYPOINT)], env=container_env(refused, free_port(), PDPLANNER_DB_WAIT_S="1"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: the database did not accept the migrations within 1s"
    )
