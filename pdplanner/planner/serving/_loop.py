"""The engine loop as an event simulation, in Numba (private: call
``pdplanner.planner.serving.simulate``).

One kernel serves every way the planner runs an engine:

* an aggregated worker (``n_back == 0``): each iteration decodes one token for every running
  sequence and fills the rest of the token budget with prompt tokens;
* a disaggregated deployment: ``n_front`` prefill-only workers feed ``n_back`` decode-only
  workers through a KV transfer of ``transfer_ms``;
* under a closed loop (``clients > 0``: request ``r + clients`` arrives when request ``r`` ends,
  the first ``clients`` at ``arrival[0:clients]``) or open-loop arrivals (``arrival`` for all);
* optionally with a per-worker table (``workers``, slots ``W_*``) in place of the two pools'
  settings: each worker's role, layout, KV capacity, batch limit, token budget, chunked prefill
  (on or off), KV-transfer time and availability window. A worker accepts requests from
  ``W_ON_MS`` until ``W_OFF_MS`` and then drains: it finishes what it holds (queue included) but
  is routed nothing new. Front workers may mix aggregated and prefill roles (a deployment switching
  between the two). New requests go to the accepting front workers in turn; a prompt's KV goes
  to the accepting decode worker with the fewest requests, or, from a prefill worker that has
  stopped accepting, also to a decode worker that stopped no earlier (the old pools drain
  together). A request that finds no worker waits for the next to join.
  ``drained`` receives each worker's last busy moment (ms; its last iteration, or a prefill
  worker's last KV transfer out).

A worker here is one attention-DP rank; the ranks of one model replica (``W_DP`` consecutive rows
of a pool) are fed in turn and run in lockstep, as the engines run them (every MoE layer is a
collective over them; a rank with nothing to do runs a dummy pass): their iterations are formed
at the same moment, each step lasts as long as the slowest rank's, the MoE layers see every
rank's tokens (``kernels.ffn_ms``'s ``moe_tokens``), a run of decode steps stops where an idle
rank could get work, and the iteration ends on every rank at once. A group of fewer rows than
its ``W_DP`` (the aggregated sweep simulates one rank of a worker; a pool whose row count is not
a multiple of ``W_DP`` leaves one) stands for the whole worker: its missing ranks are priced from
the group's own history (``_phantom_ms``; the MoE layers see from each the group's mean tokens
per rank and step, or in a step without a prompt those of its mean decode-only step). Per
iteration and worker (the engine scheduler, parameters in ``sched``):

1. Admission, first come first served, stopping at the first request that does not fit (a later,
   smaller request does not overtake it), while fewer than ``max_seqs`` run. With an overlap
   (asynchronous) scheduler (``S_OVERLAP``; TensorRT-LLM's and SGLang's default) the next batch
   is formed while the GPU runs the current one, so on an aggregated or decode worker that keeps
   running a request that queued during the iteration now ending waits one iteration more: it
   joins only if it queued before that iteration's last step started. KV admission:
   ``KV_RESERVE`` reserves the whole request (prompt + answer; TensorRT-LLM GUARANTEED_NO_EVICT),
   ``KV_ON_DEMAND`` only the tokens this iteration writes (vLLM paged blocks), ``KV_RATIO`` the
   prompt plus ``ratio`` x the answer still to come (SGLang's new-token ratio, which decays per
   iteration from ``ratio_init`` to ``ratio_min`` and resets after a retraction).
2. With on-demand or ratio admission, when the decode tokens of the running batch no longer fit,
   the most recently admitted requests are preempted (vLLM) or retracted (SGLang): they free
   their KV and go back to the head of the queue, to recompute prompt and generated tokens.
3. The iteration's tokens: every decoding sequence gives one; prompt chunks take what is left of
   ``budget`` tokens, running requests first, then newly admitted ones. Without chunked prefill a
   prompt is taken whole or not at all (alone it may exceed the budget). Without mixed batches
   (SGLang's default) an iteration is either a prefill of waiting prompts or a decode.
4. Its duration is the op-level ``perf.kernels.step_ms`` for exactly that mix (to the bit; its
   terms that the contexts do not enter are computed once per step shape and step group, see
   ``kernels.step_fixed``). A decode-only iteration pads the batch to the next captured
   CUDA-graph size (``graphs``; GEMMs see the padded batch, attention the real contexts). With
   ``pp`` stages a decode worker keeps ``pp`` micro-batches in flight; a prefill worker starts its
   next batch when the first stage is free (``stage_ms``) while the batch's prompts are done after
   the whole pipeline (``latency_ms``).
5. Decode-only iterations repeat until the next event that could change the batch (a completion,
   a KV limit, an arrival or transfer the worker could admit); such a run is one event, its step
   time taken at the run's mid context.

Per request the kernel records arrival, first token and completion times (ms); in disaggregated
serving the first token reaches the client when a decode worker admits the request.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.typed import Dict

from pdplanner.planner.perf.kernels import (
    FIXED_SLOTS,
    step_fixed,
    step_fixed_key,
    step_ms_fixed,
)

KV_RESERVE, KV_ON_DEMAND, KV_RATIO = 0, 1, 2

# sched[] slots
S_BUDGET, S_MAX_SEQS, S_CHUNKED, S_MIXED, S_POLICY = 0, 1, 2, 3, 4
S_RATIO_INIT, S_RATIO_MIN, S_RATIO_DECAY, S_CAP_FRONT, S_CAP_BACK = 5, 6, 7, 8, 9
S_TRANSFER_MS, S_MAX_SEQS_BACK, S_BUDGET_BACK, S_PREFIX_HIT, S_OVERLAP = 10, 11, 12, 13, 14
SCHED_SLOTS = 15

# stats[] slots
T_RUNNING, T_WAITING, T_SPAN, T_TOKENS, T_PREEMPTIONS, T_EVENTS, T_END = 0, 1, 2, 3, 4, 5, 6
T_PEAK_RUNNING, T_RUNNING_BACK = 7, 8
STAT_SLOTS = 9

# workers[] columns (one row per worker, front workers first)
W_ROLE, W_TP, W_PP, W_EP, W_DP, W_CAP, W_MAX_SEQS, W_BUDGET = 0, 1, 2, 3, 4, 5, 6, 7
W_TRANSFER_MS, W_ON_MS, W_OFF_MS, W_CHUNKED = 8, 9, 10, 11
WORKER_SLOTS = 12

# status
OK, NO_FIT, EVENT_LIMIT = 0, 1, 2

# request states
NOT_ARRIVED, WAITING, RUNNING, TRANSFER, DONE = 0, 1, 2, 3, 4

AGG, PREFILL, DECODE = 0, 1, 2

# simulate_loop's table of step_fixed terms ([FIXED_SLOTS] ms) by step group and step_fixed_key
_FIXED_KEY = types.UniTuple(types.float64, 7)  # type: ignore[no-untyped-call]
_FIXED_VALUE = types.float64[::1]


@njit(cache=True, nogil=True)
def new_fixed_table() -> Dict:
    """An empty table of step terms for ``simulate_loop``'s ``fixed_terms``."""
    return Dict.empty(key_type=_FIXED_KEY, value_type=_FIXED_VALUE)


