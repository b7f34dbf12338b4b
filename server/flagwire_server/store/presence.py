"""Which server processes are alive, how many streams each holds, and from which version.

Every process heartbeats in ``keyspace.instances`` (ZSET, score = ms, every
second) and publishes its open-stream count per environment in
``keyspace.conns(env)`` (HASH instance → count).  When it loads an
environment it records the version it loaded at in ``keyspace.floors(env)``
(instance → version): it fans out, and must report acknowledgements of,
later versions only.  A process whose heartbeat is older than
:data:`LIVE_MS` counts as dead.  :mod:`flagwire_server.store.acks` reads
these to say when a change is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Final

import redis.asyncio as aioredis
import redis.exceptions

from flagwire_server.background import stop_requested
from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.types import StoreUnavailable, as_str

__all__ = ["HEARTBEAT_S", "LIVE_MS", "Presence"]

HEARTBEAT_S: Final = 1.0
#: An instance whose heartbeat is older than this is dead.
LIVE_MS: Final = 3000
#: Heartbeats older than this are removed from the ZSET.
FORGET_MS: Final = 3_600_000


class Presence:
    """This process's heartbeat, stream counts and floors; every process's liveness.

    Args:
        redis: the shared client.
        keyspace: where the keys are.
        instance_id: this process's id.
        connected: open streams of this process by environment (read at each heartbeat).
        on_error: told of a failed heartbeat (``"heartbeat"``, the exception).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keyspace: Keyspace,
        instance_id: str,
        connected: Callable[[], dict[str, int]] = dict,
        on_error: Callable[[str, BaseException], None] | None = None,
        *,
        interval: float = HEARTBEAT_S,
    ) -> None:
        self.redis = redis
        self.interval = interval
        self.ks = keyspace
        self.instance_id = instance_id
        self.connected = connected
        self.on_error = on_error
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._loop(), name="flagwire-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def beat(self) -> None:
        """Say this process is alive, with its open streams per environment."""
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.ks.instances, {self.instance_id: now})
        pipe.zremrangebyscore(self.ks.instances, "-inf", now - FORGET_MS)
        for env, count in self.connected().items():
            pipe.hset(self.ks.conns(env), self.instance_id, count)
        await pipe.execute()

    async def _loop(self) -> None:
        while not stop_requested():
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except (redis.exceptions.RedisError, OSError) as exc:
                if self.on_error:
                    self.on_error("heartbeat", exc)

    async def withdraw(self, envs: Iterable[str]) -> None:
        """This process is leaving: remove its heartbeat, counts and floors."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.ks.instances, self.instance_id)
        for env in envs:
            pipe.hdel(self.ks.conns(env), self.instance_id)
            pipe.hdel(self.ks.floors(env), self.instance_id)
        await pipe.execute()

    async def set_floor(self, env: str, version: int) -> None:
        """This process loaded ``env`` at ``version``: it reports later versions only.

        Raises:
            StoreUnavailable: Redis did not answer.
        """
        try:
            await self.redis.hset(self.ks.floors(env), self.instance_id, version)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from None

    async def floors(self, env: str) -> dict[str, int]:
        """Instance → the version of ``env`` it loaded at."""
        raw = await self.redis.hgetall(self.ks.floors(env))
        return {as_str(k): int(v) for k, v in raw.items()}

    async def live_instances(self) -> set[str]:
        now = int(time.time() * 1000)
        ids = await self.redis.zrangebyscore(self.ks.instances, now - LIVE_MS, "+inf")
        return {as_str(i) for i in ids}

    async def connected_all(self, env: str) -> int:
        """Connected clients of ``env`` over every live instance (heartbeat-fresh, ~1 s)."""
        live = await self.live_instances()
        raw = await self.redis.hgetall(self.ks.conns(env))
        return sum(int(v) for k, v in raw.items() if as_str(k) in live)
