"""The ``pdplanner`` command line: serve, plan, estimate, sweep, stored plans, catalogs, database.

``plan``, ``estimate`` and ``sweep`` run the planner in this process by default, and against a
running server with ``--server HOST:PORT`` (or ``PDPLANNER_SERVER``), printing the same output
either way. ``--json`` prints machine-readable output; without it, rich tables.

Errors are one line on stderr, ``error: --batch: must be at least 1``, with exit status 2 for a
bad command line or request (the planner's field paths are named as the flags that set them) and
1 for anything else (server unreachable, plan not found). Set ``PDPLANNER_DEBUG=1`` to get the
traceback of an unexpected failure instead of its one-line summary.

Modules load lazily: the planner's kernels, gRPC and the database are imported by the commands
that need them, so ``pdplanner --help`` and ``pdplanner models`` start quickly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from typer.core import TyperGroup

from planner.catalog import GpuSpec, ModelSpec
from planner.errors import InvalidInputError, PlannerError
from planner.types import (
    EstimateRequest,
    PhaseEstimate,
    PlanRequest,
    PlanResult,
    Precision,
    SearchLimits,
    ServingEstimate,
    Slo,
    Workload,
)
from service import cli_format as fmt
from service import cli_inputs as inputs

SERVER_ENV = "PDPLANNER_SERVER"
DEBUG_ENV = "PDPLANNER_DEBUG"
EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """A failure to report as one line on stderr, with the process exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _click_exception_class() -> type[Exception]:
    """Click's ``ClickException``, whichever click this typer uses (vendored or not)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cls
    return typer.BadParameter  # pragma: no cover - every click has ClickException


_CLICK_EXCEPTION = _click_exception_class()


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _err(message: str) -> None:
    print(f"error: {_one_line(message)}", file=sys.stderr)


class OneLineErrors(TyperGroup):
    """The top-level command group: every failure leaves as one ``error: ...`` line.

    Click reports usage errors in several lines (usage, hint, boxed message) and typer shows
    tracebacks of anything else; this group runs the command without click's standalone
    handling and prints each kind of failure as a single line instead.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode exit with its status (0, 1 or 2)."""
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra
            )
        code = 0
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
            code = rv if isinstance(rv, int) else 0
        except CliError as exc:
            _err(exc.message)
            code = exc.code
        except InvalidInputError as exc:  # a command that did not name its flags
            _err(str(exc))
            code = EXIT_USAGE
        except _CLICK_EXCEPTION as exc:
            code = self._click_error(exc)
        except (KeyboardInterrupt, EOFError, typer.Abort):
            _err("interrupted")
            code = 130
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            what = type(exc).__name__
            _err(f"{what}: {exc} (set {DEBUG_ENV}=1 for the traceback)" if str(exc) else what)
            code = EXIT_FAILURE
        finally:
            _close_remotes()
        sys.stdout.flush()
        sys.exit(code)

    @staticmethod
    def _click_error(exc: Exception) -> int:
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message()  # type: ignore[attr-defined]
        code: int = getattr(exc, "exit_code", EXIT_FAILURE)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `pdplanner` alone: the help, as click does
            if message:  # typer's rich help has printed itself already
                typer.echo(message, err=True)
            return code
        if ctx is not None:
            message = f"{_one_line(message)} (see '{ctx.command_path} --help')"
        _err(message)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    name="pdplanner",
    help="Plan aggregated and disaggregated (prefill/decode) LLM serving deployments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plans_app = typer.Typer(help="Plans stored on a server (needs --server).", no_args_is_help=True)
db_app = typer.Typer(help="The plan database.", no_args_is_help=True)
app.add_typer(plans_app, name="plans")
app.add_typer(db_app, name="db")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``pdplanner``)."""
    typer.main.get_command(app).main(args=argv, prog_name="pdplanner")


@contextmanager
def _flags(known: Collection[str], **kwargs: Any) -> Iterator[None]:
    """Report the planner's invalid-input errors inside the block as errors on these flags."""
    try:
        yield
    except InvalidInputError as exc:
        raise CliError(inputs.describe(exc, known, **kwargs)) from None


#: Width of tables written to a pipe or file (a terminal's own width is used when there is one).
PIPE_WIDTH = 160


def _stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def _print(renderable: RenderableType) -> None:
    _stdout().print(renderable)


