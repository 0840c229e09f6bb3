"""Sweeping aggregated workers: every chunk budget x concurrency of one layout, in Numba.

For each chunked-prefill budget the concurrency grows along ``concurrency`` until the simulation
says it can only get worse: the KV cache no longer holds the clients (requests queue for
admission), time to first token passes ``ttft_stop_ms``, or a single request does not fit.

The simulation is closed-loop and deterministic; the search judges deployments under random
(Poisson) arrivals at the rate they sustain, as it does the disaggregated prefill pool. So each
point's time to first token at the SLO percentile adds the M/D/1 wait of a prompt queue whose
service time is one prompt's prefill step and whose utilisation is the rate times that time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from planner.perf.kernels import step_ms
from planner.perf.memory import kv_capacity_tokens
from planner.serving.aggregated import (
    A_OK,
    A_QUEUED,
    A_REQUESTS_PER_S,
    A_TOKENS_PER_S,
    A_TPOT_MEAN,
    A_TTFT_MEAN,
    AGG_SLOTS,
    simulate_agg,
)
from planner.serving.queueing import MAX_UTILISATION, wait_ms

# columns of the rows sweep_layout writes
R_CHUNK, R_USERS, R_TTFT, R_TPOT, R_TOKENS_PER_S, R_REQUESTS_PER_S = 0, 1, 2, 3, 4, 5
ROW_COLUMNS = 6


@njit(cache=True, nogil=True)
def sweep_layout(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    chunks: np.ndarray,
    concurrency: np.ndarray,
    isl_cycle: np.ndarray,
    osl_cycle: np.ndarray,
    prefix_hit: float,
    max_batch: int,
    ttft_stop_ms: float,
    percentile: float,
    rows: np.ndarray,
) -> int:
    """Simulate one layout's points; write one row per point (per attention-DP rank figures
    scaled to the worker) and return how many. ``percentile`` is the SLO's (0.5, 0.9, 0.99)."""
    out = np.zeros(AGG_SLOTS)
    n = 0
    max_isl = isl_cycle.max()
    need = max_isl + osl_cycle.max()
    slot = 1 if percentile <= 0.5 else 2 if percentile <= 0.9 else 3
    mean_isl = isl_cycle.mean()
    per_layer = np.zeros(4)
    scratch = np.zeros(4)
    # one prompt alone: the service time of the prompt queue
    prompt_ms, _ = step_ms(
        mv,
        hv,
        cg,
        cp,
        cd,
        tp,
        pp,
        ep,
        dp,
        1.0,
        mean_isl * (1.0 - prefix_hit),
        mean_isl * prefix_hit,
        0.0,
        0.0,
        per_layer,
        scratch,
    )
    for c in range(chunks.shape[0]):
        chunk = chunks[c]
        step_tokens = chunk if chunk > 0.0 else max_isl
        for k in range(concurrency.shape[0]):
            users = max(1, math.ceil(concurrency[k] / dp))
            if users > 2 * max_batch:
                break
            cap = kv_capacity_tokens(mv, hv, tp, pp, ep, dp, step_tokens, float(users))
            if cap < need:
                break
            warm = min(users // 2 + 4, 64)
            measure = max(32, min(users, 128))
            simulate_agg(
                mv,
                hv,
                cg,
                cp,
                cd,
                tp,
                pp,
                ep,
                dp,
                users,
                isl_cycle,
                osl_cycle,
                prefix_hit,
                chunk,
                cap,
                max_batch,
                warm,
                measure,
                out,
            )
            if out[A_OK] < 0.5:
                break
            rho = min(out[A_REQUESTS_PER_S] * prompt_ms / 1e3, MAX_UTILISATION)
            ttft = out[A_TTFT_MEAN] + wait_ms(rho, prompt_ms, percentile)
            rows[n, R_CHUNK] = chunk
            rows[n, R_USERS] = users * dp
            rows[n, R_TTFT] = ttft
            rows[n, R_TPOT] = out[A_TPOT_MEAN + slot]
            rows[n, R_TOKENS_PER_S] = out[A_TOKENS_PER_S] * dp
            rows[n, R_REQUESTS_PER_S] = out[A_REQUESTS_PER_S] * dp
            n += 1
            if out[A_QUEUED] > 0.5 or ttft > ttft_stop_ms:
                break  # past KV saturation or far past the TTFT target: only worse
    return n
