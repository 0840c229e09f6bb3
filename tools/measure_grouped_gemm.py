"""Time grouped (MoE) GEMMs on the GPU at hand, to test ``kernels.grouped_gemm_ms``.

    python tools/measure_grouped_gemm.py --out FILE.csv

``torch._grouped_mm`` in bf16 (PyTorch's CUTLASS grouped GEMM on Hopper) over ``experts``
experts of one MoE layer's gate+up or down slice, each expert given ``tokens_per_expert`` rows,
timed as the calibration tables are (``triton.testing.do_bench``, L2 flushed between runs,
median). Shapes: Qwen3-235B-A22B's experts at expert TP 2 and 4 and whole (expert parallel),
DeepSeek-V3's whole experts. Needs a CUDA GPU with PyTorch >= 2.8 and Triton.
``tests/fixtures/h200-grouped-gemm/grouped_gemm.csv`` is its output on an H200 (2026-11-30).
"""

from __future__ import annotations

import argparse
import csv
import importlib
from collections.abc import Callable
from typing import Any

# (label, N, K) of one expert's slice: gate+up is N = 2 x width / expert TP, K = hidden; down is
# N = hidden, K = width / expert TP
SHAPES = (
    ("qwen3-235b moe_tp2 up", 1536, 4096),
    ("qwen3-235b moe_tp2 down", 4096, 768),
    ("qwen3-235b moe_tp4 up", 768, 4096),
    ("qwen3-235b moe_tp4 down", 4096, 384),
    ("qwen3-235b ep up", 3072, 4096),
    ("qwen3-235b ep down", 4096, 1536),
    ("deepseek-v3 ep up", 4096, 7168),
    ("deepseek-v3 ep down", 7168, 2048),
)
EXPERTS = (8, 32, 128)
TOKENS_PER_EXPERT = (1, 2, 8, 32)
HEADER = ("shape", "layout", "experts", "tokens_per_expert", "N", "K", "ms")


def measure(torch: Any, do_bench: Callable[..., float]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for label, n, k in SHAPES:
        for experts in EXPERTS:
            # weights stored [experts, N, K] and passed transposed, as a linear layer keeps them
            w = torch.randn(experts, n, k, device="cuda", dtype=torch.bfloat16).transpose(-2, -1)
            for per in TOKENS_PER_EXPERT:
                m = experts * per
                a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                offs = torch.arange(per, m + 1, per, device="cuda", dtype=torch.int32)

                def run(a: Any = a, w: Any = w, offs: Any = offs) -> Any:
                    return torch._grouped_mm(a, w, offs=offs, out_dtype=torch.bfloat16)

                ms = float(do_bench(run, warmup=10, rep=40, return_mode="median"))
                rows.append((label, "nk_t", experts, per, n, k, ms))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="CSV file to write")
    args = ap.parse_args()
    torch = importlib.import_module("torch")
    do_bench = importlib.import_module("triton.testing").do_bench
    rows = measure(torch, do_bench)
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