def _print_json(value: Any, *, indent: int | None = 2) -> None:
    typer.echo(fmt.dumps(value, indent=indent))


# -- options shared by several commands ----------------------------------------------------------

_SERVER_HELP = (
    f"Run against the pdplanner server at HOST:PORT instead of in process (env {SERVER_ENV})."
)
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server", envvar=SERVER_ENV, show_envvar=False, metavar="HOST:PORT", help=_SERVER_HELP
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(metavar="bf16|fp8|fp4", help="Weight and activation precision (default: bf16)."),
]
KvDtypeOpt = Annotated[
    str | None, typer.Option(metavar="bf16|fp8", help="KV-cache precision (default: bf16).")
]
EngineOpt = Annotated[
    str | None,
    typer.Option(metavar="vllm|sglang|trtllm", help="Serving engine profile (default: vllm)."),
]
MemoryFractionOpt = Annotated[
    float | None,
    typer.Option(
        metavar="FRACTION",
        help="The engine's memory fraction: vLLM gpu_memory_utilization, SGLang "
        "mem_fraction_static, TensorRT-LLM free_gpu_memory_fraction (default: the engine's).",
    ),
]
_REQ = "request"
_PHASE = "--phase prefill|decode"
_AGG = "--mode agg"
_DISAGG = "--mode disagg"


#: Server connections this command line opened; the group closes them when the command ends.
_OPEN: list[Remote] = []


def _close_remotes() -> None:
    while _OPEN:
        _OPEN.pop().close()


def _remote(server: str | None) -> Remote | None:
    """A client for ``--server``, or None to run in process."""
    if not server:
        return None
    remote = Remote(server)
    _OPEN.append(remote)
    return remote


def _need_server(server: str | None) -> Remote:
    remote = _remote(server)
    if remote is None:
        raise CliError(f"--server: is required for this command (or set {SERVER_ENV})")
    return remote


# -- estimate -------------------------------------------------------------------------------------


def _run_estimate(req: EstimateRequest, remote: Remote | None) -> PhaseEstimate | ServingEstimate:
    if remote is not None:
        return remote.estimate(req)
    from planner.estimate import estimate as run

    return run(req)


def _estimate_lines(path: str, remote: Remote | None) -> None:
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
            out = _run_estimate(inputs.parse_jsonl_line(line), remote).to_dict()
        except InvalidInputError as exc:
            message = inputs.describe(exc, inputs.ESTIMATE_KEYS, as_flag=False)
            out = {"error": f"line {number}: {message}"}
        except PlannerError as exc:
            out = {"error": f"line {number}: {exc}"}
        _print_json(out, indent=None)
        sys.stdout.flush()


