"""Mixed load: 8 clients calling a local server for a while, p50/p99 per RPC, per backend.

    python -m bench.load [--clients 8] [--duration-s 180] [--postgres URL] [--out FILE]

Each client loops over a weighted mix of calls: Plan (a fresh request_id each time, so every one
searches and stores a row; a few small variants of the reference query), Estimate, GetPlan and
ListPlans of the plans made so far, ListModels, ListGpus and a health check. The server runs in a
child process (as ``pdplanner serve``) on a fresh SQLite file, and, with ``--postgres``, again on
a fresh schema of that PostgreSQL database.

Printed JSON, per backend: for each RPC the calls, p50 and p99 latency (ms) and the status codes
seen; GetPlan's p50 is the baseline ListPlans is read against (the same run, the same server).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.rpc_latency import local_server, percentile, reference_request
from pdplanner.v1 import (
    catalog_pb2,
    common_pb2,
    estimate_pb2,
    plan_pb2,
    planner_service_pb2_grpc,
)

#: (RPC, weight): reads dominate, as they do for a planning service's dashboards and CLIs.
MIX = [("Plan", 2), ("Estimate", 4), ("GetPlan", 6), ("ListPlans", 3), ("ListModels", 2),
       ("ListGpus", 2), ("Health", 1)]  # fmt: skip


def _plan_request(rng: random.Random) -> plan_pb2.PlanRequest:
    request = reference_request()
    request.request_id = str(uuid.uuid4())
    request.model = rng.choice(["llama-3.1-8b", "llama-3.1-70b"])
    request.gpus = rng.choice([8, 16])
    return request


def _estimate_request() -> estimate_pb2.EstimateRequest:
    return estimate_pb2.EstimateRequest(
        model="llama-3.1-8b", gpu="h100-sxm", isl=2000, osl=200, mode=common_pb2.MODE_AGG,
        parallelism=common_pb2.Parallelism(tp=1), concurrency=16,
    )  # fmt: skip


def drive(target: str, clients: int, duration_s: float, seed: int = 0) -> dict[str, Any]:
    """Run the mix from ``clients`` threads for ``duration_s``; latency and codes per RPC."""
    samples: dict[str, list[float]] = {name: [] for name, _ in MIX}
    codes: dict[str, dict[str, int]] = {name: {} for name, _ in MIX}
    plans: list[str] = []
    lock = threading.Lock()
    names, weights = zip(*MIX, strict=True)
    stop_at = time.monotonic() + duration_s

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        with grpc.insecure_channel(target) as channel:
            stub = planner_service_pb2_grpc.PlannerServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            calls: dict[str, Callable[[], Any]] = {
                "Plan": lambda: plans.append(stub.Plan(_plan_request(rng), timeout=120).plan.name),
                "Estimate": lambda: stub.Estimate(_estimate_request(), timeout=60),
                "GetPlan": lambda: stub.GetPlan(
                    plan_pb2.GetPlanRequest(name=rng.choice(plans) if plans else "plans/none"),
                    timeout=60,
                ),
                "ListPlans": lambda: stub.ListPlans(plan_pb2.ListPlansRequest(), timeout=60),
                "ListModels": lambda: stub.ListModels(catalog_pb2.ListModelsRequest(), timeout=60),
                "ListGpus": lambda: stub.ListGpus(catalog_pb2.ListGpusRequest(), timeout=60),
                "Health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=60),
            }
            while time.monotonic() < stop_at:
                name = rng.choices(names, weights)[0]
                started = time.perf_counter()
                try:
                    calls[name]()
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                elapsed_ms = (time.perf_counter() - started) * 1e3
                with lock:
                    samples[name].append(elapsed_ms)
                    codes[name][code] = codes[name].get(code, 0) + 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out: dict[str, Any] = {}
    for name, values in samples.items():
        if values:
            out[name] = {
                "calls": len(values),
                "p50_ms": round(percentile(values, 50), 2),
                "p99_ms": round(percentile(values, 99), 2),
                "codes": codes[name],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--postgres", metavar="URL", help="also run on a fresh schema of this db")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"clients": args.clients, "duration_s": args.duration_s}
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"sqlite": f"sqlite:///{Path(tmp) / 'load.db'}"}
        if args.postgres:
            backends["postgresql"] = _fresh_schema(args.postgres)
        for backend, url in backends.items():
            with local_server("process", url, max_workers=8) as target:
                per_rpc = drive(target, args.clients, args.duration_s)
            get_p50 = per_rpc.get("GetPlan", {}).get("p50_ms")
            list_p50 = per_rpc.get("ListPlans", {}).get("p50_ms")
            results[backend] = {
                "rpcs": per_rpc,
                "list_plans_p50_over_get_plan_p50": (
                    round(list_p50 / get_p50, 2) if get_p50 and list_p50 else None
                ),
            }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _fresh_schema(url: str) -> str:
    """A new schema in the PostgreSQL database at ``url``, as a URL whose connections use it."""
    from sqlalchemy import create_engine, text

    schema = f"load_{uuid.uuid4().hex[:8]}"
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


if __name__ == "__main__":
    main()
