"""Alembic environment: runs migrations on the connection ``pdplanner.storage.migrate`` hands over.

Without one (Alembic's own command line, which needs a config file pdplanner does not ship), it
connects to ``pdplanner.storage.config.database_url()``. Offline mode renders SQL for that URL's
dialect.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from pdplanner.storage.config import database_url
from pdplanner.storage.engine import make_engine
from pdplanner.storage.models import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_offline() -> None:
    """Render the migrations as SQL text instead of running them."""
    url = config.get_main_option("sqlalchemy.url") or database_url()
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the given connection, or on a new one to the configured database."""
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(database_url(config.get_main_option("sqlalchemy.url")))
    try:
        with engine.connect() as own_connection:
            _configure(own_connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