@app.command(no_args_is_help=True)
def estimate(
    model: Annotated[
        str | None,
        typer.Option(help="Model name, alias or config.json path.", rich_help_panel=_REQ),
    ] = None,
    gpu: Annotated[
        str | None, typer.Option(help="GPU name, alias or spec file.", rich_help_panel=_REQ)
    ] = None,
    isl: Annotated[
        int | None, typer.Option(help="Input (prompt) tokens per request.", rich_help_panel=_REQ)
    ] = None,
    osl: Annotated[
        int | None, typer.Option(help="Output tokens per request.", rich_help_panel=_REQ)
    ] = None,
    dtype: DtypeOpt = None,
    kv_dtype: KvDtypeOpt = None,
    engine: EngineOpt = None,
    memory_fraction: MemoryFractionOpt = None,
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
    tp: Annotated[
        int | None, typer.Option(help="Tensor parallelism (phase, agg).", rich_help_panel=_PHASE)
    ] = None,
    pp: Annotated[
        int | None,
        typer.Option(help="Pipeline stages (phase, agg) (default: 1).", rich_help_panel=_PHASE),
    ] = None,
    ep: Annotated[
        int | None,
        typer.Option(help="Expert parallelism (phase, agg) (default: 1).", rich_help_panel=_PHASE),
    ] = None,
    attention_dp: Annotated[
        int | None,
        typer.Option(
            help="Attention data-parallel ranks (phase, agg) (default: 1).", rich_help_panel=_PHASE
        ),
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(help="Prompts (prefill) or sequences (decode).", rich_help_panel=_PHASE),
    ] = None,
    context: Annotated[
        int | None,
        typer.Option(
            help="Decode: cached tokens per sequence (default: ISL + OSL/2).",
            rich_help_panel=_PHASE,
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Agg: requests in flight (closed loop).", rich_help_panel=_AGG),
    ] = None,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(
            help="Agg: chunked-prefill token budget (default: the engine's).", rich_help_panel=_AGG
        ),
    ] = None,
    prefill_tp: Annotated[
        int | None, typer.Option(rich_help_panel=_DISAGG, help="Prefill worker TP.")
    ] = None,
    prefill_pp: Annotated[
        int | None,
        typer.Option(rich_help_panel=_DISAGG, help="Prefill worker pipeline stages (default: 1)."),
    ] = None,
    prefill_ep: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=_DISAGG, help="Prefill worker expert parallelism (default: 1)."
        ),
    ] = None,
    prefill_attention_dp: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=_DISAGG,
            help="Prefill worker attention data-parallel ranks (default: 1).",
        ),
    ] = None,
    prefill_workers: Annotated[
        int | None, typer.Option(rich_help_panel=_DISAGG, help="Prefill workers (x of xPyD).")
    ] = None,
    prefill_batch: Annotated[
        int | None,
        typer.Option(rich_help_panel=_DISAGG, help="Prompts per prefill batch (default: 1)."),
    ] = None,
    decode_tp: Annotated[
        int | None, typer.Option(rich_help_panel=_DISAGG, help="Decode worker TP.")
    ] = None,
    decode_pp: Annotated[
        int | None,
        typer.Option(rich_help_panel=_DISAGG, help="Decode worker pipeline stages (default: 1)."),
    ] = None,
    decode_ep: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=_DISAGG, help="Decode worker expert parallelism (default: 1)."
        ),
    ] = None,
    decode_attention_dp: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=_DISAGG,
            help="Decode worker attention data-parallel ranks (default: 1).",
        ),
    ] = None,
    decode_workers: Annotated[
        int | None, typer.Option(rich_help_panel=_DISAGG, help="Decode workers (y of xPyD).")
    ] = None,
    decode_batch: Annotated[
        int | None,
        typer.Option(rich_help_panel=_DISAGG, help="Sequences each decode worker holds."),
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
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Estimate one fixed configuration: a prefill or decode step, or an agg/disagg deployment."""
    fields: dict[str, Any] = {
        "model": model, "gpu": gpu, "isl": isl, "osl": osl, "dtype": dtype,
        "kv_dtype": kv_dtype, "engine": engine, "memory_fraction": memory_fraction,
        "phase": phase, "mode": mode, "tp": tp, "pp": pp,
        "ep": ep, "attention_dp": attention_dp, "batch": batch, "context": context,
        "concurrency": concurrency, "chunk_tokens": chunk_tokens, "prefill_tp": prefill_tp,
        "prefill_pp": prefill_pp, "prefill_ep": prefill_ep,
        "prefill_attention_dp": prefill_attention_dp, "prefill_workers": prefill_workers,
        "prefill_batch": prefill_batch, "decode_tp": decode_tp, "decode_pp": decode_pp,
        "decode_ep": decode_ep, "decode_attention_dp": decode_attention_dp,
        "decode_workers": decode_workers, "decode_batch": decode_batch,
    }  # fmt: skip
    remote = _remote(server)
    if input is not None:
        given = [inputs.flag(k) for k, v in fields.items() if v is not None]
        if given:
            raise CliError(
                f"--input: cannot be combined with request flags ({', '.join(given)}); "
                "put them in each line"
            )
        _estimate_lines(input, remote)
        return
    with _flags(inputs.ESTIMATE_KEYS):
        req = inputs.estimate_request(fields)
        result = _run_estimate(req, remote)
    if json_out:
        _print_json(result.to_dict())
    else:
        _print(fmt.estimate_view(result, req))


# -- plan -----------------------------------------------------------------------------------------


def _run_plan(req: PlanRequest, remote: Remote | None) -> tuple[PlanResult, str | None]:
    """The plan, and the stored resource's name when a server made it."""
    if remote is not None:
        return remote.plan(req)
    from planner.search import plan as run

    return run(req), None


_SLO = "SLO"
_TRAFFIC = "traffic"
_SEARCH = "search"


@app.command(no_args_is_help=True)
def plan(
    model: Annotated[
        str | None,
        typer.Option(help="Model name, alias or config.json path.", rich_help_panel=_REQ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(help="GPU type (of both pools unless --decode-gpu).", rich_help_panel=_REQ),
    ] = None,
    decode_gpu: Annotated[
        str | None, typer.Option(help="GPU type of the decode pool.", rich_help_panel=_REQ)
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(help="Total GPU budget.", rich_help_panel=_REQ)
    ] = None,
    prefill_gpus: Annotated[
        int | None, typer.Option(help="Most GPUs for the prefill pool.", rich_help_panel=_REQ)
    ] = None,
    decode_gpus: Annotated[
        int | None, typer.Option(help="Most GPUs for the decode pool.", rich_help_panel=_REQ)
    ] = None,
    isl: Annotated[
        int | None, typer.Option(help="Input tokens per request.", rich_help_panel=_TRAFFIC)
    ] = None,
    osl: Annotated[
        int | None, typer.Option(help="Output tokens per request.", rich_help_panel=_TRAFFIC)
    ] = None,
    mix: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            rich_help_panel=_TRAFFIC,
            help="Traffic mix instead of --isl/--osl: CSV with header isl,osl,weight or a JSON "
            "list of {isl, osl, weight}.",
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            metavar="REQ_PER_S",
            rich_help_panel=_TRAFFIC,
            help="Offered request rate, a constraint: the plan serves it on the fewest GPUs and "
            "reports TTFT/TPOT at it; when the budget cannot, it says so and names the fewest "
            "GPUs that would.",
        ),
    ] = None,
    prefix_hit: Annotated[
        float | None,
        typer.Option(
            metavar="FRACTION",
            rich_help_panel=_TRAFFIC,
            help="Fraction of prompt tokens served from the prefix cache.",
        ),
    ] = None,
    ttft_ms: Annotated[
        float | None, typer.Option(help="TTFT target (ms).", rich_help_panel=_SLO)
    ] = None,
    tpot_ms: Annotated[
        float | None, typer.Option(help="TPOT target (ms).", rich_help_panel=_SLO)
    ] = None,
    percentile: Annotated[
        str,
        typer.Option(
            metavar="p50|p90|p99",
            rich_help_panel=_SLO,
            help="Which percentile of TTFT and of TPOT must meet the targets; the result "
            "reports both at it (TTFT with queueing; agg TPOT from the simulation with prefill "
            "interleaved, disagg TPOT the decode step, the same at every percentile).",
        ),
    ] = "p50",
    min_tokens_per_user: Annotated[
        float | None,
        typer.Option(metavar="U", rich_help_panel=_SLO, help="Minimum tokens/s per user."),
    ] = None,
    dtype: DtypeOpt = None,
    kv_dtype: KvDtypeOpt = None,
    engine: EngineOpt = None,
    memory_fraction: MemoryFractionOpt = None,
    mode: Annotated[
        str,
        typer.Option(
            metavar="agg|disagg|both", rich_help_panel=_SEARCH, help="Serving modes to search."
        ),
    ] = "both",
    max_tp: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=_SEARCH,
            help="Largest TP (and TP x attention-DP stage) to try. Default: the GPU's NVLink "
            "domain (8 on HGX H100/H200), since TP across InfiniBand runs its all-reduces "
            "about 9x slower.",
        ),
    ] = None,
    allow_pp: Annotated[
        bool,
        typer.Option("--pp/--no-pp", rich_help_panel=_SEARCH, help="Try pipeline parallelism."),
    ] = True,
    allow_ep: Annotated[
        bool,
        typer.Option("--ep/--no-ep", rich_help_panel=_SEARCH, help="Try expert parallelism (MoE)."),
    ] = True,
    allow_attention_dp: Annotated[
        bool,
        typer.Option(
            "--attention-dp/--no-attention-dp",
            rich_help_panel=_SEARCH,
            help="Try attention data parallelism (MoE).",
        ),
    ] = True,
    plot: Annotated[
        str | None,
        typer.Option(metavar="FILE.png|svg", help="Draw both Pareto frontiers to this file."),
    ] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Search every sensible deployment for this traffic and SLO; recommend the best."""
    keys = inputs.PLAN_KEYS
    with _flags(keys, traffic="mix" if mix is not None else None):
        if plot is not None:
            inputs.plot_format(plot)
        req = inputs.plan_request(
            model=model, gpu=gpu, gpus=gpus, ttft_ms=ttft_ms, tpot_ms=tpot_ms, isl=isl, osl=osl,
            mix=mix, decode_gpu=decode_gpu, prefill_gpus=prefill_gpus, decode_gpus=decode_gpus,
            rate=rate, prefix_hit=prefix_hit, percentile=percentile,
            min_tokens_per_user=min_tokens_per_user, dtype=dtype or "bf16",
            kv_dtype=kv_dtype or "bf16", engine=engine or "vllm", mode=mode, max_tp=max_tp,
            allow_pp=allow_pp, allow_ep=allow_ep, allow_attention_dp=allow_attention_dp,
            memory_fraction=memory_fraction,
        )  # fmt: skip
        result, name = _run_plan(req, _remote(server))
    if plot is not None:
        _plot(result, plot, req)
    if json_out:
        _print_json({"name": name, **result.to_dict()} if name else result.to_dict())
    else:
        _print(fmt.plan_summary(result, name))


def _plot(result: PlanResult, path: str, req: PlanRequest) -> None:
    traffic = req.traffic[0] if len(req.traffic) == 1 else None
    what = f"ISL {traffic.isl} / OSL {traffic.osl}" if traffic else f"{len(req.traffic)}-bucket mix"
    title = f"{req.model} on {req.gpus} x {req.gpu}, {what}, TPOT {req.slo.tpot_ms:g} ms"
    try:
        fmt.plot_frontiers(result, path, title)
    except ImportError:
        raise CliError(
            "--plot: needs matplotlib (pip install 'pdplanner[plot]')", EXIT_FAILURE
        ) from None
    except OSError as exc:
        raise CliError(
            f"--plot: cannot write {path}: {exc.strerror or exc}", EXIT_FAILURE
        ) from None


# -- sweep ----------------------------------------------------------------------------------------

#: The keys of ``pdplanner sweep``, for naming fields in errors.
SWEEP_KEYS = (
    "model",
    "gpu",
    "traffic",
    "ttft_ms",
    "tpot_ms",
    "gpus",
    "dtype",
    "kv_dtype",
    "engine",
    "mode",
)

T = TypeVar("T")


def _unique(values: Sequence[T]) -> list[T]:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class SweepGrid:
    """A sweep: every model x GPU type x traffic point x SLO, with the fields they share."""

    models: tuple[str, ...]
    gpu_types: tuple[str, ...]
    traffic: tuple[Workload, ...]
    slos: tuple[Slo, ...]
    gpus: int
    precision: Precision
    engine: str
    limits: SearchLimits

    def requests(self) -> list[PlanRequest]:
        """The scenarios in grid order: the model varies slowest and the SLO fastest."""
        return [
            PlanRequest(model=m, gpu=g, gpus=self.gpus, traffic=(w,), slo=slo,
                        precision=self.precision, engine=self.engine, limits=self.limits)
            for m in self.models for g in self.gpu_types for w in self.traffic for slo in self.slos
        ]  # fmt: skip


def _scenario(req: PlanRequest) -> dict[str, Any]:
    w = req.traffic[0]
    return {
        "model": req.model,
        "gpu": req.gpu,
        "isl": w.isl,
        "osl": w.osl,
        "ttft_ms": req.slo.ttft_ms,
        "tpot_ms": req.slo.tpot_ms,
        "gpus": req.gpus,
    }


def _sweep_in_process(
    reqs: Sequence[PlanRequest], advance: Callable[[], None]
) -> list[dict[str, Any]]:
    """Plan each scenario here; an invalid scenario is an error row, not the end of the sweep."""
    from planner.catalog import load_gpu, load_model
    from planner.search import plan as run

    with _flags(SWEEP_KEYS):  # a name no scenario can use fails the whole sweep at once
        for name in _unique([r.model for r in reqs]):
            load_model(name)
        for name in _unique([r.gpu for r in reqs]):
            load_gpu(name)
    rows = []
    for req in reqs:
        row = _scenario(req)
        try:
            row["result"] = run(req).to_dict()
        except InvalidInputError as exc:
            row["error"] = inputs.describe(exc, SWEEP_KEYS)
        rows.append(row)
        advance()
    return rows


@app.command(no_args_is_help=True)
def sweep(
    model: Annotated[list[str] | None, typer.Option(help="Model (repeat for several).")] = None,
    gpu: Annotated[list[str] | None, typer.Option(help="GPU type (repeat for several).")] = None,
    traffic: Annotated[
        list[str] | None,
        typer.Option(metavar="ISL:OSL", help="Traffic pair (repeat for several), e.g. 4000:500."),
    ] = None,
    tpot_ms: Annotated[
        list[float] | None, typer.Option(help="TPOT target in ms (repeat for several).")
    ] = None,
    ttft_ms: Annotated[
        float | None, typer.Option(help="TTFT target (ms) of every scenario.")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="GPU budget of every scenario.")] = None,
    dtype: DtypeOpt = None,
    kv_dtype: KvDtypeOpt = None,
    engine: EngineOpt = None,
    mode: Annotated[
        str, typer.Option(metavar="agg|disagg|both", help="Serving modes to search.")
    ] = "both",
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Plan every scenario of a grid: models x GPUs x traffic x TPOT targets."""
    with _flags(SWEEP_KEYS):
        lists = {"model": model, "gpu": gpu, "traffic": traffic, "tpot_ms": tpot_ms}
        for key, values in lists.items():
            if not values:
                raise InvalidInputError(key, "is required (repeat it for several values)")
        for key, value in (("ttft_ms", ttft_ms), ("gpus", gpus)):
            if value is None:
                raise InvalidInputError(key, "is required")
        pairs = [inputs.parse_traffic_pair(t) for t in traffic or ()]
        grid = SweepGrid(
            models=tuple(_unique(model or ())),
            gpu_types=tuple(_unique(gpu or ())),
            traffic=tuple(_unique(pairs)),
            slos=tuple(Slo(ttft_ms=float(ttft_ms or 0), tpot_ms=t) for t in _unique(tpot_ms or ())),
            gpus=int(gpus or 0),
            precision=Precision(dtype=dtype or "bf16", kv_dtype=kv_dtype or "bf16"),
            engine=engine or "vllm",
            limits=SearchLimits(modes=inputs.plan_modes(mode)),
        )
    remote = _remote(server)
    name: str | None = None
    with _progress(len(grid.requests())) as advance, _flags(SWEEP_KEYS):
        if remote is not None:
            name, rows = remote.sweep(grid, advance)
        else:
            rows = _sweep_in_process(grid.requests(), advance)
    if json_out:
        out: dict[str, Any] = {"name": name} if name else {}
        _print_json({**out, "scenarios": rows})
    else:
        if name:
            _print(f"stored as {name}")
        _print(fmt.sweep_table(rows))


