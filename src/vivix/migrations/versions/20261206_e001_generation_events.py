"""generation_events: the change feed event streams read and resume from

Revision ID: e001
Revises: o003
Create Date: 2026-12-06 20:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vivix.models.base

revision: str = "e001"
down_revision: str | None = "o003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generation_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("generation_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("created_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_events")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_generation_events_generation_id_id", "generation_events", ["generation_id", "id"]
    )
    op.create_index("ix_generation_events_account_id_id", "generation_events", ["account_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_generation_events_account_id_id", table_name="generation_events")
    op.drop_index("ix_generation_events_generation_id_id", table_name="generation_events")
    op.drop_table("generation_events")
