"""studio: users, sessions, generation source, key last use, account suspension

Revision ID: 0007
Revises: f002
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import vivix.models.base

revision: str = "0007"
down_revision: str | None = "f002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("account_id", sa.String(length=36), nullable=False),
        sa.Column("is_operator", sa.Boolean(), nullable=False),
        sa.Column("created_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column(
            "password_changed_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False
        ),
        sa.Column("last_sign_in_at", vivix.models.base.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_users_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_index(op.f("ix_users_account_id"), "users", ["account_id"], unique=False)
    op.create_table(
        "studio_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", vivix.models.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", vivix.models.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_studio_sessions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studio_sessions")),
    )
    op.create_index(
        op.f("ix_studio_sessions_user_id"), "studio_sessions", ["user_id"], unique=False
    )
    op.add_column(
        "generations",
        sa.Column("source", sa.String(length=8), server_default=sa.text("'api'"), nullable=False),
    )
    op.add_column("generations", sa.Column("user_id", sa.String(length=36), nullable=True))
    # SQLite cannot drop NOT NULL in place: batch mode rebuilds the table (nothing references
    # generations by foreign key, so the rebuild is safe).
    with op.batch_alter_table("generations") as batch:
        batch.alter_column("api_key_id", existing_type=sa.String(length=36), nullable=True)
    op.add_column(
        "api_keys",
        sa.Column("last_used_at", vivix.models.base.UtcDateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "accounts",
        sa.Column("suspended_at", vivix.models.base.UtcDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("accounts", "suspended_at")
    op.drop_column("api_keys", "last_used_at")
    # Studio generations keep their rows (and their ledger entries keep their meaning).
    op.execute("UPDATE generations SET api_key_id = '' WHERE api_key_id IS NULL")
    with op.batch_alter_table("generations") as batch:
        batch.alter_column("api_key_id", existing_type=sa.String(length=36), nullable=False)
    op.drop_column("generations", "user_id")
    op.drop_column("generations", "source")
    op.drop_index(op.f("ix_studio_sessions_user_id"), table_name="studio_sessions")
    op.drop_table("studio_sessions")
    op.drop_index(op.f("ix_users_account_id"), table_name="users")
    op.drop_table("users")
