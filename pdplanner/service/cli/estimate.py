"""``pdplanner estimate``: one fixed configuration, a phase step or an agg/disagg deployment.

Each request option is declared once, in ``OPTIONS`` (key, help, panel); the command's signature,
the keys it passes to ``inputs.estimate_request`` and the keys of an ``--input`` JSON Lines
request are all that one table.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import replace
from typing import Annotated, Any

import typer

from pdplanner.planner.errors import InvalidInputError, PlannerError
from pdplanner.planner.types import EstimateRequest, PhaseEstimate, PoolSpec, ServingEstimate
from pdplanner.service.cli import app as cli
from pdplanner.service.cli import format as fmt
from pdplanner.service.cli import inputs
from pdplanner.service.cli.backend import Backend, backend
from pdplanner.service.cli.errors import CliError, checkpoint_dtype, flags

_REQ = "request"
_PHASE = "--phase prefill|decode"
_AGG = "--mode agg"
_DISAGG = "--mode disagg"


def _pool_options(role: str, x_of: str) -> dict[str, tuple[str, str]]:
    what = f"{role.capitalize()} worker"
    return {
        f"{role}_tp": (f"{what} TP.", _DISAGG),
        f"{role}_pp": (f"{what} pipeline stages (default: 1).", _DISAGG),
        f"{role}_ep": (f"{what} expert parallelism (default: 1).", _DISAGG),
        f"{role}_attention_dp": (f"{what} attention data-parallel ranks (default: 1).", _DISAGG),
        f"{role}_workers": (f"{role.capitalize()} workers ({x_of} of xPyD).", _DISAGG),
    }


#: The request options of ``estimate``: key -> (help, panel). dtype, kv_dtype, engine,
#: memory_fraction, phase and mode have options of their own (metavars), declared in the signature
#: below.
OPTIONS: dict[str, tuple[str, str]] = {
    "model": ("Model name, alias or config.json path.", _REQ),
    "gpu": ("GPU name, alias or spec file.", _REQ),
    "isl": ("Input (prompt) tokens per request.", _REQ),
    "osl": ("Output tokens per request.", _REQ),
    "tp": ("Tensor parallelism (phase, agg).", _PHASE),
    "pp": ("Pipeline stages (phase, agg) (default: 1).", _PHASE),
    "ep": ("Expert parallelism (phase, agg) (default: 1).", _PHASE),
    "attention_dp": ("Attention data-parallel ranks (phase, agg) (default: 1).", _PHASE),
    "batch": ("Prompts (prefill) or sequences (decode).", _PHASE),
    "context": ("Decode: cached tokens per sequence (default: ISL + OSL/2).", _PHASE),
    "concurrency": (
        "Agg/disagg: benchmark clients starting together, one request each in flight "
        "(closed loop; figures are means over the run).",
        _AGG,
    ),
    "rate": (
        "Agg/disagg: Poisson arrivals per second (open loop; TTFT/TPOT at their median, "
        "p90/p99 in --json).",
        _AGG,
    ),
    "engine_arg": (
        "Override an engine scheduler setting, key=value (repeatable): max_num_batched_tokens, "
        "max_num_seqs, enable_chunked_prefill, kv_admission, gpu_memory_utilization, ...",
        _AGG,
    ),
    "chunk_tokens": (
        "Agg: chunked-prefill token budget, at least 64; 0: no chunked prefill (default: the "
        "engine's).",
        _AGG,
    ),
    **_pool_options("prefill", "x"),
    "prefill_batch": ("Prompts per prefill batch (default: 1).", _DISAGG),
    **_pool_options("decode", "y"),
    "decode_batch": ("Sequences each decode worker holds.", _DISAGG),
    "decode_gpu": ("Decode workers' GPU name, alias or spec file (default: --gpu).", _DISAGG),
}


def _option(key: str) -> inspect.Parameter:
    help_text, panel = OPTIONS[key]
    kind: Any = str if key in ("model", "gpu", "decode_gpu") else float if key == "rate" else int
    option = typer.Option(help=help_text, rich_help_panel=panel)
    if key == "engine_arg":
        kind = list[str]
        option = typer.Option(
            "--engine-arg", help=help_text, rich_help_panel=panel, metavar="KEY=VALUE"
        )
    return inspect.Parameter(
        key, inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[kind | None, option],
    )  # fmt: skip


def _estimate(runner: Backend, req: EstimateRequest) -> PhaseEstimate | ServingEstimate:
    """Estimate ``req`` after making any model or GPU file it names known to ``runner``."""

    def pool(spec: PoolSpec | None, role: str) -> PoolSpec | None:
        if spec is None or spec.gpu is None:
            return spec
        return replace(spec, gpu=runner.use_gpu(spec.gpu, f"{role}.gpu"))

    named = replace(
        req,
        model=runner.use_model(req.model),
        gpu=runner.use_gpu(req.gpu),
        prefill=pool(req.prefill, "prefill"),
        decode=pool(req.decode, "decode"),
    )
    return runner.estimate(named)


def _run_lines(path: str, runner: Backend) -> None:
    """``--input``: one compact JSON result per request line, errors as ``{"error": ...}``."""
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except OSError as exc:
        raise CliError(f"--input: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"--input: {path} is not a UTF-8 text file") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        out: dict[str, Any]
        try:
            out = _estimate(runner, inputs.parse_jsonl_line(line)).to_dict()
        except InvalidInputError as exc:
            message = inputs.describe(exc, inputs.ESTIMATE_KEYS, as_flag=False)
            out = {"error": f"line {number}: {message}"}
        except PlannerError as exc:
            out = {"error": f"line {number}: {exc}"}
        cli.show_json(out, indent=None)
        sys.stdout.flush()


def estimate(
    *,
    dtype: cli.DtypeOpt = None,
    kv_dtype: cli.KvDtypeOpt = None,
    engine: cli.EngineOpt = None,
    memory_fraction: cli.MemoryFractionOpt = None,
    phase: Annotated[
        str | None,
        typer.Option(
            metavar="prefill|decode",
            rich_help_panel=_PHASE,
            help="Estimate one step of this phase.",
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            metavar="agg|disagg", rich_help_panel=_AGG, help="Estimate a whole serving deployment."
        ),
    ] = None,
    input: Annotated[
        str | None,
        typer.Option(
            "--input",
            metavar="FILE.jsonl",
            help="Requests as JSON Lines (snake_case flag names; '-' for stdin); prints one JSON "
            'result per line, {"error": ...} for a bad line.',
        ),
    ] = None,
    json_out: cli.JsonOpt = False,
    server: cli.ServerOpt = None,
    **options: Any,
) -> None:
    """Estimate one fixed configuration: a prefill or decode step, or an agg/disagg deployment."""
    fields = {**options, "dtype": dtype, "kv_dtype": kv_dtype, "engine": engine,
              "memory_fraction": memory_fraction, "phase": phase, "mode": mode}  # fmt: skip
    if not fields.get("engine_arg"):
        fields["engine_arg"] = None  # a repeatable option not given is an empty list
    runner = backend(server)
    if input is not None:
        given = [inputs.flag(k) for k, v in fields.items() if v is not None]
        if given:
            raise CliError(
                f"--input: cannot be combined with request flags ({', '.join(given)}); "
                "put them in each line"
            )
        _run_lines(input, runner)
        return
    with flags(inputs.ESTIMATE_KEYS):
        req = inputs.estimate_request(fields)
        with checkpoint_dtype(fields.get("dtype"), req.precision.dtype):
            result = _estimate(runner, req)
    if json_out:
        cli.show_json(result.to_dict())
    else:
        cli.show(fmt.estimate_view(result, req))


def _signature() -> inspect.Signature:
    params = inspect.signature(estimate, eval_str=True).parameters.values()
    own = [p for p in params if p.kind != p.VAR_KEYWORD]
    request = [_option(k) for k in OPTIONS]
    return inspect.Signature([*request[:4], *own[:6], *request[4:], *own[6:]])


estimate.__signature__ = _signature()  # type: ignore[attr-defined]
cli.app.command(no_args_is_help=True)(estimate)
