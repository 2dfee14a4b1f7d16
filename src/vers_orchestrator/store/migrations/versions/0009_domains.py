"""Custom domains of VMs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vers_orchestrator.store.schema import Id, Timestamp

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("domain_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("vm_id", Id, sa.ForeignKey("vms.vm_id"), nullable=False),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("domain", name="unique_domain"),
    )
    op.create_index("ix_domains_vm", "domains", ["vm_id"])
    op.create_index("ix_domains_org_created", "domains", ["org_id", "created_at"])


def downgrade() -> None:
    op.drop_table("domains")
