"""Shared set-up of the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _pipe_width_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Print tables at the CLI's own pipe width whatever terminal runs the tests: a narrow
    ``COLUMNS`` inherited from the shell would make rich shorten the names the tests look for."""
    monkeypatch.delenv("COLUMNS", raising=False)
