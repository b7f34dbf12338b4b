"""Bucketing: the committed vectors, uniformity, stickiness and monotone rollouts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagwire.core.bucketing import BUCKETS, bucket, bucket_text
from flagwire.core.evaluation import Snapshot
from tests.support.builders import clause, flag, rollout, rule

VECTORS = json.loads((Path(__file__).parent / "vectors" / "bucketing.json").read_text("utf-8"))


def reference(salt: str, text: str) -> int:
    """The documented algorithm, written out independently of the implementation."""
    digest = hashlib.sha1(f"{salt}.{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100000


@pytest.mark.parametrize(
    "case", VECTORS["cases"], ids=lambda c: f"{c['salt'][:12]}|{c['value']!r:.24}"
)
def test_vector(case: dict[str, Any]) -> None:
    assert bucket_text(case["value"]) == case["text"]
    assert bucket(case["salt"], case["value"]) == case["bucket"]
    assert reference(case["salt"], case["text"]) == case["bucket"]


def test_vectors_cover_unicode_and_numbers() -> None:
    values = [c["value"] for c in VECTORS["cases"]]
    assert len(values) >= 45
    assert any(isinstance(v, str) and not v.isascii() for v in values)
    assert any(isinstance(v, int) for v in values)
    assert any(isinstance(v, float) for v in values)


@pytest.mark.parametrize("value", VECTORS["not_bucketable"], ids=repr)
def test_not_bucketable(value: Any) -> None:
    assert bucket_text(value) is None
    with pytest.raises(TypeError):
        bucket("salt", value)


def test_number_and_its_text_share_a_bucket() -> None:
    assert bucket("s", 3) == bucket("s", 3.0) == bucket("s", "3")
    assert bucket("s", -0.0) == bucket("s", 0)


def test_lone_surrogate_does_not_raise() -> None:
    assert 0 <= bucket("s", "bad\udc80") < BUCKETS


def test_uniform_within_one_percent() -> None:
    """100,000 keys: every 10% band holds 10% of them, ±1% of the total."""
    n = 100_000
    bands = [0] * 10
    for i in range(n):
        bands[bucket("uniformity", f"user-{i}") * 10 // BUCKETS] += 1
    for count in bands:
        assert abs(count - n / 10) <= n / 100, bands
    # and the cumulative share at every 10% step (what a rollout sees)
    total = 0
    for i, count in enumerate(bands, start=1):
        total += count
        assert abs(total / n - i / 10) <= 0.01


@settings(max_examples=200)
@given(salt=st.text(max_size=40), value=st.text(max_size=80) | st.integers(-(2**53), 2**53))
def test_sticky_and_in_range(salt: str, value: str | int) -> None:
    first = bucket(salt, value)
    assert 0 <= first < BUCKETS
    assert bucket(salt, value) == first


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=20, unique=True),
    low=st.integers(0, 100_000),
    high=st.integers(0, 100_000),
)
def test_rollout_increase_keeps_contexts_in(keys: list[str], low: int, high: int) -> None:
    """Raising variation 0's share never moves a context that had it out of it."""
    low, high = sorted((low, high))

    def served(weight: int) -> dict[str, Any]:
        doc = flag("grow", fallthrough=rollout(weight / 1000, 100 - weight / 1000))
        snap = Snapshot({"grow": doc})
        return {k: snap.evaluate("grow", {"key": k}, None).value for k in keys}

    before, after = served(low), served(high)
    for key in keys:
        if before[key] is True:
            assert after[key] is True


def test_rollout_share_matches_weights() -> None:
    doc = flag("split", fallthrough=rollout(25, 75))
    snap = Snapshot({"split": doc})
    n = 20_000
    served = sum(snap.evaluate("split", {"key": f"u{i}"}, None).value is True for i in range(n))
    assert abs(served / n - 0.25) < 0.015


def test_rollout_uses_bucket_and_salt() -> None:
    doc = flag("salted", fallthrough=rollout(40, 60), salt="fixed-salt")
    snap = Snapshot({"salted": doc})
    for i in range(200):
        key = f"user-{i}"
        expected = 0 if bucket("fixed-salt", key) < 40_000 else 1
        assert snap.evaluate("salted", {"key": key}, None).variation_index == expected


def test_rollout_by_attribute_and_fallbacks() -> None:
    by_org = rollout(50, 50, bucket_by="org")
    doc = flag("org", rules=[rule(clause("plan", "in", "pro"), rollout=by_org)], fallthrough=by_org)
    snap = Snapshot({"org": doc})
    # all members of one org land together, whatever their key
    orgs = {
        snap.evaluate("org", {"key": f"u{i}", "org": 17}, None).variation_index for i in range(50)
    }
    assert len(orgs) == 1
    assert orgs == {0 if bucket("org", 17) < 50_000 else 1}
    # missing or unbucketable attribute: bucket by the context key
    for ctx in (
        {"key": "k1"},
        {"key": "k1", "org": None},
        {"key": "k1", "org": 1.5},
        {"key": "k1", "org": True},
        {"key": "k1", "org": ["x"]},
    ):
        got = snap.evaluate("org", ctx, None)
        assert got.variation_index == (0 if bucket("org", "k1") < 50_000 else 1)
    ruled = snap.evaluate("org", {"key": "k", "plan": "pro", "org": "acme"}, None)
    assert ruled.reason == "RULE_MATCH"
    assert ruled.variation_index == (0 if bucket("org", "acme") < 50_000 else 1)


def test_zero_weight_slots_are_never_served() -> None:
    doc = flag("z", variations=["a", "b", "c"], fallthrough=rollout(0, 100, 0))
    snap = Snapshot({"z": doc})
    assert {snap.evaluate("z", {"key": f"k{i}"}, None).value for i in range(300)} == {"b"}


@pytest.mark.parametrize(
    "weights",
    [
        (100,),
        (0, 100),
        (30, 0, 70),
        (10, 20, 30, 40),
        (5, 10, 15, 20, 25, 25),
        (0, 50, 0, 0, 50, 0),
    ],
)
@pytest.mark.parametrize("by", [None, "org"])
def test_slot_walk_matches_the_documented_algorithm(
    weights: tuple[int, ...], by: str | None
) -> None:
    """Every slot count (inlined comparisons or bisect), by key or by attribute."""
    variations = [f"v{i}" for i in range(len(weights))]
    doc = flag("walk", variations=variations, fallthrough=rollout(*weights, bucket_by=by))
    snap = Snapshot({"walk": doc})
    for i in range(300):
        ctx = {"key": f"user-{i}", "org": f"org-{i % 37}"}
        b = bucket("walk", ctx["org"] if by else ctx["key"])
        total, expected = 0, None
        for index, weight in enumerate(weights):
            total += weight * 1000
            if b < total:
                expected = index
                break
        assert snap.evaluate("walk", ctx, None).variation_index == expected
