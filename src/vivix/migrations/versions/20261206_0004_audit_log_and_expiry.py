"""operator audit log; generations.expired_at for retention

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vivix.models.base

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_audit_log",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("target_type", sa.String(length=30), nullable=False),
        sa.Column("target_id", sa.String(length=200), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=True),
        sa.Column("before", vivix.models.base.JsonValue, nullable=True),
        sa.Column("after", vivix.models.base.JsonValue, nullable=True),
        sa.Column("details", vivix.models.base.JsonValue, nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_audit_log")),
    )
    op.create_index(
        "ix_admin_audit_log_account_id_id", "admin_audit_log", ["account_id", "id"], unique=False
    )
    with op.batch_alter_table("generations") as batch:
        batch.add_column(
            sa.Column("expired_at", vivix.models.base.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("expired_at")
    op.drop_index("ix_admin_audit_log_account_id_id", table_name="admin_audit_log")
    op.drop_table("admin_audit_log")
