"""``step_fixed`` + ``step_ms_fixed`` give ``step_ms`` to the bit, also for a step whose terms
were computed for another step of the same ``step_fixed_key`` (what the engine loop does).

Every token mixer and FFN the step model prices: dense GQA (Llama), MoE (Mixtral, Qwen3), MLA
with MoE (DeepSeek-V3), DeepSeek sparse attention's indexer (V3.2), sliding-window layers
(gpt-oss), linear attention (Qwen3-Next); tensor, pipeline, expert and attention-DP layouts.
"""

from __future__ import annotations

import numpy as np
import pytest

from pdplanner.planner.catalog import load_engine, load_gpu, load_model
from pdplanner.planner.perf import kernels as K
from pdplanner.planner.perf.params import M_MLA, PerfContext

MODELS = (
    "llama-3.1-70b",
    "mixtral-8x7b",
    "qwen3-235b-a22b",
    "deepseek-v3",
    "deepseek-v3.2",
    "gpt-oss-120b",
    "qwen3-next-80b-a3b",
)
LAYOUTS = ((1.0, 1.0, 1.0, 1.0), (4.0, 2.0, 4.0, 1.0), (2.0, 1.0, 8.0, 4.0), (8.0, 4.0, 1.0, 1.0))


def _steps(rng: np.random.Generator, n: int) -> list[tuple[float, float, float, float, float]]:
    """(pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx): decode-only, prefill-only and mixed steps,
    as the engine loop forms them (a mean chunk from a sum of integer chunks)."""
    out = []
    for _ in range(n):
        kind = rng.integers(3)
        pf = 0.0 if kind == 0 else float(rng.integers(1, 5))
        new = float(rng.integers(1, 8192, int(pf)).sum()) / pf if pf > 0.0 else 0.0
        past = float(rng.integers(0, 16384, int(pf)).sum()) / pf if pf > 0.0 else 0.0
        dc = 0.0 if kind == 1 else float(rng.integers(1, 512))
        ctx = float(rng.uniform(1.0, 60000.0)) if dc > 0.0 else 0.0
        out.append((pf, new, past, dc, ctx))
    return out


@pytest.mark.parametrize("model", MODELS)
def test_step_fixed_gives_step_ms_to_the_bit(model: str) -> None:
    c = PerfContext.build(load_model(model), load_gpu("h200-sxm"), load_engine("vllm"), "fp8")
    rng = np.random.default_rng(7)
    row, scratch = np.zeros(4), np.zeros(4)
    fixed = np.zeros(K.FIXED_SLOTS)
    for tp, pp, ep, dp in LAYOUTS:
        args = c.worker_args(tp, pp, ep, dp)
        for pf, new, past, dc, ctx in _steps(rng, 60):
            want_lat, want_stage = K.step_ms(*args, pf, new, past, dc, ctx, row, scratch)
            want_row = row.copy()
            K.step_fixed(*args, pf, new, past, dc, row, scratch, fixed)
            row[:] = -1.0
            got = K.step_ms_fixed(*args[:7], pf, new, past, dc, ctx, fixed, row)
            assert got == (want_lat, want_stage)
            assert np.array_equal(row, want_row)
            # the same step when the stage's other attention-DP ranks carry other tokens
            moe = (pf * new + dc) * dp * float(rng.uniform(0.1, 2.0))
            want = K.step_ms(*args, pf, new, past, dc, ctx, row, scratch, moe)
            K.step_fixed(*args, pf, new, past, dc, row, scratch, fixed, moe)
            assert K.step_ms_fixed(*args[:7], pf, new, past, dc, ctx, fixed, row) == want


@pytest.mark.parametrize("model", MODELS)
def test_steps_of_one_key_share_their_fixed_terms(model: str) -> None:
    """Terms computed for one step serve another of the same key at other contexts, other
    chunk positions and another split of the same tokens between prompts."""
    c = PerfContext.build(load_model(model), load_gpu("h100-sxm"), load_engine("sglang"), "fp8")
    row, scratch = np.zeros(4), np.zeros(4)
    fixed = np.zeros(K.FIXED_SLOTS)
    shared = 0
    for tp, pp, ep, dp in LAYOUTS:
        args = c.worker_args(tp, pp, ep, dp)
        first: dict[tuple[float, ...], tuple[float, float, float, float]] = {}
        for pf, new, past in ((2.0, 1000.0, 0.0), (2.0, 1000.0, 3000.0), (1.0, 2000.0, 500.0)):
            for dc in (0.0, 37.0, 64.0):
                step = (pf, new, past, dc)
                first.setdefault(K.step_fixed_key(c.mv, *step), step)
                for ctx in (0.0, 900.0, 4321.5) if dc > 0.0 else (0.0,):
                    src = first[K.step_fixed_key(c.mv, *step)]
                    shared += src != step
                    K.step_fixed(*args, *src, row, scratch, fixed)
                    got = K.step_ms_fixed(*args[:7], *step, ctx, fixed, row)
                    assert got == K.step_ms(*args, *step, ctx, row, scratch)
    mla = c.mv[M_MLA] > 0.5
    # (2, 1000, past) share a key but for MLA, whose prefill up-projects the past tokens too
    assert (shared == 0) if mla else (shared > 0)
