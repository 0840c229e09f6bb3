"""A disaggregated deployment: ``x`` prefill workers feeding ``y`` decode workers (xPyD).

The deployment holds ``y * decode_batch`` requests in flight (closed loop). It delivers
``R = min(x * r_prefill, y * r_decode)`` requests/s, where a decode worker turns over
``batch / (TPOT * (osl - 1))`` requests/s (the first token comes from prefill).

* Decode-bound (``x * r_prefill >= y * r_decode``): the prefill pool runs at utilisation
  ``rho = R / (x * r_prefill)`` and prompts wait in its queue, dealt to the ``x`` workers in
  turn (``queueing.wait_ms_dealt``).
* Prefill-bound: decode workers hold fewer sequences than their batch (a per-worker limit, not
  a client count); their running batch and TPOT are solved together (a fixed point) and the
  time to first token is the prefill step. How long prompts queue depends on the load, which
  this steady-state view does not have: ``simulate.simulate_disagg`` runs the deployment under
  a closed loop or Poisson arrivals.
The KV transfer's non-overlapped tail is added to the time to first token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pdplanner.planner.serving.kvtransfer import transfer
from pdplanner.planner.serving.queueing import MAX_UTILISATION, PERCENTILES, wait_ms_dealt
from pdplanner.planner.serving.workers import WorkerMetrics


@dataclass(frozen=True)
class DisaggMetrics:
    ttft_ms: float  # median
    ttft_ms_at: dict[str, float]  # p50, p90, p99
    tpot_ms: float
    requests_per_s: float
    output_tokens_per_s: float
    running_per_decode_worker: float
    prefill_utilisation: float
    kv_transfer_ms: float
    kv_egress_bytes_per_s_per_gpu: float
    link_bytes_per_s: float
    bottleneck: str  # "prefill" or "decode"


def evaluate_xpyd(
    prefill: WorkerMetrics,
    prefill_batch: int,
    prefill_tp: int,
    prefill_pp: int,
    prefill_dp: int,
    x: int,
    decode_at: Callable[[float], WorkerMetrics],
    decode_batch: int,
    y: int,
    isl: int,
    osl: int,
    mv: np.ndarray,
    hv: np.ndarray,
    link_bytes_per_s: float,
) -> DisaggMetrics:
    """Steady state of an xPyD deployment. ``decode_at(b)`` evaluates a decode worker holding
    ``b`` sequences; ``link_bytes_per_s`` is the bandwidth per GPU between the pools."""
    steps = max(osl - 1, 1)
    dec = decode_at(decode_batch)
    r_decode = decode_batch / (dec.step_ms * steps) * 1e3
    r_prefill = prefill.rate_per_s
    capacity_p, capacity_d = x * r_prefill, y * r_decode
    service_ms = prefill_batch / r_prefill * 1e3
    rate = min(capacity_p, capacity_d)
    kv_ms, egress = transfer(
        mv,
        hv,
        isl,
        prefill_batch,
        prefill_tp,
        prefill_pp,
        prefill_dp,
        prefill.step_ms,
        rate / x,
        link_bytes_per_s,
    )
    if capacity_p >= capacity_d:
        rho = min(rate / capacity_p, MAX_UTILISATION)
        tpot = dec.step_ms
        running = float(decode_batch)
        ttft_at = {
            name: prefill.step_ms + wait_ms_dealt(rho, service_ms, p, x) + kv_ms
            for name, p in PERCENTILES.items()
        }
        bottleneck = "decode"
    else:
        rho = 1.0
        running = float(decode_batch)
        tpot = dec.step_ms
        for _ in range(30):  # running batch and TPOT depend on each other
            running = min(float(decode_batch), rate / y * tpot * steps / 1e3)
            tpot = decode_at(max(1, round(running))).step_ms
        # the decode batch is each worker's limit, not a client count: without a stated load
        # the deployment is judged at the rate it sustains, prompts served as they come
        ttft = prefill.step_ms + kv_ms
        ttft_at = dict.fromkeys(PERCENTILES, ttft)
        bottleneck = "prefill"
    return DisaggMetrics(
        ttft_at["p50"],
        ttft_at,
        tpot,
        rate,
        rate * osl,
        running,
        rho,
        kv_ms,
        egress,
        link_bytes_per_s,
        bottleneck,
    )
