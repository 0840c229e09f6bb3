"""The server's life: getting ready, serving many callers at once, restarting, shutting down.

Most tests run an in-process server (``start_server``); the SIGTERM test runs ``serve`` in a child
process, as ``pdplanner serve`` does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpc_requests import plan_request
from sqlalchemy import text

from pdplanner import planner
from pdplanner.planner.search import plan as plan_in_process
from pdplanner.service import convert
from pdplanner.service.server import JsonFormatter, RunningServer, start_server
from pdplanner.storage.engine import make_engine
from pdplanner.v1 import catalog_pb2, common_pb2, plan_pb2, planner_service_pb2_grpc, sweep_pb2

Stub = planner_service_pb2_grpc.PlannerServiceStub
CountRows = Callable[..., int]
ROOT = Path(__file__).resolve().parents[2]


#: A search of a few hundred milliseconds, long enough to be caught in flight.
SLOW = {"model": "deepseek-r1", "gpu": "gb200-nvl72", "gpus": 72}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pdplanner.db'}"


@pytest.fixture
def count_rows_sqlite(sqlite_url: str) -> Iterator[Callable[..., int]]:
    engine = make_engine(sqlite_url)

    def count(table: str) -> int:
        with engine.connect() as connection:
            return int(connection.execute(text(f'SELECT COUNT(*) FROM "{table}"')).scalar_one())

    yield count
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="pdplanner.v1.PlannerService")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


class PlanStarted(grpc.ServerInterceptor):
    """Sets ``started`` when a Plan call reaches the server's handler (for in-flight tests)."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method.endswith("/Plan"):
            self.started.set()
        return continuation(details)


# -- getting ready --------------------------------------------------------------------------------


