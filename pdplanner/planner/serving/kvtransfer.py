"""KV-cache transfer from prefill to decode workers (the study's equations 1-2).

A prefill worker sends each finished prompt's KV cache to a decode worker. Bytes per request are
``isl`` tokens x the cached elements per token per layer x layers x bytes per element, on
full-attention layers; windowed layers send at most their window, linear-attention layers their
fixed state (planner.perf.memory.cache_bytes). Only GPUs
holding distinct KV shards send: ``min(tp, kv_heads)`` per pipeline stage for GQA (more TP ranks
hold copies), one per stage for MLA (its latent is replicated on every TP rank).

The transfer runs layer by layer, overlapped with the rest of the prefill, so only the tail is
charged to time to first token: the last layer's share, or, when the link cannot keep up, all
that is left when the prefill's compute ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from pdplanner.planner.catalog import GpuSpec
from pdplanner.planner.perf.memory import cache_bytes
from pdplanner.planner.perf.params import (
    M_KV_HEADS,
    M_LAYERS,
    M_MLA,
    Layouts,
    PerfContext,
)

TRANSFER_LATENCY_MS = 0.05  # RDMA/NIXL set-up per transfer


@njit(cache=True, nogil=True)
def kv_bytes_per_request(mv: np.ndarray, hv: np.ndarray, isl: float) -> float:
    """The whole cache one prompt leaves, unsharded: KV of every full-attention layer, at most a
    window on windowed layers, the linear-attention state, sparse-attention indexer keys."""
    return cache_bytes(mv, hv, 1.0, 1.0, isl, 1.0)


@njit(cache=True, nogil=True)
def sending_gpus(mv: np.ndarray, tp: float, pp: float, dp: float) -> float:
    """GPUs of a prefill worker that hold distinct KV shards (each DP rank its own requests)."""
    if mv[M_MLA] > 0.5:
        return pp * dp
    return min(tp, mv[M_KV_HEADS]) * pp * dp


@njit(cache=True, nogil=True)
def egress_bytes_per_s(
    mv: np.ndarray,
    hv: np.ndarray,
    isl: float,
    tp: float,
    pp: float,
    dp: float,
    requests_per_s: float,
) -> float:
    """Bytes/s each shard-holding GPU of a prefill worker sends at ``requests_per_s``."""
    return kv_bytes_per_request(mv, hv, isl) * requests_per_s / sending_gpus(mv, tp, pp, dp)


@njit(cache=True, nogil=True)
def transfer(
    mv: np.ndarray,
    hv: np.ndarray,
    isl: float,
    batch: float,
    tp: float,
    pp: float,
    dp: float,
    compute_ms: float,
    requests_per_s: float,
    link_bytes_per_s: float,
) -> tuple[float, float]:
    """Returns (ms charged to TTFT, egress bytes/s each shard-holding prefill GPU must send
    at ``requests_per_s`` per worker)."""
    per_request = kv_bytes_per_request(mv, hv, isl)
    senders = sending_gpus(mv, tp, pp, dp)
    total_ms = 1e3 * per_request * batch / (senders * link_bytes_per_s)
    tail = max(total_ms - compute_ms, total_ms / mv[M_LAYERS])
    egress = egress_bytes_per_s(mv, hv, isl, tp, pp, dp, requests_per_s)
    return TRANSFER_LATENCY_MS + tail, egress


def link_between_pools(prefill: GpuSpec, decode: GpuSpec, gpus_in_both_pools: int) -> float:
    """Bandwidth per GPU between the pools: NVLink when both pools are one GPU type and fit in
    one NVLink domain, else the slower of the two scale-out links."""
    if prefill.name == decode.name and gpus_in_both_pools <= prefill.nvlink_domain_size:
        return prefill.nvlink_bytes_per_s
    return min(prefill.scaleout_bytes_per_s, decode.scaleout_bytes_per_s)


@njit(cache=True, nogil=True)
def transfer_many(
    mv: np.ndarray,
    hv: np.ndarray,
    isl: float,
    batch: np.ndarray,
    tp: np.ndarray,
    pp: np.ndarray,
    dp: np.ndarray,
    compute_ms: np.ndarray,
    link_bytes_per_s: float,
    tail_ms: np.ndarray,
    max_rate: np.ndarray,
) -> None:
    """Per prefill candidate: the TTFT tail of its transfer, and the most requests/s one worker
    can send before its distinct-shard GPUs saturate the link."""
    per_request = kv_bytes_per_request(mv, hv, isl)
    for i in range(batch.shape[0]):
        tail_ms[i], _ = transfer(
            mv, hv, isl, batch[i], tp[i], pp[i], dp[i], compute_ms[i], 0.0, link_bytes_per_s
        )
        max_rate[i] = sending_gpus(mv, tp[i], pp[i], dp[i]) * link_bytes_per_s / per_request


@dataclass(frozen=True)
class KvTransfers:
    """Per prefill candidate (arrays of ``n``): the KV transfer's tail charged to TTFT (ms) and
    the most requests/s one worker sends before its shard-holding GPUs fill the link."""

    tail_ms: np.ndarray
    max_requests_per_s: np.ndarray


def prefill_transfers(
    ctx: PerfContext,
    isl: float,
    layouts: Layouts,
    batch: np.ndarray,
    compute_ms: np.ndarray,
    link_bytes_per_s: float,
) -> KvTransfers:
    """``transfer_many`` for prefill candidates of ``layouts`` x ``batch`` prompts of ``isl``
    tokens whose prefill computes for ``compute_ms``, over ``link_bytes_per_s`` per GPU."""
    n = layouts.n
    out = KvTransfers(np.zeros(n), np.zeros(n))
    transfer_many(
        ctx.mv, ctx.hv, float(isl), batch, layouts.tp, layouts.pp, layouts.dp, compute_ms,
        float(link_bytes_per_s), out.tail_ms, out.max_requests_per_s,
    )  # fmt: skip
    return out


def worker_egress_bytes_per_s(
    ctx: PerfContext, isl: float, tp: float, pp: float, dp: float, requests_per_s: float
) -> float:
    """``egress_bytes_per_s`` of one prefill worker of layout (tp, pp, attention_dp) on
    ``ctx``: bytes/s each of its shard-holding GPUs sends at ``requests_per_s``."""
    return float(
        egress_bytes_per_s(
            ctx.mv, ctx.hv, float(isl), float(tp), float(pp), float(dp), float(requests_per_s)
        )
    )
