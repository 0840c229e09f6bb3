"""Fixtures for the integration tests: empty and migrated databases on SQLite and PostgreSQL.

Every test that takes ``empty_database_url`` (or a fixture built on it) runs once per backend:

- ``sqlite``: a fresh file under the test's ``tmp_path``;
- ``postgresql``: a fresh schema, dropped afterwards, in the database named by
  ``PDPLANNER_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
  When that server cannot be reached the PostgreSQL tests are skipped, unless ``CI`` is set: in CI a
  missing database is a failure, not a silent skip.

A schema per test keeps runs independent of each other and of earlier (even interrupted) runs.
``server`` is an in-process gRPC server on a free port over ``database_url``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pdplanner.service.server import RunningServer, start_server
from pdplanner.storage.engine import make_engine
from pdplanner.storage.migrate import upgrade
from pdplanner.storage.repository import SqlStore

POSTGRES_URL_ENV = "PDPLANNER_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The test PostgreSQL's URL, once it answered; skip (or, in CI, fail) when it does not."""
    url = os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as e:  # any reason at all: driver missing, refused, bad credentials
        reason = f"PostgreSQL at {shown} is not reachable ({POSTGRES_URL_ENV}): {e}"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of each backend, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pdplanner.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_server_url")
    schema = f"pdplanner_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    base = make_url(server_url)
    given = base.query.get("options") or ()  # keep any libpq options the URL already sets
    given = (given,) if isinstance(given, str) else given
    options = " ".join([*given, f"-csearch_path={schema}"])
    try:
        yield base.update_query_dict({"options": options}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """The URL of a database of each backend with the schema migrated to head."""
    upgrade(empty_database_url)
    return empty_database_url


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    """A ``SqlStore`` on a migrated database of each backend."""
    with SqlStore(database_url) as opened:
        yield opened


@pytest.fixture
def count_rows(database_url: str) -> Iterator[Callable[..., int]]:
    """``count_rows(table, where=None, **params)``: rows in ``table``, read past the store.

    Tests use it to check what is really in the database: one row, not two; nothing half-written.
    """
    engine = make_engine(database_url)

    def count(table: str, where: str | None = None, **params: object) -> int:
        sql = f'SELECT COUNT(*) FROM "{table}"' + (f" WHERE {where}" if where else "")
        with engine.connect() as connection:
            return int(connection.execute(text(sql), params).scalar_one())

    yield count
    engine.dispose()


@pytest.fixture
def server(database_url: str) -> Iterator[RunningServer]:
    running = start_server(port=0, host="127.0.0.1", database_url=database_url)
    yield running
    running.stop(0)
