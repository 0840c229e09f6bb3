"""Bad input never shows a traceback: one ``error: --flag: reason`` line on stderr, exit code 2."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pdplanner.service.cli import app

runner = CliRunner(env={"PDPLANNER_SERVER": None})  # in process, whatever the shell says
HAS_ESTIMATE = importlib.util.find_spec("pdplanner.planner.estimate") is not None
needs_estimate = pytest.mark.skipif(
    not HAS_ESTIMATE, reason="pdplanner.planner.estimate not available"
)

EST = ["estimate", "--model", "llama-3.1-8b", "--gpu", "h100", "--isl", "1000", "--osl", "200"]
DECODE = ["--phase", "decode", "--tp", "1", "--batch", "1"]
PLAN = ["plan", "--model", "llama-3.1-8b", "--gpu", "h100", "--gpus", "8", "--ttft-ms", "500",
        "--tpot-ms", "50"]  # fmt: skip


def assert_one_line_error(args: list[str], starts: str, *contains: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {starts}"), lines[0]
    for text in contains:
        assert text in lines[0], lines[0]
    return lines[0]


@needs_estimate
@pytest.mark.parametrize(
    ("args", "starts", "contains"),
    [
        (["--model", "llama-3.1-7b"], "--model: unknown model 'llama-3.1-7b'", ["llama-3.1-70b"]),
        (["--gpu", "h100-sx"], "--gpu: unknown GPU 'h100-sx'", ["h100-sxm"]),
        (["--batch", "0"], "--batch: must be at least 1", []),
        (["--isl", "-5"], "--isl: must be at least 1", []),
        (["--osl", "0"], "--osl:", []),
        (["--isl", "1000000000"], "--isl: must be at most", []),
        (["--tp", "3"], "--tp: 3 does not divide the 32 attention heads", []),
        (["--context", "0"], "--context:", []),
        (["--dtype", "fp4"], "--dtype:", ["fp4"]),
        (["--engine", "tgi"], "--engine: unknown engine 'tgi'", ["vllm"]),
        (["--ep", "2"], "--ep:", []),
        (["--memory-fraction", "1.5"], "--memory-fraction: must be a fraction in (0, 1]", []),
        (["--memory-fraction", "0"], "--memory-fraction: must be a fraction in (0, 1]", []),
    ],
)
def test_an_invalid_estimate_value_is_one_line_naming_its_flag(
    args: list[str], starts: str, contains: list[str]
) -> None:
    # later flags win, so each case overrides one value of a valid decode request
    assert_one_line_error([*EST, *DECODE, *args], starts, *contains)


@needs_estimate
def test_an_invalid_disagg_pool_value_names_the_pool_flag() -> None:
    disagg = [
        "--mode",
        "disagg",
        "--prefill-tp",
        "3",
        "--prefill-workers",
        "1",
        "--decode-tp",
        "1",
        "--decode-workers",
        "1",
        "--decode-batch",
        "4",
    ]
    assert_one_line_error([*EST, *disagg], "--prefill-tp: 3 does not divide")
    disagg[3] = "2"  # --prefill-tp 2
    assert_one_line_error([*EST, *disagg, "--decode-workers", "0"], "--decode-workers: must be")


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["--tp", "1", "--batch", "1"], "--phase/--mode: give exactly one"),
        ([*DECODE, "--mode", "agg"], "--phase/--mode: give exactly one"),
        (["--mode", "agg", "--tp", "2"], "--concurrency: is required with --mode agg"),
        (["--mode", "agg", "--tp", "1", "--concurrency", "4", "--rate", "2"], "--rate: give"),
        (["--mode", "agg", "--tp", "1", "--rate", "0"], "--rate: must be greater than 0"),
        (["--mode", "agg", "--tp", "1", "--concurrency", "4", "--engine-arg", "max_num_seqs=0"],
         "--engine-arg: max_num_seqs: must be between 1"),
        (["--mode", "agg", "--tp", "1", "--concurrency", "4", "--engine-arg", "block_size=16"],
         "--engine-arg: block_size: unknown engine argument"),
        (["--mode", "agg", "--tp", "1", "--concurrency", "4", "--engine-arg", "oops"],
         "--engine-arg: must be key=value"),
        ([*DECODE, "--engine-arg", "max_num_seqs=4"], "--engine-arg: does not apply to --phase"),
        (["--mode", "disagg", "--prefill-tp", "1", "--prefill-workers", "1", "--decode-tp", "1",
          "--decode-workers", "1"], "--decode-batch: is required with --mode disagg"),
        ([*DECODE, "--concurrency", "4"], "--concurrency: does not apply to --phase decode"),
        (["--phase", "train", "--tp", "1", "--batch", "1"], "--phase: must be prefill or decode"),
        (["--mode", "mixed", "--tp", "1"], "--mode: must be agg or disagg"),
    ],
)  # fmt: skip
def test_a_missing_or_misplaced_estimate_flag_is_one_line_naming_it(
    args: list[str], starts: str
) -> None:
    assert_one_line_error([*EST, *args], starts)


def test_a_missing_model_is_named() -> None:
    assert_one_line_error(
        ["estimate", "--gpu", "h100", "--isl", "1", "--osl", "1", *DECODE], "--model: is required"
    )


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["--batch", "eight"], "Invalid value for '--batch'"),
        (["--bogus"], "No such option: --bogus"),
        (["--tp"], "Option '--tp' requires an argument"),
    ],
)
def test_click_usage_errors_are_one_line_too(args: list[str], starts: str) -> None:
    assert_one_line_error([*EST, *DECODE, *args], starts)


def test_a_usage_error_points_at_the_commands_help() -> None:
    line = assert_one_line_error([*EST, "--bogus"], "No such option")
    assert line.endswith("(see 'pdplanner estimate --help')")


def test_an_unknown_command_suggests_the_right_one() -> None:
    assert_one_line_error(["estimat"], "No such command 'estimat'", "estimate")


def test_input_cannot_be_combined_with_request_flags(tmp_path: Path) -> None:
    assert_one_line_error(
        ["estimate", "--input", str(tmp_path / "x.jsonl"), "--tp", "2"],
        "--input: cannot be combined with request flags (--tp)",
    )


def test_an_unreadable_input_file_is_one_line() -> None:
    assert_one_line_error(
        ["estimate", "--input", "/nonexistent/requests.jsonl"],
        "--input: cannot read /nonexistent/requests.jsonl",
    )


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["--isl", "1000"], "--osl: is required"),
        ([], "--isl: is required (or give a traffic mix with --mix FILE)"),
        (["--mix", "/nonexistent/mix.csv"], "--mix: cannot read /nonexistent/mix.csv"),
        (["--isl", "1", "--osl", "1", "--mix", "m.csv"], "--mix: give either --mix or"),
        (["--isl", "1", "--osl", "1", "--percentile", "p75"], "--percentile: must be p50"),
        (["--isl", "1", "--osl", "1", "--mode", "all"], "--mode: must be agg, disagg or both"),
        (["--isl", "1", "--osl", "1", "--plot", "f.jpg"], "--plot: must end in .png or .svg"),
        (["--isl", "1", "--osl", "1", "--memory-fraction", "1.01"], "--memory-fraction: must be"),
    ],
)
def test_an_invalid_plan_flag_is_one_line_naming_it(args: list[str], starts: str) -> None:
    assert_one_line_error([*PLAN, *args], starts)


def test_a_plan_without_an_slo_names_the_missing_target() -> None:
    args = [
        "plan",
        "--model",
        "m",
        "--gpu",
        "g",
        "--gpus",
        "8",
        "--isl",
        "1",
        "--osl",
        "1",
        "--tpot-ms",
        "20",
    ]
    assert_one_line_error(args, "--ttft-ms: is required")


def test_a_mix_file_with_a_bad_row_names_the_row(tmp_path: Path) -> None:
    mix = tmp_path / "mix.csv"
    mix.write_text("isl,osl,weight\n1000,200,1\n2000,x,1\n")
    assert_one_line_error([*PLAN, "--mix", str(mix)], "--mix: row 2 osl: must be a number")


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        (["sweep", "--gpu", "h100", "--traffic", "1:1", "--tpot-ms", "20", "--ttft-ms", "1",
          "--gpus", "8"], "--model: is required (repeat it"),
        (["sweep", "--model", "m", "--gpu", "h100", "--traffic", "1000", "--tpot-ms", "20",
          "--ttft-ms", "1", "--gpus", "8"], "--traffic: expected ISL:OSL"),
        (["sweep", "--model", "nope", "--gpu", "h100", "--traffic", "1:1", "--tpot-ms", "20",
          "--ttft-ms", "1", "--gpus", "8"], "--model: unknown model 'nope'"),
        (["sweep", "--model", "llama-3.1-8b", "--gpu", "h100", "--traffic", "1:1", "--tpot-ms",
          "20", "--ttft-ms", "1", "--gpus", "8", "--memory-fraction", "2"],
         "--memory-fraction: must be a fraction in (0, 1]"),
    ],
)  # fmt: skip
def test_an_invalid_sweep_flag_is_one_line_naming_it(args: list[str], starts: str) -> None:
    if "nope" in args and importlib.util.find_spec("pdplanner.planner.search") is None:
        pytest.skip("pdplanner.planner.search not available")
    assert_one_line_error(args, starts)


def test_stored_plan_commands_need_a_server() -> None:
    result = runner.invoke(app, ["plans", "list"], env={"PDPLANNER_SERVER": ""})
    assert result.exit_code == 2
    assert (
        result.stderr == "error: --server: is required for this command (or set PDPLANNER_SERVER)\n"
    )


# -- the installed console script -------------------------------------------------------------

SCRIPT = Path(sys.executable).with_name("pdplanner")
needs_script = pytest.mark.skipif(not SCRIPT.exists(), reason="pdplanner is not installed")


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PDPLANNER_SERVER": ""}
    env.pop("PDPLANNER_DEBUG", None)
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@needs_script
@needs_estimate
def test_the_installed_command_exits_2_with_one_line_for_a_bad_value() -> None:
    proc = run_script(*EST, *DECODE, "--batch", "0")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "error: --batch: must be at least 1, got 0\n"


@needs_script
def test_the_installed_command_exits_2_with_one_line_for_a_usage_error() -> None:
    proc = run_script("plan", "--model", "m", "--no-such-flag")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("error: No such option: --no-such-flag")


@needs_script
def test_the_installed_command_lists_models_as_json() -> None:
    proc = run_script("models", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "llama-3.1-70b" in proc.stdout


@needs_estimate
def test_several_invalid_values_show_the_first_and_name_the_others() -> None:
    args = [*EST, *DECODE, "--isl", "-5", "--osl", "0"]
    line = assert_one_line_error(args, "--isl: must be at least 1", "(1 more: --osl)")
    print(line)


def test_every_misplaced_and_missing_flag_of_an_estimate_is_named() -> None:
    args = [*EST, "--phase", "decode", "--batch", "1", "--concurrency", "4", "--prefill-tp", "2"]
    line = assert_one_line_error(
        args, "--concurrency: does not apply to --phase decode", "(2 more: --prefill-tp, --tp)"
    )
    print(line)
