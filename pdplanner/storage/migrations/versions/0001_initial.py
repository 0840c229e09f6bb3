"""Initial schema: plans, sweeps with their scenarios, custom models and GPUs.

Revision ID: 0001
Revises:
Create Date: 2024-11-22

Written by hand to match ``pdplanner/storage/models.py`` at the time; the types are spelled out here
rather than imported, so that later changes to the models cannot change what this revision creates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json(*, nullable: bool = False) -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=nullable).with_variant(
        postgresql.JSONB(none_as_null=nullable), "postgresql"
    )


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables and their indexes."""
    op.create_table(
        "plans",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("gpu", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("planner_version", sa.Text(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("search_ms", sa.Double(), nullable=False),
        sa.Column("request", _json(), nullable=False),
        sa.Column("result", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
        sa.UniqueConstraint("request_id", name="uq_plans_request_id"),
        sa.CheckConstraint("mode IN ('agg', 'disagg', 'none')", name="ck_plans_mode"),
    )
    op.create_index("ix_plans_created_at_id", "plans", ["created_at", "id"])
    op.create_index("ix_plans_model_created_at_id", "plans", ["model", "created_at", "id"])
    op.create_index("ix_plans_gpu_created_at_id", "plans", ["gpu", "created_at", "id"])

    op.create_table(
        "sweeps",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("request", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
        sa.UniqueConstraint("request_id", name="uq_sweeps_request_id"),
        sa.CheckConstraint("state IN ('running', 'done', 'failed')", name="ck_sweeps_state"),
        sa.CheckConstraint("total >= 0 AND done >= 0 AND done <= total", name="ck_sweeps_counts"),
    )
    op.create_index("ix_sweeps_created_at_id", "sweeps", ["created_at", "id"])

    op.create_table(
        "sweep_scenarios",
        sa.Column("sweep_id", sa.Text(), nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("scenario", _json(), nullable=False),
        sa.Column("result", _json(nullable=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("sweep_id", "index", name="pk_sweep_scenarios"),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeps.id"],
            name="fk_sweep_scenarios_sweep_id_sweeps",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint('"index" >= 0', name="ck_sweep_scenarios_index"),
        sa.CheckConstraint(
            "(result IS NULL AND error IS NOT NULL) OR (result IS NOT NULL AND error IS NULL)",
            name="ck_sweep_scenarios_outcome",
        ),
    )

    for table in ("custom_models", "custom_gpus"):
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("created_at", _timestamp(), nullable=False),
            sa.Column("spec", _json(), nullable=False),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.UniqueConstraint("name", name=f"uq_{table}_name"),
        )


def downgrade() -> None:
    """Drop everything ``upgrade`` created."""
    op.drop_table("custom_gpus")
    op.drop_table("custom_models")
    op.drop_table("sweep_scenarios")
    op.drop_index("ix_sweeps_created_at_id", table_name="sweeps")
    op.drop_table("sweeps")
    op.drop_index("ix_plans_gpu_created_at_id", table_name="plans")
    op.drop_index("ix_plans_model_created_at_id", table_name="plans")
    op.drop_index("ix_plans_created_at_id", table_name="plans")
    op.drop_table("plans")
