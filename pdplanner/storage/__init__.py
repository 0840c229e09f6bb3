"""pdplanner's storage: plans, sweeps, schedules and custom catalog entries in SQLite or PostgreSQL.

    from pdplanner.storage import SqlStore, database_url, upgrade

    url = database_url()          # explicit > PDPLANNER_DATABASE_URL > sqlite:///./pdplanner.db
    upgrade(url)                  # create or migrate the schema (Alembic), idempotent
    with SqlStore(url) as store:  # thread-safe; records come back as frozen dataclasses
        plan = store.create_plan(request_id="r-1", model=..., ...)

The service depends on the ``PlanStore`` protocol; errors are those of ``pdplanner.storage.errors``.
"""

from pdplanner.storage.config import database_url
from pdplanner.storage.errors import (
    AlreadyExistsError,
    InvalidPageTokenError,
    InvalidValueError,
    NotFoundError,
    StorageError,
    UnavailableError,
)
from pdplanner.storage.migrate import upgrade
from pdplanner.storage.records import (
    PlanMode,
    StoredEntry,
    StoredPlan,
    StoredScenario,
    StoredSchedule,
    StoredSweep,
    SweepState,
)
from pdplanner.storage.repository import PlanStore, SqlStore

__all__ = [
    "AlreadyExistsError",
    "InvalidPageTokenError",
    "InvalidValueError",
    "NotFoundError",
    "PlanMode",
    "PlanStore",
    "SqlStore",
    "StorageError",
    "StoredEntry",
    "StoredPlan",
    "StoredScenario",
    "StoredSchedule",
    "StoredSweep",
    "SweepState",
    "UnavailableError",
    "database_url",
    "upgrade",
]
