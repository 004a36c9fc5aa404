"""Provider policy: the kinds an app's users may connect, a connection's narrowed copy of it,
and apps' pushed authorization requests (RFC 9126).

Revision ID: 0011
Revises: 0010
Create Date: 2025-01-11 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL allows every kind: today's apps and connections keep today's behaviour.
    op.add_column("apps", sa.Column("allowed_providers", postgresql.JSONB(), nullable=True))
    op.add_column("connections", sa.Column("allowed_providers", postgresql.JSONB(), nullable=True))
    op.create_table(
        "pushed_authorizations",
        sa.Column("request_hash", sa.LargeBinary(), primary_key=True),
        sa.Column(
            "app_id", sa.String(64), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=True),
        sa.Column("code_challenge", sa.String(64), nullable=False),
        sa.Column("allowed_providers", postgresql.JSONB(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
    op.create_index("ix_pushed_authorizations_expires_at", "pushed_authorizations", ["expires_at"])


def downgrade() -> None:
    op.drop_table("pushed_authorizations")
    op.drop_column("connections", "allowed_providers")
    op.drop_column("apps", "allowed_providers")
