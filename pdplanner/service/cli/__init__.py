"""The ``pdplanner`` command line, one module per command group:

    app.py        the command group, one-line errors, output, options several commands share
    backend.py    where a command runs: ``LocalBackend`` (in process) or ``RemoteBackend`` (gRPC)
    estimate.py   ``estimate``: one fixed configuration
    plan.py       ``plan``: search and recommend (``--plot`` draws the Pareto frontiers)
    sweep.py      ``sweep``: a grid of plans
    stored.py     ``plans list|get|delete``, ``sweeps get``: what a server stored
    schedule.py   ``schedule``, ``schedules list|get|delete``, ``simulate``: elastic scaling
    export.py     ``export``: a stored plan as launch commands, manifests and a benchmark
    catalog.py    ``models``, ``gpus`` and their ``create``
    admin.py      ``serve`` and ``db upgrade``
    inputs.py     flags, JSON Lines and traffic-mix files -> planner requests
    format.py     tables, JSON and the plot

``plan``, ``estimate`` and ``sweep`` run the planner in this process by default, and against a
running server with ``--server HOST:PORT`` (or ``PDPLANNER_SERVER``), printing the same output
either way. Modules load lazily where it matters: the planner's kernels, gRPC and the database are
imported by the commands that need them, so ``pdplanner --help`` starts quickly.
"""

from __future__ import annotations

from collections.abc import Sequence

import typer

from pdplanner.service.cli import admin, catalog, estimate, export, plan, schedule, stored, sweep
from pdplanner.service.cli.app import app
from pdplanner.service.cli.errors import CliError

__all__ = [
    "CliError",
    "admin",
    "app",
    "catalog",
    "estimate",
    "export",
    "main",
    "plan",
    "schedule",
    "stored",
    "sweep",
]


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``pdplanner``)."""
    typer.main.get_command(app).main(args=argv, prog_name="pdplanner")


if __name__ == "__main__":  # pragma: no cover
    main()
