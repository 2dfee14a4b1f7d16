"""Stored first responses for `X-Idempotency-Key` replays, per API key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from vers_orchestrator.store.database import Tx, as_datetime


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    request_hash: str
    # None while the first request is still running.
    status_code: int | None
    content_type: str | None
    response_body: bytes | None
    created_at: datetime


async def claim(
    tx: Tx,
    api_key_id: str,
    key: str,
    request_hash: str,
    now: datetime,
    expired_before: datetime,
    abandoned_before: datetime,
) -> IdempotencyRecord | None:
    """Claim `key` for a new request, or return the record that already holds it.

    A record created before `expired_before`, or a claim still unfinished since before
    `abandoned_before` (its server died mid-request), is taken over as if absent.
    """
    inserted = await tx.execute(
        "INSERT INTO idempotency_records (api_key_id, idempotency_key, request_hash, created_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        api_key_id,
        key,
        request_hash,
        now,
    )
    if inserted:
        return None
    taken_over = await tx.execute(
        "UPDATE idempotency_records SET request_hash = $3, created_at = $4,"
        " status_code = NULL, content_type = NULL, response_body = NULL"
        " WHERE api_key_id = $1 AND idempotency_key = $2"
        " AND (created_at < $5 OR (status_code IS NULL AND created_at < $6))",
        api_key_id,
        key,
        request_hash,
        now,
        expired_before,
        abandoned_before,
    )
    if taken_over:
        return None
    row = await tx.fetch_one(
        "SELECT request_hash, status_code, content_type, response_body, created_at"
        " FROM idempotency_records WHERE api_key_id = $1 AND idempotency_key = $2",
        api_key_id,
        key,
    )
    if row is None:  # deleted between our statements by a concurrent release
        return None
    body = row["response_body"]
    return IdempotencyRecord(
        request_hash=row["request_hash"],
        status_code=row["status_code"],
        content_type=row["content_type"],
        response_body=None if body is None else bytes(body),
        created_at=as_datetime(row["created_at"]),
    )


async def complete(
    tx: Tx, api_key_id: str, key: str, status_code: int, content_type: str | None, body: bytes
) -> None:
    await tx.execute(
        "UPDATE idempotency_records SET status_code = $3, content_type = $4, response_body = $5"
        " WHERE api_key_id = $1 AND idempotency_key = $2",
        api_key_id,
        key,
        status_code,
        content_type,
        body,
    )


async def release(tx: Tx, api_key_id: str, key: str) -> None:
    await tx.execute(
        "DELETE FROM idempotency_records WHERE api_key_id = $1 AND idempotency_key = $2",
        api_key_id,
        key,
    )


async def purge(tx: Tx, created_before: datetime) -> int:
    return await tx.execute("DELETE FROM idempotency_records WHERE created_at < $1", created_before)
