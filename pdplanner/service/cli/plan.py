"""``pdplanner plan``: search every sensible deployment for a traffic and SLO; recommend one."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from pdplanner.planner.errors import InvalidInputError
from pdplanner.planner.types import DEFAULT_ENGINE, PlanRequest, PlanResult
from pdplanner.service.cli import app as cli
from pdplanner.service.cli import format as fmt
from pdplanner.service.cli import inputs
from pdplanner.service.cli.backend import backend
from pdplanner.service.cli.errors import EXIT_FAILURE, CliError, checkpoint_dtype, flags

_REQ = "request"
_SLO = "SLO"
_TRAFFIC = "traffic"
_SEARCH = "search"


@cli.app.command(no_args_is_help=True)
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
    dtype: cli.DtypeOpt = None,
    kv_dtype: cli.KvDtypeOpt = None,
    engine: cli.EngineOpt = None,
    memory_fraction: cli.MemoryFractionOpt = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--engine-arg",
            metavar="KEY=VALUE",
            rich_help_panel=_SEARCH,
            help="Override an engine scheduler setting for every deployment the search judges, "
            "key=value (repeatable): max_num_batched_tokens, max_num_seqs, "
            "enable_chunked_prefill, kv_admission, gpu_memory_utilization, ...",
        ),
    ] = None,
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
    json_out: cli.JsonOpt = False,
    server: cli.ServerOpt = None,
) -> None:
    """Search every sensible deployment for this traffic and SLO; recommend the best."""
    keys = inputs.PLAN_KEYS
    with flags(keys, traffic="mix" if mix is not None else None):
        if plot is not None:
            inputs.plot_format(plot)
            _check_plotting(plot)
        req = inputs.plan_request(
            model=model, gpu=gpu, gpus=gpus, ttft_ms=ttft_ms, tpot_ms=tpot_ms, isl=isl, osl=osl,
            mix=mix, decode_gpu=decode_gpu, prefill_gpus=prefill_gpus, decode_gpus=decode_gpus,
            rate=rate, prefix_hit=prefix_hit, percentile=percentile,
            min_tokens_per_user=min_tokens_per_user, dtype=dtype,
            kv_dtype=kv_dtype, engine=engine or DEFAULT_ENGINE, mode=mode,
            max_tp=max_tp,
            allow_pp=allow_pp, allow_ep=allow_ep, allow_attention_dp=allow_attention_dp,
            memory_fraction=memory_fraction, engine_arg=engine_arg,
        )  # fmt: skip
        runner = backend(server)
        named = req
        if req.decode_gpu is not None:
            named = replace(named, decode_gpu=runner.use_gpu(req.decode_gpu, "decode_gpu"))
        named = replace(named, model=runner.use_model(req.model), gpu=runner.use_gpu(req.gpu))
        with checkpoint_dtype(dtype, req.precision.dtype):
            result, name = runner.plan(named)
    if json_out:
        cli.show_json({"name": name, **result.to_dict()} if name else result.to_dict())
    else:
        cli.show(fmt.plan_summary(result, name, req.limits.modes))
    if plot is not None:
        _plot(result, plot, req)


def _plot(result: PlanResult, path: str, req: PlanRequest) -> None:
    traffic = req.traffic[0] if len(req.traffic) == 1 else None
    what = f"ISL {traffic.isl} / OSL {traffic.osl}" if traffic else f"{len(req.traffic)}-bucket mix"
    title = f"{req.model} on {req.gpus} x {req.gpu}, {what}, TPOT {req.slo.tpot_ms:g} ms"
    try:
        fmt.plot_frontiers(result, path, title)
    except OSError as exc:
        raise CliError(
            f"--plot: cannot write {path}: {exc.strerror or exc}", EXIT_FAILURE
        ) from None
    typer.echo(f"wrote the Pareto frontiers to {Path(path).resolve()}", err=True)


def _check_plotting(path: str) -> None:
    """Fail before planning (and storing a plan) when the plot could not be drawn or written:
    matplotlib missing, or a folder that does not exist or that this user may not write to."""
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidInputError("plot", "needs matplotlib (pip install matplotlib)")
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise InvalidInputError("plot", f"cannot write {path}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise InvalidInputError("plot", f"cannot write {path}: {folder} is not writable")
