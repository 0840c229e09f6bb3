"""One place that turns a database URL into a configured SQLAlchemy engine.

Both the store and the migrations use it, so they see the same database the same way:

- every connection is checked before use (``pool_pre_ping``), so a restarted PostgreSQL costs a
  reconnect instead of an error;
- JSON is written strictly (``allow_nan=False``): NaN and infinities are rejected on SQLite just as
  PostgreSQL's JSONB rejects them, instead of being stored on one backend and refused on the other;
- SQLite enforces foreign keys (``PRAGMA foreign_keys=ON`` on every connection, so deleting a sweep
  deletes its scenarios), may be used from any thread, and waits for a lock instead of failing.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from pdplanner.storage.errors import InvalidValueError

SQLITE_BUSY_TIMEOUT_S = 30.0


def dumps_json(value: Any) -> str:
    """Serialise ``value`` as standard JSON; raise ``InvalidValueError`` for NaN, infinities and
    objects JSON has no notation for.

    The drivers call this while executing a statement, inside the write's transaction, so the error
    rolls the whole write back.
    """
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidValueError(f"not storable as JSON: {e}") from e


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` (``sqlite:///...`` or ``postgresql+psycopg://...``)."""
    parsed = make_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    connect_args: dict[str, Any] = {}
    if is_sqlite:
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    engine = create_engine(
        parsed,
        pool_pre_ping=True,
        json_serializer=dumps_json,
        connect_args=connect_args,
    )
    if is_sqlite:
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
    return engine


def _enable_sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    """Turn on foreign-key enforcement, which SQLite leaves off for every new connection."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()
