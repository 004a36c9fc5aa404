"""Which associated data each sealed secret was made with: rows until now are binding v1.

Binding v2 also seals the base URL and tunnel a key may go to. A migration holds no keyring, so
it cannot re-seal: it marks every existing row v1, and keystore re-seals them to v2 when it
starts and every few minutes after (`byorouter_keystore.bindings`; decision 0016).

Revision ID: 0012
Revises: 0011
Create Date: 2025-01-12 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("credentials", "app_default_providers")


def upgrade() -> None:
    for table in _TABLES:
        # Keystore names the version on every write; the default is for the rows already there
        # and for copies not yet upgraded during a rolling upgrade, which still seal v1.
        op.add_column(
            table,
            sa.Column("binding_version", sa.Integer(), nullable=False, server_default="1"),
        )
        # The re-seal pass looks for v1 rows often; once they are gone this index is empty.
        op.create_index(
            f"ix_{table}_binding_v1",
            table,
            ["binding_version"],
            postgresql_where=sa.text("binding_version = 1"),
        )


def downgrade() -> None:
    bind = op.get_bind()
    for table in _TABLES:
        resealed = bind.scalar(sa.text(f"SELECT count(*) FROM {table} WHERE binding_version > 1"))  # noqa: S608 (a fixed table name)
        if resealed:
            # Older keystores would read v2 secrets as tampered: every key would stop working.
            raise RuntimeError(
                f"{table} holds {resealed} secrets sealed with binding v2, which keystore before "
                "migration 0012 cannot open; downgrading would lose them."
            )
    for table in _TABLES:
        op.drop_index(f"ix_{table}_binding_v1", table_name=table)
        op.drop_column(table, "binding_version")
