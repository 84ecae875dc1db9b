"""idempotency keys per key mode, 64-bit credits, price snapshot at admission

Revision ID: f001
Revises: 0005
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "f001"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every column that holds credits. SQLite's INTEGER is 64-bit already; PostgreSQL's
# `integer` is 32-bit, so 2^31 credits overflowed there.
CREDIT_COLUMNS = {
    "accounts": ("balance", "held", "spent_this_cycle", "granted_this_cycle", "monthly_credits"),
    "ledger_entries": ("amount",),
    "generations": ("credits_estimate", "credits_used"),
}


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch_op:
        batch_op.drop_index("uq_generations_account_id_idempotency_key")
        batch_op.create_index(
            "uq_generations_account_id_is_test_idempotency_key",
            ["account_id", "is_test", "idempotency_key"],
            unique=True,
        )
        batch_op.add_column(
            sa.Column(
                "price_snapshot",
                sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                nullable=True,
            )
        )
    if op.get_bind().dialect.name == "postgresql":
        for table, columns in CREDIT_COLUMNS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, columns in CREDIT_COLUMNS.items():
            for column in columns:
                op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
    with op.batch_alter_table("generations") as batch_op:
        batch_op.drop_column("price_snapshot")
        batch_op.drop_index("uq_generations_account_id_is_test_idempotency_key")
        batch_op.create_index(
            "uq_generations_account_id_idempotency_key",
            ["account_id", "idempotency_key"],
            unique=True,
        )
