"""Environment variables: one set per user, shared by all the user's keys, given to every
VM one of those keys makes (`upstream-semantics-platform.md` §2; `decisions.md`).

Checks and texts are the hosted service's, in its order, with these differences: entries
are checked in key order, so the one reported is always the same; a value may not hold a
newline or NUL (it would break `/etc/environment`); a key of multi-byte characters is
answered, never a dropped connection; and a write is one transaction.
"""

from __future__ import annotations

import re

from vers_orchestrator.auth import Principal
from vers_orchestrator.errors import EnvVarNotFound, InvalidField
from vers_orchestrator.store import env_vars as env_store
from vers_orchestrator.store.database import Database, Tx, utc_now

MAX_PER_REQUEST = 100
MAX_PER_USER = 256
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 8192
_SHELL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What ends a line for someone reading /etc/environment: "\n" for pam_env and the agent,
# and every other line boundary of Python's `str.splitlines`, to be safe with any reader.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


async def of_user(db: Database, principal: Principal) -> dict[str, str]:
    """The caller's user's variables, in key order."""
    return await db.read(lambda tx: env_store.of_user(tx, principal.user_id))


def check(variables: dict[str, str], replace: bool) -> None:
    """Raises `InvalidField` (400) with the first rule a request breaks."""
    if not variables and not replace:
        raise InvalidField(
            "vars must not be empty (use replace: true with empty vars to clear all)"
        )
    if len(variables) > MAX_PER_REQUEST:
        raise InvalidField(f"too many variables in request (max {MAX_PER_REQUEST})")
    for key in sorted(variables):
        value = variables[key]
        encoded = key.encode()
        if len(encoded) > MAX_KEY_BYTES:
            shown = encoded[:32].decode("utf-8", "ignore")  # never split a character
            raise InvalidField(f"key '{shown}...' exceeds {MAX_KEY_BYTES} character limit")
        if not _SHELL_IDENTIFIER.fullmatch(key):
            raise InvalidField(f"key '{key}' is not a valid shell identifier")
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise InvalidField(f"value for key '{key}' exceeds {MAX_VALUE_BYTES} character limit")
        if not _LINE_BREAKS.isdisjoint(value):
            raise InvalidField(f"value for key '{key}' must not contain a newline")
        if "\0" in value:
            raise InvalidField(f"value for key '{key}' must not contain a NUL character")


async def set_vars(
    db: Database, principal: Principal, variables: dict[str, str], replace: bool
) -> dict[str, str]:
    """Upsert `variables` (after removing all others when `replace`); returns the user's
    whole set. Raises `InvalidField` (400), also past 256 variables per user."""
    check(variables, replace)
    user_id = principal.user_id

    async def unit(tx: Tx) -> dict[str, str]:
        await env_store.lock_user(tx, user_id)
        if replace:
            await env_store.delete_all(tx, user_id)
        else:
            existing = await env_store.of_user(tx, user_id)
            added = sum(1 for key in variables if key not in existing)
            if len(existing) + added > MAX_PER_USER:
                raise InvalidField(
                    f"would exceed maximum of {MAX_PER_USER} environment variables per user"
                )
        now = utc_now()
        for key in sorted(variables):
            await env_store.upsert(tx, user_id, key, variables[key], now)
        return await env_store.of_user(tx, user_id)

    return await db.write(unit)


async def delete(db: Database, principal: Principal, key: str) -> None:
    """Raises `EnvVarNotFound` (404) when the user has no variable `key` (exact case)."""
    if len(key.encode()) > MAX_KEY_BYTES or not _SHELL_IDENTIFIER.fullmatch(key):
        raise EnvVarNotFound()  # no such key can have been stored (nor sent to SQL: a NUL)
    if not await db.write(lambda tx: env_store.delete(tx, principal.user_id, key)):
        raise EnvVarNotFound()
