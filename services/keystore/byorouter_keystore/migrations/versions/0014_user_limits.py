"""Limits the end user sets on an app: requests a day, tokens a month, allowed models.

The caps live on the connection (resolved with it, so the router knows without asking); the
requests admitted each day are counted in `limit_counters`, one row per connection and day,
written only for connections with a daily cap.

Revision ID: 0014
Revises: 0013
Create Date: 2025-01-14 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("connections", sa.Column("limit_requests_per_day", sa.BigInteger()))
    op.add_column("connections", sa.Column("limit_tokens_per_month", sa.BigInteger()))
    op.add_column("connections", sa.Column("limit_models", JSONB()))
    op.create_table(
        "limit_counters",
        sa.Column(
            "connection_id",
            sa.String(64),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("limit_counters")
    op.drop_column("connections", "limit_models")
    op.drop_column("connections", "limit_tokens_per_month")
    op.drop_column("connections", "limit_requests_per_day")
