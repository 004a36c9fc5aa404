"""Usage recorded once per request id, and cached, cache-write and reasoning tokens per day.

Revision ID: 0007
Revises: 0006
Create Date: 2025-01-07 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DAILY_COUNTS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens", "partial_requests")


def upgrade() -> None:
    for name in _DAILY_COUNTS:
        op.add_column(
            "usage_daily", sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "usage_requests",
        # The primary key is what makes a redelivered report add nothing (ON CONFLICT DO NOTHING).
        sa.Column("request_id", sa.Text(), primary_key=True),
        sa.Column(
            "connection_id",
            sa.String(64),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("partial", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("estimated", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
    )
    op.create_index("ix_usage_requests_connection_id", "usage_requests", ["connection_id"])


def downgrade() -> None:
    op.drop_table("usage_requests")
    for name in reversed(_DAILY_COUNTS):
        op.drop_column("usage_daily", name)
