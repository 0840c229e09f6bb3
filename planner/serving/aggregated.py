"""Aggregated serving: one worker runs prefill and decode together, under closed-loop load.

``simulate_agg`` is an event simulation of an engine's iteration loop (vLLM/SGLang-style
continuous batching) on one attention-DP rank, in Numba:

* ``users`` clients each keep one request in flight: when a request ends, its client sends the
  next one at once (closed loop). Request lengths cycle through the traffic mix.
* Admission: a waiting request is admitted (FCFS) while its whole KV footprint (isl + osl tokens)
  fits in the cache next to the admitted ones and the engine's batch limit allows; otherwise it
  queues. This is how an engine under memory pressure behaves once preemption is avoided: the
  running batch shrinks and time to first token grows by the wait.
* Each iteration decodes one token for every running sequence and, with chunked prefill, fills
  the rest of the token budget (``chunk`` tokens) with prompt chunks, oldest first; each chunk
  attends to the part of its prompt already prefilled. Without chunking (``chunk == 0``) an
  iteration is either a prefill of every admitted prompt or a decode of every running sequence.
* The iteration's duration is the op-level step model (``perf.kernels.step_ms``) for exactly that
  mix, so prefill-decode interference comes from the model, not from a fudge factor.
* Runs of decode-only iterations are advanced in one event up to the next completion (their
  duration integrated with the context at its midpoint), so a simulation costs a few events per
  request rather than one per token.

The first ``warm`` completions (which include the staggered initial population) are discarded;
metrics come from the next ``measure`` completions.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from planner.perf.kernels import step_ms

# out[] slots of simulate_agg
A_TTFT_MEAN, A_TTFT_P50, A_TTFT_P90, A_TTFT_P99 = 0, 1, 2, 3
A_TPOT_MEAN, A_TPOT_P50, A_TPOT_P90, A_TPOT_P99 = 4, 5, 6, 7
A_TOKENS_PER_S, A_REQUESTS_PER_S, A_RUNNING, A_QUEUED, A_OK = 8, 9, 10, 11, 12
AGG_SLOTS = 13

WAITING, PREFILL, DECODE = 0, 1, 2


@njit(cache=True, nogil=True)
def simulate_agg(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    tp: float,
    pp: float,
    ep: float,
    dp: float,
    users: int,
    req_isl: np.ndarray,
    req_osl: np.ndarray,
    prefix_hit: float,
    chunk: float,
    kv_capacity: float,
    max_batch: int,
    warm: int,
    measure: int,
    out: np.ndarray,
) -> None:
    """Simulate one attention-DP rank with ``users`` closed-loop clients; fill ``out``."""
    out[:] = 0.0
    n_mix = req_isl.shape[0]
    state = np.zeros(users, np.int64)
    isl = np.zeros(users)
    osl = np.zeros(users)
    done_pf = np.zeros(users)
    gen = np.zeros(users)
    t_arr = np.zeros(users)
    t_first = np.zeros(users)
    counted = np.zeros(users, np.bool_)
    finished = np.zeros(users, np.bool_)
    ttfts = np.zeros(measure)
    tpots = np.zeros(measure)
    row = np.zeros(4)
    scratch = np.zeros(4)
    next_req = 0
    reserved = 0.0
    running = 0
    # Staggered start: client i is 1/users of the way further through its decode than client i-1.
    for i in range(users):
        k = next_req % n_mix
        next_req += 1
        isl[i] = req_isl[k]
        osl[i] = req_osl[k]
        need = isl[i] + osl[i]
        if reserved + need <= kv_capacity and running < max_batch and osl[i] > 1.0:
            state[i] = DECODE
            done_pf[i] = isl[i]
            gen[i] = 1.0 + np.floor(i * (osl[i] - 1.0) / users)
            reserved += need
            running += 1
        else:
            state[i] = WAITING
            done_pf[i] = np.floor(isl[i] * prefix_hit)
        counted[i] = False
    t = 0.0
    completions = 0
    measured = 0
    t0 = 0.0
    tokens = 0.0
    tokens0 = 0.0
    busy_running = 0.0
    busy_queued = 0.0
    # each request takes one event per prompt chunk plus a few decode runs; the bound only
    # guards against a loop that cannot progress, so it must never cut a valid run short
    chunks_per_prompt = np.ceil(req_isl.max() / chunk) if chunk > 0.0 else 1.0
    max_events = int((chunks_per_prompt + 8.0) * 4.0 * (warm + measure + users)) + 1000
    for _ in range(max_events):
        # admit waiting requests, oldest first
        while True:
            best = -1
            for i in range(users):
                if state[i] == WAITING and (best < 0 or t_arr[i] < t_arr[best]):
                    best = i
            if best < 0:
                break
            need = isl[best] + osl[best]
            if reserved + need > kv_capacity or running >= max_batch:
                break
            state[best] = PREFILL
            reserved += need
            running += 1
        waiting = 0
        n_dec = 0
        ctx_sum = 0.0
        min_left = 1e18
        n_pf_pending = 0
        for i in range(users):
            if state[i] == WAITING:
                waiting += 1
            elif state[i] == DECODE:
                n_dec += 1
                ctx_sum += isl[i] + gen[i]
                min_left = min(min_left, osl[i] - gen[i])
            else:
                n_pf_pending += 1
        if n_dec == 0 and n_pf_pending == 0:
            return  # nothing can run: one request does not fit; out[A_OK] stays 0
        # choose this iteration's prompt tokens
        pf_seqs = 0.0
        pf_tokens = 0.0
        pf_past = 0.0
        decode_now = n_dec
        if n_pf_pending > 0:
            budget = chunk - n_dec if chunk > 0.0 else 1e18
            if chunk <= 0.0:
                decode_now = 0  # prefill-first iteration
            # oldest first: repeatedly take the oldest prefilling request not yet served
            taken = np.zeros(users, np.bool_)
            while budget > 0.0:
                best = -1
                for i in range(users):
                    if (
                        state[i] == PREFILL
                        and not taken[i]
                        and (best < 0 or t_arr[i] < t_arr[best])
                    ):
                        best = i
                if best < 0:
                    break
                take = min(isl[best] - done_pf[best], budget)
                taken[best] = True
                pf_seqs += 1.0
                pf_tokens += take
                pf_past += done_pf[best]
                budget -= take
                done_pf[best] += take  # applied now; completion handled after the step
        steps = 1.0
        if pf_seqs == 0.0:
            steps = max(min_left, 1.0)  # decode-only run until the next completion
        ctx_mean = ctx_sum / n_dec if n_dec > 0 else 0.0
        mean_new = pf_tokens / pf_seqs if pf_seqs > 0.0 else 0.0
        mean_past = pf_past / pf_seqs if pf_seqs > 0.0 else 0.0
        lat, _ = step_ms(
            mv,
            hv,
            cg,
            cp,
            cd,
            tp,
            pp,
            ep,
            dp,
            pf_seqs,
            mean_new,
            mean_past,
            float(decode_now),
            ctx_mean + 0.5 * (steps - 1.0),
            row,
            scratch,
        )
        dt = lat * steps
        t += dt
        busy_running += dt * (n_dec + n_pf_pending)
        busy_queued += dt * waiting
        if decode_now > 0:
            tokens += decode_now * steps
        for i in range(users):
            if state[i] == DECODE and decode_now > 0:
                gen[i] += steps
                finished[i] = gen[i] >= osl[i]
            elif state[i] == PREFILL and done_pf[i] >= isl[i]:
                state[i] = DECODE
                gen[i] = 1.0  # the prefill step emits the first token
                tokens += 1.0
                t_first[i] = t
                finished[i] = osl[i] <= 1.0  # that token was the whole answer
        for i in range(users):
            if not finished[i]:
                continue
            finished[i] = False
            completions += 1
            if counted[i] and completions > warm and measured < measure:
                ttfts[measured] = t_first[i] - t_arr[i]
                tpots[measured] = (t - t_first[i]) / (osl[i] - 1.0) if osl[i] > 1.0 else 0.0
                measured += 1
            if completions == warm:
                t0 = t
                tokens0 = tokens
                busy_running = 0.0
                busy_queued = 0.0
            reserved -= isl[i] + osl[i]
            running -= 1
            # the client sends its next request at once
            k = next_req % n_mix
            next_req += 1
            isl[i] = req_isl[k]
            osl[i] = req_osl[k]
            state[i] = WAITING
            done_pf[i] = np.floor(isl[i] * prefix_hit)
            gen[i] = 0.0
            t_arr[i] = t
            counted[i] = True
        if measured >= measure:
            break
    if measured == 0 or t <= t0:
        return
    span = t - t0
    tt = ttfts[:measured]
    tq = tpots[:measured]
    out[A_TTFT_MEAN] = tt.mean()
    out[A_TTFT_P50] = np.percentile(tt, 50.0)
    out[A_TTFT_P90] = np.percentile(tt, 90.0)
    out[A_TTFT_P99] = np.percentile(tt, 99.0)
    out[A_TPOT_MEAN] = tq.mean()
    out[A_TPOT_P50] = np.percentile(tq, 50.0)
    out[A_TPOT_P90] = np.percentile(tq, 90.0)
    out[A_TPOT_P99] = np.percentile(tq, 99.0)
    out[A_TOKENS_PER_S] = 1e3 * (tokens - tokens0) / span
    # requests/s from the token rate: counting completions in a short window is biased by the
    # requests already part-way through when the window opens
    out[A_REQUESTS_PER_S] = out[A_TOKENS_PER_S] / req_osl.mean()
    out[A_RUNNING] = busy_running / span
    out[A_QUEUED] = busy_queued / span
    out[A_OK] = 1.0
