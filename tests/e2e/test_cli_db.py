"""``pdplanner db upgrade`` and ``pdplanner serve``'s own flag checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pdplanner.service.cli import app

migrate = pytest.importorskip("pdplanner.storage.migrate")

runner = CliRunner(env={"PDPLANNER_SERVER": None, "PDPLANNER_DATABASE_URL": None})


def test_db_upgrade_migrates_a_new_sqlite_file_to_the_newest_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    for _ in range(2):  # the second run finds nothing to do
        result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
        assert result.exit_code == 0, result.stderr
        assert result.stdout == (
            f"database {url} is up to date (revision {migrate.head_revision()})\n"
        )
    assert migrate.current_revision(url) == migrate.head_revision()


def test_db_upgrade_takes_the_url_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    result = runner.invoke(app, ["db", "upgrade"], env={"PDPLANNER_DATABASE_URL": url})
    assert result.exit_code == 0, result.stderr
    assert migrate.current_revision(url) == migrate.head_revision()


def test_a_url_no_driver_understands_is_a_usage_error() -> None:
    result = runner.invoke(app, ["db", "upgrade", "--database-url", "nosuchdb://x"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --database-url: not a usable database URL")
    assert len(result.stderr.splitlines()) == 1


def test_an_unreachable_database_is_one_line_without_its_password() -> None:
    url = "postgresql://someone:s3cret@127.0.0.1:1/test"
    result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --database-url postgresql+psycopg://someone:***@")
    assert "s3cret" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_serve_rejects_a_port_out_of_range_before_starting() -> None:
    result = runner.invoke(app, ["serve", "--port", "70000"])
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --port: must be in 1..65535, got 70000\n",
    )
