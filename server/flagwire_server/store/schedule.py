"""Scheduled changes in Redis: records, the due index and the per-change lease.

Why a lease in Redis: every server of a fleet runs the scheduler, and a change
must be executed by exactly one of them, with no extra service.  Per
environment (one hash tag, so the scripts work on a cluster):

* ``P:{env}:schedule``       HASH id -> the change (JSON), kept after it ran;
* ``P:{env}:schedule:due``   ZSET id -> due ms, only changes not yet finished;
* ``P:{env}:schedule:lease`` HASH id -> ``owner until_ms`` while a server runs one.

A claim (``schedule_claim.lua``) takes the due changes whose lease is free or
expired; a finish (``schedule_finish.lua``) records the outcome only while the
caller still holds the lease; edit and cancel (``schedule_edit.lua``) refuse a
change that finished or that a server is running.  The time is the caller's
(an argument, not Redis ``TIME``) so tests can drive it.
"""

from __future__ import annotations

import secrets
from typing import Any, Final, Literal

import orjson
import redis.asyncio as aioredis

from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import Conflict, NotFound, _loads, _script, _translated, as_str

__all__ = ["MAX_CLAIM", "ScheduleStore"]

#: Changes one claim takes at most; a server claims again once it ran them, so a
#: burst of changes due at once is shared by the servers that woke up for it.
MAX_CLAIM: Final = 4


class ScheduleStore:
    """The scheduled changes of every environment under one key prefix."""

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self._claim = redis.register_script(_script("schedule_claim"))
        self._finish = redis.register_script(_script("schedule_finish"))
        self._edit = redis.register_script(_script("schedule_edit"))

    def _keys(self, env: str) -> list[str]:
        ks = self.keyspace
        return [ks.schedule(env), ks.schedule_due(env), ks.schedule_lease(env)]

    @staticmethod
    def new_id() -> str:
        return f"sch_{secrets.token_hex(6)}"

    @_translated
    async def add(self, env: str, record: dict[str, Any]) -> None:
        """Store a new pending change (``record`` has ``id`` and ``due_ms``)."""
        records, due, _lease = self._keys(env)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(records, record["id"], orjson.dumps(record))
            pipe.zadd(due, {record["id"]: int(record["due_ms"])})
            await pipe.execute()

    @_translated
    async def get(self, env: str, change_id: str, *, now_ms: int | None = None) -> dict[str, Any]:
        """One change, with ``status`` ``running`` while a live lease holds it."""
        records, _due, lease_key = self._keys(env)
        raw, lease = await self.redis.hget(records, change_id), None
        record = _loads(raw)
        if record is None:
            raise NotFound(f"scheduled change {change_id[:40]!r} does not exist in {env!r}")
        if record.get("status") == "pending" and now_ms is not None:
            lease = await self.redis.hget(lease_key, change_id)
        return _with_lease(record, lease, now_ms)

    @_translated
    async def list_changes(self, env: str, *, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Every change of ``env``, by due time."""
        records, _due, lease_key = self._keys(env)
        raw = await self.redis.hgetall(records)
        leases = {as_str(k): as_str(v) for k, v in (await self.redis.hgetall(lease_key)).items()}
        out = [
            _with_lease(rec, leases.get(str(rec.get("id"))), now_ms)
            for rec in (_loads(v) for v in raw.values())
            if rec is not None
        ]
        return sorted(out, key=lambda r: (int(r.get("due_ms", 0)), str(r.get("id"))))

    @_translated
    async def update(
        self, env: str, record: dict[str, Any], *, now_ms: int, cancel: bool = False
    ) -> None:
        """Replace (or cancel) a change that has not started.

        Raises:
            NotFound: no such change.
            Conflict: it already ran, was cancelled, or a server is running it now.
        """
        res = as_str(
            await self._edit(
                keys=self._keys(env),
                args=[
                    record["id"],
                    orjson.dumps(record),
                    "" if cancel else int(record["due_ms"]),
                    now_ms,
                ],
            )
        )
        if res == "missing":
            raise NotFound(f"scheduled change {record['id']!r} does not exist in {env!r}")
        if res == "final":
            raise Conflict(f"scheduled change {record['id']!r} has already finished", 0)
        if res == "running":
            raise Conflict(f"scheduled change {record['id']!r} is being executed now", 0)

    @_translated
    async def delete(self, env: str, ids: list[str]) -> int:
        """Delete finished changes (retention); how many there were."""
        records, due, lease = self._keys(env)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(records, *ids)
            pipe.zrem(due, *ids)
            pipe.hdel(lease, *ids)
            deleted, _, _ = await pipe.execute()
        return int(deleted)

    @_translated
    async def claim(self, env: str, *, owner: str, now_ms: int, lease_ms: int) -> list[str]:
        """The ids of due changes this ``owner`` now holds a lease on."""
        _records, due, lease = self._keys(env)
        ids = await self._claim(keys=[due, lease], args=[now_ms, owner, lease_ms, MAX_CLAIM])
        return [as_str(i) for i in ids or []]

    @_translated
    async def finish(self, env: str, record: dict[str, Any], *, owner: str) -> bool:
        """Record a final outcome; False when another server holds the lease now."""
        done = await self._finish(
            keys=self._keys(env), args=[record["id"], owner, orjson.dumps(record)]
        )
        return bool(int(done))

    @_translated
    async def annotate(self, env: str, record: dict[str, Any]) -> None:
        """Rewrite a finished change (its propagation, measured after the write)."""
        await self.redis.hset(self.keyspace.schedule(env), record["id"], orjson.dumps(record))

    @_translated
    async def next_due_ms(self, env: str) -> int | None:
        """When this server should next try to claim in ``env``.

        The earliest due time among the first pending changes, where a change
        another server holds counts at its lease's end: that server is running
        it, and waking up before its lease ends would only spin.
        """
        _records, due_key, lease_key = self._keys(env)
        first: list[Any] = list(await self.redis.zrange(due_key, 0, 31, withscores=True))
        if not first:
            return None
        leases = await self.redis.hmget(lease_key, [pair[0] for pair in first])
        times = []
        for pair, lease in zip(first, leases, strict=True):
            until = as_str(lease).rpartition(" ")[2] if lease is not None else ""
            score = int(pair[1])
            times.append(max(score, int(until)) if until.isdigit() else score)
        return min(times)


def _with_lease(record: dict[str, Any], lease: Any, now_ms: int | None) -> dict[str, Any]:
    status: Literal["running"] | None = None
    if lease is not None and now_ms is not None and record.get("status") == "pending":
        owner, _, until = as_str(lease).rpartition(" ")
        if until.isdigit() and int(until) > now_ms:
            status = "running"
            record = {**record, "executing_on": owner}
    return {**record, "status": status} if status else record
