"""Users' images and their build jobs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vers_orchestrator.store.schema import Id, Name, Timestamp

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_UNFINISHED_JOB = "status IN ('pending', 'creating')"


def upgrade() -> None:
    op.create_table(
        "base_images",
        sa.Column("base_image_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("image_name", Name, nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("source_type", sa.Text(), nullable=False),
        sa.Column("source_config", sa.Text(), nullable=False),
        sa.Column("size_mib", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("storage_key", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("org_id", "image_name", name="unique_image_per_org"),
    )
    op.create_index("ix_base_images_org_created", "base_images", ["org_id", "created_at"])
    op.create_table(
        "base_image_jobs",
        sa.Column("job_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("image_name", Name, nullable=False),
        sa.Column("source_type", sa.Text(), nullable=False),
        sa.Column("source_config", sa.Text(), nullable=False),
        sa.Column("size_mib", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("completed_at", Timestamp, nullable=True),
    )
    op.create_index(
        "unique_unfinished_job_per_name",
        "base_image_jobs",
        ["org_id", "image_name"],
        unique=True,
        sqlite_where=sa.text(_UNFINISHED_JOB),
        postgresql_where=sa.text(_UNFINISHED_JOB),
    )
    op.create_index(
        "ix_base_image_jobs_name_created",
        "base_image_jobs",
        ["org_id", "image_name", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("base_image_jobs")
    op.drop_table("base_images")
