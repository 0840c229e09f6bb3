"""The step model's typed face: evaluate engine steps of many candidate workers at once.

``step_times(ctx, layouts, shapes)`` runs ``kernels.step_ms_many`` (arrays only, in Numba) on a
``PerfContext``, the candidates' ``Layouts`` and one ``StepShapes`` per candidate, and returns a
``StepTimes``; ``step_time`` does one candidate and returns floats. Shapes and units:

* ``StepShapes``: per candidate (arrays of ``n``), per attention-DP rank, ``pf_seqs`` prompts
  prefilling ``pf_new`` new tokens each after ``pf_past`` cached ones, and ``dc_seqs`` sequences
  decoding one token each at a mean context of ``dc_ctx`` tokens.
* ``StepTimes``: ``latency_ms`` (a token's way through every stage plus the engine's host
  overhead), ``stage_ms`` (the busiest stage's busy time) and ``per_layer_ms`` ``[n, 4]`` (the mean
  decoder layer's GEMM, attention, communication and other milliseconds on one GPU).

Errors: arrays of different lengths raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdplanner.planner.perf.kernels import step_ms_many
from pdplanner.planner.perf.params import Layouts, PerfContext
from pdplanner.planner.types import LayerBreakdown, Parallelism


def _column(v: float | np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return np.full(n, float(a)) if a.ndim == 0 else a


@dataclass(frozen=True)
class StepShapes:
    """What each candidate's step computes (see the module docstring), arrays of ``n``."""

    pf_seqs: np.ndarray
    pf_new: np.ndarray
    pf_past: np.ndarray
    dc_seqs: np.ndarray
    dc_ctx: np.ndarray

    @classmethod
    def of(
        cls,
        n: int,
        *,
        pf_seqs: float | np.ndarray = 0.0,
        pf_new: float | np.ndarray = 0.0,
        pf_past: float | np.ndarray = 0.0,
        dc_seqs: float | np.ndarray = 0.0,
        dc_ctx: float | np.ndarray = 0.0,
    ) -> StepShapes:
        """``n`` steps; a scalar is broadcast to every candidate."""
        return cls(*(_column(v, n) for v in (pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx)))

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.pf_seqs, self.pf_new, self.pf_past, self.dc_seqs, self.dc_ctx


@dataclass(frozen=True)
class StepTimes:
    """Step times of ``n`` candidates (see the module docstring), aligned by index."""

    latency_ms: np.ndarray
    stage_ms: np.ndarray
    per_layer_ms: np.ndarray  # [n, 4]: gemm, attention, communication, other


@dataclass(frozen=True)
class StepTime:
    """One candidate's step: milliseconds."""

    latency_ms: float
    stage_ms: float
    per_layer_ms: LayerBreakdown


def step_times(ctx: PerfContext, layouts: Layouts, shapes: StepShapes) -> StepTimes:
    """Every candidate's step in one ``step_ms_many`` call."""
    n = layouts.n
    arrays = (*layouts.arrays, *shapes.arrays)
    if any(a.shape != (n,) for a in arrays):
        raise ValueError(f"layouts and shapes must all be arrays of {n}")
    tp, pp, ep, dp, pf_seqs, pf_new, pf_past, dc_seqs, dc_ctx = (
        np.ascontiguousarray(a, dtype=np.float64) for a in arrays
    )
    out = StepTimes(np.zeros(n), np.zeros(n), np.zeros((n, 4)))
    step_ms_many(
        *ctx.kernel_args,
        tp,
        pp,
        ep,
        dp,
        pf_seqs,
        pf_new,
        pf_past,
        dc_seqs,
        dc_ctx,
        out.latency_ms,
        out.stage_ms,
        out.per_layer_ms,
    )
    return out


def step_time(
    ctx: PerfContext,
    par: Parallelism,
    *,
    pf_seqs: float = 0.0,
    pf_new: float = 0.0,
    pf_past: float = 0.0,
    dc_seqs: float = 0.0,
    dc_ctx: float = 0.0,
) -> StepTime:
    """One worker layout's step (counts per attention-DP rank)."""
    lay = Layouts.of([(par.tp, par.pp, par.ep, par.attention_dp)])
    shapes = StepShapes.of(
        1, pf_seqs=pf_seqs, pf_new=pf_new, pf_past=pf_past, dc_seqs=dc_seqs, dc_ctx=dc_ctx
    )
    t = step_times(ctx, lay, shapes)
    return StepTime(
        float(t.latency_ms[0]),
        float(t.stage_ms[0]),
        LayerBreakdown(*map(float, t.per_layer_ms[0])),
    )
