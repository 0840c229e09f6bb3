"""Runaway searches: 8 Plan calls at the largest budget with a short deadline, in process.

    python -m bench.runaway [--calls 8] [--deadline-s 5]

Each call asks for DeepSeek-R1 on 16,384 GB200 GPUs (the budget cap), a search that would run
for minutes. Printed: the status of each call, how long after the last answer the last search
thread stopped, and the server process's resident memory when serving, at its peak and after
(read from /proc, Linux only). Before deadlines were checked inside rate matching, such calls
ran for minutes past their deadline and held every worker thread.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from pdplanner.service.server import start_server
from pdplanner.v1 import common_pb2, plan_pb2, planner_service_pb2_grpc


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def runaway_request() -> plan_pb2.PlanRequest:
    """DeepSeek-R1 on 16,384 GB200 GPUs (the budget cap): a search of minutes."""
    return plan_pb2.PlanRequest(
        model="deepseek-r1", gpu="gb200-nvl72", gpus=16_384,
        traffic=[common_pb2.Workload(isl=4000, osl=500)],
        slo=plan_pb2.Slo(ttft_ms=1000, tpot_ms=20),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--deadline-s", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        running = start_server(port=0, host="127.0.0.1", database_url=f"sqlite:///{tmp}/r.db",
                               max_workers=args.calls)  # fmt: skip
        serving_rss = rss_bytes()
        peak = [serving_rss]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes())
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()
        request = runaway_request()
        codes: list[str] = []
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
            with ThreadPoolExecutor(args.calls) as pool:
                calls = [
                    pool.submit(stub.Plan, request, timeout=args.deadline_s)
                    for _ in range(args.calls)
                ]
                for call in calls:
                    try:
                        call.result()
                        codes.append("OK")
                    except grpc.RpcError as exc:
                        codes.append(exc.code().name)
        answered = time.monotonic()
        while running.servicer.search_slots_free() < args.calls:
            time.sleep(0.05)
        stopped_s = time.monotonic() - answered
        done.set()
        result = {
            "codes": codes,
            "last_search_stopped_s_after_last_answer": round(stopped_s, 2),
            "rss_mb": {
                "serving": round(serving_rss / 1e6),
                "peak": round(peak[0] / 1e6),
                "after": round(rss_bytes() / 1e6),
            },
        }
        running.stop(0)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
