"""Archived flags: hidden from SDKs, kept whole, restorable.

Archiving is a delete through the store's ordinary write, so every SDK learns
of it the way it learns of any delete (one change-log entry, one frame), with
the document saved first in ``P:{env}:archive`` (HASH key → JSON).  Restoring
writes the saved document back as a new version and forgets the copy.  Each
is two steps, ordered so that a crash between them leaves a flag both live and
archived (harmless: a restore overwrites it), never lost.
"""

from __future__ import annotations

from typing import Any

import orjson

from flagwire_server.store.documents import Store
from flagwire_server.store.types import SERVER_FIELDS, NotFound, WriteResult, as_str

__all__ = ["FlagArchive"]


class FlagArchive:
    """Archive and restore flags of every environment of ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis = store.redis

    def _key(self, env: str) -> str:
        return self.store.keyspace.archive(env)

    async def archive(self, env: str, key: str, *, actor: str) -> WriteResult:
        """Save flag ``key`` and delete it (NotFound when it does not exist)."""
        doc = await self.store.get_doc(env, "flag", key)
        await self.redis.hset(self._key(env), key, orjson.dumps(doc))
        return await self.store.delete(env, "flag", key, actor=actor)

    async def restore(self, env: str, key: str, *, actor: str) -> WriteResult:
        """Write the archived flag back (NotFound when nothing is archived under ``key``)."""
        raw = await self.redis.hget(self._key(env), key)
        if raw is None:
            raise NotFound(f"no archived flag {key!r} in {env!r}")
        doc = {k: v for k, v in orjson.loads(raw).items() if k not in SERVER_FIELDS}
        result = await self.store.put(env, "flag", doc, actor=actor, key=key)
        await self.redis.hdel(self._key(env), key)
        return result

    async def list(self, env: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(self._key(env))
        return sorted(
            ({"key": as_str(k), "flag": orjson.loads(v)} for k, v in raw.items()),
            key=lambda e: e["key"],
        )
