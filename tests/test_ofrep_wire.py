"""OFREP answers from evaluation results, without a server: reasons, variants, ETags."""

from __future__ import annotations

import orjson

from flagwire.core.evaluation import Snapshot
from flagwire.core.model import validate_flag
from flagwire_server.api.ofrep_wire import bulk_body, etag_matches, flagwire_context
from tests.support.builders import clause, flag, prerequisite, rollout, rule, target


def _snap(*docs: dict, version: int = 1) -> Snapshot:
    flags = {d["key"]: {**validate_flag(d), "version": version} for d in docs}
    return Snapshot(flags, {}, version, "ep")


def _bulk(snap: Snapshot, key: str = "bob", client_side: bool = False) -> tuple[dict, str]:
    body, etag = bulk_body(snap, flagwire_context({"targetingKey": key}), client_side=client_side)
    return {f["key"]: f for f in orjson.loads(body)["flags"]}, etag


def test_reasons_map_to_openfeature() -> None:
    snap = _snap(
        flag("static", fallthrough=0),
        flag("off", on=False),
        flag("target", targets=[target(1, "bob")]),
        flag("rule", rules=[rule(clause("key", "in", "bob"), variation=1)]),
        flag("rule-split", rules=[rule(clause("key", "in", "bob"), rollout=rollout(50, 50))]),
        flag("split", fallthrough=rollout(50, 50)),
        flag("default", rules=[rule(clause("key", "in", "zed"), variation=1)]),
        flag("prereq", prerequisites=[prerequisite("off", 0)]),
    )
    got, _ = _bulk(snap)
    reasons = {k: f["reason"] for k, f in got.items()}
    assert reasons == {
        "static": "STATIC",
        "off": "DISABLED",
        "target": "TARGETING_MATCH",
        "rule": "TARGETING_MATCH",
        "rule-split": "SPLIT",
        "split": "SPLIT",
        "default": "DEFAULT",
        "prereq": "DEFAULT",
    }
    assert got["prereq"]["metadata"]["prerequisiteKey"] == "off"
    assert got["target"]["variant"] == "1"
    assert got["target"]["value"] is False


def test_etag_follows_what_the_context_gets() -> None:
    one = _snap(flag("a", fallthrough=0), flag("b", targets=[target(1, "alice")]))
    _, bob = _bulk(one, "bob")
    _, alice = _bulk(one, "alice")
    assert bob != alice
    # A new version that changes nothing for bob (only metadata): same tag.
    two = _snap(flag("a", fallthrough=0), flag("b", targets=[target(1, "alice")]), version=2)
    assert _bulk(two, "bob")[1] == bob
    three = _snap(flag("a", fallthrough=1), flag("b", targets=[target(1, "alice")]), version=3)
    changed, tag = _bulk(three, "bob")
    assert tag != bob
    assert changed["a"]["value"] is False
    assert etag_matches(f'W/{tag}, "other"', tag)
    assert etag_matches("*", tag)
    assert not etag_matches(None, tag)


def test_client_side_sees_only_visible_flags() -> None:
    snap = _snap(flag("shown", client_side=True), flag("hidden"), flag("off", client_side=False))
    assert set(_bulk(snap, client_side=True)[0]) == {"shown"}
    assert set(_bulk(snap)[0]) == {"shown", "hidden", "off"}


def test_bulk_cache_answers_repeats_and_follows_versions() -> None:
    from flagwire_server.api.ofrep_wire import BulkCache

    cache = BulkCache(size=2)
    one = _snap(flag("a", fallthrough=0))
    ctx = flagwire_context({"targetingKey": "bob", "plan": {"tier": 1, "seats": 2}})
    first = cache.answer(one, ctx, client_side=False)
    reordered = flagwire_context({"plan": {"seats": 2, "tier": 1}, "targetingKey": "bob"})
    assert cache.answer(one, reordered, client_side=False) is first
    two = _snap(flag("a", fallthrough=1), version=2)
    body, tag = cache.answer(two, ctx, client_side=False)
    assert tag != first[1]
    assert orjson.loads(body)["flags"][0]["value"] is False
    cache.answer(two, {"key": "x"}, client_side=False)
    assert len(cache._entries) == 2  # bounded
