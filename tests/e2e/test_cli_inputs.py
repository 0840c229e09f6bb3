"""How the CLI turns flags, JSON Lines and traffic-mix files into planner requests (no planning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.types import (
    EstimateRequest,
    Parallelism,
    PoolSpec,
    Precision,
    Slo,
    Workload,
)
from pdplanner.service.cli.inputs import (
    ESTIMATE_KEYS,
    PLAN_KEYS,
    estimate_request,
    flag_for,
    parse_jsonl_line,
    parse_traffic_pair,
    plan_request,
    plot_format,
    traffic_from_mix,
)

BASE = {"model": "llama-3.1-8b", "gpu": "h100", "isl": 1000, "osl": 200}


def test_a_decode_phase_builds_a_phase_request_with_parallelism_batch_and_context() -> None:
    req = estimate_request(
        {
            **BASE,
            "phase": "decode",
            "tp": 2,
            "pp": 2,
            "batch": 8,
            "context": 1500,
            "dtype": "fp8",
            "kv_dtype": "fp8",
        }
    )
    assert req == EstimateRequest(
        model="llama-3.1-8b", gpu="h100", isl=1000, osl=200,
        precision=Precision("fp8", "fp8"), phase="decode",
        parallelism=Parallelism(tp=2, pp=2, ep=1, attention_dp=1), batch=8, context=1500,
    )  # fmt: skip


def test_agg_mode_carries_concurrency_and_chunk_tokens() -> None:
    req = estimate_request(
        {
            **BASE,
            "mode": "agg",
            "tp": 4,
            "ep": 4,
            "attention_dp": 2,
            "concurrency": 64,
            "chunk_tokens": 2048,
            "engine": "sglang",
        }
    )
    assert req.mode == "agg" and req.phase is None
    assert req.parallelism == Parallelism(tp=4, pp=1, ep=4, attention_dp=2)
    assert (req.concurrency, req.chunk_tokens, req.engine) == (64, 2048, "sglang")


def test_disagg_mode_builds_two_pools_and_prefill_batch_defaults_to_one() -> None:
    req = estimate_request(
        {
            **BASE,
            "mode": "disagg",
            "prefill_tp": 2,
            "prefill_workers": 3,
            "decode_tp": 8,
            "decode_ep": 8,
            "decode_workers": 1,
            "decode_batch": 128,
        }
    )
    assert req.prefill == PoolSpec(Parallelism(tp=2), workers=3, batch=1)
    assert req.decode == PoolSpec(Parallelism(tp=8, ep=8), workers=1, batch=128)
    assert req.precision == Precision("bf16", "bf16") and req.engine == "vllm"


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"tp": 1, "batch": 1}, "phase|mode", "exactly one"),
        ({"phase": "decode", "mode": "agg", "tp": 1}, "phase|mode", "exactly one"),
        ({"phase": "verify", "tp": 1, "batch": 1}, "phase", "prefill or decode"),
        ({"mode": "both", "tp": 1}, "mode", "agg or disagg"),
        ({"phase": "prefill", "tp": 1}, "batch", "is required with --phase prefill"),
        ({"phase": "decode", "batch": 4}, "tp", "is required"),
        ({"mode": "agg", "tp": 1}, "concurrency", "is required with --mode agg"),
        ({"phase": "prefill", "tp": 1, "batch": 1, "context": 9}, "context", "only to --phase"),
        ({"phase": "prefill", "tp": 1, "batch": 1, "concurrency": 9}, "concurrency", "--mode agg"),
        ({"mode": "agg", "tp": 1, "concurrency": 2, "decode_tp": 2}, "decode_tp", "--mode disagg"),
        ({"mode": "disagg", "prefill_tp": 1, "prefill_workers": 1, "decode_tp": 1,
          "decode_workers": 1}, "decode_batch", "is required with --mode disagg"),
        ({"phase": "decode", "tp": 1.5, "batch": 1}, "tp", "integer"),
        ({"phase": "decode", "tp": True, "batch": 1}, "tp", "integer"),
        ({"phase": "decode", "tp": 1, "batch": 1, "gpus": 8}, "gpus", "unknown key"),
    ],
)  # fmt: skip
def test_an_estimate_request_missing_or_misplacing_a_key_names_it(
    extra: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        estimate_request({**BASE, **extra})
    assert info.value.field == field
    assert words in info.value.reason


@pytest.mark.parametrize("missing", ["model", "gpu", "isl", "osl"])
def test_model_gpu_and_lengths_are_always_required(missing: str) -> None:
    fields = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(InvalidInputError) as info:
        estimate_request({**fields, "phase": "decode", "tp": 1, "batch": 1})
    assert info.value.field == missing


@given(
    tp=st.integers(1, 64), pp=st.integers(1, 8), ep=st.integers(1, 64),
    dp=st.integers(1, 16), workers=st.integers(1, 32), batch=st.integers(1, 4096),
)  # fmt: skip
def test_every_pool_flag_lands_in_its_own_pool_field(
    tp: int, pp: int, ep: int, dp: int, workers: int, batch: int
) -> None:
    req = estimate_request({
        **BASE, "mode": "disagg",
        "prefill_tp": tp, "prefill_pp": pp, "prefill_ep": ep, "prefill_attention_dp": dp,
        "prefill_workers": workers, "prefill_batch": batch,
        "decode_tp": dp, "decode_pp": 1, "decode_ep": tp, "decode_attention_dp": pp,
        "decode_workers": batch, "decode_batch": workers,
    })  # fmt: skip
    assert req.prefill == PoolSpec(Parallelism(tp, pp, ep, dp), workers=workers, batch=batch)
    assert req.decode == PoolSpec(Parallelism(dp, 1, tp, pp), workers=batch, batch=workers)


def test_a_json_line_uses_the_flags_snake_case_names() -> None:
    line = json.dumps({**BASE, "phase": "prefill", "tp": 4, "batch": 2, "attention_dp": 1})
    assert parse_jsonl_line(line) == estimate_request(
        {**BASE, "phase": "prefill", "tp": 4, "batch": 2}
    )


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '"text"'])
def test_a_line_that_is_not_a_json_object_is_an_error_on_no_field(line: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_jsonl_line(line)
    assert info.value.field == ""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("parallelism.tp", "--tp"),
        ("prefill.parallelism.tp", "--prefill-tp"),
        ("decode.parallelism.attention_dp", "--decode-attention-dp"),
        ("prefill.workers", "--prefill-workers"),
        ("decode.batch", "--decode-batch"),
        ("precision.dtype", "--dtype"),
        ("precision.kv_dtype", "--kv-dtype"),
        ("batch", "--batch"),
        ("workload.isl", "--isl"),
        ("model.num_key_value_heads", "--model: num_key_value_heads"),
        ("phase|mode", "--phase/--mode"),
        ("unrelated.path", "unrelated.path"),
    ],
)
def test_planner_field_paths_are_named_as_estimate_flags(path: str, expected: str) -> None:
    assert flag_for(path, ESTIMATE_KEYS) == expected


@pytest.mark.parametrize(
    ("path", "traffic", "expected"),
    [
        ("slo.ttft_ms", None, "--ttft-ms"),
        ("slo.min_tokens_per_s_per_user", None, "--min-tokens-per-user"),
        ("slo.percentile", None, "--percentile"),
        ("limits.max_tp", None, "--max-tp"),
        ("limits.modes", None, "--mode"),
        ("rate_per_s", None, "--rate"),
        ("prefix_hit", None, "--prefix-hit"),
        ("decode_gpu", None, "--decode-gpu"),
        ("traffic[0].isl", None, "--isl"),
        ("traffic[2].osl", "mix", "--mix: traffic[2].osl"),
    ],
)
def test_planner_field_paths_are_named_as_plan_flags(
    path: str, traffic: str | None, expected: str
) -> None:
    assert flag_for(path, PLAN_KEYS, traffic=traffic) == expected


def test_json_lines_errors_name_keys_not_flags() -> None:
    assert flag_for("prefill.parallelism.tp", ESTIMATE_KEYS, as_flag=False) == "prefill_tp"


def test_a_csv_mix_reads_isl_osl_weight_buckets(tmp_path: Path) -> None:
    path = tmp_path / "mix.csv"
    path.write_text("isl,osl,weight\n1000,200,3\n 8000 , 500 , 1.5\n\n")
    assert traffic_from_mix(str(path)) == (Workload(1000, 200, 3.0), Workload(8000, 500, 1.5))


def test_a_csv_mix_may_leave_weight_out_and_order_columns_freely(tmp_path: Path) -> None:
    path = tmp_path / "mix.csv"
    path.write_text("OSL,ISL\n200,1000\n")
    assert traffic_from_mix(str(path)) == (Workload(1000, 200, 1.0),)


def test_a_json_mix_is_a_list_of_objects(tmp_path: Path) -> None:
    path = tmp_path / "mix.json"
    path.write_text(
        json.dumps([{"isl": 4000, "osl": 500, "weight": 0.7}, {"isl": 16000, "osl": 2000}])
    )
    assert traffic_from_mix(str(path)) == (Workload(4000, 500, 0.7), Workload(16000, 2000, 1.0))


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("a.csv", "isl,weight\n10,1\n", "header"),
        ("a.csv", "isl,osl\nten,5\n", "row 1 isl: must be a number"),
        ("a.csv", "isl,osl\n10.5,5\n", "row 1 isl: must be an integer"),
        ("a.csv", "isl,osl\n10,\n", "row 1: osl is missing"),
        ("a.csv", "isl,osl\n", "no traffic buckets"),
        ("a.json", '[{"isl": 1}', "not valid JSON"),
        ("a.json", '{"isl": 1, "osl": 2}', "list of"),
        ("a.json", '[{"isl": 1, "osl": 2, "weight": "x"}]', "entry 1 weight"),
    ],
)
def test_a_bad_mix_file_is_an_error_on_mix(
    tmp_path: Path, name: str, text: str, words: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        traffic_from_mix(str(path))
    assert info.value.field == "mix"
    assert words in info.value.reason


def test_an_unreadable_mix_file_is_an_error_on_mix(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read") as info:
        traffic_from_mix(str(tmp_path / "missing.csv"))
    assert info.value.field == "mix"


def test_plan_flags_build_a_plan_request() -> None:
    req = plan_request(
        model="llama-3.1-70b",
        gpu="h100",
        gpus=16,
        ttft_ms=1000,
        tpot_ms=20,
        isl=4000,
        osl=500,
        decode_gpu="h200",
        percentile="p90",
        rate=5.0,
        prefix_hit=0.25,
        min_tokens_per_user=30,
        mode="disagg",
        max_tp=4,
        allow_pp=False,
        dtype="fp8",
        engine_arg=["max_num_seqs=16", "enable_chunked_prefill=false"],
    )
    # values stay text until the engine's scheduler reads them (scheduler_for)
    assert req.engine_args == (("max_num_seqs", "16"), ("enable_chunked_prefill", "false"))
    assert req.traffic == (Workload(4000, 500),)
    assert req.slo == Slo(ttft_ms=1000, tpot_ms=20, percentile="p90", min_tokens_per_s_per_user=30)
    assert (req.decode_gpu, req.rate_per_s, req.prefix_hit) == ("h200", 5.0, 0.25)
    assert req.limits.modes == ("disagg",) and req.limits.max_tp == 4
    assert not req.limits.allow_pp and req.limits.allow_ep
    assert req.precision == Precision("fp8", "bf16")


def test_plan_mode_both_searches_agg_and_disagg() -> None:
    req = plan_request(model="m", gpu="g", gpus=8, ttft_ms=1, tpot_ms=1, isl=1, osl=1)
    assert req.limits.modes == ("agg", "disagg")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"isl": None}, "isl"),
        ({"osl": None}, "osl"),
        ({"mix": "x.csv"}, "mix"),
        ({"ttft_ms": None}, "ttft_ms"),
        ({"gpus": None}, "gpus"),
        ({"percentile": "p75"}, "percentile"),
        ({"mode": "all"}, "mode"),
        ({"engine_arg": ["max_num_seqs"]}, "engine_arg"),
        ({"engine_arg": ["bogus=1"]}, "engine_arg.bogus"),
    ],
)
def test_plan_flags_that_are_missing_or_invalid_are_named(
    kwargs: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {
        "model": "m",
        "gpu": "g",
        "gpus": 8,
        "ttft_ms": 1.0,
        "tpot_ms": 1.0,
        "isl": 1,
        "osl": 1,
        **kwargs,
    }
    with pytest.raises(InvalidInputError) as info:
        plan_request(**args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_sweep_traffic_pairs_are_isl_colon_osl() -> None:
    assert parse_traffic_pair("4000:500") == Workload(4000, 500)
    for bad in ("4000", "4000:500:1", "a:b"):
        with pytest.raises(InvalidInputError):
            parse_traffic_pair(bad)


def test_plots_are_png_or_svg() -> None:
    assert plot_format("out/frontier.PNG") == "png"
    assert plot_format("f.svg") == "svg"
    with pytest.raises(InvalidInputError):
        plot_format("f.jpg")
