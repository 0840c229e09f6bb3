"""Plan RPC latency and throughput against a local server, next to the same search in process.

    python -m bench.rpc_latency [--calls 200] [--server process|thread] [--out FILE]

The query is the reference one (Llama-3.1-70B, 16 x H100-SXM, ISL 4000, OSL 500, TTFT 1000 ms,
TPOT 20 ms). The baseline is ``pdplanner.planner.search.plan`` called in this process, measured in
the same run, warm. The server runs in a child process (``serve()``, as ``pdplanner serve``) on a
fresh SQLite file, so client and server do not share a GIL; ``--server thread`` runs it in this
process instead. Every RPC carries its own request_id, so each call searches and stores a row.

Printed JSON: p50/p99 latency (ms) and calls/s for 1 and 8 concurrent callers, in process and over
gRPC, and the overhead ratios (RPC p50 / in-process p50; in-process calls/s / RPC calls/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pdplanner import planner
from pdplanner.planner.search import plan as plan_in_process
from pdplanner.service import convert
from pdplanner.v1 import common_pb2, plan_pb2, planner_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def reference_request() -> plan_pb2.PlanRequest:
    """The reference query of the benchmarks."""
    return plan_pb2.PlanRequest(
        model="llama-3.1-70b",
        gpu="h100-sxm",
        gpus=16,
        traffic=[common_pb2.Workload(isl=4000, osl=500)],
        slo=plan_pb2.Slo(ttft_ms=1000, tpot_ms=20),
    )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run(call: Callable[[], None], calls: int, concurrency: int) -> dict[str, float]:
    """Make ``calls`` calls from ``concurrency`` threads; latency percentiles and calls/s."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = [calls // concurrency + (i < calls % concurrency) for i in range(concurrency)]
    barrier = threading.Barrier(concurrency)

    def worker(n: int) -> None:
        mine = []
        barrier.wait()
        for _ in range(n):
            started = time.perf_counter()
            call()
            mine.append((time.perf_counter() - started) * 1e3)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, per_thread))
    wall_s = time.perf_counter() - started
    return {
        "calls": calls,
        "concurrency": concurrency,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "calls_per_s": round(calls / wall_s, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the server at {target} did not report SERVING in {timeout_s:.0f} s")


@contextmanager
def local_server(mode: str, database_url: str, max_workers: int) -> Iterator[str]:
    """A server on a free localhost port, in a child process or a thread; yields its target."""
    if mode == "thread":
        from pdplanner.service.server import start_server

        running = start_server(
            port=0, host="127.0.0.1", database_url=database_url, max_workers=max_workers
        )
        try:
            yield f"127.0.0.1:{running.port}"
        finally:
            running.stop(5)
        return
    port = free_port()
    code = (
        "from pdplanner.service.server import serve; "
        f"serve({port}, {database_url!r}, host='127.0.0.1', max_workers={max_workers})"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PDPLANNER_LOG_LEVEL": "WARNING"}
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    try:
        wait_serving(f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait(60)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per measurement")
    parser.add_argument("--server", choices=("process", "thread"), default="process")
    parser.add_argument("--max-workers", type=int, default=8, help="server threads")
    parser.add_argument("--out", help="also write the JSON to this file")
    args = parser.parse_args(argv)

    planner.warmup()
    request = reference_request()
    domain = convert.plan_request_from_proto(request)
    probe = plan_in_process(domain)

    def in_process() -> None:
        plan_in_process(domain)

    for _ in range(10):
        in_process()
    local = {f"{c}_callers": run(in_process, args.calls, c) for c in (1, 8)}

    remote: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        with local_server(args.server, url, args.max_workers) as target:
            channels = [grpc.insecure_channel(target) for _ in range(8)]
            stubs = [planner_service_pb2_grpc.PlannerServiceStub(ch) for ch in channels]
            next_stub = iter(range(10**9))
            stub_lock = threading.Lock()

            def rpc() -> None:
                with stub_lock:
                    stub = stubs[next(next_stub) % len(stubs)]
                call = plan_pb2.PlanRequest()
                call.CopyFrom(request)
                call.request_id = str(uuid.uuid4())
                stub.Plan(call, timeout=60)

            for _ in range(10):
                rpc()
            remote = {f"{c}_callers": run(rpc, args.calls, c) for c in (1, 8)}
            for ch in channels:
                ch.close()

    result = {
        "benchmark": "rpc_latency",
        "query": "llama-3.1-70b, 16 x h100-sxm, isl 4000, osl 500, ttft 1000 ms, tpot 20 ms",
        "design_points": probe.design_points,
        "server": args.server,
        "server_max_workers": args.max_workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "in_process": local,
        "rpc": remote,
        "overhead": {
            "p50_ratio_1_caller": round(
                remote["1_callers"]["p50_ms"] / local["1_callers"]["p50_ms"], 3
            ),
            "p50_added_ms_1_caller": round(
                remote["1_callers"]["p50_ms"] - local["1_callers"]["p50_ms"], 3
            ),
            "throughput_ratio_1_caller": round(
                local["1_callers"]["calls_per_s"] / remote["1_callers"]["calls_per_s"], 3
            ),
            "throughput_ratio_8_callers": round(
                local["8_callers"]["calls_per_s"] / remote["8_callers"]["calls_per_s"], 3
            ),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
