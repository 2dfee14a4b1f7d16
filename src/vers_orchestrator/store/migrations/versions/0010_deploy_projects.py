"""Deploy projects: one VM running an application cloned from a git repository.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vers_orchestrator.store.schema import Id, Timestamp

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deploy_projects",
        sa.Column("project_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("repo", sa.Text(), nullable=False),
        sa.Column("branch", sa.Text(), nullable=True),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("vm_id", Id, sa.ForeignKey("vms.vm_id"), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("step", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("guest_port", sa.Integer(), nullable=True),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.UniqueConstraint("org_id", "name", name="unique_project_name_per_org"),
    )
    op.create_index("ix_deploy_projects_vm", "deploy_projects", ["vm_id"])


def downgrade() -> None:
    op.drop_table("deploy_projects")
