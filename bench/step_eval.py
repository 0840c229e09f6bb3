"""Step evaluations per second per core: the op-level step model over a million design points.

    python -m bench.step_eval [--points 1000000] [--repeats 3] [--baseline-points 3000] [--out FILE]

Design points mix every built-in model on two setups (H100 bf16/bf16, GB200 fp8/fp8), a random
valid parallelism (TP dividing the heads, PP, and EP/attention-DP for MoE models), and a random
step: a prefill of 1-32 prompts of up to 32k tokens (sometimes a chunk after a cached prefix),
a decode of 1-1024 sequences at 128-128k tokens of context, or both mixed (chunked prefill).
``pdplanner.planner.perf.kernels.step_ms_many`` evaluates them on one thread, after a warm-up call
that loads (or compiles) the kernels; of ``--repeats`` passes the median counts (shared machines).

Baselines measured in the same run on a subset of the same points:
  python_loop   ``step_ms_many.py_func``: a Python loop over design points that calls the
                compiled per-point ``step_ms`` (what a non-vectorised caller would do);
  pure_python   the same kernel with Numba disabled (``NUMBA_DISABLE_JIT=1``, in a child
                process): the interpreter alone, which is what ``speedup`` compares against.
The baselines' results are checked against the compiled kernel's (relative difference printed).

Printed JSON (also written to bench/out/step_eval.json): evals, seconds, evals_per_s_per_core,
python_baseline_evals_per_s, python_loop_evals_per_s, speedup, the rate of each model/setup
group (dense GQA models evaluate one layer kind; MoE models two; DeepSeek adds MLA), the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
SETUPS = (("h100-sxm", "bf16", "bf16"), ("gb200-nvl72", "fp8", "fp8"))


@dataclass
class Group:
    """Design points sharing one model, GPU and precision (one kernel call)."""

    label: str
    args: tuple[np.ndarray, ...]  # mv, hv, cal.gemm, cal.attn_prefill, cal.attn_decode
    points: dict[str, np.ndarray]  # tp, pp, ep, dp, pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx

    @property
    def n(self) -> int:
        return int(self.points["tp"].shape[0])

    def head(self, k: int) -> Group:
        return Group(self.label, self.args, {key: v[:k].copy() for key, v in self.points.items()})


def pow2_upto(limit: int) -> np.ndarray:
    return 2.0 ** np.arange(int(np.log2(limit)) + 1)


def build(total: int, seed: int) -> list[Group]:
    """About ``total`` random design points, split evenly over models x setups."""
    from pdplanner.planner.catalog import default_models, load_engine, load_gpu
    from pdplanner.planner.perf.params import PerfContext

    rng = np.random.default_rng(seed)
    models = default_models().specs()
    per = max(1, total // (len(models) * len(SETUPS)))
    groups = []
    for m in models:
        for gpu_name, dtype, kv in SETUPS:
            ctx = PerfContext.build(m, load_gpu(gpu_name), load_engine("vllm"), dtype, kv)
            tps = np.array([t for t in pow2_upto(64) if m.num_heads % t == 0])
            tp = rng.choice(tps, per)
            pp = rng.choice(np.array([1.0, 1.0, 2.0, 4.0]), per)
            dp, ep = np.ones(per), np.ones(per)
            if m.is_moe:
                dp = rng.choice(np.array([1.0, 2.0, 4.0, 8.0]), per)
                ep = np.minimum(tp * dp, rng.choice(pow2_upto(64), per))
            kind = rng.integers(0, 3, per)  # 0 prefill, 1 decode, 2 mixed
            has_pf, has_dc = kind != 1, kind != 0
            pf_seqs = np.where(has_pf, rng.integers(1, 33, per), 0).astype(float)
            pf_new = np.where(has_pf, rng.integers(1, 32769, per), 0).astype(float)
            pf_past = np.where(has_pf & (rng.random(per) < 0.3), rng.integers(0, 65536, per), 0)
            dc_seqs = np.where(has_dc, rng.integers(1, 1025, per), 0).astype(float)
            dc_ctx = np.where(has_dc, rng.uniform(128, 131072, per), 0.0)
            points = {
                "tp": tp,
                "pp": pp,
                "ep": ep,
                "dp": dp,
                "pf_seqs": pf_seqs,
                "pf_new": pf_new,
                "pf_past": pf_past.astype(float),
                "dc_seqs": dc_seqs,
                "dc_ctx": dc_ctx,
            }
            groups.append(Group(f"{m.name}/{gpu_name}/{dtype}", tuple(ctx.kernel_args), points))
    return groups


def evaluate(kernel: Any, g: Group) -> tuple[np.ndarray, float]:
    """Run ``kernel`` (step_ms_many or a stand-in) on one group; (latencies, seconds)."""
    n = g.n
    lat, stage, per_layer = np.zeros(n), np.zeros(n), np.zeros((n, 4))
    p = g.points
    t0 = time.perf_counter()
    kernel(
        *g.args,
        p["tp"],
        p["pp"],
        p["ep"],
        p["dp"],
        p["pf_seqs"],
        p["pf_new"],
        p["pf_past"],
        p["dc_seqs"],
        p["dc_ctx"],
        lat,
        stage,
        per_layer,
    )
    return lat, time.perf_counter() - t0


def pure_python_worker(points: int, baseline_points: int, seed: int) -> None:
    """Child process (NUMBA_DISABLE_JIT=1): time the interpreter on the baseline subset."""
    from pdplanner.planner.perf.kernels import step_ms_many

    groups = build(points, seed)
    k = max(1, baseline_points // len(groups))
    seconds, lats = 0.0, []
    for g in groups:
        lat, s = evaluate(step_ms_many, g.head(k))
        seconds += s
        lats.append(lat.tolist())
    print(json.dumps({"evals": k * len(groups), "seconds": seconds, "latency_ms": lats}))


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--baseline-points", type=int, default=3000)
    ap.add_argument(
        "--repeats", type=int, default=3, help="passes over the points; the median counts"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT / "step_eval.json")
    ap.add_argument("--pure-python-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pure_python_worker:
        pure_python_worker(args.points, args.baseline_points, args.seed)
        return {}

    import numba

    from pdplanner.planner.perf.kernels import step_ms_many

    t0 = time.perf_counter()
    groups = build(args.points, args.seed)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate(step_ms_many, groups[0].head(16))  # load or compile the kernels
    warmup_s = time.perf_counter() - t0

    runs = []  # (seconds, per-group seconds) of each full pass over the points
    for _ in range(args.repeats):
        results, group_s = [], []
        for g in groups:
            lat, s = evaluate(step_ms_many, g)
            results.append(lat)
            group_s.append(s)
        runs.append((sum(group_s), group_s))
    runs.sort(key=lambda r: r[0])
    seconds, group_s = runs[len(runs) // 2]  # the median pass
    evals = sum(g.n for g in groups)
    rate = evals / seconds
    per_group = {g.label: round(g.n / s) for g, s in zip(groups, group_s, strict=True)}

    # baseline 1: a Python loop over the points, calling the compiled per-point step_ms
    k = max(1, args.baseline_points // len(groups))
    loop_s, loop_diff = 0.0, 0.0
    for g, lat in zip(groups, results, strict=True):
        got, s = evaluate(step_ms_many.py_func, g.head(k))
        loop_s += s
        loop_diff = max(loop_diff, max_rel_diff(got, lat[:k]))
    loop_rate = k * len(groups) / loop_s

    # baseline 2: the interpreter alone, in a child process with Numba disabled
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.step_eval",
            "--pure-python-worker",
            "--points",
            str(args.points),
            "--baseline-points",
            str(args.baseline_points),
            "--seed",
            str(args.seed),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    pure = json.loads(child.stdout.strip().splitlines()[-1])
    pure_rate = pure["evals"] / pure["seconds"]
    pure_diff = max(
        max_rel_diff(np.array(got), lat[: len(got)])
        for got, lat in zip(pure["latency_ms"], results, strict=True)
    )

    figures = {
        "benchmark": "step_eval",
        "evals": evals,
        "seconds": round(seconds, 4),
        "seconds_all_passes": [round(r[0], 4) for r in runs],
        "evals_per_s_per_core": round(rate),
        "python_baseline_evals_per_s": round(pure_rate),
        "python_loop_evals_per_s": round(loop_rate),
        "speedup": round(rate / pure_rate, 1),
        "speedup_over_python_loop": round(rate / loop_rate, 1),
        "baseline_evals": pure["evals"],
        "baseline_max_rel_diff": max(pure_diff, loop_diff),
        "groups": len(groups),
        "evals_per_s_by_group": per_group,
        "setups": [f"{g}/{d}/kv-{k}" for g, d, k in SETUPS],
        "threads": 1,
        "build_s": round(build_s, 2),
        "warmup_s": round(warmup_s, 2),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
        },
    }
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
