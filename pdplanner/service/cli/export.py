"""``pdplanner export PLAN_ID --format vllm|sglang|trtllm|dynamo|k8s``: the files that run a plan.

The plan is read from a server (``--server``; plans are stored there), which writes the files
(the ExportPlan RPC). ``--gpus-per-node N`` (1 to 72; default 4 on a GPU of a 72-GPU NVLink rack,
else 8) is the GPUs of one host: a worker with more gets its engine's multi-node launch. With
``--out DIR`` the files are written into DIR (scripts made executable); without it they are
printed, each after a ``# ==> NAME <==`` line. Notes on what the files leave to the operator go to
stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pdplanner.planner.export import EXPORT_FORMATS
from pdplanner.service.cli.app import JsonOpt, ServerOpt, app, show_json
from pdplanner.service.cli.backend import remote
from pdplanner.service.cli.errors import CliError, flags


@app.command("export", no_args_is_help=True)
def export(
    plan_id: Annotated[str, typer.Argument(metavar="PLAN_ID", help="Plan id or name (plans/ID).")],
    fmt: Annotated[
        str,
        typer.Option("--format", metavar="|".join(EXPORT_FORMATS), help="What to export it as."),
    ] = "",
    out: Annotated[
        Path | None, typer.Option(help="Directory to write the files into (else: print them).")
    ] = None,
    gpus_per_node: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="GPUs per host, 1 to 72 (default: 4 on GPUs of a 72-GPU NVLink rack, the "
            "GB200/GB300 compute trays, else 8); a worker with more spans several hosts.",
        ),
    ] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Export a stored plan as engine launch commands or manifests, and its benchmark."""
    if fmt not in EXPORT_FORMATS:
        given = f", not {fmt!r}" if fmt else ""
        raise CliError(f"--format: must be one of {', '.join(EXPORT_FORMATS)}{given}")
    from pdplanner.service import exports

    with flags({"gpus_per_node"}):
        exports.gpus_per_node(gpus_per_node)
        result = remote(server).export_plan(plan_id, fmt, gpus_per_node)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if json_out:
        show_json({
            "format": result.format,
            "engine": result.engine,
            "engine_version": result.engine_version,
            "benchmark_command": result.benchmark_command,
            "notes": list(result.notes),
            "files": [{"path": f.path, "content": f.content} for f in result.files],
        })  # fmt: skip
        return
    if out is None:
        for f in result.files:
            typer.echo(f"# ==> {f.path} <==")
            typer.echo(f.content, nl=False)
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in result.files:
            path = out / f.path
            path.write_text(f.content)
            if f.executable:
                path.chmod(0o755)
    except OSError as exc:
        raise CliError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {', '.join(f.path for f in result.files)} to {out} "
               f"({result.engine} {result.engine_version} flags)")  # fmt: skip
