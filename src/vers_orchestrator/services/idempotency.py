"""`X-Idempotency-Key` replays (`decisions.md`, "Retries and idempotency").

The official SDKs send a fresh key with every POST/PUT/PATCH/DELETE and re-send the
same key when they retry after a timeout, a 409, a 429 or a 5xx. The first request
claims the key; a retry of it gets the stored response back instead of running twice
(a lost 201 must not turn into a 409). A retry that comes while the first is still
running (the SDK gave up waiting after 30 s) waits for it and then replays its answer,
so a slow first request does not end in a 409 for a request that succeeded. Records
live for 24 hours per API key.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from vers_orchestrator.errors import (
    IdempotencyKeyReused,
    InvalidIdempotencyKey,
    RequestInProgress,
)
from vers_orchestrator.store import idempotency as idempotency_store
from vers_orchestrator.store.database import Database, Tx, utc_now

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
    db: Database,
    api_key_id: str,
    key: str,
    request_hash: str,
    ttl: timedelta,
    wait_seconds: float = 0.0,
) -> StoredResponse | None:
    """None when this request now owns the key and must run; else the response to replay.

    The same request still running elsewhere is waited for, up to `wait_seconds`, and its
    response replayed (or, if it failed with a 5xx and let the key go, this one runs).
    Raises `InvalidIdempotencyKey` (400), `IdempotencyKeyReused` (422) for a different
    request with the key, and `RequestInProgress` (409) when the wait runs out.
    """
    validate_key(key)
    deadline = time.monotonic() + wait_seconds
    pause = 0.05
    while True:
        record = await db.write(partial(_claim, api_key_id, key, request_hash, ttl, utc_now()))
        if record is None:
            return None
        if record.request_hash != request_hash:
            raise IdempotencyKeyReused()
        if record.status_code is not None and record.response_body is not None:
            return StoredResponse(record.status_code, record.content_type, record.response_body)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestInProgress()
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.5)


async def _claim(
    api_key_id: str, key: str, request_hash: str, ttl: timedelta, now: datetime, tx: Tx
) -> idempotency_store.IdempotencyRecord | None:
    return await idempotency_store.claim(
        tx, api_key_id, key, request_hash, now, now - ttl, now - ABANDONED_AFTER
    )


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
