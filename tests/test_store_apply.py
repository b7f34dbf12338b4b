"""The store's atomic apply (flags as code) against a real Redis: all documents or none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from flagwire.core.errors import ValidationError
from flagwire.core.protocol import Delete, Patch, decode
from flagwire_server.store.apply import MAX_APPLY_DOCUMENTS, ApplyItem
from flagwire_server.store.documents import Conflict, NotFound, Store
from tests.support.stores import dump, open_store


def flag(key: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "variations": [True, False], "fallthrough": {"variation": 1}, **extra}


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    async with open_store(redis_url, redis_prefix) as s:
        yield s


async def changes(store: Store) -> list[Any]:
    raw = await store.redis.xrange(store.keyspace.changes("production"))
    return [(entry_id, decode(fields[b"m"])) for entry_id, fields in raw]


async def test_apply_writes_every_document_with_a_version_and_change_each(store: Store) -> None:
    await store.put("production", "flag", flag("old"), actor="t")
    items = [
        ApplyItem("flag", "a", flag("a", on=True), expected=0),
        ApplyItem("segment", "staff", {"key": "staff", "included": ["u1"]}, expected=0),
        ApplyItem("flag", "old", None, expected=1),
    ]
    res = await store.apply("production", items, actor="ci", name="deploy 1")
    # Segments first, then flags, then deletes: versions 2, 3, 4 after the single write (1).
    assert [(c.kind, c.key, c.action, c.env_version) for c in res.changes] == [
        ("segment", "staff", "create", 2),
        ("flag", "a", "create", 3),
        ("flag", "old", "delete", 4),
    ]
    assert res.env_version == 4
    state = await store.load_env("production")
    assert state.version == 4
    assert set(state.flags) == {"a"}
    assert state.flags["a"]["on"] is True
    assert state.flags["a"]["updated_by"] == "ci"
    assert state.flags["a"]["version"] == 1
    assert state.segments["staff"]["included"] == ["u1"]
    log = await changes(store)
    assert [i for i, _ in log] == [b"1-0", b"2-0", b"3-0", b"4-0"]
    assert isinstance(log[1][1], Patch)
    assert log[1][1].version == 2
    assert isinstance(log[2][1], Patch)
    assert log[2][1].data == state.flags["a"]
    assert isinstance(log[3][1], Delete)
    assert log[3][1].key == "old"
    # One audit entry names the apply and lists its documents.
    entries, _ = await store.audit("production")
    assert entries[0].action == "apply"
    assert entries[0].key == "deploy 1"
    assert entries[0].actor == "ci"
    assert entries[0].version == 4
    assert entries[0].after is not None
    assert [d["key"] for d in entries[0].after["documents"]] == ["staff", "a", "old"]
    assert len(entries) == 2  # the single write's and the apply's
    # The deleted flag's previous document is in its history.
    assert (await store.history("production", "flag", "old"))[0]["version"] == 1


async def test_a_second_identical_apply_changes_nothing(store: Store) -> None:
    items = [ApplyItem("flag", "a", flag("a")), ApplyItem("flag", "gone", None)]
    first = await store.apply("production", items, actor="ci", name="one")
    assert [c.key for c in first.changes] == ["a"]
    before = await dump(store)
    again = await store.apply("production", items, actor="ci", name="two")
    assert again.changes == []
    assert again.env_version == first.env_version
    assert sorted(again.unchanged) == [("flag", "a"), ("flag", "gone")]
    assert await dump(store) == before


async def test_a_version_conflict_writes_nothing(store: Store) -> None:
    await store.put("production", "flag", flag("b"), actor="t")
    await store.put("production", "flag", flag("b", on=True), actor="someone by hand")
    before = await dump(store)
    items = [
        ApplyItem("flag", "a", flag("a"), expected=0),
        ApplyItem("flag", "b", flag("b", on=False), expected=1),  # plan saw 1; it is 2 now
    ]
    with pytest.raises(Conflict) as err:
        await store.apply("production", items, actor="ci", name="late")
    assert err.value.current_version == 2
    assert "nothing was applied" in str(err.value)
    assert await dump(store) == before


async def test_the_script_rechecks_versions_itself(store: Store) -> None:
    # A write landing between the read and the script: the script refuses the whole apply.
    await store.put("production", "flag", flag("b"), actor="t")
    applier = store._applier
    items = [
        ApplyItem("flag", "a", flag("a"), expected=0),
        ApplyItem("flag", "b", flag("b", on=True), expected=1),
    ]
    writes, _, _ = await applier._prepare(
        "production", items, [flag("a"), flag("b", on=True)], "ci"
    )
    await store.put("production", "flag", flag("b", on=True, tags=["x"]), actor="racer")
    before = await dump(store)
    res = await applier._run("production", writes, actor="ci", name="raced")
    assert res[0] == b"conflict"
    assert int(res[2]) == 2
    assert await dump(store) == before


async def test_an_invalid_document_writes_nothing_and_names_it(store: Store) -> None:
    before = await dump(store)
    items = [
        ApplyItem("flag", "a", flag("a")),
        ApplyItem("flag", "bad", flag("bad", fallthrough={"variation": 7})),
        ApplyItem("segment", "s", {"key": "s", "includd": []}),
    ]
    with pytest.raises(ValidationError) as err:
        await store.apply("production", items, actor="ci", name="broken")
    paths = [p for p, _ in err.value.errors]
    assert "flag:bad.fallthrough.variation" in paths
    assert "segment:s.includd" in paths
    assert await dump(store) == before


async def test_duplicates_unknown_env_and_too_many(store: Store) -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        await store.apply(
            "production",
            [ApplyItem("flag", "a", flag("a")), ApplyItem("flag", "a", None)],
            actor="ci",
            name="dup",
        )
    with pytest.raises(NotFound):
        await store.apply("nowhere", [ApplyItem("flag", "a", flag("a"))], actor="ci", name="x")
    many = [ApplyItem("flag", f"f{i}", None) for i in range(MAX_APPLY_DOCUMENTS + 1)]
    with pytest.raises(ValidationError, match="too many documents"):
        await store.apply("production", many, actor="ci", name="big")


async def test_recreated_document_continues_its_versions(store: Store) -> None:
    await store.put("production", "flag", flag("a"), actor="t")
    await store.apply("production", [ApplyItem("flag", "a", None)], actor="ci", name="rm")
    res = await store.apply(
        "production", [ApplyItem("flag", "a", flag("a"))], actor="ci", name="back"
    )
    assert res.changes[0].version == 2
    assert (await store.get_doc("production", "flag", "a"))["version"] == 2
