"""Console sessions in Redis: stored by hash, watched so sign-out closes streams.

Why hashes: a copy of the store (a dump, an append-only file) must not hold
anything that signs in.  A session is stored under ``P:sys:session:<sha256(id)>``;
the id itself lives only in the user's signed cookie, and the session's CSRF
token is derived from the id (``sessions.py``), so neither is in Redis.

Why a watcher: a console stream is authenticated once, at its handshake.  When
the session ends — signed out on any instance, or expired — its streams must
close within a second, as streams of a revoked API key do.  Sign-out bumps
``P:sys:sessions:version``; every instance polls it (like the key ring's) and
checks the sessions its open streams belong to, and also re-checks them every
few seconds so expiry is noticed too.

Only this module talks to Redis about sessions; ``sessions.py`` keeps
the HTTP side (cookies, signing, CSRF).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from flagwire_server.background import stop_requested
from flagwire_server.store.keyspace import Keyspace

__all__ = ["SessionStore", "session_hash"]

log = logging.getLogger("flagwire.sessions")

#: Polls between checks of every watched session even when no sign-out was seen (expiry).
_FULL_CHECK_EVERY: Final = 20


def session_hash(sid: str) -> str:
    """The name a session is stored under: SHA-256 of its 256-bit random id."""
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionStore:
    """Console sessions of one Redis, and the watcher that ends their streams.

    Args:
        redis: an asyncio Redis client.
        prefix: the key prefix ``P``.
        poll_interval: seconds between checks of ``P:sys:sessions:version``.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "fw", *, poll_interval: float = 0.25):
        self.redis = redis
        self.keyspace = Keyspace(prefix)
        self.poll_interval = poll_interval
        self._watched: dict[str, set[Callable[[], None]]] = {}
        self._dirty = False
        self._version: Any = None
        self._task: asyncio.Task[None] | None = None

    # --- records ----------------------------------------------------------------

    async def create(self, sid_hash: str, data: dict[str, Any], ttl: int) -> None:
        await self.redis.set(self.keyspace.session(sid_hash), orjson.dumps(data), ex=ttl)

    async def get(self, sid_hash: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keyspace.session(sid_hash))
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def delete(self, sid_hash: str) -> bool:
        """End a session everywhere; True when it existed."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keyspace.session(sid_hash))
            pipe.incr(self.keyspace.sessions_version)
            gone, _ = await pipe.execute()
        self._end(sid_hash)  # this instance's streams need not wait for the next poll
        return bool(gone)

    # --- streams of a session -----------------------------------------------------

    def watch(self, sid_hash: str, on_end: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_end()`` once the session ends; returns the function that stops watching.

        The next poll checks the session even without a sign-out, so one that
        ended between the caller's read and this call is noticed too.
        """
        self._watched.setdefault(sid_hash, set()).add(on_end)
        self._dirty = True

        def unwatch() -> None:
            callbacks = self._watched.get(sid_hash)
            if callbacks is not None:
                callbacks.discard(on_end)
                if not callbacks:
                    del self._watched[sid_hash]

        return unwatch

    def _end(self, sid_hash: str) -> None:
        for cb in list(self._watched.pop(sid_hash, ())):
            try:
                cb()
            except Exception:
                log.exception("sessions: closing a stream of an ended session failed")

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="flagwire-sessions")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        polls = 0
        while not stop_requested():
            await asyncio.sleep(self.poll_interval)
            polls += 1
            try:
                version = await self.redis.get(self.keyspace.sessions_version)
                if version != self._version or self._dirty or polls % _FULL_CHECK_EVERY == 0:
                    self._version, self._dirty = version, False
                    await self.check()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                log.debug("sessions: poll failed: %s", exc)
            except Exception:  # a bug here must not stop sign-outs for good
                log.exception("sessions: poll failed")

    async def check(self) -> None:
        """End the watched sessions that are gone from Redis."""
        hashes = list(self._watched)
        if not hashes:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for h in hashes:
                pipe.exists(self.keyspace.session(h))
            alive = await pipe.execute()
        for h, exists in zip(hashes, alive, strict=True):
            if not exists:
                self._end(h)
