"""A per-key cap on the disk of its live VMs; an index for a VM's newest commit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


_LIVE_COMMIT = "deleted_at IS NULL"


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("max_disk_mib", sa.Integer(), nullable=True))
    op.create_index(
        "ix_commits_vm_created",
        "commits",
        ["parent_vm_id", "created_at", "commit_id"],
        sqlite_where=sa.text(_LIVE_COMMIT),
        postgresql_where=sa.text(_LIVE_COMMIT),
    )


def downgrade() -> None:
    op.drop_index("ix_commits_vm_created", "commits")
    op.drop_column("api_keys", "max_disk_mib")
