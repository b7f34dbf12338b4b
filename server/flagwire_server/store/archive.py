"""Archived flags: hidden from SDKs, kept whole, restorable.

Archiving is a delete through the store's ordinary write, so every SDK learns
of it the way it learns of any delete (one change-log entry, one frame), and
the same Lua script saves the deleted document in ``P:{env}:archive`` (HASH
key → JSON).  Restoring is the ordinary write of the saved document as a new
version, and the same script forgets the copy, provided it is still the one
read (else NotFound: it was restored or archived again meanwhile).

Why one script each (``store/scripts/write.lua``, the archive step): Redis
runs a script whole, with no command of another client in between, and a
script whose checks fail writes nothing.  So no reader can ever see a flag
both live and archived, or neither, and no crash can leave it so: there is no
"between" to stop in.
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
        """Delete flag ``key`` and keep it, atomically (NotFound when it does not exist)."""
        return await self.store.delete(env, "flag", key, actor=actor, archive=True)

    async def restore(self, env: str, key: str, *, actor: str) -> WriteResult:
        """Write the archived flag back and forget the copy, atomically (NotFound when
        nothing is archived under ``key``)."""
        raw = await self.redis.hget(self._key(env), key)
        if raw is None:
            raise NotFound(f"no archived flag {key!r} in {env!r}")
        saved = raw if isinstance(raw, bytes) else raw.encode()
        doc = {k: v for k, v in orjson.loads(saved).items() if k not in SERVER_FIELDS}
        return await self.store.put(env, "flag", doc, actor=actor, key=key, archived=saved)

    async def list(self, env: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(self._key(env))
        return sorted(
            ({"key": as_str(k), "flag": orjson.loads(v)} for k, v in raw.items()),
            key=lambda e: e["key"],
        )
