"""Opaque page tokens for keyset pagination over ``(created_at, id)``, newest first.

A token names the last row of the page it ends and the filters of the listing it belongs to; the
next page starts strictly after that row. Tokens are URL-safe base64 of a small JSON object. They
are opaque to clients and not signed: a forged token can only move the starting point of a listing.
A token decoded with different filters than it was issued for is invalid (as AIP-158 asks), so a
client cannot silently page through one listing with another's position.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from pdplanner.storage.errors import InvalidPageTokenError

_VERSION = 1
#: Tokens are a few hundred characters; anything longer is not one of ours, unread.
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True)
class Cursor:
    """The position after which a page starts: the previous page's last row."""

    created_at: datetime
    id: str


def encode(cursor: Cursor, filters: dict[str, str | None]) -> str:
    """Return the token for the page after ``cursor`` in the listing with ``filters``."""
    payload = {
        "v": _VERSION,
        "t": cursor.created_at.isoformat(),
        "i": cursor.id,
        "f": filters,
    }
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, filters: dict[str, str | None]) -> Cursor:
    """Return the cursor in ``token``; raise ``InvalidPageTokenError`` unless it is one of ours.

    ``filters`` must equal those the token was issued with.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidPageTokenError(f"invalid page token: longer than {MAX_TOKEN_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        if not isinstance(payload, dict) or payload.get("v") != _VERSION:
            raise ValueError("unknown token version")
        created_at = datetime.fromisoformat(payload["t"])
        row_id = payload["i"]
        token_filters = payload["f"]
        if created_at.tzinfo is None or not isinstance(row_id, str):
            raise ValueError("no time zone or no row id")
        created_at.astimezone(UTC)  # a year-1 time with a positive offset overflows here
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError,
            RecursionError, OverflowError) as e:  # fmt: skip
        raise InvalidPageTokenError(f"invalid page token {_short(token)}") from e
    if token_filters != filters:
        raise InvalidPageTokenError(
            f"page token was issued for a listing with filters {_short(str(token_filters))}, "
            f"not {filters}"
        )
    return Cursor(created_at=created_at, id=row_id)


def _short(text: str, limit: int = 40) -> str:
    """``text`` quoted, cut to ``limit`` characters: errors name a bad token, never echo it all."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} chars)"
