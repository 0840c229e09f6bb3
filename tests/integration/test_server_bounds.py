"""Bounded work: hostile sizes are refused from their lengths, searches cannot take the threads
that cheap calls run on, and shutdown stops runaway searches.

The timing bounds here are generous on purpose (the machine that runs the suite is shared): they
tell a starved or hung server from a working one, not a fast one from a slow one.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpc_requests import plan_request

from pdplanner.planner import validate
from pdplanner.service.server import RunningServer, start_server
from pdplanner.storage.errors import UnavailableError
from pdplanner.storage.repository import SqlStore
from pdplanner.v1 import (
    catalog_pb2,
    common_pb2,
    estimate_pb2,
    plan_pb2,
    planner_service_pb2_grpc,
    sweep_pb2,
)

Stub = planner_service_pb2_grpc.PlannerServiceStub
ROOT = Path(__file__).resolve().parents[2]
#: A search that runs for seconds: the largest MoE model on the largest budget allowed, at a rate
#: no budget serves, so that the search also sizes deployments past it (3.4 s alone in process on
#: a 2-core machine; longer three at a time).
RUNAWAY = {
    "model": "deepseek-r1",
    "gpu": "gb200-nvl72",
    "gpus": validate.MAX_GPUS,
    "rate_per_s": 1e5,
}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pdplanner.db'}"


@pytest.fixture
def small_server(sqlite_url: str) -> Iterator[RunningServer]:
    running = start_server(
        port=0, host="127.0.0.1", database_url=sqlite_url, max_workers=2, cheap_workers=2
    )
    yield running
    running.stop(0)


@pytest.fixture
def stub(small_server: RunningServer) -> Iterator[Stub]:
    with grpc.insecure_channel(f"127.0.0.1:{small_server.port}") as channel:
        yield Stub(channel)


def failure(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_a_budget_past_the_cap_is_invalid_at_once(stub: Stub) -> None:
    error = failure(lambda: stub.Plan(plan_request(gpus=1_000_000), timeout=30))
    print(error.details())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gpus" in error.details() and "16,384" in error.details()


def test_a_huge_sweep_grid_is_refused_from_its_axis_lengths(stub: Stub) -> None:
    # 100 x 100 x 100 x 10 = 10^7 scenarios in a request of a few kB
    request = sweep_pb2.SweepRequest(
        models=[f"m{i}" for i in range(100)],
        gpu_types=[f"g{i}" for i in range(100)],
        traffic=[common_pb2.Workload(isl=100 + i, osl=10) for i in range(100)],
        slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=20 + i) for i in range(10)],
        gpus=8,
    )
    print(f"request of {request.ByteSize():,} bytes")
    error = failure(lambda: list(stub.Sweep(request, timeout=30)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10,000,000 scenarios" in error.details()


def test_a_plan_with_ten_thousand_traffic_entries_is_invalid(stub: Stub) -> None:
    request = plan_request()
    del request.traffic[:]
    request.traffic.extend(common_pb2.Workload(isl=100 + i, osl=10) for i in range(10_000))
    error = failure(lambda: stub.Plan(request, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("traffic: must have at most 64 values")


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


# deeper than the JSON parser recurses, short enough to be read
DEEP = base64.urlsafe_b64encode(("[" * 1400 + "]" * 1400).encode()).decode()
YEAR_ONE = _token({"v": 1, "t": "0001-01-01T00:00:00+14:00", "i": "x", "f": {"listing": "models"}})
LONG = "A" * 6000


@pytest.mark.parametrize("token", [DEEP, YEAR_ONE, LONG], ids=["deep-json", "year-1", "long"])
def test_hostile_page_tokens_are_invalid_arguments(stub: Stub, token: str) -> None:
    calls = {
        "ListPlans": lambda: stub.ListPlans(plan_pb2.ListPlansRequest(page_token=token)),
        "ListModels": lambda: stub.ListModels(catalog_pb2.ListModelsRequest(page_token=token)),
        "ListGpus": lambda: stub.ListGpus(catalog_pb2.ListGpusRequest(page_token=token)),
        "ListSweeps": lambda: stub.ListSweeps(sweep_pb2.ListSweepsRequest(page_token=token)),
    }
    for name, call in calls.items():
        error = failure(call)
        print(f"{name}: {error.code().name} {error.details()[:100]}")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert error.details().startswith("page_token: invalid page token")
        assert len(error.details()) < 200


def _estimate() -> estimate_pb2.EstimateRequest:
    return estimate_pb2.EstimateRequest(
        model="llama-3.1-8b",
        gpu="h100-sxm",
        isl=2000,
        osl=200,
        mode=common_pb2.MODE_AGG,
        parallelism=common_pb2.Parallelism(tp=1),
        concurrency=16,
    )


def test_health_and_estimate_answer_while_searches_hold_every_slot(
    small_server: RunningServer, stub: Stub
) -> None:
    """Two runaway searches take both search slots; a third is RESOURCE_EXHAUSTED at once, and
    health checks and Estimate still answer on the threads searches cannot take."""
    channel = grpc.insecure_channel(f"127.0.0.1:{small_server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    with ThreadPoolExecutor(max_workers=2) as pool:
        searches: list[Future[plan_pb2.PlanResponse]] = [
            pool.submit(stub.Plan, plan_request(**RUNAWAY), timeout=120) for _ in range(2)
        ]
        deadline = time.monotonic() + 30
        while small_server.servicer.search_slots_free() > 0:
            assert time.monotonic() < deadline, "the searches never started"
            assert not any(f.done() for f in searches), [f.exception() for f in searches]
            time.sleep(0.05)
        third = failure(lambda: stub.Plan(plan_request(**RUNAWAY), timeout=30))
        assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "search slots" in third.details()
        for _ in range(3):
            started = time.monotonic()
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            estimate = stub.Estimate(_estimate(), timeout=10)
            waited = time.monotonic() - started
            print(f"health + Estimate during two searches: {waited * 1e3:.0f} ms")
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert estimate.serving_estimate.fits
            assert not any(f.done() for f in searches), "the searches ended too early to tell"
        small_server.stop(0)  # cancels both searches; they stop at their next check
        for f in searches:
            assert f.exception(timeout=30) is not None
    channel.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_health_watchers_hold_no_thread_that_other_calls_need(sqlite_url: str) -> None:
    """Twice as many Watch streams as the server has call threads: Get/List calls are still
    served, every watcher hears of a status change, and the server stops while some watchers
    have gone away and others are still open (grpcio's non-blocking Watch hung there)."""
    running = start_server(
        port=0, host="127.0.0.1", database_url=sqlite_url, max_workers=1, cheap_workers=2,
        warmup=False,  # no search here: the kernels are not needed
    )  # fmt: skip
    threads = running.settings.max_workers + running.settings.cheap_workers
    service = "pdplanner.v1.PlannerService"
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health, stub = health_pb2_grpc.HealthStub(channel), Stub(channel)
        watches = [health.Watch(request, timeout=60) for _ in range(2 * threads)]
        serving = health_pb2.HealthCheckResponse.SERVING
        assert [next(w).status for w in watches] == [serving] * len(watches)

        assert stub.ListModels(catalog_pb2.ListModelsRequest(), timeout=10).models
        assert not stub.ListPlans(plan_pb2.ListPlansRequest(), timeout=10).plans
        missing = plan_pb2.GetPlanRequest(name="plans/x")
        assert failure(lambda: stub.GetPlan(missing, timeout=10)).code() == (
            grpc.StatusCode.NOT_FOUND
        )

        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        running.health.set(service, not_serving)
        assert [next(w).status for w in watches] == [not_serving] * len(watches)
        for w in watches[::2]:
            w.cancel()
        stopper = threading.Thread(target=running.stop, args=(0,), daemon=True)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), "the server did not stop"


