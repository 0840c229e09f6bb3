"""Measure the kernel tables that calibrate the performance model, on the GPU at hand.

    python -m pdplanner.planner.perf.collect --out DIR [--quick] [--gpu NAME] [--models a,b,c]

writes ``meta.csv``, ``gemm.csv``, ``attn_prefill.csv`` and ``attn_decode.csv`` into ``DIR`` in
the format of ``pdplanner/planner/perf/data/h100-sxm`` (see
``pdplanner/planner/perf/data/README.md``); point
``load_calibration`` at ``DIR`` (or copy it to ``pdplanner/planner/perf/data/<gpu>/``) to use them.

What is measured, on random data, each figure the median time of many runs with the L2 cache
flushed between runs (``triton.testing.do_bench`` when Triton is installed, else CUDA events):

* GEMM ``torch.nn.functional.linear(x[M,K], W[N,K])`` in bf16, and ``torch._scaled_mm`` on
  e4m3 operands with per-tensor scales and bf16 output where the GPU has fp8 and M, N, K are
  multiples of 16. N, K are the QKV, O, gate+up and down projections of the chosen models at
  tensor parallelism 1/2/4/8; M (tokens) runs over powers of two from 1 to 16384.
* prefill attention ``scaled_dot_product_attention(q[B,H,S,D], k/v[B,Hkv,S,D], is_causal=True,
  enable_gqa=True)`` for the models' per-GPU head counts;
* decode attention, the same with one query token against L cached tokens.

PyTorch is imported only when measuring, so ``--help`` and the shape lists work without it.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdplanner.planner.catalog import ModelSpec, default_models

DEFAULT_MODELS = ("llama-3.1-8b", "qwen3-32b", "llama-3.1-70b")
TENSOR_PARALLEL = (1, 2, 4, 8)
GEMM_TOKENS = tuple(2**i for i in range(15))  # 1 .. 16384
QUICK_GEMM_TOKENS = (1, 16, 128, 1024, 8192)
PREFILL_SEQ = tuple(2**i for i in range(7, 16))  # 128 .. 32768
PREFILL_BATCHES = (1, 4)
PREFILL_MAX_TOKENS_PER_BATCH = 16384  # B=4 stops at S=4096
DECODE_CTX = tuple(2**i for i in range(9, 16))  # 512 .. 32768
DECODE_BATCHES = (1, 4, 16, 32, 64, 128, 256)
DECODE_MAX_KV_BYTES_SHARE = 0.25  # a case's KV cache may take at most this share of GPU memory
FP8_ALIGN = 16  # torch._scaled_mm wants M, N, K multiples of 16

TABLE_HEADERS: dict[str, tuple[str, ...]] = {
    "meta.csv": ("key", "value"),
    "gemm.csv": ("dtype", "M", "N", "K", "ms", "tflops"),
    "attn_prefill.csv": ("B", "S", "H", "Hkv", "D", "ms"),
    "attn_decode.csv": ("B", "L", "H", "Hkv", "D", "ms"),
}


# ---------------------------------------------------------------------- shapes (pure Python)


def projection_shapes(model: ModelSpec, tp: int) -> list[tuple[int, int]]:
    """(N, K) of the QKV, O, gate+up and down GEMMs of one layer on one of ``tp`` GPUs.

    KV heads are replicated when ``tp`` exceeds their number. MoE models contribute one expert's
    FFN; MLA models contribute their FFN only (their attention projections have other shapes).
    """
    hidden = model.hidden_size
    shapes: list[tuple[int, int]] = []
    if model.attention == "gqa":
        heads = model.num_heads // tp
        kv_heads = math.ceil(model.num_kv_heads / tp)
        if heads >= 1:
            shapes.append(((heads + 2 * kv_heads) * model.head_dim, hidden))
            shapes.append((hidden, heads * model.head_dim))
    ffn = model.moe_intermediate_size if model.is_moe else model.intermediate_size
    if ffn % tp == 0 and ffn // tp > 0:
        shapes.append((2 * ffn // tp, hidden))
        shapes.append((hidden, ffn // tp))
    return shapes


def gemm_shapes(
    models: Iterable[ModelSpec], tps: Sequence[int] = TENSOR_PARALLEL
) -> list[tuple[int, int]]:
    """Distinct (N, K) over ``models`` and ``tps``, sorted."""
    return sorted({s for m in models for tp in tps for s in projection_shapes(m, tp)})


@dataclass(frozen=True)
class GemmCase:
    dtype: str  # "bf16" or "fp8"
    m: int
    n: int
    k: int


def gemm_cases(
    shapes: Iterable[tuple[int, int]], tokens: Sequence[int] = GEMM_TOKENS, fp8: bool = True
) -> list[GemmCase]:
    """Every (dtype, M) for every shape, shape by shape and M by M: bf16 always, fp8 where M, N
    and K are multiples of 16."""
    cases: list[GemmCase] = []
    for n, k in shapes:
        for m in tokens:
            cases.append(GemmCase("bf16", m, n, k))
            if fp8 and m % FP8_ALIGN == 0 and n % FP8_ALIGN == 0 and k % FP8_ALIGN == 0:
                cases.append(GemmCase("fp8", m, n, k))
    return cases


def attention_heads(
    models: Iterable[ModelSpec],
    tps: Sequence[int] = TENSOR_PARALLEL,
) -> list[tuple[int, int, int]]:
    """Distinct per-GPU (heads, kv_heads, head_dim) of the GQA models at ``tps``, largest first."""
    out = set()
    for m in models:
        if m.attention != "gqa":
            continue
        for tp in tps:
            if m.num_heads % tp == 0:
                out.add((m.num_heads // tp, math.ceil(m.num_kv_heads / tp), m.head_dim))
    return sorted(out, reverse=True)


def prefill_cases(
    heads: Iterable[tuple[int, int, int]],
    seqs: Sequence[int] = PREFILL_SEQ,
    batches: Sequence[int] = PREFILL_BATCHES,
) -> list[tuple[int, int, int, int, int]]:
    """(B, S, H, Hkv, D) rows: every S, batched only while B * S stays modest."""
    rows = []
    for h, hkv, d in heads:
        for s in seqs:
            rows += [
                (b, s, h, hkv, d)
                for b in batches
                if b == 1 or b * s <= PREFILL_MAX_TOKENS_PER_BATCH
            ]
    return rows


def decode_cases(
    heads: Iterable[tuple[int, int, int]],
    mem_bytes: float,
    ctxs: Sequence[int] = DECODE_CTX,
    batches: Sequence[int] = DECODE_BATCHES,
) -> list[tuple[int, int, int, int, int]]:
    """(B, L, H, Hkv, D) rows whose bf16 K and V fit in a share of ``mem_bytes``."""
    rows = []
    for h, hkv, d in heads:
        for ctx in ctxs:
            for b in batches:
                if 2 * 2 * b * ctx * hkv * d <= DECODE_MAX_KV_BYTES_SHARE * mem_bytes:
                    rows.append((b, ctx, h, hkv, d))
    return rows


def write_table(path: Path, name: str, rows: Iterable[Sequence[Any]]) -> None:
    """Write ``rows`` under the header of table ``name`` (floats in full precision)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(TABLE_HEADERS[name])
        for row in rows:
            w.writerow([repr(float(v)) if isinstance(v, float) else v for v in row])


