"""Exceptions raised by the planner.

    PlannerError                  base of everything the planner raises on purpose
    ├── InvalidInputError         a request field is out of range or inconsistent (.field, .reason)
    │   ├── InvalidFields         several such fields of one request (.violations, all of them)
    │   └── UnknownEntryError     a model, GPU or engine name the catalog does not know (.known)
    ├── CalibrationError          a calibration table is missing or malformed
    └── SearchCancelled           the caller asked a running search to stop (deadline, cancel)

A configuration that does not fit in memory, or an SLO that nothing meets, is not an exception:
those are answers, reported as data (``fits=False`` with a reason, a plan with no best).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

#: Errors quote at most this many characters of a value a client sent.
ECHO_CHARS = 60
#: Unknown names are answered with at most this many close matches, not the whole catalog.
CLOSE_MATCHES = 5


def shorten(value: str, limit: int = ECHO_CHARS) -> str:
    """``value`` quoted, cut to ``limit`` characters with its length said when it is longer."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


class PlannerError(Exception):
    """Base class of the planner's own errors."""


class InvalidInputError(PlannerError, ValueError):
    """A request field is invalid; ``field`` is its path (``workload.isl``) and ``reason`` why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @property
    def violations(self) -> tuple[tuple[str, str], ...]:
        """Every (field, reason) of the request at fault; one here, several in ``InvalidFields``."""
        return ((self.field, self.reason),)


class InvalidFields(InvalidInputError):
    """The field violations (usually several) of one request; ``field`` and ``reason`` are the
    first one's."""

    def __init__(self, violations: Iterable[tuple[str, str]]) -> None:
        found = tuple(violations)
        if not found:
            raise ValueError("InvalidFields needs at least one violation")
        super().__init__(*found[0])
        self.args = ("; ".join(f"{f}: {r}" if f else r for f, r in found),)
        self._violations = found

    @property
    def violations(self) -> tuple[tuple[str, str], ...]:
        return self._violations


class UnknownEntryError(InvalidInputError, LookupError):
    """A catalog name (model, GPU, engine) that is not known; ``known`` lists the valid names.

    The message quotes the name cut to ``ECHO_CHARS`` and names at most ``CLOSE_MATCHES`` known
    names, the closest first (the first ones by name when none is close)."""

    def __init__(self, field: str, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(sorted(known))
        near = difflib.get_close_matches(
            name[: 2 * ECHO_CHARS], self.known, n=CLOSE_MATCHES, cutoff=0.3
        )
        shown = near or list(self.known[:CLOSE_MATCHES])
        more = len(self.known) - len(shown)
        listed = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        label = "closest known" if near else "known"
        super().__init__(field, f"unknown {kind} {shorten(name)}; {label}: {listed}")


class CalibrationError(PlannerError):
    """A calibration table could not be read or does not have the expected columns."""


class SearchCancelled(PlannerError):
    """A search stopped early because its caller asked it to (deadline passed, client gone)."""