def test_health_is_not_serving_and_calls_unavailable_until_warmed_up(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_warmup = planner.warmup

    def slow_warmup() -> float:
        release.wait(30)
        return real_warmup()

    monkeypatch.setattr(planner, "warmup", slow_warmup)
    port = free_port()
    started: list[RunningServer] = []
    starter = threading.Thread(
        target=lambda: started.append(
            start_server(port=port, host="127.0.0.1", database_url=sqlite_url)
        )
    )
    starter.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            assert health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                Stub(channel).ListModels(catalog_pb2.ListModelsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            print(err.value.details())
            release.set()
            starter.join(60)
            assert started, "start_server did not return"
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            assert Stub(channel).ListModels(catalog_pb2.ListModelsRequest()).models
    finally:
        release.set()
        starter.join(60)
        for running in started:
            running.stop(0)


# -- many callers ---------------------------------------------------------------------------------


def test_eight_concurrent_plan_calls_from_threads_all_succeed(sqlite_url: str) -> None:
    requests = [
        plan_request(request_id=str(uuid.uuid4()), gpus=gpus, model=model)
        for model in ("llama-3.1-70b", "mixtral-8x7b")
        for gpus in (8, 16, 24, 32)
    ]
    expected = [plan_in_process(convert.plan_request_from_proto(r)).best for r in requests]
    running = start_server(port=0, host="127.0.0.1", database_url=sqlite_url, max_workers=8)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            barrier = threading.Barrier(8)

            def call(request: plan_pb2.PlanRequest) -> plan_pb2.Plan:
                barrier.wait()
                return stub.Plan(request, timeout=120).plan

            with ThreadPoolExecutor(max_workers=8) as pool:
                plans = list(pool.map(call, requests))
    finally:
        running.stop(5)
    got = [convert.plan_result_from_proto(p.result).best for p in plans]
    assert got == expected  # concurrency changes nothing in the answers
    assert len({p.name for p in plans}) == 8


def test_eight_concurrent_plan_calls_store_eight_rows(
    database_url: str, count_rows: CountRows
) -> None:
    running = start_server(port=0, host="127.0.0.1", database_url=database_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda g: stub.Plan(plan_request(gpus=g), timeout=120), range(8, 16)))
    finally:
        running.stop(5)
    assert count_rows("plans") == 8


# -- restarting -----------------------------------------------------------------------------------


def test_plans_sweeps_and_custom_entries_survive_a_restart(database_url: str) -> None:
    config = {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
              "num_hidden_layers": 16, "num_key_value_heads": 8, "vocab_size": 128256}  # fmt: skip
    first = start_server(port=0, host="127.0.0.1", database_url=database_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = Stub(channel)
            request = catalog_pb2.CreateModelRequest(
                model_id="tiny", config_json=json.dumps(config)
            )
            stub.CreateModel(request)
            plan = stub.Plan(plan_request(request_id="before-restart"), timeout=60).plan
            sweep = list(
                stub.Sweep(
                    sweep_pb2.SweepRequest(
                        models=["tiny"],
                        gpu_types=["h100-sxm"],
                        traffic=[common_pb2.Workload(isl=1000, osl=100)],
                        slos=[plan_pb2.Slo(ttft_ms=500, tpot_ms=30)],
                        gpus=4,
                    ),
                    timeout=60,
                )
            )[-1].sweep
    finally:
        first.stop(5)

    second = start_server(port=0, host="127.0.0.1", database_url=database_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = Stub(channel)
            assert stub.GetPlan(plan_pb2.GetPlanRequest(name=plan.name)).plan == plan
            again = stub.Plan(plan_request(request_id="before-restart"), timeout=60).plan
            assert again == plan  # the request_id still means the same plan
            stored = stub.GetSweep(sweep_pb2.GetSweepRequest(name=sweep.name)).sweep
            assert stored.state == sweep_pb2.Sweep.STATE_SUCCEEDED and len(stored.scenarios) == 1
            names = [m.name for m in stub.ListModels(catalog_pb2.ListModelsRequest()).models]
            assert "models/tiny" in names
            assert stub.Plan(plan_request(model="tiny", gpus=4), timeout=60).plan.result.best.gpus
    finally:
        second.stop(5)


# -- shutting down --------------------------------------------------------------------------------


def test_graceful_stop_lets_an_in_flight_plan_finish_and_refuses_new_calls(
    sqlite_url: str, count_rows_sqlite: CountRows
) -> None:
    hook = PlanStarted()
    running = start_server(port=0, host="127.0.0.1", database_url=sqlite_url, interceptors=[hook])
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = Stub(channel)
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(stub.Plan, plan_request(**SLOW), timeout=60)
            assert hook.started.wait(30)
            stopper = threading.Thread(target=running.stop, args=(30,))
            stopper.start()
            time.sleep(0.05)  # the stop has begun: health is NOT_SERVING, new calls refused
            check = health_pb2.HealthCheckRequest(service="pdplanner.v1.PlannerService")
            status = running.health.Check(check, None).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListModels(catalog_pb2.ListModelsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            plan = in_flight.result(timeout=60).plan
            stopper.join(60)
            assert not stopper.is_alive()
    assert plan.result.HasField("best")
    assert count_rows_sqlite("plans") == 1


def test_graceful_stop_lets_a_streaming_sweep_finish(sqlite_url: str) -> None:
    running = start_server(port=0, host="127.0.0.1", database_url=sqlite_url)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        request = sweep_pb2.SweepRequest(
            models=["llama-3.1-70b"],
            gpu_types=["h100-sxm"],
            traffic=[common_pb2.Workload(isl=4000, osl=500)],
            slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=t) for t in range(15, 35)],
            gpus=16,
        )
        stream = Stub(channel).Sweep(request, timeout=120)
        events = [next(stream)]
        stopper = threading.Thread(target=running.stop, args=(60,))
        stopper.start()
        events.extend(stream)
        stopper.join(60)
    assert events[-1].sweep.state == sweep_pb2.Sweep.STATE_SUCCEEDED
    assert sum(e.HasField("scenario") for e in events) == 20


def test_sigterm_stops_serve_gracefully(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'served.db'}"
    code = f"from pdplanner.service.server import serve; serve({port}, {url!r}, host='127.0.0.1')"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PDPLANNER_GRACE_S": "30"}
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_until_serving(channel, child)
            stub = Stub(channel)
            with ThreadPoolExecutor(max_workers=1) as pool:
                in_flight = pool.submit(stub.Plan, plan_request(**SLOW), timeout=60)
                time.sleep(0.15)  # let the call reach the server
                child.send_signal(signal.SIGTERM)
                plan = in_flight.result(timeout=60).plan
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert plan.name.startswith("plans/")
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [line.get("event") for line in lines]
    assert events.index("serving") < events.index("signal") < events.index("stopped")
    calls = [
        line for line in lines if line.get("event") == "rpc" and line["method"].endswith("/Plan")
    ]
    assert calls and calls[0]["code"] == "OK" and calls[0]["duration_ms"] > 0
    print("\n".join(json.dumps(line) for line in lines[-4:]))


def _wait_until_serving(channel: grpc.Channel, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1]
        try:
            if health_status(channel) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server never reported SERVING")


# -- logs -----------------------------------------------------------------------------------------


def test_every_call_is_logged_as_one_json_line(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pdplanner.rpc")
    running = start_server(port=0, host="127.0.0.1", database_url=sqlite_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            stub.Plan(plan_request(request_id="logged-1"), timeout=60)
            with pytest.raises(grpc.RpcError):
                stub.GetPlan(plan_pb2.GetPlanRequest(name="plans/none"))
    finally:
        running.stop(5)
    records = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "rpc"]
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    by_method = {line["method"].rsplit("/", 1)[1]: line for line in lines}
    assert by_method["Plan"]["code"] == "OK"
    assert by_method["Plan"]["request_id"] == "logged-1"
    assert by_method["GetPlan"]["code"] == "NOT_FOUND"
    for line in lines:
        assert {"ts", "level", "method", "code", "duration_ms", "peer"} <= set(line)
        print(json.dumps(line))
