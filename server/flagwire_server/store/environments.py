"""Environments in the Redis store: create, list, describe, load whole, delete.

Why apart from the documents: an environment is the unit a client syncs (its
version, epoch and every flag and segment, read atomically by ``load_env``),
and these operations touch its keys as a set, where ``documents.py`` and
``write.py`` touch one document.  :class:`Environments` is the base of
:class:`~flagwire_server.store.documents.Store`, so callers keep one object.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
import redis.asyncio as aioredis

from flagwire.core.errors import ValidationError
from flagwire.core.limits import ENV_RE
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import (
    AlreadyExists,
    EnvState,
    NotFound,
    _loads,
    _now,
    _pairs,
    _script,
    _translated,
    as_str,
)

__all__ = ["Environments"]


class Environments:
    """The environment operations of a store.

    Args:
        redis: an asyncio Redis client (``decode_responses`` either way).
        keyspace: where the store's keys are.
    """

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self._load = redis.register_script(_script("load"))
        self._create_env = redis.register_script(_script("create_env"))

    @_translated
    async def list_envs(self) -> list[dict[str, Any]]:
        """Every environment's ``{key, name, created_at}``, sorted by key."""
        raw = await self.redis.hgetall(self.keyspace.envs)
        envs = [doc for doc in (_loads(v) for v in raw.values()) if doc is not None]
        return sorted(envs, key=lambda e: str(e.get("key", "")))

    @_translated
    async def get_env(self, env: str) -> dict[str, Any]:
        """``{key, name, created_at, version, epoch}``; raises :class:`NotFound`."""
        raw, meta = await self._env_info(env)
        if meta is None:
            raise NotFound(f"environment {env!r} does not exist")
        info = raw or {"key": env, "name": env, "created_at": meta.get("created_at", "")}
        return {**info, "version": int(meta.get("version", "0")), "epoch": meta.get("epoch", "")}

    async def _env_info(self, env: str) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
        raw = await self.redis.hget(self.keyspace.envs, env)
        meta_raw = await self.redis.hgetall(self.keyspace.meta(env))
        meta = {as_str(k): as_str(v) for k, v in meta_raw.items()} if meta_raw else None
        return _loads(raw), meta

    @_translated
    async def create_env(self, key: str, name: str = "") -> dict[str, Any]:
        """Create an environment at version 0 with a fresh epoch.

        Raises:
            ValidationError: ``key`` is not a valid environment key.
            AlreadyExists: it exists.
        """
        if not isinstance(key, str) or not ENV_RE.match(key):
            raise ValidationError([("key", "expected 1-64 of a-z 0-9 _ - starting alphanumeric")])
        if not isinstance(name, str) or len(name) > 200:
            raise ValidationError([("name", "expected a string of at most 200 characters")])
        ks = self.keyspace
        created_at = _now()
        listing = orjson.dumps({"key": key, "name": name or key, "created_at": created_at})
        made = await self._create_env(
            keys=[
                ks.meta(key),
                ks.docs(key, "flag"),
                ks.docs(key, "segment"),
                ks.changes(key),
                ks.audit(key),
            ],
            args=[secrets.token_hex(8), created_at],
        )
        envs_key = self.keyspace.envs
        if not int(made):
            # The meta exists; repair a missing listing entry (a crash between the two writes).
            if await self.redis.hsetnx(envs_key, key, listing):
                return await self.get_env(key)
            raise AlreadyExists(f"environment {key!r} already exists", 0)
        await self.redis.hset(envs_key, key, listing)
        return await self.get_env(key)

    async def ensure_env(self, key: str, name: str = "") -> bool:
        """Create the environment unless it exists; True when it was created."""
        try:
            await self.create_env(key, name)
        except AlreadyExists:
            return False
        return True

    @_translated
    async def delete_env(self, env: str) -> None:
        """Delete an environment and every key it owns; raises :class:`NotFound`."""
        # The meta goes first: from here on the environment does not exist for writers,
        # and a create of the same name starts from empty keys (see create_env.lua).
        gone = await self.redis.unlink(self.keyspace.meta(env))
        removed = await self.redis.hdel(self.keyspace.envs, env)
        if not removed and not gone:
            raise NotFound(f"environment {env!r} does not exist")
        batch: list[Any] = []
        async for k in self.redis.scan_iter(match=self.keyspace.env_pattern(env), count=500):
            batch.append(k)
            if len(batch) >= 500:
                await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            await self.redis.unlink(*batch)

    @_translated
    async def load_env(self, env: str) -> EnvState:
        """Version, epoch, flags and segments of ``env`` read atomically (one script)."""
        res = await self._load(
            keys=[
                self.keyspace.meta(env),
                self.keyspace.docs(env, "flag"),
                self.keyspace.docs(env, "segment"),
            ]
        )
        if not res:
            raise NotFound(f"environment {env!r} does not exist")
        return EnvState(
            version=int(as_str(res[0])),
            epoch=as_str(res[1]),
            flags=_pairs(res[2]),
            segments=_pairs(res[3]),
        )

    async def _require_env(self, env: str) -> None:
        """:class:`NotFound` for a missing environment, so that a read of an empty or
        absent one does not answer an empty list or "no such document"."""
        if not await self.redis.exists(self.keyspace.meta(env)):
            raise NotFound(f"environment {env!r} does not exist")
