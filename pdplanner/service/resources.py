"""Resource names of the API, built and parsed here only: ``plans/{id}``, ``sweeps/{id}``,
``schedules/{id}``, ``models/{id}``, ``gpus/{id}`` (AIP-122).

``parse`` checks a name sent by a client (``InvalidInputError`` on its field otherwise);
``name`` builds one; ``from_id_or_name`` is for a person who types either ``abc`` or ``plans/abc``.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from pdplanner.planner.errors import InvalidInputError, shorten

Collection = Literal["plans", "sweeps", "schedules", "models", "gpus"]

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def name(collection: Collection, ident: str) -> str:
    """``name("plans", "ab") == "plans/ab"``."""
    return f"{collection}/{ident}"


def parse(value: str, collection: Collection, path: str = "name") -> str:
    """The id in a resource name: ``parse("plans/ab", "plans") == "ab"``."""
    if not value:
        raise InvalidInputError(path, f"is required: a resource name '{collection}/{{id}}'")
    prefix = collection + "/"
    ident = value[len(prefix) :] if value.startswith(prefix) else ""
    if not _ID_RE.fullmatch(ident):
        raise InvalidInputError(
            path, f"must be a resource name '{collection}/{{id}}', got {shorten(value)}"
        )
    return ident


def strip(value: str, collection: Collection) -> str:
    """The id of a name, or the value itself when it has no ``{collection}/`` prefix."""
    return value.removeprefix(collection + "/")


def from_id_or_name(value: str, collection: Collection) -> str:
    """``abc`` or ``plans/abc`` -> ``plans/abc``."""
    return name(collection, strip(value, collection))
