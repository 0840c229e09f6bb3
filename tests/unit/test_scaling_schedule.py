"""Elastic scaling schedules: the shipped traces, start-up delay, cooldown, the GPU limit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from planner.catalog import default_gpus, default_models
from planner.errors import InvalidInputError
from planner.scaling import traffic
from planner.scaling.replay import draw_arrivals, simulate
from planner.scaling.schedule import ScheduleRequest, ScheduleResult, _Planner, plan_schedule
from planner.scaling.traffic import Interval, TrafficSeries
from planner.types import Slo, Workload

TRACES = Path(__file__).resolve().parents[2] / "planner" / "scaling" / "traces"
SLO = Slo(ttft_ms=1000, tpot_ms=30, percentile="p99")
MIX = (Workload(1500, 250, 0.7), Workload(6000, 400, 0.3))


def series(rates: list[float], step_s: float = 300.0) -> TrafficSeries:
    return TrafficSeries(tuple(Interval(k * step_s, step_s, r, MIX) for k, r in enumerate(rates)))


def request(s: TrafficSeries, **kw: object) -> ScheduleRequest:
    base: dict[str, object] = {
        "model": "llama-3.1-70b",
        "gpu": "h100-sxm",
        "gpus": 128,
        "series": s,
        "slo": SLO,
    }
    return ScheduleRequest(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.slow
def test_diurnal_schedule_meets_the_slo_with_fewer_gpu_hours_than_static_peak() -> None:
    r = plan_schedule(request(traffic.load(TRACES / "diurnal-day.csv")))
    t = r.totals()
    print(
        f"\ndiurnal day, llama-3.1-70b on h100-sxm, TTFT 1000 ms / TPOT 30 ms at p99:\n"
        f"  schedule     {t['gpu_hours']:.1f} GPU-h, SLO met by {t['slo_attainment']:.4%}\n"
        f"  static peak  {t['static_peak_gpu_hours']:.1f} GPU-h, "
        f"{t['static_peak_slo_attainment']:.4%}\n"
        f"  static mean  {t['static_mean_gpu_hours']:.1f} GPU-h, "
        f"{t['static_mean_slo_attainment']:.4%}\n"
        f"  {len(r.events)} events, {r.replay.ttft_ms.size if r.replay else 0} requests replayed"
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


def test_prefill_decode_ratio_follows_the_shifting_mix() -> None:
    s = traffic.load(TRACES / "mix-shift-day.csv")
    r = plan_schedule(request(s, simulate=False))
    ratio = np.array([iv.prefill.gpus / iv.decode.gpus for iv in r.intervals])
    isl = np.array([iv.mean_isl for iv in r.intervals])
    print(
        f"\nP:D GPU ratio at mean ISL {isl[0]:.0f}: {ratio[0]:.2f}; "
        f"at {isl[-1]:.0f}: {ratio[-1]:.2f}"
    )
    # more prefill capacity as prompts grow: first two hours against the last two
    early, late = ratio[:24].mean(), ratio[-24:].mean()
    corr = np.corrcoef(isl, ratio)[0, 1]
    print(f"first 2 h mean {early:.2f}, last 2 h {late:.2f}, correlation with ISL {corr:.2f}")
    assert late > 1.5 * early
    assert corr > 0.5  # whole workers of 4-32 GPUs make the ratio step, not glide
    assert not r.violations
    # a change of worker shape is an event that needs a restart; a count change is not
    for e in r.events:
        assert e.restart == (e.action == "reconfigure" or e.reason == "initial deployment")


def test_new_workers_launch_a_startup_delay_before_the_load_arrives() -> None:
    s = series([2, 2, 2, 14, 14, 14, 14])
    startup = 420.0
    r = plan_schedule(request(s, startup_s=startup, cooldown_s=0))
    ups = [e for e in r.events if e.action == "scale_up" and e.effective_s == 900.0]
    assert ups, r.events
    for e in ups:
        assert e.at_s == 900.0 - startup
    # every worker serving the surge was launched in time
    for sp in r.prefill_spans + r.decode_spans:
        assert sp.on_s - sp.launch_s == pytest.approx(startup)
    assert r.replay is not None
    surge = r.replay.attainment_by_interval(len(s.intervals))[3]
    # the same workers launched only when the surge starts serve it late
    late = [
        dataclasses.replace(sp, on_s=sp.on_s + startup) if sp.on_s > 0 else sp
        for sp in r.prefill_spans + r.decode_spans
    ]
    pl = _Planner(request(s), default_models(), default_gpus())
    rr = simulate(
        [sp for sp in late if sp.shape.role == "prefill"],
        [sp for sp in late if sp.shape.role == "decode"],
        draw_arrivals(s, 0),
        pl.ctx,
        pl.dctx,
        pl.link,
        SLO.ttft_ms,
        SLO.tpot_ms,
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
    for pool in ("prefill", "decode"):
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
