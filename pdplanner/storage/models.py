"""The database tables, as SQLAlchemy 2.0 typed models.

These classes stay inside ``pdplanner/storage/``: the repository turns rows into the frozen
dataclasses of
``pdplanner.storage.records`` before they leave it. A change here needs a new migration in
``pdplanner/storage/migrations/versions/``; ``tests/integration/test_storage_migrations.py`` fails
until the migrated schema and this metadata agree again.

Every timestamp is stored in UTC and read back timezone-aware (``UtcDateTime``), on SQLite too.
JSON columns are JSONB on PostgreSQL and JSON text on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

#: Deterministic constraint names, so migrations can name what they create and later drop it.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PLAN_MODES = ("agg", "disagg", "none")
SWEEP_STATES = ("running", "done", "failed")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamp with time zone``; SQLite has no time zones, so the value is
    converted to UTC and stored naive, then marked UTC again when read. Naive datetimes are refused
    on the way in: their time zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC (naive UTC for SQLite); refuse naive datetimes."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: give it a time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return the stored instant as an aware datetime in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def json_type(*, nullable: bool = False) -> TypeEngine[Any]:
    """JSON on SQLite, JSONB on PostgreSQL; a nullable column stores Python ``None`` as SQL NULL."""
    return JSON(none_as_null=nullable).with_variant(JSONB(none_as_null=nullable), "postgresql")


class Base(DeclarativeBase):
    """Declarative base; its ``metadata`` is what the migrations must reproduce."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Plan(Base):
    """One planning answer: the request, the result, and what is needed to find it again."""

    __tablename__ = "plans"
    __table_args__ = (
        UniqueConstraint("request_id"),
        CheckConstraint(_one_of("mode", PLAN_MODES), name="mode"),
        Index(None, "created_at", "id"),
        Index(None, "model", "created_at", "id"),
        Index(None, "gpu", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    gpu: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(Text)
    planner_version: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    search_ms: Mapped[float] = mapped_column(Double)
    request: Mapped[dict[str, Any]] = mapped_column(json_type())
    result: Mapped[dict[str, Any]] = mapped_column(json_type())


class Sweep(Base):
    """A batch of scenarios planned one by one; ``done`` counts the scenarios stored so far."""

    __tablename__ = "sweeps"
    __table_args__ = (
        UniqueConstraint("request_id"),
        CheckConstraint(_one_of("state", SWEEP_STATES), name="state"),
        CheckConstraint("total >= 0 AND done >= 0 AND done <= total", name="counts"),
        Index(None, "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(Text)
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer)
    request: Mapped[dict[str, Any]] = mapped_column(json_type())

    scenarios: Mapped[list[SweepScenario]] = relationship(
        back_populates="sweep",
        order_by="SweepScenario.index",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class SweepScenario(Base):
    """One scenario of a sweep and its outcome: a result, or the error that prevented one."""

    __tablename__ = "sweep_scenarios"
    __table_args__ = (
        CheckConstraint('"index" >= 0', name="index"),
        CheckConstraint(
            "(result IS NULL AND error IS NOT NULL) OR (result IS NOT NULL AND error IS NULL)",
            name="outcome",
        ),
    )

    sweep_id: Mapped[str] = mapped_column(
        Text, ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    scenario: Mapped[dict[str, Any]] = mapped_column(json_type())
    result: Mapped[dict[str, Any] | None] = mapped_column(json_type(nullable=True))
    error: Mapped[str | None] = mapped_column(Text)

    sweep: Mapped[Sweep] = relationship(back_populates="scenarios")


class Schedule(Base):
    """An elastic scaling schedule: the request (with its traffic series) and the answer."""

    __tablename__ = "schedules"
    __table_args__ = (
        UniqueConstraint("request_id"),
        CheckConstraint("violations >= 0", name="violations"),
        Index(None, "created_at", "id"),
        Index(None, "model", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(Text)
    gpu: Mapped[str] = mapped_column(Text)
    planner_version: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    gpu_hours: Mapped[float] = mapped_column(Double)
    slo_attainment: Mapped[float | None] = mapped_column(Double)
    violations: Mapped[int] = mapped_column(Integer)
    request: Mapped[dict[str, Any]] = mapped_column(json_type())
    result: Mapped[dict[str, Any]] = mapped_column(json_type())


class _CatalogEntry:
    """Columns shared by the custom catalog tables: a unique name and a JSON spec."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    spec: Mapped[dict[str, Any]] = mapped_column(json_type())


class CustomModel(_CatalogEntry, Base):
    """A model added at run time: its Hugging Face ``config.json`` as a dict."""

    __tablename__ = "custom_models"
    __table_args__ = (UniqueConstraint("name"),)


class CustomGpu(_CatalogEntry, Base):
    """A GPU type added at run time: its spec (memory, bandwidth, FLOP/s, links) as a dict."""

    __tablename__ = "custom_gpus"
    __table_args__ = (UniqueConstraint("name"),)


metadata = Base.metadata
