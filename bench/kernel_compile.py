"""How long a server's start-up warm-up takes on a fresh kernel cache, next to a warm cache.

    python -m bench.kernel_compile [--out FILE]

Each measurement runs ``pdplanner.planner.prewarm.STEPS`` (the queries a server runs before it
reports SERVING) in a child process with ``NUMBA_CACHE_DIR`` set to a new temporary directory: the
first child compiles every kernel, the second loads them from that cache (the baseline, same run).
Printed JSON: seconds per step and in total for both, the ratio, the CPU count and the 1-minute
load average (figures on a shared machine grow with its load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, time
t0 = time.perf_counter()
from pdplanner.planner.prewarm import STEPS
out = {"imports": time.perf_counter() - t0}
for name, step in STEPS.items():
    t = time.perf_counter()
    step()
    out[name] = time.perf_counter() - t
out["total"] = time.perf_counter() - t0
print(json.dumps({k: round(v, 2) for k, v in out.items()}))
"""


def _run(cache: str) -> dict[str, float]:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdplanner-numba-") as cache:
        fresh = _run(cache)
        warm = _run(cache)
    figures = {
        "fresh_cache_s": fresh,
        "warm_cache_s": warm,
        "fresh_over_warm": round(fresh["total"] / warm["total"], 1),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
