"""flagwire.testing: flags set in code, served by a real FlagClient with no server."""

from __future__ import annotations

import asyncio

import pytest

from flagwire import ClientStatus, FlagClient, Reason
from flagwire.testing import TestFlags, make_client


def test_set_value_is_seen_at_once_without_starting() -> None:
    flags = TestFlags()
    flags.set("new-checkout", True).set("theme", "dark").set("limit", 3).set("cfg", {"a": 1})
    client = flags.client()
    assert isinstance(client, FlagClient)
    assert client.status is ClientStatus.READY
    ctx = {"key": "u1"}
    assert client.bool_variation("new-checkout", ctx, False) is True
    assert client.string_variation("theme", ctx, "light") == "dark"
    assert client.number_variation("limit", ctx, 0) == 3
    assert client.json_variation("cfg", ctx, {}) == {"a": 1}
    assert client.bool_variation("theme", ctx, False) is False  # wrong type: default
    flags.set("new-checkout", False)
    assert client.bool_variation("new-checkout", ctx, True) is False
    assert client.all_flags(ctx) == {
        "new-checkout": False,
        "theme": "dark",
        "limit": 3,
        "cfg": {"a": 1},
    }


def test_targets_rules_and_off() -> None:
    flags, client = make_client({"beta": False})
    flags.set_targets("beta", True, "vip-1", "vip-2")
    flags.set_rule("beta", True, "email", "ends_with", "@example.com")
    assert client.bool_variation("beta", {"key": "vip-2"}, False) is True
    assert client.bool_variation("beta", {"key": "x", "email": "a@example.com"}, False) is True
    assert client.bool_variation("beta", {"key": "x", "email": "a@other.org"}, True) is False
    detail = client.variation_detail("beta", {"key": "x", "email": "a@example.com"}, False)
    assert detail.reason == Reason.RULE_MATCH
    flags.turn_off("beta")
    assert client.bool_variation("beta", {"key": "vip-2"}, True) is False
    assert client.variation_detail("beta", {"key": "vip-2"}, True).reason == Reason.OFF
    flags.turn_on("beta")
    assert client.bool_variation("beta", {"key": "vip-2"}, False) is True
    flags.delete("beta")
    assert client.variation_detail("beta", {"key": "vip-2"}, False).error_kind == "FLAG_NOT_FOUND"


def test_new_flag_from_a_rule_needs_a_value_for_everyone_else() -> None:
    flags = TestFlags()
    with pytest.raises(ValueError, match="otherwise"):
        flags.set_rule("plan", "gold", "tier", "in", "vip")
    flags.set_rule("plan", "gold", "tier", "in", "vip", otherwise="basic")
    client = flags.client()
    assert client.string_variation("plan", {"key": "a", "tier": "vip"}, "") == "gold"
    assert client.string_variation("plan", {"key": "a"}, "") == "basic"


def test_rollout_splits_by_percentage_and_is_sticky() -> None:
    flags, client = make_client()
    flags.set_rollout("theme", {"dark": 25, "light": 75})
    values = [client.string_variation("theme", {"key": f"user-{i}"}, "") for i in range(4000)]
    share = values.count("dark") / len(values)
    assert 0.22 < share < 0.28
    assert values == [
        client.string_variation("theme", {"key": f"user-{i}"}, "") for i in range(4000)
    ]
    with pytest.raises(ValueError, match="add up to 100"):
        flags.set_rollout("theme", {"dark": 25, "light": 70})


def test_segments() -> None:
    flags = TestFlags()
    flags.set_segment("staff", included=["alice"])
    flags.set_rule("admin-ui", True, "", "segment_match", "staff")
    client = flags.client()
    assert client.bool_variation("admin-ui", {"key": "alice"}, False) is True
    assert client.bool_variation("admin-ui", {"key": "bob"}, True) is False


async def test_changes_reach_callbacks_iterators_and_watchers() -> None:
    flags, client = make_client({"a": False})
    async with client:
        assert client.status is ClientStatus.READY
        seen = []
        client.on_change(seen.append, key="a")
        stream = client.changes()
        watch = client.watch("a", {"key": "u1"}, default=None)
        assert await anext(watch) is False
        flags.set("a", True)
        flags.set("b", 1)
        change = await asyncio.wait_for(anext(stream), 1)
        assert (change.key, change.old_version, change.new_version) == ("a", 1, 2)
        assert (await asyncio.wait_for(anext(stream), 1)).key == "b"
        assert await asyncio.wait_for(anext(watch), 1) is True
        assert [c.key for c in seen] == ["a"]
        # start() kept the TestFlags data
        assert client.bool_variation("a", {"key": "u1"}, False) is True
    assert client.status is ClientStatus.CLOSED
    flags.set("a", False)  # a closed client is left alone
    assert client.bool_variation("a", {"key": "u1"}, True) is True


def test_full_documents() -> None:
    flags = TestFlags()
    flags.set_flag(
        {"key": "x", "on": True, "variations": ["a", "b"], "fallthrough": {"variation": 1}}
    )
    assert flags.client().string_variation("x", {"key": "u"}, "") == "b"
    assert flags.snapshot().flags["x"]["version"] == 1


async def test_change_streams_are_bounded_and_drop_the_oldest() -> None:
    flags, client = make_client({"a": 0})
    stream = client.changes(maxsize=3)
    watch = client.watch("a", {"key": "u"})
    for i in range(1, 11):
        flags.set("a", i)
    assert stream.dropped == 7
    assert [(await anext(stream)).new_version for _ in range(3)] == [9, 10, 11]
    assert await anext(watch) == 10  # coalesced: only the latest value
    await client.close()
    assert [c async for c in stream] == []
    assert [v async for v in watch] == []