@njit(cache=True, nogil=True)
def padded_batch(n: float, graphs: np.ndarray) -> float:
    """The captured CUDA-graph batch size a decode batch of ``n`` runs at (``n`` past the
    largest, or without graphs)."""
    for i in range(graphs.shape[0]):
        if graphs[i] >= n:
            return float(graphs[i])
    return n


@njit(cache=True, nogil=True)
def simulate_loop(
    mv: np.ndarray,
    hv_f: np.ndarray,
    cg_f: np.ndarray,
    cp_f: np.ndarray,
    cd_f: np.ndarray,
    lay_f: np.ndarray,
    hv_b: np.ndarray,
    cg_b: np.ndarray,
    cp_b: np.ndarray,
    cd_b: np.ndarray,
    lay_b: np.ndarray,
    n_front: int,
    n_back: int,
    sched: np.ndarray,
    graphs: np.ndarray,
    clients: int,
    arrival: np.ndarray,
    isl: np.ndarray,
    osl: np.ndarray,
    stop_after: int,
    stat_from: int,
    max_events: int,
    t_first: np.ndarray,
    t_done: np.ndarray,
    order: np.ndarray,
    stats: np.ndarray,
    workers: np.ndarray | None = None,
    drained: np.ndarray | None = None,
    fixed_terms: Dict | None = None,
) -> int:
    """Run the engines on ``isl.shape[0]`` requests; returns the status (``OK``, ``NO_FIT``,
    ``EVENT_LIMIT``). Fills ``t_first``/``t_done`` (ms, -1 where not reached), ``order`` (request
    ids in completion order, -1 past the last) and ``stats`` (time-weighted running and waiting
    requests, over the time after ``stat_from`` completions; tokens; preemptions; events).
    ``workers`` ([n_front + n_back, WORKER_SLOTS]) replaces the pools' settings per worker;
    ``drained`` ([n_front + n_back], out) gets each worker's last busy time (ms).
    ``fixed_terms`` (``new_fixed_table``; in and out) keeps the steps' terms that their contexts
    do not enter for the next call: share it only between calls of the same model, hardware,
    layouts, ``workers`` and front/back split (as one layout's points in a sweep do)."""
    n = isl.shape[0]
    n_w = n_front + n_back
    # per worker: role, layout, limits, transfer time and availability window
    wk = np.zeros((n_w, WORKER_SLOTS))
    if workers is None:
        for w in range(n_w):
            front = w < n_front
            pool = lay_f if front else lay_b
            wk[w, W_ROLE] = (AGG if n_back == 0 else PREFILL) if front else DECODE
            wk[w, W_TP], wk[w, W_PP], wk[w, W_EP], wk[w, W_DP] = pool[0], pool[1], pool[2], pool[3]
            wk[w, W_CAP] = sched[S_CAP_FRONT] if front else sched[S_CAP_BACK]
            wk[w, W_MAX_SEQS] = sched[S_MAX_SEQS] if front else sched[S_MAX_SEQS_BACK]
            wk[w, W_BUDGET] = sched[S_BUDGET] if front else sched[S_BUDGET_BACK]
            wk[w, W_TRANSFER_MS] = sched[S_TRANSFER_MS]
            wk[w, W_ON_MS] = -np.inf
            wk[w, W_OFF_MS] = np.inf
            wk[w, W_CHUNKED] = sched[S_CHUNKED]
    else:
        wk[:, :] = workers
    busy_to = np.zeros(n_w)
    t_first[:] = -1.0
    t_done[:] = -1.0
    order[:] = -1
    stats[:] = 0.0
    if n == 0:
        return OK
    mixed = sched[S_MIXED] > 0.5
    policy = int(sched[S_POLICY])
    ratio_init = sched[S_RATIO_INIT]
    ratio_min = sched[S_RATIO_MIN]
    ratio_decay = sched[S_RATIO_DECAY]
    transfer_ms = np.inf  # the shortest KV transfer of any front worker
    for w in range(n_front):
        transfer_ms = min(transfer_ms, wk[w, W_TRANSFER_MS])
    prefix_hit = sched[S_PREFIX_HIT]
    # per request
    t_arr = arrival  # written for the closed loop's later requests
    state = np.zeros(n, np.int64)
    worker = np.zeros(n, np.int64)
    front_of = np.zeros(n, np.int64)
    nxt = np.full(n, -1, np.int64)
    pf_target = np.zeros(n)
    done_pf = np.zeros(n)
    gen = np.zeros(n)
    take = np.zeros(n)
    decoding = np.zeros(n, np.bool_)
    held = np.zeros(n)  # KV tokens written
    resv = np.zeros(n)  # KV tokens counted against admission
    t_ready = np.zeros(n)
    t_queued = np.full(n, -np.inf)  # when it last joined a queue (-inf: back from preemption)
    # per worker
    role = np.zeros(n_w, np.int64)
    cap = np.zeros(n_w)
    max_run = np.zeros(n_w, np.int64)
    budget = np.zeros(n_w)
    chunks = np.zeros(n_w, np.bool_)  # chunked prefill
    for w in range(n_w):
        role[w] = int(wk[w, W_ROLE])
        cap[w] = wk[w, W_CAP]
        max_run[w] = int(wk[w, W_MAX_SEQS])
        budget[w] = wk[w, W_BUDGET]
        chunks[w] = wk[w, W_CHUNKED] > 0.5
    width = 1
    for w in range(n_w):
        width = max(width, max_run[w])
    run = np.zeros((n_w, width), np.int64)
    n_run = np.zeros(n_w, np.int64)
    head = np.full(n_w, -1, np.int64)
    tail = np.full(n_w, -1, np.int64)
    n_wait = np.zeros(n_w, np.int64)
    busy = np.zeros(n_w, np.bool_)
    t_end = np.full(n_w, np.inf)
    t_start = np.zeros(n_w)
    it_lat = np.zeros(n_w)
    it_steps = np.ones(n_w)
    it_dec = np.zeros(n_w, np.bool_)
    kv_resv = np.zeros(n_w)
    kv_held = np.zeros(n_w)
    ratio = np.full(n_w, ratio_init)
    overlap = sched[S_OVERLAP] > 0.5
    t_formed = np.full(n_w, -np.inf)  # start of the last step of the latest iteration
    t_free = np.full(n_w, -np.inf)  # end of the latest iteration
    # in transfer
    xfer = np.zeros(n, np.int64)
    n_xfer = 0
    row = np.zeros(4)
    scratch = np.zeros(4)
    # a step's terms that its contexts do not enter (kernels.step_fixed), computed once per step
    # group (workers of one pool and layout) and step_fixed_key: rows of fixed, found by fixed_at
    group = np.zeros(n_w, np.int64)
    n_groups = 0
    for w in range(n_w):
        group[w] = n_groups
        for v in range(w):
            if (v < n_front) == (w < n_front) and np.all(
                wk[v, W_TP : W_DP + 1] == wk[w, W_TP : W_DP + 1]
            ):
                group[w] = group[v]
                break
        if group[w] == n_groups:
            n_groups += 1
    fixed_at = new_fixed_table() if fixed_terms is None else fixed_terms
    # lockstep groups: a worker's attention-DP ranks (W_DP consecutive rows of a pool)
    lock_size = np.zeros(n_w, np.int64)
    lock_start = np.zeros(n_w, np.int64)
    n_locks = 0
    for lo, hi in ((0, n_front), (n_front, n_w)):
        w = lo
        while w < hi:
            size = min(max(1, int(wk[w, W_DP])), hi - w)
            lock_start[n_locks] = w
            lock_size[n_locks] = size
            n_locks += 1
            w += size
    lock_until = np.full(n_w, -np.inf)
    # a group of fewer rows than its W_DP (the aggregated sweep simulates one rank of a worker)
    # stands for the whole worker: its missing ranks are priced from the group's own history
    # (_phantom_ms): the share of its steps that carried prompt tokens, their mean latency and
    # the mean latency of its decode-only steps; the MoE layers see from each missing rank the
    # group's mean tokens per rank and step, or in a decode-only step those of its mean
    # decode-only step (a missing rank's prompt then shows as the slowest rank's step)
    phantoms = np.zeros(n_w, np.int64)
    for g in range(n_locks):
        phantoms[g] = max(0, int(wk[lock_start[g], W_DP]) - lock_size[g])
    h_steps = np.zeros(n_w)  # steps priced so far
    h_pf_steps = np.zeros(n_w)  # of which carried prompt tokens
    h_pf_lat = np.zeros(n_w)  # sum of those steps' latencies (ms)
    h_dc_lat = np.zeros(n_w)  # sum of the other steps' latencies (ms)
    h_tokens = np.zeros(n_w)  # the mean tokens a rank gave the MoE layers, summed over steps
    h_dc_tokens = np.zeros(n_w)  # the same over decode-only steps
    # per worker: the shape of the iteration formed at this event, settled per lockstep group
    f_on = np.zeros(n_w, np.bool_)
    f_pf = np.zeros(n_w)
    f_new = np.zeros(n_w)
    f_past = np.zeros(n_w)
    f_dc = np.zeros(n_w)
    f_ctx = np.zeros(n_w)
    f_steps = np.ones(n_w)
    f_ext = np.full(n_w, np.inf)  # when a rank's run of decode steps must stop (ms)
    f_ndec = np.zeros(n_w, np.int64)
    f_decnow = np.zeros(n_w, np.bool_)

    n_sched = clients if clients > 0 else n  # arrivals known in advance
    n_sched = min(n_sched, n)
    next_arr = 0
    rr_front = 0
    arr_waiting = False  # the next arrival found no accepting front worker
    xfer_waiting = False  # a KV transfer found no accepting decode worker
    completions = 0
    t = 0.0
    total_run = 0
    total_wait = 0
    tokens = 0.0
    preemptions = 0.0
    peak_run = 0.0
    if clients > 0:
        t_arr[n_sched:] = np.inf

    status = EVENT_LIMIT
    for event in range(max_events):
        # ---- form an iteration on every idle worker that has work ---------------------------
        for g in range(n_locks):
            for w in range(lock_start[g], lock_start[g] + lock_size[g]):
                if busy[w] or lock_until[g] > t:
                    continue
                rl = role[w]
                # 1. decode tokens must fit: preempt (recompute) the newest requests until they do
                n_dec = 0
                pf_pending = 0.0
                for j in range(n_run[w]):
                    r = run[w, j]
                    if done_pf[r] >= pf_target[r]:
                        if gen[r] < osl[r]:
                            n_dec += 1
                    else:
                        pf_pending += pf_target[r] - done_pf[r]
                preempted = False
                if policy != KV_RESERVE and rl != PREFILL:
                    while n_run[w] > 1 and kv_held[w] + n_dec > cap[w]:
                        j = n_run[w] - 1
                        r = run[w, j]
                        n_run[w] -= 1
                        total_run -= 1
                        if done_pf[r] >= pf_target[r]:
                            if gen[r] < osl[r]:
                                n_dec -= 1
                        else:
                            pf_pending -= pf_target[r] - done_pf[r]
                        kv_held[w] -= held[r]
                        kv_resv[w] -= resv[r]
                        held[r] = 0.0
                        resv[r] = 0.0
                        if rl == AGG:
                            pf_target[r] = isl[r] + gen[r]  # recompute prompt and answer so far
                            done_pf[r] = 0.0
                        # a decode-only worker takes the KV back as it came (no recompute)
                        state[r] = WAITING
                        t_queued[r] = -np.inf
                        nxt[r] = head[w]
                        head[w] = r
                        if tail[w] < 0:
                            tail[w] = r
                        n_wait[w] += 1
                        total_wait += 1
                        preemptions += 1.0
                        preempted = True
                        if policy == KV_RATIO:
                            ratio[w] = ratio_init
                # 2. admission, first come first served, within the token budget left for prompts
                # and not in an iteration that had to preempt (vLLM's rule)
                bud = 1e18 if rl == DECODE else budget[w] - (n_dec if mixed else 0) - pf_pending
                planned = float(n_dec) if policy == KV_ON_DEMAND else 0.0
                # overlap: this iteration was formed when the last step of the previous one began
                limit = np.inf
                if overlap and rl != PREFILL and t_free[w] == t and n_run[w] > 0:
                    limit = t_formed[w]
                deferred = False
                while head[w] >= 0 and n_run[w] < max_run[w] and not preempted and bud > 0.0:
                    r = head[w]
                    if t_queued[r] > limit:
                        deferred = True  # joins the next iteration
                        break
                    rem_prompt = pf_target[r] - done_pf[r]
                    if rl != DECODE and not chunks[w] and rem_prompt > bud and pf_pending > 0.0:
                        break  # a whole prompt waits for a step with room (alone it may exceed it)
                    if policy == KV_RESERVE:
                        need = pf_target[r] + (osl[r] - gen[r] if rl != PREFILL else 0.0)
                        fits = kv_resv[w] + need <= cap[w]
                    elif policy == KV_ON_DEMAND:
                        if rl == DECODE:
                            need = pf_target[r] + 1.0
                        elif chunks[w]:
                            need = min(rem_prompt, bud)
                        else:
                            need = rem_prompt
                        fits = kv_held[w] + planned + need <= cap[w]
                        planned += need
                    else:
                        need = pf_target[r] + (
                            ratio[w] * (osl[r] - gen[r]) if rl != PREFILL else 0.0
                        )
                        fits = kv_resv[w] + need <= cap[w]
                    if not fits:
                        break
                    head[w] = nxt[r]
                    if head[w] < 0:
                        tail[w] = -1
                    nxt[r] = -1
                    n_wait[w] -= 1
                    total_wait -= 1
                    state[r] = RUNNING
                    run[w, n_run[w]] = r
                    n_run[w] += 1
                    total_run += 1
                    resv[r] = need if policy != KV_ON_DEMAND else 0.0
                    kv_resv[w] += resv[r]
                    if rl == DECODE:
                        # the prompt's KV arrived with the request
                        kv_held[w] += pf_target[r]
                        held[r] = pf_target[r]
                        n_dec += 1
                        if t_first[r] < 0.0:
                            t_first[r] = t
                    else:
                        bud -= rem_prompt
                        pf_pending += rem_prompt
                if n_run[w] == 0:
                    continue
                peak_run = max(peak_run, float(total_run))
                # 3. this iteration's tokens
                prefill_now = False
                for j in range(n_run[w]):
                    r = run[w, j]
                    if done_pf[r] < pf_target[r]:
                        prefill_now = True
                        break
                decode_now = n_dec > 0 and (mixed or not prefill_now or rl == DECODE)
                if rl == DECODE:
                    prefill_now = False
                left = budget[w] - (n_dec if decode_now else 0)
                pf_seqs = 0.0
                pf_new = 0.0
                pf_past = 0.0
                if prefill_now:
                    for j in range(n_run[w]):
                        r = run[w, j]
                        rem = pf_target[r] - done_pf[r]
                        if rem <= 0.0:
                            continue
                        if left <= 0.0:
                            break
                        if chunks[w]:
                            tk = min(rem, left)
                        elif rem <= left or pf_seqs == 0.0:
                            tk = rem
                        else:
                            break
                        take[r] = tk
                        pf_seqs += 1.0
                        pf_new += tk
                        pf_past += done_pf[r]
                        left -= tk
                        kv_held[w] += tk
                        held[r] += tk
                if pf_seqs == 0.0 and not decode_now:
                    continue  # admitted requests wait for budget (cannot happen) or nothing to do
                ctx_sum = 0.0
                min_left = 1e18
                if decode_now:
                    for j in range(n_run[w]):
                        r = run[w, j]
                        decoding[r] = done_pf[r] >= pf_target[r] and gen[r] < osl[r]
                        if decoding[r]:
                            ctx_sum += isl[r] + gen[r]
                            min_left = min(min_left, osl[r] - gen[r])
                steps = 1.0
                if pf_seqs == 0.0:
                    steps = max(min_left, 1.0)
                    if policy != KV_RESERVE:
                        room = math.floor((cap[w] - kv_held[w]) / n_dec)
                        steps = max(1.0, min(steps, room))
                is_front = w < n_front
                lay = wk[w, W_TP : W_DP + 1]
                dc = float(n_dec) if decode_now else 0.0
                ctx = ctx_sum / n_dec if decode_now else 0.0
                pp = lay[1]
                if rl == DECODE and pp > 1.0:
                    dc = math.ceil(dc / pp)  # one micro-batch per pipeline stage
                if pf_seqs == 0.0 and dc > 0.0:
                    padded = padded_batch(dc, graphs)
                    ctx = ctx * dc / padded  # attention reads the real contexts only
                    dc = padded
                mean_new = pf_new / pf_seqs if pf_seqs > 0.0 else 0.0
                mean_past = pf_past / pf_seqs if pf_seqs > 0.0 else 0.0
                t_ext = np.inf
                if pf_seqs == 0.0 and steps > 1.0:
                    # the run stops at the next event that could add a request to this batch;
                    # cut below, at the step time of the worker's ranks together
                    if n_run[w] < max_run[w] and rl != PREFILL:
                        t_ext = _next_work(
                            rl, -np.inf, next_arr, n_sched, arr_waiting, t_arr, n_xfer, xfer,
                            t_ready, n_front, busy, t_end, wk, transfer_ms,
                        )  # fmt: skip
                    if policy == KV_RATIO and head[w] >= 0:
                        steps = max(1.0, min(steps, 16.0))  # the ratio decays: look again soon
                    if deferred:
                        steps = 1.0
                # the iteration's shape; its steps and duration are settled below, together
                # with the other attention-DP ranks of the worker
                f_on[w] = True
                f_pf[w] = pf_seqs
                f_new[w] = mean_new
                f_past[w] = mean_past
                f_dc[w] = dc
                f_ctx[w] = ctx
                f_steps[w] = steps
                f_ext[w] = t_ext
                f_ndec[w] = n_dec
                f_decnow[w] = decode_now
            # ---- lockstep: a worker's attention-DP ranks run each iteration together --------
            # (every MoE layer is a collective over them; a rank with nothing to do runs a
            # dummy pass), each step as long as the slowest rank's, the MoE layers seeing the
            # tokens of every rank; the iteration ends on every rank at once
            lo = lock_start[g]
            hi = lo + lock_size[g]
            steps = np.inf
            moe_tokens = 0.0
            prompt_step = False
            for w in range(lo, hi):
                if f_on[w]:
                    steps = min(steps, f_steps[w])
                    moe_tokens += f_pf[w] * f_new[w] + f_dc[w]
                    prompt_step = prompt_step or f_pf[w] > 0.0
            if steps == np.inf:
                continue
            own_tokens = moe_tokens
            n_ph = phantoms[g]
            quiet_tokens = -1.0  # a prompt step's MoE tokens were every missing rank decoding
            if n_ph > 0 and h_steps[g] > 0.0:
                # the missing ranks' tokens: with a prompt here, a mean step's (theirs come
                # independently); without, a mean decode-only step's, their prompts being
                # priced by the slowest rank's step (_phantom_ms)
                dc_steps = h_steps[g] - h_pf_steps[g]
                typical = h_tokens[g] / h_steps[g]
                quiet = h_dc_tokens[g] / dc_steps if dc_steps > 0.0 else typical
                quiet_tokens = own_tokens + n_ph * math.floor(quiet + 0.5)
                moe_tokens += n_ph * math.floor((quiet if not prompt_step else typical) + 0.5)
            elif hi - lo == 1:
                moe_tokens = -1.0  # one rank: every rank of the stage alike (kernels.ffn_ms)
            elif n_ph > 0:
                moe_tokens *= (hi - lo + n_ph) / (hi - lo)
            if steps > 1.0:
                # a run of decode steps stops at the first event that could add a request to a
                # rank's batch, or give an idle rank work
                t_ext = np.inf
                for w in range(lo, hi):
                    if f_on[w]:
                        t_ext = min(t_ext, f_ext[w])
                        continue
                    if busy[w] or hi - lo == 1:
                        continue
                    t_ext = min(
                        t_ext,
                        _next_work(
                            role[w], t, next_arr, n_sched, arr_waiting, t_arr, n_xfer, xfer,
                            t_ready, n_front, busy, t_end, wk, transfer_ms,
                        ),
                    )  # fmt: skip
                if t_ext < np.inf:
                    lat1 = 0.0
                    for w in range(lo, hi):
                        if f_on[w]:
                            lay = wk[w, W_TP : W_DP + 1]
                            is_front = w < n_front
                            one, _ = _step_ms(
                                mv,
                                hv_f if is_front else hv_b,
                                cg_f if is_front else cg_b,
                                cp_f if is_front else cp_b,
                                cd_f if is_front else cd_b,
                                lay,
                                lay[1],
                                0.0,
                                0.0,
                                0.0,
                                f_dc[w],
                                f_ctx[w],
                                group[w],
                                fixed_at,
                                row,
                                scratch,
                                moe_tokens,
                            )
                            lat1 = max(lat1, one)
                    if n_ph > 0:
                        lat1 = _phantom_ms(
                            lat1, n_ph, h_steps[g], h_pf_steps[g], h_pf_lat[g], h_dc_lat[g]
                        )
                    steps = max(1.0, min(steps, math.ceil((t_ext - t) / lat1)))
            g_lat = 0.0
            g_dur = 0.0
            for w in range(lo, hi):
                if not f_on[w]:
                    continue
                n_dec = f_ndec[w]
                dc = f_dc[w]
                is_front = w < n_front
                lay = wk[w, W_TP : W_DP + 1]
                pp = lay[1]
                dctx = f_ctx[w] + 0.5 * (steps - 1.0) * (n_dec / dc if dc > 0.0 else 1.0)
                lat, stage_ms = _step_ms(
                    mv,
                    hv_f if is_front else hv_b,
                    cg_f if is_front else cg_b,
                    cp_f if is_front else cp_b,
                    cd_f if is_front else cd_b,
                    lay,
                    pp,
                    f_pf[w],
                    f_new[w],
                    f_past[w],
                    dc,
                    dctx if f_pf[w] == 0.0 else f_ctx[w],
                    group[w],
                    fixed_at,
                    row,
                    scratch,
                    moe_tokens,
                )
                g_lat = max(g_lat, lat)
                if role[w] == PREFILL and pp > 1.0:
                    g_dur = max(g_dur, stage_ms)  # the first stage takes the next batch
                else:
                    g_dur = max(g_dur, lat * steps)
            # a missing rank's prompt step, for the history: as long as this one with the
            # other missing ranks decoding (their prompts are priced by _phantom_ms)
            g_quiet = g_lat
            if prompt_step and quiet_tokens >= 0.0 and quiet_tokens != moe_tokens:
                g_quiet = 0.0
                for w in range(lo, hi):
                    if f_on[w]:
                        is_front = w < n_front
                        lay = wk[w, W_TP : W_DP + 1]
                        one, _ = _step_ms(
                            mv,
                            hv_f if is_front else hv_b,
                            cg_f if is_front else cg_b,
                            cp_f if is_front else cp_b,
                            cd_f if is_front else cd_b,
                            lay,
                            lay[1],
                            f_pf[w],
                            f_new[w],
                            f_past[w],
                            f_dc[w],
                            f_ctx[w],
                            group[w],
                            fixed_at,
                            row,
                            scratch,
                            quiet_tokens,
                        )
                        g_quiet = max(g_quiet, one)
            if n_ph > 0:
                # the missing ranks: the step lasts as long as theirs would (_phantom_ms); then
                # this step joins the history they are drawn from
                lat_all = _phantom_ms(
                    g_lat, n_ph, h_steps[g], h_pf_steps[g], h_pf_lat[g], h_dc_lat[g]
                )
                h_steps[g] += steps
                h_tokens[g] += steps * own_tokens / (hi - lo)
                if prompt_step:
                    h_pf_steps[g] += steps
                    h_pf_lat[g] += steps * g_quiet
                else:
                    h_dc_lat[g] += steps * g_lat
                    h_dc_tokens[g] += steps * own_tokens / (hi - lo)
                g_dur *= lat_all / g_lat
                g_lat = lat_all
            lock_until[g] = t + g_dur
            for w in range(lo, hi):
                if not f_on[w]:
                    continue
                f_on[w] = False
                decode_now = f_decnow[w]
                n_dec = f_ndec[w]
                busy[w] = True
                t_start[w] = t
                it_steps[w] = steps
                it_dec[w] = decode_now
                it_lat[w] = g_lat
                t_end[w] = t + g_dur
                t_formed[w] = max(t, t_end[w] - g_lat)
                if decode_now:
                    kv_held[w] += n_dec * steps
                    for j in range(n_run[w]):
                        r = run[w, j]
                        if decoding[r]:
                            held[r] += steps
                if decode_now:
                    tokens += n_dec * steps
                if policy == KV_RATIO:
                    ratio[w] = max(ratio_min, ratio[w] - ratio_decay * steps)

        # ---- the next event ------------------------------------------------------------------
        tn = np.inf
        if next_arr < n_sched:
            tn = _next_join(wk, 0, n_front, t) if arr_waiting else t_arr[next_arr]
        for w in range(n_w):
            if busy[w]:
                tn = min(tn, t_end[w])
        for k in range(n_xfer):
            if t_ready[xfer[k]] > t:
                tn = min(tn, t_ready[xfer[k]])
        if xfer_waiting:
            tn = min(tn, _next_join(wk, n_front, n_w, t))
        if tn == np.inf:
            status = OK if next_arr >= n_sched else NO_FIT  # arrivals no worker takes
            for r in range(n):
                if state[r] != DONE and state[r] != NOT_ARRIVED:
                    status = NO_FIT  # waiting, nothing running: it never fits
                    break
            break
        if completions >= stat_from:
            span = tn - t
            stats[T_RUNNING] += span * total_run
            if n_back > 0:
                back_run = 0
                for v in range(n_front, n_w):
                    back_run += n_run[v]
                stats[T_RUNNING_BACK] += span * back_run
            stats[T_WAITING] += span * total_wait
            stats[T_SPAN] += span
        t = tn
        stats[T_EVENTS] = event + 1

        # ---- iterations that end now ---------------------------------------------------------
        for w in range(n_w):
            if not busy[w] or t_end[w] > t:
                continue
            busy[w] = False
            t_free[w] = t
            busy_to[w] = t
            rl = role[w]
            steps = it_steps[w]
            j = 0
            while j < n_run[w]:
                r = run[w, j]
                finished = False
                if take[r] > 0.0:
                    done_pf[r] += take[r]
                    take[r] = 0.0
                    if done_pf[r] >= pf_target[r]:
                        if rl == AGG:
                            if gen[r] == 0.0:
                                gen[r] = 1.0  # the prefill step emits the first token
                                tokens += 1.0
                                t_first[r] = t
                            finished = gen[r] >= osl[r]
                        else:
                            # prefill worker: the KV goes to a decode worker
                            n_run[w] -= 1
                            total_run -= 1
                            for k in range(j, n_run[w]):
                                run[w, k] = run[w, k + 1]
                            gen[r] = 1.0
                            tokens += 1.0
                            state[r] = TRANSFER
                            t_ready[r] = t_start[w] + it_lat[w] + wk[w, W_TRANSFER_MS]
                            xfer[n_xfer] = r
                            n_xfer += 1
                            continue
                elif decoding[r] and it_dec[w]:
                    decoding[r] = False
                    gen[r] += steps
                    finished = gen[r] >= osl[r]
                if finished:
                    n_run[w] -= 1
                    total_run -= 1
                    # keep the admission order of the others (preemption takes the newest)
                    for k in range(j, n_run[w]):
                        run[w, k] = run[w, k + 1]
                    kv_held[w] -= held[r]
                    kv_resv[w] -= resv[r]
                    held[r] = 0.0
                    resv[r] = 0.0
                    state[r] = DONE
                    t_done[r] = t
                    order[completions] = r
                    completions += 1
                    if clients > 0 and r + clients < n:
                        r2 = r + clients
                        t_arr[r2] = t
                        # the client's next request: same front worker in aggregated serving
                        _enqueue_new(
                            r2,
                            worker[r] if n_back == 0 else -1,
                            n_front,
                            rr_front,
                            isl,
                            pf_target,
                            done_pf,
                            prefix_hit,
                            state,
                            worker,
                            front_of,
                            nxt,
                            head,
                            tail,
                            n_wait,
                        )
                        t_queued[r2] = t
                        if n_back > 0:
                            rr_front += 1
                        total_wait += 1
                    continue
                j += 1

        # ---- transfers that arrive now, lowest request id first -------------------------------
        xfer_waiting = False
        while True:
            k = -1
            for q in range(n_xfer):
                if t_ready[xfer[q]] <= t and (k < 0 or xfer[q] < xfer[k]):
                    k = q
            if k < 0:
                break
            r = xfer[k]
            # the accepting decode worker with the fewest requests
            best = _least_loaded(wk, n_run, n_wait, n_front, n_w, t, wk[front_of[r], W_OFF_MS])
            if best < 0 and osl[r] > 1.0:
                xfer_waiting = True  # until a decode worker joins
                break
            n_xfer -= 1
            xfer[k] = xfer[n_xfer]
            f = front_of[r]
            busy_to[f] = max(busy_to[f], t)
            kv_held[f] -= held[r]
            kv_resv[f] -= resv[r]
            held[r] = 0.0
            resv[r] = 0.0
            if osl[r] <= 1.0:
                state[r] = DONE
                t_first[r] = t
                t_done[r] = t
                order[completions] = r
                completions += 1
                if clients > 0 and r + clients < n:
                    r2 = r + clients
                    t_arr[r2] = t
                    _enqueue_new(
                        r2,
                        -1,
                        n_front,
                        rr_front,
                        isl,
                        pf_target,
                        done_pf,
                        prefix_hit,
                        state,
                        worker,
                        front_of,
                        nxt,
                        head,
                        tail,
                        n_wait,
                    )
                    t_queued[r2] = t
                    rr_front += 1
                    total_wait += 1
                continue
            worker[r] = best
            state[r] = WAITING
            t_queued[r] = t
            if tail[best] >= 0:
                nxt[tail[best]] = r
            else:
                head[best] = r
            tail[best] = r
            nxt[r] = -1
            n_wait[best] += 1
            total_wait += 1

        # ---- arrivals: to the accepting front workers in turn -----------------------------------
        arr_waiting = False
        while next_arr < n_sched and t_arr[next_arr] <= t:
            w = _next_in_turn(wk, rr_front, n_front, t)
            if w < 0:
                arr_waiting = True  # until a front worker joins
                break
            r = next_arr
            next_arr += 1
            _enqueue_new(
                r,
                w,
                n_front,
                rr_front,
                isl,
                pf_target,
                done_pf,
                prefix_hit,
                state,
                worker,
                front_of,
                nxt,
                head,
                tail,
                n_wait,
            )
            t_queued[r] = t
            rr_front = w + 1
            total_wait += 1
        if completions >= stop_after:
            status = OK
            break
    stats[T_TOKENS] = tokens
    stats[T_PREEMPTIONS] = preemptions
    stats[T_END] = t
    stats[T_PEAK_RUNNING] = peak_run
    if drained is not None:
        drained[:] = busy_to
    return status


