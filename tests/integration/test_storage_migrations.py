"""The migrations build exactly the schema that ``pdplanner/storage/models.py`` describes, on both
backends.

If a model changes without a migration (or a migration without the model), the autogenerate
comparison below lists the difference and the first test fails with it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, Text, inspect

from pdplanner.storage.engine import make_engine
from pdplanner.storage.migrate import current_revision, downgrade, head_revision, upgrade
from pdplanner.storage.models import metadata

TABLES = {"plans", "sweeps", "sweep_scenarios", "custom_models", "custom_gpus", "schedules"}


def schema_differences(url: str, target: MetaData = metadata) -> list[Any]:
    """Alembic's autogenerate diff between the database at ``url`` and ``target``."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, target))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_migrated_schema_equals_the_models(empty_database_url: str) -> None:
    upgrade(empty_database_url)

    differences = schema_differences(empty_database_url)

    assert differences == [], f"migrations and models disagree: {differences}"
    assert table_names(empty_database_url) >= TABLES


def test_the_comparison_would_notice_a_model_without_a_migration(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    drifted = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["plans"].append_column(Column("engine", Text(), nullable=True))

    differences = schema_differences(empty_database_url, drifted)

    assert [d[0] for d in differences] == ["add_column"], differences


def test_upgrading_twice_is_a_no_op_at_head(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None

    upgrade(empty_database_url)
    upgrade(empty_database_url)

    assert current_revision(empty_database_url) == head_revision() == "0002"
    assert schema_differences(empty_database_url) == []


def test_downgrade_to_base_removes_the_tables_and_upgrade_restores_them(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url)

    downgrade(empty_database_url, "base")
    assert table_names(empty_database_url) & TABLES == set()
    assert current_revision(empty_database_url) is None

    upgrade(empty_database_url)
    assert schema_differences(empty_database_url) == []


def test_upgrade_does_not_depend_on_the_working_directory(
    empty_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    upgrade(empty_database_url)

    assert current_revision(empty_database_url) == head_revision()


def test_the_migration_scripts_are_package_resources() -> None:
    migrations = resources.files("pdplanner.storage.migrations")

    assert migrations.joinpath("env.py").is_file()
    assert migrations.joinpath("script.py.mako").is_file()
    assert migrations.joinpath("versions", "0001_initial.py").is_file()
