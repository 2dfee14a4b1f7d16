"""API keys in the hosted shape, and the principal a request acts as.

A key is 100 characters: the key's UUID (36) followed by a 64-hex-digit secret. Lookups
go by the id; only a SHA-256 of the secret is stored. The secret carries 256 random bits,
so a slow password hash would add cost and no protection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.ids import new_id

_KEY = re.compile(
    r"\A([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})([0-9a-f]{64})\Z"
)
BEARER_PREFIX = "Bearer "


@dataclass(frozen=True, slots=True)
class NewKey:
    api_key_id: str
    secret: str

    @property
    def token(self) -> str:
        return self.api_key_id + self.secret


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: one API key, of one user, in one organization."""

    api_key_id: str
    org_id: str
    org_name: str
    user_id: str
    user_name: str
    email: str | None
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    max_vcpus: int | None
    max_memory_mib: int | None
    max_disk_mib: int | None


def new_key() -> NewKey:
    return NewKey(new_id(), secrets.token_hex(32))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.match(token)
    return None if match is None else (match.group(1), match.group(2))


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
