"""Which database pdplanner uses: an explicit URL, else the environment, else a SQLite file."""

from __future__ import annotations

import pytest

from pdplanner.storage.config import DEFAULT_URL, ENV_VAR, database_url


@pytest.fixture(autouse=True)
def no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without ``PDPLANNER_DATABASE_URL`` set."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_without_configuration_it_is_a_sqlite_file_in_the_working_directory() -> None:
    assert database_url() == database_url(None) == DEFAULT_URL == "sqlite:///./pdplanner.db"


def test_the_environment_variable_replaces_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "sqlite:////var/lib/pdplanner/plans.db")

    assert database_url() == "sqlite:////var/lib/pdplanner/plans.db"


def test_an_explicit_url_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "sqlite:////from/env.db")

    assert database_url("sqlite:////explicit.db") == "sqlite:////explicit.db"


def test_empty_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "")

    assert database_url("") == DEFAULT_URL


@pytest.mark.parametrize(
    "given",
    [
        "postgresql+psycopg://u:p@db:5432/pdplanner",
        "postgresql://u:p@db:5432/pdplanner",
        "postgres://u:p@db:5432/pdplanner",
    ],
)
def test_postgresql_urls_use_psycopg_3(given: str) -> None:
    assert database_url(given) == "postgresql+psycopg://u:p@db:5432/pdplanner"
