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

from collections.abc import Iterable


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
    """A catalog name (model, GPU, engine) that is not known; ``known`` lists the valid names."""

    def __init__(self, field: str, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(field, f"unknown {kind} {name!r}; known: {', '.join(self.known)}")


class CalibrationError(PlannerError):
    """A calibration table could not be read or does not have the expected columns."""


class SearchCancelled(PlannerError):
    """A search stopped early because its caller asked it to (deadline passed, client gone)."""