@njit(cache=True, nogil=True)
def _step_ms(
    mv: np.ndarray,
    hv: np.ndarray,
    cg: np.ndarray,
    cp: np.ndarray,
    cd: np.ndarray,
    lay: np.ndarray,
    pp: float,
    pf_seqs: float,
    pf_new: float,
    pf_past: float,
    dc: float,
    ctx: float,
    g: int,
    fixed_at: Dict,
    row: np.ndarray,
    scratch: np.ndarray,
    moe_tokens: float = -1.0,
) -> tuple[float, float]:
    """``perf.kernels.step_ms`` (latency_ms, stage_ms) of a step of step group ``g`` on layout
    ``lay``, bit for bit: the terms its contexts do not enter come from ``fixed_at`` under the
    step's ``step_fixed_key``, computed on that key's first step. ``moe_tokens``: the tokens the
    MoE layers see from all attention-DP ranks (``kernels.ffn_ms``)."""
    a, b, c, d, e, f_ = step_fixed_key(mv, pf_seqs, pf_new, pf_past, dc, moe_tokens)
    key = (float(g), a, b, c, d, e, f_)
    f = fixed_at.get(key)
    if f is None:
        f = np.empty(FIXED_SLOTS)
        step_fixed(
            mv,
            hv,
            cg,
            cp,
            cd,
            lay[0],
            pp,
            lay[2],
            lay[3],
            pf_seqs,
            pf_new,
            pf_past,
            dc,
            row,
            scratch,
            f,
            moe_tokens,
        )
        fixed_at[key] = f
    return step_ms_fixed(mv, hv, cg, cp, cd, lay[0], pp, pf_seqs, pf_new, pf_past, dc, ctx, f, row)


