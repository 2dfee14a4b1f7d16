"""Rules every name and text field follows (`decisions.md`, "Names")."""

from __future__ import annotations

import re

from vers_orchestrator.errors import InvalidField, InvalidRepositoryName, InvalidTagName

# fullmatch, not a `^…$` search: `$` would also accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9._-]+")
REPOSITORY_NAME_MAX = 64
REPO_TAG_NAME_MAX = 128
# Organization-wide (`/commit_tags`) tag names keep the hosted service's shorter limit.
ORG_TAG_NAME_MAX = 64
DESCRIPTION_MAX = 4096
# Paged lists (`limit`, `offset`), as the hosted service reads them.
DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 100


def name_problem(name: str, max_length: int) -> str | None:
    """What is wrong with a repository, tag or organization name, or None if nothing."""
    if not 1 <= len(name) <= max_length:
        return f"must be 1-{max_length} characters"
    if not _NAME.fullmatch(name):
        return "can only contain ASCII letters, digits, hyphens, underscores, and dots"
    if name in (".", ".."):
        return "cannot be '.' or '..'"
    return None


def is_valid_name(name: str, max_length: int) -> bool:
    return name_problem(name, max_length) is None


def validate_repository_name(name: str) -> None:
    problem = name_problem(name, REPOSITORY_NAME_MAX)
    if problem is not None:
        raise InvalidRepositoryName(f"Repository name {problem}")


def validate_tag_name(name: str, max_length: int) -> None:
    problem = name_problem(name, max_length)
    if problem is not None:
        raise InvalidTagName(f"Tag name {problem}")


def validate_text(field: str, value: str | None, max_length: int = DESCRIPTION_MAX) -> None:
    """Free text: any characters but U+0000 (PostgreSQL cannot store it), bounded length."""
    if value is None:
        return
    if "\x00" in value:
        raise InvalidField(f"{field} must not contain NUL characters")
    if len(value) > max_length:
        raise InvalidField(f"{field} must be at most {max_length} characters")


def clamp_page(limit: int | None, offset: int | None) -> tuple[int, int]:
    """`(limit, offset)` of a paged list: limit 1-100 (default 50), offset at least 0.
    Out-of-range values are clamped, never refused, as the hosted service does."""
    effective_limit = DEFAULT_PAGE_LIMIT if limit is None else min(max(limit, 1), MAX_PAGE_LIMIT)
    return effective_limit, max(offset or 0, 0)
