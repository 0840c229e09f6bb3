"""``pdplanner.PlannerClient`` against an in-process server: typed calls, deadlines and retries.

Retries are exercised with a server-side interceptor that fails chosen calls with UNAVAILABLE,
before or after the real handler ran (the second case is a lost response: the plan is stored,
the client does not know it, and its retry must not store a second one).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from rpc_requests import plan_request
from sqlalchemy import text

from pdplanner import PlannerClient, field_violations
from pdplanner.service.server import RunningServer, start_server
from pdplanner.storage.engine import make_engine
from pdplanner.v1 import catalog_pb2, common_pb2, estimate_pb2, plan_pb2, sweep_pb2


def sweep_request(n_slos: int = 4) -> sweep_pb2.SweepRequest:
    return sweep_pb2.SweepRequest(
        models=["llama-3.1-8b"],
        gpu_types=["h100-sxm"],
        traffic=[common_pb2.Workload(isl=2000, osl=200)],
        slos=[plan_pb2.Slo(ttft_ms=1000, tpot_ms=10 + 5 * i) for i in range(n_slos)],
        gpus=8,
    )


class Flaky(grpc.ServerInterceptor):
    """Fails the first ``failures`` calls of one method with UNAVAILABLE.

    ``after``: fail after the real handler ran (a lost response) instead of before it. For a
    streaming method, ``after_events`` events are sent before the failure. Every request_id
    seen is kept in ``request_ids``.
    """

    def __init__(
        self, method: str, failures: int, *, after: bool = False, after_events: int = 0
    ) -> None:
        self.method = method
        self.failures = failures
        self.after = after
        self.after_events = after_events
        self.request_ids: list[str] = []
        self._lock = threading.Lock()

    def _should_fail(self) -> bool:
        with self._lock:
            if self.failures > 0:
                self.failures -= 1
                return True
            return False

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.endswith("/" + self.method):
            return handler
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            real = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                self.request_ids.append(getattr(request, "request_id", ""))
                fail = self._should_fail()
                if fail and not self.after:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "injected before the handler")
                response = real(request, context)
                if fail:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "injected: response lost")
                return response

            return grpc.unary_unary_rpc_method_handler(unary, **codec)
        real_stream = handler.unary_stream

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self.request_ids.append(request.request_id)
            fail = self._should_fail()
            for sent, event in enumerate(real_stream(request, context)):
                if fail and sent == self.after_events:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "injected: stream broken")
                yield event

        return grpc.unary_stream_rpc_method_handler(stream, **codec)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pdplanner.db'}"


@pytest.fixture
def count_rows_sqlite(sqlite_url: str) -> Iterator[Callable[[str], int]]:
    engine = make_engine(sqlite_url)

    def count(table: str) -> int:
        with engine.connect() as connection:
            return int(connection.execute(text(f'SELECT COUNT(*) FROM "{table}"')).scalar_one())

    yield count
    engine.dispose()


def serve(url: str, *interceptors: grpc.ServerInterceptor) -> RunningServer:
    return start_server(port=0, host="127.0.0.1", database_url=url, interceptors=list(interceptors))


@pytest.fixture
def server(sqlite_url: str) -> Iterator[RunningServer]:
    running = serve(sqlite_url)
    yield running
    running.stop(0)


@pytest.fixture
def client(server: RunningServer) -> Iterator[PlannerClient]:
    with PlannerClient(f"127.0.0.1:{server.port}", timeout_s=60, backoff_s=0.01) as c:
        yield c


# -- one typed method per RPC ---------------------------------------------------------------------


def test_plan_get_list_and_delete(client: PlannerClient) -> None:
    first = client.plan(plan_request())
    second = client.plan(plan_request(gpus=8))
    assert first.request.request_id, "the client gives every plan call a request_id"
    assert client.get_plan(first.name) == first
    assert client.get_plan(first.name.removeprefix("plans/")) == first  # a bare id works too
    assert [p.name for p in client.iter_plans(page_size=1)] == [second.name, first.name]
    page = client.list_plans(page_size=1)
    assert [p.name for p in page.plans] == [second.name] and page.next_page_token
    client.delete_plan(first.name)
    assert [p.name for p in client.iter_plans()] == [second.name]


def test_estimate(client: PlannerClient) -> None:
    response = client.estimate(
        estimate_pb2.EstimateRequest(
            model="llama-3.1-8b",
            gpu="h100-sxm",
            isl=2000,
            osl=200,
            mode=common_pb2.MODE_AGG,
            parallelism=common_pb2.Parallelism(tp=1),
            concurrency=16,
        )
    )
    serving = response.serving_estimate
    assert serving.mode == common_pb2.MODE_AGG
    assert serving.ttft_ms > 0 and serving.tpot_ms > 0 and serving.fits


def test_sweep_and_get_sweep(client: PlannerClient) -> None:
    events = list(client.sweep(sweep_request()))
    assert events[-1].sweep.state == sweep_pb2.Sweep.STATE_SUCCEEDED
    stored = client.get_sweep(events[-1].sweep.name)
    assert len(stored.scenarios) == 4
    assert stored.request.request_id  # the client chose one


def test_catalog_calls(client: PlannerClient) -> None:
    config = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
              "num_hidden_layers": 8, "num_key_value_heads": 4, "vocab_size": 32000}  # fmt: skip
    from_dict = client.create_model("mini-a", config, aliases=["acme/Mini-A"])
    from_text = client.create_model("mini-b", json.dumps(config))
    assert from_dict.num_layers == from_text.num_layers == 8
    gpu = client.create_gpu(
        "acme-y",
        catalog_pb2.Gpu(
            flops_per_s=catalog_pb2.FlopsPerS(bf16=500e12),
            hbm_bytes=48e9,
            hbm_bytes_per_s=1e12,
            nvlink_bytes_per_s=100e9,
            nvlink_domain_size=4,
            scaleout_bytes_per_s=25e9,
        ),
    )
    assert gpu.name == "gpus/acme-y"
    assert {"models/mini-a", "models/mini-b", "models/llama-3.1-8b"} <= {
        m.name for m in client.list_models()
    }
    assert "gpus/acme-y" in {g.name for g in client.list_gpus()}


def test_field_violations_reads_the_bad_request(client: PlannerClient) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.plan(plan_request(gpus=0))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, description)] = field_violations(err.value)
    assert field == "gpus"
    print(field, description)


# -- retries and deadlines ------------------------------------------------------------------------


@pytest.mark.parametrize("after", [False, True], ids=["refused", "response-lost"])
def test_a_retried_plan_reuses_its_request_id_and_stores_once(
    sqlite_url: str, count_rows_sqlite: Callable[[str], int], after: bool
) -> None:
    flaky = Flaky("Plan", failures=2, after=after)
    running = serve(sqlite_url, flaky)
    try:
        with PlannerClient(f"127.0.0.1:{running.port}", retries=3, backoff_s=0.01) as client:
            plan = client.plan(plan_request())
    finally:
        running.stop(0)
    assert len(flaky.request_ids) == 3
    assert len(set(flaky.request_ids)) == 1
    assert plan.request.request_id == flaky.request_ids[0]
    assert count_rows_sqlite("plans") == 1


def test_retries_give_up_after_the_limit(sqlite_url: str) -> None:
    flaky = Flaky("ListModels", failures=10)
    running = serve(sqlite_url, flaky)
    try:
        with (
            PlannerClient(f"127.0.0.1:{running.port}", retries=2, backoff_s=0.01) as client,
            pytest.raises(grpc.RpcError) as err,
        ):
            client.list_models()
    finally:
        running.stop(0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(flaky.request_ids) == 3  # the first attempt and two retries


def test_only_unavailable_is_retried(sqlite_url: str) -> None:
    flaky = Flaky("Plan", failures=0)
    running = serve(sqlite_url, flaky)
    try:
        with (
            PlannerClient(f"127.0.0.1:{running.port}", retries=3, backoff_s=0.01) as client,
            pytest.raises(grpc.RpcError) as err,
        ):
            client.plan(plan_request(model="gpt-9"))
    finally:
        running.stop(0)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(flaky.request_ids) == 1


def test_a_client_started_before_its_server_gets_through_by_retrying(sqlite_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started: list[RunningServer] = []

    def start_later() -> None:
        time.sleep(0.5)
        started.append(start_server(port=port, host="127.0.0.1", database_url=sqlite_url))

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        with PlannerClient(
            f"127.0.0.1:{port}", retries=20, backoff_s=0.05, max_backoff_s=0.25, timeout_s=30
        ) as client:
            models = client.list_models()
    finally:
        starter.join(60)
        for running in started:
            running.stop(0)
    assert models


def test_the_deadline_covers_the_call(client: PlannerClient) -> None:
    slow = plan_request(model="deepseek-r1", gpu="gb200-nvl72", gpus=72)
    with pytest.raises(grpc.RpcError) as err:
        client.plan(slow, timeout_s=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_broken_sweep_stream_resumes_and_yields_each_scenario_once(
    sqlite_url: str, count_rows_sqlite: Callable[[str], int]
) -> None:
    # the stream breaks after the opening event and two scenarios (with their progress)
    flaky = Flaky("Sweep", failures=1, after_events=5)
    running = serve(sqlite_url, flaky)
    try:
        with PlannerClient(f"127.0.0.1:{running.port}", backoff_s=0.01) as client:
            events = list(client.sweep(sweep_request(n_slos=6)))
    finally:
        running.stop(0)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["sweep"] + ["scenario", "progress"] * 6 + ["sweep"]
    assert [e.scenario.index for e in events if e.HasField("scenario")] == list(range(6))
    assert [e.progress.done for e in events if e.HasField("progress")] == list(range(1, 7))
    assert events[-1].sweep.state == sweep_pb2.Sweep.STATE_SUCCEEDED
    assert len(set(flaky.request_ids)) == 1 and len(flaky.request_ids) == 2
    assert count_rows_sqlite("sweeps") == 1
    assert count_rows_sqlite("sweep_scenarios") == 6