@njit(cache=True, nogil=True)
def _phantom_ms(
    lat: float,
    n_ph: int,
    steps: float,
    pf_steps: float,
    pf_lat: float,
    dc_lat: float,
) -> float:
    """The expected latency (ms) of a step whose simulated ranks take ``lat`` when ``n_ph``
    more ranks of the worker are not simulated: each of those carries prompt tokens with the
    probability ``q`` that the simulated ranks' steps did so far (``pf_steps`` of ``steps``) and
    then takes their mean such step (``pf_lat``, summed latency, each as it would have been with
    the missing ranks decoding), else their mean decode-only step (``dc_lat``, summed); the step
    lasts as long as the slowest rank. Mean-field: one latency for all of the missing ranks, so
    the maximum over them is taken at their mean."""
    if steps <= 0.0:
        return lat
    q = pf_steps / steps
    any_pf = 1.0 - (1.0 - q) ** n_ph
    lat_pf = pf_lat / pf_steps if pf_steps > 0.0 else 0.0
    lat_dc = dc_lat / (steps - pf_steps) if steps > pf_steps else 0.0
    return (1.0 - any_pf) * max(lat, lat_dc) + any_pf * max(lat, lat_pf)


@njit(cache=True, nogil=True)
def _next_work(
    rl: int,
    after: float,
    next_arr: int,
    n_sched: int,
    arr_waiting: bool,
    t_arr: np.ndarray,
    n_xfer: int,
    xfer: np.ndarray,
    t_ready: np.ndarray,
    n_front: int,
    busy: np.ndarray,
    t_end: np.ndarray,
    wk: np.ndarray,
    transfer_ms: float,
) -> float:
    """When a worker of role ``rl`` could next be given a request (ms; inf: no such event
    known): the next arrival for a front worker; for a decode worker the first transfer
    ready after ``after``, a busy prefill worker's KV out, or the next arrival's transfer."""
    t_ext = np.inf
    if rl != DECODE:
        if next_arr < n_sched and not arr_waiting:
            t_ext = t_arr[next_arr]
        return t_ext
    for k in range(n_xfer):
        if t_ready[xfer[k]] > after:
            t_ext = min(t_ext, t_ready[xfer[k]])
    for v in range(n_front):
        if busy[v]:
            t_ext = min(t_ext, t_end[v] + wk[v, W_TRANSFER_MS])
    if next_arr < n_sched:
        t_ext = min(t_ext, t_arr[next_arr] + transfer_ms)
    return t_ext


