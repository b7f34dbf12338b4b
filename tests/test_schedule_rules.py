"""The pure rules of scheduled changes: requests, edits and what a due change does."""

from __future__ import annotations

import pytest

from flagwire.core.errors import ValidationError
from flagwire_server.release.schedule import (
    DEFAULT_RULE,
    decide,
    due_ms_of,
    parse_edit,
    parse_request,
    scheduler_actor,
)

NOW = 1_800_000_000_000


def _record(**fields: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "id": "sch_1",
        "flag": "f",
        "action": "patch",
        "change": {"on": False},
        "due_ms": NOW,
        "base_version": 3,
        "if_changed": DEFAULT_RULE,
    }
    rec.update(fields)
    return rec


def test_due_at_forms() -> None:
    assert due_ms_of("2027-01-15T10:00:00Z") == due_ms_of("2027-01-15T11:00:00+01:00")
    assert due_ms_of(1_800_000_000.25) == 1_800_000_000_250
    for bad in ("2027-01-15T10:00:00", "tomorrow", True, None, [1]):
        with pytest.raises(ValidationError) as err:
            due_ms_of(bad)
        assert err.value.errors[0][0] == "due_at"


def test_request_defaults_and_every_problem_at_once() -> None:
    parsed = parse_request({"flag": "f", "change": {"on": False}, "due_at": 1}, now_ms=NOW)
    assert parsed["action"] == "patch"
    assert parsed["if_changed"] == "fail"
    assert parsed["wait"] == 5.0
    assert parsed["due_ms"] == 1000
    with pytest.raises(ValidationError) as err:
        parse_request(
            {"action": "restore", "change": {}, "if_changed": "maybe", "wait": 99, "x": 1},
            now_ms=NOW,
        )
    fields = {f for f, _ in err.value.errors}
    assert fields == {"x", "flag", "version", "change", "if_changed", "wait", "due_at"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "patch"}, "change"),
        ({"action": "replace", "change": [1]}, "change"),
        ({"action": "rollout", "change": 3}, "change"),
        ({"action": "restore", "version": 0}, "version"),
        ({"action": "patch", "change": {}, "version": 2}, "version"),
        ({"action": "delete", "change": {}}, "action"),
    ],
)
def test_each_action_needs_its_own_fields(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_request({"flag": "f", "due_at": 1, **body}, now_ms=NOW)
    assert field in {f for f, _ in err.value.errors}


def test_far_future_refused() -> None:
    with pytest.raises(ValidationError):
        parse_request(
            {"flag": "f", "change": {}, "due_at": NOW / 1000 + 11 * 366 * 86400}, now_ms=NOW
        )


def test_edit_keeps_flag_and_action() -> None:
    rec = {
        **_record(),
        **parse_request({"flag": "f", "change": {"on": False}, "due_at": 5}, now_ms=NOW),
    }
    edited = parse_edit(rec, {"due_at": 7, "if_changed": "skip"}, now_ms=NOW)
    assert edited["due_ms"] == 7000
    assert edited["if_changed"] == "skip"
    assert edited["change"] == {"on": False}
    assert edited["id"] == "sch_1"
    with pytest.raises(ValidationError) as err:
        parse_edit(rec, {"flag": "g", "action": "restore"}, now_ms=NOW)
    assert {f for f, _ in err.value.errors} == {"flag", "action"}


def test_unchanged_flag_is_written() -> None:
    assert decide(_record(), now_ms=NOW + 10, grace_ms=1000, current_version=3).status == "write"


@pytest.mark.parametrize(
    ("rule", "status"), [("apply", "write"), ("skip", "skipped"), ("fail", "failed")]
)
def test_edited_flag_follows_the_rule(rule: str, status: str) -> None:
    d = decide(_record(if_changed=rule), now_ms=NOW, grace_ms=1000, current_version=4)
    assert d.status == status
    assert "version 3, now at version 4" in d.reason


def test_default_rule_is_fail() -> None:
    rec = _record()
    del rec["if_changed"]
    assert decide(rec, now_ms=NOW, grace_ms=1000, current_version=9).status == "failed"


def test_missed_beats_everything_and_grace_is_inclusive() -> None:
    assert decide(_record(), now_ms=NOW + 1000, grace_ms=1000, current_version=3).status == "write"
    d = decide(_record(if_changed="apply"), now_ms=NOW + 1001, grace_ms=1000, current_version=4)
    assert d.status == "missed"
    assert "grace period of 1 s" in d.reason


def test_deleted_flag() -> None:
    d = decide(_record(), now_ms=NOW, grace_ms=1000, current_version=None)
    assert d.status == "failed"
    assert "no longer exists" in d.reason
    # A replace recreates it when the rule says so.
    rec = _record(action="replace", if_changed="apply")
    assert decide(rec, now_ms=NOW, grace_ms=1000, current_version=None).status == "write"
    # Scheduled against a flag that did not exist yet, and still absent: written.
    rec = _record(action="replace", base_version=None)
    assert decide(rec, now_ms=NOW, grace_ms=1000, current_version=None).status == "write"


def test_actor_names_creator_and_change() -> None:
    assert scheduler_actor(_record(created_by="alice")) == "scheduler, created by alice (sch_1)"


@pytest.mark.parametrize(
    "bad",
    [
        -1.7976931348623157e308,
        7.7e307,
        float("inf"),
        float("nan"),
        -1,
        253_402_300_800,
        "0001-01-01T00:00:00Z",
    ],
)
def test_a_due_time_outside_1970_to_9999_is_a_validation_error_not_a_crash(bad: object) -> None:
    # Found by schemathesis: a huge negative due_at was a 500 (OverflowError) at the API.
    with pytest.raises(ValidationError):
        due_ms_of(bad)
