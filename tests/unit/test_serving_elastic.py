"""Workers that come and go (``pdplanner.planner.serving.elastic``): requests wait for a worker that
joins late, a worker that stops accepting drains what it holds, and aggregated and disaggregated
workers can take over from each other in one replay."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pdplanner.planner.catalog import default_gpus, default_models, load_engine
from pdplanner.planner.perf.params import PerfContext
from pdplanner.planner.serving.elastic import WorkerSpan, simulate_elastic, with_chunk
from pdplanner.planner.serving.scheduler import scheduler_for
from pdplanner.planner.serving.simulate import REQUEST_OVERHEAD_MS, Trace
from pdplanner.planner.types import Parallelism

LINK = 50e9
NO_OVERHEAD = {"agg": 0.0, "disagg": 0.0}


@pytest.fixture(scope="module")
def ctx() -> PerfContext:
    engine = load_engine("vllm")
    return PerfContext.build(
        default_models().get("llama-3.1-8b"), default_gpus().get("h100-sxm"), engine, "bf16", "bf16"
    )


def trace(times: list[float], isl: float = 1000.0, osl: float = 50.0) -> Trace:
    n = len(times)
    return Trace(np.array(times), np.full(n, isl), np.full(n, osl))


def test_requests_wait_for_a_worker_that_joins_late(ctx: PerfContext) -> None:
    sched = scheduler_for(ctx.engine)
    one = Parallelism(1, 1, 1, 1)
    early = simulate_elastic(
        ctx, ctx, sched, [WorkerSpan("agg", one, 64, 0.0)], trace([1.0, 1.1]), LINK, NO_OVERHEAD
    )
    late = simulate_elastic(
        ctx, ctx, sched, [WorkerSpan("agg", one, 64, 5.0)], trace([1.0, 1.1]), LINK, NO_OVERHEAD
    )
    assert early.ok and late.ok
    print(f"\nTTFT joined at 0 s: {early.ttft_ms.round(1)}; joined at 5 s: {late.ttft_ms.round(1)}")
    # both wait for the join, then run as they would have
    np.testing.assert_allclose(late.ttft_ms - early.ttft_ms, [4000.0, 3900.0], atol=60.0)
    assert np.all(late.ttft_ms >= [4000.0, 3900.0])


def test_a_worker_that_stops_accepting_drains_and_gets_nothing_new(ctx: PerfContext) -> None:
    """Two prefill and two decode workers; one of each stops accepting at 2 s. Everyone is
    served; the stopped ones last held work after 2 s only for requests they had before."""
    sched = scheduler_for(ctx.engine)
    one = Parallelism(1, 1, 1, 1)
    spans = [
        WorkerSpan("prefill", one, 1, 0.0, 2.0),
        WorkerSpan("prefill", one, 1, 0.0),
        WorkerSpan("decode", one, 64, 0.0, 2.0),
        WorkerSpan("decode", one, 64, 0.0),
    ]
    times = list(np.arange(0.0, 4.0, 0.05))
    run = simulate_elastic(ctx, ctx, sched, spans, trace(times, osl=400.0), LINK, NO_OVERHEAD)
    assert run.ok and np.isfinite(run.ttft_ms).all()
    print(f"\nlast busy (s): {run.drained_s.round(2)}")
    # the stopped decode worker drains its answers past 2 s, then idles
    assert 2.0 < run.drained_s[2] < run.drained_s[3]
    # the stopped prefill worker finishes its last prompt soon after 2 s
    assert run.drained_s[0] < 2.5 < run.drained_s[1]


def test_a_second_prefill_worker_takes_the_queue_one_cannot_clear(ctx: PerfContext) -> None:
    """A 1,000-token prompt takes one TP1 prefill worker of Llama-3.1-8B about 24 ms. Every
    50 ms (as in the drain test above) one worker idles half the time and evenly spaced prompts
    never queue, so a second changes nothing (early TTFT 27.9 ms with two of each against 27.4
    with one: where the first token meets a decode iteration, not queueing). Every 20 ms one
    worker falls behind by a few ms a prompt and its queue grows for as long as they come; two,
    fed in turn, each see a prompt every 40 ms and never queue. The decode pool has slots for
    every request, so only the prefill workers differ."""
    sched = scheduler_for(ctx.engine)
    one = Parallelism(1, 1, 1, 1)
    alone = simulate_elastic(
        ctx,
        ctx,
        sched,
        [WorkerSpan("prefill", one, 1, 0.0), WorkerSpan("decode", one, 64, 0.0)],
        trace([0.0], osl=400.0),
        LINK,
        NO_OVERHEAD,
    )
    unloaded = float(alone.ttft_ms[0])
    times = list(np.arange(0.0, 1.5, 0.02))
    prefill, decode = WorkerSpan("prefill", one, 1, 0.0), WorkerSpan("decode", one, 256, 0.0)
    single = simulate_elastic(
        ctx, ctx, sched, [prefill, decode], trace(times, osl=400.0), LINK, NO_OVERHEAD
    )
    double = simulate_elastic(
        ctx, ctx, sched, [prefill, prefill, decode], trace(times, osl=400.0), LINK, NO_OVERHEAD
    )
    assert single.ok and double.ok
    print(
        f"\nunloaded TTFT {unloaded:.1f} ms; a prompt every 20 ms: one prefill worker mean "
        f"{single.ttft_ms.mean():.1f} ms (last {single.ttft_ms[-1]:.1f}), two "
        f"{double.ttft_ms.mean():.1f} ms (last {double.ttft_ms[-1]:.1f})"
    )
    assert 15.0 < unloaded < 40.0  # the premise: one prompt takes longer than the 20 ms gap
    # one worker: the queue grows by (prefill - gap) a prompt, so the wait grows over the run
    assert single.ttft_ms[-1] > single.ttft_ms[len(times) // 2] + 50.0
    assert single.ttft_ms[-1] > 4 * unloaded
    # two: no queue; a prompt waits at most for the decode iteration under way to end
    assert double.ttft_ms.max() < 2 * unloaded
    assert double.ttft_ms.mean() < single.ttft_ms.mean() / 2


def test_an_aggregated_worker_runs_its_own_chunk_budget(ctx: PerfContext) -> None:
    """A span's ``chunk_tokens`` sets that worker's chunked prefill: the same run as with the
    engine-wide setting (``with_chunk``), and chunks of 512 tokens give other first-token times
    than whole 4,000-token prompts."""
    sched = scheduler_for(ctx.engine)
    one = Parallelism(1, 1, 1, 1)
    t = trace(list(np.arange(0.0, 3.0, 0.3)), isl=4000.0, osl=100.0)
    runs = {}
    for chunk in (512, 0):
        per_worker = simulate_elastic(
            ctx, ctx, sched, [WorkerSpan("agg", one, 16, 0.0, chunk_tokens=chunk)], t, LINK
        )
        engine_wide = simulate_elastic(
            ctx, ctx, with_chunk(sched, chunk), [WorkerSpan("agg", one, 16, 0.0)], t, LINK
        )
        assert per_worker.ok and engine_wide.ok
        np.testing.assert_array_equal(per_worker.ttft_ms, engine_wide.ttft_ms)
        np.testing.assert_array_equal(per_worker.tpot_ms, engine_wide.tpot_ms)
        runs[chunk] = per_worker
    print(
        f"\nmean TTFT: chunks of 512 {runs[512].ttft_ms.mean():.1f} ms, whole prompts "
        f"{runs[0].ttft_ms.mean():.1f} ms"
    )
    # a 4,000-token prompt in chunks of 512 takes 8 iterations: its first token comes later
    assert runs[512].ttft_ms.mean() > runs[0].ttft_ms.mean() + 5.0


def test_aggregated_and_disaggregated_workers_take_over_from_each_other(
    ctx: PerfContext,
) -> None:
    """Agg workers until 3 s, then a prefill and a decode worker: every request is served,
    those arriving after the switch with the disaggregated overhead."""
    sched = scheduler_for(ctx.engine)
    one = Parallelism(1, 1, 1, 1)
    spans = [
        WorkerSpan("agg", one, 64, 0.0, 3.0),
        WorkerSpan("prefill", one, 1, 3.0),
        WorkerSpan("decode", one, 64, 3.0),
    ]
    times = list(np.arange(0.0, 6.0, 0.1))
    run = simulate_elastic(ctx, ctx, sched, spans, trace(times), LINK)
    assert run.ok and np.isfinite(run.ttft_ms).all() and np.isfinite(run.tpot_ms).all()
    after = np.array(times) >= 3.0
    # each request pays the overhead of the mode that served it
    assert run.ttft_ms[after].min() >= REQUEST_OVERHEAD_MS["disagg"]
    assert run.ttft_ms[~after].min() >= REQUEST_OVERHEAD_MS["agg"]
    assert run.ttft_ms[~after].max() < REQUEST_OVERHEAD_MS["disagg"]
    assert run.drained_s[0] >= 2.9 and run.drained_s[1] > 3.0
    assert not math.isnan(run.drained_s[2])