@njit(cache=True, nogil=True)
def _accepting(wk: np.ndarray, w: int, t: float) -> bool:
    return bool(wk[w, W_ON_MS] <= t < wk[w, W_OFF_MS])


@njit(cache=True, nogil=True)
def _next_in_turn(wk: np.ndarray, start: int, n_front: int, t: float) -> int:
    """The first front worker accepting at ``t`` from ``start`` on, cyclically (-1: none)."""
    for i in range(n_front):
        w = (start + i) % n_front
        if _accepting(wk, w, t):
            return w
    return -1


@njit(cache=True, nogil=True)
def _least_loaded(
    wk: np.ndarray,
    n_run: np.ndarray,
    n_wait: np.ndarray,
    lo: int,
    hi: int,
    t: float,
    sender_off: float,
) -> int:
    """The worker of ``lo..hi - 1`` with the fewest requests, the first on a tie, among those
    accepting at ``t`` or, for a sender that stopped accepting at ``sender_off``, those joined
    and stopped no earlier."""
    best = -1
    load = 1 << 62
    for v in range(lo, hi):
        lv = n_run[v] + n_wait[v]
        joined = wk[v, W_ON_MS] <= t
        if lv < load and joined and (t < wk[v, W_OFF_MS] or wk[v, W_OFF_MS] >= sender_off):
            best = v
            load = lv
    return best


