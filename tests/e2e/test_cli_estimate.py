"""``pdplanner estimate`` in process: the JSON contract, text output and JSON Lines batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pdplanner.service.cli import app
from pdplanner.service.cli.inputs import estimate_request

estimate_module = pytest.importorskip("pdplanner.planner.estimate")

runner = CliRunner(env={"PDPLANNER_SERVER": None})  # in process, whatever the shell says
CONFIGS = Path(__file__).resolve().parents[1] / "unit" / "configs"
BASE = ["estimate", "--model", "llama-3.1-8b", "--gpu", "h100", "--isl", "1000", "--osl", "200"]
PHASE_KEYS = {"step_ms", "per_layer_ms", "memory_gb_per_gpu", "fits"}
LAYER_KEYS = {"gemm", "attention", "communication", "other"}
MODE_KEYS = {"ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
             "requests_per_s", "gpus", "memory_gb_per_gpu", "fits"}  # fmt: skip


def run_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*BASE, *args, "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    out: dict[str, Any] = json.loads(result.stdout)
    return out


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_phase_estimate_prints_step_layer_breakdown_memory_and_fit(phase: str) -> None:
    out = run_json("--phase", phase, "--tp", "2", "--batch", "4")
    assert set(out) >= PHASE_KEYS
    assert set(out["per_layer_ms"]) == LAYER_KEYS
    assert out["fits"] is True and "reason" not in out
    assert isinstance(out["step_ms"], float) and out["step_ms"] > 0


def test_an_eager_step_shows_the_hosts_issue_time_that_bounds_it() -> None:
    """TensorRT-LLM runs a prefill step without CUDA graphs: its host issues Llama-3.1-8B's 32
    layers at 0.8 ms each (25.6 ms), more than the GPU needs for 1k tokens at TP 8, so the step
    takes the issue time and the output says why. A decode step replays a graph (0, no row)."""
    out = run_json("--engine", "trtllm", "--phase", "prefill", "--tp", "8", "--batch", "1")
    assert out["host_issue_ms"] == pytest.approx(32 * 0.8)
    layers_ms = 32 * sum(out["per_layer_ms"].values())
    assert layers_ms < out["host_issue_ms"] < out["step_ms"]
    decode = run_json("--engine", "trtllm", "--phase", "decode", "--tp", "8", "--batch", "8")
    assert "host_issue_ms" not in decode or decode["host_issue_ms"] == 0
    step = ["--phase", "prefill", "--tp", "8", "--batch", "1"]
    text = runner.invoke(app, [*BASE, "--engine", "trtllm", *step])
    assert text.exit_code == 0 and "host issue, no CUDA graph (ms)" in text.stdout
    text = runner.invoke(app, [*BASE, *step])  # vLLM: no such cost
    assert text.exit_code == 0 and "host issue" not in text.stdout


def test_an_agg_estimate_prints_the_serving_metrics() -> None:
    out = run_json("--mode", "agg", "--tp", "1", "--concurrency", "16")
    assert set(out) >= MODE_KEYS
    assert out["gpus"] == 1 and out["fits"] is True


def test_an_agg_estimate_under_poisson_load_reports_medians_and_says_so() -> None:
    out = run_json("--mode", "agg", "--tp", "1", "--rate", "4")
    print(out["details"]["load"], out["details"]["ttft_ms"])
    assert out["details"]["load"].startswith("poisson") and out["details"]["headline"] == "p50"
    assert out["ttft_ms"] == out["details"]["ttft_ms"]["p50"]
    closed = run_json("--mode", "agg", "--tp", "1", "--concurrency", "4")
    assert closed["details"]["load"].startswith("closed")
    assert closed["ttft_ms"] == closed["details"]["ttft_ms"]["mean"]


def test_engine_args_reach_the_engine_scheduler() -> None:
    out = run_json(
        "--mode", "agg", "--tp", "1", "--concurrency", "4",
        "--engine-arg", "max_num_batched_tokens=512", "--engine-arg", "kv_admission=reserve",
    )  # fmt: skip
    assert out["details"]["scheduler"]["max_num_batched_tokens"] == 512
    assert out["details"]["scheduler"]["kv_admission"] == "reserve"


def test_text_output_says_which_load_model_the_figures_mean() -> None:
    result = runner.invoke(app, [*BASE, "--mode", "agg", "--tp", "1", "--rate", "2"])
    assert result.exit_code == 0, result.stderr
    assert "Poisson 2 req/s" in result.stdout


def test_a_disagg_estimate_counts_the_gpus_of_both_pools() -> None:
    out = run_json(
        "--mode",
        "disagg",
        "--prefill-tp",
        "2",
        "--prefill-workers",
        "3",
        "--decode-tp",
        "4",
        "--decode-workers",
        "1",
        "--decode-batch",
        "32",
    )
    assert set(out) >= MODE_KEYS
    assert out["gpus"] == 3 * 2 + 1 * 4


def test_a_disagg_estimate_takes_the_decode_pools_own_gpu() -> None:
    # plan and simulate take --decode-gpu; estimate took no way to price the same deployment
    pools = ["--mode", "disagg", "--prefill-tp", "1", "--prefill-workers", "1", "--decode-tp",
             "1", "--decode-workers", "1", "--decode-batch", "48", "--rate", "2"]  # fmt: skip
    h100 = run_json(*pools)
    h200 = run_json(*pools, "--decode-gpu", "h200-sxm")
    req = estimate_request(
        {"model": "llama-3.1-8b", "gpu": "h100", "isl": 1000, "osl": 200, "mode": "disagg",
         "prefill_tp": 1, "prefill_workers": 1, "decode_tp": 1, "decode_workers": 1,
         "decode_batch": 48, "rate": 2.0, "decode_gpu": "h200-sxm"}
    )  # fmt: skip
    assert req.decode is not None and req.decode.gpu == "h200-sxm"
    assert h200 == json.loads(json.dumps(estimate_module.estimate(req).to_dict()))
    print(f"TPOT p50 decode on h100 {h100['tpot_ms']:.2f} ms, on h200 {h200['tpot_ms']:.2f} ms")
    assert h200["tpot_ms"] < h100["tpot_ms"]  # more HBM bandwidth for the memory-bound steps
    text = runner.invoke(app, [*BASE, *pools, "--decode-gpu", "h200-sxm"]).stdout
    assert "decode 1 x h200-sxm TP1, batch 48" in text
    bad = runner.invoke(app, [*BASE, "--mode", "agg", "--tp", "1", "--rate", "2",
                              "--decode-gpu", "h200-sxm"])  # fmt: skip
    assert bad.exit_code == 2
    assert (
        bad.stderr == "error: --decode-gpu: does not apply to --mode agg (only to --mode disagg)\n"
    )


def test_a_configuration_that_does_not_fit_says_why() -> None:
    result = runner.invoke(
        app,
        [
            "estimate",
            "--model",
            "llama-3.1-405b",
            "--gpu",
            "h100",
            "--isl",
            "1000",
            "--osl",
            "200",
            "--phase",
            "decode",
            "--tp",
            "1",
            "--batch",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["fits"] is False
    assert out["reason"]


def test_the_cli_prints_exactly_what_the_planner_computes_for_the_same_request() -> None:
    flags = [
        "--mode",
        "disagg",
        "--prefill-tp",
        "2",
        "--prefill-workers",
        "2",
        "--prefill-batch",
        "2",
        "--decode-tp",
        "2",
        "--decode-pp",
        "2",
        "--decode-workers",
        "1",
        "--decode-batch",
        "64",
        "--dtype",
        "fp8",
    ]
    out = run_json(*flags)
    req = estimate_request(
        {
            "model": "llama-3.1-8b",
            "gpu": "h100",
            "isl": 1000,
            "osl": 200,
            "mode": "disagg",
            "prefill_tp": 2,
            "prefill_workers": 2,
            "prefill_batch": 2,
            "decode_tp": 2,
            "decode_pp": 2,
            "decode_workers": 1,
            "decode_batch": 64,
            "dtype": "fp8",
        }
    )
    assert out == json.loads(json.dumps(estimate_module.estimate(req).to_dict()))


def test_text_output_names_the_request_and_tabulates_the_results() -> None:
    result = runner.invoke(app, [*BASE, "--phase", "decode", "--tp", "1", "--batch", "8"])
    assert result.exit_code == 0, result.stderr
    assert "llama-3.1-8b on h100" in result.stdout
    assert "decode step, TP1, batch 8" in result.stdout
    assert "step (ms)" in result.stdout and "fits" in result.stdout


def test_an_input_file_gets_one_json_result_per_request_line_in_order(tmp_path: Path) -> None:
    base = {"model": "llama-3.1-8b", "gpu": "h100", "isl": 1000, "osl": 200}
    lines = [
        {**base, "phase": "decode", "tp": 1, "batch": 8},
        {**base, "phase": "decode", "tp": 1, "batch": 0},
        {**base, "mode": "agg", "tp": 3, "concurrency": 4},
        {**base, "mode": "agg", "tp": 1, "concurrency": 4},
    ]
    text = "\n".join(json.dumps(line) for line in lines[:2]) + "\n\nnot json\n"
    text += "\n".join(json.dumps(line) for line in lines[2:]) + "\n"
    path = tmp_path / "requests.jsonl"
    path.write_text(text)
    result = runner.invoke(app, ["estimate", "--input", str(path)])
    assert result.exit_code == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 5  # the blank line is skipped
    assert set(out[0]) >= PHASE_KEYS
    assert out[1] == {"error": "line 2: batch: must be at least 1, got 0"}
    assert out[2]["error"].startswith("line 4: not valid JSON")
    assert out[3]["error"].startswith("line 5: tp: 3 does not divide")
    assert set(out[4]) >= MODE_KEYS


def test_an_input_file_can_be_read_from_stdin() -> None:
    line = json.dumps(
        {
            "model": "llama-3.1-8b",
            "gpu": "h100",
            "isl": 100,
            "osl": 10,
            "phase": "prefill",
            "tp": 1,
            "batch": 1,
        }
    )
    result = runner.invoke(app, ["estimate", "--input", "-"], input=line + "\n")
    assert result.exit_code == 0, result.stderr
    assert set(json.loads(result.stdout)) >= PHASE_KEYS


DYNAMO_PREFILL = ["estimate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--dtype", "fp8",
                  "--isl", "3000", "--osl", "150", "--phase", "prefill", "--tp", "1", "--batch",
                  "1"]  # fmt: skip


def test_memory_fraction_decides_whether_the_dynamo_prefill_worker_fits() -> None:
    """Dynamo's published Llama-70B FP8 prefill worker (TP1 on an H100, vLLM at
    gpu_memory_utilization 0.95) fits at that fraction and not at vLLM's default 0.9."""
    default = runner.invoke(app, [*DYNAMO_PREFILL, "--json"])
    assert default.exit_code == 0, default.stderr
    refused = json.loads(default.stdout)
    assert refused["fits"] is False
    assert "gpu_memory_utilization 0.9 " in refused["reason"]
    raised = runner.invoke(app, [*DYNAMO_PREFILL, "--memory-fraction", "0.95", "--json"])
    assert raised.exit_code == 0, raised.stderr
    fits = json.loads(raised.stdout)
    assert fits["fits"] is True and fits["kv_capacity_tokens"] > 3000


