"""Server memory through a burst of hostile requests and the idle time after it.

    python -m bench.idle_memory [--requests 2000] [--clients 8] [--idle-s 120] [--out FILE]

A server runs in a child process (``serve()``, as ``pdplanner serve``) on a fresh SQLite file.
``--clients`` threads send ``--requests`` requests, drawn by the fuzz test's strategies
(``tests/integration/test_fuzz.py``: every RPC, valid requests with a few fields replaced and
wholly random ones: NaN, 1e308, 5,000-character names, deep JSON), one in ``--runaway-every``
replaced by a search at the largest budget (``bench.runaway``), each with a 5 s deadline; then
no client is connected for ``--idle-s`` seconds. The baseline is the server's own resident
memory once it reports SERVING, in the same run.

Printed JSON: the server's resident set (VmRSS, MiB), its peak so far (VmHWM) and its thread
count when serving, after the burst, and every ``--sample-s`` seconds of the idle time; the
status codes the burst got.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from hypothesis import HealthCheck, Phase, given, settings

from bench.rpc_latency import ROOT, free_port, wait_serving
from bench.runaway import runaway_request
from pdplanner.v1 import planner_service_pb2_grpc

sys.path.insert(0, str(ROOT / "tests" / "integration"))
import test_fuzz  # the fuzz test's request strategies


def process_status(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (MiB), and thread count of a process, from /proc
    (Linux)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "peak_rss_mib": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
        "threads": int(fields["Threads"]),
    }


def hostile_requests(count: int, runaway_every: int, seed: int = 0) -> list[tuple[str, Any]]:
    """``count`` (RPC name, request) pairs, every RPC in turn, drawn by the fuzz strategies;
    one in ``runaway_every`` (0: none) is a Plan at the largest budget (``bench.runaway``)."""
    drawn: list[tuple[str, Any]] = []
    per_rpc = -(-count // len(test_fuzz.RPCS))
    for rpc, message, _handler in test_fuzz.RPCS:
        strategy = (
            test_fuzz.near(test_fuzz.BASES[rpc])
            if rpc in test_fuzz.BASES
            else test_fuzz.messages(message.DESCRIPTOR)
        )
        found: list[Any] = []

        @settings(max_examples=per_rpc, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=True)  # fmt: skip
        @given(strategy)
        def collect(request: Any) -> None:
            found.append(request)  # noqa: B023  (collect runs before the loop moves on)

        collect()
        drawn.extend((rpc, r) for r in found[:per_rpc])
    drawn = drawn[:count]
    if runaway_every:  # searches the deadline must stop: the largest budget allowed
        drawn[::runaway_every] = [("Plan", runaway_request())] * len(drawn[::runaway_every])
    random.Random(seed).shuffle(drawn)  # the RPCs interleaved, as from many clients
    return drawn


def burst(target: str, requests: list[tuple[str, Any]], clients: int) -> dict[str, int]:
    """Send the requests from ``clients`` threads; how many ended with each status code."""
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def send(share: list[tuple[str, Any]]) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
            for rpc, request in share:
                try:
                    out = getattr(stub, rpc)(request, timeout=5)
                    if rpc == "Sweep":
                        for _ in out:
                            pass
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=send, args=(requests[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runaway-every", type=int, default=25, help="0: no runaway searches")
    parser.add_argument("--idle-s", type=float, default=120.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    requests = hostile_requests(args.requests, args.runaway_every)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"sqlite:///{Path(tmp) / 'memory.db'}"
        code = (
            f"from pdplanner.service.server import serve; serve({port}, {url!r}, host='127.0.0.1')"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PDPLANNER_LOG_LEVEL": "WARNING"}
        child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
        try:
            target = f"127.0.0.1:{port}"
            wait_serving(target)
            out: dict[str, Any] = {"requests": len(requests), "clients": args.clients,
                                   "serving": process_status(child.pid)}  # fmt: skip
            started = time.perf_counter()
            out["codes"] = burst(target, requests, args.clients)
            out["burst_s"] = round(time.perf_counter() - started, 1)
            out["after_burst"] = process_status(child.pid)
            idle = []
            idle_started = time.monotonic()
            while time.monotonic() - idle_started < args.idle_s:
                time.sleep(args.sample_s)
                idle.append(
                    {"t_s": round(time.monotonic() - idle_started), **process_status(child.pid)}
                )
            out["idle"] = idle
        finally:
            child.terminate()
            child.wait(60)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
