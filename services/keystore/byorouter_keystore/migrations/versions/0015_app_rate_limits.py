"""Rate limits per app, shared by every gateway copy: for the app and for each connection.

NULL keeps the gateway's default (BYOROUTER_RATE_LIMIT_*); 0 turns that limit off.

Revision ID: 0015
Revises: 0014
Create Date: 2025-01-15 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("apps", sa.Column("rate_limit_rps", sa.Float()))
    op.add_column("apps", sa.Column("rate_limit_burst", sa.Integer()))
    op.add_column("apps", sa.Column("connection_rate_limit_rps", sa.Float()))
    op.add_column("apps", sa.Column("connection_rate_limit_burst", sa.Integer()))


def downgrade() -> None:
    op.drop_column("apps", "connection_rate_limit_burst")
    op.drop_column("apps", "connection_rate_limit_rps")
    op.drop_column("apps", "rate_limit_burst")
    op.drop_column("apps", "rate_limit_rps")
