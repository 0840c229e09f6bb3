"""Enumerating the design space: parallelism layouts and batch sizes, as NumPy arrays.

Layouts are powers of two: TP dividing the attention heads, up to ``max_tp`` (default: the GPU's
NVLink domain, ``default_max_tp``); PP up to the layer count while the worker stays within the GPU
budget; for mixture-of-experts models also attention data parallelism and expert parallelism,
keeping a pipeline stage (``tp * attention_dp`` GPUs) within ``max_tp`` GPUs.

Why the NVLink domain: tensor parallelism all-reduces every layer's activations twice per step,
on the critical path. Inside an HGX H100/H200 node NVLink carries 450 GB/s per GPU; across nodes
the scale-out network carries one 400 Gb/s NIC per GPU, 50 GB/s (the catalog's figures), so a
TP group spanning nodes runs its all-reduces about 9x slower. Serving engines (vLLM, SGLang,
TensorRT-LLM) therefore place TP inside a node and cross nodes with pipeline or data
parallelism; the search follows that practice by default and ``max_tp`` widens it on request.
"""

from __future__ import annotations

import numpy as np

from pdplanner.planner.catalog import GpuSpec, ModelSpec
from pdplanner.planner.types import SearchLimits


def default_max_tp(gpu: GpuSpec) -> int:
    """The largest TP (and pipeline stage) the search tries unless told: the NVLink domain."""
    return gpu.nvlink_domain_size


def powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def layouts(
    model: ModelSpec,
    gpu: GpuSpec,
    budget: int,
    limits: SearchLimits,
    allow_pp: bool = True,
    ep_ends_only: bool = False,
) -> np.ndarray:
    """Rows of (tp, pp, ep, attention_dp) with at most ``budget`` GPUs per worker.

    ``ep_ends_only`` keeps, for MoE models, only the two ends of the expert-parallel range:
    experts spread over the whole stage (the usual serving layout) and the fewest expert groups
    (experts tensor-parallel over the stage, which engines price differently: vLLM's padded
    fp8 MoE, for one), for searches whose every point is expensive."""
    domain = gpu.nvlink_domain_size
    max_tp = limits.max_tp or default_max_tp(gpu)
    rows: list[tuple[int, int, int, int]] = []
    tps = [t for t in powers_of_two(min(max_tp, budget)) if model.num_heads % t == 0]
    pps = powers_of_two(min(budget, model.num_layers)) if (limits.allow_pp and allow_pp) else [1]
    dps = [1]
    if model.is_moe and limits.allow_attention_dp:
        dps = powers_of_two(min(domain, budget))
    for tp in tps:
        for dp in dps:
            stage = tp * dp
            if stage > max_tp or stage > budget:
                continue
            if model.is_moe and limits.allow_ep:
                eps = [
                    e for e in powers_of_two(stage) if model.num_experts % e == 0 and e * 8 >= stage
                ]
                if ep_ends_only and eps:
                    eps = sorted({min(eps), max(eps)})
            else:
                eps = [1]
            for ep in eps:
                for pp in pps:
                    if stage * pp <= budget:
                        rows.append((tp, pp, ep, dp))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def batch_grid(limit: int, dense_up_to: int = 64, step: float = 1.0625) -> list[int]:
    """Every batch up to ``dense_up_to``, then steps of ``step`` (about 6%) up to ``limit``."""
    out = list(range(1, min(limit, dense_up_to) + 1))
    v = float(out[-1])
    while True:
        v *= step
        b = round(v)
        if b > limit:
            break
        if b > out[-1]:
            out.append(b)
    if out[-1] != limit and limit > dense_up_to:
        out.append(limit)
    return out


def on_captured_sizes(batches: list[int], graphs: np.ndarray) -> list[int]:
    """``batches`` with each one that a captured CUDA graph covers raised to the size it pads
    to (a decode step of that batch runs the captured size), duplicates dropped; batches above
    the largest captured size run eagerly and stay. No graphs: ``batches`` unchanged."""
    if graphs.shape[0] == 0:
        return list(batches)
    sizes = np.sort(graphs)
    out: list[int] = []
    for b in batches:
        i = int(np.searchsorted(sizes, b))
        v = int(sizes[i]) if i < sizes.shape[0] else b
        if not out or v > out[-1]:
            out.append(v)
    return out


def cross(
    lay: np.ndarray, batches: list[int], per_dp_rank: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every layout with every batch (batches counted per attention-DP rank when asked)."""
    n_b = len(batches)
    rep = np.repeat(lay, n_b, axis=0)
    b = np.tile(np.array(batches, dtype=np.float64), lay.shape[0])
    if per_dp_rank:
        b = b * rep[:, 3]
    return rep[:, 0].copy(), rep[:, 1].copy(), rep[:, 2].copy(), rep[:, 3].copy(), b
