"""Forecasting the horizon from a history of intervals, to plan against its upper quantile.

The history is a traffic series of equal, back-to-back intervals (at least two seasons of them).
Its request rates are forecast with statsmodels:

* ``ets`` (default): an ETS model with additive error and additive seasonality of one day
  (``ETSModel``, heuristic initial states), whose prediction intervals give the upper quantile.
* ``sarima``: ARIMA(1, 0, 1) errors around a daily seasonal pattern of ``harmonics`` Fourier
  terms (``SARIMAX`` with those terms as regressors). A seasonal ARIMA with one seasonal lag per
  day of 5-minute intervals (288 lags) is too slow to fit, which is why the season is a regression.

A forecast interval takes the mix of the history's interval one season earlier (the same time of
day on the last day observed). The plan uses ``upper``: rates at the ``quantile`` of the
forecast distribution (default 0.9), floored at 0, so the SLO holds when traffic beats the mean.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.scaling.traffic import Interval, TrafficSeries

Method = Literal["ets", "sarima"]
DAY_S = 86_400.0
DEFAULT_QUANTILE = 0.9  # the forecast quantile planned for unless one is asked for
#: The most intervals one forecast covers. The forecast, the schedule planned over it and its
#: replay all grow with the horizon: on the shared 2-core development machine an ETS forecast of
#: 10,000 intervals took 1.8 s and 0.18 GB peak resident memory, 100,000 took 6.4 s and 0.38 GB,
#: 1,000,000 took 42 s and 2.4 GB, and 1e8 asked for 216 GiB; ``pdplanner schedule --history``
#: (two days of 5-minute intervals, Llama-3.1-8B on H100-SXM, ``--no-simulate``) planned 288,
#: 10,000 and 50,000 intervals in 7, 12 and 27 s with 0.33, 0.39 and 0.73 GB. 10,000 intervals is
#: 35 days of 5-minute intervals or a week of 1-minute ones, further ahead than a daily pattern
#: forecasts usefully; the replay is bounded apart (``replay.MAX_REPLAY_REQUESTS``).
MAX_HORIZON = 10_000


@dataclass(frozen=True)
class ForecastSpec:
    """What to forecast: the history, how many intervals ahead, the quantile planned for."""

    history: TrafficSeries
    horizon: int
    quantile: float = DEFAULT_QUANTILE
    method: Method = "ets"


@dataclass(frozen=True)
class Forecast:
    mean: TrafficSeries
    upper: TrafficSeries  # rates at ``quantile``
    quantile: float
    method: str


def check_horizon(horizon: object, field: str = "horizon") -> int:
    """The number of intervals to forecast, 1 to ``MAX_HORIZON``; raises ``InvalidInputError``
    naming ``field``."""
    if isinstance(horizon, bool) or not isinstance(horizon, int):
        raise InvalidInputError(field, f"must be a whole number of intervals, got {horizon!r}")
    if horizon < 1:
        raise InvalidInputError(field, f"must be at least 1 interval, got {horizon}")
    if horizon > MAX_HORIZON:
        raise InvalidInputError(
            field, f"must be at most {MAX_HORIZON:,} intervals, got {horizon:,}"
        )
    return horizon


def check_quantile(quantile: float, field: str = "quantile") -> float:
    """The forecast quantile planned for, in [0.5, 1); raises ``InvalidInputError`` naming
    ``field``."""
    if not 0.5 <= quantile < 1.0:
        raise InvalidInputError(field, f"must be in [0.5, 1), got {quantile:g}")
    return quantile


def check_method(method: object, field: str = "method") -> Method:
    """The forecast model, ets or sarima; raises ``InvalidInputError`` naming ``field``."""
    if method not in ("ets", "sarima"):
        raise InvalidInputError(field, f"must be ets or sarima, got {method!r}")
    return method


def _regular(history: TrafficSeries, season_s: float) -> tuple[float, int]:
    ivs = history.intervals
    dur = ivs[0].duration_s
    for i, iv in enumerate(ivs):
        if abs(iv.duration_s - dur) > 1e-9:
            raise InvalidInputError(
                f"history[{i}].duration_s",
                f"a history needs equal intervals: {iv.duration_s:g} s differs from {dur:g} s",
            )
        if i and abs(iv.start_s - ivs[i - 1].end_s) > 1e-6:
            raise InvalidInputError(
                f"history[{i}].start_s",
                f"a history needs back-to-back intervals: {iv.start_s:g} does not follow "
                f"{ivs[i - 1].end_s:g}",
            )
    period = season_s / dur
    if abs(period - round(period)) > 1e-6 or round(period) < 2:
        raise InvalidInputError(
            "history", f"the interval length {dur:g} s must divide the season of {season_s:g} s"
        )
    m = round(period)
    if len(ivs) < 2 * m:
        raise InvalidInputError(
            "history",
            f"needs at least two seasons ({2 * m} intervals of {dur:g} s), got {len(ivs)}",
        )
    return dur, m


def _fourier(t: np.ndarray, m: int, harmonics: int) -> np.ndarray:
    cols = []
    for k in range(1, harmonics + 1):
        cols += [np.sin(2 * np.pi * k * t / m), np.cos(2 * np.pi * k * t / m)]
    return np.column_stack(cols)


def forecast(
    history: TrafficSeries,
    horizon: int,
    quantile: float = 0.9,
    method: Method = "ets",
    season_s: float = DAY_S,
    harmonics: int = 4,
) -> Forecast:
    """Forecast ``horizon`` intervals (1 to ``MAX_HORIZON``) after ``history``; raises
    ``InvalidInputError``."""
    import pandas as pd
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    check_horizon(horizon)
    check_quantile(quantile)
    check_method(method)
    dur, m = _regular(history, season_s)
    y = pd.Series(history.rates)
    n = len(y)
    alpha = 2.0 * (1.0 - quantile)  # two-sided interval whose upper end is the quantile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the fit is still used
        if method == "ets":
            fit = ETSModel(
                y,
                error="add",
                trend=None,
                seasonal="add",
                seasonal_periods=m,
                initialization_method="heuristic",
            ).fit(disp=False)
            frame = fit.get_prediction(start=n, end=n + horizon - 1).summary_frame(alpha=alpha)
            mean, upper = frame["mean"].to_numpy(), frame["pi_upper"].to_numpy()
        else:
            t = np.arange(n + horizon, dtype=np.float64)
            x = _fourier(t, m, harmonics)
            fit = SARIMAX(y, exog=x[:n], order=(1, 0, 1), trend="c").fit(disp=False)
            fc = fit.get_forecast(horizon, exog=x[n:])
            mean = fc.predicted_mean.to_numpy()
            upper = fc.conf_int(alpha=alpha).to_numpy()[:, 1]
    start = history.end_s
    ivs = history.intervals
    mean_ivs, upper_ivs = [], []
    for h in range(horizon):
        mix = ivs[n - m + (h % m)].mix
        s = start + h * dur
        mean_ivs.append(Interval(s, dur, max(0.0, _finite(mean[h])), mix))
        upper_ivs.append(Interval(s, dur, max(0.0, _finite(upper[h])), mix))
    return Forecast(
        TrafficSeries(tuple(mean_ivs)), TrafficSeries(tuple(upper_ivs)), quantile, method
    )


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise InvalidInputError(
            "history", "the forecast diverged; give a longer or steadier history"
        )
    return float(x)