@njit(cache=True, nogil=True)
def _next_join(wk: np.ndarray, lo: int, hi: int, t: float) -> float:
    """When the next of workers ``lo..hi - 1`` starts accepting after ``t`` (inf: never)."""
    out = np.inf
    for w in range(lo, hi):
        if wk[w, W_ON_MS] > t:
            out = min(out, wk[w, W_ON_MS])
    return out


@njit(cache=True, nogil=True)
def _enqueue_new(
    r: int,
    w: int,
    n_front: int,
    rr_front: int,
    isl: np.ndarray,
    pf_target: np.ndarray,
    done_pf: np.ndarray,
    prefix_hit: float,
    state: np.ndarray,
    worker: np.ndarray,
    front_of: np.ndarray,
    nxt: np.ndarray,
    head: np.ndarray,
    tail: np.ndarray,
    n_wait: np.ndarray,
) -> None:
    """A new request joins the queue of front worker ``w`` (``-1``: the next in turn)."""
    if w < 0:
        w = rr_front % n_front
    worker[r] = w
    front_of[r] = w
    pf_target[r] = isl[r]
    done_pf[r] = math.floor(isl[r] * prefix_hit)
    state[r] = WAITING
    nxt[r] = -1
    if tail[w] >= 0:
        nxt[tail[w]] = r
    else:
        head[w] = r
    tail[w] = r
    n_wait[w] += 1


