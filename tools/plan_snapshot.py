"""Snapshot every number a set of plans returns, to show a speed change altered none of them.

    python -m tools.plan_snapshot write FILE    # on the tree before the change
    python -m tools.plan_snapshot check FILE    # on the tree after it: exit 1 on any difference

The plans: the reference query (Llama-3.1-70B, 16 x H100-SXM, ISL 4000, OSL 500, TTFT 1000 ms,
TPOT 20 ms) and variations that take the search's other paths: a target rate the budget serves
and one it does not (the search past the budget), a traffic mix, prefill-only traffic, a separate
decode GPU type, MoE models under each engine's scheduler, p99 targets. For each, the whole
``PlanResult`` (``to_dict``; floats written with ``repr``, so equal means bit-identical) and the
deployments ``search`` returns as meeting the SLO; ``elapsed_ms`` is left out. A change of the
model's formulas changes the snapshot on purpose: write a new one before such a change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pdplanner.planner.search.recommend import search
from pdplanner.planner.types import PlanRequest, Precision, SearchLimits, Slo, Workload

REF = PlanRequest(
    model="llama-3.1-70b",
    gpu="h100-sxm",
    gpus=16,
    traffic=(Workload(4000, 500),),
    slo=Slo(ttft_ms=1000.0, tpot_ms=20.0),
)
FP8 = Precision("fp8", "fp8")
PLANS: dict[str, PlanRequest] = {
    "reference": REF,
    "rate_served": PlanRequest(**{**REF.__dict__, "rate_per_s": 2.0}),
    "rate_past_budget": PlanRequest(**{**REF.__dict__, "rate_per_s": 40.0}),
    "mix_p99": PlanRequest(
        **{
            **REF.__dict__,
            "traffic": (Workload(1000, 200, 2.0), Workload(8000, 800, 1.0)),
            "slo": Slo(ttft_ms=2000.0, tpot_ms=30.0, percentile="p99"),
        }
    ),
    "prefill_only": PlanRequest(**{**REF.__dict__, "traffic": (Workload(2000, 1),)}),
    "two_gpu_types": PlanRequest(
        **{
            **REF.__dict__,
            "gpu": "h200-sxm",
            "decode_gpu": "h100-sxm",
            "prefill_gpus": 8,
            "decode_gpus": 8,
            "precision": FP8,
        }
    ),
    "moe_sglang": PlanRequest(
        model="mixtral-8x7b",
        gpu="h200-sxm",
        gpus=16,
        traffic=(Workload(2048, 256),),
        slo=Slo(ttft_ms=800.0, tpot_ms=15.0),
        precision=FP8,
        engine="sglang",
    ),
    "moe_trtllm_prefix": PlanRequest(
        model="qwen3-235b-a22b",
        gpu="h200-sxm",
        gpus=16,
        traffic=(Workload(4096, 1024),),
        slo=Slo(ttft_ms=2000.0, tpot_ms=40.0),
        precision=FP8,
        engine="trtllm",
        prefix_hit=0.3,
        limits=SearchLimits(),
    ),
}


def _plain(v: Any) -> Any:
    """JSON-ready with floats as ``repr`` strings (exact), NaN and inf included."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, float | np.floating):
        return repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v


def snapshot() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, req in PLANS.items():
        result, meeting = search(req)
        d = result.to_dict()
        d.pop("elapsed_ms", None)
        out[name] = {"result": _plain(d), "meeting": _plain(meeting)}
    return out


def _diff(a: Any, b: Any, path: str, found: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _diff(a.get(k), b.get(k), f"{path}.{k}", found)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", found)
    elif a != b:
        found.append(f"{path}: {str(a)[:80]} != {str(b)[:80]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("write", "check"))
    ap.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    now = snapshot()
    if args.action == "write":
        args.file.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(now)} plans to {args.file}")
        return 0
    before = json.loads(args.file.read_text())
    found: list[str] = []
    _diff(before, now, "", found)
    for line in found[:40]:
        print(line)
    more = f" ({len(found) - 40} not shown)" if len(found) > 40 else ""
    print(f"{len(now)} plans: {len(found)} differences{more}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
