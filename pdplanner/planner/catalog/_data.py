"""Reading catalog data files: YAML or JSON, checked against the fields of a dataclass."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pdplanner.planner.errors import ECHO_CHARS, InvalidInputError


def read_document(path: str | Path, field: str) -> Any:
    """Parse a YAML or JSON file; unreadable or unparsable files raise InvalidInputError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(field, f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(
            field, f"{p} is not valid {p.suffix.lstrip('.') or 'YAML'}: {first}"
        ) from None


def builtin_entries(filename: str) -> list[dict[str, Any]]:
    """The entries of a data file shipped in ``pdplanner/planner/catalog/data``."""
    text = (
        resources.files("pdplanner.planner.catalog").joinpath("data", filename).read_text("utf-8")
    )
    entries = yaml.safe_load(text)
    if not isinstance(entries, list):
        raise RuntimeError(f"pdplanner/planner/catalog/data/{filename} must hold a list of entries")
    return entries


def require(entry: dict[str, Any], key: str, kind: type, field: str) -> Any:
    """``entry[key]`` converted to ``kind``; missing or ill-typed values name the field."""
    if key not in entry or entry[key] is None:
        raise InvalidInputError(f"{field}.{key}", "is required")
    return convert(entry[key], kind, f"{field}.{key}")


def optional(entry: dict[str, Any], key: str, kind: type, default: Any, field: str) -> Any:
    if key not in entry or entry[key] is None:
        return default
    return convert(entry[key], kind, f"{field}.{key}")


def convert(value: Any, kind: type, field: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise InvalidInputError(field, f"must be true or false, got {value!r}")
    if kind is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, float) and not math.isfinite(value))
            or int(value) != value
        ):
            raise InvalidInputError(field, f"must be an integer, got {_short(value)}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidInputError(field, f"must be a number, got {_short(value)}")
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise InvalidInputError(field, f"must be a number, got {_short(value)}") from None
        if not math.isfinite(number):
            raise InvalidInputError(field, f"must be a finite number, got {_short(value)}")
        return number
    if kind is str:
        if not isinstance(value, str) or not value:
            raise InvalidInputError(field, f"must be a non-empty string, got {_short(value)}")
        return value
    raise TypeError(kind)


def _short(value: Any) -> str:
    """A value a client sent, quoted and cut short for an error message."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text):,} chars)"


def normalise_name(name: str) -> str:
    """Catalog look-ups ignore case and treat '_' like '-'."""
    return name.strip().lower().replace("_", "-")
