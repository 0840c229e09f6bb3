"""What the store returns: frozen dataclasses, detached from the database.

No ORM object ever leaves ``pdplanner/storage/``; these are plain values, safe to hand to another
thread, compare, or keep after the store is closed. JSON fields come back as fresh dicts on every
read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

PlanMode = Literal["agg", "disagg", "none"]
SweepState = Literal["running", "done", "failed"]


@dataclass(frozen=True)
class StoredPlan:
    """A stored planning answer.

    ``mode`` is the serving mode of the recommended deployment, ``"none"`` when nothing met the SLO.
    ``request_id`` is the client's idempotency key, if it sent one. ``created_at`` is aware, in UTC.
    """

    id: str
    request_id: str | None
    model: str
    gpu: str
    mode: PlanMode
    planner_version: str
    created_at: datetime
    search_ms: float
    request: dict[str, Any]
    result: dict[str, Any]


@dataclass(frozen=True)
class StoredScenario:
    """One scenario of a sweep: its input and either its ``result`` or the ``error`` it hit."""

    index: int
    scenario: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class StoredSweep:
    """A sweep and its progress (``done`` of ``total`` scenarios stored).

    ``scenarios`` are ordered by index. ``get_sweep`` fills them in; ``list_sweeps`` leaves them
    empty (the counts say how far each sweep is) so that a listing stays small.
    """

    id: str
    request_id: str | None
    created_at: datetime
    state: SweepState
    total: int
    done: int
    request: dict[str, Any]
    scenarios: tuple[StoredScenario, ...] = field(default=())


@dataclass(frozen=True)
class StoredEntry:
    """A custom catalog entry (a model or a GPU type) added at run time."""

    name: str
    created_at: datetime
    spec: dict[str, Any]


@dataclass(frozen=True)
class StoredSchedule:
    """A stored scaling schedule. ``gpu_hours``, ``slo_attainment`` (None when not simulated)
    and ``violations`` (intervals predicted to miss the SLO) summarise ``result`` for listings."""

    id: str
    request_id: str | None
    model: str
    gpu: str
    planner_version: str
    created_at: datetime
    gpu_hours: float
    slo_attainment: float | None
    violations: int
    request: dict[str, Any]
    result: dict[str, Any]
