"""The repository: what the service may ask of storage (``PlanStore``) and its SQL implementation.

``SqlStore`` keeps plans, sweeps, scaling schedules and custom catalog entries in SQLite or
PostgreSQL through SQLAlchemy. Its contract, run against both databases, is
``tests/integration/test_storage_contract.py``:

- Every write is one transaction: it is stored whole or not at all.
- A ``request_id`` already used returns what the first call stored instead of storing twice, also
  when several calls with the same ``request_id`` race (the losers of the insert read the winner's
  row).
- Listings are newest first, paged by an opaque token (keyset on ``(created_at, id)``), so a page
  never repeats or skips a row when rows are added between pages.
- Records come back as frozen dataclasses (``pdplanner.storage.records``); errors as
``pdplanner.storage.errors``.
- One store may be shared by the threads of a gRPC server: each call uses its own session.

The schema must exist first: ``pdplanner.storage.migrate.upgrade(url)``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, cast

from sqlalchemy import ColumnElement, Row, and_, exc, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, selectinload, sessionmaker

from pdplanner.storage import pagetoken
from pdplanner.storage.engine import make_engine
from pdplanner.storage.errors import (
    AlreadyExistsError,
    InvalidValueError,
    NotFoundError,
    StorageError,
    UnavailableError,
)
from pdplanner.storage.expressions import json_without_keys
from pdplanner.storage.models import (
    PLAN_MODES,
    CustomGpu,
    CustomModel,
    Plan,
    Schedule,
    Sweep,
    SweepScenario,
)
from pdplanner.storage.records import (
    PlanMode,
    StoredEntry,
    StoredPlan,
    StoredScenario,
    StoredSchedule,
    StoredSweep,
    SweepState,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
FINAL_SWEEP_STATES = ("done", "failed")

Clock = Callable[[], datetime]
_Row = TypeVar("_Row", Plan, Sweep, Schedule)
_Entry = TypeVar("_Entry", CustomModel, CustomGpu)
_Record = TypeVar("_Record", StoredPlan, StoredSweep, StoredSchedule)


class PlanStore(Protocol):
    """Storage for plans, sweeps and custom catalog entries, as the service layer sees it."""

    def create_plan(
        self,
        *,
        request_id: str | None,
        model: str,
        gpu: str,
        mode: PlanMode,
        planner_version: str,
        search_ms: float,
        request: dict[str, Any],
        result: dict[str, Any],
    ) -> StoredPlan:
        """Store a plan; with a ``request_id`` already used, return that plan instead."""
        ...

    def get_plan(self, plan_id: str) -> StoredPlan:
        """Return the plan; raise ``NotFoundError`` if there is none."""
        ...

    def find_plan_by_request_id(self, request_id: str) -> StoredPlan | None:
        """Return the plan stored under this ``request_id``, or ``None``."""
        ...

    def list_plans(
        self,
        *,
        model: str | None = None,
        gpu: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
        omit_result_keys: Sequence[str] = (),
    ) -> tuple[list[StoredPlan], str | None]:
        """Return one page of plans, newest first, and the next page's token (None: no more).

        Each plan's ``result`` comes without the top-level ``omit_result_keys``."""
        ...

    def delete_plan(self, plan_id: str) -> None:
        """Delete the plan; raise ``NotFoundError`` if there is none."""
        ...

    def create_sweep(
        self, *, request_id: str | None, request: dict[str, Any], total: int
    ) -> tuple[StoredSweep, bool]:
        """Start a sweep of ``total`` scenarios; return ``(sweep, created)`` (False on a retry)."""
        ...

    def add_sweep_scenario(
        self,
        sweep_id: str,
        index: int,
        scenario: dict[str, Any],
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Store one scenario's outcome (a result or an error) and count it as done."""
        ...

    def finish_sweep(self, sweep_id: str, state: SweepState) -> None:
        """Mark the sweep ``done`` or ``failed``."""
        ...

    def get_sweep(
        self, sweep_id: str, *, after_index: int = -1, limit: int | None = None
    ) -> StoredSweep:
        """Return the sweep with its scenarios in index order; ``NotFoundError`` if none.

        ``after_index`` and ``limit`` page the scenarios: at most ``limit`` of index above
        ``after_index`` (``limit=None``: all of them)."""
        ...

    def list_sweeps(
        self, *, page_size: int = DEFAULT_PAGE_SIZE, page_token: str | None = None
    ) -> tuple[list[StoredSweep], str | None]:
        """Return one page of sweeps (no scenarios), newest first, and the next page's token."""
        ...

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete the sweep and its scenarios; raise ``NotFoundError`` if there is none."""
        ...

    def create_schedule(
        self,
        *,
        request_id: str | None,
        model: str,
        gpu: str,
        planner_version: str,
        gpu_hours: float,
        slo_attainment: float | None,
        violations: int,
        request: dict[str, Any],
        result: dict[str, Any],
    ) -> StoredSchedule:
        """Store a schedule; with a ``request_id`` already used, return that schedule instead."""
        ...

    def get_schedule(self, schedule_id: str) -> StoredSchedule:
        """Return the schedule; raise ``NotFoundError`` if there is none."""
        ...

    def find_schedule_by_request_id(self, request_id: str) -> StoredSchedule | None:
        """Return the schedule stored under this ``request_id``, or ``None``."""
        ...

    def list_schedules(
        self,
        *,
        model: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> tuple[list[StoredSchedule], str | None]:
        """Return one page of schedules, newest first, and the next page's token."""
        ...

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete the schedule; raise ``NotFoundError`` if there is none."""
        ...

    def create_custom_model(self, name: str, spec: dict[str, Any]) -> StoredEntry:
        """Add a model; raise ``AlreadyExistsError`` if the name is taken."""
        ...

    def get_custom_model(self, name: str) -> StoredEntry:
        """Return the custom model; raise ``NotFoundError`` if there is none."""
        ...

    def list_custom_models(self) -> list[StoredEntry]:
        """Return every custom model, by name."""
        ...

    def create_custom_gpu(self, name: str, spec: dict[str, Any]) -> StoredEntry:
        """Add a GPU type; raise ``AlreadyExistsError`` if the name is taken."""
        ...

    def get_custom_gpu(self, name: str) -> StoredEntry:
        """Return the custom GPU type; raise ``NotFoundError`` if there is none."""
        ...

    def list_custom_gpus(self) -> list[StoredEntry]:
        """Return every custom GPU type, by name."""
        ...

    def delete_custom_model(self, name: str) -> None:
        """Delete the custom model; raise ``NotFoundError`` if there is none."""
        ...

    def delete_custom_gpu(self, name: str) -> None:
        """Delete the custom GPU type; raise ``NotFoundError`` if there is none."""
        ...

    def custom_entries_version(self) -> tuple[Any, ...]:
        """A value that changes whenever a custom model or GPU is created or deleted."""
        ...

    def close(self) -> None:
        """Release the store's connections."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class SqlStore:
    """``PlanStore`` on a SQL database (``sqlite:///...`` or ``postgresql+psycopg://...``).

    ``clock`` gives ``created_at`` for new records (aware datetimes; tests pass a fake one).
    Thread-safe: share one store between threads. Call ``close()`` (or use ``with``) when done.
    """

    def __init__(self, url: str, *, clock: Clock = _utc_now) -> None:
        self._engine = make_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._clock = clock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. Calls after ``close`` open new ones."""
        self._engine.dispose()

    # -- plans -----------------------------------------------------------------------------------

    def create_plan(
        self,
        *,
        request_id: str | None,
        model: str,
        gpu: str,
        mode: PlanMode,
        planner_version: str,
        search_ms: float,
        request: dict[str, Any],
        result: dict[str, Any],
    ) -> StoredPlan:
        """Store a plan and return it as stored.

        If ``request_id`` was used before, return the plan stored then and store nothing: a client
        retrying a call gets the first answer, also when the retries race each other.
        Raises ``InvalidValueError`` for an unknown ``mode`` or JSON that cannot be stored.
        """
        _check_choice("mode", mode, PLAN_MODES)
        row = Plan(
            id=_new_id(),
            request_id=request_id,
            model=model,
            gpu=gpu,
            mode=mode,
            planner_version=planner_version,
            search_ms=float(search_ms),
            request=request,
            result=result,
        )
        return self._insert_once(row, request_id, self.find_plan_by_request_id, _plan_record)[0]

    def get_plan(self, plan_id: str) -> StoredPlan:
        """Return the plan ``plan_id``; raise ``NotFoundError`` if there is none."""
        return self._get(Plan, "plan", plan_id, _plan_record)

    def find_plan_by_request_id(self, request_id: str) -> StoredPlan | None:
        """Return the plan stored under the client's ``request_id``, or ``None``."""
        return self._find(Plan, request_id, _plan_record)

    def list_plans(
        self,
        *,
        model: str | None = None,
        gpu: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
        omit_result_keys: Sequence[str] = (),
    ) -> tuple[list[StoredPlan], str | None]:
        """Return up to ``page_size`` plans, newest first, and the token of the next page.

        ``model`` and ``gpu`` filter by exact name. ``page_size`` is clamped to 1..1000. An empty
        or ``None`` ``page_token`` starts at the newest plan; the token returned is ``None`` on the
        last page. A token from another listing (other filters) or not from this store raises
        ``InvalidPageTokenError``.

        ``omit_result_keys`` (identifiers) are left out of each ``result`` by the database, so
        a listing that does not show them neither transfers nor parses them (a plan's Pareto
        frontiers are most of its bytes); ``InvalidValueError`` for a key that is not one.
        """
        where: list[ColumnElement[bool]] = []
        if model is not None:
            where.append(Plan.model == model)
        if gpu is not None:
            where.append(Plan.gpu == gpu)
        filters = {"model": model, "gpu": gpu}
        columns = [
            *(c for c in Plan.__table__.columns if c.name != "result"),
            json_without_keys(Plan.__table__.c.result, omit_result_keys).label("result"),
        ]
        rows, token = self._page(Plan, where, filters, page_size, page_token, columns)
        return [_plan_record(row) for row in rows], token

    def delete_plan(self, plan_id: str) -> None:
        """Delete the plan ``plan_id``; raise ``NotFoundError`` if there is none."""
        self._delete(Plan, "plan", plan_id)

    # -- sweeps ----------------------------------------------------------------------------------

    def create_sweep(
        self, *, request_id: str | None, request: dict[str, Any], total: int
    ) -> tuple[StoredSweep, bool]:
        """Start a sweep of ``total`` scenarios, in state ``running``.

        Returns ``(sweep, True)``, or ``(the existing sweep, False)`` when ``request_id`` was used
        before (then nothing is stored).
        """
        if total < 0:
            raise InvalidValueError(f"total must be >= 0, not {total}")
        row = Sweep(
            id=_new_id(),
            request_id=request_id,
            state="running",
            total=total,
            done=0,
            request=request,
        )
        return self._insert_once(row, request_id, self._find_sweep_by_request_id, _sweep_header)

    def add_sweep_scenario(
        self,
        sweep_id: str,
        index: int,
        scenario: dict[str, Any],
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Store scenario ``index`` of the sweep with its ``result`` or its ``error`` (exactly one).

        The scenario row and the sweep's ``done`` count change together or not at all. Raises
        ``NotFoundError`` (no such sweep), ``AlreadyExistsError`` (index already stored) and
        ``InvalidValueError`` (index outside ``0..total-1``, both or neither of result and error,
        JSON that cannot be stored).
        """
        if (result is None) == (error is None):
            raise InvalidValueError("give exactly one of result and error")
        with _translate_errors():
            try:
                with self._sessions.begin() as session:
                    sweep = session.get(Sweep, sweep_id, with_for_update=True)
                    if sweep is None:
                        raise NotFoundError("sweep", sweep_id)
                    if not 0 <= index < sweep.total:
                        raise InvalidValueError(
                            f"scenario index {index} is outside 0..{sweep.total - 1}"
                        )
                    session.execute(
                        update(Sweep)
                        .where(Sweep.id == sweep_id)
                        .values(done=Sweep.done + 1)
                        .execution_options(synchronize_session=False)
                    )
                    session.add(
                        SweepScenario(
                            sweep_id=sweep_id,
                            index=index,
                            scenario=scenario,
                            result=result,
                            error=error,
                        )
                    )
            except exc.IntegrityError:
                with self._sessions() as session:
                    if session.get(SweepScenario, (sweep_id, index)) is not None:
                        raise AlreadyExistsError("sweep scenario", f"{sweep_id}/{index}") from None
                    if session.get(Sweep, sweep_id) is None:
                        raise NotFoundError("sweep", sweep_id) from None
                raise

    def finish_sweep(self, sweep_id: str, state: SweepState) -> None:
        """Set the sweep's final ``state``, ``"done"`` or ``"failed"``."""
        _check_choice("state", state, FINAL_SWEEP_STATES)
        with _translate_errors(), self._sessions.begin() as session:
            sweep = session.get(Sweep, sweep_id)
            if sweep is None:
                raise NotFoundError("sweep", sweep_id)
            sweep.state = state

    def get_sweep(
        self, sweep_id: str, *, after_index: int = -1, limit: int | None = None
    ) -> StoredSweep:
        """Return the sweep with its scenarios ordered by index; ``NotFoundError`` if none.

        With ``limit``, only the first ``limit`` scenarios of index above ``after_index`` are
        read (a page), so a large sweep is never loaded whole."""
        with _translate_errors(), self._sessions() as session:
            if limit is None:
                sweep = session.get(Sweep, sweep_id, options=[selectinload(Sweep.scenarios)])
                if sweep is None:
                    raise NotFoundError("sweep", sweep_id)
                return _sweep_record(sweep, with_scenarios=True)
            sweep = session.get(Sweep, sweep_id)
            if sweep is None:
                raise NotFoundError("sweep", sweep_id)
            rows = session.scalars(
                select(SweepScenario)
                .where(SweepScenario.sweep_id == sweep_id, SweepScenario.index > after_index)
                .order_by(SweepScenario.index)
                .limit(limit)
            ).all()
            page = tuple(
                StoredScenario(index=r.index, scenario=r.scenario, result=r.result, error=r.error)
                for r in rows
            )
            return dataclasses.replace(_sweep_record(sweep, with_scenarios=False), scenarios=page)

    def list_sweeps(
        self, *, page_size: int = DEFAULT_PAGE_SIZE, page_token: str | None = None
    ) -> tuple[list[StoredSweep], str | None]:
        """Return up to ``page_size`` sweeps, newest first, without their scenarios, and the next
        page's token (``None`` on the last page). Paging works as in ``list_plans``."""
        rows, token = self._page(Sweep, [], {}, page_size, page_token)
        return [_sweep_record(row, with_scenarios=False) for row in rows], token

    def delete_sweep(self, sweep_id: str) -> None:
        """Delete the sweep; the database deletes its scenarios with it (``ON DELETE CASCADE``)."""
        self._delete(Sweep, "sweep", sweep_id)

    def _find_sweep_by_request_id(self, request_id: str) -> StoredSweep | None:
        return self._find(Sweep, request_id, _sweep_header)

    # -- schedules -------------------------------------------------------------------------------

    def create_schedule(
        self,
        *,
        request_id: str | None,
        model: str,
        gpu: str,
        planner_version: str,
        gpu_hours: float,
        slo_attainment: float | None,
        violations: int,
        request: dict[str, Any],
        result: dict[str, Any],
    ) -> StoredSchedule:
        """Store a schedule and return it as stored; a ``request_id`` used before returns the
        schedule stored then (also when retries race). Raises ``InvalidValueError`` for JSON
        that cannot be stored or a negative violation count."""
        if violations < 0:
            raise InvalidValueError(f"violations must be at least 0, not {violations}")
        row = Schedule(
            id=_new_id(),
            request_id=request_id,
            model=model,
            gpu=gpu,
            planner_version=planner_version,
            gpu_hours=float(gpu_hours),
            slo_attainment=None if slo_attainment is None else float(slo_attainment),
            violations=int(violations),
            request=request,
            result=result,
        )
        find = self.find_schedule_by_request_id
        return self._insert_once(row, request_id, find, _schedule_record)[0]

    def find_schedule_by_request_id(self, request_id: str) -> StoredSchedule | None:
        """Return the schedule stored under the client's ``request_id``, or ``None``."""
        return self._find(Schedule, request_id, _schedule_record)

    def get_schedule(self, schedule_id: str) -> StoredSchedule:
        """Return the schedule ``schedule_id``; raise ``NotFoundError`` if there is none."""
        return self._get(Schedule, "schedule", schedule_id, _schedule_record)

    def list_schedules(
        self,
        *,
        model: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> tuple[list[StoredSchedule], str | None]:
        """Up to ``page_size`` schedules (clamped to 1..1000), newest first, and the next
        page's token (``None`` on the last page); ``model`` filters by exact name."""
        where: list[ColumnElement[bool]] = []
        if model is not None:
            where.append(Schedule.model == model)
        rows, token = self._page(Schedule, where, {"model": model}, page_size, page_token)
        return [_schedule_record(row) for row in rows], token

    def delete_schedule(self, schedule_id: str) -> None:
        """Delete the schedule ``schedule_id``; raise ``NotFoundError`` if there is none."""
        self._delete(Schedule, "schedule", schedule_id)

    # -- what plans, sweeps and schedules share ---------------------------------------------------

    def _insert_once(
        self,
        row: _Row,
        request_id: str | None,
        find: Callable[[str], _Record | None],
        record: Callable[[_Row], _Record],
    ) -> tuple[_Record, bool]:
        """Insert ``row``, stamped with the time now, unless ``request_id`` was used before:
        then store nothing and return what ``find`` finds under it. Returns ``(record,
        created)``; a retry that races the first call (both past the lookup) gets the first
        call's record."""
        if request_id is not None:
            existing = find(request_id)
            if existing is not None:
                return existing, False
        row.created_at = self._clock()
        with _translate_errors():
            try:
                self._add(row)
            except exc.IntegrityError:
                # another call inserted the same request_id between our lookup and our insert
                existing = None if request_id is None else find(request_id)
                if existing is None:
                    raise
                return existing, False
        return record(row), True

    def _add(self, row: Plan | Sweep | Schedule | CustomModel | CustomGpu) -> None:
        """Insert ``row`` in a transaction of its own and read back what the database set."""
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            session.refresh(row)

    def _get(
        self, table: type[_Row], kind: str, row_id: str, record: Callable[[_Row], _Record]
    ) -> _Record:
        with _translate_errors(), self._sessions() as session:
            row = session.get(table, row_id)
            if row is None:
                raise NotFoundError(kind, row_id)
            return record(row)

    def _find(
        self, table: type[_Row], request_id: str, record: Callable[[_Row], _Record]
    ) -> _Record | None:
        with _translate_errors(), self._sessions() as session:
            row = session.scalars(select(table).where(table.request_id == request_id)).one_or_none()
            return None if row is None else record(row)

    def _delete(self, table: type[_Row], kind: str, row_id: str) -> None:
        with _translate_errors(), self._sessions.begin() as session:
            row = session.get(table, row_id)
            if row is None:
                raise NotFoundError(kind, row_id)
            session.delete(row)

    # -- custom catalog entries ------------------------------------------------------------------

    def create_custom_model(self, name: str, spec: dict[str, Any]) -> StoredEntry:
        """Add a custom model (``spec``: its HF config dict); ``AlreadyExistsError`` if taken."""
        return self._create_entry(CustomModel, "custom model", name, spec)

    def get_custom_model(self, name: str) -> StoredEntry:
        """Return the custom model ``name``; raise ``NotFoundError`` if there is none."""
        return self._get_entry(CustomModel, "custom model", name)

    def list_custom_models(self) -> list[StoredEntry]:
        """Return every custom model, ordered by name."""
        return self._list_entries(CustomModel)

    def create_custom_gpu(self, name: str, spec: dict[str, Any]) -> StoredEntry:
        """Add a custom GPU type; raise ``AlreadyExistsError`` if the name is taken."""
        return self._create_entry(CustomGpu, "custom GPU", name, spec)

    def get_custom_gpu(self, name: str) -> StoredEntry:
        """Return the custom GPU type ``name``; raise ``NotFoundError`` if there is none."""
        return self._get_entry(CustomGpu, "custom GPU", name)

    def list_custom_gpus(self) -> list[StoredEntry]:
        """Return every custom GPU type, ordered by name."""
        return self._list_entries(CustomGpu)

    def delete_custom_model(self, name: str) -> None:
        """Delete the custom model ``name``; raise ``NotFoundError`` if there is none."""
        self._delete_entry(CustomModel, "custom model", name)

    def delete_custom_gpu(self, name: str) -> None:
        """Delete the custom GPU type ``name``; raise ``NotFoundError`` if there is none."""
        self._delete_entry(CustomGpu, "custom GPU", name)

    def custom_entries_version(self) -> tuple[Any, ...]:
        """(count, newest created_at) of each custom table, in one small query: a create raises
        the newest time, a delete lowers the count, so any change changes the value."""
        stmt = select(
            select(func.count(CustomModel.name)).scalar_subquery(),
            select(func.max(CustomModel.created_at)).scalar_subquery(),
            select(func.count(CustomGpu.name)).scalar_subquery(),
            select(func.max(CustomGpu.created_at)).scalar_subquery(),
        )
        with _translate_errors(), self._sessions() as session:
            return tuple(session.execute(stmt).one())

    def _delete_entry(self, table: type[_Entry], kind: str, name: str) -> None:
        with _translate_errors(), self._sessions.begin() as session:
            row = session.scalars(select(table).where(table.name == name)).one_or_none()
            if row is None:
                raise NotFoundError(kind, name)
            session.delete(row)

    def _create_entry(
        self, table: type[_Entry], kind: str, name: str, spec: dict[str, Any]
    ) -> StoredEntry:
        row = table(name=name, created_at=self._clock(), spec=spec)
        with _translate_errors():
            try:
                self._add(row)
            except exc.IntegrityError:
                with self._sessions() as session:
                    taken = session.scalar(select(func.count()).where(table.name == name))
                if taken:
                    raise AlreadyExistsError(kind, name) from None
                raise
        return _entry_record(row)

    def _get_entry(self, table: type[_Entry], kind: str, name: str) -> StoredEntry:
        with _translate_errors(), self._sessions() as session:
            row = session.scalars(select(table).where(table.name == name)).one_or_none()
            if row is None:
                raise NotFoundError(kind, name)
            return _entry_record(row)

    def _list_entries(self, table: type[_Entry]) -> list[StoredEntry]:
        with _translate_errors(), self._sessions() as session:
            rows = session.scalars(select(table).order_by(table.name)).all()
            return [_entry_record(row) for row in rows]

    # -- paging ----------------------------------------------------------------------------------

    def _page(
        self,
        table: type[_Row],
        where: list[ColumnElement[bool]],
        filters: dict[str, str | None],
        page_size: int,
        page_token: str | None,
        columns: Sequence[ColumnElement[Any]] = (),
    ) -> tuple[list[Any], str | None]:
        """Select one page of ``table`` rows matching ``where``, newest first, after the token:
        the rows as objects, or, given ``columns``, as result rows of those columns (which must
        include ``id`` and ``created_at``)."""
        size = min(max(page_size, 1), MAX_PAGE_SIZE)
        stmt = (select(*columns) if columns else select(table)).where(*where)
        if page_token:
            cursor = pagetoken.decode(page_token, filters)
            stmt = stmt.where(_after(table.created_at, table.id, cursor))
        stmt = stmt.order_by(table.created_at.desc(), table.id.desc()).limit(size + 1)
        with _translate_errors(), self._sessions() as session:
            found = session.execute(stmt) if columns else session.scalars(stmt)
            rows = list(found.all())
        if len(rows) <= size:
            return rows, None
        rows = rows[:size]
        last = pagetoken.Cursor(created_at=rows[-1].created_at, id=rows[-1].id)
        return rows, pagetoken.encode(last, filters)


def _after(
    created_at: InstrumentedAttribute[datetime],
    row_id: InstrumentedAttribute[str],
    cursor: pagetoken.Cursor,
) -> ColumnElement[bool]:
    """Rows that come after ``cursor`` in newest-first order (ties on time broken by id)."""
    return or_(
        created_at < cursor.created_at,
        and_(created_at == cursor.created_at, row_id < cursor.id),
    )


@contextmanager
def _translate_errors() -> Iterator[None]:
    """Turn SQLAlchemy's exceptions into ``pdplanner.storage.errors``; let the store's own ones
    through."""
    try:
        yield
    except StorageError:
        raise
    except (exc.OperationalError, exc.InterfaceError) as e:
        raise UnavailableError(f"database unavailable: {e.orig}") from e
    except exc.DataError as e:
        raise InvalidValueError(f"value rejected by the database: {e.orig}") from e
    except exc.DBAPIError as e:
        raise StorageError(f"database error: {e.orig}") from e
    except exc.StatementError as e:
        # Raised before the database saw the statement: a value could not be converted
        # (JSON with NaN or a non-JSON object, a naive datetime).
        if isinstance(e.orig, StorageError):
            raise e.orig from e
        if isinstance(e.orig, TypeError | ValueError):
            raise InvalidValueError(f"value cannot be stored: {e.orig}") from e
        raise StorageError(str(e)) from e
    except exc.SQLAlchemyError as e:
        raise StorageError(str(e)) from e


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidValueError(f"{field} must be one of {', '.join(allowed)}, not {value!r}")


def _plan_record(row: Plan | Row[Any]) -> StoredPlan:
    return StoredPlan(
        id=row.id,
        request_id=row.request_id,
        model=row.model,
        gpu=row.gpu,
        mode=cast(PlanMode, row.mode),
        planner_version=row.planner_version,
        created_at=row.created_at,
        search_ms=row.search_ms,
        request=row.request,
        result=row.result,
    )


def _sweep_record(row: Sweep, *, with_scenarios: bool) -> StoredSweep:
    scenarios = tuple(
        StoredScenario(index=s.index, scenario=s.scenario, result=s.result, error=s.error)
        for s in (row.scenarios if with_scenarios else ())
    )
    return StoredSweep(
        id=row.id,
        request_id=row.request_id,
        created_at=row.created_at,
        state=cast(SweepState, row.state),
        total=row.total,
        done=row.done,
        request=row.request,
        scenarios=scenarios,
    )


def _sweep_header(row: Sweep) -> StoredSweep:
    return _sweep_record(row, with_scenarios=False)


def _schedule_record(row: Schedule) -> StoredSchedule:
    return StoredSchedule(
        id=row.id,
        request_id=row.request_id,
        model=row.model,
        gpu=row.gpu,
        planner_version=row.planner_version,
        created_at=row.created_at,
        gpu_hours=row.gpu_hours,
        slo_attainment=row.slo_attainment,
        violations=row.violations,
        request=row.request,
        result=row.result,
    )


def _entry_record(row: CustomModel | CustomGpu) -> StoredEntry:
    return StoredEntry(name=row.name, created_at=row.created_at, spec=row.spec)


if TYPE_CHECKING:
    # mypy proves here that SqlStore provides every method of PlanStore, with the same signatures.
    _conforms: PlanStore = SqlStore("sqlite://")