@njit(cache=True, nogil=True)
def summarise(
    arrival_ms: np.ndarray,
    t_first: np.ndarray,
    t_done: np.ndarray,
    osl: np.ndarray,
    order: np.ndarray,
    lo: int,
    hi: int,
    out: np.ndarray,
) -> int:
    """TTFT and TPOT (mean, p50, p90, p99) over the requests completed ``lo``..``hi - 1`` (in
    completion order) into ``out[0:8]``; returns how many were counted."""
    out[:] = 0.0
    m = 0
    for k in range(lo, hi):
        if order[k] >= 0:
            m += 1
    if m == 0:
        return 0
    tt = np.zeros(m)
    tq = np.zeros(m)
    i = 0
    for k in range(lo, hi):
        r = order[k]
        if r < 0:
            continue
        tt[i] = t_first[r] - arrival_ms[r]
        tq[i] = (t_done[r] - t_first[r]) / (osl[r] - 1.0) if osl[r] > 1.0 else 0.0
        i += 1
    out[0] = tt.mean()
    out[1] = np.percentile(tt, 50.0)
    out[2] = np.percentile(tt, 90.0)
    out[3] = np.percentile(tt, 99.0)
    out[4] = tq.mean()
    out[5] = np.percentile(tq, 50.0)
    out[6] = np.percentile(tq, 90.0)
    out[7] = np.percentile(tq, 99.0)
    return m
