"""Archive and restore are one atomic write each, against a real Redis.

A reader that looks at the live flags and the archive in one MULTI/EXEC (a
consistent view) must find every flag in exactly one of the two, whatever it
catches while flags are archived and restored over and over; with the two-step
archive (save, then delete) and restore (write, then forget) it caught flags in
both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from flagwire_server.store.archive import FlagArchive
from flagwire_server.store.documents import NotFound, Store
from tests.support.stores import open_store

ENV = "arch"


def flag(key: str) -> dict[str, Any]:
    return {"key": key, "variations": [True, False], "fallthrough": {"variation": 1}}


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    async with open_store(redis_url, redis_prefix) as s:
        await s.create_env(ENV)
        yield s


async def test_a_flag_is_always_live_or_archived_never_both_nor_neither(
    store: Store, redis_url: str
) -> None:
    keys = [f"f{i}" for i in range(4)]
    for key in keys:
        await store.put(ENV, "flag", flag(key), actor="t")
    archive = FlagArchive(store)
    docs, saved = store.keyspace.docs(ENV, "flag"), store.keyspace.archive(ENV)
    seen: list[tuple[set[str], set[str]]] = []
    stop = asyncio.Event()

    async def read(reader: aioredis.Redis) -> None:
        while not stop.is_set():
            pipe = reader.pipeline(transaction=True)  # MULTI/EXEC: one consistent view
            pipe.hkeys(docs)
            pipe.hkeys(saved)
            live, kept = await pipe.execute()
            seen.append(({k.decode() for k in live}, {k.decode() for k in kept}))

    async def churn(key: str) -> None:
        for _ in range(40):
            await archive.archive(ENV, key, actor="t")
            await archive.restore(ENV, key, actor="t")

    readers = [aioredis.Redis.from_url(redis_url) for _ in range(3)]
    try:
        reading = [asyncio.create_task(read(r)) for r in readers]
        await asyncio.gather(*(churn(k) for k in keys))
        stop.set()
        await asyncio.gather(*reading)
    finally:
        for r in readers:
            await r.aclose()
    assert len(seen) > 100  # the readers did look while the flags moved
    assert any(kept for _, kept in seen)  # and caught some archived
    bad = [(live, kept) for live, kept in seen if live & kept or (live | kept) != set(keys)]
    assert not bad, f"{len(bad)} of {len(seen)} views show a flag in both or neither: {bad[0]}"


async def test_archive_keeps_the_deleted_document_and_restore_writes_it_back(
    store: Store,
) -> None:
    first = await store.put(ENV, "flag", flag("gone"), actor="t")
    await store.patch(ENV, "flag", "gone", {"on": True}, actor="t")
    archive = FlagArchive(store)
    res = await archive.archive(ENV, "gone", actor="alice")
    assert res.doc is None
    [entry] = await archive.list(ENV)
    assert entry["key"] == "gone"
    assert entry["flag"]["version"] == first.version + 1
    assert entry["flag"]["on"] is True
    with pytest.raises(NotFound):
        await store.get_doc(ENV, "flag", "gone")

    back = await archive.restore(ENV, "gone", actor="bob")
    assert back.doc is not None
    assert back.doc["on"] is True
    assert back.version == first.version + 2  # a new version, after the archived one
    assert await archive.list(ENV) == []
    with pytest.raises(NotFound):  # nothing archived any more
        await archive.restore(ENV, "gone", actor="bob")
    with pytest.raises(NotFound):
        await archive.archive(ENV, "never", actor="t")
    assert await archive.list(ENV) == []


async def test_restore_refuses_when_the_archived_copy_changed_after_it_was_read(
    store: Store,
) -> None:
    await store.put(ENV, "flag", flag("moved"), actor="t")
    archive = FlagArchive(store)
    await archive.archive(ENV, "moved", actor="t")
    raw = await store.redis.hget(store.keyspace.archive(ENV), "moved")
    doc = flag("moved")
    version = (await store.get_env(ENV))["version"]
    # Another restore and archive happened between this one's read and its write.
    await store.redis.hset(store.keyspace.archive(ENV), "moved", orjson.dumps({**doc, "on": False}))
    with pytest.raises(NotFound):
        await store.put(ENV, "flag", doc, actor="t", key="moved", archived=raw)
    assert (await store.get_env(ENV))["version"] == version  # nothing was written
    with pytest.raises(NotFound):
        await store.get_doc(ENV, "flag", "moved")
