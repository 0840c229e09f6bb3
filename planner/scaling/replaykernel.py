"""The open-loop event simulation of a disaggregated deployment whose workers come and go.

``replay_disagg`` takes every request (arrival time, length class) and every worker *span* (a
worker of one configuration that accepts work from ``on`` until ``off`` and drains afterwards)
and returns each request's TTFT and TPOT:

* Prefill: one FIFO queue for the pool. An idle prefill worker that is accepting takes up to its
  batch limit of waiting prompts at once; the batch lasts the mean of its prompts' batch times
  (``p_ms[cfg, class, n - 1]`` for a batch of ``n``). A prompt's first token leaves when its batch
  ends plus its KV-transfer tail (``p_kv[cfg, class]``): TTFT = that time - arrival.
* Decode: a request whose KV arrived goes to the accepting decode worker holding the fewest
  sequences that has a free slot (else it waits in one FIFO). A worker steps all its sequences at
  once; a sequence assigned mid-step joins the next step. A step lasts ``d_ms`` at the running
  count, interpolated linearly between two mean contexts (``d_ctx0``, ``d_ctx1``) at the running
  sequences' mean context (prompt + tokens so far). TPOT = (last token - first token) / (osl - 1).
* Workers that stop accepting finish what they hold (prefill batch, decode sequences).

Requests never served (no worker accepting until the end) get ``inf`` TTFT and TPOT.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def replay_disagg(
    t_arr: np.ndarray,  # [n] arrival times (s), non-decreasing
    cls: np.ndarray,  # [n] int64 class of each request
    isl_c: np.ndarray,  # [C] prompt tokens per class
    osl_c: np.ndarray,  # [C] output tokens per class
    pw_cfg: np.ndarray,  # [P] int64 prefill span configuration
    pw_on: np.ndarray,  # [P] s
    pw_off: np.ndarray,  # [P] s
    p_batch: np.ndarray,  # [cfgP] int64 batch limit
    p_ms: np.ndarray,  # [cfgP, C, Bp] batch time (ms) for n = 1..Bp prompts of one class
    p_kv: np.ndarray,  # [cfgP, C] KV-transfer tail (ms)
    dw_cfg: np.ndarray,  # [D] int64 decode span configuration
    dw_on: np.ndarray,  # [D] s
    dw_off: np.ndarray,  # [D] s
    d_batch: np.ndarray,  # [cfgD] int64 batch limit
    d_ms0: np.ndarray,  # [cfgD, Bd] step time (ms) at 1..Bd sequences, context d_ctx0
    d_ms1: np.ndarray,  # [cfgD, Bd] the same at context d_ctx1
    d_ctx0: np.ndarray,  # [cfgD]
    d_ctx1: np.ndarray,  # [cfgD]
    ttft_ms: np.ndarray,  # [n] out
    tpot_ms: np.ndarray,  # [n] out
    busy_until: np.ndarray,  # [P + D] out: when each span last finished work (s)
) -> None:
    n = t_arr.shape[0]
    n_p = pw_cfg.shape[0]
    n_d = dw_cfg.shape[0]
    bp_max = p_ms.shape[2]
    bd_max = d_ms0.shape[1]
    ttft_ms[:] = math.inf
    tpot_ms[:] = math.inf
    busy_until[:] = 0.0
    t_first = np.zeros(n)
    gen = np.zeros(n)  # tokens produced so far (the first comes from prefill)
    # prefill state
    p_busy = np.zeros(n_p, np.bool_)
    p_end = np.zeros(n_p)
    p_members = np.full((n_p, bp_max), -1, np.int64)
    p_count = np.zeros(n_p, np.int64)
    q_head = 0  # the prefill queue is requests[q_head:next_arr] in arrival order
    next_arr = 0
    # decode state
    dq = np.zeros(n, np.int64)
    dq_ready = np.zeros(n)
    dq_head = 0
    dq_tail = 0
    slots = np.full((n_d, bd_max), -1, np.int64)
    in_step = np.zeros((n_d, bd_max), np.bool_)
    d_count = np.zeros(n_d, np.int64)
    d_ctx_sum = np.zeros(n_d)
    d_busy = np.zeros(n_d, np.bool_)
    d_end = np.zeros(n_d)
    t = 0.0
    while True:
        t_next = math.inf
        if next_arr < n:
            t_next = t_arr[next_arr]
        if dq_head < dq_tail and dq_ready[dq_head] > t:
            t_next = min(t_next, dq_ready[dq_head])
        for w in range(n_p):
            if p_busy[w]:
                t_next = min(t_next, p_end[w])
            elif pw_on[w] > t:
                t_next = min(t_next, pw_on[w])
        for w in range(n_d):
            if d_busy[w]:
                t_next = min(t_next, d_end[w])
            elif dw_on[w] > t:
                t_next = min(t_next, dw_on[w])
        if t_next == math.inf:
            break
        t = t_next
        while next_arr < n and t_arr[next_arr] <= t:
            next_arr += 1
        # prefill batches that end now: first tokens out, KV on its way to decode
        for w in range(n_p):
            if p_busy[w] and p_end[w] <= t:
                p_busy[w] = False
                busy_until[w] = p_end[w]
                cfg = pw_cfg[w]
                for j in range(p_count[w]):
                    r = p_members[w, j]
                    ready = p_end[w] + p_kv[cfg, cls[r]] / 1e3
                    t_first[r] = ready
                    ttft_ms[r] = (ready - t_arr[r]) * 1e3
                    gen[r] = 1.0
                    if osl_c[cls[r]] <= 1.0:
                        tpot_ms[r] = 0.0
                        continue
                    # keep the decode queue ordered by ready time (a batch's tails differ)
                    k = dq_tail
                    while k > dq_head and dq_ready[k - 1] > ready:
                        dq[k] = dq[k - 1]
                        dq_ready[k] = dq_ready[k - 1]
                        k -= 1
                    dq[k] = r
                    dq_ready[k] = ready
                    dq_tail += 1
                p_count[w] = 0
        # decode steps that end now: one token for each sequence that ran in the step
        for w in range(n_d):
            if d_busy[w] and d_end[w] <= t:
                d_busy[w] = False
                busy_until[n_p + w] = d_end[w]
                for j in range(bd_max):
                    r = slots[w, j]
                    if r < 0 or not in_step[w, j]:
                        continue
                    in_step[w, j] = False
                    gen[r] += 1.0
                    d_ctx_sum[w] += 1.0
                    o = osl_c[cls[r]]
                    if gen[r] >= o:
                        tpot_ms[r] = (d_end[w] - t_first[r]) * 1e3 / (o - 1.0)
                        d_ctx_sum[w] -= isl_c[cls[r]] + gen[r]
                        slots[w, j] = -1
                        d_count[w] -= 1
        # idle accepting prefill workers take the oldest waiting prompts
        for w in range(n_p):
            if q_head >= next_arr:
                break
            if p_busy[w] or not (pw_on[w] <= t < pw_off[w]):
                continue
            cfg = pw_cfg[w]
            take = min(p_batch[cfg], next_arr - q_head)
            dur = 0.0
            for j in range(take):
                r = q_head + j
                p_members[w, j] = r
                dur += p_ms[cfg, cls[r], take - 1]
            p_count[w] = take
            q_head += take
            p_busy[w] = True
            p_end[w] = t + dur / take / 1e3
        # ready requests go to the accepting decode worker with the fewest sequences
        while dq_head < dq_tail and dq_ready[dq_head] <= t:
            best = -1
            for w in range(n_d):
                if not (dw_on[w] <= t < dw_off[w]):
                    continue
                if d_count[w] >= d_batch[dw_cfg[w]]:
                    continue
                if best < 0 or d_count[w] < d_count[best]:
                    best = w
            if best < 0:
                break
            r = dq[dq_head]
            dq_head += 1
            for j in range(bd_max):
                if slots[best, j] < 0:
                    slots[best, j] = r
                    in_step[best, j] = False
                    break
            d_count[best] += 1
            d_ctx_sum[best] += isl_c[cls[r]] + gen[r]
        # idle decode workers holding sequences start a step
        for w in range(n_d):
            if d_busy[w] or d_count[w] == 0:
                continue
            cfg = dw_cfg[w]
            for j in range(bd_max):
                if slots[w, j] >= 0:
                    in_step[w, j] = True
            m = d_count[w]
            ctx = d_ctx_sum[w] / m
            span = d_ctx1[cfg] - d_ctx0[cfg]
            f = (ctx - d_ctx0[cfg]) / span if span > 0.0 else 0.0
            step = d_ms0[cfg, m - 1] + f * (d_ms1[cfg, m - 1] - d_ms0[cfg, m - 1])
            d_busy[w] = True
            d_end[w] = t + max(step, 1e-6) / 1e3
