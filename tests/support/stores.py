"""A :class:`Store` on the shared Redis under a test's own prefix, and a dump of it.

Why a context manager and not a shared fixture: the store tests each declare
their ``store`` fixture in two lines around :func:`open_store`, so a reader
sees where it comes from, and no fixture of that common name is imposed on
every test module through conftest.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from flagwire_server.store.documents import Store

__all__ = ["dump", "open_store"]


@contextlib.asynccontextmanager
async def open_store(redis_url: str, prefix: str, env: str = "production") -> AsyncIterator[Store]:
    """A store with ``env`` created; every key under ``prefix`` is deleted afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    s = Store(client, prefix)
    await s.create_env(env)
    try:
        yield s
    finally:
        async for k in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(k)
        await client.aclose()


async def dump(store: Store) -> dict[bytes, Any]:
    """Every key of the store and its content, to compare before/after."""
    r = store.redis
    out: dict[bytes, Any] = {}
    async for k in r.scan_iter(match=f"{store.prefix}:*"):
        t = await r.type(k)
        if t == b"hash":
            out[k] = await r.hgetall(k)
        elif t == b"list":
            out[k] = await r.lrange(k, 0, -1)
        elif t == b"stream":
            out[k] = await r.xrange(k)
        else:
            out[k] = await r.get(k)
    return out