def test_sigterm_with_runaway_searches_exits_within_the_grace_period(tmp_path: Path) -> None:
    port = _free_port()
    url = f"sqlite:///{tmp_path / 'served.db'}"
    code = f"from pdplanner.service.server import serve; serve({port}, {url!r}, host='127.0.0.1')"
    grace_s = 2.0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PDPLANNER_GRACE_S": str(grace_s),
           "PDPLANNER_MAX_WORKERS": "3"}  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_until_serving(channel, child)
            stub = Stub(channel)
            with ThreadPoolExecutor(max_workers=3) as pool:
                searches = [
                    pool.submit(stub.Plan, plan_request(**RUNAWAY), timeout=600) for _ in range(3)
                ]
                time.sleep(1.0)  # let the searches get going
                assert not any(f.done() for f in searches), [f.exception() for f in searches]
                sent = time.monotonic()
                child.send_signal(signal.SIGTERM)
                _, err = child.communicate(timeout=grace_s + 30)
                exited_s = time.monotonic() - sent
                codes = [f.exception(timeout=30) for f in searches]
    finally:
        if child.poll() is None:
            child.kill()
    print(f"exited {exited_s:.1f} s after SIGTERM (grace {grace_s} s); calls ended with "
          f"{[c.code().name if isinstance(c, grpc.RpcError) else c for c in codes]}")  # fmt: skip
    assert child.returncode == 0, err[-2000:]
    assert exited_s < grace_s + 10
    assert all(isinstance(c, grpc.RpcError) for c in codes)


