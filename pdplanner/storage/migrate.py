"""Bring a database's schema up to date: ``upgrade(url)``, run on server start and by
``pdplanner db upgrade``.

The Alembic environment is configured here in code, so there is no ``alembic.ini``; the migration
scripts are found next to this module (``pdplanner/storage/migrations``), which works from a
checkout and from an installed package alike. On PostgreSQL the upgrade holds an advisory lock, so
servers starting together migrate one after the other instead of racing to create the same tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from pdplanner.storage.engine import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: Key of the PostgreSQL advisory lock held while migrating (any constant; ASCII "pdplanr").
_ADVISORY_LOCK_KEY = 0x706470_6C616E72

_Command = Callable[[Config], None]


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for pdplanner's migrations, bound to ``connection`` if given.

    Use it for Alembic commands this module does not wrap, e.g. writing a new migration:
    ``alembic.command.revision(alembic_config(conn), message="...", autogenerate=True)``.
    """
    config = Config()
    # Config values go through configparser interpolation: a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (default: the newest). A no-op when already there."""
    _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> None:
    """Revert the migrations down to ``revision`` (``"base"``: an empty schema)."""
    _run(url, lambda config: command.downgrade(config, revision))


def head_revision() -> str | None:
    """The newest migration's revision id."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; ``None`` when it was never migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def _run(url: str, migrate: _Command) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
            migrate(alembic_config(connection))
    finally:
        engine.dispose()
