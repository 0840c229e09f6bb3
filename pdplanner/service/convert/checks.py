"""Checks of proto fields that the planner cannot make: they concern the wire, not the domain.

Each raises ``InvalidInputError`` with the field path, which ``pdplanner.service.errors`` turns into
a
``BadRequest`` field violation.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, overload

from google.protobuf.message import Message

from pdplanner.planner.errors import InvalidInputError, shorten

MAX_REQUEST_ID_CHARS: Final = 128
INT32_MAX: Final = 2**31 - 1
_CATALOG_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def finite(value: float, path: str) -> float:
    """Reject NaN and infinities, which no field accepts and no database stores."""
    if not math.isfinite(value):
        raise InvalidInputError(path, f"must be a finite number, got {value}")
    return value


def optional(msg: Message, field: str, default: Any = None) -> Any:
    """The value of an ``optional`` field, or ``default`` when it is not set."""
    return getattr(msg, field) if msg.HasField(field) else default


@overload
def finite_optional(msg: Message, field: str, path: str) -> float | None: ...
@overload
def finite_optional(msg: Message, field: str, path: str, default: float) -> float: ...
def finite_optional(
    msg: Message, field: str, path: str, default: float | None = None
) -> float | None:
    """An ``optional double`` field: ``default`` when unset, else a finite number."""
    value = optional(msg, field)
    return default if value is None else finite(value, path)


def required_text(value: str, path: str) -> str:
    """A string field that must not be empty or blank."""
    if not value.strip():
        raise InvalidInputError(path, "is required")
    return value


def request_id(value: str, path: str = "request_id") -> str | None:
    """The idempotency key of a mutating call, or None when the client sent none."""
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID_CHARS or not value.isprintable() or value.strip() != value:
        raise InvalidInputError(
            path, f"must be at most {MAX_REQUEST_ID_CHARS} printable characters (a UUID is best)"
        )
    return value


def catalog_id(value: str, path: str) -> str:
    """A new catalog entry's id: letters, digits, '.', '_', '-'; at most 63 characters."""
    if not value:
        raise InvalidInputError(path, "is required")
    if not _CATALOG_ID_RE.fullmatch(value):
        raise InvalidInputError(
            path,
            "must be letters, digits, '.', '_' or '-', start with a letter or digit and have at "
            f"most 63 characters, got {shorten(value)}",
        )
    return value


@overload
def i32(value: int, path: str) -> int: ...
@overload
def i32(value: None, path: str) -> None: ...
def i32(value: int | None, path: str) -> int | None:
    """A domain integer bound for an int32 field; out of range is the field's error, not a crash."""
    if value is not None and not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise InvalidInputError(path, f"must be at most {INT32_MAX:,}, got {value:,}")
    return value


def at_most(count: int, maximum: int, path: str) -> None:
    """A repeated field of at most ``maximum`` values (checked before any value is read)."""
    if count > maximum:
        raise InvalidInputError(path, f"must have at most {maximum:,} values, got {count:,}")


def page_size(value: int, default: int, maximum: int, path: str = "page_size") -> int:
    """AIP-158 page size: 0 means the default, larger than the maximum means the maximum."""
    if value < 0:
        raise InvalidInputError(path, f"must not be negative, got {value}")
    return default if value == 0 else min(value, maximum)
