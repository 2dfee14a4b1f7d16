"""Commit wire models, named and shaped as the upstream OpenAPI components.

`CommitInfo` carries plain strings (its `created_at` ends `+00:00`); `VmCommitEntity`
carries typed ids and a `Z` timestamp, as the hosted service answers.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from vers_orchestrator.schemas.common import timestamp_field, uuid_field


class CommitInfo(msgspec.Struct, kw_only=True):
    commit_id: str
    parent_vm_id: str | None = None
    grandparent_commit_id: str | None = None
    owner_id: str
    name: str
    description: str | None = None
    created_at: str
    is_public: bool


Int64 = Annotated[int, msgspec.Meta(extra_json_schema={"extra": {"format": "int64"}})]


class ListCommitsResponse(msgspec.Struct):
    commits: list[CommitInfo]
    total: Int64
    limit: Int64
    offset: Int64


class UpdateCommitRequest(msgspec.Struct, kw_only=True):
    """Request body for PATCH /commits/{commit_id}"""

    is_public: bool
    name: Annotated[
        str | None, msgspec.Meta(description="Optional human-readable name for the commit.")
    ] = None
    description: Annotated[
        str | None, msgspec.Meta(description="Optional description for the commit.")
    ] = None


class VmCommitEntity(msgspec.Struct, kw_only=True):
    id: Annotated[str, uuid_field("The commit's unique identifier")]
    parent_vm_id: Annotated[
        str | None, uuid_field("The VM that this commit was created from, if any.")
    ] = None
    grandparent_commit_id: Annotated[
        str | None,
        uuid_field(
            "The commit that this commit's parent VM was started from, if any. Intended to"
            " optimize traversing the commit tree."
        ),
    ] = None
    owner_id: Annotated[str, uuid_field("api key id.")]
    name: str
    description: str | None = None
    created_at: Annotated[str, timestamp_field()]
    is_public: Annotated[
        bool,
        msgspec.Meta(
            description="Whether this commit is publicly accessible (readable/restorable by"
            " anyone)."
        ),
    ]
