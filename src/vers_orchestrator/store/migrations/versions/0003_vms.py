"""VMs: one row per VM, written before the driver acts and updated with the outcome.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from vers_orchestrator.store.schema import Id, Timestamp

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LIVE_VM = "deleted_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "vms",
        sa.Column("vm_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("parent_commit_id", Id, sa.ForeignKey("commits.commit_id"), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("mem_mib", sa.Integer(), nullable=False),
        sa.Column("disk_mib", sa.Integer(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("deleted_at", Timestamp, nullable=True),
    )
    live: dict[str, Any] = {
        "sqlite_where": sa.text(_LIVE_VM),
        "postgresql_where": sa.text(_LIVE_VM),
    }
    op.create_index("ix_vms_org_created", "vms", ["org_id", "created_at", "vm_id"], **live)
    op.create_index("ix_vms_owner_live", "vms", ["owner_id"], **live)
    op.create_index("ix_vms_parent_commit_live", "vms", ["parent_commit_id"], **live)


def downgrade() -> None:
    op.drop_table("vms")
