"""The Connect flow: authorization codes, manage links and manage sessions (secrets hashed).

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")


def _owner_columns() -> list[sa.Column[str]]:
    return [
        sa.Column(
            "app_id", sa.String(64), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "connection_id",
            sa.String(64),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            nullable=False,
        ),
    ]


def _indexes(table: str) -> None:
    for column in ("app_id", "connection_id", "expires_at"):
        op.create_index(f"ix_{table}_{column}", table, [column])


def upgrade() -> None:
    op.create_table(
        "auth_codes",
        sa.Column("code_hash", sa.LargeBinary(), primary_key=True),
        *_owner_columns(),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        # NOT NULL: a code without a PKCE challenge cannot exist.
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "expires_at <= created_at + interval '10 minutes'", name="ck_auth_codes_lifetime"
        ),
    )
    _indexes("auth_codes")
    op.create_table(
        "manage_links",
        sa.Column("token_hash", sa.LargeBinary(), primary_key=True),
        *_owner_columns(),
        sa.Column("return_url", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    )
    _indexes("manage_links")
    op.create_table(
        "manage_sessions",
        sa.Column("session_hash", sa.LargeBinary(), primary_key=True),
        *_owner_columns(),
        sa.Column("return_url", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    _indexes("manage_sessions")


def downgrade() -> None:
    op.drop_table("manage_sessions")
    op.drop_table("manage_links")
    op.drop_table("auth_codes")
