"""``pdplanner plans list|get|delete`` and ``pdplanner sweeps get``: what a server has stored.

These commands need a server (``--server`` or ``PDPLANNER_SERVER``); nothing is stored in process.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pdplanner.service.cli import format as fmt
from pdplanner.service.cli.app import JsonOpt, ServerOpt, group, show, show_json
from pdplanner.service.cli.backend import remote
from pdplanner.service.cli.errors import flags
from pdplanner.service.cli.sweep import show_outcomes

plans_app = group("plans", "Plans stored on a server (needs --server).", no_args_is_help=True)
sweeps_app = group("sweeps", "Sweeps stored on a server (needs --server).", no_args_is_help=True)

PlanId = Annotated[str, typer.Argument(metavar="ID", help="Plan id or name (plans/ID).")]


@plans_app.command("list")
def plans_list(
    model: Annotated[str | None, typer.Option(help="Only plans for this model.")] = None,
    gpu: Annotated[str | None, typer.Option(help="Only plans for this GPU type.")] = None,
    page_size: Annotated[int | None, typer.Option(help="Plans per page.")] = None,
    page_token: Annotated[str | None, typer.Option(help="Token of the page to show.")] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """List stored plans, newest first (without their Pareto frontiers: `plans get` shows them)."""
    runner = remote(server)
    with flags(("model", "gpu", "page_size", "page_token")):
        plans, token = runner.list_plans(
            model=model, gpu=gpu, page_size=page_size, page_token=page_token
        )
    if json_out:
        show_json({"plans": [p.to_dict() for p in plans], "next_page_token": token})
    else:
        show(fmt.plans_table(plans))
        if token:
            typer.echo(f"next page: --page-token {token}")


@plans_app.command("get")
def plans_get(plan_id: PlanId, json_out: JsonOpt = False, server: ServerOpt = None) -> None:
    """Show one stored plan."""
    stored = remote(server).get_plan(plan_id)
    if json_out:
        show_json(stored.to_dict())
    else:
        show(fmt.stored_plan_header(stored))
        show(fmt.plan_summary(stored.result, modes=stored.request.limits.modes))


@plans_app.command("delete")
def plans_delete(plan_id: PlanId, server: ServerOpt = None) -> None:
    """Delete one stored plan."""
    name = remote(server).delete_plan(plan_id)
    typer.echo(f"deleted {name}")


@sweeps_app.command("list")
def sweeps_list(
    page_size: Annotated[int | None, typer.Option(help="Sweeps per page.")] = None,
    page_token: Annotated[str | None, typer.Option(help="Token of the page to show.")] = None,
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """List stored sweeps, newest first, with how far each got."""
    runner = remote(server)
    with flags(("page_size", "page_token")):
        rows, token = runner.list_sweeps(page_size=page_size, page_token=page_token)
    keys = ("name", "create_time", "state", "done", "total")
    if json_out:
        show_json({"sweeps": [dict(zip(keys, r, strict=True)) for r in rows],
                   "next_page_token": token})  # fmt: skip
        return
    show(fmt.sweeps_table(rows))
    if token:
        typer.echo(f"next page: --page-token {token}")


@sweeps_app.command("get")
def sweeps_get(
    sweep_id: Annotated[str, typer.Argument(metavar="ID", help="Sweep id or name (sweeps/ID).")],
    json_out: JsonOpt = False,
    server: ServerOpt = None,
) -> None:
    """Show one stored sweep: every finished scenario (a running sweep shows those done so far)."""
    name, state, outcomes = remote(server).get_sweep(sweep_id)
    if not json_out:
        show(f"{name}: {state}")
    show_outcomes(None if not json_out else name, outcomes, json_out)
