"""Tunnels to users' own model servers, their short-lived sessions, and credentials pointing at one.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("now()")
_EMPTY_LIST = sa.text("'[]'::jsonb")


def upgrade() -> None:
    op.create_table(
        "tunnels",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "app_id", sa.String(64), sa.ForeignKey("apps.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "connection_id",
            sa.String(64),
            sa.ForeignKey("connections.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("previous_token_hash", sa.String(64), nullable=True),
        sa.Column("previous_valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("public_key", sa.String(64), nullable=True),
        sa.Column("declared_models", JSONB(), nullable=False, server_default=_EMPTY_LIST),
        sa.Column("models", JSONB(), nullable=False, server_default=_EMPTY_LIST),
        sa.Column("client_version", sa.String(64), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_tunnels_app_id", "tunnels", ["app_id"])
    op.create_index("ix_tunnels_connection_id", "tunnels", ["connection_id"])
    op.create_index("ix_tunnels_token_hash", "tunnels", ["token_hash"], unique=True)
    op.create_index("ix_tunnels_previous_token_hash", "tunnels", ["previous_token_hash"])
    op.create_table(
        "tunnel_sessions",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column(
            "tunnel_id",
            sa.String(64),
            sa.ForeignKey("tunnels.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tunnel_sessions_tunnel_id", "tunnel_sessions", ["tunnel_id"])
    op.create_index("ix_tunnel_sessions_expires_at", "tunnel_sessions", ["expires_at"])
    op.add_column(
        "credentials",
        sa.Column(
            "tunnel_id",
            sa.String(64),
            sa.ForeignKey("tunnels.id", ondelete="SET NULL", name="fk_credentials_tunnel_id"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_constraint("fk_credentials_tunnel_id", "credentials", type_="foreignkey")
    op.drop_column("credentials", "tunnel_id")
    op.drop_table("tunnel_sessions")
    op.drop_table("tunnels")
