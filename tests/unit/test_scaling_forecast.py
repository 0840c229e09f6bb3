"""Forecasting a horizon from a history with a known daily pattern."""

from __future__ import annotations

import numpy as np
import pytest

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.scaling.forecast import MAX_HORIZON, check_horizon, check_quantile, forecast
from pdplanner.planner.scaling.traffic import Interval, TrafficSeries
from pdplanner.planner.types import Workload

STEP = 900.0  # 15-minute intervals: 96 a day
MIX = (Workload(2000, 200, 1.0),)


def daily(days: int, noise: float, seed: int = 3) -> tuple[TrafficSeries, np.ndarray]:
    """A history of ``days`` days at 10 + 6 sin(day phase) req/s plus Gaussian noise, and the
    noiseless truth of the day that follows."""
    rng = np.random.default_rng(seed)
    k = np.arange(days * 96 + 96)
    truth = 10.0 + 6.0 * np.sin(2 * np.pi * k / 96)
    seen = truth[: days * 96] + rng.normal(0.0, noise, days * 96)
    series = TrafficSeries(
        tuple(Interval(i * STEP, STEP, float(max(r, 0.0)), MIX) for i, r in enumerate(seen))
    )
    return series, truth[days * 96 :]


@pytest.mark.parametrize("method", ["ets", "sarima"])
def test_a_daily_pattern_is_forecast_and_its_upper_quantile_covers_the_truth(method: str) -> None:
    history, truth = daily(days=4, noise=0.5)
    fc = forecast(history, horizon=96, quantile=0.9, method=method)  # type: ignore[arg-type]
    mean = fc.mean.rates
    upper = fc.upper.rates
    err = np.abs(mean - truth)
    covered = float(np.mean(upper >= truth))
    print(
        f"\n{method}: mean abs error {err.mean():.3f} req/s (noise 0.5), upper covers {covered:.0%}"
    )
    assert err.mean() < 0.5  # the pattern, not the noise
    assert covered >= 0.8
    assert (upper >= mean).all()
    # the forecast continues the history's clock and keeps its mix
    assert fc.upper.intervals[0].start_s == history.end_s
    assert fc.upper.intervals[5].mix == MIX


def test_a_history_shorter_than_two_days_is_refused() -> None:
    history, _ = daily(days=1, noise=0.1)
    with pytest.raises(InvalidInputError) as e:
        forecast(history, horizon=10)
    assert e.value.field == "history"
    assert "two seasons" in e.value.reason


def test_a_history_with_a_gap_names_the_row() -> None:
    history, _ = daily(days=3, noise=0.1)
    ivs = list(history.intervals)
    ivs[7] = Interval(ivs[7].start_s + 60, STEP, 1.0, MIX)
    with pytest.raises(InvalidInputError) as e:
        forecast(TrafficSeries(tuple(ivs)), horizon=10)
    assert e.value.field == "history[7].start_s"


@pytest.mark.parametrize(
    ("horizon", "says"),
    [
        (0, "must be at least 1 interval, got 0"),
        (-3, "must be at least 1 interval, got -3"),
        (MAX_HORIZON + 1, f"must be at most {MAX_HORIZON:,} intervals, got {MAX_HORIZON + 1:,}"),
        # found in review: asked for a 216 GiB array and ended in MemoryError
        (100_000_000, f"must be at most {MAX_HORIZON:,} intervals, got 100,000,000"),
        (True, "must be a whole number of intervals, got True"),
    ],
)
def test_a_horizon_out_of_range_is_refused_before_anything_is_fitted(
    horizon: int, says: str
) -> None:
    history, _ = daily(days=2, noise=0.1)
    with pytest.raises(InvalidInputError) as e:
        forecast(history, horizon=horizon)
    assert (e.value.field, e.value.reason) == ("horizon", says)
    assert check_horizon(MAX_HORIZON) == MAX_HORIZON  # the limit itself is a horizon
    with pytest.raises(InvalidInputError) as e:
        check_horizon(0, "forecast.horizon")  # the gRPC request's path
    assert e.value.field == "forecast.horizon"


def test_a_quantile_outside_half_to_one_is_refused() -> None:
    history, _ = daily(days=2, noise=0.1)
    for q in (2.0, 0.4, 1.0, float("nan")):
        with pytest.raises(InvalidInputError) as e:
            forecast(history, horizon=4, quantile=q)
        assert e.value.field == "quantile" and "must be in [0.5, 1)" in e.value.reason
    assert check_quantile(0.5) == 0.5
