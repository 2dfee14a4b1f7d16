"""Commits, repository and organization-wide tags, and the public repository index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from vers_orchestrator.store.schema import Id, Name, Timestamp

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_LIVE_COMMIT = "deleted_at IS NULL"
_PUBLIC_COMMIT = "is_public AND deleted_at IS NULL"
_REPO_TAG = "repo_id IS NOT NULL"
_ORG_TAG = "repo_id IS NULL"


def _where(condition: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def upgrade() -> None:
    op.create_table(
        "commits",
        sa.Column("commit_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("parent_vm_id", Id, nullable=True),
        sa.Column("grandparent_commit_id", Id, sa.ForeignKey("commits.commit_id"), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("is_public", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("deleted_at", Timestamp, nullable=True),
        sa.Column("deleted_by", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=True),
    )
    op.create_index(
        "ix_commits_owner_created",
        "commits",
        ["owner_id", "created_at", "commit_id"],
        **_where(_LIVE_COMMIT),
    )
    op.create_index(
        "ix_commits_public_created",
        "commits",
        ["created_at", "commit_id"],
        **_where(_PUBLIC_COMMIT),
    )
    op.create_table(
        "commit_tags",
        sa.Column("tag_id", Id, primary_key=True),
        sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column(
            "repo_id",
            Id,
            sa.ForeignKey("repositories.repo_id", ondelete="CASCADE"),
            nullable=True,
        ),
        sa.Column("tag_name", Name, nullable=False),
        sa.Column("commit_id", Id, sa.ForeignKey("commits.commit_id"), nullable=False),
        sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_index(
        "unique_tag_per_repo",
        "commit_tags",
        ["repo_id", "tag_name"],
        unique=True,
        **_where(_REPO_TAG),
    )
    op.create_index(
        "unique_tag_per_org_legacy",
        "commit_tags",
        ["org_id", "tag_name"],
        unique=True,
        **_where(_ORG_TAG),
    )
    op.create_index("ix_repositories_public_name", "repositories", ["name"], **_where("is_public"))


def downgrade() -> None:
    op.drop_index("ix_repositories_public_name", table_name="repositories")
    op.drop_table("commit_tags")
    op.drop_table("commits")
