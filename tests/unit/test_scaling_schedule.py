"""Elastic scaling schedules: the shipped traces, start-up delay, cooldown, the GPU limit."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from pdplanner.planner.catalog import default_gpus, default_models
from pdplanner.planner.errors import InvalidInputError, SearchCancelled
from pdplanner.planner.estimate import estimate
from pdplanner.planner.scaling import replay as replay_module
from pdplanner.planner.scaling import traffic
from pdplanner.planner.scaling.capacity import Shape
from pdplanner.planner.scaling.replay import (
    MAX_REPLAY_REQUESTS,
    MAX_REPLAY_WORK,
    Span,
    check_replay_work,
    draw_arrivals,
    replay_ranks,
    simulate,
    static_spans,
)
from pdplanner.planner.scaling.schedule import (
    PoolCount,
    ScheduleRequest,
    ScheduleResult,
    _in_use,
    _lifetimes,
    _Planner,
    _pool_timeline,
    plan_schedule,
    shape_from_dict,
    simulate_spans,
    simulate_xpyd,
    validate_request,
)
from pdplanner.planner.scaling.traffic import Interval, TrafficSeries
from pdplanner.planner.serving.elastic import with_chunk
from pdplanner.planner.serving.scheduler import SchedulerSettings
from pdplanner.planner.types import EstimateRequest, PoolSpec, Slo, Workload

TRACES = Path(__file__).resolve().parents[2] / "pdplanner" / "planner" / "scaling" / "traces"
SLO = Slo(ttft_ms=1000, tpot_ms=30, percentile="p99")
MIX = (Workload(1500, 250, 0.7), Workload(6000, 400, 0.3))


def series(rates: list[float], step_s: float = 300.0) -> TrafficSeries:
    return TrafficSeries(tuple(Interval(k * step_s, step_s, r, MIX) for k, r in enumerate(rates)))


def request(s: TrafficSeries, **kw: object) -> ScheduleRequest:
    """A schedule request; disaggregated serving only unless ``modes`` says otherwise (the
    tests of agg intervals ask for both)."""
    base: dict[str, object] = {
        "model": "llama-3.1-70b",
        "gpu": "h100-sxm",
        "gpus": 128,
        "series": s,
        "slo": SLO,
        "modes": ("disagg",),
    }
    return ScheduleRequest(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.slow
# a day of traffic (about a million requests) replayed three times: 77 s with the kernels
# compiled, 180 s compiling them first, on a shared 2-core machine
@pytest.mark.timeout(600)
def test_diurnal_schedule_meets_the_slo_with_fewer_gpu_hours_than_static_peak() -> None:
    r = plan_schedule(request(traffic.load(TRACES / "diurnal-day.csv"), modes=("agg", "disagg")))
    t = r.totals()
    print(
        f"\ndiurnal day, llama-3.1-70b on h100-sxm, TTFT 1000 ms / TPOT 30 ms at p99:\n"
        f"  schedule     {t['gpu_hours']:.1f} GPU-h, SLO met by {t['slo_attainment']:.4%}\n"
        f"  static peak  {t['static_peak_gpu_hours']:.1f} GPU-h, "
        f"{t['static_peak_slo_attainment']:.4%}\n"
        f"  static mean  {t['static_mean_gpu_hours']:.1f} GPU-h, "
        f"{t['static_mean_slo_attainment']:.4%}\n"
        f"  {len(r.events)} events, {r.replay.ttft_ms.size if r.replay else 0} requests replayed, "
        f"{t['agg_intervals']} of {len(r.intervals)} intervals aggregated, "
        f"{t['draining_gpu_hours']:.2f} GPU-h draining"
    )
    assert t["slo_attainment"] >= 0.99
    assert t["gpu_hours"] < t["static_peak_gpu_hours"]
    assert t["static_peak_slo_attainment"] >= 0.99
    # sized for the mean, the same shapes fall behind at the afternoon peak
    assert t["static_mean_slo_attainment"] < t["slo_attainment"]
    assert not t["violations"]
    # workers follow the day: fewest at the 04:00 trough, most near the 16:00 peak
    gpus = np.array([iv.gpus for iv in r.intervals])
    assert gpus[48] < gpus[192]


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank (as Spearman's correlation takes them)."""
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2.0)[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def test_prefill_decode_ratio_follows_the_shifting_mix() -> None:
    """The shifting-mix day: about 12 req/s all day (5% noise) while 8,000-token prompts
    replace 600-token ones (share 0 to 1; OSL 300), mean ISL 600 to 7,900. More prompt work
    gets more prefill capacity, stated where it holds:

    * per interval, prefill GPUs rise with mean ISL (Spearman 0.90);
    * per ISL regime (octave of mean ISL; a regime shares worker shapes) the mean prefill GPUs
      never fall (4.0, 10.9, 22.7, 38.6, 48.0 from the chat-like to the long-prompt regime), and
      the mean P:D GPU ratio of the long-prompt regimes is at least 3x the chat-like one's
      (1.00, 1.36, 2.84, 3.30, 3.00). The ratio itself fell once, 3.30 to 3.00, when the
      long-prompt regime's decode pool moved to one 16-GPU TP8 PP2 worker (a whole-worker step,
      below); until the search split the SLO's tail between a request's slot and prompt waits
      (``queueing.split_percentile``) it read 1.00, 1.36, 2.84, 3.29, 3.42;
    * no interval holds prefill capacity of more than 5 times its prompt work (prefill
      utilisation 0.23-0.72): the capacity tracks demand, not a shape's quirks.

    Not per interval's ratio (Spearman with mean ISL only 0.31), for two reasons that are
    right: workers come in whole steps (prefill workers of 4-16 GPUs, decode of 4-8), so at a
    steady rate one worker more or less in a pool moves the ratio by up to 2x, and the rate's
    noise flips the decode pool between one and two 8-GPU workers; and decode needs grow with
    ISL as well (a slot holds the whole context: the batch meeting TPOT 30 ms falls from 136
    sequences at context 750 to 43 at 8,150), so the ratio rises less than prompt work does.
    The binding constraint of the prefill pool is the p99 TTFT, not its throughput (each
    regime's highest prediction 870-990 ms against 1,000, at utilisation 0.23-0.72): once a
    few percent of prompts are long, the p99 request is a long prompt whose compute time
    leaves little room to queue, and short prompts queue behind long ones. With the search's
    own shapes (ranked at one mix and rate by its load model) the 1,448-2,896 regime once ran
    16 TP4 prefill workers at 14% utilisation (regime ratio 5.72, above the longer-prompt
    regimes': all three checks failed); since the search charges disaggregated TTFT its
    request overhead its shapes pass them (per-interval ratio Spearman 0.64), on 1,265.7
    planned GPU-hours against these shapes' 1,129.7: the long-prompt regime's prefill pool
    then holds 64 GPUs at utilisation 0.34-0.54 where 48 serve it (99.97% of its requests
    meet the SLO in the replay, 99.899% over the day)."""
    s = traffic.load(TRACES / "mix-shift-day.csv")
    r = plan_schedule(request(s, simulate=False))
    ivs = r.intervals
    pre = np.array([iv.prefill.gpus for iv in ivs])
    dec = np.array([iv.decode.gpus for iv in ivs])
    ratio = pre / dec
    isl = np.array([iv.mean_isl for iv in ivs])
    rho = np.array([iv.prefill_utilisation for iv in ivs])
    regime = np.round(np.log2(isl))
    ttft = np.array([iv.predicted_ttft_ms for iv in ivs])
    print(
        "\nregime  ISL        long      prefill layout           P GPUs  decode layout"
        "            D GPUs  P:D   prefill util  TTFT ms"
    )
    means = []
    for k in np.unique(regime):
        m = regime == k
        j = int(np.nonzero(m)[0][0])
        long = [sum(w.weight for w in s.intervals[i].mix if w.isl > 1000) for i in np.nonzero(m)[0]]
        means.append(ratio[m].mean())
        print(
            f"2^{k:<4.0f} {isl[m].min():5.0f}-{isl[m].max():<5.0f} {min(long):.2f}-{max(long):.2f} "
            f"{ivs[j].prefill.shape.label():24} {pre[m].mean():6.1f}  "
            f"{ivs[j].decode.shape.label():24} {dec[m].mean():6.1f}  {means[-1]:.2f}  "
            f"{rho[m].min():.2f}-{rho[m].max():.2f}     "
            f"{ttft[m].min():.0f}-{ttft[m].max():.0f}"
        )
    rho_pre = spearman(isl, pre)
    rho_ratio = spearman(isl, ratio)
    print(
        f"Spearman with mean ISL: prefill GPUs {rho_pre:.2f}, P:D ratio {rho_ratio:.2f}; "
        f"prefill utilisation {rho.min():.2f}-{rho.max():.2f}"
    )
    assert rho_pre >= 0.8
    pre_means = [pre[regime == k].mean() for k in np.unique(regime)]
    assert np.all(np.diff(pre_means) >= 0.0), pre_means
    assert min(means[-2:]) >= 3.0 * means[0], means
    assert rho.min() >= 0.2
    # every interval is served; only a layout change whose old and new workers overlap may
    # be over the limit, and then it is named at the change
    changes = {e.effective_s for e in r.events if e.action == "reconfigure"}
    for v in r.violations:
        print(f"violation: interval {v.interval}: {v.reason}")
        assert "starting up, serving and draining" in v.reason
        assert any(v.start_s <= t <= v.start_s + 300.0 for t in changes)
    # a change of worker shape is an event that needs a restart; a count change is not
    for e in r.events:
        assert e.restart == (e.action == "reconfigure" or e.reason == "initial deployment")


def test_new_workers_launch_a_startup_delay_before_the_load_arrives() -> None:
    """A surge from 2 to 28 req/s that the quiet intervals' workers cannot carry (at 14 req/s
    one TP4 PP4 prefill worker and one TP8 decode worker, the regime's cheapest shapes, serve
    both rates and nothing scales)."""
    s = series([2, 2, 2, 28, 28, 28, 28])
    startup = 420.0
    r = plan_schedule(request(s, startup_s=startup, cooldown_s=0))
    ups = [e for e in r.events if e.action == "scale_up" and e.effective_s == 900.0]
    assert ups, r.events
    for e in ups:
        assert e.at_s == 900.0 - startup
    # every worker serving the surge was launched in time
    for sp in r.spans:
        assert sp.on_s - sp.launch_s == pytest.approx(startup)
    assert r.replay is not None
    surge = r.replay.attainment_by_interval(len(s.intervals))[3]
    # the same workers launched only when the surge starts serve it late
    late = [
        dataclasses.replace(sp, on_s=sp.on_s + startup) if sp.on_s > 0 else sp for sp in r.spans
    ]
    pl = _Planner(request(s), default_models(), default_gpus())
    rr = simulate(
        late, draw_arrivals(s, 0), pl.ctx, pl.dctx, pl.sched, pl.link, SLO.ttft_ms, SLO.tpot_ms
    )
    late_surge = rr.attainment_by_interval(len(s.intervals))[3]
    print(
        f"\nsurge interval: launched early {surge:.4f} met the SLO, "
        f"launched at the surge {late_surge:.4f}"
    )
    assert surge >= 0.99
    assert late_surge < surge - 0.05


def _downs_after_ups(r: ScheduleResult) -> list[float]:
    gaps = []
    for pool in ("prefill", "decode", "agg"):
        last_up = None
        for e in (e for e in r.events if e.pool == pool):
            if e.action == "scale_up" and e.reason != "initial deployment":
                last_up = e.effective_s
            elif e.action == "scale_down" and last_up is not None:
                gaps.append(e.effective_s - last_up)
    return gaps


def test_cooldown_holds_workers_after_a_spike() -> None:
    s = series([2, 14, 2, 2, 2, 2, 2, 2])
    no_cool = plan_schedule(request(s, cooldown_s=0, simulate=False))
    cool = plan_schedule(request(s, cooldown_s=900, simulate=False))
    assert min(_downs_after_ups(no_cool)) == 300.0  # straight down after the spike
    gaps = _downs_after_ups(cool)
    assert gaps and min(gaps) >= 900.0
    # held through the cooldown: the two intervals after the spike keep its workers
    assert cool.intervals[2].gpus == cool.intervals[1].gpus == cool.intervals[3].gpus
    assert cool.gpu_hours > no_cool.gpu_hours


def test_demand_over_the_gpu_limit_names_the_intervals_that_miss() -> None:
    s = series([2, 3, 40, 45, 3])
    r = plan_schedule(request(s, gpus=32, cooldown_s=0))
    named = {v.interval for v in r.violations}
    assert named == {2, 3}
    for v in r.violations:
        assert "limit is 32" in v.reason
        assert r.intervals[v.interval].violation == v.reason
    assert all(iv.gpus <= 32 for iv in r.intervals)
    assert r.totals()["violations"][0]["start_s"] == 600.0
    assert r.replay is not None
    att = r.replay.attainment_by_interval(5)
    assert att[3] < 0.9 and att[0] > 0.99


def test_bad_schedule_requests_name_the_field() -> None:
    s = series([1, 2])
    with pytest.raises(InvalidInputError) as e:
        plan_schedule(request(s, startup_s=-1))
    assert e.value.field == "startup_s"
    with pytest.raises(InvalidInputError) as e:
        plan_schedule(request(s, min_workers=0))
    assert e.value.field == "min_workers"
    with pytest.raises(InvalidInputError) as e:
        plan_schedule(request(TrafficSeries(())))
    assert e.value.field == "trace"
    with pytest.raises(InvalidInputError) as e:
        plan_schedule(request(TrafficSeries(()), startup_s=-1, min_workers=0, cooldown_s=math.inf))
    assert [f for f, _ in e.value.violations] == ["startup_s", "cooldown_s", "min_workers", "trace"]
    # a class longer than llama-3.1-70b's 131,072 tokens, in the second interval
    long = Interval(300.0, 300.0, 1.0, (Workload(1500, 250, 0.5), Workload(200_000, 400, 0.5)))
    with pytest.raises(InvalidInputError) as e:
        plan_schedule(request(TrafficSeries((s.intervals[0], long))))
    assert e.value.field == "series.intervals[1].mix[1].isl"
    assert "context of 131,072 tokens" in e.value.reason


@pytest.mark.slow  # both modes searched, then replayed: 3-6 s
def test_agg_intervals_where_aggregated_serving_needs_fewer_gpus() -> None:
    """A quiet half hour then a busy hour and a half: aggregated workers serve the quiet part
    on fewer GPUs than the smallest xPyD pair, disaggregated serving the busy part; the switch
    is a restart, both modes drain and start side by side, and the replay still meets the SLO."""
    s = series([2.0] * 6 + [14.0] * 18)
    r = plan_schedule(request(s, modes=("agg", "disagg"), cooldown_s=0))
    modes = [iv.mode for iv in r.intervals]
    print(f"\nmodes: {''.join('A' if m == 'agg' else 'D' for m in modes)}")
    for iv in r.intervals:
        print(f"  {iv.start_s:6.0f} s {iv.mode:6} {iv.gpus:3} GPUs ({iv.mode_reason})")
    assert modes[0] == "agg" and modes[-1] == "disagg"
    for iv in r.intervals:
        d = iv.to_dict()
        assert d["mode"] == iv.mode
        if iv.mode == "agg":
            assert d["agg"]["workers"] >= 1 and d["prefill"] is None and d["decode"] is None
            # the searched chunked-prefill budget travels with the layout, and a stored
            # schedule's JSON gives it back to the replay of `pdplanner simulate`
            assert iv.agg is not None and iv.agg.shape.chunk_tokens is not None
            assert d["agg"]["layout"]["chunk_tokens"] == iv.agg.shape.chunk_tokens
            assert shape_from_dict("agg", d["agg"]["layout"]) == iv.agg.shape
        else:
            assert d["agg"] is None and d["prefill"]["workers"] >= 1
        # a mode is never the more expensive one unless a switch would cost more
        if iv.alternative_gpus is not None and iv.alternative_gpus < iv.gpus:
            assert "avoid restarts" in iv.mode_reason
    assert r.intervals[0].gpus < (r.intervals[0].alternative_gpus or 0)
    switches = [e for e in r.events if e.action == "reconfigure"]
    assert switches and all(e.restart for e in switches)
    stops = [e for e in r.events if e.pool == "agg" and e.to_workers == 0]
    assert stops and stops[0].effective_s == switches[0].effective_s
    assert r.replay is not None
    t = r.totals()
    print(f"SLO met by {t['slo_attainment']:.4%}, {t['agg_intervals']} agg intervals")
    assert t["agg_intervals"] == modes.count("agg")
    assert t["slo_attainment"] >= 0.99


def test_gpu_hours_count_draining_workers_until_they_drained() -> None:
    """After a scale-down the stopped workers hold their GPUs until their last request left
    (the replay says when): those GPU-hours are in the total and reported apart."""
    s = series([14, 14, 2, 2, 2])
    r = plan_schedule(request(s, cooldown_s=0))
    assert r.replay is not None
    stopped = [(k, sp) for k, sp in enumerate(r.spans) if sp.off_s < s.end_s]
    assert stopped
    drained = r.replay.drained_s
    tails = [drained[k] - sp.off_s for k, sp in stopped]
    print(f"\n{len(stopped)} workers stopped; drain tails {min(tails):.1f}-{max(tails):.1f} s")
    assert max(tails) > 0.0
    expect = sum(
        sp.shape.gpus_per_worker
        * (min(max(sp.off_s, drained[k]), s.end_s) - max(sp.launch_s, s.start_s))
        for k, sp in enumerate(r.spans)
    )
    assert r.gpu_hours == pytest.approx(expect / 3600.0, rel=1e-9)
    assert r.draining_gpu_hours == pytest.approx(
        sum(sp.shape.gpus_per_worker * max(0.0, drained[k] - sp.off_s) for k, sp in stopped)
        / 3600.0,
        rel=1e-9,
    )


def test_workers_over_the_limit_while_a_layout_changes_are_found() -> None:
    """A reconfigure launches the new workers a start-up delay before the old ones stop: under
    a tight limit the two sets together are over it, and the stretch is reported."""
    old = Shape("prefill", "h100-sxm", 4, 1, 1, 1, 1)
    new = Shape("prefill", "h100-sxm", 8, 1, 1, 1, 1)
    ivs = series([5, 5, 5]).intervals
    counts = [PoolCount(4, old), PoolCount(4, old), PoolCount(3, new)]
    _, spans = _pool_timeline("prefill", counts, ivs, 300.0)
    lives = _lifetimes(spans, None)
    peak, crowded = _in_use(spans, lives, 32)
    assert peak == 16 + 24
    assert crowded == [(300.0, 600.0, 40)]
    _, fine = _in_use(spans, lives, 40)
    assert fine == []


def test_agg_workers_are_replayed_with_the_chunk_budget_the_search_chose() -> None:
    """An aggregated worker's chunked-prefill budget is part of its configuration: the search
    sweeps it, the worker's rate at the SLO is found with it, and the replay runs it (an engine
    started with the engine's default budget would be another worker)."""
    s = series([2.0, 2.0])
    req = request(s, modes=("agg",), cooldown_s=0, simulate=False)
    pl = _Planner(req, default_models(), default_gpus())
    searched = pl._search(s.intervals, "agg").best.pools[0]
    r = plan_schedule(req)
    shapes = {sp.shape for sp in r.spans}
    assert len(shapes) == 1
    (shape,) = shapes
    print(
        f"\nsearched chunk {searched.chunk_tokens}, schedule's workers {shape.label()}; the "
        f"engine's budget {pl.sched.max_num_batched_tokens}"
    )
    assert shape.chunk_tokens == (searched.chunk_tokens or 0)
    # the premise: the search's budget is not the engine's, so a replay can tell them apart
    assert shape.chunk_tokens != pl.sched.max_num_batched_tokens
    arrivals = draw_arrivals(s, 0)
    unset = [
        dataclasses.replace(sp, shape=dataclasses.replace(shape, chunk_tokens=None))
        for sp in r.spans
    ]

    def ttft(sp: list[Span], sched: SchedulerSettings) -> np.ndarray:
        return simulate(sp, arrivals, pl.ctx, pl.dctx, sched, pl.link, 1000.0, 30.0).ttft_ms

    as_planned = ttft(list(r.spans), pl.sched)
    # the same workers in an engine started with that budget for all of them
    engine_wide = ttft(unset, with_chunk(pl.sched, shape.chunk_tokens))
    default = ttft(unset, pl.sched)
    print(
        f"mean TTFT as planned {as_planned.mean():.1f} ms, with the engine's default budget "
        f"{default.mean():.1f} ms"
    )
    np.testing.assert_array_equal(as_planned, engine_wide)
    assert not np.array_equal(as_planned, default)


@pytest.mark.parametrize("stop_after", [0, 1, 5])
def test_a_caller_that_stops_ends_the_planning_before_the_replays(
    stop_after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``should_stop`` is asked inside the searches, between regimes and intervals and before
    each replay: once it turns true the call raises SearchCancelled and starts no replay."""
    import pdplanner.planner.scaling.schedule as schedule_module

    asked = 0

    def should_stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > stop_after

    def no_replay(*args: object, **kwargs: object) -> object:
        raise AssertionError("a replay started after the caller stopped")

    monkeypatch.setattr(schedule_module, "simulate", no_replay)
    with pytest.raises(SearchCancelled):
        plan_schedule(request(series([2.0, 14.0, 2.0])), should_stop=should_stop)
    assert asked == stop_after + 1


def test_an_interval_over_the_limit_names_what_it_needs_before_the_limit() -> None:
    # A 30 s spike to 40 req/s on a 2-GPU limit: the interval needs 3 prefill and 3 one-GPU
    # decode workers (the counts the planner computes for it). The message used to report the
    # counts after they were capped at the limit, "needs 4 GPUs (2 prefill x 1 + 2 decode x 1)",
    # which 40 req/s on two 154-sequence decode workers (308 slots for ~358 sequences) misses.
    mix = (Workload(2000, 300),)
    s = TrafficSeries(
        (Interval(0, 300, 0.5, mix), Interval(300, 30, 40.0, mix), Interval(330, 300, 0.5, mix))
    )
    r = plan_schedule(request(s, model="llama-3.1-8b", gpus=2, simulate=False))
    (v,) = [v for v in r.violations if v.interval == 1]
    iv = r.intervals[1]
    print(v.reason)
    planner = _Planner(
        request(s, model="llama-3.1-8b", gpus=64, simulate=False), default_models(), default_gpus()
    )
    x, y, _, _ = planner.counts(s.intervals[1], iv.prefill.shape, iv.decode.shape)
    gx, gy = iv.prefill.shape.gpus_per_worker, iv.decode.shape.gpus_per_worker
    assert x * gx + y * gy > 2
    assert f"needs {x * gx + y * gy} GPUs ({x} prefill x {gx} + {y} decode x {gy})" in v.reason


def test_a_replay_expecting_more_requests_than_the_limit_is_refused_before_any_is_drawn() -> None:
    # Found in review: an interval of 1e9 s at 5 req/s went on to draw 5e9 arrivals, a 37 GiB
    # array, and ended in MemoryError (INTERNAL on the server, exit 1 in the CLI).
    mix = (Workload(2000, 200),)
    huge = TrafficSeries((Interval(0.0, 1e9, 5.0, mix),))
    with pytest.raises(InvalidInputError) as e:
        plan_schedule(request(huge))
    print(e.value)
    assert e.value.field == "series.intervals[0]"
    assert "expects 5,000,000,000 requests" in e.value.reason
    assert f"more than the {MAX_REPLAY_REQUESTS:,} one replay takes" in e.value.reason
    with pytest.raises(InvalidInputError):
        draw_arrivals(huge)  # the drawing refuses it too, whoever calls it
    # the interval named is the one whose running count passes the limit
    crossing = TrafficSeries(
        (Interval(0, 100_000, 10.0, mix), Interval(100_000, 100_000, 9.0, mix),
         Interval(200_000, 100_000, 2.0, mix), Interval(300_000, 100, 1.0, mix))
    )  # fmt: skip
    with pytest.raises(InvalidInputError) as e:
        validate_request(request(crossing))
    assert e.value.field == "series.intervals[2]"
    assert "expects 2,100,100 requests" in e.value.reason
    assert "interval starting at 200000 s" in e.value.reason
    # a forecast's mean is replayed: its length is the horizon asked for
    with pytest.raises(InvalidInputError) as e:
        validate_request(request(series([1.0]), replay_series=huge))
    assert e.value.field == "forecast.horizon"
    assert e.value.reason.endswith("forecast fewer intervals")
    # nothing is replayed without the replay, so nothing is refused
    validate_request(request(huge, simulate=False))


def test_a_replay_at_the_request_limit_is_drawn() -> None:
    at_limit = TrafficSeries((Interval(0.0, MAX_REPLAY_REQUESTS / 20.0, 20.0, MIX),))
    validate_request(request(at_limit))
    arrivals = draw_arrivals(at_limit, seed=3)
    n = arrivals.t_s.size
    print(f"{n:,} arrivals drawn for {MAX_REPLAY_REQUESTS:,} expected")
    assert abs(n - MAX_REPLAY_REQUESTS) < 5 * math.sqrt(MAX_REPLAY_REQUESTS)  # Poisson spread
    assert np.all(np.diff(arrivals.t_s) >= 0)


def test_a_fixed_deployment_too_large_to_replay_is_refused_before_it_runs() -> None:
    # the engine loop looks over every worker for each request it places: 60,000 workers a pool
    # under 2,400 requests would scan for about a minute, 100,000 under two million for days
    req, (pre, _), (dec, _) = fixed()
    with pytest.raises(InvalidInputError) as e:
        simulate_xpyd(req, (pre, 60_000), (dec, 60_000))
    print(e.value)
    assert e.value.field == "prefill.workers"
    assert "120,000 worker ranks" in e.value.reason and f"{MAX_REPLAY_WORK:,}" in e.value.reason
    with pytest.raises(InvalidInputError) as e:
        simulate_xpyd(req, (pre, 20_000), (dec, 90_000))
    assert e.value.field == "decode.workers"


def test_a_replay_counts_every_attention_dp_rank_of_its_workers() -> None:
    # the engine loop simulates each attention-DP rank, so a DP8 worker scans as eight
    moe = Shape("decode", "h200-sxm", 1, 1, 8, 8, 64)
    dense = Shape("prefill", "h200-sxm", 4, 1, 1, 1, 1)
    assert replay_ranks(static_spans((dense, 3), (moe, 2))) == 3 + 16
    with pytest.raises(InvalidInputError) as e:
        check_replay_work(16, MAX_REPLAY_WORK // 16 + 1, "decode.workers")
    assert e.value.field == "decode.workers" and "16 worker ranks" in e.value.reason
    check_replay_work(16, MAX_REPLAY_WORK // 16, "decode.workers")  # at the bound: taken


def test_a_schedule_too_large_to_replay_is_refused_before_any_replay_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a bound of 4,000 request-worker pairs, which the schedule's ~2,400 requests on its two
    # workers pass: the three replays are checked before the first runs
    req, _, _ = fixed()
    req = dataclasses.replace(req, gpus=8)
    ran: list[int] = []
    monkeypatch.setattr(replay_module, "MAX_REPLAY_WORK", 4_000)
    monkeypatch.setattr(
        "pdplanner.planner.scaling.schedule.simulate",
        lambda spans, *a, **k: ran.append(len(spans)),
    )
    with pytest.raises(InvalidInputError) as e:
        plan_schedule(req)
    print(e.value)
    assert e.value.field == "simulate" and "simulate false" in e.value.reason
    assert not ran


def fixed(
    model: str = "llama-3.1-8b",
    prefill_tp: int = 1,
    decode_tp: int = 1,
    decode_batch: int = 8,
    decode_pp: int = 1,
) -> tuple[ScheduleRequest, tuple[Shape, int], tuple[Shape, int]]:
    """``pdplanner simulate``'s fixed 1P1D deployment on H100-SXM under 10 minutes of 4 req/s of
    2,000/200-token requests."""
    mix = (Workload(2000, 200),)
    req = request(TrafficSeries((Interval(0.0, 600.0, 4.0, mix),)), model=model, gpus=2,
                  slo=Slo(ttft_ms=500, tpot_ms=20, percentile="p99"))  # fmt: skip
    pre = Shape("prefill", "h100-sxm", prefill_tp, 1, 1, 1, 1)
    dec = Shape("decode", "h100-sxm", decode_tp, decode_pp, 1, 1, decode_batch)
    return req, (pre, 1), (dec, 1)


def estimate_of(model: str, pre: Shape, dec: Shape) -> EstimateRequest:
    """The same deployment as ``estimate --mode disagg`` takes it."""
    return EstimateRequest(
        model,
        "h100-sxm",
        2000,
        200,
        mode="disagg",
        prefill=PoolSpec(pre.parallelism, 1, pre.batch),
        decode=PoolSpec(dec.parallelism, 1, dec.batch),
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"decode_tp": 3}, "decode.parallelism.tp"),
        ({"prefill_tp": 64}, "prefill.parallelism.tp"),
        ({"decode_pp": 64}, "decode.parallelism.pp"),
    ],
)
def test_a_fixed_deployment_layout_is_refused_as_estimate_refuses_it(
    change: dict[str, int], field: str
) -> None:
    # Found in review: simulate replayed a decode TP of 3 on 32 attention heads, which estimate
    # refuses, and printed numbers.
    req, pre, dec = fixed(**change)
    with pytest.raises(InvalidInputError) as got:
        simulate_xpyd(req, pre, dec)
    with pytest.raises(InvalidInputError) as want:
        estimate(estimate_of(req.model, pre[0], dec[0]))
    print(got.value)
    assert got.value.violations == want.value.violations
    assert got.value.field == field


@pytest.mark.parametrize(
    ("model", "batch", "fields"),
    [("llama-3.1-70b", 8, ["prefill", "decode"]), ("llama-3.1-8b", 100_000, ["decode"])],
)
def test_a_fixed_deployment_that_does_not_fit_is_refused_with_the_estimate_reason(
    model: str, batch: int, fields: list[str]
) -> None:
    # Found in review: 70B on one H100 per worker, or a decode batch of 100,000, replayed no
    # request at all and printed TTFT p50 nan.
    req, pre, dec = fixed(model=model, decode_batch=batch)
    with pytest.raises(InvalidInputError) as e:
        simulate_xpyd(req, pre, dec)
    print(e.value)
    answer = estimate(estimate_of(model, pre[0], dec[0]))
    assert not answer.fits and answer.reason is not None
    assert [f for f, _ in e.value.violations] == fields
    role, reason = e.value.violations[0]
    assert answer.reason == f"{role}: {reason}"  # estimate names the first pool that does not fit
    assert "does not fit on h100-sxm" in reason


def test_a_fixed_deployment_that_fits_is_replayed_as_its_workers_from_the_start() -> None:
    # the largest decode batch estimate fits at 2,000/200 tokens on one H100 with Llama-3.1-8B
    req, pre, dec = fixed(decode_batch=200)
    assert estimate(estimate_of(req.model, pre[0], dec[0])).fits
    got = simulate_xpyd(req, pre, dec)
    want = simulate_spans(req, static_spans(pre, dec))
    summary = got.summary()
    print(summary)
    assert summary["requests"] > 2000
    assert all(math.isfinite(v) for k in ("ttft_ms", "tpot_ms") for v in summary[k].values())
    np.testing.assert_array_equal(got.ttft_ms, want.ttft_ms)
    np.testing.assert_array_equal(got.tpot_ms, want.tpot_ms)
    req, pre, dec = fixed(decode_batch=201)
    assert not estimate(estimate_of(req.model, pre[0], dec[0])).fits
    with pytest.raises(InvalidInputError) as e:
        simulate_xpyd(req, pre, dec)
    assert e.value.field == "decode" and "cannot hold 201 sequences" in e.value.reason