@contextmanager
def _progress(total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (stdout stays clean for --json); yields 'one more done'."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=console, transient=True, disable=not console.is_terminal
    ) as progress:
        task = progress.add_task("sweep", total=total)
        yield lambda: progress.advance(task)


# -- stored plans ---------------------------------------------------------------------------------


@plans_app.command("list")
def plans_list(
    model: Annotated[str | None, typer.Option(help="Only plans for this model.")] = None,
    gpu: Annotated[str | None, typer.Option(help="Only plans for this GPU type.")] = None,
    page_size: Annotated[int | None, typer.Option(help="Plans per page.")] = None,
    page_token: Annotated[str | None, typer.Option(help="Token of the page to show.")] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """List stored plans, newest first."""
    remote = _need_server(server)
    with _flags(("model", "gpu", "page_size", "page_token")):
        plans, token = remote.list_plans(
            model=model, gpu=gpu, page_size=page_size, page_token=page_token
        )
    if json_out:
        _print_json({"plans": [p.to_dict() for p in plans], "next_page_token": token})
    else:
        _print(fmt.plans_table(plans))
        if token:
            typer.echo(f"next page: --page-token {token}")


@plans_app.command("get")
def plans_get(
    plan_id: Annotated[str, typer.Argument(metavar="ID", help="Plan id or name (plans/ID).")],
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Show one stored plan."""
    stored = _need_server(server).get_plan(plan_id)
    if json_out:
        _print_json(stored.to_dict())
    else:
        _print(fmt.stored_plan_header(stored))
        _print(fmt.plan_summary(stored.result))


@plans_app.command("delete")
def plans_delete(
    plan_id: Annotated[str, typer.Argument(metavar="ID", help="Plan id or name (plans/ID).")],
    server: ServerOpt = None,
) -> None:
    """Delete one stored plan."""
    name = _need_server(server).delete_plan(plan_id)
    typer.echo(f"deleted {name}")


# -- catalogs -------------------------------------------------------------------------------------


@app.command()
def models(json_out: JsonOpt = False, server: ServerOpt = None) -> None:
    """List the model catalog (with a server: including its custom models)."""
    remote = _remote(server)
    if remote is not None:
        specs = remote.list_models()
    else:
        from planner.catalog import default_models

        specs = default_models().specs()
    if json_out:
        _print_json([fmt.model_entry(s) for s in specs])
    else:
        _print(fmt.models_table(specs))


@app.command()
def gpus(json_out: JsonOpt = False, server: ServerOpt = None) -> None:
    """List the GPU catalog (with a server: including its custom GPUs)."""
    remote = _remote(server)
    if remote is not None:
        specs = remote.list_gpus()
    else:
        from planner.catalog import default_gpus

        specs = default_gpus().specs()
    if json_out:
        _print_json([fmt.gpu_entry(s) for s in specs])
    else:
        _print(fmt.gpus_table(specs))


# -- server and database --------------------------------------------------------------------------

_DB_HELP = "Database URL (default: $PDPLANNER_DATABASE_URL, else sqlite:///./pdplanner.db)."


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 50051,
    database_url: Annotated[str | None, typer.Option(metavar="URL", help=_DB_HELP)] = None,
) -> None:
    """Run the gRPC planning server until SIGTERM or Ctrl-C."""
    if not 0 < port < 65536:
        raise CliError(f"--port: must be in 1..65535, got {port}")
    from service.server import serve as run

    try:
        run(port, database_url)
    except OSError as exc:  # the port is taken, or the address cannot be bound
        raise CliError(f"--port {port}: {exc}", EXIT_FAILURE) from None
    except ValueError as exc:  # a PDPLANNER_* setting that does not parse
        raise CliError(f"server settings: {exc}") from None


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[str | None, typer.Option(metavar="URL", help=_DB_HELP)] = None,
) -> None:
    """Apply the database migrations (creates the database if it is a new SQLite file)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from storage.config import database_url as resolve
    from storage.migrate import current_revision, upgrade

    url = resolve(database_url)
    shown = _hide_password(url)
    try:
        upgrade(url)
        revision = current_revision(url)
    except ArgumentError as exc:
        raise CliError(f"--database-url: not a usable database URL {shown!r}: {exc}") from None
    except DBAPIError as exc:
        reason = _one_line(str(exc.orig) if exc.orig is not None else str(exc))
        raise CliError(f"--database-url {shown}: {reason}", EXIT_FAILURE) from None
    typer.echo(f"database {shown} is up to date (revision {revision})")


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


# -- --server mode --------------------------------------------------------------------------------

#: Seconds a call may take before the CLI gives up on it (all retries included).
CALL_TIMEOUT_S = 600.0
#: Seconds a whole sweep may stream.
SWEEP_TIMEOUT_S = 24 * 3600.0


class Remote:
    """The commands' view of a pdplanner server (``--server HOST:PORT``), over ``PlannerClient``.

    Requests and results cross the wire through ``service.convert``, so a command prints the
    same thing as in process. The server's errors come back as the in-process ones would: a bad
    field (``INVALID_ARGUMENT``, or an unknown catalog name) as ``InvalidInputError`` on its field
    path, which the command names as its flag; anything else as a one-line ``CliError``. The
    client retries UNAVAILABLE with backoff and gives mutating calls a request_id, so a retried
    plan or sweep is neither searched nor stored twice.
    """

    def __init__(self, target: str) -> None:
        from pdplanner.client import PlannerClient

        self.target = target
        self._client = PlannerClient(target, timeout_s=CALL_TIMEOUT_S)

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn a failed call into the planner's or the CLI's own error."""
        import grpc
        from pdplanner.client import field_violations

        try:
            yield
        except grpc.RpcError as exc:
            violations = field_violations(exc)
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = (exc.details() if isinstance(exc, grpc.Call) else None) or code.name
            if code == grpc.StatusCode.NOT_FOUND and (not violations or violations[0][0] == "name"):
                raise CliError(violations[0][1] if violations else details, EXIT_FAILURE) from None
            if violations:  # a bad field, or a model/GPU/engine name the catalog lacks
                raise InvalidInputError(*violations[0]) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(
                    f"--server {self.target}: unavailable ({details})", EXIT_FAILURE
                ) from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise CliError(details) from None
            raise CliError(f"{details} ({code.name})", EXIT_FAILURE) from None

    def estimate(self, req: EstimateRequest) -> PhaseEstimate | ServingEstimate:
        """The Estimate RPC."""
        from service import convert

        msg = convert.estimate_request_to_proto(req)
        with self._errors():
            response = self._client.estimate(msg)
        return convert.estimate_from_proto(response)

    def plan(self, req: PlanRequest) -> tuple[PlanResult, str]:
        """The Plan RPC: the result and the stored plan's name."""
        from service import convert

        msg = convert.plan_request_to_proto(req)  # the client adds a request_id
        with self._errors():
            stored = self._client.plan(msg)
        return convert.plan_result_from_proto(stored.result), stored.name

    def sweep(
        self, grid: SweepGrid, advance: Callable[[], None]
    ) -> tuple[str, list[dict[str, Any]]]:
        """The Sweep RPC: the stored sweep's name and one row per scenario, in grid order."""
        from pdplanner.v1 import sweep_pb2

        from service import convert

        msg = sweep_pb2.SweepRequest(
            models=grid.models,
            gpu_types=grid.gpu_types,
            traffic=[convert.workload_to_proto(w, f"traffic[{i}]")
                     for i, w in enumerate(grid.traffic)],
            slos=[convert.slo_to_proto(s) for s in grid.slos],
            gpus=grid.gpus,
            precision=convert.precision_to_proto(grid.precision),
            engine=grid.engine,
            limits=convert.limits_to_proto(grid.limits),
        )  # fmt: skip
        name = ""
        rows: dict[int, dict[str, Any]] = {}
        with self._errors():
            for event in self._client.sweep(msg, timeout_s=SWEEP_TIMEOUT_S):
                kind = event.WhichOneof("event")
                if kind == "sweep":
                    name = event.sweep.name
                elif kind == "scenario":
                    rows[event.scenario.index] = _scenario_row(event.scenario)
                    advance()
        return name, [rows[i] for i in sorted(rows)]

    def list_plans(
        self, *, model: str | None, gpu: str | None, page_size: int | None, page_token: str | None
    ) -> tuple[list[fmt.StoredPlan], str]:
        """One page of the ListPlans RPC and the next page's token ("" on the last page)."""
        with self._errors():
            page = self._client.list_plans(
                model=model or "",
                gpu=gpu or "",
                page_size=page_size or 0,
                page_token=page_token or "",
            )
        return [_stored_plan(p) for p in page.plans], page.next_page_token

    def get_plan(self, plan_id: str) -> fmt.StoredPlan:
        """The GetPlan RPC."""
        with self._errors():
            return _stored_plan(self._client.get_plan(_plan_name(plan_id)))

    def delete_plan(self, plan_id: str) -> str:
        """The DeletePlan RPC; returns the deleted plan's name."""
        name = _plan_name(plan_id)
        with self._errors():
            self._client.delete_plan(name)
        return name

    def list_models(self) -> list[ModelSpec]:
        """The ListModels RPC, every page (built-in and custom models)."""
        from service import convert

        with self._errors():
            return [convert.model_from_proto(m) for m in self._client.list_models()]

    def list_gpus(self) -> list[GpuSpec]:
        """The ListGpus RPC, every page (built-in and custom GPUs)."""
        from service import convert

        with self._errors():
            return [convert.gpu_from_proto(g) for g in self._client.list_gpus()]


def _scenario_row(msg: Any) -> dict[str, Any]:
    """A sweep row from a streamed ``SweepScenarioResult`` (as ``_sweep_in_process`` makes it)."""
    from service import convert

    row = _scenario(convert.plan_request_from_proto(msg.scenario))
    if msg.error:
        field, sep, reason = msg.error.partition(": ")
        error = InvalidInputError(field, reason) if sep else InvalidInputError("", msg.error)
        row["error"] = inputs.describe(error, SWEEP_KEYS)
    else:
        row["result"] = convert.plan_result_from_proto(msg.result).to_dict()
    return row


def _plan_name(plan_id: str) -> str:
    """``abc`` or ``plans/abc`` -> ``plans/abc``."""
    return plan_id if plan_id.startswith("plans/") else f"plans/{plan_id}"


def _stored_plan(msg: Any) -> fmt.StoredPlan:
    from service import convert

    created = msg.create_time.ToDatetime().replace(microsecond=0).isoformat() + "Z"
    return fmt.StoredPlan(
        name=msg.name,
        create_time=created,
        request=convert.plan_request_from_proto(msg.request),
        result=convert.plan_result_from_proto(msg.result),
        planner_version=msg.planner_version,
        search_ms=msg.search_ms,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
