"""account active_jobs counter

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
UPDATE accounts SET active_jobs = (
    SELECT count(*) FROM generations
    WHERE generations.account_id = accounts.id
      AND generations.status IN ('pending', 'processing')
)
"""


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("active_jobs", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(_BACKFILL)
    if op.get_bind().dialect.name == "sqlite":
        # SQLite can't add a CHECK constraint to an existing table (a table rebuild would
        # have to drop a table other tables reference); a trigger enforces the same rule.
        op.execute(
            "CREATE TRIGGER ck_accounts_active_jobs_not_negative"
            " BEFORE UPDATE OF active_jobs ON accounts WHEN NEW.active_jobs < 0"
            " BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: active_jobs_not_negative'); END"
        )
    else:
        op.create_check_constraint("active_jobs_not_negative", "accounts", "active_jobs >= 0")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS ck_accounts_active_jobs_not_negative")
    else:
        op.drop_constraint("active_jobs_not_negative", "accounts", type_="check")
    op.drop_column("accounts", "active_jobs")
