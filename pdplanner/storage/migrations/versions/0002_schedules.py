"""Scaling schedules.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Written by hand to match ``pdplanner/storage/models.py``'s ``Schedule``; the types are spelled out
here for the same reason as in 0001.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=False).with_variant(
        postgresql.JSONB(none_as_null=False), "postgresql"
    )


def upgrade() -> None:
    """Create the schedules table and its indexes."""
    op.create_table(
        "schedules",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("gpu", sa.Text(), nullable=False),
        sa.Column("planner_version", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpu_hours", sa.Double(), nullable=False),
        sa.Column("slo_attainment", sa.Double(), nullable=True),
        sa.Column("violations", sa.Integer(), nullable=False),
        sa.Column("request", _json(), nullable=False),
        sa.Column("result", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.UniqueConstraint("request_id", name="uq_schedules_request_id"),
        sa.CheckConstraint("violations >= 0", name="ck_schedules_violations"),
    )
    op.create_index("ix_schedules_created_at_id", "schedules", ["created_at", "id"])
    op.create_index("ix_schedules_model_created_at_id", "schedules", ["model", "created_at", "id"])


def downgrade() -> None:
    """Drop the schedules table."""
    op.drop_index("ix_schedules_model_created_at_id", table_name="schedules")
    op.drop_index("ix_schedules_created_at_id", table_name="schedules")
    op.drop_table("schedules")
