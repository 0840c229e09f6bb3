"""Where the request fuzz's time goes, per RPC: drawing requests and calling the handler.

    python -m bench.fuzz_cost [--examples 500] [--rpc Plan --rpc Sweep ...] [--out FILE]

For each RPC of ``tests/integration/test_fuzz.py`` this draws ``--examples`` requests with the
fuzz test's strategy, then calls the handler on each, as the test does (a search stopped after
3 checks), twice: on a migrated SQLite file and on the shared in-memory SQLite database the test
uses. Baselines from the same run: drawing the same number of examples of a strategy that draws
one integer (mapped to the RPC's empty request: Hypothesis's own cost per example), and the
handler on the file.

Printed JSON, per RPC: drawing CPU ms per example and the floor; handler wall ms per example on
the file and in memory (wall, because a commit's sync to disk is waiting, not CPU); and calls
per second as the test makes them (drawing CPU plus the in-memory handler's wall time). Figures
vary with the machine's load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.rpc_latency import ROOT
from pdplanner.service.catalogs import CatalogCache
from pdplanner.storage.migrate import upgrade
from pdplanner.storage.repository import SqlStore

sys.path.insert(0, str(ROOT / "tests" / "integration"))
import test_fuzz  # the fuzz test's strategies and its way of calling a handler


def draw(strategy: st.SearchStrategy[Any], count: int) -> tuple[list[Any], float]:
    """``count`` examples of ``strategy`` drawn by Hypothesis as the test draws them, and the
    CPU seconds that took."""
    found: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=True)  # fmt: skip
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    started = time.process_time()
    collect()
    return found, time.process_time() - started


def one_integer(message: Any) -> st.SearchStrategy[Any]:
    """One integer drawn per example, mapped to an empty ``message``: what Hypothesis itself
    costs per example (an example space it cannot exhaust, unlike ``st.just``)."""
    return st.integers(0, 2**32 - 1).map(lambda _: message())


def handler_wall_s(rpc: str, handler: Any, requests: list[Any], url: str) -> float:
    """Wall seconds ``handler`` takes over ``requests`` on a fresh store at ``url``."""
    upgrade(url)
    with SqlStore(url) as store:
        catalogs = CatalogCache(store)
        test_fuzz.call(rpc, handler, requests[0], store, catalogs, 3)  # warm: catalog, kernels
        started = time.perf_counter()
        for request in requests:
            test_fuzz.call(rpc, handler, request, store, catalogs, 3)
        return time.perf_counter() - started


def measure(rpcs: list[str], examples: int) -> dict[str, Any]:
    out: dict[str, Any] = {"examples_per_rpc": examples, "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for rpc, message, handler in test_fuzz.RPCS:
            if rpcs and rpc not in rpcs:
                continue
            strategy = (
                test_fuzz.near(test_fuzz.BASES[rpc])
                if rpc in test_fuzz.BASES
                else test_fuzz.messages(message.DESCRIPTOR)
            )
            requests, draw_s = draw(strategy, examples)
            floor, floor_s = draw(one_integer(message), examples)
            file_s = handler_wall_s(rpc, handler, requests, f"sqlite:///{Path(tmp) / rpc}.db")
            name = f"fuzz-cost-{uuid.uuid4().hex}"
            keeper = sqlite3.connect(f"file:{name}?mode=memory&cache=shared", uri=True)
            try:
                memory_s = handler_wall_s(
                    rpc,
                    handler,
                    requests,
                    f"sqlite:///file:{name}?mode=memory&cache=shared&uri=true",
                )
            finally:
                keeper.close()
            n = len(requests)
            out[rpc] = {
                "draw_cpu_ms": round(draw_s / n * 1e3, 3),
                "draw_floor_cpu_ms": round(floor_s / len(floor) * 1e3, 3),
                "handler_file_ms": round(file_s / n * 1e3, 3),
                "handler_memory_ms": round(memory_s / n * 1e3, 3),
                "calls_per_s": round(n / (draw_s + memory_s)),
            }
            print(rpc, out[rpc], file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--rpc", action="append", default=[], help="only these RPCs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.rpc, args.examples)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
