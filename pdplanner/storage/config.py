"""Where the database is: an explicit URL, else ``PDPLANNER_DATABASE_URL``, else a SQLite file.

PostgreSQL is reached through psycopg 3 (``postgresql+psycopg://user:pass@host:5432/db``); the short
spellings ``postgresql://`` and ``postgres://`` are accepted and mean the same driver, because
psycopg2 (SQLAlchemy's default for them) is not a dependency.
"""

from __future__ import annotations

import os

ENV_VAR = "PDPLANNER_DATABASE_URL"
DEFAULT_URL = "sqlite:///./pdplanner.db"

_DRIVERLESS_POSTGRES = ("postgresql://", "postgres://")


def database_url(explicit: str | None = None) -> str:
    """Return the database URL to use.

    ``explicit`` (a ``--database-url`` flag, say) wins when it is a non-empty string; otherwise the
    ``PDPLANNER_DATABASE_URL`` environment variable when set and non-empty; otherwise
    ``sqlite:///./pdplanner.db`` in the working directory.
    """
    url = explicit or os.environ.get(ENV_VAR) or DEFAULT_URL
    return _with_psycopg_driver(url.strip())


def _with_psycopg_driver(url: str) -> str:
    """Rewrite ``postgresql://`` and ``postgres://`` to ``postgresql+psycopg://``."""
    for prefix in _DRIVERLESS_POSTGRES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
