"""API keys: created by operators on the CLI, checked on every authenticated request."""

from __future__ import annotations

import asyncio
import logging
import math
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

log = logging.getLogger("vers_orchestrator.keys")

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
        max_disk_mib=key.max_disk_mib,
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
    max_disk_mib: int | None = None,
) -> CreatedKey:
    """A new key for `user_name` in `org_name`, creating the organization and user if missing.

    `max_vcpus`, `max_memory_mib` and `max_disk_mib` cap what the key's live VMs may use
    together. Raises `InvalidField` for a limit outside 0..2**31-1 or a bad name.
    """
    for field, limit in (
        ("max_vcpus", max_vcpus),
        ("max_memory_mib", max_memory_mib),
        ("max_disk_mib", max_disk_mib),
    ):
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
            max_disk_mib,
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


# Each server reads the key generation (bumped by every revocation) this often, and
# forgets the keys it has verified when it moved: a revoked key is refused within about
# this time on every server, whichever process revoked it.
REVOCATION_POLL_SECONDS = 0.25
# A cached key is trusted only while the generation was read this recently. When the reads
# stall or fail (a database blip, a starved pool), keys are verified against the database
# again, so a revocation never goes unseen for longer than this.
REVOCATION_TRUST_SECONDS = 0.75
# A read that hangs (a connection lost without a reset) is abandoned and tried again.
REVOCATION_READ_TIMEOUT_SECONDS = 5.0


class Authenticator:
    """Turns an Authorization header into a Principal.

    Verified keys are remembered for `cache_seconds`, so a busy client costs no query per
    request. `watch_revocations` (one task per server) drops them when any key is revoked,
    and the cache is trusted only while that watch is current. Expiry is checked on every
    request, cached or not.
    """

    _MAX_CACHED = 10_000

    def __init__(self, db: Database, cache_seconds: float) -> None:
        self._db = db
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._generation: int | None = None
        # When the last successful read of the generation started (monotonic clock).
        self._checked_at = -math.inf
        # Moves on each time the cache is dropped for a new generation.
        self._drops = 0

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
        now = time.monotonic()
        cached = self._cache.get(token)
        if (
            cached is not None
            and cached[1] > now
            and now - self._checked_at < REVOCATION_TRUST_SECONDS
        ):
            principal = cached[0]
        else:
            drops = self._drops
            principal = await self._verify(token)
            # A key read before a revocation that was noticed meanwhile stays out of the
            # cache: it may be the revoked one.
            if self._cache_seconds > 0 and drops == self._drops:
                if len(self._cache) >= self._MAX_CACHED:
                    self._cache.clear()
                self._cache[token] = (principal, time.monotonic() + self._cache_seconds)
        if principal.expires_at is not None and principal.expires_at <= utc_now():
            raise InvalidCredentials()
        return principal

    async def check_revocations(self) -> None:
        """Read the key generation once; forget every cached key if it moved."""
        started = time.monotonic()
        generation = await self._db.read(identity.get_api_key_generation)
        if generation != self._generation:
            self._cache.clear()
            self._drops += 1
            self._generation = generation
        self._checked_at = started

    async def watch_revocations(self) -> None:
        """`check_revocations` every REVOCATION_POLL_SECONDS until cancelled. A failed read
        is logged (once per outage) and retried; meanwhile keys are verified per request."""
        failing = False
        while True:
            try:
                async with asyncio.timeout(REVOCATION_READ_TIMEOUT_SECONDS):
                    await self.check_revocations()
            except Exception:
                if not failing:
                    log.exception("reading the API key generation failed; retrying")
                failing = True
            else:
                if failing:
                    log.info("reading the API key generation works again")
                failing = False
            await asyncio.sleep(REVOCATION_POLL_SECONDS)

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
