"""The schema, described once with SQLAlchemy Core.

Nothing here runs queries: Alembic migrates the database to match these tables, and a
test checks that the migrations and this description agree. Queries live beside it in
`store/`, written by hand.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# UUIDs are native on PostgreSQL and hyphenated text on SQLite.
Id = sa.Uuid(as_uuid=False).with_variant(sa.String(36), "sqlite")
# Names sort byte-wise everywhere, as SQLite's default BINARY collation does.
Name = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
Timestamp = sa.DateTime(timezone=True)

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("org_id", Id, primary_key=True),
    sa.Column("name", Name, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)
# Organization names appear in public paths and are unique whatever their case.
sa.Index("ix_organizations_name_ci", sa.func.lower(organizations.c.name), unique=True)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", Id, primary_key=True),
    sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
    sa.Column("user_name", Name, nullable=False),
    sa.Column("email", sa.Text(), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("org_id", "user_name", name="unique_user_per_org"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("api_key_id", Id, primary_key=True),
    sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
    sa.Column("user_id", Id, sa.ForeignKey("users.user_id"), nullable=False),
    sa.Column("label", sa.Text(), nullable=True),
    # SHA-256 of the 64-hex-digit secret; the secret itself is never stored.
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("expires_at", Timestamp, nullable=True),
    sa.Column("revoked_at", Timestamp, nullable=True),
    sa.Column("max_vcpus", sa.Integer(), nullable=True),
    sa.Column("max_memory_mib", sa.Integer(), nullable=True),
    sa.Column("max_disk_mib", sa.Integer(), nullable=True),
    sa.Index("ix_api_keys_org_id", "org_id"),
)

# One row whose `generation` grows with every revocation, in the revoking transaction.
# Each server reads it a few times a second and forgets the keys it has verified when it
# moves, so its key cache never outlives a revocation by more than that.
api_key_generation = sa.Table(
    "api_key_generation",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger(), nullable=False),
)

repositories = sa.Table(
    "repositories",
    metadata,
    sa.Column("repo_id", Id, primary_key=True),
    sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
    sa.Column("name", Name, nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("is_public", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("org_id", "name", name="unique_repo_per_org"),
)

idempotency_records = sa.Table(
    "idempotency_records",
    metadata,
    sa.Column(
        "api_key_id",
        Id,
        sa.ForeignKey("api_keys.api_key_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("idempotency_key", sa.Text(), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    # NULL while the first request is still running.
    sa.Column("status_code", sa.Integer(), nullable=True),
    sa.Column("content_type", sa.Text(), nullable=True),
    sa.Column("response_body", sa.LargeBinary(), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_idempotency_records_created_at", "created_at"),
)

# Commits are snapshots of VMs, recorded by the VM layer. Deleting one only marks it
# (`deleted_at`): tags and child commits keep pointing at it.
commits = sa.Table(
    "commits",
    metadata,
    sa.Column("commit_id", Id, primary_key=True),
    # The creating key's organization, copied so access checks need no join.
    sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
    sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
    # No foreign key: the VM may be gone long before its commits.
    sa.Column("parent_vm_id", Id, nullable=True),
    sa.Column("grandparent_commit_id", Id, sa.ForeignKey("commits.commit_id"), nullable=True),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("is_public", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp, nullable=True),
    sa.Column("deleted_by", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=True),
)
_LIVE_COMMIT = "deleted_at IS NULL"
_PUBLIC_COMMIT = "is_public AND deleted_at IS NULL"
# GET /commits: one key's live commits, newest first.
sa.Index(
    "ix_commits_owner_created",
    commits.c.owner_id,
    commits.c.created_at,
    commits.c.commit_id,
    sqlite_where=sa.text(_LIVE_COMMIT),
    postgresql_where=sa.text(_LIVE_COMMIT),
)
# A VM's newest live commit: the grandparent of its next commit (store/commits.py).
sa.Index(
    "ix_commits_vm_created",
    commits.c.parent_vm_id,
    commits.c.created_at,
    commits.c.commit_id,
    sqlite_where=sa.text(_LIVE_COMMIT),
    postgresql_where=sa.text(_LIVE_COMMIT),
)
# GET /commits/public: every organization's public live commits, newest first.
sa.Index(
    "ix_commits_public_created",
    commits.c.created_at,
    commits.c.commit_id,
    sqlite_where=sa.text(_PUBLIC_COMMIT),
    postgresql_where=sa.text(_PUBLIC_COMMIT),
)

# Both tag namespaces share one table: repository tags have a `repo_id`, organization-wide
# (`/commit_tags`) tags have none. The partial unique indexes keep the namespaces apart,
# and each also serves its namespace's list in name order.
commit_tags = sa.Table(
    "commit_tags",
    metadata,
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
_REPO_TAG = "repo_id IS NOT NULL"
_ORG_TAG = "repo_id IS NULL"
sa.Index(
    "unique_tag_per_repo",
    commit_tags.c.repo_id,
    commit_tags.c.tag_name,
    unique=True,
    sqlite_where=sa.text(_REPO_TAG),
    postgresql_where=sa.text(_REPO_TAG),
)
sa.Index(
    "unique_tag_per_org_legacy",
    commit_tags.c.org_id,
    commit_tags.c.tag_name,
    unique=True,
    sqlite_where=sa.text(_ORG_TAG),
    postgresql_where=sa.text(_ORG_TAG),
)

# GET /public/repositories: every organization's public repositories in name order.
sa.Index(
    "ix_repositories_public_name",
    repositories.c.name,
    sqlite_where=sa.text("is_public"),
    postgresql_where=sa.text("is_public"),
)

# VMs. A row is written before the driver is asked to make the VM (state `creating`) and
# updated with the outcome; `deleted_at` is set once the VM is gone (deleted, or failed to
# start), and only rows without it count as live.
vms = sa.Table(
    "vms",
    metadata,
    sa.Column("vm_id", Id, primary_key=True),
    sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
    sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
    # The commit it was restored or branched from; NULL for a root VM.
    sa.Column("parent_commit_id", Id, sa.ForeignKey("commits.commit_id"), nullable=True),
    # creating, running, paused, deleting, dead, deleted, failed
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("vcpus", sa.Integer(), nullable=False),
    sa.Column("mem_mib", sa.Integer(), nullable=False),
    sa.Column("disk_mib", sa.Integer(), nullable=False),
    # A JSON object of string values.
    sa.Column("labels", sa.Text(), nullable=False),
    sa.Column("ssh_port", sa.Integer(), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp, nullable=True),
    # The server that runs it (`Settings.vm_node`): replicas on one database each settle
    # and act on their own VMs only.
    sa.Column("node", sa.Text(), nullable=False, server_default=""),
)
_LIVE_VM = "deleted_at IS NULL"
# GET /vm: an organization's live VMs, oldest first.
sa.Index(
    "ix_vms_org_created",
    vms.c.org_id,
    vms.c.created_at,
    vms.c.vm_id,
    sqlite_where=sa.text(_LIVE_VM),
    postgresql_where=sa.text(_LIVE_VM),
)
# Limits: what one key's live VMs use together.
sa.Index(
    "ix_vms_owner_live",
    vms.c.owner_id,
    sqlite_where=sa.text(_LIVE_VM),
    postgresql_where=sa.text(_LIVE_VM),
)
# Start-up reconciliation and the server-wide caps: one server's live VMs.
sa.Index(
    "ix_vms_node_live",
    vms.c.node,
    sqlite_where=sa.text(_LIVE_VM),
    postgresql_where=sa.text(_LIVE_VM),
)
# DELETE /commits/{id}: the live VMs that stem from a commit.
sa.Index(
    "ix_vms_parent_commit_live",
    vms.c.parent_commit_id,
    sqlite_where=sa.text(_LIVE_VM),
    postgresql_where=sa.text(_LIVE_VM),
)

# Environment variables of a user, shared by all the user's keys, applied to the VMs they
# make (`services/env_vars.py`).
user_env_vars = sa.Table(
    "user_env_vars",
    metadata,
    sa.Column("user_id", Id, sa.ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    sa.Column("key", Name, nullable=False),
    sa.Column("value", sa.Text(), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.PrimaryKeyConstraint("user_id", "key"),
)

# Users' images (issue 12): names are unique in an organization; `storage_key` names the
# driver's files, shared by images of the same content. `size_mib` is the filesystem's
# whole size, as the hosted service reports it.
base_images = sa.Table(
    "base_images",
    metadata,
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
sa.Index("ix_base_images_org_created", base_images.c.org_id, base_images.c.created_at)

# Builds of images. `size_mib` is the extra space asked for. A job is built on the `node`
# that accepted it; one not finished when that node starts again is marked failed there.
# At most one unfinished job per name in an organization.
base_image_jobs = sa.Table(
    "base_image_jobs",
    metadata,
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
_UNFINISHED_JOB = "status IN ('pending', 'creating')"
sa.Index(
    "unique_unfinished_job_per_name",
    base_image_jobs.c.org_id,
    base_image_jobs.c.image_name,
    unique=True,
    sqlite_where=sa.text(_UNFINISHED_JOB),
    postgresql_where=sa.text(_UNFINISHED_JOB),
)
sa.Index(
    "ix_base_image_jobs_name_created",
    base_image_jobs.c.org_id,
    base_image_jobs.c.image_name,
    base_image_jobs.c.created_at,
)

# Custom domains (issue 13): names are unique across the server, stored lowercased. A
# domain lives as long as its VM: the VM's end removes it (store/vms.set_state).
domains = sa.Table(
    "domains",
    metadata,
    sa.Column("domain_id", Id, primary_key=True),
    sa.Column("org_id", Id, sa.ForeignKey("organizations.org_id"), nullable=False),
    sa.Column("owner_id", Id, sa.ForeignKey("api_keys.api_key_id"), nullable=False),
    sa.Column("vm_id", Id, sa.ForeignKey("vms.vm_id"), nullable=False),
    sa.Column("domain", sa.Text(), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("domain", name="unique_domain"),
)
sa.Index("ix_domains_vm", domains.c.vm_id)
sa.Index("ix_domains_org_created", domains.c.org_id, domains.c.created_at)

# Deploy projects (issue 13): a VM running an application cloned from git; names are
# unique per organization, and a project goes with its VM (store/vms.set_state).
deploy_projects = sa.Table(
    "deploy_projects",
    metadata,
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
sa.Index("ix_deploy_projects_vm", deploy_projects.c.vm_id)
