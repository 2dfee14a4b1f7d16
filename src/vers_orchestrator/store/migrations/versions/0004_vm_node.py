"""The server (host and driver state directory) each VM runs on.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_LIVE_VM = "deleted_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("node", sa.Text(), nullable=False, server_default=""))
    op.create_index(
        "ix_vms_node_live",
        "vms",
        ["node"],
        sqlite_where=sa.text(_LIVE_VM),
        postgresql_where=sa.text(_LIVE_VM),
    )


def downgrade() -> None:
    op.drop_index("ix_vms_node_live", table_name="vms")
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("node")
