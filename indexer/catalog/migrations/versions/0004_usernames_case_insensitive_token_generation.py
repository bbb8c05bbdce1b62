"""Usernames unique whatever their case (a unique index on lower(username)), and users.token_generation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000

The upgrade stops, changing nothing, when names that differ only in case already exist: it lists them,
and one of each group must be renamed (or deleted) first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_users_username_lower"


class CaseDuplicateUsernamesError(RuntimeError):
    """Usernames that differ only in case exist, so they cannot be made unique whatever their case."""


def case_duplicates(bind: sa.Connection) -> list[list[str]]:
    """Groups of usernames equal but for case, each sorted, e.g. [["Alice", "alice"]]."""
    rows = bind.execute(sa.text("SELECT username FROM users ORDER BY username")).scalars()
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(str(name).lower(), []).append(str(name))
    return [names for names in groups.values() if len(names) > 1]


def upgrade() -> None:
    bind = op.get_bind()
    duplicates = case_duplicates(bind)
    if duplicates:
        listed = "; ".join(", ".join(names) for names in duplicates)
        raise CaseDuplicateUsernamesError(
            "usernames must be unique whatever their case, but these differ only in case: "
            f"{listed}. Keep one name of each group: rename the others in the catalog (e.g. "
            "UPDATE users SET username = 'alice2' WHERE username = 'Alice'), then run "
            "`medcbir db upgrade` again; nothing was changed"
        )
    inspector = sa.inspect(bind)
    # A catalog made by Catalog() (create_all) may already have the column and the index.
    if "token_generation" not in {c["name"] for c in inspector.get_columns("users")}:
        with op.batch_alter_table("users", schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("token_generation", sa.Integer(), server_default="0", nullable=False)
            )
    if INDEX not in _index_names(bind):
        op.create_index(INDEX, "users", [sa.text("lower(username)")], unique=True)


def _index_names(bind: sa.Connection) -> set[str]:
    # SQLAlchemy's SQLite reflection skips expression indexes, so ask the database itself there.
    if bind.dialect.name == "sqlite":
        rows = bind.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'users'")
        )
        return {str(name) for name in rows.scalars()}
    return {str(index["name"]) for index in sa.inspect(bind).get_indexes("users")}


def downgrade() -> None:
    op.drop_index(INDEX, table_name="users")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("token_generation")
