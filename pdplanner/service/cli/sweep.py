"""``pdplanner sweep``: plan every scenario of a grid, models x GPUs x traffic x TPOT targets.

The grid and the runner are the planner's (``pdplanner.planner.sweep``); this module reads the flags
into a ``SweepGrid``, runs it on the chosen backend and prints one row per outcome.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from pdplanner.planner.errors import InvalidFields, InvalidInputError
from pdplanner.planner.sweep import ScenarioOutcome, SweepGrid
from pdplanner.planner.types import DEFAULT_DTYPE, DEFAULT_ENGINE, Precision, SearchLimits, Slo
from pdplanner.service.cli import app as cli
from pdplanner.service.cli import format as fmt
from pdplanner.service.cli import inputs
from pdplanner.service.cli.backend import SERVER_ENV, LocalBackend, backend
from pdplanner.service.cli.errors import CliError, flags

#: The keys of ``pdplanner sweep``, for naming fields in errors.
SWEEP_KEYS = ("model", "gpu", "traffic", "ttft_ms", "tpot_ms", "gpus", "dtype", "kv_dtype",
              "engine", "memory_fraction", "mode")  # fmt: skip

T = TypeVar("T")


def _unique(values: Sequence[T]) -> list[T]:
    return list(dict.fromkeys(values))


def outcome_row(outcome: ScenarioOutcome) -> dict[str, Any]:
    """One printed row: the scenario's inputs, and its result or its error (named as a flag)."""
    req = outcome.request
    w = req.traffic[0]
    row: dict[str, Any] = {
        "model": req.model,
        "gpu": req.gpu,
        "isl": w.isl,
        "osl": w.osl,
        "ttft_ms": req.slo.ttft_ms,
        "tpot_ms": req.slo.tpot_ms,
        "gpus": req.gpus,
    }
    if outcome.error is not None:
        error = InvalidFields(outcome.error.violations)
        row["error"] = inputs.describe(error, SWEEP_KEYS)
    elif outcome.result is not None:
        row["result"] = outcome.result.to_dict()
    return row


def show_outcomes(name: str | None, outcomes: Sequence[ScenarioOutcome], json_out: bool) -> None:
    """Print a sweep's outcomes as a table or as JSON (``{"name", "scenarios"}``)."""
    rows = [outcome_row(o) for o in outcomes]
    if json_out:
        out: dict[str, Any] = {"name": name} if name else {}
        cli.show_json({**out, "scenarios": rows})
    else:
        if name:
            cli.show(f"stored as {name}")
        cli.show(fmt.sweep_table(rows))


@cli.app.command(no_args_is_help=True)
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
    dtype: cli.DtypeOpt = None,
    kv_dtype: cli.KvDtypeOpt = None,
    engine: cli.EngineOpt = None,
    memory_fraction: cli.MemoryFractionOpt = None,
    mode: Annotated[
        str, typer.Option(metavar="agg|disagg|both", help="Serving modes to search.")
    ] = "both",
    json_out: cli.JsonOpt = False,
    server: cli.ServerOpt = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Fan the scenarios out to a Ray cluster: 'local' (start one here), 'auto' "
            "(the cluster this node is in) or ray://HOST:PORT. Runs in process: no --server.",
        ),
    ] = None,
) -> None:
    """Plan every scenario of a grid: models x GPUs x traffic x TPOT targets."""
    if ray is not None and (server or os.environ.get(SERVER_ENV)):
        raise CliError("--ray: fans out from this process; it cannot be used with --server")
    if ray is not None and not ray:
        raise CliError("--ray: needs an address: local, auto or ray://HOST:PORT")
    runner = backend(server)
    if isinstance(runner, LocalBackend):
        runner.ray_address = ray
    with flags(SWEEP_KEYS):
        lists = {"model": model, "gpu": gpu, "traffic": traffic, "tpot_ms": tpot_ms}
        for key, values in lists.items():
            if not values:
                raise InvalidInputError(key, "is required (repeat it for several values)")
        for key, value in (("ttft_ms", ttft_ms), ("gpus", gpus)):
            if value is None:
                raise InvalidInputError(key, "is required")
        pairs = [inputs.parse_traffic_pair(t) for t in traffic or ()]
        if memory_fraction is not None:
            inputs.check_memory_fraction(memory_fraction)
        grid = SweepGrid(
            models=tuple(_unique([runner.use_model(m) for m in model or ()])),
            gpu_types=tuple(_unique([runner.use_gpu(g) for g in gpu or ()])),
            traffic=tuple(_unique(pairs)),
            slos=tuple(Slo(ttft_ms=float(ttft_ms or 0), tpot_ms=t) for t in _unique(tpot_ms or ())),
            gpus=int(gpus or 0),
            precision=Precision(dtype=dtype or DEFAULT_DTYPE, kv_dtype=kv_dtype or DEFAULT_DTYPE),
            engine=engine or DEFAULT_ENGINE,
            limits=SearchLimits(modes=inputs.plan_modes(mode)),
            memory_fraction=memory_fraction,
        )
    with _progress(len(grid)) as advance, flags(SWEEP_KEYS):
        name, outcomes = runner.sweep(grid, advance)
    show_outcomes(name, outcomes, json_out)


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
