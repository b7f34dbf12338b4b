"""Bring a store written by flagwire v1 to today's key layout, once, on start.

Why on start and not by hand: a v1 store must keep working after an upgrade,
and the only change is small.  v1 kept the API key ring at ``P:{keys}:*`` —
inside the key space of an environment named ``keys`` — and console sessions,
with their secrets, in plain text.  The key ring is copied (one script, so it
is all or nothing, and skipped when the new ring exists: idempotent); v1's
plain sessions and console secret are deleted, so everyone signs in again.
The v1 copy of the key ring is left for v1 instances still serving during a
rolling upgrade (``docs/storage.md`` says when it can go).
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import _script

__all__ = ["migrate_v1"]

log = logging.getLogger("flagwire.store")


async def migrate_v1(redis: aioredis.Redis, keyspace: Keyspace) -> dict[str, int]:
    """Copy v1's key ring and drop v1's plain sessions; returns what it did."""
    ks = keyspace
    names: tuple[Any, ...] = ("records", "byhash", "version")
    copied = await redis.eval(
        _script("migrate_keyring"),
        6,
        *[ks.legacy_keyring(n) for n in names],
        *[ks.keyring(n) for n in names],
    )
    legacy: list[Any] = [k async for k in redis.scan_iter(match=ks.legacy_sessions_pattern)]
    dropped = 0
    # One key per command: v1's session keys carry no hash tag (their cluster slots differ).
    for k in [*legacy, *ks.legacy_console()]:
        dropped += int(await redis.unlink(k))
    if int(copied):
        log.warning("store: copied the v1 API key ring to %s", ks.keyring("records"))
    if dropped:
        log.warning("store: removed %d v1 console session keys (sign in again)", dropped)
    return {"keyring": int(copied), "sessions": dropped}
