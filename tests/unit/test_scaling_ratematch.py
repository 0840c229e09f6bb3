"""Runtime rate matching: counts follow the rate and the mix, corrections follow observations."""

from __future__ import annotations

import dataclasses

import pytest

from pdplanner.planner.catalog import GpuCatalog, default_gpus, default_models
from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.scaling.capacity import Shape
from pdplanner.planner.scaling.ratematch import (
    LengthPercentiles,
    RateMatchRequest,
    rate_match,
    traffic_mix,
)
from pdplanner.planner.types import Slo

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
    # a wild reading is clamped (at a TTFT target the clamped correction still leaves room for:
    # at 1 s, 4 x this prompt's compute is past it and the call is refused, tested below)
    wild = rate_match(dataclasses.replace(BASE, observed_ttft_ms=1e6, slo=Slo(3000, 30, "p99")))
    assert wild.ttft_correction == 4.0


def test_no_traffic_keeps_the_minimum() -> None:
    r = rate_match(dataclasses.replace(BASE, requests_per_s=0.0, min_workers=2))
    assert (r.prefill_workers, r.decode_workers) == (2, 2)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"requests_per_s": -1.0}, "requests_per_s"),
        ({"isl": 0}, "isl"),
        ({"isl": 200_000.0}, "isl"),  # beyond llama-3.1-70b's 131,072-token context
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


def test_every_bad_field_comes_back_at_once() -> None:
    bad = dataclasses.replace(
        BASE, requests_per_s=-1.0, decode_workers=-2, prefill=dataclasses.replace(PRE, tp=0)
    )
    with pytest.raises(InvalidInputError) as e:
        rate_match(bad)
    assert [f for f, _ in e.value.violations] == ["requests_per_s", "decode_workers", "prefill.tp"]


def test_length_percentiles_price_the_long_tail() -> None:
    """Percentiles in place of the mean: three classes per length. A heavy prompt tail (p99 four
    times the median) needs more prefill than the median alone, and its p99 class sets the
    compute TTFT; percentiles all equal to the mean give the mean's answer."""
    flat = LengthPercentiles(2500, 2500, 2500)
    same = rate_match(dataclasses.replace(BASE, isl=0, isl_percentiles=flat))
    plain = rate_match(BASE)
    assert (same.prefill_workers, same.decode_workers) == (
        plain.prefill_workers,
        plain.decode_workers,
    )
    assert same.predicted_ttft_ms == pytest.approx(plain.predicted_ttft_ms)
    tail = rate_match(
        dataclasses.replace(
            BASE,
            isl_percentiles=LengthPercentiles(2000, 4000, 8000),
            osl_percentiles=LengthPercentiles(250, 400, 600),
        )
    )
    median = rate_match(dataclasses.replace(BASE, isl=2000, osl=250))
    print(
        f"\nmedian lengths: {median.prefill_workers}P{median.decode_workers}D; "
        f"with the tail: {tail.prefill_workers}P{tail.decode_workers}D"
    )
    assert tail.prefill_workers > median.prefill_workers
    assert tail.current_predicted_ttft_ms > median.current_predicted_ttft_ms
    mix = traffic_mix(dataclasses.replace(BASE, isl_percentiles=LengthPercentiles(1, 2, 3)))
    assert [(m.isl, round(m.weight, 3)) for m in mix] == [(1, 0.7), (2, 0.245), (3, 0.055)]


def test_unordered_percentiles_name_the_field() -> None:
    with pytest.raises(InvalidInputError) as e:
        rate_match(dataclasses.replace(BASE, osl_percentiles=LengthPercentiles(300, 200, 400)))
    assert e.value.field == "osl_percentiles.p90"


def test_custom_catalog_entries_resolve() -> None:
    """A GPU known only to the catalogs passed in (a stored custom entry) is used; the built-in
    catalogs alone do not know it."""
    h100 = default_gpus().get("h100-sxm")
    custom = dataclasses.replace(h100, name="h100-lab", aliases=())
    gpus = GpuCatalog(extra=[custom])
    lab = dataclasses.replace(
        BASE,
        prefill=dataclasses.replace(PRE, gpu="h100-lab"),
        decode=dataclasses.replace(DEC, gpu="h100-lab"),
    )
    with pytest.raises(InvalidInputError) as e:
        rate_match(lab)
    assert e.value.field == "prefill.gpu"
    r = rate_match(lab, default_models(), gpus)
    plain = rate_match(BASE)
    assert (r.prefill_workers, r.decode_workers) == (plain.prefill_workers, plain.decode_workers)


def test_a_ttft_no_worker_count_meets_is_refused_with_the_reason() -> None:
    # 100,000-token prompts take seconds on one TP4 worker before any queueing: no count of
    # workers brings TTFT under 1 s (the answer used to be a placeholder of 10**9 workers)
    with pytest.raises(InvalidInputError) as e:
        rate_match(dataclasses.replace(BASE, isl=100_000.0))
    print(e.value)
    assert e.value.field == "slo.ttft_ms"
    assert "a prompt that never queues takes" in str(e.value)


def test_a_tpot_no_batch_meets_after_the_observed_correction_is_refused() -> None:
    # the decode step observed 4x slower than modelled (the clamp): 4 x one sequence's step is
    # over TPOT 30 ms, and the message names the correction that put it there
    with pytest.raises(InvalidInputError) as e:
        rate_match(dataclasses.replace(BASE, observed_tpot_ms=1e6))
    print(e.value)
    assert e.value.field == "slo.tpot_ms"
    assert "x4.00, the correction from observed_tpot_ms" in str(e.value)


def test_headroom_is_what_the_target_deployment_absorbs_whatever_the_observed_rate() -> None:
    # the largest rate one deployment serves at the SLO is a property of the deployment: at
    # 1e-6, 0.5 and 1 req/s the same 1P1D target absorbs the same rate, and four workers per
    # pool absorb more than one (the bisection used to stop at max(4 x rate, 1 req/s): 1P1D
    # "absorbed" 1 req/s at 1e-6 req/s and 2 at 0.5, and 4P4D no more than 1P1D)
    def absorbed(rate: float, min_workers: int) -> tuple[int, int, float]:
        r = rate_match(dataclasses.replace(BASE, requests_per_s=rate, min_workers=min_workers))
        return r.prefill_workers, r.decode_workers, rate * (1.0 + r.headroom)

    one = [absorbed(rate, 1) for rate in (1e-6, 0.5, 1.0)]
    four = absorbed(0.5, 4)
    print(f"\n1P1D absorbs {[round(float(a), 4) for *_, a in one]} req/s, 4P4D {four[2]:.3f} req/s")
    assert {(x, y) for x, y, _ in one} == {(1, 1)}
    assert max(a for *_, a in one) == pytest.approx(min(a for *_, a in one), rel=1e-6)
    assert four[:2] == (4, 4)
    assert four[2] > 3.0 * one[0][2]