def _wait_until_serving(channel: grpc.Channel, child: subprocess.Popen[str]) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1]
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server never reported SERVING")


class _FlakyStore:
    """A SqlStore whose database can be made unreachable (every call UnavailableError)."""

    def __init__(self, url: str) -> None:
        self.inner = SqlStore(url)
        self.down = False

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args: object, **kwargs: object) -> object:
            if self.down:
                raise UnavailableError("database unavailable: connection to 10.9.9.9 refused")
            return attr(*args, **kwargs)

        return call


def test_health_reports_the_planner_service_not_serving_while_the_store_is_down(
    sqlite_url: str,
) -> None:
    from pdplanner.storage.migrate import upgrade

    upgrade(sqlite_url)
    store = _FlakyStore(sqlite_url)
    running = start_server(
        port=0, host="127.0.0.1", database_url=sqlite_url, store=store,  # type: ignore[arg-type]
        store_probe_interval_s=0.05,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                request = health_pb2.HealthCheckRequest(service=service)
                return int(health.Check(request, timeout=10).status)

            def wait_for(service: str, wanted: int) -> None:
                deadline = time.monotonic() + 20
                while status(service) != wanted:
                    assert time.monotonic() < deadline, f"{service or 'server'} never {wanted}"
                    time.sleep(0.05)

            serving = health_pb2.HealthCheckResponse.SERVING
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert status("pdplanner.v1.PlannerService") == serving
            store.down = True
            wait_for("pdplanner.v1.PlannerService", not_serving)
            assert status("") == serving  # the process itself is fine
            error = failure(lambda: Stub(channel).ListPlans(plan_pb2.ListPlansRequest()))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "10.9.9.9" not in error.details()
            store.down = False
            wait_for("pdplanner.v1.PlannerService", serving)
    finally:
        running.stop(0)


def test_one_client_cannot_take_every_call_slot(sqlite_url: str) -> None:
    """Two runaway searches are all one client may have in progress; its third call is refused
    at once, while another client (another token) is still served."""
    running = start_server(
        port=0, host="127.0.0.1", database_url=sqlite_url, max_workers=3,
        max_calls_per_client=2,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = Stub(channel)
            with ThreadPoolExecutor(max_workers=2) as pool:
                searches = [
                    pool.submit(stub.Plan, plan_request(**RUNAWAY), timeout=120) for _ in range(2)
                ]
                deadline = time.monotonic() + 30
                while running.servicer.search_slots_free() > 1:
                    assert time.monotonic() < deadline, "the searches never started"
                    time.sleep(0.05)
                listing = catalog_pb2.ListModelsRequest()
                third = failure(lambda: stub.ListModels(listing, timeout=10))
                assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "this client" in third.details()
                other = [("authorization", "Bearer another-client")]
                assert stub.ListModels(listing, metadata=other, timeout=10).models
                running.stop(0)
                for f in searches:
                    assert f.exception(timeout=30) is not None
    finally:
        running.stop(0)
