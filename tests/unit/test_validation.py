"""Bad input to ``estimate``: one ``InvalidInputError`` naming the field path, one line of reason.

The field paths are those of ``EstimateRequest`` (``isl``, ``parallelism.tp``, ``prefill.batch``)
that the CLI maps to flags and the gRPC layer to ``BadRequest`` field violations.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pdplanner.planner import validate
from pdplanner.planner.catalog import load_model
from pdplanner.planner.errors import InvalidFields, InvalidInputError, UnknownEntryError
from pdplanner.planner.estimate import estimate
from pdplanner.planner.search import plan
from pdplanner.planner.types import (
    EstimateRequest,
    Parallelism,
    PlanRequest,
    PoolSpec,
    Precision,
    Slo,
    Workload,
)

BASE = dict(model="llama-3.1-8b", gpu="h100-sxm", isl=1000, osl=100)
DECODE = dict(phase="decode", batch=1)
DISAGG = dict(
    mode="disagg", prefill=PoolSpec(Parallelism(tp=1)), decode=PoolSpec(Parallelism(tp=1))
)


def error_of(**change) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as exc:
        estimate(EstimateRequest(**{**BASE, **change}))
    e = exc.value
    print(f"{change} -> {e.field}: {e.reason}")
    assert "\n" not in str(e)
    assert str(e) == f"{e.field}: {e.reason}"
    return e


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        # lengths
        (dict(DECODE, isl=-5), "isl", "at least 1"),
        (dict(DECODE, isl=0), "isl", "at least 1"),
        (dict(DECODE, isl=10**9), "isl", "at most 10,000,000"),
        (dict(DECODE, osl=-1), "osl", "at least 1"),
        (dict(DECODE, isl=1.5), "isl", "must be an integer"),
        (dict(DECODE, isl="1000"), "isl", "must be an integer"),
        (dict(DECODE, context=0), "context", "at least 1"),
        # batch and load
        (dict(phase="decode", batch=0), "batch", "at least 1"),
        (dict(phase="prefill", batch=-3), "batch", "at least 1"),
        (dict(phase="decode"), "batch", "is required"),
        (dict(phase="decode", batch=True), "batch", "must be an integer"),
        (dict(phase="decode", batch=10**7), "batch", "at most"),
        (dict(mode="agg"), "concurrency", "is required"),
        (dict(mode="agg", concurrency=0), "concurrency", "at least 1"),
        (dict(mode="agg", concurrency=4, chunk_tokens=-1), "chunk_tokens", "at least 0"),
        # parallelism against the model (Llama-3.1-8B: 32 heads, 32 layers, dense)
        (
            dict(DECODE, parallelism=Parallelism(tp=3)),
            "parallelism.tp",
            "does not divide the 32 attention heads",
        ),
        (dict(DECODE, parallelism=Parallelism(tp=64)), "parallelism.tp", "does not divide"),
        (dict(DECODE, parallelism=Parallelism(tp=0)), "parallelism.tp", "at least 1"),
        (dict(DECODE, parallelism=Parallelism(pp=33)), "parallelism.pp", "exceed the 32 layers"),
        (dict(DECODE, parallelism=Parallelism(tp=2, ep=2)), "parallelism.ep", "is dense"),
        (
            dict(DECODE, parallelism=Parallelism(attention_dp=2)),
            "parallelism.attention_dp",
            "is dense",
        ),
        # mode / phase
        (dict(), "phase", "exactly one of phase"),
        (dict(DECODE, mode="agg", concurrency=1), "phase", "exactly one of phase"),
        (dict(phase="train", batch=1), "phase", "must be prefill or decode"),
        (dict(mode="pipeline"), "mode", "must be agg or disagg"),
        # precision and catalog names
        (dict(DECODE, precision=Precision("fp4")), "precision.dtype", "no fp4 tensor cores"),
        (dict(DECODE, precision=Precision("int4")), "precision.dtype", "must be one of"),
        (dict(DECODE, precision=Precision("bf16", "fp4")), "precision.kv_dtype", "bf16 or fp8"),
        (dict(DECODE, model="llama-9b"), "model", "unknown model"),
        (dict(DECODE, gpu="h1000"), "gpu", "unknown GPU"),
        (dict(DECODE, engine="tgi"), "engine", "unknown engine"),
        # disaggregated pools
        (dict(mode="disagg", prefill=PoolSpec(Parallelism(tp=1))), "decode", "is required"),
        (
            dict(DISAGG, prefill=PoolSpec(Parallelism(tp=5))),
            "prefill.parallelism.tp",
            "does not divide",
        ),
        (
            dict(DISAGG, decode=PoolSpec(Parallelism(tp=1), workers=0)),
            "decode.workers",
            "at least 1",
        ),
        (dict(DISAGG, prefill=PoolSpec(Parallelism(tp=1), batch=0)), "prefill.batch", "at least 1"),
        (dict(DISAGG, decode=PoolSpec(Parallelism(tp=1), gpu="h9")), "decode.gpu", "unknown GPU"),
        # a request longer than the model's context (llama-3.1-8b: 131,072 tokens)
        (dict(DECODE, isl=1_000_000), "isl", "exceed llama-3.1-8b's context of 131,072 tokens"),
        (dict(DECODE, isl=4000, osl=130_000), "osl", "isl + osl = 134,000 tokens exceed"),
        (dict(DECODE, context=140_000), "context", "at most 131,072"),
    ],
)
def test_bad_estimate_input_names_the_field(change: dict, field: str, says: str) -> None:
    e = error_of(**change)
    assert e.field == field
    assert says in e.reason


def test_unknown_entries_are_lookup_errors_naming_a_few_close_matches() -> None:
    e = error_of(**DECODE, gpu="h1000")
    assert isinstance(e, UnknownEntryError) and isinstance(e, LookupError)
    assert "h100-sxm" in e.known and "gb200-nvl72" in e.known
    print(e.reason)
    assert e.reason.startswith("unknown GPU 'h1000'; closest known: ")
    assert "h100-sxm" in e.reason.split(" and ")[0]
    shown = e.reason.split("closest known: ")[1].split(" and ")[0].split(", ")
    assert 1 <= len(shown) <= 5
    assert e.reason.endswith(f"and {len(e.known) - len(shown)} more")


def test_an_unknown_name_is_quoted_short() -> None:
    e = error_of(**DECODE, gpu="m" * 5000)
    print(e.reason)
    assert isinstance(e, UnknownEntryError) and e.name == "m" * 5000
    assert len(e.reason) < 250 and "(5,000 characters)" in e.reason


@pytest.mark.parametrize(
    ("par", "field", "says"),
    [
        (Parallelism(tp=2, ep=3), "parallelism.ep", "does not divide the 8 experts"),
        (Parallelism(tp=2, ep=4), "parallelism.ep", "must divide tp x attention_dp = 2"),
        (
            Parallelism(tp=2, ep=8, attention_dp=2),
            "parallelism.ep",
            "must divide tp x attention_dp = 4",
        ),
    ],
)
def test_moe_parallelism_must_split_the_experts(par: Parallelism, field: str, says: str) -> None:
    m = load_model("mixtral-8x7b")
    with pytest.raises(InvalidInputError) as exc:
        validate.parallelism(par, m)
    print(f"{par} -> {exc.value}")
    assert exc.value.field == field and says in exc.value.reason


def test_valid_moe_parallelism_passes() -> None:
    m = load_model("mixtral-8x7b")
    for par in (
        Parallelism(tp=2, ep=2),
        Parallelism(tp=4, ep=8, attention_dp=2),
        Parallelism(tp=8),
    ):
        assert validate.parallelism(par, m) is None  # an invalid layout raises instead


@pytest.mark.parametrize(
    "pool",
    [
        PoolSpec(Parallelism(tp=3), workers=0, batch=0),
        PoolSpec(Parallelism(tp=2, pp=40, ep=2), workers=100_001, batch=1_000_001),
        PoolSpec(Parallelism(tp=0, attention_dp=2), workers=2, batch=-1),
    ],
)
def test_a_pool_is_checked_by_validate_as_estimate_checks_a_disaggregated_pool(
    pool: PoolSpec,
) -> None:
    """``validate.pool`` (what ``simulate`` checks a fixed deployment's pools with) reports the
    violations, fields and words of ``estimate --mode disagg`` for the same pool."""
    m = load_model("llama-3.1-8b")
    with pytest.raises(InvalidInputError) as got:
        validate.pool(pool.parallelism, pool.workers, pool.batch, m, "decode")
    with pytest.raises(InvalidInputError) as want:
        estimate(EstimateRequest(**{**BASE, **DISAGG, "decode": pool}))
    print(got.value)
    assert len(got.value.violations) >= 3
    assert got.value.violations == want.value.violations
    assert validate.pool(Parallelism(tp=8), 100_000, 1_000_000, m, "decode") is None  # the limits


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (10_000_000, True), (0, False), (10_000_001, False), (2.0, False), (None, False)],
)
def test_length_bounds(value: object, ok: bool) -> None:
    if ok:
        validate.lengths(value, value)
    else:
        with pytest.raises(InvalidInputError) as exc:
            validate.lengths(value, 10)
        assert exc.value.field == "isl"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, True, "5"])
def test_numbers_must_be_finite_and_in_range(value: object) -> None:
    with pytest.raises(InvalidInputError) as exc:
        validate.number(value, "slo.ttft_ms", 0.0, 1e9, lo_open=True)
    print(f"{value!r} -> {exc.value}")
    assert exc.value.field == "slo.ttft_ms"


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"parallelism": Parallelism(tp=2, pp=2)}, "parallelism.pp", "without pipeline"),
        ({"chunk_tokens": 1}, "chunk_tokens", "at least 64"),
    ],
)
def test_an_aggregated_estimate_refuses_what_its_simulation_cannot_model(change, field, says):
    req = EstimateRequest(
        "llama-3.1-70b",
        "h100-sxm",
        4000,
        500,
        mode="agg",
        concurrency=8,
        parallelism=Parallelism(tp=4),
        **{},
    )
    with pytest.raises(InvalidInputError) as exc:
        estimate(replace(req, **change))
    print(f"{field}: {exc.value.reason}")
    assert exc.value.field == field and says in exc.value.reason


# -- every violation at once -----------------------------------------------------------------------


def test_every_invalid_length_and_parallelism_field_of_an_estimate_comes_back() -> None:
    with pytest.raises(InvalidFields) as exc:
        estimate(EstimateRequest(**{**BASE, "isl": 0, "osl": -1}, phase="decode", batch=1))
    print(exc.value)
    assert [f for f, _ in exc.value.violations] == ["isl", "osl"]
    assert (exc.value.field, exc.value.reason) == exc.value.violations[0]
    assert str(exc.value).startswith("isl: must be at least 1, got 0; osl: ")
    req = EstimateRequest(**BASE, phase="decode", batch=1, parallelism=Parallelism(tp=3, pp=0))
    with pytest.raises(InvalidFields) as exc:
        estimate(req)
    assert [f for f, _ in exc.value.violations] == ["parallelism.pp", "parallelism.tp"]


def test_every_invalid_field_of_a_plan_comes_back_in_one_error() -> None:
    req = PlanRequest(
        "llama-3.1-8b",
        "h100-sxm",
        0,
        (Workload(1000, 0, weight=-1.0),),
        Slo(-1.0, 20.0, percentile="p75"),
        prefix_hit=2.0,
    )
    with pytest.raises(InvalidFields) as exc:
        plan(req)
    print(exc.value)
    assert [f for f, _ in exc.value.violations] == [
        "gpus",
        "traffic[0].osl",
        "traffic[0].weight",
        "slo.ttft_ms",
        "slo.percentile",
        "prefix_hit",
    ]


def test_a_plan_refuses_every_traffic_class_longer_than_the_models_context() -> None:
    req = PlanRequest(
        "llama-3.1-8b",
        "h100-sxm",
        8,
        (Workload(1000, 100), Workload(200_000, 100), Workload(100_000, 40_000)),
        Slo(1000.0, 20.0),
    )
    with pytest.raises(InvalidFields) as exc:
        plan(req)
    print(exc.value)
    assert [f for f, _ in exc.value.violations] == ["traffic[1].isl", "traffic[2].osl"]
    assert all("context of 131,072 tokens" in r for _, r in exc.value.violations)


def test_a_single_violation_stays_a_plain_invalid_input_error() -> None:
    v = validate.Violations()
    v.value(lambda: validate.integer(0, "batch", 1, 10))
    with pytest.raises(InvalidInputError) as exc:
        v.raise_any()
    assert type(exc.value) is InvalidInputError
    assert exc.value.violations == (("batch", "must be at least 1, got 0"),)
    validate.Violations().raise_any()  # nothing found: nothing raised