def test_text_output_names_the_model_its_parameters_and_the_gpu_basis() -> None:
    calibrated = runner.invoke(app, [*BASE, "--phase", "decode", "--tp", "1", "--batch", "8"])
    assert calibrated.exit_code == 0, calibrated.stderr
    assert "model: llama-3.1-8b (8.0B parameters" in calibrated.stdout
    assert "GPU figures: calibrated" in calibrated.stdout
    args = ["estimate", "--model", "mixtral-8x7b", "--gpu", "mi355x", "--isl", "1000", "--osl",
            "200", "--phase", "decode", "--tp", "1", "--batch", "8"]  # fmt: skip
    scaled = runner.invoke(app, args)
    assert scaled.exit_code == 0, scaled.stderr
    assert "model: mixtral-8x7b (46.7B total / 12.9B active" in scaled.stdout
    assert "GPU figures: datasheet-scaled (no measured tables" in scaled.stdout


def test_a_model_directory_is_a_model_argument() -> None:
    folder = Path(__file__).parents[1] / "unit" / "configs" / "gpt-oss-120b"
    args = ["estimate", "--model", str(folder), "--gpu", "h100-sxm", "--isl", "1000", "--osl",
            "200", "--phase", "decode", "--tp", "2", "--batch", "8", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"].startswith("gpt-oss-120b") and out["fits"] is True


@pytest.mark.parametrize(
    ("model", "flags", "dtype"),
    [
        ("Qwen/Qwen3-235B-A22B-FP8", [], "fp8"),  # named by its FP8 release
        ("qwen3-235b-a22b", [], "bf16"),  # the same architecture, named by its bf16 release
        ("deepseek-ai/DeepSeek-V3", [], "fp8"),  # published in FP8 only
        ("Qwen/Qwen3-235B-A22B-FP8", ["--dtype", "bf16"], "bf16"),  # asked for outright
        # a model directory: its config.json's quantization decides
        (str(CONFIGS / "DeepSeek-V3.2"), [], "fp8"),
        (str(CONFIGS / "Qwen3-Next-80B-A3B-Instruct"), [], "bf16"),
    ],
)
def test_without_dtype_a_model_is_estimated_at_its_checkpoints_precision(
    model: str, flags: list[str], dtype: str
) -> None:
    # naming an FP8 checkpoint and getting a bf16 estimate answered another question (a
    # newcomer's finding): the header says which precision was priced
    args = ["estimate", "--model", model, "--gpu", "h200", "--isl", "2000", "--osl", "500",
            "--phase", "decode", "--tp", "8", "--batch", "8", *flags]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    header = result.stdout.splitlines()[0]
    print(header)
    assert header.startswith(f"{model} on h200, ISL 2000 / OSL 500, {dtype}")


def test_kv_dtype_and_the_engines_kv_cache_dtype_must_agree() -> None:
    agg = [*BASE, "--mode", "agg", "--tp", "1", "--rate", "2"]
    clash = runner.invoke(app, [*agg, "--kv-dtype", "bf16", "--engine-arg", "kv_cache_dtype=fp8"])
    assert clash.exit_code == 2
    assert clash.stderr.strip() == (
        "error: --engine-arg: kv_cache_dtype=fp8 but --kv-dtype is bf16; give one, or the same "
        "value"
    )
    # the engine argument alone sets it, and the header says so
    alone = runner.invoke(app, [*agg, "--engine-arg", "kv_cache_dtype=fp8"])
    assert alone.exit_code == 0, alone.stderr
    assert alone.stdout.splitlines()[0].startswith(
        "llama-3.1-8b on h100, ISL 1000 / OSL 200, bf16 (KV fp8)"
    )


def test_prefill_only_traffic_shows_no_tpot_rather_than_zero() -> None:
    """OSL 1: the first token ends each request, so there is no TPOT or per-user decode rate to
    print (0.00 read as an infinitely fast decode); TTFT and throughput are still shown."""
    args = ["estimate", "--model", "llama-3.1-8b", "--gpu", "h100", "--isl", "1000", "--osl", "1",
            "--mode", "agg", "--tp", "1", "--concurrency", "4"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    rows = {
        cells[1].strip(): cells[2].strip()
        for line in result.stdout.splitlines()
        if len(cells := line.split("│")) == 4
    }
    assert rows["TPOT (ms)"] == "- (OSL 1: no decode)"
    assert rows["tokens/s/user"] == "-"
    assert float(rows["TTFT (ms)"].replace(",", "")) > 0


def test_a_precision_error_on_the_checkpoint_default_says_it_was_not_given() -> None:
    """DeepSeek-V3 is published in fp8, so estimate takes fp8 without --dtype; an A100 has no
    fp8 tensor cores. The error is on --dtype, which the user did not type: it says the value is
    the checkpoint's and how to choose another. With --dtype fp8 typed, the plain error."""
    args = ["estimate", "--model", "deepseek-v3", "--gpu", "a100-sxm-80g", "--isl", "2000",
            "--osl", "200", "--phase", "decode", "--tp", "8", "--batch", "8"]  # fmt: skip
    defaulted = runner.invoke(app, args)
    typed = runner.invoke(app, [*args, "--dtype", "fp8"])
    plain = "error: --dtype: a100-sxm-80g has no fp8 tensor cores (supports bf16)"
    assert (defaulted.exit_code, typed.exit_code) == (2, 2)
    assert defaulted.stderr == (
        f"{plain} (fp8 is the checkpoint's precision, taken without --dtype; give --dtype bf16)\n"
    )
    assert typed.stderr == f"{plain}\n"
