"""The store's identity and its one-time bootstrap lock, and waiting for Redis to answer.

``keyspace.store`` holds ``epoch`` and ``created_at``, set once by the first
server start: every process compares it with the epoch it started with, and
one that vanished or changed means Redis came back empty or is another
store (a *store reset*, see :mod:`flagwire_server.stream.reader`).
``keyspace.bootstrap_lock`` makes N processes starting on an empty store
bootstrap it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Final

import redis.asyncio as aioredis

from flagwire_server.store.keyspace import Keyspace
from flagwire_server.store.migrate import migrate_v1
from flagwire_server.store.redisurl import connect

__all__ = ["StoreIdentity", "open_client", "safe_url"]

log = logging.getLogger("flagwire.store")

LOCK_TTL_MS: Final = 30_000


def safe_url(url: str) -> str:
    """``url`` with its credentials masked, fit for a log line."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


async def open_client(url: str, patience: float = 30.0) -> aioredis.Redis:
    """A client for ``url`` once Redis answers a PING, waiting up to ``patience`` seconds.

    Raises:
        RuntimeError: Redis did not answer in time (the message names the URL, masked).
    """
    redis = connect(url)
    deadline = time.monotonic() + patience
    while True:
        try:
            await redis.ping()
            return redis
        except Exception as exc:
            if time.monotonic() >= deadline:
                await redis.aclose()
                raise RuntimeError(f"Redis at {safe_url(url)} did not answer: {exc}") from None
            log.warning("waiting for Redis", extra={"url": safe_url(url), "error": str(exc)})
            await asyncio.sleep(0.5)


class StoreIdentity:
    """Reads and sets the store's identity; answers whether Redis is there at all."""

    def __init__(self, redis: aioredis.Redis, keyspace: Keyspace) -> None:
        self.redis = redis
        self.ks = keyspace

    async def migrate_v1(self) -> dict[str, int]:
        """Bring a store written by flagwire v1 to today's layout (idempotent; see ``migrate``)."""
        return await migrate_v1(self.redis, self.ks)

    async def ping(self) -> None:
        """Raises when Redis does not answer."""
        await self.redis.ping()

    async def exists(self) -> bool:
        """True when the store was bootstrapped (and has not lost its identity since)."""
        return bool(await self.redis.hexists(self.ks.store, "epoch"))

    async def create(self) -> str:
        """Give the store a new identity; returns its epoch."""
        epoch = secrets.token_hex(8)
        await self.redis.hset(
            self.ks.store,
            mapping={
                "epoch": epoch,
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )
        return epoch

    @contextlib.asynccontextmanager
    async def bootstrap_lock(self, patience: float = 30.0) -> AsyncIterator[None]:
        """Hold the bootstrap lock (expires after 30 s, should its holder die).

        Raises:
            RuntimeError: another process held it for longer than ``patience``.
        """
        token = secrets.token_hex(8)
        deadline = time.monotonic() + patience
        while not await self.redis.set(self.ks.bootstrap_lock, token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() > deadline:
                raise RuntimeError("another process holds the bootstrap lock for too long")
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            if await self.redis.get(self.ks.bootstrap_lock) == token.encode():
                await self.redis.delete(self.ks.bootstrap_lock)
