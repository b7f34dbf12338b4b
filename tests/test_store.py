"""The Redis store against a real Redis: atomic writes, versions, history, audit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from flagwire.core.errors import ValidationError
from flagwire.core.protocol import Delete, Patch, decode, encode
from flagwire_server.store.documents import (
    AlreadyExists,
    Conflict,
    NotFound,
    Store,
    StoreCorrupt,
    StoreUnavailable,
    merge_patch,
)
from tests.support.stores import dump, open_store


def flag(key: str = "checkout", **extra: Any) -> dict[str, Any]:
    return {"key": key, "variations": [True, False], "fallthrough": {"variation": 1}, **extra}


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    async with open_store(redis_url, redis_prefix) as s:
        yield s


async def test_env_lifecycle(store: Store) -> None:
    env = await store.get_env("production")
    assert env["version"] == 0
    assert len(env["epoch"]) == 16
    with pytest.raises(AlreadyExists):
        await store.create_env("production")
    assert await store.ensure_env("staging", "Staging") is True
    assert await store.ensure_env("staging") is False
    assert [e["key"] for e in await store.list_envs()] == ["production", "staging"]
    with pytest.raises(ValidationError):
        await store.create_env("Bad{env}")
    await store.put("staging", "flag", flag(), actor="t")
    await store.delete_env("staging")
    assert [e["key"] for e in await store.list_envs()] == ["production"]
    assert not [k async for k in store.redis.scan_iter(match=store.key("staging", "*"))]
    with pytest.raises(NotFound):
        await store.delete_env("staging")
    with pytest.raises(NotFound):
        await store.load_env("staging")
    fresh = await store.create_env("staging")
    assert fresh["version"] == 0


async def test_write_is_one_change(store: Store) -> None:
    res = await store.put("production", "flag", flag(), actor="alice", create=True)
    assert (res.version, res.env_version) == (1, 1)
    assert res.doc is not None
    assert res.doc["updated_by"] == "alice"
    assert res.doc["on"] is False
    state = await store.load_env("production")
    assert state.version == 1
    assert state.flags["checkout"] == res.doc
    entries = await store.redis.xrange(store.key("production", "changes"))
    assert [e[0] for e in entries] == [b"1-0"]
    fields = entries[0][1]
    msg = decode(fields[b"m"])
    assert msg == Patch(kind="flag", key="checkout", data=res.doc, version=1)
    assert fields[b"m"] == encode(msg)  # byte-identical to the protocol's own encoding
    assert fields[b"k"] == b"checkout"
    assert fields[b"a"] == b"alice"
    assert int(fields[b"t"]) > 0

    res2 = await store.patch("production", "flag", "checkout", {"on": True}, actor="bob")
    assert (res2.version, res2.env_version) == (2, 2)
    res3 = await store.delete("production", "flag", "checkout", actor="bob", expected=2)
    assert res3.doc is None
    assert res3.env_version == 3
    last = (await store.redis.xrange(store.key("production", "changes")))[-1]
    assert decode(last[1][b"m"]) == Delete(kind="flag", key="checkout", version=3)
    # Versions continue after a delete: a version number never names two documents.
    res4 = await store.put("production", "flag", flag(), actor="bob", create=True)
    assert res4.version == 3


async def test_expected_versions_and_modes(store: Store) -> None:
    await store.put("production", "flag", flag(), actor="a", create=True)
    with pytest.raises(AlreadyExists) as exists:
        await store.put("production", "flag", flag(), actor="a", create=True)
    assert exists.value.current_version == 1
    before = await dump(store)
    with pytest.raises(Conflict) as conflict:
        await store.put("production", "flag", flag(on=True), actor="a", expected=7)
    assert conflict.value.current_version == 1
    with pytest.raises(NotFound):
        await store.patch("production", "flag", "nope", {"on": True}, actor="a")
    with pytest.raises(NotFound):
        await store.put("missing-env", "flag", flag(), actor="a")
    with pytest.raises(ValidationError) as invalid:
        await store.patch(
            "production", "flag", "checkout", {"fallthrough": {"variation": 9}}, actor="a"
        )
    assert any(p.startswith("fallthrough") for p, _ in invalid.value.errors)
    with pytest.raises(ValidationError):
        await store.put("production", "flag", flag("other"), actor="a", key="checkout")
    assert await dump(store) == before  # nothing written by any refused write
    ok = await store.put("production", "flag", flag(on=True), actor="a", expected=1)
    assert ok.version == 2


async def test_concurrent_writers_never_lose_a_version(store: Store) -> None:
    await store.put("production", "flag", flag(), actor="a")
    results = await asyncio.gather(
        *(
            store.patch("production", "flag", "checkout", {"name": f"n{i}"}, actor="a")
            for i in range(20)
        ),
        return_exceptions=True,
    )
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(done) == 20  # in-process writers queue; others would retry
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    state = await store.load_env("production")
    changes = await store.redis.xrange(store.key("production", "changes"))
    assert [int(e[0].split(b"-")[0]) for e in changes] == list(range(1, state.version + 1))
    assert state.flags["checkout"]["version"] == state.version


async def test_history_restore_and_copy(store: Store) -> None:
    for i in range(3):
        await store.put("production", "flag", flag(name=f"v{i + 1}"), actor="a")
    hist = await store.history("production", "flag", "checkout")
    assert [d["version"] for d in hist] == [2, 1]
    res = await store.restore("production", "flag", "checkout", 1, actor="b")
    assert res.version == 4
    assert res.doc is not None
    assert res.doc["name"] == "v1"
    with pytest.raises(NotFound):
        await store.restore("production", "flag", "checkout", 99, actor="b")
    await store.create_env("staging")
    copied = await store.copy("production", "flag", "checkout", "staging", actor="c")
    assert copied.version == 1
    assert copied.doc is not None
    assert copied.doc["name"] == "v1"
    entries, _ = await store.audit("staging")
    assert entries[0].action == "copy"


async def test_audit_pagination(store: Store) -> None:
    for i in range(7):
        await store.put("production", "flag", flag(f"f{i}"), actor="a")
    page, cursor = await store.audit("production", limit=3)
    keys = [e.key for e in page]
    while cursor:
        more, cursor = await store.audit("production", limit=3, before=cursor)
        keys += [e.key for e in more]
    assert keys == [f"f{i}" for i in reversed(range(7))]
    assert page[0].after is not None
    assert page[0].before is None
    assert page[0].action == "create"


async def test_segments(store: Store) -> None:
    res = await store.put(
        "production", "segment", {"key": "beta", "included": ["u1"]}, actor="a", create=True
    )
    assert res.env_version == 1
    await store.patch("production", "segment", "beta", {"included": ["u1", "u2"]}, actor="a")
    state = await store.load_env("production")
    assert state.segments["beta"]["included"] == ["u1", "u2"]
    assert [d["version"] for d in await store.history("production", "segment", "beta")] == [1]


async def test_script_error_leaves_nothing_half_written(store: Store) -> None:
    await store.put("production", "flag", flag(), actor="a")
    # A change log entry ahead of the version makes the XADD fail: it goes first.
    await store.redis.xadd(store.key("production", "changes"), {"m": "x"}, id="99-0")
    before = await dump(store)
    with pytest.raises(StoreCorrupt):
        await store.put("production", "flag", flag(on=True), actor="a")
    assert await dump(store) == before
    # A key of the wrong type is refused before any write.
    await store.redis.delete(store.key("production", "changes"))
    await store.redis.set(store.key("production", "audit"), "oops")
    before = await dump(store)
    with pytest.raises(StoreCorrupt):
        await store.put("production", "flag", flag(on=True), actor="a")
    assert await dump(store) == before


async def test_unavailable_is_translated() -> None:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(StoreUnavailable):
        await Store(client, "x").load_env("production")
    await client.aclose()


def test_merge_patch_rfc7386_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert orjson.dumps(merge_patch([1], {"a": {"b": None}})) == b'{"a":{}}'


async def test_interrupted_delete_then_create_starts_empty(store: Store) -> None:
    await store.create_env("staging")
    await store.put("staging", "flag", flag(), actor="a")
    # A delete that stopped right after removing the meta (a crash) ...
    await store.redis.unlink(store.key("staging", "meta"))
    with pytest.raises(NotFound):
        await store.get_env("staging")
    # ... leaves nothing a new environment of the same name would inherit.
    fresh = await store.create_env("staging")
    assert fresh["version"] == 0
    state = await store.load_env("staging")
    assert (state.version, state.flags) == (0, {})
    assert await store.redis.xlen(store.key("staging", "changes")) == 0
    await store.delete_env("staging")
    assert "staging" not in [e["key"] for e in await store.list_envs()]


async def test_snapshot_size_is_kept_with_the_version_and_counted_once_for_v1(store: Store) -> None:
    async def counted() -> int:
        total = 0
        for kind in ("flag", "segment"):
            raw = await store.redis.hgetall(store.keyspace.docs("production", kind))  # type: ignore[arg-type]
            total += sum(len(k) + len(v) + 4 for k, v in raw.items())
        return total

    meta = store.keyspace.meta("production")
    await store.put("production", "flag", flag("a"), actor="t")
    await store.put("production", "segment", {"key": "s", "included": ["u1"]}, actor="t")
    await store.patch("production", "flag", "a", {"on": True}, actor="t")
    assert int(await store.redis.hget(meta, "bytes")) == await counted()
    # A store written by v1 has no count: the next write makes it from the documents.
    await store.redis.hdel(meta, "bytes")
    await store.put("production", "flag", flag("b"), actor="t")
    await store.delete("production", "flag", "a", actor="t")
    assert int(await store.redis.hget(meta, "bytes")) == await counted()


def test_stream_cursors_older_than() -> None:
    from flagwire_server.store.types import stream_before

    assert stream_before(None) == "+"
    assert stream_before("5-3") == "5-2"
    assert stream_before("5-0") == f"4-{2**64 - 1}"
    assert stream_before("0-0") is None
    assert stream_before("99999999999999999999-0") == "+"


async def test_audit_before_the_first_entry_is_empty(store: Store) -> None:
    await store.put("production", "flag", flag("a"), actor="t")
    assert await store.audit("production", 10, "0-0") == ([], None)
    assert await store.audit("production", 10, "1-99999999999999999999") == ([], None)
