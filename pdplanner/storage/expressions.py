"""SQL expressions the repository needs that SQLAlchemy does not spell the same on every backend.

``json_without_keys(column, keys)`` is a JSON object column without some of its top-level keys,
computed by the database so that what is left out is neither sent to nor parsed by Python:
``jsonb - text[]`` on PostgreSQL, ``json_remove(json, path, ...)`` on SQLite (JSON1, built into
SQLite since 3.38). A listing reads a stored plan without its Pareto frontiers this way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from pdplanner.storage.errors import InvalidValueError

#: Keys a caller may leave out: plain identifiers, so a SQLite JSON path needs no quoting rules.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _JsonWithoutKeys(FunctionElement[Any]):
    inherit_cache = True
    name = "json_without_keys"

    def __init__(self, column: ColumnElement[Any], keys: tuple[str, ...]) -> None:
        self.type = column.type
        # the keys are bound parameters among the clauses, so the statement cache tells apart
        # expressions of different key counts and never bakes a key into cached SQL
        super().__init__(column, *(literal(k) for k in keys))


def json_without_keys(column: ColumnElement[Any], keys: Sequence[str]) -> ColumnElement[Any]:
    """``column`` (JSON objects) without the top-level ``keys``; the column itself when there
    are none. Keys absent from a row are ignored. ``InvalidValueError`` for a key that is not
    an identifier."""
    for key in keys:
        if not _KEY.fullmatch(key):
            raise InvalidValueError(f"JSON key {key!r} is not an identifier")
    if not keys:
        return column
    return _JsonWithoutKeys(column, tuple(keys))


def _parts(element: _JsonWithoutKeys, compiler: SQLCompiler, **kw: Any) -> tuple[str, list[str]]:
    column, *keys = (compiler.process(clause, **kw) for clause in element.clauses)
    return column, keys


@compiles(_JsonWithoutKeys, "postgresql")
def _postgresql(element: _JsonWithoutKeys, compiler: SQLCompiler, **kw: Any) -> str:
    column, keys = _parts(element, compiler, **kw)
    return f"({column} - CAST(ARRAY[{', '.join(keys)}] AS TEXT[]))"


@compiles(_JsonWithoutKeys, "sqlite")
def _sqlite(element: _JsonWithoutKeys, compiler: SQLCompiler, **kw: Any) -> str:
    column, keys = _parts(element, compiler, **kw)
    paths = ", ".join("'$.' || " + key for key in keys)
    return f"json_remove({column}, {paths})"
