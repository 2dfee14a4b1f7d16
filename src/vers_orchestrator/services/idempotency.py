"""`X-Idempotency-Key` replays (`decisions.md`, "Retries and idempotency").

The official SDKs send a fresh key with every POST/PUT/PATCH/DELETE and re-send the
same key when they retry after a timeout, a 409, a 429 or a 5xx. The first request
claims the key; a retry of it gets the stored response back instead of running twice
(a lost 201 must not turn into a 409). Records live for 24 hours per API key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from vers_orchestrator.errors import (
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    RequestInProgress,
)
from vers_orchestrator.store import idempotency as idempotency_store
from vers_orchestrator.store.database import Database, utc_now

# A claim this old whose response was never stored belongs to a request that died with
# its server; a retry may run the request again.
ABANDONED_AFTER = timedelta(minutes=10)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status_code: int
    content_type: str | None
    body: bytes


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def validate_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise InvalidIdempotencyKey()


async def begin(
    db: Database, api_key_id: str, key: str, request_hash: str, ttl: timedelta
) -> StoredResponse | None:
    """None when this request now owns the key and must run; else the response to replay."""
    validate_key(key)
    now = utc_now()
    record = await db.write(
        lambda tx: idempotency_store.claim(
            tx, api_key_id, key, request_hash, now, now - ttl, now - ABANDONED_AFTER
        )
    )
    if record is None:
        return None
    if record.request_hash != request_hash:
        raise IdempotencyKeyReused()
    if record.status_code is None or record.response_body is None:
        raise RequestInProgress()
    return StoredResponse(record.status_code, record.content_type, record.response_body)


async def finish(db: Database, api_key_id: str, key: str, response: StoredResponse) -> None:
    await db.write(
        lambda tx: idempotency_store.complete(
            tx, api_key_id, key, response.status_code, response.content_type, response.body
        )
    )


async def abandon(db: Database, api_key_id: str, key: str) -> None:
    """Forget the claim, so that a retry runs the request again (after a 5xx)."""
    await db.write(lambda tx: idempotency_store.release(tx, api_key_id, key))


async def purge_expired(db: Database, ttl: timedelta) -> int:
    cutoff = utc_now() - ttl
    return await db.write(lambda tx: idempotency_store.purge(tx, cutoff))
