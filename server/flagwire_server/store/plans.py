"""Release plans in Redis: the plans, the one active plan per flag, a lock per plan.

Why a lock and not a lease per stage like scheduled changes: a plan is acted
on by people (pause, roll back) and by every server's runner (advance when a
hold ends), and each of those reads the plan, writes the flag and saves the
plan; the lock (``SET NX PX``, released by ``unlock.lua`` only by its holder)
makes that read-write-save one step on the whole fleet.  One active plan per
flag is ``HSETNX`` on ``P:{env}:plans:active``.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import Conflict, NotFound, _loads, _script, _translated, as_str

__all__ = ["MAX_READINGS", "PlanStore"]

#: Guard readings kept per plan (about 120 bytes each).
MAX_READINGS: Final = 3000


class PlanStore:
    """The release plans and templates of every environment under one prefix."""

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self._unlock = redis.register_script(_script("unlock"))

    @staticmethod
    def new_id() -> str:
        return f"rp_{secrets.token_hex(6)}"

    @_translated
    async def create(self, env: str, plan: dict[str, Any]) -> None:
        """Store a new active plan.

        Raises:
            Conflict: the flag already has an active plan.
        """
        ks = self.keyspace
        if not await self.redis.hsetnx(ks.plans_active(env), plan["flag"], plan["id"]):
            other = as_str(await self.redis.hget(ks.plans_active(env), plan["flag"]))
            raise Conflict(f"flag {plan['flag']!r} already has an active plan ({other})", 0)
        await self.redis.hset(ks.plans(env), plan["id"], orjson.dumps(plan))

    @_translated
    async def get(self, env: str, plan_id: str) -> dict[str, Any]:
        plan = _loads(await self.redis.hget(self.keyspace.plans(env), plan_id))
        if plan is None:
            raise NotFound(f"release plan {plan_id[:40]!r} does not exist in {env!r}")
        return plan

    @_translated
    async def list_plans(self, env: str) -> list[dict[str, Any]]:
        raw = await self.redis.hgetall(self.keyspace.plans(env))
        plans = [p for p in (_loads(v) for v in raw.values()) if p is not None]
        return sorted(plans, key=lambda p: str(p.get("created_at", "")), reverse=True)

    @_translated
    async def active_for(self, env: str, flag: str) -> str | None:
        """The id of ``flag``'s active plan, if it has one."""
        raw = await self.redis.hget(self.keyspace.plans_active(env), flag)
        return as_str(raw) if raw is not None else None

    @_translated
    async def active_ids(self, env: str) -> list[str]:
        return [as_str(v) for v in await self.redis.hvals(self.keyspace.plans_active(env))]

    @_translated
    async def save(self, env: str, plan: dict[str, Any], *, ended: bool = False) -> None:
        """Write the plan back; ``ended`` frees its flag for another plan."""
        ks = self.keyspace
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(ks.plans(env), plan["id"], orjson.dumps(plan))
            if ended:
                pipe.hdel(ks.plans_active(env), plan["flag"])
            await pipe.execute()

    @_translated
    async def delete(self, env: str, ids: list[str]) -> int:
        """Delete ended plans and their readings (retention); how many there were."""
        ks = self.keyspace
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(ks.plans(env), *ids)
            for plan_id in ids:
                pipe.delete(ks.plan_readings(env, plan_id))
            results = await pipe.execute()
        return int(results[0])

    @_translated
    async def lock(self, env: str, plan_id: str, owner: str, ms: int) -> bool:
        return bool(
            await self.redis.set(self.keyspace.plan_lock(env, plan_id), owner, nx=True, px=ms)
        )

    @_translated
    async def unlock(self, env: str, plan_id: str, owner: str) -> None:
        await self._unlock(keys=[self.keyspace.plan_lock(env, plan_id)], args=[owner])

    @_translated
    async def add_reading(self, env: str, plan_id: str, reading: dict[str, Any]) -> None:
        """Append one guard reading, keeping the last :data:`MAX_READINGS`."""
        key = self.keyspace.plan_readings(env, plan_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(key, orjson.dumps(reading))
            pipe.ltrim(key, -MAX_READINGS, -1)
            await pipe.execute()

    @_translated
    async def reading_due(self, env: str, plan_id: str, every_ms: int) -> bool:
        """True for the first caller of the fleet in each ``every_ms`` (``SET NX PX``)."""
        key = self.keyspace.plan_reading_tick(env, plan_id)
        return bool(await self.redis.set(key, "1", nx=True, px=every_ms))

    @_translated
    async def readings(self, env: str, plan_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.keyspace.plan_readings(env, plan_id), 0, -1)
        return [orjson.loads(r) for r in raw]

    @_translated
    async def templates(self, env: str) -> dict[str, list[dict[str, Any]]]:
        raw = await self.redis.hgetall(self.keyspace.plan_templates(env))
        return {as_str(k): orjson.loads(v) for k, v in raw.items()}

    @_translated
    async def put_template(self, env: str, name: str, stages: list[dict[str, Any]]) -> None:
        await self.redis.hset(self.keyspace.plan_templates(env), name, orjson.dumps(stages))
