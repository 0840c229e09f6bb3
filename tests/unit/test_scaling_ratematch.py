"""Runtime rate matching: counts follow the rate and the mix, corrections follow observations."""

from __future__ import annotations

import dataclasses

import pytest

from planner.errors import InvalidInputError
from planner.scaling.capacity import Shape
from planner.scaling.ratematch import RateMatchRequest, rate_match
from planner.types import Slo

PRE = Shape("prefill", "h100-sxm", 4, 1, 1, 1, 1)
DEC = Shape("decode", "h100-sxm", 4, 1, 1, 1, 128)
BASE = RateMatchRequest(
    model="llama-3.1-70b",
    gpu="h100-sxm",
    slo=Slo(1000, 30, "p99"),
    requests_per_s=8.0,
    isl=2500,
    osl=300,
    prefill=PRE,
    prefill_workers=3,
    decode=DEC,
    decode_workers=2,
)


def test_more_traffic_needs_more_workers_in_both_pools() -> None:
    low = rate_match(dataclasses.replace(BASE, requests_per_s=2.0))
    high = rate_match(dataclasses.replace(BASE, requests_per_s=16.0))
    assert high.prefill_workers > low.prefill_workers
    assert high.decode_workers > low.decode_workers
    for r in (low, high):
        assert r.predicted_ttft_ms <= 1000 and r.predicted_tpot_ms <= 30
        assert r.headroom >= 0


def test_longer_prompts_raise_the_prefill_share() -> None:
    short = rate_match(dataclasses.replace(BASE, isl=1000))
    long = rate_match(dataclasses.replace(BASE, isl=8000))
    assert long.prefill_decode_gpu_ratio > short.prefill_decode_gpu_ratio


def test_an_engine_slower_than_modelled_gets_more_workers() -> None:
    plain = rate_match(BASE)
    slow = rate_match(
        dataclasses.replace(
            BASE,
            observed_ttft_ms=2.0 * plain.current_predicted_ttft_ms,
            observed_tpot_ms=1.5 * plain.current_predicted_tpot_ms,
        )
    )
    assert slow.ttft_correction == pytest.approx(2.0)
    assert slow.tpot_correction == pytest.approx(1.5)
    assert slow.prefill_workers > plain.prefill_workers
    assert slow.decode_workers >= plain.decode_workers
    # a wild reading is clamped
    wild = rate_match(dataclasses.replace(BASE, observed_ttft_ms=1e6))
    assert wild.ttft_correction == 4.0


def test_no_traffic_keeps_the_minimum() -> None:
    r = rate_match(dataclasses.replace(BASE, requests_per_s=0.0, min_workers=2))
    assert (r.prefill_workers, r.decode_workers) == (2, 2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"requests_per_s": -1.0}, "requests_per_s"),
        ({"isl": 0}, "isl"),
        ({"decode_workers": -2}, "decode_workers"),
        ({"observed_tpot_ms": 0.0}, "observed_tpot_ms"),
        ({"prefill": dataclasses.replace(PRE, tp=3)}, "prefill.tp"),
        ({"slo": Slo(1000, 30, "p95")}, "slo.percentile"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_names_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        rate_match(dataclasses.replace(BASE, **change))  # type: ignore[arg-type]
    assert e.value.field == field
