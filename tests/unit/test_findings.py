"""The study's findings, reproduced on its own kind of setup (issue 3, "Must show").

Setup: one GB200 NVL72 rack (72 GPUs, one NVLink domain), fp8 weights and KV cache (DeepSeek-R1:
fp4 weights), the vLLM engine profile. Targets: TTFT max(1000 ms, isl / 4 ms per token), TPOT as
stated. "Beyond the Buzz" (arXiv 2506.05508) found:

1. disaggregation gains more over co-located serving for prefill-heavy traffic (16k/2k) than for
   decode-heavy traffic (1k/32k);
2. the gain grows with the model: Llama-3.1-8B < 70B < 405B (ISL 4096, OSL 256);
3. at 16k/2k the optimal prefill:decode GPU ratio falls as the TPOT target tightens
   (Llama-405B about 2.1 -> 0.2, DeepSeek-R1 about 3.6 -> 0.05 in the study's figures);
4. the best decode configuration moves to wider tensor parallelism as TPOT tightens.

Each test prints the numbers it compared (run with ``-s``).
"""

from __future__ import annotations

from functools import cache

import pytest

from pdplanner.planner.search import plan
from pdplanner.planner.types import Deployment, PlanRequest, PlanResult, Precision, Slo, Workload

GPU, GPUS = "gb200-nvl72", 72
TIGHTENING_TPOT_MS = (60.0, 30.0, 15.0)


@cache
def run(model: str, isl: int, osl: int, tpot_ms: float, dtype: str = "fp8") -> PlanResult:
    return plan(
        PlanRequest(
            model=model,
            gpu=GPU,
            gpus=GPUS,
            traffic=(Workload(isl, osl),),
            slo=Slo(ttft_ms=max(1000.0, isl / 4.0), tpot_ms=tpot_ms),
            precision=Precision(dtype, "fp8"),
        )
    )


def frontier_optimum(r: PlanResult, tpot_ms: float) -> Deployment:
    """The point of the disaggregated frontier with the most tokens/s/GPU that meets the TPOT
    target: where the study reads its optimal prefill:decode ratio."""
    meeting = [d for d in r.pareto_disagg if d.tpot_ms <= tpot_ms]
    assert meeting, f"no frontier point meets TPOT {tpot_ms} ms"
    return max(meeting, key=lambda d: d.tokens_per_s_per_gpu)


def pools(d: Deployment) -> str:
    return " + ".join(
        f"{p.workers}x {p.role} TP{p.tp}/PP{p.pp}/EP{p.ep}/DP{p.attention_dp} b{p.batch}"
        for p in d.pools
    )


def speedup(r: PlanResult) -> float:
    assert r.best_agg is not None and r.best_disagg is not None and r.disagg_speedup is not None
    return r.disagg_speedup


def test_disagg_gains_more_for_prefill_heavy_than_decode_heavy_traffic() -> None:
    heavy_prefill = run("llama-3.1-70b", 16384, 2048, 30.0)
    heavy_decode = run("llama-3.1-70b", 1024, 32768, 30.0)
    s_p, s_d = speedup(heavy_prefill), speedup(heavy_decode)
    for name, r in (("16k/2k", heavy_prefill), ("1k/32k", heavy_decode)):
        print(
            f"70B {name}: disagg {r.best_disagg.tokens_per_s_per_gpu:.1f} vs agg "
            f"{r.best_agg.tokens_per_s_per_gpu:.1f} tok/s/GPU -> speedup {r.disagg_speedup:.2f}"
        )
    assert s_p > s_d
    assert s_p > 1.0


def test_disagg_gain_grows_with_model_size() -> None:
    gains = {
        m: speedup(run(m, 4096, 256, 30.0))
        for m in ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
    }
    print(
        "ISL 4096 / OSL 256, TPOT 30 ms: disagg speedup "
        + ", ".join(f"{m} {g:.2f}" for m, g in gains.items())
    )
    g8, g70, g405 = gains.values()
    assert g8 < g70 < g405
    # the study gives the order, not a size: a clear gain for 405B where 8B's is small (1.49x
    # against 1.10x; above 1.5x while the agg TPOT was taken with every batch slot busy, which
    # held aggregated workers to smaller batches than random arrivals need)
    assert g405 > 1.3 and g405 - g8 > 0.25


@pytest.mark.parametrize(
    ("model", "dtype"),
    [
        ("llama-3.1-405b", "fp8"),
        pytest.param("deepseek-r1", "fp4", marks=pytest.mark.slow),
    ],
)
def test_prefill_decode_ratio_falls_as_tpot_tightens(model: str, dtype: str) -> None:
    """Along the disaggregated frontier, the optimal ratio (the study's rate-matching ratio, the
    exact balance of the optimal pair before rounding to whole workers) falls strictly from TPOT
    60 to 30 to 15 ms. The recommended deployment (most requests/s in the 72 GPUs, whole
    workers) follows the same trend from the loosest to the tightest target, with packing noise
    in between."""
    results = [run(model, 16384, 2048, t, dtype) for t in TIGHTENING_TPOT_MS]
    optimal = [
        frontier_optimum(r, t).balanced_gpu_ratio
        for r, t in zip(results, TIGHTENING_TPOT_MS, strict=True)
    ]
    chosen = [r.best_disagg.prefill_decode_gpu_ratio for r in results if r.best_disagg]
    for t, r, o in zip(TIGHTENING_TPOT_MS, results, optimal, strict=True):
        print(
            f"{model} 16k/2k TPOT {t:g} ms: frontier-optimal balanced ratio {o:.3f}, whole workers "
            f"{frontier_optimum(r, t).prefill_decode_gpu_ratio:.3f} "
            f"({pools(frontier_optimum(r, t))}); recommended ratio "
            f"{r.best_disagg.prefill_decode_gpu_ratio:.3f} ({pools(r.best_disagg)})"
        )
    assert len(chosen) == 3
    assert optimal[0] > optimal[1] > optimal[2]
    assert chosen[2] < chosen[0] and chosen[2] < chosen[1]


def test_decode_tp_grows_as_tpot_tightens() -> None:
    """TP8 at TPOT 60 and 30 ms, TP32 at 15 ms. At 60 ms a TP4 x PP2 decode pool delivers the
    same requests/s on the same GPUs (the prefill pool bounds both), but at a lower tokens/s/user
    than TP8, which dominates it; so the loosest two targets share their decode TP."""
    tps = []
    for t in TIGHTENING_TPOT_MS:
        d = run("llama-3.1-405b", 16384, 2048, t).best_disagg
        assert d is not None
        decode = next(p for p in d.pools if p.role == "decode")
        tps.append(decode.tp)
        print(
            f"405B 16k/2k TPOT {t:g} ms: decode TP{decode.tp} PP{decode.pp} batch {decode.batch} "
            f"x{decode.workers}, TPOT {d.tpot_ms:.1f} ms"
        )
    assert tps[0] <= tps[1] < tps[2]
