"""Bounded search work: budgets and traffic mixes are capped, and rate matching checks the
caller's deadline and cancellation between slices of decode candidates."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from pdplanner.planner import validate
from pdplanner.planner.errors import InvalidInputError, SearchCancelled
from pdplanner.planner.search import plan, ratematch, recommend
from pdplanner.planner.types import PlanRequest, Slo, Workload

REF = PlanRequest(
    model="llama-3.1-70b",
    gpu="h100-sxm",
    gpus=16,
    traffic=(Workload(4000, 500),),
    slo=Slo(ttft_ms=1000.0, tpot_ms=20.0),
)


def test_a_budget_past_the_cap_names_gpus() -> None:
    with pytest.raises(InvalidInputError) as exc:
        plan(dataclasses.replace(REF, gpus=validate.MAX_GPUS + 1))
    print(exc.value)
    assert exc.value.field == "gpus"
    assert f"{validate.MAX_GPUS:,}" in exc.value.reason


def test_a_mix_past_the_cap_names_traffic() -> None:
    mix = tuple(Workload(1000 + i, 100) for i in range(validate.MAX_TRAFFIC_CLASSES + 1))
    with pytest.raises(InvalidInputError) as exc:
        plan(dataclasses.replace(REF, traffic=mix))
    assert exc.value.field == "traffic"


def test_rate_matching_checks_the_caller_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """With slices of one decode candidate, a caller that stops during matching ends the search
    after the slice in progress, not after every candidate."""
    monkeypatch.setattr(recommend, "MATCH_SLICE_EVALUATIONS", 1)
    slices: list[int] = []
    real = recommend.match

    def counting(
        r_p: np.ndarray, g_p: np.ndarray, r_d: np.ndarray, *rest: Any
    ) -> ratematch.Matches:
        slices.append(int(r_d.shape[0]))
        return real(r_p, g_p, r_d, *rest)

    monkeypatch.setattr(recommend, "match", counting)
    stop_at_slice = 3

    def stop() -> bool:
        return len(slices) >= stop_at_slice

    req = dataclasses.replace(REF, gpus=validate.MAX_GPUS, limits=dataclasses.replace(
        REF.limits, modes=("disagg",)))  # fmt: skip
    with pytest.raises(SearchCancelled):
        plan(req, should_stop=stop)
    print(f"matching stopped after {len(slices)} slices of {slices} decode candidates")
    assert slices == [1] * stop_at_slice
