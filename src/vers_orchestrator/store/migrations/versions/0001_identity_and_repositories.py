"""Organizations, users, API keys, repositories and idempotency records.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vers_orchestrator.store.schema import Id, Name, Timestamp

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("org_id", Id, primary_key=True),
        sa.Column("name", Name, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index(
        "ix_organizations_name_ci", "organizations", [sa.text("lower(name)")], unique=True
    )
    op.create_table(
        "users",
        sa.Column("user_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("user_name", Name, nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("org_id", "user_name", name="unique_user_per_org"),
    )
    op.create_table(
        "api_keys",
        sa.Column("api_key_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("user_id", Id, sa.ForeignKey("users.user_id"), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=True),
        sa.Column("revoked_at", Timestamp, nullable=True),
        sa.Column("max_vcpus", sa.Integer(), nullable=True),
        sa.Column("max_memory_mib", sa.Integer(), nullable=True),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_table(
        "repositories",
        sa.Column("repo_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("name", Name, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("is_public", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("org_id", "name", name="unique_repo_per_org"),
    )
    op.create_table(
        "idempotency_records",
        sa.Column(
            "api_key_id",
            Id,
            sa.ForeignKey("api_keys.api_key_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("idempotency_key", sa.Text(), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.Text(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_idempotency_records_created_at", "idempotency_records", ["created_at"])


def downgrade() -> None:
    op.drop_table("idempotency_records")
    op.drop_table("repositories")
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_table("organizations")