def resolve_models(names: str) -> list[ModelSpec]:
    catalog = default_models()
    if names == "all":
        return catalog.specs()
    return [catalog.get(n.strip(), "--models") for n in names.split(",") if n.strip()]


# ---------------------------------------------------------------------- measuring (needs torch)


class Timer:
    """Median kernel time in ms, with L2 flushed between runs."""

    def __init__(self, torch: Any, quick: bool) -> None:
        self.torch = torch
        self.warmup_ms, self.rep_ms = (5, 20) if quick else (10, 60)
        try:
            do_bench = importlib.import_module("triton.testing").do_bench
            self._do_bench: Callable[..., float] | None = do_bench
        except ImportError:
            self._do_bench = None
            self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self._do_bench is not None:
            return float(
                self._do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median")
            )
        torch = self.torch
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        reps = max(5, min(1000, int(self.rep_ms / max(start.elapsed_time(end), 1e-3))))
        times = []
        for _ in range(reps):
            self._flush.zero_()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return float(statistics.median(times))


def measure_gemm(torch: Any, timer: Timer, cases: Sequence[GemmCase]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    weights: dict[tuple[str, int, int], Any] = {}
    one = torch.ones((), device="cuda")
    for i, c in enumerate(cases):
        key = (c.dtype, c.n, c.k)
        if key not in weights:
            if (c.n, c.k) != next(iter(weights), ("", 0, 0))[1:]:
                weights.clear()  # cases come grouped by shape: keep one shape's weights only
            w = torch.randn(c.n, c.k, device="cuda", dtype=torch.bfloat16)
            weights[key] = w.to(torch.float8_e4m3fn) if c.dtype == "fp8" else w
        w = weights[key]
        x = torch.randn(c.m, c.k, device="cuda", dtype=torch.bfloat16)
        if c.dtype == "fp8":
            x8 = x.to(torch.float8_e4m3fn)
            wt = w.t()

            def run(a: Any = x8, b: Any = wt) -> Any:
                return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        else:

            def run(a: Any = x, b: Any = w) -> Any:
                return torch.nn.functional.linear(a, b)

        ms = timer(run)
        rows.append((c.dtype, c.m, c.n, c.k, ms, 2.0 * c.m * c.n * c.k / (ms * 1e-3) / 1e12))
        _progress("gemm", i + 1, len(cases))
    return rows


def measure_attention(
    torch: Any, timer: Timer, cases: Sequence[tuple[int, int, int, int, int]], decode: bool
) -> list[tuple[Any, ...]]:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows: list[tuple[Any, ...]] = []
    for i, (b, s, h, hkv, d) in enumerate(cases):
        q = torch.randn(b, h, 1 if decode else s, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, hkv, s, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)

        def run(q: Any = q, k: Any = k, v: Any = v) -> Any:
            return sdpa(q, k, v, is_causal=not decode, enable_gqa=True)

        rows.append((b, s, h, hkv, d, timer(run)))
        del q, k, v
        _progress("attn_decode" if decode else "attn_prefill", i + 1, len(cases))
    return rows


def measure_meta(torch: Any, timer: Timer, gpu_name: str | None) -> list[tuple[str, Any]]:
    props = torch.cuda.get_device_properties(0)
    nbytes = 2**30
    copy_ms = _time_copy(torch, timer, nbytes)
    mm_ms = _time_matmul(torch, timer, 8192)
    meta: list[tuple[str, Any]] = [
        ("device", props.name),
        ("torch", torch.__version__),
        ("sms", props.multi_processor_count),
        ("mem_bytes", props.total_memory),
        ("copy_GBps_rw", 2.0 * nbytes / (copy_ms * 1e-3) / 1e9),
        ("bf16_8192_tflops", 2.0 * 8192**3 / (mm_ms * 1e-3) / 1e12),
    ]
    spec = _catalog_gpu(gpu_name or props.name)
    if spec is not None:
        meta += [
            ("bf16_peak_flops_per_s", spec.bf16_flops_per_s),
            ("fp8_peak_flops_per_s", spec.fp8_flops_per_s or 2.0 * spec.bf16_flops_per_s),
            ("hbm_peak_bytes_per_s", spec.hbm_bytes_per_s),
        ]
    return meta


def _time_copy(torch: Any, timer: Timer, nbytes: int) -> float:
    """One device-to-device copy of ``nbytes`` (read ``nbytes``, write ``nbytes``)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src))


def _time_matmul(torch: Any, timer: Timer, size: int) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    return timer(lambda: a @ b)


def _catalog_gpu(name: str) -> Any:
    """The catalog GPU named ``name`` (a device name such as "NVIDIA H100 80GB HBM3" also
    matches by its alias without the vendor), or None."""
    from pdplanner.planner.catalog import load_gpu
    from pdplanner.planner.errors import PlannerError

    for candidate in (name, name.removeprefix("NVIDIA ").strip()):
        try:
            return load_gpu(candidate)
        except PlannerError:
            continue
    return None


def _progress(what: str, done: int, total: int) -> None:
    if done == total or done % 50 == 0:
        print(f"{what}: {done}/{total}", file=sys.stderr, flush=True)


def _has_fp8(torch: Any) -> bool:
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return False
    major, minor = torch.cuda.get_device_capability(0)
    return (major, minor) >= (8, 9)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pdplanner.planner.perf.collect",
        description="Measure GEMM and attention kernel times on this GPU (PyTorch, CUDA) and "
        "write the calibration tables of the pdplanner performance model.",
    )
    p.add_argument("--out", required=True, type=Path, help="directory to write the CSV files to")
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer shapes and shorter timing runs (minutes instead of an hour)",
    )
    p.add_argument(
        "--gpu",
        default=None,
        help="catalog name of this GPU, to record its datasheet peaks in meta.csv "
        "(default: matched from the device name)",
    )
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated catalog models whose shapes to measure, or 'all' "
        "(default: %(default)s)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        print(
            "pdplanner.planner.perf.collect: PyTorch is not installed (pip install torch)",
            file=sys.stderr,
        )
        return 2
    if not torch.cuda.is_available():
        print("pdplanner.planner.perf.collect: no CUDA GPU is visible to PyTorch", file=sys.stderr)
        return 2
    models = resolve_models(args.models)
    tps = (1, 8) if args.quick else TENSOR_PARALLEL
    tokens = QUICK_GEMM_TOKENS if args.quick else GEMM_TOKENS
    heads = attention_heads(models, tps)
    if args.quick:
        heads = heads[:1] + heads[-1:]
    mem_bytes = float(torch.cuda.get_device_properties(0).total_memory)
    timer = Timer(torch, args.quick)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    write_table(out / "meta.csv", "meta.csv", measure_meta(torch, timer, args.gpu))
    cases = gemm_cases(gemm_shapes(models, tps), tokens, fp8=_has_fp8(torch))
    write_table(out / "gemm.csv", "gemm.csv", measure_gemm(torch, timer, cases))
    write_table(
        out / "attn_prefill.csv",
        "attn_prefill.csv",
        measure_attention(torch, timer, prefill_cases(heads), decode=False),
    )
    write_table(
        out / "attn_decode.csv",
        "attn_decode.csv",
        measure_attention(torch, timer, decode_cases(heads, mem_bytes), decode=True),
    )
    print(f"wrote {out}/meta.csv, gemm.csv, attn_prefill.csv, attn_decode.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
