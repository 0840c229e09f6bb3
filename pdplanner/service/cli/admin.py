"""``pdplanner serve`` (the gRPC server) and ``pdplanner db upgrade`` (the migrations)."""

from __future__ import annotations

from typing import Annotated

import typer

from pdplanner.service.cli.app import app, group, one_line
from pdplanner.service.cli.errors import EXIT_FAILURE, CliError

db_app = group("db", "The plan database.", no_args_is_help=True)

_DB_HELP = "Database URL (default: $PDPLANNER_DATABASE_URL, else sqlite:///./pdplanner.db)."


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 50051,
    database_url: Annotated[str | None, typer.Option(metavar="URL", help=_DB_HELP)] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on this port (default PDPLANNER_METRICS_PORT)."
        ),
    ] = None,
) -> None:
    """Run the gRPC planning server until SIGTERM or Ctrl-C."""
    if not 0 < port < 65536:
        raise CliError(f"--port: must be in 1..65535, got {port}")
    if metrics_port is not None and not 0 < metrics_port < 65536:
        raise CliError(f"--metrics-port: must be in 1..65535, got {metrics_port}")
    from pdplanner.service.server import serve as run

    try:
        run(port, database_url, metrics_port=metrics_port)
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

    from pdplanner.storage.config import database_url as resolve
    from pdplanner.storage.migrate import current_revision, upgrade

    url = resolve(database_url)
    shown = _hide_password(url)
    try:
        upgrade(url)
        revision = current_revision(url)
    except ArgumentError as exc:
        raise CliError(f"--database-url: not a usable database URL {shown!r}: {exc}") from None
    except DBAPIError as exc:
        reason = one_line(str(exc.orig) if exc.orig is not None else str(exc))
        raise CliError(f"--database-url {shown}: {reason}", EXIT_FAILURE) from None
    typer.echo(f"database {shown} is up to date (revision {revision})")


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
