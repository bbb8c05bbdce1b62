"""Audit rows append-only on PostgreSQL too (a trigger), and the revoked-token denylist of POST /logout.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    # A catalog made by Catalog() (create_all) may already have the table and the trigger.
    if "revoked_tokens" not in set(sa.inspect(bind).get_table_names()):
        op.create_table(
            "revoked_tokens",
            sa.Column("jti", sa.String(length=64), nullable=False),
            sa.Column("expires_at", sa.DateTime(), nullable=False),
            sa.Column("revoked_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("jti"),
        )
        with op.batch_alter_table("revoked_tokens", schema=None) as batch_op:
            batch_op.create_index(batch_op.f("ix_revoked_tokens_expires_at"), ["expires_at"], unique=False)
    if bind.dialect.name == "postgresql":
        from indexer.catalog.models import AUDIT_TRIGGERS_POSTGRES

        for statement in AUDIT_TRIGGERS_POSTGRES:  # idempotent: CREATE OR REPLACE, DROP ... IF EXISTS
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_change ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    op.drop_table("revoked_tokens")
