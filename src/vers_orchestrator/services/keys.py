"""API keys: created by operators on the CLI, checked on every authenticated request."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator import auth
from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import InvalidCredentials, InvalidField, MissingCredentials, NotFound
from vers_orchestrator.ids import new_id
from vers_orchestrator.services.validation import name_problem, validate_text
from vers_orchestrator.store import identity
from vers_orchestrator.store.database import Database, Tx, UniqueViolation, utc_now

ORG_NAME_MAX = 64
USER_NAME_MAX = 64
EMAIL_MAX = 320


@dataclass(frozen=True, slots=True)
class CreatedKey:
    api_key: str
    api_key_id: str
    org_id: str
    org_name: str
    user_id: str
    user_name: str
    label: str | None
    created_at: datetime


class KeyNotFound(NotFound):
    message = "api key not found"


def _principal(key: identity.ApiKey) -> Principal:
    return Principal(
        api_key_id=key.api_key_id,
        org_id=key.org_id,
        org_name=key.org_name,
        user_id=key.user_id,
        user_name=key.user_name,
        email=key.email,
        label=key.label,
        created_at=key.created_at,
        expires_at=key.expires_at,
        max_vcpus=key.max_vcpus,
        max_memory_mib=key.max_memory_mib,
    )


async def create(
    db: Database,
    org_name: str,
    user_name: str,
    email: str | None = None,
    label: str | None = None,
    expires_at: datetime | None = None,
    max_vcpus: int | None = None,
    max_memory_mib: int | None = None,
) -> CreatedKey:
    """A new key for `user_name` in `org_name`, creating the organization and user if missing.

    `max_vcpus` and `max_memory_mib` cap what the key's live VMs may use together.
    """
    for field, limit in (("max_vcpus", max_vcpus), ("max_memory_mib", max_memory_mib)):
        if limit is not None and not 0 <= limit <= 2**31 - 1:
            raise InvalidField(f"{field} must be between 0 and {2**31 - 1}")
    for field, value in (("organization name", org_name), ("user name", user_name)):
        problem = name_problem(value, ORG_NAME_MAX)
        if problem is not None:
            raise InvalidField(f"invalid {field}: {problem}")
    validate_text("email", email, EMAIL_MAX)
    validate_text("label", label)
    key = auth.new_key()

    async def unit(tx: Tx) -> CreatedKey:
        now = utc_now()
        org = await identity.get_organization_by_name(tx, org_name)
        if org is None:
            org = await identity.insert_organization(tx, new_id(), org_name, now)
        user = await identity.get_user(tx, org.org_id, user_name)
        if user is None:
            user = await identity.insert_user(tx, new_id(), org.org_id, user_name, email, now)
        await identity.insert_api_key(
            tx,
            key.api_key_id,
            org.org_id,
            user.user_id,
            label,
            auth.hash_secret(key.secret),
            now,
            expires_at,
            max_vcpus,
            max_memory_mib,
        )
        return CreatedKey(
            api_key=key.token,
            api_key_id=key.api_key_id,
            org_id=org.org_id,
            org_name=org.name,
            user_id=user.user_id,
            user_name=user.user_name,
            label=label,
            created_at=now,
        )

    try:
        return await db.write(unit)
    except UniqueViolation:
        # Another process created the same organization or user a moment ago: use theirs.
        return await db.write(unit)


async def list_keys(db: Database, org_name: str | None = None) -> list[identity.ApiKey]:
    return await db.read(lambda tx: identity.list_api_keys(tx, org_name))


async def revoke(db: Database, api_key_id: str) -> None:
    try:
        uuid.UUID(api_key_id)
    except ValueError:
        raise KeyNotFound() from None
    if not await db.write(lambda tx: identity.revoke_api_key(tx, api_key_id, utc_now())):
        raise KeyNotFound()


class Authenticator:
    """Turns an Authorization header into a Principal.

    Verified keys are remembered for `cache_seconds`, so a busy client costs no query per
    request; a revocation therefore reaches this process within that time. Expiry is
    checked on every request, cached or not.
    """

    _MAX_CACHED = 10_000

    def __init__(self, db: Database, cache_seconds: float) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <key>` value; surrounding spaces and
        tabs are not part of it (RFC 9110 §5.5). Raises MissingCredentials or
        InvalidCredentials (401)."""
        authorization = (authorization or "").strip(" \t")
        if not authorization or not authorization.startswith(auth.BEARER_PREFIX):
            raise MissingCredentials()
        token = authorization[len(auth.BEARER_PREFIX) :]
        if not token:
            raise MissingCredentials()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.monotonic():
            principal = cached[0]
        else:
            principal = await self._verify(token)
            if self._cache_seconds > 0:
                if len(self._cache) >= self._MAX_CACHED:
                    self._cache.clear()
                self._cache[token] = (principal, time.monotonic() + self._cache_seconds)
        if principal.expires_at is not None and principal.expires_at <= utc_now():
            raise InvalidCredentials()
        return principal

    async def _verify(self, token: str) -> Principal:
        parts = auth.split_token(token)
        if parts is None:
            raise InvalidCredentials()
        api_key_id, secret = parts
        key = await self._db.read(lambda tx: identity.get_api_key(tx, api_key_id))
        if key is None or key.revoked_at is not None:
            raise InvalidCredentials()
        if not auth.secret_matches(secret, key.secret_hash):
            raise InvalidCredentials()
        return _principal(key)
