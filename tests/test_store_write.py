"""The single-document write path (store/write.py) against a real Redis.

Each process keeps the bytes of the documents it last read or wrote and writes
from them in one round trip; the script checks them by SHA-1.  Two ``Store``
objects on one Redis stand for two server processes: whatever one of them
remembers, a write of the other must never be built upon an old copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from flagwire_server.store.doccache import DocCache
from flagwire_server.store.documents import Conflict, NotFound, Store
from tests.support.polling import poll
from tests.support.proxy import FaultProxy
from tests.support.redisproc import RedisProcess
from tests.support.stores import open_store

ENV = "production"


def flag(key: str = "checkout", **extra: Any) -> dict[str, Any]:
    return {"key": key, "variations": [True, False], "fallthrough": {"variation": 1}, **extra}


@pytest.fixture
async def pair(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores (two server processes) sharing one Redis and prefix."""
    async with open_store(redis_url, redis_prefix) as a:
        other = aioredis.Redis.from_url(redis_url)
        try:
            yield a, Store(other, redis_prefix)
        finally:
            await other.aclose()


async def test_a_patch_builds_on_what_is_stored_not_on_this_process_copy(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    await a.put(ENV, "flag", flag(), actor="a")
    await b.patch(ENV, "flag", "checkout", {"name": "from b"}, actor="b")
    res = await a.patch(ENV, "flag", "checkout", {"on": True}, actor="a")
    assert res.doc is not None
    assert (res.doc["name"], res.doc["on"], res.version) == ("from b", True, 3)
    assert res.previous is not None
    assert res.previous["name"] == "from b"
    state = await a.load_env(ENV)
    assert state.flags["checkout"] == res.doc
    history = await a.history(ENV, "flag", "checkout")
    assert [d["version"] for d in history] == [2, 1]


async def test_refusals_and_no_ops_are_decided_on_what_is_stored(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    await a.put(ENV, "flag", flag(), actor="a")  # a remembers version 1, off
    await b.patch(ENV, "flag", "checkout", {"on": True}, actor="b")
    # By a's copy the expected version is wrong and "on" is a change; by Redis neither.
    same = await a.patch(ENV, "flag", "checkout", {"on": True}, actor="a", expected=2)
    assert (same.changed, same.version) == (False, 2)
    with pytest.raises(Conflict) as conflict:
        await a.patch(ENV, "flag", "checkout", {"on": False}, actor="a", expected=1)
    assert conflict.value.current_version == 2
    # By a's copy this changes nothing; by Redis it does.
    await b.patch(ENV, "flag", "checkout", {"on": False}, actor="b")
    off = await a.patch(ENV, "flag", "checkout", {"on": False}, actor="a")
    assert off.changed is False
    back = await a.patch(ENV, "flag", "checkout", {"on": True}, actor="a")
    assert (back.changed, back.version) == (True, 4)
    # Deleted elsewhere: a patch is a 404, a create succeeds and continues the versions.
    await b.delete(ENV, "flag", "checkout", actor="b")
    with pytest.raises(NotFound):
        await a.patch(ENV, "flag", "checkout", {"on": False}, actor="a")
    made = await a.put(ENV, "flag", flag(), actor="a", create=True)
    assert made.version == 5


async def test_a_recreated_environment_is_not_mistaken_for_the_old_one(
    pair: tuple[Store, Store],
) -> None:
    a, b = pair
    await a.create_env("staging")
    await a.put("staging", "flag", flag(name="old"), actor="a")  # a remembers version 1
    await b.delete_env("staging")
    await b.create_env("staging")
    await b.put("staging", "flag", flag(name="new", on=True), actor="b")  # version 1 again
    res = await a.patch("staging", "flag", "checkout", {"description": "d"}, actor="a")
    assert res.doc is not None
    assert (res.doc["name"], res.doc["on"], res.version) == ("new", True, 2)


async def test_one_round_trip_per_write_once_the_document_is_known(
    private_redis: RedisProcess,
) -> None:
    client = aioredis.Redis.from_url(private_redis.url)
    watcher = aioredis.Redis.from_url(private_redis.url)
    try:
        store = Store(client, "fw")
        await store.create_env(ENV)
        await store.put(ENV, "flag", flag(), actor="a")
        sent: list[str] = []
        async with watcher.monitor() as monitor:
            await client.echo("start")
            while not (await monitor.next_command())["command"].startswith("ECHO"):
                pass
            for i in range(10):
                await store.patch(ENV, "flag", "checkout", {"on": i % 2 == 0}, actor="a")
            await client.echo("end")
            while True:
                seen = await monitor.next_command()
                if seen["command"].startswith("ECHO"):
                    break
                if seen["client_type"] != "lua":  # the script's own commands are not round trips
                    sent.append(seen["command"].split(" ", 1)[0].upper())
        assert sent == ["EVALSHA"] * 10  # no read before each script
        # A Redis that lost its scripts (restarted, SCRIPT FLUSH) is given it again.
        await client.script_flush()
        await store.patch(ENV, "flag", "checkout", {"on": True}, actor="a")
        state = await store.load_env(ENV)
        assert (state.version, state.flags["checkout"]["version"]) == (12, 12)
    finally:
        await client.aclose()
        await watcher.aclose()


async def test_writes_to_different_flags_do_not_wait_for_each_other(
    private_redis: RedisProcess,
) -> None:
    async with FaultProxy("127.0.0.1", private_redis.port) as proxy:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        writes: list[asyncio.Task[Any]] = []
        try:
            store = Store(client, "fw")
            await store.create_env(ENV)
            for key in ("a", "b"):
                await store.put(ENV, "flag", flag(key), actor="t")
            assert proxy.accepted == 1  # one write at a time: one pooled connection
            proxy.pause()  # every command now waits in the proxy, unanswered
            writes += [
                asyncio.create_task(store.patch(ENV, "flag", k, {"on": on}, actor="t"))
                for k, on in (("a", True), ("b", True), ("a", False))
            ]
            # The write to b is sent while the first write to a is still unanswered: it took
            # a second connection instead of waiting (a lock over all writes would hold it).
            await poll(lambda: proxy.accepted == 2, 10, "the write to b in flight beside a's")
            assert not any(w.done() for w in writes)
            proxy.resume()
            a1, b, a2 = await asyncio.gather(*writes)
            # The two writes to a were serialised: both applied, one after the other.
            assert (a1.version, a2.version, b.version) == (2, 3, 2)
            assert a2.previous is not None
            assert a2.previous["on"] is True
            state = await store.load_env(ENV)
            assert state.flags["a"]["on"] is False
        finally:
            proxy.resume()
            for w in writes:
                w.cancel()
            await asyncio.gather(*writes, return_exceptions=True)
            await client.aclose()


def test_the_cache_is_bounded_in_bytes() -> None:
    cache = DocCache(max_bytes=1000)
    for i in range(50):
        cache.put(("e", "flag", f"k{i}"), b"x" * 100)
    assert cache.size <= 1000
    assert len(cache) == 10
    assert cache.get(("e", "flag", "k49")) is not None
    assert cache.get(("e", "flag", "k0")) is None
    cache.put(("e", "flag", "big"), b"x" * 600)  # over a quarter of the bound: not kept
    assert cache.get(("e", "flag", "big")) is None
    cache.put(("e", "flag", "k49"), None)
    assert cache.get(("e", "flag", "k49")) is None
    assert cache.size == 900
