"""generations.erased_at: retention erased the record's params, metadata and provider details

Revision ID: o002
Revises: w001
Create Date: 2026-12-06 07:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vivix.models.base

revision: str = "o002"
down_revision: str | None = "w001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(
            sa.Column("erased_at", vivix.models.base.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("erased_at")
