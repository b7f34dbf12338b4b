"""The webhooks' pure parts: signature, retry decision and backoff, events, input checks."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flagwire.core.errors import ValidationError
from flagwire_server.notify import events, hooks, retry, signature
from flagwire_server.notify.notifier import DeliveryPolicy


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    secret, body = "whsec_test", b'{"id":"evt_1"}'
    header = signature.sign(secret, 1_700_000_000, body)
    # What a receiver in any language computes (docs/webhooks.md).
    mac = hmac.new(secret.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert signature.verify(secret, header, body, now=1_700_000_100) == 1_700_000_000


@pytest.mark.parametrize(
    ("header", "now", "why"),
    [
        ("v1=00", 1_700_000_000, "expected"),
        ("t=abc,v1=00", 1_700_000_000, "expected"),
        ("t=1700000000", 1_700_000_000, "expected"),
        ("t=1700000000,v1=00", 1_700_000_000, "no v1 signature matches"),
        ("SIGNED", 1_700_000_000, "expected"),
    ],
)
def test_malformed_or_wrong_signatures_are_refused(header: str, now: int, why: str) -> None:
    with pytest.raises(signature.SignatureError, match=why):
        signature.verify("whsec_test", header, b"{}", now=now)


def test_a_stale_or_future_timestamp_is_refused_and_another_scheme_is_ignored() -> None:
    header = signature.sign("whsec_x", 1_000, b"{}")
    with pytest.raises(signature.SignatureError, match="from now"):
        signature.verify("whsec_x", header, b"{}", now=1_000 + 301)
    with pytest.raises(signature.SignatureError, match="from now"):
        signature.verify("whsec_x", header, b"{}", now=1_000 - 301)
    assert signature.verify("whsec_x", header + ",v2=abc", b"{}", now=1_000) == 1_000
    with pytest.raises(signature.SignatureError):
        signature.verify("whsec_other", header, b"{}", now=1_000)


def test_secrets_are_fresh_and_long() -> None:
    made = {signature.new_secret() for _ in range(100)}
    assert len(made) == 100
    assert all(s.startswith("whsec_") and len(s) >= 6 + 43 for s in made)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (299, "delivered"),
        (None, "retry"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (301, "final"),
        (400, "final"),
        (404, "final"),
        (410, "final"),
    ],
)
def test_the_verdict_of_a_status(status: int | None, verdict: str) -> None:
    assert retry.verdict(status) == verdict


@given(st.integers(1, 40), st.floats(0, 1, exclude_max=True))
def test_backoff_grows_within_its_jitter_and_is_capped(attempt: int, r: float) -> None:
    wait = retry.backoff(attempt, base=2.0, cap=300.0, rng=lambda: r)
    nominal = min(300.0, 2.0 * 2 ** (attempt - 1))
    assert nominal / 2 <= wait <= nominal


def test_a_delivery_has_an_upper_bound() -> None:
    policy = DeliveryPolicy(timeout=10, attempts=6, retry_base=2, retry_cap=300)
    # 6 attempts of at most 11 s and waits of at most 2+4+8+16+32 s.
    assert policy.longest_ms == (6 * 11 + 62) * 1000


def test_subscriptions_match_names_families_and_everything() -> None:
    assert events.matches(["flag.changed"], "flag.changed")
    assert not events.matches(["flag.changed"], "segment.changed")
    assert events.matches(["plan.*"], "plan.rolled_back")
    assert not events.matches(["plan.*"], "schedule.executed")
    assert events.matches(["*"], "schedule.executed")


def test_an_audit_entry_becomes_a_flag_changed_event_with_before_and_after() -> None:
    fields = {
        "actor": "ops",
        "action": "update",
        "kind": "flag",
        "key": "checkout",
        "version": "7",
        "flag_version": "3",
        "before": '{"key":"checkout","on":false,"version":2}',
        "after": '{"key":"checkout","on":true,"version":3}',
        "t": "1700000000123",
    }
    event = events.from_audit("prod", "1700000000123-0", fields)
    assert event is not None
    again = events.from_audit("prod", "1700000000123-0", fields)
    assert again is not None
    assert event.id == again.id  # read twice, the same id: receivers can drop the copy
    assert event.id != events.from_audit("prod", "1700000000123-1", fields).id  # type: ignore[union-attr]
    body = orjson.loads(event.body("wh_1"))
    assert body["type"] == "flag.changed"
    assert body["created_at"] == "2023-11-14T22:13:20.123Z"
    assert body["webhook_id"] == "wh_1"
    assert body["data"]["before"]["on"] is False
    assert body["data"]["after"]["on"] is True
    assert (body["data"]["env_version"], body["data"]["flag_version"]) == (7, 3)
    created = events.from_audit("prod", "1-0", {**fields, "action": "create", "before": ""})
    assert created is not None
    assert created.data["before"] is None
    segment = events.from_audit("prod", "1-0", {**fields, "kind": "segment"})
    assert segment is not None
    assert segment.type == "segment.changed"
    assert events.from_audit("prod", "1-0", {**fields, "kind": "environment"}) is None


def test_plan_events_are_named_for_what_happened() -> None:
    plan = {"id": "rp_1", "env": "prod", "flag": "f", "events": [], "before": {"big": 1}}
    made = events.plan_event(plan, {"what": "paused by a guard", "at_ms": 5})
    assert made is not None
    assert made["type"] == "plan.paused"
    assert "events" not in made["data"]["plan"]
    assert "before" not in made["data"]["plan"]
    rolled = events.plan_event(plan, {"what": "rolled back"})
    assert rolled is not None
    assert rolled["type"] == "plan.rolled_back"
    assert events.plan_event(plan, {"what": "something new"}) is None
    assert set(events.PLAN_EVENTS) <= set(events.EVENT_TYPES)


def test_published_events_are_read_back() -> None:
    raw = orjson.dumps(events.schedule_event({"id": "sch_1", "status": "applied"}, 42)).decode()
    event = events.from_published("prod", "42-0", {"event": raw})
    assert event is not None
    assert (event.type, event.at_ms, event.data["change"]["id"]) == (
        "schedule.executed",
        42,
        "sch_1",
    )
    assert events.from_published("prod", "1-0", {"event": "not json"}) is None
    assert events.from_published("prod", "1-0", {"event": '{"type": "bogus"}'}) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://10.0.0.1/",
        "http://192.168.1.1:8080/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fd00::1]/",
        "http://localhost:8080/",
        "http://0.0.0.0/",
    ],
)
def test_private_addresses_are_refused_when_asked(url: str) -> None:
    assert hooks.check_url(url, allow_private=True) == []
    ((path, message),) = hooks.check_url(url, allow_private=False)
    assert path == "url"
    assert "private" in message


def test_public_addresses_and_names_pass() -> None:
    for url in ("https://hooks.example.com/in", "http://8.8.8.8:8080/x?y=1"):
        assert hooks.check_url(url, allow_private=False) == []


def test_an_edit_keeps_what_it_does_not_name() -> None:
    current = {
        "id": "wh_1",
        "url": "https://a.example/",
        "events": ["*"],
        "description": "",
        "enabled": True,
        "secret": "whsec_s",
    }
    edited = hooks.parse_update(current, {"enabled": False}, allow_private=True)
    assert edited == {**current, "enabled": False}
    assert "secret" not in hooks.public(edited)
    with pytest.raises(ValidationError) as caught:
        hooks.parse_update(current, {"events": "flag.changed", "secret": "x"}, allow_private=True)
    assert {p for p, _ in caught.value.errors} == {"events", "secret"}
