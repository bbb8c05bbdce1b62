"""Relevance feedback marks saved with a case (the neighbours a refine session marked relevant or not).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback_marks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("relevant", sa.Boolean(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("case_id", "origin", "image_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_feedback_marks_case_id", "feedback_marks", ["case_id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_marks_case_id", table_name="feedback_marks")
    op.drop_table("feedback_marks")
